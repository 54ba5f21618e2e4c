/*
 * pg_internal.h — what the files of the PostgreSQL store share.
 *
 * store_pg.c owns open and close, the schema and its migration, and the
 * write side (and the design notes); pg_read.c opens connections, logs
 * libpq failures, decodes rows and serves readers; pg_audit.c feeds a
 * shard, read on a snapshot of its own, to the audit's rules, which know
 * nothing of PostgreSQL and live in auditor.h / auditor.c (the other
 * stores feed them too).
 * Nothing outside src/store includes this header: the contract is store.h,
 * and kobo_store_open reaches this backend through store_pg.h.
 */
#ifndef KOBO_STORE_PG_INTERNAL_H
#define KOBO_STORE_PG_INTERNAL_H

#include <libpq-fe.h>

#include "../../obs/obs.h"
#include "store_pg.h"

/* Column lists shared by every statement that decodes a row with
 * store_pg_account_from_row / store_pg_transfer_from_row. */
#define PG_ACCOUNT_COLUMNS \
	"id, currency, allow_negative, posted, pending_out, pending_in, " \
	"metadata, created_at_ms, created_by"
#define PG_TRANSFER_COLUMNS \
	"seq, id, from_id, to_id, currency, amount, posted_amount, pending, " \
	"timeout_seconds, expires_at_ms, status, void_reason, error_code, " \
	"metadata, request_id, created_at_ms, updated_at_ms, leg, clearing, " \
	"saga, saga_amount, saga_reason, created_by, trace_id"

/* The api_keys columns store_pg_key_from_row decodes. */
#define PG_KEY_COLUMNS \
	"id, name, scopes, salt, hash, created_at_ms, revoked_at_ms"

/* ---- Connections and errors (pg_read.c). ---- */

/* Opens a connection to url (a libpq connection string or URI) with the
 * session settings every Kobo connection uses: connect_timeout and
 * application_name as defaults the URL may override, synchronous_commit
 * on, search_path = schema, UTF8. Returns KOBO_OK and *out (the caller's,
 * to PQfinish), KOBO_ENOMEM, KOBO_ECONNLOST (logged: the server cannot be
 * reached) or KOBO_ESTORE (logged: a session setting was refused), with
 * *out NULL on failure. */
int store_pg_connect(const char *url, const char *schema, PGconn **out);

/* Runs sql (any rows are dropped); KOBO_ESTORE, logged as event, on
 * failure. */
int store_pg_exec(PGconn *conn, const char *sql, const char *event);

/* Prepares sqls[0..count) under names[0..count) on conn. KOBO_OK,
 * KOBO_ECONNLOST (the link is gone) or KOBO_ESTORE; logged. */
int store_pg_prepare_all(PGconn *conn, const char *const *names,
                         const char *const *sqls, size_t count);

/* Logs a libpq failure (res's error, else conn's) with its SQLSTATE as one
 * structured error line named event. res and conn may be NULL. */
void store_pg_log_error(const char *event, PGconn *conn, const PGresult *res);
/* The same at a chosen level (an expected race is logged at info). */
void store_pg_log_error_at(kobo_log_level level, const char *event,
                           PGconn *conn, const PGresult *res);

/* true when the failure means the link to the server is gone (or going):
 * a broken connection, or the server shutting down / in recovery. */
bool store_pg_connection_lost(PGconn *conn, const PGresult *res);

/* ---- Decoded metadata, kept as long as the contract says. ----
 *
 * Rows arrive as text; a bytea column decodes into a block the pool owns,
 * freed by store_pg_pool_free (blocks only) or store_pg_pool_destroy
 * (everything). A zeroed pool is empty. */
typedef struct store_pg_pool {
	char **blocks;
	size_t count;
	size_t cap;
} store_pg_pool;

void store_pg_pool_free(store_pg_pool *p);
void store_pg_pool_destroy(store_pg_pool *p);

/* ---- Row decoding (text results). ---- */

