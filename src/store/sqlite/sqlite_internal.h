/*
 * sqlite_internal.h — what the files of the SQLite store share.
 *
 * store_sqlite.c owns the write side, the checkpointer and the schema (and
 * the design notes); sqlite_read.c opens connections, decodes rows and
 * serves readers; sqlite_audit.c feeds a shard, read on a connection of its
 * own, to the audit's rules, which know nothing of SQLite and live in
 * auditor.h / auditor.c (the in-memory store feeds them too).
 * Nothing outside src/store includes this header but the store's own unit
 * test: the contract is store.h.
 */
#ifndef KOBO_STORE_SQLITE_INTERNAL_H
#define KOBO_STORE_SQLITE_INTERNAL_H

#include <sqlite3.h>

#include "store_sqlite.h"

/* The loaded-metadata arena keeps at most this many bytes of chunks from one
 * batch to the next; a larger batch's chunks are freed at the next begin. */
#define STORE_SQLITE_ARENA_KEEP_BYTES (1024 * 1024)

/* Bytes of arena chunks the writer holds now (for tests). */
size_t store_sqlite_arena_bytes(const kobo_store *store);

/* The schema version this build writes and reads (PRAGMA user_version). */
#define STORE_SQLITE_SCHEMA_VERSION 6

/* How long a connection waits for a lock held by another connection before
 * giving up with SQLITE_BUSY. The writer and readers wait long enough to ride
 * out a checkpoint; the checkpointer gives up quickly so that it never holds
 * up the writer (see store_sqlite.c, "Checkpoints"). */
#define STORE_SQLITE_BUSY_TIMEOUT_MS 2000
#define STORE_SQLITE_CHECKPOINT_BUSY_TIMEOUT_MS 50
/* The API key writes (key_insert, key_revoke) wait this long for the write
 * lock: `kobo key` writes while kobod may be running on the file, and
 * kobod's batches and checkpoints hold that lock for milliseconds. */
#define STORE_SQLITE_KEY_BUSY_TIMEOUT_MS 10000

/* Column lists shared by every statement that decodes a row with
 * store_sqlite_account_from_row / store_sqlite_transfer_from_row. */
#define ACCOUNT_COLUMNS \
	"id, currency, allow_negative, posted, pending_out, pending_in, " \
	"metadata, created_at_ms, created_by"
#define TRANSFER_COLUMNS \
	"seq, id, from_id, to_id, currency, amount, posted_amount, pending, " \
	"timeout_seconds, expires_at_ms, status, void_reason, error_code, " \
	"metadata, request_id, created_at_ms, updated_at_ms, leg, clearing, " \
	"saga, saga_amount, saga_reason, created_by, trace_id"
/* The api_keys columns store_sqlite_key_from_row decodes. */
#define KEY_COLUMNS \
	"id, name, scopes, salt, hash, created_at_ms, revoked_at_ms"

/* Text forms of the statuses, legs, saga states and void reasons as stored
 * (their wire names), so that `sqlite3 shard.db` shows 'posted' rather than
 * 2. Part of the file format: a stored word never changes meaning. A void
 * reason of KOBO_VOID_NONE is stored as NULL. Rows are parsed back with the
 * ledger's parsers (names.c); a word they refuse is a corrupt row
 * (KOBO_ESTORE). */
const char *store_sqlite_status_text(kobo_transfer_status status);

/* Opens a connection to path (a file name or a "file:" URI) with flags
 * (SQLITE_OPEN_* without URI, which is always added), extended result codes,
 * the given busy timeout and foreign keys off. For a read-only connection it
 * also checks that the file carries exactly STORE_SQLITE_SCHEMA_VERSION.
 * Returns KOBO_OK and *db, or KOBO_ESTORE (logged) with *db NULL. */
int store_sqlite_connect(const char *path, int flags, int busy_timeout_ms,
                         sqlite3 **db);

