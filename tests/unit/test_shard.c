/*
 * test_shard.c — the shard writer over a real SQLite store: answers follow
 * commits, the queue is bounded, stop drains, atomic groups of different
 * requests never merge, holds expire on the writer's clock (and keep
 * expiring when that wall clock is stepped back and forward again), and
 * the partition hash never changes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/obs/obs.h"
#include "../../src/shard/shard.h"
#include "../../src/store/mem/store_mem.h"

typedef struct fixture {
	char dir[64];
	char path[96];
	kobo_store *store;
	kobo_shard *shard;
} fixture;

static _Atomic int64_t fake_now_ms;
static int64_t fake_clock(void) { return atomic_load(&fake_now_ms); }

static int setup(void **state)
{
	fixture *f = calloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/kobo-test-shard-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/shard-0.db", f->dir);
	char url[96];
	snprintf(url, sizeof(url), "sqlite:%s", f->dir);
	assert_int_equal(kobo_store_open(url, 0, false, &f->store), KOBO_OK);
	atomic_store(&fake_now_ms, 1764064800000); /* 2025-11-25T10:00:00Z */
	kobo_log_set_level(KOBO_LOG_WARN);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fixture *f = *state;
	if (f->shard)
		kobo_shard_stop(f->shard);
	kobo_store_close(f->store);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

static void start(fixture *f, size_t queue_ops_max, size_t batch_ops_max)
{
	kobo_shard_config config = {
		.index = 0,
		.queue_ops_max = queue_ops_max,
		.batch_ops_max = batch_ops_max,
		.now_ms = fake_clock,
	};
	assert_int_equal(kobo_shard_start(f->store, &config, &f->shard), KOBO_OK);
}

/* ---- A request that records its answer, with a blocking variant. ---- */

typedef struct call {
	kobo_request request;
	kobo_op ops[4];
	kobo_result results[4];
	_Atomic int done_count;
	sem_t answered;
	/* Set to block the writer inside done until released. */
	sem_t *entered;
	sem_t *release;
	/* Set to check, inside done, that the batch is already visible to a
	 * reader (committed before answering). */
	kobo_store_reader *reader;
	bool visible_in_done;
} call;

static void call_done(kobo_request *request)
{
	call *c = request->user;
	if (c->reader && request->status == KOBO_OK) {
		kobo_transfer t;
		c->visible_in_done = kobo_store_read_transfer(
			c->reader, c->ops[0].u.transfer.id, &t) == KOBO_OK;
	}
	if (c->entered)
		sem_post(c->entered);
	if (c->release)
		sem_wait(c->release);
	atomic_fetch_add(&c->done_count, 1);
	sem_post(&c->answered);
}

static void call_init(call *c, size_t op_count)
{
	memset(c, 0, sizeof(*c));
	sem_init(&c->answered, 0, 0);
	c->request.ops = c->ops;
	c->request.results = c->results;
	c->request.op_count = op_count;
	c->request.done = call_done;
	c->request.user = c;
}

static void op_account(kobo_op *op, const char *id, bool allow_negative)
{
	memset(op, 0, sizeof(*op));
	op->kind = KOBO_OP_CREATE_ACCOUNT;
	snprintf(op->u.account.id, sizeof(op->u.account.id), "%s", id);
	snprintf(op->u.account.currency, sizeof(op->u.account.currency), "NGN");
	op->u.account.allow_negative = allow_negative;
	op->u.account.metadata = "{}";
	op->u.account.metadata_len = 2;
	snprintf(op->request_id, sizeof(op->request_id), "test");
}

static void op_transfer(kobo_op *op, const char *id, const char *from,
                        const char *to, int64_t amount, uint32_t timeout_seconds)
{
	memset(op, 0, sizeof(*op));
	op->kind = KOBO_OP_CREATE_TRANSFER;
	kobo_transfer *t = &op->u.transfer;
	snprintf(t->id, sizeof(t->id), "%s", id);
	snprintf(t->from, sizeof(t->from), "%s", from);
	snprintf(t->to, sizeof(t->to), "%s", to);
	snprintf(t->currency, sizeof(t->currency), "NGN");
	t->amount = amount;
	t->pending = timeout_seconds > 0;
	t->timeout_seconds = timeout_seconds;
	t->metadata = "{}";
	t->metadata_len = 2;
	snprintf(op->request_id, sizeof(op->request_id), "test");
}

