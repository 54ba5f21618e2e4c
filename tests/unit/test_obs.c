/*
 * test_obs.c — logs and metrics: JSON escaping, the timestamp format, log
 * lines that parse as JSON (also when cut), the level filter, and the
 * Prometheus rendering (series present, counts right, histograms
 * cumulative, short buffers report the length needed).
 *
 * Metrics are process-global, so each test uses its own routes and shards
 * and never depends on another test's counts.
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
#include <time.h>
#include <unistd.h>

#include "../../src/obs/obs.h"

/* ---- Helpers. ---- */

/* Runs kobo_log with stderr redirected to a temporary file; returns what
 * was written (malloc'd, NUL-terminated). */
#define CAPTURE_LOG(out, ...)                                                  \
	do {                                                                   \
		FILE *capture_file = tmpfile();                                \
		assert_non_null(capture_file);                                 \
		int saved_fd = dup(STDERR_FILENO);                             \
		assert_true(saved_fd >= 0);                                    \
		assert_true(dup2(fileno(capture_file), STDERR_FILENO) >= 0);   \
		kobo_log(__VA_ARGS__);                                         \
		assert_true(dup2(saved_fd, STDERR_FILENO) >= 0);               \
		close(saved_fd);                                               \
		(out) = read_all(capture_file);                                \
		fclose(capture_file);                                          \
	} while (0)

static char *read_all(FILE *file)
{
	long size = ftell(file);
	assert_true(size >= 0);
	char *text = malloc((size_t)size + 1);
	assert_non_null(text);
	rewind(file);
	size_t n = fread(text, 1, (size_t)size, file);
	assert_int_equal(n, (size_t)size);
	text[n] = '\0';
	return text;
}

/* Parses one log line: exactly one '\n', at the end, and a JSON object. */
static json_t *parse_line(const char *text)
{
	size_t len = strlen(text);
	assert_true(len > 0);
	assert_int_equal(text[len - 1], '\n');
	assert_ptr_equal(strchr(text, '\n'), text + len - 1);
	json_error_t error;
	json_t *root = json_loadb(text, len - 1, 0, &error);
	if (root == NULL)
		fail_msg("log line is not JSON (%s): %s", error.text, text);
	assert_true(json_is_object(root));
	return root;
}

static char *render_all(void)
{
	size_t needed = kobo_metrics_render(NULL, 0);
	char *text = malloc(needed + 1);
	assert_non_null(text);
	size_t written = kobo_metrics_render(text, needed + 1);
	/* Other tests do not run concurrently, so nothing changed between. */
	assert_int_equal(written, needed);
	assert_int_equal(strlen(text), needed);
	return text;
}

/* The value of the series whose line starts with "series " (exact labels),
 * or -1 when absent. */
static double series_value(const char *text, const char *series)
{
	size_t n = strlen(series);
	for (const char *line = text; *line != '\0';) {
		if (strncmp(line, series, n) == 0 && line[n] == ' ')
			return strtod(line + n + 1, NULL);
		const char *next = strchr(line, '\n');
		if (next == NULL)
			break;
		line = next + 1;
	}
	return -1;
}

static void assert_series(const char *text, const char *series, double expected)
{
	double seen = series_value(text, series);
	if (seen != expected)
		fail_msg("%s: expected %g, saw %g", series, expected, seen);
}

/* ---- Escaping. ---- */

static void test_escape_json_rules(void **state)
{
	(void)state;
	char out[128];
	assert_string_equal(kobo_json_escape(out, sizeof out, "plain wallet:42"),
	                    "plain wallet:42");
	assert_string_equal(kobo_json_escape(out, sizeof out, "a\"b\\c"), "a\\\"b\\\\c");
	assert_string_equal(kobo_json_escape(out, sizeof out, "\n\r\t\b\f"),
	                    "\\n\\r\\t\\b\\f");
	assert_string_equal(kobo_json_escape(out, sizeof out, "\x01\x1f"), "\\u0001\\u001f");
	/* Valid UTF-8 passes through; invalid bytes become U+FFFD. */
	assert_string_equal(kobo_json_escape(out, sizeof out, "\xe2\x82\xa6" "500"),
	                    "\xe2\x82\xa6" "500");
	assert_string_equal(kobo_json_escape(out, sizeof out, "a\xff" "b"), "a\\ufffdb");
	assert_string_equal(kobo_json_escape(out, sizeof out, "\xc0\xaf"), "\\ufffd\\ufffd");
	assert_string_equal(kobo_json_escape(out, sizeof out, ""), "");
	assert_string_equal(kobo_json_escape(out, sizeof out, NULL), "");
}

