/*
 * test_http_codec.c — the HTTP layer's pure functions: every body parser
 * (accepts what API.md allows; each refusal is a 400 naming its field),
 * query and header validators, the JSON encoders (output parsed back with
 * jansson and compared field by field), the result → status mapping, and
 * the route matcher (404, 405 with Allow, "batch" as a transfer id).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/http/codec.h"
#include "../../src/http/internal.h"
#include "../../src/http/routes.h"
#include "../../src/obs/obs.h"

/* ---- Helpers. ---- */

typedef int (*body_parser)(const char *, size_t, kobo_http_ops *, kobo_http_error *);

static int parse_post_x(const char *body, size_t len, kobo_http_ops *out,
                        kobo_http_error *err)
{
	return kobo_http_parse_post(body, len, "tx:1", out, err);
}

static int parse_void_x(const char *body, size_t len, kobo_http_ops *out,
                        kobo_http_error *err)
{
	return kobo_http_parse_void(body, len, "tx:1", out, err);
}

/* Asserts that parser refuses body with 400 invalid_request and a message
 * that starts with field. */
static void expect_refusal(body_parser parser, const char *body, size_t len,
                           const char *field)
{
	kobo_http_ops ops;
	kobo_http_error err;
	kobo_http_ops_init(&ops);
	int rc = parser(body, len, &ops, &err);
	if (rc != KOBO_EINVAL || err.status != 400 ||
	    strcmp(err.code, "invalid_request") != 0 ||
	    strncmp(err.message, field, strlen(field)) != 0)
		fail_msg("body %.120s: expected 400 invalid_request naming '%s', saw rc %d "
		         "status %d message '%s'", body, field, rc,
		         rc ? err.status : 0, rc ? err.message : "");
	assert_null(ops.ops);
	kobo_http_ops_free(&ops);
}

#define REFUSE(parser, body, field) expect_refusal(parser, body, strlen(body), field)

static void expect_ok(body_parser parser, const char *body, kobo_http_ops *ops)
{
	kobo_http_error err;
	kobo_http_ops_init(ops);
	int rc = parser(body, strlen(body), ops, &err);
	if (rc != KOBO_OK)
		fail_msg("body %.120s: expected it accepted, saw %d: %s", body, err.status,
		         err.message);
}

static const char *transfer_body =
	"{\"id\":\"tx:0001\",\"from\":\"wallet:42\",\"to\":\"wallet:77\",\"amount\":2500,"
	"\"currency\":\"NGN\",\"pending\":true,\"timeout_seconds\":60,"
	"\"metadata\":{\"b\":1, \"a\" : [true,null,\"x\"]}}";

/* ---- Accounts. ---- */

static void account_is_parsed_with_defaults(void **state)
{
	(void)state;
	kobo_http_ops ops;
	expect_ok(kobo_http_parse_account, "{\"id\":\"wallet:42\",\"currency\":\"NGN\"}", &ops);
	assert_int_equal(ops.count, 1);
	const kobo_op *op = &ops.ops[0];
	assert_int_equal(op->kind, KOBO_OP_CREATE_ACCOUNT);
	assert_string_equal(op->u.account.id, "wallet:42");
	assert_string_equal(op->u.account.currency, "NGN");
	assert_false(op->u.account.allow_negative);
	assert_int_equal(op->u.account.metadata_len, 2);
	assert_memory_equal(op->u.account.metadata, "{}", 2);
	kobo_http_ops_free(&ops);
}

static void account_metadata_is_stored_compact_in_order(void **state)
{
	(void)state;
	kobo_http_ops ops;
	expect_ok(kobo_http_parse_account,
	          "{\"metadata\": {\"z\": 1, \"a\": {\"k\": \"v\"}}, \"id\":\"a@b.c\","
	          "\"currency\":\"USDC\",\"allow_negative\":true}", &ops);
	const kobo_account *a = &ops.ops[0].u.account;
	assert_true(a->allow_negative);
	const char *want = "{\"z\":1,\"a\":{\"k\":\"v\"}}";
	assert_int_equal(a->metadata_len, strlen(want));
	assert_memory_equal(a->metadata, want, strlen(want));
	kobo_http_ops_free(&ops);
}

static void account_refusals_name_the_field(void **state)
{
	(void)state;
	body_parser p = kobo_http_parse_account;
	REFUSE(p, "{\"id\":\"a\",\"currency\":\"NGN\",\"colour\":1}", "colour: unknown field");
	REFUSE(p, "{\"id\":\"a\",\"id\":\"b\",\"currency\":\"NGN\"}", "id: duplicate key");
	REFUSE(p, "{\"currency\":\"NGN\"}", "id: required");
	REFUSE(p, "{\"id\":\"a b\",\"currency\":\"NGN\"}", "id:");
	REFUSE(p, "{\"id\":\"a/b\",\"currency\":\"NGN\"}", "id:");
	REFUSE(p, "{\"id\":\"\",\"currency\":\"NGN\"}", "id:");
	REFUSE(p, "{\"id\":12,\"currency\":\"NGN\"}", "id: must be a string");
	REFUSE(p, "{\"id\":\"a\",\"currency\":\"ngn\"}", "currency:");
	REFUSE(p, "{\"id\":\"a\",\"currency\":\"NG\"}", "currency:");
	REFUSE(p, "{\"id\":\"a\",\"currency\":\"1GN\"}", "currency:");
	REFUSE(p, "{\"id\":\"a\",\"currency\":\"ABCDEFGHI\"}", "currency:");
	REFUSE(p, "{\"id\":\"a\",\"currency\":\"NGN\",\"allow_negative\":\"true\"}",
	       "allow_negative:");
	REFUSE(p, "{\"id\":\"a\",\"currency\":\"NGN\",\"allow_negative\":1}", "allow_negative:");
	REFUSE(p, "{\"id\":\"a\",\"currency\":\"NGN\",\"metadata\":[1]}", "metadata:");
	REFUSE(p, "{\"id\":\"a\",\"currency\":\"NGN\",\"metadata\":null}", "metadata:");
	REFUSE(p, "{\"id\":\"a\",\"currency\":\"NGN\",\"metadata\":\"{}\"}", "metadata:");
	REFUSE(p, "[{\"id\":\"a\",\"currency\":\"NGN\"}]", "body: must be a JSON object");
	REFUSE(p, "\"x\"", "body");
	REFUSE(p, "", "body");
	REFUSE(p, "{\"id\":\"a\",", "body");
	REFUSE(p, "{\"id\":\"a\",\"currency\":\"NGN\"} {}", "body");
}

static void id_of_64_characters_is_the_longest(void **state)
{
	(void)state;
	char id[66], body[200];
	memset(id, 'a', 65);
	id[65] = '\0';
	snprintf(body, sizeof(body), "{\"id\":\"%s\",\"currency\":\"NGN\"}", id);
	REFUSE(kobo_http_parse_account, body, "id:");
	id[64] = '\0';
	snprintf(body, sizeof(body), "{\"id\":\"%s\",\"currency\":\"NGN\"}", id);
	kobo_http_ops ops;
	expect_ok(kobo_http_parse_account, body, &ops);
	assert_string_equal(ops.ops[0].u.account.id, id);
	kobo_http_ops_free(&ops);
	assert_true(kobo_http_id_valid("A-z_0.9:@x", 10));
	assert_false(kobo_http_id_valid("é", strlen("é")));
}

