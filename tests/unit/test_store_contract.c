/*
 * test_store_contract.c — one suite for store.h, run against every backend.
 *
 * Every test here states something src/store/store.h promises of any store
 * and checks it through the public API only: opened by URL
 * (kobo_store_open), driven with the real ledger the way the shard writer
 * drives a store (begin → load transfers → load accounts → apply → write →
 * commit), read back through a reader. The table `backends`
 * (store_contract.h) lists what the suite runs against, one cmocka group
 * each (a backend's name as the first argument runs only its group):
 *
 *   mem       "mem:"              a fresh in-memory store per test
 *   sqlite    "sqlite:<tmpdir>"   a fresh mkdtemp directory per test
 *   postgres  $KOBO_TEST_POSTGRES skipped, with a message, when unset
 *
 * A new backend is one row of that table; store_contract.h holds the rest
 * of the harness too (fixture, batch runner, read helpers). Where a test
 * needs something the public API cannot do — reopen the same data, fail a
 * commit, make one conflict — it asks the backend's adapter (reopen_store,
 * arm_commit_fault, arm_commit_conflicts), which says how each backend does
 * it: the mem store's restart, fault and conflict hooks (store_mem.h); for
 * SQLite, closing and opening the same URL, and a fault-injecting VFS
 * installed as SQLite's default VFS (a pass-through until armed), the way
 * test_store_sqlite.c injects write and fsync failures. A backend without
 * a way to do it skips those tests, saying so, instead of passing them.
 *
 * What stays in the backend files (test_store_mem.c, test_store_sqlite.c):
 * what only one backend has — SQLite's schema, migrations, read-only file
 * rules, query plans, arena and WAL bounds, lock contention; the mem store's
 * scale check — and tampering that needs the backend's own storage (raw
 * SQL edits of a shard file).
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
#include <unistd.h>

#include "../../src/ledger/ledger.h"
#include "../../src/store/store.h"
#include "../../src/obs/obs.h"
#include "../../src/store/layout.h"
#include "../../src/store/hot/store_hot.h"
#include "../../src/store/mem/store_mem.h"
#include "store_contract.h"
#include "test_ops.h"

/* ---- Batches and replays. ---- */

/* Everything a batch writes comes back field for field: through a reader,
 * and through the next batch's loads (a replay matches only when every
 * loaded field equals the original). */
static void batch_round_trip_through_ledger(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	kobo_transfer created[3];
	kobo_account accounts[3];
	kobo_transfer transfer;
	kobo_account account;
	char metadata[32];

	/* The op's metadata buffer is the caller's: the store keeps copies. */
	snprintf(metadata, sizeof metadata, "{\"owner\":\"ada\"}");
	kobo_op first[] = {
		test_op_account("cash", "NGN", true, NULL),
		test_op_account("alice", "NGN", false, metadata),
		test_op_account("bob", "NGN", false, "{}"),
		test_op_transfer("t1", "cash", "alice", 10000, false, 0),
		test_op_transfer("t2", "alice", "bob", 2500, true, 60),
		test_op_transfer("t3", "alice", "bob", 99999, false, 0),
	};
	/* Metadata is bytes, not a C string: a NUL inside must survive. */
	static const char odd[] = "{\"k\":\"a\0b\"}";
	first[3].u.transfer.metadata = odd;
	first[3].u.transfer.metadata_len = sizeof odd - 1;
	assert_int_equal(run_batch(e, first, 6, 1000), KOBO_OK);
	assert_int_equal(e->results[3].code, KOBO_RESULT_CREATED);
	assert_int_equal(e->results[4].code, KOBO_RESULT_CREATED);
	assert_int_equal(e->results[5].code, KOBO_RESULT_INSUFFICIENT_FUNDS);
	for (int i = 0; i < 3; i++) {
		assert_true(e->results[3 + i].has_transfer);
		created[i] = e->results[3 + i].transfer;
		accounts[i] = e->results[i].account;
	}
	assert_int_equal(created[1].expires_at_ms, 61000);
	assert_int_equal(created[2].status, KOBO_STATUS_REJECTED);

	reader = reader_open_ok(e);
	for (int i = 0; i < 3; i++) {
		transfer = read_transfer_ok(reader, created[i].id);
		assert_transfer_equal(&created[i], &transfer);
	}
	/* The accounts as the batch left them (results hold them as created). */
	account = read_account_ok(reader, "alice");
	accounts[1].posted = 10000;
	accounts[1].pending_out = 2500;
	assert_account_equal(&accounts[1], &account);
	account = read_account_ok(reader, "cash");
	accounts[0].posted = -10000;
	assert_account_equal(&accounts[0], &account);
	assert_true(account.allow_negative);
	account = read_account_ok(reader, "bob");
	accounts[2].pending_in = 2500;
	assert_account_equal(&accounts[2], &account);
	memset(metadata, 'x', sizeof metadata - 1);
	account = read_account_ok(reader, "alice");
	assert_memory_equal(account.metadata, "{\"owner\":\"ada\"}", account.metadata_len);

	/* The next batch reloads what was written: every replay matches the
	 * stored row field for field, balances come back as written, and the
	 * hold can be posted in part. Replays keep the original request id. */
	kobo_op second[] = {
		test_op_account("alice", "NGN", false, "{\"owner\":\"ada\"}"),
		test_op_transfer("t1", "cash", "alice", 10000, false, 0),
		test_op_transfer("t2", "alice", "bob", 2500, true, 60),
		test_op_transfer("t3", "alice", "bob", 99999, false, 0),
		test_op_target(KOBO_OP_POST, "t2", true, 2000),
	};
	second[1].u.transfer.metadata = odd;
	second[1].u.transfer.metadata_len = sizeof odd - 1;
	for (int i = 1; i < 4; i++)
		snprintf(second[i].request_id, sizeof second[i].request_id, "retry");
	assert_int_equal(run_batch(e, second, 5, 2000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_REPLAYED);
	assert_int_equal(e->results[0].account.posted, 10000);
	assert_int_equal(e->results[0].account.pending_out, 2500);
	assert_int_equal(e->results[0].account.created_at_ms, 1000);
	assert_int_equal(e->results[1].code, KOBO_RESULT_REPLAYED);
	assert_transfer_equal(&created[0], &e->results[1].transfer);
	assert_int_equal(e->results[2].code, KOBO_RESULT_REPLAYED);
	assert_transfer_equal(&created[1], &e->results[2].transfer);
	/* A recorded rejection replays as stored: rejected, with its code. */
	assert_true(e->results[3].has_transfer);
	assert_transfer_equal(&created[2], &e->results[3].transfer);
	assert_int_equal(e->results[4].code, KOBO_RESULT_UPDATED);

	/* What the post wrote: the state fields changed, nothing else. */
	transfer = read_transfer_ok(reader, "t2");
	assert_transfer_equal(&e->results[4].transfer, &transfer);
	assert_int_equal(transfer.status, KOBO_STATUS_POSTED);
	assert_int_equal(transfer.posted_amount, 2000);
	assert_int_equal(transfer.updated_at_ms, 2000);
	assert_int_equal(transfer.created_at_ms, 1000);
	assert_string_equal(transfer.request_id, "req-t2");
	transfer = read_transfer_ok(reader, "t3");
	assert_int_equal(transfer.status, KOBO_STATUS_REJECTED);
	assert_int_equal(transfer.error_code, KOBO_RESULT_INSUFFICIENT_FUNDS);
	account = read_account_ok(reader, "alice");
	assert_int_equal(account.posted, 8000);
	assert_int_equal(account.pending_out, 0);
	assert_int_equal(account.created_at_ms, 1000);
	account = read_account_ok(reader, "bob");
	assert_int_equal(account.posted, 2000);
	assert_int_equal(account.pending_in, 0);
	assert_transfer_absent(reader, "t9");
	assert_account_absent(reader, "nobody");
	reader_close(e, reader);
}

/* The widest values every field allows come back unchanged: ids of
 * KOBO_ID_LEN_MAX characters, a request id of KOBO_REQUEST_ID_LEN_MAX, an
 * eight-letter currency, metadata of KOBO_METADATA_BYTES_MAX - 1 bytes and
 * an amount of INT64_MAX. */
static void widest_fields_round_trip(void **state)
{
	env *e = *state;
	static char metadata[KOBO_METADATA_BYTES_MAX];
	char from[KOBO_ID_LEN_MAX + 1];
	char to[KOBO_ID_LEN_MAX + 1];
	char id[KOBO_ID_LEN_MAX + 1];

	memset(from, 'f', KOBO_ID_LEN_MAX);
	from[KOBO_ID_LEN_MAX] = '\0';
	memset(to, 't', KOBO_ID_LEN_MAX);
	to[KOBO_ID_LEN_MAX] = '\0';
	memset(id, 'x', KOBO_ID_LEN_MAX);
	id[KOBO_ID_LEN_MAX] = '\0';
	int n = snprintf(metadata, sizeof metadata, "{\"pad\":\"");
	memset(metadata + n, 'm', sizeof metadata - (size_t)n - 3);
	memcpy(metadata + sizeof metadata - 3, "\"}", 3);

	kobo_op ops[] = {
		test_op_account(from, "ABCDEFG8", true, metadata),
		test_op_account(to, "ABCDEFG8", false, NULL),
		test_op_transfer(id, from, to, INT64_MAX, false, 0),
	};
	snprintf(ops[2].u.transfer.currency, sizeof ops[2].u.transfer.currency,
	         "ABCDEFG8");
	memset(ops[2].request_id, 'r', KOBO_REQUEST_ID_LEN_MAX);
	ops[2].request_id[KOBO_REQUEST_ID_LEN_MAX] = '\0';
	ops[2].u.transfer.metadata = metadata;
	ops[2].u.transfer.metadata_len = KOBO_METADATA_BYTES_MAX - 1;
	assert_int_equal(run_batch(e, ops, 3, INT64_C(4102444800000)), KOBO_OK);
	assert_int_equal(e->results[2].code, KOBO_RESULT_CREATED);
	kobo_transfer created = e->results[2].transfer;
	kobo_account payer = e->results[0].account;
	payer.posted = -INT64_MAX;

	kobo_store_reader *reader = reader_open_ok(e);
	kobo_transfer t = read_transfer_ok(reader, id);
	assert_transfer_equal(&created, &t);
	kobo_account a = read_account_ok(reader, from);
	assert_account_equal(&payer, &a);
	assert_int_equal(read_account_ok(reader, to).posted, INT64_MAX);
	assert_int_equal(history_count(reader, to), 1);
	reader_close(e, reader);
	/* And through the loads: a replay matches field for field. */
	assert_int_equal(run_batch(e, ops, 3, INT64_C(4102444900000)), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_REPLAYED);
	assert_int_equal(e->results[2].code, KOBO_RESULT_REPLAYED);
	assert_transfer_equal(&created, &e->results[2].transfer);
	kobo_audit_totals totals;
	assert_audit_clean(e, &totals);
}

/* An update moves exactly kobo_transfer_state's fields (ledger.h): the
 * fields fixed at creation stay as first written, whatever the change
 * record carries. Every state field is set to a value unlike the row's. */
static void transfer_update_moves_only_its_state(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	kobo_transfer original;
	kobo_transfer changed;
	kobo_transfer got;
	load_ctx c = {.ledger = e->ledger, .rc = KOBO_OK};
	const char *ids[] = {"t-fund"};

	static char kept[KOBO_METADATA_BYTES_MAX];

	seed(e, 1000);
	reader = reader_open_ok(e);
	original = keep_transfer(read_transfer_ok(reader, "t-fund"), &kept);

	/* A change record whose fixed fields all differ from the row's. */
	kobo_ledger_reset(e->ledger);
	assert_int_equal(kobo_store_begin(e->store), KOBO_OK);
	assert_int_equal(kobo_store_load_transfers(e->store, ids, 1, put_transfer, &c),
	                 KOBO_OK);
	changed = original;
	snprintf(changed.from, sizeof changed.from, "mallory");
	snprintf(changed.to, sizeof changed.to, "trudy");
	snprintf(changed.currency, sizeof changed.currency, "USD");
	snprintf(changed.request_id, sizeof changed.request_id, "req-other");
	snprintf(changed.clearing, sizeof changed.clearing, "clr:Q");
	changed.amount = 77;
	changed.pending = true;
	changed.timeout_seconds = 9;
	changed.expires_at_ms = 99;
	changed.metadata = "{\"x\":1}";
	changed.metadata_len = 7;
	changed.created_at_ms = 5;
	changed.leg = KOBO_LEG_DEBIT;
	const kobo_transfer_state next = {
		.status = KOBO_STATUS_PROCESSING,
		.posted_amount = 123,
		.void_reason = KOBO_VOID_EXPIRED,
		.error_code = KOBO_RESULT_AMOUNT_OVERFLOW,
		.updated_at_ms = 4242,
		.saga = KOBO_SAGA_POSTING,
		.saga_amount = 321,
		.saga_reason = KOBO_VOID_COMPENSATED,
	};
	kobo_transfer_state_set(&changed, &next);
	const kobo_transfer_change change = {.transfer = &changed, .is_new = false};
	assert_int_equal(kobo_store_write(e->store, NULL, 0, &change, 1), KOBO_OK);
	assert_int_equal(kobo_store_commit(e->store, &e->token), KOBO_OK);

	kobo_transfer want = original;
	kobo_transfer_state_set(&want, &next);
	got = read_transfer_ok(reader, "t-fund");
	assert_transfer_equal(&want, &got);
	reader_close(e, reader);
}

/* Loaded records (their metadata above all) stay valid until the next
 * begin, even when the batch that loaded them commits changes to the same
 * rows; and rows of the largest metadata allowed load whole, many to a
 * batch, twice over (a backend that reuses its buffers must not mix them). */
static void loaded_records_live_until_next_begin(void **state)
{
	env *e = *state;
	enum { ACCOUNTS = 120 };
	static kobo_op big[ACCOUNTS];
	static char metadata[ACCOUNTS][KOBO_METADATA_BYTES_MAX];

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_account("alice", "NGN", false, "{\"owner\":\"ada\"}"),
		test_op_transfer("t-fund", "cash", "alice", 10000, false, 0),
		test_op_transfer("t-more", "cash", "alice", 5, false, 0),
	};
	assert_int_equal(run_batch(e, ops, 3, 2000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_REPLAYED);
	assert_int_equal(e->results[1].code, KOBO_RESULT_REPLAYED);
	/* After commit, the snapshots still point at loaded copies. */
	assert_memory_equal(e->results[0].account.metadata, "{\"owner\":\"ada\"}",
	                    e->results[0].account.metadata_len);
	assert_memory_equal(e->results[1].transfer.metadata, "{\"note\":\"suya\"}",
	                    e->results[1].transfer.metadata_len);

	for (int i = 0; i < ACCOUNTS; i++) {
		char id[32];
		int n = snprintf(metadata[i], sizeof metadata[i], "{\"n\":%d,\"pad\":\"", i);
		memset(metadata[i] + n, 'a' + i % 26, sizeof metadata[i] - (size_t)n - 3);
		memcpy(metadata[i] + sizeof metadata[i] - 3, "\"}", 3);
		snprintf(id, sizeof id, "acct-%03d", i);
		big[i] = test_op_account(id, "NGN", false, metadata[i]);
		assert_int_equal(big[i].u.account.metadata_len, KOBO_METADATA_BYTES_MAX - 1);
	}
	assert_int_equal(run_batch(e, big, ACCOUNTS, 3000), KOBO_OK);
	for (int round = 0; round < 2; round++) {
		assert_int_equal(run_batch(e, big, ACCOUNTS, 4000 + round), KOBO_OK);
		for (int i = 0; i < ACCOUNTS; i++) {
			/* REPLAYED means the loaded metadata equalled the op's. */
			assert_int_equal(e->results[i].code, KOBO_RESULT_REPLAYED);
			assert_memory_equal(e->results[i].account.metadata, metadata[i],
			                    KOBO_METADATA_BYTES_MAX - 1);
		}
	}
}

/* Loads hand each stored row once, in the order of the ids asked for
 * (not seq or id order), skip ids the store does not hold, and stop at the
 * first non-zero answer of the callback, returning it with the batch still
 * open and the store healthy. */
typedef struct load_order {
	char ids[8][KOBO_ID_LEN_MAX + 1];
	size_t count;
	int stop_with; /* returned by the first call when non-zero */
} load_order;

static bool loads_seq_unknown;

static int note_transfer(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	load_order *o = ctx;
	assert_true(o->count < 8);
	assert_true(seq > 0 || (loads_seq_unknown && seq == 0));
	assert_true(transfer->metadata_len > 0);
	snprintf(o->ids[o->count++], sizeof o->ids[0], "%s", transfer->id);
	return o->stop_with;
}

static int note_account(void *ctx, const kobo_account *account)
{
	load_order *o = ctx;
	assert_true(o->count < 8);
	assert_true(account->metadata_len > 0);
	snprintf(o->ids[o->count++], sizeof o->ids[0], "%s", account->id);
	return o->stop_with;
}

static void loads_follow_ids_order_and_skip_missing_ids(void **state)
{
	env *e = *state;
	const char *transfer_ids[] = {"m3", "ghost", "m1", "m2"};
	const char *account_ids[] = {"bob", "nobody", "alice", "cash"};
	load_order o;

	loads_seq_unknown = e->backend->load_seq_unknown;
	seed(e, 1000);
	kobo_op ops[] = {
		test_op_transfer("m2", "cash", "bob", 1, false, 0),
		test_op_transfer("m1", "cash", "bob", 1, false, 0),
		test_op_transfer("m3", "cash", "bob", 1, false, 0),
	};
	assert_int_equal(run_batch(e, ops, 3, 2000), KOBO_OK);

	assert_int_equal(kobo_store_begin(e->store), KOBO_OK);
	memset(&o, 0, sizeof o);
	assert_int_equal(kobo_store_load_transfers(e->store, transfer_ids, 4,
	                                           note_transfer, &o), KOBO_OK);
	assert_int_equal(o.count, 3);
	assert_string_equal(o.ids[0], "m3");
	assert_string_equal(o.ids[1], "m1");
	assert_string_equal(o.ids[2], "m2");
	memset(&o, 0, sizeof o);
	assert_int_equal(kobo_store_load_accounts(e->store, account_ids, 4,
	                                          note_account, &o), KOBO_OK);
	assert_int_equal(o.count, 3);
	assert_string_equal(o.ids[0], "bob");
	assert_string_equal(o.ids[1], "alice");
	assert_string_equal(o.ids[2], "cash");
	memset(&o, 0, sizeof o);
	assert_int_equal(kobo_store_load_transfers(e->store, transfer_ids, 0,
	                                           note_transfer, &o), KOBO_OK);
	assert_int_equal(o.count, 0);

	/* A callback's refusal stops the load and comes back as it was. */
	memset(&o, 0, sizeof o);
	o.stop_with = 42;
	assert_int_equal(kobo_store_load_transfers(e->store, transfer_ids, 4,
	                                           note_transfer, &o), 42);
	assert_int_equal(o.count, 1);
	memset(&o, 0, sizeof o);
	o.stop_with = KOBO_EFULL;
	assert_int_equal(kobo_store_load_accounts(e->store, account_ids, 4,
	                                          note_account, &o), KOBO_EFULL);
	assert_int_equal(o.count, 1);
	kobo_store_rollback(e->store);
	assert_true(kobo_store_healthy(e->store));

	/* Nothing of that batch stayed: the next one runs as usual. */
	kobo_op more[] = {test_op_transfer("m4", "cash", "bob", 1, false, 0)};
	assert_int_equal(run_batch(e, more, 1, 3000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_CREATED);
}

static void rollback_leaves_nothing(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_account("carol", "NGN", false, NULL),
		test_op_transfer("t-roll", "alice", "bob", 300, false, 0),
	};
	assert_int_equal(run_batch_ex(e, ops, 2, 2000, false, NULL), KOBO_OK);
	kobo_store_rollback(e->store);
	kobo_store_rollback(e->store); /* harmless twice */

	reader = reader_open_ok(e);
	assert_account_absent(reader, "carol");
	assert_transfer_absent(reader, "t-roll");
	assert_int_equal(read_account_ok(reader, "alice").posted, 10000);
	assert_int_equal(history_count(reader, "bob"), 0);
	assert_true(kobo_store_healthy(e->store));

	/* The same batch commits afterwards, as new. */
	assert_int_equal(run_batch(e, ops, 2, 3000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_CREATED);
	assert_int_equal(e->results[1].code, KOBO_RESULT_CREATED);
	assert_int_equal(read_account_ok(reader, "alice").posted, 9700);
	assert_int_equal(read_transfer_ok(reader, "t-roll").created_at_ms, 3000);
	reader_close(e, reader);
}

/* Written but not committed: invisible to every read; visible to a reader
 * opened before the batch as soon as commit returned. */
static void reader_sees_committed_batches_only(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	kobo_account account;
	kobo_audit_totals totals;
	seen s;

	seed(e, 1000);
	reader = reader_open_ok(e);
	kobo_op ops[] = {
		test_op_transfer("t-open", "alice", "bob", 400, false, 0),
		test_op_account("dave", "NGN", false, NULL),
	};
	assert_int_equal(run_batch_ex(e, ops, 2, 2000, false, NULL), KOBO_OK);
	assert_account_absent(reader, "dave");
	assert_transfer_absent(reader, "t-open");
	assert_int_equal(read_account_ok(reader, "alice").posted, 10000);
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "bob", 0, 10, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 0);
	/* A second reader opened mid-batch sees no more. */
	kobo_store_reader *late = reader_open_ok(e);
	assert_account_absent(late, "dave");
	reader_close(e, late);
	assert_audit_clean(e, &totals);
	assert_int_equal(totals.transfers, 1);

	assert_int_equal(kobo_store_commit(e->store, &e->token), KOBO_OK);
	assert_int_equal(kobo_store_read_account(reader, "dave", &account), KOBO_OK);
	late = reader_open_ok(e);
	assert_int_equal(read_transfer_ok(late, "t-open").amount, 400);
	reader_close(e, late);
	assert_int_equal(read_account_ok(reader, "alice").posted, 9600);
	assert_int_equal(read_transfer_ok(reader, "t-open").amount, 400);
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "bob", 0, 10, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 1);
	reader_close(e, reader);
}

