/*
 * verify.c — after the workload, read everything back and check the
 * invariants of DESIGN.md §1 that a client can see:
 *
 *   0. Settling. A transfer answered 202 "processing" (a cross-shard saga
 *      still running) was acknowledged: GET /v1/transfers/{id} is polled,
 *      in rounds, until it says posted (checked as sent) or voided (the
 *      saga compensated: moved nothing). 404 is a violation (invariant 2);
 *      what still says processing at the deadline is checked with bounds.
 *   1. Resolution. A transfer whose answer was lost (transport error, 5xx)
 *      is sent again with the same id and parameters: by
 *      exactly-once (invariant 3) the answer is its true, final outcome. A
 *      409 id_conflict here is a violation. Rounds repeat while answers say
 *      "processing"; what is still unknown at the deadline is checked with
 *      bounds instead of equality below.
 *   2. Durability of acknowledgements (invariant 2). Every transfer answered
 *      201 exists: GET /v1/transfers/{id} says posted, with the same from,
 *      to, amount and posted_amount.
 *   3. Balances. Every bench account and the cash account are read back:
 *      - conservation (invariant 1): the posted balances of cash and of all
 *        bench accounts sum to 0, since transfers only move money among them
 *        (not checked while a cross-shard transfer may still be in flight:
 *        its money then sits on clearing accounts);
 *      - no double spend (invariant 4): no account with allow_negative false
 *        has available < 0;
 *      - history explains balances (invariant 6): each posted balance equals
 *        funding plus the bench's own record of acknowledged transfers, or
 *        lies within [record - unknown debits, record + unknown credits]
 *        while some outcomes stay unknown.
 *
 * Every phase runs over the connection pool and ends by the verification
 * deadline; what could not be checked in time is reported, not assumed.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../obs/obs.h"
#include "bench.h"

#define RESOLVE_ROUND_PAUSE_US (200 * 1000ll)
#define SETTLE_ROUND_PAUSE_US (100 * 1000ll)
#define UNKNOWN_TRACKED_MAX (4u << 20)
#define VERIFY_ATTEMPTS_MAX 5

typedef struct verify_ctx {
	bench_run *run;
	bench_verify_report *report;
	pthread_mutex_t print_lock;
	/* Settling of 202 answers. */
	uint64_t *accepted;
	uint64_t accepted_len;
	_Atomic uint64_t compensated;
	/* Resolution. */
	uint64_t *unknown;
	uint64_t unknown_len;
	/* Transfer checks. */
	uint64_t *acked;
	uint64_t acked_len;
	_Atomic uint64_t transfers_checked;
	/* Balances, index accounts = cash. */
	int64_t *posted;
	int64_t *available;
	uint8_t *balance_read;
	_Atomic uint64_t balances_read;
	_Atomic uint64_t violations;
} verify_ctx;

