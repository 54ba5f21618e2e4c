/*
 * sqlite_read.c — connections, row decoding and the read side of the SQLite
 * store.
 *
 * Everything here is shared by the writer (store_sqlite.c) and the readers:
 * opening a connection with the store's settings, checking the schema
 * version, turning rows into kobo_account / kobo_transfer. The readers are
 * one connection each, opened read-only for one thread (SQLITE_OPEN_NOMUTEX),
 * with their own prepared statements; in WAL mode they never wait for the
 * writer and never see an uncommitted batch. Design notes: store_sqlite.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../obs/obs.h"
#include "sqlite_internal.h"

enum {
	SQL_READ_ACCOUNT,
	SQL_READ_TRANSFER,
	SQL_READ_HISTORY,
	SQL_READ_SAGAS,
	SQL_READ_ACCOUNTS_FROM,
	SQL_READ_ACCOUNTS_RANGE,
	SQL_READ_KEYS,
	SQL_READ_KEYS_ALL,
	SQL_READ_EVENTS,
	SQL_READ_BY_REQUEST,
	SQL_READER_COUNT
};

static const char *const reader_sql[SQL_READER_COUNT] = {
	[SQL_READ_ACCOUNT] = "SELECT " ACCOUNT_COLUMNS " FROM accounts WHERE id = ?1",
	[SQL_READ_TRANSFER] = "SELECT " TRANSFER_COLUMNS " FROM transfers WHERE id = ?1",
	/* Three range scans, one per index, merged lazily in seq order by
	 * SQLite's compound-select merge (EXPLAIN QUERY PLAN: MERGE (UNION ALL)
	 * of SEARCH transfers USING INDEX transfers_from_seq, transfers_to_seq
	 * and transfers_clearing_seq, no temporary b-tree; checked by
	 * test_store_sqlite), so a page reads about limit rows. An OR of the
	 * three columns would scan the table instead. Each arm leaves out the
	 * rows an earlier arm returns, so UNION ALL never repeats a row and
	 * LIMIT counts distinct transfers (read_history also skips a repeated
	 * seq, in case). `clearing <> ''` repeats the partial index's condition
	 * so that SQLite may use it. */
	[SQL_READ_HISTORY] =
		"SELECT " TRANSFER_COLUMNS " FROM transfers"
		" WHERE from_id = ?1 AND seq > ?2 AND status <> 'rejected' "
		"UNION ALL "
		"SELECT " TRANSFER_COLUMNS " FROM transfers"
		" WHERE to_id = ?1 AND from_id <> ?1 AND seq > ?2"
		" AND status <> 'rejected' "
		"UNION ALL "
		"SELECT " TRANSFER_COLUMNS " FROM transfers"
		" WHERE clearing = ?1 AND clearing <> '' AND from_id <> ?1"
		" AND to_id <> ?1 AND seq > ?2 AND status <> 'rejected' "
		"ORDER BY seq LIMIT ?3",
	/* The partial index holds only the sagas in flight, in id order. It
	 * is named so that the plan cannot drift to walking the id index of
	 * every transfer (SQLite picks it today; statistics could change
	 * that). */
	[SQL_READ_SAGAS] =
		"SELECT " TRANSFER_COLUMNS " FROM transfers INDEXED BY transfers_sagas"
		" WHERE saga <> 'none' AND id > ?1 ORDER BY id LIMIT ?2",
	/* Prefix reads are id ranges on the primary key, [prefix, bound): no
	 * LIKE or GLOB, so no character of the prefix is special. The second
	 * form serves a prefix that has no upper bound ("" or all 0xFF). */
	[SQL_READ_ACCOUNTS_FROM] =
		"SELECT " ACCOUNT_COLUMNS " FROM accounts WHERE id >= ?1 ORDER BY id",
	[SQL_READ_ACCOUNTS_RANGE] =
		"SELECT " ACCOUNT_COLUMNS " FROM accounts WHERE id >= ?1 AND id < ?2"
		" ORDER BY id",
	/* read_keys: at most KOBO_KEYS_MAX live ones (key_insert's bound). */
	[SQL_READ_KEYS] =
		"SELECT " KEY_COLUMNS " FROM api_keys WHERE revoked_at_ms = 0 ORDER BY id",
	[SQL_READ_KEYS_ALL] = "SELECT " KEY_COLUMNS " FROM api_keys ORDER BY id",
	[SQL_READ_EVENTS] =
		"SELECT seq, transfer_id, event, at_ms, shard, node, request_id, trace_id,"
		" key_id, leg, status, amount FROM events"
		" WHERE transfer_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
	[SQL_READ_BY_REQUEST] =
		"SELECT " TRANSFER_COLUMNS " FROM transfers INDEXED BY transfers_request"
		" WHERE request_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
};

