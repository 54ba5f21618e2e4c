/*
 * codec.h — the HTTP layer's pure functions: request bodies, paths, query
 * arguments and headers in; kobo_op arrays or a named error out; responses
 * encoded as JSON text.
 *
 * Nothing here does I/O, takes locks or keeps state between calls, so the
 * unit tests (tests/unit/test_http_codec.c) and the fuzzer
 * (tests/fuzz/fuzz_request.c) call these directly. The rules are those of
 * ../shared/API.md "Conventions": strict JSON (jansson with
 * JSON_REJECT_DUPLICATES), every rejection names its field, nothing guessed.
 *
 * Output is written with snprintf into growable buffers: a JSON library's
 * serializer is several times slower and money needs no floating point.
 */
#ifndef KOBO_HTTP_CODEC_H
#define KOBO_HTTP_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../ledger/ledger.h"
#include "../ledger/events.h"

/* ---- Limits of the HTTP edge. ---- */

#define KOBO_HTTP_BODY_MAX (1u << 20)         /* 1 MiB: every route but batch */
#define KOBO_HTTP_BATCH_BODY_MAX (8u << 20)   /* 8 MiB: POST /v1/transfers/batch */
#define KOBO_HTTP_METADATA_DEPTH_MAX 32       /* nesting inside metadata */
#define KOBO_HTTP_HISTORY_LIMIT_DEFAULT 100
#define KOBO_HTTP_HISTORY_LIMIT_MAX 1000
/* GET /v1/transfers/{id}/events: a whole journey in one page unless a
 * client retried its create ~1,000 times (each retry is an event); past
 * that the answer pages ("next"). A page costs 3 × limit events of memory
 * while it is read (limit + 1 a shard, limit merged): ~1.5 MB at most. */
#define KOBO_HTTP_EVENTS_LIMIT_DEFAULT 1000
#define KOBO_HTTP_EVENTS_LIMIT_MAX 1000
/* "P.Q.F" (events.h, kobo_events_position): two int64 of up to 19 digits,
 * two dots and a flag digit. */
#define KOBO_HTTP_EVENTS_CURSOR_LEN_MAX (2 * 19 + 3)
#define KOBO_HTTP_ERROR_MESSAGE_MAX 256
#define KOBO_HTTP_TRACE_ID_LEN 32             /* hex digits of a W3C trace id */
_Static_assert(KOBO_HTTP_TRACE_ID_LEN == KOBO_TRACE_ID_LEN, "events carry the trace id as read");
#define KOBO_HTTP_TRACEPARENT_LEN_MAX 256     /* longer headers are ignored */

_Static_assert(KOBO_HTTP_BATCH_BODY_MAX >= KOBO_HTTP_BODY_MAX,
               "the batch body limit is the larger one");
_Static_assert(KOBO_HTTP_HISTORY_LIMIT_DEFAULT <= KOBO_HTTP_HISTORY_LIMIT_MAX,
               "the default page fits the maximum");
_Static_assert(KOBO_HTTP_EVENTS_LIMIT_DEFAULT <= KOBO_HTTP_EVENTS_LIMIT_MAX,
               "the default page of events fits the maximum");
_Static_assert(KOBO_EVENTS_LISTS_MAX == 2, "the events cursor names two shards");

/* ---- Growable output buffer. ---- */

/* A byte buffer that grows with realloc. Appends never fail visibly: on
 * allocation failure the buffer is marked failed, later appends are ignored,
 * and the caller checks failed once at the end. data is NUL-terminated
 * whenever len > 0 and the buffer has not failed. */
typedef struct kobo_http_buf {
	char *data; /* owned; free with kobo_http_buf_free() or take it */
	size_t len;
	size_t cap;
	bool failed;
} kobo_http_buf;

