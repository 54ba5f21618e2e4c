/*
 * codec.c — one batch's effects as the bytes of a journal frame (format and
 * contract: codec.h). Sections: byte order, record sizes, encoding,
 * decoding.
 *
 * Both directions are one pass over the records with no allocation per
 * record: the encoder measures a record (its string lengths, once), checks
 * the room left for it, then writes it with plain stores; the decoder
 * checks every read against the bytes left. The encoder refuses any record
 * the decoder would refuse (an unterminated string, an enum out of range,
 * metadata over the limit), so a frame that reaches
 * the journal always replays: a frame written but not decodable would be
 * a committed batch lost at recovery.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

static const uint8_t codec_magic[4] = {'K', 'b', 'H', 'b'};

/* The u8 tag each record starts with. An event is only ever new. */
#define TAG_NEW 1u
#define TAG_UPDATE 2u

#define HEADER_BYTES 28u /* magic 4, version 2, flags 2, seq 8, counts 3 x 4 */
/* kobo_transfer_state: status 1, posted_amount 8, void_reason 1,
 * error_code 1, updated_at 8, saga 1, saga_amount 8, saga_reason 1. */
#define STATE_BYTES 29u
/* The smallest record of each kind (every string empty): what a count is
 * checked against before anything is allocated. An updated account is
 * tag, id, three balances; an updated transfer tag, id, state; an event
 * tag, five strings, kind, at_ms, shard, leg, status, amount. */
#define ACCOUNT_BYTES_MIN (1u + 2u + 24u)
#define TRANSFER_BYTES_MIN (1u + 2u + STATE_BYTES)
#define EVENT_BYTES_MIN (1u + 5u * 2u + 1u + 8u + 4u + 1u + 1u + 8u)

/* The largest value of each enum the frame carries (a u8 each). */
#define STATUS_MAX KOBO_STATUS_REJECTED
#define VOID_REASON_MAX KOBO_VOID_COMPENSATED
#define ERROR_CODE_MAX (KOBO_RESULT_CODE_COUNT - 1)
#define LEG_MAX KOBO_LEG_CREDIT
#define SAGA_MAX KOBO_SAGA_VOIDING
#define EVENT_KIND_MAX (KOBO_EVENT_KIND_COUNT - 1)
_Static_assert(STATUS_MAX <= 255 && VOID_REASON_MAX <= 255 && ERROR_CODE_MAX <= 255 &&
               LEG_MAX <= 255 && SAGA_MAX <= 255 && EVENT_KIND_MAX <= 255,
               "every enum of a frame fits its u8");
_Static_assert(KOBO_ID_LEN_MAX <= UINT16_MAX && KOBO_REQUEST_ID_LEN_MAX <= UINT16_MAX &&
               KOBO_EVENT_NODE_LEN_MAX <= UINT16_MAX,
               "every string of a frame fits its u16 length");
_Static_assert(KOBO_METADATA_BYTES_MAX <= UINT32_MAX, "metadata fits its u32 length");

/* ---- Byte order: little-endian, byte by byte (the compiler merges these
 * into single loads and stores on little-endian machines). ---- */

static inline uint8_t *put_u8(uint8_t *p, unsigned v)
{
	*p = (uint8_t)v;
	return p + 1;
}

static inline uint8_t *put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	return p + 2;
}

static inline uint8_t *put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
	return p + 4;
}

static inline uint8_t *put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
	return p + 8;
}

static inline uint8_t *put_i64(uint8_t *p, int64_t v)
{
	return put_u64(p, (uint64_t)v); /* two's complement, well defined */
}

static inline uint16_t get_u16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (unsigned)p[1] << 8);
}

static inline uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static inline uint64_t get_u64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* The inverse of put_i64 without the implementation-defined conversion of
 * an out-of-range unsigned value. */
static inline int64_t i64_of(uint64_t v)
{
	return v <= (uint64_t)INT64_MAX ? (int64_t)v : -(int64_t)(~v) - 1;
}