static void metadata_limits(void **state)
{
	(void)state;
	/* Exactly 4096 bytes compact is accepted; 4097 is not. */
	char *body = malloc(8192);
	assert_non_null(body);
	size_t filler = 4096 - strlen("{\"k\":\"\"}");
	int n = snprintf(body, 8192, "{\"id\":\"a\",\"currency\":\"NGN\",\"metadata\":{\"k\":\"");
	memset(body + n, 'x', filler);
	strcpy(body + n + filler, "\"}}");
	kobo_http_ops ops;
	expect_ok(kobo_http_parse_account, body, &ops);
	assert_int_equal(ops.ops[0].u.account.metadata_len, 4096);
	kobo_http_ops_free(&ops);
	memset(body + n, 'x', filler + 1);
	strcpy(body + n + filler + 1, "\"}}");
	REFUSE(kobo_http_parse_account, body, "metadata:");

	/* Nesting deeper than the limit. */
	size_t used = (size_t)snprintf(body, 8192, "{\"id\":\"a\",\"currency\":\"NGN\",\"metadata\":");
	for (int i = 0; i < 40; i++)
		body[used++] = '[';
	for (int i = 0; i < 40; i++)
		body[used++] = ']';
	strcpy(body + used, "}");
	REFUSE(kobo_http_parse_account, body, "metadata:");
	used = (size_t)snprintf(body, 8192, "{\"id\":\"a\",\"currency\":\"NGN\",\"metadata\":{\"a\":");
	for (int i = 0; i < 40; i++)
		used += (size_t)snprintf(body + used, 8192 - used, "{\"a\":");
	used += (size_t)snprintf(body + used, 8192 - used, "1");
	for (int i = 0; i < 42; i++)
		body[used++] = '}';
	body[used] = '\0';
	REFUSE(kobo_http_parse_account, body, "metadata:");
	free(body);
}

/* ---- Transfers. ---- */

static void transfer_is_parsed(void **state)
{
	(void)state;
	kobo_http_ops ops;
	expect_ok(kobo_http_parse_transfer, transfer_body, &ops);
	const kobo_op *op = &ops.ops[0];
	assert_int_equal(op->kind, KOBO_OP_CREATE_TRANSFER);
	assert_int_equal(op->atomic_group, 0);
	const kobo_transfer *t = &op->u.transfer;
	assert_string_equal(t->id, "tx:0001");
	assert_string_equal(t->from, "wallet:42");
	assert_string_equal(t->to, "wallet:77");
	assert_int_equal(t->amount, 2500);
	assert_string_equal(t->currency, "NGN");
	assert_true(t->pending);
	assert_int_equal(t->timeout_seconds, 60);
	const char *meta = "{\"b\":1,\"a\":[true,null,\"x\"]}";
	assert_int_equal(t->metadata_len, strlen(meta));
	assert_memory_equal(t->metadata, meta, strlen(meta));
	kobo_http_ops_free(&ops);

	expect_ok(kobo_http_parse_transfer,
	          "{\"id\":\"t\",\"from\":\"a\",\"to\":\"b\",\"amount\":9223372036854775807,"
	          "\"currency\":\"NGN\"}", &ops);
	assert_int_equal(ops.ops[0].u.transfer.amount, INT64_MAX);
	assert_false(ops.ops[0].u.transfer.pending);
	kobo_http_ops_free(&ops);
}

static void transfer_refusals_name_the_field(void **state)
{
	(void)state;
	body_parser p = kobo_http_parse_transfer;
#define T(amount) "{\"id\":\"t\",\"from\":\"a\",\"to\":\"b\",\"amount\":" amount ",\"currency\":\"NGN\"}"
	REFUSE(p, T("1.0"), "amount: must be an integer");
	REFUSE(p, T("2.5"), "amount: must be an integer");
	REFUSE(p, T("1e3"), "amount: must be an integer");
	REFUSE(p, T("\"100\""), "amount: must be an integer");
	REFUSE(p, T("true"), "amount: must be an integer");
	REFUSE(p, T("null"), "amount: must be an integer");
	REFUSE(p, T("0"), "amount: must be between 1");
	REFUSE(p, T("-1"), "amount: must be between 1");
	REFUSE(p, T("9223372036854775808"), "amount:");
	REFUSE(p, T("-9223372036854775809"), "amount:");
	REFUSE(p, T("123456789012345678901234567890"), "amount:");
#undef T
	REFUSE(p, "{\"id\":\"t\",\"from\":\"a\",\"to\":\"b\",\"currency\":\"NGN\"}", "amount: required");
	REFUSE(p, "{\"id\":\"t\",\"to\":\"b\",\"amount\":1,\"currency\":\"NGN\"}", "from: required");
	REFUSE(p, "{\"id\":\"t\",\"from\":\"a\",\"to\":\"b c\",\"amount\":1,\"currency\":\"NGN\"}", "to:");
	REFUSE(p, "{\"id\":\"t\",\"from\":\"a\",\"to\":\"b\",\"amount\":1,\"currency\":\"NGN\","
	          "\"pending\":0}", "pending:");
	REFUSE(p, "{\"id\":\"t\",\"from\":\"a\",\"to\":\"b\",\"amount\":1,\"currency\":\"NGN\","
	          "\"timeout_seconds\":-1}", "timeout_seconds:");
	REFUSE(p, "{\"id\":\"t\",\"from\":\"a\",\"to\":\"b\",\"amount\":1,\"currency\":\"NGN\","
	          "\"timeout_seconds\":31536001}", "timeout_seconds:");
	REFUSE(p, "{\"id\":\"t\",\"from\":\"a\",\"to\":\"b\",\"amount\":1,\"currency\":\"NGN\","
	          "\"timeout_seconds\":1.5}", "timeout_seconds:");
	REFUSE(p, "{\"id\":\"t\",\"from\":\"a\",\"to\":\"b\",\"amount\":1,\"currency\":\"NGN\","
	          "\"status\":\"posted\"}", "status: unknown field");
	REFUSE(p, "{\"id\":\"t\",\"from\":\"a\",\"to\":\"b\",\"amount\":1,\"amount\":1,"
	          "\"currency\":\"NGN\"}", "amount: duplicate key");
	/* Invalid UTF-8 in a value and in a key. */
	REFUSE(p, "{\"id\":\"t\",\"from\":\"a\xff\",\"to\":\"b\",\"amount\":1,\"currency\":\"NGN\"}",
	       "from: invalid UTF-8");
	REFUSE(p, "{\"id\":\"t\",\"fr\xc3\x28\":\"a\"}", "body: invalid UTF-8");
	REFUSE(p, "{\"id\":\"t\\u0000\"}", "id:");
	/* A body cut short, and NUL bytes inside. */
	const char nul_body[] = "{\"id\":\"t\0\"}";
	expect_refusal(p, nul_body, sizeof(nul_body) - 1, "body");
}

/* ---- Batches. ---- */

static char *batch_of(size_t count, bool atomic)
{
	size_t cap = count * 120 + 64;
	char *body = malloc(cap);
	assert_non_null(body);
	size_t used = (size_t)snprintf(body, cap, "{\"atomic\":%s,\"transfers\":[",
	                               atomic ? "true" : "false");
	for (size_t i = 0; i < count; i++)
		used += (size_t)snprintf(body + used, cap - used,
		                         "%s{\"id\":\"b:%zu\",\"from\":\"a\",\"to\":\"b\","
		                         "\"amount\":%zu,\"currency\":\"NGN\"}",
		                         i ? "," : "", i, i + 1);
	snprintf(body + used, cap - used, "]}");
	return body;
}

