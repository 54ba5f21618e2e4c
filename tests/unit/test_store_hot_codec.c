/*
 * test_store_hot_codec.c — the journal frame codec of the journaled
 * embedded store (src/store/hot/codec.h).
 *
 * Round trips of every field of every record kind (new and updated
 * accounts and transfers, events) with extreme values: strings at their
 * longest and empty, INT64_MIN / INT64_MAX, every value of every enum,
 * empty and 4096-byte metadata; hot_codec_size equal to the bytes written;
 * the layout byte for byte against a frame built here by hand from
 * codec.h's description; every too-small cap refused; the payload cut at
 * every length refused (each cut in a buffer of exactly that size, so
 * ASan sees any read past it); a trailing byte, bad magic / version /
 * flags / tag, every enum one past its range, a bool of 2, every string
 * one byte over its limit and with a NUL byte, over-long or NUL-holding
 * metadata, and counts the bytes cannot hold refused; records decode
 * refuses are refused by encode too; one hot_decoded reused big, small,
 * big; hot_codec_peek_seq.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/store/hot/codec.h"

#define FRAME_MAX (1u << 20)
#define HEADER 28u

static uint8_t frame[FRAME_MAX];
static char big_metadata[KOBO_METADATA_BYTES_MAX];

/* ---- Records with every field set. ---- */

static void fill(char *dst, size_t len, char c)
{
	memset(dst, c, len);
	dst[len] = '\0';
}

/* A new account: variant 0 with every string at its longest, INT64_MIN /
 * MAX balances and 4096 bytes of metadata; variant 1 with short strings,
 * "{}" metadata; variant 2 with empty strings and empty metadata. */
static void make_account(kobo_account *a, int variant)
{
	memset(a, 0, sizeof *a);
	if (variant == 0) {
		fill(a->id, KOBO_ID_LEN_MAX, 'a');
		fill(a->currency, KOBO_CURRENCY_LEN_MAX, 'C');
		fill(a->created_by, KOBO_KEY_ID_LEN, 'k');
		a->allow_negative = true;
		a->posted = INT64_MIN;
		a->pending_out = INT64_MAX;
		a->pending_in = INT64_MAX - 1;
		a->metadata = big_metadata;
		a->metadata_len = KOBO_METADATA_BYTES_MAX;
		a->created_at_ms = INT64_MAX;
	} else if (variant == 1) {
		strcpy(a->id, "acct-1");
		strcpy(a->currency, "USD");
		strcpy(a->created_by, "0123456789abcdef");
		a->posted = -5;
		a->pending_out = 7;
		a->pending_in = 9;
		a->metadata = "{}";
		a->metadata_len = 2;
		a->created_at_ms = INT64_MIN;
	} else {
		a->metadata = "";
		a->metadata_len = 0;
	}
}

/* A new transfer; i picks each enum's value (i modulo its count), so i
 * over 0..KOBO_RESULT_CODE_COUNT covers every value of every enum. */
