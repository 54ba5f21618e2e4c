/*
 * store.h — the storage contract every backend implements.
 *
 * A store holds one shard: its accounts and transfers. Kobo ships an
 * embedded SQLite backend (store_sqlite.c); a PostgreSQL backend implements
 * the same vtable later without any change to the shard writer.
 *
 * Two kinds of handle:
 *   kobo_store         the write side. Exactly one thread (the shard writer)
 *                      uses it. One batch is one transaction:
 *
 *                        begin ──▶ load_transfers ──▶ load_accounts
 *                          ──▶ (ledger applies, no I/O) ──▶ write ──▶ commit
 *                        any error ──▶ rollback
 *
 *                      begin locks what the batch touches (SQLite: BEGIN
 *                      IMMEDIATE takes the file's write lock; PostgreSQL:
 *                      SELECT … FOR UPDATE on the loaded rows in id order).
 *                      commit returns only once the batch is on stable
 *                      storage (fsync), so the writer may answer.
 *   kobo_store_reader  a read connection: one per reading thread, never
 *                      blocked by the writer (SQLite WAL readers).
 *
 * Sticky error: after any failed write, write-side I/O or commit the store
 * enters a failed state in which begin() returns KOBO_EFAILED until the
 * process reopens it: memory and disk may disagree, and being unavailable is
 * better than being wrong. healthy() reports it (/readyz answers 503).
 *
 * Every function returns KOBO_OK or a negative KOBO_E* code from ledger.h.
 */
#ifndef KOBO_STORE_H
#define KOBO_STORE_H

#include "../ledger/ledger.h"

typedef struct kobo_store kobo_store;
typedef struct kobo_store_reader kobo_store_reader;

/* Called once per transfer by history reads; seq orders a shard's transfers
 * (oldest first) and is the history cursor. The transfer and its metadata are
 * valid only during the call. Return non-zero to stop early. */
typedef int (*kobo_store_transfer_fn)(void *ctx, const kobo_transfer *transfer,
                                      int64_t seq);

/* Called once per discrepancy found by audit, with a readable sentence. */
typedef void (*kobo_store_report_fn)(void *ctx, const char *line);

/* Called once per account by kobo_store_read_accounts_prefix. */
typedef int (*kobo_store_account_fn)(void *ctx, const kobo_account *account);

typedef struct kobo_audit_totals {
	size_t accounts;
	size_t transfers;
	size_t problems; /* discrepancies reported; 0 means the shard is sound */
	size_t sagas_in_flight; /* DEBIT legs with saga != KOBO_SAGA_NONE */
} kobo_audit_totals;

typedef struct kobo_store_ops {
	/* Starts the batch transaction and takes the write lock. Memory handed
	 * out by the previous batch's loads becomes invalid. KOBO_EFAILED in the
	 * sticky error state, KOBO_ESTORE on I/O error. */
	int (*begin)(kobo_store *store);
	/* Puts every stored transfer whose id is in ids[0..count) into ledger
	 * (kobo_ledger_put_transfer); missing ids are skipped. Metadata stays
	 * valid until the next begin(). */
	int (*load_transfers)(kobo_store *store, const char *const *ids,
	                      size_t count, kobo_ledger *ledger);
	/* The same for accounts (kobo_ledger_put_account). */
	int (*load_accounts)(kobo_store *store, const char *const *ids,
	                     size_t count, kobo_ledger *ledger);
	/* Persists kobo_ledger_changed_accounts/transfers: inserts the new
	 * ones (transfers in list order, which fixes their seq), updates the
	 * others. */
	int (*write)(kobo_store *store, const kobo_ledger *ledger);
	/* Commits durably. On error the batch is not applied and the store is
	 * in the sticky error state. */
	int (*commit)(kobo_store *store);
	/* Abandons the batch. Safe to call after any failed step. */
	void (*rollback)(kobo_store *store);
	/* Lists up to max ids of holds with status pending and
	 * 0 < expires_at_ms <= now_ms, oldest expiry first (PROCESSING records,
	 * whose saga is under way, are not listed). Called by the writer
	 * outside a batch. */
	int (*expired_holds)(kobo_store *store, int64_t now_ms,
	                     char (*ids)[KOBO_ID_LEN_MAX + 1], size_t max,
	                     size_t *count);
	/* false once the store is in its sticky error state. Thread-safe. */
	bool (*healthy)(kobo_store *store);

	/* Opens a read connection for the calling thread. */
	int (*reader_open)(kobo_store *store, kobo_store_reader **reader);
	void (*reader_close)(kobo_store_reader *reader);
	/* KOBO_ENOTFOUND when absent. *out and its metadata are valid until the
	 * next call on this reader. */
	int (*read_account)(kobo_store_reader *reader, const char *id,
	                    kobo_account *out);
	int (*read_transfer)(kobo_store_reader *reader, const char *id,
	                     kobo_transfer *out);
	/* Transfers that debit or credit account_id with seq > after_seq
	 * (0: from the start), oldest first, at most limit, rejected ones
	 * excluded. A cross-shard leg counts for its from, its to and its
	 * clearing account alike. */
	int (*read_history)(kobo_store_reader *reader, const char *account_id,
	                    int64_t after_seq, size_t limit,
	                    kobo_store_transfer_fn each, void *ctx);
	/* DEBIT legs whose saga is under way (saga != NONE) with id > after_id
	 * ("" from the start), in id order, at most limit: the saga runner's
	 * recovery scan. seq is passed as in read_history. */
	int (*read_sagas)(kobo_store_reader *reader, const char *after_id,
	                  size_t limit, kobo_store_transfer_fn each, void *ctx);
	/* Every account whose id starts with prefix, in id order (the audit
	 * lists clearing accounts with it). */
	int (*read_accounts_prefix)(kobo_store_reader *reader, const char *prefix,
	                            kobo_store_account_fn each, void *ctx);

	/* Checks the whole shard on a consistent snapshot: per currency posted
	 * balances sum to 0 and pending_out sums equal pending_in sums; every
	 * account's posted, pending_out and pending_in equal what its transfers
	 * say (a transfer moves money between kobo_transfer_debit_account and
	 * kobo_transfer_credit_account; PENDING and PROCESSING records hold);
	 * no non-negative account has available < 0. Reports each
	 * discrepancy through report and counts sagas in flight. May run while
	 * the server writes. */
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

/* Opens (creating and migrating as needed) the SQLite shard file at path:
 * WAL mode, synchronous=FULL, schema versioned by PRAGMA user_version.
 * read_only: open for audit and reads only (begin() returns KOBO_EINVAL).
 * On success *out is owned by the caller until close. */
int kobo_store_sqlite_open(const char *path, bool read_only, kobo_store **out);

/* Thin wrappers so callers read as prose. */
static inline int kobo_store_begin(kobo_store *s) { return s->ops->begin(s); }
static inline int kobo_store_load_transfers(kobo_store *s, const char *const *ids,
                                            size_t n, kobo_ledger *l)
{
	return s->ops->load_transfers(s, ids, n, l);
}
static inline int kobo_store_load_accounts(kobo_store *s, const char *const *ids,
                                           size_t n, kobo_ledger *l)
{
	return s->ops->load_accounts(s, ids, n, l);
}
static inline int kobo_store_write(kobo_store *s, const kobo_ledger *l)
{
	return s->ops->write(s, l);
}
static inline int kobo_store_commit(kobo_store *s) { return s->ops->commit(s); }
static inline void kobo_store_rollback(kobo_store *s) { s->ops->rollback(s); }
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

#endif /* KOBO_STORE_H */
