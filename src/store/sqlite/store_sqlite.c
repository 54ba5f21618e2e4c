/*
 * store_sqlite.c — the embedded store: one SQLite file per shard.
 *
 * Implements store.h over SQLite in WAL mode. The write side (this file) is
 * used by the shard writer thread only; readers get connections of their
 * own (sqlite_read.c, which also decodes rows); a background thread
 * checkpoints the WAL (this file); sqlite_audit.c feeds a snapshot of the
 * file to the audit's rules (auditor.c).
 *
 * NOTES ON THE DESIGN
 *
 * Schema (version 6, see `migrations` below; PRAGMA user_version says which
 * migrations a file has had):
 *
 *   accounts(id TEXT PRIMARY KEY, currency, allow_negative, posted,
 *            pending_out, pending_in, metadata TEXT, created_at_ms,
 *            created_by TEXT                                     (v4))
 *            WITHOUT ROWID: every lookup is by id, so the id b-tree is the
 *            table and there is no second index to keep in step.
 *   transfers(seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, from_id,
 *            to_id, currency, amount, posted_amount, pending,
 *            timeout_seconds, expires_at_ms, status TEXT, void_reason TEXT,
 *            error_code TEXT, metadata TEXT, request_id TEXT,
 *            created_at_ms, updated_at_ms,
 *            leg TEXT, clearing TEXT, saga TEXT, saga_amount,
 *            saga_reason TEXT)                                  (v2 columns)
 *            created_by TEXT                                    (v4)
 *            trace_id TEXT: the trace id of the request that created
 *            the transfer, '' for none and for rows older than v6;
 *            fixed at creation like request_id               (v6)
 *            seq is the rowid: rows are never deleted, so a new row's seq is
 *            one more than the largest, and seq orders a shard's transfers
 *            by insertion (the history cursor). Statuses, legs, saga
 *            states and reasons are stored as text (their wire names) so
 *            that the file reads well in the sqlite3 CLI; a void or saga
 *            reason of NONE is NULL, error_code is NULL when CREATED. The
 *            v2 columns default to an ordinary transfer ('local', '',
 *            'none', 0, NULL), which is what every v1 row was.
 *            An update rewrites only what may change after creation:
 *            the fields of kobo_transfer_state (ledger.h, the one list of
 *            a transfer's mutable fields) — status, posted_amount,
 *            void_reason, error_code, updated_at_ms, saga, saga_amount,
 *            saga_reason — bound from kobo_transfer_state_of().
 *   transfers_from_seq (from_id, seq), transfers_to_seq (to_id, seq),
 *   transfers_clearing_seq (clearing, seq) WHERE clearing <> '':
 *            history, one ordered range scan per column that can name the
 *            account (a clearing account has very many rows, all in the
 *            third index; local transfers stay out of it).
 *   transfers_expiry (expires_at_ms) WHERE status = 'pending' AND
 *            expires_at_ms > 0: only open holds that can expire, so the
 *            expiry scan touches nothing else (PROCESSING records, whose
 *            saga is under way, are not in it).
 *   transfers_sagas (id) WHERE saga <> 'none': the sagas in flight, for
 *            the saga runner's recovery scan; empty when nothing is in
 *            flight.
 *   meta(id INTEGER PRIMARY KEY CHECK (id = 1), commit_seq)      (v3)
 *            one row: the shard's commit sequence, the consistency token
 *            of store.h. commit() sets it to one more in the batch's own
 *            transaction, so it is exactly as durable as the batch; the
 *            writer keeps the committed value in memory (it is the only
 *            writer of the batches) and rereads it at open.
 *   api_keys(id TEXT PRIMARY KEY, name, scopes, salt BLOB, hash BLOB,
 *            created_at_ms, revoked_at_ms DEFAULT 0) WITHOUT ROWID  (v4)
 *            the API keys (apikey.h); only shard 0's file holds any.
 *            created_by on accounts and transfers is the id of the key
 *            whose request made the row, '' for none (and for every row
 *            older than v4). Keys are written on connections of their own
 *            (see "API keys" below), so `kobo key` may write them while
 *            kobod runs on the file; they never touch meta.commit_seq.
 *
 * Migrations run one step per transaction at open (migrate()): a new file
 * goes 0 -> 1 -> ... -> 6, a v1 file 1 -> 2 -> ... -> 6 (ALTER TABLE ADD
 * COLUMN with constant defaults rewrites no row; the two new indexes are
 * built once; v3 adds the meta row at commit_seq 0; v4 adds api_keys and
 * created_by ''; v5 events; v6 transfers.trace_id ''). A file newer than
 * this build is refused, read-only opens never migrate, and an open of a
 * current file only reads user_version (no write lock: a second writable
 * open beside a running kobod neither waits for its batches nor holds them
 * up).
 *
 * Durability: journal_mode=WAL with synchronous=FULL. In WAL mode a commit
 * appends the batch's pages to the -wal file and fsyncs it once; FULL makes
 * that fsync happen at every commit, which is what lets the writer answer
 * as soon as commit() returns (NORMAL would only sync at checkpoints and can
 * lose acknowledged batches on power loss). WAL also lets readers run on
 * their own snapshot while the writer writes.
 *
 * Checkpoints: a checkpoint copies WAL pages back into the database file and
 * fsyncs it. SQLite runs them inside the commit that crosses
 * wal_autocheckpoint pages, which doubled the fsyncs per batch at large
 * batch sizes (MEASUREMENTS.md). So the writer connection has
 * wal_autocheckpoint=0 and a WAL hook that only counts commits, and a
 * checkpointer thread with its own connection checkpoints when there were
 * commits and the WAL passed STORE_SQLITE_CHECKPOINT_WAL_BYTES or the last
 * checkpoint is STORE_SQLITE_CHECKPOINT_AGE_MS old, looking every
 * STORE_SQLITE_CHECKPOINT_PERIOD_MS and at once when the WAL hook sees the
 * WAL pass that size. It first runs a PASSIVE checkpoint
 * alongside the writer (it neither waits for nor blocks it), then finishes
 * between two batches while holding `gate`, which the writer holds for the
 * length of each batch: without that, back-to-back batches never leave the
 * WAL fully copied, SQLite never restarts it, and the WAL grows without
 * bound (measured: ~75 MB/s with batches of 1, which also made every
 * commit's fsync pay for growing the file). If readers pin old frames and
 * the WAL passes STORE_SQLITE_WAL_RESTART_BYTES, the finishing checkpoint is
 * a RESTART, past STORE_SQLITE_WAL_TRUNCATE_BYTES a TRUNCATE, so the WAL
 * stays bounded. close() stops the thread before closing the writer.
 *
 * The write-side transaction state machine:
 *
 *                  begin() fails (SQLITE_BUSY, I/O): KOBO_ESTORE
 *                      ┌───┐
 *                      │   ▼
 *          open() ───▶ IDLE ─────── begin() ──────▶ IN_BATCH ◀──┐
 *                      ▲  ▲                          │  │  │     │ load_*(),
 *                      │  └──── commit() ok ─────────┘  │  └─────┘ write()
 *                      └─────── rollback() ─────────────┘
 *
 *          IN_BATCH ── load_*(), write() or commit() fails in SQLite ──▶ FAILED
 *          (a failed COMMIT answers KOBO_EUNKNOWN: the fsync may have
 *          reached the disk; every other failure KOBO_ESTORE)
 *
 *          FAILED is sticky: begin() answers KOBO_EFAILED and healthy()
 *          false until the store is closed and opened again.
 *
 *   transition              performed by        what happens
 *   IDLE → IN_BATCH         store_begin         arena reset; gate taken;
 *                                               BEGIN IMMEDIATE
 *   IDLE → IDLE (error)     store_begin         BEGIN failed; nothing held
 *   IN_BATCH → IN_BATCH     store_load_*,       SELECT by primary key /
 *                           store_write         INSERT, UPDATE
 *   IN_BATCH → IDLE         store_commit        meta.commit_seq + 1;
 *                                               COMMIT (one WAL fsync)
 *   IN_BATCH → IDLE         store_rollback      ROLLBACK
 *   IN_BATCH → FAILED       store_load_*,       ROLLBACK, failed flag set
 *                           store_write,        (store_fail)
 *                           store_commit
 *   (every IN_BATCH exit)   end_batch           ROLLBACK if still open;
 *                                               gate released
 *   FAILED → FAILED         store_rollback      nothing
 *
 * Invariants:
 *   1. Only the writer thread touches `writer` and its statements; healthy()
 *      reads only the atomic `failed` flag.
 *   2. state == IN_BATCH exactly when the writer connection holds an open
 *      transaction that this code began.
 *   3. Once `failed` is set it is never cleared: the only way out is to
 *      close the store and open it again, which rereads the file.
 *   4. Memory handed to the load callbacks (metadata) lives in the arena,
 *      which is reset only by begin().
 *   5. The writer holds ckpt.gate exactly while state == IN_BATCH; every
 *      way out of IN_BATCH goes through end_batch().
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../obs/obs.h"
#include "sqlite_internal.h"

/* ---- Limits. ---- */

