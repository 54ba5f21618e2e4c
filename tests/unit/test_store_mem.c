/*
 * test_store_mem.c — the in-memory store against the contract (store.h).
 *
 * The same behaviours test_store_sqlite.c checks, where they apply, driven
 * with the real ledger the way the shard writer drives a store: begin →
 * load transfers → load accounts → apply → write → commit. Plus what only
 * this store has: injected commit faults (the batch lost, or landed but
 * unanswered), the sticky error they cause and the restart that clears it;
 * and a few hundred thousand rows to show nothing on the write path is
 * quadratic.
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

#include "../../src/ledger/ledger.h"
#include "../../src/store/mem/store_mem.h"
#include "test_ops.h"

#define TEST_OPS_MAX 1000

typedef struct env {
	kobo_store *store;
	kobo_ledger *ledger;
	kobo_result results[TEST_OPS_MAX];
} env;

static int setup(void **state)
{
	env *e = calloc(1, sizeof *e);
	assert_non_null(e);
	assert_int_equal(kobo_store_open("mem:", 0, false, &e->store), KOBO_OK);
	assert_non_null(e->store);
	e->ledger = kobo_ledger_create(TEST_OPS_MAX);
	assert_non_null(e->ledger);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	env *e = *state;
	kobo_store_close(e->store);
	kobo_ledger_destroy(e->ledger);
	free(e);
	return 0;
}

/* ---- The store seam (store.h): records in, records out. ---- */

/* Load callbacks the way src/shard/batch.c puts rows into the ledger. */
static int put_transfer(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	(void)seq;
	return kobo_ledger_put_transfer(ctx, transfer);
}

static int put_account(void *ctx, const kobo_account *account)
{
	return kobo_ledger_put_account(ctx, account);
}

/* write() with the ledger's change lists. */
static int write_changes(kobo_store *store, const kobo_ledger *ledger)
{
	const kobo_account_change *accounts;
	const kobo_transfer_change *transfers;
	size_t account_count = kobo_ledger_changed_accounts(ledger, &accounts);
	size_t transfer_count = kobo_ledger_changed_transfers(ledger, &transfers);
	return kobo_store_write(store, accounts, account_count, transfers,
	                        transfer_count);
}

/* commit(), keeping the consistency token in *last_token (when not NULL). */
static uint64_t last_token;
static int commit_batch(kobo_store *store)
{
	uint64_t token = 0;
	int rc = kobo_store_commit(store, &token);
	if (rc == KOBO_OK)
		last_token = token;
	return rc;
}

/* ---- Batches. ---- */

/* One batch the way the shard writer runs it. Returns the first failing
 * store status (after rolling back), or KOBO_OK once committed. When
 * commit is false the batch stops after write() (open for the caller).
 * forged, when not NULL, is put into the ledger instead of the stored
 * account of the same id: a batch built on a lie, for the audit. */
static int run_batch_ex(env *e, const kobo_op *ops, size_t count, int64_t now_ms,
                        bool commit, const kobo_account *forged)
{
	static const char *transfer_ids[TEST_OPS_MAX];
	static const char *account_ids[KOBO_LEDGER_ACCOUNT_IDS_MAX(TEST_OPS_MAX)];
	size_t transfer_count = 0;
	size_t account_count = 0;
	int rc;

	assert_true(count <= TEST_OPS_MAX);
	kobo_ledger_reset(e->ledger);
	rc = kobo_store_begin(e->store);
	if (rc != KOBO_OK)
		return rc;
	kobo_ledger_transfer_ids(ops, count, transfer_ids, &transfer_count);
	rc = kobo_store_load_transfers(e->store, transfer_ids, transfer_count,
	                               put_transfer, e->ledger);
	if (rc != KOBO_OK)
		goto fail;
	kobo_ledger_account_ids(e->ledger, ops, count, account_ids, &account_count);
	if (forged != NULL) {
		assert_int_equal(kobo_ledger_put_account(e->ledger, forged), KOBO_OK);
		size_t kept = 0;
		for (size_t i = 0; i < account_count; i++)
			if (strcmp(account_ids[i], forged->id) != 0)
				account_ids[kept++] = account_ids[i];
		account_count = kept;
	}
	rc = kobo_store_load_accounts(e->store, account_ids, account_count,
	                              put_account, e->ledger);
	if (rc != KOBO_OK)
		goto fail;
	assert_int_equal(kobo_ledger_apply(e->ledger, ops, count, now_ms, e->results),
	                 KOBO_OK);
	rc = write_changes(e->store, e->ledger);
	if (rc != KOBO_OK)
		goto fail;
	if (!commit)
		return KOBO_OK;
	rc = commit_batch(e->store);
	if (rc != KOBO_OK)
		goto fail;
	return KOBO_OK;
fail:
	kobo_store_rollback(e->store);
	return rc;
}

static int run_batch(env *e, const kobo_op *ops, size_t count, int64_t now_ms)
{
	return run_batch_ex(e, ops, count, now_ms, true, NULL);
}

/* Three NGN accounts: cash (may go negative), alice and bob; alice gets
 * 10,000 from cash. */
static void seed(env *e, int64_t now_ms)
{
	kobo_op ops[] = {
		test_op_account("cash", "NGN", true, NULL),
		test_op_account("alice", "NGN", false, "{\"owner\":\"ada\"}"),
		test_op_account("bob", "NGN", false, NULL),
		test_op_transfer("t-fund", "cash", "alice", 10000, false, 0),
	};
	assert_int_equal(run_batch(e, ops, 4, now_ms), KOBO_OK);
	assert_int_equal(e->results[3].code, KOBO_RESULT_CREATED);
}