static void batch_is_parsed_in_order(void **state)
{
	(void)state;
	char *body = batch_of(KOBO_BATCH_OPS_MAX, true);
	kobo_http_ops ops;
	expect_ok(kobo_http_parse_batch, body, &ops);
	assert_int_equal(ops.count, KOBO_BATCH_OPS_MAX);
	assert_true(ops.atomic);
	for (size_t i = 0; i < ops.count; i++) {
		char id[32];
		snprintf(id, sizeof(id), "b:%zu", i);
		assert_string_equal(ops.ops[i].u.transfer.id, id);
		assert_int_equal(ops.ops[i].u.transfer.amount, (int64_t)i + 1);
		assert_int_equal(ops.ops[i].atomic_group, 1);
		assert_memory_equal(ops.ops[i].u.transfer.metadata, "{}", 2);
	}
	kobo_http_ops_free(&ops);
	free(body);

	expect_ok(kobo_http_parse_batch,
	          "{\"transfers\":[{\"id\":\"x\",\"from\":\"a\",\"to\":\"b\",\"amount\":1,"
	          "\"currency\":\"NGN\",\"metadata\":{\"n\":1}},{\"id\":\"y\",\"from\":\"a\","
	          "\"to\":\"b\",\"amount\":2,\"currency\":\"NGN\"},{\"id\":\"z\",\"from\":\"a\","
	          "\"to\":\"b\",\"amount\":3,\"currency\":\"NGN\",\"metadata\":{\"m\":[2]}}]}",
	          &ops);
	assert_false(ops.atomic);
	assert_int_equal(ops.ops[0].atomic_group, 0);
	assert_memory_equal(ops.ops[0].u.transfer.metadata, "{\"n\":1}", 7);
	assert_memory_equal(ops.ops[1].u.transfer.metadata, "{}", 2);
	assert_memory_equal(ops.ops[2].u.transfer.metadata, "{\"m\":[2]}", 9);
	kobo_http_ops_free(&ops);
}

static void batch_refusals_name_the_transfer(void **state)
{
	(void)state;
	body_parser p = kobo_http_parse_batch;
	char *body = batch_of(KOBO_BATCH_OPS_MAX + 1, false);
	REFUSE(p, body, "transfers:");
	free(body);
	REFUSE(p, "{\"transfers\":[]}", "transfers:");
	REFUSE(p, "{\"atomic\":true}", "transfers: required");
	REFUSE(p, "{\"transfers\":{}}", "transfers: must be an array");
	REFUSE(p, "{\"transfers\":[1]}", "transfers[0]:");
	REFUSE(p, "{\"atomic\":1,\"transfers\":[]}", "atomic:");
	REFUSE(p, "{\"transfers\":[],\"extra\":1}", "extra: unknown field");
	REFUSE(p, "{\"transfers\":[{\"id\":\"x\",\"from\":\"a\",\"to\":\"b\",\"amount\":1,"
	          "\"currency\":\"NGN\"},{\"id\":\"y\",\"from\":\"a\",\"to\":\"b\",\"amount\":0,"
	          "\"currency\":\"NGN\"}]}", "transfers[1].amount:");
	REFUSE(p, "{\"transfers\":[{\"id\":\"x\",\"from\":\"a\",\"to\":\"b\",\"amount\":1,"
	          "\"currency\":\"NGN\"},{\"id\":\"y\",\"from\":\"a\",\"to\":\"b\",\"amount\":"
	          "99999999999999999999,\"currency\":\"NGN\"}]}", "transfers[1].amount:");
	REFUSE(p, "{\"transfers\":[{\"id\":\"x\",\"id\":\"x\"}]}", "transfers[0].id: duplicate key");
	REFUSE(p, "{\"transfers\":[{\"id\":\"x\",\"from\":\"a\",\"to\":\"b\",\"amount\":1,"
	          "\"currency\":\"NGN\",\"foo\":2}]}", "transfers[0].foo: unknown field");
}

/* ---- Post and void. ---- */

static void post_and_void_bodies(void **state)
{
	(void)state;
	kobo_http_ops ops;
	expect_ok(parse_post_x, "", &ops);
	assert_int_equal(ops.ops[0].kind, KOBO_OP_POST);
	assert_string_equal(ops.ops[0].u.target.id, "tx:1");
	assert_false(ops.ops[0].u.target.has_amount);
	kobo_http_ops_free(&ops);
	expect_ok(parse_post_x, "{}", &ops);
	assert_false(ops.ops[0].u.target.has_amount);
	kobo_http_ops_free(&ops);
	expect_ok(parse_post_x, " {\"amount\": 400} ", &ops);
	assert_true(ops.ops[0].u.target.has_amount);
	assert_int_equal(ops.ops[0].u.target.amount, 400);
	kobo_http_ops_free(&ops);
	REFUSE(parse_post_x, "{\"amount\":0}", "amount:");
	REFUSE(parse_post_x, "{\"amount\":\"5\"}", "amount:");
	REFUSE(parse_post_x, "{\"amt\":5}", "amt: unknown field");
	REFUSE(parse_post_x, "[]", "body");

	expect_ok(parse_void_x, "", &ops);
	assert_int_equal(ops.ops[0].kind, KOBO_OP_VOID);
	kobo_http_ops_free(&ops);
	expect_ok(parse_void_x, "{}", &ops);
	kobo_http_ops_free(&ops);
	REFUSE(parse_void_x, "{\"amount\":5}", "amount: unknown field");

	kobo_http_error err;
	kobo_http_ops_init(&ops);
	assert_int_equal(kobo_http_parse_void("", 0, "bad id", &ops, &err), KOBO_EINVAL);
	assert_int_equal(err.status, 400);
}

/* ---- Query and headers. ---- */

static void history_query_arguments(void **state)
{
	(void)state;
	kobo_http_history_query q;
	kobo_http_error err;
	kobo_http_history_query_init(&q);
	assert_int_equal(q.limit, 100);
	assert_int_equal(q.after_seq, 0);
	assert_int_equal(kobo_http_history_query_arg(&q, "limit", "1000", &err), KOBO_OK);
	assert_int_equal(q.limit, 1000);
	assert_int_equal(kobo_http_history_query_arg(&q, "after", "42", &err), KOBO_OK);
	assert_int_equal(q.after_seq, 42);
	assert_int_equal(kobo_http_history_query_arg(&q, "limit", "5", &err), KOBO_EINVAL);
	assert_non_null(strstr(err.message, "limit"));

	static const char *const bad_limits[] = { "0", "1001", "-1", "+5", "5x", "", "1.0",
	                                          "99999999999999999999" };
	for (size_t i = 0; i < sizeof(bad_limits) / sizeof(bad_limits[0]); i++) {
		kobo_http_history_query_init(&q);
		assert_int_equal(kobo_http_history_query_arg(&q, "limit", bad_limits[i], &err),
		                 KOBO_EINVAL);
		assert_int_equal(err.status, 400);
	}
	kobo_http_history_query_init(&q);
	assert_int_equal(kobo_http_history_query_arg(&q, "limit", NULL, &err), KOBO_EINVAL);
	assert_int_equal(kobo_http_history_query_arg(&q, "after", "abc", &err), KOBO_EINVAL);
	assert_int_equal(kobo_http_history_query_arg(&q, "after", "9223372036854775808", &err),
	                 KOBO_EINVAL);
	assert_int_equal(kobo_http_history_query_arg(&q, "offset", "1", &err), KOBO_EINVAL);
	assert_non_null(strstr(err.message, "offset"));
}

