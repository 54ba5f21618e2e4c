/*
 * journal.h — the checksummed append-only journal: append frames durably,
 * read them back, recover after a crash. One job, no business logic: a
 * frame's payload is opaque bytes (the caller's encoded batch effects).
 *
 * What it is for (issue 12): the durability of the journaled embedded store
 * (src/store/hot, kobod's default with --data). The shard's state lives in
 * memory, each batch's effects are appended here with one fdatasync and then
 * answered, and SQLite is an asynchronous projection that replays the
 * journal past its last projected batch and releases segments once it has
 * them.
 *
 * Files: DIR/journal/NNNNNNNNNNNNNNNN.seg, sixteen decimal digits naming the
 * batch number of the segment's first frame. A segment is created at a fixed
 * size (segment_bytes), written full of zeros and fsynced under a temporary
 * name (….seg.tmp), renamed, and the directory fsynced: appends then never
 * grow the file, so fdatasync has no metadata to write.
 *
 * Frame (little-endian; FRAME = 56 + payload bytes; never spans segments):
 *
 *   offset  size  field
 *   0       4     magic "KbJl"
 *   4       2     version (1)
 *   6       2     flags (0)
 *   8       8     batch number: the previous frame's + 1
 *   16      4     payload length, <= payload_bytes_max
 *   20      4     reserved (0)
 *   24      16    previous frame's checksum (zeros before the first frame)
 *   40      len   payload
 *   40+len  16    XXH3-128 of bytes [0, 40 + len)
 *
 * A segment holds whole frames from offset 0, then zeros to its end.
 *
 * Invariants
 *   1. Batch numbers grow by exactly 1 from frame to frame, across segments;
 *      a segment's name is its first frame's batch number.
 *   2. Each frame's prev field is the checksum of the frame before it. The
 *      oldest kept frame is the anchor (its predecessor may be released).
 *   3. kobo_journal_append returns KOBO_OK only after fdatasync of every
 *      frame it wrote returned 0: an acknowledged frame is durable.
 *   4. Any write, fdatasync or segment-creation error puts the journal in
 *      the FAILED state for good: every later call answers KOBO_EFAILED.
 *      fsync is never retried (after a failed fsync the kernel may have
 *      dropped the dirty pages and a retry would report success for data
 *      that is gone). THE CALLER MUST STOP THE PROCESS (or at least this
 *      shard) and reopen: recovery then decides, from the disk, what is
 *      there. The append that failed answers KOBO_EUNKNOWN: its frames may
 *      or may not be durable.
 *   5. Recovery never silently fixes corruption. Only a torn TAIL is cut:
 *      in the last segment, the bytes after the last valid frame when no
 *      valid frame lies anywhere after them (whatever they are: a partial
 *      frame, or the sectors of one that reached the disk out of order,
 *      its header lost). Segments are zeroed and synced before use and
 *      appends are sequential, so those bytes were never acknowledged (their
 *      fdatasync did not return); they are zeroed: the bytes after the
 *      tail's first 40, synced, then those 40, synced, so that a power cut
 *      during the zeroing leaves a tail the next open still cuts. Anything
 *      else — a bad frame followed by a valid frame, a valid frame with the
 *      wrong batch number or prev checksum, a bad frame in a segment that is
 *      not the last, a gap between segments — fails open with a message
 *      naming the segment and offset (issue 12: "a bad frame followed by a
 *      valid one is corruption").
 *   6. The segment being appended to is never released, so the last batch
 *      number survives any release.
 *   7. Live segments never exceed segments_max: an append that would need
 *      more answers KOBO_EFULL, writes nothing, and the journal stays open
 *      (backpressure: release what the projection has, then retry).
 *
 * States
 *
 *     (dir) ──open: scan, verify, cut torn tail──▶ OPEN ──close──▶ (closed)
 *                    │ corruption / I/O error           │
 *                    ▼                                  │ write / fdatasync /
 *              open fails, message                      ▼ create / unlink error
 *                                                    FAILED ──close──▶ (closed)
 *
 *   transition          function
 *   dir → OPEN          kobo_journal_open()  (journal_recover per segment)
 *   OPEN → OPEN         kobo_journal_append(), kobo_journal_release()
 *   OPEN → FAILED       journal_fail()       (any I/O error while writing)
 *   any → closed        kobo_journal_close()
 *
 * Known limits of the recovery rule (why it is this rule): a bit flip in the
 * LAST frame looks exactly like a torn write and is cut; the previous frames
 * are still verified. An append of several frames torn by power loss so that
 * a later frame reached the disk but an earlier one did not is refused as
 * corruption (an operator decides) rather than guessed at (the journaled
 * store appends one frame per batch, so it never writes such an append). An
 * append whose later sectors reached the disk while an earlier one did not
 * (a disk may persist the sectors of one unsynced write in any order) is a
 * torn tail like any other and is cut: refusing it made kobod need an
 * operator after an ordinary power cut (tests/powerloss, kobod under the
 * sectors policy).
 *
 * Spare segment: a thread of the journal keeps one zeroed, fsynced segment
 * ready under a temporary name (0000000000000000.seg.tmp); a roll-over
 * renames it (then fsyncs the directory) instead of writing 64 MiB of zeros
 * inside an append. If making a spare fails, the thread stops and rolls
 * create their segment themselves (and report that error). An open deletes
 * a leftover spare like any interrupted creation.
 *
 * An append that rolls over syncs and publishes the frames it wrote into the
 * segment it leaves before it creates the next one; if it then fails, those
 * frames are durable (the KOBO_EUNKNOWN it answers covers that).
 *
 * Threads: one thread appends and releases. Readers (kobo_journal_reader_*)
 * may run on other threads at the same time: they see frames up to the last
 * acknowledged batch, open segment files themselves, and a segment released
 * under a reader stays readable through the reader's descriptor. A mutex
 * guards the segment table and the last batch; fdatasync runs outside it.
 *
 * A directory is opened by one journal at a time (flock on DIR/journal).
 */