static kobo_account read_account_ok(kobo_store_reader *reader, const char *id)
{
	kobo_account account;
	assert_int_equal(kobo_store_read_account(reader, id, &account), KOBO_OK);
	return account;
}

static kobo_transfer read_transfer_ok(kobo_store_reader *reader, const char *id)
{
	kobo_transfer transfer;
	assert_int_equal(kobo_store_read_transfer(reader, id, &transfer), KOBO_OK);
	return transfer;
}

static void assert_transfer_equal(const kobo_transfer *want, const kobo_transfer *got)
{
	assert_string_equal(got->id, want->id);
	assert_string_equal(got->from, want->from);
	assert_string_equal(got->to, want->to);
	assert_string_equal(got->currency, want->currency);
	assert_string_equal(got->request_id, want->request_id);
	assert_int_equal(got->amount, want->amount);
	assert_int_equal(got->posted_amount, want->posted_amount);
	assert_int_equal(got->pending, want->pending);
	assert_int_equal(got->timeout_seconds, want->timeout_seconds);
	assert_int_equal(got->expires_at_ms, want->expires_at_ms);
	assert_int_equal(got->status, want->status);
	assert_int_equal(got->void_reason, want->void_reason);
	assert_int_equal(got->error_code, want->error_code);
	assert_int_equal(got->metadata_len, want->metadata_len);
	assert_memory_equal(got->metadata, want->metadata, want->metadata_len);
	assert_int_equal(got->created_at_ms, want->created_at_ms);
	assert_int_equal(got->updated_at_ms, want->updated_at_ms);
	assert_int_equal(got->leg, want->leg);
	assert_string_equal(got->clearing, want->clearing);
	assert_int_equal(got->saga, want->saga);
	assert_int_equal(got->saga_amount, want->saga_amount);
	assert_int_equal(got->saga_reason, want->saga_reason);
}

typedef struct seen {
	char ids[16][KOBO_ID_LEN_MAX + 1];
	int64_t seqs[16];
	size_t count;
	size_t stop_after;
} seen;

static int collect(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	seen *s = ctx;
	assert_true(s->count < 16);
	assert_true(transfer->metadata_len > 0);
	snprintf(s->ids[s->count], sizeof s->ids[s->count], "%s", transfer->id);
	s->seqs[s->count++] = seq;
	return s->stop_after != 0 && s->count >= s->stop_after;
}

typedef struct report_log {
	char lines[8][512];
	size_t count;
} report_log;

static void collect_report(void *ctx, const char *line)
{
	report_log *log = ctx;
	if (log->count < 8)
		snprintf(log->lines[log->count], sizeof log->lines[0], "%s", line);
	log->count++;
}

static bool report_mentions(const report_log *log, const char *text)
{
	for (size_t i = 0; i < log->count && i < 8; i++)
		if (strstr(log->lines[i], text) != NULL)
			return true;
	return false;
}

static void assert_audit_clean(env *e, kobo_audit_totals *totals)
{
	report_log log;
	memset(&log, 0, sizeof log);
	assert_int_equal(kobo_store_audit(e->store, collect_report, &log, totals), KOBO_OK);
	if (totals->problems != 0)
		fail_msg("audit found %zu problems, first: %s", totals->problems, log.lines[0]);
}

/* ---- Batches and replays. ---- */

static void batch_round_trip_through_ledger(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	kobo_transfer created[3];
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
	assert_int_equal(run_batch(e, first, 6, 1000), KOBO_OK);
	memset(metadata, 'x', sizeof metadata - 1);
	assert_int_equal(e->results[5].code, KOBO_RESULT_INSUFFICIENT_FUNDS);
	for (int i = 0; i < 3; i++)
		created[i] = e->results[3 + i].transfer;
	assert_int_equal(created[1].expires_at_ms, 61000);

	kobo_op second[] = {
		test_op_account("alice", "NGN", false, "{\"owner\":\"ada\"}"),
		test_op_transfer("t1", "cash", "alice", 10000, false, 0),
		test_op_transfer("t2", "alice", "bob", 2500, true, 60),
		test_op_transfer("t3", "alice", "bob", 99999, false, 0),
		test_op_target(KOBO_OP_POST, "t2", true, 2000),
	};
	for (int i = 1; i < 4; i++)
		snprintf(second[i].request_id, sizeof second[i].request_id, "retry");
	assert_int_equal(run_batch(e, second, 5, 2000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_REPLAYED);
	assert_int_equal(e->results[0].account.posted, 10000);
	assert_int_equal(e->results[0].account.pending_out, 2500);
	assert_int_equal(e->results[1].code, KOBO_RESULT_REPLAYED);
	assert_transfer_equal(&created[0], &e->results[1].transfer);
	assert_int_equal(e->results[2].code, KOBO_RESULT_REPLAYED);
	assert_transfer_equal(&created[1], &e->results[2].transfer);
	assert_transfer_equal(&created[2], &e->results[3].transfer);
	assert_int_equal(e->results[4].code, KOBO_RESULT_UPDATED);

	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);
	transfer = read_transfer_ok(reader, "t2");
	assert_int_equal(transfer.status, KOBO_STATUS_POSTED);
	assert_int_equal(transfer.posted_amount, 2000);
	assert_int_equal(transfer.updated_at_ms, 2000);
	assert_string_equal(transfer.request_id, "req-t2");
	transfer = read_transfer_ok(reader, "t3");
	assert_int_equal(transfer.status, KOBO_STATUS_REJECTED);
	assert_int_equal(transfer.error_code, KOBO_RESULT_INSUFFICIENT_FUNDS);
	account = read_account_ok(reader, "alice");
	assert_int_equal(account.posted, 8000);
	assert_int_equal(account.pending_out, 0);
	assert_int_equal(account.created_at_ms, 1000);
	assert_int_equal(account.metadata_len, strlen("{\"owner\":\"ada\"}"));
	assert_memory_equal(account.metadata, "{\"owner\":\"ada\"}", account.metadata_len);
	assert_int_equal(read_account_ok(reader, "bob").posted, 2000);
	assert_int_equal(kobo_store_read_transfer(reader, "t9", &transfer), KOBO_ENOTFOUND);
	assert_int_equal(kobo_store_read_account(reader, "nobody", &account), KOBO_ENOTFOUND);
	kobo_store_reader_close(reader);
}

