/*
 * otlp.c — the OTLP/HTTP span exporter. Contract and data flow in otlp.h.
 *
 * Invariants:
 *   1. A request thread only takes `lock` to copy one span into the ring
 *      (or count a drop); encoding and HTTP happen on the exporter thread
 *      with the lock released.
 *   2. Every span handed to kobo_otlp_export is counted exactly once: as
 *      exported (the collector answered 2xx), or dropped by reason
 *      (queue_full, export_failed, shutdown).
 *   3. Every wait is bounded: the batch delay, the POST's connect and total
 *      timeouts, the retry backoff (interrupted by stop), the stop deadline.
 */
#include "otlp.h"

#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "obs.h"

#define CONNECT_TIMEOUT_MS_MAX 2000

/* ---- Small helpers. ---- */

void kobo_otlp_hex(char *out, const uint8_t *bytes, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[bytes[i] >> 4];
		out[2 * i + 1] = digits[bytes[i] & 15];
	}
	out[2 * n] = '\0';
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

bool kobo_otlp_unhex(uint8_t *bytes, const char *hex, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int hi = hex_value(hex[2 * i]), lo = hex[2 * i] ? hex_value(hex[2 * i + 1]) : -1;
		if (hi < 0 || lo < 0)
			return false;
		bytes[i] = (uint8_t)(hi << 4 | lo);
	}
	return true;
}

/* Span and trace ids come from a ChaCha20 keystream per thread (libsodium's
 * crypto_stream_chacha20), keyed once per thread by randombytes_buf and
 * drawn a block at a time: as unpredictable as the system's randomness, but
 * without a getrandom system call per id (four per traced request were
 * 1.5 % of kobod's CPU in `make bench-otlp`, on the HTTP thread that every
 * request goes through). A thread's stream never repeats: its nonce counts
 * blocks. */
static _Thread_local struct {
	bool keyed;
	uint64_t nonce;
	size_t used;
	unsigned char key[crypto_stream_chacha20_KEYBYTES];
	unsigned char block[256];
} ids;

static void id_bytes(uint8_t *out, size_t n)
{
	if (!ids.keyed) {
		randombytes_buf(ids.key, sizeof ids.key);
		ids.keyed = true;
		ids.used = sizeof ids.block;
	}
	while (n) {
		if (ids.used == sizeof ids.block) {
			unsigned char nonce[crypto_stream_chacha20_NONCEBYTES];
			for (size_t i = 0; i < sizeof nonce; i++)
				nonce[i] = (unsigned char)(ids.nonce >> (8 * i));
			ids.nonce++;
			crypto_stream_chacha20(ids.block, sizeof ids.block, nonce, ids.key);
			ids.used = 0;
		}
		size_t take = sizeof ids.block - ids.used < n ? sizeof ids.block - ids.used : n;
		memcpy(out, ids.block + ids.used, take);
		ids.used += take;
		out += take;
		n -= take;
	}
}

void kobo_otlp_random_id(uint8_t *out, size_t n)
{
	for (;;) {
		id_bytes(out, n);
		for (size_t i = 0; i < n; i++)
			if (out[i])
				return;
	}
}

void kobo_otlp_transfer_span_id(uint8_t out[8], const uint8_t trace_id[16],
                                const char *transfer_id)
{
	static const unsigned char key[] = "kobo transfer span";
	crypto_generichash_state st;
	crypto_generichash_init(&st, key, sizeof key - 1, 8);
	crypto_generichash_update(&st, trace_id, 16);
	crypto_generichash_update(&st, (const unsigned char *)transfer_id, strlen(transfer_id));
	crypto_generichash_final(&st, out, 8);
	bool zero = true;
	for (int i = 0; i < 8; i++)
		zero &= out[i] == 0;
	if (zero)
		out[7] = 1;
}

int64_t kobo_otlp_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Copies src into dst (size bytes), cut, with every byte that is not
 * printable ASCII replaced by '?'. */