/* ---- Record sizes. ----
 *
 * A string field's length is strnlen within its array: equal to the
 * array's size means no terminator, which the encoder refuses (the size
 * functions just count it; the frame is never written then). */

#define FIELD_LEN(s) strnlen((s), sizeof(s))

static size_t account_size(const kobo_account_change *c)
{
	const kobo_account *a = c->account;
	if (!c->is_new)
		return 1 + 2 + FIELD_LEN(a->id) + 24;
	return 1 + 2 + FIELD_LEN(a->id) + 2 + FIELD_LEN(a->currency) + 1 + 24 + 4 +
	       a->metadata_len + 8 + 2 + FIELD_LEN(a->created_by);
}

static size_t transfer_size(const kobo_transfer_change *c)
{
	const kobo_transfer *t = c->transfer;
	if (!c->is_new)
		return 1 + 2 + FIELD_LEN(t->id) + STATE_BYTES;
	return 1 + 7 * 2 + FIELD_LEN(t->id) + FIELD_LEN(t->from) + FIELD_LEN(t->to) +
	       FIELD_LEN(t->currency) + FIELD_LEN(t->request_id) +
	       FIELD_LEN(t->created_by) + FIELD_LEN(t->trace_id) + 8 + 1 + 4 + 8 + 4 +
	       t->metadata_len + 8 + 1 + 2 + FIELD_LEN(t->clearing) + STATE_BYTES;
}

static size_t event_size(const kobo_event *e)
{
	return EVENT_BYTES_MIN + FIELD_LEN(e->transfer_id) + FIELD_LEN(e->node) +
	       FIELD_LEN(e->request_id) + FIELD_LEN(e->trace_id) + FIELD_LEN(e->key_id);
}

size_t hot_codec_size(const kobo_account_change *accounts, size_t account_count,
                      const kobo_transfer_change *transfers, size_t transfer_count,
                      const kobo_event *events, size_t event_count)
{
	size_t size = HEADER_BYTES;
	for (size_t i = 0; i < account_count; i++)
		size += account_size(&accounts[i]);
	for (size_t i = 0; i < transfer_count; i++)
		size += transfer_size(&transfers[i]);
	for (size_t i = 0; i < event_count; i++)
		size += event_size(&events[i]);
	return size;
}

/* ---- Encoding. ----
 *
 * Each put_* measures its record, refuses it when it is not encodable or
 * does not fit in [p, end), and otherwise writes it and returns the new
 * position; NULL means refused. */

/* A measured string: its length, or over when it has no terminator. */
#define STR_OK(len, s) ((len) < sizeof(s))

static inline uint8_t *put_str(uint8_t *p, const char *s, size_t len)
{
	p = put_u16(p, (uint16_t)len);
	memcpy(p, s, len);
	return p + len;
}

static bool metadata_ok(const char *metadata, uint32_t len)
{
	if (len > KOBO_METADATA_BYTES_MAX)
		return false;
	if (len == 0)
		return true;
	/* Metadata is bytes (store.h): a NUL inside is kept, not refused. */
	return metadata != NULL;
}

static inline uint8_t *put_metadata(uint8_t *p, const char *metadata, uint32_t len)
{
	p = put_u32(p, len);
	if (len > 0)
		memcpy(p, metadata, len);
	return p + len;
}