/* A reader on another thread sees every batch whole or not at all, and
 * each batch once commit returned. Each batch pays bob twice (ids ending
 * in a and b); one history read is one snapshot, so it must always hold as
 * many a's as b's, and at least as many as the batches committed before
 * the read began. */
typedef struct watcher {
	kobo_store *store;
	atomic_bool stop;
	atomic_size_t reads;
	atomic_size_t committed; /* batches whose commit has returned */
	size_t torn;
	size_t stale;
	int open_rc;
} watcher;

typedef struct pair_check {
	size_t seen_a;
	size_t seen_b;
} pair_check;

static int count_pairs(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	pair_check *c = ctx;
	(void)seq;
	if (strncmp(transfer->id, "p-", 2) != 0)
		return 0;
	if (transfer->id[strlen(transfer->id) - 1] == 'a')
		c->seen_a++;
	else
		c->seen_b++;
	return 0;
}

static void *watch_history(void *arg)
{
	watcher *w = arg;
	kobo_store_reader *reader = NULL;

	w->open_rc = kobo_store_reader_open(w->store, &reader);
	if (w->open_rc != KOBO_OK)
		return NULL;
	while (!atomic_load(&w->stop)) {
		pair_check c = {0, 0};
		size_t before = atomic_load(&w->committed);
		if (kobo_store_read_history(reader, "bob", 0, SIZE_MAX, count_pairs,
		                            &c) == KOBO_OK) {
			atomic_fetch_add(&w->reads, 1);
			if (c.seen_a != c.seen_b)
				w->torn++;
			if (c.seen_a < before)
				w->stale++;
		}
	}
	kobo_store_reader_close(reader);
	return NULL;
}

static void readers_on_other_threads_never_see_half_a_batch(void **state)
{
	env *e = *state;
	watcher w = {.store = e->store};
	pthread_t thread;

	seed(e, 1000);
	atomic_init(&w.stop, false);
	atomic_init(&w.reads, 0);
	atomic_init(&w.committed, 0);
	assert_int_equal(pthread_create(&thread, NULL, watch_history, &w), 0);
	/* At least 200 batches, and on a busy machine until the reader has
	 * looked a few times while they land (bounded: alice funds 3,333). */
	for (int i = 0; i < 200 || (atomic_load(&w.reads) < 20 && i < 3000); i++) {
		char a[32], b[32];
		snprintf(a, sizeof a, "p-%d-a", i);
		snprintf(b, sizeof b, "p-%d-b", i);
		kobo_op ops[] = {
			test_op_transfer(a, "alice", "bob", 3, false, 0),
			test_op_transfer(b, "cash", "bob", 2, false, 0),
		};
		assert_int_equal(run_batch(e, ops, 2, 2000 + i), KOBO_OK);
		atomic_fetch_add(&w.committed, 1);
	}
	atomic_store(&w.stop, true);
	pthread_join(thread, NULL);
	assert_int_equal(w.open_rc, KOBO_OK);
	assert_true(atomic_load(&w.reads) > 0);
	if (w.torn != 0 || w.stale != 0)
		fail_msg("%s: %zu reads saw half a batch, %zu missed a committed one",
		         e->backend->name, w.torn, w.stale);
}

/* ---- History. ---- */

static void history_orders_pages_and_skips_rejected(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	seen s;

	seed(e, 1000); /* t-fund: cash → alice */
	kobo_op ops[] = {
		test_op_account("carol", "NGN", false, NULL),
		test_op_transfer("h1", "alice", "bob", 100, false, 0),
		test_op_transfer("h2", "bob", "alice", 50, false, 0),
		test_op_transfer("h3", "carol", "alice", 1, false, 0),  /* rejected */
		test_op_transfer("h4", "cash", "bob", 70, false, 0),    /* not alice's */
		test_op_transfer("h5", "alice", "carol", 25, true, 0),  /* a hold */
	};
	assert_int_equal(run_batch(e, ops, 6, 2000), KOBO_OK);
	assert_int_equal(e->results[3].code, KOBO_RESULT_INSUFFICIENT_FUNDS);
	reader = reader_open_ok(e);

	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "alice", 0, 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 4);
	assert_string_equal(s.ids[0], "t-fund");
	assert_string_equal(s.ids[1], "h1");
	assert_string_equal(s.ids[2], "h2");
	assert_string_equal(s.ids[3], "h5");
	for (size_t i = 1; i < s.count; i++)
		assert_true(s.seqs[i] > s.seqs[i - 1]);
	assert_true(s.seqs[0] > 0);

	/* Pages of two, each continuing after the last seq seen. */
	seen page;
	memset(&page, 0, sizeof page);
	assert_int_equal(kobo_store_read_history(reader, "alice", 0, 2, collect, &page), KOBO_OK);
	assert_int_equal(page.count, 2);
	assert_string_equal(page.ids[1], "h1");
	int64_t cursor = page.seqs[1];
	memset(&page, 0, sizeof page);
	assert_int_equal(kobo_store_read_history(reader, "alice", cursor, 2, collect, &page), KOBO_OK);
	assert_int_equal(page.count, 2);
	assert_string_equal(page.ids[0], "h2");
	assert_string_equal(page.ids[1], "h5");
	cursor = page.seqs[1];
	memset(&page, 0, sizeof page);
	assert_int_equal(kobo_store_read_history(reader, "alice", cursor, 2, collect, &page), KOBO_OK);
	assert_int_equal(page.count, 0);

	/* The callback can stop early; the other direction works alone. */
	memset(&page, 0, sizeof page);
	page.stop_after = 1;
	assert_int_equal(kobo_store_read_history(reader, "alice", 0, 100, collect, &page), KOBO_OK);
	assert_int_equal(page.count, 1);
	memset(&page, 0, sizeof page);
	assert_int_equal(kobo_store_read_history(reader, "carol", 0, 100, collect, &page), KOBO_OK);
	assert_int_equal(page.count, 1); /* h5 in; h3 was rejected */
	assert_string_equal(page.ids[0], "h5");
	memset(&page, 0, sizeof page);
	assert_int_equal(kobo_store_read_history(reader, "nobody", 0, 100, collect, &page), KOBO_OK);
	assert_int_equal(page.count, 0);
	memset(&page, 0, sizeof page);
	assert_int_equal(kobo_store_read_history(reader, "alice", 0, 0, collect, &page), KOBO_OK);
	assert_int_equal(page.count, 0);
	memset(&page, 0, sizeof page);
	assert_int_equal(kobo_store_read_history(reader, "alice", s.seqs[3], 10, collect, &page), KOBO_OK);
	assert_int_equal(page.count, 0);

	/* seq is fixed when a transfer is created: a later update (h5
	 * posted) neither moves it nor repeats it. */
	kobo_op post[] = {test_op_target(KOBO_OP_POST, "h5", false, 0)};
	assert_int_equal(run_batch(e, post, 1, 3000), KOBO_OK);
	memset(&page, 0, sizeof page);
	assert_int_equal(kobo_store_read_history(reader, "alice", 0, 100, collect, &page), KOBO_OK);
	assert_int_equal(page.count, 4);
	assert_string_equal(page.ids[3], "h5");
	assert_int_equal(page.seqs[3], s.seqs[3]);
	reader_close(e, reader);
}

static void history_counts_legs_for_from_to_and_clearing(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	seen s;

	seed(e, 1000); /* t-fund: cash -> alice */
	kobo_op ops[] = {
		test_op_debit("x1", "alice", "zed", "clr:B", 100, false, 0),
		test_op_transfer("l1", "alice", "bob", 10, false, 0),
		test_op_credit("y1", "yan", "bob", "clr:C", 40, false),
		test_op_debit("x2", "bob", "zed", "clr:B", 999999, false, 0), /* rejected */
		/* A leg whose `to` is its own clearing account shows once. */
		test_op_debit("x3", "alice", "clr:B", "clr:B", 5, false, 0),
		test_op_debit("x4", "alice", "amy", "clr:B", 7, true, 0),
	};
	assert_int_equal(run_batch(e, ops, 6, 2000), KOBO_OK);
	assert_int_equal(e->results[3].code, KOBO_RESULT_INSUFFICIENT_FUNDS);
	assert_int_equal(e->results[4].code, KOBO_RESULT_CREATED);
	reader = reader_open_ok(e);

	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "clr:B", 0, 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 3);
	assert_string_equal(s.ids[0], "x1");
	assert_string_equal(s.ids[1], "x3");
	assert_string_equal(s.ids[2], "x4");
	/* Pages of one through the clearing account: limit counts rows once. */
	int64_t cursor = 0;
	const char *want[] = {"x1", "x3", "x4"};
	for (size_t i = 0; i < 3; i++) {
		memset(&s, 0, sizeof s);
		assert_int_equal(kobo_store_read_history(reader, "clr:B", cursor, 1,
		                                         collect, &s), KOBO_OK);
		assert_int_equal(s.count, 1);
		assert_string_equal(s.ids[0], want[i]);
		cursor = s.seqs[0];
	}
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "clr:B", cursor, 1, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 0);

	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "alice", 0, 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 5);
	assert_string_equal(s.ids[0], "t-fund");
	assert_string_equal(s.ids[1], "x1");
	assert_string_equal(s.ids[2], "l1");
	assert_string_equal(s.ids[3], "x3");
	assert_string_equal(s.ids[4], "x4");
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "bob", 0, 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 2); /* l1, y1; x2 was rejected */
	assert_string_equal(s.ids[0], "l1");
	assert_string_equal(s.ids[1], "y1");
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "clr:C", 0, 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 1);
	assert_string_equal(s.ids[0], "y1");
	/* The other shard's account of a leg counts too (store.h). */
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "zed", 0, 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 1);
	assert_string_equal(s.ids[0], "x1");
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "yan", 0, 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 1);
	assert_string_equal(s.ids[0], "y1");
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "", 0, 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 0);
	reader_close(e, reader);
}

/* ---- Legs and sagas. ---- */

/* Every saga state and every field a leg adds is stored and comes back,
 * through reads and through the next batch's loads. */