typedef struct sqlite_reader {
	kobo_store_reader base; /* first */
	sqlite3 *db;
	sqlite3_stmt *stmt[SQL_READER_COUNT];
	sqlite3_stmt *position; /* read_position's, prepared on first use */
	char *buffer; /* metadata of the last read, grown as needed */
	size_t buffer_size;
} sqlite_reader;

static sqlite_reader *to_reader(kobo_store_reader *reader)
{
	return (sqlite_reader *)reader;
}

/* ---- Connections and names (sqlite_internal.h). ---- */

/* The stored text of statuses and void reasons is their wire name
 * (names.c), so the file, the API and the CLI spell them one way. The
 * schema's CHECK constraints list the same words. */
const char *store_sqlite_status_text(kobo_transfer_status status)
{
	return kobo_transfer_status_name(status);
}


void store_sqlite_log_error(sqlite3 *db, const char *event, const char *path)
{
	char path_json[512];
	char message_json[512];

	kobo_json_escape(path_json, sizeof path_json, path != NULL ? path : "");
	kobo_json_escape(message_json, sizeof message_json,
	                 db != NULL ? sqlite3_errmsg(db) : "out of memory");
	kobo_log(KOBO_LOG_ERROR, event,
	         "\"path\":\"%s\",\"sqlite_code\":%d,\"sqlite_message\":\"%s\"",
	         path_json, db != NULL ? sqlite3_extended_errcode(db) : SQLITE_NOMEM,
	         message_json);
}

int store_sqlite_exec(sqlite3 *db, const char *sql, const char *path)
{
	int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		store_sqlite_log_error(db, "store_sql_failed", path);
		return KOBO_ESTORE;
	}
	return KOBO_OK;
}

/* Reads one integer pragma (user_version, page_size). */
int store_sqlite_pragma_int(sqlite3 *db, const char *sql, int *value)
{
	sqlite3_stmt *stmt = NULL;
	int rc = sqlite3_prepare_v2(db, sql, -1, &stmt, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW) {
		*value = sqlite3_column_int(stmt, 0);
		rc = SQLITE_OK;
	}
	sqlite3_finalize(stmt);
	return rc == SQLITE_OK ? KOBO_OK : KOBO_ESTORE;
}

int store_sqlite_check_version(sqlite3 *db, const char *path)
{
	char path_json[512];
	int version = 0;

	kobo_json_escape(path_json, sizeof path_json, path);
	if (store_sqlite_pragma_int(db, "PRAGMA user_version", &version) != KOBO_OK) {
		store_sqlite_log_error(db, "store_version_unreadable", path);
		return KOBO_ESTORE;
	}
	if (version > STORE_SQLITE_SCHEMA_VERSION) {
		kobo_log(KOBO_LOG_ERROR, "store_schema_too_new",
		         "\"path\":\"%s\",\"schema_version\":%d,\"known_version\":%d,"
		         "\"message\":\"the shard file was written by a newer Kobo; "
		         "upgrade this binary\"",
		         path_json, version, STORE_SQLITE_SCHEMA_VERSION);
		return KOBO_ESTORE;
	}
	if (version < STORE_SQLITE_SCHEMA_VERSION) {
		kobo_log(KOBO_LOG_ERROR, "store_schema_not_migrated",
		         "\"path\":\"%s\",\"schema_version\":%d,\"known_version\":%d,"
		         "\"message\":\"the shard file is not migrated; open it "
		         "read-write once (start kobod) to migrate it\"",
		         path_json, version, STORE_SQLITE_SCHEMA_VERSION);
		return KOBO_ESTORE;
	}
	return KOBO_OK;
}