#ifndef KOBO_JOURNAL_H
#define KOBO_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../core/core.h"

/* ---- Limits and defaults. ---- */
#define KOBO_JOURNAL_HEADER_BYTES 40u
#define KOBO_JOURNAL_CHECKSUM_BYTES 16u
#define KOBO_JOURNAL_FRAME_OVERHEAD (KOBO_JOURNAL_HEADER_BYTES + KOBO_JOURNAL_CHECKSUM_BYTES)
#define KOBO_JOURNAL_SEGMENT_BYTES_DEFAULT (64ull << 20)
#define KOBO_JOURNAL_SEGMENT_BYTES_MIN 4096ull
#define KOBO_JOURNAL_SEGMENT_BYTES_MAX (1ull << 30)
#define KOBO_JOURNAL_PAYLOAD_BYTES_DEFAULT (16u << 20)
#define KOBO_JOURNAL_PAYLOAD_BYTES_MAX (64u << 20)
#define KOBO_JOURNAL_SEGMENTS_DEFAULT 64u   /* 4 GiB of 64 MiB segments */
#define KOBO_JOURNAL_SEGMENTS_MAX 65536u
#define KOBO_JOURNAL_APPEND_FRAMES_MAX 8192u /* frames one append may write */
#define KOBO_JOURNAL_BATCH_MAX 9999999999999999ull /* 16 decimal digits */
#define KOBO_JOURNAL_MESSAGE_BYTES 320

_Static_assert(KOBO_JOURNAL_PAYLOAD_BYTES_MAX + KOBO_JOURNAL_FRAME_OVERHEAD <
               KOBO_JOURNAL_SEGMENT_BYTES_MAX, "a largest frame fits a largest segment");
_Static_assert(KOBO_JOURNAL_PAYLOAD_BYTES_DEFAULT + KOBO_JOURNAL_FRAME_OVERHEAD <
               KOBO_JOURNAL_SEGMENT_BYTES_DEFAULT, "a default frame fits a default segment");

typedef struct kobo_journal kobo_journal;
typedef struct kobo_journal_reader kobo_journal_reader;

/* The I/O a test hook may fail (kobo_journal_config.fault). */
typedef enum kobo_journal_io {
	KOBO_JOURNAL_IO_WRITE,     /* writing frames into a segment */
	KOBO_JOURNAL_IO_FDATASYNC, /* the fdatasync that acknowledges an append */
	KOBO_JOURNAL_IO_CREATE,    /* creating, zeroing and syncing a segment */
} kobo_journal_io;