/* Loaded metadata stays valid (owned by the store) until the next begin,
 * even when the batch that loaded it commits changes to the same rows. */
static void loaded_metadata_lives_until_next_begin(void **state)
{
	env *e = *state;
	kobo_op ops[] = {
		test_op_account("alice", "NGN", false, "{\"owner\":\"ada\"}"),
		test_op_transfer("t-fund", "cash", "alice", 10000, false, 0),
		test_op_transfer("t-more", "cash", "alice", 5, false, 0),
	};

	seed(e, 1000);
	assert_int_equal(run_batch(e, ops, 3, 2000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_REPLAYED);
	assert_int_equal(e->results[1].code, KOBO_RESULT_REPLAYED);
	/* After commit, the snapshots still point at loaded copies. */
	assert_memory_equal(e->results[0].account.metadata, "{\"owner\":\"ada\"}",
	                    e->results[0].account.metadata_len);
	assert_memory_equal(e->results[1].transfer.metadata, "{\"note\":\"suya\"}",
	                    e->results[1].transfer.metadata_len);
}

static void rollback_leaves_nothing(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	kobo_account account;
	kobo_transfer transfer;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_account("carol", "NGN", false, NULL),
		test_op_transfer("t-roll", "alice", "bob", 300, false, 0),
	};
	assert_int_equal(run_batch_ex(e, ops, 2, 2000, false, NULL), KOBO_OK);
	kobo_store_rollback(e->store);
	kobo_store_rollback(e->store); /* harmless twice */

	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);
	assert_int_equal(kobo_store_read_account(reader, "carol", &account), KOBO_ENOTFOUND);
	assert_int_equal(kobo_store_read_transfer(reader, "t-roll", &transfer), KOBO_ENOTFOUND);
	assert_int_equal(read_account_ok(reader, "alice").posted, 10000);
	assert_true(kobo_store_healthy(e->store));

	assert_int_equal(run_batch(e, ops, 2, 3000), KOBO_OK);
	assert_int_equal(e->results[1].code, KOBO_RESULT_CREATED);
	assert_int_equal(read_account_ok(reader, "alice").posted, 9700);
	kobo_store_reader_close(reader);
}

static void reader_sees_committed_batches_only(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	kobo_account account;
	kobo_transfer transfer;
	seen s;

	seed(e, 1000);
	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);
	kobo_op ops[] = {
		test_op_transfer("t-open", "alice", "bob", 400, false, 0),
		test_op_account("dave", "NGN", false, NULL),
	};
	assert_int_equal(run_batch_ex(e, ops, 2, 2000, false, NULL), KOBO_OK);
	/* Written but not committed: invisible to every read. */
	assert_int_equal(kobo_store_read_account(reader, "dave", &account), KOBO_ENOTFOUND);
	assert_int_equal(kobo_store_read_transfer(reader, "t-open", &transfer), KOBO_ENOTFOUND);
	assert_int_equal(read_account_ok(reader, "alice").posted, 10000);
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "bob", 0, 10, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 0);
	kobo_audit_totals totals;
	assert_audit_clean(e, &totals);
	assert_int_equal(totals.transfers, 1);

	assert_int_equal(commit_batch(e->store), KOBO_OK);
	assert_int_equal(kobo_store_read_account(reader, "dave", &account), KOBO_OK);
	assert_int_equal(read_account_ok(reader, "alice").posted, 9600);
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "bob", 0, 10, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 1);
	kobo_store_reader_close(reader);
}

/* A reader on another thread sees every batch whole or not at all. Each
 * batch pays bob twice (ids ending in a and b); one history read is one
 * snapshot, so it must always hold as many a's as b's. */
typedef struct watcher {
	kobo_store *store;
	atomic_bool stop;
	atomic_size_t reads;
	size_t torn;
} watcher;

typedef struct pair_check {
	size_t seen_a;
	size_t seen_b;
} pair_check;

