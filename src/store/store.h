/*
 * store.h — the storage contract every backend implements.
 *
 * A store holds one shard: its accounts and transfers, as plain records
 * (kobo_account, kobo_transfer and the change lists of src/ledger/ledger.h).
 * A backend knows those record types, never the ledger object: the shard
 * writer (src/shard/batch.c) hands loaded rows to the ledger and the
 * ledger's changes to the store. Backends, each in its own folder:
 *
 *   src/store/sqlite/   "sqlite:DIR"  one SQLite file per shard, DIR/shard-N.db
 *   src/store/mem/      "mem:"        in memory, with injectable faults (tests)
 *   src/store/postgres/ "postgresql://…"  schema kobo_shard_N of a database
 *
 * kobo_store_open(url) picks one. The data
 * directory's file names are in layout.h; the audit's rules, shared by the
 * backends, in auditor.h.
 *
 * Two kinds of handle:
 *   kobo_store         the write side. Exactly one thread (the shard writer)
 *                      uses it. One batch is one transaction:
 *
 *                        begin ──▶ load_transfers ──▶ load_accounts
 *                          ──▶ now ──▶ (ledger applies, no I/O)
 *                          ──▶ write ──▶ write_events ──▶ commit
 *                        any error ──▶ rollback
 *
 *                      begin locks what the batch touches (SQLite: BEGIN
 *                      IMMEDIATE takes the file's write lock; PostgreSQL:
 *                      SELECT … FOR NO KEY UPDATE on the loaded rows in id
 *                      order, as the loads run). A backend may send its
 *                      work late (PostgreSQL pipelines BEGIN with the first
 *                      load and the writes with COMMIT): then a failure
 *                      surfaces from the next call that talks to it, with
 *                      the same kinds (write's from commit).
 *                      commit returns only once the batch is on stable
 *                      storage (fsync), so the writer may answer.
 *   kobo_store_reader  a read connection: one per reading thread, never
 *                      blocked by the writer (SQLite WAL readers).
 *
 * WHAT A BACKEND MUST GUARANTEE
 *
 *   1. Atomic, durable batches. commit() returning KOBO_OK means the whole
 *      batch is on stable storage; any other outcome of a batch leaves none
 *      of it applied, except KOBO_EUNKNOWN (below), which leaves all or none.
 *   2. Readers see commits. A reader that is opened, or that starts a read,
 *      after commit() returned sees that batch (and every earlier one); no
 *      reader ever sees part of a batch or a batch not yet committed.
 *   3. Lifetimes. A record handed to a load callback, and its metadata, is
 *      valid until the next begin() (the ledger keeps pointers to the
 *      metadata for the whole batch). A record filled by read_account /
 *      read_transfer, and its metadata, is valid until the next call on
 *      that reader. A record handed to a read callback (history, sagas,
 *      accounts by prefix) is valid only during the call. write() copies
 *      what it needs: the caller's arrays may go after write() returns.
 *   4. Row updates. An account update rewrites posted, pending_out and
 *      pending_in; a transfer update rewrites exactly the fields of
 *      kobo_transfer_state (ledger.h, taken with kobo_transfer_state_of):
 *      the one list of a transfer's mutable fields. Nothing else of a row
 *      ever changes after it is inserted.
 *   5. Order. New transfers are inserted in the order write() is given
 *      them; that order fixes their seq (history order, the cursor).
 *   6. The same answers. mem and SQLite (and any later backend) give the
 *      same results and error kinds for the same calls: one contract test
 *      suite runs over all of them.
 *   7. Threads. The write side (begin … commit, rollback, expired_holds,
 *      audit, close) is used by one thread at a time. healthy() may be
 *      called from any thread. A reader belongs to the thread that opened
 *      it; any number of readers run alongside the writer.
 *
 * ERRORS (the kinds are documented in src/core/core.h)
 *
 * Every function returns KOBO_OK or a negative KOBO_E* code:
 *
 *   KOBO_ECONFLICT  nothing was committed and the store is healthy: re-run
 *                   the whole batch (a deadlock or serialization failure
 *                   between nodes, or, on PostgreSQL, a lock or statement
 *                   timeout before COMMIT). From begin, load_*, now,
 *                   write, commit.
 *                   SQLite never returns it (one writer per file); the
 *                   in-memory store does when a test asks
 *                   (kobo_store_mem_conflict_next_commits).
 *   KOBO_ECONNLOST  the connection broke before commit was asked: nothing
 *                   was committed; the store reconnects at the next begin.
 *                   From begin, load_*, now, write, commit (before COMMIT
 *                   was sent). Neither SQLite nor mem returns it.
 *   KOBO_EUNKNOWN   commit was asked and its outcome is unknown (SQLite: a
 *                   failed COMMIT or fsync; mem: kobo_store_mem_fail_next_
 *                   commit; PostgreSQL: the link broke during COMMIT). The
 *                   batch is wholly there or wholly absent. A store that
 *                   keeps state across batches (SQLite, mem) enters its
 *                   sticky error state; one that re-reads every row under
 *                   lock in each batch (PostgreSQL) stays usable once it
 *                   reconnects. From commit only.
 *   KOBO_ESTORE     any other storage failure (I/O, a corrupt row, a lock
 *                   held elsewhere, out of memory). Nothing was committed.
 *                   After a failed write the store is in its sticky error
 *                   state; after a failed begin, load or read it is not
 *                   (nothing was written). From every function.
 *   KOBO_EFAILED    the store is in its sticky error state: after a failed
 *                   write or commit (see KOBO_EUNKNOWN for the backends
 *                   that need it), begin() and expired_holds() refuse
 *                   until the process reopens the store, because memory and
 *                   disk may disagree (better unavailable than wrong).
 *                   healthy() reports it (/readyz answers 503).
 *   KOBO_EINVAL     a caller broke a precondition (begin on a read-only
 *                   store; a scheme kobo_store_open does not know).
 *   KOBO_ENOTFOUND  read_account / read_transfer found nothing.
 *   KOBO_ENOMEM     out of memory in kobo_store_open, reader_open or audit
 *                   (elsewhere a backend answers KOBO_ESTORE).
 *   any other value a load callback returned (kobo_store_transfer_fn, kobo_store_account_fn).
 *
 * CONSISTENCY TOKEN
 *
 * commit() hands back the shard's commit sequence: a number that grows by
 * one with every committed batch, is stored in the batch's own transaction
 * (SQLite: the one-row `meta` table, schema version 3; mem: a counter) and
 * so survives restarts. A client that saw token T can later ask for "at
 * least T" (the HTTP header comes later). A fresh shard's first commit
 * returns 1.
 *
 * A reader tells how far its view reaches with read_position: the commit
 * sequence it sees. A read replica (kobod --postgres-read, a PostgreSQL
 * standby opened read_only) sees a batch exactly when it has replayed the
 * batch's transaction, which carries the meta row's bump with the data, so
 * "position >= T" means every batch up to T is visible to the next read on
 * that reader (replay only moves forward).
 */
