/*
 * otlp.h — OpenTelemetry spans exported over OTLP/HTTP (JSON encoding).
 *
 * One job: take finished spans from request threads and POST them to a
 * collector, never making a request wait.
 *
 *   request thread ──kobo_otlp_export(span)──▶ bounded ring (copy; full → drop)
 *                                                   │ batch by size or by time
 *   exporter thread ◀───────────────────────────────┘
 *        encode JSON (by hand) ──POST ENDPOINT/v1/traces (libcurl)
 *        429/502/503/504 or no connection → retry with backoff, bounded;
 *        still failing → the batch is dropped and counted.
 *
 * Configuration: the standard environment, read once by kobo_otlp_start():
 *   OTEL_EXPORTER_OTLP_TRACES_ENDPOINT  the URL as is, or
 *   OTEL_EXPORTER_OTLP_ENDPOINT         + "/v1/traces"; neither → disabled
 *   OTEL_EXPORTER_OTLP_TIMEOUT          ms per POST (default 10000)
 *   OTEL_SERVICE_NAME                   service.name (default "kobod")
 *   OTEL_RESOURCE_ATTRIBUTES            k=v,k=v (values percent-decoded)
 *   OTEL_TRACES_SAMPLER                 always_on, always_off, traceidratio,
 *                                       parentbased_always_on (default),
 *                                       parentbased_always_off,
 *                                       parentbased_traceidratio
 *   OTEL_TRACES_SAMPLER_ARG             the ratio, 0..1 (default 1)
 *   OTEL_BSP_MAX_QUEUE_SIZE             ring capacity (default 2048)
 *   OTEL_BSP_MAX_EXPORT_BATCH_SIZE      spans per POST (default 512)
 *   OTEL_BSP_SCHEDULE_DELAY             ms a partial batch waits (default 5000)
 *
 * Disabled (no endpoint, or OTEL_SDK_DISABLED=true): kobo_otlp_enabled() is
 * false, no thread runs and nothing is allocated; callers test it first.
 *
 * Metrics (obs.h): kobo_otlp_spans_exported_total,
 * kobo_otlp_spans_dropped_total{reason="queue_full"|"export_failed"|
 * "shutdown"}.
 */
#ifndef KOBO_OBS_OTLP_H
#define KOBO_OBS_OTLP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KOBO_OTLP_URL_MAX 1024
#define KOBO_OTLP_NAME_MAX 96         /* span name bytes */
#define KOBO_OTLP_ATTRS_MAX 10        /* attributes per span */
#define KOBO_OTLP_LINKS_MAX 16        /* links per span; more are counted
                                         in droppedLinksCount */
#define KOBO_OTLP_ATTR_STR_MAX 200    /* bytes of a string attribute (cut) */
#define KOBO_OTLP_RESOURCE_ATTRS_MAX 16
#define KOBO_OTLP_RESOURCE_STR_MAX 255
#define KOBO_OTLP_QUEUE_MAX 65536     /* the most OTEL_BSP_MAX_QUEUE_SIZE may ask */
#define KOBO_OTLP_RETRIES 3           /* retries of one batch after its first POST */
#define KOBO_OTLP_BACKOFF_MS 100      /* first retry's wait; doubles each time */

typedef enum kobo_otlp_sampler {
	KOBO_OTLP_ALWAYS_ON = 0,
	KOBO_OTLP_ALWAYS_OFF,
	KOBO_OTLP_RATIO,
	KOBO_OTLP_PARENT_ALWAYS_ON,
	KOBO_OTLP_PARENT_ALWAYS_OFF,
	KOBO_OTLP_PARENT_RATIO,
} kobo_otlp_sampler;

typedef struct kobo_otlp_kv {
	char key[KOBO_OTLP_RESOURCE_STR_MAX + 1];
	char value[KOBO_OTLP_RESOURCE_STR_MAX + 1];
} kobo_otlp_kv;

typedef struct kobo_otlp_config {
	char url[KOBO_OTLP_URL_MAX + 1]; /* "" → disabled */
	long timeout_ms;
	kobo_otlp_sampler sampler;
	double ratio;
	size_t queue_max;
	size_t batch_max;
	long delay_ms;
	/* service.name first, then OTEL_RESOURCE_ATTRIBUTES' other pairs. */
	kobo_otlp_kv resource[KOBO_OTLP_RESOURCE_ATTRS_MAX];
	size_t resource_count;
} kobo_otlp_config;

/* Reads the configuration through get (getenv, or a test's table).
 * Returns 0, or -1 with a message in err (err_size bytes) for a value that
 * is present but bad (unknown sampler, ratio outside 0..1, …). */
int kobo_otlp_config_read(kobo_otlp_config *c, const char *(*get)(const char *name),
                          char *err, size_t err_size);

typedef enum kobo_otlp_kind {
	KOBO_OTLP_KIND_INTERNAL = 1,
	KOBO_OTLP_KIND_SERVER = 2,
} kobo_otlp_kind;

typedef struct kobo_otlp_attr {
	const char *key; /* static string */
	bool is_int;
	int64_t i;
	char s[KOBO_OTLP_ATTR_STR_MAX + 1];
} kobo_otlp_attr;

/* A link to a span of another trace (or of the same one): the batch a
 * request was committed in, the requests a batch committed. */
typedef struct kobo_otlp_link {
	uint8_t trace_id[16];
	uint8_t span_id[8];
} kobo_otlp_link;