/* Column col of row as an integer (0 if it is not one: columns this code
 * reads as integers are NOT NULL bigints). */
int64_t store_pg_col_int(const PGresult *res, int row, int col);
/* Copies a text column into dst; KOBO_ESTORE if NULL or longer than
 * size - 1. */
int store_pg_col_copy(const PGresult *res, int row, int col, char *dst,
                      size_t size);
/* A text column as stored (a wire name), NULL for SQL NULL; points into
 * res. */
const char *store_pg_col_word(const PGresult *res, int row, int col);

/* A row of PG_ACCOUNT_COLUMNS / PG_TRANSFER_COLUMNS. The text fields are
 * copied; the metadata is a block of pool, valid until the pool is freed.
 * KOBO_ESTORE for any value this code could not have written, and also
 * when the pool cannot grow. */
int store_pg_account_from_row(const PGresult *res, int row, store_pg_pool *pool,
                              kobo_account *out);
int store_pg_transfer_from_row(const PGresult *res, int row, store_pg_pool *pool,
                               kobo_transfer *out, int64_t *seq);

/* A row of PG_KEY_COLUMNS; KOBO_ESTORE for a value this code could not
 * have written. */
int store_pg_key_from_row(const PGresult *res, int row, kobo_api_key *out);

/* ---- The handle (store_pg.c). ---- */

/* The URL a store was opened with, and its shard's schema name
 * (kobo_shard_<N>); both live as long as the store. */
const char *store_pg_url(const kobo_store *store);
const char *store_pg_schema(const kobo_store *store);
/* Round trips the writer's connection has made since open (each pipeline
 * Sync, each statement outside one): a batch is three (store_pg.c,
 * "Round trips"). For tests and measurements. */
uint64_t store_pg_round_trips(const kobo_store *store);

/* ---- The reader half of kobo_store_ops (pg_read.c). ---- */

int store_pg_reader_open(kobo_store *store, kobo_store_reader **reader);
void store_pg_reader_close(kobo_store_reader *reader);
int store_pg_read_account(kobo_store_reader *reader, const char *id,
                          kobo_account *out);
int store_pg_read_transfer(kobo_store_reader *reader, const char *id,
                           kobo_transfer *out);
int store_pg_read_history(kobo_store_reader *reader, const char *account_id,
                          int64_t after_seq, size_t limit,
                          kobo_store_transfer_fn each, void *ctx);
int store_pg_read_events(kobo_store_reader *reader, const char *transfer_id,
                         int64_t after_seq, size_t limit,
                         kobo_store_event_fn each, void *ctx);
int store_pg_read_by_request(kobo_store_reader *reader, const char *request_id,
                             int64_t after_seq, size_t limit,
                             kobo_store_transfer_fn each, void *ctx);
int store_pg_read_sagas(kobo_store_reader *reader, const char *after_id,
                        size_t limit, kobo_store_transfer_fn each, void *ctx);
int store_pg_read_accounts_prefix(kobo_store_reader *reader, const char *prefix,
                                  kobo_store_account_fn each, void *ctx);
int store_pg_read_position(kobo_store_reader *reader, kobo_store_position *out);
int store_pg_claim_saga(kobo_store_reader *reader, const char *id,
                        const char *node, int64_t lease_ms, bool *claimed);
int store_pg_release_saga(kobo_store_reader *reader, const char *id,
                          const char *node);
int store_pg_read_keys(kobo_store_reader *reader, bool include_revoked,
                       kobo_store_key_fn each, void *ctx);

/* ---- The audit (pg_audit.c). ---- */

/* The audit of the shard in schema `schema` of the database url names, on
 * a REPEATABLE READ snapshot and a connection of its own; see
 * kobo_store_ops.audit. */
int store_pg_audit(const char *url, const char *schema,
                   kobo_store_report_fn report, void *ctx,
                   kobo_audit_totals *totals);

#endif /* KOBO_STORE_PG_INTERNAL_H */