/* How often the checkpointer looks at the WAL, and when it checkpoints:
 * once the WAL holds STORE_SQLITE_CHECKPOINT_WAL_BYTES, or when there were
 * commits and the last checkpoint is STORE_SQLITE_CHECKPOINT_AGE_MS old.
 * Each completed checkpoint makes the writer restart the WAL, and with
 * synchronous=FULL a restart costs the next commit one more fsync (the new
 * WAL header), so checkpointing every tick would put that fsync back on
 * the commit path several times a second. */
#define STORE_SQLITE_CHECKPOINT_PERIOD_MS 200
#define STORE_SQLITE_CHECKPOINT_WAL_BYTES (4 * 1024 * 1024)
#define STORE_SQLITE_CHECKPOINT_AGE_MS 1000
/* WAL sizes past which the checkpointer finishes with a RESTART (it waits,
 * up to its busy timeout, for readers still using old frames, so that the
 * writer can start the WAL over) or a TRUNCATE (also cuts the file to zero
 * bytes). Normally the WAL restarts well before: see checkpoint_once. The
 * writer's journal_size_limit cuts a restarted WAL back to the first size. */
#define STORE_SQLITE_WAL_RESTART_BYTES (16 * 1024 * 1024)
/* Writer page cache (KiB; a cap, not an allocation). SQLite's default of
 * 2 MiB made the writer re-read account and index pages through pread for
 * every batch; 256 MiB holds the hot set of millions of accounts. Measured
 * +7 % single-transfer throughput over 100,000 accounts (docs/benchmarks.md). */
#define STORE_SQLITE_WRITER_CACHE_KIB 262144
#define STORE_SQLITE_WAL_TRUNCATE_BYTES (64 * 1024 * 1024)
/* Arena chunk for loaded metadata. A chunk holds many rows; a row larger
 * than a chunk gets a chunk of its own size. */
#define STORE_SQLITE_ARENA_CHUNK_BYTES (256 * 1024)

_Static_assert(STORE_SQLITE_CHECKPOINT_WAL_BYTES < STORE_SQLITE_WAL_RESTART_BYTES,
               "PASSIVE checkpoints start well before the WAL needs a RESTART");
_Static_assert(STORE_SQLITE_CHECKPOINT_AGE_MS >= STORE_SQLITE_CHECKPOINT_PERIOD_MS,
               "the age limit is checked once per period");
_Static_assert(STORE_SQLITE_WAL_TRUNCATE_BYTES > STORE_SQLITE_WAL_RESTART_BYTES,
               "TRUNCATE is the escalation past RESTART");
_Static_assert(STORE_SQLITE_ARENA_CHUNK_BYTES >= 16 * KOBO_METADATA_BYTES_MAX,
               "a chunk holds many rows of the largest metadata");
_Static_assert(STORE_SQLITE_ARENA_KEEP_BYTES >= STORE_SQLITE_ARENA_CHUNK_BYTES,
               "a steady workload keeps at least one chunk");
_Static_assert(STORE_SQLITE_CHECKPOINT_BUSY_TIMEOUT_MS < STORE_SQLITE_BUSY_TIMEOUT_MS,
               "the writer must outwait a checkpoint that holds the write lock");

/* ---- Migrations. Append only: a released step never changes. ---- */

static const char *const migrations[] = {
	/* 1: the initial schema. */
	"CREATE TABLE accounts ("
	"  id             TEXT    PRIMARY KEY NOT NULL,"
	"  currency       TEXT    NOT NULL,"
	"  allow_negative INTEGER NOT NULL CHECK (allow_negative IN (0, 1)),"
	"  posted         INTEGER NOT NULL,"
	"  pending_out    INTEGER NOT NULL,"
	"  pending_in     INTEGER NOT NULL,"
	"  metadata       TEXT    NOT NULL DEFAULT '{}',"
	"  created_at_ms  INTEGER NOT NULL"
	") WITHOUT ROWID;"
	"CREATE TABLE transfers ("
	"  seq             INTEGER PRIMARY KEY,"
	"  id              TEXT    NOT NULL UNIQUE,"
	"  from_id         TEXT    NOT NULL,"
	"  to_id           TEXT    NOT NULL,"
	"  currency        TEXT    NOT NULL,"
	"  amount          INTEGER NOT NULL,"
	"  posted_amount   INTEGER NOT NULL,"
	"  pending         INTEGER NOT NULL CHECK (pending IN (0, 1)),"
	"  timeout_seconds INTEGER NOT NULL,"
	"  expires_at_ms   INTEGER NOT NULL,"
	"  status          TEXT    NOT NULL CHECK (status IN"
	"                    ('pending', 'posted', 'voided', 'rejected', 'processing')),"
	"  void_reason     TEXT    NULL CHECK (void_reason IN"
	"                    ('voided', 'expired', 'compensated')),"
	"  error_code      TEXT    NULL,"
	"  metadata        TEXT    NOT NULL DEFAULT '{}',"
	"  request_id      TEXT    NOT NULL DEFAULT '',"
	"  created_at_ms   INTEGER NOT NULL,"
	"  updated_at_ms   INTEGER NOT NULL"
	");"
	"CREATE INDEX transfers_from_seq ON transfers (from_id, seq);"
	"CREATE INDEX transfers_to_seq ON transfers (to_id, seq);"
	"CREATE INDEX transfers_expiry ON transfers (expires_at_ms)"
	"  WHERE status = 'pending' AND expires_at_ms > 0;",
	/* 2: cross-shard legs and sagas (ledger.h, kobo_leg). */
	"ALTER TABLE transfers ADD COLUMN leg TEXT NOT NULL DEFAULT 'local'"
	"  CHECK (leg IN ('local', 'debit', 'credit'));"
	"ALTER TABLE transfers ADD COLUMN clearing TEXT NOT NULL DEFAULT '';"
	"ALTER TABLE transfers ADD COLUMN saga TEXT NOT NULL DEFAULT 'none'"
	"  CHECK (saga IN ('none', 'reserved', 'posting', 'voiding'));"
	"ALTER TABLE transfers ADD COLUMN saga_amount INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE transfers ADD COLUMN saga_reason TEXT NULL"
	"  CHECK (saga_reason IN ('voided', 'expired', 'compensated'));"
	"CREATE INDEX transfers_clearing_seq ON transfers (clearing, seq)"
	"  WHERE clearing <> '';"
	"CREATE INDEX transfers_sagas ON transfers (id) WHERE saga <> 'none';",
	/* 3: the commit sequence, the consistency token (store.h). */
	"CREATE TABLE meta ("
	"  id         INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),"
	"  commit_seq INTEGER NOT NULL CHECK (commit_seq >= 0)"
	");"
	"INSERT INTO meta (id, commit_seq) VALUES (1, 0);",
	/* 4: API keys (apikey.h; only shard 0's rows are used), and the key
	 * id that created each account and transfer ('' for the rows before). */
	"CREATE TABLE api_keys ("
	"  id            TEXT    PRIMARY KEY NOT NULL,"
	"  name          TEXT    NOT NULL,"
	"  scopes        INTEGER NOT NULL CHECK (scopes > 0),"
	"  salt          BLOB    NOT NULL,"
	"  hash          BLOB    NOT NULL,"
	"  created_at_ms INTEGER NOT NULL,"
	"  revoked_at_ms INTEGER NOT NULL DEFAULT 0"
	") WITHOUT ROWID;"
	"ALTER TABLE accounts ADD COLUMN created_by TEXT NOT NULL DEFAULT '';"
	"ALTER TABLE transfers ADD COLUMN created_by TEXT NOT NULL DEFAULT '';",
	/* 5: the journey of a payment (events.h): one row per state change of
	 * a transfer, written in the batch's transaction; seq is the
	 * shard-local order. Transfers by request id (read_by_request). */
	"CREATE TABLE events ("
	"  seq         INTEGER PRIMARY KEY,"
	"  transfer_id TEXT    NOT NULL,"
	"  event       TEXT    NOT NULL,"
	"  at_ms       INTEGER NOT NULL,"
	"  shard       INTEGER NOT NULL,"
	"  node        TEXT    NOT NULL,"
	"  request_id  TEXT    NOT NULL,"
	"  trace_id    TEXT    NOT NULL,"
	"  key_id      TEXT    NOT NULL,"
	"  leg         TEXT    NOT NULL,"
	"  status      TEXT    NOT NULL,"
	"  amount      INTEGER NOT NULL"
	");"
	"CREATE INDEX events_transfer ON events (transfer_id, seq);"
	"CREATE INDEX transfers_request ON transfers (request_id, seq);",
	/* 6: the trace id of the request that created each transfer ('' for
	 * the rows before), so a saga's later steps rejoin that trace. */
	"ALTER TABLE transfers ADD COLUMN trace_id TEXT NOT NULL DEFAULT '';",
};

