/*
 * fuzz_hot_codec.c — libFuzzer target for the journal frame codec of the
 * journaled embedded store (src/store/hot/codec.h): the bytes are a frame
 * payload as recovery would hand it over.
 *
 * Must never crash or trip a sanitizer, and:
 *   - decoding into a fresh hot_decoded and into one reused across inputs
 *     (grown by earlier, bigger ones) agree;
 *   - a fresh decode allocates in proportion to the input: each array's
 *     capacity at most twice what the input's length can hold, 16 at least;
 *   - when the bytes are accepted, the decoded records re-encode (change
 *     arrays built here from the records and their is_new) to exactly the
 *     input, with hot_codec_size equal to its length and a cap of exactly
 *     that length (the encoding is canonical: one frame per batch), and
 *     hot_codec_peek_seq reads the same commit sequence;
 *   - when peek_seq refuses the header, decode refuses the frame.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/store/hot/codec.h"

/* The smallest record of each kind (codec.c): the most records len bytes
 * can hold. */
#define HEADER_BYTES 28u
#define ACCOUNT_BYTES_MIN 27u
#define TRANSFER_BYTES_MIN 32u
#define EVENT_BYTES_MIN 34u

static hot_decoded reused;

static void check_cap(size_t cap, size_t len, size_t record_min)
{
	size_t most = len / record_min;
	size_t bound = most * 2 > 16 ? most * 2 : 16;
	if (cap > bound)
		abort(); /* allocated out of proportion to the input */
}

/* Re-encodes d's records and checks the bytes are data[0..size). */
static void check_canonical(const hot_decoded *d, const uint8_t *data, size_t size)
{
	kobo_account_change *accounts = calloc(d->account_count + 1, sizeof *accounts);
	kobo_transfer_change *transfers = calloc(d->transfer_count + 1, sizeof *transfers);
	uint8_t *out = malloc(size);
	if (accounts == NULL || transfers == NULL || out == NULL)
		abort();
	for (size_t i = 0; i < d->account_count; i++) {
		if (d->account_changes[i].account != &d->accounts[i])
			abort();
		accounts[i].account = &d->accounts[i];
		accounts[i].is_new = d->account_changes[i].is_new;
	}
	for (size_t i = 0; i < d->transfer_count; i++) {
		if (d->transfer_changes[i].transfer != &d->transfers[i])
			abort();
		transfers[i].transfer = &d->transfers[i];
		transfers[i].is_new = d->transfer_changes[i].is_new;
	}
	for (size_t i = 0; i < d->event_count; i++) {
		if (d->events[i].seq != 0)
			abort();
	}
	if (hot_codec_size(accounts, d->account_count, transfers, d->transfer_count,
	                   d->events, d->event_count) != size)
		abort();
	size_t len = 0;
	if (hot_codec_encode(d->commit_seq, accounts, d->account_count, transfers,
	                     d->transfer_count, d->events, d->event_count, out, size,
	                     &len) != KOBO_OK)
		abort(); /* decode accepted a record encode refuses */
	if (len != size || memcmp(out, data, size) != 0)
		abort(); /* not canonical: two byte strings for one batch */
	uint64_t seq = 0;
	if (hot_codec_peek_seq(data, size, &seq) != KOBO_OK || seq != d->commit_seq)
		abort();
	free(accounts);
	free(transfers);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	hot_decoded fresh = {0};
	char why[256];
	int rc = hot_codec_decode(data, size, &fresh, why, sizeof why);
	if (rc != KOBO_OK && rc != KOBO_EINVAL)
		abort(); /* ENOMEM: an input of at most 64 KiB needs a few MB */
	if (rc == KOBO_EINVAL && why[0] == '\0')
		abort(); /* a refusal says why */
	check_cap(fresh.accounts_cap, size, ACCOUNT_BYTES_MIN);
	check_cap(fresh.transfers_cap, size, TRANSFER_BYTES_MIN);
	check_cap(fresh.events_cap, size, EVENT_BYTES_MIN);

	int rc_reused = hot_codec_decode(data, size, &reused, NULL, 0);
	if (rc_reused != rc)
		abort();
	uint64_t seq;
	if (hot_codec_peek_seq(data, size, &seq) != KOBO_OK && rc == KOBO_OK)
		abort();
	if (rc == KOBO_OK) {
		if (size < HEADER_BYTES)
			abort();
		check_canonical(&fresh, data, size);
		check_canonical(&reused, data, size);
	} else if (fresh.account_count + fresh.transfer_count + fresh.event_count != 0 ||
	           reused.account_count + reused.transfer_count + reused.event_count != 0) {
		abort(); /* a refused frame shows no records */
	}
	hot_decoded_free(&fresh);
	return 0;
}
