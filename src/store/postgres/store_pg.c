/*
 * store_pg.c — the PostgreSQL store: one shard per schema, one transaction
 * per writer batch, any number of kobod on the same database.
 *
 * Implements store.h over libpq. This file opens a shard (creating its
 * schema) and holds the write side: one connection used by the shard
 * writer thread. Every reader opens a connection of its own (pg_read.c,
 * which also opens connections for everyone and decodes rows); pg_audit.c
 * opens one for its snapshot and feeds it to the audit's rules
 * (auditor.c). What the three files share is in pg_internal.h. Issue 9 is
 * the brief.
 *
 * NOTES ON THE DESIGN
 *
 * Schema (version 5; version 1 lacked the rows' version columns, version 2
 * created_by and api_keys, version 3 events, version 4 transfers.trace_id;
 * all are migrated at open, see migrate(); a read-only open takes version
 * 5 only), in schema kobo_shard_<N> of the database the URL
 * names, created at open under pg_advisory_xact_lock(KOBO, N) with CREATE
 * … IF NOT EXISTS, so several nodes starting at once are safe. A schema
 * already current is only read at open (schema_is_current): no DDL, no
 * write, so a node joining a running deployment never waits on, or
 * deadlocks with, the batches of the nodes already serving:
 *
 *   meta(id = 1, schema_version, shard_index, shard_count, commit_seq,
 *        transfer_seq)
 *        shard_index is checked at every open (a URL list in the wrong
 *        order is refused); shard_count is the deployment's shard count,
 *        recorded by the first kobo_store_open_sharded (0 until then, and
 *        for shards opened by kobo_store_open, which checks nothing).
 *        commit_seq is the consistency token (store.h); transfer_seq the
 *        last seq handed to a transfer. Every batch updates this row, so
 *        (a) every commit writes, and a commit that writes waits for the
 *        synchronous standby — a batch that only replays still does not
 *        answer before the standby has everything it answers about;
 *        (b) batches of one shard serialize on this row from their write
 *        to their commit, whichever node runs them, so seq grows in commit
 *        order and the history cursor never skips a row that commits late.
 *   accounts(id text COLLATE "C" PRIMARY KEY, currency, allow_negative,
 *        posted, pending_out, pending_in, metadata, created_at_ms,
 *        version, created_by) WITH (fillfactor = 80) and no index on the
 *        balances: a balance update is a HOT update (no index entry
 *        written). created_by (v3, transfers too): the id of the API key
 *        whose request made the row, '' for none and for older rows.
 *        trace_id (v5, transfers): the trace id of the request that
 *        created the transfer ('' for none and for older rows), fixed at
 *        creation; a CREDIT leg carries its DEBIT leg's.
 *   transfers(seq bigint PRIMARY KEY, id text COLLATE "C" UNIQUE, … the
 *        columns of the SQLite store, same words: status, legs, saga states
 *        and reasons as their wire names, NULL for a NONE reason and for
 *        error_code CREATED), with the SQLite store's indexes: (from_id,
 *        seq), (to_id, seq), (clearing, seq) WHERE clearing <> '',
 *        (expires_at_ms, seq) WHERE status = 'pending' AND expires_at_ms >
 *        0, (id) WHERE saga <> 'none'; and version (see "Concurrency").
 *   api_keys(id text COLLATE "C" PRIMARY KEY, name, scopes, salt bytea,
 *        hash bytea, created_at_ms, revoked_at_ms DEFAULT 0) (v3): the API
 *        keys (apikey.h); only shard 0's schema holds any. Written by
 *        key_insert / key_revoke on connections of their own under a table
 *        lock (see "API keys" below), read by read_keys.
 *   saga_claims(id text COLLATE "C" PRIMARY KEY, node, until timestamptz)
 *        which node drives the saga of transfer id, until when (the
 *        database's clock): claim_saga / release_saga in pg_read.c. Created
 *        IF NOT EXISTS at every open, so a version-1 schema made before it
 *        gains it without a migration step.
 *   kobo_expect_rows(got, want, what, state): raises SQLSTATE `state` when
 *        an update changed another number of rows than the batch expects
 *        (see "Round trips"); CREATE OR REPLACE at every open, like
 *        saga_claims, so a version-1 schema made before it gains it.
 *   Ids are COLLATE "C": ORDER BY id is byte order, the order strcmp, the
 *   saga runner's cursor and the prefix ranges assume.
 *
 * The batch transaction (READ COMMITTED; row locks do the isolation):
 *
 *   begin()           nothing sent (a reconnect if the link broke)
 *   load_transfers()  BEGIN; batch settings and clock; SELECT … WHERE id =
 *                     ANY($1) ORDER BY id FOR NO KEY UPDATE, handed out in
 *                     the caller's order: two nodes posting the same hold
 *                     serialize here, and the second sees the first's result
 *   load_accounts()   the same for accounts: the touched rows locked in one
 *                     global order (id, byte order), so no two batches
 *                     deadlock over them
 *   now()             the clock read with BEGIN (no round trip)
 *   write()           queued, not yet sent: set-based INSERT … SELECT FROM
 *                     unnest($n::type[]), UPDATE … FROM unnest(…) checked by
 *                     kobo_expect_rows, meta bumped, then the transfers
 *   commit()          meta bumped if write() did not; commit settings
 *                     (timeouts off); COMMIT — all one pipeline with write's
 *
 *   Lock order in every pessimistic batch: transfers, accounts, meta (an
 *   optimistic one: accounts, meta, transfers, see "Concurrency"). A unique
 *   violation on a transfer id means another node inserted it first: the
 *   batch is re-run (KOBO_ECONFLICT) and then replays what that node did.
 *
 * Round trips. libpq pipeline mode: each of the three brackets below is
 * one pipeline ended by one Sync, so a batch is three round trips whatever
 * it holds (five to eight before; store_pg_round_trips counts them, the
 * contract test asserts three):
 *   (BEGIN, SQL_BATCH_SETTINGS, load transfers) (load accounts)
 *   (insert/update accounts, bump meta, insert/update transfers,
 *    SQL_COMMIT_SETTINGS, COMMIT)
 * The ledger needs the loaded rows before it can say what to write, so two
 * is not possible with load_transfers and load_accounts apart (the ledger
 * asks for the accounts the transfers name). What a pipeline means for
 * the outcome:
 *   - a statement the server refuses aborts the transaction, and the server
 *     skips the rest of the pipeline (PGRES_PIPELINE_ABORTED), COMMIT
 *     included: nothing was committed, the kind is the refused statement's
 *     (below), and the transaction is rolled back once the pipeline is
 *     drained. Row counts are checked by the server for that reason
 *     (kobo_expect_rows raises PG_ROWS_SQLSTATE: sticky KOBO_ESTORE, the
 *     store's picture was wrong), never after the fact by this code;
 *   - the link lost before COMMIT was queued: KOBO_ECONNLOST; once libpq was
 *     asked to send COMMIT (the server runs it as soon as it arrives, Sync
 *     or not): KOBO_EUNKNOWN, unless the server had already refused an
 *     earlier statement of that pipeline (then nothing was committed).
 * A batch's first pipeline that finds the connection dead (the server
 * restarted since the last batch) reconnects and runs once more: nothing
 * had been done. Parameters stay text arrays: binary arrays were not
 * measured here, and a batch's cost is dominated by its round trips and
 * the server's work, not by parsing a few kB of literals.
 *
 * Timeouts. SQL_BATCH_SETTINGS sets, for the transaction only (set_config
 * …, true = SET LOCAL), lock_timeout PG_LOCK_TIMEOUT_MS and
 * statement_timeout PG_STATEMENT_TIMEOUT_MS (Limits says why); a batch
 * that hits either (55P03, 57014) is rolled back and answers
 * KOBO_ECONFLICT, so the writer re-runs it and, once its re-runs are
 * spent, answers 503 overloaded with Retry-After: nothing committed.
 * SQL_COMMIT_SETTINGS sets both back to 0 in the COMMIT's own pipeline,
 * right before it: COMMIT never times out (a COMMIT cancelled while it
 * waits for a synchronous standby has already committed locally).
 *
 * The batch's clock. Several kobod share one database, so records are
 * stamped and holds expire by the database's clock, not each node's:
 * SQL_BATCH_SETTINGS also reads clock_timestamp() (milliseconds), which
 * now() answers for the whole batch; outside a batch now() asks the server
 * (SQL_NOW, one round trip per expiry scan) and the writer hands that to
 * expired_holds.
 *
 * Concurrency (kobo_store_ops.set_concurrency, kobod --concurrency). Every
 * accounts and transfers row has a version (schema 2), bumped by every
 * update, and every load returns it; an update names the version its batch
 * read (NULL for a row the batch did not load) and the server checks both
 * counts: rows missing → PG_ROWS_SQLSTATE (sticky), rows whose version
 * moved on → the mode's SQLSTATE.
 *   pessimistic  the loads lock (FOR NO KEY UPDATE): a version cannot move
 *                under the lock, so a mismatch is PG_ROWS_SQLSTATE too.
 *   optimistic   the loads (SQL_PEEK_*) lock nothing; a moved version is
 *                40001 → KOBO_ECONFLICT and the writer re-runs the batch.
 *                Rows read and not written (a replay's transfer, a payer
 *                whose transfer was refused) are checked by
 *                SQL_CHECK_READS in the COMMIT's pipeline, right before
 *                COMMIT (40001 if one moved on). They are not locked:
 *                share locks taken after the updates' row locks let two
 *                batches deadlock (each updates what the other read). The
 *                window left (another node's commit between that check and
 *                this COMMIT, microseconds) can only make a refusal or a
 *                replay's answer that stale; money only moves through rows
 *                this batch updates, and those are checked by the UPDATE
 *                itself under its row lock, so nothing is spent twice.
 *                Updates lock in id order (pg_order), so two optimistic
 *                writers of the same rows wait rather than deadlock; a wait
 *                is bounded by the lock timeout.
 *   Nodes of either mode may share a database (both bump versions); a
 *   pessimistic and an optimistic batch lock in different orders
 *   (transfers first, accounts first) and may deadlock: 40P01, re-run.
 *
 * Which shard a database holds (kobo_store_open_sharded, shard_count > 0):
 * kobod is given one URL per shard, in shard order, and the shard map is
 * the default map for that many shards (src/shard/map_file.c), so a list
 * in another order or of another length would read accounts on the wrong
 * shard. check_census, under the database's advisory lock, refuses
 *   - a shard whose meta records another index or another shard count;
 *   - creating shard i in a database that already holds shards of another
 *     shard count, or a shard j > i (kobod creates shards in order, so a
 *     higher one there means this URL belongs further down the list), or a
 *     shard that has committed a batch (kobod creates every shard before
 *     it serves, so shard i should have been there: the same URL given
 *     twice by mistake);
 * each with a sentence naming what the database holds (KOBO_EINVAL). One
 * database may hold several shards (one schema each): the same URL given
 * twice is a deployment of two shards in one database.
 *
 * The link and /readyz. A writable store runs a probe thread with a
 * connection of its own: every PG_PROBE_INTERVAL_MS it asks the server
 * `SELECT pg_is_in_recovery()` (at most PG_PROBE_TIMEOUT_MS; a standby
 * counts as down: it cannot take writes). While the answer is missing the
 * store is "link down": healthy() is false (/readyz 503) and begin()
 * answers KOBO_ECONNLOST at once, so new writes answer 503 without
 * waiting on a dead server. The probe reconnects with a backoff doubling
 * from PG_RECONNECT_BACKOFF_MIN_MS to PG_RECONNECT_BACKOFF_MAX_MS; the
 * first answer clears "link down". The writer's own connection reconnects
 * in begin(), with the same backoff, and a BEGIN that finds its connection
 * dead (the server restarted since the last batch) reconnects and runs
 * once more: nothing had been sent.
 *
 * Error kinds (store.h):
 *   40P01 deadlock, 40001 serialization failure  → KOBO_ECONFLICT
 *   55P03 lock timeout, 57014 statement timeout   → KOBO_ECONFLICT
 *   23505 on transfers (another node won the id)  → KOBO_ECONFLICT
 *   connection lost before COMMIT was sent        → KOBO_ECONNLOST
 *   the link lost during COMMIT                   → KOBO_EUNKNOWN
 *   anything else going wrong during COMMIT       → KOBO_EUNKNOWN (sticky)
 *   anything else                                 → KOBO_ESTORE
 *   ECONFLICT and ECONNLOST leave the store healthy (nothing was
 *   committed); begin() reconnects a broken connection. A COMMIT whose
 *   link broke is not sticky, unlike store.h's general rule: the sticky
 *   state guards memory that may disagree with the disk, and this store
 *   keeps none across batches — every batch re-reads its rows under lock,
 *   and seqs and the token come from the meta row — so the next batch sees
 *   whatever the lost COMMIT did, and the client's retry by id settles it.
 *   Without this, one PostgreSQL restart under load would leave kobod
 *   unready until restarted. COMMIT never gets a
 *   timeout: a COMMIT cancelled while waiting for the standby has already
 *   committed locally.
 *
 * The write-side state machine (as in store_sqlite.c):
 *
 *          open() ───▶ IDLE ── begin() ──▶ IN_BATCH ──┐ load_*(), write()
 *                       ▲  ▲                 │  │ ◀───┘
 *                       │  └─ commit() ok ───┘  │
 *                       └── rollback(), ECONFLICT, ECONNLOST, a load
 *                           callback's refusal, a failed load
 *          IN_BATCH ── write() or commit() fails otherwise ──▶ FAILED
 *          FAILED is sticky: begin() answers KOBO_EFAILED, healthy() false.
 *
 *   transition            performed by             what happens
 *   IDLE → IN_BATCH       store_begin              loads freed (BEGIN later)
 *   IN_BATCH → IN_BATCH   store_load_*, write      locked SELECT; DML queued
 *   IN_BATCH → IDLE       store_commit             DML, meta bump, COMMIT
 *   IN_BATCH → IDLE       store_rollback, a load   ROLLBACK (if the link lives)
 *                         or write that conflicts
 *   IN_BATCH → IDLE       store_commit, link lost  KOBO_EUNKNOWN, reconnect next
 *   IN_BATCH → FAILED     store_write, commit      ROLLBACK, failed flag set
 *
 * Invariants:
 *   1. Only the writer thread touches `conn`; only the probe thread its
 *      probe connection; healthy() reads `failed` and `link_down`.
 *   2. state == IN_BATCH exactly when `conn` holds a transaction this code
 *      began (or the link broke inside one).
 *   3. `failed` is never cleared: close and open again.
 *   4. The metadata of records handed to load callbacks lives in the
 *      `metadata` pool, and their rows in `loaded`, until the next begin()
 *      (guarantee 3 of store.h).
 *   5. meta is updated exactly once per committed batch.
 *   6. Outside a pipeline's send-and-read the connection is out of
 *      pipeline mode, except between write() and commit()/rollback(),
 *      when it holds the queued writes (rollback drains them).
 */
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../obs/obs.h"
#include "pg_internal.h"