_Static_assert(sizeof migrations / sizeof migrations[0] == STORE_SQLITE_SCHEMA_VERSION,
               "one migration step per schema version");

/* ---- Statements of the write side (column lists: sqlite_internal.h). ---- */

enum {
	SQL_BEGIN,
	SQL_COMMIT,
	SQL_ROLLBACK,
	SQL_SELECT_ACCOUNT,
	SQL_SELECT_TRANSFER,
	SQL_INSERT_ACCOUNT,
	SQL_UPDATE_ACCOUNT,
	SQL_INSERT_TRANSFER,
	SQL_UPDATE_TRANSFER,
	SQL_EXPIRED_HOLDS,
	SQL_SET_COMMIT_SEQ,
	SQL_GET_COMMIT_SEQ,
	SQL_INSERT_EVENT,
	SQL_WRITER_COUNT
};

static const char *const writer_sql[SQL_WRITER_COUNT] = {
	[SQL_BEGIN] = "BEGIN IMMEDIATE",
	[SQL_COMMIT] = "COMMIT",
	[SQL_ROLLBACK] = "ROLLBACK",
	[SQL_SELECT_ACCOUNT] = "SELECT " ACCOUNT_COLUMNS " FROM accounts WHERE id = ?1",
	[SQL_SELECT_TRANSFER] = "SELECT " TRANSFER_COLUMNS " FROM transfers WHERE id = ?1",
	[SQL_INSERT_ACCOUNT] =
		"INSERT INTO accounts (" ACCOUNT_COLUMNS ") "
		"VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
	[SQL_UPDATE_ACCOUNT] =
		"UPDATE accounts SET posted = ?2, pending_out = ?3, pending_in = ?4 "
		"WHERE id = ?1",
	[SQL_INSERT_TRANSFER] =
		"INSERT INTO transfers (id, from_id, to_id, currency, amount, "
		"posted_amount, pending, timeout_seconds, expires_at_ms, status, "
		"void_reason, error_code, metadata, request_id, created_at_ms, "
		"updated_at_ms, leg, clearing, saga, saga_amount, saga_reason, "
		"created_by, trace_id) "
		"VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, "
		"?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
	/* kobo_transfer_state, no more (see the notes above). */
	[SQL_UPDATE_TRANSFER] =
		"UPDATE transfers SET status = ?2, posted_amount = ?3, "
		"void_reason = ?4, updated_at_ms = ?5, error_code = ?6, saga = ?7, "
		"saga_amount = ?8, saga_reason = ?9 WHERE id = ?1",
	/* The WHERE repeats the partial index's condition so SQLite uses it;
	 * the index is ordered by (expires_at_ms, seq). */
	[SQL_EXPIRED_HOLDS] =
		"SELECT id FROM transfers "
		"WHERE status = 'pending' AND expires_at_ms > 0 AND expires_at_ms <= ?1 "
		"ORDER BY expires_at_ms, seq LIMIT ?2",
	[SQL_SET_COMMIT_SEQ] = "UPDATE meta SET commit_seq = ?1 WHERE id = 1",
	[SQL_GET_COMMIT_SEQ] = "SELECT commit_seq FROM meta WHERE id = 1",
	[SQL_INSERT_EVENT] =
		"INSERT INTO events (transfer_id, event, at_ms, shard, node, request_id,"
		" trace_id, key_id, leg, status, amount)"
		" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
};

/* ---- Handles. ---- */

typedef enum store_state {
	STORE_IDLE = 0,
	STORE_IN_BATCH,
	STORE_FAILED,
} store_state;

/* A chunk of the metadata arena; data follows the header. */
typedef struct arena_chunk {
	struct arena_chunk *next;
	size_t size;
	size_t used;
	char data[];
} arena_chunk;

typedef struct arena {
	arena_chunk *first;
	arena_chunk *current;
} arena;

typedef struct checkpointer {
	sqlite3 *db;
	pthread_t thread;
	bool running;
	pthread_mutex_t mutex;        /* guards stop and kicked */
	pthread_cond_t wake;
	bool stop;                    /* under mutex */
	bool kicked;                  /* under mutex: the WAL just passed kick_frames */
	int kick_frames;              /* STORE_SQLITE_CHECKPOINT_WAL_BYTES in frames */
	_Atomic uint64_t commits;     /* counted by the writer's WAL hook */
	_Atomic int wal_frames;       /* frames in the WAL after the last commit */
	uint64_t commits_checkpointed;
	int64_t checkpointed_at_ms;   /* monotonic */
	int page_size;
	/* Held by the writer for the length of each batch transaction, and by
	 * the checkpointer while it finishes a checkpoint (see checkpoint_once):
	 * SQLite's own busy-wait lock never lets the checkpointer in between two
	 * back-to-back batches, and the WAL would grow without bound. */
	pthread_mutex_t gate;
	bool gate_ready;
} checkpointer;

typedef struct sqlite_store {
	kobo_store base; /* first: kobo_store * converts to sqlite_store * */
	char *path;
	bool read_only;
	sqlite3 *writer;
	sqlite3_stmt *stmt[SQL_WRITER_COUNT];
	store_state state;
	uint64_t commit_seq; /* meta.commit_seq as last committed */
	/* 0, or the value the next commit stores instead of commit_seq + 1
	 * (store_sqlite_set_next_commit_seq: the journaled store's projection
	 * records the journal's commit sequence). */
	uint64_t next_commit_seq;
	atomic_bool failed;
	arena loaded;
	checkpointer ckpt;
} sqlite_store;

static sqlite_store *to_store(kobo_store *store)
{
	return (sqlite_store *)store;
}

/* ---- Metadata arena. ---- */

/* Starts the arena over for a new batch. Chunks up to
 * STORE_SQLITE_ARENA_KEEP_BYTES are kept (a steady workload stops
 * allocating); the rest, grown by one large batch, is given back. */
static void arena_reset(arena *a)
{
	size_t kept = 0;
	arena_chunk **link = &a->first;
	while (*link != NULL) {
		arena_chunk *chunk = *link;
		if (kept + chunk->size <= STORE_SQLITE_ARENA_KEEP_BYTES) {
			kept += chunk->size;
			link = &chunk->next;
		} else {
			*link = chunk->next;
			free(chunk);
		}
	}
	a->current = a->first;
	if (a->current != NULL)
		a->current->used = 0;
}

size_t store_sqlite_arena_bytes(const kobo_store *store)
{
	const sqlite_store *s = (const sqlite_store *)store;
	size_t bytes = 0;
	for (const arena_chunk *chunk = s->loaded.first; chunk; chunk = chunk->next)
		bytes += chunk->size;
	return bytes;
}