static void make_transfer(kobo_transfer *t, int i)
{
	memset(t, 0, sizeof *t);
	snprintf(t->id, sizeof t->id, "transfer-%d", i);
	if (i == 0) { /* every string at its longest */
		fill(t->id, KOBO_ID_LEN_MAX, 'i');
		fill(t->from, KOBO_ID_LEN_MAX, 'f');
		fill(t->to, KOBO_ID_LEN_MAX, 't');
		fill(t->currency, KOBO_CURRENCY_LEN_MAX, 'C');
		fill(t->request_id, KOBO_REQUEST_ID_LEN_MAX, 'r');
		fill(t->created_by, KOBO_KEY_ID_LEN, 'k');
		fill(t->trace_id, KOBO_TRACE_ID_LEN, 'e');
		fill(t->clearing, KOBO_ID_LEN_MAX, 'c');
		t->metadata = big_metadata;
		t->metadata_len = KOBO_METADATA_BYTES_MAX;
	} else if (i == 1) { /* every string empty */
		t->id[0] = '\0';
		t->metadata = "";
		t->metadata_len = 0;
	} else {
		strcpy(t->from, "payer");
		strcpy(t->to, "payee");
		strcpy(t->currency, "EUR");
		snprintf(t->request_id, sizeof t->request_id, "req-%d", i);
		strcpy(t->trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
		t->metadata = "{\"k\":1}";
		t->metadata_len = 7;
	}
	bool odd = i % 2 == 1;
	t->amount = odd ? INT64_MAX : INT64_MIN;
	t->posted_amount = odd ? INT64_MIN : INT64_MAX;
	t->pending = odd;
	t->timeout_seconds = odd ? UINT32_MAX : (uint32_t)i;
	t->expires_at_ms = odd ? INT64_MIN : INT64_MAX;
	t->status = (kobo_transfer_status)(i % (KOBO_STATUS_REJECTED + 1));
	t->void_reason = (kobo_void_reason)(i % (KOBO_VOID_COMPENSATED + 1));
	t->error_code = (kobo_result_code)(i % KOBO_RESULT_CODE_COUNT);
	t->created_at_ms = odd ? INT64_MAX : -1;
	t->updated_at_ms = odd ? INT64_MIN : 1;
	t->leg = (kobo_leg)(i % (KOBO_LEG_CREDIT + 1));
	t->saga = (kobo_saga_state)((i + 1) % (KOBO_SAGA_VOIDING + 1));
	t->saga_amount = odd ? INT64_MIN : INT64_MAX;
	t->saga_reason = (kobo_void_reason)((i + 2) % (KOBO_VOID_COMPENSATED + 1));
}

/* An event; i picks each enum's value as for transfers. */
static void make_event(kobo_event *e, int i)
{
	memset(e, 0, sizeof *e);
	if (i == 0) {
		fill(e->transfer_id, KOBO_ID_LEN_MAX, 'i');
		fill(e->node, KOBO_EVENT_NODE_LEN_MAX, 'n');
		fill(e->request_id, KOBO_REQUEST_ID_LEN_MAX, 'r');
		fill(e->trace_id, KOBO_TRACE_ID_LEN, 'e');
		fill(e->key_id, KOBO_KEY_ID_LEN, 'k');
	} else if (i > 1) {
		snprintf(e->transfer_id, sizeof e->transfer_id, "transfer-%d", i);
		strcpy(e->node, "node-a");
		strcpy(e->request_id, "req");
	}
	bool odd = i % 2 == 1;
	e->kind = (kobo_event_kind)(i % KOBO_EVENT_KIND_COUNT);
	e->at_ms = odd ? INT64_MIN : INT64_MAX;
	e->shard = odd ? UINT32_MAX : (uint32_t)i;
	e->leg = (kobo_leg)(i % (KOBO_LEG_CREDIT + 1));
	e->status = (kobo_transfer_status)(i % (KOBO_STATUS_REJECTED + 1));
	e->amount = odd ? INT64_MAX : INT64_MIN;
	e->seq = 12345; /* not carried: decodes as 0 */
}

/* ---- Comparisons (cmocka prints expected and seen). ---- */

static void assert_metadata(const char *want, uint32_t want_len, const char *got,
                            uint32_t got_len)
{
	assert_int_equal(got_len, want_len);
	assert_non_null(got);
	if (want_len > 0)
		assert_memory_equal(got, want, want_len);
}

static void assert_account(const kobo_account *want, bool is_new, const kobo_account *got)
{
	assert_string_equal(got->id, want->id);
	assert_int_equal(got->posted, want->posted);
	assert_int_equal(got->pending_out, want->pending_out);
	assert_int_equal(got->pending_in, want->pending_in);
	if (!is_new) { /* the rest zero */
		assert_string_equal(got->currency, "");
		assert_false(got->allow_negative);
		assert_null(got->metadata);
		assert_int_equal(got->metadata_len, 0);
		assert_int_equal(got->created_at_ms, 0);
		assert_string_equal(got->created_by, "");
		return;
	}
	assert_string_equal(got->currency, want->currency);
	assert_int_equal(got->allow_negative, want->allow_negative);
	assert_metadata(want->metadata, want->metadata_len, got->metadata, got->metadata_len);
	assert_int_equal(got->created_at_ms, want->created_at_ms);
	assert_string_equal(got->created_by, want->created_by);
}

static void assert_transfer(const kobo_transfer *want, bool is_new, const kobo_transfer *got)
{
	assert_string_equal(got->id, want->id);
	assert_int_equal(got->status, want->status);
	assert_int_equal(got->posted_amount, want->posted_amount);
	assert_int_equal(got->void_reason, want->void_reason);
	assert_int_equal(got->error_code, want->error_code);
	assert_int_equal(got->updated_at_ms, want->updated_at_ms);
	assert_int_equal(got->saga, want->saga);
	assert_int_equal(got->saga_amount, want->saga_amount);
	assert_int_equal(got->saga_reason, want->saga_reason);
	kobo_transfer zero = {0};
	const kobo_transfer *rest = is_new ? want : &zero;
	assert_string_equal(got->from, rest->from);
	assert_string_equal(got->to, rest->to);
	assert_string_equal(got->currency, rest->currency);
	assert_string_equal(got->request_id, rest->request_id);
	assert_string_equal(got->created_by, rest->created_by);
	assert_string_equal(got->trace_id, rest->trace_id);
	assert_int_equal(got->amount, rest->amount);
	assert_int_equal(got->pending, rest->pending);
	assert_int_equal(got->timeout_seconds, rest->timeout_seconds);
	assert_int_equal(got->expires_at_ms, rest->expires_at_ms);
	assert_int_equal(got->created_at_ms, rest->created_at_ms);
	assert_int_equal(got->leg, rest->leg);
	assert_string_equal(got->clearing, rest->clearing);
	if (is_new) {
		assert_metadata(want->metadata, want->metadata_len, got->metadata,
		                got->metadata_len);
	} else {
		assert_null(got->metadata);
		assert_int_equal(got->metadata_len, 0);
	}
}

static void assert_event(const kobo_event *want, const kobo_event *got)
{
	assert_string_equal(got->transfer_id, want->transfer_id);
	assert_int_equal(got->kind, want->kind);
	assert_int_equal(got->at_ms, want->at_ms);
	assert_int_equal(got->shard, want->shard);
	assert_string_equal(got->node, want->node);
	assert_string_equal(got->request_id, want->request_id);
	assert_string_equal(got->trace_id, want->trace_id);
	assert_string_equal(got->key_id, want->key_id);
	assert_int_equal(got->leg, want->leg);
	assert_int_equal(got->status, want->status);
	assert_int_equal(got->amount, want->amount);
	assert_int_equal(got->seq, 0);
}

/* ---- A batch of effects, encoded and checked against its decode. ---- */

#define BATCH_MAX 64

typedef struct batch {
	kobo_account accounts[BATCH_MAX];
	kobo_account_change account_changes[BATCH_MAX];
	size_t account_count;
	kobo_transfer transfers[BATCH_MAX];
	kobo_transfer_change transfer_changes[BATCH_MAX];
	size_t transfer_count;
	kobo_event events[BATCH_MAX];
	size_t event_count;
} batch;

static void add_account(batch *b, const kobo_account *a, bool is_new)
{
	assert_true(b->account_count < BATCH_MAX);
	size_t i = b->account_count++;
	b->accounts[i] = *a;
	b->account_changes[i].account = &b->accounts[i];
	b->account_changes[i].is_new = is_new;
}

static void add_transfer(batch *b, const kobo_transfer *t, bool is_new)
{
	assert_true(b->transfer_count < BATCH_MAX);
	size_t i = b->transfer_count++;
	b->transfers[i] = *t;
	b->transfer_changes[i].transfer = &b->transfers[i];
	b->transfer_changes[i].is_new = is_new;
}

static void add_event(batch *b, const kobo_event *e)
{
	assert_true(b->event_count < BATCH_MAX);
	b->events[b->event_count++] = *e;
}

/* Every record kind with every extreme and every enum value. */
static batch *full_batch(void)
{
	batch *b = calloc(1, sizeof *b);
	assert_non_null(b);
	kobo_account a;
	for (int v = 0; v < 3; v++) {
		make_account(&a, v);
		add_account(b, &a, true);
		add_account(b, &a, false);
	}
	kobo_transfer t;
	for (int i = 0; i <= KOBO_RESULT_CODE_COUNT; i++) {
		make_transfer(&t, i);
		add_transfer(b, &t, true);
		add_transfer(b, &t, false);
	}
	kobo_event e;
	for (int i = 0; i <= KOBO_EVENT_KIND_COUNT; i++) {
		make_event(&e, i);
		add_event(b, &e);
	}
	return b;
}

static size_t encode_batch(const batch *b, uint64_t seq, uint8_t *out, size_t cap)
{
	size_t len = 0;
	assert_int_equal(hot_codec_encode(seq, b->account_changes, b->account_count,
	                                  b->transfer_changes, b->transfer_count, b->events,
	                                  b->event_count, out, cap, &len),
	                 KOBO_OK);
	assert_int_equal(len, hot_codec_size(b->account_changes, b->account_count,
	                                     b->transfer_changes, b->transfer_count,
	                                     b->events, b->event_count));
	return len;
}

static void assert_decoded(const batch *b, uint64_t seq, const hot_decoded *d)
{
	assert_int_equal(d->commit_seq, seq);
	assert_int_equal(d->account_count, b->account_count);
	assert_int_equal(d->transfer_count, b->transfer_count);
	assert_int_equal(d->event_count, b->event_count);
	for (size_t i = 0; i < b->account_count; i++) {
		assert_ptr_equal(d->account_changes[i].account, &d->accounts[i]);
		assert_int_equal(d->account_changes[i].is_new, b->account_changes[i].is_new);
		assert_account(&b->accounts[i], b->account_changes[i].is_new, &d->accounts[i]);
	}
	for (size_t i = 0; i < b->transfer_count; i++) {
		assert_ptr_equal(d->transfer_changes[i].transfer, &d->transfers[i]);
		assert_int_equal(d->transfer_changes[i].is_new, b->transfer_changes[i].is_new);
		assert_transfer(&b->transfers[i], b->transfer_changes[i].is_new,
		                &d->transfers[i]);
	}
	for (size_t i = 0; i < b->event_count; i++)
		assert_event(&b->events[i], &d->events[i]);
}

/* Decodes payload[0..len) from a heap copy of exactly len bytes, so ASan
 * catches any read past the end. */
static int decode_exact(const uint8_t *payload, size_t len, hot_decoded *d, char *why,
                        size_t why_len)
{
	uint8_t *copy = malloc(len > 0 ? len : 1);
	assert_non_null(copy);
	memcpy(copy, payload, len);
	int rc = hot_codec_decode(copy, len, d, why, why_len);
	/* Metadata points into the payload: callers here compare the
	 * records only while it lives, so keep the copy for the success
	 * case in a static slot. */
	static uint8_t *kept;
	free(kept);
	kept = copy;
	return rc;
}

static void round_trip_every_field_and_extreme(void **state)
{
	(void)state;
	batch *b = full_batch();
	size_t len = encode_batch(b, UINT64_MAX, frame, sizeof frame);
	hot_decoded d = {0};
	char why[256];
	assert_int_equal(decode_exact(frame, len, &d, why, sizeof why), KOBO_OK);
	assert_decoded(b, UINT64_MAX, &d);

	/* Decoded records re-encode to the same bytes (canonical). */
	static uint8_t again[FRAME_MAX];
	size_t len2 = 0;
	assert_int_equal(hot_codec_encode(d.commit_seq, d.account_changes, d.account_count,
	                                  d.transfer_changes, d.transfer_count, d.events,
	                                  d.event_count, again, sizeof again, &len2),
	                 KOBO_OK);
	assert_int_equal(len2, len);
	assert_memory_equal(again, frame, len);
	hot_decoded_free(&d);
	free(b);
}

static void empty_frame_is_the_header(void **state)
{
	(void)state;
	batch *b = calloc(1, sizeof *b);
	assert_non_null(b);
	size_t len = encode_batch(b, 7, frame, sizeof frame);
	assert_int_equal(len, HEADER);
	hot_decoded d = {0};
	assert_int_equal(decode_exact(frame, len, &d, NULL, 0), KOBO_OK);
	assert_decoded(b, 7, &d);
	hot_decoded_free(&d);
	free(b);
}

/* ---- The layout, byte for byte, built here from codec.h. ---- */

typedef struct bytes {
	uint8_t b[16384];
	size_t n;
} bytes;

static void b_le(bytes *b, uint64_t v, int n)
{
	assert_true(b->n + (size_t)n <= sizeof b->b);
	for (int i = 0; i < n; i++)
		b->b[b->n++] = (uint8_t)(v >> (8 * i));
}

static void b_str(bytes *b, const char *s, size_t len)
{
	b_le(b, len, 2);
	assert_true(b->n + len <= sizeof b->b);
	memcpy(b->b + b->n, s, len);
	b->n += len;
}

static void b_meta(bytes *b, const char *s, size_t len)
{
	b_le(b, len, 4);
	assert_true(b->n + len <= sizeof b->b);
	memcpy(b->b + b->n, s, len);
	b->n += len;
}

static void b_header(bytes *b, uint64_t seq, uint32_t accounts, uint32_t transfers,
                     uint32_t events)
{
	b->n = 0;
	memcpy(b->b, "KbHb", 4);
	b->n = 4;
	b_le(b, 1, 2); /* version */
	b_le(b, 0, 2); /* flags */
	b_le(b, seq, 8);
	b_le(b, accounts, 4);
	b_le(b, transfers, 4);
	b_le(b, events, 4);
}

static void b_state(bytes *b, const kobo_transfer *t)
{
	b_le(b, t->status, 1);
	b_le(b, (uint64_t)t->posted_amount, 8);
	b_le(b, t->void_reason, 1);
	b_le(b, t->error_code, 1);
	b_le(b, (uint64_t)t->updated_at_ms, 8);
	b_le(b, t->saga, 1);
	b_le(b, (uint64_t)t->saga_amount, 8);
	b_le(b, t->saga_reason, 1);
}

/* The strings of a new account, a new transfer and an event, in frame
 * order; lens[i] (when not SIZE_MAX) replaces string i's length and its
 * bytes are 'x's, with a NUL in the middle when nul. */
typedef struct strings_override {
	int index;
	size_t len;
	bool nul;
} strings_override;

static char override_buf[1024];

static void b_field(bytes *b, const strings_override *o, int *index, const char *s)
{
	if (o != NULL && o->index == *index) {
		memset(override_buf, 'x', o->len);
		if (o->nul && o->len > 0)
			override_buf[o->len / 2] = '\0';
		b_str(b, override_buf, o->len);
	} else {
		b_str(b, s, strlen(s));
	}
	(*index)++;
}

static void b_account_new(bytes *b, const kobo_account *a, const strings_override *o)
{
	int k = 0;
	b_le(b, 1, 1);
	b_field(b, o, &k, a->id);
	b_field(b, o, &k, a->currency);
	b_le(b, a->allow_negative, 1);
	b_le(b, (uint64_t)a->posted, 8);
	b_le(b, (uint64_t)a->pending_out, 8);
	b_le(b, (uint64_t)a->pending_in, 8);
	b_meta(b, a->metadata, a->metadata_len);
	b_le(b, (uint64_t)a->created_at_ms, 8);
	b_field(b, o, &k, a->created_by);
}

static void b_account_update(bytes *b, const kobo_account *a)
{
	b_le(b, 2, 1);
	b_str(b, a->id, strlen(a->id));
	b_le(b, (uint64_t)a->posted, 8);
	b_le(b, (uint64_t)a->pending_out, 8);
	b_le(b, (uint64_t)a->pending_in, 8);
}

static void b_transfer_new(bytes *b, const kobo_transfer *t, const strings_override *o)
{
	int k = 0;
	b_le(b, 1, 1);
	b_field(b, o, &k, t->id);
	b_field(b, o, &k, t->from);
	b_field(b, o, &k, t->to);
	b_field(b, o, &k, t->currency);
	b_field(b, o, &k, t->request_id);
	b_field(b, o, &k, t->created_by);
	b_field(b, o, &k, t->trace_id);
	b_le(b, (uint64_t)t->amount, 8);
	b_le(b, t->pending, 1);
	b_le(b, t->timeout_seconds, 4);
	b_le(b, (uint64_t)t->expires_at_ms, 8);
	b_meta(b, t->metadata, t->metadata_len);
	b_le(b, (uint64_t)t->created_at_ms, 8);
	b_le(b, t->leg, 1);
	b_field(b, o, &k, t->clearing);
	b_state(b, t);
}

static void b_transfer_update(bytes *b, const kobo_transfer *t)
{
	b_le(b, 2, 1);
	b_str(b, t->id, strlen(t->id));
	b_state(b, t);
}

static void b_event(bytes *b, const kobo_event *e, const strings_override *o)
{
	int k = 0;
	b_le(b, 1, 1);
	b_field(b, o, &k, e->transfer_id);
	b_le(b, e->kind, 1);
	b_le(b, (uint64_t)e->at_ms, 8);
	b_le(b, e->shard, 4);
	b_field(b, o, &k, e->node);
	b_field(b, o, &k, e->request_id);
	b_field(b, o, &k, e->trace_id);
	b_field(b, o, &k, e->key_id);
	b_le(b, e->leg, 1);
	b_le(b, e->status, 1);
	b_le(b, (uint64_t)e->amount, 8);
}

static void layout_matches_codec_h(void **state)
{
	(void)state;
	batch *b = calloc(1, sizeof *b);
	assert_non_null(b);
	kobo_account a;
	make_account(&a, 1);
	add_account(b, &a, true);
	add_account(b, &a, false);
	kobo_transfer t;
	make_transfer(&t, 3);
	add_transfer(b, &t, true);
	add_transfer(b, &t, false);
	kobo_event e;
	make_event(&e, 5);
	add_event(b, &e);
	size_t len = encode_batch(b, 0x0102030405060708u, frame, sizeof frame);

	static bytes want;
	b_header(&want, 0x0102030405060708u, 2, 2, 1);
	b_account_new(&want, &a, NULL);
	b_account_update(&want, &a);
	b_transfer_new(&want, &t, NULL);
	b_transfer_update(&want, &t);
	b_event(&want, &e, NULL);
	assert_int_equal(len, want.n);
	assert_memory_equal(frame, want.b, len);
	free(b);
}

/* ---- Refusals. ---- */

static void cap_too_small_refused(void **state)
{
	(void)state;
	batch *b = full_batch();
	size_t len = encode_batch(b, 1, frame, sizeof frame);
	static uint8_t small[FRAME_MAX];
	for (size_t cap = 0; cap < len; cap++) {
		size_t out_len = 0;
		int rc = hot_codec_encode(1, b->account_changes, b->account_count,
		                          b->transfer_changes, b->transfer_count, b->events,
		                          b->event_count, small, cap, &out_len);
		if (rc != KOBO_EINVAL)
			fail_msg("cap %zu of %zu accepted", cap, len);
	}
	size_t out_len = 0;
	assert_int_equal(hot_codec_encode(1, b->account_changes, b->account_count,
	                                  b->transfer_changes, b->transfer_count, b->events,
	                                  b->event_count, small, len, &out_len),
	                 KOBO_OK);
	assert_int_equal(out_len, len);
	assert_memory_equal(small, frame, len);
	free(b);
}

static void truncated_at_every_length_refused(void **state)
{
	(void)state;
	batch *b = full_batch();
	size_t len = encode_batch(b, 1, frame, sizeof frame);
	hot_decoded d = {0};
	char why[256];
	for (size_t cut = 0; cut < len; cut++) {
		int rc = decode_exact(frame, cut, &d, why, sizeof why);
		if (rc != KOBO_EINVAL)
			fail_msg("payload cut at %zu of %zu: rc %d", cut, len, rc);
		if (why[0] == '\0')
			fail_msg("payload cut at %zu: no reason given", cut);
		assert_int_equal(d.account_count + d.transfer_count + d.event_count, 0);
	}
	assert_int_equal(decode_exact(frame, len, &d, why, sizeof why), KOBO_OK);
	assert_decoded(b, 1, &d);
	hot_decoded_free(&d);
	free(b);
}

static void trailing_byte_refused(void **state)
{
	(void)state;
	batch *b = full_batch();
	size_t len = encode_batch(b, 1, frame, sizeof frame);
	frame[len] = 0;
	hot_decoded d = {0};
	char why[256];
	assert_int_equal(decode_exact(frame, len + 1, &d, why, sizeof why), KOBO_EINVAL);
	assert_non_null(strstr(why, "left over"));
	hot_decoded_free(&d);
	free(b);
}

/* Decodes want.b expecting a refusal whose reason contains needle. */
static void assert_refused(const bytes *frame_bytes, const char *needle)
{
	hot_decoded d = {0};
	char why[256];
	int rc = decode_exact(frame_bytes->b, frame_bytes->n, &d, why, sizeof why);
	if (rc != KOBO_EINVAL)
		fail_msg("accepted (rc %d), expected a refusal naming \"%s\"", rc, needle);
	if (strstr(why, needle) == NULL)
		fail_msg("refused with \"%s\", expected \"%s\" in it", why, needle);
	hot_decoded_free(&d);
}

static void assert_accepted(const bytes *frame_bytes)
{
	hot_decoded d = {0};
	char why[256];
	int rc = decode_exact(frame_bytes->b, frame_bytes->n, &d, why, sizeof why);
	if (rc != KOBO_OK)
		fail_msg("refused: %s", why);
	hot_decoded_free(&d);
}

static void bad_header_refused(void **state)
{
	(void)state;
	static bytes f;
	b_header(&f, 1, 0, 0, 0);
	assert_accepted(&f);
	f.b[0] = 'k';
	assert_refused(&f, "magic");
	b_header(&f, 1, 0, 0, 0);
	f.b[4] = 2; /* version 2 */
	assert_refused(&f, "version");
	b_header(&f, 1, 0, 0, 0);
	f.b[5] = 1; /* version 257 */
	assert_refused(&f, "version");
	b_header(&f, 1, 0, 0, 0);
	f.b[6] = 1; /* a flag */
	assert_refused(&f, "flags");
	b_header(&f, 1, 0, 0, 0);
	f.n = HEADER - 1;
	assert_refused(&f, "header");
}

/* Counts the bytes cannot hold are refused before anything is allocated
 * (ASan would also refuse an allocation of UINT32_MAX records). */
static void counts_beyond_the_bytes_refused(void **state)
{
	(void)state;
	static bytes f;
	uint32_t counts[3][3] = {{UINT32_MAX, 0, 0}, {0, UINT32_MAX, 0}, {0, 0, UINT32_MAX}};
	for (int i = 0; i < 3; i++) {
		b_header(&f, 1, counts[i][0], counts[i][1], counts[i][2]);
		assert_refused(&f, "need at least");
	}
	/* One updated account is 27 bytes at least: 26 bytes are refused
	 * by the count check already. */
	b_header(&f, 1, 1, 0, 0);
	memset(f.b + f.n, 0, 26);
	f.n += 26;
	assert_refused(&f, "need at least");
}

static void bad_tag_refused(void **state)
{
	(void)state;
	static bytes f;
	kobo_account a;
	make_account(&a, 1);
	uint8_t tags[] = {0, 3, 255};
	for (size_t i = 0; i < sizeof tags; i++) {
		b_header(&f, 1, 1, 0, 0);
		b_account_update(&f, &a);
		f.b[HEADER] = tags[i];
		assert_refused(&f, "tag");
	}
	kobo_transfer t;
	make_transfer(&t, 2);
	b_header(&f, 1, 0, 1, 0);
	b_transfer_update(&f, &t);
	f.b[HEADER] = 0;
	assert_refused(&f, "transfer 0: unknown tag 0");
	kobo_event e;
	make_event(&e, 2);
	b_header(&f, 1, 0, 0, 1);
	b_event(&f, &e, NULL);
	f.b[HEADER] = 2; /* an event is never an update */
	assert_refused(&f, "event 0: tag update");
}

/* Every enum byte: its largest value accepted, one more refused, 255
 * refused. offset is the byte's offset in the frame built by build. */
static void check_enum_byte(bytes *f, size_t offset, unsigned max, const char *name)
{
	uint8_t original = f->b[offset];
	f->b[offset] = (uint8_t)max;
	assert_accepted(f);
	f->b[offset] = (uint8_t)(max + 1);
	assert_refused(f, name);
	f->b[offset] = 255;
	assert_refused(f, name);
	f->b[offset] = original;
}

static void bad_enum_and_bool_refused(void **state)
{
	(void)state;
	static bytes f;
	kobo_transfer t;
	make_transfer(&t, 2);
	strcpy(t.id, "t");
	/* An updated transfer: tag 28, id 29..31, state from 32. */
	b_header(&f, 1, 0, 1, 0);
	b_transfer_update(&f, &t);
	size_t s = HEADER + 1 + 2 + 1;
	check_enum_byte(&f, s + 0, KOBO_STATUS_REJECTED, "status");
	check_enum_byte(&f, s + 9, KOBO_VOID_COMPENSATED, "void_reason");
	check_enum_byte(&f, s + 10, KOBO_RESULT_CODE_COUNT - 1, "error_code");
	check_enum_byte(&f, s + 19, KOBO_SAGA_VOIDING, "saga");
	check_enum_byte(&f, s + 28, KOBO_VOID_COMPENSATED, "saga_reason");

	/* A new transfer with every string empty: tag, 7 x u16, amount,
	 * pending, timeout, expires, metadata u32, created, leg. */
	memset(&t, 0, sizeof t);
	t.metadata = "";
	b_header(&f, 1, 0, 1, 0);
	b_transfer_new(&f, &t, NULL);
	size_t pending = HEADER + 1 + 14 + 8;
	size_t leg = pending + 1 + 4 + 8 + 4 + 8;
	check_enum_byte(&f, leg, KOBO_LEG_CREDIT, "leg");
	f.b[pending] = 1;
	assert_accepted(&f);
	f.b[pending] = 2;
	assert_refused(&f, "pending is 2, not 0 or 1");

	/* A new account with empty strings: allow_negative after tag and
	 * two u16. */
	kobo_account a;
	make_account(&a, 2);
	b_header(&f, 1, 1, 0, 0);
	b_account_new(&f, &a, NULL);
	size_t allow = HEADER + 1 + 2 + 2;
	f.b[allow] = 1;
	assert_accepted(&f);
	f.b[allow] = 2;
	assert_refused(&f, "allow_negative");

	/* An event with empty strings: kind after tag and one u16; leg and
	 * status before the final amount. */
	kobo_event e;
	make_event(&e, 1);
	b_header(&f, 1, 0, 0, 1);
	b_event(&f, &e, NULL);
	check_enum_byte(&f, HEADER + 3, KOBO_EVENT_KIND_COUNT - 1, "kind");
	check_enum_byte(&f, f.n - 10, KOBO_LEG_CREDIT, "leg");
	check_enum_byte(&f, f.n - 9, KOBO_STATUS_REJECTED, "status");
}

/* Every string of every record: its limit accepted, one byte more
 * refused, a NUL byte refused. */
static void string_limits_and_nul_refused(void **state)
{
	(void)state;
	static bytes f;
	kobo_account a;
	make_account(&a, 1);
	static const size_t account_max[] = {KOBO_ID_LEN_MAX, KOBO_CURRENCY_LEN_MAX,
	                                     KOBO_KEY_ID_LEN};
	kobo_transfer t;
	make_transfer(&t, 2);
	static const size_t transfer_max[] = {KOBO_ID_LEN_MAX,         KOBO_ID_LEN_MAX,
	                                      KOBO_ID_LEN_MAX,         KOBO_CURRENCY_LEN_MAX,
	                                      KOBO_REQUEST_ID_LEN_MAX, KOBO_KEY_ID_LEN,
	                                      KOBO_TRACE_ID_LEN,       KOBO_ID_LEN_MAX};
	kobo_event e;
	make_event(&e, 2);
	static const size_t event_max[] = {KOBO_ID_LEN_MAX, KOBO_EVENT_NODE_LEN_MAX,
	                                   KOBO_REQUEST_ID_LEN_MAX, KOBO_TRACE_ID_LEN,
	                                   KOBO_KEY_ID_LEN};
	for (int kind = 0; kind < 3; kind++) {
		const size_t *max = kind == 0 ? account_max : kind == 1 ? transfer_max : event_max;
		int n = kind == 0 ? 3 : kind == 1 ? 8 : 5;
		for (int i = 0; i < n; i++) {
			strings_override cases[] = {
				{i, max[i], false}, {i, max[i] + 1, false}, {i, 3, true}};
			for (int c = 0; c < 3; c++) {
				b_header(&f, 1, kind == 0, kind == 1, kind == 2);
				if (kind == 0)
					b_account_new(&f, &a, &cases[c]);
				else if (kind == 1)
					b_transfer_new(&f, &t, &cases[c]);
				else
					b_event(&f, &e, &cases[c]);
				if (c == 0)
					assert_accepted(&f);
				else
					assert_refused(&f, c == 1 ? "more than" : "NUL byte");
			}
		}
	}
	/* The longest a u16 can say, on an updated account's id. */
	b_header(&f, 1, 1, 0, 0);
	b_le(&f, 2, 1);
	b_le(&f, UINT16_MAX, 2);
	memset(f.b + f.n, 'x', 24);
	f.n += 24;
	assert_refused(&f, "id of 65535 bytes");
}

static void bad_metadata_refused(void **state)
{
	(void)state;
	static bytes f;
	static char meta[KOBO_METADATA_BYTES_MAX + 1];
	memset(meta, ' ', sizeof meta);
	kobo_account a;
	make_account(&a, 1);
	a.metadata = meta;
	a.metadata_len = KOBO_METADATA_BYTES_MAX;
	b_header(&f, 1, 1, 0, 0);
	b_account_new(&f, &a, NULL);
	assert_accepted(&f);
	a.metadata_len = KOBO_METADATA_BYTES_MAX + 1;
	b_header(&f, 1, 1, 0, 0);
	b_account_new(&f, &a, NULL);
	assert_refused(&f, "metadata of 4097 bytes");
	/* Metadata is bytes (store.h): a NUL inside survives. */
	meta[10] = '\0';
	a.metadata_len = 20;
	b_header(&f, 1, 1, 0, 0);
	b_account_new(&f, &a, NULL);
	assert_accepted(&f);

	kobo_transfer t;
	make_transfer(&t, 2);
	t.metadata = meta;
	t.metadata_len = 20;
	b_header(&f, 1, 0, 1, 0);
	b_transfer_new(&f, &t, NULL);
	assert_accepted(&f);
}

/* Records decode would refuse are refused by encode too. */
static void encode_refuses_what_decode_would(void **state)
{
	(void)state;
	size_t len;
	kobo_account a;
	make_account(&a, 1);
	kobo_account_change ac = {&a, true};
	memset(a.currency, 'C', sizeof a.currency); /* no terminator */
	assert_int_equal(hot_codec_encode(1, &ac, 1, NULL, 0, NULL, 0, frame, sizeof frame, &len),
	                 KOBO_EINVAL);
	make_account(&a, 1);
	a.metadata_len = KOBO_METADATA_BYTES_MAX + 1;
	a.metadata = big_metadata; /* only the length is over */
	assert_int_equal(hot_codec_encode(1, &ac, 1, NULL, 0, NULL, 0, frame, sizeof frame, &len),
	                 KOBO_EINVAL);
	a.metadata = NULL;
	a.metadata_len = 2;
	assert_int_equal(hot_codec_encode(1, &ac, 1, NULL, 0, NULL, 0, frame, sizeof frame, &len),
	                 KOBO_EINVAL);
	a.metadata = "{\0}"; /* bytes: a NUL inside is kept */
	a.metadata_len = 3;
	assert_int_equal(hot_codec_encode(1, &ac, 1, NULL, 0, NULL, 0, frame, sizeof frame, &len),
	                 KOBO_OK);
	/* An updated account carries no metadata: none of it is checked. */
	ac.is_new = false;
	assert_int_equal(hot_codec_encode(1, &ac, 1, NULL, 0, NULL, 0, frame, sizeof frame, &len),
	                 KOBO_OK);

	kobo_transfer t;
	kobo_transfer_change tc = {&t, true};
	const int enum_fields = 6;
	for (int field = 0; field < enum_fields; field++) {
		make_transfer(&t, 2);
		assert_int_equal(hot_codec_encode(1, NULL, 0, &tc, 1, NULL, 0, frame, sizeof frame,
		                                  &len),
		                 KOBO_OK);
		switch (field) {
		case 0: t.status = (kobo_transfer_status)(KOBO_STATUS_REJECTED + 1); break;
		case 1: t.void_reason = (kobo_void_reason)(KOBO_VOID_COMPENSATED + 1); break;
		case 2: t.error_code = KOBO_RESULT_CODE_COUNT; break;
		case 3: t.saga = (kobo_saga_state)(KOBO_SAGA_VOIDING + 1); break;
		case 4: t.saga_reason = (kobo_void_reason)(KOBO_VOID_COMPENSATED + 1); break;
		default: t.leg = (kobo_leg)(KOBO_LEG_CREDIT + 1); break;
		}
		int rc = hot_codec_encode(1, NULL, 0, &tc, 1, NULL, 0, frame, sizeof frame, &len);
		if (rc != KOBO_EINVAL)
			fail_msg("enum field %d out of range encoded", field);
	}
	make_transfer(&t, 2);
	memset(t.trace_id, 'e', sizeof t.trace_id);
	assert_int_equal(hot_codec_encode(1, NULL, 0, &tc, 1, NULL, 0, frame, sizeof frame, &len),
	                 KOBO_EINVAL);

	kobo_event e;
	make_event(&e, 2);
	e.kind = KOBO_EVENT_KIND_COUNT;
	assert_int_equal(hot_codec_encode(1, NULL, 0, NULL, 0, &e, 1, frame, sizeof frame, &len),
	                 KOBO_EINVAL);
	make_event(&e, 2);
	memset(e.node, 'n', sizeof e.node);
	assert_int_equal(hot_codec_encode(1, NULL, 0, NULL, 0, &e, 1, frame, sizeof frame, &len),
	                 KOBO_EINVAL);
}

/* One hot_decoded through a big frame, a small one, and the big one
 * again: the arrays are reused and every record is right each time. */
static void decode_reuses_the_arrays(void **state)
{
	(void)state;
	batch *big = full_batch();
	batch *small = calloc(1, sizeof *small);
	assert_non_null(small);
	kobo_account a;
	make_account(&a, 1);
	add_account(small, &a, false);
	kobo_transfer t;
	make_transfer(&t, 4);
	add_transfer(small, &t, false);

	static uint8_t big_frame[FRAME_MAX], small_frame[4096];
	size_t big_len = encode_batch(big, 10, big_frame, sizeof big_frame);
	size_t small_len = encode_batch(small, 11, small_frame, sizeof small_frame);
	hot_decoded d = {0};
	char why[256];
	assert_int_equal(hot_codec_decode(big_frame, big_len, &d, why, sizeof why), KOBO_OK);
	assert_decoded(big, 10, &d);
	kobo_transfer *transfers = d.transfers;
	size_t cap = d.transfers_cap;
	assert_true(cap >= big->transfer_count);

	assert_int_equal(hot_codec_decode(small_frame, small_len, &d, why, sizeof why), KOBO_OK);
	assert_decoded(small, 11, &d);
	assert_ptr_equal(d.transfers, transfers);
	assert_int_equal(d.transfers_cap, cap);

	assert_int_equal(hot_codec_decode(big_frame, big_len, &d, why, sizeof why), KOBO_OK);
	assert_decoded(big, 10, &d);
	assert_ptr_equal(d.transfers, transfers);

	/* A refused frame leaves nothing to read, and the next decode works. */
	assert_int_equal(hot_codec_decode(big_frame, big_len - 1, &d, why, sizeof why),
	                 KOBO_EINVAL);
	assert_int_equal(d.account_count + d.transfer_count + d.event_count, 0);
	assert_int_equal(hot_codec_decode(small_frame, small_len, &d, why, sizeof why), KOBO_OK);
	assert_decoded(small, 11, &d);

	hot_decoded_free(&d);
	hot_decoded_free(&d); /* freed twice: the struct was zeroed */
	free(big);
	free(small);
}

/* Frames growing one record of each kind at a time into one hot_decoded:
 * every capacity boundary is crossed (ASan sees a write past an array). */
static void decode_grows_record_by_record(void **state)
{
	(void)state;
	batch *b = calloc(1, sizeof *b);
	assert_non_null(b);
	hot_decoded d = {0};
	char why[256];
	for (int n = 0; n < BATCH_MAX; n++) {
		kobo_account a;
		make_account(&a, 1 + n % 2);
		add_account(b, &a, n % 3 == 0);
		kobo_transfer t;
		make_transfer(&t, 2 + n);
		add_transfer(b, &t, n % 2 == 0);
		kobo_event e;
		make_event(&e, n);
		add_event(b, &e);
		size_t len = encode_batch(b, (uint64_t)n, frame, sizeof frame);
		assert_int_equal(hot_codec_decode(frame, len, &d, why, sizeof why), KOBO_OK);
		assert_decoded(b, (uint64_t)n, &d);
		assert_true(d.accounts_cap >= d.account_count);
		assert_true(d.transfers_cap >= d.transfer_count);
		assert_true(d.events_cap >= d.event_count);
	}
	hot_decoded_free(&d);
	free(b);
}

static void peek_seq_reads_the_header(void **state)
{
	(void)state;
	batch *b = full_batch();
	size_t len = encode_batch(b, 0xfedcba9876543210u, frame, sizeof frame);
	uint64_t seq = 0;
	assert_int_equal(hot_codec_peek_seq(frame, len, &seq), KOBO_OK);
	assert_int_equal(seq, 0xfedcba9876543210u);
	/* Only the header is read: the records need not be there. */
	seq = 0;
	assert_int_equal(hot_codec_peek_seq(frame, HEADER, &seq), KOBO_OK);
	assert_int_equal(seq, 0xfedcba9876543210u);
	assert_int_equal(hot_codec_peek_seq(frame, HEADER - 1, &seq), KOBO_EINVAL);
	assert_int_equal(hot_codec_peek_seq(frame, 0, &seq), KOBO_EINVAL);
	frame[3] = 'x';
	assert_int_equal(hot_codec_peek_seq(frame, len, &seq), KOBO_EINVAL);
	frame[3] = 'b';
	frame[4] = 2;
	assert_int_equal(hot_codec_peek_seq(frame, len, &seq), KOBO_EINVAL);
	free(b);
}

static int setup_metadata(void **state)
{
	(void)state;
	/* JSON object text of exactly 4096 bytes: {"m":"abc…"}. */
	memcpy(big_metadata, "{\"m\":\"", 6);
	for (size_t i = 6; i < sizeof big_metadata - 2; i++)
		big_metadata[i] = (char)('a' + i % 26);
	memcpy(big_metadata + sizeof big_metadata - 2, "\"}", 2);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(round_trip_every_field_and_extreme),
		cmocka_unit_test(empty_frame_is_the_header),
		cmocka_unit_test(layout_matches_codec_h),
		cmocka_unit_test(cap_too_small_refused),
		cmocka_unit_test(truncated_at_every_length_refused),
		cmocka_unit_test(trailing_byte_refused),
		cmocka_unit_test(bad_header_refused),
		cmocka_unit_test(counts_beyond_the_bytes_refused),
		cmocka_unit_test(bad_tag_refused),
		cmocka_unit_test(bad_enum_and_bool_refused),
		cmocka_unit_test(string_limits_and_nul_refused),
		cmocka_unit_test(bad_metadata_refused),
		cmocka_unit_test(encode_refuses_what_decode_would),
		cmocka_unit_test(decode_reuses_the_arrays),
		cmocka_unit_test(decode_grows_record_by_record),
		cmocka_unit_test(peek_seq_reads_the_header),
	};
	return cmocka_run_group_tests(tests, setup_metadata, NULL);
}