/* ---- Limits. ---- */

#define PG_SCHEMA_VERSION 5
/* The oldest schema a read-only open (readers, the audit) accepts: the
 * readers read created_by and api_keys, which version 3 added, and the
 * events and the request index, which version 4 added, and transfers'
 * trace_id, which version 5 added (a read-only open never migrates: open
 * the store writable once, as kobod does). */
#define PG_SCHEMA_VERSION_READABLE 5
#define PG_ADVISORY_KEY 0x6b6f626f /* "kobo": first half of the schema lock */
#define PG_SCHEMA_NAME_BYTES 32
#define PG_ARRAY_COLUMNS_MAX 24    /* the transfer insert's parameters */
#define PG_LOADED_MAX 64           /* load calls one batch may make */
#define PG_SQL_BYTES_MAX 4096
/* The whole database's key, second half of the schema lock: every shard of
 * one database is created under it, so the census of the shards already
 * there (check_census) and the creation of a new one cannot interleave. */
#define PG_ADVISORY_DATABASE -1
#define PG_CENSUS_SHARDS_MAX 64    /* shard schemas one database describes */

/* Timeouts inside a batch (see "Timeouts"). A batch waits at most
 * PG_LOCK_TIMEOUT_MS for a row lock another node holds (55P03), and no
 * statement before COMMIT runs longer than PG_STATEMENT_TIMEOUT_MS
 * (57014); either answers KOBO_ECONFLICT, nothing committed, and the
 * writer re-runs the batch KOBO_SHARD_CONFLICT_RERUNS_MAX times before it
 * answers 503 overloaded: a request waits at most ~4 x 1 s on locks. 1 s
 * is far above a healthy batch's lock wait (one other batch's commit,
 * milliseconds) and short enough that a client's retry is still useful.
 * The statement bound is looser: a large batch on a busy server may take
 * a while, and it only has to stop a statement stuck behind a stalled
 * disk from holding the shard's locks for ever. COMMIT gets neither. */
#define PG_LOCK_TIMEOUT_MS 1000
#define PG_STATEMENT_TIMEOUT_MS 5000
/* The SQLSTATE kobo_expect_rows raises for an update that did not match
 * the rows the batch loaded: the store's picture was wrong (sticky). */
#define PG_ROWS_SQLSTATE "KB001"
/* Statements one pipeline may hold: BEGIN, the settings, a load; or the
 * writes (5), the commit settings and COMMIT, plus BEGIN and settings. */
#define PG_STEPS_MAX 12

/* The link probe (see "The link and /readyz"): how often it asks a healthy
 * server, how long one question may take, and the reconnect backoff of the
 * probe and the writer, doubling from min to max. */
#define PG_PROBE_INTERVAL_MS 500
#define PG_PROBE_TIMEOUT_MS 1000
#define PG_PROBE_CONNECT_TIMEOUT_S "2"
#define PG_RECONNECT_BACKOFF_MIN_MS 100
#define PG_RECONNECT_BACKOFF_MAX_MS 2000
_Static_assert(PG_RECONNECT_BACKOFF_MIN_MS <= PG_RECONNECT_BACKOFF_MAX_MS,
               "the backoff grows from min to max");
_Static_assert(PG_PROBE_INTERVAL_MS + PG_PROBE_TIMEOUT_MS <= 2000,
               "/readyz notices a lost primary within ~1-2 s");

/* ---- Statements. ---- */

/* The schema, run under the advisory lock; %s is the schema name. */
static const char *const schema_sql =
	"CREATE SCHEMA IF NOT EXISTS %s;"
	"SET LOCAL search_path = %s;"
	"CREATE TABLE IF NOT EXISTS meta ("
	"  id             int    PRIMARY KEY CHECK (id = 1),"
	"  schema_version int    NOT NULL,"
	"  shard_index    int    NOT NULL CHECK (shard_index >= 0),"
	"  shard_count    int    NOT NULL CHECK (shard_count >= 0),"
	"  commit_seq     bigint NOT NULL CHECK (commit_seq >= 0),"
	"  transfer_seq   bigint NOT NULL CHECK (transfer_seq >= 0)"
	");"
	"CREATE TABLE IF NOT EXISTS accounts ("
	"  id             text    COLLATE \"C\" PRIMARY KEY,"
	"  currency       text    NOT NULL,"
	"  allow_negative boolean NOT NULL,"
	"  posted         bigint  NOT NULL,"
	"  pending_out    bigint  NOT NULL CHECK (pending_out >= 0),"
	"  pending_in     bigint  NOT NULL CHECK (pending_in >= 0),"
	"  metadata       bytea   NOT NULL,"
	"  created_at_ms  bigint  NOT NULL,"
	"  version        bigint  NOT NULL DEFAULT 0,"
	"  created_by     text    NOT NULL DEFAULT ''"
	") WITH (fillfactor = 80);"
	"CREATE TABLE IF NOT EXISTS transfers ("
	"  seq             bigint  PRIMARY KEY,"
	"  id              text    COLLATE \"C\" NOT NULL UNIQUE,"
	"  from_id         text    COLLATE \"C\" NOT NULL,"
	"  to_id           text    COLLATE \"C\" NOT NULL,"
	"  currency        text    NOT NULL,"
	"  amount          bigint  NOT NULL,"
	"  posted_amount   bigint  NOT NULL,"
	"  pending         boolean NOT NULL,"
	"  timeout_seconds bigint  NOT NULL,"
	"  expires_at_ms   bigint  NOT NULL,"
	"  status          text    NOT NULL CHECK (status IN"
	"                    ('pending', 'posted', 'voided', 'rejected', 'processing')),"
	"  void_reason     text    NULL CHECK (void_reason IN"
	"                    ('voided', 'expired', 'compensated')),"
	"  error_code      text    NULL,"
	"  metadata        bytea   NOT NULL,"
	"  request_id      text    NOT NULL DEFAULT '',"
	"  created_at_ms   bigint  NOT NULL,"
	"  updated_at_ms   bigint  NOT NULL,"
	"  leg             text    NOT NULL CHECK (leg IN ('local', 'debit', 'credit')),"
	"  clearing        text    COLLATE \"C\" NOT NULL,"
	"  saga            text    NOT NULL CHECK (saga IN"
	"                    ('none', 'reserved', 'posting', 'voiding')),"
	"  saga_amount     bigint  NOT NULL,"
	"  saga_reason     text    NULL CHECK (saga_reason IN"
	"                    ('voided', 'expired', 'compensated')),"
	"  version         bigint  NOT NULL DEFAULT 0,"
	"  created_by      text    NOT NULL DEFAULT '',"
	"  trace_id        text    NOT NULL DEFAULT ''"
	");"
	"CREATE TABLE IF NOT EXISTS saga_claims ("
	"  id    text        COLLATE \"C\" PRIMARY KEY,"
	"  node  text        NOT NULL,"
	"  until timestamptz NOT NULL"
	");"
	/* API keys (apikey.h): only shard 0's rows are used. IF NOT EXISTS at
	 * every open that is not current, so a v1 or v2 schema gains it. */
	"CREATE TABLE IF NOT EXISTS api_keys ("
	"  id            text    COLLATE \"C\" PRIMARY KEY,"
	"  name          text    NOT NULL,"
	"  scopes        integer NOT NULL CHECK (scopes > 0),"
	"  salt          bytea   NOT NULL,"
	"  hash          bytea   NOT NULL,"
	"  created_at_ms bigint  NOT NULL,"
	"  revoked_at_ms bigint  NOT NULL DEFAULT 0"
	");"
	/* A row count the batch expects, checked by the server: a mismatch
	 * raises `state` and so aborts the transaction before its pipelined
	 * COMMIT runs. */
	"CREATE OR REPLACE FUNCTION kobo_expect_rows(got bigint, want bigint,"
	"  what text, state text) RETURNS bigint LANGUAGE plpgsql AS $f$ BEGIN"
	"  IF got <> want THEN RAISE EXCEPTION 'kobo: %% changed %% rows, expected %%',"
	"  what, got, want USING ERRCODE = state; END IF; RETURN got; END $f$;"
	"CREATE INDEX IF NOT EXISTS transfers_from_seq ON transfers (from_id, seq);"
	"CREATE INDEX IF NOT EXISTS transfers_to_seq ON transfers (to_id, seq);"
	"CREATE INDEX IF NOT EXISTS transfers_clearing_seq ON transfers (clearing, seq)"
	"  WHERE clearing <> '';"
	"CREATE INDEX IF NOT EXISTS transfers_expiry ON transfers (expires_at_ms, seq)"
	"  WHERE status = 'pending' AND expires_at_ms > 0;"
	"CREATE INDEX IF NOT EXISTS transfers_sagas ON transfers (id)"
	"  WHERE saga <> 'none';"
	/* The journey of a payment (events.h, schema 4): written with the
	 * batch's transfers, in the same pipeline; seq orders them. */
	"CREATE TABLE IF NOT EXISTS events ("
	"  seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
	"  transfer_id text   COLLATE \"C\" NOT NULL,"
	"  event       text   NOT NULL,"
	"  at_ms       bigint NOT NULL,"
	"  shard       int    NOT NULL,"
	"  node        text   NOT NULL,"
	"  request_id  text   NOT NULL,"
	"  trace_id    text   NOT NULL,"
	"  key_id      text   NOT NULL,"
	"  leg         text   NOT NULL,"
	"  status      text   NOT NULL,"
	"  amount      bigint NOT NULL"
	");"
	"CREATE INDEX IF NOT EXISTS events_transfer ON events (transfer_id, seq);"
	"CREATE INDEX IF NOT EXISTS transfers_request ON transfers (request_id, seq);";

/* Version 1 → 2, under the same lock, run only when meta says 1: every
 * row gains a version (0) that every update from now on bumps. Adding a
 * column with a constant default rewrites nothing (PostgreSQL ≥ 11). */
static const char *const migrate_v2_sql =
	"ALTER TABLE accounts ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 0;"
	"ALTER TABLE transfers ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 0;"
	"UPDATE meta SET schema_version = 2 WHERE id = 1 AND schema_version = 1";

/* Version 2 → 3: the key id that created each account and transfer ('' for
 * every row made before keys; api_keys itself comes with schema_sql). */
static const char *const migrate_v3_sql =
	"ALTER TABLE accounts ADD COLUMN IF NOT EXISTS created_by text NOT NULL DEFAULT '';"
	"ALTER TABLE transfers ADD COLUMN IF NOT EXISTS created_by text NOT NULL DEFAULT '';"
	"UPDATE meta SET schema_version = 3 WHERE id = 1 AND schema_version = 2";

/* Version 3 → 4: events and transfers_request come with schema_sql. */
static const char *const migrate_v4_sql =
	"UPDATE meta SET schema_version = 4 WHERE id = 1 AND schema_version = 3";

/* Version 4 → 5: the trace id of the request that created each transfer
 * ('' for every row before), so a saga's later steps rejoin its trace. */
static const char *const migrate_v5_sql =
	"ALTER TABLE transfers ADD COLUMN IF NOT EXISTS trace_id text NOT NULL DEFAULT '';"
	"UPDATE meta SET schema_version = 5 WHERE id = 1 AND schema_version = 4";

enum {
	SQL_BATCH_SETTINGS,
	SQL_COMMIT_SETTINGS,
	SQL_NOW,
	SQL_LOAD_TRANSFERS,
	SQL_LOAD_ACCOUNTS,
	SQL_PEEK_TRANSFERS,
	SQL_PEEK_ACCOUNTS,
	SQL_CHECK_READS,
	SQL_INSERT_ACCOUNTS,
	SQL_UPDATE_ACCOUNTS,
	SQL_BUMP_META,
	SQL_INSERT_TRANSFERS,
	SQL_UPDATE_TRANSFERS,
	SQL_INSERT_EVENTS,
	SQL_EXPIRED_HOLDS,
	SQL_WRITER_COUNT
};

#define PG_STR_(x) #x
#define PG_STR(x) PG_STR_(x)
/* The database's clock in milliseconds since the epoch. */
#define PG_CLOCK_MS "floor(extract(epoch FROM clock_timestamp()) * 1000)::int8"

