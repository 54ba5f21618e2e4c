/*
 * workload.c — what kobo-bench sends: the setup jobs (accounts, funding), the
 * transfer workload (open and closed loop) and the live line.
 *
 * Transfer k is a pure function of (seed, workload, k) — see
 * bench_transfer_make() — so the workload stores one outcome byte per
 * transfer and the verifier recomputes everything else.
 *
 * Outcomes, from what the server answered (DESIGN.md §1 invariants 2 and 3):
 *   201                          POSTED       acknowledged, must exist
 *   202                          ACCEPTED     acknowledged, its cross-shard saga
 *                                             still running: verify.c waits
 *                                             until it settles
 *   422                          REJECTED     a business rule refused it
 *   other 4xx, 429,              NOT_APPLIED  refused whole, moved nothing
 *   503 overloaded
 *   200 to a new id, other 5xx,  UNKNOWN      may or may not have moved;
 *   503 storage_unavailable or   verify.c resolves these. kobod's
 *   without kobod's code,        storage_unavailable may follow a COMMIT
 *   transport error              cut off by a failover (its outcome is
 *                                unknown), and a load balancer's own 503
 *                                may follow an attempt that reached a node
 *
 * Open loop (--rate): request j of a worker is due at start + j * interval.
 * When no connection is free it simply stays due; its latency is measured
 * from the due time, so a stalled server shows up in the percentiles instead
 * of slowing the generator down (no coordinated omission).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../obs/obs.h"
#include "bench.h"

const char *const bench_reject_names[BENCH_REJECT_COUNT] = {
	[BENCH_REJECT_INSUFFICIENT_FUNDS] = "insufficient_funds",
	[BENCH_REJECT_ACCOUNT_NOT_FOUND] = "account_not_found",
	[BENCH_REJECT_CURRENCY_MISMATCH] = "currency_mismatch",
	[BENCH_REJECT_SAME_ACCOUNT] = "same_account",
	[BENCH_REJECT_AMOUNT_OVERFLOW] = "amount_overflow",
	[BENCH_REJECT_OTHER] = "other",
};

bench_reject bench_reject_from_code(const char *code, size_t len)
{
	for (int i = 0; i < BENCH_REJECT_OTHER; i++)
		if (strlen(bench_reject_names[i]) == len && memcmp(bench_reject_names[i], code, len) == 0)
			return (bench_reject)i;
	return BENCH_REJECT_OTHER;
}

/* ---- The transfer model. ---- */

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint64_t draw(const bench_config *config, uint64_t k, uint64_t lane)
{
	return mix64(config->seed ^ mix64(k * 4 + lane));
}

/* Draws of the shard model, independent of the four lanes above. */
static uint64_t draw_shard(const bench_config *config, uint64_t k, uint64_t lane)
{
	return mix64(mix64(config->seed + 0x632be59bd9b4e019ull * (lane + 1)) ^ mix64(k));
}

/* An account on shard s other than `exclude`, from random r. */
static uint32_t pick_on_shard(const bench_config *config, uint32_t s, uint64_t r, uint32_t exclude)
{
	uint32_t first = config->shard_first[s], count = config->shard_first[s + 1] - first;
	uint32_t i = (uint32_t)(r % count);
	if (config->shard_accounts[first + i] == exclude)
		i = (i + 1) % count; /* bench_shards_init() made count >= 2 */
	return config->shard_accounts[first + i];
}

/* The counterpart of `anchor` in transfer k with shards: on another shard
 * for cross_shard_pct % of the transfers, else on anchor's own shard. */
static uint32_t pick_counterpart(const bench_config *config, uint64_t k, uint32_t anchor)
{
	uint32_t s = config->account_shard[anchor];
	if (draw_shard(config, k, 0) % 100 < config->cross_shard_pct)
		s = (s + 1 + (uint32_t)(draw_shard(config, k, 1) % (config->shards - 1))) % config->shards;
	return pick_on_shard(config, s, draw_shard(config, k, 2), anchor);
}

bool bench_transfer_is_cross(const bench_config *config, bench_transfer t)
{
	return config->account_shard && config->account_shard[t.from] != config->account_shard[t.to];
}

