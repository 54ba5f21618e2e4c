/*
 * codec.c — strict parsing of request bodies, query arguments and headers.
 *
 * Every function is pure (bytes in, kobo_op or a named error out); see
 * codec.h for the contract and encode.c for the way out. Bodies are parsed
 * with jansson and JSON_REJECT_DUPLICATES: it refuses integers beyond 64 bits,
 * invalid UTF-8, "\u0000" and duplicate keys. When jansson refuses a body,
 * json_path_at() walks the raw bytes up to the error position to name the
 * field ("transfers[3].amount"), so even a parse error says where it is.
 */
#include "codec.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Buffers. ---- */

void kobo_http_buf_init(kobo_http_buf *buf)
{
	memset(buf, 0, sizeof(*buf));
}

void kobo_http_buf_free(kobo_http_buf *buf)
{
	free(buf->data);
	kobo_http_buf_init(buf);
}

bool kobo_http_buf_reserve(kobo_http_buf *buf, size_t extra)
{
	if (buf->failed)
		return false;
	if (extra > SIZE_MAX / 2 - buf->len - 1) {
		buf->failed = true;
		return false;
	}
	size_t need = buf->len + extra + 1;
	if (need <= buf->cap)
		return true;
	size_t cap = buf->cap ? buf->cap : 256;
	while (cap < need)
		cap *= 2;
	char *data = realloc(buf->data, cap);
	if (!data) {
		buf->failed = true;
		return false;
	}
	buf->data = data;
	buf->cap = cap;
	return true;
}

void kobo_http_buf_append(kobo_http_buf *buf, const char *bytes, size_t len)
{
	if (!kobo_http_buf_reserve(buf, len))
		return;
	memcpy(buf->data + buf->len, bytes, len);
	buf->len += len;
	buf->data[buf->len] = '\0';
}

void kobo_http_buf_puts(kobo_http_buf *buf, const char *text)
{
	kobo_http_buf_append(buf, text, strlen(text));
}