static const struct {
	const char *name;
	const char *sql;
} writer_sql[SQL_WRITER_COUNT] = {
	/* The batch's limits and its clock, right after BEGIN (see "Timeouts"
	 * and "The batch's clock"). */
	[SQL_BATCH_SETTINGS] = {"kobo_batch_settings",
		"SELECT set_config('lock_timeout', '" PG_STR(PG_LOCK_TIMEOUT_MS) "ms', true),"
		" set_config('statement_timeout', '" PG_STR(PG_STATEMENT_TIMEOUT_MS) "ms', true),"
		" " PG_CLOCK_MS},
	/* Right before COMMIT, in the same pipeline: COMMIT never times out. */
	[SQL_COMMIT_SETTINGS] = {"kobo_commit_settings",
		"SELECT set_config('statement_timeout', '0', true),"
		" set_config('lock_timeout', '0', true)"},
	[SQL_NOW] = {"kobo_now", "SELECT " PG_CLOCK_MS},
	/* Pessimistic: locked in id order (MATERIALIZED keeps the locking
	 * scan apart from the join), handed out in the caller's order. Every
	 * load ends with the row's version (see "Concurrency"). */
	[SQL_LOAD_TRANSFERS] = {"kobo_load_transfers",
		"WITH locked AS MATERIALIZED ("
		"  SELECT " PG_TRANSFER_COLUMNS ", version FROM transfers"
		"  WHERE id = ANY ($1::text[]) ORDER BY id FOR NO KEY UPDATE) "
		"SELECT l.* FROM unnest($1::text[]) WITH ORDINALITY AS q(id, ord)"
		" JOIN locked l ON l.id = q.id ORDER BY q.ord"},
	[SQL_LOAD_ACCOUNTS] = {"kobo_load_accounts",
		"WITH locked AS MATERIALIZED ("
		"  SELECT " PG_ACCOUNT_COLUMNS ", version FROM accounts"
		"  WHERE id = ANY ($1::text[]) ORDER BY id FOR NO KEY UPDATE) "
		"SELECT l.* FROM unnest($1::text[]) WITH ORDINALITY AS q(id, ord)"
		" JOIN locked l ON l.id = q.id ORDER BY q.ord"},
	/* Optimistic: the same rows, no lock. Every optimistic statement finds
	 * its rows with `id = ANY ($n)`, as the pessimistic loads do: written
	 * as a join of unnest() and the table, the planner's custom plan for
	 * a batch of ~60 ids chose a hash join over a sequential scan of
	 * accounts, once per batch (1,924 sequential scans of accounts in 4 s
	 * of --hot 10 load against 13 pessimistic; 2,019 against 8,620
	 * transfers/s in make bench-postgres, 2026-12-02). */
	[SQL_PEEK_TRANSFERS] = {"kobo_peek_transfers",
		"WITH found AS MATERIALIZED ("
		"  SELECT " PG_TRANSFER_COLUMNS ", version FROM transfers"
		"  WHERE id = ANY ($1::text[])) "
		"SELECT l.* FROM unnest($1::text[]) WITH ORDINALITY AS q(id, ord)"
		" JOIN found l ON l.id = q.id ORDER BY q.ord"},
	[SQL_PEEK_ACCOUNTS] = {"kobo_peek_accounts",
		"WITH found AS MATERIALIZED ("
		"  SELECT " PG_ACCOUNT_COLUMNS ", version FROM accounts"
		"  WHERE id = ANY ($1::text[])) "
		"SELECT l.* FROM unnest($1::text[]) WITH ORDINALITY AS q(id, ord)"
		" JOIN found l ON l.id = q.id ORDER BY q.ord"},
	/* Optimistic: the rows the batch read and does not write still have
	 * the versions it read, right before COMMIT (no lock: see
	 * "Concurrency"). */
	[SQL_CHECK_READS] = {"kobo_check_reads",
		"WITH fa AS MATERIALIZED (SELECT id, version FROM accounts"
		"  WHERE id = ANY ($1::text[])),"
		" ft AS MATERIALIZED (SELECT id, version FROM transfers"
		"  WHERE id = ANY ($3::text[])),"
		" ra AS (SELECT 1 FROM unnest($1::text[], $2::int8[]) AS u(id, version)"
		"  JOIN fa a ON a.id = u.id AND a.version = u.version),"
		" rt AS (SELECT 1 FROM unnest($3::text[], $4::int8[]) AS u(id, version)"
		"  JOIN ft t ON t.id = u.id AND t.version = u.version) "
		"SELECT kobo_expect_rows((SELECT count(*) FROM ra) + (SELECT count(*) FROM rt),"
		" $5::int8, 'rows read', '40001')"},
	[SQL_INSERT_ACCOUNTS] = {"kobo_insert_accounts",
		"INSERT INTO accounts (" PG_ACCOUNT_COLUMNS ") "
		"SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::int8[],"
		" $5::int8[], $6::int8[], $7::bytea[], $8::int8[], $9::text[])"},
	/* Every update is checked by the server (kobo_expect_rows), so a
	 * mismatch aborts the transaction before the pipelined COMMIT. */
	/* $6: the version the batch read (NULL: not read); $7: the SQLSTATE
	 * of a version that moved on (see "Concurrency"). A row that is not
	 * there at all is PG_ROWS_SQLSTATE either way. */
	[SQL_UPDATE_ACCOUNTS] = {"kobo_update_accounts",
		"WITH w AS (UPDATE accounts a SET posted = u.posted,"
		" pending_out = u.pending_out, pending_in = u.pending_in,"
		" version = a.version + 1 "
		"FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $6::int8[])"
		" AS u(id, posted, pending_out, pending_in, version) WHERE a.id = u.id"
		" AND (u.version IS NULL OR a.version = u.version) RETURNING 1) "
		"SELECT kobo_expect_rows((SELECT count(*) FROM accounts"
		" WHERE id = ANY ($1::text[])), $5::int8, 'accounts', '" PG_ROWS_SQLSTATE "'),"
		" kobo_expect_rows((SELECT count(*) FROM w), $5::int8, 'accounts', $7)"},
	[SQL_BUMP_META] = {"kobo_bump_meta",
		"WITH m AS (UPDATE meta SET commit_seq = commit_seq + 1,"
		" transfer_seq = transfer_seq + $1::int8 WHERE id = 1"
		" RETURNING commit_seq) "
		"SELECT (SELECT commit_seq FROM m), kobo_expect_rows("
		"(SELECT count(*) FROM m), 1, 'meta', '" PG_ROWS_SQLSTATE "')"},
	/* Runs after the meta bump of the same batch: the new transfers take
	 * the $1 seqs just reserved, in array order. */
	[SQL_INSERT_TRANSFERS] = {"kobo_insert_transfers",
		"INSERT INTO transfers (" PG_TRANSFER_COLUMNS ") "
		"SELECT m.base + u.ord, u.id, u.from_id, u.to_id, u.currency,"
		" u.amount, u.posted_amount, u.pending, u.timeout_seconds,"
		" u.expires_at_ms, u.status, u.void_reason, u.error_code, u.metadata,"
		" u.request_id, u.created_at_ms, u.updated_at_ms, u.leg, u.clearing,"
		" u.saga, u.saga_amount, u.saga_reason, u.created_by, u.trace_id "
		"FROM (SELECT transfer_seq - $1::int8 AS base FROM meta WHERE id = 1) m,"
		" unnest($2::text[], $3::text[], $4::text[], $5::text[],"
		" $6::int8[], $7::int8[], $8::bool[], $9::int8[], $10::int8[],"
		" $11::text[], $12::text[], $13::text[], $14::bytea[], $15::text[],"
		" $16::int8[], $17::int8[], $18::text[], $19::text[], $20::text[],"
		" $21::int8[], $22::text[], $23::text[], $24::text[]) WITH ORDINALITY"
		" AS u(id, from_id, to_id, currency, amount, posted_amount, pending,"
		" timeout_seconds, expires_at_ms, status, void_reason, error_code,"
		" metadata, request_id, created_at_ms, updated_at_ms, leg, clearing,"
		" saga, saga_amount, saga_reason, created_by, trace_id, ord)"},
	/* kobo_transfer_state, no more (store.h guarantee 4). */
	[SQL_UPDATE_TRANSFERS] = {"kobo_update_transfers",
		"WITH w AS (UPDATE transfers t SET status = u.status,"
		" posted_amount = u.posted_amount, void_reason = u.void_reason,"
		" error_code = u.error_code, updated_at_ms = u.updated_at_ms,"
		" saga = u.saga, saga_amount = u.saga_amount,"
		" saga_reason = u.saga_reason, version = t.version + 1 "
		"FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[],"
		" $5::text[], $6::int8[], $7::text[], $8::int8[], $9::text[], $11::int8[])"
		" AS u(id, status, posted_amount, void_reason, error_code,"
		" updated_at_ms, saga, saga_amount, saga_reason, version) WHERE t.id = u.id"
		" AND (u.version IS NULL OR t.version = u.version) RETURNING 1) "
		"SELECT kobo_expect_rows((SELECT count(*) FROM transfers"
		" WHERE id = ANY ($1::text[])), $10::int8, 'transfers', '" PG_ROWS_SQLSTATE "'),"
		" kobo_expect_rows((SELECT count(*) FROM w), $10::int8, 'transfers', $12)"},
	/* In array order: the identity numbers them as the rows come. */
	[SQL_INSERT_EVENTS] = {"kobo_insert_events",
		"INSERT INTO events (transfer_id, event, at_ms, shard, node, request_id,"
		" trace_id, key_id, leg, status, amount) "
		"SELECT u.transfer_id, u.event, u.at_ms, u.shard, u.node, u.request_id,"
		" u.trace_id, u.key_id, u.leg, u.status, u.amount"
		" FROM unnest($1::text[], $2::text[], $3::int8[], $4::int4[], $5::text[],"
		" $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int8[])"
		" WITH ORDINALITY AS u(transfer_id, event, at_ms, shard, node, request_id,"
		" trace_id, key_id, leg, status, amount, ord) ORDER BY u.ord"},
	[SQL_EXPIRED_HOLDS] = {"kobo_expired_holds",
		"SELECT id FROM transfers WHERE status = 'pending'"
		" AND expires_at_ms > 0 AND expires_at_ms <= $1::int8"
		" ORDER BY expires_at_ms, seq LIMIT $2::int8"},
};

/* ---- Growable text buffers for array literals. ---- */

typedef struct pg_buf {
	char *data;
	size_t len;
	size_t cap;
	bool oom;
} pg_buf;

static void buf_reserve(pg_buf *b, size_t more)
{
	if (b->oom || b->len + more + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + more + 1)
		cap *= 2;
	char *data = realloc(b->data, cap);
	if (data == NULL) {
		b->oom = true;
		return;
	}
	b->data = data;
	b->cap = cap;
}

static void buf_put(pg_buf *b, const char *bytes, size_t len)
{
	buf_reserve(b, len);
	if (b->oom)
		return;
	memcpy(b->data + b->len, bytes, len);
	b->len += len;
	b->data[b->len] = '\0';
}

static void buf_reset(pg_buf *b)
{
	b->len = 0;
	b->oom = false;
	buf_put(b, "{", 1);
}

static void buf_sep(pg_buf *b)
{
	if (b->len > 1)
		buf_put(b, ",", 1);
}

/* One array element: a quoted string, backslash before " and \. */
static void arr_text(pg_buf *b, const char *text, size_t len)
{
	buf_sep(b);
	buf_reserve(b, 2 * len + 2);
	if (b->oom)
		return;
	char *out = b->data + b->len;
	*out++ = '"';
	for (size_t i = 0; i < len; i++) {
		if (text[i] == '"' || text[i] == '\\')
			*out++ = '\\';
		*out++ = text[i];
	}
	*out++ = '"';
	b->len = (size_t)(out - b->data);
	b->data[b->len] = '\0';
}

static void arr_str(pg_buf *b, const char *text)
{
	if (text == NULL) {
		buf_sep(b);
		buf_put(b, "NULL", 4);
	} else {
		arr_text(b, text, strlen(text));
	}
}

static void arr_int(pg_buf *b, int64_t value)
{
	char digits[32];
	int n = snprintf(digits, sizeof digits, "%" PRId64, value);
	buf_sep(b);
	buf_put(b, digits, (size_t)n);
}

static void arr_bool(pg_buf *b, bool value)
{
	buf_sep(b);
	buf_put(b, value ? "t" : "f", 1);
}

/* Metadata is bytea: the stored bytes are exactly the caller's, NUL bytes
 * included (text cannot hold a NUL). One element in hex: "\\x7b7d". */
static void arr_metadata(pg_buf *b, const char *metadata, uint32_t len)
{
	static const char hex[] = "0123456789abcdef";

	/* The ledger promises "{}" at least; keep the column valid JSON if a
	 * caller ever hands over nothing. */
	if (metadata == NULL || len == 0) {
		metadata = "{}";
		len = 2;
	}
	buf_sep(b);
	buf_reserve(b, 2 * (size_t)len + 8);
	if (b->oom)
		return;
	char *out = b->data + b->len;
	memcpy(out, "\"\\\\x", 4); /* "\\x: the quote, an escaped backslash, x */
	out += 4;
	for (uint32_t i = 0; i < len; i++) {
		*out++ = hex[(unsigned char)metadata[i] >> 4];
		*out++ = hex[(unsigned char)metadata[i] & 15];
	}
	*out++ = '"';
	b->len = (size_t)(out - b->data);
	b->data[b->len] = '\0';
}

/* ---- The ids a batch asked to load. ----
 *
 * A unique violation on insert means one of two things: another node
 * inserted the id after this batch looked for it and found nothing (a race:
 * re-run, KOBO_ECONFLICT), or the caller inserts an id it never looked up
 * (its picture of the shard is wrong: KOBO_ESTORE, sticky, as store.h says).
 * Remembering what the batch looked up tells the two apart. */

typedef struct pg_idset {
	char (*ids)[KOBO_ID_LEN_MAX + 1];
	size_t count;
	size_t cap;
	bool oom; /* an id was not remembered: never claim a race */
	bool sorted;
} pg_idset;

static void idset_add(pg_idset *set, const char *id)
{
	if (set->count == set->cap) {
		size_t cap = set->cap ? 2 * set->cap : 256;
		void *ids = realloc(set->ids, cap * sizeof *set->ids);
		if (ids == NULL) {
			set->oom = true;
			return;
		}
		set->ids = ids;
		set->cap = cap;
	}
	snprintf(set->ids[set->count++], sizeof set->ids[0], "%s", id);
	set->sorted = false;
}

static int id_compare(const void *a, const void *b)
{
	return strcmp(a, b);
}

static bool idset_has(pg_idset *set, const char *id)
{
	if (set->oom || set->count == 0)
		return false;
	if (!set->sorted) {
		qsort(set->ids, set->count, sizeof set->ids[0], id_compare);
		set->sorted = true;
	}
	return bsearch(id, set->ids, set->count, sizeof set->ids[0], id_compare) != NULL;
}