static void submit_and_wait(kobo_shard *shard, call *c)
{
	assert_int_equal(kobo_shard_submit(shard, &c->request), KOBO_OK);
	sem_wait(&c->answered);
	assert_int_equal(c->request.status, KOBO_OK);
}

static void create_accounts(fixture *f)
{
	call c;
	call_init(&c, 3);
	op_account(&c.ops[0], "cash", true);
	op_account(&c.ops[1], "alice", false);
	op_account(&c.ops[2], "bob", false);
	submit_and_wait(f->shard, &c);
	for (int i = 0; i < 3; i++)
		assert_int_equal(c.results[i].code, KOBO_RESULT_CREATED);
}

/* Parks the writer thread inside a done callback, so that requests submitted
 * meanwhile queue up and later form one batch; sem_post(&b->release) lets
 * it go on. */
typedef struct writer_block {
	call c;
	sem_t entered;
	sem_t release;
} writer_block;

static void block_writer(kobo_shard *shard, writer_block *b)
{
	sem_init(&b->entered, 0, 0);
	sem_init(&b->release, 0, 0);
	call_init(&b->c, 1);
	op_account(&b->c.ops[0], "blocker", false);
	b->c.entered = &b->entered;
	b->c.release = &b->release;
	assert_int_equal(kobo_shard_submit(shard, &b->c.request), KOBO_OK);
	sem_wait(&b->entered);
}

/* ---- Tests. ---- */

static void partition_hash_is_frozen(void **state)
{
	(void)state;
	/* FNV-1a 64 mod 4096; changing these moves accounts between shards. */
	assert_int_equal(kobo_partition_of("wallet:42"), 3376);
	assert_int_equal(kobo_partition_of("wallet:77"), 392);
	assert_int_equal(kobo_partition_of("a"), 3212);
	assert_int_equal(kobo_partition_of("cash:NGN"), 2051);
	assert_int_equal(kobo_shard_of_partition(3376, 1), 0);
	assert_int_equal(kobo_shard_of_partition(3377, 4), 1);
}

static void answer_follows_commit(void **state)
{
	fixture *f = *state;
	start(f, 0, 0);
	create_accounts(f);

	call c;
	call_init(&c, 1);
	op_transfer(&c.ops[0], "tx:1", "cash", "alice", 500, 0);
	assert_int_equal(kobo_store_reader_open(f->store, &c.reader), KOBO_OK);
	submit_and_wait(f->shard, &c);
	assert_int_equal(c.results[0].code, KOBO_RESULT_CREATED);
	assert_true(c.visible_in_done);
	assert_int_equal(atomic_load(&c.done_count), 1);
	kobo_store_reader_close(c.reader);
}

typedef struct client_arg {
	kobo_shard *shard;
	int index;
	int transfers;
	int created;
} client_arg;

static void *client_main(void *p)
{
	client_arg *arg = p;
	for (int i = 0; i < arg->transfers; i++) {
		call c;
		char id[32];
		call_init(&c, 1);
		snprintf(id, sizeof(id), "tx:%d:%d", arg->index, i);
		/* Alternate directions; alice and bob start with 1,000 each. */
		op_transfer(&c.ops[0], id, (i % 2) ? "alice" : "bob",
		            (i % 2) ? "bob" : "alice", 1 + i % 7, 0);
		submit_and_wait(arg->shard, &c);
		if (c.results[0].code == KOBO_RESULT_CREATED)
			arg->created++;
		sem_destroy(&c.answered);
	}
	return NULL;
}