int store_sqlite_connect(const char *path, int flags, int busy_timeout_ms,
                         sqlite3 **db)
{
	*db = NULL;
	int rc = sqlite3_open_v2(path, db, flags | SQLITE_OPEN_URI, NULL);
	if (rc != SQLITE_OK) {
		store_sqlite_log_error(*db, "store_open_failed", path);
		sqlite3_close(*db);
		*db = NULL;
		return KOBO_ESTORE;
	}
	sqlite3_extended_result_codes(*db, 1);
	sqlite3_busy_timeout(*db, busy_timeout_ms);
	if (store_sqlite_exec(*db, "PRAGMA foreign_keys = OFF", path) != KOBO_OK)
		goto fail;
	if ((flags & SQLITE_OPEN_READONLY) &&
	    store_sqlite_check_version(*db, path) != KOBO_OK)
		goto fail;
	return KOBO_OK;
fail:
	sqlite3_close(*db);
	*db = NULL;
	return KOBO_ESTORE;
}

/* ---- Rows. ---- */

/* Copies a text column into a fixed NUL-terminated field. A NULL or too
 * long value means the file does not hold what this code wrote. */
int store_sqlite_copy_text(sqlite3_stmt *stmt, int column, char *dst, size_t dst_size)
{
	const unsigned char *text = sqlite3_column_text(stmt, column);
	int len = sqlite3_column_bytes(stmt, column);
	if (text == NULL || len < 0 || (size_t)len >= dst_size)
		return KOBO_ESTORE;
	memcpy(dst, text, (size_t)len);
	dst[len] = '\0';
	return KOBO_OK;
}

/* Points *metadata at the metadata column of the current row: valid until
 * the statement steps or resets. */
static int column_metadata(sqlite3_stmt *stmt, int column, const char **metadata,
                           uint32_t *len)
{
	const unsigned char *text = sqlite3_column_text(stmt, column);
	int bytes = sqlite3_column_bytes(stmt, column);
	if (text == NULL || bytes < 0)
		return KOBO_ESTORE;
	*metadata = (const char *)text;
	*len = (uint32_t)bytes;
	return KOBO_OK;
}

/* Fills *out from a row of ACCOUNT_COLUMNS; metadata points into the row. */
int store_sqlite_account_from_row(sqlite3_stmt *stmt, kobo_account *out)
{
	memset(out, 0, sizeof *out);
	if (store_sqlite_copy_text(stmt, 0, out->id, sizeof out->id) != KOBO_OK ||
	    store_sqlite_copy_text(stmt, 1, out->currency, sizeof out->currency) != KOBO_OK)
		return KOBO_ESTORE;
	out->allow_negative = sqlite3_column_int(stmt, 2) != 0;
	out->posted = sqlite3_column_int64(stmt, 3);
	out->pending_out = sqlite3_column_int64(stmt, 4);
	out->pending_in = sqlite3_column_int64(stmt, 5);
	if (column_metadata(stmt, 6, &out->metadata, &out->metadata_len) != KOBO_OK)
		return KOBO_ESTORE;
	out->created_at_ms = sqlite3_column_int64(stmt, 7);
	return store_sqlite_copy_text(stmt, 8, out->created_by, sizeof out->created_by);
}

/* Fills *out and *seq from a row of TRANSFER_COLUMNS; metadata points into
 * the row. */
