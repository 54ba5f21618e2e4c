/*
 * test_store_mem.c — the in-memory store against the contract (store.h).
 *
 * What only this store has: a few hundred thousand rows to show nothing on
 * its write path is quadratic. Everything the contract promises, with the
 * in-memory store's fault hooks, is tested for every backend in
 * test_store_contract.c.
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
#include "store_batch.h"
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

/* One batch through the store (store_batch.h). */
static int run_batch_ex(env *e, const kobo_op *ops, size_t count, int64_t now_ms,
                        bool commit, const kobo_account *forged)
{
	return store_batch_run(e->store, e->ledger, ops, count, now_ms, e->results,
	                       commit, forged);
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

static void assert_audit_clean(env *e, kobo_audit_totals *totals)
{
	report_log log;
	memset(&log, 0, sizeof log);
	assert_int_equal(kobo_store_audit(e->store, collect_report, &log, totals), KOBO_OK);
	if (totals->problems != 0)
		fail_msg("audit found %zu problems, first: %s", totals->problems, log.lines[0]);
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

typedef struct seen_accounts {
	char ids[16][KOBO_ID_LEN_MAX + 1];
	size_t count;
	size_t stop_after;
} seen_accounts;

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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(many_transfers_stay_linear, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