void kobo_http_buf_printf(kobo_http_buf *buf, const char *fmt, ...)
{
	char small[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0) {
		buf->failed = true;
		return;
	}
	if ((size_t)n < sizeof(small)) {
		kobo_http_buf_append(buf, small, (size_t)n);
		return;
	}
	if (!kobo_http_buf_reserve(buf, (size_t)n))
		return;
	va_start(ap, fmt);
	vsnprintf(buf->data + buf->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	buf->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence at s[0..len), or 0 when it is not one
 * (bad lead or continuation byte, overlong form, surrogate, > U+10FFFF). */
static size_t utf8_sequence(const unsigned char *s, size_t len)
{
	size_t n;
	uint32_t cp;
	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		n = 2;
		cp = s[0] & 0x1f;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		cp = s[0] & 0x0f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		cp = s[0] & 0x07;
	} else {
		return 0;
	}
	if (n > len)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

void kobo_http_buf_json_string(kobo_http_buf *buf, const char *bytes, size_t len)
{
	/* Worst case every byte becomes a six-character escape. */
	if (len > SIZE_MAX / 8 || !kobo_http_buf_reserve(buf, len * 6 + 2))
		return;
	static const char hex[] = "0123456789abcdef";
	const unsigned char *in = (const unsigned char *)bytes;
	char *out = buf->data + buf->len;
	*out++ = '"';
	for (size_t i = 0; i < len;) {
		unsigned char c = in[i];
		switch (c) {
		case '"': *out++ = '\\'; *out++ = '"'; i++; continue;
		case '\\': *out++ = '\\'; *out++ = '\\'; i++; continue;
		case '\n': *out++ = '\\'; *out++ = 'n'; i++; continue;
		case '\r': *out++ = '\\'; *out++ = 'r'; i++; continue;
		case '\t': *out++ = '\\'; *out++ = 't'; i++; continue;
		}
		if (c < 0x20 || c == 0x7f) {
			memcpy(out, "\\u00", 4);
			out[4] = hex[c >> 4];
			out[5] = hex[c & 15];
			out += 6;
			i++;
			continue;
		}
		/* Output is always valid UTF-8: messages may quote client bytes
		 * (a key cut at 64 bytes, a query parameter name). */
		size_t n = utf8_sequence(in + i, len - i);
		if (n == 0) {
			memcpy(out, "\\ufffd", 6);
			out += 6;
			i++;
			continue;
		}
		memcpy(out, in + i, n);
		out += n;
		i += n;
	}
	*out++ = '"';
	*out = '\0';
	buf->len = (size_t)(out - buf->data);
}

/* ---- Errors. ---- */

int kobo_http_error_set(kobo_http_error *err, int status, const char *code,
                        const char *fmt, ...)
{
	err->status = status;
	err->code = code;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	return KOBO_EINVAL;
}

#define invalid(err, ...) kobo_http_error_set((err), 400, "invalid_request", __VA_ARGS__)

static int out_of_memory(kobo_http_error *err)
{
	kobo_http_error_set(err, 503, "overloaded", "out of memory");
	return KOBO_ENOMEM;
}

/* ---- Field rules. ---- */

static bool id_char(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	       (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' ||
	       c == '@' || c == '-';
}

bool kobo_http_id_valid(const char *id, size_t len)
{
	if (len < 1 || len > KOBO_ID_LEN_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!id_char((unsigned char)id[i]))
			return false;
	return true;
}

bool kobo_http_currency_valid(const char *currency, size_t len)
{
	if (len < 3 || len > KOBO_CURRENCY_LEN_MAX)
		return false;
	if (currency[0] < 'A' || currency[0] > 'Z')
		return false;
	for (size_t i = 1; i < len; i++) {
		char c = currency[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
			return false;
	}
	return true;
}

bool kobo_http_request_id_valid(const char *request_id, size_t len)
{
	if (len < 1 || len > KOBO_REQUEST_ID_LEN_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)request_id[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

static bool lower_hex(const char *s, size_t len, bool *all_zero)
{
	*all_zero = true;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return false;
		if (c != '0')
			*all_zero = false;
	}
	return true;
}

bool kobo_http_traceparent_parse(const char *value, size_t len, char *trace_id)
{
	/* 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 */
	if (len < 55 || len > KOBO_HTTP_TRACEPARENT_LEN_MAX)
		return false;
	if (value[2] != '-' || value[35] != '-' || value[52] != '-')
		return false;
	bool zero;
	if (!lower_hex(value, 2, &zero) || memcmp(value, "ff", 2) == 0)
		return false;
	if (memcmp(value, "00", 2) == 0 ? len != 55 : (len > 55 && value[55] != '-'))
		return false;
	if (!lower_hex(value + 3, 32, &zero) || zero)
		return false;
	if (!lower_hex(value + 36, 16, &zero) || zero)
		return false;
	if (!lower_hex(value + 53, 2, &zero))
		return false;
	if (trace_id) {
		memcpy(trace_id, value + 3, KOBO_HTTP_TRACE_ID_LEN);
		trace_id[KOBO_HTTP_TRACE_ID_LEN] = '\0';
	}
	return true;
}

/* ---- Kobo-Consistency-Token. ---- */

static int token_fail(kobo_http_error *err, const char *fmt, const char *detail)
{
	return kobo_http_error_set(err, 400, "invalid_consistency_token",
	                           "Kobo-Consistency-Token: %s%s", fmt, detail);
}

/* A plain decimal number (no sign, no leading zero unless it is "0") of
 * s[0..len) into *out; false when malformed or above max. */
static bool token_number(const char *s, size_t len, uint64_t max, uint64_t *out)
{
	if (len == 0 || len > 20 || (len > 1 && s[0] == '0'))
		return false;
	uint64_t n = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		uint64_t digit = (uint64_t)(s[i] - '0');
		if (n > (max - digit) / 10)
			return false;
		n = n * 10 + digit;
	}
	*out = n;
	return true;
}

int kobo_http_token_parse(const char *value, size_t len, uint32_t shard_count,
                          kobo_http_token *out, kobo_http_error *err)
{
	memset(out, 0, sizeof *out);
	if (len > KOBO_HTTP_TOKEN_LEN_MAX)
		return token_fail(err, "too long (a token is at most a few bytes per shard)", "");
	if (len < 5 || memcmp(value, "kct", 3) != 0 || memchr(value, ':', len) == NULL)
		return token_fail(err, "not a consistency token (send back the header a "
		                  "write answered, as it was)", "");
	if (memcmp(value, "kct1:", 5) != 0)
		return token_fail(err, "unknown token version (this server reads kct1)", "");
	size_t pos = 5;
	if (pos == len)
		return token_fail(err, "names no shard", "");
	while (pos <= len) {
		size_t end = pos;
		while (end < len && value[end] != ',')
			end++;
		const char *at = memchr(value + pos, '@', end - pos);
		uint64_t shard, seq;
		if (at == NULL ||
		    !token_number(value + pos, (size_t)(at - (value + pos)), UINT32_MAX, &shard) ||
		    !token_number(at + 1, (size_t)(value + end - (at + 1)), UINT64_MAX, &seq))
			return token_fail(err, "malformed entry (expected <shard>@<sequence>, "
			                  "decimal, joined by commas)", "");
		if (shard >= shard_count || shard >= KOBO_HTTP_TOKEN_SHARDS_MAX) {
			char detail[48];
			snprintf(detail, sizeof detail, " (this server has %" PRIu32 ")", shard_count);
			return token_fail(err, "names a shard out of range", detail);
		}
		uint64_t bit = UINT64_C(1) << (shard % 64);
		if (out->named[shard / 64] & bit)
			return token_fail(err, "names a shard twice", "");
		out->named[shard / 64] |= bit;
		out->seq[shard] = seq;
		out->count++;
		if (end == len)
			break;
		pos = end + 1;
		if (pos == len)
			return token_fail(err, "malformed entry (a trailing comma)", "");
	}
	return KOBO_OK;
}

bool kobo_http_token_names(const kobo_http_token *token, uint32_t shard, uint64_t *seq)
{
	*seq = 0;
	if (shard >= KOBO_HTTP_TOKEN_SHARDS_MAX ||
	    !(token->named[shard / 64] & (UINT64_C(1) << (shard % 64))))
		return false;
	*seq = token->seq[shard];
	return true;
}

/* ---- Naming the field of a jansson error. ---- */

#define PATH_FRAMES_MAX 16

typedef struct path_frame {
	bool is_array;
	size_t index;        /* arrays: element number */
	const char *key;     /* objects: current key (raw bytes, unescaped) */
	size_t key_len;
	bool expecting_key;
} path_frame;

/* Writes into out the path ("transfers[3].amount") of the value being read
 * at byte pos of a JSON text that is well formed up to pos, or "body" at the
 * top. Keys are copied raw; the error encoder escapes the message. */
static void json_path_at(const char *text, size_t len, size_t pos, char *out,
                         size_t out_size)
{
	path_frame frames[PATH_FRAMES_MAX];
	size_t depth = 0; /* may exceed PATH_FRAMES_MAX; deeper frames untracked */
	if (pos > len)
		pos = len;
	for (size_t i = 0; i < pos; i++) {
		char c = text[i];
		path_frame *top = depth && depth <= PATH_FRAMES_MAX ? &frames[depth - 1] : NULL;
		if (c == '"') {
			size_t start = ++i;
			while (i < pos && text[i] != '"')
				i += text[i] == '\\' ? 2 : 1;
			if (top && !top->is_array && top->expecting_key) {
				top->key = text + start;
				top->key_len = (i < pos ? i : pos) - start;
				if (i >= pos) /* error inside the key itself */
					top->key_len = 0;
			}
		} else if (c == '{' || c == '[') {
			if (depth < PATH_FRAMES_MAX)
				frames[depth] = (path_frame){ .is_array = c == '[',
				                              .expecting_key = c == '{' };
			depth++;
		} else if (c == '}' || c == ']') {
			if (depth)
				depth--;
		} else if (c == ':' && top) {
			top->expecting_key = false;
		} else if (c == ',' && top) {
			if (top->is_array) {
				top->index++;
			} else {
				top->expecting_key = true;
				top->key_len = 0;
			}
		}
	}
	size_t used = 0;
	out[0] = '\0';
	size_t shown = depth < PATH_FRAMES_MAX ? depth : PATH_FRAMES_MAX;
	for (size_t f = 0; f < shown && used < out_size; f++) {
		int n;
		if (frames[f].is_array)
			n = snprintf(out + used, out_size - used, "[%zu]", frames[f].index);
		else if (frames[f].key_len)
			n = snprintf(out + used, out_size - used, "%s%.*s", used ? "." : "",
			             (int)(frames[f].key_len > 64 ? 64 : frames[f].key_len),
			             frames[f].key);
		else
			break;
		if (n < 0)
			break;
		used += (size_t)n;
	}
	if (used >= out_size)
		used = out_size - 1;
	out[used] = '\0';
	if (used == 0)
		snprintf(out, out_size, "body");
}

static json_t *load_object(const char *body, size_t len, kobo_http_error *err)
{
	json_error_t error;
	if (!body)
		body = "";
	json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &error);
	if (!root) {
		char path[160];
		size_t pos = error.position < 0 ? 0 : (size_t)error.position;
		json_path_at(body, len, pos, path, sizeof(path));
		switch (json_error_code(&error)) {
		case json_error_duplicate_key:
			invalid(err, "%s: duplicate key", path);
			break;
		case json_error_numeric_overflow:
			invalid(err, "%s: number out of range (integers are 64-bit)", path);
			break;
		case json_error_invalid_utf8:
			invalid(err, "%s: invalid UTF-8", path);
			break;
		case json_error_null_character:
			invalid(err, "%s: \\u0000 is not allowed", path);
			break;
		case json_error_out_of_memory:
			out_of_memory(err);
			break;
		case json_error_stack_overflow:
			invalid(err, "%s: nesting too deep", path);
			break;
		default:
			if (len == 0)
				invalid(err, "body: must be a JSON object (the body is empty)");
			else
				invalid(err, "body: malformed JSON at byte %zu (%s): %s", pos,
				        path, error.text);
		}
		return NULL;
	}
	if (!json_is_object(root)) {
		json_decref(root);
		invalid(err, "body: must be a JSON object");
		return NULL;
	}
	return root;
}

/* ---- Field extraction. prefix is "" or "transfers[3]." ---- */

static bool key_known(const char *key, const char *const *known)
{
	for (; *known; known++)
		if (strcmp(key, *known) == 0)
			return true;
	return false;
}

static int reject_unknown(json_t *object, const char *const *known,
                          const char *prefix, kobo_http_error *err)
{
	const char *key;
	json_t *value;
	json_object_foreach(object, key, value) {
		if (!key_known(key, known))
			return invalid(err, "%s%.64s: unknown field", prefix, key);
	}
	return KOBO_OK;
}

/* Copies a required identifier-like string into dst (size KOBO_ID_LEN_MAX+1). */
static int get_id(json_t *object, const char *key, const char *prefix, char *dst,
                  kobo_http_error *err)
{
	json_t *value = json_object_get(object, key);
	if (!value)
		return invalid(err, "%s%s: required", prefix, key);
	if (!json_is_string(value))
		return invalid(err, "%s%s: must be a string", prefix, key);
	const char *text = json_string_value(value);
	size_t len = json_string_length(value);
	if (!kobo_http_id_valid(text, len))
		return invalid(err, "%s%s: must be 1-64 characters of A-Z a-z 0-9 . _ : @ -",
		               prefix, key);
	memcpy(dst, text, len);
	dst[len] = '\0';
	return KOBO_OK;
}

static int get_currency(json_t *object, const char *prefix, char *dst,
                        kobo_http_error *err)
{
	json_t *value = json_object_get(object, "currency");
	if (!value)
		return invalid(err, "%scurrency: required", prefix);
	if (!json_is_string(value))
		return invalid(err, "%scurrency: must be a string", prefix);
	const char *text = json_string_value(value);
	size_t len = json_string_length(value);
	if (!kobo_http_currency_valid(text, len))
		return invalid(err, "%scurrency: must match ^[A-Z][A-Z0-9]{2,7}$", prefix);
	memcpy(dst, text, len);
	dst[len] = '\0';
	return KOBO_OK;
}

/* Integer in [min, max]; *present tells whether the key was there. */
static int get_integer(json_t *object, const char *key, const char *prefix,
                       bool required, json_int_t min, json_int_t max,
                       json_int_t *out, bool *present, kobo_http_error *err)
{
	json_t *value = json_object_get(object, key);
	*present = value != NULL;
	if (!value)
		return required ? invalid(err, "%s%s: required", prefix, key) : KOBO_OK;
	if (!json_is_integer(value))
		return invalid(err, "%s%s: must be an integer", prefix, key);
	json_int_t n = json_integer_value(value);
	if (n < min || n > max)
		return invalid(err, "%s%s: must be between %lld and %lld", prefix, key,
		               (long long)min, (long long)max);
	*out = n;
	return KOBO_OK;
}

static int get_bool(json_t *object, const char *key, const char *prefix,
                    bool *out, kobo_http_error *err)
{
	json_t *value = json_object_get(object, key);
	if (!value) {
		*out = false;
		return KOBO_OK;
	}
	if (!json_is_boolean(value))
		return invalid(err, "%s%s: must be true or false", prefix, key);
	*out = json_is_true(value);
	return KOBO_OK;
}

static bool depth_within(json_t *value, int depth_left)
{
	if (depth_left < 0)
		return false;
	const char *key;
	json_t *child;
	size_t i;
	if (json_is_object(value)) {
		json_object_foreach(value, key, child) {
			if (!depth_within(child, depth_left - 1))
				return false;
		}
	} else if (json_is_array(value)) {
		json_array_foreach(value, i, child) {
			if (!depth_within(child, depth_left - 1))
				return false;
		}
	}
	return true;
}

/* Serializes the optional metadata object compactly onto the end of arena
 * (absent: "{}") and reports its length. The caller points the op at it once
 * the arena stops moving (see fix_metadata). */
static int get_metadata(json_t *object, const char *prefix, kobo_http_buf *arena,
                        uint32_t *len_out, kobo_http_error *err)
{
	json_t *value = json_object_get(object, "metadata");
	if (!value) {
		kobo_http_buf_append(arena, "{}", 2);
		*len_out = 2;
		return arena->failed ? out_of_memory(err) : KOBO_OK;
	}
	if (!json_is_object(value))
		return invalid(err, "%smetadata: must be a JSON object", prefix);
	if (!depth_within(value, KOBO_HTTP_METADATA_DEPTH_MAX))
		return invalid(err, "%smetadata: nested deeper than %d levels", prefix,
		               KOBO_HTTP_METADATA_DEPTH_MAX);
	char text[KOBO_METADATA_BYTES_MAX];
	size_t need = json_dumpb(value, text, sizeof(text), JSON_COMPACT);
	if (need == 0)
		return out_of_memory(err);
	if (need > KOBO_METADATA_BYTES_MAX)
		return invalid(err, "%smetadata: %zu bytes serialized, at most %d", prefix,
		               need, KOBO_METADATA_BYTES_MAX);
	kobo_http_buf_append(arena, text, need);
	*len_out = (uint32_t)need;
	return arena->failed ? out_of_memory(err) : KOBO_OK;
}

/* Metadata of ops[0..count) was appended to the arena in op order: point
 * each op at its text now that the arena no longer grows. */
static void fix_metadata(kobo_http_ops *out)
{
	size_t offset = 0;
	for (size_t i = 0; i < out->count; i++) {
		kobo_op *op = &out->ops[i];
		if (op->kind == KOBO_OP_CREATE_ACCOUNT) {
			op->u.account.metadata = out->metadata.data + offset;
			offset += op->u.account.metadata_len;
		} else if (op->kind == KOBO_OP_CREATE_TRANSFER) {
			op->u.transfer.metadata = out->metadata.data + offset;
			offset += op->u.transfer.metadata_len;
		}
	}
}

static const char *const transfer_fields[] = {
	"id", "from", "to", "amount", "currency", "pending", "timeout_seconds",
	"metadata", NULL,
};

static int transfer_from_json(json_t *object, const char *prefix, kobo_op *op,
                              kobo_http_buf *arena, kobo_http_error *err)
{
	memset(op, 0, sizeof(*op));
	op->kind = KOBO_OP_CREATE_TRANSFER;
	kobo_transfer *t = &op->u.transfer;
	json_int_t amount = 0, timeout = 0;
	bool present;
	int rc;
	if ((rc = reject_unknown(object, transfer_fields, prefix, err)) ||
	    (rc = get_id(object, "id", prefix, t->id, err)) ||
	    (rc = get_id(object, "from", prefix, t->from, err)) ||
	    (rc = get_id(object, "to", prefix, t->to, err)) ||
	    (rc = get_integer(object, "amount", prefix, true, 1, INT64_MAX, &amount,
	                      &present, err)) ||
	    (rc = get_currency(object, prefix, t->currency, err)) ||
	    (rc = get_bool(object, "pending", prefix, &t->pending, err)) ||
	    (rc = get_integer(object, "timeout_seconds", prefix, false, 0,
	                      KOBO_TIMEOUT_SECONDS_MAX, &timeout, &present, err)) ||
	    (rc = get_metadata(object, prefix, arena, &t->metadata_len, err)))
		return rc;
	t->amount = amount;
	t->timeout_seconds = (uint32_t)timeout;
	return KOBO_OK;
}

/* ---- Request bodies. ---- */

void kobo_http_ops_init(kobo_http_ops *ops)
{
	memset(ops, 0, sizeof(*ops));
	kobo_http_buf_init(&ops->metadata);
}

void kobo_http_ops_free(kobo_http_ops *ops)
{
	if (ops->ops && ops->ops != &ops->inline_op)
		free(ops->ops);
	kobo_http_buf_free(&ops->metadata);
	kobo_http_ops_init(ops);
}

static int finish(kobo_http_ops *out, json_t *root, int rc)
{
	json_decref(root);
	if (rc != KOBO_OK) {
		kobo_http_ops_free(out);
		return rc;
	}
	fix_metadata(out);
	return KOBO_OK;
}

int kobo_http_parse_account(const char *body, size_t len, kobo_http_ops *out,
                            kobo_http_error *err)
{
	static const char *const fields[] = { "id", "currency", "allow_negative",
	                                      "metadata", NULL };
	json_t *root = load_object(body, len, err);
	if (!root)
		return err->status == 503 ? KOBO_ENOMEM : KOBO_EINVAL;
	kobo_op *op = &out->inline_op;
	memset(op, 0, sizeof(*op));
	op->kind = KOBO_OP_CREATE_ACCOUNT;
	out->ops = op;
	out->count = 1;
	kobo_account *a = &op->u.account;
	int rc;
	if (!(rc = reject_unknown(root, fields, "", err)) &&
	    !(rc = get_id(root, "id", "", a->id, err)) &&
	    !(rc = get_currency(root, "", a->currency, err)) &&
	    !(rc = get_bool(root, "allow_negative", "", &a->allow_negative, err)))
		rc = get_metadata(root, "", &out->metadata, &a->metadata_len, err);
	return finish(out, root, rc);
}

int kobo_http_parse_transfer(const char *body, size_t len, kobo_http_ops *out,
                             kobo_http_error *err)
{
	json_t *root = load_object(body, len, err);
	if (!root)
		return err->status == 503 ? KOBO_ENOMEM : KOBO_EINVAL;
	out->ops = &out->inline_op;
	out->count = 1;
	int rc = transfer_from_json(root, "", out->ops, &out->metadata, err);
	return finish(out, root, rc);
}

int kobo_http_parse_batch(const char *body, size_t len, kobo_http_ops *out,
                          kobo_http_error *err)
{
	static const char *const fields[] = { "atomic", "transfers", NULL };
	json_t *root = load_object(body, len, err);
	if (!root)
		return err->status == 503 ? KOBO_ENOMEM : KOBO_EINVAL;
	int rc;
	json_t *transfers = json_object_get(root, "transfers");
	if ((rc = reject_unknown(root, fields, "", err)) ||
	    (rc = get_bool(root, "atomic", "", &out->atomic, err)))
		return finish(out, root, rc);
	if (!transfers)
		return finish(out, root, invalid(err, "transfers: required"));
	if (!json_is_array(transfers))
		return finish(out, root, invalid(err, "transfers: must be an array"));
	size_t count = json_array_size(transfers);
	if (count < 1 || count > KOBO_BATCH_OPS_MAX)
		return finish(out, root, invalid(err, "transfers: must hold 1 to %d transfers (has %zu)",
		                                 KOBO_BATCH_OPS_MAX, count));
	out->ops = count == 1 ? &out->inline_op : calloc(count, sizeof(kobo_op));
	if (!out->ops)
		return finish(out, root, out_of_memory(err));
	out->count = count;
	for (size_t i = 0; i < count && rc == KOBO_OK; i++) {
		char prefix[48];
		snprintf(prefix, sizeof(prefix), "transfers[%zu].", i);
		json_t *item = json_array_get(transfers, i);
		if (!json_is_object(item)) {
			rc = invalid(err, "transfers[%zu]: must be a JSON object", i);
			break;
		}
		rc = transfer_from_json(item, prefix, &out->ops[i], &out->metadata, err);
		if (out->atomic)
			out->ops[i].atomic_group = 1;
	}
	return finish(out, root, rc);
}

static bool blank(const char *body, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (body[i] != ' ' && body[i] != '\t' && body[i] != '\r' && body[i] != '\n')
			return false;
	return true;
}

static int parse_target(const char *body, size_t len, const char *id,
                        kobo_op_kind kind, kobo_http_ops *out, kobo_http_error *err)
{
	static const char *const post_fields[] = { "amount", NULL };
	static const char *const void_fields[] = { NULL };
	size_t id_len = id ? strlen(id) : 0;
	if (!kobo_http_id_valid(id, id_len))
		return invalid(err, "id: must be 1-64 characters of A-Z a-z 0-9 . _ : @ -");
	kobo_op *op = &out->inline_op;
	memset(op, 0, sizeof(*op));
	op->kind = kind;
	memcpy(op->u.target.id, id, id_len + 1);
	out->ops = op;
	out->count = 1;
	if (blank(body, len))
		return KOBO_OK;
	json_t *root = load_object(body, len, err);
	if (!root) {
		kobo_http_ops_free(out);
		return err->status == 503 ? KOBO_ENOMEM : KOBO_EINVAL;
	}
	int rc = reject_unknown(root, kind == KOBO_OP_POST ? post_fields : void_fields,
	                        "", err);
	if (rc == KOBO_OK && kind == KOBO_OP_POST) {
		json_int_t amount = 0;
		rc = get_integer(root, "amount", "", false, 1, INT64_MAX, &amount,
		                 &op->u.target.has_amount, err);
		op->u.target.amount = amount;
	}
	return finish(out, root, rc);
}

int kobo_http_parse_post(const char *body, size_t len, const char *id,
                         kobo_http_ops *out, kobo_http_error *err)
{
	return parse_target(body, len, id, KOBO_OP_POST, out, err);
}

int kobo_http_parse_void(const char *body, size_t len, const char *id,
                         kobo_http_ops *out, kobo_http_error *err)
{
	return parse_target(body, len, id, KOBO_OP_VOID, out, err);
}

/* ---- Query strings. ---- */

void kobo_http_history_query_init(kobo_http_history_query *query)
{
	memset(query, 0, sizeof(*query));
	query->limit = KOBO_HTTP_HISTORY_LIMIT_DEFAULT;
}

/* Parses 1..19 decimal digits (no sign, no spaces) into *out. */
static bool parse_decimal(const char *text, int64_t *out)
{
	size_t len = strlen(text);
	if (len < 1 || len > 19)
		return false;
	int64_t n = 0;
	for (size_t i = 0; i < len; i++) {
		if (text[i] < '0' || text[i] > '9')
			return false;
		int digit = text[i] - '0';
		if (n > (INT64_MAX - digit) / 10)
			return false;
		n = n * 10 + digit;
	}
	*out = n;
	return true;
}

int kobo_http_history_query_arg(kobo_http_history_query *query, const char *key,
                                const char *value, kobo_http_error *err)
{
	int64_t n;
	if (strcmp(key, "limit") == 0) {
		if (query->has_limit)
			return invalid(err, "limit: given twice");
		if (!value || !parse_decimal(value, &n) || n < 1 ||
		    n > KOBO_HTTP_HISTORY_LIMIT_MAX)
			return invalid(err, "limit: must be an integer between 1 and %d",
			               KOBO_HTTP_HISTORY_LIMIT_MAX);
		query->limit = (size_t)n;
		query->has_limit = true;
		return KOBO_OK;
	}
	if (strcmp(key, "after") == 0) {
		if (query->has_after)
			return invalid(err, "after: given twice");
		if (!value || !parse_decimal(value, &n))
			return invalid(err, "after: must be a cursor returned as \"next\"");
		query->after_seq = n;
		query->has_after = true;
		return KOBO_OK;
	}
	return invalid(err, "%.64s: unknown query parameter", key);
}

/* "P.Q.F" (codec.h): digits only, no sign, nothing else. */
static bool parse_events_cursor(const char *text, kobo_events_position *out)
{
	char part[3][20];
	size_t parts = 0;
	const char *p = text;
	for (;;) {
		size_t len = strcspn(p, ".");
		if (parts == 3 || len >= sizeof part[0])
			return false;
		memcpy(part[parts], p, len);
		part[parts++][len] = '\0';
		if (p[len] == '\0')
			break;
		p += len + 1;
	}
	int64_t flag;
	if (parts != 3 || !parse_decimal(part[0], &out->after_seq[0]) ||
	    !parse_decimal(part[1], &out->after_seq[1]) || !parse_decimal(part[2], &flag) ||
	    flag > 1)
		return false;
	out->after_ask = flag == 1;
	return true;
}

int kobo_http_events_query_arg(kobo_http_history_query *query, const char *key,
                               const char *value, kobo_http_error *err)
{
	int64_t n;
	if (strcmp(key, "limit") == 0) {
		if (query->has_limit)
			return invalid(err, "limit: given twice");
		if (!value || !parse_decimal(value, &n) || n < 1 || n > KOBO_HTTP_EVENTS_LIMIT_MAX)
			return invalid(err, "limit: must be an integer between 1 and %d",
			               KOBO_HTTP_EVENTS_LIMIT_MAX);
		query->limit = (size_t)n;
		query->has_limit = true;
		return KOBO_OK;
	}
	if (strcmp(key, "after") == 0) {
		if (query->has_after)
			return invalid(err, "after: given twice");
		kobo_events_position pos;
		if (!value || !parse_events_cursor(value, &pos))
			return invalid(err, "after: must be a cursor returned as \"next\"");
		query->events_after = pos;
		query->has_after = true;
		return KOBO_OK;
	}
	return invalid(err, "%.64s: unknown query parameter", key);
}

size_t kobo_http_events_cursor_format(char *out, const kobo_events_position *pos)
{
	kobo_assert(pos->after_seq[0] >= 0 && pos->after_seq[1] >= 0);
	int len = snprintf(out, KOBO_HTTP_EVENTS_CURSOR_LEN_MAX + 1, "%" PRId64 ".%" PRId64 ".%d",
	                   pos->after_seq[0], pos->after_seq[1], pos->after_ask ? 1 : 0);
	kobo_assert(len > 0 && len <= KOBO_HTTP_EVENTS_CURSOR_LEN_MAX);
	return (size_t)len;
}

int kobo_http_request_query_arg(kobo_http_history_query *query, const char *key,
                                const char *value, kobo_http_error *err)
{
	if (strcmp(key, "request_id") == 0) {
		if (query->has_request_id)
			return invalid(err, "request_id: given twice");
		if (!value || !kobo_http_request_id_valid(value, strlen(value)))
			return invalid(err, "request_id: must be 1-%d characters of A-Z a-z 0-9 . _ -", KOBO_REQUEST_ID_LEN_MAX);
		memcpy(query->request_id, value, strlen(value) + 1);
		query->has_request_id = true;
		return KOBO_OK;
	}
	if (strcmp(key, "after") == 0) {
		const char *dot = value ? strchr(value, '.') : NULL;
		char shard_text[16];
		int64_t shard, seq;
		if (query->has_after)
			return invalid(err, "after: given twice");
		if (!dot || (size_t)(dot - value) >= sizeof shard_text)
			return invalid(err, "after: must be a cursor returned as \"next\"");
		memcpy(shard_text, value, (size_t)(dot - value));
		shard_text[dot - value] = '\0';
		if (!parse_decimal(shard_text, &shard) || shard > UINT32_MAX ||
		    !parse_decimal(dot + 1, &seq))
			return invalid(err, "after: must be a cursor returned as \"next\"");
		query->after_shard = (uint32_t)shard;
		query->after_seq = seq;
		query->has_after = true;
		return KOBO_OK;
	}
	return kobo_http_history_query_arg(query, key, value, err);
}