static void idset_clear(pg_idset *set)
{
	set->count = 0;
	set->oom = false;
	set->sorted = true;
}

/* ---- The versions a batch read (see "Concurrency"). ----
 *
 * Every load returns each row's version; an update names the version it
 * read, and in optimistic mode the rows read but not written are checked
 * at the end. The ids point into the batch's load results. */

typedef struct pg_version {
	const char *id;
	int64_t version;
	bool written;
} pg_version;

typedef struct pg_versions {
	pg_version *rows;
	size_t count;
	size_t cap;
	bool sorted;
} pg_versions;

static int versions_add(pg_versions *v, const char *id, int64_t version)
{
	if (v->count == v->cap) {
		size_t cap = v->cap ? 2 * v->cap : 256;
		void *rows = realloc(v->rows, cap * sizeof *v->rows);
		if (rows == NULL)
			return KOBO_ENOMEM;
		v->rows = rows;
		v->cap = cap;
	}
	v->rows[v->count++] = (pg_version){id, version, false};
	v->sorted = false;
	return KOBO_OK;
}

static int version_compare(const void *a, const void *b)
{
	return strcmp(((const pg_version *)a)->id, ((const pg_version *)b)->id);
}

static pg_version *versions_find(pg_versions *v, const char *id)
{
	if (v->count == 0)
		return NULL;
	if (!v->sorted) {
		qsort(v->rows, v->count, sizeof *v->rows, version_compare);
		v->sorted = true;
	}
	pg_version key = {id, 0, false};
	return bsearch(&key, v->rows, v->count, sizeof *v->rows, version_compare);
}

/* ---- Updates in id order. ----
 *
 * An UPDATE … FROM unnest locks its rows in the array's order (a nested
 * loop over it): sorted by id, two optimistic batches that update the same
 * rows wait for each other instead of deadlocking (see "Concurrency"). */

typedef struct pg_order {
	const char *id;
	size_t at; /* the change's index in the caller's array */
} pg_order;

static int order_compare(const void *a, const void *b)
{
	return strcmp(((const pg_order *)a)->id, ((const pg_order *)b)->id);
}

/* ---- Handles. ---- */

typedef enum pg_state { PG_IDLE, PG_IN_BATCH, PG_FAILED } pg_state;

/* One statement of a pipeline (see "Round trips"). */
enum { PG_STEP_BEGIN = -1, PG_STEP_COMMIT = -2 };
typedef struct pg_step {
	int which;               /* a writer_sql index, or PG_STEP_* */
	ExecStatusType want;     /* the status of success */
	bool unique_is_conflict; /* 23505 here is another node's race */
	bool sticky;             /* any other failure here is sticky */
} pg_step;

typedef struct pg_store {
	kobo_store base; /* first */
	char *url;
	uint32_t shard;
	bool read_only;
	char schema[PG_SCHEMA_NAME_BYTES];
	PGconn *conn; /* the writer's; NULL for read_only stores */
	pg_state state;
	atomic_bool failed;
	atomic_bool link_down;   /* the probe's view: the primary is not answering */
	int64_t reconnect_at_ms; /* writer: no connect before (monotonic) */
	int reconnect_backoff_ms; /* writer: the next wait after a failed connect */
	bool probe_started;
	bool probe_stop;         /* guarded by probe_lock */
	pthread_t probe_thread;
	pthread_mutex_t probe_lock;
	pthread_cond_t probe_wake;
	bool begun;            /* this batch's BEGIN has been sent */
	bool meta_queued;      /* this batch's meta bump has been sent */
	int64_t batch_now_ms;  /* the database's clock at the batch's start */
	uint64_t round_trips;  /* on the writer's connection (tests, bench) */
	pg_step steps[PG_STEPS_MAX]; /* the open pipeline's statements */
	PGresult *step_res[PG_STEPS_MAX]; /* and their results, once synced */
	size_t step_count;
	PGresult *loaded[PG_LOADED_MAX]; /* this batch's load results */
	size_t loaded_count;
	store_pg_pool metadata; /* this batch's loaded metadata */
	pg_idset looked_up_transfers; /* ids this batch's loads asked for */
	pg_idset looked_up_accounts;
	pg_versions read_transfers; /* versions this batch's loads found */
	pg_versions read_accounts;
	bool optimistic;       /* kobo_store_ops.concurrency */
	struct pg_order *order; /* scratch: updates in id order */
	size_t order_cap;
	pg_buf cols[PG_ARRAY_COLUMNS_MAX];
} pg_store;

static pg_store *to_store(kobo_store *store)
{
	return (pg_store *)store;
}

const char *store_pg_url(const kobo_store *store)
{
	return ((const pg_store *)store)->url;
}

const char *store_pg_schema(const kobo_store *store)
{
	return ((const pg_store *)store)->schema;
}

uint64_t store_pg_round_trips(const kobo_store *store)
{
	return ((const pg_store *)store)->round_trips;
}

/* ---- Error kinds. ---- */

static bool sqlstate_is(const PGresult *res, const char *code)
{
	const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	return state != NULL && strcmp(state, code) == 0;
}

/* The kind of a failed statement inside a batch, before COMMIT. */
static int batch_error_kind(PGconn *conn, const PGresult *res, bool unique_is_conflict)
{
	if (store_pg_connection_lost(conn, res))
		return KOBO_ECONNLOST;
	if (sqlstate_is(res, "40P01") || sqlstate_is(res, "40001"))
		return KOBO_ECONFLICT;
	/* A lock or statement timeout (see "Timeouts"): the batch gave up
	 * waiting, nothing is committed, a re-run may find the row free. */
	if (sqlstate_is(res, "55P03") || sqlstate_is(res, "57014"))
		return KOBO_ECONFLICT;
	if (unique_is_conflict && sqlstate_is(res, "23505"))
		return KOBO_ECONFLICT;
	return KOBO_ESTORE;
}

/* ---- The schema, and the writer's statements. ---- */

static int schema_name(char *out, size_t size, uint32_t shard)
{
	int n = snprintf(out, size, "kobo_shard_%" PRIu32, shard);
	return n > 0 && (size_t)n < size ? KOBO_OK : KOBO_EINVAL;
}

static int prepare_writer(PGconn *conn)
{
	const char *names[SQL_WRITER_COUNT];
	const char *sqls[SQL_WRITER_COUNT];
	for (size_t i = 0; i < SQL_WRITER_COUNT; i++) {
		names[i] = writer_sql[i].name;
		sqls[i] = writer_sql[i].sql;
	}
	return store_pg_prepare_all(conn, names, sqls, SQL_WRITER_COUNT);
}

/* ---- Which shard a database holds. ---- */

/* host:port/dbname of conn, for messages: never the password. */
static void describe_database(PGconn *conn, char *out, size_t size)
{
	const char *host = PQhost(conn), *port = PQport(conn), *db = PQdb(conn);
	snprintf(out, size, "%s:%s/%s", host != NULL ? host : "?",
	         port != NULL ? port : "?", db != NULL ? db : "?");
}

static int refuse(PGconn *conn, uint32_t shard, const char *format, ...)
	__attribute__((format(printf, 3, 4)));

/* A list of URLs that does not match the databases: one sentence to
 * stderr (kobod and `kobo audit` print it as is) and one log line. */
static int refuse(PGconn *conn, uint32_t shard, const char *format, ...)
{
	char where[256], reason[768], escaped[1024];
	va_list args;

	describe_database(conn, where, sizeof where);
	va_start(args, format);
	vsnprintf(reason, sizeof reason, format, args);
	va_end(args);
	fprintf(stderr, "kobo: PostgreSQL shard %" PRIu32 " (%s): %s\n", shard, where,
	        reason);
	kobo_json_escape(escaped, sizeof escaped, reason);
	kobo_log(KOBO_LOG_ERROR, "store_pg_shard_mismatch",
	         "\"shard\":%" PRIu32 ",\"message\":\"%s\"", shard, escaped);
	return KOBO_EINVAL;
}

/* Reads meta and checks it belongs to this build and this shard, and, when
 * shard_count > 0, to a deployment of that many shards (0 recorded: not yet
 * known, accepted). */
static int check_meta(PGconn *conn, uint32_t shard, uint32_t shard_count,
                      long oldest_version)
{
	PGresult *res = PQexec(conn, "SELECT schema_version, shard_index, shard_count"
	                             " FROM meta WHERE id = 1");
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		store_pg_log_error("store_pg_meta_unreadable", conn, res);
		PQclear(res);
		return KOBO_ESTORE;
	}
	long version = strtol(PQgetvalue(res, 0, 0), NULL, 10);
	long index = strtol(PQgetvalue(res, 0, 1), NULL, 10);
	long count = strtol(PQgetvalue(res, 0, 2), NULL, 10);
	PQclear(res);
	if (version < oldest_version || version > PG_SCHEMA_VERSION) {
		kobo_log(KOBO_LOG_ERROR, "store_pg_schema_version",
		         "\"message\":\"the shard's schema version is %ld; this build "
		         "reads versions %ld to %d\"", version, oldest_version,
		         PG_SCHEMA_VERSION);
		return KOBO_ESTORE;
	}
	if (index != (long)shard)
		return refuse(conn, shard, "schema kobo_shard_%" PRIu32 " records shard %ld: "
		              "is the --postgres list in shard order?", shard, index);
	if (shard_count > 0 && count != 0 && count != (long)shard_count)
		return refuse(conn, shard, "this database holds shard %ld of a deployment "
		              "of %ld shards, but %" PRIu32 " URLs were given: give every "
		              "shard's URL, in shard order (resharding is not supported)",
		              index, count, shard_count);
	return KOBO_OK;
}

/* The Kobo shards one database holds: schema kobo_shard_<N> with a meta
 * table, and what that meta records. */
typedef struct pg_census {
	size_t count;
	struct {
		long schema;      /* the N of kobo_shard_<N> */
		long index;       /* meta.shard_index */
		long shard_count; /* meta.shard_count, 0 if not recorded */
		long long commit_seq; /* meta.commit_seq: > 0 once it committed */
	} shards[PG_CENSUS_SHARDS_MAX];
} pg_census;

static int read_census(PGconn *conn, pg_census *census)
{
	PGresult *res = PQexec(conn,
		"SELECT substr(n.nspname, 12)::bigint FROM pg_namespace n"
		" JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'meta'"
		" WHERE n.nspname ~ '^kobo_shard_[0-9]{1,9}$' ORDER BY 1"
		" LIMIT 64");
	_Static_assert(PG_CENSUS_SHARDS_MAX == 64, "the LIMIT above");
	census->count = 0;
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		store_pg_log_error("store_pg_census_failed", conn, res);
		PQclear(res);
		return KOBO_ESTORE;
	}
	for (int row = 0; row < PQntuples(res); row++) {
		long schema = (long)store_pg_col_int(res, row, 0);
		char sql[160];
		snprintf(sql, sizeof sql, "SELECT shard_index, shard_count, commit_seq FROM "
		         "kobo_shard_%ld.meta WHERE id = 1", schema);
		PGresult *meta = PQexec(conn, sql);
		if (PQresultStatus(meta) != PGRES_TUPLES_OK) {
			store_pg_log_error("store_pg_census_failed", conn, meta);
			PQclear(meta);
			PQclear(res);
			return KOBO_ESTORE;
		}
		if (PQntuples(meta) == 1) {
			census->shards[census->count].schema = schema;
			census->shards[census->count].index = (long)store_pg_col_int(meta, 0, 0);
			census->shards[census->count].shard_count =
				(long)store_pg_col_int(meta, 0, 1);
			census->shards[census->count].commit_seq =
				(long long)store_pg_col_int(meta, 0, 2);
			census->count++;
		}
		PQclear(meta);
	}
	PQclear(res);
	return KOBO_OK;
}

/* "shard 1 of 2, shard 3 of 4" */
static void describe_census(const pg_census *census, char *out, size_t size)
{
	size_t n = 0;
	out[0] = '\0';
	for (size_t i = 0; i < census->count && n < size; i++) {
		int w = census->shards[i].shard_count > 0
			? snprintf(out + n, size - n, "%sshard %ld of %ld", i ? ", " : "",
			           census->shards[i].index, census->shards[i].shard_count)
			: snprintf(out + n, size - n, "%sshard %ld", i ? ", " : "",
			           census->shards[i].index);
		if (w < 0)
			break;
		n += (size_t)w;
	}
}

/* Before opening (read_only) or creating shard `shard` of a deployment of
 * shard_count shards in this database: refuses what "Which shard a
 * database holds" (top of the file) lists. The shard's own meta, when
 * there, is checked by check_meta. */
static int check_census(PGconn *conn, uint32_t shard, uint32_t shard_count,
                        bool read_only)
{
	pg_census census;
	char held[512];
	int rc = read_census(conn, &census);
	if (rc != KOBO_OK)
		return rc;
	for (size_t i = 0; i < census.count; i++)
		if (census.shards[i].schema == (long)shard)
			return KOBO_OK;
	describe_census(&census, held, sizeof held);
	for (size_t i = 0; i < census.count; i++) {
		long count = census.shards[i].shard_count;
		if (count != 0 && count != (long)shard_count)
			return refuse(conn, shard, "this database holds %s, but %" PRIu32
			              " URLs were given: give every shard's URL, in shard "
			              "order (resharding is not supported)", held, shard_count);
	}
	for (size_t i = 0; i < census.count; i++) {
		if (census.shards[i].index > (long)shard)
			return refuse(conn, shard, "this database holds %s, not shard %" PRIu32
			              ": is the --postgres list in shard order?", held, shard);
	}
	if (read_only)
		return refuse(conn, shard, "this database holds %s",
		              census.count ? held : "no Kobo shard");
	for (size_t i = 0; i < census.count; i++) {
		if (census.shards[i].commit_seq > 0)
			return refuse(conn, shard, "this database holds %s, which has served "
			              "writes, but no shard %" PRIu32 ": kobod creates every "
			              "shard at its first start, so this URL is not shard %"
			              PRIu32 "'s database", held, shard, shard);
	}
	return KOBO_OK;
}

/* Brings an older schema to PG_SCHEMA_VERSION (inside create_schema's
 * transaction, under its lock). */