typedef struct kobo_otlp_span {
	uint8_t trace_id[16];
	uint8_t span_id[8];
	uint8_t parent_id[8]; /* all zero: a root span */
	kobo_otlp_kind kind;
	int64_t start_ns, end_ns; /* Unix epoch nanoseconds, start <= end */
	bool error;               /* status ERROR, else UNSET */
	char name[KOBO_OTLP_NAME_MAX + 1];
	kobo_otlp_attr attrs[KOBO_OTLP_ATTRS_MAX];
	size_t attr_count;
	kobo_otlp_link links[KOBO_OTLP_LINKS_MAX];
	size_t link_count;
	uint32_t links_dropped; /* links past KOBO_OTLP_LINKS_MAX */
} kobo_otlp_span;

/* Attribute helpers: add one if there is room (silently ignored past
 * KOBO_OTLP_ATTRS_MAX). Strings are cut to KOBO_OTLP_ATTR_STR_MAX bytes and
 * bytes that are not printable ASCII become '?', so the JSON is valid UTF-8. */
void kobo_otlp_attr_str(kobo_otlp_span *s, const char *key, const char *value);
void kobo_otlp_attr_int(kobo_otlp_span *s, const char *key, int64_t value);
/* Adds a link if there is room, else counts it in links_dropped. */
void kobo_otlp_link_add(kobo_otlp_span *s, const uint8_t trace_id[16],
                        const uint8_t span_id[8]);

/* The OTLP/HTTP JSON body (ExportTraceServiceRequest) of spans[0..n), as a
 * malloc'd NUL-terminated string, or NULL when out of memory. */
char *kobo_otlp_encode(const kobo_otlp_config *c, const kobo_otlp_span *spans, size_t n);

/* The sampler's decision for a span of trace_id: has_parent says whether a
 * traceparent came in, parent_sampled its sampled flag. */
bool kobo_otlp_should_sample(const kobo_otlp_config *c, const uint8_t trace_id[16],
                             bool has_parent, bool parent_sampled);

/* ---- The ring (exposed for tests; the exporter owns one). ----
 *
 * Two buffers of cap spans: requests append to one under the exporter's
 * lock; the exporter takes the whole of it by swapping the two (a pointer
 * swap under the lock, never a copy) and posts it while requests fill the
 * other. So at most cap spans wait and cap more are in flight. */

typedef struct kobo_otlp_ring {
	kobo_otlp_span *slots; /* being filled: [0, count) */
	kobo_otlp_span *spare; /* the one last taken */
	size_t cap, count;
} kobo_otlp_ring;

/* Allocates both buffers. Returns 0, or -1 out of memory. */
int kobo_otlp_ring_init(kobo_otlp_ring *r, size_t cap);
void kobo_otlp_ring_free(kobo_otlp_ring *r);
/* Copies span in (its used attributes and links only); false when full
 * (nothing changed). */
bool kobo_otlp_ring_push(kobo_otlp_ring *r, const kobo_otlp_span *span);
/* Takes every queued span, oldest first: *spans points at them until the
 * next take. Returns how many; the ring is empty after. */
size_t kobo_otlp_ring_take(kobo_otlp_ring *r, const kobo_otlp_span **spans);

/* ---- The process's exporter. ---- */

/* Reads the environment (getenv) and, when an endpoint is set, allocates
 * the ring and starts the exporter thread. Call once, before any
 * kobo_otlp_export. Returns 0 (enabled or disabled), or -1 with a message
 * in err for a bad setting or a failed start. */
int kobo_otlp_start(char *err, size_t err_size);
/* Whether spans are being exported: a relaxed load, the only cost when
 * disabled. */
bool kobo_otlp_enabled(void);
/* The running exporter's sampler decision (see kobo_otlp_should_sample). */
bool kobo_otlp_sample(const uint8_t trace_id[16], bool has_parent, bool parent_sampled);
/* Copies span into the ring, or drops it (counted) when the ring is full.
 * Never waits on the exporter: only a short mutex hold. */
void kobo_otlp_export(const kobo_otlp_span *span);
/* Exports what is queued within deadline_ms, drops (counts) the rest, stops
 * the thread, frees everything. No-op when disabled. */
void kobo_otlp_stop(long deadline_ms);

/* n random bytes, never all zero: a per-thread ChaCha20 keystream keyed by
 * randombytes_buf (libsodium), no system call per id. */
void kobo_otlp_random_id(uint8_t *out, size_t n);
/* The span id of the "transfer" span of transfer_id in trace_id: a keyed
 * hash of both (BLAKE2b, libsodium), never all zero. Whoever knows the
 * transfer's stored trace id computes the same id — the request that
 * created the transfer names its span so, and the saga runner and the
 * expiry scan (later, maybe after a restart, with nothing else stored)
 * parent their spans to it. */
void kobo_otlp_transfer_span_id(uint8_t out[8], const uint8_t trace_id[16],
                                const char *transfer_id);
/* The wall clock in Unix epoch nanoseconds. */
int64_t kobo_otlp_now_ns(void);
/* Lower-case hex of n bytes into out (2n + 1 bytes). */
void kobo_otlp_hex(char *out, const uint8_t *bytes, size_t n);
/* Parses 2n lower/upper-case hex digits into bytes; false if not hex. */
bool kobo_otlp_unhex(uint8_t *bytes, const char *hex, size_t n);

#endif /* KOBO_OBS_OTLP_H */