/* Copies len bytes into the arena; NULL when out of memory. */
static const char *arena_copy(arena *a, const void *bytes, size_t len)
{
	arena_chunk *chunk = a->current;

	while (chunk != NULL && chunk->size - chunk->used < len) {
		chunk = chunk->next;
		if (chunk != NULL)
			chunk->used = 0;
	}
	if (chunk == NULL) {
		size_t size = len > STORE_SQLITE_ARENA_CHUNK_BYTES ?
		              len : STORE_SQLITE_ARENA_CHUNK_BYTES;
		chunk = malloc(sizeof *chunk + size);
		if (chunk == NULL)
			return NULL;
		chunk->size = size;
		chunk->used = 0;
		/* Insert after the current chunk so that later chunks (kept from
		 * earlier batches) stay reachable. */
		if (a->current == NULL) {
			chunk->next = a->first;
			a->first = chunk;
		} else {
			chunk->next = a->current->next;
			a->current->next = chunk;
		}
	}
	a->current = chunk;
	char *out = chunk->data + chunk->used;
	if (len > 0)
		memcpy(out, bytes, len);
	chunk->used += len;
	return out;
}

static void arena_free(arena *a)
{
	arena_chunk *chunk = a->first;
	while (chunk != NULL) {
		arena_chunk *next = chunk->next;
		free(chunk);
		chunk = next;
	}
	a->first = NULL;
	a->current = NULL;
}

/* ---- The write side. ---- */

/* Runs a statement that returns no rows and resets it. */
static int step_done(sqlite3_stmt *stmt)
{
	int rc = sqlite3_step(stmt);
	sqlite3_reset(stmt);
	sqlite3_clear_bindings(stmt);
	return rc == SQLITE_DONE ? KOBO_OK : KOBO_ESTORE;
}

/* Abandons the open transaction, if SQLite has not already rolled it back
 * (it does after some I/O errors). */
static void rollback_transaction(sqlite_store *s)
{
	if (!sqlite3_get_autocommit(s->writer))
		(void)step_done(s->stmt[SQL_ROLLBACK]);
}

/* Leaves IN_BATCH for state: rolls back whatever is still open and lets
 * the checkpointer in. */
static void end_batch(sqlite_store *s, store_state state)
{
	assert(s->state == STORE_IN_BATCH);
	rollback_transaction(s);
	s->state = state;
	pthread_mutex_unlock(&s->ckpt.gate);
}

/* IN_BATCH → FAILED: memory and disk may disagree from here on. */
static int store_fail(sqlite_store *s, const char *event)
{
	store_sqlite_log_error(s->writer, event, s->path);
	end_batch(s, STORE_FAILED);
	atomic_store(&s->failed, true);
	kobo_log(KOBO_LOG_ERROR, "store_failed_sticky",
	         "\"message\":\"the shard store refuses writes until reopened\"");
	return KOBO_ESTORE;
}

static int store_begin(kobo_store *store)
{
	sqlite_store *s = to_store(store);

	if (s->read_only)
		return KOBO_EINVAL;
	if (atomic_load(&s->failed))
		return KOBO_EFAILED;
	assert(s->state == STORE_IDLE);
	arena_reset(&s->loaded);
	pthread_mutex_lock(&s->ckpt.gate);
	if (step_done(s->stmt[SQL_BEGIN]) != KOBO_OK) {
		/* Nothing was written: the store stays usable (a busy lock held
		 * by another process is the usual cause). */
		store_sqlite_log_error(s->writer, "store_begin_failed", s->path);
		rollback_transaction(s);
		pthread_mutex_unlock(&s->ckpt.gate);
		return KOBO_ESTORE;
	}
	s->state = STORE_IN_BATCH;
	return KOBO_OK;
}

/* A load stops at the first non-zero return of the callback and hands it
 * back; the batch stays open (the caller rolls back). */
static int store_load_transfers(kobo_store *store, const char *const *ids,
                                size_t count, kobo_store_transfer_fn each,
                                void *ctx)
{
	sqlite_store *s = to_store(store);
	sqlite3_stmt *stmt = s->stmt[SQL_SELECT_TRANSFER];

	assert(s->state == STORE_IN_BATCH);
	for (size_t i = 0; i < count; i++) {
		kobo_transfer transfer;
		int64_t seq;
		sqlite3_bind_text(stmt, 1, ids[i], -1, SQLITE_STATIC);
		int rc = sqlite3_step(stmt);
		if (rc == SQLITE_DONE) {
			sqlite3_reset(stmt);
			continue;
		}
		if (rc != SQLITE_ROW || store_sqlite_transfer_from_row(stmt, &transfer, &seq) != KOBO_OK) {
			sqlite3_reset(stmt);
			return store_fail(s, "store_load_transfer_failed");
		}
		transfer.metadata = arena_copy(&s->loaded, transfer.metadata,
		                               transfer.metadata_len);
		sqlite3_reset(stmt);
		if (transfer.metadata == NULL)
			return KOBO_ESTORE; /* no memory for the copy; nothing written */
		rc = each(ctx, &transfer, seq);
		if (rc != 0)
			return rc;
	}
	return KOBO_OK;
}

static int store_load_accounts(kobo_store *store, const char *const *ids,
                               size_t count, kobo_store_account_fn each, void *ctx)
{
	sqlite_store *s = to_store(store);
	sqlite3_stmt *stmt = s->stmt[SQL_SELECT_ACCOUNT];

	assert(s->state == STORE_IN_BATCH);
	for (size_t i = 0; i < count; i++) {
		kobo_account account;
		sqlite3_bind_text(stmt, 1, ids[i], -1, SQLITE_STATIC);
		int rc = sqlite3_step(stmt);
		if (rc == SQLITE_DONE) {
			sqlite3_reset(stmt);
			continue;
		}
		if (rc != SQLITE_ROW || store_sqlite_account_from_row(stmt, &account) != KOBO_OK) {
			sqlite3_reset(stmt);
			return store_fail(s, "store_load_account_failed");
		}
		account.metadata = arena_copy(&s->loaded, account.metadata,
		                              account.metadata_len);
		sqlite3_reset(stmt);
		if (account.metadata == NULL)
			return KOBO_ESTORE; /* no memory for the copy; nothing written */
		rc = each(ctx, &account);
		if (rc != 0)
			return rc;
	}
	return KOBO_OK;
}

static void bind_metadata(sqlite3_stmt *stmt, int index, const char *metadata,
                          uint32_t len)
{
	/* The ledger promises "{}" at least; an empty object keeps the column
	 * NOT NULL and valid JSON if a caller ever hands over nothing. */
	if (metadata == NULL || len == 0)
		sqlite3_bind_text(stmt, index, "{}", 2, SQLITE_STATIC);
	else
		sqlite3_bind_text(stmt, index, metadata, (int)len, SQLITE_STATIC);
}

static int write_account(sqlite_store *s, const kobo_account_change *change)
{
	const kobo_account *a = change->account;
	sqlite3_stmt *stmt;

	if (change->is_new) {
		stmt = s->stmt[SQL_INSERT_ACCOUNT];
		sqlite3_bind_text(stmt, 1, a->id, -1, SQLITE_STATIC);
		sqlite3_bind_text(stmt, 2, a->currency, -1, SQLITE_STATIC);
		sqlite3_bind_int(stmt, 3, a->allow_negative ? 1 : 0);
		sqlite3_bind_int64(stmt, 4, a->posted);
		sqlite3_bind_int64(stmt, 5, a->pending_out);
		sqlite3_bind_int64(stmt, 6, a->pending_in);
		bind_metadata(stmt, 7, a->metadata, a->metadata_len);
		sqlite3_bind_int64(stmt, 8, a->created_at_ms);
		sqlite3_bind_text(stmt, 9, a->created_by, -1, SQLITE_STATIC);
		return step_done(stmt);
	}
	stmt = s->stmt[SQL_UPDATE_ACCOUNT];
	sqlite3_bind_text(stmt, 1, a->id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 2, a->posted);
	sqlite3_bind_int64(stmt, 3, a->pending_out);
	sqlite3_bind_int64(stmt, 4, a->pending_in);
	if (step_done(stmt) != KOBO_OK)
		return KOBO_ESTORE;
	/* An update that matches no row means memory believed in a row the
	 * file does not have. */
	return sqlite3_changes(s->writer) == 1 ? KOBO_OK : KOBO_ESTORE;
}