bench_transfer bench_transfer_make(const bench_config *config, uint64_t k)
{
	uint32_t n = config->accounts;
	uint64_t a = draw(config, k, 0), b = draw(config, k, 1);
	bench_transfer t = {.amount_minor = 1 + (int64_t)(draw(config, k, 2) % config->amount_max_minor)};
	if (config->cross_shard_model && config->account_shard) {
		/* With --cross-shard: one side as without them (the hot account, the
		 * merchant, a uniform payer), the other by pick_counterpart(). */
		switch (config->mode) {
		case BENCH_MODE_HOT: {
			uint32_t hot = (uint32_t)(a % config->hot);
			uint32_t other = pick_counterpart(config, k, hot);
			bool hot_pays = draw(config, k, 3) & 1;
			t.from = hot_pays ? hot : other;
			t.to = hot_pays ? other : hot;
			break;
		}
		case BENCH_MODE_MERCHANT:
			t.to = 0;
			t.from = pick_counterpart(config, k, 0);
			break;
		case BENCH_MODE_UNIFORM:
		default:
			t.from = (uint32_t)(a % n);
			t.to = pick_counterpart(config, k, t.from);
			break;
		}
		return t;
	}
	switch (config->mode) {
	case BENCH_MODE_HOT: {
		uint32_t hot = (uint32_t)(a % config->hot);
		uint32_t other = (uint32_t)(b % (n - 1));
		if (other >= hot)
			other++;
		bool hot_pays = draw(config, k, 3) & 1;
		t.from = hot_pays ? hot : other;
		t.to = hot_pays ? other : hot;
		break;
	}
	case BENCH_MODE_MERCHANT:
		t.to = 0;
		t.from = 1 + (uint32_t)(a % (n - 1));
		break;
	case BENCH_MODE_UNIFORM:
	default:
		t.from = (uint32_t)(a % n);
		t.to = (uint32_t)(b % (n - 1));
		if (t.to >= t.from)
			t.to++;
		break;
	}
	return t;
}

void bench_account_id(const bench_config *config, uint32_t account, char *dst)
{
	snprintf(dst, KOBO_ID_LEN_MAX + 1, "%sa%u", config->prefix, account);
}

void bench_cash_id(const bench_config *config, char *dst)
{
	snprintf(dst, KOBO_ID_LEN_MAX + 1, "%scash", config->prefix);
}

void bench_transfer_id(const bench_config *config, uint64_t k, char *dst)
{
	snprintf(dst, KOBO_ID_LEN_MAX + 1, "%st%llu", config->prefix, (unsigned long long)k);
}

int bench_transfer_json(bench_buf *buf, const bench_config *config, uint64_t k)
{
	bench_transfer t = bench_transfer_make(config, k);
	return bench_buf_printf(buf,
	                        "{\"id\":\"%st%llu\",\"from\":\"%sa%u\",\"to\":\"%sa%u\","
	                        "\"amount\":%lld,\"currency\":\"" BENCH_CURRENCY "\"}",
	                        config->prefix, (unsigned long long)k, config->prefix, t.from,
	                        config->prefix, t.to, (long long)t.amount_minor);
}

static int funding_json(bench_buf *buf, const bench_config *config, uint32_t account)
{
	return bench_buf_printf(buf,
	                        "{\"id\":\"%sf%u\",\"from\":\"%scash\",\"to\":\"%sa%u\","
	                        "\"amount\":%lld,\"currency\":\"" BENCH_CURRENCY "\"}",
	                        config->prefix, account, config->prefix, config->prefix, account,
	                        (long long)config->fund_amount_minor);
}

/* ---- Scanning answers without a full JSON parse. ---- */

/* Finds `"key"` (not escaped) followed by ':' at or after from; returns the
 * position after the ':' and spaces, or NULL. */
static const char *find_key(const char *from, const char *end, const char *key)
{
	size_t key_len = strlen(key);
	while (from < end) {
		const char *hit = memmem(from, (size_t)(end - from), key, key_len);
		if (!hit)
			return NULL;
		const char *p = hit + key_len;
		from = p;
		if (hit[-1] == '\\')
			continue;
		while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r'))
			p++;
		if (p >= end || *p != ':')
			continue;
		p++;
		while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r'))
			p++;
		return p;
	}
	return NULL;
}

static bench_reject reject_at(const char *p, const char *end)
{
	p = find_key(p, end, "\"code\"");
	if (!p || p >= end || *p != '"')
		return BENCH_REJECT_OTHER;
	const char *q = memchr(p + 1, '"', (size_t)(end - p - 1));
	if (!q)
		return BENCH_REJECT_OTHER;
	return bench_reject_from_code(p + 1, (size_t)(q - p - 1));
}