#ifndef KOBO_STORE_H
#define KOBO_STORE_H

#include <stdbool.h>

#include "../ledger/ledger.h" /* the record types only: never kobo_ledger */
#include "../ledger/events.h" /* kobo_event: the journey of a payment */
#include "../core/apikey.h"

/* The longest node name a saga claim takes (claim_saga). */
#define KOBO_STORE_NODE_LEN_MAX 127

typedef struct kobo_store kobo_store;
typedef struct kobo_store_reader kobo_store_reader;

/* Called once per transfer found by load_transfers and by history and saga
 * reads; seq orders a shard's transfers (oldest first) and is the history
 * cursor. Lifetimes: guarantee 3 above. A load stops at the first non-zero
 * return and returns that value (the batch stays open: roll it back); a read
 * stops early and returns KOBO_OK. */
typedef int (*kobo_store_transfer_fn)(void *ctx, const kobo_transfer *transfer,
                                      int64_t seq);

/* Called once per account found by load_accounts and by
 * read_accounts_prefix; return values as for kobo_store_transfer_fn. */
typedef int (*kobo_store_account_fn)(void *ctx, const kobo_account *account);

/* Called once per event read by read_events, oldest first; valid only
 * during the call. A non-zero return stops the read (KOBO_OK). */
typedef int (*kobo_store_event_fn)(void *ctx, const kobo_event *event);

/* Called once per API key read by read_keys; valid only during the call.
 * A non-zero return stops the read, which then returns KOBO_OK. */
