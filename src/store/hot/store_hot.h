/*
 * store_hot.h — how kobo_store_open (store.c) reaches the journaled
 * embedded store.
 *
 * Everyone else opens it with kobo_store_open("journal:DIR", shard, …),
 * optionally "journal:DIR?accounts=N&transfers=N&segment_mb=N" to size its
 * in-memory tables and journal segments (store.c parses the query).
 */
#ifndef KOBO_STORE_HOT_H
#define KOBO_STORE_HOT_H

#include "../store.h"

#define HOT_ACCOUNTS_MAX_DEFAULT 1000000u     /* accounts per shard */
#define HOT_TRANSFERS_MAX_DEFAULT 10000000ull /* transfer ids per shard */
#define HOT_ACCOUNTS_MAX_LIMIT (1u << 27)
#define HOT_TRANSFERS_MAX_LIMIT (1ull << 32)
/* Transfers changed by committed batches that the projection has not
 * written yet (hot_recent), and the bytes of those batches' frames: past
 * either, begin() waits for the projection (up to
 * HOT_BACKPRESSURE_WAIT_MS), then answers KOBO_EOVERLOADED (503). */
#define HOT_RECENT_MAX 524288u
#define HOT_BACKLOG_BYTES_MAX (256u << 20)
#define HOT_BACKPRESSURE_WAIT_MS 2000
/* Every read that needs the projection (history, events, sagas, by
 * request, accounts by prefix, audit) waits for it to hold every batch
 * acknowledged before the read began, at most this long, then fails
 * (KOBO_ESTORE: 503, retry). */
#define HOT_PROJECTION_WAIT_MS 10000
/* An expiry scan (the writer's, every 250 ms) that may list a hold a batch
 * not yet projected left, due by the scan's time, waits at most this long
 * for the projection to hold that batch, then scans what it has. Batches
 * with no hold due are never waited for. */
#define HOT_EXPIRY_WAIT_MS 100
/* Unprojected batches with holds an expiry scan remembers one by one;
 * past it they merge (store_hot.c, mark_holds). */
#define HOT_HOLD_MARKS_MAX 1024
/* One projection transaction holds at most this many frame bytes. */
#define HOT_PROJECTION_TXN_BYTES (32u << 20)

/* Journal segment size: a batch's frame must fit in one segment, and the
 * largest batch (8,190 ops with 4 KiB of metadata each) is about 43 MB. */
#define HOT_SEGMENT_MB_DEFAULT 64u
#define HOT_SEGMENT_MB_MIN 1u
#define HOT_SEGMENT_MB_MAX 1024u

typedef struct hot_config {
	uint32_t accounts_max;
	uint64_t transfers_max;
	uint32_t segment_mb; /* HOT_SEGMENT_MB_MIN..MAX; a batch whose frame
	                        does not fit answers 503 overloaded */
	/* Size the tables to what the shard holds after recovery (plus
	 * headroom), ignoring accounts_max and transfers_max: `kobo audit`,
	 * which replays a stopped kobod's journal and writes nothing else
	 * ("journal:DIR?fit"). */
	bool fit;
} hot_config;

/* Opens shard `shard` of the data directory dir: its SQLite projection
 * DIR/shard-N.db (created and migrated as needed), its journal
 * DIR/shard-N.journal/ (layout.h), replays the journal past the
 * projection, loads the in-memory state and starts the projection thread.
 * read_only: opens the SQLite projection read-only (as "sqlite:DIR"
 * does): what the projection holds, without the journal's tail a
 * read-write open would replay. KOBO_OK,
 * KOBO_EINVAL, KOBO_ENOMEM, KOBO_ECAPACITY (the shard holds more than the
 * config allows: a sentence on stderr), or KOBO_ESTORE (I/O error or a
 * corrupt journal: a sentence on stderr naming the file and offset). */
int store_hot_open(const char *dir, uint32_t shard, const hot_config *config,
                   bool read_only, kobo_store **out);

/* true when shard `shard` of data directory dir has a journal holding at
 * least one segment file (DIR/shard-N.journal/journal/NNNN.seg): frames a
 * plain SQLite open would not see. kobod refuses --journal off then, and
 * `kobo audit` replays them before it reads. */
bool store_hot_journal_present(const char *dir, uint32_t shard);

/* How full the in-memory tables are, for /metrics and the 80 % alert. */
typedef struct hot_usage {
	uint64_t accounts, accounts_max;
	uint64_t transfers, transfers_max;
	uint64_t backlog_batches, backlog_bytes; /* not yet projected */
	uint64_t commit_seq, projected_seq;
	uint32_t journal_segments;
	uint64_t expiry_waits; /* expiry scans that waited for the projection */
} hot_usage;

/* false when store is not a journaled store. Any thread. */
bool store_hot_usage(kobo_store *store, hot_usage *out);

#endif /* KOBO_STORE_HOT_H */