int store_sqlite_transfer_from_row(sqlite3_stmt *stmt, kobo_transfer *out, int64_t *seq)
{
	memset(out, 0, sizeof *out);
	*seq = sqlite3_column_int64(stmt, 0);
	if (store_sqlite_copy_text(stmt, 1, out->id, sizeof out->id) != KOBO_OK ||
	    store_sqlite_copy_text(stmt, 2, out->from, sizeof out->from) != KOBO_OK ||
	    store_sqlite_copy_text(stmt, 3, out->to, sizeof out->to) != KOBO_OK ||
	    store_sqlite_copy_text(stmt, 4, out->currency, sizeof out->currency) != KOBO_OK)
		return KOBO_ESTORE;
	out->amount = sqlite3_column_int64(stmt, 5);
	out->posted_amount = sqlite3_column_int64(stmt, 6);
	out->pending = sqlite3_column_int(stmt, 7) != 0;
	int64_t timeout = sqlite3_column_int64(stmt, 8);
	if (timeout < 0 || timeout > (int64_t)UINT32_MAX)
		return KOBO_ESTORE;
	out->timeout_seconds = (uint32_t)timeout;
	out->expires_at_ms = sqlite3_column_int64(stmt, 9);
	if (!kobo_transfer_status_parse((const char *)sqlite3_column_text(stmt, 10),
	                              &out->status))
		return KOBO_ESTORE;
	if (!kobo_void_reason_parse((const char *)sqlite3_column_text(stmt, 11),
	                                   &out->void_reason))
		return KOBO_ESTORE;
	const char *error_code = (const char *)sqlite3_column_text(stmt, 12);
	out->error_code = KOBO_RESULT_CREATED;
	if (error_code != NULL) {
		out->error_code = kobo_result_code_parse(error_code);
		if (out->error_code == KOBO_RESULT_CODE_COUNT)
			return KOBO_ESTORE;
	}
	if (column_metadata(stmt, 13, &out->metadata, &out->metadata_len) != KOBO_OK)
		return KOBO_ESTORE;
	if (store_sqlite_copy_text(stmt, 14, out->request_id, sizeof out->request_id) != KOBO_OK)
		return KOBO_ESTORE;
	out->created_at_ms = sqlite3_column_int64(stmt, 15);
	out->updated_at_ms = sqlite3_column_int64(stmt, 16);
	if (!kobo_leg_parse((const char *)sqlite3_column_text(stmt, 17),
	                           &out->leg) ||
	    store_sqlite_copy_text(stmt, 18, out->clearing, sizeof out->clearing) != KOBO_OK ||
	    !kobo_saga_state_parse((const char *)sqlite3_column_text(stmt, 19),
	                            &out->saga))
		return KOBO_ESTORE;
	out->saga_amount = sqlite3_column_int64(stmt, 20);
	if (!kobo_void_reason_parse((const char *)sqlite3_column_text(stmt, 21),
	                                   &out->saga_reason))
		return KOBO_ESTORE;
	if (store_sqlite_copy_text(stmt, 22, out->created_by, sizeof out->created_by) != KOBO_OK)
		return KOBO_ESTORE;
	return store_sqlite_copy_text(stmt, 23, out->trace_id, sizeof out->trace_id);
}

/* Copies a blob column of exactly len bytes. */
static int copy_blob(sqlite3_stmt *stmt, int column, uint8_t *dst, size_t len)
{
	const void *bytes = sqlite3_column_blob(stmt, column);
	if (sqlite3_column_type(stmt, column) != SQLITE_BLOB || bytes == NULL ||
	    (size_t)sqlite3_column_bytes(stmt, column) != len)
		return KOBO_ESTORE;
	memcpy(dst, bytes, len);
	return KOBO_OK;
}