bool bench_body_says_overloaded(const char *body, size_t len)
{
	static const char code[] = "overloaded";
	if (len < 2)
		return false;
	const char *end = body + len;
	const char *p = find_key(body + 1, end, "\"code\"");
	return p && (size_t)(end - p) > sizeof code && *p == '"' &&
	       memcmp(p + 1, code, sizeof code - 1) == 0 && p[sizeof code] == '"';
}

bench_reject bench_reject_in_body(const char *body, size_t len)
{
	if (len == 0)
		return BENCH_REJECT_OTHER;
	return reject_at(body, body + len);
}

size_t bench_scan_batch(const char *body, size_t len, uint16_t *statuses, uint8_t *rejects, size_t cap)
{
	/* A result is {"id": …, "status": <int>, "transfer"|"error": …}; the
	 * transfer object's own "status" is a string, so only integer values
	 * count. The body starts after the first byte so hit[-1] is valid. */
	if (len < 2)
		return 0;
	const char *p = body + 1, *end = body + len;
	size_t n = 0;
	while ((p = find_key(p, end, "\"status\"")) != NULL) {
		if (*p < '0' || *p > '9')
			continue;
		unsigned status = 0;
		while (p < end && *p >= '0' && *p <= '9' && status < 1000)
			status = status * 10 + (unsigned)(*p++ - '0');
		if (n == cap)
			return cap + 1; /* more results than transfers sent */
		statuses[n] = (uint16_t)status;
		rejects[n] = status == 422 ? (uint8_t)reject_at(p, end) : BENCH_REJECT_OTHER;
		n++;
	}
	return n;
}

/* ---- Setup: accounts, then funding. ---- */

enum { SETUP_ACCOUNTS, SETUP_FUNDING };

typedef struct setup_ctx {
	bench_run *run;
	int kind;
	uint64_t items;
	/* The first failure, written once by whichever worker saw it first and
	 * read after the workers are joined: the one message says what it was. */
	atomic_flag first_taken;
	char first_failure[400];
	int first_status;
} setup_ctx;

#define RETRY_ATTEMPT_SHIFT 40
#define RETRY_ITEM_MASK ((1ull << RETRY_ATTEMPT_SHIFT) - 1)

void bench_retry_push(bench_worker *worker, uint64_t item, uint32_t attempt, int64_t not_before_us)
{
	if (worker->retry_len + 2 > worker->retry_cap) {
		size_t cap = worker->retry_cap ? worker->retry_cap * 2 : 256;
		uint64_t *retry = realloc(worker->retry, cap * sizeof(*retry));
		if (!retry)
			abort(); /* a few KiB; out of memory here is not recoverable */
		worker->retry = retry;
		worker->retry_cap = cap;
	}
	worker->retry[worker->retry_len++] = item | ((uint64_t)attempt << RETRY_ATTEMPT_SHIFT);
	worker->retry[worker->retry_len++] = (uint64_t)not_before_us;
}

int bench_item_next(bench_run *run, bench_worker *worker, uint64_t items, int64_t now_us,
                    int64_t *wake_us, uint64_t *item, uint32_t *attempt)
{
	if (worker->retry_len > 0 && (int64_t)worker->retry[worker->retry_len - 1] <= now_us) {
		uint64_t entry = worker->retry[worker->retry_len - 2];
		worker->retry_len -= 2;
		*item = entry & RETRY_ITEM_MASK;
		*attempt = (uint32_t)(entry >> RETRY_ATTEMPT_SHIFT);
		return BENCH_JOB_SENT;
	}
	uint64_t next = atomic_load_explicit(&run->items_next, memory_order_relaxed);
	if (next < items)
		next = atomic_fetch_add(&run->items_next, 1);
	if (next < items) {
		*item = next;
		*attempt = 0;
		return BENCH_JOB_SENT;
	}
	if (worker->retry_len > 0) {
		*wake_us = (int64_t)worker->retry[worker->retry_len - 1];
		return BENCH_JOB_WAIT;
	}
	if (worker->busy > 0) {
		*wake_us = now_us + 1000000; /* an answer may still ask for a retry */
		return BENCH_JOB_WAIT;
	}
	return BENCH_JOB_DONE;
}

