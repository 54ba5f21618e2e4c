/*
 * test_obs_otlp.c — the OTLP exporter's pure parts: configuration from the
 * standard environment (through a table, not the process's), the samplers,
 * the JSON encoding (parsed back with jansson and checked field by field
 * against the OTLP JSON mapping), attribute cleaning, the bounded ring.
 * The thread and HTTP are covered by tests/system/test_otlp.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/obs/otlp.h"

/* ---- A fake environment. ---- */

static const char *const *env_table; /* name, value, name, value, …, NULL */

static const char *env_get(const char *name)
{
	for (size_t i = 0; env_table && env_table[i]; i += 2)
		if (strcmp(env_table[i], name) == 0)
			return env_table[i + 1];
	return NULL;
}

static int read_config(kobo_otlp_config *c, const char *const *table, char *err, size_t size)
{
	env_table = table;
	return kobo_otlp_config_read(c, env_get, err, size);
}

static void test_config_disabled_without_endpoint(void **state)
{
	(void)state;
	kobo_otlp_config c;
	char err[256] = "";
	const char *const none[] = {NULL};
	assert_int_equal(read_config(&c, none, err, sizeof err), 0);
	assert_string_equal(c.url, "");
	const char *const sdk_off[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318",
	                               "OTEL_SDK_DISABLED", "true", NULL};
	assert_int_equal(read_config(&c, sdk_off, err, sizeof err), 0);
	assert_string_equal(c.url, "");
}