/* Fills *out from a row of KEY_COLUMNS. */
int store_sqlite_key_from_row(sqlite3_stmt *stmt, kobo_api_key *out)
{
	memset(out, 0, sizeof *out);
	int64_t scopes = sqlite3_column_int64(stmt, 2);
	if (store_sqlite_copy_text(stmt, 0, out->id, sizeof out->id) != KOBO_OK ||
	    store_sqlite_copy_text(stmt, 1, out->name, sizeof out->name) != KOBO_OK ||
	    scopes <= 0 || scopes > (int64_t)KOBO_SCOPES_ALL ||
	    copy_blob(stmt, 3, out->salt, sizeof out->salt) != KOBO_OK ||
	    copy_blob(stmt, 4, out->hash, sizeof out->hash) != KOBO_OK)
		return KOBO_ESTORE;
	out->scopes = (uint32_t)scopes;
	out->created_at_ms = sqlite3_column_int64(stmt, 5);
	out->revoked_at_ms = sqlite3_column_int64(stmt, 6);
	return KOBO_OK;
}

int store_sqlite_prepare_all(sqlite3 *db, const char *const *sql, sqlite3_stmt **stmt,
                       size_t count, const char *path)
{
	for (size_t i = 0; i < count; i++) {
		if (sqlite3_prepare_v3(db, sql[i], -1, SQLITE_PREPARE_PERSISTENT,
		                       &stmt[i], NULL) != SQLITE_OK) {
			store_sqlite_log_error(db, "store_prepare_failed", path);
			return KOBO_ESTORE;
		}
	}
	return KOBO_OK;
}

void store_sqlite_finalize_all(sqlite3_stmt **stmt, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		sqlite3_finalize(stmt[i]);
		stmt[i] = NULL;
	}
}

/* ---- Readers. ---- */

void store_sqlite_reader_close(kobo_store_reader *reader)
{
	sqlite_reader *r = to_reader(reader);

	if (r == NULL)
		return;
	store_sqlite_finalize_all(r->stmt, SQL_READER_COUNT);
	sqlite3_finalize(r->position);
	sqlite3_close(r->db);
	free(r->buffer);
	free(r);
}

int store_sqlite_reader_open(kobo_store *store, kobo_store_reader **reader)
{
	const char *path = store_sqlite_path(store);
	sqlite_reader *r;

	*reader = NULL;
	r = calloc(1, sizeof *r);
	if (r == NULL)
		return KOBO_ENOMEM;
	r->base.store = store;
	/* NOMUTEX: a reader belongs to one thread, so SQLite's per-connection
	 * mutex would only cost time. */
	if (store_sqlite_connect(path, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
	                         STORE_SQLITE_BUSY_TIMEOUT_MS, &r->db) != KOBO_OK ||
	    store_sqlite_prepare_all(r->db, reader_sql, r->stmt, SQL_READER_COUNT, path) != KOBO_OK) {
		store_sqlite_reader_close(&r->base);
		return KOBO_ESTORE;
	}
	*reader = &r->base;
	return KOBO_OK;
}

/* Copies metadata into the reader's buffer so it outlives the statement. */
static const char *reader_keep(sqlite_reader *r, const char *bytes, uint32_t len)
{
	if (len > r->buffer_size || r->buffer == NULL) {
		size_t size = len > KOBO_METADATA_BYTES_MAX ? len : KOBO_METADATA_BYTES_MAX;
		char *grown = realloc(r->buffer, size);
		if (grown == NULL)
			return NULL;
		r->buffer = grown;
		r->buffer_size = size;
	}
	if (len > 0)
		memcpy(r->buffer, bytes, len);
	return r->buffer;
}

static int reader_error(sqlite_reader *r, const char *event)
{
	store_sqlite_log_error(r->db, event, store_sqlite_path(r->base.store));
	return KOBO_ESTORE;
}

int store_sqlite_read_account(kobo_store_reader *reader, const char *id,
                              kobo_account *out)
{
	sqlite_reader *r = to_reader(reader);
	sqlite3_stmt *stmt = r->stmt[SQL_READ_ACCOUNT];
	int result = KOBO_OK;

	sqlite3_bind_text(stmt, 1, id, -1, SQLITE_STATIC);
	int rc = sqlite3_step(stmt);
	if (rc == SQLITE_DONE) {
		result = KOBO_ENOTFOUND;
	} else if (rc != SQLITE_ROW || store_sqlite_account_from_row(stmt, out) != KOBO_OK) {
		result = reader_error(r, "store_read_account_failed");
	} else {
		out->metadata = reader_keep(r, out->metadata, out->metadata_len);
		if (out->metadata == NULL)
			result = KOBO_ENOMEM;
	}
	/* Resetting ends the read transaction, so a reader never pins old WAL
	 * frames between calls. */
	sqlite3_reset(stmt);
	return result;
}