static void copy_clean(char *dst, size_t size, const char *src)
{
	size_t i = 0;
	for (; src && src[i] && i + 1 < size; i++) {
		unsigned char ch = (unsigned char)src[i];
		dst[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
	}
	dst[i] = '\0';
}

void kobo_otlp_attr_str(kobo_otlp_span *s, const char *key, const char *value)
{
	if (s->attr_count >= KOBO_OTLP_ATTRS_MAX)
		return;
	kobo_otlp_attr *a = &s->attrs[s->attr_count++];
	a->key = key;
	a->is_int = false;
	copy_clean(a->s, sizeof a->s, value);
}

void kobo_otlp_attr_int(kobo_otlp_span *s, const char *key, int64_t value)
{
	if (s->attr_count >= KOBO_OTLP_ATTRS_MAX)
		return;
	kobo_otlp_attr *a = &s->attrs[s->attr_count++];
	a->key = key;
	a->is_int = true;
	a->i = value;
	a->s[0] = '\0';
}

void kobo_otlp_link_add(kobo_otlp_span *s, const uint8_t trace_id[16],
                        const uint8_t span_id[8])
{
	if (s->link_count >= KOBO_OTLP_LINKS_MAX) {
		s->links_dropped++;
		return;
	}
	kobo_otlp_link *l = &s->links[s->link_count++];
	memcpy(l->trace_id, trace_id, 16);
	memcpy(l->span_id, span_id, 8);
}

/* ---- Configuration. ---- */

static int config_fail(char *err, size_t err_size, const char *name, const char *why)
{
	snprintf(err, err_size, "%s: %s", name, why);
	return -1;
}

static bool parse_long(const char *text, long min, long max, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(text, &end, 10);
	if (errno || end == text || *end || v < min || v > max)
		return false;
	*out = v;
	return true;
}

/* Percent-decodes src into dst (W3C Baggage octets, as the spec asks of
 * OTEL_RESOURCE_ATTRIBUTES values), trimming spaces. */
static void percent_decode(char *dst, size_t size, const char *src, size_t len)
{
	while (len && *src == ' ')
		src++, len--;
	while (len && src[len - 1] == ' ')
		len--;
	size_t o = 0;
	for (size_t i = 0; i < len && o + 1 < size; i++) {
		int hi, lo;
		if (src[i] == '%' && i + 2 < len && (hi = hex_value(src[i + 1])) >= 0 &&
		    (lo = hex_value(src[i + 2])) >= 0) {
			dst[o++] = (char)(hi << 4 | lo);
			i += 2;
		} else {
			dst[o++] = src[i];
		}
	}
	dst[o] = '\0';
	char clean[KOBO_OTLP_RESOURCE_STR_MAX + 1];
	copy_clean(clean, sizeof clean < size ? sizeof clean : size, dst);
	memcpy(dst, clean, strlen(clean) + 1);
}

int kobo_otlp_config_read(kobo_otlp_config *c, const char *(*get)(const char *name),
                          char *err, size_t err_size)
{
	memset(c, 0, sizeof *c);
	c->timeout_ms = 10000;
	c->sampler = KOBO_OTLP_PARENT_ALWAYS_ON;
	c->ratio = 1.0;
	c->queue_max = 2048;
	c->batch_max = 512;
	c->delay_ms = 5000;

	const char *v;
	if ((v = get("OTEL_SDK_DISABLED")) && strcasecmp(v, "true") == 0)
		return 0;
	const char *traces = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
	const char *base = get("OTEL_EXPORTER_OTLP_ENDPOINT");
	if (traces && *traces) {
		if (strlen(traces) > KOBO_OTLP_URL_MAX)
			return config_fail(err, err_size, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "too long");
		memcpy(c->url, traces, strlen(traces) + 1);
	} else if (base && *base) {
		size_t len = strlen(base);
		while (len && base[len - 1] == '/')
			len--;
		if (len + strlen("/v1/traces") > KOBO_OTLP_URL_MAX)
			return config_fail(err, err_size, "OTEL_EXPORTER_OTLP_ENDPOINT", "too long");
		snprintf(c->url, sizeof c->url, "%.*s/v1/traces", (int)len, base);
	}
	if (c->url[0] && strncmp(c->url, "http://", 7) != 0 && strncmp(c->url, "https://", 8) != 0)
		return config_fail(err, err_size, "OTEL_EXPORTER_OTLP_ENDPOINT",
		                   "must start with http:// or https://");

	if ((v = get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")) || (v = get("OTEL_EXPORTER_OTLP_TIMEOUT")))
		if (!parse_long(v, 1, 600000, &c->timeout_ms))
			return config_fail(err, err_size, "OTEL_EXPORTER_OTLP_TIMEOUT",
			                   "milliseconds, 1..600000");
	long n;
	if ((v = get("OTEL_BSP_MAX_QUEUE_SIZE"))) {
		if (!parse_long(v, 1, KOBO_OTLP_QUEUE_MAX, &n))
			return config_fail(err, err_size, "OTEL_BSP_MAX_QUEUE_SIZE", "1..65536");
		c->queue_max = (size_t)n;
	}
	if ((v = get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"))) {
		if (!parse_long(v, 1, KOBO_OTLP_QUEUE_MAX, &n))
			return config_fail(err, err_size, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1..65536");
		c->batch_max = (size_t)n;
	}
	if (c->batch_max > c->queue_max)
		c->batch_max = c->queue_max;
	if ((v = get("OTEL_BSP_SCHEDULE_DELAY")) && !parse_long(v, 1, 600000, &c->delay_ms))
		return config_fail(err, err_size, "OTEL_BSP_SCHEDULE_DELAY", "milliseconds, 1..600000");

	if ((v = get("OTEL_TRACES_SAMPLER")) && *v) {
		static const struct { const char *name; kobo_otlp_sampler s; } samplers[] = {
			{"always_on", KOBO_OTLP_ALWAYS_ON},
			{"always_off", KOBO_OTLP_ALWAYS_OFF},
			{"traceidratio", KOBO_OTLP_RATIO},
			{"parentbased_always_on", KOBO_OTLP_PARENT_ALWAYS_ON},
			{"parentbased_always_off", KOBO_OTLP_PARENT_ALWAYS_OFF},
			{"parentbased_traceidratio", KOBO_OTLP_PARENT_RATIO},
		};
		size_t i = 0;
		while (i < sizeof samplers / sizeof samplers[0] && strcmp(samplers[i].name, v) != 0)
			i++;
		if (i == sizeof samplers / sizeof samplers[0])
			return config_fail(err, err_size, "OTEL_TRACES_SAMPLER",
			                   "always_on, always_off, traceidratio, parentbased_always_on, "
			                   "parentbased_always_off or parentbased_traceidratio");
		c->sampler = samplers[i].s;
	}
	if ((c->sampler == KOBO_OTLP_RATIO || c->sampler == KOBO_OTLP_PARENT_RATIO) &&
	    (v = get("OTEL_TRACES_SAMPLER_ARG")) && *v) {
		char *end;
		errno = 0;
		double r = strtod(v, &end);
		if (errno || end == v || *end || !(r >= 0.0 && r <= 1.0))
			return config_fail(err, err_size, "OTEL_TRACES_SAMPLER_ARG", "a ratio in 0..1");
		c->ratio = r;
	}

	/* service.name: OTEL_SERVICE_NAME, else the resource attributes' own,
	 * else "kobod"; always resource[0]. */
	memcpy(c->resource[0].key, "service.name", sizeof "service.name");
	memcpy(c->resource[0].value, "kobod", sizeof "kobod");
	c->resource_count = 1;
	if ((v = get("OTEL_RESOURCE_ATTRIBUTES"))) {
		const char *p = v;
		while (*p) {
			const char *comma = strchr(p, ',');
			size_t len = comma ? (size_t)(comma - p) : strlen(p);
			const char *eq = memchr(p, '=', len);
			if (!eq || eq == p)
				return config_fail(err, err_size, "OTEL_RESOURCE_ATTRIBUTES",
				                   "key=value pairs separated by commas");
			kobo_otlp_kv kv;
			percent_decode(kv.key, sizeof kv.key, p, (size_t)(eq - p));
			percent_decode(kv.value, sizeof kv.value, eq + 1, len - (size_t)(eq - p) - 1);
			if (strcmp(kv.key, "service.name") == 0) {
				c->resource[0] = kv;
			} else {
				if (c->resource_count == KOBO_OTLP_RESOURCE_ATTRS_MAX)
					return config_fail(err, err_size, "OTEL_RESOURCE_ATTRIBUTES",
					                   "at most 16 attributes");
				c->resource[c->resource_count++] = kv;
			}
			p += len + (comma ? 1 : 0);
		}
	}
	if ((v = get("OTEL_SERVICE_NAME")) && *v)
		copy_clean(c->resource[0].value, sizeof c->resource[0].value, v);
	return 0;
}

/* ---- Sampling. ---- */

bool kobo_otlp_should_sample(const kobo_otlp_config *c, const uint8_t trace_id[16],
                             bool has_parent, bool parent_sampled)
{
	kobo_otlp_sampler s = c->sampler;
	if (s >= KOBO_OTLP_PARENT_ALWAYS_ON && has_parent)
		return parent_sampled;
	switch (s) {
	case KOBO_OTLP_ALWAYS_ON:
	case KOBO_OTLP_PARENT_ALWAYS_ON:
		return true;
	case KOBO_OTLP_ALWAYS_OFF:
	case KOBO_OTLP_PARENT_ALWAYS_OFF:
		return false;
	case KOBO_OTLP_RATIO:
	case KOBO_OTLP_PARENT_RATIO:
		break;
	}
	/* As the reference SDKs: the trace id's last 8 bytes, big-endian,
	 * shifted to 63 bits, against ratio × 2^63. */
	uint64_t x = 0;
	for (int i = 8; i < 16; i++)
		x = x << 8 | trace_id[i];
	x >>= 1;
	if (c->ratio >= 1.0)
		return true;
	return (double)x < c->ratio * 9223372036854775808.0;
}

/* ---- Encoding. ----
 *
 * Written by hand into one growing buffer: jansson's object tree cost
 * ~28 µs a span on the exporter thread (bench-otlp). Every string put here
 * is printable ASCII (copy_clean), so escaping is only " and \. */

typedef struct jbuf {
	char *data;
	size_t len, cap;
	bool failed;
} jbuf;

static void jb_put(jbuf *b, const char *s, size_t n)
{
	if (b->failed)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *data = realloc(b->data, cap);
		if (!data) {
			b->failed = true;
			return;
		}
		b->data = data;
		b->cap = cap;
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static void jb_lit(jbuf *b, const char *s)
{
	jb_put(b, s, strlen(s));
}

/* A JSON string of s (quoted, escaped). */
static void jb_str(jbuf *b, const char *s)
{
	jb_put(b, "\"", 1);
	const char *run = s;
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x7f) {
			jb_put(b, run, (size_t)(s - run));
			char esc[8];
			snprintf(esc, sizeof esc, "\\u%04x", ch);
			jb_lit(b, ch == '"' ? "\\\"" : ch == '\\' ? "\\\\" : esc);
			run = s + 1;
		}
	}
	jb_put(b, run, (size_t)(s - run));
	jb_put(b, "\"", 1);
}

static void jb_i64_str(jbuf *b, int64_t v)
{
	char text[24];
	snprintf(text, sizeof text, "\"%lld\"", (long long)v);
	jb_lit(b, text);
}

static void jb_kv_str(jbuf *b, const char *key, const char *value)
{
	jb_lit(b, "{\"key\":");
	jb_str(b, key);
	jb_lit(b, ",\"value\":{\"stringValue\":");
	jb_str(b, value);
	jb_lit(b, "}}");
}

static void encode_span(jbuf *b, const kobo_otlp_span *s)
{
	char hex[33];
	jb_lit(b, "{\"traceId\":\"");
	kobo_otlp_hex(hex, s->trace_id, 16);
	jb_put(b, hex, 32);
	jb_lit(b, "\",\"spanId\":\"");
	kobo_otlp_hex(hex, s->span_id, 8);
	jb_put(b, hex, 16);
	jb_lit(b, "\"");
	bool root = true;
	for (int i = 0; i < 8; i++)
		root &= s->parent_id[i] == 0;
	if (!root) {
		jb_lit(b, ",\"parentSpanId\":\"");
		kobo_otlp_hex(hex, s->parent_id, 8);
		jb_put(b, hex, 16);
		jb_lit(b, "\"");
	}
	jb_lit(b, ",\"name\":");
	jb_str(b, s->name);
	char kind[32];
	snprintf(kind, sizeof kind, ",\"kind\":%d", (int)s->kind);
	jb_lit(b, kind);
	/* uint64 nanoseconds as decimal strings (proto3 JSON mapping). */
	jb_lit(b, ",\"startTimeUnixNano\":");
	jb_i64_str(b, s->start_ns);
	jb_lit(b, ",\"endTimeUnixNano\":");
	jb_i64_str(b, s->end_ns < s->start_ns ? s->start_ns : s->end_ns);
	jb_lit(b, ",\"attributes\":[");
	for (size_t i = 0; i < s->attr_count; i++) {
		const kobo_otlp_attr *a = &s->attrs[i];
		if (i)
			jb_lit(b, ",");
		if (a->is_int) {
			jb_lit(b, "{\"key\":");
			jb_str(b, a->key);
			jb_lit(b, ",\"value\":{\"intValue\":");
			jb_i64_str(b, a->i);
			jb_lit(b, "}}");
		} else {
			jb_kv_str(b, a->key, a->s);
		}
	}
	jb_lit(b, "]");
	if (s->link_count) {
		jb_lit(b, ",\"links\":[");
		for (size_t i = 0; i < s->link_count; i++) {
			jb_lit(b, i ? ",{\"traceId\":\"" : "{\"traceId\":\"");
			kobo_otlp_hex(hex, s->links[i].trace_id, 16);
			jb_put(b, hex, 32);
			jb_lit(b, "\",\"spanId\":\"");
			kobo_otlp_hex(hex, s->links[i].span_id, 8);
			jb_put(b, hex, 16);
			jb_lit(b, "\"}");
		}
		jb_lit(b, "]");
	}
	if (s->links_dropped) {
		char dropped[48];
		snprintf(dropped, sizeof dropped, ",\"droppedLinksCount\":%u", s->links_dropped);
		jb_lit(b, dropped);
	}
	jb_lit(b, s->error ? ",\"status\":{\"code\":2}}" : ",\"status\":{\"code\":0}}");
}

char *kobo_otlp_encode(const kobo_otlp_config *c, const kobo_otlp_span *spans, size_t n)
{
	jbuf b = {0};
	jb_lit(&b, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
	for (size_t i = 0; i < c->resource_count; i++) {
		if (i)
			jb_lit(&b, ",");
		jb_kv_str(&b, c->resource[i].key, c->resource[i].value);
	}
	jb_lit(&b, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"kobod\"},\"spans\":[");
	for (size_t i = 0; i < n; i++) {
		if (i)
			jb_lit(&b, ",");
		encode_span(&b, &spans[i]);
	}
	jb_lit(&b, "]}]}]}");
	if (b.failed) {
		free(b.data);
		return NULL;
	}
	return b.data;
}

/* ---- The ring. ---- */

int kobo_otlp_ring_init(kobo_otlp_ring *r, size_t cap)
{
	r->slots = calloc(cap, sizeof *r->slots);
	r->spare = calloc(cap, sizeof *r->spare);
	r->cap = r->slots && r->spare ? cap : 0;
	r->count = 0;
	if (r->cap)
		return 0;
	kobo_otlp_ring_free(r);
	return -1;
}

void kobo_otlp_ring_free(kobo_otlp_ring *r)
{
	free(r->slots);
	free(r->spare);
	r->slots = r->spare = NULL;
	r->cap = r->count = 0;
}

/* *dst = *src, but only the attributes and links src uses, and only each
 * string attribute's bytes: a server span's copy is ~0.3 KB, not the
 * struct's ~2.7 KB. */
static void span_copy(kobo_otlp_span *dst, const kobo_otlp_span *src)
{
	memcpy(dst, src, offsetof(kobo_otlp_span, attrs));
	dst->attr_count = src->attr_count;
	for (size_t i = 0; i < src->attr_count; i++) {
		kobo_otlp_attr *a = &dst->attrs[i];
		const kobo_otlp_attr *b = &src->attrs[i];
		a->key = b->key;
		a->is_int = b->is_int;
		a->i = b->i;
		memcpy(a->s, b->s, strnlen(b->s, sizeof b->s - 1) + 1);
		a->s[sizeof a->s - 1] = '\0';
	}
	dst->link_count = src->link_count;
	memcpy(dst->links, src->links, src->link_count * sizeof src->links[0]);
	dst->links_dropped = src->links_dropped;
}

bool kobo_otlp_ring_push(kobo_otlp_ring *r, const kobo_otlp_span *span)
{
	if (r->count == r->cap)
		return false;
	span_copy(&r->slots[r->count++], span);
	return true;
}

size_t kobo_otlp_ring_take(kobo_otlp_ring *r, const kobo_otlp_span **spans)
{
	size_t n = r->count;
	kobo_otlp_span *full = r->slots;
	r->slots = r->spare;
	r->spare = full;
	r->count = 0;
	*spans = full;
	return n;
}

/* ---- The exporter. ---- */

static struct {
	atomic_bool enabled;
	kobo_otlp_config config;
	pthread_mutex_t lock;
	pthread_cond_t wake;      /* ring reached a batch, or stop */
	kobo_otlp_ring ring;
	bool stopping;
	int64_t stop_deadline_us; /* monotonic, set by stop */
	pthread_t thread;
	CURL *curl;
	struct curl_slist *headers;
} ex = { .lock = PTHREAD_MUTEX_INITIALIZER };

bool kobo_otlp_enabled(void)
{
	return atomic_load_explicit(&ex.enabled, memory_order_relaxed);
}

bool kobo_otlp_sample(const uint8_t trace_id[16], bool has_parent, bool parent_sampled)
{
	return kobo_otlp_should_sample(&ex.config, trace_id, has_parent, parent_sampled);
}

void kobo_otlp_export(const kobo_otlp_span *span)
{
	if (!kobo_otlp_enabled())
		return;
	pthread_mutex_lock(&ex.lock);
	bool stopping = ex.stopping;
	bool ok = !stopping && kobo_otlp_ring_push(&ex.ring, span);
	bool full_batch = ex.ring.count >= ex.config.batch_max;
	pthread_mutex_unlock(&ex.lock);
	if (!ok)
		kobo_metrics_otlp_dropped(stopping ? KOBO_OTLP_DROP_SHUTDOWN
		                                   : KOBO_OTLP_DROP_QUEUE_FULL, 1);
	else if (full_batch)
		pthread_cond_signal(&ex.wake);
}

static size_t discard_body(char *data, size_t size, size_t n, void *user)
{
	(void)data;
	(void)user;
	return size * n;
}

/* One POST. Returns 2 (accepted), 1 (retryable: 429, 502, 503, 504, no
 * connection, timeout) or 0 (refused for good). */
static int post(const char *body, long timeout_ms)
{
	CURL *h = ex.curl;
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
	                 timeout_ms < CONNECT_TIMEOUT_MS_MAX ? timeout_ms : CONNECT_TIMEOUT_MS_MAX);
	CURLcode rc = curl_easy_perform(h);
	if (rc != CURLE_OK)
		return 1;
	long status = 0;
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	if (status >= 200 && status < 300)
		return 2;
	return status == 429 || status == 502 || status == 503 || status == 504 ? 1 : 0;
}

/* Waits until ms have passed or stop is asked; lock held. Returns whether
 * stop was asked. */
static bool wait_ms_locked(long ms)
{
	struct timespec until = kobo_deadline_after_ms(ms);
	while (!ex.stopping)
		if (pthread_cond_timedwait(&ex.wake, &ex.lock, &until) == ETIMEDOUT)
			break;
	return ex.stopping;
}

/* Exports spans[0..n) with retries; lock not held. */
static void export_batch(const kobo_otlp_span *spans, size_t n)
{
	char *body = kobo_otlp_encode(&ex.config, spans, n);
	if (!body) {
		kobo_metrics_otlp_dropped(KOBO_OTLP_DROP_EXPORT_FAILED, n);
		return;
	}
	long backoff = KOBO_OTLP_BACKOFF_MS;
	int outcome = 0;
	for (int attempt = 0;; attempt++) {
		long timeout = ex.config.timeout_ms;
		pthread_mutex_lock(&ex.lock);
		bool stopping = ex.stopping;
		int64_t left_ms = (ex.stop_deadline_us - kobo_monotonic_us()) / 1000;
		pthread_mutex_unlock(&ex.lock);
		if (stopping) {
			if (left_ms <= 0) {
				kobo_metrics_otlp_dropped(KOBO_OTLP_DROP_SHUTDOWN, n);
				free(body);
				return;
			}
			if (timeout > left_ms)
				timeout = (long)left_ms;
		}
		outcome = post(body, timeout);
		if (outcome != 1 || attempt == KOBO_OTLP_RETRIES)
			break;
		pthread_mutex_lock(&ex.lock);
		bool stop = wait_ms_locked(backoff);
		pthread_mutex_unlock(&ex.lock);
		backoff *= 2;
		if (stop && kobo_monotonic_us() >= ex.stop_deadline_us)
			break;
	}
	free(body);
	if (outcome == 2)
		kobo_metrics_otlp_exported(n);
	else
		kobo_metrics_otlp_dropped(KOBO_OTLP_DROP_EXPORT_FAILED, n);
}

static void *exporter_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&ex.lock);
	for (;;) {
		if (!ex.stopping && ex.ring.count < ex.config.batch_max) {
			/* A partial batch waits for the delay, or a full one, or stop. */
			struct timespec until = kobo_deadline_after_ms(ex.config.delay_ms);
			while (!ex.stopping && ex.ring.count < ex.config.batch_max)
				if (pthread_cond_timedwait(&ex.wake, &ex.lock, &until) == ETIMEDOUT)
					break;
		}
		if (ex.stopping && (ex.ring.count == 0 || kobo_monotonic_us() >= ex.stop_deadline_us))
			break;
		/* Everything queued, at once: the lock is held for a pointer swap,
		 * never for a copy; requests go on filling the other buffer while
		 * this one is posted, batch_max spans per POST. */
		const kobo_otlp_span *spans;
		size_t n = kobo_otlp_ring_take(&ex.ring, &spans);
		pthread_mutex_unlock(&ex.lock);
		for (size_t done = 0; done < n; done += ex.config.batch_max)
			export_batch(spans + done, n - done < ex.config.batch_max ? n - done
			                                                          : ex.config.batch_max);
		pthread_mutex_lock(&ex.lock);
	}
	size_t left = ex.ring.count;
	ex.ring.count = 0;
	pthread_mutex_unlock(&ex.lock);
	if (left)
		kobo_metrics_otlp_dropped(KOBO_OTLP_DROP_SHUTDOWN, left);
	return NULL;
}

static const char *env_get(const char *name)
{
	return getenv(name);
}

int kobo_otlp_start(char *err, size_t err_size)
{
	if (kobo_otlp_config_read(&ex.config, env_get, err, err_size) != 0)
		return -1;
	if (!ex.config.url[0])
		return 0;
	if (sodium_init() < 0) {
		snprintf(err, err_size, "libsodium: cannot initialize");
		return -1;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(ex.curl = curl_easy_init())) {
		snprintf(err, err_size, "libcurl: cannot initialize");
		return -1;
	}
	ex.headers = curl_slist_append(NULL, "Content-Type: application/json");
	if (!ex.headers || kobo_otlp_ring_init(&ex.ring, ex.config.queue_max) != 0 ||
	    kobo_cond_init_monotonic(&ex.wake) != 0) {
		snprintf(err, err_size, "out of memory");
		goto fail;
	}
	curl_easy_setopt(ex.curl, CURLOPT_URL, ex.config.url);
	curl_easy_setopt(ex.curl, CURLOPT_HTTPHEADER, ex.headers);
	curl_easy_setopt(ex.curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(ex.curl, CURLOPT_WRITEFUNCTION, discard_body);
	curl_easy_setopt(ex.curl, CURLOPT_PROTOCOLS_STR, "http,https");
	ex.stopping = false;
	if (pthread_create(&ex.thread, NULL, exporter_main, NULL) != 0) {
		pthread_cond_destroy(&ex.wake);
		snprintf(err, err_size, "cannot start the exporter thread");
		goto fail;
	}
	atomic_store(&ex.enabled, true);
	return 0;
fail:
	kobo_otlp_ring_free(&ex.ring);
	curl_slist_free_all(ex.headers);
	ex.headers = NULL;
	curl_easy_cleanup(ex.curl);
	ex.curl = NULL;
	return -1;
}

void kobo_otlp_stop(long deadline_ms)
{
	if (!kobo_otlp_enabled())
		return;
	pthread_mutex_lock(&ex.lock);
	ex.stopping = true;
	ex.stop_deadline_us = kobo_monotonic_us() + (int64_t)deadline_ms * 1000;
	pthread_cond_broadcast(&ex.wake);
	pthread_mutex_unlock(&ex.lock);
	pthread_join(ex.thread, NULL);
	atomic_store(&ex.enabled, false);
	pthread_cond_destroy(&ex.wake);
	kobo_otlp_ring_free(&ex.ring);
	curl_slist_free_all(ex.headers);
	ex.headers = NULL;
	curl_easy_cleanup(ex.curl);
	ex.curl = NULL;
}
