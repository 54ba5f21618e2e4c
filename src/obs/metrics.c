/*
 * metrics.c — Prometheus metrics in fixed arrays of relaxed atomics.
 * Contract in obs.h.
 *
 * Writers (HTTP threads, shard writers) only do relaxed fetch-adds and
 * stores: no lock, no allocation, no false ordering. Readers (GET /metrics)
 * may see a histogram mid-update; _count is rendered as the sum of the
 * buckets, so every rendered histogram is self-consistent (+Inf == _count).
 *
 * What is rendered:
 *   kobo_http_requests_total{route,status}          only pairs that occurred
 *   kobo_http_request_duration_seconds{route}       routes with requests
 *   kobo_batch_ops{shard}                           shards 0..highest seen
 *   kobo_batch_commit_duration_seconds{shard}       shards 0..highest seen
 *   kobo_shard_queue_depth{shard}                   shards 0..highest seen
 *   kobo_shard_queue_capacity{shard}                shards 0..highest seen
 *   kobo_shard_ready{shard}                         shards 0..highest seen
 *   kobo_rejections_total{code}                     every rejection code
 *   kobo_overloaded_total{shard}                    shards 0..highest seen
 *   kobo_rate_limited_total{by="ip"|"key"}          per-client-IP and per-key 429s
 *   kobo_auth_failures_total{reason}                every reason (401 and 403)
 *   kobo_auth_refresh_failures_total                key ring refreshes that failed
 *   kobo_auth_keys                                  live keys in the key ring
 *   kobo_holds_expired_total{shard}                 shards 0..highest seen
 *   kobo_saga_step_duration_seconds{step}           every saga step kind
 *   kobo_saga_steps_failed_total{step}              every saga step kind
 *   kobo_sagas_finished_total{outcome}              pending, posted, voided,
 *                                                   compensated
 *   kobo_sagas_active{state}, kobo_sagas_stuck      sampled by the runner
 *   kobo_replica_up{shard}                          shards with a replica
 *   kobo_replica_lag_seconds{shard}                 shards with a replica
 *   kobo_replica_reads_total{shard,served}          shards with a replica
 *   kobo_store_records{shard,kind}                  journaled shards only
 *   kobo_store_records_max{shard,kind}              journaled shards only
 *   kobo_journal_backlog_batches{shard}, _bytes     journaled shards only
 *   kobo_journal_segments{shard}                    journaled shards only
 *   kobo_otlp_spans_exported_total                  spans a collector accepted
 *   kobo_otlp_spans_dropped_total{reason}           every drop reason
 *
 * kobo_metrics_render() follows snprintf's convention with one refinement:
 * it returns the full length n of the text; min(n, cap) bytes are written;
 * a NUL follows when n < cap. So n <= cap means buf holds the whole text
 * (NUL-terminated only if n < cap), and n > cap means it holds a truncated,
 * NUL-terminated prefix and the caller needs a buffer of n + 1 bytes.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "obs.h"

/* ---- Fixed tables. ---- */

static const int status_codes[] = {200, 201, 202, 400, 404, 405, 409, 413, 422, 429, 500, 503};
#define STATUS_KNOWN (sizeof status_codes / sizeof status_codes[0])
#define STATUS_SLOTS (STATUS_KNOWN + 1) /* the last slot is "other" */

/* Latency buckets, 100 µs to 5 s, 1-2.5-5 log spacing, in microseconds. */
static const int64_t latency_bounds_us[] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000,
	100000, 250000, 500000, 1000000, 2500000, 5000000,
};
static const char *const latency_bounds_label[] = {
	"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
	"0.1", "0.25", "0.5", "1", "2.5", "5",
};
#define LATENCY_BOUNDS (sizeof latency_bounds_us / sizeof latency_bounds_us[0])
_Static_assert(sizeof latency_bounds_label / sizeof latency_bounds_label[0] == LATENCY_BOUNDS,
               "one label per latency bucket");

/* Batch sizes in ops, 1-2-5 spacing up to the largest batch. */
static const int64_t batch_bounds_ops[] = {
	1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 8192,
};
#define BATCH_BOUNDS (sizeof batch_bounds_ops / sizeof batch_bounds_ops[0])
_Static_assert(KOBO_BATCH_OPS_MAX <= 8192, "the last batch bucket covers the largest batch");