static int setup_next(bench_job *job, bench_worker *worker, bench_conn *conn, int64_t now_us,
                      int64_t *wake_us)
{
	setup_ctx *ctx = job->ctx;
	bench_run *run = ctx->run;
	const bench_config *config = run->config;
	uint64_t item;
	uint32_t attempt;
	int next = bench_item_next(run, worker, ctx->items, now_us, wake_us, &item, &attempt);
	if (next != BENCH_JOB_SENT)
		return next;
	conn->tag = item;
	conn->attempt = attempt;
	bench_buf *body = &worker->scratch;
	body->len = 0;
	int rc;
	const char *path = "/v1/transfers";
	if (ctx->kind == SETUP_ACCOUNTS) {
		path = "/v1/accounts";
		if (item == config->accounts)
			rc = bench_buf_printf(body, "{\"id\":\"%scash\",\"currency\":\"" BENCH_CURRENCY
			                      "\",\"allow_negative\":true}", config->prefix);
		else
			rc = bench_buf_printf(body, "{\"id\":\"%sa%u\",\"currency\":\"" BENCH_CURRENCY
			                      "\",\"allow_negative\":false}", config->prefix, (uint32_t)item);
	} else if (config->setup_batch == 0) {
		rc = funding_json(body, config, (uint32_t)item);
	} else {
		path = "/v1/transfers/batch";
		uint64_t first = item * config->setup_batch;
		uint64_t last = first + config->setup_batch;
		if (last > config->accounts)
			last = config->accounts;
		conn->tag_count = last - first;
		rc = bench_buf_printf(body, "{\"atomic\":false,\"transfers\":[");
		for (uint64_t a = first; rc == KOBO_OK && a < last; a++) {
			if (a > first)
				rc = bench_buf_append(body, ",", 1);
			if (rc == KOBO_OK)
				rc = funding_json(body, config, (uint32_t)a);
		}
		if (rc == KOBO_OK)
			rc = bench_buf_append(body, "]}", 2);
	}
	if (rc == KOBO_OK)
		rc = bench_conn_request(conn, "POST", path, body->data, body->len);
	if (rc != KOBO_OK) {
		fprintf(stderr, "kobo-bench: out of memory building a request\n");
		atomic_fetch_add(&run->items_failed, 1);
		return BENCH_JOB_DONE;
	}
	return BENCH_JOB_SENT;
}

/* Worth another attempt. 202: a cross-shard funding transfer whose saga
 * is still running; sending it again (same id) waits for it and answers
 * its final state. */
static bool status_is_transient(int status)
{
	return status == 0 || status == 202 || status == 429 || status >= 500;
}

static void setup_failure(setup_ctx *ctx, const char *what, uint64_t item, int status, const char *body,
                          size_t body_len)
{
	atomic_fetch_add(&ctx->run->items_failed, 1);
	if (atomic_flag_test_and_set(&ctx->first_taken))
		return;
	ctx->first_status = status;
	/* One line: the body's control characters (newlines) become spaces. */
	int len;
	if (status)
		len = snprintf(ctx->first_failure, sizeof(ctx->first_failure), "%s %llu: HTTP %d %.*s", what,
		               (unsigned long long)item, status, (int)(body_len > 300 ? 300 : body_len),
		               body ? body : "");
	else
		len = snprintf(ctx->first_failure, sizeof(ctx->first_failure),
		               "%s %llu: no answer (connection lost or timed out)", what,
		               (unsigned long long)item);
	for (int i = 0; i < len && i < (int)sizeof(ctx->first_failure) - 1; i++)
		if ((unsigned char)ctx->first_failure[i] < 0x20)
			ctx->first_failure[i] = ' ';
}