static int count_pairs(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	pair_check *c = ctx;
	(void)seq;
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

	if (kobo_store_reader_open(w->store, &reader) != KOBO_OK)
		return NULL;
	while (!atomic_load(&w->stop)) {
		pair_check c = {0, 0};
		if (kobo_store_read_history(reader, "bob", 0, SIZE_MAX, count_pairs,
		                            &c) == KOBO_OK) {
			atomic_fetch_add(&w->reads, 1);
			if (c.seen_a != c.seen_b)
				w->torn++;
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
	assert_int_equal(pthread_create(&thread, NULL, watch_history, &w), 0);
	/* At least 300 batches, and on a busy machine until the reader has
	 * looked a few times while they land (bounded: alice funds 3,333). */
	for (int i = 0; i < 300 || (atomic_load(&w.reads) < 20 && i < 3000); i++) {
		char a[32], b[32];
		snprintf(a, sizeof a, "p-%d-a", i);
		snprintf(b, sizeof b, "p-%d-b", i);
		kobo_op ops[] = {
			test_op_transfer(a, "alice", "bob", 3, false, 0),
			test_op_transfer(b, "cash", "bob", 2, false, 0),
		};
		assert_int_equal(run_batch(e, ops, 2, 2000 + i), KOBO_OK);
	}
	atomic_store(&w.stop, true);
	pthread_join(thread, NULL);
	assert_true(atomic_load(&w.reads) > 0);
	assert_int_equal(w.torn, 0);
}

/* ---- History. ---- */

static void history_orders_pages_and_skips_rejected(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	seen s;

	seed(e, 1000);
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
	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);

	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "alice", 0, 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 4);
	assert_string_equal(s.ids[0], "t-fund");
	assert_string_equal(s.ids[1], "h1");
	assert_string_equal(s.ids[2], "h2");
	assert_string_equal(s.ids[3], "h5");
	for (size_t i = 1; i < s.count; i++)
		assert_true(s.seqs[i] > s.seqs[i - 1]);

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

	memset(&page, 0, sizeof page);
	page.stop_after = 1;
	assert_int_equal(kobo_store_read_history(reader, "alice", 0, 100, collect, &page), KOBO_OK);
	assert_int_equal(page.count, 1);
	memset(&page, 0, sizeof page);
	assert_int_equal(kobo_store_read_history(reader, "carol", 0, 100, collect, &page), KOBO_OK);
	assert_int_equal(page.count, 1);
	assert_string_equal(page.ids[0], "h5");
	memset(&page, 0, sizeof page);
	assert_int_equal(kobo_store_read_history(reader, "nobody", 0, 100, collect, &page), KOBO_OK);
	assert_int_equal(page.count, 0);
	memset(&page, 0, sizeof page);
	assert_int_equal(kobo_store_read_history(reader, "alice", 0, 0, collect, &page), KOBO_OK);
	assert_int_equal(page.count, 0);
	memset(&page, 0, sizeof page);
	assert_int_equal(kobo_store_read_history(reader, "alice", 1000, 10, collect, &page), KOBO_OK);
	assert_int_equal(page.count, 0);
	kobo_store_reader_close(reader);
}

static void history_counts_legs_for_from_to_and_clearing(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	seen s;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_debit("x1", "alice", "zed", "clr:B", 100, false, 0),
		test_op_transfer("l1", "alice", "bob", 10, false, 0),
		test_op_credit("y1", "yan", "bob", "clr:C", 40, false),
		test_op_debit("x2", "bob", "zed", "clr:B", 999999, false, 0), /* rejected */
		test_op_debit("x3", "alice", "clr:B", "clr:B", 5, false, 0),
		test_op_debit("x4", "alice", "amy", "clr:B", 7, true, 0),
	};
	assert_int_equal(run_batch(e, ops, 6, 2000), KOBO_OK);
	assert_int_equal(e->results[3].code, KOBO_RESULT_INSUFFICIENT_FUNDS);
	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);

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
	assert_string_equal(s.ids[1], "x1");
	assert_string_equal(s.ids[4], "x4");
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "bob", 0, 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 2);
	assert_string_equal(s.ids[0], "l1");
	assert_string_equal(s.ids[1], "y1");
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "clr:C", 0, 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 1);
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "zed", 0, 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 1);
	assert_string_equal(s.ids[0], "x1");
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "", 0, 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 0);
	kobo_store_reader_close(reader);
}

/* ---- Legs and sagas. ---- */

static void legs_and_sagas_round_trip_through_ledger(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	kobo_transfer created[2];
	kobo_transfer t;
	kobo_audit_totals totals;

	seed(e, 1000);
	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);
	kobo_op step1[] = {
		test_op_debit("x-hold", "alice", "zed", "clr:B", 300, true, 60),
		test_op_credit("y-in", "yan", "bob", "clr:C", 400, false),
	};
	assert_int_equal(run_batch(e, step1, 2, 2000), KOBO_OK);
	created[0] = e->results[0].transfer;
	created[1] = e->results[1].transfer;
	assert_int_equal(created[0].status, KOBO_STATUS_PROCESSING);
	assert_int_equal(created[0].saga, KOBO_SAGA_RESERVED);
	t = read_transfer_ok(reader, "x-hold");
	assert_transfer_equal(&created[0], &t);
	t = read_transfer_ok(reader, "y-in");
	assert_transfer_equal(&created[1], &t);
	assert_int_equal(read_account_ok(reader, "clr:B").pending_in, 300);
	assert_int_equal(read_account_ok(reader, "clr:C").posted, -400);
	assert_audit_clean(e, &totals);
	assert_int_equal(totals.sagas_in_flight, 1);

	assert_int_equal(run_batch(e, step1, 2, 2500), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_REPLAYED);
	assert_transfer_equal(&created[0], &e->results[0].transfer);
	assert_int_equal(e->results[1].code, KOBO_RESULT_REPLAYED);
	assert_transfer_equal(&created[1], &e->results[1].transfer);

	kobo_op settle[] = {test_op_settle("x-hold", false, KOBO_RESULT_CREATED)};
	assert_int_equal(run_batch(e, settle, 1, 3000), KOBO_OK);
	kobo_op post[] = {test_op_target(KOBO_OP_POST, "x-hold", true, 120)};
	assert_int_equal(run_batch(e, post, 1, 4000), KOBO_OK);
	t = read_transfer_ok(reader, "x-hold");
	assert_int_equal(t.saga, KOBO_SAGA_POSTING);
	assert_int_equal(t.saga_amount, 120);
	assert_transfer_equal(&e->results[0].transfer, &t);

	kobo_op refused[] = {test_op_settle("x-hold", true, KOBO_RESULT_ACCOUNT_NOT_FOUND)};
	assert_int_equal(run_batch(e, refused, 1, 5000), KOBO_OK);
	t = read_transfer_ok(reader, "x-hold");
	assert_int_equal(t.status, KOBO_STATUS_PENDING);
	assert_int_equal(t.error_code, KOBO_RESULT_ACCOUNT_NOT_FOUND);
	assert_transfer_equal(&e->results[0].transfer, &t);

	kobo_op void_op[] = {test_op_target(KOBO_OP_VOID, "x-hold", false, 0)};
	assert_int_equal(run_batch(e, void_op, 1, 6000), KOBO_OK);
	t = read_transfer_ok(reader, "x-hold");
	assert_int_equal(t.saga, KOBO_SAGA_VOIDING);
	assert_int_equal(t.saga_reason, KOBO_VOID_VOIDED);
	kobo_op settle_void[] = {test_op_settle("x-hold", false, KOBO_RESULT_CREATED)};
	assert_int_equal(run_batch(e, settle_void, 1, 7000), KOBO_OK);
	t = read_transfer_ok(reader, "x-hold");
	assert_int_equal(t.status, KOBO_STATUS_VOIDED);
	assert_int_equal(t.void_reason, KOBO_VOID_VOIDED);

	kobo_op lost[] = {test_op_debit("x-lost", "alice", "ghost", "clr:B", 50, false, 0)};
	assert_int_equal(run_batch(e, lost, 1, 8000), KOBO_OK);
	kobo_op compensate[] = {test_op_settle("x-lost", true, KOBO_RESULT_ACCOUNT_NOT_FOUND)};
	assert_int_equal(run_batch(e, compensate, 1, 9000), KOBO_OK);
	t = read_transfer_ok(reader, "x-lost");
	assert_int_equal(t.status, KOBO_STATUS_VOIDED);
	assert_int_equal(t.void_reason, KOBO_VOID_COMPENSATED);
	assert_int_equal(t.error_code, KOBO_RESULT_ACCOUNT_NOT_FOUND);
	assert_int_equal(run_batch(e, lost, 1, 9500), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_REPLAYED);
	assert_transfer_equal(&t, &e->results[0].transfer);

	assert_audit_clean(e, &totals);
	assert_int_equal(totals.sagas_in_flight, 0);
	assert_int_equal(read_account_ok(reader, "alice").posted, 10000);
	kobo_store_reader_close(reader);
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
	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);

	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_sagas(reader, "", 100, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 3);
	assert_string_equal(s.ids[0], "s1");
	assert_string_equal(s.ids[1], "s2");
	assert_string_equal(s.ids[2], "s3");
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
	kobo_store_reader_close(reader);
}