void kobo_http_buf_init(kobo_http_buf *buf);
/* Frees data and re-initializes the buffer. */
void kobo_http_buf_free(kobo_http_buf *buf);
/* Makes room for at least extra more bytes (plus a NUL). false on failure. */
bool kobo_http_buf_reserve(kobo_http_buf *buf, size_t extra);
void kobo_http_buf_append(kobo_http_buf *buf, const char *bytes, size_t len);
void kobo_http_buf_puts(kobo_http_buf *buf, const char *text);
void kobo_http_buf_printf(kobo_http_buf *buf, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Appends bytes as a quoted JSON string, escaping '"', '\\' and control
 * characters. Valid UTF-8 is copied; each byte of an invalid sequence
 * becomes \ufffd, so the output is valid JSON whatever the input. */
void kobo_http_buf_json_string(kobo_http_buf *buf, const char *bytes, size_t len);

/* ---- Errors. ---- */

/* Why a request was refused before reaching a shard. message names the
 * field ("amount: must be an integer"), code is a static wire code. */
typedef struct kobo_http_error {
	int status;       /* 400, 404, 405, 413 */
	const char *code; /* "invalid_request", "not_found", … */
	char message[KOBO_HTTP_ERROR_MESSAGE_MAX];
} kobo_http_error;

/* Fills err and returns KOBO_EINVAL, so parsers can `return fail(...)`. */
int kobo_http_error_set(kobo_http_error *err, int status, const char *code,
                        const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* ---- Field rules (API.md "Conventions"). ---- */

/* 1..64 of [A-Za-z0-9._:@-]. */
bool kobo_http_id_valid(const char *id, size_t len);
/* ^[A-Z][A-Z0-9]{2,7}$ */
bool kobo_http_currency_valid(const char *currency, size_t len);
/* X-Request-Id: 1..128 of [A-Za-z0-9._-]. */
bool kobo_http_request_id_valid(const char *request_id, size_t len);
/* W3C traceparent "vv-<32 hex trace id>-<16 hex parent id>-<2 hex flags>",
 * lowercase, version not "ff", ids not all zeros; a version above 00 may be
 * followed by "-…". On success copies the trace id (33 bytes with NUL) into
 * trace_id when it is not NULL. */
bool kobo_http_traceparent_parse(const char *value, size_t len, char *trace_id);

/* ---- Kobo-Consistency-Token (API.md "Consistency token"). ----
 *
 * What a 2xx write answers (server.c add_consistency_token) and a GET may
 * send back: "kct1:" then, for each shard the write touched,
 * "<shard>@<seq>" joined by ",": shard a decimal index below the server's
 * shard count, seq the shard's commit sequence (store.h "CONSISTENCY
 * TOKEN") once the write had committed; both plain decimal (no sign, no
 * leading zeros, seq at most 2^64 - 1), each shard at most once, nothing
 * else (no spaces). Clients treat it as opaque and send it back as they
 * got it. */
#define KOBO_HTTP_TOKEN_SHARDS_MAX 256 /* = KOBO_SHARDS_MAX (shard.h) */
/* The longest token a server of KOBO_HTTP_TOKEN_SHARDS_MAX shards writes:
 * "kct1:" and per shard "255@18446744073709551615," (25 bytes). A longer
 * header is refused without being read further. */
#define KOBO_HTTP_TOKEN_LEN_MAX (5 + KOBO_HTTP_TOKEN_SHARDS_MAX * 25)

typedef struct kobo_http_token {
	uint32_t count; /* shards named */
	uint64_t named[(KOBO_HTTP_TOKEN_SHARDS_MAX + 63) / 64]; /* bit i: shard i named */
	uint64_t seq[KOBO_HTTP_TOKEN_SHARDS_MAX]; /* per named shard; 0 otherwise */
} kobo_http_token;

/* Parses value[0..len) (not NUL-terminated) for a server of shard_count
 * (1..KOBO_HTTP_TOKEN_SHARDS_MAX) shards into out. KOBO_OK, or KOBO_EINVAL
 * with err: 400 invalid_consistency_token and a sentence saying what is
 * wrong (too long, unknown version, malformed entry, shard out of range,
 * a shard named twice). */
int kobo_http_token_parse(const char *value, size_t len, uint32_t shard_count,
                          kobo_http_token *out, kobo_http_error *err);
/* true when the token names shard; *seq is its position (0 if not named). */
bool kobo_http_token_names(const kobo_http_token *token, uint32_t shard, uint64_t *seq);

/* ---- Request bodies. ---- */

/* The ops one request asks for. ops points at inline_op for single-op
 * requests, else at a malloc'd array; their metadata points into the
 * metadata buffer. Owned by the caller: release with kobo_http_ops_free().
 * The ops' request_id fields are left empty for the caller to fill. */
typedef struct kobo_http_ops {
	kobo_op *ops;
	size_t count;
	bool atomic; /* batch with "atomic": true: ops share atomic_group 1 */
	kobo_op inline_op;
	kobo_http_buf metadata;
} kobo_http_ops;

void kobo_http_ops_init(kobo_http_ops *ops);
void kobo_http_ops_free(kobo_http_ops *ops);

/* Each parser reads body[0..len) (not NUL-terminated) and on success fills
 * out (initialized by the caller with kobo_http_ops_init) and returns KOBO_OK.
 * On a refusal it returns KOBO_EINVAL with err filled (400 invalid_request
 * naming the field) and out holding nothing; KOBO_ENOMEM when memory ran out
 * (err says 503). */

/* POST /v1/accounts: {"id","currency","allow_negative"?,"metadata"?}. */
int kobo_http_parse_account(const char *body, size_t len, kobo_http_ops *out,
                            kobo_http_error *err);
/* POST /v1/transfers: {"id","from","to","amount","currency","pending"?,
 * "timeout_seconds"?,"metadata"?}. */
int kobo_http_parse_transfer(const char *body, size_t len, kobo_http_ops *out,
                             kobo_http_error *err);
/* POST /v1/transfers/batch: {"atomic"?,"transfers":[1..8190 transfers]};
 * errors inside name "transfers[i].field". */
int kobo_http_parse_batch(const char *body, size_t len, kobo_http_ops *out,
                          kobo_http_error *err);
/* POST /v1/transfers/{id}/post: empty body, {} or {"amount":N}. id is the
 * path id, already validated by the caller (it is checked again). */
int kobo_http_parse_post(const char *body, size_t len, const char *id,
                         kobo_http_ops *out, kobo_http_error *err);
/* POST /v1/transfers/{id}/void: empty body or {}. */
int kobo_http_parse_void(const char *body, size_t len, const char *id,
                         kobo_http_ops *out, kobo_http_error *err);

/* ---- Query strings. ---- */

/* GET /v1/accounts/{id}/transfers?limit=&after= and
 * GET /v1/transfers?request_id=&limit=&after= */
typedef struct kobo_http_history_query {
	size_t limit;      /* 1..1000, default 100 */
	int64_t after_seq; /* 0: from the start */
	bool has_limit;
	bool has_after;
	/* GET /v1/transfers only: the request id (required), and the cursor
	 * "SHARD.SEQ" (after_shard, after_seq) that its "next" gave. */
	char request_id[KOBO_REQUEST_ID_LEN_MAX + 1];
	bool has_request_id;
	uint32_t after_shard;
	/* GET /v1/transfers/{id}/events only: the cursor its "next" gave. */
	kobo_events_position events_after;
} kobo_http_history_query;

void kobo_http_history_query_init(kobo_http_history_query *query);
/* Takes one decoded query argument (value NULL when the argument had no
 * '='). Unknown keys, repeated keys and bad values → KOBO_EINVAL with err. */
int kobo_http_history_query_arg(kobo_http_history_query *query, const char *key,
                                const char *value, kobo_http_error *err);

/* The same for GET /v1/transfers: request_id (1..128 of the X-Request-Id
 * characters), limit, after ("SHARD.SEQ" as "next" gave it). */
int kobo_http_request_query_arg(kobo_http_history_query *query, const char *key,
                                const char *value, kobo_http_error *err);

/* The same for GET /v1/transfers/{id}/events: limit (1..
 * KOBO_HTTP_EVENTS_LIMIT_MAX; has_limit false leaves the default to the
 * handler) and after, the cursor "P.Q.F" its "next" gave, into
 * query->events_after: P and Q the seq of the last event given on the
 * payer's and the payee's shard (0..INT64_MAX decimal, Q 0 for a transfer
 * on one shard), F 1 when that event asked the payee's shard, else 0. */
int kobo_http_events_query_arg(kobo_http_history_query *query, const char *key,
                               const char *value, kobo_http_error *err);
/* Writes the cursor of pos into out (KOBO_HTTP_EVENTS_CURSOR_LEN_MAX + 1
 * bytes) as kobo_http_events_query_arg reads it; returns its length. Both
 * seqs must be ≥ 0. */
size_t kobo_http_events_cursor_format(char *out, const kobo_events_position *pos);

/* ---- Responses. ---- */

/* A complete response, built before it is handed to the server. */
typedef struct kobo_http_reply {
	int status;
	kobo_http_buf body;
	const char *content_type; /* static; NULL means application/json */
	bool replayed;            /* Idempotent-Replayed: true */
	unsigned retry_after_s;   /* Retry-After when > 0 */
	char allow[64];           /* Allow header when non-empty (405) */
} kobo_http_reply;

void kobo_http_reply_init(kobo_http_reply *reply);
void kobo_http_reply_free(kobo_http_reply *reply);
/* Replaces the reply with {"error":{"code","message","request_id"}}. */
void kobo_http_reply_error(kobo_http_reply *reply, int status, const char *code,
                           const char *message, const char *request_id);

/* Appends the account / transfer object of API.md to buf. */
void kobo_http_encode_account(kobo_http_buf *buf, const kobo_account *account);
void kobo_http_encode_transfer(kobo_http_buf *buf, const kobo_transfer *transfer);
/* One event of a transfer's journey (events.h): at, at_ms, event,
 * transfer_id, shard, node, request_id, trace_id and key_id (null when
 * none), leg, status, amount, seq (shard-local order). */
void kobo_http_encode_event(kobo_http_buf *buf, const kobo_event *event);

/* HTTP status and error code of one op result: 201 CREATED, 200 REPLAYED or
 * UPDATED (a replayed rejection: 422 with its recorded code), 409
 * id_conflict, 409 transfer_in_progress (a post/void of a hold whose saga
 * step is under way: kobo_http_reply_result adds Retry-After: 1 and does
 * not count it as a rejection), 404, 422. *code is NULL for successes. */
int kobo_http_result_status(const kobo_result *result, const char **code);
/* A human sentence for an error code (static). */
const char *kobo_http_error_message(const char *code);

/* The reply of a single-op request (account, transfer, post, void) from its
 * result. */
void kobo_http_reply_result(kobo_http_reply *reply, const kobo_result *result,
                            const char *request_id);
/* The 200 reply of POST /v1/transfers/batch: one entry per op, in order. */
void kobo_http_reply_batch(kobo_http_reply *reply, const kobo_op *ops,
                           const kobo_result *results, size_t count,
                           const char *request_id);

/* One entry of the batch reply ({"id","status","transfer"|"error"}). */
void kobo_http_encode_batch_item(kobo_http_buf *buf, const char *id,
                                 const kobo_result *result);
/* A batch entry whose cross-shard saga has not finished: status 202. */
void kobo_http_encode_batch_accepted(kobo_http_buf *buf, const kobo_transfer *transfer);
/* 202 with the transfer (status "processing"): its saga is still running. */
void kobo_http_reply_accepted(kobo_http_reply *reply, const kobo_transfer *transfer);

/* The answer a finished saga gives the request that waited for it, as an op
 * result: kind is the request's op (CREATE_TRANSFER, POST, VOID), replayed
 * whether the shard answered it as a replay. A create whose credit leg was
 * refused answers the refusal (422, the payer refunded: VOIDED/compensated);
 * a refused post answers its code; a post or void that finds the record
 * PROCESSING again (another step began) answers transfer_in_progress; one
 * that found the hold ended otherwise answers not_pending. out->transfer is a copy of final
 * (metadata borrowed). */
void kobo_http_saga_outcome(const kobo_transfer *final, kobo_op_kind kind,
                            bool replayed, kobo_result *out);

#endif /* KOBO_HTTP_CODEC_H */