/* A test hook, called before each I/O of the given kind. For WRITE, *bytes
 * is what is about to be written; the hook may lower it (that many bytes are
 * really written: a torn write). Returns 0 to go on, or an errno value: the
 * I/O then fails with it (after the lowered write, for WRITE). */
typedef int (*kobo_journal_fault_fn)(void *ctx, kobo_journal_io io, size_t *bytes);

typedef struct kobo_journal_config {
	uint64_t segment_bytes;     /* size of new segments; MIN..MAX */
	uint32_t payload_bytes_max; /* 0..PAYLOAD_BYTES_MAX, and a frame of it
	                               must fit in segment_bytes */
	uint32_t segments_max;      /* live segments; 2..SEGMENTS_MAX */
	bool spare_segment;         /* keep one zeroed segment ready (default
	                               true): a thread of the journal makes it,
	                               so the append that rolls over only
	                               renames it; costs one more segment of
	                               disk (segments_max + 1 files) */
	kobo_journal_fault_fn fault; /* NULL in production; with spare_segment
	                               it is called from the spare thread too */
	void *fault_ctx;
} kobo_journal_config;

/* What recovery found (filled by kobo_journal_open, success or not). */
typedef struct kobo_journal_recovery {
	uint64_t first_batch;     /* oldest kept frame's batch; last_batch + 1 if none */
	uint64_t last_batch;      /* newest frame's batch; 0 for a new journal */
	uint32_t segments;        /* segment files kept */
	uint64_t frames;          /* frames verified */
	uint64_t torn_bytes;      /* bytes of a torn last frame zeroed, or 0 */
	uint64_t torn_offset;     /* where (in the last segment) */
	bool corrupt;             /* open failed on corruption (message says where) */
	char message[KOBO_JOURNAL_MESSAGE_BYTES]; /* why open failed; "" on success */
} kobo_journal_recovery;

/* A payload to append: len bytes at bytes (not copied beyond the call). */
typedef struct kobo_journal_payload {
	const void *bytes;
	size_t len;
} kobo_journal_payload;

/* Fills config with the defaults above and no fault hook. */
void kobo_journal_config_default(kobo_journal_config *config);

/* Opens (creating DIR/journal if needed) and recovers the journal in dir.
 *   dir       the data directory; it must exist.
 *   config    copied; NULL means the defaults.
 *   recovery  receives what recovery found, and on failure the reason
 *             (may be NULL).
 *   out       receives the journal, owned by the caller until close.
 * Returns KOBO_OK; KOBO_EINVAL (bad config or arguments); KOBO_ESTORE
 * (corruption: recovery->corrupt, or an I/O error, or the directory is
 * locked by another journal; recovery->message says which, naming the
 * segment file and byte offset); KOBO_ENOMEM. */
int kobo_journal_open(const char *dir, const kobo_journal_config *config,
                      kobo_journal_recovery *recovery, kobo_journal **out);

/* Closes the journal (NULL is fine). Acknowledged frames are already
 * durable; nothing is synced here. Readers must be closed first. */
void kobo_journal_close(kobo_journal *journal);

/* Appends count frames, one per payload, numbered last_batch + 1 … in
 * order, with ONE fdatasync of the segment written (an append that rolls
 * over to a new segment also syncs the segment it leaves), and returns only
 * once they are durable.
 *   payloads    count payloads, each len <= payload_bytes_max.
 *   count       1..KOBO_JOURNAL_APPEND_FRAMES_MAX.
 *   first_batch receives the first frame's batch number (may be NULL).
 * Returns KOBO_OK; KOBO_EINVAL (bad arguments; nothing written);
 * KOBO_EFULL (more than segments_max segments would be live, or batch
 * numbers are exhausted; nothing written, the journal stays usable);
 * KOBO_EUNKNOWN (an I/O error: the frames may or may not be durable, the
 * journal is now FAILED); KOBO_EFAILED (the journal was already FAILED). */
int kobo_journal_append(kobo_journal *journal, const kobo_journal_payload *payloads,
                        size_t count, uint64_t *first_batch);