/* A histogram: per-bucket (not cumulative) counts, the last one +Inf. */
typedef struct latency_histogram {
	_Atomic uint64_t buckets[LATENCY_BOUNDS + 1];
	_Atomic uint64_t sum_us;
} latency_histogram;

typedef struct batch_histogram {
	_Atomic uint64_t buckets[BATCH_BOUNDS + 1];
	_Atomic uint64_t sum_ops;
} batch_histogram;

/* Route slots: registered routes, then one fixed slot for "unmatched". */
#define ROUTE_SLOTS (KOBO_METRICS_ROUTES_MAX + 1)
#define ROUTE_UNMATCHED KOBO_METRICS_ROUTES_MAX

static const char *route_names[KOBO_METRICS_ROUTES_MAX];
static size_t route_count;

static _Atomic uint64_t requests_total[ROUTE_SLOTS][STATUS_SLOTS];
static latency_histogram request_duration[ROUTE_SLOTS];

/* Highest shard index used plus one; 0 until any shard metric is set. */
static _Atomic uint32_t shards_seen;
static batch_histogram batch_ops[KOBO_METRICS_SHARDS_MAX];
static latency_histogram batch_commit[KOBO_METRICS_SHARDS_MAX];
static _Atomic uint64_t queue_depth[KOBO_METRICS_SHARDS_MAX];
static _Atomic uint64_t queue_capacity[KOBO_METRICS_SHARDS_MAX];
static _Atomic uint64_t shard_ready[KOBO_METRICS_SHARDS_MAX];
/* The journaled store (kobo_metrics_journal): 7 gauges per shard, and
 * whether the shard reported at all. */
enum { J_ACCOUNTS, J_ACCOUNTS_MAX, J_TRANSFERS, J_TRANSFERS_MAX, J_BACKLOG_BATCHES,
       J_BACKLOG_BYTES, J_SEGMENTS, J_GAUGES };
static _Atomic uint64_t journal_gauges[KOBO_METRICS_SHARDS_MAX][J_GAUGES];
static _Atomic bool journal_seen[KOBO_METRICS_SHARDS_MAX];
static _Atomic uint64_t overloaded_total[KOBO_METRICS_SHARDS_MAX];
static _Atomic uint64_t rate_limited_ip_total;
static _Atomic uint64_t rate_limited_key_total;
static _Atomic uint64_t otlp_exported_total;
static _Atomic uint64_t otlp_dropped_total[KOBO_OTLP_DROP_REASONS];
static _Atomic uint64_t auth_failures_total[KOBO_AUTH_FAILURE_REASONS];
static _Atomic uint64_t auth_refresh_failures_total;
static _Atomic uint64_t auth_keys;
static _Atomic uint64_t holds_expired_total[KOBO_METRICS_SHARDS_MAX];

static _Atomic uint64_t rejections_total[KOBO_RESULT_CODE_COUNT];

enum { SAGA_POSTED, SAGA_PENDING, SAGA_VOIDED, SAGA_COMPENSATED, SAGA_OUTCOMES };
static const char *const saga_outcome_names[SAGA_OUTCOMES] = {
	"posted", "pending", "voided", "compensated",
};
static latency_histogram saga_step_duration[KOBO_SAGA_STEP_KINDS];
static _Atomic uint64_t saga_steps_failed[KOBO_SAGA_STEP_KINDS];
static _Atomic uint64_t sagas_finished[SAGA_OUTCOMES];
static _Atomic uint64_t sagas_active[3]; /* reserved, posting, voiding */
static _Atomic uint64_t sagas_stuck;

static _Atomic uint32_t replica_shards;
static _Atomic uint64_t replica_up[KOBO_METRICS_SHARDS_MAX];
static _Atomic uint64_t replica_lag_us[KOBO_METRICS_SHARDS_MAX];
static _Atomic uint64_t replica_reads[KOBO_METRICS_SHARDS_MAX][2]; /* primary, replica */

/* ---- Recording. ---- */