typedef struct seen_accounts {
	char ids[16][KOBO_ID_LEN_MAX + 1];
	size_t count;
	size_t stop_after;
} seen_accounts;

static int collect_account(void *ctx, const kobo_account *account)
{
	seen_accounts *s = ctx;
	assert_true(s->count < 16);
	assert_true(account->metadata_len > 0);
	snprintf(s->ids[s->count++], sizeof s->ids[0], "%s", account->id);
	return s->stop_after != 0 && s->count >= s->stop_after;
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

	for (size_t i = 0; i < ID_COUNT; i++)
		ops[i] = test_op_account(ids[i], "NGN", true, NULL);
	assert_int_equal(run_batch(e, ops, ID_COUNT, 1000), KOBO_OK);
	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);

	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "clr:", collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, 3);
	assert_string_equal(s.ids[0], "clr:A");
	assert_string_equal(s.ids[1], "clr:B");
	assert_string_equal(s.ids[2], "clr:B:x");
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "c%", collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, 1);
	assert_string_equal(s.ids[0], "c%r");
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "clr", collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, 5);
	assert_string_equal(s.ids[0], "clr");
	assert_string_equal(s.ids[4], "clr;");
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "", collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, ID_COUNT);
	for (size_t i = 1; i < s.count; i++)
		assert_true(strcmp(s.ids[i - 1], s.ids[i]) < 0);
	memset(&s, 0, sizeof s);
	s.stop_after = 2;
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "", collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, 2);
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_accounts_prefix(reader, "e", collect_account, &s), KOBO_OK);
	assert_int_equal(s.count, 0);
	kobo_store_reader_close(reader);
}

/* ---- Expired holds. ---- */