/* Binds a nullable word (a void reason, an error code): NULL stays NULL. */
static void bind_word(sqlite3_stmt *stmt, int index, const char *word)
{
	if (word != NULL)
		sqlite3_bind_text(stmt, index, word, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(stmt, index);
}

static int write_transfer(sqlite_store *s, const kobo_transfer_change *change)
{
	const kobo_transfer *t = change->transfer;
	const char *void_reason = kobo_void_reason_name(t->void_reason);
	const char *saga_reason = kobo_void_reason_name(t->saga_reason);
	/* Rejections, compensations and refused cross-shard posts keep why. */
	const char *error_code = t->error_code == KOBO_RESULT_CREATED ? NULL :
	                         kobo_result_code_name(t->error_code);
	sqlite3_stmt *stmt;

	if (change->is_new) {
		stmt = s->stmt[SQL_INSERT_TRANSFER];
		sqlite3_bind_text(stmt, 1, t->id, -1, SQLITE_STATIC);
		sqlite3_bind_text(stmt, 2, t->from, -1, SQLITE_STATIC);
		sqlite3_bind_text(stmt, 3, t->to, -1, SQLITE_STATIC);
		sqlite3_bind_text(stmt, 4, t->currency, -1, SQLITE_STATIC);
		sqlite3_bind_int64(stmt, 5, t->amount);
		sqlite3_bind_int64(stmt, 6, t->posted_amount);
		sqlite3_bind_int(stmt, 7, t->pending ? 1 : 0);
		sqlite3_bind_int64(stmt, 8, (int64_t)t->timeout_seconds);
		sqlite3_bind_int64(stmt, 9, t->expires_at_ms);
		sqlite3_bind_text(stmt, 10, store_sqlite_status_text(t->status), -1,
		                  SQLITE_STATIC);
		bind_word(stmt, 11, void_reason);
		bind_word(stmt, 12, error_code);
		bind_metadata(stmt, 13, t->metadata, t->metadata_len);
		sqlite3_bind_text(stmt, 14, t->request_id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(stmt, 15, t->created_at_ms);
		sqlite3_bind_int64(stmt, 16, t->updated_at_ms);
		sqlite3_bind_text(stmt, 17, kobo_leg_name(t->leg), -1, SQLITE_STATIC);
		sqlite3_bind_text(stmt, 18, t->clearing, -1, SQLITE_STATIC);
		sqlite3_bind_text(stmt, 19, kobo_saga_state_name(t->saga), -1,
		                  SQLITE_STATIC);
		sqlite3_bind_int64(stmt, 20, t->saga_amount);
		bind_word(stmt, 21, saga_reason);
		sqlite3_bind_text(stmt, 22, t->created_by, -1, SQLITE_STATIC);
		sqlite3_bind_text(stmt, 23, t->trace_id, -1, SQLITE_STATIC);
		return step_done(stmt);
	}
	/* An update binds kobo_transfer_state and nothing else: the one list
	 * of a transfer's mutable fields (ledger.h). */
	kobo_transfer_state state = kobo_transfer_state_of(t);
	stmt = s->stmt[SQL_UPDATE_TRANSFER];
	sqlite3_bind_text(stmt, 1, t->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(stmt, 2, store_sqlite_status_text(state.status), -1,
	                  SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 3, state.posted_amount);
	bind_word(stmt, 4, kobo_void_reason_name(state.void_reason));
	sqlite3_bind_int64(stmt, 5, state.updated_at_ms);
	bind_word(stmt, 6, state.error_code == KOBO_RESULT_CREATED ? NULL :
	                   kobo_result_code_name(state.error_code));
	sqlite3_bind_text(stmt, 7, kobo_saga_state_name(state.saga), -1,
	                  SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 8, state.saga_amount);
	bind_word(stmt, 9, kobo_void_reason_name(state.saga_reason));
	if (step_done(stmt) != KOBO_OK)
		return KOBO_ESTORE;
	return sqlite3_changes(s->writer) == 1 ? KOBO_OK : KOBO_ESTORE;
}

static int store_write(kobo_store *store, const kobo_account_change *accounts,
                       size_t account_count,
                       const kobo_transfer_change *transfers,
                       size_t transfer_count)
{
	sqlite_store *s = to_store(store);

	assert(s->state == STORE_IN_BATCH);
	for (size_t i = 0; i < account_count; i++) {
		if (write_account(s, &accounts[i]) != KOBO_OK)
			return store_fail(s, "store_write_account_failed");
	}
	/* In array order: the insert order fixes each new transfer's seq. */
	for (size_t i = 0; i < transfer_count; i++) {
		if (write_transfer(s, &transfers[i]) != KOBO_OK)
			return store_fail(s, "store_write_transfer_failed");
	}
	return KOBO_OK;
}

static int store_write_events(kobo_store *store, const kobo_event *events,
                              size_t count)
{
	sqlite_store *s = to_store(store);
	sqlite3_stmt *stmt = s->stmt[SQL_INSERT_EVENT];

	assert(s->state == STORE_IN_BATCH);
	/* In array order: the insert order fixes each event's seq. */
	for (size_t i = 0; i < count; i++) {
		const kobo_event *e = &events[i];
		sqlite3_bind_text(stmt, 1, e->transfer_id, -1, SQLITE_STATIC);
		sqlite3_bind_text(stmt, 2, kobo_event_kind_name(e->kind), -1, SQLITE_STATIC);
		sqlite3_bind_int64(stmt, 3, e->at_ms);
		sqlite3_bind_int64(stmt, 4, e->shard);
		sqlite3_bind_text(stmt, 5, e->node, -1, SQLITE_STATIC);
		sqlite3_bind_text(stmt, 6, e->request_id, -1, SQLITE_STATIC);
		sqlite3_bind_text(stmt, 7, e->trace_id, -1, SQLITE_STATIC);
		sqlite3_bind_text(stmt, 8, e->key_id, -1, SQLITE_STATIC);
		sqlite3_bind_text(stmt, 9, kobo_leg_name(e->leg), -1, SQLITE_STATIC);
		sqlite3_bind_text(stmt, 10, kobo_transfer_status_name(e->status), -1,
		                  SQLITE_STATIC);
		sqlite3_bind_int64(stmt, 11, e->amount);
		if (step_done(stmt) != KOBO_OK)
			return store_fail(s, "store_write_event_failed");
	}
	return KOBO_OK;
}

static int store_commit(kobo_store *store, uint64_t *token)
{
	sqlite_store *s = to_store(store);
	sqlite3_stmt *stmt = s->stmt[SQL_SET_COMMIT_SEQ];
	uint64_t seq = s->next_commit_seq ? s->next_commit_seq : s->commit_seq + 1;

	assert(s->state == STORE_IN_BATCH);
	kobo_assert(seq <= INT64_MAX);
	/* The token moves in the batch's own transaction. */
	sqlite3_bind_int64(stmt, 1, (int64_t)seq);
	if (step_done(stmt) != KOBO_OK || sqlite3_changes(s->writer) != 1)
		return store_fail(s, "store_commit_seq_failed");
	if (step_done(s->stmt[SQL_COMMIT]) != KOBO_OK) {
		/* The WAL fsync may or may not have reached the disk. */
		store_fail(s, "store_commit_failed");
		return KOBO_EUNKNOWN;
	}
	end_batch(s, STORE_IDLE); /* committed: nothing left to roll back */
	s->commit_seq = seq;
	s->next_commit_seq = 0;
	*token = seq;
	return KOBO_OK;
}

/* Reads meta.commit_seq into s->commit_seq (at open). */
static int read_commit_seq(sqlite_store *s)
{
	sqlite3_stmt *stmt = s->stmt[SQL_GET_COMMIT_SEQ];
	int rc = sqlite3_step(stmt);
	int64_t seq = rc == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : -1;
	sqlite3_reset(stmt);
	if (rc != SQLITE_ROW || seq < 0) {
		store_sqlite_log_error(s->writer, "store_commit_seq_unreadable", s->path);
		return KOBO_ESTORE;
	}
	s->commit_seq = (uint64_t)seq;
	return KOBO_OK;
}

/* One writer per shard: the rows need no guarding against other nodes,
 * so there is nothing to be optimistic about (store.h). */
static int store_set_concurrency(kobo_store *store, kobo_store_concurrency mode)
{
	(void)store;
	return mode == KOBO_STORE_PESSIMISTIC ? KOBO_OK : KOBO_EINVAL;
}

/* One process serves this store: its clock is the caller's (store.h). */
static int store_now(kobo_store *store, int64_t local_now_ms, int64_t *now_ms)
{
	(void)store;
	*now_ms = local_now_ms;
	return KOBO_OK;
}

static void store_rollback(kobo_store *store)
{
	sqlite_store *s = to_store(store);

	if (s->state != STORE_IN_BATCH)
		return; /* never begun, already ended, or FAILED (rolled back) */
	end_batch(s, STORE_IDLE);
}

static int store_expired_holds(kobo_store *store, int64_t now_ms,
                               char (*ids)[KOBO_ID_LEN_MAX + 1], size_t max,
                               size_t *count)
{
	sqlite_store *s = to_store(store);
	sqlite3_stmt *stmt = s->stmt[SQL_EXPIRED_HOLDS];
	int rc;

	*count = 0;
	if (atomic_load(&s->failed))
		return KOBO_EFAILED;
	assert(s->state != STORE_IN_BATCH);
	if (max == 0)
		return KOBO_OK;
	sqlite3_bind_int64(stmt, 1, now_ms);
	sqlite3_bind_int64(stmt, 2, max > INT64_MAX ? INT64_MAX : (int64_t)max);
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		assert(*count < max);
		if (store_sqlite_copy_text(stmt, 0, ids[*count], sizeof ids[*count]) != KOBO_OK) {
			rc = SQLITE_CORRUPT;
			break;
		}
		(*count)++;
	}
	sqlite3_reset(stmt);
	if (rc != SQLITE_DONE) {
		/* A failed read changes nothing on disk: report it, stay healthy. */
		store_sqlite_log_error(s->writer, "store_expired_holds_failed", s->path);
		*count = 0;
		return KOBO_ESTORE;
	}
	return KOBO_OK;
}

/* ---- For the journaled store's projection (store_sqlite.h). ---- */

uint64_t store_sqlite_commit_seq(kobo_store *store)
{
	return to_store(store)->commit_seq;
}

void store_sqlite_set_next_commit_seq(kobo_store *store, uint64_t seq)
{
	sqlite_store *s = to_store(store);

	kobo_assert(seq > s->commit_seq && seq <= INT64_MAX);
	s->next_commit_seq = seq;
}

int store_sqlite_counts(kobo_store *store, uint64_t *accounts, uint64_t *transfers)
{
	sqlite_store *s = to_store(store);
	static const char *const sql[2] = {
		"SELECT count(*) FROM accounts", "SELECT count(*) FROM transfers",
	};
	uint64_t *out[2] = {accounts, transfers};
	for (int i = 0; i < 2; i++) {
		sqlite3_stmt *stmt = NULL;
		if (sqlite3_prepare_v2(s->writer, sql[i], -1, &stmt, NULL) != SQLITE_OK ||
		    sqlite3_step(stmt) != SQLITE_ROW) {
			sqlite3_finalize(stmt);
			store_sqlite_log_error(s->writer, "store_count_failed", s->path);
			return KOBO_ESTORE;
		}
		*out[i] = (uint64_t)sqlite3_column_int64(stmt, 0);
		sqlite3_finalize(stmt);
	}
	return KOBO_OK;
}

int store_sqlite_each_transfer_id(kobo_store *store,
                                  int (*each)(void *ctx, const char *id),
                                  void *ctx)
{
	sqlite_store *s = to_store(store);
	sqlite3_stmt *stmt = NULL;
	int rc;

	assert(s->state != STORE_IN_BATCH);
	if (sqlite3_prepare_v2(s->writer, "SELECT id FROM transfers", -1, &stmt,
	                       NULL) != SQLITE_OK) {
		store_sqlite_log_error(s->writer, "store_transfer_ids_failed", s->path);
		return KOBO_ESTORE;
	}
	int status = KOBO_OK;
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		const char *id = (const char *)sqlite3_column_text(stmt, 0);
		if (id == NULL) {
			rc = SQLITE_CORRUPT;
			break;
		}
		status = each(ctx, id);
		if (status != KOBO_OK)
			break;
	}
	if (status == KOBO_OK && rc != SQLITE_DONE) {
		store_sqlite_log_error(s->writer, "store_transfer_ids_failed", s->path);
		status = KOBO_ESTORE;
	}
	sqlite3_finalize(stmt);
	return status;
}

static bool store_healthy(kobo_store *store)
{
	return !atomic_load(&to_store(store)->failed);
}

/* ---- Checkpoints. ---- */

/* Called by SQLite on the writer thread after each commit (wal_hook). It
 * only counts, and wakes the checkpointer once when the WAL passes
 * kick_frames, so that a fast writer does not outrun the periodic tick. */
static int wal_hook(void *ctx, sqlite3 *db, const char *schema, int frames)
{
	(void)db;
	(void)schema;
	checkpointer *c = ctx;
	int previous = atomic_exchange_explicit(&c->wal_frames, frames,
	                                        memory_order_relaxed);
	atomic_fetch_add_explicit(&c->commits, 1, memory_order_relaxed);
	if (frames >= c->kick_frames && previous < c->kick_frames) {
		pthread_mutex_lock(&c->mutex);
		c->kicked = true;
		pthread_cond_signal(&c->wake);
		pthread_mutex_unlock(&c->mutex);
	}
	return SQLITE_OK;
}

static int checkpoint(sqlite_store *s, int mode, int *wal_frames,
                      int *checkpointed_frames)
{
	int rc = sqlite3_wal_checkpoint_v2(s->ckpt.db, NULL, mode, wal_frames,
	                                   checkpointed_frames);
	/* SQLITE_BUSY: a reader still uses frames that would be overwritten;
	 * the next tick tries again. */
	if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
		store_sqlite_log_error(s->ckpt.db, "store_checkpoint_failed", s->path);
		return KOBO_ESTORE;
	}
	return KOBO_OK;
}

