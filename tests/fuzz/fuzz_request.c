/*
 * fuzz_request.c — libFuzzer target for everything the HTTP edge parses
 * from a client: the body parsers, the route matcher, the history query
 * validator and the header validators.
 *
 * The first byte picks the parser, the rest is its input:
 *   0 account body   1 transfer body   2 batch body   3 post body
 *   4 void body      5 "METHOD PATH" to the router
 *   6 "key=value&…" to the history query validator
 *   7 X-Request-Id and traceparent validators, and the
 *     Kobo-Consistency-Token parser (for 1..256 shards)
 * Whatever a parser accepts is encoded back (metadata must be a JSON object
 * of at most 4 KiB) so the encoder runs on fuzzed data too. Must never
 * crash, leak or trip a sanitizer.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/http/codec.h"
#include "../../src/http/routes.h"

static void check_metadata(const char *text, uint32_t len)
{
	if (len > KOBO_METADATA_BYTES_MAX)
		abort();
	json_error_t error;
	json_t *value = json_loadb(text, len, JSON_REJECT_DUPLICATES, &error);
	if (!value || !json_is_object(value))
		abort(); /* stored metadata must read back as an object */
	json_decref(value);
}

static void encode_ops(const kobo_http_ops *ops)
{
	kobo_http_buf buf;
	kobo_http_buf_init(&buf);
	for (size_t i = 0; i < ops->count; i++) {
		const kobo_op *op = &ops->ops[i];
		if (op->kind == KOBO_OP_CREATE_ACCOUNT) {
			check_metadata(op->u.account.metadata, op->u.account.metadata_len);
			kobo_http_encode_account(&buf, &op->u.account);
		} else if (op->kind == KOBO_OP_CREATE_TRANSFER) {
			check_metadata(op->u.transfer.metadata, op->u.transfer.metadata_len);
			kobo_http_encode_transfer(&buf, &op->u.transfer);
		}
	}
	if (buf.len) {
		json_error_t error;
		/* Concatenated objects: check the first parses (the rest follow the
		 * same encoder). */
		json_t *value = json_loadb(buf.data, buf.len, JSON_DISABLE_EOF_CHECK, &error);
		if (!value)
			abort();
		json_decref(value);
	}
	kobo_http_buf_free(&buf);
}

static void fuzz_body(uint8_t kind, const char *data, size_t size)
{
	kobo_http_ops ops;
	kobo_http_error err;
	kobo_http_ops_init(&ops);
	int rc;
	switch (kind) {
	case 0: rc = kobo_http_parse_account(data, size, &ops, &err); break;
	case 1: rc = kobo_http_parse_transfer(data, size, &ops, &err); break;
	case 2: rc = kobo_http_parse_batch(data, size, &ops, &err); break;
	case 3: rc = kobo_http_parse_post(data, size, "tx:1", &ops, &err); break;
	default: rc = kobo_http_parse_void(data, size, "tx:1", &ops, &err); break;
	}
	if (rc == KOBO_OK) {
		if (ops.count < 1 || ops.count > KOBO_BATCH_OPS_MAX)
			abort();
		encode_ops(&ops);
	} else {
		if (err.status != 400 && err.status != 503)
			abort();
		/* The error must encode as valid JSON whatever the message holds. */
		kobo_http_reply reply;
		kobo_http_reply_init(&reply);
		kobo_http_reply_error(&reply, err.status, err.code, err.message, "fuzz");
		json_error_t error;
		json_t *value = json_loadb(reply.body.data, reply.body.len, 0, &error);
		if (!value)
			abort();
		json_decref(value);
		kobo_http_reply_free(&reply);
	}
	kobo_http_ops_free(&ops);
}

static void fuzz_route(const char *text)
{
	const char *space = strchr(text, ' ');
	char method[32];
	const char *path = text;
	if (space && (size_t)(space - text) < sizeof(method)) {
		memcpy(method, text, (size_t)(space - text));
		method[space - text] = '\0';
		path = space + 1;
	} else {
		strcpy(method, "GET");
	}
	kobo_http_match m;
	int rc = kobo_http_route_match(method, path, &m);
	if (rc == KOBO_OK) {
		if (m.route >= kobo_http_route_count)
			abort();
		if (strstr(kobo_http_routes[m.route].pattern, "{id}") &&
		    !kobo_http_id_valid(m.id, strlen(m.id)))
			abort();
	} else if (m.error.status != 400 && m.error.status != 404 && m.error.status != 405) {
		abort();
	}
}

static void fuzz_query(char *text)
{
	kobo_http_history_query query;
	kobo_http_error err;
	kobo_http_history_query_init(&query);
	char *save = NULL;
	for (char *arg = strtok_r(text, "&", &save); arg; arg = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(arg, '=');
		if (eq)
			*eq = '\0';
		if (kobo_http_history_query_arg(&query, arg, eq ? eq + 1 : NULL, &err) != KOBO_OK)
			break;
	}
	if (query.limit < 1 || query.limit > KOBO_HTTP_HISTORY_LIMIT_MAX || query.after_seq < 0)
		abort();
}

/* A token accepted names only shards in range, each once, and no more
 * than the header can hold; a refusal is a 400 invalid_consistency_token. */
static void fuzz_token(const char *text, size_t len)
{
	static kobo_http_token token;
	kobo_http_error err;
	uint32_t shards = len ? (uint32_t)(unsigned char)text[len - 1] + 1 : 1;
	if (kobo_http_token_parse(text, len, shards, &token, &err) != KOBO_OK) {
		if (err.status != 400 || strcmp(err.code, "invalid_consistency_token") != 0)
			abort();
		return;
	}
	uint32_t named = 0;
	for (uint32_t i = 0; i < KOBO_HTTP_TOKEN_SHARDS_MAX; i++) {
		uint64_t seq;
		if (kobo_http_token_names(&token, i, &seq)) {
			if (i >= shards)
				abort();
			named++;
		}
	}
	if (named != token.count || named == 0 || len > KOBO_HTTP_TOKEN_LEN_MAX)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t kind = data[0] % 8;
	size_t len = size - 1;
	if (kind <= 4) {
		/* An exact-size copy, not NUL-terminated, so ASan catches any read
		 * past the end of the body. */
		char *body = malloc(len ? len : 1);
		if (!body)
			return 0;
		memcpy(body, data + 1, len);
		fuzz_body(kind, body, len);
		free(body);
		return 0;
	}
	/* The rest take C strings, as libmicrohttpd gives them. */
	char *input = malloc(len + 1);
	if (!input)
		return 0;
	memcpy(input, data + 1, len);
	input[len] = '\0';
	if (kind == 5) {
		fuzz_route(input);
	} else if (kind == 6) {
		fuzz_query(input);
	} else {
		char trace[KOBO_HTTP_TRACE_ID_LEN + 1];
		size_t n = strlen(input);
		bool valid_id = kobo_http_request_id_valid(input, n);
		if (valid_id && (n < 1 || n > KOBO_REQUEST_ID_LEN_MAX))
			abort();
		if (kobo_http_traceparent_parse(input, n, trace) && strlen(trace) != 32)
			abort();
		fuzz_token(input, n);
	}
	free(input);
	return 0;
}