static void legs_and_sagas_round_trip_through_ledger(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	kobo_transfer created[2];
	kobo_transfer t;
	kobo_audit_totals totals;

	seed(e, 1000);
	reader = reader_open_ok(e);
	kobo_op step1[] = {
		test_op_debit("x-hold", "alice", "zed", "clr:B", 300, true, 60),
		test_op_credit("y-in", "yan", "bob", "clr:C", 400, false),
	};
	assert_int_equal(run_batch(e, step1, 2, 2000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_CREATED);
	assert_int_equal(e->results[1].code, KOBO_RESULT_CREATED);
	created[0] = e->results[0].transfer;
	created[1] = e->results[1].transfer;
	assert_int_equal(created[0].status, KOBO_STATUS_PROCESSING);
	assert_int_equal(created[0].saga, KOBO_SAGA_RESERVED);
	assert_int_equal(created[0].expires_at_ms, 62000);
	t = read_transfer_ok(reader, "x-hold");
	assert_transfer_equal(&created[0], &t);
	t = read_transfer_ok(reader, "y-in");
	assert_transfer_equal(&created[1], &t);
	/* The clearing accounts were created with the legs. */
	assert_int_equal(read_account_ok(reader, "clr:B").pending_in, 300);
	assert_true(read_account_ok(reader, "clr:B").allow_negative);
	assert_int_equal(read_account_ok(reader, "clr:C").posted, -400);
	assert_audit_clean(e, &totals);
	assert_int_equal(totals.sagas_in_flight, 1);

	/* Replays load the legs back as written. */
	assert_int_equal(run_batch(e, step1, 2, 2500), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_REPLAYED);
	assert_transfer_equal(&created[0], &e->results[0].transfer);
	assert_int_equal(e->results[1].code, KOBO_RESULT_REPLAYED);
	assert_transfer_equal(&created[1], &e->results[1].transfer);

	/* RESERVED, credited, a hold: PENDING. Then a post starts POSTING. */
	kobo_op settle[] = {test_op_settle("x-hold", false, KOBO_RESULT_CREATED)};
	assert_int_equal(run_batch(e, settle, 1, 3000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_UPDATED);
	kobo_op post[] = {test_op_target(KOBO_OP_POST, "x-hold", true, 120)};
	assert_int_equal(run_batch(e, post, 1, 4000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_UPDATED);
	t = read_transfer_ok(reader, "x-hold");
	assert_int_equal(t.status, KOBO_STATUS_PROCESSING);
	assert_int_equal(t.saga, KOBO_SAGA_POSTING);
	assert_int_equal(t.saga_amount, 120);
	assert_int_equal(t.updated_at_ms, 4000);
	assert_transfer_equal(&e->results[0].transfer, &t);

	/* POSTING, refused: back to PENDING, and the refusal is kept. */
	kobo_op refused[] = {test_op_settle("x-hold", true, KOBO_RESULT_ACCOUNT_NOT_FOUND)};
	assert_int_equal(run_batch(e, refused, 1, 5000), KOBO_OK);
	t = read_transfer_ok(reader, "x-hold");
	assert_int_equal(t.status, KOBO_STATUS_PENDING);
	assert_int_equal(t.saga, KOBO_SAGA_NONE);
	assert_int_equal(t.saga_amount, 0);
	assert_int_equal(t.error_code, KOBO_RESULT_ACCOUNT_NOT_FOUND);
	assert_transfer_equal(&e->results[0].transfer, &t);

	/* A void starts VOIDING with its reason; credited, it ends VOIDED. */
	kobo_op void_op[] = {test_op_target(KOBO_OP_VOID, "x-hold", false, 0)};
	assert_int_equal(run_batch(e, void_op, 1, 6000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_UPDATED);
	t = read_transfer_ok(reader, "x-hold");
	assert_int_equal(t.saga, KOBO_SAGA_VOIDING);
	assert_int_equal(t.saga_reason, KOBO_VOID_VOIDED);
	assert_transfer_equal(&e->results[0].transfer, &t);
	kobo_op settle_void[] = {test_op_settle("x-hold", false, KOBO_RESULT_CREATED)};
	assert_int_equal(run_batch(e, settle_void, 1, 7000), KOBO_OK);
	t = read_transfer_ok(reader, "x-hold");
	assert_int_equal(t.status, KOBO_STATUS_VOIDED);
	assert_int_equal(t.void_reason, KOBO_VOID_VOIDED);
	assert_int_equal(t.saga_reason, KOBO_VOID_NONE);
	assert_transfer_equal(&e->results[0].transfer, &t);

	/* RESERVED, refused: compensated, with the reason B gave. */
	kobo_op lost[] = {test_op_debit("x-lost", "alice", "ghost", "clr:B", 50, false, 0)};
	assert_int_equal(run_batch(e, lost, 1, 8000), KOBO_OK);
	kobo_op compensate[] = {test_op_settle("x-lost", true, KOBO_RESULT_ACCOUNT_NOT_FOUND)};
	assert_int_equal(run_batch(e, compensate, 1, 9000), KOBO_OK);
	t = read_transfer_ok(reader, "x-lost");
	assert_int_equal(t.status, KOBO_STATUS_VOIDED);
	assert_int_equal(t.void_reason, KOBO_VOID_COMPENSATED);
	assert_int_equal(t.error_code, KOBO_RESULT_ACCOUNT_NOT_FOUND);
	assert_transfer_equal(&e->results[0].transfer, &t);
	/* And the next batch loads the compensated record as written. */
	assert_int_equal(run_batch(e, lost, 1, 9500), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_REPLAYED);
	assert_transfer_equal(&t, &e->results[0].transfer);

	assert_audit_clean(e, &totals);
	assert_int_equal(totals.sagas_in_flight, 0);
	assert_int_equal(read_account_ok(reader, "alice").posted, 10000);
	assert_int_equal(read_account_ok(reader, "alice").pending_out, 0);
	reader_close(e, reader);
}

static void read_sagas_lists_sagas_in_flight_by_id(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	seen s;
	seen history;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_debit("s3", "alice", "zed", "clr:B", 10, false, 0),
		test_op_debit("s1", "alice", "zed", "clr:B", 10, true, 0),
		test_op_transfer("l1", "alice", "bob", 10, true, 0),
		test_op_debit("s4", "alice", "zed", "clr:B", 10, false, 0),
		test_op_debit("s2", "alice", "zed", "clr:B", 10, false, 0),
		test_op_credit("c1", "yan", "bob", "clr:C", 10, true),
	};
	assert_int_equal(run_batch(e, ops, 6, 2000), KOBO_OK);
	kobo_op settle[] = {test_op_settle("s4", false, KOBO_RESULT_CREATED)};
	assert_int_equal(run_batch(e, settle, 1, 3000), KOBO_OK);
	reader = reader_open_ok(e);

	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_sagas(reader, "", 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 3); /* s4 settled; l1 and c1 run no saga */
	assert_string_equal(s.ids[0], "s1");
	assert_string_equal(s.ids[1], "s2");
	assert_string_equal(s.ids[2], "s3");
	/* seq is the history cursor of the same transfer. */
	memset(&history, 0, sizeof history);
	assert_int_equal(kobo_store_read_history(reader, "clr:B", 0, 100, collect, &history), KOBO_OK);
	assert_string_equal(history.ids[1], "s1");
	assert_int_equal(s.seqs[0], history.seqs[1]);

	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_sagas(reader, "s1", 1, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 1);
	assert_string_equal(s.ids[0], "s2");
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_sagas(reader, "s3", 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 0);
	memset(&s, 0, sizeof s);
	s.stop_after = 2;
	assert_int_equal(kobo_store_read_sagas(reader, "", 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 2);
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_sagas(reader, "", 0, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 0);
	reader_close(e, reader);
}

static bool claim_ok(kobo_store_reader *reader, const char *id, const char *node,
                     int64_t lease_ms)
{
	bool claimed = false;
	assert_int_equal(kobo_store_claim_saga(reader, id, node, lease_ms, &claimed),
	                 KOBO_OK);
	return claimed;
}

/* Saga claims (store.h claim_saga): where several nodes serve a store, one
 * node at a time holds a saga's claim, renews it, and loses it when it
 * releases it or its lease lapses; a store one process serves grants every
 * claim. Two readers play two nodes. */
static void saga_claims_admit_one_node_until_released_or_lapsed(void **state)
{
	env *e = *state;
	kobo_store_reader *a = reader_open_ok(e);
	kobo_store_reader *b = reader_open_ok(e);
	bool exclude = e->backend->claims_exclude;

	assert_true(claim_ok(a, "s1", "node-a", 60000));
	assert_true(claim_ok(b, "s1", "node-b", 60000) == !exclude);
	assert_true(claim_ok(a, "s1", "node-a", 60000)); /* a renewal */
	assert_true(claim_ok(b, "s2", "node-b", 60000)); /* another saga */
	assert_true(claim_ok(a, "s2", "node-a", 60000) == !exclude);

	/* Releasing what another node holds, or nothing, changes nothing. */
	assert_int_equal(kobo_store_release_saga(b, "s1", "node-b"), KOBO_OK);
	assert_int_equal(kobo_store_release_saga(b, "s9", "node-b"), KOBO_OK);
	assert_true(claim_ok(b, "s1", "node-b", 60000) == !exclude);
	assert_int_equal(kobo_store_release_saga(a, "s1", "node-a"), KOBO_OK);
	assert_true(claim_ok(b, "s1", "node-b", 60000));
	assert_true(claim_ok(a, "s1", "node-a", 60000) == !exclude);

	/* A lapsed lease is anyone's: node-a "died" holding s3. */
	assert_true(claim_ok(a, "s3", "node-a", 1));
	bool taken = false;
	for (int waited_ms = 0; waited_ms < 2000 && !taken; waited_ms += 10) {
		struct timespec pause = { .tv_nsec = 10 * 1000 * 1000 };
		nanosleep(&pause, NULL);
		taken = claim_ok(b, "s3", "node-b", 60000);
	}
	if (!taken)
		fail_msg("a claim whose 1 ms lease lapsed was still refused to "
		         "another node 2 s later");
	assert_true(claim_ok(a, "s3", "node-a", 60000) == !exclude);

	reader_close(e, b);
	reader_close(e, a);
}

static void read_accounts_prefix_matches_literally_in_id_order(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	seen_accounts s;
	static const char *const ids[] = {
		"clr:B", "clr:A", "clr:B:x", "clr;", "clr", "c%r", "c_r", "cXr",
		"c*r", "d",
	};
	enum { ID_COUNT = sizeof ids / sizeof ids[0] };
	kobo_op ops[ID_COUNT];
	char long_prefix[KOBO_ID_LEN_MAX + 2];

	for (size_t i = 0; i < ID_COUNT; i++)
		ops[i] = test_op_account(ids[i], "NGN", true, NULL);
	assert_int_equal(run_batch(e, ops, ID_COUNT, 1000), KOBO_OK);
	reader = reader_open_ok(e);

	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "clr:", collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, 3);
	assert_string_equal(s.ids[0], "clr:A");
	assert_string_equal(s.ids[1], "clr:B");
	assert_string_equal(s.ids[2], "clr:B:x");
	/* LIKE and GLOB wildcards are plain characters here. */
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "c%", collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, 1);
	assert_string_equal(s.ids[0], "c%r");
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "c_", collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, 1);
	assert_string_equal(s.ids[0], "c_r");
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "c*", collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, 1);
	assert_string_equal(s.ids[0], "c*r");
	/* A whole id is its own prefix. */
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "clr", collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, 5);
	assert_string_equal(s.ids[0], "clr");
	assert_string_equal(s.ids[4], "clr;");
	/* Case matters: "C" is not "c". */
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "C", collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, 0);
	/* "" lists everything in byte order. */
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "", collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, ID_COUNT);
	for (size_t i = 1; i < s.count; i++)
		assert_true(strcmp(s.ids[i - 1], s.ids[i]) < 0);
	assert_string_equal(s.ids[0], "c%r");
	assert_string_equal(s.ids[ID_COUNT - 1], "d");
	memset(&s, 0, sizeof s);
	s.stop_after = 2;
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "", collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, 2);
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "e", collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, 0);
	memset(long_prefix, 'c', sizeof long_prefix - 1);
	long_prefix[sizeof long_prefix - 1] = '\0';
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, long_prefix, collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, 0);
	reader_close(e, reader);
}

/* ---- Expired holds. ---- */