static void test_escape_cuts_whole_sequences(void **state)
{
	(void)state;
	char out[6];
	/* "ab" + "\n" (2) fits in 5 chars; the next escape would not. */
	assert_string_equal(kobo_json_escape(out, sizeof out, "ab\n\x01"), "ab\\n");
	char tiny[4];
	assert_string_equal(kobo_json_escape(tiny, sizeof tiny, "a\x01"), "a");
	assert_string_equal(kobo_json_escape(tiny, sizeof tiny, "a\xe2\x82\xa6"), "a");
	char one[1];
	assert_string_equal(kobo_json_escape(one, sizeof one, "abc"), "");
}

/* ---- Time. ---- */

static void test_time_format_known_epochs(void **state)
{
	(void)state;
	static const struct {
		int64_t ms;
		const char *text;
	} cases[] = {
		{0, "1970-01-01T00:00:00.000Z"},
		{1234567890123, "2009-02-13T23:31:30.123Z"},
		{-1, "1969-12-31T23:59:59.999Z"},
		{951782400000, "2000-02-29T00:00:00.000Z"},
		{4102444800999, "2100-01-01T00:00:00.999Z"},
		{1795600800123, "2026-11-25T10:00:00.123Z"},
		{253402300799999, "9999-12-31T23:59:59.999Z"},
		{INT64_MAX, "9999-12-31T23:59:59.999Z"},
		{INT64_MIN, "0000-01-01T00:00:00.000Z"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char text[25];
		assert_string_equal(kobo_format_time_ms(text, cases[i].ms), cases[i].text);
		assert_int_equal(strlen(text), 24);
	}
}

static void test_clocks(void **state)
{
	(void)state;
	int64_t now = kobo_now_ms();
	int64_t wall = (int64_t)time(NULL) * 1000;
	assert_true(now > wall - 2000 && now < wall + 2000);
	int64_t a = kobo_monotonic_us();
	int64_t b = kobo_monotonic_us();
	assert_true(b >= a);
}

/* ---- Logging. ---- */

static void test_log_line_is_json(void **state)
{
	(void)state;
	kobo_log_set_level(KOBO_LOG_INFO);
	char escaped[64];
	kobo_json_escape(escaped, sizeof escaped, "say \"hi\"\n");
	char *text;
	CAPTURE_LOG(text, KOBO_LOG_INFO, "http_request",
	            "\"request_id\":\"%s\",\"status\":%d,\"note\":\"%s\"", "req-1", 201, escaped);
	json_t *root = parse_line(text);
	assert_string_equal(json_string_value(json_object_get(root, "level")), "info");
	assert_string_equal(json_string_value(json_object_get(root, "event")), "http_request");
	assert_string_equal(json_string_value(json_object_get(root, "request_id")), "req-1");
	assert_int_equal(json_integer_value(json_object_get(root, "status")), 201);
	assert_string_equal(json_string_value(json_object_get(root, "note")), "say \"hi\"\n");
	const char *ts = json_string_value(json_object_get(root, "ts"));
	assert_non_null(ts);
	assert_int_equal(strlen(ts), 24);
	assert_int_equal(ts[23], 'Z');
	/* ts, level, event come first, in that order. */
	assert_true(strncmp(text, "{\"ts\":\"", 7) == 0);
	assert_non_null(strstr(text, "\",\"level\":\"info\",\"event\":\"http_request\","));
	assert_null(json_object_get(root, "truncated"));
	json_decref(root);
	free(text);

	CAPTURE_LOG(text, KOBO_LOG_ERROR, "no_fields", NULL);
	root = parse_line(text);
	assert_string_equal(json_string_value(json_object_get(root, "level")), "error");
	assert_int_equal(json_object_size(root), 3);
	json_decref(root);
	free(text);
}

static void test_log_level_filter(void **state)
{
	(void)state;
	char *text;
	assert_int_equal(kobo_log_set_level_name("warn"), KOBO_OK);
	assert_false(kobo_log_enabled(KOBO_LOG_INFO));
	assert_true(kobo_log_enabled(KOBO_LOG_WARN));
	CAPTURE_LOG(text, KOBO_LOG_INFO, "hidden", NULL);
	assert_string_equal(text, "");
	free(text);
	CAPTURE_LOG(text, KOBO_LOG_DEBUG, "hidden", NULL);
	assert_string_equal(text, "");
	free(text);
	CAPTURE_LOG(text, KOBO_LOG_WARN, "shown", NULL);
	json_t *root = parse_line(text);
	assert_string_equal(json_string_value(json_object_get(root, "level")), "warn");
	json_decref(root);
	free(text);

	assert_int_equal(kobo_log_set_level_name("loud"), KOBO_EINVAL);
	assert_int_equal(kobo_log_set_level_name(NULL), KOBO_EINVAL);
	assert_false(kobo_log_enabled(KOBO_LOG_INFO)); /* unchanged */
	assert_int_equal(kobo_log_set_level_name("debug"), KOBO_OK);
	assert_true(kobo_log_enabled(KOBO_LOG_DEBUG));
	kobo_log_set_level(KOBO_LOG_INFO);
	assert_false(kobo_log_enabled(KOBO_LOG_DEBUG));
}

static void test_log_long_line_is_cut_validly(void **state)
{
	(void)state;
	kobo_log_set_level(KOBO_LOG_INFO);
	char big[KOBO_LOG_LINE_MAX * 2];
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	char *text;
	CAPTURE_LOG(text, KOBO_LOG_WARN, "big", "\"first\":1,\"nested\":{\"a\":\"b,c\"},\"blob\":\"%s\",\"last\":2",
	            big);
	assert_true(strlen(text) <= KOBO_LOG_LINE_MAX);
	json_t *root = parse_line(text);
	assert_true(json_is_true(json_object_get(root, "truncated")));
	assert_int_equal(json_integer_value(json_object_get(root, "first")), 1);
	assert_string_equal(json_string_value(json_object_get(json_object_get(root, "nested"), "a")),
	                    "b,c");
	assert_null(json_object_get(root, "blob"));
	assert_null(json_object_get(root, "last"));
	json_decref(root);
	free(text);

	/* A single oversized field leaves only ts, level, event. */
	CAPTURE_LOG(text, KOBO_LOG_WARN, "big", "\"blob\":\"%s\"", big);
	root = parse_line(text);
	assert_true(json_is_true(json_object_get(root, "truncated")));
	assert_int_equal(json_object_size(root), 4);
	json_decref(root);
	free(text);

	/* An event needing escapes is escaped. */
	CAPTURE_LOG(text, KOBO_LOG_WARN, "odd\"event", NULL);
	root = parse_line(text);
	assert_string_equal(json_string_value(json_object_get(root, "event")), "odd\"event");
	json_decref(root);
	free(text);
}

/* ---- Metrics. ---- */

static const char *const routes[] = {
	"POST /v1/transfers",   /* 0: counts */
	"GET /v1/accounts/{id}", /* 1: histogram */
	"GET /healthz",          /* 2: never used */
};

static void test_metrics_series_and_counts(void **state)
{
	(void)state;
	kobo_metrics_request(0, 201, 1000);
	kobo_metrics_request(0, 201, 2000);
	kobo_metrics_request(0, 422, 300);
	kobo_metrics_request(0, 418, 300); /* not in the table: "other" */
	kobo_metrics_request(3, 404, 50);  /* index == count: unmatched */
	kobo_metrics_request(99, 404, 50); /* out of range: unmatched too */
	kobo_metrics_batch(2, 7, 1500);
	kobo_metrics_queue_depth(2, 33);
	kobo_metrics_queue_depth(2, 12); /* a gauge: last sample wins */
	kobo_metrics_queue_capacity(2, 65536);
	kobo_metrics_shard_ready(0, true);
	kobo_metrics_shard_ready(2, true);
	kobo_metrics_shard_ready(2, false); /* a gauge: last sample wins */
	kobo_metrics_shard_ready(KOBO_METRICS_SHARDS_MAX, true); /* ignored */
	kobo_metrics_overloaded(1);
	kobo_metrics_overloaded(1);
	kobo_metrics_expired(0, 5);
	kobo_metrics_rejected(KOBO_RESULT_INSUFFICIENT_FUNDS);
	kobo_metrics_rejected(KOBO_RESULT_INSUFFICIENT_FUNDS);
	kobo_metrics_rejected(KOBO_RESULT_ID_CONFLICT);
	kobo_metrics_batch(KOBO_METRICS_SHARDS_MAX, 1, 1); /* ignored */
	kobo_metrics_rate_limited_ip();
	kobo_metrics_rate_limited_ip();
	kobo_metrics_rate_limited_ip();

	char *text = render_all();
	static const char *const headers[] = {
		"kobo_http_requests_total counter",
		"kobo_http_request_duration_seconds histogram",
		"kobo_batch_ops histogram",
		"kobo_batch_commit_duration_seconds histogram",
		"kobo_shard_queue_depth gauge",
		"kobo_shard_queue_capacity gauge",
		"kobo_shard_ready gauge",
		"kobo_rejections_total counter",
		"kobo_overloaded_total counter",
		"kobo_rate_limited_total counter",
		"kobo_holds_expired_total counter",
	};
	for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
		char type_line[128], help_line[128];
		snprintf(type_line, sizeof type_line, "# TYPE %s\n", headers[i]);
		assert_non_null(strstr(text, type_line));
		snprintf(help_line, sizeof help_line, "# HELP %.*s ",
		         (int)strcspn(headers[i], " "), headers[i]);
		assert_non_null(strstr(text, help_line));
	}

	assert_series(text, "kobo_http_requests_total{route=\"POST /v1/transfers\",status=\"201\"}", 2);
	assert_series(text, "kobo_http_requests_total{route=\"POST /v1/transfers\",status=\"422\"}", 1);
	assert_series(text, "kobo_http_requests_total{route=\"POST /v1/transfers\",status=\"other\"}", 1);
	assert_series(text, "kobo_http_requests_total{route=\"unmatched\",status=\"404\"}", 2);
	/* Statuses that never occurred are not rendered. */
	assert_series(text, "kobo_http_requests_total{route=\"POST /v1/transfers\",status=\"500\"}", -1);
	assert_null(strstr(text, "route=\"GET /healthz\""));
	assert_series(text, "kobo_http_request_duration_seconds_count{route=\"POST /v1/transfers\"}", 4);
	assert_series(text, "kobo_http_request_duration_seconds_sum{route=\"POST /v1/transfers\"}", 0.0036);

	assert_series(text, "kobo_batch_ops_bucket{shard=\"2\",le=\"5\"}", 0);
	assert_series(text, "kobo_batch_ops_bucket{shard=\"2\",le=\"10\"}", 1);
	assert_series(text, "kobo_batch_ops_bucket{shard=\"2\",le=\"8192\"}", 1);
	assert_series(text, "kobo_batch_ops_sum{shard=\"2\"}", 7);
	assert_series(text, "kobo_batch_ops_count{shard=\"2\"}", 1);
	assert_series(text, "kobo_batch_commit_duration_seconds_bucket{shard=\"2\",le=\"0.001\"}", 0);
	assert_series(text, "kobo_batch_commit_duration_seconds_bucket{shard=\"2\",le=\"0.0025\"}", 1);
	assert_series(text, "kobo_shard_queue_depth{shard=\"2\"}", 12);
	assert_series(text, "kobo_shard_queue_depth{shard=\"0\"}", 0);
	assert_series(text, "kobo_shard_queue_capacity{shard=\"2\"}", 65536);
	assert_series(text, "kobo_shard_queue_capacity{shard=\"1\"}", 0); /* never set */
	assert_series(text, "kobo_shard_ready{shard=\"2\"}", 0);
	assert_series(text, "kobo_shard_ready{shard=\"0\"}", 1);
	assert_series(text, "kobo_overloaded_total{shard=\"1\"}", 2);
	assert_series(text, "kobo_overloaded_total{shard=\"0\"}", 0);
	assert_series(text, "kobo_holds_expired_total{shard=\"0\"}", 5);
	assert_series(text, "kobo_rate_limited_total{by=\"ip\"}", 3);
	/* Shards past the highest one used are not rendered. */
	assert_null(strstr(text, "shard=\"3\""));
	assert_null(strstr(text, "shard=\"256\""));

	assert_series(text, "kobo_rejections_total{code=\"insufficient_funds\"}", 2);
	assert_series(text, "kobo_rejections_total{code=\"id_conflict\"}", 1);
	assert_series(text, "kobo_rejections_total{code=\"currency_mismatch\"}", 0);
	assert_null(strstr(text, "code=\"created\""));
	free(text);
}