static uint8_t *put_account(uint8_t *p, const uint8_t *end, const kobo_account_change *c)
{
	const kobo_account *a = c->account;
	if (a == NULL)
		return NULL;
	size_t id = FIELD_LEN(a->id);
	if (!STR_OK(id, a->id))
		return NULL;
	if (!c->is_new) {
		if ((size_t)(end - p) < 1 + 2 + id + 24)
			return NULL;
		p = put_u8(p, TAG_UPDATE);
		p = put_str(p, a->id, id);
		p = put_i64(p, a->posted);
		p = put_i64(p, a->pending_out);
		return put_i64(p, a->pending_in);
	}
	size_t currency = FIELD_LEN(a->currency);
	size_t created_by = FIELD_LEN(a->created_by);
	if (!STR_OK(currency, a->currency) || !STR_OK(created_by, a->created_by) ||
	    !metadata_ok(a->metadata, a->metadata_len))
		return NULL;
	size_t need = 1 + 2 + id + 2 + currency + 1 + 24 + 4 + a->metadata_len + 8 + 2 +
	              created_by;
	if ((size_t)(end - p) < need)
		return NULL;
	p = put_u8(p, TAG_NEW);
	p = put_str(p, a->id, id);
	p = put_str(p, a->currency, currency);
	p = put_u8(p, a->allow_negative ? 1 : 0);
	p = put_i64(p, a->posted);
	p = put_i64(p, a->pending_out);
	p = put_i64(p, a->pending_in);
	p = put_metadata(p, a->metadata, a->metadata_len);
	p = put_i64(p, a->created_at_ms);
	return put_str(p, a->created_by, created_by);
}

static bool state_ok(const kobo_transfer *t)
{
	return (unsigned)t->status <= STATUS_MAX && (unsigned)t->void_reason <= VOID_REASON_MAX &&
	       (unsigned)t->error_code <= ERROR_CODE_MAX && (unsigned)t->saga <= SAGA_MAX &&
	       (unsigned)t->saga_reason <= VOID_REASON_MAX;
}

/* kobo_transfer_state, in its declaration order (ledger.h). */
static inline uint8_t *put_state(uint8_t *p, const kobo_transfer *t)
{
	p = put_u8(p, (unsigned)t->status);
	p = put_i64(p, t->posted_amount);
	p = put_u8(p, (unsigned)t->void_reason);
	p = put_u8(p, (unsigned)t->error_code);
	p = put_i64(p, t->updated_at_ms);
	p = put_u8(p, (unsigned)t->saga);
	p = put_i64(p, t->saga_amount);
	return put_u8(p, (unsigned)t->saga_reason);
}

static uint8_t *put_transfer(uint8_t *p, const uint8_t *end, const kobo_transfer_change *c)
{
	const kobo_transfer *t = c->transfer;
	if (t == NULL || !state_ok(t))
		return NULL;
	size_t id = FIELD_LEN(t->id);
	if (!STR_OK(id, t->id))
		return NULL;
	if (!c->is_new) {
		if ((size_t)(end - p) < 1 + 2 + id + STATE_BYTES)
			return NULL;
		p = put_u8(p, TAG_UPDATE);
		p = put_str(p, t->id, id);
		return put_state(p, t);
	}
	size_t from = FIELD_LEN(t->from), to = FIELD_LEN(t->to);
	size_t currency = FIELD_LEN(t->currency), request_id = FIELD_LEN(t->request_id);
	size_t created_by = FIELD_LEN(t->created_by), trace_id = FIELD_LEN(t->trace_id);
	size_t clearing = FIELD_LEN(t->clearing);
	if (!STR_OK(from, t->from) || !STR_OK(to, t->to) || !STR_OK(currency, t->currency) ||
	    !STR_OK(request_id, t->request_id) || !STR_OK(created_by, t->created_by) ||
	    !STR_OK(trace_id, t->trace_id) || !STR_OK(clearing, t->clearing) ||
	    (unsigned)t->leg > LEG_MAX || !metadata_ok(t->metadata, t->metadata_len))
		return NULL;
	size_t need = 1 + 7 * 2 + id + from + to + currency + request_id + created_by +
	              trace_id + 8 + 1 + 4 + 8 + 4 + t->metadata_len + 8 + 1 + 2 + clearing +
	              STATE_BYTES;
	if ((size_t)(end - p) < need)
		return NULL;
	p = put_u8(p, TAG_NEW);
	p = put_str(p, t->id, id);
	p = put_str(p, t->from, from);
	p = put_str(p, t->to, to);
	p = put_str(p, t->currency, currency);
	p = put_str(p, t->request_id, request_id);
	p = put_str(p, t->created_by, created_by);
	p = put_str(p, t->trace_id, trace_id);
	p = put_i64(p, t->amount);
	p = put_u8(p, t->pending ? 1 : 0);
	p = put_u32(p, t->timeout_seconds);
	p = put_i64(p, t->expires_at_ms);
	p = put_metadata(p, t->metadata, t->metadata_len);
	p = put_i64(p, t->created_at_ms);
	p = put_u8(p, (unsigned)t->leg);
	p = put_str(p, t->clearing, clearing);
	return put_state(p, t);
}