static void expired_holds_lists_due_pending_holds_oldest_first(void **state)
{
	env *e = *state;
	char ids[4][KOBO_ID_LEN_MAX + 1];
	size_t count = 99;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_transfer("late", "alice", "bob", 10, true, 9),   /* 11000 */
		test_op_transfer("soon", "alice", "bob", 10, true, 1),   /* 3000 */
		test_op_transfer("never", "alice", "bob", 10, true, 0),  /* no expiry */
		test_op_transfer("posted", "alice", "bob", 10, true, 2), /* posted below */
		test_op_transfer("plain", "alice", "bob", 10, false, 5), /* not a hold */
		test_op_transfer("tie", "alice", "bob", 10, true, 1),    /* 3000, later seq */
	};
	assert_int_equal(run_batch(e, ops, 6, 2000), KOBO_OK);
	kobo_op post[] = {test_op_target(KOBO_OP_POST, "posted", false, 0)};
	assert_int_equal(run_batch(e, post, 1, 2500), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_UPDATED);

	assert_int_equal(kobo_store_expired_holds(e->store, 2999, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 0);
	/* Due at expires_at_ms itself. */
	assert_int_equal(kobo_store_expired_holds(e->store, 3000, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 2);
	assert_string_equal(ids[0], "soon");
	assert_string_equal(ids[1], "tie");
	assert_int_equal(kobo_store_expired_holds(e->store, 100000, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 3);
	assert_string_equal(ids[0], "soon");
	assert_string_equal(ids[1], "tie");
	assert_string_equal(ids[2], "late");
	assert_int_equal(kobo_store_expired_holds(e->store, 100000, ids, 1, &count), KOBO_OK);
	assert_int_equal(count, 1);
	assert_string_equal(ids[0], "soon");
	assert_int_equal(kobo_store_expired_holds(e->store, 100000, ids, 0, &count), KOBO_OK);
	assert_int_equal(count, 0);

	/* Expiring one takes it off the list. */
	kobo_op expire[] = {test_op_target(KOBO_OP_EXPIRE, "soon", false, 0)};
	assert_int_equal(run_batch(e, expire, 1, 4000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_UPDATED);
	assert_int_equal(kobo_store_expired_holds(e->store, 100000, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 2);
	assert_string_equal(ids[0], "tie");
	assert_string_equal(ids[1], "late");
}

/* An expiry scan lists a hold as soon as it is due, however recently the
 * hold was committed; and on a store with an asynchronous projection (the
 * journaled one) it waits only for a batch that left a hold due by then:
 * batches of plain transfers, or of holds not yet due, never stall the
 * writer (they used to, 100 ms in every 250 ms scan under load). */
static void expired_holds_wait_only_for_due_holds(void **state)
{
	env *e = *state;
	char ids[4][KOBO_ID_LEN_MAX + 1];
	size_t count = 99;
	hot_usage before, after;
	bool hot = store_hot_usage(e->store, &before);

	seed(e, 1000);
	kobo_op hold[] = { test_op_transfer("h", "alice", "bob", 10, true, 5) }; /* 7000 */
	assert_int_equal(run_batch(e, hold, 1, 2000), KOBO_OK);
	/* A backlog of plain batches behind it. */
	for (int i = 0; i < 40; i++) {
		char id[32];
		snprintf(id, sizeof id, "plain-%d", i);
		kobo_op plain[] = { test_op_transfer(id, "alice", "bob", 1, false, 0) };
		assert_int_equal(run_batch(e, plain, 1, 2001 + i), KOBO_OK);
	}
	if (hot)
		assert_true(store_hot_usage(e->store, &before));
	for (int i = 0; i < 20; i++) {
		assert_int_equal(kobo_store_expired_holds(e->store, 6999, ids, 4, &count), KOBO_OK);
		assert_int_equal(count, 0);
	}
	if (hot) {
		assert_true(store_hot_usage(e->store, &after));
		assert_int_equal(after.expiry_waits, before.expiry_waits);
	}
	/* Due: listed at once, without the test waiting for any projection. */
	assert_int_equal(kobo_store_expired_holds(e->store, 7000, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 1);
	assert_string_equal(ids[0], "h");
	/* A hold committed after others that are due is found too. */
	kobo_op late[] = { test_op_transfer("h2", "alice", "bob", 10, true, 1) }; /* 4100 */
	assert_int_equal(run_batch(e, late, 1, 3100), KOBO_OK);
	assert_int_equal(kobo_store_expired_holds(e->store, 100000, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 2);
	assert_string_equal(ids[0], "h2");
	assert_string_equal(ids[1], "h");
}

/* The journaled store remembers HOT_HOLD_MARKS_MAX unprojected batches
 * with holds one by one; past that they merge into the newest mark, which
 * must keep the earliest expiry and the latest batch: a hold due in a merged
 * batch is still waited for, and none is waited for before one is due. The
 * projection is held back (another connection holds the SQLite file's write
 * lock) so every mark stays. Only the journaled store has an asynchronous
 * projection; the other backends have nothing here to test. */
static void expired_holds_wait_for_merged_marks(void **state)
{
	env *e = *state;
	char ids[4][KOBO_ID_LEN_MAX + 1];
	size_t count = 99;
	hot_usage before, after;

	if (!store_hot_usage(e->store, &before))
		return;
	seed(e, 1000);
	kobo_store *holder = NULL;
	assert_int_equal(open_key_tool_store(e, &holder), KOBO_OK);
	assert_int_equal(kobo_store_begin(holder), KOBO_OK); /* the write lock */

	int n = HOT_HOLD_MARKS_MAX + 50;
	for (int i = 0; i < n; i++) {
		char id[32];
		snprintf(id, sizeof id, "hold-%d", i);
		/* The last batch's hold (merged) expires first: 2000 + n + 1000. */
		kobo_op op[] = { test_op_transfer(id, "alice", "bob", 1, true, i == n - 1 ? 1 : 600) };
		assert_int_equal(run_batch(e, op, 1, 2000 + i), KOBO_OK);
	}
	int64_t due = 2000 + (n - 1) + 1000;
	assert_true(store_hot_usage(e->store, &before));
	assert_int_equal(kobo_store_expired_holds(e->store, due - 1, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 0);
	assert_true(store_hot_usage(e->store, &after));
	assert_int_equal(after.expiry_waits, before.expiry_waits); /* nothing due: no wait */

	/* Due but not projected: the scan waits (HOT_EXPIRY_WAIT_MS), then
	 * lists what the projection has: the hold comes late, never early. */
	assert_int_equal(kobo_store_expired_holds(e->store, due, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 0);
	assert_true(store_hot_usage(e->store, &after));
	assert_int_equal(after.expiry_waits, before.expiry_waits + 1);

	kobo_store_rollback(holder);
	kobo_store_close(holder);
	/* Projected now (the wait below lets it catch up): listed. */
	assert_int_equal(kobo_store_expired_holds(e->store, due, ids, 4, &count), KOBO_OK);
	for (int tries = 0; count == 0 && tries < 100; tries++) /* the projection's retry backoff */
		assert_int_equal(kobo_store_expired_holds(e->store, due, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 1);
	char last[32];
	snprintf(last, sizeof last, "hold-%d", n - 1);
	assert_string_equal(ids[0], last);
}

/* A DEBIT leg's hold has an expiry, but while its saga is under way
 * (PROCESSING) the saga decides its end: the expiry scan skips it until
 * it is an ordinary PENDING hold again. */
static void expired_holds_skip_holds_whose_saga_is_under_way(void **state)
{
	env *e = *state;
	char ids[4][KOBO_ID_LEN_MAX + 1];
	size_t count = 99;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_debit("x-soon", "alice", "zed", "clr:B", 10, true, 1), /* 3000 */
		test_op_transfer("l-late", "alice", "bob", 10, true, 2),       /* 4000 */
	};
	assert_int_equal(run_batch(e, ops, 2, 2000), KOBO_OK);
	assert_int_equal(e->results[0].transfer.expires_at_ms, 3000);
	assert_int_equal(kobo_store_expired_holds(e->store, 10000, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 1);
	assert_string_equal(ids[0], "l-late");

	kobo_op settle[] = {test_op_settle("x-soon", false, KOBO_RESULT_CREATED)};
	assert_int_equal(run_batch(e, settle, 1, 2500), KOBO_OK);
	assert_int_equal(kobo_store_expired_holds(e->store, 10000, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 2);
	assert_string_equal(ids[0], "x-soon");
	assert_string_equal(ids[1], "l-late");

	/* Its void under way makes it PROCESSING again: off the list. */
	kobo_op void_op[] = {test_op_target(KOBO_OP_VOID, "x-soon", false, 0)};
	assert_int_equal(run_batch(e, void_op, 1, 2600), KOBO_OK);
	assert_int_equal(kobo_store_expired_holds(e->store, 10000, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 1);
	assert_string_equal(ids[0], "l-late");
}

/* ---- Audit. ---- */

/* Sound data, local and cross-shard, every status and saga state: no
 * problem, and the totals count what is there. */
static void audit_passes_sound_data(void **state)
{
	env *e = *state;
	kobo_audit_totals totals;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_transfer("a1", "alice", "bob", 300, false, 0),
		test_op_transfer("a2", "alice", "bob", 200, true, 0),
		test_op_transfer("a3", "bob", "alice", 999999, false, 0), /* rejected */
		test_op_transfer("a4", "bob", "cash", 50, true, 0),
		test_op_transfer("a5", "cash", "bob", 40, true, 0),
		test_op_debit("x1", "alice", "zed", "clr:B", 700, false, 0),
		test_op_debit("x2", "alice", "zed", "clr:B", 30, true, 0),
		test_op_credit("y1", "yan", "bob", "clr:C", 400, false),
		test_op_credit("y2", "yan", "bob", "clr:C", 50, true),
	};
	assert_int_equal(run_batch(e, ops, 9, 2000), KOBO_OK);
	kobo_op more[] = {
		test_op_target(KOBO_OP_POST, "a4", true, 20),
		test_op_target(KOBO_OP_VOID, "a5", false, 0),
		test_op_settle("x2", false, KOBO_RESULT_CREATED),
	};
	assert_int_equal(run_batch(e, more, 3, 3000), KOBO_OK);
	assert_audit_clean(e, &totals);
	assert_int_equal(totals.accounts, 5);
	assert_int_equal(totals.transfers, 10);
	assert_int_equal(totals.sagas_in_flight, 1);
	/* The audit may run with no report callback. */
	assert_int_equal(kobo_store_audit(e->store, NULL, NULL, &totals), KOBO_OK);
	assert_int_equal(totals.problems, 0);
}

/* Tampering through the front door: a batch built on a lie (the ledger is
 * handed an account that disagrees with the store) is written as if true;
 * only the audit can catch it, and every backend's audit must. */
static void audit_reports_a_batch_built_on_a_lie(void **state)
{
	env *e = *state;
	kobo_audit_totals totals;
	report_log log;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_transfer("a1", "alice", "bob", 300, false, 0),
		test_op_transfer("a2", "alice", "bob", 200, true, 0),
		test_op_debit("x1", "alice", "zed", "clr:B", 700, false, 0),
	};
	assert_int_equal(run_batch(e, ops, 3, 2000), KOBO_OK);
	assert_audit_clean(e, &totals);

	/* alice with 7 more than the store holds, written back after paying
	 * bob 1. */
	kobo_account forged;
	memset(&forged, 0, sizeof forged);
	snprintf(forged.id, sizeof forged.id, "alice");
	snprintf(forged.currency, sizeof forged.currency, "NGN");
	forged.posted = 10000 - 300 + 7;
	forged.pending_out = 200 + 700;
	forged.metadata = "{}";
	forged.metadata_len = 2;
	forged.created_at_ms = 1000;
	kobo_op pay[] = {test_op_transfer("a5", "alice", "bob", 1, false, 0)};
	assert_int_equal(run_batch_ex(e, pay, 1, 4000, true, &forged), KOBO_OK);
	memset(&log, 0, sizeof log);
	assert_int_equal(kobo_store_audit(e->store, collect_report, &log, &totals), KOBO_OK);
	assert_int_equal(totals.problems, 2);
	assert_int_equal(log.count, 2);
	assert_true(report_mentions(&log, "account alice has posted 9706 but its transfers say 9699"));
	assert_true(report_mentions(&log, "NGN posted balances sum to 7, not 0"));

	/* A lie about money in flight: the clearing account forgets it. */
	memset(&forged, 0, sizeof forged);
	snprintf(forged.id, sizeof forged.id, "clr:B");
	snprintf(forged.currency, sizeof forged.currency, "NGN");
	forged.allow_negative = true;
	forged.metadata = "{}";
	forged.metadata_len = 2;
	kobo_op more[] = {test_op_debit("x2", "cash", "zed", "clr:B", 5, false, 0)};
	assert_int_equal(run_batch_ex(e, more, 1, 5000, true, &forged), KOBO_OK);
	memset(&log, 0, sizeof log);
	assert_int_equal(kobo_store_audit(e->store, collect_report, &log, &totals), KOBO_OK);
	assert_true(report_mentions(&log, "account clr:B has pending_in 5 but its pending transfers in sum to 705"));
	assert_int_equal(totals.sagas_in_flight, 2);
	assert_int_equal(totals.problems, 4);
}

/* ---- Commit tokens and reopening. ---- */

static void assert_token(const env *e, uint64_t want)
{
	if (e->token != want)
		fail_msg("%s: commit token %llu, expected %llu", e->backend->name,
		         (unsigned long long)e->token, (unsigned long long)want);
}

/* The commit sequence (store.h, CONSISTENCY TOKEN): a fresh shard's first
 * commit answers 1, every committed batch one more — a batch of replays
 * only and an empty batch too, they are committed batches — while a batch
 * rolled back or refused counts nothing. */
static void commit_token_counts_committed_batches(void **state)
{
	env *e = *state;

	seed(e, 1000);
	assert_token(e, 1);
	for (int i = 0; i < 5; i++) {
		char id[32];
		snprintf(id, sizeof id, "tok-%d", i);
		kobo_op ops[] = {test_op_transfer(id, "cash", "bob", 1, false, 0)};
		assert_int_equal(run_batch(e, ops, 1, 2000 + i), KOBO_OK);
		assert_token(e, 2 + (uint64_t)i);
	}
	kobo_op roll[] = {test_op_transfer("tok-roll", "cash", "bob", 1, false, 0)};
	assert_int_equal(run_batch_ex(e, roll, 1, 3000, false, NULL), KOBO_OK);
	kobo_store_rollback(e->store);
	kobo_op replay[] = {test_op_transfer("tok-0", "cash", "bob", 1, false, 0)};
	assert_int_equal(run_batch(e, replay, 1, 3100), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_REPLAYED);
	assert_token(e, 7);
	assert_int_equal(run_batch(e, NULL, 0, 3200), KOBO_OK);
	assert_token(e, 8);
}

/* read_position (store.h): a reader sees the commit sequence of the last
 * committed batch — the same number commit() answered — and, on a
 * primary, is no standby and does not lag. */
static void reader_position_is_the_commit_sequence(void **state)
{
	env *e = *state;
	kobo_store_position pos;

	kobo_store_reader *reader = reader_open_ok(e);
	assert_int_equal(kobo_store_read_position(reader, &pos), KOBO_OK);
	assert_int_equal(pos.commit_seq, 0);
	seed(e, 1000);
	for (int i = 0; i < 3; i++) {
		char id[32];
		snprintf(id, sizeof id, "pos-%d", i);
		kobo_op ops[] = {test_op_transfer(id, "cash", "bob", 1, false, 0)};
		assert_int_equal(run_batch(e, ops, 1, 2000 + i), KOBO_OK);
		assert_int_equal(kobo_store_read_position(reader, &pos), KOBO_OK);
		if (pos.commit_seq != e->token)
			fail_msg("%s: reader position %llu after commit token %llu",
			         e->backend->name, (unsigned long long)pos.commit_seq,
			         (unsigned long long)e->token);
		assert_false(pos.standby);
		assert_int_equal(pos.lag_us, 0);
	}
	reader_close(e, reader);
}

/* What was committed survives a reopen (SQLite: close and open the same
 * URL; mem: a restart), and so does the commit sequence: the first commit
 * after the reopen gets a larger token than any before it. */
static void reopen_keeps_data_and_commit_sequence(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	kobo_transfer before;
	kobo_account alice;
	uint64_t last;

	seed(e, 1000);
	kobo_op ops[] = {test_op_debit("x1", "alice", "zed", "clr:B", 70, true, 60)};
	assert_int_equal(run_batch(e, ops, 1, 2000), KOBO_OK);
	before = e->results[0].transfer;
	last = e->token;
	static char kept[KOBO_METADATA_BYTES_MAX];
	seen history;
	reader = reader_open_ok(e);
	alice = keep_account(read_account_ok(reader, "alice"), &kept);
	memset(&history, 0, sizeof history);
	assert_int_equal(kobo_store_read_history(reader, "alice", 0, 16, collect,
	                                         &history), KOBO_OK);
	assert_int_equal(history.count, 2);
	reader_close(e, reader);

	for (int round = 0; round < 2; round++) {
		reopen_store(e);
		reader = reader_open_ok(e);
		kobo_transfer t = read_transfer_ok(reader, "x1");
		assert_transfer_equal(&before, &t);
		kobo_account a = read_account_ok(reader, "alice");
		assert_account_equal(&alice, &a);
		/* seq, the history cursor, is the same after a reopen. */
		seen again;
		memset(&again, 0, sizeof again);
		assert_int_equal(kobo_store_read_history(reader, "alice", 0, 16, collect,
		                                         &again), KOBO_OK);
		assert_int_equal(again.count, 2);
		assert_int_equal(again.seqs[0], history.seqs[0]);
		assert_int_equal(again.seqs[1], history.seqs[1]);
		reader_close(e, reader);
		assert_true(kobo_store_healthy(e->store));

		kobo_op next[] = {test_op_transfer(round == 0 ? "after-1" : "after-2",
		                                   "cash", "bob", 1, false, 0)};
		assert_int_equal(run_batch(e, next, 1, 3000 + round), KOBO_OK);
		assert_token(e, last + 1);
		last = e->token;
	}
	kobo_audit_totals totals;
	assert_audit_clean(e, &totals);
	assert_int_equal(totals.transfers, 4);
	assert_int_equal(totals.sagas_in_flight, 1);
}

/* A process that stops mid-batch (reopened with the batch open) leaves
 * nothing of it behind, and the store takes the batch again. */
static void reopen_drops_an_open_batch(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_account("open", "NGN", false, NULL),
		test_op_transfer("t-open", "alice", "bob", 5, false, 0),
	};
	assert_int_equal(run_batch_ex(e, ops, 2, 2000, false, NULL), KOBO_OK);
	reopen_store(e);
	assert_true(kobo_store_healthy(e->store));
	reader = reader_open_ok(e);
	assert_account_absent(reader, "open");
	assert_transfer_absent(reader, "t-open");
	assert_int_equal(run_batch(e, ops, 2, 3000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_CREATED);
	assert_int_equal(e->results[1].code, KOBO_RESULT_CREATED);
	assert_int_equal(read_account_ok(reader, "open").created_at_ms, 3000);
	reader_close(e, reader);
}

/* ---- Failed commits and the sticky error. ---- */

/* After a failed commit the store refuses writes (begin and the expiry
 * scan answer KOBO_EFAILED, healthy() is false) until reopened, however
 * healthy the disk is again. */
static void assert_sticky(env *e)
{
	char ids[1][KOBO_ID_LEN_MAX + 1];
	size_t count = 99;

	assert_false(kobo_store_healthy(e->store));
	kobo_store_rollback(e->store); /* safe after a failed step */
	assert_int_equal(kobo_store_begin(e->store), KOBO_EFAILED);
	assert_int_equal(kobo_store_expired_holds(e->store, 5000, ids, 1, &count),
	                 KOBO_EFAILED);
	assert_int_equal(kobo_store_begin(e->store), KOBO_EFAILED);
	assert_false(kobo_store_healthy(e->store));
}

/* Runs ops up to write, arms fault and commits. false, with the batch
 * rolled back, when the backend cannot inject that fault; else *rc is
 * commit's answer, which must leave the token alone. */
static bool commit_with_fault(env *e, const kobo_op *ops, size_t count,
                              int64_t now_ms, commit_fault fault, int *rc)
{
	assert_int_equal(run_batch_ex(e, ops, count, now_ms, false, NULL), KOBO_OK);
	if (!arm_commit_fault(e, fault)) {
		kobo_store_rollback(e->store);
		return false;
	}
	uint64_t token = 0xfeed;
	*rc = kobo_store_commit(e->store, &token);
	disarm_commit_fault();
	assert_int_equal(token, 0xfeed); /* left alone on error */
	return true;
}

static void assert_commit_unknown(const env *e, int rc)
{
	if (rc != KOBO_EUNKNOWN)
		fail_msg("%s: a failed commit answered %s, expected %s", e->backend->name,
		         kobo_status_name(rc), kobo_status_name(KOBO_EUNKNOWN));
}

/* A commit that failed with nothing on disk (the log write failed): its
 * outcome is unknown to the caller (KOBO_EUNKNOWN) and the store is sticky
 * until reopened; readers still read what was committed before; after the
 * reopen the batch is absent, took no token, and its retry applies it
 * once. */
static void failed_commit_lost_is_sticky_until_reopen(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	kobo_audit_totals totals;
	int rc;

	seed(e, 1000);
	uint64_t last = e->token;
	kobo_op ops[] = {
		test_op_account("erin", "NGN", false, NULL),
		test_op_transfer("t-lost", "alice", "bob", 500, false, 0),
	};
	if (!commit_with_fault(e, ops, 2, 2000, FAULT_COMMIT_LOST, &rc)) {
		skip_because(e, "lose a commit on demand");
		return;
	}
	assert_commit_unknown(e, rc);
	assert_sticky(e);

	reader = reader_open_ok(e);
	assert_account_absent(reader, "erin");
	assert_transfer_absent(reader, "t-lost");
	assert_int_equal(read_account_ok(reader, "alice").posted, 10000);
	reader_close(e, reader);

	reopen_store(e);
	assert_true(kobo_store_healthy(e->store));
	reader = reader_open_ok(e);
	assert_account_absent(reader, "erin");
	assert_transfer_absent(reader, "t-lost");
	assert_int_equal(read_account_ok(reader, "alice").posted, 10000);
	/* The retry applies it, once. */
	assert_int_equal(run_batch(e, ops, 2, 3000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_CREATED);
	assert_int_equal(e->results[1].code, KOBO_RESULT_CREATED);
	assert_token(e, last + 1); /* the lost batch took no number */
	assert_int_equal(read_account_ok(reader, "alice").posted, 9500);
	reader_close(e, reader);
	assert_audit_clean(e, &totals);
}

/* A commit of unknown outcome: KOBO_EUNKNOWN, sticky until reopened; after
 * the reopen the batch is wholly there or wholly absent, never half, and
 * the client's retry with the same ids applies it exactly once. Returns
 * whether it had landed; false from *supported when the backend cannot
 * inject fault. */
static bool unknown_outcome_resolves_by_id(env *e, commit_fault fault,
                                           bool *supported)
{
	kobo_store_reader *reader = NULL;
	kobo_audit_totals totals;
	kobo_account account;
	kobo_transfer transfer;
	int rc;

	seed(e, 1000);
	uint64_t last = e->token;
	kobo_op ops[] = {
		test_op_account("erin", "NGN", false, NULL),
		test_op_transfer("t-unsure", "alice", "bob", 500, false, 0),
	};
	*supported = commit_with_fault(e, ops, 2, 2000, fault, &rc);
	if (!*supported)
		return false;
	assert_commit_unknown(e, rc);
	assert_sticky(e);

	reopen_store(e);
	assert_true(kobo_store_healthy(e->store));
	reader = reader_open_ok(e);
	int account_rc = kobo_store_read_account(reader, "erin", &account);
	int transfer_rc = kobo_store_read_transfer(reader, "t-unsure", &transfer);
	assert_int_equal(account_rc, transfer_rc); /* whole or absent */
	bool landed = transfer_rc == KOBO_OK;
	if (!landed)
		assert_int_equal(transfer_rc, KOBO_ENOTFOUND);
	assert_int_equal(read_account_ok(reader, "alice").posted, landed ? 9500 : 10000);
	assert_audit_clean(e, &totals);

	assert_int_equal(run_batch(e, ops, 2, 3000), KOBO_OK);
	kobo_result_code want = landed ? KOBO_RESULT_REPLAYED : KOBO_RESULT_CREATED;
	assert_int_equal(e->results[0].code, want);
	assert_int_equal(e->results[1].code, want);
	assert_int_equal(e->results[1].transfer.created_at_ms, landed ? 2000 : 3000);
	assert_token(e, last + (landed ? 2 : 1)); /* a landed batch, token and all */
	assert_int_equal(read_account_ok(reader, "alice").posted, 9500);
	reader_close(e, reader);
	assert_audit_clean(e, &totals);
	return landed;
}

/* The batch landed but the answer was lost (a crash after the fsync). */
static void failed_commit_landed_replays_after_reopen(void **state)
{
	env *e = *state;
	bool supported;
	bool landed = unknown_outcome_resolves_by_id(e, FAULT_COMMIT_LANDED, &supported);
	if (!supported)
		skip_because(e, "land a commit and lose its answer on demand");
	assert_true(landed);
}

/* The fsync failed: the batch may be there or not. */
static void failed_commit_unknown_resolves_by_id_after_reopen(void **state)
{
	env *e = *state;
	bool supported;
	bool landed = unknown_outcome_resolves_by_id(e, FAULT_COMMIT_UNKNOWN, &supported);
	if (!supported)
		skip_because(e, "fail an fsync on demand");
	printf("[   INFO   ] %s: the batch of unknown outcome %s after the reopen\n",
	       e->backend->name, landed ? "landed" : "was absent");
}

/* A fault fires once: the commits after the reopen succeed. */
static void commit_fault_fires_once(void **state)
{
	env *e = *state;
	int rc;

	seed(e, 1000);
	kobo_op ops[] = {test_op_account("once", "NGN", false, NULL)};
	if (!commit_with_fault(e, ops, 1, 2000, FAULT_COMMIT_LOST, &rc))
		skip_because(e, "lose a commit on demand");
	assert_commit_unknown(e, rc);
	reopen_store(e);
	assert_int_equal(run_batch(e, ops, 1, 3000), KOBO_OK);
	kobo_op more[] = {test_op_account("twice", "NGN", false, NULL)};
	assert_int_equal(run_batch(e, more, 1, 4000), KOBO_OK);
	assert_true(kobo_store_healthy(e->store));
}

/* Writing what the store's constraints refuse — a new row whose id exists
 * (the batch did not load it), an update of a row that does not exist —
 * fails the write (or, where the writes go out with COMMIT, the commit)
 * with KOBO_ESTORE and makes the store sticky: the
 * writer's picture of the shard was wrong. The stored rows are untouched
 * and the reopened store works. */
static void expect_write_refused(env *e, const kobo_account_change *accounts,
                                 size_t n, const kobo_transfer_change *transfers,
                                 size_t m, const char *what)
{
	assert_int_equal(kobo_store_begin(e->store), KOBO_OK);
	int rc = kobo_store_write(e->store, accounts, n, transfers, m);
	/* A backend that sends the writes with COMMIT refuses them there. */
	uint64_t token = 0xfeed;
	if (rc == KOBO_OK)
		rc = kobo_store_commit(e->store, &token);
	if (rc != KOBO_ESTORE)
		fail_msg("%s: writing %s answered %s, expected %s", e->backend->name,
		         what, kobo_status_name(rc), kobo_status_name(KOBO_ESTORE));
	assert_int_equal(token, 0xfeed);
	assert_sticky(e);
	reopen_store(e);
	assert_true(kobo_store_healthy(e->store));
}

static void write_refused_by_a_constraint_is_sticky(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	kobo_account account;
	kobo_transfer transfer;

	static char kept[2][KOBO_METADATA_BYTES_MAX];

	seed(e, 1000);
	reader = reader_open_ok(e);
	kobo_account alice = keep_account(read_account_ok(reader, "alice"), &kept[0]);
	kobo_transfer fund = keep_transfer(read_transfer_ok(reader, "t-fund"), &kept[1]);
	reader_close(e, reader);

	account = alice;
	account.posted = 1;
	account.metadata = "{}";
	account.metadata_len = 2;
	account.created_at_ms = 2000;
	expect_write_refused(e, &(kobo_account_change){&account, true}, 1, NULL, 0,
	                     "a new account whose id exists");
	transfer = fund;
	transfer.amount = 1;
	transfer.metadata = "{}";
	transfer.metadata_len = 2;
	expect_write_refused(e, NULL, 0, &(kobo_transfer_change){&transfer, true}, 1,
	                     "a new transfer whose id exists");
	snprintf(account.id, sizeof account.id, "nobody");
	expect_write_refused(e, &(kobo_account_change){&account, false}, 1, NULL, 0,
	                     "an update of an account that does not exist");
	snprintf(transfer.id, sizeof transfer.id, "t-none");
	expect_write_refused(e, NULL, 0, &(kobo_transfer_change){&transfer, false}, 1,
	                     "an update of a transfer that does not exist");

	/* A batch of good and bad rows lands none of its rows. */
	kobo_account carol;
	memset(&carol, 0, sizeof carol);
	snprintf(carol.id, sizeof carol.id, "carol");
	snprintf(carol.currency, sizeof carol.currency, "NGN");
	carol.metadata = "{}";
	carol.metadata_len = 2;
	const kobo_account_change mixed[] = {{&carol, true}, {&account, false}};
	expect_write_refused(e, mixed, 2, NULL, 0, "a new account and a missing one");

	reader = reader_open_ok(e);
	account = read_account_ok(reader, "alice");
	assert_account_equal(&alice, &account);
	transfer = read_transfer_ok(reader, "t-fund");
	assert_transfer_equal(&fund, &transfer);
	assert_account_absent(reader, "nobody");
	assert_account_absent(reader, "carol");
	assert_transfer_absent(reader, "t-none");
	reader_close(e, reader);
	uint64_t last = e->token;
	kobo_op ops[] = {test_op_transfer("t-after", "alice", "bob", 5, false, 0)};
	assert_int_equal(run_batch(e, ops, 1, 3000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_CREATED);
	assert_token(e, last + 1);
}

/* A conflict (KOBO_ECONFLICT: a serialization failure between nodes)
 * applies nothing, ends the batch, leaves the store healthy and the token
 * alone; the writer re-runs the whole batch. Only backends that can be
 * made to conflict on demand run it (mem, by its hook; SQLite never
 * conflicts: one writer per file). */
static void commit_conflict_applies_nothing_and_stays_healthy(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;

	seed(e, 1000);
	if (!arm_commit_conflicts(e, 2))
		skip_because(e, "conflict on demand");
	uint64_t last = e->token;
	kobo_op ops[] = {
		test_op_account("erin", "NGN", false, NULL),
		test_op_transfer("t-again", "alice", "bob", 500, false, 0),
	};
	reader = reader_open_ok(e);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(run_batch_ex(e, ops, 2, 2000, false, NULL), KOBO_OK);
		uint64_t token = 0xfeed;
		assert_int_equal(kobo_store_commit(e->store, &token), KOBO_ECONFLICT);
		assert_int_equal(token, 0xfeed);
		assert_true(kobo_store_healthy(e->store));
		kobo_store_rollback(e->store); /* harmless: the batch is over */
		assert_account_absent(reader, "erin");
		assert_transfer_absent(reader, "t-again");
	}
	assert_int_equal(run_batch(e, ops, 2, 3000), KOBO_OK);
	assert_int_equal(e->results[1].code, KOBO_RESULT_CREATED);
	assert_token(e, last + 1);
	assert_int_equal(read_account_ok(reader, "alice").posted, 9500);
	reader_close(e, reader);
}

/* ---- The batch's clock, its round trips, and rows locked elsewhere. ---- */

static int load_nothing(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	(void)transfer;
	(void)seq;
	(*(int *)ctx)++;
	return 0;
}

/* now() answers the caller's clock for a store one process serves, and
 * the store's own for one several nodes share: a node whose clock is far
 * off still stamps and expires by the database's, with one answer for the
 * whole batch, and outside a batch the store's clock now. */
static void batch_clock_is_the_stores_when_nodes_share_it(void **state)
{
	env *e = *state;
	const int64_t far_off = 1000; /* 1970: no real clock says that */
	const char *ids[] = {"t-fund"};
	int64_t first = 0, again = 0, outside = 0;
	int loaded = 0;

	seed(e, 1000);
	int64_t before = kobo_now_ms();
	assert_int_equal(kobo_store_begin(e->store), KOBO_OK);
	assert_int_equal(kobo_store_load_transfers(e->store, ids, 1, load_nothing, &loaded),
	                 KOBO_OK);
	assert_int_equal(loaded, 1);
	assert_int_equal(kobo_store_now(e->store, far_off, &first), KOBO_OK);
	usleep(20 * 1000);
	assert_int_equal(kobo_store_now(e->store, far_off + 5, &again), KOBO_OK);
	kobo_store_rollback(e->store);
	usleep(20 * 1000);
	assert_int_equal(kobo_store_now(e->store, far_off, &outside), KOBO_OK);
	int64_t after = kobo_now_ms();
	if (!e->backend->shared_clock) {
		assert_int_equal(first, far_off);
		assert_int_equal(again, far_off + 5);
		assert_int_equal(outside, far_off);
		return;
	}
	/* The server runs on this machine: its clock is this one's, give or
	 * take the tolerance. */
	const int64_t tolerance_ms = 1000;
	if (first < before - tolerance_ms || first > after + tolerance_ms)
		fail_msg("%s: the batch's clock says %lld, the machine's %lld..%lld",
		         e->backend->name, (long long)first, (long long)before,
		         (long long)after);
	assert_int_equal(again, first);
	assert_true(outside >= first + 20 && outside <= after + tolerance_ms);
}

/* A batch is three round trips however much it does (PostgreSQL's
 * pipelines: BEGIN + settings + transfers; accounts; writes + COMMIT), and
 * a replay-only batch the same (it still bumps meta). */
static void batch_takes_three_round_trips(void **state)
{
	env *e = *state;

	if (e->backend->round_trips == NULL)
		skip_because(e, "count its round trips");
	seed(e, 1000);
	kobo_op ops[] = {
		test_op_account("carol", "NGN", false, NULL),
		test_op_transfer("t-rt1", "alice", "bob", 5, false, 0),
		test_op_transfer("t-rt2", "alice", "carol", 7, true, 60),
		test_op_target(KOBO_OP_POST, "t-rt2", true, 7),
	};
	uint64_t before = e->backend->round_trips(e->store);
	assert_int_equal(run_batch(e, ops, 4, 2000), KOBO_OK);
	assert_int_equal(e->results[3].code, KOBO_RESULT_UPDATED);
	assert_int_equal(e->backend->round_trips(e->store) - before, 3);
	before = e->backend->round_trips(e->store);
	assert_int_equal(run_batch(e, ops, 2, 3000), KOBO_OK);
	assert_int_equal(e->results[1].code, KOBO_RESULT_REPLAYED);
	assert_int_equal(e->backend->round_trips(e->store) - before, 3);
}

/* A batch that needs a row another node holds locked gives up within the
 * store's lock timeout (PostgreSQL: 1 s) with KOBO_ECONFLICT — nothing
 * written, the store healthy, so the writer re-runs it and finally answers
 * 503 overloaded — and the row works again once the lock is gone. */
static void a_row_locked_elsewhere_times_the_batch_out(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;

	if (e->backend->hold_row_lock == NULL)
		skip_because(e, "hold a row lock from another session");
	seed(e, 1000);
	uint64_t last = e->token;
	void *lock = e->backend->hold_row_lock(e->url, e->shard, "accounts", "alice");
	assert_non_null(lock);
	kobo_op ops[] = {
		test_op_account("dave", "NGN", false, NULL),
		test_op_transfer("t-locked", "alice", "bob", 5, false, 0),
	};
	int64_t started_us = kobo_monotonic_us();
	int rc = run_batch(e, ops, 2, 2000);
	int64_t waited_ms = (kobo_monotonic_us() - started_us) / 1000;
	if (rc != KOBO_ECONFLICT || waited_ms > 3000) {
		e->backend->release_row_lock(lock);
		fail_msg("%s: a batch on a locked row answered %s after %lld ms, expected "
		         "%s within 3000 ms", e->backend->name, kobo_status_name(rc),
		         (long long)waited_ms, kobo_status_name(KOBO_ECONFLICT));
	}
	assert_true(kobo_store_healthy(e->store));
	reader = reader_open_ok(e);
	assert_account_absent(reader, "dave");
	assert_transfer_absent(reader, "t-locked");
	assert_int_equal(read_account_ok(reader, "alice").posted, 10000);
	e->backend->release_row_lock(lock);
	assert_int_equal(run_batch(e, ops, 2, 3000), KOBO_OK);
	assert_int_equal(e->results[1].code, KOBO_RESULT_CREATED);
	assert_token(e, last + 1);
	assert_int_equal(read_account_ok(reader, "alice").posted, 9995);
	reader_close(e, reader);
}

/* ---- Concurrency control and the schema's version. ---- */

/* Optimistic: a row another node changed between this batch's load and its
 * commit — one it writes, or one it only read — makes commit answer
 * KOBO_ECONFLICT with nothing applied and the store healthy; the re-run
 * sees the change. Pessimistic stores refuse to be optimistic when one
 * writer owns the shard (SQLite, mem), and keep working. */
static void optimistic_batches_conflict_on_rows_changed_since_read(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	char sql[256];

	seed(e, 1000);
	if (!e->backend->optimistic) {
		int rc = kobo_store_set_concurrency(e->store, KOBO_STORE_OPTIMISTIC);
		if (e->backend->exec_elsewhere == NULL)
			assert_int_equal(rc, KOBO_EINVAL);
		else
			assert_int_equal(kobo_store_set_concurrency(e->store,
			                                            KOBO_STORE_PESSIMISTIC), KOBO_OK);
		assert_int_equal(kobo_store_set_concurrency(e->store, KOBO_STORE_PESSIMISTIC),
		                 KOBO_OK);
		kobo_op ops[] = {test_op_transfer("t-still", "alice", "bob", 5, false, 0)};
		assert_int_equal(run_batch(e, ops, 1, 2000), KOBO_OK);
		assert_int_equal(e->results[0].code, KOBO_RESULT_CREATED);
		skip_because(e, "run optimistic batches (pessimistic mode checked)");
	}
	uint64_t last = e->token;
	reader = reader_open_ok(e);
	/* A written row: alice pays; another node moves alice's balance first. */
	kobo_op pay[] = {test_op_transfer("t-opt", "alice", "bob", 100, false, 0)};
	assert_int_equal(run_batch_ex(e, pay, 1, 2000, false, NULL), KOBO_OK);
	/* (Moved and moved back, so the audit still balances.) */
	snprintf(sql, sizeof sql, "UPDATE accounts SET posted = posted - 1, version = version + 1"
	         " WHERE id = 'alice'; UPDATE accounts SET posted = posted + 1,"
	         " version = version + 1 WHERE id = 'alice'");
	assert_true(e->backend->exec_elsewhere(e->url, e->shard, sql));
	uint64_t token = 0xfeed;
	assert_int_equal(kobo_store_commit(e->store, &token), KOBO_ECONFLICT);
	assert_int_equal(token, 0xfeed);
	kobo_store_rollback(e->store);
	assert_true(kobo_store_healthy(e->store));
	assert_transfer_absent(reader, "t-opt");
	assert_int_equal(read_account_ok(reader, "alice").posted, 10000);
	assert_int_equal(run_batch(e, pay, 1, 3000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_CREATED);
	assert_token(e, last + 1);
	assert_int_equal(read_account_ok(reader, "alice").posted, 9900);

	/* A row only read: a replay of t-fund reads the transfer and writes
	 * nothing of it; another node's change to it is a conflict too. */
	kobo_op replay[] = {test_op_transfer("t-fund", "cash", "alice", 10000, false, 0)};
	assert_int_equal(run_batch_ex(e, replay, 1, 4000, false, NULL), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_REPLAYED);
	assert_true(e->backend->exec_elsewhere(e->url, e->shard,
	            "UPDATE transfers SET version = version + 1 WHERE id = 't-fund'"));
	token = 0xfeed;
	assert_int_equal(kobo_store_commit(e->store, &token), KOBO_ECONFLICT);
	kobo_store_rollback(e->store);
	assert_true(kobo_store_healthy(e->store));
	assert_int_equal(run_batch(e, replay, 1, 5000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_REPLAYED);
	assert_token(e, last + 2);
	reader_close(e, reader);
	kobo_audit_totals totals;
	assert_audit_clean(e, &totals);
}

/* ---- created_by: the key that made a record, through every read. ---- */

typedef struct by_id {
	char ids[16][KOBO_ID_LEN_MAX + 1];
	char by[16][KOBO_KEY_ID_LEN + 1];
	size_t count;
} by_id;

static int note_transfer_by(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	by_id *b = ctx;
	(void)seq;
	assert_true(b->count < 16);
	snprintf(b->ids[b->count], sizeof b->ids[0], "%s", transfer->id);
	snprintf(b->by[b->count++], sizeof b->by[0], "%s", transfer->created_by);
	return 0;
}

static int note_account_by(void *ctx, const kobo_account *account)
{
	by_id *b = ctx;
	assert_true(b->count < 16);
	snprintf(b->ids[b->count], sizeof b->ids[0], "%s", account->id);
	snprintf(b->by[b->count++], sizeof b->by[0], "%s", account->created_by);
	return 0;
}

static kobo_op by_key(kobo_op op, const char *key_id)
{
	snprintf(op.created_by, sizeof op.created_by, "%s", key_id);
	return op;
}

#define KEY_A "0123456789abcdef"
#define KEY_B "fedcba9876543210"
#define KEY_C "00000000000000ff"

/* created_by is written with each new account and transfer and comes back
 * from every read: read_account/transfer, history, sagas, prefix reads,
 * and the next batch's loads (a replay answers the stored key, not the
 * replaying request's); an update never changes it; a reopen keeps it. */
static void created_by_round_trips_through_every_read(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	by_id b;

	kobo_op first[] = {
		by_key(test_op_account("cash", "NGN", true, NULL), KEY_A),
		by_key(test_op_account("alice", "NGN", false, NULL), KEY_B),
		test_op_account("bob", "NGN", false, NULL),
		by_key(test_op_transfer("t1", "cash", "alice", 1000, false, 0), KEY_A),
		by_key(test_op_debit("x1", "alice", "zed", "clr:B", 300, false, 0), KEY_B),
		by_key(test_op_credit("y1", "yan", "bob", "clr:C", 400, false), KEY_C),
	};
	assert_int_equal(run_batch(e, first, 6, 1000), KOBO_OK);
	for (size_t i = 3; i < 6; i++)
		assert_int_equal(e->results[i].code, KOBO_RESULT_CREATED);
	reader = reader_open_ok(e);
	assert_string_equal(read_account_ok(reader, "cash").created_by, KEY_A);
	assert_string_equal(read_account_ok(reader, "alice").created_by, KEY_B);
	assert_string_equal(read_account_ok(reader, "bob").created_by, "");
	/* Clearing accounts are Kobo's own. */
	assert_string_equal(read_account_ok(reader, "clr:B").created_by, "");
	assert_string_equal(read_account_ok(reader, "clr:C").created_by, "");
	assert_string_equal(read_transfer_ok(reader, "t1").created_by, KEY_A);
	assert_string_equal(read_transfer_ok(reader, "x1").created_by, KEY_B);
	assert_string_equal(read_transfer_ok(reader, "y1").created_by, KEY_C);

	memset(&b, 0, sizeof b);
	assert_int_equal(kobo_store_read_history(reader, "alice", 0, 10, note_transfer_by, &b),
	                 KOBO_OK);
	assert_int_equal(b.count, 2);
	assert_string_equal(b.ids[0], "t1");
	assert_string_equal(b.by[0], KEY_A);
	assert_string_equal(b.ids[1], "x1");
	assert_string_equal(b.by[1], KEY_B);
	memset(&b, 0, sizeof b);
	assert_int_equal(kobo_store_read_sagas(reader, "", 10, note_transfer_by, &b), KOBO_OK);
	assert_int_equal(b.count, 1);
	assert_string_equal(b.ids[0], "x1");
	assert_string_equal(b.by[0], KEY_B);
	memset(&b, 0, sizeof b);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "", note_account_by, &b),
	                 KOBO_OK);
	assert_int_equal(b.count, 5); /* alice bob cash clr:B clr:C */
	assert_string_equal(b.ids[0], "alice");
	assert_string_equal(b.by[0], KEY_B);
	assert_string_equal(b.ids[1], "bob");
	assert_string_equal(b.by[1], "");
	assert_string_equal(b.ids[2], "cash");
	assert_string_equal(b.by[2], KEY_A);

	/* Loads: replays by another key answer the stored records; an update
	 * of alice's balance and of t1's state leaves their keys alone. */
	kobo_op second[] = {
		by_key(test_op_account("alice", "NGN", false, NULL), KEY_C),
		by_key(test_op_transfer("t1", "cash", "alice", 1000, false, 0), KEY_C),
		by_key(test_op_transfer("t2", "alice", "bob", 10, true, 60), KEY_C),
	};
	assert_int_equal(run_batch(e, second, 3, 2000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_REPLAYED);
	assert_string_equal(e->results[0].account.created_by, KEY_B);
	assert_int_equal(e->results[1].code, KOBO_RESULT_REPLAYED);
	assert_string_equal(e->results[1].transfer.created_by, KEY_A);
	assert_int_equal(e->results[2].code, KOBO_RESULT_CREATED);
	kobo_op third[] = {by_key(test_op_target(KOBO_OP_POST, "t2", false, 0), KEY_A)};
	assert_int_equal(run_batch(e, third, 1, 3000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_UPDATED);
	assert_string_equal(e->results[0].transfer.created_by, KEY_C);
	reader_close(e, reader);

	reopen_store(e);
	reader = reader_open_ok(e);
	assert_string_equal(read_transfer_ok(reader, "t2").created_by, KEY_C);
	assert_int_equal(read_transfer_ok(reader, "t2").status, KOBO_STATUS_POSTED);
	assert_string_equal(read_account_ok(reader, "alice").created_by, KEY_B);
	assert_int_equal(read_account_ok(reader, "alice").posted, 1000 - 10); /* x1 holds */
	reader_close(e, reader);
}

/* ---- trace_id: the trace of the request that made a transfer. ---- */

static int note_transfer_trace(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	by_id *b = ctx;
	(void)seq;
	assert_true(b->count < 16);
	snprintf(b->ids[b->count], sizeof b->ids[0], "%s", transfer->id);
	/* by[] is too short for a trace id: keep its first 16 characters. */
	snprintf(b->by[b->count++], sizeof b->by[0], "%.16s", transfer->trace_id);
	return 0;
}

static kobo_op in_trace(kobo_op op, const char *trace_id)
{
	snprintf(op.trace_id, sizeof op.trace_id, "%s", trace_id);
	return op;
}

#define TRACE_A "4bf92f3577b34da6a3ce929d0e0e4736"
#define TRACE_B "00f067aa0ba902b700f067aa0ba902b7"

/* trace_id is written with each new transfer and comes back from every
 * read (read_transfer, history, sagas, by-request, the next batch's
 * loads: a replay answers the stored trace, not the replaying request's);
 * an update never changes it; a reopen keeps it. */
static void trace_id_round_trips_through_every_read(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	by_id b;

	kobo_op first[] = {
		test_op_account("cash", "NGN", true, NULL),
		test_op_account("alice", "NGN", false, NULL),
		test_op_account("bob", "NGN", false, NULL),
		in_trace(test_op_transfer("t1", "cash", "alice", 1000, false, 0), TRACE_A),
		in_trace(test_op_debit("x1", "alice", "zed", "clr:B", 300, false, 0), TRACE_B),
		test_op_transfer("t0", "cash", "bob", 5, false, 0),
	};
	assert_int_equal(run_batch(e, first, 6, 1000), KOBO_OK);
	for (size_t i = 3; i < 6; i++)
		assert_int_equal(e->results[i].code, KOBO_RESULT_CREATED);
	assert_string_equal(e->results[3].transfer.trace_id, TRACE_A);
	reader = reader_open_ok(e);
	assert_string_equal(read_transfer_ok(reader, "t1").trace_id, TRACE_A);
	assert_string_equal(read_transfer_ok(reader, "x1").trace_id, TRACE_B);
	assert_string_equal(read_transfer_ok(reader, "t0").trace_id, "");

	memset(&b, 0, sizeof b);
	assert_int_equal(kobo_store_read_history(reader, "alice", 0, 10, note_transfer_trace, &b),
	                 KOBO_OK);
	assert_int_equal(b.count, 2);
	assert_string_equal(b.ids[0], "t1");
	assert_string_equal(b.by[0], "4bf92f3577b34da6");
	assert_string_equal(b.ids[1], "x1");
	assert_string_equal(b.by[1], "00f067aa0ba902b7");
	memset(&b, 0, sizeof b);
	assert_int_equal(kobo_store_read_sagas(reader, "", 10, note_transfer_trace, &b), KOBO_OK);
	assert_int_equal(b.count, 1);
	assert_string_equal(b.ids[0], "x1");
	assert_string_equal(b.by[0], "00f067aa0ba902b7");
	memset(&b, 0, sizeof b);
	assert_int_equal(kobo_store_read_by_request(reader, first[3].request_id, 0, 10,
	                                            note_transfer_trace, &b), KOBO_OK);
	assert_int_equal(b.count, 1);
	assert_string_equal(b.ids[0], "t1");
	assert_string_equal(b.by[0], "4bf92f3577b34da6");

	/* A replay in another trace answers the stored one; an update of t2's
	 * state by a request in another trace leaves t2's alone. */
	kobo_op second[] = {
		in_trace(test_op_transfer("t1", "cash", "alice", 1000, false, 0), TRACE_B),
		in_trace(test_op_transfer("t2", "alice", "bob", 10, true, 60), TRACE_A),
	};
	assert_int_equal(run_batch(e, second, 2, 2000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_REPLAYED);
	assert_string_equal(e->results[0].transfer.trace_id, TRACE_A);
	assert_int_equal(e->results[1].code, KOBO_RESULT_CREATED);
	kobo_op third[] = {in_trace(test_op_target(KOBO_OP_POST, "t2", false, 0), TRACE_B)};
	assert_int_equal(run_batch(e, third, 1, 3000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_UPDATED);
	assert_string_equal(e->results[0].transfer.trace_id, TRACE_A);
	reader_close(e, reader);

	reopen_store(e);
	reader = reader_open_ok(e);
	assert_string_equal(read_transfer_ok(reader, "t2").trace_id, TRACE_A);
	assert_int_equal(read_transfer_ok(reader, "t2").status, KOBO_STATUS_POSTED);
	assert_string_equal(read_transfer_ok(reader, "t1").trace_id, TRACE_A);
	reader_close(e, reader);
}

/* ---- API keys (store.h: key_insert, key_revoke, read_keys). ---- */

static kobo_api_key make_key(const char *id, const char *name, uint32_t scopes,
                             uint8_t fill, int64_t created_at_ms)
{
	kobo_api_key key;
	memset(&key, 0, sizeof key);
	snprintf(key.id, sizeof key.id, "%s", id);
	snprintf(key.name, sizeof key.name, "%s", name);
	key.scopes = scopes;
	for (size_t i = 0; i < sizeof key.salt; i++)
		key.salt[i] = (uint8_t)(fill + i);
	for (size_t i = 0; i < sizeof key.hash; i++)
		key.hash[i] = (uint8_t)(0xff - fill - i); /* 0x00 and 0xff bytes too */
	key.created_at_ms = created_at_ms;
	return key;
}

static void assert_key_equal(const kobo_api_key *want, const kobo_api_key *got)
{
	assert_string_equal(got->id, want->id);
	assert_string_equal(got->name, want->name);
	assert_int_equal(got->scopes, want->scopes);
	assert_memory_equal(got->salt, want->salt, sizeof want->salt);
	assert_memory_equal(got->hash, want->hash, sizeof want->hash);
	assert_int_equal(got->created_at_ms, want->created_at_ms);
	assert_int_equal(got->revoked_at_ms, want->revoked_at_ms);
}

typedef struct keys_seen {
	kobo_api_key keys[8];
	size_t count; /* every key delivered; the first 8 are kept */
	size_t stop_after;
} keys_seen;

static int collect_key(void *ctx, const kobo_api_key *key)
{
	keys_seen *k = ctx;
	if (k->count < 8)
		k->keys[k->count] = *key;
	k->count++;
	return k->stop_after != 0 && k->count >= k->stop_after;
}

static keys_seen read_keys_ok(env *e, bool include_revoked)
{
	keys_seen k;
	memset(&k, 0, sizeof k);
	kobo_store_reader *reader = reader_open_ok(e);
	assert_int_equal(kobo_store_read_keys(reader, include_revoked, collect_key, &k), KOBO_OK);
	reader_close(e, reader);
	return k;
}

/* Every field comes back as inserted, in id order whatever the insert
 * order; a taken id is KOBO_ECONFLICT and leaves the stored key alone;
 * keys survive a reopen. */
static void keys_round_trip_in_id_order(void **state)
{
	env *e = *state;
	kobo_api_key keys[3] = {
		make_key("00000000000000c3", "ci deploy", KOBO_SCOPE_ADMIN, 0x00, 1000),
		make_key("00000000000000a1", "reader \"quoted\" \\ name",
		         KOBO_SCOPE_ACCOUNTS_READ | KOBO_SCOPE_TRANSFERS_READ, 0x10, 2000),
		make_key("00000000000000b2", "x", KOBO_SCOPES_ALL, 0xf0, INT64_MAX),
	};
	char longest[KOBO_KEY_NAME_LEN_MAX + 1];
	memset(longest, '~', KOBO_KEY_NAME_LEN_MAX);
	longest[KOBO_KEY_NAME_LEN_MAX] = '\0';
	snprintf(keys[2].name, sizeof keys[2].name, "%s", longest);

	keys_seen k = read_keys_ok(e, true);
	assert_int_equal(k.count, 0);
	for (size_t i = 0; i < 3; i++)
		assert_int_equal(kobo_store_key_insert(e->store, &keys[i]), KOBO_OK);
	kobo_api_key clash = make_key("00000000000000a1", "other", KOBO_SCOPE_ADMIN, 0x77, 9);
	assert_int_equal(kobo_store_key_insert(e->store, &clash), KOBO_ECONFLICT);

	for (int pass = 0; pass < 2; pass++) {
		k = read_keys_ok(e, false);
		assert_int_equal(k.count, 3);
		assert_key_equal(&keys[1], &k.keys[0]);
		assert_key_equal(&keys[2], &k.keys[1]);
		assert_key_equal(&keys[0], &k.keys[2]);
		reopen_store(e);
	}
	/* A non-zero return stops the read, which still succeeds. */
	memset(&k, 0, sizeof k);
	k.stop_after = 1;
	kobo_store_reader *reader = reader_open_ok(e);
	assert_int_equal(kobo_store_read_keys(reader, false, collect_key, &k), KOBO_OK);
	assert_int_equal(k.count, 1);
	reader_close(e, reader);
}

/* A revoked key leaves the live list, stays in the full one with the time
 * of its first revocation; unknown ids are KOBO_ENOTFOUND. */
static void revoked_keys_leave_the_live_list(void **state)
{
	env *e = *state;
	kobo_api_key a = make_key("aaaaaaaaaaaaaaaa", "a", KOBO_SCOPE_ADMIN, 1, 1000);
	kobo_api_key b = make_key("bbbbbbbbbbbbbbbb", "b", KOBO_SCOPE_ACCOUNTS_READ, 2, 1000);

	assert_int_equal(kobo_store_key_insert(e->store, &a), KOBO_OK);
	assert_int_equal(kobo_store_key_insert(e->store, &b), KOBO_OK);
	assert_int_equal(kobo_store_key_revoke(e->store, "aaaaaaaaaaaaaaaa", 5000), KOBO_OK);
	keys_seen k = read_keys_ok(e, false);
	assert_int_equal(k.count, 1);
	assert_key_equal(&b, &k.keys[0]);
	/* Revoking again succeeds and keeps the first time. */
	assert_int_equal(kobo_store_key_revoke(e->store, "aaaaaaaaaaaaaaaa", 9000), KOBO_OK);
	reopen_store(e);
	k = read_keys_ok(e, true);
	assert_int_equal(k.count, 2);
	a.revoked_at_ms = 5000;
	assert_key_equal(&a, &k.keys[0]);
	assert_key_equal(&b, &k.keys[1]);
	assert_int_equal(kobo_store_key_revoke(e->store, "cccccccccccccccc", 5000), KOBO_ENOTFOUND);
	assert_int_equal(kobo_store_key_revoke(e->store, "", 5000), KOBO_ENOTFOUND);
	/* A revoked id stays taken. */
	assert_int_equal(kobo_store_key_insert(e->store, &a), KOBO_ECONFLICT);
	k = read_keys_ok(e, true);
	assert_int_equal(k.count, 2);
}

/* Inserts count live keys "f" + 15 hex digits, 1.. count, the fast way
 * each backend allows: one SQL statement for a store behind a server or
 * in a file, the API for mem (no I/O). */
static void fill_keys(env *e, size_t count)
{
	char sql[1024];
	if (e->backend->exec_elsewhere != NULL) {
		snprintf(sql, sizeof sql,
		         "INSERT INTO api_keys (id, name, scopes, salt, hash, created_at_ms)"
		         " SELECT 'f' || lpad(to_hex(g), 15, '0'), 'bulk', 1,"
		         " decode(repeat('00', 16), 'hex'), decode(repeat('00', 32), 'hex'), 1"
		         " FROM generate_series(1, %zu) g", count);
		assert_true(e->backend->exec_elsewhere(e->url, e->shard, sql));
	} else if (e->dir[0] != '\0') {
		char path[PATH_MAX];
		sqlite3 *db = NULL;
		assert_true(kobo_layout_shard_path(path, sizeof path, e->dir, e->shard));
		assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
		sqlite3_busy_timeout(db, 5000);
		snprintf(sql, sizeof sql,
		         "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
		         " WHERE i < %zu) INSERT INTO api_keys (id, name, scopes, salt, hash,"
		         " created_at_ms) SELECT printf('f%%015x', i), 'bulk', 1,"
		         " zeroblob(16), zeroblob(32), 1 FROM n", count);
		int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
		if (rc != SQLITE_OK)
			fail_msg("fill_keys: %s", sqlite3_errmsg(db));
		sqlite3_close(db);
	} else {
		for (size_t i = 1; i <= count; i++) {
			char id[KOBO_KEY_ID_LEN + 1];
			snprintf(id, sizeof id, "f%015zx", i);
			kobo_api_key key = make_key(id, "bulk", 1, 0, 1);
			assert_int_equal(kobo_store_key_insert(e->store, &key), KOBO_OK);
		}
	}
}

/* KOBO_KEYS_MAX live keys at most: one more is KOBO_EFULL; revoked keys
 * do not count, so a revocation frees a slot. */
static void live_keys_are_bounded(void **state)
{
	env *e = *state;
	char id[KOBO_KEY_ID_LEN + 1];

	fill_keys(e, KOBO_KEYS_MAX - 2);
	kobo_api_key one = make_key("0000000000000001", "one", KOBO_SCOPE_ADMIN, 1, 1);
	kobo_api_key two = make_key("0000000000000002", "two", KOBO_SCOPE_ADMIN, 2, 1);
	kobo_api_key three = make_key("0000000000000003", "three", KOBO_SCOPE_ADMIN, 3, 1);
	assert_int_equal(kobo_store_key_insert(e->store, &one), KOBO_OK);
	assert_int_equal(kobo_store_key_insert(e->store, &two), KOBO_OK);
	assert_int_equal(kobo_store_key_insert(e->store, &three), KOBO_EFULL);
	keys_seen k = read_keys_ok(e, false);
	assert_int_equal(k.count, KOBO_KEYS_MAX);
	assert_string_equal(k.keys[0].id, "0000000000000001");
	snprintf(id, sizeof id, "f%015x", 7u);
	assert_int_equal(kobo_store_key_revoke(e->store, id, 10), KOBO_OK);
	assert_int_equal(kobo_store_key_insert(e->store, &three), KOBO_OK);
	kobo_api_key four = make_key("0000000000000004", "four", KOBO_SCOPE_ADMIN, 4, 1);
	assert_int_equal(kobo_store_key_insert(e->store, &four), KOBO_EFULL);
	k = read_keys_ok(e, false);
	assert_int_equal(k.count, KOBO_KEYS_MAX);
	k = read_keys_ok(e, true);
	assert_int_equal(k.count, KOBO_KEYS_MAX + 1);
}

typedef struct key_racer {
	kobo_store *store;
	kobo_api_key key;
	pthread_barrier_t *start;
	int rc;
} key_racer;

static void *race_key_insert(void *arg)
{
	key_racer *r = arg;
	pthread_barrier_wait(r->start);
	r->rc = kobo_store_key_insert(r->store, &r->key);
	return NULL;
}

/* Two writers (two handles on the same data, as `kobo key` on two hosts)
 * race for the last free slot: exactly one wins, every round. */
static void two_writers_cannot_pass_the_key_limit(void **state)
{
	env *e = *state;
	kobo_store *second = e->store;
	if (!e->backend->fresh_per_open)
		assert_int_equal(open_key_tool_store(e, &second), KOBO_OK);
	pthread_barrier_t start;

	fill_keys(e, KOBO_KEYS_MAX - 1);
	for (unsigned round = 0; round < 4; round++) {
		key_racer racers[2];
		pthread_t threads[2];
		pthread_barrier_init(&start, NULL, 2);
		for (int i = 0; i < 2; i++) {
			char id[KOBO_KEY_ID_LEN + 1];
			snprintf(id, sizeof id, "%015x%c", round, i == 0 ? 'a' : 'b');
			racers[i] = (key_racer){i == 0 ? e->store : second,
			                        make_key(id, "racer", KOBO_SCOPE_ADMIN, 5, 1),
			                        &start, -1};
			assert_int_equal(pthread_create(&threads[i], NULL, race_key_insert,
			                                &racers[i]), 0);
		}
		for (int i = 0; i < 2; i++)
			pthread_join(threads[i], NULL);
		pthread_barrier_destroy(&start);
		int winner = racers[0].rc == KOBO_OK ? 0 : 1;
		assert_int_equal(racers[winner].rc, KOBO_OK);
		assert_int_equal(racers[1 - winner].rc, KOBO_EFULL);
		assert_int_equal(read_keys_ok(e, false).count, KOBO_KEYS_MAX);
		/* Free the slot for the next round. */
		assert_int_equal(kobo_store_key_revoke(e->store, racers[winner].key.id, 2),
		                 KOBO_OK);
	}
	if (second != e->store)
		kobo_store_close(second);
}


/* A read-only open sees what the store's files hold; the journaled store's
 * SQLite projection trails its journal until its thread catches up, which
 * a scanning read on the live store waits for (store_hot.c). */
static int no_account(void *ctx, const kobo_account *account)
{
	(void)ctx;
	(void)account;
	return 0;
}

static void settle(env *e)
{
	if (!e->backend->read_only_trails)
		return;
	kobo_store_reader *reader = NULL;
	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "\x7f", no_account, NULL),
	                 KOBO_OK);
	kobo_store_reader_close(reader);
}

/* A read-only store refuses key writes and reads the keys the writable
 * one wrote (where a second open reaches the same data). */
static void read_only_store_refuses_key_writes(void **state)
{
	env *e = *state;
	kobo_store *read_only = NULL;
	kobo_api_key key = make_key("1111111111111111", "k", KOBO_SCOPE_ADMIN, 1, 1);

	assert_int_equal(kobo_store_key_insert(e->store, &key), KOBO_OK);
	settle(e);
	assert_int_equal(kobo_store_open(e->url, e->shard, true, &read_only), KOBO_OK);
	kobo_api_key other = make_key("2222222222222222", "k", KOBO_SCOPE_ADMIN, 1, 1);
	assert_int_equal(kobo_store_key_insert(read_only, &other), KOBO_EINVAL);
	assert_int_equal(kobo_store_key_revoke(read_only, key.id, 5), KOBO_EINVAL);
	if (!e->backend->fresh_per_open) {
		kobo_store_reader *reader = NULL;
		keys_seen k;
		memset(&k, 0, sizeof k);
		assert_int_equal(kobo_store_reader_open(read_only, &reader), KOBO_OK);
		assert_int_equal(kobo_store_read_keys(reader, true, collect_key, &k), KOBO_OK);
		kobo_store_reader_close(reader);
		assert_int_equal(k.count, 1);
		assert_key_equal(&key, &k.keys[0]);
	}
	kobo_store_close(read_only);
	assert_int_equal(read_keys_ok(e, true).count, 1);
}

static int load_nothing_account(void *ctx, const kobo_account *account)
{
	(void)ctx;
	(void)account;
	return 0;
}

typedef struct late_insert {
	kobo_store *store;
	kobo_api_key key;
	int rc;
} late_insert;

static void *insert_key_thread(void *arg)
{
	late_insert *l = arg;
	l->rc = kobo_store_key_insert(l->store, &l->key);
	return NULL;
}

/* `kobo key` opens its own writable store while kobod runs on the same
 * data, possibly in the middle of a batch: the open does not wait for the
 * batch, the key write waits for it at most, and the running store goes on
 * untouched (its commit sequence included). */
static void a_second_writable_open_writes_keys_beside_a_running_writer(void **state)
{
	env *e = *state;
	kobo_store *second = NULL;
	const char *ids[1] = {"alice"};

	if (e->backend->fresh_per_open)
		skip_because(e, "be opened twice on the same data");
	seed(e, 1000);
	uint64_t token = e->token;
	/* The running writer, mid-batch (SQLite: holding the write lock). */
	assert_int_equal(kobo_store_begin(e->store), KOBO_OK);
	assert_int_equal(kobo_store_load_accounts(e->store, ids, 1, load_nothing_account, NULL),
	                 KOBO_OK);
	int64_t opened_at = kobo_monotonic_us();
	assert_int_equal(open_key_tool_store(e, &second), KOBO_OK);
	/* Well inside SQLite's 2 s busy timeout: the open took no write lock. */
	assert_true(kobo_monotonic_us() - opened_at < 1500000);
	late_insert l = {second, make_key("3333333333333333", "cli", KOBO_SCOPE_ADMIN, 3, 1), -1};
	pthread_t thread;
	assert_int_equal(pthread_create(&thread, NULL, insert_key_thread, &l), 0);
	struct timespec pause = {0, 200 * 1000000L};
	nanosleep(&pause, NULL);
	kobo_store_rollback(e->store);
	pthread_join(thread, NULL);
	assert_int_equal(l.rc, KOBO_OK);
	assert_int_equal(kobo_store_key_revoke(second, l.key.id, 7), KOBO_OK);
	kobo_store_close(second);

	kobo_op ops[] = {test_op_transfer("t-after", "alice", "bob", 5, false, 0)};
	assert_int_equal(run_batch(e, ops, 1, 2000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_CREATED);
	assert_int_equal(e->token, token + 1);
	keys_seen k = read_keys_ok(e, true);
	assert_int_equal(k.count, 1);
	assert_int_equal(k.keys[0].revoked_at_ms, 7);
	kobo_audit_totals totals;
	assert_audit_clean(e, &totals);
}

/* A shard made by the previous schema version (1: no row versions) is
 * migrated at open, keeps its rows and works in either mode. */
static void a_version_1_shard_is_migrated_at_open(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;

	if (e->backend->exec_elsewhere == NULL)
		skip_because(e, "be given a version-1 schema");
	seed(e, 1000);
	kobo_store_close(e->store);
	e->store = NULL;
	assert_true(e->backend->exec_elsewhere(e->url, e->shard,
	            "ALTER TABLE accounts DROP COLUMN version;"
	            " ALTER TABLE transfers DROP COLUMN version;"
	            " ALTER TABLE accounts DROP COLUMN created_by;"
	            " ALTER TABLE transfers DROP COLUMN created_by;"
	            " ALTER TABLE transfers DROP COLUMN trace_id;"
	            " DROP TABLE api_keys;"
	            " UPDATE meta SET schema_version = 1"));
	e->store = open_url(e, false);
	reader = reader_open_ok(e);
	assert_int_equal(read_account_ok(reader, "alice").posted, 10000);
	kobo_op ops[] = {test_op_transfer("t-migrated", "alice", "bob", 5, false, 0)};
	assert_int_equal(run_batch(e, ops, 1, 2000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_CREATED);
	assert_int_equal(read_account_ok(reader, "alice").posted, 9995);
	reader_close(e, reader);
	kobo_audit_totals totals;
	assert_audit_clean(e, &totals);
}

/* A shard of schema version 2 (no created_by, no api_keys) is refused by a
 * read-only open (which never migrates) and migrated by a writable one: its
 * rows keep everything and name no key, new rows name theirs, keys work. */
static void a_version_2_shard_is_migrated_at_open(void **state)
{
	env *e = *state;
	kobo_store *read_only = NULL;

	if (e->backend->exec_elsewhere == NULL)
		skip_because(e, "be given a version-2 schema");
	seed(e, 1000);
	kobo_store_close(e->store);
	e->store = NULL;
	assert_true(e->backend->exec_elsewhere(e->url, e->shard,
	            "ALTER TABLE accounts DROP COLUMN created_by;"
	            " ALTER TABLE transfers DROP COLUMN created_by;"
	            " ALTER TABLE transfers DROP COLUMN trace_id;"
	            " DROP TABLE api_keys;"
	            " UPDATE meta SET schema_version = 2"));
	assert_int_equal(kobo_store_open(e->url, e->shard, true, &read_only), KOBO_ESTORE);
	e->store = open_url(e, false);
	kobo_store_reader *reader = reader_open_ok(e);
	kobo_account alice = read_account_ok(reader, "alice");
	assert_int_equal(alice.posted, 10000);
	assert_memory_equal(alice.metadata, "{\"owner\":\"ada\"}", alice.metadata_len);
	assert_string_equal(alice.created_by, "");
	kobo_transfer fund = read_transfer_ok(reader, "t-fund");
	assert_int_equal(fund.amount, 10000);
	assert_string_equal(fund.request_id, "req-t-fund");
	assert_string_equal(fund.created_by, "");
	kobo_op ops[] = {by_key(test_op_transfer("t-v3", "alice", "bob", 5, false, 0), KEY_A)};
	assert_int_equal(run_batch(e, ops, 1, 2000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_CREATED);
	assert_string_equal(read_transfer_ok(reader, "t-v3").created_by, KEY_A);
	reader_close(e, reader);
	kobo_api_key key = make_key("4444444444444444", "after", KOBO_SCOPE_ADMIN, 4, 1);
	assert_int_equal(kobo_store_key_insert(e->store, &key), KOBO_OK);
	assert_int_equal(read_keys_ok(e, false).count, 1);
	/* Migrated now: a read-only open reads it. */
	settle(e);
	assert_int_equal(kobo_store_open(e->url, e->shard, true, &read_only), KOBO_OK);
	kobo_store_close(read_only);
	kobo_audit_totals totals;
	assert_audit_clean(e, &totals);
}

/* A shard of schema version 4 (no transfers.trace_id) is refused by a
 * read-only open and migrated by a writable one: its transfers keep
 * everything and carry no trace, new ones carry theirs. */
static void a_version_4_shard_is_migrated_at_open(void **state)
{
	env *e = *state;
	kobo_store *read_only = NULL;

	if (e->backend->exec_elsewhere == NULL)
		skip_because(e, "be given a version-4 schema");
	seed(e, 1000);
	kobo_store_close(e->store);
	e->store = NULL;
	assert_true(e->backend->exec_elsewhere(e->url, e->shard,
	            "ALTER TABLE transfers DROP COLUMN trace_id;"
	            " UPDATE meta SET schema_version = 4"));
	assert_int_equal(kobo_store_open(e->url, e->shard, true, &read_only), KOBO_ESTORE);
	e->store = open_url(e, false);
	kobo_store_reader *reader = reader_open_ok(e);
	kobo_transfer fund = read_transfer_ok(reader, "t-fund");
	assert_int_equal(fund.amount, 10000);
	assert_string_equal(fund.request_id, "req-t-fund");
	assert_string_equal(fund.trace_id, "");
	kobo_op ops[] = {in_trace(test_op_transfer("t-v5", "alice", "bob", 5, false, 0), TRACE_A)};
	assert_int_equal(run_batch(e, ops, 1, 2000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_CREATED);
	assert_string_equal(read_transfer_ok(reader, "t-v5").trace_id, TRACE_A);
	reader_close(e, reader);
	settle(e);
	assert_int_equal(kobo_store_open(e->url, e->shard, true, &read_only), KOBO_OK);
	kobo_store_close(read_only);
	kobo_audit_totals totals;
	assert_audit_clean(e, &totals);
}

/* ---- Opening by URL. ---- */

/* A read-only store refuses a batch (KOBO_EINVAL) without going sticky,
 * and reads and audits what the writer committed (where a second open
 * reaches the same data: not mem, whose every open is a store of its
 * own). */
static void read_only_store_reads_but_refuses_batches(void **state)
{
	env *e = *state;
	kobo_store *read_only = NULL;
	kobo_audit_totals totals;

	seed(e, 1000);
	settle(e);
	assert_int_equal(kobo_store_open(e->url, e->shard, true, &read_only), KOBO_OK);
	assert_int_equal(kobo_store_begin(read_only), KOBO_EINVAL);
	assert_true(kobo_store_healthy(read_only));
	if (!e->backend->fresh_per_open) {
		kobo_store_reader *reader = NULL;
		assert_int_equal(kobo_store_reader_open(read_only, &reader), KOBO_OK);
		assert_int_equal(read_account_ok(reader, "alice").posted, 10000);
		kobo_store_reader_close(reader);
		assert_int_equal(kobo_store_audit(read_only, NULL, NULL, &totals), KOBO_OK);
		assert_int_equal(totals.problems, 0);
		assert_int_equal(totals.accounts, 3);
	}
	kobo_store_close(read_only);
}

/* Shards of one URL are separate stores. Not for mem (see above). */
static void shards_of_one_url_are_separate(void **state)
{
	env *e = *state;
	kobo_store *other = NULL;
	kobo_store_reader *reader = NULL;

	if (e->backend->fresh_per_open)
		skip_because(e, "open a second store of the same URL");
	seed(e, 1000);
	assert_int_equal(kobo_store_open(e->url, e->shard + 1, false, &other), KOBO_OK);
	assert_int_equal(kobo_store_reader_open(other, &reader), KOBO_OK);
	assert_account_absent(reader, "alice");
	kobo_store_reader_close(reader);
	kobo_store_close(other);
}

/* Runs once, not per backend: what kobo_store_open makes of a URL. */
static void open_knows_its_schemes_and_refuses_the_rest(void **state)
{
	(void)state;
	static const char *const refused[] = {
		"", "mem", "memory:", "MEM:", "mem:extra", "sqlite", "sqlite:",
		"file:/tmp", "nosuch://kobo@localhost/kobo",
	};
	for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
		kobo_store *store = (kobo_store *)1;
		int rc = kobo_store_open(refused[i], 0, false, &store);
		if (rc != KOBO_EINVAL)
			fail_msg("kobo_store_open(\"%s\") answered %s, expected %s",
			         refused[i], kobo_status_name(rc),
			         kobo_status_name(KOBO_EINVAL));
		assert_null(store);
	}

	/* Two "mem:" opens are two stores. */
	env *e = calloc(1, sizeof *e);
	kobo_store *other = NULL;
	kobo_store_reader *reader = NULL;
	assert_non_null(e);
	e->backend = &backends[0];
	e->ledger = kobo_ledger_create(TEST_OPS_MAX);
	assert_non_null(e->ledger);
	assert_int_equal(kobo_store_open("mem:", 0, false, &e->store), KOBO_OK);
	assert_int_equal(kobo_store_open("mem:", 0, false, &other), KOBO_OK);
	seed(e, 1000);
	assert_int_equal(kobo_store_reader_open(other, &reader), KOBO_OK);
	assert_account_absent(reader, "alice");
	kobo_store_reader_close(reader);
	kobo_store_close(other);
	kobo_store_close(e->store);
	kobo_ledger_destroy(e->ledger);
	free(e);

	/* "sqlite:DIR" is shard N's file DIR/shard-N.db; a read-only open
	 * never creates one; a directory that does not exist is a storage
	 * error. */
	char dir[] = "/tmp/kobo-contract-open-XXXXXX";
	char url[64];
	char path[96];
	kobo_store *store = NULL;
	assert_non_null(mkdtemp(dir));
	snprintf(url, sizeof url, "sqlite:%s", dir);
	assert_int_equal(kobo_store_open(url, 8, true, &store), KOBO_ESTORE);
	assert_null(store);
	assert_int_equal(kobo_store_open(url, 7, false, &store), KOBO_OK);
	kobo_store_close(store);
	snprintf(path, sizeof path, "%s/shard-7.db", dir);
	assert_int_equal(access(path, F_OK), 0);
	snprintf(path, sizeof path, "%s/shard-8.db", dir);
	assert_int_equal(access(path, F_OK), -1);
	remove_dir(dir);
	store = (kobo_store *)1;
	assert_int_equal(kobo_store_open("sqlite:/nonexistent/kobo-contract", 0, false,
	                                 &store), KOBO_ESTORE);
	assert_null(store);
}

/* ---- The journey of a payment (events). ---- */

typedef struct event_list {
	kobo_event events[16];
	size_t count;
} event_list;

static int collect_event(void *ctx, const kobo_event *event)
{
	event_list *list = ctx;
	if (list->count < 16)
		list->events[list->count++] = *event;
	return 0;
}

static event_list read_events_ok(kobo_store_reader *reader, const char *id,
                                 int64_t after_seq, size_t limit)
{
	event_list list = {0};
	assert_int_equal(kobo_store_read_events(reader, id, after_seq, limit,
	                                        collect_event, &list), KOBO_OK);
	return list;
}

/* Every state change writes an event in the batch's transaction: created,
 * reserved, rejected, replayed, posted, voided, with the op's request,
 * trace and key ids, the batch's time, shard and node; read back per
 * transfer in the order written, paged by seq; a rolled-back batch leaves
 * none. */
static void events_commit_with_the_batch_in_order(void **state)
{
	env *e = *state;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_transfer("t-ev1", "alice", "bob", 5, false, 0),
		test_op_transfer("t-ev2", "alice", "bob", 7, true, 60),
		test_op_transfer("t-ev3", "alice", "bob", 999999, false, 0),
	};
	for (size_t i = 0; i < 3; i++) {
		snprintf(ops[i].request_id, sizeof ops[i].request_id, "req-ev");
		snprintf(ops[i].trace_id, sizeof ops[i].trace_id,
		         "4bf92f3577b34da6a3ce929d0e0e4736");
		snprintf(ops[i].created_by, sizeof ops[i].created_by, "0123456789abcdef");
	}
	assert_int_equal(run_batch(e, ops, 3, 2000), KOBO_OK);
	kobo_op post[] = {
		test_op_target(KOBO_OP_POST, "t-ev2", true, 4),
		test_op_transfer("t-ev1", "alice", "bob", 5, false, 0),
	};
	snprintf(post[1].request_id, sizeof post[1].request_id, "req-retry");
	assert_int_equal(run_batch(e, post, 2, 3000), KOBO_OK);
	assert_int_equal(e->results[1].code, KOBO_RESULT_REPLAYED);
	/* Rolled back: no event of it remains. */
	kobo_op voided[] = { test_op_target(KOBO_OP_VOID, "t-ev1", false, 0) };
	assert_int_equal(run_batch_ex(e, voided, 1, 4000, false, NULL), KOBO_OK);
	kobo_store_rollback(e->store);

	kobo_store_reader *reader = reader_open_ok(e);
	event_list one = read_events_ok(reader, "t-ev1", 0, 10);
	assert_int_equal(one.count, 2);
	assert_int_equal(one.events[0].kind, KOBO_EVENT_CREATED);
	assert_string_equal(one.events[0].transfer_id, "t-ev1");
	assert_string_equal(one.events[0].request_id, "req-ev");
	assert_string_equal(one.events[0].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
	assert_string_equal(one.events[0].key_id, "0123456789abcdef");
	assert_string_equal(one.events[0].node, "node-a");
	assert_int_equal(one.events[0].shard, e->shard);
	assert_int_equal(one.events[0].leg, KOBO_LEG_LOCAL);
	assert_int_equal(one.events[0].status, KOBO_STATUS_POSTED);
	assert_int_equal(one.events[0].amount, 5);
	if (!e->backend->shared_clock) {
		assert_int_equal(one.events[0].at_ms, 2000);
		assert_int_equal(one.events[1].at_ms, 3000);
	}
	assert_true(one.events[1].at_ms >= one.events[0].at_ms);
	assert_int_equal(one.events[1].kind, KOBO_EVENT_REPLAYED);
	assert_string_equal(one.events[1].request_id, "req-retry");
	assert_string_equal(one.events[1].trace_id, "");
	assert_true(one.events[1].seq > one.events[0].seq);

	event_list two = read_events_ok(reader, "t-ev2", 0, 10);
	assert_int_equal(two.count, 2);
	assert_int_equal(two.events[0].kind, KOBO_EVENT_RESERVED);
	assert_int_equal(two.events[0].status, KOBO_STATUS_PENDING);
	assert_int_equal(two.events[1].kind, KOBO_EVENT_POSTED);
	assert_int_equal(two.events[1].status, KOBO_STATUS_POSTED);
	assert_int_equal(two.events[1].amount, 4);
	/* Pages: after the first, at most one. */
	event_list page = read_events_ok(reader, "t-ev2", two.events[0].seq, 1);
	assert_int_equal(page.count, 1);
	assert_int_equal(page.events[0].kind, KOBO_EVENT_POSTED);

	event_list three = read_events_ok(reader, "t-ev3", 0, 10);
	assert_int_equal(three.count, 1);
	assert_int_equal(three.events[0].kind, KOBO_EVENT_REJECTED);
	assert_int_equal(three.events[0].status, KOBO_STATUS_REJECTED);
	assert_int_equal(read_events_ok(reader, "t-none", 0, 10).count, 0);
	assert_int_equal(read_events_ok(reader, "t-ev1", 0, 0).count, 0);
	reader_close(e, reader);
}

typedef struct id_list {
	char ids[8][KOBO_ID_LEN_MAX + 1];
	int64_t seqs[8];
	size_t count;
} id_list;

static int collect_id(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	id_list *list = ctx;
	if (list->count < 8) {
		snprintf(list->ids[list->count], sizeof list->ids[0], "%s", transfer->id);
		list->seqs[list->count++] = seq;
	}
	return 0;
}

/* read_by_request lists the transfers one request created, rejected ones
 * too, oldest first, in pages. */
static void read_by_request_lists_what_a_request_created(void **state)
{
	env *e = *state;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_transfer("t-rq1", "alice", "bob", 5, false, 0),
		test_op_transfer("t-other", "alice", "bob", 1, false, 0),
		test_op_transfer("t-rq2", "alice", "bob", 999999, false, 0),
		test_op_transfer("t-rq3", "alice", "bob", 6, true, 60),
	};
	for (size_t i = 0; i < 4; i++)
		snprintf(ops[i].request_id, sizeof ops[i].request_id, i == 1 ? "req-b" : "req-a");
	assert_int_equal(run_batch(e, ops, 4, 2000), KOBO_OK);

	kobo_store_reader *reader = reader_open_ok(e);
	id_list all = {0};
	assert_int_equal(kobo_store_read_by_request(reader, "req-a", 0, 10, collect_id, &all),
	                 KOBO_OK);
	assert_int_equal(all.count, 3);
	assert_string_equal(all.ids[0], "t-rq1");
	assert_string_equal(all.ids[1], "t-rq2");
	assert_string_equal(all.ids[2], "t-rq3");
	id_list page = {0};
	assert_int_equal(kobo_store_read_by_request(reader, "req-a", all.seqs[0], 1,
	                                            collect_id, &page), KOBO_OK);
	assert_int_equal(page.count, 1);
	assert_string_equal(page.ids[0], "t-rq2");
	id_list none = {0};
	assert_int_equal(kobo_store_read_by_request(reader, "req-zzz", 0, 10, collect_id,
	                                            &none), KOBO_OK);
	assert_int_equal(none.count, 0);
	reader_close(e, reader);
}

/* ---- The suite. ---- */

#define CONTRACT_TEST(f) cmocka_unit_test_prestate_setup_teardown(f, setup, teardown, NULL)

static const struct CMUnitTest contract_tests[] = {
	CONTRACT_TEST(batch_round_trip_through_ledger),
	CONTRACT_TEST(widest_fields_round_trip),
	CONTRACT_TEST(transfer_update_moves_only_its_state),
	CONTRACT_TEST(loaded_records_live_until_next_begin),
	CONTRACT_TEST(loads_follow_ids_order_and_skip_missing_ids),
	CONTRACT_TEST(rollback_leaves_nothing),
	CONTRACT_TEST(reader_sees_committed_batches_only),
	CONTRACT_TEST(readers_on_other_threads_never_see_half_a_batch),
	CONTRACT_TEST(history_orders_pages_and_skips_rejected),
	CONTRACT_TEST(history_counts_legs_for_from_to_and_clearing),
	CONTRACT_TEST(legs_and_sagas_round_trip_through_ledger),
	CONTRACT_TEST(read_sagas_lists_sagas_in_flight_by_id),
	CONTRACT_TEST(saga_claims_admit_one_node_until_released_or_lapsed),
	CONTRACT_TEST(read_accounts_prefix_matches_literally_in_id_order),
	CONTRACT_TEST(expired_holds_lists_due_pending_holds_oldest_first),
	CONTRACT_TEST(expired_holds_skip_holds_whose_saga_is_under_way),
	CONTRACT_TEST(expired_holds_wait_only_for_due_holds),
	CONTRACT_TEST(expired_holds_wait_for_merged_marks),
	CONTRACT_TEST(audit_passes_sound_data),
	CONTRACT_TEST(audit_reports_a_batch_built_on_a_lie),
	CONTRACT_TEST(commit_token_counts_committed_batches),
	CONTRACT_TEST(reader_position_is_the_commit_sequence),
	CONTRACT_TEST(reopen_keeps_data_and_commit_sequence),
	CONTRACT_TEST(reopen_drops_an_open_batch),
	CONTRACT_TEST(failed_commit_lost_is_sticky_until_reopen),
	CONTRACT_TEST(failed_commit_landed_replays_after_reopen),
	CONTRACT_TEST(failed_commit_unknown_resolves_by_id_after_reopen),
	CONTRACT_TEST(commit_fault_fires_once),
	CONTRACT_TEST(write_refused_by_a_constraint_is_sticky),
	CONTRACT_TEST(commit_conflict_applies_nothing_and_stays_healthy),
	CONTRACT_TEST(read_only_store_reads_but_refuses_batches),
	CONTRACT_TEST(shards_of_one_url_are_separate),
	CONTRACT_TEST(batch_clock_is_the_stores_when_nodes_share_it),
	CONTRACT_TEST(batch_takes_three_round_trips),
	CONTRACT_TEST(events_commit_with_the_batch_in_order),
	CONTRACT_TEST(read_by_request_lists_what_a_request_created),
	CONTRACT_TEST(a_row_locked_elsewhere_times_the_batch_out),
	CONTRACT_TEST(optimistic_batches_conflict_on_rows_changed_since_read),
	CONTRACT_TEST(a_version_1_shard_is_migrated_at_open),
	CONTRACT_TEST(a_version_2_shard_is_migrated_at_open),
	CONTRACT_TEST(a_version_4_shard_is_migrated_at_open),
	CONTRACT_TEST(created_by_round_trips_through_every_read),
	CONTRACT_TEST(trace_id_round_trips_through_every_read),
	CONTRACT_TEST(keys_round_trip_in_id_order),
	CONTRACT_TEST(revoked_keys_leave_the_live_list),
	CONTRACT_TEST(live_keys_are_bounded),
	CONTRACT_TEST(two_writers_cannot_pass_the_key_limit),
	CONTRACT_TEST(read_only_store_refuses_key_writes),
	CONTRACT_TEST(a_second_writable_open_writes_keys_beside_a_running_writer),
};
enum { CONTRACT_TEST_COUNT = sizeof contract_tests / sizeof contract_tests[0] };

/* Runs every contract test against each backend, one group per backend;
 * a backend whose URL comes from an unset variable is skipped, saying so.
 * argv[1], when given, runs only the backend of that name. */
int main(int argc, char **argv)
{
	static struct CMUnitTest tests[CONTRACT_TEST_COUNT];
	const struct CMUnitTest once[] = {
		cmocka_unit_test(open_knows_its_schemes_and_refuses_the_rest),
	};
	int failed = 0;

	fault_vfs_install();
	failed += cmocka_run_group_tests_name("store_open", once, NULL, NULL);
	for (size_t b = 0; b < BACKEND_COUNT; b++) {
		const backend *it = &backends[b];
		if (argc > 1 && strcmp(argv[1], it->name) != 0)
			continue;
		if (it->url_env != NULL && getenv(it->url_env) == NULL) {
			printf("[  SKIPPED ] %s: set %s to a %s URL to run the store "
			       "contract against it\n", it->name, it->url_env, it->name);
			continue;
		}
		for (size_t i = 0; i < CONTRACT_TEST_COUNT; i++) {
			tests[i] = contract_tests[i];
			tests[i].initial_state = (void *)it;
		}
		failed += cmocka_run_group_tests_name(it->name, tests, NULL, NULL);
	}
	return failed;
}