static void setup_finish(bench_job *job, bench_worker *worker, bench_conn *conn, int status,
                         const char *body, size_t body_len, int64_t now_us)
{
	setup_ctx *ctx = job->ctx;
	const char *what = ctx->kind == SETUP_ACCOUNTS              ? "account"
	                   : ctx->run->config->setup_batch == 0 ? "funding transfer"
	                                                         : "funding batch";
	bool transient = status_is_transient(status);
	bool processing = status == 202;
	bool ok = false;
	if (ctx->kind == SETUP_ACCOUNTS || ctx->run->config->setup_batch == 0) {
		ok = status == 201 || status == 200;
		if (ctx->kind == SETUP_ACCOUNTS && status == 200 && conn->attempt == 0)
			atomic_fetch_add(&ctx->run->prefix_reused, 1);
	} else if (status == 200) {
		static _Thread_local uint16_t statuses[BENCH_BATCH_MAX];
		static _Thread_local uint8_t rejects[BENCH_BATCH_MAX];
		size_t n = bench_scan_batch(body, body_len, statuses, rejects, BENCH_BATCH_MAX);
		ok = n == conn->tag_count;
		for (size_t i = 0; ok && i < n; i++) {
			if (status_is_transient(statuses[i]))
				transient = true;
			if (statuses[i] == 202)
				processing = true;
			if (statuses[i] != 200 && statuses[i] != 201) {
				ok = false;
				status = statuses[i];
			}
		}
	}
	if (ok)
		return;
	/* Sagas still running (the server answers 202 at once when too many
	 * requests wait for sagas) settle on their own: ask again later, for
	 * longer than for a refusal. */
	uint32_t attempts = processing ? BENCH_SETUP_PROCESSING_ATTEMPTS_MAX
	                               : BENCH_SETUP_ATTEMPTS_MAX;
	if (transient && conn->attempt + 1 < attempts) {
		int64_t delay_us = processing ? 500000 : 50000ll * (conn->attempt + 1);
		bench_retry_push(worker, conn->tag, conn->attempt + 1, now_us + delay_us);
		return;
	}
	setup_failure(ctx, what, conn->tag, status, body, body_len);
}

/* Prints setup progress once a second until the workers are done. */
static void setup_progress(bench_run *run, const char *what, uint64_t items, uint64_t per_item)
{
	int64_t started_us = kobo_monotonic_us();
	int64_t next_us = started_us + 1000000;
	while (atomic_load(&bench_workers_running) > 0) {
		struct timespec pause = {.tv_nsec = 20 * 1000 * 1000};
		nanosleep(&pause, NULL);
		int64_t now_us = kobo_monotonic_us();
		if (now_us < next_us)
			continue;
		next_us += 1000000;
		uint64_t done = atomic_load(&run->items_next);
		if (done > items)
			done = items;
		fprintf(stderr, "setup: %s %llu/%llu (%.0f s)\n", what,
		        (unsigned long long)(done * per_item), (unsigned long long)(items * per_item),
		        (double)(now_us - started_us) / 1e6);
	}
}

static int run_setup_job(bench_run *run, int kind)
{
	const bench_config *config = run->config;
	setup_ctx ctx = {.run = run, .kind = kind, .first_taken = ATOMIC_FLAG_INIT};
	uint64_t per_item = 1;
	if (kind == SETUP_ACCOUNTS) {
		ctx.items = (uint64_t)config->accounts + 1;
	} else if (config->setup_batch == 0) {
		ctx.items = config->accounts;
	} else {
		per_item = config->setup_batch;
		ctx.items = (config->accounts + config->setup_batch - 1) / config->setup_batch;
	}
	atomic_store(&run->items_next, 0);
	atomic_store(&run->items_failed, 0);
	int64_t now_us = kobo_monotonic_us();
	bench_job job = {
		.next = setup_next,
		.finish = setup_finish,
		.stop_sending_us = now_us + BENCH_SETUP_TIMEOUT_US,
		.abandon_us = now_us + BENCH_SETUP_TIMEOUT_US + BENCH_DRAIN_TIMEOUT_US,
		.give_up_unconnected_us = BENCH_SETUP_UNCONNECTED_US,
		.ctx = &ctx,
	};
	bench_job_start(run->workers, run->worker_count, &job);
	setup_progress(run, kind == SETUP_ACCOUNTS ? "accounts" : "funding", ctx.items,
		               per_item);
	bench_job_wait(run->workers, run->worker_count);
	uint64_t failed = atomic_load(&run->items_failed);
	uint64_t reached = atomic_load(&run->items_next);
	/* Items still waiting for a retry when the workers stopped were never
	 * done: a setup that left them is a failed one. */
	uint64_t pending = 0;
	bool gave_up = false;
	for (uint32_t i = 0; i < run->worker_count; i++) {
		pending += run->workers[i].retry_len / 2;
		gave_up |= run->workers[i].gave_up;
		run->workers[i].retry_len = 0;
	}
	if (gave_up) {
		fprintf(stderr, "kobo-bench: setup failed: %s: no connection to %s for %.0f s (the server "
		        "went away?); nothing measured\n", kind == SETUP_ACCOUNTS ? "accounts" : "funding",
		        config->url, BENCH_SETUP_UNCONNECTED_US / 1e6);
		return BENCH_EXIT_UNREACHABLE;
	}
	if (failed > 0 || reached < ctx.items || pending > 0 || atomic_load(&bench_stop_requested)) {
		/* The one message of a failed setup; nothing is measured after it. */
		const char *what = kind == SETUP_ACCOUNTS ? "accounts" : "funding";
		const char *unit = kind == SETUP_ACCOUNTS ? "requests"
		                   : config->setup_batch == 0 ? "transfers" : "batches";
		if (reached > ctx.items)
			reached = ctx.items;
		/* 401/403: the key, not the server. */
		const char *hint = ctx.first_status == 401
			? (config->auth_header[0] != '\0' ? " (the API key was refused: unknown, "
			   "revoked or malformed)" : " (the server requires an API key: --key KEY "
			   "or KOBO_API_KEY)")
			: ctx.first_status == 403 ? " (the API key lacks a scope: the run needs "
			  "accounts:write and transfers:write, verify the read scopes; admin has all)"
			: "";
		if (failed > 0)
			fprintf(stderr, "kobo-bench: setup failed: %llu of %llu %s %s refused after retries "
			        "(first: %s)%s; nothing measured\n", (unsigned long long)failed,
			        (unsigned long long)ctx.items, what, unit, ctx.first_failure, hint);
		else
			fprintf(stderr, "kobo-bench: setup failed: %s %s: %llu of %llu done (%s); nothing "
			        "measured\n", what, unit, (unsigned long long)(reached - pending),
			        (unsigned long long)ctx.items,
			        atomic_load(&bench_stop_requested) ? "interrupted" : "setup time limit reached");
		return BENCH_EXIT_UNREACHABLE;
	}
	return BENCH_EXIT_OK;
}