static void expired_holds_lists_due_pending_holds_oldest_first(void **state)
{
	env *e = *state;
	char ids[4][KOBO_ID_LEN_MAX + 1];
	size_t count = 99;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_transfer("late", "alice", "bob", 10, true, 9),  /* 11000 */
		test_op_transfer("soon", "alice", "bob", 10, true, 1),  /* 3000 */
		test_op_transfer("never", "alice", "bob", 10, true, 0),
		test_op_transfer("posted", "alice", "bob", 10, true, 2),
		test_op_transfer("plain", "alice", "bob", 10, false, 5),
		test_op_transfer("tie", "alice", "bob", 10, true, 1),   /* 3000, later seq */
	};
	assert_int_equal(run_batch(e, ops, 6, 2000), KOBO_OK);
	kobo_op post[] = {test_op_target(KOBO_OP_POST, "posted", false, 0)};
	assert_int_equal(run_batch(e, post, 1, 2500), KOBO_OK);

	assert_int_equal(kobo_store_expired_holds(e->store, 2999, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 0);
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

	kobo_op expire[] = {test_op_target(KOBO_OP_EXPIRE, "soon", false, 0)};
	assert_int_equal(run_batch(e, expire, 1, 4000), KOBO_OK);
	assert_int_equal(kobo_store_expired_holds(e->store, 100000, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 2);
	assert_string_equal(ids[0], "tie");
}

static void expired_holds_skip_holds_whose_saga_is_under_way(void **state)
{
	env *e = *state;
	char ids[4][KOBO_ID_LEN_MAX + 1];
	size_t count = 99;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_debit("x-soon", "alice", "zed", "clr:B", 10, true, 1),
		test_op_transfer("l-late", "alice", "bob", 10, true, 2),
	};
	assert_int_equal(run_batch(e, ops, 2, 2000), KOBO_OK);
	assert_int_equal(kobo_store_expired_holds(e->store, 10000, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 1);
	assert_string_equal(ids[0], "l-late");
	kobo_op settle[] = {test_op_settle("x-soon", false, KOBO_RESULT_CREATED)};
	assert_int_equal(run_batch(e, settle, 1, 2500), KOBO_OK);
	assert_int_equal(kobo_store_expired_holds(e->store, 10000, ids, 4, &count), KOBO_OK);
	assert_int_equal(count, 2);
	assert_string_equal(ids[0], "x-soon");
}

/* ---- Audit. ---- */

static void audit_passes_sound_data_and_reports_tampering(void **state)
{
	env *e = *state;
	kobo_audit_totals totals;
	report_log log;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_transfer("a1", "alice", "bob", 300, false, 0),
		test_op_transfer("a2", "alice", "bob", 200, true, 0),
		test_op_transfer("a3", "bob", "alice", 999999, false, 0), /* rejected */
		test_op_transfer("a4", "bob", "cash", 50, true, 0),
		test_op_debit("x1", "alice", "zed", "clr:B", 700, false, 0),
		test_op_credit("y1", "yan", "bob", "clr:C", 400, false),
	};
	assert_int_equal(run_batch(e, ops, 6, 2000), KOBO_OK);
	kobo_op post[] = {test_op_target(KOBO_OP_POST, "a4", true, 20)};
	assert_int_equal(run_batch(e, post, 1, 3000), KOBO_OK);
	assert_audit_clean(e, &totals);
	assert_int_equal(totals.accounts, 5);
	assert_int_equal(totals.transfers, 7);
	assert_int_equal(totals.sagas_in_flight, 1);

	/* A batch built on a lie: the ledger is handed an alice with 7 more
	 * than the store holds, and writes her back after paying bob 1. */
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

	/* A lie about the money in flight: the clearing account forgets it. */
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

/* ---- Faults and the sticky error. ---- */

static void failed_commit_not_applied_is_sticky_until_restart(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	kobo_account account;
	kobo_transfer transfer;
	char ids[1][KOBO_ID_LEN_MAX + 1];
	size_t count;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_account("erin", "NGN", false, NULL),
		test_op_transfer("t-lost", "alice", "bob", 500, false, 0),
	};
	kobo_store_mem_fail_next_commit(e->store, false);
	assert_int_equal(run_batch(e, ops, 2, 2000), KOBO_EUNKNOWN);
	assert_false(kobo_store_healthy(e->store));
	kobo_store_rollback(e->store);
	assert_int_equal(kobo_store_begin(e->store), KOBO_EFAILED);
	assert_int_equal(kobo_store_expired_holds(e->store, 5000, ids, 1, &count), KOBO_EFAILED);
	assert_int_equal(kobo_store_begin(e->store), KOBO_EFAILED);

	/* Readers still read what was committed; the batch is not there. */
	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);
	assert_int_equal(kobo_store_read_account(reader, "erin", &account), KOBO_ENOTFOUND);
	assert_int_equal(kobo_store_read_transfer(reader, "t-lost", &transfer), KOBO_ENOTFOUND);
	kobo_store_reader_close(reader);

	kobo_store_mem_restart(e->store);
	assert_true(kobo_store_healthy(e->store));
	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);
	assert_int_equal(kobo_store_read_account(reader, "erin", &account), KOBO_ENOTFOUND);
	assert_int_equal(read_account_ok(reader, "alice").posted, 10000);
	/* The retry applies it, once. */
	assert_int_equal(run_batch(e, ops, 2, 3000), KOBO_OK);
	assert_int_equal(e->results[1].code, KOBO_RESULT_CREATED);
	assert_int_equal(read_account_ok(reader, "alice").posted, 9500);
	kobo_store_reader_close(reader);
	kobo_audit_totals totals;
	assert_audit_clean(e, &totals);
}

static void failed_commit_applied_lands_but_is_sticky_until_restart(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;

	seed(e, 1000);
	kobo_op ops[] = {
		test_op_account("erin", "NGN", false, NULL),
		test_op_transfer("t-landed", "alice", "bob", 500, false, 0),
	};
	kobo_store_mem_fail_next_commit(e->store, true);
	assert_int_equal(run_batch(e, ops, 2, 2000), KOBO_EUNKNOWN);
	assert_false(kobo_store_healthy(e->store));
	assert_int_equal(kobo_store_begin(e->store), KOBO_EFAILED);

	/* The batch landed although nobody was told. */
	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);
	assert_int_equal(read_transfer_ok(reader, "t-landed").status, KOBO_STATUS_POSTED);
	assert_int_equal(read_account_ok(reader, "alice").posted, 9500);
	kobo_store_reader_close(reader);

	/* After the restart the client's retry replays: applied once. */
	kobo_store_mem_restart(e->store);
	assert_int_equal(run_batch(e, ops, 2, 3000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_REPLAYED);
	assert_int_equal(e->results[1].code, KOBO_RESULT_REPLAYED);
	assert_int_equal(e->results[1].transfer.created_at_ms, 2000);
	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);
	assert_int_equal(read_account_ok(reader, "alice").posted, 9500);
	kobo_store_reader_close(reader);
	kobo_audit_totals totals;
	assert_audit_clean(e, &totals);
}