/* Two phases. First a PASSIVE checkpoint alongside the writer copies the
 * bulk of the WAL into the database file. Under a steady stream of batches
 * it never catches up with the last frame, and SQLite restarts the WAL from
 * its beginning only once every frame is copied. So when the WAL has grown
 * past STORE_SQLITE_CHECKPOINT_WAL_BYTES, the checkpointer takes the gate
 * between two batches and copies the few frames committed meanwhile: a
 * short pause of the writer (those frames and one fsync of the database
 * file), never inside a commit. If readers keep the WAL from being
 * restarted, the WAL passes STORE_SQLITE_WAL_RESTART_BYTES and the second
 * phase becomes RESTART (or TRUNCATE), which waits up to its busy timeout
 * for those readers. */
static void checkpoint_once(sqlite_store *s)
{
	checkpointer *c = &s->ckpt;
	int wal_frames = 0;
	int checkpointed_frames = 0;

	if (checkpoint(s, SQLITE_CHECKPOINT_PASSIVE, &wal_frames,
	               &checkpointed_frames) != KOBO_OK)
		return;
	int64_t wal_bytes = (int64_t)wal_frames * (c->page_size + 24);
	int mode;
	if (wal_bytes > STORE_SQLITE_WAL_TRUNCATE_BYTES)
		mode = SQLITE_CHECKPOINT_TRUNCATE;
	else if (wal_bytes > STORE_SQLITE_WAL_RESTART_BYTES)
		mode = SQLITE_CHECKPOINT_RESTART;
	else if (wal_bytes >= STORE_SQLITE_CHECKPOINT_WAL_BYTES &&
	         checkpointed_frames < wal_frames)
		mode = SQLITE_CHECKPOINT_PASSIVE;
	else
		return; /* all copied, or too small to pause the writer for */
	pthread_mutex_lock(&c->gate);
	(void)checkpoint(s, mode, NULL, NULL);
	pthread_mutex_unlock(&c->gate);
}