static uint8_t *put_event(uint8_t *p, const uint8_t *end, const kobo_event *e)
{
	size_t transfer_id = FIELD_LEN(e->transfer_id), node = FIELD_LEN(e->node);
	size_t request_id = FIELD_LEN(e->request_id), trace_id = FIELD_LEN(e->trace_id);
	size_t key_id = FIELD_LEN(e->key_id);
	if (!STR_OK(transfer_id, e->transfer_id) || !STR_OK(node, e->node) ||
	    !STR_OK(request_id, e->request_id) || !STR_OK(trace_id, e->trace_id) ||
	    !STR_OK(key_id, e->key_id) || (unsigned)e->kind > EVENT_KIND_MAX ||
	    (unsigned)e->leg > LEG_MAX || (unsigned)e->status > STATUS_MAX)
		return NULL;
	size_t need = EVENT_BYTES_MIN + transfer_id + node + request_id + trace_id + key_id;
	if ((size_t)(end - p) < need)
		return NULL;
	p = put_u8(p, TAG_NEW);
	p = put_str(p, e->transfer_id, transfer_id);
	p = put_u8(p, (unsigned)e->kind);
	p = put_i64(p, e->at_ms);
	p = put_u32(p, e->shard);
	p = put_str(p, e->node, node);
	p = put_str(p, e->request_id, request_id);
	p = put_str(p, e->trace_id, trace_id);
	p = put_str(p, e->key_id, key_id);
	p = put_u8(p, (unsigned)e->leg);
	p = put_u8(p, (unsigned)e->status);
	return put_i64(p, e->amount);
}

int hot_codec_encode(uint64_t commit_seq,
                     const kobo_account_change *accounts, size_t account_count,
                     const kobo_transfer_change *transfers, size_t transfer_count,
                     const kobo_event *events, size_t event_count,
                     uint8_t *out, size_t cap, size_t *len)
{
	if (out == NULL || len == NULL || cap < HEADER_BYTES || account_count > UINT32_MAX ||
	    transfer_count > UINT32_MAX || event_count > UINT32_MAX ||
	    (account_count > 0 && accounts == NULL) ||
	    (transfer_count > 0 && transfers == NULL) || (event_count > 0 && events == NULL))
		return KOBO_EINVAL;
	const uint8_t *end = out + cap;
	uint8_t *p = out;
	memcpy(p, codec_magic, sizeof codec_magic);
	p += sizeof codec_magic;
	p = put_u16(p, HOT_CODEC_VERSION);
	p = put_u16(p, 0); /* flags */
	p = put_u64(p, commit_seq);
	p = put_u32(p, (uint32_t)account_count);
	p = put_u32(p, (uint32_t)transfer_count);
	p = put_u32(p, (uint32_t)event_count);
	for (size_t i = 0; i < account_count && p != NULL; i++)
		p = put_account(p, end, &accounts[i]);
	for (size_t i = 0; i < transfer_count && p != NULL; i++)
		p = put_transfer(p, end, &transfers[i]);
	for (size_t i = 0; i < event_count && p != NULL; i++)
		p = put_event(p, end, &events[i]);
	if (p == NULL)
		return KOBO_EINVAL;
	*len = (size_t)(p - out);
	return KOBO_OK;
}