static void violation(verify_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void violation(verify_ctx *ctx, const char *fmt, ...)
{
	uint64_t seen = atomic_fetch_add(&ctx->violations, 1);
	if (seen >= BENCH_VIOLATIONS_PRINTED_MAX)
		return;
	va_list args;
	va_start(args, fmt);
	pthread_mutex_lock(&ctx->print_lock);
	fputs("verify: VIOLATION: ", stderr);
	vfprintf(stderr, fmt, args);
	fputc('\n', stderr);
	if (seen + 1 == BENCH_VIOLATIONS_PRINTED_MAX)
		fputs("verify: (further violations are counted, not printed)\n", stderr);
	pthread_mutex_unlock(&ctx->print_lock);
	va_end(args);
}

static bool transient(int status)
{
	return status == 0 || status == 429 || status >= 500;
}

static int64_t json_int_at(json_t *object, const char *key, bool *ok)
{
	json_t *value = json_object_get(object, key);
	if (!json_is_integer(value)) {
		*ok = false;
		return 0;
	}
	return (int64_t)json_integer_value(value);
}

static const char *json_str_at(json_t *object, const char *key)
{
	const char *s = json_string_value(json_object_get(object, key));
	return s ? s : "";
}

/* Sends GET /v1/transfers/{id} for bench transfer k on conn. */
static int get_transfer(verify_ctx *ctx, bench_conn *conn, uint64_t k)
{
	char path[KOBO_ID_LEN_MAX + 32];
	char id[KOBO_ID_LEN_MAX + 1];
	bench_transfer_id(ctx->run->config, k, id);
	snprintf(path, sizeof(path), "/v1/transfers/%s", id);
	if (bench_conn_request(conn, "GET", path, NULL, 0) != KOBO_OK)
		return BENCH_JOB_DONE;
	return BENCH_JOB_SENT;
}

/* Runs the job next/finish over list[0..*len) in rounds while any of its
 * items still has the outcome `pending`, until deadline_us or a stop: after
 * each round the list keeps only the items still pending, and the next round
 * starts pause_us later. */
static void run_rounds(verify_ctx *ctx, uint64_t *list, uint64_t *len, uint8_t pending,
                       int (*next)(bench_job *, bench_worker *, bench_conn *, int64_t, int64_t *),
                       void (*finish)(bench_job *, bench_worker *, bench_conn *, int, const char *,
                                      size_t, int64_t),
                       int64_t pause_us, int64_t deadline_us)
{
	bench_run *run = ctx->run;
	while (*len > 0 && kobo_monotonic_us() < deadline_us && !atomic_load(&bench_stop_requested)) {
		atomic_store(&run->items_next, 0);
		bench_job job = {
			.next = next,
			.finish = finish,
			.stop_sending_us = deadline_us,
			.abandon_us = deadline_us,
			.ctx = ctx,
		};
		bench_run_job(run->workers, run->worker_count, &job);
		uint64_t still = 0;
		for (uint64_t i = 0; i < *len; i++)
			if (run->outcomes[list[i]] == pending)
				list[still++] = list[i];
		*len = still;
		if (still > 0) {
			struct timespec pause = {.tv_nsec = pause_us * 1000};
			nanosleep(&pause, NULL);
		}
	}
}

/* ---- 0. Transfers answered 202: wait until their sagas settle. ---- */

static int settle_next(bench_job *job, bench_worker *worker, bench_conn *conn, int64_t now_us,
                       int64_t *wake_us)
{
	verify_ctx *ctx = job->ctx;
	uint64_t item;
	uint32_t attempt;
	int rc = bench_item_next(ctx->run, worker, ctx->accepted_len, now_us, wake_us, &item, &attempt);
	if (rc != BENCH_JOB_SENT)
		return rc;
	conn->tag = ctx->accepted[item];
	return get_transfer(ctx, conn, conn->tag);
}

static void settle_finish(bench_job *job, bench_worker *worker, bench_conn *conn, int status,
                          const char *body, size_t body_len, int64_t now_us)
{
	(void)worker;
	(void)now_us;
	verify_ctx *ctx = job->ctx;
	bench_run *run = ctx->run;
	const bench_config *config = run->config;
	uint64_t k = conn->tag;
	if (transient(status))
		return; /* next round */
	char id[KOBO_ID_LEN_MAX + 1];
	bench_transfer_id(config, k, id);
	if (status != 200) {
		violation(ctx, "transfer %s was answered 202 (accepted): expected GET 200, saw %d %.*s", id,
		          status, (int)(body_len > 200 ? 200 : body_len), body);
		run->outcomes[k] = BENCH_OUTCOME_RESOLVED_NONE;
		return;
	}
	bench_transfer t = bench_transfer_make(config, k);
	char from[KOBO_ID_LEN_MAX + 1], to[KOBO_ID_LEN_MAX + 1];
	bench_account_id(config, t.from, from);
	bench_account_id(config, t.to, to);
	json_t *root = json_loadb(body, body_len, 0, NULL);
	bool ok = true;
	int64_t amount = json_int_at(root, "amount", &ok);
	int64_t posted_amount = json_int_at(root, "posted_amount", &ok);
	const char *state = json_str_at(root, "status");
	if (!ok || amount != t.amount_minor || strcmp(json_str_at(root, "from"), from) != 0 ||
	    strcmp(json_str_at(root, "to"), to) != 0) {
		violation(ctx, "transfer %s (answered 202): expected %s -> %s amount %lld, saw %.*s", id, from,
		          to, (long long)t.amount_minor, (int)(body_len > 300 ? 300 : body_len), body);
		run->outcomes[k] = BENCH_OUTCOME_RESOLVED_NONE;
	} else if (strcmp(state, "posted") == 0) {
		run->outcomes[k] = BENCH_OUTCOME_RESOLVED_POSTED;
		if (posted_amount != t.amount_minor)
			violation(ctx, "transfer %s (answered 202): expected posted_amount %lld, saw %lld", id,
			          (long long)t.amount_minor, (long long)posted_amount);
	} else if (strcmp(state, "voided") == 0) {
		/* The saga refunded the payer (e.g. it passed its deadline). */
		run->outcomes[k] = BENCH_OUTCOME_RESOLVED_NONE;
		atomic_fetch_add(&ctx->compensated, 1);
	} else if (strcmp(state, "processing") != 0) {
		violation(ctx, "transfer %s (answered 202): expected it to end posted or voided, saw status "
		          "\"%s\"", id, state);
		run->outcomes[k] = BENCH_OUTCOME_RESOLVED_NONE;
	} /* processing: next round */
	json_decref(root);
}

static void run_settle(verify_ctx *ctx, int64_t deadline_us)
{
	run_rounds(ctx, ctx->accepted, &ctx->accepted_len, BENCH_OUTCOME_ACCEPTED, settle_next,
	           settle_finish, SETTLE_ROUND_PAUSE_US, deadline_us);
}

/* ---- 1. Resolution of unknown outcomes. ---- */

static int resolve_next(bench_job *job, bench_worker *worker, bench_conn *conn, int64_t now_us,
                        int64_t *wake_us)
{
	verify_ctx *ctx = job->ctx;
	uint64_t item;
	uint32_t attempt;
	int rc = bench_item_next(ctx->run, worker, ctx->unknown_len, now_us, wake_us, &item, &attempt);
	if (rc != BENCH_JOB_SENT)
		return rc;
	conn->tag = ctx->unknown[item];
	worker->scratch.len = 0;
	if (bench_transfer_json(&worker->scratch, ctx->run->config, conn->tag) != KOBO_OK ||
	    bench_conn_request(conn, "POST", "/v1/transfers", worker->scratch.data, worker->scratch.len) !=
	            KOBO_OK)
		return BENCH_JOB_DONE;
	return BENCH_JOB_SENT;
}

static void resolve_finish(bench_job *job, bench_worker *worker, bench_conn *conn, int status,
                           const char *body, size_t body_len, int64_t now_us)
{
	(void)worker;
	(void)now_us;
	verify_ctx *ctx = job->ctx;
	bench_run *run = ctx->run;
	uint64_t k = conn->tag;
	char id[KOBO_ID_LEN_MAX + 1];
	if (status == 422) {
		run->outcomes[k] = BENCH_OUTCOME_RESOLVED_NONE;
		return;
	}
	if (status == 409) {
		bench_transfer_id(run->config, k, id);
		violation(ctx, "transfer %s sent again with the same parameters: expected 200/201/422 "
		          "(exactly once), saw 409 %.*s", id, (int)(body_len > 200 ? 200 : body_len), body);
		run->outcomes[k] = BENCH_OUTCOME_RESOLVED_NONE;
		return;
	}
	if (status != 200 && status != 201)
		return; /* 202 processing, overload, transport error: next round */
	json_t *root = json_loadb(body, body_len, 0, NULL);
	const char *state = json_str_at(root, "status");
	bench_transfer t = bench_transfer_make(run->config, k);
	bool ok = true;
	int64_t posted_amount = json_int_at(root, "posted_amount", &ok);
	if (strcmp(state, "posted") == 0) {
		run->outcomes[k] = BENCH_OUTCOME_RESOLVED_POSTED;
		if (!ok || posted_amount != t.amount_minor) {
			bench_transfer_id(run->config, k, id);
			violation(ctx, "transfer %s: expected posted_amount %lld, saw %lld", id,
			          (long long)t.amount_minor, (long long)posted_amount);
		}
	} else if (strcmp(state, "voided") == 0 || strcmp(state, "rejected") == 0) {
		run->outcomes[k] = BENCH_OUTCOME_RESOLVED_NONE;
	} /* processing or anything else: next round */
	json_decref(root);
}

static void run_resolution(verify_ctx *ctx, int64_t deadline_us)
{
	run_rounds(ctx, ctx->unknown, &ctx->unknown_len, BENCH_OUTCOME_UNKNOWN, resolve_next,
	           resolve_finish, RESOLVE_ROUND_PAUSE_US, deadline_us);
}

/* ---- 2. Every acknowledged transfer exists, posted, as sent. ---- */

static int transfer_next(bench_job *job, bench_worker *worker, bench_conn *conn, int64_t now_us,
                         int64_t *wake_us)
{
	verify_ctx *ctx = job->ctx;
	uint64_t item;
	uint32_t attempt;
	int rc = bench_item_next(ctx->run, worker, ctx->acked_len, now_us, wake_us, &item, &attempt);
	if (rc != BENCH_JOB_SENT)
		return rc;
	conn->tag = ctx->acked[item];
	conn->tag_count = item;
	conn->attempt = attempt;
	return get_transfer(ctx, conn, conn->tag);
}

static void transfer_finish(bench_job *job, bench_worker *worker, bench_conn *conn, int status,
                            const char *body, size_t body_len, int64_t now_us)
{
	verify_ctx *ctx = job->ctx;
	const bench_config *config = ctx->run->config;
	uint64_t k = conn->tag;
	char id[KOBO_ID_LEN_MAX + 1];
	bench_transfer_id(config, k, id);
	if (transient(status)) {
		if (conn->attempt + 1 < VERIFY_ATTEMPTS_MAX)
			bench_retry_push(worker, conn->tag_count, conn->attempt + 1,
			                 now_us + 100000ll * (conn->attempt + 1));
		return;
	}
	atomic_fetch_add(&ctx->transfers_checked, 1);
	if (status != 200) {
		violation(ctx, "acknowledged transfer %s: expected GET 200, saw %d %.*s", id, status,
		          (int)(body_len > 200 ? 200 : body_len), body);
		return;
	}
	bench_transfer t = bench_transfer_make(config, k);
	char from[KOBO_ID_LEN_MAX + 1], to[KOBO_ID_LEN_MAX + 1];
	bench_account_id(config, t.from, from);
	bench_account_id(config, t.to, to);
	json_t *root = json_loadb(body, body_len, 0, NULL);
	bool ok = true;
	int64_t amount = json_int_at(root, "amount", &ok);
	int64_t posted_amount = json_int_at(root, "posted_amount", &ok);
	const char *state = json_str_at(root, "status");
	if (!ok || strcmp(state, "posted") != 0 || amount != t.amount_minor ||
	    posted_amount != t.amount_minor || strcmp(json_str_at(root, "from"), from) != 0 ||
	    strcmp(json_str_at(root, "to"), to) != 0)
		violation(ctx, "acknowledged transfer %s: expected posted %s -> %s amount %lld, "
		          "saw status \"%s\" %s -> %s amount %lld posted_amount %lld", id, from, to,
		          (long long)t.amount_minor, state, json_str_at(root, "from"),
		          json_str_at(root, "to"), (long long)amount, (long long)posted_amount);
	json_decref(root);
}

/* ---- 3. Balances. ---- */

/* Balance items 0..accounts-1 are the bench accounts, item `accounts` is
 * the cash account. */
static void balance_item_id(const bench_config *config, uint64_t item,
                            char id[KOBO_ID_LEN_MAX + 1])
{
	if (item == config->accounts)
		bench_cash_id(config, id);
	else
		bench_account_id(config, (uint32_t)item, id);
}

static int account_next(bench_job *job, bench_worker *worker, bench_conn *conn, int64_t now_us,
                        int64_t *wake_us)
{
	verify_ctx *ctx = job->ctx;
	const bench_config *config = ctx->run->config;
	uint64_t item;
	uint32_t attempt;
	int rc = bench_item_next(ctx->run, worker, (uint64_t)config->accounts + 1, now_us, wake_us, &item,
	                         &attempt);
	if (rc != BENCH_JOB_SENT)
		return rc;
	conn->tag = item;
	conn->attempt = attempt;
	char id[KOBO_ID_LEN_MAX + 1];
	char path[KOBO_ID_LEN_MAX + 32];
	balance_item_id(config, item, id);
	snprintf(path, sizeof(path), "/v1/accounts/%s", id);
	if (bench_conn_request(conn, "GET", path, NULL, 0) != KOBO_OK)
		return BENCH_JOB_DONE;
	return BENCH_JOB_SENT;
}

static void account_finish(bench_job *job, bench_worker *worker, bench_conn *conn, int status,
                           const char *body, size_t body_len, int64_t now_us)
{
	verify_ctx *ctx = job->ctx;
	const bench_config *config = ctx->run->config;
	uint64_t item = conn->tag;
	char id[KOBO_ID_LEN_MAX + 1];
	balance_item_id(config, item, id);
	if (transient(status)) {
		if (conn->attempt + 1 < VERIFY_ATTEMPTS_MAX)
			bench_retry_push(worker, item, conn->attempt + 1, now_us + 100000ll * (conn->attempt + 1));
		return;
	}
	if (status != 200) {
		violation(ctx, "account %s: expected GET 200, saw %d %.*s", id, status,
		          (int)(body_len > 200 ? 200 : body_len), body);
		return;
	}
	json_t *root = json_loadb(body, body_len, 0, NULL);
	json_t *balance = json_object_get(root, "balance");
	bool ok = true;
	int64_t posted = json_int_at(balance, "posted", &ok);
	int64_t available = json_int_at(balance, "available", &ok);
	if (!ok) {
		violation(ctx, "account %s: expected balance.posted and balance.available integers, saw %.*s",
		          id, (int)(body_len > 200 ? 200 : body_len), body);
	} else {
		ctx->posted[item] = posted;
		ctx->available[item] = available;
		ctx->balance_read[item] = 1;
		atomic_fetch_add(&ctx->balances_read, 1);
	}
	json_decref(root);
}

static void check_balances(verify_ctx *ctx)
{
	bench_run *run = ctx->run;
	const bench_config *config = run->config;
	uint32_t n = config->accounts;
	int64_t *expected = calloc(n, sizeof(*expected));
	int64_t *unknown_debits = calloc(n, sizeof(*unknown_debits));
	int64_t *unknown_credits = calloc(n, sizeof(*unknown_credits));
	if (!expected || !unknown_debits || !unknown_credits) {
		fprintf(stderr, "verify: out of memory for %u balances\n", n);
		ctx->report->complete = false;
		goto done;
	}
	for (uint32_t i = 0; i < n; i++)
		expected[i] = config->fund_amount_minor;
	uint64_t sent = atomic_load(&run->transfers_next);
	if (sent > BENCH_TRANSFERS_MAX)
		sent = BENCH_TRANSFERS_MAX;
	uint64_t in_flight = 0; /* cross-shard transfers whose saga may still run */
	for (uint64_t k = 0; k < sent; k++) {
		uint8_t outcome = run->outcomes[k];
		if (outcome != BENCH_OUTCOME_POSTED && outcome != BENCH_OUTCOME_RESOLVED_POSTED &&
		    outcome != BENCH_OUTCOME_UNKNOWN && outcome != BENCH_OUTCOME_ACCEPTED)
			continue;
		bench_transfer t = bench_transfer_make(config, k);
		if (outcome == BENCH_OUTCOME_ACCEPTED ||
		    (outcome == BENCH_OUTCOME_UNKNOWN && bench_transfer_is_cross(config, t)))
			in_flight++;
		if (outcome == BENCH_OUTCOME_UNKNOWN || outcome == BENCH_OUTCOME_ACCEPTED) {
			unknown_debits[t.from] += t.amount_minor;
			unknown_credits[t.to] += t.amount_minor;
		} else {
			expected[t.from] -= t.amount_minor;
			expected[t.to] += t.amount_minor;
		}
	}

	int64_t cash_expected = -(int64_t)n * config->fund_amount_minor;
	char id[KOBO_ID_LEN_MAX + 1];
	if (ctx->balance_read[n] && ctx->posted[n] != cash_expected) {
		bench_cash_id(config, id);
		violation(ctx, "cash account %s: expected posted %lld (funding of %u accounts), saw %lld", id,
		          (long long)cash_expected, n, (long long)ctx->posted[n]);
	}
	__int128 sum = 0;
	bool all_read = true;
	for (uint32_t i = 0; i <= n; i++) {
		if (!ctx->balance_read[i]) {
			all_read = false;
			continue;
		}
		sum += ctx->posted[i];
		if (i == n)
			continue;
		bench_account_id(config, i, id);
		if (ctx->available[i] < 0)
			violation(ctx, "account %s (allow_negative false): expected available >= 0, saw %lld", id,
			          (long long)ctx->available[i]);
		int64_t low = expected[i] - unknown_debits[i];
		int64_t high = expected[i] + unknown_credits[i];
		if (low == high && ctx->posted[i] != expected[i])
			violation(ctx, "account %s: expected posted %lld (funding + acknowledged transfers), "
			          "saw %lld (difference %lld)", id, (long long)expected[i],
			          (long long)ctx->posted[i], (long long)(ctx->posted[i] - expected[i]));
		else if (low != high && (ctx->posted[i] < low || ctx->posted[i] > high))
			violation(ctx, "account %s: expected posted within [%lld, %lld] (transfers of unknown "
			          "outcome), saw %lld", id, (long long)low, (long long)high,
			          (long long)ctx->posted[i]);
	}
	ctx->report->balances_complete = all_read;
	if (all_read && sum != 0 && in_flight > 0) {
		ctx->report->complete = false;
		fprintf(stderr, "verify: conservation not checked: the posted balances of cash and %u accounts "
		        "sum to %lld while %llu cross-shard transfers may still be in flight (their money "
		        "sits on clearing accounts)\n", n, (long long)sum, (unsigned long long)in_flight);
	} else if (all_read && sum != 0) {
		violation(ctx, "conservation: expected the posted balances of cash and %u accounts to sum "
		          "to 0, saw %lld", n, (long long)sum);
	}
	if (!all_read) {
		ctx->report->complete = false;
		fprintf(stderr, "verify: only %llu of %u balances could be read; conservation not checked\n",
		        (unsigned long long)atomic_load(&ctx->balances_read), n + 1);
	}
done:
	free(expected);
	free(unknown_debits);
	free(unknown_credits);
}

/* How many of transfers 0..sent-1 have the outcome. */
static uint64_t count_outcome(const bench_run *run, uint64_t sent, uint8_t outcome)
{
	uint64_t count = 0;
	for (uint64_t k = 0; k < sent; k++)
		count += run->outcomes[k] == outcome;
	return count;
}

/* A new list of the first (at most UNKNOWN_TRACKED_MAX) of the `count`
 * transfers among 0..sent-1 with the outcome, its length in *len; NULL when
 * out of memory. */
static uint64_t *list_outcome(const bench_run *run, uint64_t sent, uint8_t outcome, uint64_t count,
                              uint64_t *len)
{
	uint64_t *list = malloc((count < UNKNOWN_TRACKED_MAX ? count : UNKNOWN_TRACKED_MAX) *
	                        sizeof(*list));
	*len = 0;
	for (uint64_t k = 0; list && k < sent && *len < UNKNOWN_TRACKED_MAX; k++)
		if (run->outcomes[k] == outcome)
			list[(*len)++] = k;
	return list;
}

void bench_verify(bench_run *run, bench_verify_report *report)
{
	const bench_config *config = run->config;
	int64_t started_us = kobo_monotonic_us();
	int64_t deadline_us = started_us + (int64_t)(config->verify_timeout_s * 1e6);
	memset(report, 0, sizeof(*report));
	report->complete = true;
	report->balances_complete = false;
	verify_ctx ctx = {.run = run, .report = report};
	pthread_mutex_init(&ctx.print_lock, NULL);
	uint32_t n = config->accounts;
	uint64_t sent = atomic_load(&run->transfers_next);
	if (sent > BENCH_TRANSFERS_MAX)
		sent = BENCH_TRANSFERS_MAX;

	/* 0. Wait for transfers answered 202, within a quarter of the budget. */
	uint64_t accepted = count_outcome(run, sent, BENCH_OUTCOME_ACCEPTED);
	report->accepted = accepted;
	if (accepted > 0) {
		ctx.accepted = list_outcome(run, sent, BENCH_OUTCOME_ACCEPTED, accepted, &ctx.accepted_len);
		fprintf(stderr, "verify: %llu transfers were answered 202 (processing); waiting for their "
		        "sagas to settle\n", (unsigned long long)accepted);
		if (ctx.accepted)
			run_settle(&ctx, started_us + (deadline_us - started_us) / 4);
		uint64_t still = count_outcome(run, sent, BENCH_OUTCOME_ACCEPTED);
		report->unsettled = still;
		report->compensated = atomic_load(&ctx.compensated);
		fprintf(stderr, "verify: %llu of them settled (%llu compensated: the payer refunded)%s\n",
		        (unsigned long long)(accepted - still), (unsigned long long)report->compensated,
		        still ? "; the rest are checked with bounds, not equality" : "");
		free(ctx.accepted);
		ctx.accepted = NULL;
	}

	/* 1. Resolve unknown outcomes, within a quarter of the budget. */
	uint64_t unknown = count_outcome(run, sent, BENCH_OUTCOME_UNKNOWN);
	uint64_t acked = count_outcome(run, sent, BENCH_OUTCOME_POSTED);
	report->unknown = unknown;
	if (unknown > 0) {
		ctx.unknown = list_outcome(run, sent, BENCH_OUTCOME_UNKNOWN, unknown, &ctx.unknown_len);
		fprintf(stderr, "verify: %llu transfers of unknown outcome; sending them again (same ids) "
		        "to learn it\n", (unsigned long long)unknown);
		if (ctx.unknown)
			run_resolution(&ctx, kobo_monotonic_us() + (deadline_us - started_us) / 4);
		uint64_t still = count_outcome(run, sent, BENCH_OUTCOME_UNKNOWN);
		report->unresolved = still;
		if (still > 0)
			fprintf(stderr, "verify: %llu transfers still of unknown outcome: their accounts are "
			        "checked with bounds, not equality\n", (unsigned long long)still);
		free(ctx.unknown);
		ctx.unknown = NULL;
	}

	/* 2. Balances (the invariants need all of them). */
	ctx.posted = calloc((size_t)n + 1, sizeof(*ctx.posted));
	ctx.available = calloc((size_t)n + 1, sizeof(*ctx.available));
	ctx.balance_read = calloc((size_t)n + 1, 1);
	if (!ctx.posted || !ctx.available || !ctx.balance_read) {
		fprintf(stderr, "verify: out of memory\n");
		report->complete = false;
		goto done;
	}
	atomic_store(&run->items_next, 0);
	bench_job accounts_job = {
		.next = account_next,
		.finish = account_finish,
		.stop_sending_us = deadline_us,
		.abandon_us = deadline_us,
		.ctx = &ctx,
	};
	bench_run_job(run->workers, run->worker_count, &accounts_job);
	check_balances(&ctx);

	/* 3. Every acknowledged transfer, with what is left of the budget. */
	ctx.acked = malloc((acked ? acked : 1) * sizeof(*ctx.acked));
	if (!ctx.acked) {
		report->complete = false;
		goto done;
	}
	for (uint64_t k = 0; k < sent; k++)
		if (run->outcomes[k] == BENCH_OUTCOME_POSTED)
			ctx.acked[ctx.acked_len++] = k;
	report->transfers_to_check = ctx.acked_len;
	atomic_store(&run->items_next, 0);
	bench_job transfers_job = {
		.next = transfer_next,
		.finish = transfer_finish,
		.stop_sending_us = deadline_us,
		.abandon_us = deadline_us + 2000000,
		.ctx = &ctx,
	};
	bench_run_job(run->workers, run->worker_count, &transfers_job);
	report->transfers_checked = atomic_load(&ctx.transfers_checked);
	if (report->transfers_checked < report->transfers_to_check) {
		report->complete = false;
		fprintf(stderr, "verify: checked %llu of %llu acknowledged transfers before the %.0f s "
		        "verification timeout\n", (unsigned long long)report->transfers_checked,
		        (unsigned long long)report->transfers_to_check, config->verify_timeout_s);
	}

done:
	report->violations = atomic_load(&ctx.violations);
	report->verify_s = (double)(kobo_monotonic_us() - started_us) / 1e6;
	if (report->violations > 0)
		fprintf(stderr, "verify: FAILED: %llu violations\n", (unsigned long long)report->violations);
	else
		fprintf(stderr, "verify: ok%s (%llu of %llu acknowledged transfers found posted; %llu of %u "
		        "balances match; conservation %s; %llu unresolved; %llu answered 202, %llu of them "
		        "unsettled; %.1f s)\n",
		        report->complete ? "" : " (incomplete)",
		        (unsigned long long)report->transfers_checked,
		        (unsigned long long)report->transfers_to_check,
		        (unsigned long long)atomic_load(&ctx.balances_read), n + 1,
		        atomic_load(&ctx.balances_read) == (uint64_t)n + 1 && report->complete ? "holds"
		                                                                               : "not checked",
		        (unsigned long long)report->unresolved, (unsigned long long)report->accepted,
		        (unsigned long long)report->unsettled, report->verify_s);
	free(ctx.acked);
	free(ctx.posted);
	free(ctx.available);
	free(ctx.balance_read);
	pthread_mutex_destroy(&ctx.print_lock);
}