int bench_setup(bench_run *run)
{
	int64_t started_us = kobo_monotonic_us();
	int rc = run_setup_job(run, SETUP_ACCOUNTS);
	if (rc != BENCH_EXIT_OK)
		return rc;
	if (atomic_load(&run->prefix_reused) > 0) {
		fprintf(stderr,
		        "kobo-bench: %llu accounts with prefix \"%s\" already existed; a run needs a "
		        "fresh --prefix (the default is a new random one)\n",
		        (unsigned long long)atomic_load(&run->prefix_reused), run->config->prefix);
		return BENCH_EXIT_UNREACHABLE;
	}
	rc = run_setup_job(run, SETUP_FUNDING);
	run->setup_s = (double)(kobo_monotonic_us() - started_us) / 1e6;
	return rc;
}

/* ---- The workload. ---- */

typedef struct workload_ctx {
	bench_run *run;
	double interval_us; /* per worker, open loop; 0 = closed loop */
	uint32_t per_request;
} workload_ctx;

static int workload_next(bench_job *job, bench_worker *worker, bench_conn *conn, int64_t now_us,
                         int64_t *wake_us)
{
	workload_ctx *ctx = job->ctx;
	bench_run *run = ctx->run;
	const bench_config *config = run->config;
	if (ctx->interval_us > 0) {
		int64_t due_us = run->workload_start_us + (int64_t)((double)worker->job_sent * ctx->interval_us);
		if (due_us > now_us) {
			*wake_us = due_us;
			return BENCH_JOB_WAIT;
		}
		conn->start_us = due_us;
	}
	uint64_t k = atomic_fetch_add(&run->transfers_next, ctx->per_request);
	if (k + ctx->per_request > BENCH_TRANSFERS_MAX) {
		fprintf(stderr, "kobo-bench: %llu transfers sent, the most one run records\n",
		        (unsigned long long)BENCH_TRANSFERS_MAX);
		return BENCH_JOB_DONE;
	}
	conn->tag = k;
	conn->tag_count = ctx->per_request;
	worker->job_sent++;
	int rc;
	if (config->batch == 0) {
		bench_buf *body = &worker->scratch;
		body->len = 0;
		rc = bench_transfer_json(body, config, k);
		if (rc == KOBO_OK)
			rc = bench_conn_request(conn, "POST", "/v1/transfers", body->data, body->len);
	} else {
		bench_buf *body = &worker->scratch;
		body->len = 0;
		rc = bench_buf_printf(body, "{\"atomic\":false,\"transfers\":[");
		for (uint32_t i = 0; rc == KOBO_OK && i < config->batch; i++) {
			if (i > 0)
				rc = bench_buf_append(body, ",", 1);
			if (rc == KOBO_OK)
				rc = bench_transfer_json(body, config, k + i);
		}
		if (rc == KOBO_OK)
			rc = bench_buf_append(body, "]}", 2);
		if (rc == KOBO_OK)
			rc = bench_conn_request(conn, "POST", "/v1/transfers/batch", body->data, body->len);
	}
	if (rc != KOBO_OK) {
		fprintf(stderr, "kobo-bench: out of memory building a request\n");
		return BENCH_JOB_DONE;
	}
	return BENCH_JOB_SENT;
}