/* A fault fires once; a restart abandons an open batch. */
static void restart_drops_open_batch_and_fault_fires_once(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	kobo_account account;

	seed(e, 1000);
	kobo_op ops[] = {test_op_account("open", "NGN", false, NULL)};
	assert_int_equal(run_batch_ex(e, ops, 1, 2000, false, NULL), KOBO_OK);
	kobo_store_mem_restart(e->store); /* the process died mid-batch */
	assert_true(kobo_store_healthy(e->store));
	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);
	assert_int_equal(kobo_store_read_account(reader, "open", &account), KOBO_ENOTFOUND);

	kobo_store_mem_fail_next_commit(e->store, false);
	assert_int_equal(run_batch(e, ops, 1, 3000), KOBO_EUNKNOWN);
	kobo_store_mem_restart(e->store);
	assert_int_equal(run_batch(e, ops, 1, 4000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_CREATED);
	assert_int_equal(kobo_store_read_account(reader, "open", &account), KOBO_OK);
	assert_int_equal(account.created_at_ms, 4000);
	kobo_store_reader_close(reader);
}

/* Writing what SQLite's constraints would refuse (a new account whose id
 * exists, because the batch did not load it) fails the write and makes
 * the store sticky, as a failed SQLite write does. */
static void write_refused_by_a_constraint_is_sticky(void **state)
{
	env *e = *state;
	static const char *account_ids[4];
	size_t account_count = 0;

	seed(e, 1000);
	kobo_op ops[] = {test_op_account("alice", "NGN", false, NULL)};
	kobo_ledger_reset(e->ledger);
	assert_int_equal(kobo_store_begin(e->store), KOBO_OK);
	kobo_ledger_account_ids(e->ledger, ops, 1, account_ids, &account_count);
	/* No load: the ledger believes alice is new. */
	assert_int_equal(kobo_ledger_apply(e->ledger, ops, 1, 2000, e->results), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_CREATED);
	assert_int_equal(write_changes(e->store, e->ledger), KOBO_ESTORE);
	kobo_store_rollback(e->store);
	assert_false(kobo_store_healthy(e->store));
	assert_int_equal(kobo_store_begin(e->store), KOBO_EFAILED);
	kobo_store_mem_restart(e->store);

	kobo_store_reader *reader = NULL;
	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);
	assert_int_equal(read_account_ok(reader, "alice").posted, 10000);
	assert_int_equal(read_account_ok(reader, "alice").created_at_ms, 1000);
	kobo_store_reader_close(reader);
}

/* ---- Scale. ---- */

/* 200,000 transfers in batches of 1,000 touch the same few accounts: every
 * write-path step must stay O(1) per row (a quadratic one would take
 * minutes here). Then every read still answers correctly. */
static void many_transfers_stay_linear(void **state)
{
	env *e = *state;
	enum { BATCHES = 200, PER_BATCH = 1000 };
	static kobo_op ops[PER_BATCH];
	kobo_store_reader *reader = NULL;
	kobo_audit_totals totals;
	char ids[2][KOBO_ID_LEN_MAX + 1];
	size_t count;
	seen s;

	seed(e, 1000);
	kobo_op rare[] = {test_op_account("rare", "NGN", false, NULL)};
	assert_int_equal(run_batch(e, rare, 1, 1000), KOBO_OK);
	for (int b = 0; b < BATCHES; b++) {
		for (int i = 0; i < PER_BATCH; i++) {
			char id[32];
			snprintf(id, sizeof id, "bulk-%d-%d", b, i);
			if (i % 2 == 0)
				ops[i] = test_op_transfer(id, "cash", "bob", 1, false, 0);
			else
				ops[i] = test_op_debit(id, "cash", "zed", "clr:B", 1, true, 1);
		}
		assert_int_equal(run_batch(e, ops, PER_BATCH, 2000 + b), KOBO_OK);
	}
	kobo_op last[] = {test_op_transfer("to-rare", "cash", "rare", 9, false, 0)};
	assert_int_equal(run_batch(e, last, 1, 9000), KOBO_OK);

	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, "rare", 0, 10, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 1);
	assert_int_equal(s.seqs[0], 2 + BATCHES * PER_BATCH);
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_sagas(reader, "bulk-99", 3, collect, &s), KOBO_OK);
	assert_int_equal(s.count, 3);
	assert_true(strcmp(s.ids[0], "bulk-99") > 0);
	assert_int_equal(read_account_ok(reader, "clr:B").pending_in, BATCHES * PER_BATCH / 2);
	kobo_store_reader_close(reader);
	/* PROCESSING holds are never listed, however many. */
	assert_int_equal(kobo_store_expired_holds(e->store, 1000000, ids, 2, &count), KOBO_OK);
	assert_int_equal(count, 0);
	assert_audit_clean(e, &totals);
	assert_int_equal(totals.transfers, 2 + BATCHES * PER_BATCH);
	assert_int_equal(totals.sagas_in_flight, BATCHES * PER_BATCH / 2);
}

/* ---- The seam: tokens, conflicts, load callbacks, URLs. ---- */

/* Every committed batch moves the commit sequence on by one; a batch that
 * did not land does not; it survives a restart. */
static void commit_token_counts_committed_batches(void **state)
{
	env *e = *state;
	kobo_op a[] = {test_op_account("t1", "NGN", false, NULL)};
	kobo_op b[] = {test_op_account("t2", "NGN", false, NULL)};
	kobo_op c[] = {test_op_account("t3", "NGN", false, NULL)};
	kobo_op d[] = {test_op_account("t4", "NGN", false, NULL)};

	assert_int_equal(run_batch(e, a, 1, 1000), KOBO_OK);
	assert_int_equal(last_token, 1);
	assert_int_equal(run_batch(e, b, 1, 1000), KOBO_OK);
	assert_int_equal(last_token, 2);
	kobo_store_mem_fail_next_commit(e->store, false); /* lost: not counted */
	assert_int_equal(run_batch(e, c, 1, 1000), KOBO_EUNKNOWN);
	assert_int_equal(last_token, 2);
	kobo_store_mem_restart(e->store);
	kobo_store_mem_fail_next_commit(e->store, true); /* landed: counted */
	assert_int_equal(run_batch(e, c, 1, 1000), KOBO_EUNKNOWN);
	kobo_store_mem_restart(e->store);
	assert_int_equal(run_batch(e, d, 1, 1000), KOBO_OK);
	assert_int_equal(last_token, 4);
}