typedef int (*kobo_store_key_fn)(void *ctx, const kobo_api_key *key);

/* Called once per discrepancy found by audit, with a readable sentence. */
typedef void (*kobo_store_report_fn)(void *ctx, const char *line);

typedef struct kobo_audit_totals {
	size_t accounts;
	size_t transfers;
	size_t problems; /* discrepancies reported; 0 means the shard is sound */
	size_t sagas_in_flight; /* DEBIT legs with saga != KOBO_SAGA_NONE */
} kobo_audit_totals;

/* Where a reader's view of its shard stands (read_position). */
typedef struct kobo_store_position {
	uint64_t commit_seq;  /* the last committed batch this reader sees */
	/* What the shard records of itself (PostgreSQL's meta row), so that a
	 * replica can be checked to hold the shard it was given for: recorded
	 * false for mem and SQLite, which keep no such row (the data
	 * directory's shard map checks them). */
	bool recorded;
	uint32_t shard_index;
	uint32_t shard_count; /* 0: not recorded yet */
	/* A read-only standby replaying a primary's log (PostgreSQL in
	 * recovery), and then how far its replay trails: 0 when it has
	 * replayed everything it received, else the time since the last
	 * transaction it replayed committed (a paused replica's lag grows).
	 * false and 0 for a primary, mem and SQLite. */
	bool standby;
	int64_t lag_us;
} kobo_store_position;

/* How batches of several nodes on one store are kept apart (kobod
 * --concurrency; set_concurrency below). */
typedef enum kobo_store_concurrency {
	KOBO_STORE_PESSIMISTIC, /* loads lock the rows they read (the default) */
	KOBO_STORE_OPTIMISTIC,  /* no locks; a changed row is a conflict */
} kobo_store_concurrency;