/* GET /v1/transfers/{id}/events: limit 1..1000 (the default is the
 * handler's), and the cursor "P.Q.F" round-trips through its formatter,
 * the largest seqs included; anything else is a 400 naming the field. */
static void events_query_and_cursor(void **state)
{
	(void)state;
	kobo_http_history_query q;
	kobo_http_error err;
	kobo_http_history_query_init(&q);
	assert_int_equal(kobo_http_events_query_arg(&q, "limit", "1000", &err), KOBO_OK);
	assert_true(q.has_limit);
	assert_int_equal(q.limit, 1000);
	assert_int_equal(kobo_http_events_query_arg(&q, "limit", "7", &err), KOBO_EINVAL);
	assert_non_null(strstr(err.message, "limit: given twice"));
	assert_int_equal(kobo_http_events_query_arg(&q, "after", "12.0.1", &err), KOBO_OK);
	assert_int_equal(q.events_after.after_seq[0], 12);
	assert_int_equal(q.events_after.after_seq[1], 0);
	assert_true(q.events_after.after_ask);
	assert_int_equal(kobo_http_events_query_arg(&q, "after", "1.1.0", &err), KOBO_EINVAL);
	assert_non_null(strstr(err.message, "after: given twice"));

	kobo_events_position cases[] = {
		{ .after_seq = {0, 0}, .after_ask = false },
		{ .after_seq = {5, 9}, .after_ask = true },
		{ .after_seq = {INT64_MAX, INT64_MAX}, .after_ask = true },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char text[KOBO_HTTP_EVENTS_CURSOR_LEN_MAX + 1];
		size_t len = kobo_http_events_cursor_format(text, &cases[i]);
		assert_int_equal(len, strlen(text));
		kobo_http_history_query_init(&q);
		assert_int_equal(kobo_http_events_query_arg(&q, "after", text, &err), KOBO_OK);
		assert_memory_equal(q.events_after.after_seq, cases[i].after_seq,
		                    sizeof cases[i].after_seq);
		assert_int_equal(q.events_after.after_ask, cases[i].after_ask);
	}
	char longest[KOBO_HTTP_EVENTS_CURSOR_LEN_MAX + 1];
	assert_int_equal(kobo_http_events_cursor_format(longest, &cases[2]),
	                 KOBO_HTTP_EVENTS_CURSOR_LEN_MAX);

	static const char *const bad_limits[] = { "0", "1001", "-1", "", "x", "1e3" };
	for (size_t i = 0; i < sizeof bad_limits / sizeof bad_limits[0]; i++) {
		kobo_http_history_query_init(&q);
		assert_int_equal(kobo_http_events_query_arg(&q, "limit", bad_limits[i], &err),
		                 KOBO_EINVAL);
		assert_int_equal(err.status, 400);
		assert_non_null(strstr(err.message, "limit"));
	}
	static const char *const bad_cursors[] = {
		"", "1", "1.2", "1.2.3", "1.2.3.4", "1.2.0.", ".1.0", "1..0", "-1.0.0", "1.-2.0",
		"1.2.-0", "+1.2.0", "1 .2.0", "a.b.c", "9223372036854775808.0.0",
		"0.9223372036854775808.0", "00000000000000000001.0.0", "1.2.0x",
	};
	for (size_t i = 0; i < sizeof bad_cursors / sizeof bad_cursors[0]; i++) {
		kobo_http_history_query_init(&q);
		assert_int_equal(kobo_http_events_query_arg(&q, "after", bad_cursors[i], &err),
		                 KOBO_EINVAL);
		assert_int_equal(err.status, 400);
		assert_non_null(strstr(err.message, "after"));
	}
	kobo_http_history_query_init(&q);
	assert_int_equal(kobo_http_events_query_arg(&q, "after", NULL, &err), KOBO_EINVAL);
	assert_int_equal(kobo_http_events_query_arg(&q, "request_id", "r1", &err), KOBO_EINVAL);
	assert_non_null(strstr(err.message, "request_id: unknown query parameter"));
}