/* Checks that db holds schema version STORE_SQLITE_SCHEMA_VERSION: refuses
 * an unmigrated file (version 0 or older) and one written by a newer build.
 * KOBO_OK or KOBO_ESTORE (logged). */
int store_sqlite_check_version(sqlite3 *db, const char *path);

/* Logs a SQLite failure (db's last error) as one structured error line. */
void store_sqlite_log_error(sqlite3 *db, const char *event, const char *path);

/* Runs sql (no rows expected); KOBO_ESTORE, logged, on failure. */
int store_sqlite_exec(sqlite3 *db, const char *sql, const char *path);
/* Reads the one integer a pragma such as "PRAGMA user_version" returns. */
int store_sqlite_pragma_int(sqlite3 *db, const char *sql, int *value);

/* Prepares sql[0..count) into stmt[] once, for reuse (PERSISTENT), or
 * finalizes them all (NULL entries are fine). */
int store_sqlite_prepare_all(sqlite3 *db, const char *const *sql,
                             sqlite3_stmt **stmt, size_t count, const char *path);
void store_sqlite_finalize_all(sqlite3_stmt **stmt, size_t count);

/* Row decoding. The text field is copied (KOBO_ESTORE if NULL or longer
 * than dst_size - 1). The decoded metadata points into the current row: it
 * is valid until the statement steps or resets, so callers copy it. Any
 * value this code could not have written gives KOBO_ESTORE. */
int store_sqlite_copy_text(sqlite3_stmt *stmt, int column, char *dst,
                           size_t dst_size);
int store_sqlite_account_from_row(sqlite3_stmt *stmt, kobo_account *out);
int store_sqlite_transfer_from_row(sqlite3_stmt *stmt, kobo_transfer *out,
                                   int64_t *seq);
int store_sqlite_key_from_row(sqlite3_stmt *stmt, kobo_api_key *out);

/* The shard file path (or URI) a store was opened with. */
const char *store_sqlite_path(const kobo_store *store);

/* The reader half of kobo_store_ops (sqlite_read.c). */
int store_sqlite_reader_open(kobo_store *store, kobo_store_reader **reader);
void store_sqlite_reader_close(kobo_store_reader *reader);
int store_sqlite_read_account(kobo_store_reader *reader, const char *id,
                              kobo_account *out);
int store_sqlite_read_transfer(kobo_store_reader *reader, const char *id,
                               kobo_transfer *out);
int store_sqlite_read_history(kobo_store_reader *reader, const char *account_id,
                              int64_t after_seq, size_t limit,
                              kobo_store_transfer_fn each, void *ctx);
int store_sqlite_read_events(kobo_store_reader *reader, const char *transfer_id,
                             int64_t after_seq, size_t limit,
                             kobo_store_event_fn each, void *ctx);
int store_sqlite_read_by_request(kobo_store_reader *reader, const char *request_id,
                                 int64_t after_seq, size_t limit,
                                 kobo_store_transfer_fn each, void *ctx);
int store_sqlite_read_sagas(kobo_store_reader *reader, const char *after_id,
                            size_t limit, kobo_store_transfer_fn each, void *ctx);
int store_sqlite_read_accounts_prefix(kobo_store_reader *reader,
                                      const char *prefix,
                                      kobo_store_account_fn each, void *ctx);
int store_sqlite_read_position(kobo_store_reader *reader, kobo_store_position *out);
int store_sqlite_claim_saga(kobo_store_reader *reader, const char *id,
                            const char *node, int64_t lease_ms, bool *claimed);
int store_sqlite_release_saga(kobo_store_reader *reader, const char *id,
                              const char *node);
int store_sqlite_read_keys(kobo_store_reader *reader, bool include_revoked,
                           kobo_store_key_fn each, void *ctx);

/* The audit of the shard file at path on a snapshot of its own
 * (sqlite_audit.c); see kobo_store_ops.audit. */
int store_sqlite_audit(const char *path, kobo_store_report_fn report, void *ctx,
                       kobo_audit_totals *totals);

#endif /* KOBO_STORE_SQLITE_INTERNAL_H */