int store_sqlite_read_transfer(kobo_store_reader *reader, const char *id,
                               kobo_transfer *out)
{
	sqlite_reader *r = to_reader(reader);
	sqlite3_stmt *stmt = r->stmt[SQL_READ_TRANSFER];
	int64_t seq;
	int result = KOBO_OK;

	sqlite3_bind_text(stmt, 1, id, -1, SQLITE_STATIC);
	int rc = sqlite3_step(stmt);
	if (rc == SQLITE_DONE) {
		result = KOBO_ENOTFOUND;
	} else if (rc != SQLITE_ROW || store_sqlite_transfer_from_row(stmt, out, &seq) != KOBO_OK) {
		result = reader_error(r, "store_read_transfer_failed");
	} else {
		out->metadata = reader_keep(r, out->metadata, out->metadata_len);
		if (out->metadata == NULL)
			result = KOBO_ENOMEM;
	}
	sqlite3_reset(stmt);
	return result;
}

/* Steps a bound transfer query to its end, handing each row to each (rows
 * whose seq repeats the previous one's are skipped: a query of two arms can
 * return a row twice, adjacent); resets the statement. The record's
 * metadata points into the row: valid during the call, as the contract
 * promises. KOBO_OK (also when each stopped the read) or KOBO_ESTORE, logged
 * as failure_event. */
static int step_transfers(sqlite_reader *r, sqlite3_stmt *stmt, int64_t after_seq,
                          kobo_store_transfer_fn each, void *ctx,
                          const char *failure_event)
{
	int64_t last_seq = after_seq;
	int result = KOBO_OK;
	int rc;
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		kobo_transfer transfer;
		int64_t seq;
		if (store_sqlite_transfer_from_row(stmt, &transfer, &seq) != KOBO_OK) {
			rc = SQLITE_CORRUPT;
			break;
		}
		if (seq == last_seq)
			continue;
		last_seq = seq;
		if (each(ctx, &transfer, seq) != 0) {
			rc = SQLITE_DONE;
			break;
		}
	}
	if (rc != SQLITE_DONE)
		result = reader_error(r, failure_event);
	sqlite3_reset(stmt);
	return result;
}

static int64_t limit_arg(size_t limit)
{
	return limit > INT64_MAX ? INT64_MAX : (int64_t)limit;
}

int store_sqlite_read_history(kobo_store_reader *reader, const char *account_id,
                              int64_t after_seq, size_t limit,
                              kobo_store_transfer_fn each, void *ctx)
{
	sqlite_reader *r = to_reader(reader);
	sqlite3_stmt *stmt = r->stmt[SQL_READ_HISTORY];

	if (limit == 0)
		return KOBO_OK;
	sqlite3_bind_text(stmt, 1, account_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 2, after_seq);
	sqlite3_bind_int64(stmt, 3, limit_arg(limit));
	return step_transfers(r, stmt, after_seq, each, ctx, "store_read_history_failed");
}

