/*
 * codec.h — one batch's effects as the bytes of a journal frame.
 *
 * The journaled embedded store (store_hot.c) appends one frame per
 * committed batch to its shard's journal (src/store/journal) before it
 * answers, and the SQLite projection is written from those frames. A frame
 * holds the batch's EFFECTS, not its inputs: the accounts and transfers as
 * the ledger left them and the batch's events, so replay needs no business
 * logic (it writes rows).
 *
 *   new account      the whole record with its metadata
 *   updated account  id + posted, pending_out, pending_in (store.h
 *                    guarantee 4: nothing else of an account changes)
 *   new transfer     the whole record with its metadata
 *   updated transfer id + the fields of kobo_transfer_state (ledger.h)
 *   event            every field of kobo_event except seq
 *
 * Layout (little-endian, no padding, version 1):
 *
 *   u32 magic "KbHb"  u16 version  u16 flags (0)
 *   u64 commit_seq    the shard's commit sequence after this batch
 *   u32 account_count u32 transfer_count u32 event_count
 *   then the accounts, the transfers, the events, in the order given
 *   (transfers' order fixes their seq in the projection: store.h 5).
 *   Each record starts with a u8 tag: 1 new, 2 update (an event is
 *   always 1). Strings are a u16 length then the bytes (no NUL), checked
 *   against the record's limits; metadata a u32 length
 *   (<= KOBO_METADATA_BYTES_MAX) then the bytes (no NUL either: it is JSON
 *   text); enums a u8, checked against their range; bools a u8 0 or 1;
 *   integers u32 / i64 (two's complement). Field order: codec.c, put_*.
 *
 * Decoding never trusts the bytes: every length, count, enum and bool is
 * checked, a payload with bytes left over or cut short is refused, and
 * no input makes it read out of bounds or allocate more than a bound
 * proportional to len (fuzz_hot_codec). The journal's XXH3-128 already
 * caught torn and flipped frames; this catches a frame of another version
 * or a bug.
 */
#ifndef KOBO_HOT_CODEC_H
#define KOBO_HOT_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "../../ledger/events.h"
#include "../../ledger/ledger.h"

#define HOT_CODEC_VERSION 1u

/* The exact number of bytes hot_codec_encode writes for these effects. */
size_t hot_codec_size(const kobo_account_change *accounts, size_t account_count,
                      const kobo_transfer_change *transfers, size_t transfer_count,
                      const kobo_event *events, size_t event_count);

/* Writes the effects into out[0..cap) and their length into *len.
 * KOBO_OK, or KOBO_EINVAL when cap is too small, a count does not fit a
 * u32, or a record is one decode would refuse (a string without its NUL
 * within its array, an enum out of range, metadata over the limit, or NULL
 * with a length): nothing meaningful in out then. Metadata is bytes (the
 * store contract keeps a NUL inside it), so it may hold NUL bytes.
 * So every frame encode writes, decode reads back (the same records). */
int hot_codec_encode(uint64_t commit_seq,
                     const kobo_account_change *accounts, size_t account_count,
                     const kobo_transfer_change *transfers, size_t transfer_count,
                     const kobo_event *events, size_t event_count,
                     uint8_t *out, size_t cap, size_t *len);

/* A decoded frame. Arrays are owned by the struct (grown as needed, kept
 * between decodes to be reused, freed by hot_decoded_free); metadata
 * pointers point INTO the payload given to hot_codec_decode, which must
 * outlive the use of the records.
 *
 * Updated records carry only what their tag holds: an updated account has
 * id, posted, pending_out, pending_in (the rest zero); an updated transfer
 * has id and the kobo_transfer_state fields (the rest zero). That is
 * exactly what store.h's write() reads of an update. */
typedef struct hot_decoded {
	uint64_t commit_seq;
	kobo_account *accounts;
	kobo_account_change *account_changes; /* [i].account == &accounts[i] */
	size_t account_count;
	kobo_transfer *transfers;
	kobo_transfer_change *transfer_changes;
	size_t transfer_count;
	kobo_event *events; /* seq 0 */
	size_t event_count;
	/* capacities of the arrays above (internal) */
	size_t accounts_cap, transfers_cap, events_cap;
} hot_decoded;

/* Decodes payload[0..len) into *out (which starts zeroed, or holds a
 * previous decode). KOBO_OK; KOBO_EINVAL with a sentence in
 * why[0..why_len) when the bytes are not a valid frame of this version
 * (why may be NULL); KOBO_ENOMEM. */
int hot_codec_decode(const void *payload, size_t len, hot_decoded *out,
                     char *why, size_t why_len);

/* The commit sequence of a frame without decoding the rest. KOBO_OK or
 * KOBO_EINVAL (too short, wrong magic or version). */
int hot_codec_peek_seq(const void *payload, size_t len, uint64_t *commit_seq);

void hot_decoded_free(hot_decoded *decoded);

#endif /* KOBO_HOT_CODEC_H */