static void request_id_and_traceparent(void **state)
{
	(void)state;
	assert_true(kobo_http_request_id_valid("abc-DEF_1.2", 11));
	assert_false(kobo_http_request_id_valid("", 0));
	assert_false(kobo_http_request_id_valid("a:b", 3));
	assert_false(kobo_http_request_id_valid("a b", 3));
	char long_id[130];
	memset(long_id, 'r', 129);
	assert_true(kobo_http_request_id_valid(long_id, 128));
	assert_false(kobo_http_request_id_valid(long_id, 129));

	char trace[33];
	const char *good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
	assert_true(kobo_http_traceparent_parse(good, strlen(good), trace));
	assert_string_equal(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
	static const char *const bad[] = {
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
		"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
		"garbage",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_false(kobo_http_traceparent_parse(bad[i], strlen(bad[i]), NULL));
	const char *future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
	assert_true(kobo_http_traceparent_parse(future, strlen(future), NULL));
}

/* ---- Encoding. ---- */

static json_t *parse_out(const kobo_http_buf *buf)
{
	assert_false(buf->failed);
	json_error_t error;
	json_t *root = json_loadb(buf->data, buf->len, JSON_REJECT_DUPLICATES, &error);
	if (!root)
		fail_msg("output is not JSON (%s): %.*s", error.text, (int)buf->len, buf->data);
	return root;
}

static void transfer_encodes_as_in_the_api(void **state)
{
	(void)state;
	kobo_transfer t;
	memset(&t, 0, sizeof(t));
	strcpy(t.id, "tx:0001");
	strcpy(t.from, "wallet:42");
	strcpy(t.to, "wallet:77");
	strcpy(t.currency, "NGN");
	strcpy(t.request_id, "req-1");
	t.amount = INT64_MAX;
	t.posted_amount = 0;
	t.status = KOBO_STATUS_VOIDED;
	t.void_reason = KOBO_VOID_EXPIRED;
	t.timeout_seconds = 30;
	t.metadata = "{\"k\":\"v\"}";
	t.metadata_len = 9;
	t.created_at_ms = 1795600800123;
	t.updated_at_ms = 1795600830123;
	kobo_http_buf buf;
	kobo_http_buf_init(&buf);
	kobo_http_encode_transfer(&buf, &t);
	json_t *o = parse_out(&buf);
	assert_string_equal(json_string_value(json_object_get(o, "id")), "tx:0001");
	assert_string_equal(json_string_value(json_object_get(o, "from")), "wallet:42");
	assert_string_equal(json_string_value(json_object_get(o, "to")), "wallet:77");
	assert_int_equal(json_integer_value(json_object_get(o, "amount")), INT64_MAX);
	assert_string_equal(json_string_value(json_object_get(o, "currency")), "NGN");
	assert_string_equal(json_string_value(json_object_get(o, "status")), "voided");
	assert_int_equal(json_integer_value(json_object_get(o, "posted_amount")), 0);
	assert_string_equal(json_string_value(json_object_get(o, "void_reason")), "expired");
	assert_int_equal(json_integer_value(json_object_get(o, "timeout_seconds")), 30);
	assert_string_equal(json_string_value(json_object_get(json_object_get(o, "metadata"), "k")), "v");
	assert_string_equal(json_string_value(json_object_get(o, "request_id")), "req-1");
	assert_string_equal(json_string_value(json_object_get(o, "created_at")),
	                    "2026-11-25T10:00:00.123Z");
	assert_string_equal(json_string_value(json_object_get(o, "updated_at")),
	                    "2026-11-25T10:00:30.123Z");
	assert_null(json_object_get(o, "error"));
	/* No key made it (auth off, or a record older than keys): null. */
	assert_true(json_is_null(json_object_get(o, "created_by")));
	assert_int_equal(json_object_size(o), 14);
	json_decref(o);
	strcpy(t.created_by, "0123456789abcdef");
	buf.len = 0;
	kobo_http_encode_transfer(&buf, &t);
	o = parse_out(&buf);
	assert_string_equal(json_string_value(json_object_get(o, "created_by")),
	                    "0123456789abcdef");
	json_decref(o);

	/* Posted: void_reason null. Rejected: an error object. */
	t.status = KOBO_STATUS_POSTED;
	t.posted_amount = 5;
	buf.len = 0;
	kobo_http_encode_transfer(&buf, &t);
	o = parse_out(&buf);
	assert_true(json_is_null(json_object_get(o, "void_reason")));
	json_decref(o);
	t.status = KOBO_STATUS_REJECTED;
	t.error_code = KOBO_RESULT_INSUFFICIENT_FUNDS;
	t.metadata = NULL;
	t.metadata_len = 0;
	buf.len = 0;
	kobo_http_encode_transfer(&buf, &t);
	o = parse_out(&buf);
	assert_string_equal(json_string_value(json_object_get(o, "status")), "rejected");
	assert_string_equal(json_string_value(json_object_get(json_object_get(o, "error"), "code")),
	                    "insufficient_funds");
	assert_true(json_is_object(json_object_get(o, "metadata")));
	json_decref(o);
	kobo_http_buf_free(&buf);
}

static void account_encodes_with_balance(void **state)
{
	(void)state;
	kobo_account a;
	memset(&a, 0, sizeof(a));
	strcpy(a.id, "wallet:42");
	strcpy(a.currency, "NGN");
	a.posted = 5000;
	a.pending_out = 1200;
	a.metadata = "{\"owner\":\"ada\"}";
	a.metadata_len = (uint32_t)strlen(a.metadata);
	a.created_at_ms = 0;
	kobo_http_buf buf;
	kobo_http_buf_init(&buf);
	kobo_http_encode_account(&buf, &a);
	json_t *o = parse_out(&buf);
	assert_string_equal(json_string_value(json_object_get(o, "id")), "wallet:42");
	assert_false(json_is_true(json_object_get(o, "allow_negative")));
	json_t *b = json_object_get(o, "balance");
	assert_int_equal(json_integer_value(json_object_get(b, "posted")), 5000);
	assert_int_equal(json_integer_value(json_object_get(b, "pending_out")), 1200);
	assert_int_equal(json_integer_value(json_object_get(b, "pending_in")), 0);
	assert_int_equal(json_integer_value(json_object_get(b, "available")), 3800);
	assert_string_equal(json_string_value(json_object_get(o, "created_at")),
	                    "1970-01-01T00:00:00.000Z");
	assert_string_equal(json_string_value(json_object_get(json_object_get(o, "metadata"), "owner")),
	                    "ada");
	assert_true(json_is_null(json_object_get(o, "created_by")));
	assert_int_equal(json_object_size(o), 7);
	json_decref(o);
	strcpy(a.created_by, "fedcba9876543210");
	buf.len = 0;
	kobo_http_encode_account(&buf, &a);
	o = parse_out(&buf);
	assert_string_equal(json_string_value(json_object_get(o, "created_by")),
	                    "fedcba9876543210");
	json_decref(o);
	kobo_http_buf_free(&buf);
}

static void error_encoding_escapes(void **state)
{
	(void)state;
	kobo_http_reply reply;
	kobo_http_reply_init(&reply);
	kobo_http_reply_error(&reply, 400, "invalid_request", "we\"ird\\ \n\x01 field", "r-1");
	json_t *o = parse_out(&reply.body);
	json_t *e = json_object_get(o, "error");
	assert_int_equal(reply.status, 400);
	assert_string_equal(json_string_value(json_object_get(e, "code")), "invalid_request");
	assert_string_equal(json_string_value(json_object_get(e, "message")), "we\"ird\\ \n\x01 field");
	assert_string_equal(json_string_value(json_object_get(e, "request_id")), "r-1");
	json_decref(o);
	/* Client bytes that are not UTF-8 (a key cut mid-character) still give
	 * valid JSON. */
	kobo_http_reply_error(&reply, 400, "invalid_request", "k\xc3: x\xed\xa0\x80 \xc3\xa9", "r");
	o = parse_out(&reply.body);
	assert_string_equal(json_string_value(json_object_get(json_object_get(o, "error"), "message")),
	                    "k\xef\xbf\xbd: x\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd \xc3\xa9");
	json_decref(o);
	kobo_http_reply_free(&reply);
}

static void results_map_to_statuses(void **state)
{
	(void)state;
	kobo_result r;
	memset(&r, 0, sizeof(r));
	const char *code;
	r.code = KOBO_RESULT_CREATED;
	assert_int_equal(kobo_http_result_status(&r, &code), 201);
	assert_null(code);
	r.code = KOBO_RESULT_UPDATED;
	assert_int_equal(kobo_http_result_status(&r, &code), 200);
	r.code = KOBO_RESULT_REPLAYED;
	assert_int_equal(kobo_http_result_status(&r, &code), 200);
	r.has_transfer = true;
	r.transfer.status = KOBO_STATUS_REJECTED;
	r.transfer.error_code = KOBO_RESULT_CURRENCY_MISMATCH;
	assert_int_equal(kobo_http_result_status(&r, &code), 422);
	assert_string_equal(code, "currency_mismatch");
	r.code = KOBO_RESULT_ID_CONFLICT;
	assert_int_equal(kobo_http_result_status(&r, &code), 409);
	assert_string_equal(code, "id_conflict");
	r.code = KOBO_RESULT_TRANSFER_NOT_FOUND;
	assert_int_equal(kobo_http_result_status(&r, &code), 404);
	assert_string_equal(code, "transfer_not_found");
	static const struct { kobo_result_code c; const char *name; } rejections[] = {
		{ KOBO_RESULT_ACCOUNT_NOT_FOUND, "account_not_found" },
		{ KOBO_RESULT_INSUFFICIENT_FUNDS, "insufficient_funds" },
		{ KOBO_RESULT_SAME_ACCOUNT, "same_account" },
		{ KOBO_RESULT_AMOUNT_OVERFLOW, "amount_overflow" },
		{ KOBO_RESULT_NOT_APPLIED, "not_applied" },
		{ KOBO_RESULT_NOT_PENDING, "not_pending" },
		{ KOBO_RESULT_AMOUNT_EXCEEDS_PENDING, "amount_exceeds_pending" },
	};
	for (size_t i = 0; i < sizeof(rejections) / sizeof(rejections[0]); i++) {
		r.code = rejections[i].c;
		assert_int_equal(kobo_http_result_status(&r, &code), 422);
		assert_string_equal(code, rejections[i].name);
	}

	/* A replayed rejection: 422 with the recorded code and the replay flag. */
	kobo_http_reply reply;
	kobo_http_reply_init(&reply);
	r.code = KOBO_RESULT_REPLAYED;
	r.transfer.error_code = KOBO_RESULT_INSUFFICIENT_FUNDS;
	kobo_http_reply_result(&reply, &r, "rid");
	assert_int_equal(reply.status, 422);
	assert_true(reply.replayed);
	json_t *o = parse_out(&reply.body);
	assert_string_equal(json_string_value(json_object_get(json_object_get(o, "error"), "code")),
	                    "insufficient_funds");
	json_decref(o);
	kobo_http_reply_free(&reply);
}

/* The count of kobo_rejections_total{code} in the rendered metrics. */
static long rejections_counted(const char *code)
{
	static char text[256 * 1024];
	size_t len = kobo_metrics_render(text, sizeof(text));
	assert_true(len < sizeof(text));
	char key[128];
	snprintf(key, sizeof(key), "kobo_rejections_total{code=\"%s\"} ", code);
	const char *at = strstr(text, key);
	return at ? strtol(at + strlen(key), NULL, 10) : -1;
}

/* A post/void of a hold whose saga step is under way is not a refusal: 409
 * transfer_in_progress with Retry-After: 1, not replayed, not counted in
 * kobo_rejections_total; a saga that hands back a record still PROCESSING
 * answers the same, never not_pending. */
static void transfer_in_progress_is_409_with_retry_after(void **state)
{
	(void)state;
	kobo_result r;
	memset(&r, 0, sizeof(r));
	r.code = KOBO_RESULT_TRANSFER_IN_PROGRESS;
	r.has_transfer = true;
	snprintf(r.transfer.id, sizeof(r.transfer.id), "hold:1");
	r.transfer.status = KOBO_STATUS_PROCESSING;
	r.transfer.leg = KOBO_LEG_DEBIT;
	r.transfer.saga = KOBO_SAGA_POSTING;
	const char *code;
	assert_int_equal(kobo_http_result_status(&r, &code), 409);
	assert_string_equal(code, "transfer_in_progress");

	long before = rejections_counted("transfer_in_progress");
	kobo_http_reply reply;
	kobo_http_reply_init(&reply);
	kobo_http_reply_result(&reply, &r, "rid");
	if (reply.status != 409 || reply.retry_after_s != 1 || reply.replayed)
		fail_msg("expected 409, Retry-After 1, not replayed; saw %d, %u, %d", reply.status,
		         reply.retry_after_s, reply.replayed);
	json_t *o = parse_out(&reply.body);
	json_t *error = json_object_get(o, "error");
	assert_string_equal(json_string_value(json_object_get(error, "code")),
	                    "transfer_in_progress");
	const char *message = json_string_value(json_object_get(error, "message"));
	if (!message || !strstr(message, "under way") || !strstr(message, "retry"))
		fail_msg("expected a message saying a step is under way and to retry, saw '%s'",
		         message ? message : "(none)");
	assert_string_equal(json_string_value(json_object_get(error, "request_id")), "rid");
	json_decref(o);
	kobo_http_reply_free(&reply);
	assert_int_equal(rejections_counted("transfer_in_progress"), before);

	/* The answer a saga wait gives: PROCESSING is in progress, not ended. */
	static const kobo_op_kind kinds[] = { KOBO_OP_POST, KOBO_OP_VOID };
	for (size_t i = 0; i < 2; i++) {
		kobo_result out;
		kobo_http_saga_outcome(&r.transfer, kinds[i], false, &out);
		assert_int_equal(out.code, KOBO_RESULT_TRANSFER_IN_PROGRESS);
	}
	/* A hold that ended otherwise still answers not_pending. */
	kobo_transfer ended = r.transfer;
	ended.status = KOBO_STATUS_VOIDED;
	ended.void_reason = KOBO_VOID_EXPIRED;
	ended.saga = KOBO_SAGA_NONE;
	kobo_result out;
	kobo_http_saga_outcome(&ended, KOBO_OP_POST, false, &out);
	assert_int_equal(out.code, KOBO_RESULT_NOT_PENDING);
}

/* A failed write's status to its answer: a ledger refusal inside a batch is
 * our bug (500, nothing applied), exhausted conflicts are load (503
 * overloaded), every other store error an unknown outcome (503, retry with
 * the same id). */
static void write_failures_map_to_statuses(void **state)
{
	(void)state;
	const struct {
		int status;
		int http;
		const char *code;
	} cases[] = {
		{ KOBO_EINVAL, 500, "internal_error" },
		{ KOBO_EFULL, 500, "internal_error" },
		{ KOBO_ECONFLICT, 503, "overloaded" },
		{ KOBO_EUNKNOWN, 503, "storage_unavailable" },
		{ KOBO_ESTORE, 503, "storage_unavailable" },
		{ KOBO_EFAILED, 503, "storage_unavailable" },
		{ KOBO_ECONNLOST, 503, "storage_unavailable" },
		{ KOBO_ESHUTDOWN, 503, "shutting_down" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const char *code = NULL;
		assert_int_equal(kobo__http_write_failed(cases[i].status, &code),
		                 cases[i].http);
		assert_string_equal(code, cases[i].code);
		assert_non_null(kobo_http_error_message(code));
	}
}

static void batch_reply_lists_results_in_order(void **state)
{
	(void)state;
	kobo_op ops[3];
	kobo_result results[3];
	memset(ops, 0, sizeof(ops));
	memset(results, 0, sizeof(results));
	for (int i = 0; i < 3; i++) {
		snprintf(ops[i].u.transfer.id, sizeof(ops[i].u.transfer.id), "b:%d", i);
		results[i].has_transfer = true;
		results[i].transfer = ops[i].u.transfer;
		strcpy(results[i].transfer.currency, "NGN");
	}
	results[0].code = KOBO_RESULT_CREATED;
	results[1].code = KOBO_RESULT_INSUFFICIENT_FUNDS;
	results[2].code = KOBO_RESULT_REPLAYED;
	kobo_http_reply reply;
	kobo_http_reply_init(&reply);
	kobo_http_reply_batch(&reply, ops, results, 3, "rid");
	assert_int_equal(reply.status, 200);
	json_t *o = parse_out(&reply.body);
	json_t *list = json_object_get(o, "results");
	assert_int_equal(json_array_size(list), 3);
	json_t *r0 = json_array_get(list, 0), *r1 = json_array_get(list, 1),
	       *r2 = json_array_get(list, 2);
	assert_string_equal(json_string_value(json_object_get(r0, "id")), "b:0");
	assert_int_equal(json_integer_value(json_object_get(r0, "status")), 201);
	assert_string_equal(json_string_value(json_object_get(json_object_get(r0, "transfer"), "id")), "b:0");
	assert_int_equal(json_integer_value(json_object_get(r1, "status")), 422);
	assert_string_equal(json_string_value(json_object_get(json_object_get(r1, "error"), "code")),
	                    "insufficient_funds");
	assert_int_equal(json_integer_value(json_object_get(r2, "status")), 200);
	json_decref(o);
	kobo_http_reply_free(&reply);
}

/* ---- Routes. ---- */

static void expect_route(const char *method, const char *path, const char *name,
                         const char *id)
{
	kobo_http_match m;
	int rc = kobo_http_route_match(method, path, &m);
	if (rc != KOBO_OK)
		fail_msg("%s %s: expected route %s, saw %d %s", method, path, name,
		         m.error.status, m.error.message);
	assert_string_equal(kobo_http_routes[m.route].name, name);
	assert_string_equal(m.id, id);
}

static void routes_match(void **state)
{
	(void)state;
	expect_route("POST", "/v1/accounts", "POST /v1/accounts", "");
	expect_route("GET", "/v1/accounts/wallet:42", "GET /v1/accounts/{id}", "wallet:42");
	expect_route("GET", "/v1/accounts/wallet:42/transfers",
	             "GET /v1/accounts/{id}/transfers", "wallet:42");
	expect_route("POST", "/v1/transfers", "POST /v1/transfers", "");
	expect_route("POST", "/v1/transfers/batch", "POST /v1/transfers/batch", "");
	expect_route("GET", "/v1/transfers/batch", "GET /v1/transfers/{id}", "batch");
	expect_route("GET", "/v1/transfers/tx:1", "GET /v1/transfers/{id}", "tx:1");
	expect_route("POST", "/v1/transfers/tx:1/post", "POST /v1/transfers/{id}/post", "tx:1");
	expect_route("POST", "/v1/transfers/batch/void", "POST /v1/transfers/{id}/void", "batch");
	expect_route("GET", "/healthz", "GET /healthz", "");
	expect_route("GET", "/readyz", "GET /readyz", "");
	expect_route("GET", "/metrics", "GET /metrics", "");

	kobo_http_match m;
	static const char *const unknown[] = { "/", "/v1", "/v1/accounts/", "/v1/accounts//transfers",
	                                       "/v1/transfers/a/b", "/v2/accounts", "/healthz/",
	                                       "/v1/accounts/a/transfers/x" };
	for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
		assert_int_equal(kobo_http_route_match("GET", unknown[i], &m), KOBO_EINVAL);
		assert_int_equal(m.error.status, 404);
		assert_string_equal(m.error.code, "not_found");
	}
	assert_int_equal(kobo_http_route_match("DELETE", "/v1/accounts", &m), KOBO_EINVAL);
	assert_int_equal(m.error.status, 405);
	assert_string_equal(m.allow, "POST");
	assert_int_equal(kobo_http_route_match("PUT", "/v1/transfers/batch", &m), KOBO_EINVAL);
	assert_int_equal(m.error.status, 405);
	assert_non_null(strstr(m.allow, "GET"));
	assert_non_null(strstr(m.allow, "POST"));
	assert_int_equal(kobo_http_route_match("PUT", "/v1/transfers", &m), KOBO_EINVAL);
	assert_int_equal(m.error.status, 405);
	assert_string_equal(m.allow, "POST, GET");
	expect_route("GET", "/v1/transfers", "GET /v1/transfers", "");
	expect_route("GET", "/v1/transfers/tx:1/events", "GET /v1/transfers/{id}/events", "tx:1");
	assert_int_equal(kobo_http_route_match("POST", "/healthz", &m), KOBO_EINVAL);
	assert_string_equal(m.allow, "GET");

	/* Bad path ids are refused by the id rule. */
	char path[128];
	char id[66];
	memset(id, 'x', 65);
	id[65] = '\0';
	snprintf(path, sizeof(path), "/v1/accounts/%s", id);
	assert_int_equal(kobo_http_route_match("GET", path, &m), KOBO_EINVAL);
	assert_int_equal(m.error.status, 400);
	assert_non_null(strstr(m.error.message, "id"));
	assert_int_equal(kobo_http_route_match("GET", "/v1/accounts/a b", &m), KOBO_EINVAL);
	assert_int_equal(m.error.status, 400);
	assert_int_equal(kobo_http_route_match("GET", "/v1/transfers/\xc3\xa9", &m), KOBO_EINVAL);
	assert_int_equal(m.error.status, 400);
}

/* ---- Kobo-Consistency-Token. ---- */

static void expect_token_refused(const char *value, size_t len, uint32_t shards,
                                 const char *why)
{
	kobo_http_token token;
	kobo_http_error err;
	int rc = kobo_http_token_parse(value, len, shards, &token, &err);
	if (rc != KOBO_EINVAL || err.status != 400 ||
	    strcmp(err.code, "invalid_consistency_token") != 0 ||
	    strstr(err.message, why) == NULL)
		fail_msg("token '%.80s' (%zu bytes, %u shards): expected 400 "
		         "invalid_consistency_token saying '%s', saw rc %d message '%s'",
		         value, len, shards, why, rc, rc ? err.message : "");
}

#define TOKEN_REFUSED(value, shards, why) \
	expect_token_refused(value, strlen(value), shards, why)

static void consistency_token_parses(void **state)
{
	(void)state;
	kobo_http_token t;
	kobo_http_error err;
	uint64_t seq;

	assert_int_equal(kobo_http_token_parse("kct1:0@1", 8, 1, &t, &err), KOBO_OK);
	assert_int_equal(t.count, 1);
	assert_true(kobo_http_token_names(&t, 0, &seq));
	assert_int_equal(seq, 1);
	assert_false(kobo_http_token_names(&t, 1, &seq));
	assert_int_equal(seq, 0);

	const char *two = "kct1:1@42,0@0";
	assert_int_equal(kobo_http_token_parse(two, strlen(two), 2, &t, &err), KOBO_OK);
	assert_int_equal(t.count, 2);
	assert_true(kobo_http_token_names(&t, 0, &seq));
	assert_int_equal(seq, 0);
	assert_true(kobo_http_token_names(&t, 1, &seq));
	assert_int_equal(seq, 42);

	const char *max = "kct1:255@18446744073709551615";
	assert_int_equal(kobo_http_token_parse(max, strlen(max), 256, &t, &err), KOBO_OK);
	assert_true(kobo_http_token_names(&t, 255, &seq));
	assert_true(seq == UINT64_MAX);

	/* Not NUL-terminated: only len bytes are read. */
	char exact[8];
	memcpy(exact, "kct1:3@9", 8);
	assert_int_equal(kobo_http_token_parse(exact, 8, 4, &t, &err), KOBO_OK);
	assert_true(kobo_http_token_names(&t, 3, &seq));
	assert_int_equal(seq, 9);

	/* The longest token a 256-shard server writes parses. */
	static char longest[KOBO_HTTP_TOKEN_LEN_MAX + 2];
	size_t n = (size_t)snprintf(longest, sizeof longest, "kct1:");
	for (uint32_t i = 0; i < 256; i++)
		n += (size_t)snprintf(longest + n, sizeof longest - n, "%s%u@%" PRIu64,
		                      i ? "," : "", i, UINT64_MAX);
	assert_true(n <= KOBO_HTTP_TOKEN_LEN_MAX);
	assert_int_equal(kobo_http_token_parse(longest, n, 256, &t, &err), KOBO_OK);
	assert_int_equal(t.count, 256);
}

static void consistency_token_refusals(void **state)
{
	(void)state;
	TOKEN_REFUSED("", 1, "not a consistency token");
	TOKEN_REFUSED("kct", 1, "not a consistency token");
	TOKEN_REFUSED("0@1", 1, "not a consistency token");
	TOKEN_REFUSED("hello world", 1, "not a consistency token");
	TOKEN_REFUSED("kct2:0@1", 1, "unknown token version");
	TOKEN_REFUSED("kct0:0@1", 1, "unknown token version");
	TOKEN_REFUSED("KCT1:0@1", 1, "not a consistency token");
	TOKEN_REFUSED("kct1:", 1, "names no shard");
	TOKEN_REFUSED("kct1:0", 1, "malformed entry");
	TOKEN_REFUSED("kct1:0@", 1, "malformed entry");
	TOKEN_REFUSED("kct1:@1", 1, "malformed entry");
	TOKEN_REFUSED("kct1:0@1,", 1, "trailing comma");
	TOKEN_REFUSED("kct1:,0@1", 1, "malformed entry");
	TOKEN_REFUSED("kct1:0@1,,1@2", 2, "malformed entry");
	TOKEN_REFUSED("kct1:0@@1", 1, "malformed entry");
	TOKEN_REFUSED("kct1:0@1@2", 1, "malformed entry");
	TOKEN_REFUSED("kct1: 0@1", 1, "malformed entry");
	TOKEN_REFUSED("kct1:0@1 ", 1, "malformed entry");
	TOKEN_REFUSED("kct1:0@-1", 1, "malformed entry");
	TOKEN_REFUSED("kct1:-0@1", 1, "malformed entry");
	TOKEN_REFUSED("kct1:+0@1", 1, "malformed entry");
	TOKEN_REFUSED("kct1:00@1", 1, "malformed entry");
	TOKEN_REFUSED("kct1:0@01", 1, "malformed entry");
	TOKEN_REFUSED("kct1:0x0@1", 1, "malformed entry");
	TOKEN_REFUSED("kct1:0@1e3", 1, "malformed entry");
	TOKEN_REFUSED("kct1:0@18446744073709551616", 1, "malformed entry"); /* 2^64 */
	TOKEN_REFUSED("kct1:0@99999999999999999999", 1, "malformed entry");
	TOKEN_REFUSED("kct1:0@000000000000000000001", 1, "malformed entry");
	TOKEN_REFUSED("kct1:4294967296@1", 1, "malformed entry"); /* 2^32 */
	TOKEN_REFUSED("kct1:1@1", 1, "out of range");
	TOKEN_REFUSED("kct1:0@1,2@1", 2, "out of range");
	TOKEN_REFUSED("kct1:256@1", 256, "out of range");
	TOKEN_REFUSED("kct1:0@1,0@2", 2, "names a shard twice");
	TOKEN_REFUSED("kct1:1@1,0@2,1@1", 2, "names a shard twice");
	expect_token_refused("kct1:0@1\0", 9, 1, "malformed entry");
	expect_token_refused("kct1:0\0@1", 9, 1, "malformed entry");

	/* Over-long: refused before being read entry by entry. */
	static char big[KOBO_HTTP_TOKEN_LEN_MAX + 2];
	memcpy(big, "kct1:", 5);
	memset(big + 5, '0', sizeof big - 5);
	expect_token_refused(big, sizeof big - 1, 256, "too long");
}

/* Fuzz-style: random mutations of valid tokens and random bytes. Whatever
 * is accepted names only shards in range, each once, and writes back (in
 * the parser's canonical form) to the very bytes it came from; whatever is
 * refused is a 400 invalid_consistency_token. */
static void consistency_token_random_inputs(void **state)
{
	(void)state;
	static const char alphabet[] = "kct1:0123456789@,-+ x\xff";
	uint64_t rng = 0x9e3779b97f4a7c15u;
	char input[96], again[KOBO_HTTP_TOKEN_LEN_MAX + 1];
	size_t accepted = 0;
	for (int round = 0; round < 200000; round++) {
		rng ^= rng << 13;
		rng ^= rng >> 7;
		rng ^= rng << 17;
		uint32_t shards = (uint32_t)(rng % 8) + 1;
		size_t len = (size_t)snprintf(input, sizeof input, "kct1:%u@%u,%u@%llu",
		                              (unsigned)((rng >> 8) % 9),
		                              (unsigned)((rng >> 16) % 1000),
		                              (unsigned)((rng >> 24) % 9),
		                              (unsigned long long)(rng >> 32));
		int mutations = (int)((rng >> 40) % 4);
		uint64_t r = rng;
		for (int m = 0; m < mutations; m++) {
			r = r * 6364136223846793005u + 1442695040888963407u;
			size_t at = (size_t)(r >> 33) % (len + 1);
			char c = alphabet[(r >> 20) % (sizeof alphabet - 1)];
			switch ((r >> 10) % 3) {
			case 0: if (at < len) input[at] = c; break;            /* replace */
			case 1: if (at < len) { memmove(input + at, input + at + 1, len - at - 1); len--; } break;
			default: if (len + 1 < sizeof input) { memmove(input + at + 1, input + at, len - at); input[at] = c; len++; }
			}
		}
		kobo_http_token t;
		kobo_http_error err;
		int rc = kobo_http_token_parse(input, len, shards, &t, &err);
		if (rc != KOBO_OK) {
			assert_int_equal(rc, KOBO_EINVAL);
			assert_int_equal(err.status, 400);
			assert_string_equal(err.code, "invalid_consistency_token");
			continue;
		}
		accepted++;
		assert_true(t.count >= 1 && t.count <= shards);
		/* Re-serialize in the order of the input's entries. */
		size_t n = (size_t)snprintf(again, sizeof again, "kct1:");
		uint32_t named = 0;
		for (const char *p = input + 5; p < input + len;) {
			uint32_t shard = (uint32_t)strtoul(p, NULL, 10);
			uint64_t seq;
			assert_true(shard < shards);
			assert_true(kobo_http_token_names(&t, shard, &seq));
			n += (size_t)snprintf(again + n, sizeof again - n, "%s%u@%" PRIu64,
			                      named ? "," : "", shard, seq);
			named++;
			const char *comma = memchr(p, ',', (size_t)(input + len - p));
			p = comma ? comma + 1 : input + len;
		}
		assert_int_equal(named, t.count);
		assert_int_equal(n, len);
		assert_memory_equal(again, input, len);
	}
	assert_true(accepted > 1000); /* the valid share was exercised too */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(account_is_parsed_with_defaults),
		cmocka_unit_test(account_metadata_is_stored_compact_in_order),
		cmocka_unit_test(account_refusals_name_the_field),
		cmocka_unit_test(id_of_64_characters_is_the_longest),
		cmocka_unit_test(metadata_limits),
		cmocka_unit_test(transfer_is_parsed),
		cmocka_unit_test(transfer_refusals_name_the_field),
		cmocka_unit_test(batch_is_parsed_in_order),
		cmocka_unit_test(batch_refusals_name_the_transfer),
		cmocka_unit_test(post_and_void_bodies),
		cmocka_unit_test(history_query_arguments),
		cmocka_unit_test(events_query_and_cursor),
		cmocka_unit_test(request_id_and_traceparent),
		cmocka_unit_test(transfer_encodes_as_in_the_api),
		cmocka_unit_test(account_encodes_with_balance),
		cmocka_unit_test(error_encoding_escapes),
		cmocka_unit_test(results_map_to_statuses),
		cmocka_unit_test(transfer_in_progress_is_409_with_retry_after),
		cmocka_unit_test(write_failures_map_to_statuses),
		cmocka_unit_test(batch_reply_lists_results_in_order),
		cmocka_unit_test(routes_match),
		cmocka_unit_test(consistency_token_parses),
		cmocka_unit_test(consistency_token_refusals),
		cmocka_unit_test(consistency_token_random_inputs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