int store_sqlite_read_events(kobo_store_reader *reader, const char *transfer_id,
                             int64_t after_seq, size_t limit,
                             kobo_store_event_fn each, void *ctx)
{
	sqlite_reader *r = to_reader(reader);
	sqlite3_stmt *stmt = r->stmt[SQL_READ_EVENTS];
	int result = KOBO_OK;
	int rc;

	if (limit == 0)
		return KOBO_OK;
	sqlite3_bind_text(stmt, 1, transfer_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 2, after_seq);
	sqlite3_bind_int64(stmt, 3, limit > INT64_MAX ? INT64_MAX : (int64_t)limit);
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		kobo_event e;
		char word[32];
		memset(&e, 0, sizeof e);
		e.seq = sqlite3_column_int64(stmt, 0);
		e.at_ms = sqlite3_column_int64(stmt, 3);
		e.shard = (uint32_t)sqlite3_column_int64(stmt, 4);
		e.amount = sqlite3_column_int64(stmt, 11);
		bool ok = store_sqlite_copy_text(stmt, 1, e.transfer_id, sizeof e.transfer_id) == KOBO_OK &&
		          store_sqlite_copy_text(stmt, 5, e.node, sizeof e.node) == KOBO_OK &&
		          store_sqlite_copy_text(stmt, 6, e.request_id, sizeof e.request_id) == KOBO_OK &&
		          store_sqlite_copy_text(stmt, 7, e.trace_id, sizeof e.trace_id) == KOBO_OK &&
		          store_sqlite_copy_text(stmt, 8, e.key_id, sizeof e.key_id) == KOBO_OK &&
		          store_sqlite_copy_text(stmt, 2, word, sizeof word) == KOBO_OK &&
		          kobo_event_kind_parse(word, &e.kind) &&
		          store_sqlite_copy_text(stmt, 9, word, sizeof word) == KOBO_OK &&
		          kobo_leg_parse(word, &e.leg) &&
		          store_sqlite_copy_text(stmt, 10, word, sizeof word) == KOBO_OK &&
		          kobo_transfer_status_parse(word, &e.status);
		if (!ok) {
			rc = SQLITE_CORRUPT;
			break;
		}
		if (each(ctx, &e) != 0) {
			rc = SQLITE_DONE;
			break;
		}
	}
	if (rc != SQLITE_DONE)
		result = reader_error(r, "store_read_events_failed");
	sqlite3_reset(stmt);
	return result;
}

int store_sqlite_read_by_request(kobo_store_reader *reader, const char *request_id,
                                 int64_t after_seq, size_t limit,
                                 kobo_store_transfer_fn each, void *ctx)
{
	sqlite_reader *r = to_reader(reader);
	sqlite3_stmt *stmt = r->stmt[SQL_READ_BY_REQUEST];

	if (limit == 0)
		return KOBO_OK;
	sqlite3_bind_text(stmt, 1, request_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 2, after_seq);
	sqlite3_bind_int64(stmt, 3, limit_arg(limit));
	return step_transfers(r, stmt, after_seq, each, ctx, "store_read_by_request_failed");
}

int store_sqlite_read_sagas(kobo_store_reader *reader, const char *after_id,
                            size_t limit, kobo_store_transfer_fn each, void *ctx)
{
	sqlite_reader *r = to_reader(reader);
	sqlite3_stmt *stmt = r->stmt[SQL_READ_SAGAS];

	if (limit == 0)
		return KOBO_OK;
	sqlite3_bind_text(stmt, 1, after_id != NULL ? after_id : "", -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 2, limit_arg(limit));
	/* seq 0 never occurs (seqs start at 1): nothing is skipped as a repeat
	 * of the first row. */
	return step_transfers(r, stmt, 0, each, ctx, "store_read_sagas_failed");
}

/* One kobod serves a SQLite data directory: every claim is granted and
 * there is nothing to release (store.h). */
int store_sqlite_claim_saga(kobo_store_reader *reader, const char *id,
                            const char *node, int64_t lease_ms, bool *claimed)
{
	(void)reader;
	(void)id;
	(void)node;
	(void)lease_ms;
	*claimed = true;
	return KOBO_OK;
}

int store_sqlite_release_saga(kobo_store_reader *reader, const char *id,
                              const char *node)
{
	(void)reader;
	(void)id;
	(void)node;
	return KOBO_OK;
}

/* The least string greater than every string starting with prefix, into
 * bound: prefix with trailing 0xFF bytes dropped and its last byte
 * incremented ("clr:" -> "clr;"). false when there is none (prefix empty
 * or all 0xFF): every id >= prefix then starts with it or is greater. */