typedef struct kobo_store_ops {
	/* Starts the batch transaction and takes the write lock. Memory handed
	 * out by the previous batch's loads becomes invalid.
	 * KOBO_EFAILED, KOBO_ECONFLICT, KOBO_ECONNLOST, KOBO_ESTORE, or
	 * KOBO_EINVAL on a read-only store. */
	int (*begin)(kobo_store *store);
	/* Calls each once for every stored transfer whose id is in
	 * ids[0..count), in ids order; missing ids are skipped. Stops at the
	 * first non-zero return of each and returns it.
	 * KOBO_ECONFLICT, KOBO_ECONNLOST, KOBO_ESTORE (sticky only if the
	 * backend cannot tell the batch apart from what it read). */
	int (*load_transfers)(kobo_store *store, const char *const *ids,
	                      size_t count, kobo_store_transfer_fn each, void *ctx);
	/* The same for accounts. */
	int (*load_accounts)(kobo_store *store, const char *const *ids,
	                     size_t count, kobo_store_account_fn each, void *ctx);
	/* The batch's time, which the ledger stamps records and judges
	 * expiry with (the writer passes its own clock as local_now_ms). A
	 * store several nodes share (PostgreSQL) answers the database's
	 * clock, so every node agrees: inside a batch the clock read when the
	 * batch began (the same answer for every call of the batch), outside
	 * one the clock now (for expired_holds). A store one process serves
	 * (SQLite, mem) answers local_now_ms, so a test's injected clock
	 * rules. KOBO_EFAILED (outside a batch), KOBO_ECONFLICT,
	 * KOBO_ECONNLOST, KOBO_ESTORE (inside a batch: as the loads). */
	int (*now)(kobo_store *store, int64_t local_now_ms, int64_t *now_ms);
	/* Chooses the concurrency control, outside a batch. PESSIMISTIC (the
	 * default): the loads lock the rows they read until commit.
	 * OPTIMISTIC: the loads lock nothing; a row the batch writes, or read
	 * and keeps, that another node changed since it was read makes commit
	 * answer KOBO_ECONFLICT (nothing applied), and the writer re-runs the
	 * batch. Only a store several nodes share has the choice: SQLite and
	 * mem answer KOBO_EINVAL to OPTIMISTIC (one writer per shard). */
	int (*set_concurrency)(kobo_store *store, kobo_store_concurrency mode);
	/* Stages the batch's changes: inserts the records marked is_new
	 * (transfers in array order, which fixes their seq) and updates the
	 * others (guarantee 4). Inserting an id that exists, or updating one
	 * that does not, fails — here, or from commit on a backend that sends
	 * the writes with COMMIT. KOBO_ECONFLICT, KOBO_ECONNLOST, or
	 * KOBO_ESTORE (sticky). */
	int (*write)(kobo_store *store, const kobo_account_change *accounts,
	             size_t account_count, const kobo_transfer_change *transfers,
	             size_t transfer_count);
	/* Stages the batch's events (events.h: the journey of a payment), in
	 * the batch's transaction, after write(): they commit or vanish with
	 * the money they tell of. Each event is stored as given (seq is
	 * ignored); the store numbers them in array order after every event
	 * committed before (the shard-local seq read_events orders by). At
	 * most one call per batch; count 0 stages nothing. Events are never
	 * updated nor deleted: they live as long as the shard's transfers
	 * (the audit trail). KOBO_ECONFLICT, KOBO_ECONNLOST, or KOBO_ESTORE
	 * (sticky), as write. */
	int (*write_events)(kobo_store *store, const kobo_event *events,
	                    size_t count);
	/* Commits durably and sets *token to the shard's commit sequence after
	 * this batch (see CONSISTENCY TOKEN). On any error *token is left
	 * alone: KOBO_ECONFLICT (nothing applied, store healthy),
	 * KOBO_ECONNLOST (nothing applied: the link broke before COMMIT was
	 * sent), KOBO_EUNKNOWN (sticky where the backend keeps state; see
	 * above) or KOBO_ESTORE (nothing applied, sticky). */
	int (*commit)(kobo_store *store, uint64_t *token);
	/* Abandons the batch. Safe to call after any failed step, and when no
	 * batch is open. */
	void (*rollback)(kobo_store *store);
	/* Lists up to max ids of holds with status pending and
	 * 0 < expires_at_ms <= now_ms, oldest expiry first (PROCESSING records,
	 * whose saga is under way, are not listed). Called by the writer
	 * outside a batch. KOBO_EFAILED, KOBO_ESTORE (not sticky). */
	int (*expired_holds)(kobo_store *store, int64_t now_ms,
	                     char (*ids)[KOBO_ID_LEN_MAX + 1], size_t max,
	                     size_t *count);
	/* false in the sticky error state, and (PostgreSQL) while the shard's
	 * primary does not answer. Thread-safe. */
	bool (*healthy)(kobo_store *store);

	/* Opens a read connection for the calling thread. KOBO_ESTORE,
	 * KOBO_ENOMEM. */
	int (*reader_open)(kobo_store *store, kobo_store_reader **reader);
	void (*reader_close)(kobo_store_reader *reader);
	/* KOBO_ENOTFOUND when absent, KOBO_ESTORE. *out and its metadata are
	 * valid until the next call on this reader. */
	int (*read_account)(kobo_store_reader *reader, const char *id,
	                    kobo_account *out);
	int (*read_transfer)(kobo_store_reader *reader, const char *id,
	                     kobo_transfer *out);
	/* Transfers that debit or credit account_id with seq > after_seq
	 * (0: from the start), oldest first, at most limit, rejected ones
	 * excluded. A cross-shard leg counts for its from, its to and its
	 * clearing account alike. KOBO_ESTORE. */
	int (*read_history)(kobo_store_reader *reader, const char *account_id,
	                    int64_t after_seq, size_t limit,
	                    kobo_store_transfer_fn each, void *ctx);
	/* DEBIT legs whose saga is under way (saga != NONE) with id > after_id
	 * ("" from the start), in id order, at most limit: the saga runner's
	 * recovery scan. seq is passed as in read_history. KOBO_ESTORE. */
	int (*read_sagas)(kobo_store_reader *reader, const char *after_id,
	                  size_t limit, kobo_store_transfer_fn each, void *ctx);
	/* The events of transfer_id on this shard with seq > after_seq, in
	 * seq order (the order they were written), at most limit, each with
	 * its seq set. KOBO_ESTORE. */
	int (*read_events)(kobo_store_reader *reader, const char *transfer_id,
	                   int64_t after_seq, size_t limit, kobo_store_event_fn each,
	                   void *ctx);
	/* The transfers of this shard whose request_id is request_id (every
	 * record a request created: a batch creates many; a CREDIT leg carries
	 * its DEBIT leg's) with seq > after_seq, oldest first, at most limit;
	 * rejected ones included. Indexed in every backend. KOBO_ESTORE. */
	int (*read_by_request)(kobo_store_reader *reader, const char *request_id,
	                       int64_t after_seq, size_t limit,
	                       kobo_store_transfer_fn each, void *ctx);
	/* Every account whose id starts with prefix, in id order (the audit
	 * lists clearing accounts with it). KOBO_ESTORE. */
	int (*read_accounts_prefix)(kobo_store_reader *reader, const char *prefix,
	                            kobo_store_account_fn each, void *ctx);
	/* Fills *out on this reader's own connection (see CONSISTENCY TOKEN):
	 * a read that follows on this reader sees at least out->commit_seq.
	 * KOBO_ESTORE (the reader could not ask; PostgreSQL re-opens a broken
	 * link once, as every read does). */
	int (*read_position)(kobo_store_reader *reader, kobo_store_position *out);

	/* Saga claims: which node drives the saga of A's record `id` (issue 9,
	 * "many nodes": one driver per saga at a time). Claims live in the
	 * store of the saga's payer shard and run on its own clock (the
	 * database's, not the caller's), outside any batch: each call commits
	 * by itself.
	 *
	 * claim_saga sets *claimed to true, and holds the claim until lease_ms
	 * (> 0) from now, when nobody holds a live claim on id or node already
	 * does (a renewal); to false when another node's claim is live. A
	 * claim whose lease ran out may be taken by any node: a node that
	 * died mid-saga is taken over once its lease ends. node is a name
	 * unique to the calling process (at most KOBO_STORE_NODE_LEN_MAX
	 * bytes). KOBO_ESTORE (*claimed false).
	 *
	 * release_saga drops node's claim on id (none held: nothing happens),
	 * once the saga has finished, so the claims stay few. KOBO_ESTORE.
	 *
	 * A store only one process can serve (SQLite, mem) grants every claim
	 * and releases nothing: there is no other node to keep out. */
	int (*claim_saga)(kobo_store_reader *reader, const char *id,
	                  const char *node, int64_t lease_ms, bool *claimed);
	int (*release_saga)(kobo_store_reader *reader, const char *id,
	                    const char *node);

	/* API keys (src/core/apikey.h): they live in shard 0's store, which
	 * every node reads; the `kobo key` commands write them through a store
	 * of their own, whether or not kobod runs on it. Outside any batch;
	 * each call commits by itself (durably, as commit does).
	 *
	 * key_insert stores a new live key. KOBO_ECONFLICT when a key with
	 * key->id exists (the caller draws another id), KOBO_EFULL when
	 * KOBO_KEYS_MAX live keys exist, KOBO_EINVAL on a read-only store,
	 * KOBO_ESTORE.
	 *
	 * key_revoke sets revoked_at_ms of key id to at_ms if it is live; a
	 * revoked key stays revoked (the first time is kept). KOBO_ENOTFOUND
	 * when no key has that id, KOBO_EINVAL on a read-only store,
	 * KOBO_ESTORE.
	 *
	 * read_keys calls each for every key (live ones only unless
	 * include_revoked), in id order. KOBO_ESTORE. */
	int (*key_insert)(kobo_store *store, const kobo_api_key *key);
	int (*key_revoke)(kobo_store *store, const char *id, int64_t at_ms);
	int (*read_keys)(kobo_store_reader *reader, bool include_revoked,
	                 kobo_store_key_fn each, void *ctx);

	/* Checks the whole shard on a consistent snapshot: per currency posted
	 * balances sum to 0 and pending_out sums equal pending_in sums; every
	 * account's posted, pending_out and pending_in equal what its transfers
	 * say (a transfer moves money between kobo_transfer_debit_account and
	 * kobo_transfer_credit_account; PENDING and PROCESSING records hold);
	 * no non-negative account has available < 0; and more (ids, amounts,
	 * legs and sagas: the full list opens src/store/auditor.c). Reports each
	 * discrepancy through report and counts sagas in flight. May run while
	 * the server writes. KOBO_ESTORE when the shard cannot be read. */
	int (*audit)(kobo_store *store, kobo_store_report_fn report, void *ctx,
	             kobo_audit_totals *totals);

	/* Closes the store; readers must be closed first. */
	void (*close)(kobo_store *store);
} kobo_store_ops;