/* KOBO_ECONFLICT: nothing lands, the store stays healthy, the batch is
 * over (rollback is harmless) and re-running it works. */
static void conflict_applies_nothing_and_stays_healthy(void **state)
{
	env *e = *state;
	kobo_store_reader *reader = NULL;
	kobo_account account;

	seed(e, 1000);
	uint64_t before = last_token;
	kobo_op ops[] = {test_op_transfer("t-c", "alice", "bob", 300, false, 0)};
	kobo_store_mem_conflict_next_commits(e->store, 2);
	assert_int_equal(run_batch(e, ops, 1, 2000), KOBO_ECONFLICT);
	assert_true(kobo_store_healthy(e->store));
	assert_int_equal(run_batch(e, ops, 1, 2000), KOBO_ECONFLICT);
	assert_int_equal(last_token, before);
	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);
	assert_int_equal(kobo_store_read_transfer(reader, "t-c", &(kobo_transfer){0}),
	                 KOBO_ENOTFOUND);
	assert_int_equal(run_batch(e, ops, 1, 2000), KOBO_OK);
	assert_int_equal(e->results[0].code, KOBO_RESULT_CREATED);
	assert_int_equal(last_token, before + 1);
	assert_int_equal(kobo_store_read_account(reader, "alice", &account), KOBO_OK);
	assert_int_equal(account.posted, 9700);
	kobo_store_reader_close(reader);
}

static int stop_with_efull(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	(void)transfer;
	(void)seq;
	(*(int *)ctx)++;
	return KOBO_EFULL;
}

/* A load hands back the callback's first non-zero answer; the batch stays
 * open until rolled back and the store stays healthy. */
static void load_stops_at_the_callbacks_answer(void **state)
{
	env *e = *state;
	kobo_op ops[] = {
		test_op_transfer("t-a", "alice", "bob", 1, false, 0),
		test_op_transfer("t-b", "alice", "bob", 1, false, 0),
	};
	seed(e, 1000);
	assert_int_equal(run_batch(e, ops, 2, 2000), KOBO_OK);
	const char *ids[] = {"t-a", "t-b"};
	int calls = 0;
	assert_int_equal(kobo_store_begin(e->store), KOBO_OK);
	assert_int_equal(kobo_store_load_transfers(e->store, ids, 2, stop_with_efull,
	                                           &calls), KOBO_EFULL);
	assert_int_equal(calls, 1);
	kobo_store_rollback(e->store);
	assert_true(kobo_store_healthy(e->store));
	assert_int_equal(kobo_store_begin(e->store), KOBO_OK);
	kobo_store_rollback(e->store);
}

/* kobo_store_open knows sqlite:, postgresql: and mem:; anything else is refused. */
static void open_refuses_unknown_schemes(void **state)
{
	(void)state;
	const char *refused[] = {"mysql://kobo@localhost/kobo", "mem:extra",
	                         "sqlite:", "", "file:/tmp/x"};
	for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
		kobo_store *store = (kobo_store *)1;
		assert_int_equal(kobo_store_open(refused[i], 0, false, &store), KOBO_EINVAL);
		assert_null(store);
	}
	kobo_store *read_only = NULL;
	assert_int_equal(kobo_store_open("mem:", 3, true, &read_only), KOBO_OK);
	assert_int_equal(kobo_store_begin(read_only), KOBO_EINVAL);
	kobo_store_close(read_only);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(commit_token_counts_committed_batches, setup, teardown),
		cmocka_unit_test_setup_teardown(conflict_applies_nothing_and_stays_healthy, setup, teardown),
		cmocka_unit_test_setup_teardown(load_stops_at_the_callbacks_answer, setup, teardown),
		cmocka_unit_test(open_refuses_unknown_schemes),
		cmocka_unit_test_setup_teardown(batch_round_trip_through_ledger, setup, teardown),
		cmocka_unit_test_setup_teardown(loaded_metadata_lives_until_next_begin, setup, teardown),
		cmocka_unit_test_setup_teardown(rollback_leaves_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(reader_sees_committed_batches_only, setup, teardown),
		cmocka_unit_test_setup_teardown(readers_on_other_threads_never_see_half_a_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(history_orders_pages_and_skips_rejected, setup, teardown),
		cmocka_unit_test_setup_teardown(history_counts_legs_for_from_to_and_clearing, setup, teardown),
		cmocka_unit_test_setup_teardown(legs_and_sagas_round_trip_through_ledger, setup, teardown),
		cmocka_unit_test_setup_teardown(read_sagas_lists_sagas_in_flight_by_id, setup, teardown),
		cmocka_unit_test_setup_teardown(read_accounts_prefix_matches_literally_in_id_order, setup, teardown),
		cmocka_unit_test_setup_teardown(expired_holds_lists_due_pending_holds_oldest_first, setup, teardown),
		cmocka_unit_test_setup_teardown(expired_holds_skip_holds_whose_saga_is_under_way, setup, teardown),
		cmocka_unit_test_setup_teardown(audit_passes_sound_data_and_reports_tampering, setup, teardown),
		cmocka_unit_test_setup_teardown(failed_commit_not_applied_is_sticky_until_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(failed_commit_applied_lands_but_is_sticky_until_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(restart_drops_open_batch_and_fault_fires_once, setup, teardown),
		cmocka_unit_test_setup_teardown(write_refused_by_a_constraint_is_sticky, setup, teardown),
		cmocka_unit_test_setup_teardown(many_transfers_stay_linear, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