static void add(_Atomic uint64_t *counter, uint64_t n)
{
	atomic_fetch_add_explicit(counter, n, memory_order_relaxed);
}

static void set(_Atomic uint64_t *gauge, uint64_t n)
{
	atomic_store_explicit(gauge, n, memory_order_relaxed);
}

const char *kobo_saga_step_name(kobo_saga_step_kind kind)
{
	static const char *const names[KOBO_SAGA_STEP_KINDS] = {
		"credit", "abort", "post", "void", "settle",
	};
	return (unsigned)kind < KOBO_SAGA_STEP_KINDS ? names[kind] : "unknown";
}

static void latency_observe(latency_histogram *h, int64_t us)
{
	if (us < 0)
		us = 0;
	size_t i = 0;
	while (i < LATENCY_BOUNDS && us > latency_bounds_us[i])
		i++;
	add(&h->buckets[i], 1);
	add(&h->sum_us, (uint64_t)us);
}

/* Records that shard is in use; false if it is past the fixed table. */
static bool shard_use(uint32_t shard)
{
	if (shard >= KOBO_METRICS_SHARDS_MAX)
		return false;
	uint32_t seen = atomic_load_explicit(&shards_seen, memory_order_relaxed);
	while (seen < shard + 1 &&
	       !atomic_compare_exchange_weak_explicit(&shards_seen, &seen, shard + 1,
	                                              memory_order_relaxed,
	                                              memory_order_relaxed)) {
	}
	return true;
}

void kobo_metrics_set_routes(const char *const *names, size_t count)
{
	if (count > KOBO_METRICS_ROUTES_MAX)
		count = KOBO_METRICS_ROUTES_MAX;
	for (size_t i = 0; i < count; i++)
		route_names[i] = names[i];
	route_count = count;
}

void kobo_metrics_request(size_t route, int status, int64_t latency_us)
{
	size_t slot = route < route_count ? route : ROUTE_UNMATCHED;
	size_t s = STATUS_KNOWN;
	for (size_t i = 0; i < STATUS_KNOWN; i++) {
		if (status_codes[i] == status) {
			s = i;
			break;
		}
	}
	add(&requests_total[slot][s], 1);
	latency_observe(&request_duration[slot], latency_us);
}

void kobo_metrics_batch(uint32_t shard, size_t ops, int64_t commit_us)
{
	if (!shard_use(shard))
		return;
	batch_histogram *h = &batch_ops[shard];
	size_t i = 0;
	while (i < BATCH_BOUNDS && (int64_t)ops > batch_bounds_ops[i])
		i++;
	add(&h->buckets[i], 1);
	add(&h->sum_ops, ops);
	latency_observe(&batch_commit[shard], commit_us);
}

void kobo_metrics_queue_depth(uint32_t shard, size_t ops)
{
	if (shard_use(shard))
		atomic_store_explicit(&queue_depth[shard], ops, memory_order_relaxed);
}

void kobo_metrics_queue_capacity(uint32_t shard, size_t ops)
{
	if (shard_use(shard))
		set(&queue_capacity[shard], ops);
}

void kobo_metrics_journal(uint32_t shard, const kobo_metrics_journal_usage *u)
{
	if (!shard_use(shard))
		return;
	_Atomic uint64_t *g = journal_gauges[shard];
	set(&g[J_ACCOUNTS], u->accounts);
	set(&g[J_ACCOUNTS_MAX], u->accounts_max);
	set(&g[J_TRANSFERS], u->transfers);
	set(&g[J_TRANSFERS_MAX], u->transfers_max);
	set(&g[J_BACKLOG_BATCHES], u->backlog_batches);
	set(&g[J_BACKLOG_BYTES], u->backlog_bytes);
	set(&g[J_SEGMENTS], u->segments);
	atomic_store_explicit(&journal_seen[shard], true, memory_order_relaxed);
}

void kobo_metrics_shard_ready(uint32_t shard, bool ready)
{
	if (shard_use(shard))
		set(&shard_ready[shard], ready ? 1 : 0);
}

void kobo_metrics_rejected(kobo_result_code code)
{
	if ((int)code >= 0 && code < KOBO_RESULT_CODE_COUNT)
		add(&rejections_total[code], 1);
}