static bool prefix_upper_bound(const char *prefix, char *bound, size_t bound_size)
{
	size_t len = strlen(prefix);

	while (len > 0 && (unsigned char)prefix[len - 1] == 0xFF)
		len--;
	if (len == 0 || len >= bound_size)
		return false;
	memcpy(bound, prefix, len);
	bound[len - 1] = (char)((unsigned char)bound[len - 1] + 1);
	bound[len] = '\0';
	return true;
}

int store_sqlite_read_accounts_prefix(kobo_store_reader *reader,
                                      const char *prefix,
                                      kobo_store_account_fn each, void *ctx)
{
	sqlite_reader *r = to_reader(reader);
	/* Ids are at most KOBO_ID_LEN_MAX bytes, so a longer prefix matches
	 * nothing; the bound buffer only needs to hold a prefix that can. */
	char bound[KOBO_ID_LEN_MAX + 2];
	sqlite3_stmt *stmt;
	int result = KOBO_OK;
	int rc;

	if (strlen(prefix) > KOBO_ID_LEN_MAX)
		return KOBO_OK;
	if (prefix_upper_bound(prefix, bound, sizeof bound)) {
		stmt = r->stmt[SQL_READ_ACCOUNTS_RANGE];
		sqlite3_bind_text(stmt, 2, bound, -1, SQLITE_STATIC);
	} else {
		stmt = r->stmt[SQL_READ_ACCOUNTS_FROM];
	}
	/* SQLite compares text with memcmp (BINARY collation): the same byte
	 * order as strcmp, which the bound is computed in. */
	sqlite3_bind_text(stmt, 1, prefix, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		kobo_account account;
		if (store_sqlite_account_from_row(stmt, &account) != KOBO_OK) {
			rc = SQLITE_CORRUPT;
			break;
		}
		/* metadata points into the row: valid during the call. */
		if (each(ctx, &account) != 0) {
			rc = SQLITE_DONE;
			break;
		}
	}
	if (rc != SQLITE_DONE)
		result = reader_error(r, "store_read_accounts_prefix_failed");
	sqlite3_reset(stmt);
	sqlite3_clear_bindings(stmt);
	return result;
}

/* Prepared on first use, not at open: a read-only store (the audit) may
 * open a file older than the meta table (schema version 3). */
int store_sqlite_read_position(kobo_store_reader *reader, kobo_store_position *out)
{
	sqlite_reader *r = to_reader(reader);

	memset(out, 0, sizeof *out);
	if (r->position == NULL &&
	    sqlite3_prepare_v2(r->db, "SELECT commit_seq FROM meta WHERE id = 1", -1,
	                       &r->position, NULL) != SQLITE_OK)
		return reader_error(r, "store_read_position_failed");
	int rc = sqlite3_step(r->position);
	int result = KOBO_OK;
	if (rc == SQLITE_ROW)
		out->commit_seq = (uint64_t)sqlite3_column_int64(r->position, 0);
	else
		result = reader_error(r, "store_read_position_failed");
	sqlite3_reset(r->position);
	return result;
}

/* ---- API keys (store.h: read_keys). ---- */

int store_sqlite_read_keys(kobo_store_reader *reader, bool include_revoked,
                           kobo_store_key_fn each, void *ctx)
{
	sqlite_reader *r = to_reader(reader);
	sqlite3_stmt *stmt = r->stmt[include_revoked ? SQL_READ_KEYS_ALL : SQL_READ_KEYS];
	int result = KOBO_OK;
	int rc;

	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		kobo_api_key key;
		if (store_sqlite_key_from_row(stmt, &key) != KOBO_OK) {
			rc = SQLITE_CORRUPT;
			break;
		}
		if (each(ctx, &key) != 0) {
			rc = SQLITE_DONE;
			break;
		}
	}
	if (rc != SQLITE_DONE)
		result = reader_error(r, "store_read_keys_failed");
	sqlite3_reset(stmt);
	return result;
}