static void many_clients_conserve_money(void **state)
{
	fixture *f = *state;
	start(f, 0, 0);
	create_accounts(f);
	call fund;
	call_init(&fund, 2);
	op_transfer(&fund.ops[0], "fund:a", "cash", "alice", 1000, 0);
	op_transfer(&fund.ops[1], "fund:b", "cash", "bob", 1000, 0);
	submit_and_wait(f->shard, &fund);

	enum { CLIENTS = 8, EACH = 200 };
	pthread_t threads[CLIENTS];
	client_arg args[CLIENTS];
	for (int i = 0; i < CLIENTS; i++) {
		args[i] = (client_arg){ .shard = f->shard, .index = i, .transfers = EACH };
		pthread_create(&threads[i], NULL, client_main, &args[i]);
	}
	int created = 0;
	for (int i = 0; i < CLIENTS; i++) {
		pthread_join(threads[i], NULL);
		created += args[i].created;
	}
	assert_true(created > 0);

	kobo_store_reader *reader;
	assert_int_equal(kobo_store_reader_open(f->store, &reader), KOBO_OK);
	int64_t sum = 0;
	const char *names[] = { "cash", "alice", "bob" };
	for (int i = 0; i < 3; i++) {
		kobo_account a;
		assert_int_equal(kobo_store_read_account(reader, names[i], &a), KOBO_OK);
		assert_true(a.allow_negative || kobo_account_available(&a) >= 0);
		sum += a.posted;
	}
	assert_int_equal(sum, 0);
	kobo_store_reader_close(reader);
}

static void full_queue_is_refused(void **state)
{
	fixture *f = *state;
	start(f, KOBO_BATCH_OPS_MAX, 0);
	create_accounts(f);

	/* Hold the writer inside a done callback so the queue cannot drain. */
	writer_block blocker;
	block_writer(f->shard, &blocker);

	static kobo_op big_ops[KOBO_BATCH_OPS_MAX];
	static kobo_result big_results[KOBO_BATCH_OPS_MAX];
	for (int i = 0; i < KOBO_BATCH_OPS_MAX; i++) {
		char id[32];
		snprintf(id, sizeof(id), "acct:%d", i);
		op_account(&big_ops[i], id, false);
	}
	call big;
	call_init(&big, 0);
	big.request.ops = big_ops;
	big.request.results = big_results;
	big.request.op_count = KOBO_BATCH_OPS_MAX;
	assert_int_equal(kobo_shard_submit(f->shard, &big.request), KOBO_OK);
	assert_int_equal(kobo_shard_queue_depth(f->shard), KOBO_BATCH_OPS_MAX);

	call extra;
	call_init(&extra, 1);
	op_account(&extra.ops[0], "extra", false);
	assert_int_equal(kobo_shard_submit(f->shard, &extra.request), KOBO_EOVERLOADED);

	/* Too many ops for one batch is a caller error, not overload. */
	call too_big;
	call_init(&too_big, 0);
	too_big.request.ops = big_ops;
	too_big.request.results = big_results;
	too_big.request.op_count = KOBO_BATCH_OPS_MAX + 1;
	assert_int_equal(kobo_shard_submit(f->shard, &too_big.request), KOBO_EINVAL);

	sem_post(&blocker.release);
	sem_wait(&big.answered);
	assert_int_equal(big.request.status, KOBO_OK);
	assert_int_equal(big_results[KOBO_BATCH_OPS_MAX - 1].code, KOBO_RESULT_CREATED);
	assert_int_equal(atomic_load(&extra.done_count), 0);
}