/* Every backend's handles start with these. */
struct kobo_store {
	const kobo_store_ops *ops;
};

struct kobo_store_reader {
	kobo_store *store;
};

/* Opens shard `shard` of the store that url names:
 *   "sqlite:DIR"  the SQLite file DIR/shard-<shard>.db (layout.h), created
 *                 and migrated as needed unless read_only;
 *   "postgresql://…" or "postgres://…"  a libpq URI: shard N lives in the
 *                 schema kobo_shard_N of the database it names (created
 *                 and migrated under an advisory lock; src/store/postgres);
 *   "mem:"        a fresh, empty in-memory store (shard is ignored).
 * read_only: for audit and reads; begin() then answers KOBO_EINVAL and a
 * SQLite file is neither created nor migrated.
 * Returns KOBO_OK with *out (owned by the caller until kobo_store_close),
 * KOBO_EINVAL for a url this build cannot open (a sentence naming the
 * schemes it supports goes to stderr) or, from kobo_store_open_sharded, a
 * shard that is not the one asked for, KOBO_ENOMEM, or KOBO_ESTORE (the
 * backend could not open it; logged). *out is NULL on error. */
int kobo_store_open(const char *url, uint32_t shard, bool read_only,
                    kobo_store **out);

/* kobo_store_open for shard `shard` of a deployment of shard_count shards
 * (kobod and `kobo audit`; shard_count 0 checks nothing and is
 * kobo_store_open). A backend whose shards do not share a data directory
 * (PostgreSQL: one URL per shard) records shard_count with the shard when
 * it creates it and refuses a shard that records another index or another
 * count — a URL list in the wrong order, or of another length — with a
 * sentence naming what it found on stderr and KOBO_EINVAL. SQLite and mem
 * ignore shard_count (the data directory's shard map checks it). Other
 * returns as kobo_store_open. */