static int migrate(PGconn *conn)
{
	PGresult *res = PQexec(conn, "SELECT schema_version FROM meta WHERE id = 1");
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		store_pg_log_error("store_pg_meta_unreadable", conn, res);
		PQclear(res);
		return KOBO_ESTORE;
	}
	int64_t version = store_pg_col_int(res, 0, 0);
	PQclear(res);
	if (version == 1) {
		if (store_pg_exec(conn, migrate_v2_sql, "store_pg_migration_failed") != KOBO_OK)
			return KOBO_ESTORE;
		kobo_log(KOBO_LOG_WARN, "store_pg_migrated",
		         "\"from\":1,\"to\":2,\"message\":\"accounts and transfers gained "
		         "a version column\"");
		version = 2;
	}
	if (version == 2) {
		if (store_pg_exec(conn, migrate_v3_sql, "store_pg_migration_failed") != KOBO_OK)
			return KOBO_ESTORE;
		kobo_log(KOBO_LOG_WARN, "store_pg_migrated",
		         "\"from\":2,\"to\":3,\"message\":\"accounts and transfers gained "
		         "created_by (''), api_keys is new\"");
		version = 3;
	}
	if (version == 3) {
		if (store_pg_exec(conn, migrate_v4_sql, "store_pg_migration_failed") != KOBO_OK)
			return KOBO_ESTORE;
		kobo_log(KOBO_LOG_WARN, "store_pg_migrated",
		         "\"from\":3,\"to\":4,\"message\":\"events and transfers_request "
		         "are new\"");
		version = 4;
	}
	if (version == 4) {
		if (store_pg_exec(conn, migrate_v5_sql, "store_pg_migration_failed") != KOBO_OK)
			return KOBO_ESTORE;
		kobo_log(KOBO_LOG_WARN, "store_pg_migrated",
		         "\"from\":4,\"to\":5,\"message\":\"transfers gained "
		         "trace_id ('')\"");
	}
	return KOBO_OK;
}

/* true when the shard's schema exists at this build's version and records
 * everything create_schema would write (its index, and the shard count
 * when one is given): the open then only reads. It must: the DDL's IF NOT
 * EXISTS still takes table locks, and the meta insert waits on the meta
 * row, so an open that ran them while another node's batch held the meta
 * row and then asked for its table locks deadlocked (40P01), and the
 * starting kobod exited. Read without a transaction, outside the
 * advisory lock: a schema that is current stays current. */
static bool schema_is_current(PGconn *conn, uint32_t shard_count)
{
	PGresult *res = PQexec(conn, "SELECT schema_version, shard_count FROM meta"
	                             " WHERE id = 1");
	bool current = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
	               store_pg_col_int(res, 0, 0) == PG_SCHEMA_VERSION &&
	               (shard_count == 0 || store_pg_col_int(res, 0, 1) != 0);
	PQclear(res);
	return current;
}

/* Creates the shard's schema if needed, under a transaction-scoped
 * advisory lock on the whole database, so that nodes starting together
 * create it once and the census check cannot race a creation. */
static int create_schema(PGconn *conn, const char *schema, uint32_t shard,
                         uint32_t shard_count)
{
	char sql[PG_SQL_BYTES_MAX * 2];
	int n, rc = KOBO_ESTORE;

	n = snprintf(sql, sizeof sql, "BEGIN; SELECT pg_advisory_xact_lock(%d, %d);",
	             PG_ADVISORY_KEY, PG_ADVISORY_DATABASE);
	if (store_pg_exec(conn, sql, "store_pg_schema_lock_failed") != KOBO_OK)
		return KOBO_ESTORE;
	if (shard_count > 0 && (rc = check_census(conn, shard, shard_count, false)) != KOBO_OK)
		goto fail;
	rc = KOBO_ESTORE;
	n = snprintf(sql, sizeof sql, schema_sql, schema, schema);
	if (n <= 0 || (size_t)n >= sizeof sql ||
	    store_pg_exec(conn, sql, "store_pg_schema_failed") != KOBO_OK)
		goto fail;
	n = snprintf(sql, sizeof sql,
	             "INSERT INTO meta (id, schema_version, shard_index, shard_count,"
	             " commit_seq, transfer_seq) VALUES (1, %d, %" PRIu32 ", %" PRIu32
	             ", 0, 0) ON CONFLICT (id) DO NOTHING", PG_SCHEMA_VERSION, shard,
	             shard_count);
	if (store_pg_exec(conn, sql, "store_pg_meta_failed") != KOBO_OK)
		goto fail;
	if ((rc = migrate(conn)) != KOBO_OK ||
	    (rc = check_meta(conn, shard, shard_count, PG_SCHEMA_VERSION)) != KOBO_OK)
		goto fail;
	rc = KOBO_ESTORE;
	/* A shard created by kobo_store_open (no count) learns it now. */
	n = snprintf(sql, sizeof sql, "UPDATE meta SET shard_count = %" PRIu32
	             " WHERE id = 1 AND shard_count = 0", shard_count);
	if (shard_count > 0 && store_pg_exec(conn, sql, "store_pg_meta_failed") != KOBO_OK)
		goto fail;
	if (store_pg_exec(conn, "COMMIT", "store_pg_schema_commit_failed") != KOBO_OK)
		return KOBO_ESTORE;
	return KOBO_OK;
fail:
	(void)store_pg_exec(conn, "ROLLBACK", "store_pg_rollback_failed");
	return rc;
}

/* ---- The write side. ---- */

static void clear_steps(pg_store *s)
{
	for (size_t i = 0; i < s->step_count; i++) {
		PQclear(s->step_res[i]);
		s->step_res[i] = NULL;
	}
	s->step_count = 0;
}

static void free_loaded(pg_store *s)
{
	for (size_t i = 0; i < s->loaded_count; i++)
		PQclear(s->loaded[i]);
	s->loaded_count = 0;
	store_pg_pool_free(&s->metadata);
	idset_clear(&s->looked_up_transfers);
	idset_clear(&s->looked_up_accounts);
	s->read_transfers.count = 0;
	s->read_accounts.count = 0;
}

/* Drops the writer's connection after a lost link, so the next begin()
 * connects afresh (a multi-host URL then finds the current primary). */
static void drop_connection(pg_store *s)
{
	clear_steps(s);
	PQfinish(s->conn);
	s->conn = NULL;
}

/* Ends a pipeline whose results nobody will read (a batch abandoned after
 * write()): Sync, read and drop everything, leave pipeline mode. A link
 * that cannot do that is dropped. */
static void discard_pipeline(pg_store *s)
{
	if (s->conn == NULL || PQpipelineStatus(s->conn) == PQ_PIPELINE_OFF) {
		clear_steps(s);
		return;
	}
	bool ok = PQstatus(s->conn) == CONNECTION_OK && PQpipelineSync(s->conn) == 1;
	if (ok)
		s->round_trips++;
	while (ok) {
		PGresult *res = PQgetResult(s->conn);
		if (res == NULL) {
			/* Between two statements' results; a dead link stays NULL. */
			if (PQstatus(s->conn) != CONNECTION_OK)
				ok = false;
			continue;
		}
		bool synced = PQresultStatus(res) == PGRES_PIPELINE_SYNC;
		PQclear(res);
		if (synced)
			break;
	}
	if (!ok || !PQexitPipelineMode(s->conn))
		drop_connection(s);
	clear_steps(s);
}

/* Abandons the open transaction if the link still lives. */
static void rollback_transaction(pg_store *s)
{
	discard_pipeline(s);
	if (s->conn != NULL && PQstatus(s->conn) == CONNECTION_OK &&
	    PQtransactionStatus(s->conn) != PQTRANS_IDLE) {
		s->round_trips++;
		(void)store_pg_exec(s->conn, "ROLLBACK", "store_pg_rollback_failed");
	}
}

static void end_batch(pg_store *s, pg_state state)
{
	rollback_transaction(s);
	s->state = state;
}

/* IN_BATCH → FAILED: what this node believes and what the database holds
 * may disagree from here on. */
static int store_fail(pg_store *s, int kind)
{
	end_batch(s, PG_FAILED);
	atomic_store(&s->failed, true);
	kobo_log(KOBO_LOG_ERROR, "store_failed_sticky",
	         "\"shard\":%" PRIu32 ",\"message\":\"the shard store refuses "
	         "writes until reopened\"", s->shard);
	return kind;
}

/* A failure the batch can be re-run after (ECONFLICT, ECONNLOST), or a
 * failed read: the batch is abandoned, the store stays healthy. */
static int store_abandon(pg_store *s, int kind)
{
	if (kind == KOBO_ECONNLOST)
		drop_connection(s);
	end_batch(s, PG_IDLE);
	return kind;
}

static int64_t mono_ms(void)
{
	return kobo_monotonic_us() / 1000;
}

/* Reconnects a broken writer connection (bounded by connect_timeout), at
 * most once per backoff step: while the server is away, a batch is
 * answered KOBO_ECONNLOST at once instead of waiting on a connect. */
static int ensure_connection(pg_store *s)
{
	if (s->conn != NULL && PQstatus(s->conn) == CONNECTION_OK)
		return KOBO_OK;
	if (s->conn != NULL)
		drop_connection(s);
	if (mono_ms() < s->reconnect_at_ms)
		return KOBO_ECONNLOST;
	int rc = store_pg_connect(s->url, s->schema, &s->conn);
	if (rc == KOBO_OK && (rc = prepare_writer(s->conn)) != KOBO_OK) {
		PQfinish(s->conn);
		s->conn = NULL;
	}
	if (rc != KOBO_OK) {
		s->reconnect_at_ms = mono_ms() + s->reconnect_backoff_ms;
		s->reconnect_backoff_ms = s->reconnect_backoff_ms * 2 > PG_RECONNECT_BACKOFF_MAX_MS
			? PG_RECONNECT_BACKOFF_MAX_MS : s->reconnect_backoff_ms * 2;
		return rc == KOBO_ENOMEM ? rc : KOBO_ECONNLOST;
	}
	s->reconnect_backoff_ms = PG_RECONNECT_BACKOFF_MIN_MS;
	kobo_log(KOBO_LOG_INFO, "store_pg_writer_connected", "\"shard\":%" PRIu32, s->shard);
	return KOBO_OK;
}

/* ---- Pipelines (see "Round trips"). ---- */

/* Queues one statement on the open pipeline (entering pipeline mode if
 * needed). libpq copies the parameters: the caller's buffers may go. false
 * when libpq refused it (the link is gone, or memory). */
static bool step_send(pg_store *s, int which, int nparams, const char *const *params,
                      ExecStatusType want, bool unique_is_conflict, bool sticky)
{
	int sent;

	kobo_assert(s->step_count < PG_STEPS_MAX);
	if (PQpipelineStatus(s->conn) == PQ_PIPELINE_OFF && !PQenterPipelineMode(s->conn))
		return false;
	if (which == PG_STEP_BEGIN || which == PG_STEP_COMMIT)
		sent = PQsendQueryParams(s->conn, which == PG_STEP_BEGIN ? "BEGIN" : "COMMIT",
		                         0, NULL, NULL, NULL, NULL, 0);
	else
		sent = PQsendQueryPrepared(s->conn, writer_sql[which].name, nparams, params,
		                           NULL, NULL, 0);
	if (!sent) {
		store_pg_log_error("store_pg_send_failed", s->conn, NULL);
		return false;
	}
	s->steps[s->step_count] = (pg_step){which, want, unique_is_conflict, sticky};
	s->step_res[s->step_count] = NULL;
	s->step_count++;
	return true;
}

/* Queues BEGIN and the batch's settings and clock if this batch has not
 * sent them yet: they ride in front of its first pipeline. */
static bool steps_begin(pg_store *s)
{
	if (s->begun)
		return true;
	s->begun = true;
	return step_send(s, PG_STEP_BEGIN, 0, NULL, PGRES_COMMAND_OK, false, false) &&
	       step_send(s, SQL_BATCH_SETTINGS, 0, NULL, PGRES_TUPLES_OK, false, false);
}

/* How a synced pipeline went. */
typedef struct pg_outcome {
	size_t failed; /* the first step the server refused; step_count if none */
	bool lost;     /* the link broke before every result was read */
} pg_outcome;

/* Sends Sync (one round trip) and reads one result per queued step into
 * step_res, then leaves pipeline mode. A step after a refused one reads
 * PGRES_PIPELINE_ABORTED: the server skipped it. */
static pg_outcome pipeline_sync(pg_store *s)
{
	pg_outcome out = {s->step_count, false};

	if (!PQpipelineSync(s->conn)) {
		store_pg_log_error("store_pg_send_failed", s->conn, NULL);
		out.lost = true;
		return out;
	}
	s->round_trips++;
	for (size_t i = 0; i < s->step_count; i++) {
		PGresult *res = PQgetResult(s->conn);
		if (res == NULL) {
			out.lost = true;
			return out;
		}
		s->step_res[i] = res;
		ExecStatusType st = PQresultStatus(res);
		/* A link that broke is not a refusal: whatever was not yet
		 * answered may or may not have run. */
		if (st == PGRES_FATAL_ERROR && store_pg_connection_lost(s->conn, res)) {
			out.lost = true;
			return out;
		}
		if (st != s->steps[i].want && st != PGRES_PIPELINE_ABORTED &&
		    out.failed == s->step_count)
			out.failed = i;
		/* Each statement's results end with a NULL. */
		PGresult *end = PQgetResult(s->conn);
		if (end != NULL) {
			PQclear(end);
			out.lost = true;
			return out;
		}
	}
	PGresult *sync = PQgetResult(s->conn);
	bool synced = PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
	PQclear(sync);
	if (!synced || !PQexitPipelineMode(s->conn))
		out.lost = true;
	return out;
}

/* The outcome of a pipeline without COMMIT: KOBO_OK, or the batch ended
 * as the failure's kind says (the link lost: ECONNLOST, nothing was
 * committed; a sticky step: the store fails). */