static void stop_answers_everything_queued(void **state)
{
	fixture *f = *state;
	start(f, 0, 0);
	create_accounts(f);

	enum { N = 300 };
	call *calls = calloc(N, sizeof(*calls));
	for (int i = 0; i < N; i++) {
		char id[32];
		call_init(&calls[i], 1);
		snprintf(id, sizeof(id), "drain:%d", i);
		op_transfer(&calls[i].ops[0], id, "cash", "alice", 1, 0);
		assert_int_equal(kobo_shard_submit(f->shard, &calls[i].request), KOBO_OK);
	}
	kobo_shard_stop(f->shard);
	f->shard = NULL;
	for (int i = 0; i < N; i++) {
		assert_int_equal(atomic_load(&calls[i].done_count), 1);
		assert_int_equal(calls[i].request.status, KOBO_OK);
		assert_int_equal(calls[i].results[0].code, KOBO_RESULT_CREATED);
	}
	kobo_store_reader *reader;
	kobo_account alice;
	assert_int_equal(kobo_store_reader_open(f->store, &reader), KOBO_OK);
	assert_int_equal(kobo_store_read_account(reader, "alice", &alice), KOBO_OK);
	assert_int_equal(alice.posted, N);
	kobo_store_reader_close(reader);
	free(calls);
}

static void atomic_groups_of_two_requests_stay_apart(void **state)
{
	fixture *f = *state;
	start(f, 0, 0);
	create_accounts(f);

	writer_block blocker;
	block_writer(f->shard, &blocker);

	/* Both queue behind the blocker and so share one batch. */
	call failing, passing;
	call_init(&failing, 2);
	op_transfer(&failing.ops[0], "atomic:a1", "cash", "alice", 10, 0);
	op_transfer(&failing.ops[1], "atomic:a2", "bob", "alice", 10, 0); /* bob has 0 */
	failing.ops[0].atomic_group = failing.ops[1].atomic_group = 1;
	call_init(&passing, 2);
	op_transfer(&passing.ops[0], "atomic:b1", "cash", "bob", 10, 0);
	op_transfer(&passing.ops[1], "atomic:b2", "cash", "alice", 10, 0);
	passing.ops[0].atomic_group = passing.ops[1].atomic_group = 1;
	assert_int_equal(kobo_shard_submit(f->shard, &failing.request), KOBO_OK);
	assert_int_equal(kobo_shard_submit(f->shard, &passing.request), KOBO_OK);
	sem_post(&blocker.release);
	sem_wait(&failing.answered);
	sem_wait(&passing.answered);

	assert_int_equal(failing.results[0].code, KOBO_RESULT_NOT_APPLIED);
	assert_int_equal(failing.results[1].code, KOBO_RESULT_INSUFFICIENT_FUNDS);
	assert_int_equal(passing.results[0].code, KOBO_RESULT_CREATED);
	assert_int_equal(passing.results[1].code, KOBO_RESULT_CREATED);
}

/* The HTTP edge frees a request's memory as soon as its done returns. A
 * replay later in the same batch borrows the metadata of the op that created
 * the transfer, so the writer must answer the later request first. */
typedef struct owning_call {
	call c;
	char *metadata; /* heap, freed by done like the edge frees a body */
	char seen[16];  /* what done read of its result's metadata */
} owning_call;

static void owning_done(kobo_request *request)
{
	owning_call *o = request->user;
	const kobo_transfer *t = &request->results[0].transfer;
	snprintf(o->seen, sizeof(o->seen), "%.*s", (int)t->metadata_len, t->metadata);
	free(o->metadata);
	o->metadata = NULL;
	sem_post(&o->c.answered);
}

static void replay_in_same_batch_reads_live_metadata(void **state)
{
	fixture *f = *state;
	start(f, 0, 0);
	create_accounts(f);

	writer_block blocker;
	block_writer(f->shard, &blocker);

	owning_call first, second;
	owning_call *both[] = { &first, &second };
	for (int i = 0; i < 2; i++) {
		owning_call *o = both[i];
		memset(o->seen, 0, sizeof(o->seen));
		call_init(&o->c, 1);
		o->c.request.done = owning_done;
		o->c.request.user = o;
		o->metadata = strdup("{\"n\":1}");
		op_transfer(&o->c.ops[0], "same:1", "cash", "alice", 5, 0);
		o->c.ops[0].u.transfer.metadata = o->metadata;
		o->c.ops[0].u.transfer.metadata_len = (uint32_t)strlen(o->metadata);
		assert_int_equal(kobo_shard_submit(f->shard, &o->c.request), KOBO_OK);
	}
	sem_post(&blocker.release);
	sem_wait(&first.c.answered);
	sem_wait(&second.c.answered);

	assert_int_equal(first.c.results[0].code, KOBO_RESULT_CREATED);
	assert_int_equal(second.c.results[0].code, KOBO_RESULT_REPLAYED);
	assert_string_equal(first.seen, "{\"n\":1}");
	assert_string_equal(second.seen, "{\"n\":1}");
}