/* ---- Decoding. ----
 *
 * A reader over [p, end) that knows which record it is in, so a refusal
 * can say "transfer 3: currency longer than 8 bytes". Every get checks the
 * bytes left first; the sentence is only formatted on the way out. */

typedef struct reader {
	const uint8_t *p, *end;
	const char *record; /* "account", "transfer", "event", "frame" */
	size_t index;
	char *why;
	size_t why_len;
} reader;

static int refuse(reader *r, const char *format, ...)
	__attribute__((format(printf, 2, 3)));

static int refuse(reader *r, const char *format, ...)
{
	if (r->why == NULL || r->why_len == 0)
		return KOBO_EINVAL;
	int n = 0;
	if (r->record != NULL)
		n = snprintf(r->why, r->why_len, "%s %zu: ", r->record, r->index);
	if (n < 0 || (size_t)n >= r->why_len)
		return KOBO_EINVAL;
	va_list args;
	va_start(args, format);
	vsnprintf(r->why + n, r->why_len - (size_t)n, format, args);
	va_end(args);
	return KOBO_EINVAL;
}

static inline bool have(const reader *r, size_t n)
{
	return (size_t)(r->end - r->p) >= n;
}

/* The fixed-size gets: each returns false when the frame is cut short. */
static inline bool get_u8(reader *r, uint8_t *v)
{
	if (!have(r, 1))
		return false;
	*v = *r->p++;
	return true;
}

static inline bool get_u32_at(reader *r, uint32_t *v)
{
	if (!have(r, 4))
		return false;
	*v = get_u32(r->p);
	r->p += 4;
	return true;
}

static inline bool get_i64(reader *r, int64_t *v)
{
	if (!have(r, 8))
		return false;
	*v = i64_of(get_u64(r->p));
	r->p += 8;
	return true;
}

#define CUT(r, what) refuse((r), "cut short in %s", (what))

/* A string of at most max bytes, no NUL, into dst (max + 1 bytes). */
static int get_str(reader *r, char *dst, size_t max, const char *what)
{
	if (!have(r, 2))
		return CUT(r, what);
	size_t len = get_u16(r->p);
	r->p += 2;
	if (len > max)
		return refuse(r, "%s of %zu bytes, more than %zu", what, len, max);
	if (!have(r, len))
		return CUT(r, what);
	if (memchr(r->p, '\0', len) != NULL)
		return refuse(r, "NUL byte in %s", what);
	memcpy(dst, r->p, len);
	dst[len] = '\0';
	r->p += len;
	return KOBO_OK;
}

/* An enum stored as a u8, at most max. */
static int get_enum(reader *r, unsigned max, unsigned *v, const char *what)
{
	uint8_t b;
	if (!get_u8(r, &b))
		return CUT(r, what);
	if (b > max)
		return refuse(r, "%s %u out of range (0..%u)", what, (unsigned)b, max);
	*v = b;
	return KOBO_OK;
}

static int get_bool(reader *r, bool *v, const char *what)
{
	uint8_t b;
	if (!get_u8(r, &b))
		return CUT(r, what);
	if (b > 1)
		return refuse(r, "%s is %u, not 0 or 1", what, (unsigned)b);
	*v = b == 1;
	return KOBO_OK;
}

/* Metadata points into the payload (codec.h). */
static int get_metadata(reader *r, const char **metadata, uint32_t *len)
{
	uint32_t n;
	if (!get_u32_at(r, &n))
		return CUT(r, "metadata");
	if (n > KOBO_METADATA_BYTES_MAX)
		return refuse(r, "metadata of %u bytes, more than %u", (unsigned)n,
		              (unsigned)KOBO_METADATA_BYTES_MAX);
	if (!have(r, n))
		return CUT(r, "metadata");
	*metadata = (const char *)r->p;
	*len = n;
	r->p += n;
	return KOBO_OK;
}

