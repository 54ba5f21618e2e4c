/*
 * test_saga.c — the saga protocol's two decisions (src/saga/saga.c), one
 * by one, and the runner thread driving real shard writers over in-memory
 * stores: a posted transfer, a pending hold then a partial post, a void, a
 * refused credit (compensation), an abort past the deadline, and recovery of
 * a saga left half-way by a "crash" (a store holding a RESERVED record that
 * no doorbell announced); and the runner's timers: deadlines and stuck
 * ages that ignore wall-clock steps, a backoff after a settle that changed
 * nothing, and a shard reader that failed to open and is opened again.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../src/obs/obs.h"
#include "../../src/saga/saga.h"

/* ---- The pure protocol. ---- */

static kobo_transfer debit_record(kobo_saga_state saga, bool pending)
{
	kobo_transfer t;
	memset(&t, 0, sizeof(t));
	snprintf(t.id, sizeof(t.id), "tx:1");
	snprintf(t.from, sizeof(t.from), "payer");
	snprintf(t.to, sizeof(t.to), "payee");
	snprintf(t.currency, sizeof(t.currency), "NGN");
	snprintf(t.request_id, sizeof(t.request_id), "req-1");
	snprintf(t.created_by, sizeof(t.created_by), "00c0ffee00c0ffee");
	snprintf(t.trace_id, sizeof(t.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
	snprintf(t.clearing, sizeof(t.clearing), "kobo:clearing:0:1:NGN");
	t.amount = 500;
	t.pending = pending;
	t.timeout_seconds = pending ? 60 : 0;
	t.metadata = "{\"k\":1}";
	t.metadata_len = 7;
	t.leg = KOBO_LEG_DEBIT;
	t.status = saga == KOBO_SAGA_NONE ? KOBO_STATUS_PENDING : KOBO_STATUS_PROCESSING;
	t.saga = saga;
	if (saga == KOBO_SAGA_POSTING)
		t.saga_amount = 200;
	if (saga == KOBO_SAGA_VOIDING)
		t.saga_reason = KOBO_VOID_EXPIRED;
	return t;
}

static void remote_op_follows_the_state(void **state)
{
	(void)state;
	kobo_op op;
	kobo_transfer t = debit_record(KOBO_SAGA_RESERVED, true);
	assert_true(kobo_saga_remote_op(&t, "kobo:clearing:1:0:NGN", false, &op));
	assert_int_equal(op.kind, KOBO_OP_SAGA_CREDIT);
	assert_int_equal(op.u.transfer.leg, KOBO_LEG_CREDIT);
	assert_string_equal(op.u.transfer.clearing, "kobo:clearing:1:0:NGN");
	assert_string_equal(op.u.transfer.id, "tx:1");
	assert_string_equal(op.u.transfer.from, "payer");
	assert_string_equal(op.u.transfer.to, "payee");
	assert_int_equal(op.u.transfer.amount, 500);
	assert_true(op.u.transfer.pending);
	assert_int_equal(op.u.transfer.timeout_seconds, 60);
	assert_int_equal(op.u.transfer.metadata_len, 7);
	assert_string_equal(op.request_id, "req-1");
	/* Both legs name the key that created the DEBIT leg. */
	assert_string_equal(op.created_by, "00c0ffee00c0ffee");
	/* And B's step joins the trace of the request that made the DEBIT leg. */
	assert_string_equal(op.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
	assert_int_equal(op.atomic_group, 0);

	assert_true(kobo_saga_remote_op(&t, "kobo:clearing:1:0:NGN", true, &op));
	assert_int_equal(op.kind, KOBO_OP_SAGA_ABORT);
	assert_string_equal(op.created_by, "00c0ffee00c0ffee");

	t = debit_record(KOBO_SAGA_POSTING, true);
	assert_true(kobo_saga_remote_op(&t, "kobo:clearing:1:0:NGN", true, &op));
	assert_int_equal(op.kind, KOBO_OP_SAGA_POST); /* abort only concerns RESERVED */
	assert_true(op.u.target.has_amount);
	assert_int_equal(op.u.target.amount, 200);
	assert_string_equal(op.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");

	t = debit_record(KOBO_SAGA_VOIDING, true);
	assert_true(kobo_saga_remote_op(&t, "kobo:clearing:1:0:NGN", false, &op));
	assert_int_equal(op.kind, KOBO_OP_SAGA_VOID);
	assert_string_equal(op.u.target.id, "tx:1");
	assert_string_equal(op.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");

	t = debit_record(KOBO_SAGA_NONE, true);
	assert_false(kobo_saga_remote_op(&t, "kobo:clearing:1:0:NGN", false, &op));
	t = debit_record(KOBO_SAGA_RESERVED, false);
	t.leg = KOBO_LEG_CREDIT;
	assert_false(kobo_saga_remote_op(&t, "kobo:clearing:1:0:NGN", false, &op));
}

static kobo_result credit_result(kobo_result_code code, kobo_transfer_status status,
                                 kobo_result_code error)
{
	kobo_result r;
	memset(&r, 0, sizeof(r));
	r.code = code;
	r.has_transfer = true;
	r.transfer.leg = KOBO_LEG_CREDIT;
	r.transfer.status = status;
	r.transfer.error_code = error;
	return r;
}

static void settle_reads_b_answers(void **state)
{
	(void)state;
	kobo_op b_op, settle;
	kobo_transfer t = debit_record(KOBO_SAGA_RESERVED, false);
	assert_true(kobo_saga_remote_op(&t, "kobo:clearing:1:0:NGN", false, &b_op));

	/* Credited, first time and as a replay. */
	kobo_result r = credit_result(KOBO_RESULT_CREATED, KOBO_STATUS_POSTED, KOBO_RESULT_CREATED);
	assert_true(kobo_saga_settle_op(&t, &b_op, &r, &settle));
	assert_int_equal(settle.kind, KOBO_OP_SAGA_SETTLE);
	assert_string_equal(settle.u.settle.id, "tx:1");
	assert_false(settle.u.settle.refused);
	assert_int_equal(settle.u.settle.step, KOBO_SAGA_RESERVED);
	assert_string_equal(settle.request_id, "req-1");
	/* A's settle joins the same trace and names the same key. */
	assert_string_equal(settle.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
	assert_string_equal(settle.created_by, "00c0ffee00c0ffee");
	r = credit_result(KOBO_RESULT_REPLAYED, KOBO_STATUS_POSTED, KOBO_RESULT_CREATED);
	assert_true(kobo_saga_settle_op(&t, &b_op, &r, &settle));
	assert_false(settle.u.settle.refused);

	/* Refused now, refused earlier (replayed), or the id taken. */
	r = credit_result(KOBO_RESULT_ACCOUNT_NOT_FOUND, KOBO_STATUS_REJECTED,
	                  KOBO_RESULT_ACCOUNT_NOT_FOUND);
	assert_true(kobo_saga_settle_op(&t, &b_op, &r, &settle));
	assert_true(settle.u.settle.refused);
	assert_int_equal(settle.u.settle.refusal, KOBO_RESULT_ACCOUNT_NOT_FOUND);
	r = credit_result(KOBO_RESULT_REPLAYED, KOBO_STATUS_REJECTED, KOBO_RESULT_SAGA_TIMEOUT);
	assert_true(kobo_saga_settle_op(&t, &b_op, &r, &settle));
	assert_int_equal(settle.u.settle.refusal, KOBO_RESULT_SAGA_TIMEOUT);
	memset(&r, 0, sizeof(r));
	r.code = KOBO_RESULT_ID_CONFLICT;
	assert_true(kobo_saga_settle_op(&t, &b_op, &r, &settle));
	assert_int_equal(settle.u.settle.refusal, KOBO_RESULT_ID_CONFLICT);

	/* Not final: no snapshot, a LOCAL record, a mismatched op. */
	memset(&r, 0, sizeof(r));
	r.code = KOBO_RESULT_CREATED;
	assert_false(kobo_saga_settle_op(&t, &b_op, &r, &settle));
	r = credit_result(KOBO_RESULT_REPLAYED, KOBO_STATUS_POSTED, KOBO_RESULT_CREATED);
	r.transfer.leg = KOBO_LEG_LOCAL;
	assert_false(kobo_saga_settle_op(&t, &b_op, &r, &settle));
	kobo_op post_op = b_op;
	post_op.kind = KOBO_OP_POST;
	r = credit_result(KOBO_RESULT_UPDATED, KOBO_STATUS_POSTED, KOBO_RESULT_CREATED);
	assert_false(kobo_saga_settle_op(&t, &post_op, &r, &settle));

	/* POSTING: posted (or already posted) is credited; overflow refused. */
	t = debit_record(KOBO_SAGA_POSTING, true);
	assert_true(kobo_saga_remote_op(&t, "kobo:clearing:1:0:NGN", false, &b_op));
	memset(&r, 0, sizeof(r));
	r.code = KOBO_RESULT_UPDATED;
	assert_true(kobo_saga_settle_op(&t, &b_op, &r, &settle));
	assert_false(settle.u.settle.refused);
	assert_int_equal(settle.u.settle.step, KOBO_SAGA_POSTING);
	r = credit_result(KOBO_RESULT_REPLAYED, KOBO_STATUS_POSTED, KOBO_RESULT_CREATED);
	assert_true(kobo_saga_settle_op(&t, &b_op, &r, &settle));
	memset(&r, 0, sizeof(r));
	r.code = KOBO_RESULT_AMOUNT_OVERFLOW;
	assert_true(kobo_saga_settle_op(&t, &b_op, &r, &settle));
	assert_true(settle.u.settle.refused);
	r.code = KOBO_RESULT_NOT_PENDING;
	assert_false(kobo_saga_settle_op(&t, &b_op, &r, &settle));

	/* VOIDING: voided or already voided. */
	t = debit_record(KOBO_SAGA_VOIDING, true);
	assert_true(kobo_saga_remote_op(&t, "kobo:clearing:1:0:NGN", false, &b_op));
	r.code = KOBO_RESULT_UPDATED;
	assert_true(kobo_saga_settle_op(&t, &b_op, &r, &settle));
	r.code = KOBO_RESULT_REPLAYED;
	assert_true(kobo_saga_settle_op(&t, &b_op, &r, &settle));
	r.code = KOBO_RESULT_NOT_PENDING;
	assert_false(kobo_saga_settle_op(&t, &b_op, &r, &settle));

	/* Nothing outstanding: nothing to settle. */
	t = debit_record(KOBO_SAGA_NONE, true);
	r.code = KOBO_RESULT_UPDATED;
	assert_false(kobo_saga_settle_op(&t, &b_op, &r, &settle));
}

/* ---- The runner over two real shard writers. ---- */

#define SHARDS 2

typedef struct world {
	kobo_store *stores[SHARDS];
	kobo_shard *shards[SHARDS];
	kobo_shard_map map;
	kobo_saga_runner *runner;
	char payer[SHARDS][16]; /* an account id living on each shard */
} world;

typedef struct sync_call {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
	kobo_result result;
	int status;
	kobo_transfer settled;
	bool timed_out;
} sync_call;

static void sync_init(sync_call *c)
{
	memset(c, 0, sizeof(*c));
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cond, NULL);
}

static void sync_signal(sync_call *c)
{
	pthread_mutex_lock(&c->lock);
	c->done = true;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

static void sync_wait(sync_call *c)
{
	pthread_mutex_lock(&c->lock);
	while (!c->done)
		pthread_cond_wait(&c->cond, &c->lock);
	pthread_mutex_unlock(&c->lock);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->cond);
}

static void on_done(kobo_request *request)
{
	sync_call *c = request->user;
	c->status = request->status;
	c->result = *request->results;
	c->result.transfer.metadata = NULL;
	c->result.account.metadata = NULL;
	sync_signal(c);
}

/* Runs one op on a shard and waits for its durable answer. */
static kobo_result run(world *w, uint32_t shard, const kobo_op *op)
{
	sync_call c;
	sync_init(&c);
	kobo_result result;
	kobo_request request = {
		.ops = op, .results = &result, .op_count = 1, .done = on_done, .user = &c,
	};
	assert_int_equal(kobo_shard_submit(w->shards[shard], &request), KOBO_OK);
	sync_wait(&c);
	assert_int_equal(c.status, KOBO_OK);
	return c.result;
}

static void on_settled(void *ctx, const kobo_transfer *transfer, bool timed_out)
{
	sync_call *c = ctx;
	c->timed_out = timed_out;
	if (transfer) {
		c->settled = *transfer;
		c->settled.metadata = NULL;
	}
	sync_signal(c);
}

/* Waits (at most 10 s) for the saga of id on shard to settle. */
static kobo_transfer settled(world *w, uint32_t shard, const char *id)
{
	sync_call c;
	sync_init(&c);
	assert_int_equal(kobo_saga_runner_wait(w->runner, shard, id,
	                                       kobo_monotonic_us() / 1000 + 10000,
	                                       on_settled, &c),
	                 KOBO_OK);
	sync_wait(&c);
	assert_false(c.timed_out);
	return c.settled;
}

static kobo_account account(world *w, const char *id)
{
	kobo_store_reader *reader;
	uint32_t shard = kobo_shard_map_account(&w->map, id);
	assert_int_equal(kobo_store_reader_open(w->stores[shard], &reader), KOBO_OK);
	kobo_account a;
	int rc = kobo_store_read_account(reader, id, &a);
	if (rc == KOBO_ENOTFOUND)
		memset(&a, 0, sizeof(a));
	else
		assert_int_equal(rc, KOBO_OK);
	a.metadata = NULL;
	kobo_store_reader_close(reader);
	return a;
}

static void create_account(world *w, const char *id, bool allow_negative)
{
	kobo_op op;
	memset(&op, 0, sizeof(op));
	op.kind = KOBO_OP_CREATE_ACCOUNT;
	snprintf(op.u.account.id, sizeof(op.u.account.id), "%s", id);
	snprintf(op.u.account.currency, sizeof(op.u.account.currency), "NGN");
	op.u.account.allow_negative = allow_negative;
	op.u.account.metadata = "{}";
	op.u.account.metadata_len = 2;
	kobo_result r = run(w, kobo_shard_map_account(&w->map, id), &op);
	assert_int_equal(r.code, KOBO_RESULT_CREATED);
}

/* A transfer routed as the edge routes it; returns the payer's shard. */
static uint32_t transfer_op(world *w, kobo_op *op, const char *id, const char *from,
                            const char *to, int64_t amount, bool pending)
{
	memset(op, 0, sizeof(*op));
	op->kind = KOBO_OP_CREATE_TRANSFER;
	kobo_transfer *t = &op->u.transfer;
	snprintf(t->id, sizeof(t->id), "%s", id);
	snprintf(t->from, sizeof(t->from), "%s", from);
	snprintf(t->to, sizeof(t->to), "%s", to);
	snprintf(t->currency, sizeof(t->currency), "NGN");
	snprintf(op->request_id, sizeof(op->request_id), "req-%s", id);
	t->amount = amount;
	t->pending = pending;
	t->metadata = "{}";
	t->metadata_len = 2;
	uint32_t a = kobo_shard_map_account(&w->map, from);
	uint32_t b = kobo_shard_map_account(&w->map, to);
	if (a != b) {
		t->leg = KOBO_LEG_DEBIT;
		kobo_clearing_id(t->clearing, a, b, "NGN");
	}
	return a;
}

/* Names an account that lives on shard. */
static void id_on_shard(world *w, const char *prefix, uint32_t shard, char *out, size_t size)
{
	for (int i = 0;; i++) {
		snprintf(out, size, "%s%d", prefix, i);
		if (kobo_shard_map_account(&w->map, out) == shard)
			return;
	}
}

/* Creates the runner over the world's shards and stores; config_in, when
 * given, supplies the other fields (deadline, stuck age, clock) and may name
 * other shards or stores for the runner to use. */
static void world_start_runner_with(world *w, const kobo_saga_config *config_in)
{
	kobo_saga_config config = {
		.shards = w->shards, .stores = w->stores, .shard_count = SHARDS,
		.map = &w->map,
	};
	if (config_in) {
		config.deadline_ms = config_in->deadline_ms;
		config.stuck_ms = config_in->stuck_ms;
		config.now_ms = config_in->now_ms;
		if (config_in->shards)
			config.shards = config_in->shards;
		if (config_in->stores)
			config.stores = config_in->stores;
	}
	assert_int_equal(kobo_saga_runner_create(&config, &w->runner), KOBO_OK);
}

static void world_start_runner(world *w, int64_t deadline_ms)
{
	kobo_saga_config config = { .deadline_ms = deadline_ms };
	world_start_runner_with(w, &config);
}

static void world_start_shards(world *w, bool doorbells)
{
	for (uint32_t i = 0; i < SHARDS; i++) {
		kobo_shard_config config = {
			.index = i,
			.saga_started = doorbells ? kobo_saga_runner_notify : NULL,
			.saga_ctx = doorbells ? w->runner : NULL,
		};
		assert_int_equal(kobo_shard_start(w->stores[i], &config, &w->shards[i]), KOBO_OK);
	}
}

static int world_setup(void **state)
{
	world *w = calloc(1, sizeof(*w));
	kobo_log_set_level(KOBO_LOG_ERROR);
	kobo_shard_map_default(&w->map, SHARDS);
	for (uint32_t i = 0; i < SHARDS; i++)
		assert_int_equal(kobo_store_open("mem:", i, false, &w->stores[i]), KOBO_OK);
	world_start_runner(w, 0);
	world_start_shards(w, true);
	assert_int_equal(kobo_saga_runner_start(w->runner), KOBO_OK);
	create_account(w, "cash", true);
	*state = w;
	return 0;
}

static void world_stop(world *w)
{
	kobo_saga_runner_stop(w->runner);
	for (uint32_t i = 0; i < SHARDS; i++)
		kobo_shard_stop(w->shards[i]);
	kobo_saga_runner_destroy(w->runner);
}

static int world_teardown(void **state)
{
	world *w = *state;
	world_stop(w);
	for (uint32_t i = 0; i < SHARDS; i++)
		kobo_store_close(w->stores[i]);
	free(w);
	return 0;
}

/* Funds a fresh wallet on shard a and names a fresh payee on shard b. */
static void parties(world *w, const char *tag, uint32_t a, uint32_t b, int64_t funds,
                    char *payer, char *payee)
{
	char prefix[32];
	snprintf(prefix, sizeof(prefix), "%s:payer:", tag);
	id_on_shard(w, prefix, a, payer, 32);
	snprintf(prefix, sizeof(prefix), "%s:payee:", tag);
	id_on_shard(w, prefix, b, payee, 32);
	create_account(w, payer, false);
	create_account(w, payee, false);
	kobo_op op;
	char id[48];
	snprintf(id, sizeof(id), "fund:%s", payer);
	uint32_t shard = transfer_op(w, &op, id, "cash", payer, funds, false);
	kobo_result r = run(w, shard, &op);
	if (r.transfer.status == KOBO_STATUS_PROCESSING)
		settled(w, shard, id);
}

static void assert_clearing_nets_to_zero(world *w)
{
	kobo_account ab = account(w, "kobo:clearing:0:1:NGN");
	kobo_account ba = account(w, "kobo:clearing:1:0:NGN");
	assert_int_equal(ab.posted + ba.posted, 0);
	assert_int_equal(ab.pending_in, ba.pending_out);
	assert_int_equal(ba.pending_in, ab.pending_out);
}

static void runner_posts_a_cross_shard_transfer(void **state)
{
	world *w = *state;
	char payer[32], payee[32];
	parties(w, "post", 0, 1, 1000, payer, payee);
	kobo_op op;
	uint32_t a = transfer_op(w, &op, "tx:post", payer, payee, 300, false);
	kobo_result r = run(w, a, &op);
	assert_int_equal(r.code, KOBO_RESULT_CREATED);
	assert_int_equal(r.transfer.status, KOBO_STATUS_PROCESSING);
	kobo_transfer t = settled(w, a, "tx:post");
	assert_int_equal(t.status, KOBO_STATUS_POSTED);
	assert_int_equal(t.posted_amount, 300);
	assert_int_equal(account(w, payer).posted, 700);
	assert_int_equal(account(w, payer).pending_out, 0);
	assert_int_equal(account(w, payee).posted, 300);
	assert_clearing_nets_to_zero(w);

	/* The same request again replays; nothing moves twice. */
	r = run(w, a, &op);
	assert_int_equal(r.code, KOBO_RESULT_REPLAYED);
	assert_int_equal(r.transfer.status, KOBO_STATUS_POSTED);
	assert_int_equal(account(w, payee).posted, 300);
}

static void runner_holds_posts_part_and_voids(void **state)
{
	world *w = *state;
	char payer[32], payee[32];
	parties(w, "hold", 1, 0, 1000, payer, payee);
	kobo_op op;
	uint32_t a = transfer_op(w, &op, "tx:hold", payer, payee, 400, true);
	run(w, a, &op);
	kobo_transfer t = settled(w, a, "tx:hold");
	assert_int_equal(t.status, KOBO_STATUS_PENDING);
	assert_int_equal(account(w, payer).pending_out, 400);
	assert_int_equal(account(w, payee).pending_in, 400);
	assert_clearing_nets_to_zero(w);

	kobo_op post;
	memset(&post, 0, sizeof(post));
	post.kind = KOBO_OP_POST;
	snprintf(post.u.target.id, sizeof(post.u.target.id), "tx:hold");
	post.u.target.has_amount = true;
	post.u.target.amount = 150;
	kobo_result r = run(w, a, &post);
	assert_int_equal(r.code, KOBO_RESULT_UPDATED);
	assert_int_equal(r.transfer.status, KOBO_STATUS_PROCESSING);
	t = settled(w, a, "tx:hold");
	assert_int_equal(t.status, KOBO_STATUS_POSTED);
	assert_int_equal(t.posted_amount, 150);
	assert_int_equal(account(w, payer).posted, 850);
	assert_int_equal(account(w, payer).pending_out, 0);
	assert_int_equal(account(w, payee).posted, 150);
	assert_int_equal(account(w, payee).pending_in, 0);
	assert_clearing_nets_to_zero(w);

	/* A second hold, voided. */
	a = transfer_op(w, &op, "tx:hold2", payer, payee, 100, true);
	run(w, a, &op);
	settled(w, a, "tx:hold2");
	kobo_op void_op;
	memset(&void_op, 0, sizeof(void_op));
	void_op.kind = KOBO_OP_VOID;
	snprintf(void_op.u.target.id, sizeof(void_op.u.target.id), "tx:hold2");
	run(w, a, &void_op);
	t = settled(w, a, "tx:hold2");
	assert_int_equal(t.status, KOBO_STATUS_VOIDED);
	assert_int_equal(t.void_reason, KOBO_VOID_VOIDED);
	assert_int_equal(account(w, payer).pending_out, 0);
	assert_int_equal(account(w, payee).pending_in, 0);
	assert_int_equal(account(w, payer).posted, 850);
	assert_clearing_nets_to_zero(w);
}

static void runner_compensates_a_refused_credit(void **state)
{
	world *w = *state;
	char payer[32], payee[32];
	parties(w, "refuse", 0, 1, 1000, payer, payee);
	char ghost[32];
	id_on_shard(w, "ghost:", 1, ghost, sizeof(ghost));
	kobo_op op;
	uint32_t a = transfer_op(w, &op, "tx:ghost", payer, ghost, 600, false);
	run(w, a, &op);
	kobo_transfer t = settled(w, a, "tx:ghost");
	assert_int_equal(t.status, KOBO_STATUS_VOIDED);
	assert_int_equal(t.void_reason, KOBO_VOID_COMPENSATED);
	assert_int_equal(t.error_code, KOBO_RESULT_ACCOUNT_NOT_FOUND);
	assert_int_equal(account(w, payer).posted, 1000);
	assert_int_equal(account(w, payer).pending_out, 0);
	assert_clearing_nets_to_zero(w);
}

static void runner_aborts_past_the_deadline(void **state)
{
	world *w = *state;
	char payer[32], payee[32];
	parties(w, "late", 0, 1, 1000, payer, payee);
	/* Restart the runner with a deadline already passed by any saga. */
	world_stop(w);
	world_start_runner(w, 1);
	world_start_shards(w, true);
	assert_int_equal(kobo_saga_runner_start(w->runner), KOBO_OK);

	kobo_op op;
	uint32_t a = transfer_op(w, &op, "tx:late", payer, payee, 250, false);
	struct timespec pause = { .tv_nsec = 5 * 1000 * 1000 };
	kobo_result r = run(w, a, &op);
	assert_int_equal(r.transfer.status, KOBO_STATUS_PROCESSING);
	nanosleep(&pause, NULL);
	kobo_transfer t = settled(w, a, "tx:late");
	/* Either B took it before the deadline check, or it was aborted and
	 * the payer refunded: never both, never neither. */
	if (t.status == KOBO_STATUS_VOIDED) {
		assert_int_equal(t.void_reason, KOBO_VOID_COMPENSATED);
		assert_int_equal(t.error_code, KOBO_RESULT_SAGA_TIMEOUT);
		assert_int_equal(account(w, payer).posted, 1000);
		assert_int_equal(account(w, payee).posted, 0);
	} else {
		assert_int_equal(t.status, KOBO_STATUS_POSTED);
		assert_int_equal(account(w, payee).posted, 250);
	}
	assert_clearing_nets_to_zero(w);
}

static void runner_resumes_sagas_left_by_a_crash(void **state)
{
	world *w = *state;
	char payer[32], payee[32];
	parties(w, "crash", 1, 0, 1000, payer, payee);
	/* Shards without doorbells: the RESERVED record lands, nobody is told
	 * (as if the process died right after the commit). */
	world_stop(w);
	world_start_runner(w, 0);
	world_start_shards(w, false);
	kobo_op op;
	uint32_t a = transfer_op(w, &op, "tx:crash", payer, payee, 120, false);
	kobo_result r = run(w, a, &op);
	assert_int_equal(r.transfer.status, KOBO_STATUS_PROCESSING);
	assert_int_equal(account(w, payer).pending_out, 120);

	/* "Restart": the runner's first scan finds it. */
	assert_int_equal(kobo_saga_runner_start(w->runner), KOBO_OK);
	kobo_transfer t = settled(w, a, "tx:crash");
	assert_int_equal(t.status, KOBO_STATUS_POSTED);
	assert_int_equal(account(w, payer).posted, 880);
	assert_int_equal(account(w, payee).posted, 120);
	assert_clearing_nets_to_zero(w);
}

/* ---- Wall-clock steps (the runner ages sagas on the monotonic clock). ---- */

static int64_t wall_an_hour_ahead(void)
{
	return kobo_now_ms() + 3600 * 1000;
}

/* The wall clock jumps an hour ahead of the records' timestamps (an NTP
 * step, an operator). A saga that just began is not an hour old: it must
 * not be aborted past its 30 s deadline, but credited and posted. (Aged by
 * wall clock, now_ms - updated_at_ms said 3,600 s and the runner sent
 * SAGA_ABORT: a refunded payer for a transfer nobody let time out.) */
static void runner_deadline_ignores_a_wall_clock_step(void **state)
{
	world *w = *state;
	char payer[32], payee[32];
	parties(w, "step", 0, 1, 1000, payer, payee);
	world_stop(w);
	kobo_saga_config config = { .now_ms = wall_an_hour_ahead };
	world_start_runner_with(w, &config);
	world_start_shards(w, true);
	assert_int_equal(kobo_saga_runner_start(w->runner), KOBO_OK);

	kobo_op op;
	uint32_t a = transfer_op(w, &op, "tx:step", payer, payee, 250, false);
	kobo_result r = run(w, a, &op);
	assert_int_equal(r.transfer.status, KOBO_STATUS_PROCESSING);
	kobo_transfer t = settled(w, a, "tx:step");
	if (t.status != KOBO_STATUS_POSTED)
		fail_msg("tx:step ended %s (error %s), expected posted: the wall "
		         "clock step aged it past its deadline",
		         kobo_transfer_status_name(t.status),
		         kobo_result_code_name(t.error_code));
	assert_int_equal(account(w, payee).posted, 250);
	assert_int_equal(account(w, payer).posted, 750);
	assert_clearing_nets_to_zero(w);
}

/* ---- A settle that changes nothing; a reader that will not open. ---- */

static int64_t wall_an_hour_behind(void)
{
	return kobo_now_ms() - 3600 * 1000;
}

/* The value of the metric line starting with name (labels included) in the
 * rendered metrics, 0 when absent. */
static double metric(const char *name)
{
	static char text[1 << 20];
	size_t len = kobo_metrics_render(text, sizeof(text));
	assert_true(len < sizeof(text));
	size_t name_len = strlen(name);
	for (const char *line = text; *line;) {
		const char *end = strchr(line, '\n');
		if (strncmp(line, name, name_len) == 0 && line[name_len] == ' ')
			return strtod(line + name_len + 1, NULL);
		if (!end)
			break;
		line = end + 1;
	}
	return 0;
}

#define SETTLE_STEPS "kobo_saga_step_duration_seconds_count{step=\"settle\"}"

/* A runner whose SAGA_SETTLE can never apply: shard 0's record is RESERVED
 * in the store the runner reads, but the settle goes to a writer over an
 * empty store, which answers TRANSFER_NOT_FOUND and changes nothing (as an
 * AMOUNT_OVERFLOW or REPLAYED settle changes nothing). B's SAGA_CREDIT
 * works and replays. The record stays RESERVED however often the runner
 * tries. Returns with the runner created (config_in's deadline, stuck age
 * and clock) but not started; undo with blind_world_stop. */
typedef struct blind_world {
	kobo_store *empty;
	kobo_shard *blind;
	kobo_shard *runner_shards[SHARDS];
} blind_world;

static void blind_world_start(world *w, blind_world *b, kobo_saga_config config)
{
	char payer[32], payee[32];
	parties(w, "blind", 0, 1, 1000, payer, payee);
	world_stop(w);
	assert_int_equal(kobo_store_open("mem:", 0, false, &b->empty), KOBO_OK);
	kobo_shard_config blind_config = { .index = 0 };
	assert_int_equal(kobo_shard_start(b->empty, &blind_config, &b->blind), KOBO_OK);
	b->runner_shards[0] = b->blind;
	config.shards = b->runner_shards;
	world_start_runner_with(w, &config);
	world_start_shards(w, false); /* no doorbells: the scan finds it */
	b->runner_shards[1] = w->shards[1];

	kobo_op op;
	uint32_t a = transfer_op(w, &op, "tx:blind", payer, payee, 100, false);
	assert_int_equal(a, 0);
	kobo_result r = run(w, a, &op);
	assert_int_equal(r.transfer.status, KOBO_STATUS_PROCESSING);
}

/* Stops the runner before the blind shard it submits to, then gives the
 * teardown a normal world again. */
static void blind_world_stop(world *w, blind_world *b)
{
	world_stop(w);
	kobo_shard_stop(b->blind);
	kobo_store_close(b->empty);
	world_start_runner(w, 0);
	world_start_shards(w, true);
	assert_int_equal(kobo_saga_runner_start(w->runner), KOBO_OK);
}

/* Issue 7 B: a settle answered with anything but UPDATED made no progress;
 * the runner used to reset its backoff and drive the saga again at once,
 * some 45,000 steps a second for as long as the state lasted. It must keep
 * backing off (10 ms doubling to 5 s): a handful of settles a second. */
static void runner_backs_off_a_settle_that_changes_nothing(void **state)
{
	world *w = *state;
	blind_world b;
	kobo_saga_config config = { .deadline_ms = 0 };
	blind_world_start(w, &b, config);

	double before = metric(SETTLE_STEPS);
	assert_int_equal(kobo_saga_runner_start(w->runner), KOBO_OK);
	struct timespec second = { .tv_sec = 1 };
	nanosleep(&second, NULL);
	double settles = metric(SETTLE_STEPS) - before;
	blind_world_stop(w, &b);

	/* Backoff 10, 20, 40, … ms: about 7 settles in the first second. */
	if (settles < 1 || settles >= 50)
		fail_msg("%.0f settles in 1 s of a settle that changes nothing; "
		         "expected 1..49 (backing off)", settles);
}

/* Stuck sagas are reported by their monotonic age: with the wall clock an
 * hour behind the record's updated_at (a step back after it was written),
 * a saga stuck for stuck_ms is still reported. (Aged by wall clock, its
 * age was negative for an hour and nothing was reported.) */
static void runner_reports_stuck_despite_a_wall_clock_step_back(void **state)
{
	world *w = *state;
	blind_world b;
	kobo_saga_config config = { .stuck_ms = 200, .now_ms = wall_an_hour_behind };
	blind_world_start(w, &b, config);

	assert_int_equal(kobo_saga_runner_start(w->runner), KOBO_OK);
	double stuck = 0;
	for (int waited_ms = 0; waited_ms < 3000 && stuck < 1; waited_ms += 50) {
		struct timespec pause = { .tv_nsec = 50 * 1000 * 1000 };
		nanosleep(&pause, NULL);
		stuck = metric("kobo_sagas_stuck");
	}
	blind_world_stop(w, &b);
	if (stuck < 1)
		fail_msg("no saga reported stuck 3 s into a saga stuck for "
		         "stuck_ms = 200 with the wall clock stepped back an hour");
}

/* A store whose first reader opens fail (EMFILE, a transient I/O error):
 * only reader_open is ever called on it by the runner; the readers it hands
 * out belong to the real store. */
typedef struct flaky_store {
	kobo_store base;
	kobo_store_ops ops;
	kobo_store *inner;
	_Atomic int opens_to_fail;
} flaky_store;

static int flaky_reader_open(kobo_store *store, kobo_store_reader **out)
{
	flaky_store *f = (flaky_store *)store;
	if (atomic_load(&f->opens_to_fail) > 0) {
		atomic_fetch_sub(&f->opens_to_fail, 1);
		return KOBO_ESTORE;
	}
	return kobo_store_reader_open(f->inner, out);
}

/* Issue 7 C (8a): the runner opened each shard's reader once; when that
 * open failed, the shard's sagas never moved again until a restart. It
 * must open the reader again on a later pass. */
static void runner_reopens_a_reader_that_failed_to_open(void **state)
{
	world *w = *state;
	char payer[32], payee[32];
	parties(w, "flaky", 0, 1, 1000, payer, payee);
	world_stop(w);

	flaky_store flaky;
	memset(&flaky, 0, sizeof(flaky));
	flaky.ops.reader_open = flaky_reader_open;
	flaky.base.ops = &flaky.ops;
	flaky.inner = w->stores[0];
	atomic_store(&flaky.opens_to_fail, 3);
	kobo_store *runner_stores[SHARDS] = { &flaky.base, w->stores[1] };
	kobo_saga_config config = { .stores = runner_stores };
	world_start_runner_with(w, &config);
	world_start_shards(w, true);
	assert_int_equal(kobo_saga_runner_start(w->runner), KOBO_OK);

	kobo_op op;
	uint32_t a = transfer_op(w, &op, "tx:flaky", payer, payee, 40, false);
	assert_int_equal(a, 0);
	kobo_result r = run(w, a, &op);
	assert_int_equal(r.transfer.status, KOBO_STATUS_PROCESSING);
	kobo_transfer t = settled(w, a, "tx:flaky");
	assert_int_equal(t.status, KOBO_STATUS_POSTED);
	assert_int_equal(account(w, payee).posted, 40);
	assert_int_equal(atomic_load(&flaky.opens_to_fail), 0);
	/* The runner's stores must outlive it: back to a normal world. */
	world_stop(w);
	world_start_runner(w, 0);
	world_start_shards(w, true);
	assert_int_equal(kobo_saga_runner_start(w->runner), KOBO_OK);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(remote_op_follows_the_state),
		cmocka_unit_test(settle_reads_b_answers),
		cmocka_unit_test_setup_teardown(runner_posts_a_cross_shard_transfer,
		                                world_setup, world_teardown),
		cmocka_unit_test_setup_teardown(runner_holds_posts_part_and_voids,
		                                world_setup, world_teardown),
		cmocka_unit_test_setup_teardown(runner_compensates_a_refused_credit,
		                                world_setup, world_teardown),
		cmocka_unit_test_setup_teardown(runner_aborts_past_the_deadline,
		                                world_setup, world_teardown),
		cmocka_unit_test_setup_teardown(runner_resumes_sagas_left_by_a_crash,
		                                world_setup, world_teardown),
		cmocka_unit_test_setup_teardown(runner_deadline_ignores_a_wall_clock_step,
		                                world_setup, world_teardown),
		cmocka_unit_test_setup_teardown(runner_reports_stuck_despite_a_wall_clock_step_back,
		                                world_setup, world_teardown),
		cmocka_unit_test_setup_teardown(runner_backs_off_a_settle_that_changes_nothing,
		                                world_setup, world_teardown),
		cmocka_unit_test_setup_teardown(runner_reopens_a_reader_that_failed_to_open,
		                                world_setup, world_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