static void holds_expire_on_the_writer_clock(void **state)
{
	fixture *f = *state;
	start(f, 0, 0);
	create_accounts(f);

	call hold;
	call_init(&hold, 1);
	op_transfer(&hold.ops[0], "hold:1", "cash", "alice", 70, 1);
	submit_and_wait(f->shard, &hold);
	assert_int_equal(hold.results[0].transfer.status, KOBO_STATUS_PENDING);

	atomic_fetch_add(&fake_now_ms, 1500);
	kobo_store_reader *reader;
	assert_int_equal(kobo_store_reader_open(f->store, &reader), KOBO_OK);
	kobo_transfer t = { 0 };
	/* The writer scans every KOBO_SHARD_EXPIRY_INTERVAL_MS of real time
	 * when idle; give it ten intervals. */
	for (int i = 0; i < 100; i++) {
		assert_int_equal(kobo_store_read_transfer(reader, "hold:1", &t), KOBO_OK);
		if (t.status != KOBO_STATUS_PENDING)
			break;
		usleep(KOBO_SHARD_EXPIRY_INTERVAL_MS * 100);
	}
	assert_int_equal(t.status, KOBO_STATUS_VOIDED);
	assert_int_equal(t.void_reason, KOBO_VOID_EXPIRED);
	kobo_account alice;
	assert_int_equal(kobo_store_read_account(reader, "alice", &alice), KOBO_OK);
	assert_int_equal(alice.pending_in, 0);
	kobo_store_reader_close(reader);
}

/* With a batch smaller than an expiry scan, holds still all expire (the
 * writer scans batch_ops_max at a time and rescans at once while full), and
 * a request wider than batch_ops_max still runs. */
static void holds_expire_with_small_batches(void **state)
{
	fixture *f = *state;
	start(f, 0, 3);
	create_accounts(f);

	/* A request larger than batch_ops_max still runs, alone. */
	call wide;
	call_init(&wide, 4);
	for (int i = 0; i < 4; i++) {
		char id[32];
		snprintf(id, sizeof(id), "wide:%d", i);
		op_account(&wide.ops[i], id, false);
	}
	submit_and_wait(f->shard, &wide);
	assert_int_equal(wide.results[3].code, KOBO_RESULT_CREATED);

	enum { HOLDS = 7 };
	for (int i = 0; i < HOLDS; i++) {
		call hold;
		char id[32];
		call_init(&hold, 1);
		snprintf(id, sizeof(id), "small:%d", i);
		op_transfer(&hold.ops[0], id, "cash", "alice", 1, 1);
		submit_and_wait(f->shard, &hold);
		sem_destroy(&hold.answered);
	}
	atomic_fetch_add(&fake_now_ms, 1500);

	kobo_store_reader *reader;
	kobo_account alice = { 0 };
	assert_int_equal(kobo_store_reader_open(f->store, &reader), KOBO_OK);
	for (int i = 0; i < 100; i++) {
		assert_int_equal(kobo_store_read_account(reader, "alice", &alice), KOBO_OK);
		if (alice.pending_in == 0)
			break;
		usleep(KOBO_SHARD_EXPIRY_INTERVAL_MS * 100);
	}
	assert_int_equal(alice.pending_in, 0);
	kobo_store_reader_close(reader);
}

/* Waits up to max_ms of real time for hold id to leave PENDING; returns
 * its last state. */