static int pipeline_result(pg_store *s, pg_outcome out)
{
	if (out.failed < s->step_count) {
		const pg_step *step = &s->steps[out.failed];
		PGresult *res = s->step_res[out.failed];
		int kind = batch_error_kind(s->conn, res, step->unique_is_conflict);
		/* A unique violation on an id another node inserted first, or a
		 * lock timeout, is an expected race answered by re-running the
		 * batch: not an error. */
		store_pg_log_error_at(kind == KOBO_ECONFLICT ? KOBO_LOG_INFO : KOBO_LOG_ERROR,
		                      "store_pg_statement_failed", s->conn, res);
		if (out.lost)
			drop_connection(s);
		if (kind == KOBO_ESTORE && step->sticky)
			return store_fail(s, kind);
		return store_abandon(s, out.lost ? KOBO_ECONNLOST : kind);
	}
	if (out.lost) {
		store_pg_log_error("store_pg_link_lost", s->conn, NULL);
		return store_abandon(s, KOBO_ECONNLOST);
	}
	/* The batch's clock, from the settings that follow BEGIN. */
	for (size_t i = 0; i < s->step_count; i++)
		if (s->steps[i].which == SQL_BATCH_SETTINGS)
			s->batch_now_ms = store_pg_col_int(s->step_res[i], 0, 2);
	return KOBO_OK;
}

/* One round trip: BEGIN and the batch's settings if not sent yet, then
 * statement `which` (a load; -1: none) with params, then Sync. On KOBO_OK
 * the steps' results are in step_res for the caller to take and clear.
 * A batch's first pipeline that finds its connection dead (the server
 * restarted since the last batch) reconnects and runs once more: nothing
 * had been done. */
static int run_pipeline(pg_store *s, int which, const char *const *params)
{
	for (int attempt = 0;; attempt++) {
		bool first = !s->begun;
		bool sent = steps_begin(s) &&
		            (which < 0 || step_send(s, which, 1, params, PGRES_TUPLES_OK,
		                                    false, false));
		pg_outcome out = sent ? pipeline_sync(s) : (pg_outcome){s->step_count, true};
		if (first && attempt == 0 && out.lost && out.failed == s->step_count) {
			drop_connection(s);
			s->reconnect_at_ms = 0;
			s->begun = false;
			int rc = ensure_connection(s);
			if (rc != KOBO_OK)
				return store_abandon(s, rc);
			continue;
		}
		int rc = pipeline_result(s, out);
		if (rc != KOBO_OK)
			clear_steps(s);
		return rc;
	}
}

/* One round trip for a batch that has sent nothing yet: BEGIN and its
 * settings (begin() sends nothing; the first load, or now(), does). */
static int ensure_begun(pg_store *s)
{
	if (s->begun)
		return KOBO_OK;
	int rc = run_pipeline(s, -1, NULL);
	clear_steps(s);
	return rc;
}

static int store_begin(kobo_store *store)
{
	pg_store *s = to_store(store);

	if (s->read_only)
		return KOBO_EINVAL;
	if (atomic_load(&s->failed))
		return KOBO_EFAILED;
	kobo_assert(s->state == PG_IDLE);
	free_loaded(s);
	clear_steps(s);
	s->begun = false;
	s->meta_queued = false;
	/* The probe says the primary is away: answer at once (503). */
	if (atomic_load(&s->link_down))
		return KOBO_ECONNLOST;
	int rc = ensure_connection(s);
	if (rc != KOBO_OK)
		return rc;
	/* BEGIN goes out with the first load (see "Round trips"). */
	s->state = PG_IN_BATCH;
	return KOBO_OK;
}

/* ids as one text[] literal into cols[0]. */
static const char *ids_array(pg_store *s, const char *const *ids, size_t count)
{
	pg_buf *b = &s->cols[0];
	buf_reset(b);
	for (size_t i = 0; i < count; i++)
		arr_str(b, ids[i]);
	buf_put(b, "}", 1);
	return b->oom ? NULL : b->data;
}

/* Runs a locking load (after BEGIN and the settings if this is the
 * batch's first pipeline) and keeps its result for the batch. */
static PGresult *load_rows(pg_store *s, int which, const char *const *ids,
                           size_t count, int *rc)
{
	kobo_assert(s->state == PG_IN_BATCH);
	if (s->loaded_count == PG_LOADED_MAX) {
		*rc = store_abandon(s, KOBO_EFULL);
		return NULL;
	}
	const char *array = ids_array(s, ids, count);
	if (array == NULL) {
		*rc = store_abandon(s, KOBO_ENOMEM);
		return NULL;
	}
	pg_idset *set = which == SQL_LOAD_TRANSFERS ? &s->looked_up_transfers :
	                                              &s->looked_up_accounts;
	for (size_t i = 0; i < count; i++)
		idset_add(set, ids[i]);
	const char *params[1] = {array};
	bool transfers = which == SQL_LOAD_TRANSFERS;
	if (s->optimistic)
		which = transfers ? SQL_PEEK_TRANSFERS : SQL_PEEK_ACCOUNTS;
	if ((*rc = run_pipeline(s, which, params)) != KOBO_OK)
		return NULL;
	/* The load is the last step: keep its result for the batch. */
	PGresult *res = s->step_res[s->step_count - 1];
	s->step_res[s->step_count - 1] = NULL;
	clear_steps(s);
	s->loaded[s->loaded_count++] = res;
	/* The row's id and, last, its version. */
	pg_versions *read = transfers ? &s->read_transfers : &s->read_accounts;
	int id_col = transfers ? 1 : 0, version_col = PQnfields(res) - 1;
	for (int row = 0; row < PQntuples(res); row++) {
		if (versions_add(read, PQgetvalue(res, row, id_col),
		                 store_pg_col_int(res, row, version_col)) != KOBO_OK) {
			*rc = store_abandon(s, KOBO_ENOMEM);
			return NULL;
		}
	}
	return res;
}

static int store_load_transfers(kobo_store *store, const char *const *ids,
                                size_t count, kobo_store_transfer_fn each, void *ctx)
{
	pg_store *s = to_store(store);
	int rc;

	if (count == 0)
		return ensure_begun(s);
	PGresult *res = load_rows(s, SQL_LOAD_TRANSFERS, ids, count, &rc);
	if (res == NULL)
		return rc;
	for (int row = 0; row < PQntuples(res); row++) {
		kobo_transfer transfer;
		int64_t seq;
		if (store_pg_transfer_from_row(res, row, &s->metadata, &transfer, &seq) != KOBO_OK) {
			kobo_log(KOBO_LOG_ERROR, "store_pg_corrupt_row",
			         "\"table\":\"transfers\",\"shard\":%" PRIu32, s->shard);
			return store_abandon(s, KOBO_ESTORE);
		}
		rc = each(ctx, &transfer, seq);
		if (rc != 0)
			return rc;
	}
	return KOBO_OK;
}

static int store_load_accounts(kobo_store *store, const char *const *ids,
                               size_t count, kobo_store_account_fn each, void *ctx)
{
	pg_store *s = to_store(store);
	int rc;

	if (count == 0)
		return ensure_begun(s);
	PGresult *res = load_rows(s, SQL_LOAD_ACCOUNTS, ids, count, &rc);
	if (res == NULL)
		return rc;
	for (int row = 0; row < PQntuples(res); row++) {
		kobo_account account;
		if (store_pg_account_from_row(res, row, &s->metadata, &account) != KOBO_OK) {
			kobo_log(KOBO_LOG_ERROR, "store_pg_corrupt_row",
			         "\"table\":\"accounts\",\"shard\":%" PRIu32, s->shard);
			return store_abandon(s, KOBO_ESTORE);
		}
		rc = each(ctx, &account);
		if (rc != 0)
			return rc;
	}
	return KOBO_OK;
}

/* The batch's time: the database's clock read with BEGIN (see "The
 * batch's clock"); outside a batch, the database's clock now. */
static int store_now(kobo_store *store, int64_t local_now_ms, int64_t *now_ms)
{
	pg_store *s = to_store(store);
	int rc;

	(void)local_now_ms;
	if (s->state == PG_IN_BATCH) {
		if ((rc = ensure_begun(s)) != KOBO_OK)
			return rc;
		*now_ms = s->batch_now_ms;
		return KOBO_OK;
	}
	if (atomic_load(&s->failed))
		return KOBO_EFAILED;
	if (s->read_only || ensure_connection(s) != KOBO_OK)
		return KOBO_ESTORE;
	s->round_trips++;
	PGresult *res = PQexecPrepared(s->conn, writer_sql[SQL_NOW].name, 0, NULL, NULL,
	                               NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		store_pg_log_error("store_pg_now_failed", s->conn, res);
		PQclear(res);
		return KOBO_ESTORE;
	}
	*now_ms = store_pg_col_int(res, 0, 0);
	PQclear(res);
	return KOBO_OK;
}

/* Closes every column array and hands out the parameter pointers. */
static int finish_arrays(pg_store *s, size_t columns, const char **params)
{
	for (size_t i = 0; i < columns; i++) {
		buf_put(&s->cols[i], "}", 1);
		if (s->cols[i].oom)
			return KOBO_ENOMEM;
		params[i] = s->cols[i].data;
	}
	return KOBO_OK;
}

static void reset_arrays(pg_store *s, size_t columns)
{
	for (size_t i = 0; i < columns; i++)
		buf_reset(&s->cols[i]);
}

/* The write steps below queue their statement and return KOBO_OK, or
 * KOBO_ECONNLOST when libpq refused it, or KOBO_ENOMEM; the server's
 * answers are read with COMMIT's (store_commit). */
static int send_step(pg_store *s, int which, int nparams, const char *const *params,
                     bool unique_is_conflict)
{
	return step_send(s, which, nparams, params, PGRES_COMMAND_OK, unique_is_conflict,
	                 true) ? KOBO_OK : KOBO_ECONNLOST;
}

/* The version an update expects: the one the batch read (and that row is
 * now written), or NULL when the batch did not read the row. */
static void arr_version(pg_buf *b, pg_version *read)
{
	if (read == NULL) {
		arr_str(b, NULL);
		return;
	}
	read->written = true;
	arr_int(b, read->version);
}

/* What an update whose row moved on since the batch read it raises: a
 * conflict to re-run in optimistic mode; under the pessimistic row locks
 * it cannot happen, so there it means the store's picture is wrong. */
static const char *conflict_state(const pg_store *s)
{
	return s->optimistic ? "40001" : PG_ROWS_SQLSTATE;
}

/* Optimistic mode: queues the check that every row the batch read and
 * does not write is as it was read (see "Concurrency"). */
static int check_reads(pg_store *s)
{
	const char *params[5];
	char rows_text[32];
	size_t rows = 0;
	pg_versions *sets[2] = {&s->read_accounts, &s->read_transfers};

	reset_arrays(s, 4);
	for (size_t k = 0; k < 2; k++) {
		for (size_t i = 0; i < sets[k]->count; i++) {
			const pg_version *v = &sets[k]->rows[i];
			if (v->written)
				continue;
			rows++;
			arr_str(&s->cols[2 * k], v->id);
			arr_int(&s->cols[2 * k + 1], v->version);
		}
	}
	if (rows == 0)
		return KOBO_OK;
	if (finish_arrays(s, 4, params) != KOBO_OK)
		return KOBO_ENOMEM;
	snprintf(rows_text, sizeof rows_text, "%zu", rows);
	params[4] = rows_text;
	return step_send(s, SQL_CHECK_READS, 5, params, PGRES_TUPLES_OK, false, false)
		? KOBO_OK : KOBO_ECONNLOST;
}

/* The updates (not is_new) among n changes, sorted by id into s->order;
 * how many, or SIZE_MAX when memory ran out. */
static size_t order_updates(pg_store *s, size_t n, const char *(*id_of)(const void *, size_t),
                            const void *changes)
{
	if (n > s->order_cap) {
		void *order = realloc(s->order, n * sizeof *s->order);
		if (order == NULL)
			return SIZE_MAX;
		s->order = order;
		s->order_cap = n;
	}
	size_t count = 0;
	for (size_t i = 0; i < n; i++) {
		const char *id = id_of(changes, i);
		if (id != NULL)
			s->order[count++] = (pg_order){id, i};
	}
	if (count > 1)
		qsort(s->order, count, sizeof *s->order, order_compare);
	return count;
}

static const char *updated_account_id(const void *changes, size_t i)
{
	const kobo_account_change *c = &((const kobo_account_change *)changes)[i];
	return c->is_new ? NULL : c->account->id;
}

static const char *updated_transfer_id(const void *changes, size_t i)
{
	const kobo_transfer_change *c = &((const kobo_transfer_change *)changes)[i];
	return c->is_new ? NULL : c->transfer->id;
}

static int write_accounts(pg_store *s, const kobo_account_change *changes,
                          size_t count, bool is_new)
{
	const char *params[10];
	char rows_text[32];
	size_t rows = 0;
	size_t updates = 0;

	if (!is_new && (updates = order_updates(s, count, updated_account_id, changes)) == SIZE_MAX)
		return KOBO_ENOMEM;
	reset_arrays(s, is_new ? 9 : 5);
	for (size_t k = 0; k < (is_new ? count : updates); k++) {
		size_t i = is_new ? k : s->order[k].at;
		const kobo_account *a = changes[i].account;
		if (changes[i].is_new != is_new)
			continue;
		rows++;
		if (is_new) {
			arr_str(&s->cols[0], a->id);
			arr_str(&s->cols[1], a->currency);
			arr_bool(&s->cols[2], a->allow_negative);
			arr_int(&s->cols[3], a->posted);
			arr_int(&s->cols[4], a->pending_out);
			arr_int(&s->cols[5], a->pending_in);
			arr_metadata(&s->cols[6], a->metadata, a->metadata_len);
			arr_int(&s->cols[7], a->created_at_ms);
			arr_str(&s->cols[8], a->created_by);
		} else {
			arr_str(&s->cols[0], a->id);
			arr_int(&s->cols[1], a->posted);
			arr_int(&s->cols[2], a->pending_out);
			arr_int(&s->cols[3], a->pending_in);
			arr_version(&s->cols[4], versions_find(&s->read_accounts, a->id));
		}
	}
	if (rows == 0)
		return KOBO_OK;
	if (finish_arrays(s, is_new ? 9 : 5, is_new ? params : params + 1) != KOBO_OK)
		return KOBO_ENOMEM;
	if (!is_new) {
		/* $1..$4 the rows, $5 how many, $6 their versions, $7 the SQLSTATE
		 * of a version that moved on. */
		const char *args[7] = {params[1], params[2], params[3], params[4], rows_text,
		                       params[5], conflict_state(s)};
		snprintf(rows_text, sizeof rows_text, "%zu", rows);
		return step_send(s, SQL_UPDATE_ACCOUNTS, 7, args, PGRES_TUPLES_OK, false,
		                 true) ? KOBO_OK : KOBO_ECONNLOST;
	}
	/* A unique violation is a race only if the batch looked every new id
	 * up and found nothing (see "The ids a batch asked to load"). */
	bool race_possible = true;
	for (size_t i = 0; race_possible && i < count; i++) {
		if (changes[i].is_new &&
		    !idset_has(&s->looked_up_accounts, changes[i].account->id))
			race_possible = false;
	}
	return send_step(s, SQL_INSERT_ACCOUNTS, 9, params, race_possible);
}