int kobo_store_open_sharded(const char *url, uint32_t shard,
                            uint32_t shard_count, bool read_only,
                            kobo_store **out);

/* Opens a read replica of shard `shard` of a deployment of shard_count
 * (> 0) shards: a PostgreSQL standby streaming from that shard's primary
 * (kobod --postgres-read). Only "postgresql://…" / "postgres://…" URLs
 * (any other scheme: KOBO_EINVAL with a sentence on stderr). The store is
 * read_only (begin() answers KOBO_EINVAL: nothing is ever written through
 * it, and a standby would refuse anyway); opening it checks, as for a
 * primary, that the database records this shard index and shard count
 * (else KOBO_EINVAL, explained on stderr). KOBO_ESTORE when it cannot be
 * reached (logged). Readers opened on it read the replica; their
 * read_position says how far its replay has come. */
int kobo_store_open_replica(const char *url, uint32_t shard, uint32_t shard_count,
                            kobo_store **out);

/* Thin wrappers so callers read as prose. */
static inline int kobo_store_begin(kobo_store *s) { return s->ops->begin(s); }
static inline int kobo_store_load_transfers(kobo_store *s, const char *const *ids,
                                            size_t n, kobo_store_transfer_fn each,
                                            void *ctx)
{
	return s->ops->load_transfers(s, ids, n, each, ctx);
}
static inline int kobo_store_load_accounts(kobo_store *s, const char *const *ids,
                                           size_t n, kobo_store_account_fn each,
                                           void *ctx)
{
	return s->ops->load_accounts(s, ids, n, each, ctx);
}
static inline int kobo_store_write(kobo_store *s,
                                   const kobo_account_change *accounts,
                                   size_t account_count,
                                   const kobo_transfer_change *transfers,
                                   size_t transfer_count)
{
	return s->ops->write(s, accounts, account_count, transfers, transfer_count);
}
static inline int kobo_store_write_events(kobo_store *s, const kobo_event *events,
                                          size_t count)
{
	return s->ops->write_events(s, events, count);
}
static inline int kobo_store_read_events(kobo_store_reader *r, const char *transfer_id,
                                         int64_t after_seq, size_t limit,
                                         kobo_store_event_fn each, void *ctx)
{
	return r->store->ops->read_events(r, transfer_id, after_seq, limit, each, ctx);
}
static inline int kobo_store_read_by_request(kobo_store_reader *r,
                                             const char *request_id,
                                             int64_t after_seq, size_t limit,
                                             kobo_store_transfer_fn each, void *ctx)
{
	return r->store->ops->read_by_request(r, request_id, after_seq, limit, each, ctx);
}
static inline int kobo_store_commit(kobo_store *s, uint64_t *token)
{
	return s->ops->commit(s, token);
}
static inline void kobo_store_rollback(kobo_store *s) { s->ops->rollback(s); }
static inline int kobo_store_now(kobo_store *s, int64_t local_now_ms, int64_t *now_ms)
{
	return s->ops->now(s, local_now_ms, now_ms);
}
static inline int kobo_store_set_concurrency(kobo_store *s, kobo_store_concurrency mode)
{
	return s->ops->set_concurrency(s, mode);
}
static inline bool kobo_store_healthy(kobo_store *s) { return s->ops->healthy(s); }
static inline void kobo_store_close(kobo_store *s) { s->ops->close(s); }
static inline int kobo_store_expired_holds(kobo_store *s, int64_t now_ms,
                                           char (*ids)[KOBO_ID_LEN_MAX + 1],
                                           size_t max, size_t *count)
{
	return s->ops->expired_holds(s, now_ms, ids, max, count);
}
static inline int kobo_store_audit(kobo_store *s, kobo_store_report_fn report,
                                   void *ctx, kobo_audit_totals *totals)
{
	return s->ops->audit(s, report, ctx, totals);
}
static inline int kobo_store_reader_open(kobo_store *s, kobo_store_reader **r)
{
	return s->ops->reader_open(s, r);
}
static inline void kobo_store_reader_close(kobo_store_reader *r)
{
	r->store->ops->reader_close(r);
}
static inline int kobo_store_read_account(kobo_store_reader *r, const char *id,
                                          kobo_account *out)
{
	return r->store->ops->read_account(r, id, out);
}
static inline int kobo_store_read_transfer(kobo_store_reader *r, const char *id,
                                           kobo_transfer *out)
{
	return r->store->ops->read_transfer(r, id, out);
}
static inline int kobo_store_read_history(kobo_store_reader *r,
                                          const char *account_id,
                                          int64_t after_seq, size_t limit,
                                          kobo_store_transfer_fn each, void *ctx)
{
	return r->store->ops->read_history(r, account_id, after_seq, limit, each, ctx);
}