static kobo_transfer wait_hold_ended(fixture *f, const char *id, int max_ms)
{
	kobo_store_reader *reader;
	assert_int_equal(kobo_store_reader_open(f->store, &reader), KOBO_OK);
	kobo_transfer t = { 0 };
	for (int waited_ms = 0;; waited_ms += 20) {
		assert_int_equal(kobo_store_read_transfer(reader, id, &t), KOBO_OK);
		if (t.status != KOBO_STATUS_PENDING || waited_ms >= max_ms)
			break;
		usleep(20 * 1000);
	}
	t.metadata = NULL;
	kobo_store_reader_close(reader);
	return t;
}

/* The wall clock is stepped back an hour (an operator, NTP) while a 1 s
 * hold is pending, then forward past the hold's expiry. The hold must
 * expire within a few scan intervals of real time: the scan cadence runs on
 * the monotonic clock, so the step back must not have pushed the next scan
 * an hour away. (Scheduled on the wall clock, the writer computed "next
 * scan in 3,600 s" while the clock was back and slept that long.) */
static void holds_expire_after_the_wall_clock_steps_back(void **state)
{
	fixture *f = *state;
	start(f, 0, 0);
	create_accounts(f);

	call hold;
	call_init(&hold, 1);
	op_transfer(&hold.ops[0], "hold:step", "cash", "alice", 70, 1);
	submit_and_wait(f->shard, &hold);
	assert_int_equal(hold.results[0].transfer.status, KOBO_STATUS_PENDING);
	int64_t created_ms = atomic_load(&fake_now_ms);

	/* Back an hour; let the writer run a few scans on that clock. The
	 * hold has not expired by the wall clock, so it stays pending. */
	atomic_store(&fake_now_ms, created_ms - 3600 * 1000);
	usleep(3 * KOBO_SHARD_EXPIRY_INTERVAL_MS * 1000);
	kobo_transfer t = wait_hold_ended(f, "hold:step", 0);
	assert_int_equal(t.status, KOBO_STATUS_PENDING);

	/* Forward again, past expires_at: expiry within ~4 scan intervals. */
	atomic_store(&fake_now_ms, created_ms + 1500);
	t = wait_hold_ended(f, "hold:step", 4 * KOBO_SHARD_EXPIRY_INTERVAL_MS);
	if (t.status != KOBO_STATUS_VOIDED)
		fail_msg("hold:step still %s %d ms after the wall clock passed its "
		         "expiry: the expiry scan stalled on the wall clock",
		         kobo_transfer_status_name(t.status),
		         4 * KOBO_SHARD_EXPIRY_INTERVAL_MS);
	assert_int_equal(t.void_reason, KOBO_VOID_EXPIRED);
}

/* A batch that breaks a ledger precondition (an amount of 0, which the edge
 * never lets through) is a programmer error: its requests are answered
 * KOBO_EINVAL (the edge answers 500 internal_error), nothing of it is
 * applied, the store stays healthy and the writer goes on. */
static void ledger_refusal_is_answered_as_a_programmer_error(void **state)
{
	fixture *f = *state;
	start(f, 0, 0);
	create_accounts(f);

	call bad;
	call_init(&bad, 2);
	op_transfer(&bad.ops[0], "tx:fine", "cash", "alice", 100, 0);
	op_transfer(&bad.ops[1], "tx:zero", "cash", "alice", 0, 0);
	assert_int_equal(kobo_shard_submit(f->shard, &bad.request), KOBO_OK);
	sem_wait(&bad.answered);
	assert_int_equal(bad.request.status, KOBO_EINVAL);
	assert_int_equal(atomic_load(&bad.done_count), 1);
	assert_true(kobo_shard_ready(f->shard));

	call good;
	call_init(&good, 1);
	op_transfer(&good.ops[0], "tx:after", "cash", "alice", 500, 0);
	submit_and_wait(f->shard, &good);
	assert_int_equal(good.results[0].code, KOBO_RESULT_CREATED);

	kobo_store_reader *reader;
	kobo_transfer t;
	kobo_account alice;
	assert_int_equal(kobo_store_reader_open(f->store, &reader), KOBO_OK);
	assert_int_equal(kobo_store_read_transfer(reader, "tx:fine", &t), KOBO_ENOTFOUND);
	assert_int_equal(kobo_store_read_transfer(reader, "tx:zero", &t), KOBO_ENOTFOUND);
	assert_int_equal(kobo_store_read_account(reader, "alice", &alice), KOBO_OK);
	assert_int_equal(alice.posted, 500);
	kobo_store_reader_close(reader);
}

