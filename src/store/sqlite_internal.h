/*
 * sqlite_internal.h — what the files of the SQLite store share.
 *
 * store_sqlite.c owns the handles (writer, checkpointer, readers) and the
 * schema; sqlite_audit.c checks a shard on its own read connection. Nothing
 * outside src/store includes this header: the contract is store.h.
 */
#ifndef KOBO_STORE_SQLITE_INTERNAL_H
#define KOBO_STORE_SQLITE_INTERNAL_H

#include <sqlite3.h>

#include "store.h"

/* The schema version this build writes and reads (PRAGMA user_version). */
#define STORE_SQLITE_SCHEMA_VERSION 1

/* How long a connection waits for a lock held by another connection before
 * giving up with SQLITE_BUSY. The writer and readers wait long enough to ride
 * out a checkpoint; the checkpointer gives up quickly so that it never holds
 * up the writer (see store_sqlite.c, "Checkpoints"). */
#define STORE_SQLITE_BUSY_TIMEOUT_MS 2000
#define STORE_SQLITE_CHECKPOINT_BUSY_TIMEOUT_MS 50

/* Text forms of the enums as stored, so that `sqlite3 shard.db` shows
 * 'posted' rather than 2. These are the store's file format: they never
 * change meaning once written. */
const char *store_sqlite_status_text(kobo_transfer_status status);
int store_sqlite_status_parse(const char *text, kobo_transfer_status *status);

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

/* Logs a SQLite failure as one structured warning line. */
void store_sqlite_log_error(sqlite3 *db, const char *event, const char *path);

/* The audit of the shard file at path on a snapshot of its own; see
 * kobo_store_ops.audit. */
int store_sqlite_audit(const char *path, kobo_store_report_fn report, void *ctx,
                       kobo_audit_totals *totals);

#endif /* KOBO_STORE_SQLITE_INTERNAL_H */