static inline int kobo_store_read_sagas(kobo_store_reader *r, const char *after_id,
                                        size_t limit, kobo_store_transfer_fn each,
                                        void *ctx)
{
	return r->store->ops->read_sagas(r, after_id, limit, each, ctx);
}
static inline int kobo_store_read_accounts_prefix(kobo_store_reader *r,
                                                  const char *prefix,
                                                  kobo_store_account_fn each,
                                                  void *ctx)
{
	return r->store->ops->read_accounts_prefix(r, prefix, each, ctx);
}

static inline int kobo_store_read_position(kobo_store_reader *r,
                                           kobo_store_position *out)
{
	return r->store->ops->read_position(r, out);
}

static inline int kobo_store_claim_saga(kobo_store_reader *r, const char *id,
                                        const char *node, int64_t lease_ms,
                                        bool *claimed)
{
	return r->store->ops->claim_saga(r, id, node, lease_ms, claimed);
}
static inline int kobo_store_release_saga(kobo_store_reader *r, const char *id,
                                          const char *node)
{
	return r->store->ops->release_saga(r, id, node);
}

static inline int kobo_store_key_insert(kobo_store *s, const kobo_api_key *key)
{
	return s->ops->key_insert(s, key);
}
static inline int kobo_store_key_revoke(kobo_store *s, const char *id, int64_t at_ms)
{
	return s->ops->key_revoke(s, id, at_ms);
}
static inline int kobo_store_read_keys(kobo_store_reader *r, bool include_revoked,
                                       kobo_store_key_fn each, void *ctx)
{
	return r->store->ops->read_keys(r, include_revoked, each, ctx);
}

#endif /* KOBO_STORE_H */