static int get_tag(reader *r, bool *is_new)
{
	uint8_t tag;
	if (!get_u8(r, &tag))
		return CUT(r, "tag");
	if (tag != TAG_NEW && tag != TAG_UPDATE)
		return refuse(r, "unknown tag %u", (unsigned)tag);
	*is_new = tag == TAG_NEW;
	return KOBO_OK;
}

/* Shorthands that return the refusal up; each names its field. */
#define TRY(call)                                     \
	do {                                          \
		int try_rc_ = (call);                 \
		if (try_rc_ != KOBO_OK)               \
			return try_rc_;               \
	} while (0)
#define I64(r, field, what)                           \
	do {                                          \
		if (!get_i64((r), (field)))           \
			return CUT((r), (what));      \
	} while (0)
#define ENUM(r, field, max, what)                           \
	do {                                                \
		unsigned enum_v_;                           \
		TRY(get_enum((r), (max), &enum_v_, (what))); \
		(field) = enum_v_;                          \
	} while (0)

static int get_account(reader *r, kobo_account *a, bool *is_new)
{
	TRY(get_tag(r, is_new));
	memset(a, 0, sizeof *a);
	TRY(get_str(r, a->id, KOBO_ID_LEN_MAX, "id"));
	if (!*is_new) {
		I64(r, &a->posted, "posted");
		I64(r, &a->pending_out, "pending_out");
		I64(r, &a->pending_in, "pending_in");
		return KOBO_OK;
	}
	TRY(get_str(r, a->currency, KOBO_CURRENCY_LEN_MAX, "currency"));
	TRY(get_bool(r, &a->allow_negative, "allow_negative"));
	I64(r, &a->posted, "posted");
	I64(r, &a->pending_out, "pending_out");
	I64(r, &a->pending_in, "pending_in");
	TRY(get_metadata(r, &a->metadata, &a->metadata_len));
	I64(r, &a->created_at_ms, "created_at_ms");
	return get_str(r, a->created_by, KOBO_KEY_ID_LEN, "created_by");
}

static int get_state(reader *r, kobo_transfer *t)
{
	ENUM(r, t->status, STATUS_MAX, "status");
	I64(r, &t->posted_amount, "posted_amount");
	ENUM(r, t->void_reason, VOID_REASON_MAX, "void_reason");
	ENUM(r, t->error_code, ERROR_CODE_MAX, "error_code");
	I64(r, &t->updated_at_ms, "updated_at_ms");
	ENUM(r, t->saga, SAGA_MAX, "saga");
	I64(r, &t->saga_amount, "saga_amount");
	ENUM(r, t->saga_reason, VOID_REASON_MAX, "saga_reason");
	return KOBO_OK;
}

static int get_transfer(reader *r, kobo_transfer *t, bool *is_new)
{
	TRY(get_tag(r, is_new));
	memset(t, 0, sizeof *t);
	TRY(get_str(r, t->id, KOBO_ID_LEN_MAX, "id"));
	if (!*is_new)
		return get_state(r, t);
	TRY(get_str(r, t->from, KOBO_ID_LEN_MAX, "from"));
	TRY(get_str(r, t->to, KOBO_ID_LEN_MAX, "to"));
	TRY(get_str(r, t->currency, KOBO_CURRENCY_LEN_MAX, "currency"));
	TRY(get_str(r, t->request_id, KOBO_REQUEST_ID_LEN_MAX, "request_id"));
	TRY(get_str(r, t->created_by, KOBO_KEY_ID_LEN, "created_by"));
	TRY(get_str(r, t->trace_id, KOBO_TRACE_ID_LEN, "trace_id"));
	I64(r, &t->amount, "amount");
	TRY(get_bool(r, &t->pending, "pending"));
	if (!get_u32_at(r, &t->timeout_seconds))
		return CUT(r, "timeout_seconds");
	I64(r, &t->expires_at_ms, "expires_at_ms");
	TRY(get_metadata(r, &t->metadata, &t->metadata_len));
	I64(r, &t->created_at_ms, "created_at_ms");
	ENUM(r, t->leg, LEG_MAX, "leg");
	TRY(get_str(r, t->clearing, KOBO_ID_LEN_MAX, "clearing"));
	return get_state(r, t);
}