void kobo_metrics_overloaded(uint32_t shard)
{
	if (shard_use(shard))
		add(&overloaded_total[shard], 1);
}

void kobo_metrics_rate_limited_ip(void)
{
	add(&rate_limited_ip_total, 1);
}

void kobo_metrics_rate_limited_key(void)
{
	add(&rate_limited_key_total, 1);
}

const char *kobo_otlp_drop_name(kobo_otlp_drop reason)
{
	static const char *const names[KOBO_OTLP_DROP_REASONS] = {
		"queue_full", "export_failed", "shutdown",
	};
	return (unsigned)reason < KOBO_OTLP_DROP_REASONS ? names[reason] : "unknown";
}

void kobo_metrics_otlp_exported(size_t spans)
{
	add(&otlp_exported_total, spans);
}

void kobo_metrics_otlp_dropped(kobo_otlp_drop reason, size_t spans)
{
	if ((unsigned)reason < KOBO_OTLP_DROP_REASONS)
		add(&otlp_dropped_total[reason], spans);
}

const char *kobo_auth_failure_name(kobo_auth_failure reason)
{
	static const char *const names[KOBO_AUTH_FAILURE_REASONS] = {
		"missing", "malformed", "unknown_key", "wrong_secret", "scope",
	};
	return (unsigned)reason < KOBO_AUTH_FAILURE_REASONS ? names[reason] : "unknown";
}

void kobo_metrics_auth_failure(kobo_auth_failure reason)
{
	if ((unsigned)reason < KOBO_AUTH_FAILURE_REASONS)
		add(&auth_failures_total[reason], 1);
}

void kobo_metrics_auth_refresh_failure(void)
{
	add(&auth_refresh_failures_total, 1);
}

void kobo_metrics_auth_keys(size_t live)
{
	atomic_store_explicit(&auth_keys, live, memory_order_relaxed);
}

void kobo_metrics_expired(uint32_t shard, size_t count)
{
	if (shard_use(shard))
		add(&holds_expired_total[shard], count);
}

void kobo_metrics_saga_step(kobo_saga_step_kind kind, bool ok, int64_t latency_us)
{
	if ((unsigned)kind >= KOBO_SAGA_STEP_KINDS)
		return;
	latency_observe(&saga_step_duration[kind], latency_us);
	if (!ok)
		add(&saga_steps_failed[kind], 1);
}

void kobo_metrics_saga_finished(kobo_transfer_status status, bool compensated)
{
	if (compensated)
		add(&sagas_finished[SAGA_COMPENSATED], 1);
	else if (status == KOBO_STATUS_POSTED)
		add(&sagas_finished[SAGA_POSTED], 1);
	else if (status == KOBO_STATUS_PENDING)
		add(&sagas_finished[SAGA_PENDING], 1);
	else if (status == KOBO_STATUS_VOIDED)
		add(&sagas_finished[SAGA_VOIDED], 1);
}

void kobo_metrics_sagas_active(size_t reserved, size_t posting, size_t voiding,
                               size_t stuck)
{
	set(&sagas_active[0], reserved);
	set(&sagas_active[1], posting);
	set(&sagas_active[2], voiding);
	set(&sagas_stuck, stuck);
}

void kobo_metrics_replicas(uint32_t count)
{
	atomic_store_explicit(&replica_shards,
	                      count < KOBO_METRICS_SHARDS_MAX ? count : KOBO_METRICS_SHARDS_MAX,
	                      memory_order_relaxed);
}

void kobo_metrics_replica_state(uint32_t shard, bool up, int64_t lag_us)
{
	if (shard >= KOBO_METRICS_SHARDS_MAX)
		return;
	set(&replica_up[shard], up ? 1 : 0);
	set(&replica_lag_us[shard], lag_us > 0 ? (uint64_t)lag_us : 0);
}

void kobo_metrics_replica_read(uint32_t shard, bool replica)
{
	if (shard < KOBO_METRICS_SHARDS_MAX)
		add(&replica_reads[shard][replica ? 1 : 0], 1);
}

/* ---- Rendering. ---- */