/* A batch the store answers KOBO_ECONFLICT (nothing committed) is run
 * again, up to KOBO_SHARD_CONFLICT_RERUNS_MAX more times; past that its
 * requests get the conflict (the edge's 503) and nothing is applied. */
static void conflicts_rerun_the_batch_a_bounded_number_of_times(void **state)
{
	fixture *f = *state;
	kobo_store_close(f->store);
	assert_int_equal(kobo_store_open("mem:", 0, false, &f->store), KOBO_OK);
	start(f, 0, 0);
	create_accounts(f);

	call c;
	call_init(&c, 1);
	op_transfer(&c.ops[0], "tx:1", "cash", "alice", 500, 0);
	kobo_store_mem_conflict_next_commits(f->store, KOBO_SHARD_CONFLICT_RERUNS_MAX);
	submit_and_wait(f->shard, &c);
	assert_int_equal(c.results[0].code, KOBO_RESULT_CREATED);

	call d;
	call_init(&d, 1);
	op_transfer(&d.ops[0], "tx:2", "cash", "alice", 700, 0);
	kobo_store_mem_conflict_next_commits(f->store, KOBO_SHARD_CONFLICT_RERUNS_MAX + 1);
	assert_int_equal(kobo_shard_submit(f->shard, &d.request), KOBO_OK);
	sem_wait(&d.answered);
	assert_int_equal(d.request.status, KOBO_ECONFLICT);
	assert_true(kobo_shard_ready(f->shard));

	kobo_store_reader *reader;
	kobo_transfer t;
	kobo_account alice;
	assert_int_equal(kobo_store_reader_open(f->store, &reader), KOBO_OK);
	assert_int_equal(kobo_store_read_transfer(reader, "tx:2", &t), KOBO_ENOTFOUND);
	assert_int_equal(kobo_store_read_account(reader, "alice", &alice), KOBO_OK);
	assert_int_equal(alice.posted, 500);
	kobo_store_reader_close(reader);

	/* The retry with the same id applies it, once. */
	call e;
	call_init(&e, 1);
	op_transfer(&e.ops[0], "tx:2", "cash", "alice", 700, 0);
	submit_and_wait(f->shard, &e);
	assert_int_equal(e.results[0].code, KOBO_RESULT_CREATED);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(partition_hash_is_frozen),
		cmocka_unit_test_setup_teardown(answer_follows_commit, setup, teardown),
		cmocka_unit_test_setup_teardown(many_clients_conserve_money, setup, teardown),
		cmocka_unit_test_setup_teardown(full_queue_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(stop_answers_everything_queued, setup, teardown),
		cmocka_unit_test_setup_teardown(atomic_groups_of_two_requests_stay_apart,
		                                setup, teardown),
		cmocka_unit_test_setup_teardown(replay_in_same_batch_reads_live_metadata,
		                                setup, teardown),
		cmocka_unit_test_setup_teardown(holds_expire_with_small_batches, setup,
		                                teardown),
		cmocka_unit_test_setup_teardown(holds_expire_on_the_writer_clock, setup,
		                                teardown),
		cmocka_unit_test_setup_teardown(holds_expire_after_the_wall_clock_steps_back,
		                                setup, teardown),
		cmocka_unit_test_setup_teardown(ledger_refusal_is_answered_as_a_programmer_error,
		                                setup, teardown),
		cmocka_unit_test_setup_teardown(conflicts_rerun_the_batch_a_bounded_number_of_times,
		                                setup, teardown),
	};
	return cmocka_run_group_tests_name("shard", tests, NULL, NULL);
}