/* Classifies one transfer's answer; returns its outcome and counts it. */
static bench_outcome classify(bench_counts *counts, bench_interval *interval, int status, bench_reject reject,
                              bool overloaded)
{
	counts->status[status >= 0 && status < 600 ? status : 0]++;
	if (status == 201) {
		counts->transfers_acked++;
		interval->transfers_acked++;
		return BENCH_OUTCOME_POSTED;
	}
	if (status == 422) {
		counts->rejected[reject]++;
		interval->rejected++;
		return BENCH_OUTCOME_REJECTED;
	}
	if (status == 202) {
		counts->transfers_accepted++;
		return BENCH_OUTCOME_ACCEPTED;
	}
	interval->errors++;
	if (status == 0) {
		counts->errors_transport++;
	} else {
		counts->errors_http++;
	}
	if (status == 0 || status == 200 || (status >= 500 && !(status == 503 && overloaded))) {
		counts->transfers_unknown++;
		return BENCH_OUTCOME_UNKNOWN;
	}
	counts->transfers_refused++;
	return BENCH_OUTCOME_NOT_APPLIED;
}

static void workload_finish(bench_job *job, bench_worker *worker, bench_conn *conn, int status,
                            const char *body, size_t body_len, int64_t now_us)
{
	workload_ctx *ctx = job->ctx;
	bench_run *run = ctx->run;
	uint64_t k = conn->tag;
	uint64_t n = conn->tag_count;
	bench_counts *counts = &worker->counts;
	bench_interval delta = {0};
	int64_t latency_us = now_us - conn->start_us;

	if (run->config->account_shard) {
		uint64_t cross = 0;
		for (uint64_t i = 0; i < n; i++)
			cross += bench_transfer_is_cross(run->config, bench_transfer_make(run->config, k + i));
		if (status != 0) {
			counts->transfers_cross += cross;
			bench_hist_record(&worker->latency_class[cross ? BENCH_CLASS_CROSS : BENCH_CLASS_LOCAL],
			                  latency_us);
		}
	}
	if (status != 0) {
		counts->requests++;
		bench_hist_record(&worker->latency, latency_us);
		worker->job_last_answer_us = now_us;
	}
	if (run->config->batch == 0) {
		bench_reject reject = status == 422 ? bench_reject_in_body(body, body_len) : BENCH_REJECT_OTHER;
		bool overloaded = status == 503 && bench_body_says_overloaded(body, body_len);
		run->outcomes[k] = (uint8_t)classify(counts, &delta, status, reject, overloaded);
	} else {
		static _Thread_local uint16_t statuses[BENCH_BATCH_MAX];
		static _Thread_local uint8_t rejects[BENCH_BATCH_MAX];
		size_t found = status == 200 ? bench_scan_batch(body, body_len, statuses, rejects, n) : 0;
		if (status == 200 && found == n) {
			for (uint64_t i = 0; i < n; i++)
				run->outcomes[k + i] = (uint8_t)classify(counts, &delta, statuses[i],
				                                         (bench_reject)rejects[i], false);
		} else {
			/* The whole request failed: one error, n transfers with that fate. */
			if (status == 200) {
				fprintf(stderr, "kobo-bench: batch answer had %zu results for %llu transfers\n",
				        found, (unsigned long long)n);
				status = 500; /* unreadable: the outcome of each is unknown */
			}
			bool overloaded = status == 503 && bench_body_says_overloaded(body, body_len);
			bench_outcome outcome = classify(counts, &delta, status, BENCH_REJECT_OTHER, overloaded);
			for (uint64_t i = 0; i < n; i++)
				run->outcomes[k + i] = (uint8_t)outcome;
			if (outcome == BENCH_OUTCOME_UNKNOWN)
				counts->transfers_unknown += n - 1;
			else if (outcome == BENCH_OUTCOME_NOT_APPLIED)
				counts->transfers_refused += n - 1;
			counts->status[status >= 0 && status < 600 ? status : 0] += n - 1;
		}
	}
	pthread_mutex_lock(&worker->interval_lock);
	if (status != 0)
		bench_hist_record(&worker->interval.latency, latency_us);
	worker->interval.transfers_acked += delta.transfers_acked;
	worker->interval.rejected += delta.rejected;
	worker->interval.errors += delta.errors;
	pthread_mutex_unlock(&worker->interval_lock);
}