static void *checkpointer_main(void *arg)
{
	sqlite_store *s = arg;
	checkpointer *c = &s->ckpt;

	pthread_mutex_lock(&c->mutex);
	while (!c->stop) {
		struct timespec deadline;
		clock_gettime(CLOCK_MONOTONIC, &deadline);
		deadline.tv_nsec += (long)STORE_SQLITE_CHECKPOINT_PERIOD_MS * 1000000L;
		deadline.tv_sec += deadline.tv_nsec / 1000000000L;
		deadline.tv_nsec %= 1000000000L;
		while (!c->stop && !c->kicked &&
		       pthread_cond_timedwait(&c->wake, &c->mutex, &deadline) != ETIMEDOUT)
			;
		if (c->stop)
			break;
		c->kicked = false;
		uint64_t commits = atomic_load_explicit(&c->commits, memory_order_relaxed);
		if (commits == c->commits_checkpointed)
			continue; /* the WAL has not grown */
		int64_t wal_bytes = (int64_t)atomic_load_explicit(&c->wal_frames,
		                    memory_order_relaxed) * (c->page_size + 24);
		int64_t now_ms = kobo_monotonic_us() / 1000;
		if (wal_bytes < STORE_SQLITE_CHECKPOINT_WAL_BYTES &&
		    now_ms - c->checkpointed_at_ms < STORE_SQLITE_CHECKPOINT_AGE_MS)
			continue;
		pthread_mutex_unlock(&c->mutex);
		checkpoint_once(s);
		c->commits_checkpointed = commits;
		c->checkpointed_at_ms = now_ms;
		pthread_mutex_lock(&c->mutex);
	}
	pthread_mutex_unlock(&c->mutex);
	return NULL;
}

static int checkpointer_start(sqlite_store *s)
{
	checkpointer *c = &s->ckpt;
	pthread_condattr_t attr;

	if (store_sqlite_connect(s->path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
	                         STORE_SQLITE_CHECKPOINT_BUSY_TIMEOUT_MS, &c->db) != KOBO_OK)
		return KOBO_ESTORE;
	if (store_sqlite_exec(c->db, "PRAGMA synchronous = FULL", s->path) != KOBO_OK ||
	    store_sqlite_pragma_int(c->db, "PRAGMA page_size", &c->page_size) != KOBO_OK)
		return KOBO_ESTORE;
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&c->wake, &attr);
	pthread_condattr_destroy(&attr);
	pthread_mutex_init(&c->mutex, NULL);
	c->stop = false;
	c->kicked = false;
	c->kick_frames = STORE_SQLITE_CHECKPOINT_WAL_BYTES / (c->page_size + 24);
	c->checkpointed_at_ms = kobo_monotonic_us() / 1000;
	if (pthread_create(&c->thread, NULL, checkpointer_main, s) != 0) {
		pthread_cond_destroy(&c->wake);
		pthread_mutex_destroy(&c->mutex);
		return KOBO_ESTORE;
	}
	c->running = true;
	return KOBO_OK;
}

static void checkpointer_stop(sqlite_store *s)
{
	checkpointer *c = &s->ckpt;

	if (c->running) {
		pthread_mutex_lock(&c->mutex);
		c->stop = true;
		pthread_cond_signal(&c->wake);
		pthread_mutex_unlock(&c->mutex);
		pthread_join(c->thread, NULL);
		pthread_cond_destroy(&c->wake);
		pthread_mutex_destroy(&c->mutex);
		c->running = false;
	}
	sqlite3_close(c->db);
	c->db = NULL;
}

/* ---- API keys (store.h: key_insert, key_revoke). ----
 *
 * Each call runs on a connection of its own, opened for it and closed
 * after: `kobo key` writes keys while kobod may be running on the same
 * file, and kobod's writer connection belongs to its shard writer thread
 * (invariant 1). That connection waits up to
 * STORE_SQLITE_KEY_BUSY_TIMEOUT_MS for the write lock, never checkpoints
 * (wal_autocheckpoint=0: the checkpointer of the kobod that runs on the
 * file does that; the last connection to close checkpoints as always), and
 * commits with synchronous=FULL like a batch. BEGIN IMMEDIATE takes the
 * write lock before counting the live keys, so two writers cannot both
 * take the last slot. */

static int key_connect(sqlite_store *s, sqlite3 **db)
{
	if (store_sqlite_connect(s->path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
	                         STORE_SQLITE_KEY_BUSY_TIMEOUT_MS, db) != KOBO_OK)
		return KOBO_ESTORE;
	if (store_sqlite_exec(*db, "PRAGMA wal_autocheckpoint = 0", s->path) != KOBO_OK ||
	    store_sqlite_exec(*db, "PRAGMA synchronous = FULL", s->path) != KOBO_OK ||
	    store_sqlite_exec(*db, "BEGIN IMMEDIATE", s->path) != KOBO_OK) {
		sqlite3_close(*db);
		*db = NULL;
		return KOBO_ESTORE;
	}
	return KOBO_OK;
}

/* Commits (rc KOBO_OK) or rolls back the key transaction and closes db. */
static int key_finish(sqlite_store *s, sqlite3 *db, int rc)
{
	if (rc == KOBO_OK && store_sqlite_exec(db, "COMMIT", s->path) != KOBO_OK)
		rc = KOBO_ESTORE;
	if (!sqlite3_get_autocommit(db))
		(void)sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_close(db);
	return rc;
}