/* Bumps meta: the commit sequence (the token) and room for `new_transfers`
 * seqs, which the transfer insert after it takes. sticky: a failure here
 * fails the store (write) or only the batch (a replay-only commit). */
static int send_bump_meta(pg_store *s, size_t new_transfers, bool sticky)
{
	char count[32];
	const char *params[1] = {count};

	kobo_assert(!s->meta_queued);
	snprintf(count, sizeof count, "%zu", new_transfers);
	if (!step_send(s, SQL_BUMP_META, 1, params, PGRES_TUPLES_OK, false, sticky))
		return KOBO_ECONNLOST;
	s->meta_queued = true;
	return KOBO_OK;
}

static int insert_transfers(pg_store *s, const kobo_transfer_change *changes,
                            size_t count, size_t rows)
{
	const char *params[PG_ARRAY_COLUMNS_MAX];
	char rows_text[32];

	if (rows == 0)
		return KOBO_OK;
	snprintf(rows_text, sizeof rows_text, "%zu", rows);
	reset_arrays(s, PG_ARRAY_COLUMNS_MAX - 1);
	/* In array order: ordinality fixes each one's seq. */
	for (size_t i = 0; i < count; i++) {
		const kobo_transfer *t = changes[i].transfer;
		if (!changes[i].is_new)
			continue;
		pg_buf *c = s->cols;
		arr_str(&c[0], t->id);
		arr_str(&c[1], t->from);
		arr_str(&c[2], t->to);
		arr_str(&c[3], t->currency);
		arr_int(&c[4], t->amount);
		arr_int(&c[5], t->posted_amount);
		arr_bool(&c[6], t->pending);
		arr_int(&c[7], (int64_t)t->timeout_seconds);
		arr_int(&c[8], t->expires_at_ms);
		arr_str(&c[9], kobo_transfer_status_name(t->status));
		arr_str(&c[10], kobo_void_reason_name(t->void_reason));
		arr_str(&c[11], t->error_code == KOBO_RESULT_CREATED ? NULL :
		                kobo_result_code_name(t->error_code));
		arr_metadata(&c[12], t->metadata, t->metadata_len);
		arr_str(&c[13], t->request_id);
		arr_int(&c[14], t->created_at_ms);
		arr_int(&c[15], t->updated_at_ms);
		arr_str(&c[16], kobo_leg_name(t->leg));
		arr_str(&c[17], t->clearing);
		arr_str(&c[18], kobo_saga_state_name(t->saga));
		arr_int(&c[19], t->saga_amount);
		arr_str(&c[20], kobo_void_reason_name(t->saga_reason));
		arr_str(&c[21], t->created_by);
		arr_str(&c[22], t->trace_id);
	}
	params[0] = rows_text;
	if (finish_arrays(s, PG_ARRAY_COLUMNS_MAX - 1, params + 1) != KOBO_OK)
		return KOBO_ENOMEM;
	/* A unique violation here is another node's insert of an id this
	 * batch looked up and did not find: re-run the batch, which then
	 * replays it (see "The ids a batch asked to load"). */
	bool race_possible = true;
	for (size_t i = 0; race_possible && i < count; i++) {
		if (changes[i].is_new &&
		    !idset_has(&s->looked_up_transfers, changes[i].transfer->id))
			race_possible = false;
	}
	return send_step(s, SQL_INSERT_TRANSFERS, PG_ARRAY_COLUMNS_MAX, params,
	                 race_possible);
}

static int update_transfers(pg_store *s, const kobo_transfer_change *changes,
                            size_t count)
{
	const char *params[12];
	char rows_text[32];
	size_t rows = 0;
	size_t updates = order_updates(s, count, updated_transfer_id, changes);

	if (updates == SIZE_MAX)
		return KOBO_ENOMEM;
	reset_arrays(s, 10);
	for (size_t k = 0; k < updates; k++) {
		size_t i = s->order[k].at;
		const kobo_transfer *t = changes[i].transfer;
		rows++;
		pg_buf *c = s->cols;
		arr_str(&c[0], t->id);
		arr_str(&c[1], kobo_transfer_status_name(t->status));
		arr_int(&c[2], t->posted_amount);
		arr_str(&c[3], kobo_void_reason_name(t->void_reason));
		arr_str(&c[4], t->error_code == KOBO_RESULT_CREATED ? NULL :
		               kobo_result_code_name(t->error_code));
		arr_int(&c[5], t->updated_at_ms);
		arr_str(&c[6], kobo_saga_state_name(t->saga));
		arr_int(&c[7], t->saga_amount);
		arr_str(&c[8], kobo_void_reason_name(t->saga_reason));
		arr_version(&c[9], versions_find(&s->read_transfers, t->id));
	}
	if (rows == 0)
		return KOBO_OK;
	if (finish_arrays(s, 10, params) != KOBO_OK)
		return KOBO_ENOMEM;
	/* $1..$9 the rows, $10 how many, $11 their versions, $12 the SQLSTATE
	 * of a version that moved on. */
	const char *version_array = params[9];
	snprintf(rows_text, sizeof rows_text, "%zu", rows);
	params[9] = rows_text;
	params[10] = version_array;
	params[11] = conflict_state(s);
	return step_send(s, SQL_UPDATE_TRANSFERS, 12, params, PGRES_TUPLES_OK, false,
	                 true) ? KOBO_OK : KOBO_ECONNLOST;
}

/* Queues the batch's writes on the pipeline COMMIT will close: nothing
 * is read back here, so a refusal by the server surfaces from commit(). */
static int store_write(kobo_store *store, const kobo_account_change *accounts,
                       size_t account_count, const kobo_transfer_change *transfers,
                       size_t transfer_count)
{
	pg_store *s = to_store(store);
	size_t new_transfers = 0;
	int rc;

	kobo_assert(s->state == PG_IN_BATCH);
	for (size_t i = 0; i < transfer_count; i++)
		new_transfers += transfers[i].is_new ? 1 : 0;
	if (s->meta_queued && new_transfers > 0) {
		/* A second write() in one batch: seqs went out with the first. */
		return store_fail(s, KOBO_EINVAL);
	}
	if (!steps_begin(s))
		return store_abandon(s, KOBO_ECONNLOST);
	if (s->step_count + 5 > PG_STEPS_MAX)
		return store_fail(s, KOBO_EINVAL);
	if ((rc = write_accounts(s, accounts, account_count, true)) != KOBO_OK ||
	    (rc = write_accounts(s, accounts, account_count, false)) != KOBO_OK ||
	    (!s->meta_queued &&
	     (rc = send_bump_meta(s, new_transfers, true)) != KOBO_OK) ||
	    (rc = insert_transfers(s, transfers, transfer_count, new_transfers)) != KOBO_OK ||
	    (rc = update_transfers(s, transfers, transfer_count)) != KOBO_OK) {
		if (rc == KOBO_ECONNLOST)
			return store_abandon(s, rc);
		return store_fail(s, KOBO_ESTORE);
	}
	return KOBO_OK;
}

/* Queues the batch's events on the same pipeline as its writes (one more
 * statement, no more round trips): 11 column arrays, set-based. */
static int store_write_events(kobo_store *store, const kobo_event *events,
                              size_t count)
{
	pg_store *s = to_store(store);
	const char *params[11];

	kobo_assert(s->state == PG_IN_BATCH);
	if (count == 0)
		return KOBO_OK;
	if (!steps_begin(s))
		return store_abandon(s, KOBO_ECONNLOST);
	if (s->step_count + 4 > PG_STEPS_MAX)
		return store_fail(s, KOBO_EINVAL);
	reset_arrays(s, 11);
	for (size_t i = 0; i < count; i++) {
		const kobo_event *e = &events[i];
		pg_buf *c = s->cols;
		arr_str(&c[0], e->transfer_id);
		arr_str(&c[1], kobo_event_kind_name(e->kind));
		arr_int(&c[2], e->at_ms);
		arr_int(&c[3], (int64_t)e->shard);
		arr_str(&c[4], e->node);
		arr_str(&c[5], e->request_id);
		arr_str(&c[6], e->trace_id);
		arr_str(&c[7], e->key_id);
		arr_str(&c[8], kobo_leg_name(e->leg));
		arr_str(&c[9], kobo_transfer_status_name(e->status));
		arr_int(&c[10], e->amount);
	}
	if (finish_arrays(s, 11, params) != KOBO_OK)
		return store_fail(s, KOBO_ESTORE);
	int rc = send_step(s, SQL_INSERT_EVENTS, 11, params, false);
	if (rc == KOBO_ECONNLOST)
		return store_abandon(s, rc);
	return rc == KOBO_OK ? KOBO_OK : store_fail(s, KOBO_ESTORE);
}

/* Closes the batch's last pipeline with the commit settings and COMMIT,
 * and reads every answer (see "Round trips" for the outcome rules). */
static int store_commit(kobo_store *store, uint64_t *token)
{
	pg_store *s = to_store(store);
	int rc;

	kobo_assert(s->state == PG_IN_BATCH);
	if (!steps_begin(s))
		return store_abandon(s, KOBO_ECONNLOST);
	/* A batch that only replays writes meta too: its COMMIT then waits for
	 * the synchronous standby like any other. */
	if (!s->meta_queued && (rc = send_bump_meta(s, 0, false)) != KOBO_OK)
		return store_abandon(s, rc);
	if (s->optimistic && (rc = check_reads(s)) != KOBO_OK)
		return store_abandon(s, rc == KOBO_ENOMEM ? KOBO_ESTORE : rc);
	/* No timeout on COMMIT, ever: a COMMIT cancelled while it waits for
	 * the standby has committed locally. */
	if (!step_send(s, SQL_COMMIT_SETTINGS, 0, NULL, PGRES_TUPLES_OK, false, false))
		return store_abandon(s, KOBO_ECONNLOST);
	/* From here on the outcome may be unknown: the server may run COMMIT
	 * as soon as it arrives, Sync or not. */
	if (!step_send(s, PG_STEP_COMMIT, 0, NULL, PGRES_COMMAND_OK, false, false)) {
		/* libpq may have written part of the pipeline, COMMIT perhaps
		 * included, before the link failed: unknown. */
		s->state = PG_IDLE;
		drop_connection(s);
		return KOBO_EUNKNOWN;
	}
	pg_outcome out = pipeline_sync(s);
	size_t commit_at = s->step_count - 1;
	if (out.failed < commit_at) {
		/* The server refused a statement before COMMIT, and so skipped
		 * COMMIT: nothing was committed. */
		rc = pipeline_result(s, out);
		clear_steps(s);
		return rc;
	}
	if (out.lost) {
		/* Not sticky (see "Error kinds" above): reconnect next. */
		store_pg_log_error("store_pg_commit_failed", s->conn, s->step_res[commit_at]);
		s->state = PG_IDLE;
		drop_connection(s);
		return KOBO_EUNKNOWN;
	}
	PGresult *res = s->step_res[commit_at];
	if (out.failed == commit_at || strcmp(PQcmdStatus(res), "COMMIT") != 0) {
		store_pg_log_error("store_pg_commit_failed", s->conn, res);
		clear_steps(s);
		return store_fail(s, KOBO_EUNKNOWN);
	}
	uint64_t committed = 0;
	for (size_t i = 0; i < commit_at; i++)
		if (s->steps[i].which == SQL_BUMP_META)
			committed = (uint64_t)store_pg_col_int(s->step_res[i], 0, 0);
	clear_steps(s);
	s->state = PG_IDLE;
	*token = committed;
	return KOBO_OK;
}

static int store_set_concurrency(kobo_store *store, kobo_store_concurrency mode)
{
	pg_store *s = to_store(store);

	kobo_assert(s->state != PG_IN_BATCH);
	s->optimistic = mode == KOBO_STORE_OPTIMISTIC;
	return KOBO_OK;
}

static void store_rollback(kobo_store *store)
{
	pg_store *s = to_store(store);

	if (s->state != PG_IN_BATCH)
		return;
	end_batch(s, PG_IDLE);
}

static int store_expired_holds(kobo_store *store, int64_t now_ms,
                               char (*ids)[KOBO_ID_LEN_MAX + 1], size_t max,
                               size_t *count)
{
	pg_store *s = to_store(store);
	char now_text[32];
	char max_text[32];
	const char *params[2] = {now_text, max_text};

	*count = 0;
	if (atomic_load(&s->failed))
		return KOBO_EFAILED;
	kobo_assert(s->state != PG_IN_BATCH);
	if (max == 0)
		return KOBO_OK;
	if (s->read_only || ensure_connection(s) != KOBO_OK)
		return KOBO_ESTORE;
	snprintf(now_text, sizeof now_text, "%" PRId64, now_ms);
	snprintf(max_text, sizeof max_text, "%zu", max);
	s->round_trips++;
	PGresult *res = PQexecPrepared(s->conn, writer_sql[SQL_EXPIRED_HOLDS].name,
	                               2, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		store_pg_log_error("store_pg_expired_holds_failed", s->conn, res);
		PQclear(res);
		return KOBO_ESTORE;
	}
	for (int row = 0; row < PQntuples(res) && *count < max; row++) {
		if (store_pg_col_copy(res, row, 0, ids[*count], sizeof ids[*count]) != KOBO_OK) {
			PQclear(res);
			*count = 0;
			return KOBO_ESTORE;
		}
		(*count)++;
	}
	PQclear(res);
	return KOBO_OK;
}