static void test_metrics_histogram_is_cumulative(void **state)
{
	(void)state;
	/* Route 1: 50 µs, 100 µs (on a bound: le is inclusive), 101 µs,
	 * 3 s, 10 s (past the last bound), and one negative (clamped to 0). */
	static const int64_t latencies_us[] = {50, 100, 101, 3000000, 10000000, -5};
	for (size_t i = 0; i < sizeof latencies_us / sizeof latencies_us[0]; i++)
		kobo_metrics_request(1, 200, latencies_us[i]);

	char *text = render_all();
#define BUCKET(le) "kobo_http_request_duration_seconds_bucket{route=\"GET /v1/accounts/{id}\",le=\"" le "\"}"
	assert_series(text, BUCKET("0.0001"), 3);
	assert_series(text, BUCKET("0.00025"), 4);
	assert_series(text, BUCKET("0.0005"), 4);
	assert_series(text, BUCKET("1"), 4);
	assert_series(text, BUCKET("2.5"), 4);
	assert_series(text, BUCKET("5"), 5);
	assert_series(text, BUCKET("+Inf"), 6);
#undef BUCKET
	assert_series(text, "kobo_http_request_duration_seconds_count{route=\"GET /v1/accounts/{id}\"}", 6);
	assert_non_null(strstr(text,
	        "kobo_http_request_duration_seconds_sum{route=\"GET /v1/accounts/{id}\"} 13.000251\n"));

	/* Every bucket line of every histogram is non-decreasing in le order. */
	double previous = -1;
	char previous_series[256] = "";
	for (const char *line = text; *line != '\0';) {
		const char *end = strchr(line, '\n');
		assert_non_null(end);
		const char *le = strstr(line, ",le=\"");
		if (le != NULL && le < end) {
			size_t series_len = (size_t)(le - line);
			assert_true(series_len < sizeof previous_series);
			double value = strtod(strchr(le, ' ') + 1, NULL);
			if (strncmp(previous_series, line, series_len) == 0 &&
			    previous_series[series_len] == '\0') {
				if (value < previous)
					fail_msg("bucket decreases: %.*s", (int)(end - line), line);
			}
			memcpy(previous_series, line, series_len);
			previous_series[series_len] = '\0';
			previous = value;
		}
		line = end + 1;
	}
	free(text);
}