static int get_event(reader *r, kobo_event *e)
{
	bool is_new;
	TRY(get_tag(r, &is_new));
	if (!is_new)
		return refuse(r, "tag update on an event");
	memset(e, 0, sizeof *e); /* seq 0 */
	TRY(get_str(r, e->transfer_id, KOBO_ID_LEN_MAX, "transfer_id"));
	ENUM(r, e->kind, EVENT_KIND_MAX, "kind");
	I64(r, &e->at_ms, "at_ms");
	if (!get_u32_at(r, &e->shard))
		return CUT(r, "shard");
	TRY(get_str(r, e->node, KOBO_EVENT_NODE_LEN_MAX, "node"));
	TRY(get_str(r, e->request_id, KOBO_REQUEST_ID_LEN_MAX, "request_id"));
	TRY(get_str(r, e->trace_id, KOBO_TRACE_ID_LEN, "trace_id"));
	TRY(get_str(r, e->key_id, KOBO_KEY_ID_LEN, "key_id"));
	ENUM(r, e->leg, LEG_MAX, "leg");
	ENUM(r, e->status, STATUS_MAX, "status");
	I64(r, &e->amount, "amount");
	return KOBO_OK;
}

/* Capacity for count records: a power of two from 16, at most twice what
 * this frame needs (so the memory stays proportional to its length). */
static size_t grown_cap(size_t count)
{
	size_t cap = 16;
	while (cap < count)
		cap *= 2;
	return cap;
}

/* Makes *a (and *b when given) hold count records of their sizes. The old
 * contents need no keeping: fresh arrays, not realloc. */
static int reserve(void **a, size_t a_size, void **b, size_t b_size, size_t *cap,
                   size_t count)
{
	if (count <= *cap)
		return KOBO_OK;
	size_t n = grown_cap(count);
	free(*a);
	*a = malloc(n * a_size);
	if (b != NULL) {
		free(*b);
		*b = malloc(n * b_size);
	}
	if (*a == NULL || (b != NULL && *b == NULL)) {
		free(*a);
		*a = NULL;
		if (b != NULL) {
			free(*b);
			*b = NULL;
		}
		*cap = 0;
		return KOBO_ENOMEM;
	}
	*cap = n;
	return KOBO_OK;
}

/* The fixed header: magic, version, flags, seq, the three counts. */
static int get_header(reader *r, uint64_t *seq, uint32_t counts[3])
{
	if (!have(r, HEADER_BYTES))
		return refuse(r, "%zu bytes, shorter than the %u-byte header",
		              (size_t)(r->end - r->p), HEADER_BYTES);
	const uint8_t *p = r->p;
	if (memcmp(p, codec_magic, sizeof codec_magic) != 0)
		return refuse(r, "bad magic (not a hot store frame)");
	uint16_t version = get_u16(p + 4);
	if (version != HOT_CODEC_VERSION)
		return refuse(r, "version %u, this build reads %u", (unsigned)version,
		              HOT_CODEC_VERSION);
	uint16_t flags = get_u16(p + 6);
	if (flags != 0)
		return refuse(r, "flags 0x%x, version 1 has none", (unsigned)flags);
	*seq = get_u64(p + 8);
	for (int i = 0; i < 3; i++)
		counts[i] = get_u32(p + 16 + 4 * i);
	r->p += HEADER_BYTES;
	return KOBO_OK;
}

