/*
 * obs.h — structured logs and Prometheus metrics.
 *
 * Logs: one JSON object per line on stderr, written with one write(2) so
 * lines from different threads never interleave:
 *   {"ts":"2026-11-25T10:00:00.123Z","level":"info","event":"http_request",
 *    "request_id":"…","route":"POST /v1/transfers","status":201,…}
 *
 * Metrics: fixed arrays of relaxed atomic counters, no locks, no allocation;
 * rendered on demand for GET /metrics.
 */
#ifndef KOBO_OBS_H
#define KOBO_OBS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "../ledger/ledger.h"

/* ---- Logging. ---- */

typedef enum kobo_log_level {
	KOBO_LOG_DEBUG = 0,
	KOBO_LOG_INFO,
	KOBO_LOG_WARN,
	KOBO_LOG_ERROR,
} kobo_log_level;

#define KOBO_LOG_LINE_MAX 2048 /* longer lines are cut and marked */

/* Sets the least severe level written (default INFO). Parses "debug",
 * "info", "warn", "error"; returns KOBO_EINVAL for anything else. */
int kobo_log_set_level_name(const char *name);
void kobo_log_set_level(kobo_log_level level);
bool kobo_log_enabled(kobo_log_level level);

/* Writes one line: ts, level, event, then fields_fmt expanded with printf
 * rules. fields_fmt is the inside of a JSON object without braces, e.g.
 * "\"request_id\":\"%s\",\"status\":%d", or NULL for none. Callers pass only
 * strings already known to need no JSON escaping (validated ids, constants);
 * anything else goes through kobo_json_escape() first. */