static void test_metrics_small_buffer_reports_length(void **state)
{
	(void)state;
	kobo_metrics_request(0, 200, 10);
	size_t needed = kobo_metrics_render(NULL, 0);
	assert_true(needed > 100);

	char small[64];
	memset(small, '#', sizeof small);
	assert_int_equal(kobo_metrics_render(small, sizeof small), needed);
	assert_int_equal(strlen(small), sizeof small - 1); /* a NUL-terminated prefix */

	char *exact = malloc(needed);
	assert_non_null(exact);
	assert_int_equal(kobo_metrics_render(exact, needed), needed); /* fits, no NUL */
	char *full = render_all();
	assert_memory_equal(exact, full, needed);
	assert_true(strncmp(full, small, sizeof small - 1) == 0);
	free(exact);
	free(full);
}

static int group_setup(void **state)
{
	(void)state;
	kobo_metrics_set_routes(routes, sizeof routes / sizeof routes[0]);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_escape_json_rules),
		cmocka_unit_test(test_escape_cuts_whole_sequences),
		cmocka_unit_test(test_time_format_known_epochs),
		cmocka_unit_test(test_clocks),
		cmocka_unit_test(test_log_line_is_json),
		cmocka_unit_test(test_log_level_filter),
		cmocka_unit_test(test_log_long_line_is_cut_validly),
		cmocka_unit_test(test_metrics_series_and_counts),
		cmocka_unit_test(test_metrics_histogram_is_cumulative),
		cmocka_unit_test(test_metrics_small_buffer_reports_length),
	};
	return cmocka_run_group_tests(tests, group_setup, NULL);
}