static int decode(reader *r, hot_decoded *out)
{
	uint64_t seq;
	uint32_t counts[3];
	TRY(get_header(r, &seq, counts));
	/* Counts against the bytes left, before any allocation: u64 sums of
	 * u32 products cannot overflow. */
	uint64_t min = (uint64_t)counts[0] * ACCOUNT_BYTES_MIN +
	               (uint64_t)counts[1] * TRANSFER_BYTES_MIN +
	               (uint64_t)counts[2] * EVENT_BYTES_MIN;
	if (min > (uint64_t)(r->end - r->p))
		return refuse(r, "%u accounts, %u transfers and %u events need at least "
		              "%llu bytes, %zu left", (unsigned)counts[0], (unsigned)counts[1],
		              (unsigned)counts[2], (unsigned long long)min,
		              (size_t)(r->end - r->p));
	if (reserve((void **)&out->accounts, sizeof *out->accounts,
	            (void **)&out->account_changes, sizeof *out->account_changes,
	            &out->accounts_cap, counts[0]) != KOBO_OK ||
	    reserve((void **)&out->transfers, sizeof *out->transfers,
	            (void **)&out->transfer_changes, sizeof *out->transfer_changes,
	            &out->transfers_cap, counts[1]) != KOBO_OK ||
	    reserve((void **)&out->events, sizeof *out->events, NULL, 0, &out->events_cap,
	            counts[2]) != KOBO_OK)
		return KOBO_ENOMEM;

	r->record = "account";
	for (r->index = 0; r->index < counts[0]; r->index++) {
		size_t i = r->index;
		bool is_new;
		TRY(get_account(r, &out->accounts[i], &is_new));
		out->account_changes[i].account = &out->accounts[i];
		out->account_changes[i].is_new = is_new;
	}
	r->record = "transfer";
	for (r->index = 0; r->index < counts[1]; r->index++) {
		size_t i = r->index;
		bool is_new;
		TRY(get_transfer(r, &out->transfers[i], &is_new));
		out->transfer_changes[i].transfer = &out->transfers[i];
		out->transfer_changes[i].is_new = is_new;
	}
	r->record = "event";
	for (r->index = 0; r->index < counts[2]; r->index++)
		TRY(get_event(r, &out->events[r->index]));
	r->record = NULL;
	if (r->p != r->end)
		return refuse(r, "%zu bytes left over after the last record",
		              (size_t)(r->end - r->p));
	out->commit_seq = seq;
	out->account_count = counts[0];
	out->transfer_count = counts[1];
	out->event_count = counts[2];
	return KOBO_OK;
}

int hot_codec_decode(const void *payload, size_t len, hot_decoded *out, char *why,
                     size_t why_len)
{
	if (why != NULL && why_len > 0)
		why[0] = '\0';
	if (out == NULL || (payload == NULL && len > 0)) {
		if (why != NULL && why_len > 0)
			snprintf(why, why_len, "no payload or no output");
		return KOBO_EINVAL;
	}
	/* Nothing of a refused frame is visible: the counts say none. */
	out->commit_seq = 0;
	out->account_count = out->transfer_count = out->event_count = 0;
	static const uint8_t empty[1];
	const uint8_t *bytes = payload != NULL ? payload : empty; /* len is 0 then */
	reader r = {.p = bytes, .end = bytes + len, .why = why, .why_len = why_len};
	int rc = decode(&r, out);
	if (rc == KOBO_ENOMEM && why != NULL && why_len > 0)
		snprintf(why, why_len, "out of memory for the decoded records");
	return rc;
}

int hot_codec_peek_seq(const void *payload, size_t len, uint64_t *commit_seq)
{
	if (payload == NULL || commit_seq == NULL)
		return KOBO_EINVAL;
	reader r = {.p = payload, .end = (const uint8_t *)payload + len};
	uint32_t counts[3];
	return get_header(&r, commit_seq, counts);
}

void hot_decoded_free(hot_decoded *decoded)
{
	if (decoded == NULL)
		return;
	free(decoded->accounts);
	free(decoded->account_changes);
	free(decoded->transfers);
	free(decoded->transfer_changes);
	free(decoded->events);
	memset(decoded, 0, sizeof *decoded);
}