void kobo_log(kobo_log_level level, const char *event, const char *fields_fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Escapes src for use inside a JSON string into dst (always NUL-terminated,
 * cut if dst is short). Returns dst. */
char *kobo_json_escape(char *dst, size_t dst_size, const char *src);

/* RFC 3339 UTC with milliseconds ("2026-11-25T10:00:00.123Z") into dst,
 * which must hold 25 bytes. Returns dst. */
char *kobo_format_time_ms(char *dst, int64_t epoch_ms);
/* Wall clock in Unix epoch milliseconds / monotonic microseconds. The wall
 * clock may jump (clock.c): use it for stored timestamps and for comparing
 * them, and the monotonic clock for every wait, timer and age. */
int64_t kobo_now_ms(void);
int64_t kobo_monotonic_us(void);
/* The CLOCK_MONOTONIC instant wait_ms (>= 0) from now, normalized, as
 * pthread_cond_timedwait() takes it for a condition variable initialized by
 * kobo_cond_init_monotonic (and only for one: a condition variable with the
 * default clock would read it as a wall-clock instant long past). */
struct timespec kobo_deadline_after_ms(int64_t wait_ms);
/* pthread_cond_init with CLOCK_MONOTONIC as the clock of timed waits, so
 * that a step of the wall clock neither stretches nor cuts a wait. Returns
 * 0 or pthread's error number; destroy with pthread_cond_destroy. */
int kobo_cond_init_monotonic(pthread_cond_t *cond);

/* ---- Metrics. ---- */

/* Routes are numbered by the HTTP route table; metrics only needs their
 * count and names to render labels. */
#define KOBO_METRICS_ROUTES_MAX 32
#define KOBO_METRICS_SHARDS_MAX 256

/* Registers route names (e.g. "POST /v1/transfers") once at start-up. */
void kobo_metrics_set_routes(const char *const *names, size_t count);

/* A served HTTP request: route index (or count for "unmatched"), status,
 * latency. */
void kobo_metrics_request(size_t route, int status, int64_t latency_us);
/* A committed batch on a shard: ops in it, commit latency. */
void kobo_metrics_batch(uint32_t shard, size_t ops, int64_t commit_us);
/* The shard's queue depth in ops, sampled by the writer. */
void kobo_metrics_queue_depth(uint32_t shard, size_t ops);
/* The most ops the shard's queue holds (--queue-ops), set at shard start:
 * depth / capacity is the queue's saturation. */
void kobo_metrics_queue_capacity(uint32_t shard, size_t ops);
/* Whether the shard's store can commit now (what /readyz asks of every
 * shard), sampled by GET /metrics before it renders. */
void kobo_metrics_shard_ready(uint32_t shard, bool ready);
/* A business rejection or conflict, by result code. */
void kobo_metrics_rejected(kobo_result_code code);
/* A request refused with 503 because a shard queue was full. */
void kobo_metrics_overloaded(uint32_t shard);
/* A request refused 429 by the per-client-IP limit (kobo_rate_limited_total{by="ip"}). */
void kobo_metrics_rate_limited_ip(void);
/* A request refused 429 by the per-key limit (kobo_rate_limited_total{by="key"}). */
void kobo_metrics_rate_limited_key(void);

/* API keys (src/auth). Why a request was refused 401 or 403
 * (kobo_auth_failures_total{reason}). */
typedef enum kobo_auth_failure {
	KOBO_AUTH_FAILURE_MISSING = 0, /* 401: no Authorization header */
	KOBO_AUTH_FAILURE_MALFORMED,   /* 401: not exactly "Bearer <key text>" */
	KOBO_AUTH_FAILURE_UNKNOWN,     /* 401: no live key has that id (or revoked) */
	KOBO_AUTH_FAILURE_SECRET,      /* 401: the id is live, the secret is wrong */
	KOBO_AUTH_FAILURE_SCOPE,       /* 403: the key lacks the route's scope */
	KOBO_AUTH_FAILURE_REASONS
} kobo_auth_failure;
const char *kobo_auth_failure_name(kobo_auth_failure reason); /* "missing", … */
void kobo_metrics_auth_failure(kobo_auth_failure reason);
/* The key ring's refresh from the store failed (kobo_auth_refresh_failures_total). */
void kobo_metrics_auth_refresh_failure(void);
/* Live keys in the key ring after a refresh (kobo_auth_keys). */
void kobo_metrics_auth_keys(size_t live);
/* A hold voided by expiry. */
void kobo_metrics_expired(uint32_t shard, size_t count);

/* Sagas (src/saga). A step's round trip, by kind. */
typedef enum kobo_saga_step_kind {
	KOBO_SAGA_STEP_CREDIT = 0, /* B: SAGA_CREDIT */
	KOBO_SAGA_STEP_ABORT,      /* B: SAGA_ABORT */
	KOBO_SAGA_STEP_POST,       /* B: POST of the credit leg */
	KOBO_SAGA_STEP_VOID,       /* B: VOID of the credit leg */
	KOBO_SAGA_STEP_SETTLE,     /* A: SAGA_SETTLE */
	KOBO_SAGA_STEP_KINDS
} kobo_saga_step_kind;
const char *kobo_saga_step_name(kobo_saga_step_kind kind); /* "credit", … */
void kobo_metrics_saga_step(kobo_saga_step_kind kind, bool ok, int64_t latency_us);
/* A saga finished: its record's final status (pending, posted, voided) and
 * whether the payer was refunded because B refused (compensated). */
void kobo_metrics_saga_finished(kobo_transfer_status status, bool compensated);
/* Sagas the runner is driving now, by state, and how many of them are
 * reported stuck; sampled by the runner. */
void kobo_metrics_sagas_active(size_t reserved, size_t posting, size_t voiding,
                               size_t stuck);

/* Read replicas (kobod --postgres-read): shards 0..count-1 have one; the
 * replica metrics are rendered for those shards only. Called once at
 * start-up. */
void kobo_metrics_replicas(uint32_t count);
/* A replica's state as last sampled: whether it answers as the right
 * shard, and how far its replay trails (store.h kobo_store_position). */
void kobo_metrics_replica_state(uint32_t shard, bool up, int64_t lag_us);
/* A GET read of a shard that has a replica: served by the replica, or by
 * the primary (no usable replica, or it had not replayed the request's
 * token in time). */
void kobo_metrics_replica_read(uint32_t shard, bool replica);

/* The journaled embedded store's usage of one shard (src/store/hot), set
 * after each commit and each projection transaction: records held against
 * their limits (kobo_store_records{shard,kind}, kobo_store_records_max),
 * the frames the SQLite projection has not written yet
 * (kobo_journal_backlog_batches / _bytes{shard}) and the live journal
 * segments (kobo_journal_segments{shard}). Rendered only for shards that
 * reported. */
typedef struct kobo_metrics_journal_usage {
	uint64_t accounts, accounts_max;
	uint64_t transfers, transfers_max;
	uint64_t backlog_batches, backlog_bytes;
	uint64_t segments;
} kobo_metrics_journal_usage;
void kobo_metrics_journal(uint32_t shard, const kobo_metrics_journal_usage *usage);

/* OTLP span export (otlp.c): spans a collector accepted, and spans dropped
 * by reason (kobo_otlp_spans_exported_total,
 * kobo_otlp_spans_dropped_total{reason}). */
typedef enum kobo_otlp_drop {
	KOBO_OTLP_DROP_QUEUE_FULL = 0, /* the ring was full: the exporter is behind */
	KOBO_OTLP_DROP_EXPORT_FAILED,  /* the collector refused or stayed unreachable */
	KOBO_OTLP_DROP_SHUTDOWN,       /* still queued at the stop deadline */
	KOBO_OTLP_DROP_REASONS
} kobo_otlp_drop;
const char *kobo_otlp_drop_name(kobo_otlp_drop reason); /* "queue_full", … */
void kobo_metrics_otlp_exported(size_t spans);
void kobo_metrics_otlp_dropped(kobo_otlp_drop reason, size_t spans);

/* Renders every metric in Prometheus text exposition format 0.0.4 into
 * buf. Returns the length written, or the length needed if buf is too small
 * (then buf holds a truncated prefix). */
size_t kobo_metrics_render(char *buf, size_t cap);

#endif /* KOBO_OBS_H */