typedef struct out {
	char *buf;
	size_t cap;
	size_t len; /* what the full text needs, may exceed cap */
} out;

static void emit(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void emit(out *o, const char *fmt, ...)
{
	char line[512]; /* every rendered line is far shorter */
	va_list args;
	va_start(args, fmt);
	int n = vsnprintf(line, sizeof line, fmt, args);
	va_end(args);
	if (n < 0)
		return;
	size_t k = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
	if (o->len < o->cap) {
		size_t fit = o->cap - o->len < k ? o->cap - o->len : k;
		memcpy(o->buf + o->len, line, fit);
	}
	o->len += k;
}

static uint64_t load(_Atomic uint64_t *counter)
{
	return atomic_load_explicit(counter, memory_order_relaxed);
}

static void emit_header(out *o, const char *name, const char *type, const char *help)
{
	emit(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Escapes a label value per the exposition format (\\, \", \n). */
static void label_escape(char *dst, size_t dst_size, const char *src)
{
	size_t len = 0;
	for (; *src != '\0' && len + 2 < dst_size; src++) {
		char c = *src;
		if (c == '\\' || c == '"') {
			dst[len++] = '\\';
			dst[len++] = c;
		} else if (c == '\n') {
			dst[len++] = '\\';
			dst[len++] = 'n';
		} else {
			dst[len++] = c;
		}
	}
	dst[len] = '\0';
}

/* Renders one latency histogram; label is the inside of {…}, e.g.
 * route="GET /healthz". Skipped when it has no observations and skip_empty. */
static void emit_latency(out *o, const char *name, const char *label,
                         latency_histogram *h, bool skip_empty)
{
	uint64_t counts[LATENCY_BOUNDS + 1];
	uint64_t total = 0;
	for (size_t i = 0; i <= LATENCY_BOUNDS; i++) {
		counts[i] = load(&h->buckets[i]);
		total += counts[i];
	}
	if (total == 0 && skip_empty)
		return;
	uint64_t cumulative = 0;
	for (size_t i = 0; i < LATENCY_BOUNDS; i++) {
		cumulative += counts[i];
		emit(o, "%s_bucket{%s,le=\"%s\"} %" PRIu64 "\n", name, label,
		     latency_bounds_label[i], cumulative);
	}
	emit(o, "%s_bucket{%s,le=\"+Inf\"} %" PRIu64 "\n", name, label, total);
	uint64_t sum_us = load(&h->sum_us);
	emit(o, "%s_sum{%s} %" PRIu64 ".%06" PRIu64 "\n", name, label,
	     sum_us / 1000000, sum_us % 1000000);
	emit(o, "%s_count{%s} %" PRIu64 "\n", name, label, total);
}

static void emit_batch_ops(out *o, const char *name, const char *label,
                           batch_histogram *h)
{
	uint64_t counts[BATCH_BOUNDS + 1];
	uint64_t total = 0;
	for (size_t i = 0; i <= BATCH_BOUNDS; i++) {
		counts[i] = load(&h->buckets[i]);
		total += counts[i];
	}
	uint64_t cumulative = 0;
	for (size_t i = 0; i < BATCH_BOUNDS; i++) {
		cumulative += counts[i];
		emit(o, "%s_bucket{%s,le=\"%" PRId64 "\"} %" PRIu64 "\n", name, label,
		     batch_bounds_ops[i], cumulative);
	}
	emit(o, "%s_bucket{%s,le=\"+Inf\"} %" PRIu64 "\n", name, label, total);
	emit(o, "%s_sum{%s} %" PRIu64 "\n", name, label, load(&h->sum_ops));
	emit(o, "%s_count{%s} %" PRIu64 "\n", name, label, total);
}

static void route_label(char *dst, size_t dst_size, size_t slot)
{
	char escaped[256];
	label_escape(escaped, sizeof escaped,
	             slot == ROUTE_UNMATCHED ? "unmatched" : route_names[slot]);
	snprintf(dst, dst_size, "route=\"%s\"", escaped);
}

/* Registered routes in order, then "unmatched". */
static size_t route_slot_at(size_t i)
{
	return i < route_count ? i : ROUTE_UNMATCHED;
}

size_t kobo_metrics_render(char *buf, size_t cap)
{
	out o = {.buf = buf, .cap = cap, .len = 0};
	char label[300];

	emit_header(&o, "kobo_http_requests_total", "counter",
	            "HTTP requests served, by route and status.");
	for (size_t i = 0; i <= route_count; i++) {
		size_t slot = route_slot_at(i);
		route_label(label, sizeof label, slot);
		for (size_t s = 0; s < STATUS_SLOTS; s++) {
			uint64_t n = load(&requests_total[slot][s]);
			if (n == 0)
				continue;
			if (s < STATUS_KNOWN)
				emit(&o, "kobo_http_requests_total{%s,status=\"%d\"} %" PRIu64 "\n",
				     label, status_codes[s], n);
			else
				emit(&o, "kobo_http_requests_total{%s,status=\"other\"} %" PRIu64 "\n",
				     label, n);
		}
	}

	emit_header(&o, "kobo_http_request_duration_seconds", "histogram",
	            "HTTP request latency, by route.");
	for (size_t i = 0; i <= route_count; i++) {
		size_t slot = route_slot_at(i);
		route_label(label, sizeof label, slot);
		emit_latency(&o, "kobo_http_request_duration_seconds", label,
		             &request_duration[slot], true);
	}

	uint32_t shards = atomic_load_explicit(&shards_seen, memory_order_relaxed);

	emit_header(&o, "kobo_batch_ops", "histogram", "Ops per committed batch, by shard.");
	for (uint32_t s = 0; s < shards; s++) {
		snprintf(label, sizeof label, "shard=\"%" PRIu32 "\"", s);
		emit_batch_ops(&o, "kobo_batch_ops", label, &batch_ops[s]);
	}

	emit_header(&o, "kobo_batch_commit_duration_seconds", "histogram",
	            "Batch commit latency (durable), by shard.");
	for (uint32_t s = 0; s < shards; s++) {
		snprintf(label, sizeof label, "shard=\"%" PRIu32 "\"", s);
		emit_latency(&o, "kobo_batch_commit_duration_seconds", label,
		             &batch_commit[s], false);
	}

	emit_header(&o, "kobo_shard_queue_depth", "gauge", "Ops waiting in the shard queue.");
	for (uint32_t s = 0; s < shards; s++)
		emit(&o, "kobo_shard_queue_depth{shard=\"%" PRIu32 "\"} %" PRIu64 "\n", s,
		     load(&queue_depth[s]));

	emit_header(&o, "kobo_shard_queue_capacity", "gauge",
	            "Ops the shard queue holds at most (--queue-ops); past it, 503 overloaded.");
	for (uint32_t s = 0; s < shards; s++)
		emit(&o, "kobo_shard_queue_capacity{shard=\"%" PRIu32 "\"} %" PRIu64 "\n", s,
		     load(&queue_capacity[s]));

	emit_header(&o, "kobo_shard_ready", "gauge",
	            "1 while the shard's store can commit (sampled at each scrape).");
	for (uint32_t s = 0; s < shards; s++)
		emit(&o, "kobo_shard_ready{shard=\"%" PRIu32 "\"} %" PRIu64 "\n", s,
		     load(&shard_ready[s]));

	bool journaled = false;
	for (uint32_t s = 0; s < shards; s++)
		journaled = journaled || atomic_load_explicit(&journal_seen[s], memory_order_relaxed);
	if (journaled) {
		static const struct {
			const char *name, *help;
			int kind_gauge[2]; /* accounts / transfers, or one gauge */
		} journal_metrics[] = {
			{ "kobo_store_records", "Records a journaled shard holds in memory, by kind.",
			  { J_ACCOUNTS, J_TRANSFERS } },
			{ "kobo_store_records_max", "The configured limit of those records "
			  "(--max-accounts, --max-transfers); past it, 503 capacity_exhausted.",
			  { J_ACCOUNTS_MAX, J_TRANSFERS_MAX } },
			{ "kobo_journal_backlog_batches", "Committed batches the SQLite projection "
			  "has not written yet.", { J_BACKLOG_BATCHES, -1 } },
			{ "kobo_journal_backlog_bytes", "Journal frame bytes the SQLite projection "
			  "has not written yet.", { J_BACKLOG_BYTES, -1 } },
			{ "kobo_journal_segments", "Live journal segment files.", { J_SEGMENTS, -1 } },
		};
		for (size_t m = 0; m < sizeof journal_metrics / sizeof journal_metrics[0]; m++) {
			emit_header(&o, journal_metrics[m].name, "gauge", journal_metrics[m].help);
			for (uint32_t s = 0; s < shards; s++) {
				if (!atomic_load_explicit(&journal_seen[s], memory_order_relaxed))
					continue;
				int a = journal_metrics[m].kind_gauge[0], b = journal_metrics[m].kind_gauge[1];
				if (b < 0) {
					emit(&o, "%s{shard=\"%" PRIu32 "\"} %" PRIu64 "\n",
					     journal_metrics[m].name, s, load(&journal_gauges[s][a]));
					continue;
				}
				emit(&o, "%s{shard=\"%" PRIu32 "\",kind=\"accounts\"} %" PRIu64 "\n",
				     journal_metrics[m].name, s, load(&journal_gauges[s][a]));
				emit(&o, "%s{shard=\"%" PRIu32 "\",kind=\"transfers\"} %" PRIu64 "\n",
				     journal_metrics[m].name, s, load(&journal_gauges[s][b]));
			}
		}
	}

	emit_header(&o, "kobo_rejections_total", "counter",
	            "Business rejections and conflicts, by result code.");
	for (int c = 0; c < KOBO_RESULT_CODE_COUNT; c++) {
		uint64_t n = load(&rejections_total[c]);
		/* Every rejection code is always present; success codes
		 * appear only if a caller counted one. */
		if (c < KOBO_RESULT_ID_CONFLICT && n == 0)
			continue;
		emit(&o, "kobo_rejections_total{code=\"%s\"} %" PRIu64 "\n",
		     kobo_result_code_name((kobo_result_code)c), n);
	}

	emit_header(&o, "kobo_overloaded_total", "counter",
	            "Requests refused with 503 because a shard queue was full.");
	for (uint32_t s = 0; s < shards; s++)
		emit(&o, "kobo_overloaded_total{shard=\"%" PRIu32 "\"} %" PRIu64 "\n", s,
		     load(&overloaded_total[s]));

	emit_header(&o, "kobo_rate_limited_total", "counter",
	            "Requests refused with 429 by a rate limit, by what was limited.");
	emit(&o, "kobo_rate_limited_total{by=\"ip\"} %" PRIu64 "\n",
	     load(&rate_limited_ip_total));
	emit(&o, "kobo_rate_limited_total{by=\"key\"} %" PRIu64 "\n",
	     load(&rate_limited_key_total));

	emit_header(&o, "kobo_otlp_spans_exported_total", "counter",
	            "Trace spans an OTLP collector accepted.");
	emit(&o, "kobo_otlp_spans_exported_total %" PRIu64 "\n", load(&otlp_exported_total));
	emit_header(&o, "kobo_otlp_spans_dropped_total", "counter",
	            "Trace spans not exported, by reason (queue_full, export_failed, shutdown).");
	for (int r = 0; r < KOBO_OTLP_DROP_REASONS; r++)
		emit(&o, "kobo_otlp_spans_dropped_total{reason=\"%s\"} %" PRIu64 "\n",
		     kobo_otlp_drop_name((kobo_otlp_drop)r), load(&otlp_dropped_total[r]));

	emit_header(&o, "kobo_auth_failures_total", "counter",
	            "Requests refused 401 (no, bad, unknown or revoked key) or 403 (scope), by reason.");
	for (int r = 0; r < KOBO_AUTH_FAILURE_REASONS; r++)
		emit(&o, "kobo_auth_failures_total{reason=\"%s\"} %" PRIu64 "\n",
		     kobo_auth_failure_name((kobo_auth_failure)r), load(&auth_failures_total[r]));
	emit_header(&o, "kobo_auth_refresh_failures_total", "counter",
	            "Key ring refreshes from shard 0's store that failed (the last view was kept).");
	emit(&o, "kobo_auth_refresh_failures_total %" PRIu64 "\n",
	     load(&auth_refresh_failures_total));
	emit_header(&o, "kobo_auth_keys", "gauge", "Live API keys in the key ring.");
	emit(&o, "kobo_auth_keys %" PRIu64 "\n", load(&auth_keys));

	emit_header(&o, "kobo_holds_expired_total", "counter", "Holds voided by expiry.");
	for (uint32_t s = 0; s < shards; s++)
		emit(&o, "kobo_holds_expired_total{shard=\"%" PRIu32 "\"} %" PRIu64 "\n", s,
		     load(&holds_expired_total[s]));

	emit_header(&o, "kobo_saga_step_duration_seconds", "histogram",
	            "Saga step round trip (submit to durable answer), by step.");
	for (int k = 0; k < KOBO_SAGA_STEP_KINDS; k++) {
		snprintf(label, sizeof label, "step=\"%s\"", kobo_saga_step_name(k));
		emit_latency(&o, "kobo_saga_step_duration_seconds", label,
		             &saga_step_duration[k], false);
	}
	emit_header(&o, "kobo_saga_steps_failed_total", "counter",
	            "Saga steps whose batch failed (retried), by step.");
	for (int k = 0; k < KOBO_SAGA_STEP_KINDS; k++)
		emit(&o, "kobo_saga_steps_failed_total{step=\"%s\"} %" PRIu64 "\n",
		     kobo_saga_step_name(k), load(&saga_steps_failed[k]));
	emit_header(&o, "kobo_sagas_finished_total", "counter",
	            "Sagas settled, by outcome (compensated: the payer was refunded).");
	for (int i = 0; i < SAGA_OUTCOMES; i++)
		emit(&o, "kobo_sagas_finished_total{outcome=\"%s\"} %" PRIu64 "\n",
		     saga_outcome_names[i], load(&sagas_finished[i]));
	emit_header(&o, "kobo_sagas_active", "gauge", "Sagas being driven, by state.");
	static const char *const states[3] = { "reserved", "posting", "voiding" };
	for (int i = 0; i < 3; i++)
		emit(&o, "kobo_sagas_active{state=\"%s\"} %" PRIu64 "\n", states[i],
		     load(&sagas_active[i]));
	emit_header(&o, "kobo_sagas_stuck", "gauge",
	            "Sagas unfinished longer than --saga-stuck-ms (each also logged).");
	emit(&o, "kobo_sagas_stuck %" PRIu64 "\n", load(&sagas_stuck));

	uint32_t replicas = atomic_load_explicit(&replica_shards, memory_order_relaxed);
	if (replicas > 0) {
		emit_header(&o, "kobo_replica_up", "gauge",
		            "1 while the shard's read replica answers as that shard.");
		for (uint32_t s = 0; s < replicas; s++)
			emit(&o, "kobo_replica_up{shard=\"%" PRIu32 "\"} %" PRIu64 "\n", s,
			     load(&replica_up[s]));
		emit_header(&o, "kobo_replica_lag_seconds", "gauge",
		            "How far the read replica's replay trails, as last sampled.");
		for (uint32_t s = 0; s < replicas; s++) {
			uint64_t us = load(&replica_lag_us[s]);
			emit(&o, "kobo_replica_lag_seconds{shard=\"%" PRIu32 "\"} %" PRIu64
			     ".%06" PRIu64 "\n", s, us / 1000000, us % 1000000);
		}
		emit_header(&o, "kobo_replica_reads_total", "counter",
		            "GET reads of shards that have a replica, by who served them.");
		for (uint32_t s = 0; s < replicas; s++) {
			emit(&o, "kobo_replica_reads_total{shard=\"%" PRIu32 "\",served=\"replica\"} %"
			     PRIu64 "\n", s, load(&replica_reads[s][1]));
			emit(&o, "kobo_replica_reads_total{shard=\"%" PRIu32 "\",served=\"primary\"} %"
			     PRIu64 "\n", s, load(&replica_reads[s][0]));
		}
	}

	if (o.len < cap)
		buf[o.len] = '\0';
	else if (o.len > cap && cap > 0)
		buf[cap - 1] = '\0';
	return o.len;
}