/* Deletes, oldest first, every segment whose frames all have batch numbers
 * <= upto_batch, except the segment being appended to (invariant 6); the
 * directory is fsynced after each deletion so the deleted set is always
 * the oldest ones. upto_batch <= last batch.
 * Returns KOBO_OK with the number deleted in *released (may be NULL);
 * KOBO_EINVAL; KOBO_EUNKNOWN (unlink or directory fsync failed: FAILED);
 * KOBO_EFAILED. */
int kobo_journal_release(kobo_journal *journal, uint64_t upto_batch, uint32_t *released);

/* The newest acknowledged batch number (0 when none), and the oldest kept
 * one (last + 1 when none), and how many segments are live. Any thread. */
uint64_t kobo_journal_last_batch(kobo_journal *journal);
uint64_t kobo_journal_first_batch(kobo_journal *journal);
uint32_t kobo_journal_segments(kobo_journal *journal);
bool kobo_journal_failed(kobo_journal *journal);
/* Roll-overs served by a ready spare segment (config.spare_segment). */
uint64_t kobo_journal_spares_used(kobo_journal *journal);

/* Opens a reader at from_batch: first_batch <= from_batch <= last + 1.
 * Returns KOBO_OK, KOBO_EINVAL (out of that range, or NULL arguments),
 * KOBO_ESTORE (a segment could not be opened or read, or is corrupt),
 * KOBO_ENOMEM. */
int kobo_journal_reader_open(kobo_journal *journal, uint64_t from_batch,
                             kobo_journal_reader **out);

/* The next frame: its batch number, and its payload, valid until the next
 * call or close (owned by the reader). Each frame is verified again
 * (checksum, batch number, prev checksum) as it is read.
 * Returns KOBO_OK; KOBO_ENOTFOUND when the reader has every acknowledged
 * frame (call again later: new appends show up); KOBO_ESTORE (a read error
 * or a corrupt frame; the message is in kobo_journal_reader_message). */
int kobo_journal_reader_next(kobo_journal_reader *reader, uint64_t *batch,
                             const void **payload, size_t *len);

/* Why the last reader call failed ("" if it did not). */
const char *kobo_journal_reader_message(const kobo_journal_reader *reader);

void kobo_journal_reader_close(kobo_journal_reader *reader);

/* ---- For recovery tests and the fuzzer: the pure segment scan. ----
 *
 * Verifies the frames of one segment image (bytes, size) as recovery does.
 *   first_batch   the batch the segment's first frame must carry.
 *   prev          the checksum the first frame's prev must equal, or NULL
 *                 when the first frame is the anchor (invariant 2).
 *   payload_max   the largest payload length accepted.
 *   on_frame      called for each accepted frame, in order (may be NULL).
 * Fills *scan. Returns KOBO_OK (clean, or a torn tail: scan->torn_end >
 * scan->end) or KOBO_ESTORE (corrupt: scan->message says where). */
typedef struct kobo_journal_scan {
	uint64_t frames;       /* valid frames */
	uint64_t last_batch;   /* last valid frame's batch, first_batch - 1 if none */
	uint8_t last_checksum[KOBO_JOURNAL_CHECKSUM_BYTES]; /* of the last valid frame */
	uint64_t end;          /* offset after the last valid frame */
	uint64_t torn_end;     /* end of a torn frame's bytes (== end when none) */
	char message[KOBO_JOURNAL_MESSAGE_BYTES];
} kobo_journal_scan;

typedef void (*kobo_journal_frame_fn)(void *ctx, uint64_t batch, uint64_t offset,
                                      const uint8_t *frame, size_t frame_bytes);

int kobo__journal_scan(const uint8_t *bytes, uint64_t size, uint64_t first_batch,
                       const uint8_t *prev, uint32_t payload_max,
                       kobo_journal_frame_fn on_frame, void *ctx,
                       kobo_journal_scan *scan);

/* The checksum a frame of payload_len bytes (header + payload at frame)
 * must carry; the fuzzer checks every accepted frame with it. */
void kobo__journal_checksum(const uint8_t *frame, size_t payload_len,
                            uint8_t out[KOBO_JOURNAL_CHECKSUM_BYTES]);

#endif /* KOBO_JOURNAL_H */