static void test_config_endpoints(void **state)
{
	(void)state;
	kobo_otlp_config c;
	char err[256] = "";
	const char *const base[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/", NULL};
	assert_int_equal(read_config(&c, base, err, sizeof err), 0);
	assert_string_equal(c.url, "http://collector:4318/v1/traces");
	assert_int_equal(c.sampler, KOBO_OTLP_PARENT_ALWAYS_ON);
	assert_int_equal(c.timeout_ms, 10000);
	assert_int_equal(c.queue_max, 2048);
	assert_int_equal(c.batch_max, 512);
	assert_int_equal(c.delay_ms, 5000);
	assert_int_equal(c.resource_count, 1);
	assert_string_equal(c.resource[0].key, "service.name");
	assert_string_equal(c.resource[0].value, "kobod");

	const char *const traces[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1",
	                              "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://b:2/custom",
	                              NULL};
	assert_int_equal(read_config(&c, traces, err, sizeof err), 0);
	assert_string_equal(c.url, "https://b:2/custom");

	const char *const bad[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x", NULL};
	assert_int_equal(read_config(&c, bad, err, sizeof err), -1);
	assert_non_null(strstr(err, "OTEL_EXPORTER_OTLP_ENDPOINT"));
}

static void test_config_resource_and_service(void **state)
{
	(void)state;
	kobo_otlp_config c;
	char err[256] = "";
	const char *const t[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:1",
	                         "OTEL_RESOURCE_ATTRIBUTES",
	                         "service.name=from-attrs, deployment.environment = prod ,team=a%2Cb",
	                         NULL};
	assert_int_equal(read_config(&c, t, err, sizeof err), 0);
	assert_int_equal(c.resource_count, 3);
	assert_string_equal(c.resource[0].value, "from-attrs");
	assert_string_equal(c.resource[1].key, "deployment.environment");
	assert_string_equal(c.resource[1].value, "prod");
	assert_string_equal(c.resource[2].key, "team");
	assert_string_equal(c.resource[2].value, "a,b");

	const char *const named[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:1",
	                             "OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs",
	                             "OTEL_SERVICE_NAME", "ledger", NULL};
	assert_int_equal(read_config(&c, named, err, sizeof err), 0);
	assert_string_equal(c.resource[0].value, "ledger");

	const char *const bad[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:1",
	                           "OTEL_RESOURCE_ATTRIBUTES", "novalue", NULL};
	assert_int_equal(read_config(&c, bad, err, sizeof err), -1);
	assert_non_null(strstr(err, "OTEL_RESOURCE_ATTRIBUTES"));
}

static void test_config_sampler_and_limits(void **state)
{
	(void)state;
	kobo_otlp_config c;
	char err[256] = "";
	const char *const ratio[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:1",
	                             "OTEL_TRACES_SAMPLER", "parentbased_traceidratio",
	                             "OTEL_TRACES_SAMPLER_ARG", "0.25",
	                             "OTEL_BSP_MAX_QUEUE_SIZE", "100",
	                             "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1000",
	                             "OTEL_EXPORTER_OTLP_TIMEOUT", "250", NULL};
	assert_int_equal(read_config(&c, ratio, err, sizeof err), 0);
	assert_int_equal(c.sampler, KOBO_OTLP_PARENT_RATIO);
	assert_true(c.ratio == 0.25);
	assert_int_equal(c.queue_max, 100);
	assert_int_equal(c.batch_max, 100); /* never more than the ring holds */
	assert_int_equal(c.timeout_ms, 250);

	const char *const *bads[] = {
		(const char *const[]){"OTEL_TRACES_SAMPLER", "sometimes", NULL},
		(const char *const[]){"OTEL_TRACES_SAMPLER", "traceidratio",
		                      "OTEL_TRACES_SAMPLER_ARG", "1.5", NULL},
		(const char *const[]){"OTEL_TRACES_SAMPLER", "traceidratio",
		                      "OTEL_TRACES_SAMPLER_ARG", "x", NULL},
		(const char *const[]){"OTEL_BSP_MAX_QUEUE_SIZE", "0", NULL},
		(const char *const[]){"OTEL_BSP_MAX_QUEUE_SIZE", "70000", NULL},
		(const char *const[]){"OTEL_EXPORTER_OTLP_TIMEOUT", "-1", NULL},
		(const char *const[]){"OTEL_BSP_SCHEDULE_DELAY", "soon", NULL},
	};
	for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
		err[0] = '\0';
		assert_int_equal(read_config(&c, bads[i], err, sizeof err), -1);
		assert_true(strncmp(err, "OTEL_", 5) == 0);
	}
}

static void test_samplers(void **state)
{
	(void)state;
	kobo_otlp_config c;
	char err[256];
	const char *const none[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:1", NULL};
	assert_int_equal(read_config(&c, none, err, sizeof err), 0);
	uint8_t low[16] = {0}, high[16];
	memset(high, 0xff, sizeof high);

	c.sampler = KOBO_OTLP_ALWAYS_ON;
	assert_true(kobo_otlp_should_sample(&c, low, true, false));
	c.sampler = KOBO_OTLP_ALWAYS_OFF;
	assert_false(kobo_otlp_should_sample(&c, low, true, true));
	c.sampler = KOBO_OTLP_PARENT_ALWAYS_ON;
	assert_true(kobo_otlp_should_sample(&c, low, false, false));
	assert_false(kobo_otlp_should_sample(&c, low, true, false));
	assert_true(kobo_otlp_should_sample(&c, low, true, true));
	c.sampler = KOBO_OTLP_PARENT_ALWAYS_OFF;
	assert_false(kobo_otlp_should_sample(&c, low, false, false));
	assert_true(kobo_otlp_should_sample(&c, low, true, true));

	c.sampler = KOBO_OTLP_RATIO;
	c.ratio = 0.5;
	assert_true(kobo_otlp_should_sample(&c, low, false, false));
	assert_false(kobo_otlp_should_sample(&c, high, true, true));
	c.ratio = 0.0;
	assert_false(kobo_otlp_should_sample(&c, low, false, false));
	c.ratio = 1.0;
	assert_true(kobo_otlp_should_sample(&c, high, false, false));

	/* About the ratio of random trace ids. */
	c.ratio = 0.25;
	int kept = 0;
	for (int i = 0; i < 4000; i++) {
		uint8_t id[16];
		kobo_otlp_random_id(id, sizeof id);
		kept += kobo_otlp_should_sample(&c, id, false, false);
	}
	assert_in_range(kept, 800, 1200);

	c.sampler = KOBO_OTLP_PARENT_RATIO;
	c.ratio = 0.0;
	assert_true(kobo_otlp_should_sample(&c, high, true, true));
	assert_false(kobo_otlp_should_sample(&c, low, false, false));
}

static kobo_otlp_span make_span(uint8_t seed, bool root)
{
	kobo_otlp_span s;
	memset(&s, 0, sizeof s);
	for (int i = 0; i < 16; i++)
		s.trace_id[i] = (uint8_t)(seed + i);
	for (int i = 0; i < 8; i++) {
		s.span_id[i] = (uint8_t)(0xa0 + i);
		s.parent_id[i] = root ? 0 : (uint8_t)(0x10 + i);
	}
	s.kind = KOBO_OTLP_KIND_SERVER;
	s.start_ns = INT64_C(1764680000123456789);
	s.end_ns = s.start_ns + 1500;
	snprintf(s.name, sizeof s.name, "POST /v1/transfers");
	kobo_otlp_attr_str(&s, "http.request.method", "POST");
	kobo_otlp_attr_int(&s, "http.response.status_code", 503);
	kobo_otlp_attr_str(&s, "url.path", "/v1/\x01\xc3\xa9\"x");
	s.error = true;
	return s;
}

static const char *attr_value(json_t *attrs, const char *key, const char *kind)
{
	size_t i;
	json_t *kv;
	json_array_foreach(attrs, i, kv)
		if (strcmp(json_string_value(json_object_get(kv, "key")), key) == 0)
			return json_string_value(json_object_get(json_object_get(kv, "value"), kind));
	return NULL;
}

static void test_encode_matches_the_otlp_json_mapping(void **state)
{
	(void)state;
	kobo_otlp_config c;
	char err[256];
	const char *const t[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:1",
	                         "OTEL_SERVICE_NAME", "s\"v\\c", "OTEL_RESOURCE_ATTRIBUTES", "k=v",
	                         NULL};
	assert_int_equal(read_config(&c, t, err, sizeof err), 0);
	kobo_otlp_span spans[2] = {make_span(1, false), make_span(0x40, true)};
	spans[1].end_ns = spans[1].start_ns - 5; /* a clock step: encoded as start */
	for (int i = 0; i < KOBO_OTLP_LINKS_MAX + 3; i++) /* 3 past the bound: counted */
		kobo_otlp_link_add(&spans[1], spans[0].trace_id, spans[0].span_id);
	assert_int_equal(spans[1].link_count, KOBO_OTLP_LINKS_MAX);
	assert_int_equal(spans[1].links_dropped, 3);
	char *text = kobo_otlp_encode(&c, spans, 2);
	assert_non_null(text);
	json_error_t jerr;
	json_t *doc = json_loads(text, 0, &jerr);
	assert_non_null(doc);

	json_t *rs = json_array_get(json_object_get(doc, "resourceSpans"), 0);
	json_t *rattrs = json_object_get(json_object_get(rs, "resource"), "attributes");
	assert_string_equal(attr_value(rattrs, "service.name", "stringValue"), "s\"v\\c");
	assert_string_equal(attr_value(rattrs, "k", "stringValue"), "v");
	json_t *ss = json_array_get(json_object_get(rs, "scopeSpans"), 0);
	assert_string_equal(json_string_value(json_object_get(json_object_get(ss, "scope"), "name")),
	                    "kobod");
	json_t *list = json_object_get(ss, "spans");
	assert_int_equal(json_array_size(list), 2);

	json_t *a = json_array_get(list, 0);
	assert_string_equal(json_string_value(json_object_get(a, "traceId")),
	                    "0102030405060708090a0b0c0d0e0f10");
	assert_string_equal(json_string_value(json_object_get(a, "spanId")), "a0a1a2a3a4a5a6a7");
	assert_string_equal(json_string_value(json_object_get(a, "parentSpanId")),
	                    "1011121314151617");
	assert_string_equal(json_string_value(json_object_get(a, "name")), "POST /v1/transfers");
	assert_int_equal(json_integer_value(json_object_get(a, "kind")), 2);
	/* uint64 nanoseconds as decimal strings (proto3 JSON), int64 too. */
	assert_string_equal(json_string_value(json_object_get(a, "startTimeUnixNano")),
	                    "1764680000123456789");
	assert_string_equal(json_string_value(json_object_get(a, "endTimeUnixNano")),
	                    "1764680000123458289");
	json_t *attrs = json_object_get(a, "attributes");
	assert_string_equal(attr_value(attrs, "http.request.method", "stringValue"), "POST");
	assert_string_equal(attr_value(attrs, "http.response.status_code", "intValue"), "503");
	/* Control and non-ASCII bytes became '?', the quote survived escaping. */
	assert_string_equal(attr_value(attrs, "url.path", "stringValue"), "/v1/???\"x");
	assert_int_equal(json_integer_value(json_object_get(json_object_get(a, "status"), "code")),
	                 2);

	assert_null(json_object_get(a, "links")); /* none: no field */
	assert_null(json_object_get(a, "droppedLinksCount"));

	json_t *b = json_array_get(list, 1);
	assert_null(json_object_get(b, "parentSpanId")); /* a root span has none */
	json_t *links = json_object_get(b, "links");
	assert_int_equal(json_array_size(links), KOBO_OTLP_LINKS_MAX);
	json_t *l0 = json_array_get(links, 0);
	assert_string_equal(json_string_value(json_object_get(l0, "traceId")),
	                    "0102030405060708090a0b0c0d0e0f10");
	assert_string_equal(json_string_value(json_object_get(l0, "spanId")), "a0a1a2a3a4a5a6a7");
	assert_int_equal(json_integer_value(json_object_get(b, "droppedLinksCount")), 3);
	assert_string_equal(json_string_value(json_object_get(b, "endTimeUnixNano")),
	                    json_string_value(json_object_get(b, "startTimeUnixNano")));
	json_decref(doc);
	free(text);
}

static void test_attributes_bounded(void **state)
{
	(void)state;
	kobo_otlp_span s;
	memset(&s, 0, sizeof s);
	char long_value[1000];
	memset(long_value, 'x', sizeof long_value - 1);
	long_value[sizeof long_value - 1] = '\0';
	kobo_otlp_attr_str(&s, "long", long_value);
	assert_int_equal(strlen(s.attrs[0].s), KOBO_OTLP_ATTR_STR_MAX);
	for (int i = 0; i < 2 * KOBO_OTLP_ATTRS_MAX; i++)
		kobo_otlp_attr_int(&s, "n", i);
	assert_int_equal(s.attr_count, KOBO_OTLP_ATTRS_MAX);
}

static void test_ring_bounded_fifo(void **state)
{
	(void)state;
	kobo_otlp_ring r;
	assert_int_equal(kobo_otlp_ring_init(&r, 3), 0);
	kobo_otlp_span s;
	const kobo_otlp_span *out;
	memset(&s, 0, sizeof s);
	for (int round = 0; round < 3; round++) { /* the buffers swap each take */
		for (int i = 0; i < 3; i++) {
			s.start_ns = round * 10 + i;
			assert_true(kobo_otlp_ring_push(&r, &s));
		}
		assert_false(kobo_otlp_ring_push(&r, &s)); /* full: refused, nothing lost */
		assert_int_equal(kobo_otlp_ring_take(&r, &out), 3);
		for (int i = 0; i < 3; i++)
			assert_int_equal(out[i].start_ns, round * 10 + i);
		/* What was taken stays readable while the ring fills again. */
		s.start_ns = 99;
		assert_true(kobo_otlp_ring_push(&r, &s));
		assert_int_equal(out[0].start_ns, round * 10);
		assert_int_equal(kobo_otlp_ring_take(&r, &out), 1);
		assert_int_equal(out[0].start_ns, 99);
		assert_int_equal(kobo_otlp_ring_take(&r, &out), 0);
	}
	kobo_otlp_ring_free(&r);
}

/* The ring copies a span's used attributes and links, and nothing is lost:
 * what comes out encodes exactly as what went in. */
static void test_ring_copy_keeps_the_span(void **state)
{
	(void)state;
	kobo_otlp_config c;
	memset(&c, 0, sizeof c);
	kobo_otlp_span s;
	memset(&s, 0, sizeof s);
	memset(s.trace_id, 0x11, 16);
	memset(s.span_id, 0x22, 8);
	memset(s.parent_id, 0x33, 8);
	s.kind = KOBO_OTLP_KIND_SERVER;
	s.start_ns = 1000;
	s.end_ns = 2000;
	s.error = true;
	snprintf(s.name, sizeof s.name, "POST /v1/transfers");
	kobo_otlp_attr_str(&s, "a", "value");
	kobo_otlp_attr_int(&s, "b", -7);
	char longest[KOBO_OTLP_ATTR_STR_MAX + 50];
	memset(longest, 'y', sizeof longest - 1);
	longest[sizeof longest - 1] = '\0';
	kobo_otlp_attr_str(&s, "c", longest);
	kobo_otlp_attr_str(&s, "d", "");
	uint8_t tid[16], sid[8];
	for (int i = 0; i < KOBO_OTLP_LINKS_MAX + 2; i++) {
		memset(tid, i + 1, sizeof tid);
		memset(sid, i + 2, sizeof sid);
		kobo_otlp_link_add(&s, tid, sid);
	}
	kobo_otlp_ring r;
	assert_int_equal(kobo_otlp_ring_init(&r, 2), 0);
	/* The slot held another, longer span before: nothing of it shows. */
	kobo_otlp_span other;
	memset(&other, 0x7f, sizeof other);
	other.attr_count = KOBO_OTLP_ATTRS_MAX;
	other.link_count = KOBO_OTLP_LINKS_MAX;
	for (size_t i = 0; i < KOBO_OTLP_ATTRS_MAX; i++) {
		other.attrs[i].key = "x";
		other.attrs[i].is_int = false;
		other.attrs[i].s[KOBO_OTLP_ATTR_STR_MAX] = '\0';
	}
	other.name[KOBO_OTLP_NAME_MAX] = '\0';
	other.error = false;
	other.kind = KOBO_OTLP_KIND_INTERNAL;
	const kobo_otlp_span *out;
	assert_true(kobo_otlp_ring_push(&r, &other));
	assert_int_equal(kobo_otlp_ring_take(&r, &out), 1);
	assert_int_equal(kobo_otlp_ring_take(&r, &out), 0);
	assert_true(kobo_otlp_ring_push(&r, &s));
	assert_int_equal(kobo_otlp_ring_take(&r, &out), 1);
	char *want = kobo_otlp_encode(&c, &s, 1);
	char *got = kobo_otlp_encode(&c, out, 1);
	assert_non_null(want);
	assert_non_null(got);
	assert_string_equal(got, want);
	assert_non_null(strstr(got, "\"droppedLinksCount\":2"));
	free(want);
	free(got);
	kobo_otlp_ring_free(&r);
}

static void test_ids_and_hex(void **state)
{
	(void)state;
	uint8_t a[8], b[8], back[8];
	kobo_otlp_random_id(a, sizeof a);
	kobo_otlp_random_id(b, sizeof b);
	assert_memory_not_equal(a, b, sizeof a);
	char hex[17];
	kobo_otlp_hex(hex, a, sizeof a);
	assert_int_equal(strlen(hex), 16);
	assert_true(kobo_otlp_unhex(back, hex, sizeof back));
	assert_memory_equal(a, back, sizeof a);
	assert_false(kobo_otlp_unhex(back, "00f067aa0ba902bZ", 8));
	assert_false(kobo_otlp_unhex(back, "00f0", 8));
}

/* The "transfer" span id: the same from the same trace and transfer (the
 * creating request and, later, the saga runner or the expiry scan), a
 * different one when either differs, never zero. */
static void test_transfer_span_id_is_derived(void **state)
{
	(void)state;
	uint8_t t1[16], t2[16], a[8], b[8], c[8], d[8];
	memset(t1, 0x11, sizeof t1);
	memset(t2, 0x22, sizeof t2);
	kobo_otlp_transfer_span_id(a, t1, "tr-1");
	kobo_otlp_transfer_span_id(b, t1, "tr-1");
	kobo_otlp_transfer_span_id(c, t1, "tr-2");
	kobo_otlp_transfer_span_id(d, t2, "tr-1");
	assert_memory_equal(a, b, 8);
	assert_memory_not_equal(a, c, 8);
	assert_memory_not_equal(a, d, 8);
	static const uint8_t zero[8];
	assert_memory_not_equal(a, zero, 8);
}

static void test_disabled_costs_nothing(void **state)
{
	(void)state;
	/* Never started: not enabled, export is a no-op, stop too. */
	assert_false(kobo_otlp_enabled());
	kobo_otlp_span s;
	memset(&s, 0, sizeof s);
	kobo_otlp_export(&s);
	kobo_otlp_stop(10);
	assert_false(kobo_otlp_enabled());
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_config_disabled_without_endpoint),
		cmocka_unit_test(test_config_endpoints),
		cmocka_unit_test(test_config_resource_and_service),
		cmocka_unit_test(test_config_sampler_and_limits),
		cmocka_unit_test(test_samplers),
		cmocka_unit_test(test_encode_matches_the_otlp_json_mapping),
		cmocka_unit_test(test_attributes_bounded),
		cmocka_unit_test(test_ring_bounded_fifo),
		cmocka_unit_test(test_ring_copy_keeps_the_span),
		cmocka_unit_test(test_ids_and_hex),
		cmocka_unit_test(test_transfer_span_id_is_derived),
		cmocka_unit_test(test_disabled_costs_nothing),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