static bool store_healthy(kobo_store *store)
{
	pg_store *s = to_store(store);

	return !atomic_load(&s->failed) && !atomic_load(&s->link_down);
}

/* ---- The link probe (see "The link and /readyz"). ---- */

/* Asks the server whether it is a primary, within PG_PROBE_TIMEOUT_MS,
 * (re)connecting *conn first if needed. true when it answered "a primary";
 * on false *conn is closed (NULL) so the next probe connects afresh. */
static bool probe_once(pg_store *s, PGconn **conn)
{
	static const char *const keys[] = {"connect_timeout", "application_name",
	                                   "dbname", NULL};
	const char *values[] = {PG_PROBE_CONNECT_TIMEOUT_S, "kobo-probe", s->url, NULL};
	bool primary = false;

	if (*conn == NULL || PQstatus(*conn) != CONNECTION_OK) {
		PQfinish(*conn);
		*conn = PQconnectdbParams(keys, values, 1);
		if (*conn == NULL || PQstatus(*conn) != CONNECTION_OK)
			goto out;
	}
	if (!PQsendQuery(*conn, "SELECT pg_is_in_recovery()"))
		goto out;
	int64_t deadline = mono_ms() + PG_PROBE_TIMEOUT_MS;
	while (PQisBusy(*conn)) {
		int64_t left = deadline - mono_ms();
		struct pollfd pfd = {.fd = PQsocket(*conn), .events = POLLIN};
		if (left <= 0 || pfd.fd < 0 || poll(&pfd, 1, (int)left) < 0 ||
		    !PQconsumeInput(*conn))
			goto out;
	}
	PGresult *res;
	bool answered = false;
	while ((res = PQgetResult(*conn)) != NULL) {
		if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
			answered = true;
			primary = strcmp(PQgetvalue(res, 0, 0), "f") == 0;
		}
		PQclear(res);
	}
	primary = primary && answered;
out:
	if (!primary) {
		PQfinish(*conn);
		*conn = NULL;
	}
	return primary;
}

static void *probe_main(void *arg)
{
	pg_store *s = arg;
	PGconn *conn = NULL;
	int backoff_ms = PG_RECONNECT_BACKOFF_MIN_MS;

	pthread_mutex_lock(&s->probe_lock);
	while (!s->probe_stop) {
		pthread_mutex_unlock(&s->probe_lock);
		bool up = probe_once(s, &conn);
		bool was_down = atomic_exchange(&s->link_down, !up);
		int64_t wait_ms;
		if (up) {
			if (was_down)
				kobo_log(KOBO_LOG_WARN, "store_pg_link_up",
				         "\"shard\":%" PRIu32 ",\"message\":\"the shard's primary "
				         "answers again\"", s->shard);
			backoff_ms = PG_RECONNECT_BACKOFF_MIN_MS;
			wait_ms = PG_PROBE_INTERVAL_MS;
		} else {
			if (!was_down)
				kobo_log(KOBO_LOG_ERROR, "store_pg_link_down",
				         "\"shard\":%" PRIu32 ",\"message\":\"the shard's primary "
				         "does not answer: /readyz 503 and writes 503 until it "
				         "does\"", s->shard);
			wait_ms = backoff_ms;
			backoff_ms = backoff_ms * 2 > PG_RECONNECT_BACKOFF_MAX_MS
				? PG_RECONNECT_BACKOFF_MAX_MS : backoff_ms * 2;
		}
		struct timespec deadline = kobo_deadline_after_ms(wait_ms);
		pthread_mutex_lock(&s->probe_lock);
		while (!s->probe_stop &&
		       pthread_cond_timedwait(&s->probe_wake, &s->probe_lock, &deadline) == 0)
			;
	}
	pthread_mutex_unlock(&s->probe_lock);
	PQfinish(conn);
	return NULL;
}

static int probe_start(pg_store *s)
{
	if (pthread_mutex_init(&s->probe_lock, NULL) != 0)
		return KOBO_ENOMEM;
	if (kobo_cond_init_monotonic(&s->probe_wake) != 0) {
		pthread_mutex_destroy(&s->probe_lock);
		return KOBO_ENOMEM;
	}
	if (pthread_create(&s->probe_thread, NULL, probe_main, s) != 0) {
		pthread_cond_destroy(&s->probe_wake);
		pthread_mutex_destroy(&s->probe_lock);
		return KOBO_ENOMEM;
	}
	s->probe_started = true;
	return KOBO_OK;
}

static void probe_stop(pg_store *s)
{
	if (!s->probe_started)
		return;
	pthread_mutex_lock(&s->probe_lock);
	s->probe_stop = true;
	pthread_cond_signal(&s->probe_wake);
	pthread_mutex_unlock(&s->probe_lock);
	pthread_join(s->probe_thread, NULL);
	pthread_cond_destroy(&s->probe_wake);
	pthread_mutex_destroy(&s->probe_lock);
	s->probe_started = false;
}

/* ---- API keys (store.h: key_insert, key_revoke). ----
 *
 * Each call runs on a connection of its own, opened for it and closed
 * after: keys change rarely (`kobo key`), and the writer's connection and
 * its pipeline stay the shard writer's alone (invariant 1). The live-key
 * bound holds with any number of writers: key_insert counts and inserts
 * under LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE, which two such
 * transactions cannot hold at once. Every statement but COMMIT waits at
 * most PG_KEY_TIMEOUT_MS (lock and statement timeouts). */

#define PG_KEY_TIMEOUT_MS 5000

static const char *const key_begin_sql =
	"BEGIN;"
	" SELECT set_config('lock_timeout', '" PG_STR(PG_KEY_TIMEOUT_MS) "ms', true),"
	" set_config('statement_timeout', '" PG_STR(PG_KEY_TIMEOUT_MS) "ms', true);"
	" LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE";
static const char *const key_commit_sql =
	"SELECT set_config('statement_timeout', '0', true),"
	" set_config('lock_timeout', '0', true); COMMIT";

/* bytes as a bytea input literal: \x + hex. */
static void bytea_text(char *out, const uint8_t *bytes, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	*out++ = '\\';
	*out++ = 'x';
	for (size_t i = 0; i < len; i++) {
		*out++ = hex[bytes[i] >> 4];
		*out++ = hex[bytes[i] & 15];
	}
	*out = '\0';
}

/* Runs one key statement between key_begin_sql and key_commit_sql on a
 * connection of its own. *rows: the rows it returned. */
static int key_transaction(pg_store *s, const char *sql, int nparams,
                           const char *const *params, int *rows)
{
	PGconn *conn = NULL;
	int rc = store_pg_connect(s->url, s->schema, &conn);
	if (rc != KOBO_OK)
		return rc == KOBO_ENOMEM ? rc : KOBO_ESTORE;
	rc = KOBO_ESTORE;
	if (store_pg_exec(conn, key_begin_sql, "store_pg_key_failed") != KOBO_OK)
		goto done;
	PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		bool taken = sqlstate_is(res, "23505");
		store_pg_log_error_at(taken ? KOBO_LOG_INFO : KOBO_LOG_ERROR,
		                      "store_pg_key_failed", conn, res);
		PQclear(res);
		rc = taken ? KOBO_ECONFLICT : KOBO_ESTORE;
		goto done;
	}
	*rows = PQntuples(res);
	PQclear(res);
	if (store_pg_exec(conn, key_commit_sql, "store_pg_key_commit_failed") == KOBO_OK)
		rc = KOBO_OK;
done:
	PQfinish(conn); /* an open transaction is rolled back by the server */
	return rc;
}

static int store_key_insert(kobo_store *store, const kobo_api_key *key)
{
	pg_store *s = to_store(store);
	char scopes[16], created[32], limit[32];
	char salt[2 * KOBO_KEY_SALT_LEN + 3], hash[2 * KOBO_KEY_HASH_LEN + 3];
	const char *params[7] = {key->id, key->name, scopes, salt, hash, created, limit};
	int rows = 0;

	if (s->read_only)
		return KOBO_EINVAL;
	snprintf(scopes, sizeof scopes, "%" PRIu32, key->scopes);
	snprintf(created, sizeof created, "%" PRId64, key->created_at_ms);
	snprintf(limit, sizeof limit, "%d", KOBO_KEYS_MAX);
	bytea_text(salt, key->salt, sizeof key->salt);
	bytea_text(hash, key->hash, sizeof key->hash);
	/* No row back: the live keys are at the limit (counted under the
	 * table lock). A taken id is 23505: KOBO_ECONFLICT. */
	int rc = key_transaction(s,
		"INSERT INTO api_keys (id, name, scopes, salt, hash, created_at_ms)"
		" SELECT $1, $2, $3::integer, $4::bytea, $5::bytea, $6::int8"
		" WHERE (SELECT count(*) FROM api_keys WHERE revoked_at_ms = 0) < $7::int8"
		" RETURNING 1", 7, params, &rows);
	if (rc == KOBO_OK && rows == 0)
		rc = KOBO_EFULL;
	return rc;
}

static int store_key_revoke(kobo_store *store, const char *id, int64_t at_ms)
{
	pg_store *s = to_store(store);
	char at[32];
	const char *params[2] = {id, at};
	int rows = 0;

	if (s->read_only || at_ms <= 0)
		return KOBO_EINVAL;
	snprintf(at, sizeof at, "%" PRId64, at_ms);
	/* A revoked key keeps its first revocation time. */
	int rc = key_transaction(s,
		"UPDATE api_keys SET revoked_at_ms = CASE WHEN revoked_at_ms = 0"
		" THEN $2::int8 ELSE revoked_at_ms END WHERE id = $1 RETURNING 1",
		2, params, &rows);
	if (rc == KOBO_OK && rows == 0)
		rc = KOBO_ENOTFOUND;
	return rc;
}

/* ---- Open, audit, close. ---- */

static int store_audit(kobo_store *store, kobo_store_report_fn report, void *ctx,
                       kobo_audit_totals *totals)
{
	pg_store *s = to_store(store);

	return store_pg_audit(s->url, s->schema, report, ctx, totals);
}

static void store_close(kobo_store *store)
{
	pg_store *s = to_store(store);

	probe_stop(s);
	if (s->state == PG_IN_BATCH)
		end_batch(s, PG_IDLE);
	free_loaded(s);
	store_pg_pool_destroy(&s->metadata);
	free(s->looked_up_transfers.ids);
	free(s->looked_up_accounts.ids);
	free(s->read_transfers.rows);
	free(s->read_accounts.rows);
	free(s->order);
	PQfinish(s->conn);
	for (size_t i = 0; i < PG_ARRAY_COLUMNS_MAX; i++)
		free(s->cols[i].data);
	free(s->url);
	free(s);
}

static const kobo_store_ops pg_ops = {
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
	.reader_open = store_pg_reader_open,
	.reader_close = store_pg_reader_close,
	.read_account = store_pg_read_account,
	.read_transfer = store_pg_read_transfer,
	.read_history = store_pg_read_history,
	.read_sagas = store_pg_read_sagas,
	.read_events = store_pg_read_events,
	.read_by_request = store_pg_read_by_request,
	.read_accounts_prefix = store_pg_read_accounts_prefix,
	.read_position = store_pg_read_position,
	.claim_saga = store_pg_claim_saga,
	.release_saga = store_pg_release_saga,
	.key_insert = store_key_insert,
	.key_revoke = store_key_revoke,
	.read_keys = store_pg_read_keys,
	.audit = store_audit,
	.close = store_close,
};

int store_pg_open(const char *url, uint32_t shard, uint32_t shard_count,
                  bool read_only, kobo_store **out)
{
	PGconn *conn = NULL;
	int rc;

	*out = NULL;
	pg_store *s = calloc(1, sizeof *s);
	if (s == NULL)
		return KOBO_ENOMEM;
	s->base.ops = &pg_ops;
	s->shard = shard;
	s->read_only = read_only;
	s->state = PG_IDLE;
	s->reconnect_backoff_ms = PG_RECONNECT_BACKOFF_MIN_MS;
	atomic_init(&s->failed, false);
	atomic_init(&s->link_down, false);
	s->url = strdup(url);
	if (s->url == NULL || schema_name(s->schema, sizeof s->schema, shard) != KOBO_OK) {
		free(s->url);
		free(s);
		return KOBO_ENOMEM;
	}
	rc = store_pg_connect(url, s->schema, &conn);
	if (rc != KOBO_OK)
		goto fail;
	if (read_only) {
		rc = shard_count > 0 ? check_census(conn, shard, shard_count, true) : KOBO_OK;
		if (rc == KOBO_OK)
			rc = check_meta(conn, shard, shard_count, PG_SCHEMA_VERSION_READABLE);
	} else if (schema_is_current(conn, shard_count)) {
		rc = shard_count > 0 ? check_census(conn, shard, shard_count, true) : KOBO_OK;
		if (rc == KOBO_OK)
			rc = check_meta(conn, shard, shard_count, PG_SCHEMA_VERSION);
	} else {
		rc = create_schema(conn, s->schema, shard, shard_count);
	}
	if (rc != KOBO_OK)
		goto fail;
	if (read_only) {
		/* Readers and the audit open connections of their own. */
		PQfinish(conn);
	} else {
		rc = prepare_writer(conn);
		if (rc != KOBO_OK)
			goto fail;
		s->conn = conn;
		conn = NULL;
		if ((rc = probe_start(s)) != KOBO_OK) {
			conn = s->conn;
			goto fail;
		}
	}
	*out = &s->base;
	return KOBO_OK;
fail:
	PQfinish(conn);
	free(s->url);
	free(s);
	return rc == KOBO_ENOMEM || rc == KOBO_EINVAL ? rc : KOBO_ESTORE;
}