/* Prints one live line per second until the workers are done. */
static void live_lines(bench_run *run)
{
	static bench_interval total; /* 18 KiB: off the stack */
	int64_t next_us = run->workload_start_us + 1000000;
	while (atomic_load(&bench_workers_running) > 0) {
		int64_t now_us = kobo_monotonic_us();
		if (now_us < next_us) {
			int64_t sleep_us = next_us - now_us;
			if (sleep_us > 20000)
				sleep_us = 20000;
			struct timespec pause = {.tv_nsec = sleep_us * 1000};
			nanosleep(&pause, NULL);
			continue;
		}
		memset(&total, 0, sizeof(total));
		bench_hist_reset(&total.latency);
		for (uint32_t i = 0; i < run->worker_count; i++) {
			bench_worker *worker = &run->workers[i];
			pthread_mutex_lock(&worker->interval_lock);
			bench_hist_merge(&total.latency, &worker->interval.latency);
			total.transfers_acked += worker->interval.transfers_acked;
			total.rejected += worker->interval.rejected;
			total.errors += worker->interval.errors;
			memset(&worker->interval, 0, sizeof(worker->interval));
			bench_hist_reset(&worker->interval.latency);
			pthread_mutex_unlock(&worker->interval_lock);
		}
		double elapsed_s = (double)(next_us - run->workload_start_us) / 1e6;
		double seconds = 1.0 + (double)(now_us - next_us) / 1e6;
		fprintf(stderr, "%5.0fs %9.0f transfers/s  p50 %8.3f ms  p99 %8.3f ms  errors %llu  422s %llu\n",
		        elapsed_s, (double)total.transfers_acked / seconds,
		        (double)bench_hist_percentile(&total.latency, 50) / 1000.0,
		        (double)bench_hist_percentile(&total.latency, 99) / 1000.0,
		        (unsigned long long)total.errors, (unsigned long long)total.rejected);
		next_us += 1000000;
		if (next_us <= now_us)
			next_us = now_us + 1000000;
	}
}

void bench_workload(bench_run *run)
{
	const bench_config *config = run->config;
	workload_ctx ctx = {.run = run, .per_request = config->batch ? config->batch : 1};
	if (config->rate_per_s > 0)
		ctx.interval_us = 1e6 * (double)run->worker_count * (double)ctx.per_request /
		                  (double)config->rate_per_s;
	for (uint32_t i = 0; i < run->worker_count; i++) {
		bench_worker *worker = &run->workers[i];
		memset(&worker->counts, 0, sizeof(worker->counts));
		bench_hist_reset(&worker->latency);
		for (int c = 0; c < BENCH_CLASS_COUNT; c++)
			bench_hist_reset(&worker->latency_class[c]);
		memset(&worker->interval, 0, sizeof(worker->interval));
		bench_hist_reset(&worker->interval.latency);
	}
	run->workload_start_us = kobo_monotonic_us();
	int64_t duration_us = (int64_t)(config->duration_s * 1e6);
	bench_job job = {
		.next = workload_next,
		.finish = workload_finish,
		.stop_sending_us = run->workload_start_us + duration_us,
		.abandon_us = run->workload_start_us + duration_us + BENCH_DRAIN_TIMEOUT_US,
		.ctx = &ctx,
	};
	bench_job_start(run->workers, run->worker_count, &job);
	live_lines(run);
	bench_job_wait(run->workers, run->worker_count);
	run->workload_end_us = run->workload_start_us;
	for (uint32_t i = 0; i < run->worker_count; i++) {
		if (run->workers[i].job_last_answer_us > run->workload_end_us)
			run->workload_end_us = run->workers[i].job_last_answer_us;
		/* Open loop: requests that came due but never found a connection. */
		if (ctx.interval_us > 0) {
			int64_t window_us = (job.stop_sending_us < kobo_monotonic_us() ? job.stop_sending_us
			                                                                : kobo_monotonic_us()) -
			                    run->workload_start_us;
			uint64_t due = (uint64_t)((double)window_us / ctx.interval_us);
			run->workers[i].job_failed = due > run->workers[i].job_sent ? due - run->workers[i].job_sent : 0;
		} else {
			run->workers[i].job_failed = 0;
		}
	}
}