static int store_key_insert(kobo_store *store, const kobo_api_key *key)
{
	sqlite_store *s = to_store(store);
	sqlite3 *db = NULL;
	sqlite3_stmt *stmt = NULL;
	int rc;

	if (s->read_only)
		return KOBO_EINVAL;
	if (key_connect(s, &db) != KOBO_OK)
		return KOBO_ESTORE;
	rc = KOBO_ESTORE;
	if (sqlite3_prepare_v2(db, "SELECT count(*) FROM api_keys WHERE revoked_at_ms = 0",
	                       -1, &stmt, NULL) != SQLITE_OK ||
	    sqlite3_step(stmt) != SQLITE_ROW) {
		store_sqlite_log_error(db, "store_key_insert_failed", s->path);
		goto done;
	}
	if (sqlite3_column_int64(stmt, 0) >= KOBO_KEYS_MAX) {
		rc = KOBO_EFULL;
		goto done;
	}
	sqlite3_finalize(stmt);
	stmt = NULL;
	if (sqlite3_prepare_v2(db, "INSERT INTO api_keys (" KEY_COLUMNS ") "
	                       "VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)", -1, &stmt,
	                       NULL) != SQLITE_OK) {
		store_sqlite_log_error(db, "store_key_insert_failed", s->path);
		goto done;
	}
	sqlite3_bind_text(stmt, 1, key->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(stmt, 2, key->name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 3, key->scopes);
	sqlite3_bind_blob(stmt, 4, key->salt, sizeof key->salt, SQLITE_STATIC);
	sqlite3_bind_blob(stmt, 5, key->hash, sizeof key->hash, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 6, key->created_at_ms);
	int step = sqlite3_step(stmt);
	if (step == SQLITE_DONE) {
		rc = KOBO_OK;
	} else if (sqlite3_extended_errcode(db) == SQLITE_CONSTRAINT_PRIMARYKEY) {
		rc = KOBO_ECONFLICT; /* the id is taken */
	} else {
		store_sqlite_log_error(db, "store_key_insert_failed", s->path);
	}
done:
	sqlite3_finalize(stmt);
	return key_finish(s, db, rc);
}

static int store_key_revoke(kobo_store *store, const char *id, int64_t at_ms)
{
	sqlite_store *s = to_store(store);
	sqlite3 *db = NULL;
	sqlite3_stmt *stmt = NULL;
	int rc = KOBO_ESTORE;

	if (s->read_only || at_ms <= 0)
		return KOBO_EINVAL;
	if (key_connect(s, &db) != KOBO_OK)
		return KOBO_ESTORE;
	/* A revoked key keeps its first revocation time. */
	if (sqlite3_prepare_v2(db, "UPDATE api_keys SET revoked_at_ms = CASE WHEN "
	                       "revoked_at_ms = 0 THEN ?2 ELSE revoked_at_ms END "
	                       "WHERE id = ?1", -1, &stmt, NULL) == SQLITE_OK) {
		sqlite3_bind_text(stmt, 1, id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(stmt, 2, at_ms);
		if (sqlite3_step(stmt) == SQLITE_DONE)
			rc = sqlite3_changes(db) == 1 ? KOBO_OK : KOBO_ENOTFOUND;
	}
	if (rc == KOBO_ESTORE)
		store_sqlite_log_error(db, "store_key_revoke_failed", s->path);
	sqlite3_finalize(stmt);
	/* ENOTFOUND changed nothing: key_finish rolls back. */
	int finished = key_finish(s, db, rc);
	return rc == KOBO_ENOTFOUND ? rc : finished;
}

/* ---- Open, audit, close. ---- */

static int store_audit(kobo_store *store, kobo_store_report_fn report, void *ctx,
                       kobo_audit_totals *totals)
{
	return store_sqlite_audit(to_store(store)->path, report, ctx, totals);
}

static void store_close(kobo_store *store)
{
	sqlite_store *s = to_store(store);

	if (s == NULL)
		return;
	if (s->state == STORE_IN_BATCH)
		end_batch(s, STORE_IDLE);
	checkpointer_stop(s);
	store_sqlite_finalize_all(s->stmt, SQL_WRITER_COUNT);
	/* The last connection to close checkpoints the WAL and removes it. */
	sqlite3_close(s->writer);
	if (s->ckpt.gate_ready)
		pthread_mutex_destroy(&s->ckpt.gate);
	arena_free(&s->loaded);
	free(s->path);
	free(s);
}

const char *store_sqlite_path(const kobo_store *store)
{
	return ((const sqlite_store *)store)->path;
}

static const kobo_store_ops sqlite_ops = {
	.begin = store_begin,
	.load_transfers = store_load_transfers,
	.load_accounts = store_load_accounts,
	.write = store_write,
	.write_events = store_write_events,
	.commit = store_commit,
	.rollback = store_rollback,
	.now = store_now,
	.set_concurrency = store_set_concurrency,
	.expired_holds = store_expired_holds,
	.healthy = store_healthy,
	.reader_open = store_sqlite_reader_open,
	.reader_close = store_sqlite_reader_close,
	.read_account = store_sqlite_read_account,
	.read_transfer = store_sqlite_read_transfer,
	.read_history = store_sqlite_read_history,
	.read_sagas = store_sqlite_read_sagas,
	.read_events = store_sqlite_read_events,
	.read_by_request = store_sqlite_read_by_request,
	.read_accounts_prefix = store_sqlite_read_accounts_prefix,
	.read_position = store_sqlite_read_position,
	.claim_saga = store_sqlite_claim_saga,
	.release_saga = store_sqlite_release_saga,
	.key_insert = store_key_insert,
	.key_revoke = store_key_revoke,
	.read_keys = store_sqlite_read_keys,
	.audit = store_audit,
	.close = store_close,
};

/* Brings the file up to STORE_SQLITE_SCHEMA_VERSION, one step per
 * transaction. The version is reread under the write lock, so two
 * processes opening the same new file do not both run a step. */
static int migrate(sqlite3 *db, const char *path)
{
	int current = 0;

	/* A current file is only read: no write lock, so a second writable
	 * open of a live file (`kobo key` next to a running kobod) never waits
	 * on, or holds up, the running writer. */
	if (store_sqlite_pragma_int(db, "PRAGMA user_version", &current) == KOBO_OK &&
	    current == STORE_SQLITE_SCHEMA_VERSION)
		return KOBO_OK;
	for (;;) {
		int version = 0;
		char set_version[64];

		if (store_sqlite_exec(db, "BEGIN IMMEDIATE", path) != KOBO_OK)
			return KOBO_ESTORE;
		if (store_sqlite_pragma_int(db, "PRAGMA user_version", &version) != KOBO_OK)
			goto fail;
		if (version > STORE_SQLITE_SCHEMA_VERSION) {
			(void)store_sqlite_check_version(db, path); /* logs why */
			goto fail;
		}
		if (version == STORE_SQLITE_SCHEMA_VERSION)
			return store_sqlite_exec(db, "COMMIT", path);
		snprintf(set_version, sizeof set_version, "PRAGMA user_version = %d",
		         version + 1);
		if (store_sqlite_exec(db, migrations[version], path) != KOBO_OK ||
		    store_sqlite_exec(db, set_version, path) != KOBO_OK ||
		    store_sqlite_exec(db, "COMMIT", path) != KOBO_OK)
			goto fail;
		kobo_log(KOBO_LOG_INFO, "store_migrated", "\"schema_version\":%d",
		         version + 1);
	}
fail:
	if (!sqlite3_get_autocommit(db))
		(void)sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	return KOBO_ESTORE;
}

/* Sets the writer's pragmas. journal_mode=WAL persists in the file, so
 * readers and read-only stores find it there. */
static int configure_writer(sqlite_store *s)
{
	sqlite3_stmt *stmt = NULL;
	bool wal = false;
	char size_limit[64];
	char cache_size[64];

	if (sqlite3_prepare_v2(s->writer, "PRAGMA journal_mode = WAL", -1, &stmt,
	                       NULL) == SQLITE_OK &&
	    sqlite3_step(stmt) == SQLITE_ROW) {
		const char *mode = (const char *)sqlite3_column_text(stmt, 0);
		wal = mode != NULL && strcmp(mode, "wal") == 0;
	}
	sqlite3_finalize(stmt);
	if (!wal) {
		store_sqlite_log_error(s->writer, "store_wal_unavailable", s->path);
		return KOBO_ESTORE;
	}
	snprintf(size_limit, sizeof size_limit, "PRAGMA journal_size_limit = %d",
	         STORE_SQLITE_WAL_RESTART_BYTES);
	snprintf(cache_size, sizeof cache_size, "PRAGMA cache_size = -%d",
	         STORE_SQLITE_WRITER_CACHE_KIB);
	if (store_sqlite_exec(s->writer, "PRAGMA synchronous = FULL", s->path) != KOBO_OK ||
	    store_sqlite_exec(s->writer, cache_size, s->path) != KOBO_OK ||
	    store_sqlite_exec(s->writer, size_limit, s->path) != KOBO_OK ||
	    /* Checkpoints happen on the checkpointer thread, never inside a
	     * commit. This pragma removes SQLite's own WAL hook, so ours is
	     * installed after it. */
	    store_sqlite_exec(s->writer, "PRAGMA wal_autocheckpoint = 0", s->path) != KOBO_OK)
		return KOBO_ESTORE;
	sqlite3_wal_hook(s->writer, wal_hook, &s->ckpt);
	return KOBO_OK;
}

int store_sqlite_open(const char *path, bool read_only, kobo_store **out)
{
	sqlite_store *s;

	*out = NULL;
	s = calloc(1, sizeof *s);
	if (s == NULL)
		return KOBO_ENOMEM;
	s->base.ops = &sqlite_ops;
	s->read_only = read_only;
	s->state = STORE_IDLE;
	atomic_init(&s->failed, false);
	atomic_init(&s->ckpt.commits, 0);
	atomic_init(&s->ckpt.wal_frames, 0);
	s->ckpt.kick_frames = INT_MAX; /* no kicks before the thread runs */
	pthread_mutex_init(&s->ckpt.gate, NULL);
	s->ckpt.gate_ready = true;
	s->path = strdup(path);
	if (s->path == NULL) {
		free(s);
		return KOBO_ENOMEM;
	}
	if (read_only) {
		/* No migrations: an unmigrated or newer file is refused by
		 * store_sqlite_connect's version check. */
		if (store_sqlite_connect(path, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
		                         STORE_SQLITE_BUSY_TIMEOUT_MS, &s->writer) != KOBO_OK)
			goto fail;
	} else {
		if (store_sqlite_connect(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
		                         SQLITE_OPEN_NOMUTEX, STORE_SQLITE_BUSY_TIMEOUT_MS,
		                         &s->writer) != KOBO_OK ||
		    configure_writer(s) != KOBO_OK || migrate(s->writer, path) != KOBO_OK)
			goto fail;
	}
	if (store_sqlite_prepare_all(s->writer, writer_sql, s->stmt, SQL_WRITER_COUNT, path) != KOBO_OK ||
	    read_commit_seq(s) != KOBO_OK)
		goto fail;
	if (!read_only && checkpointer_start(s) != KOBO_OK)
		goto fail;
	*out = &s->base;
	return KOBO_OK;
fail:
	store_close(&s->base);
	return KOBO_ESTORE;
}
