/*
 * pg_read.c — connections, row decoding and the read side of the
 * PostgreSQL store.
 *
 * Everything here but the readers is shared by the writer (store_pg.c) and
 * the audit (pg_audit.c): opening a connection with the session settings
 * every Kobo connection uses, running and preparing statements, logging a
 * libpq failure, telling a lost link from other failures, turning text rows
 * into kobo_account / kobo_transfer. A reader is one connection of its own,
 * for one thread, with its own prepared statements; it reads what has
 * committed (READ COMMITTED), never the writer's open batch, and re-opens
 * its link once if the server went away. Design notes: store_pg.c.
 */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../obs/obs.h"
#include "pg_internal.h"

/* How long a connect may take, in seconds (libpq's connect_timeout): the
 * writer's reconnect in begin() waits at most this long. */
#define PG_CONNECT_TIMEOUT_S "5"

enum {
	SQL_READ_ACCOUNT,
	SQL_READ_TRANSFER,
	SQL_READ_HISTORY,
	SQL_READ_SAGAS,
	SQL_READ_ACCOUNTS_FROM,
	SQL_READ_ACCOUNTS_RANGE,
	SQL_CLAIM_SAGA,
	SQL_RELEASE_SAGA,
	SQL_PURGE_CLAIMS,
	SQL_READ_POSITION,
	SQL_READ_KEYS,
	SQL_READ_KEYS_ALL,
	SQL_READ_EVENTS,
	SQL_READ_BY_REQUEST,
	SQL_READER_COUNT
};

/* How long one read on a standby (a read replica) may take, client side.
 * A replica that stops answering (frozen, cut off by the network) must not
 * hold the HTTP thread that reads it: the read fails, the reader is dropped
 * and the caller reads the primary (src/http/replicas.c). A replica serves
 * point reads and pages of at most 1,001 rows, far below this. Reads on a
 * primary get no such bound: nothing could serve them instead. */
#define PG_REPLICA_READ_TIMEOUT_MS 1000

/* How often a reader that claims sagas deletes the claims whose lease ran
 * out (a node that died holding them, a release that failed): a lapsed
 * claim is free for anyone anyway, so this only keeps the table small. */
#define PG_CLAIM_PURGE_INTERVAL_MS 60000

static const struct {
	const char *name;
	const char *sql;
} reader_sql[SQL_READER_COUNT] = {
	[SQL_READ_ACCOUNT] = {"kobo_read_account",
		"SELECT " PG_ACCOUNT_COLUMNS " FROM accounts WHERE id = $1"},
	[SQL_READ_TRANSFER] = {"kobo_read_transfer",
		"SELECT " PG_TRANSFER_COLUMNS " FROM transfers WHERE id = $1"},
	/* As in the SQLite store: one ordered range scan per column that can
	 * name the account, each arm leaving out what an earlier arm returns. */
	[SQL_READ_HISTORY] = {"kobo_read_history",
		"(SELECT " PG_TRANSFER_COLUMNS " FROM transfers"
		" WHERE from_id = $1 AND seq > $2 AND status <> 'rejected'"
		" ORDER BY seq LIMIT $3) "
		"UNION ALL "
		"(SELECT " PG_TRANSFER_COLUMNS " FROM transfers"
		" WHERE to_id = $1 AND from_id <> $1 AND seq > $2"
		" AND status <> 'rejected' ORDER BY seq LIMIT $3) "
		"UNION ALL "
		"(SELECT " PG_TRANSFER_COLUMNS " FROM transfers"
		" WHERE clearing = $1 AND clearing <> '' AND from_id <> $1"
		" AND to_id <> $1 AND seq > $2 AND status <> 'rejected'"
		" ORDER BY seq LIMIT $3) "
		"ORDER BY seq LIMIT $3"},
	[SQL_READ_EVENTS] = {"kobo_read_events",
		"SELECT seq, transfer_id, event, at_ms, shard, node, request_id, trace_id,"
		" key_id, leg, status, amount FROM events"
		" WHERE transfer_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"},
	[SQL_READ_BY_REQUEST] = {"kobo_read_by_request",
		"SELECT " PG_TRANSFER_COLUMNS " FROM transfers"
		" WHERE request_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"},
	[SQL_READ_SAGAS] = {"kobo_read_sagas",
		"SELECT " PG_TRANSFER_COLUMNS " FROM transfers"
		" WHERE saga <> 'none' AND id > $1 ORDER BY id LIMIT $2"},
	[SQL_READ_ACCOUNTS_FROM] = {"kobo_read_accounts_from",
		"SELECT " PG_ACCOUNT_COLUMNS " FROM accounts WHERE id >= $1 ORDER BY id"},
	[SQL_READ_ACCOUNTS_RANGE] = {"kobo_read_accounts_range",
		"SELECT " PG_ACCOUNT_COLUMNS " FROM accounts WHERE id >= $1 AND id < $2"
		" ORDER BY id"},
	/* One statement, one autocommit transaction: a row comes back when
	 * the claim is new, lapsed, or already node's; none when another
	 * node's lease is live (the row is locked by ON CONFLICT, so two
	 * nodes claiming at once serialize and the second sees the first). */
	[SQL_CLAIM_SAGA] = {"kobo_claim_saga",
		"INSERT INTO saga_claims AS c (id, node, until)"
		" VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond')"
		" ON CONFLICT (id) DO UPDATE SET node = excluded.node, until = excluded.until"
		" WHERE c.until <= now() OR c.node = excluded.node"
		" RETURNING c.node"},
	[SQL_RELEASE_SAGA] = {"kobo_release_saga",
		"DELETE FROM saga_claims WHERE id = $1 AND node = $2 RETURNING id"},
	[SQL_PURGE_CLAIMS] = {"kobo_purge_claims",
		"WITH gone AS (DELETE FROM saga_claims WHERE until < now() RETURNING id)"
		" SELECT count(*) FROM gone"},
	/* read_position (store.h). The position is meta.commit_seq, not an
	 * LSN: the batch's transaction bumps it with its data (store_pg.c),
	 * so a standby whose snapshot shows commit_seq >= T shows every batch
	 * up to T, exactly; an LSN taken inside the batch would precede its
	 * commit record and say nothing about whether the commit is replayed,
	 * and pg_current_wal_lsn() after it would cost the writer a round trip
	 * per batch. Lag: 0 once the standby replayed all it received, else the
	 * age of the last replayed commit (grows while replay is paused). These
	 * functions are executable by any role (no pg_monitor needed); on a
	 * primary pg_is_in_recovery() is false and the lag 0. */
	[SQL_READ_POSITION] = {"kobo_read_position",
		"SELECT commit_seq, shard_index, shard_count, pg_is_in_recovery(),"
		" CASE WHEN NOT pg_is_in_recovery()"
		"        OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
		"      ELSE greatest(0, coalesce((extract(epoch FROM clock_timestamp()"
		"        - pg_last_xact_replay_timestamp()) * 1000000)::bigint, 0)) END"
		" FROM meta WHERE id = 1"},
	/* read_keys: at most KOBO_KEYS_MAX live ones (key_insert's bound);
	 * with the revoked ones, as many as were ever made. */
	[SQL_READ_KEYS] = {"kobo_read_keys",
		"SELECT " PG_KEY_COLUMNS " FROM api_keys WHERE revoked_at_ms = 0 ORDER BY id"},
	[SQL_READ_KEYS_ALL] = {"kobo_read_keys_all",
		"SELECT " PG_KEY_COLUMNS " FROM api_keys ORDER BY id"},
};

typedef struct pg_reader {
	kobo_store_reader base; /* first */
	PGconn *conn;
	PGresult *last; /* the record of the last read_account/read_transfer */
	store_pg_pool metadata; /* its metadata (or the current callback row's) */
	int64_t next_purge_ms;  /* monotonic: when claim_saga next purges */
	int timeout_ms;         /* per read; 0: none (see PG_REPLICA_READ_TIMEOUT_MS) */
} pg_reader;

static pg_reader *to_reader(kobo_store_reader *reader)
{
	return (pg_reader *)reader;
}

/* ---- Errors. ---- */

void store_pg_log_error(const char *event, PGconn *conn, const PGresult *res)
{
	store_pg_log_error_at(KOBO_LOG_ERROR, event, conn, res);
}

void store_pg_log_error_at(kobo_log_level level, const char *event,
                           PGconn *conn, const PGresult *res)
{
	char message[512];
	const char *text = res != NULL ? PQresultErrorMessage(res) : NULL;
	if (text == NULL || text[0] == '\0')
		text = conn != NULL ? PQerrorMessage(conn) : "out of memory";
	const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	kobo_json_escape(message, sizeof message, text);
	/* Trim libpq's trailing newline from the escaped text. */
	size_t len = strlen(message);
	while (len >= 2 && message[len - 2] == '\\' && message[len - 1] == 'n') {
		message[len - 2] = '\0';
		len -= 2;
	}
	kobo_log(level, event, "\"sqlstate\":\"%s\",\"message\":\"%s\"",
	         state != NULL ? state : "", message);
}

/* true when the failure means the link to the server is gone (or going):
 * a broken connection, or the server shutting down / in recovery. */
bool store_pg_connection_lost(PGconn *conn, const PGresult *res)
{
	if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
		return true;
	const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	if (state == NULL)
		return res == NULL;
	return strncmp(state, "08", 2) == 0 || strcmp(state, "57P01") == 0 ||
	       strcmp(state, "57P02") == 0 || strcmp(state, "57P03") == 0 ||
	       strcmp(state, "25006") == 0; /* read-only transaction: a standby */
}

/* ---- Connections. ---- */

int store_pg_exec(PGconn *conn, const char *sql, const char *event)
{
	PGresult *res = PQexec(conn, sql);
	ExecStatusType st = PQresultStatus(res);
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		store_pg_log_error(event, conn, res);
		PQclear(res);
		return KOBO_ESTORE;
	}
	PQclear(res);
	return KOBO_OK;
}

/* Opens a connection with the session settings every Kobo connection
 * uses. Earlier keywords are defaults the URL may override (libpq keeps
 * the last value of a repeated keyword; dbname is expanded in place). */
int store_pg_connect(const char *url, const char *schema, PGconn **out)
{
	static const char *const keys[] = {"connect_timeout", "application_name",
	                                   "dbname", NULL};
	const char *values[] = {PG_CONNECT_TIMEOUT_S, "kobo", url, NULL};
	char sql[256];

	*out = NULL;
	PGconn *conn = PQconnectdbParams(keys, values, 1);
	if (conn == NULL)
		return KOBO_ENOMEM;
	if (PQstatus(conn) != CONNECTION_OK) {
		store_pg_log_error("store_pg_connect_failed", conn, NULL);
		PQfinish(conn);
		return KOBO_ECONNLOST;
	}
	/* synchronous_commit on: a commit returns once flushed here and, with
	 * synchronous_standby_names, on the standby. search_path: the shard. */
	snprintf(sql, sizeof sql,
	         "SET synchronous_commit = on; SET search_path = %s; SET client_min_messages = warning; "
	         "SET client_encoding = 'UTF8'", schema);
	if (store_pg_exec(conn, sql, "store_pg_session_failed") != KOBO_OK) {
		PQfinish(conn);
		return KOBO_ESTORE;
	}
	*out = conn;
	return KOBO_OK;
}

int store_pg_prepare_all(PGconn *conn, const char *const *names,
                         const char *const *sqls, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		PGresult *res = PQprepare(conn, names[i], sqls[i], 0, NULL);
		if (PQresultStatus(res) != PGRES_COMMAND_OK) {
			store_pg_log_error("store_pg_prepare_failed", conn, res);
			int kind = store_pg_connection_lost(conn, res) ? KOBO_ECONNLOST : KOBO_ESTORE;
			PQclear(res);
			return kind;
		}
		PQclear(res);
	}
	return KOBO_OK;
}

static int prepare_reader(PGconn *conn)
{
	const char *names[SQL_READER_COUNT];
	const char *sqls[SQL_READER_COUNT];
	for (size_t i = 0; i < SQL_READER_COUNT; i++) {
		names[i] = reader_sql[i].name;
		sqls[i] = reader_sql[i].sql;
	}
	return store_pg_prepare_all(conn, names, sqls, SQL_READER_COUNT);
}

/* ---- Decoded metadata, kept as long as the contract says. ---- */

void store_pg_pool_free(store_pg_pool *p)
{
	for (size_t i = 0; i < p->count; i++)
		free(p->blocks[i]);
	p->count = 0;
}

void store_pg_pool_destroy(store_pg_pool *p)
{
	store_pg_pool_free(p);
	free(p->blocks);
	p->blocks = NULL;
	p->cap = 0;
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes a bytea column (text result: "\x" + hex) into a block of pool.
 * KOBO_ESTORE for anything this code could not have written. */
static int pool_metadata(store_pg_pool *p, const PGresult *res, int row, int col,
                         const char **out, uint32_t *out_len)
{
	const char *text = PQgetvalue(res, row, col);
	int len = PQgetlength(res, row, col);

	if (PQgetisnull(res, row, col) || len < 2 || text[0] != '\\' ||
	    text[1] != 'x' || (len - 2) % 2 != 0 ||
	    (size_t)(len - 2) / 2 > KOBO_METADATA_BYTES_MAX)
		return KOBO_ESTORE;
	if (p->count == p->cap) {
		size_t cap = p->cap ? 2 * p->cap : 64;
		char **blocks = realloc(p->blocks, cap * sizeof *blocks);
		if (blocks == NULL)
			return KOBO_ENOMEM;
		p->blocks = blocks;
		p->cap = cap;
	}
	size_t bytes = (size_t)(len - 2) / 2;
	char *block = malloc(bytes + 1);
	if (block == NULL)
		return KOBO_ENOMEM;
	for (size_t i = 0; i < bytes; i++) {
		int hi = hex_value(text[2 + 2 * i]);
		int lo = hex_value(text[3 + 2 * i]);
		if (hi < 0 || lo < 0) {
			free(block);
			return KOBO_ESTORE;
		}
		block[i] = (char)(hi << 4 | lo);
	}
	block[bytes] = '\0';
	p->blocks[p->count++] = block;
	*out = block;
	*out_len = (uint32_t)bytes;
	return KOBO_OK;
}

/* ---- Row decoding (text results). ---- */

int64_t store_pg_col_int(const PGresult *res, int row, int col)
{
	return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

int store_pg_col_copy(const PGresult *res, int row, int col, char *dst, size_t size)
{
	if (PQgetisnull(res, row, col))
		return KOBO_ESTORE;
	int len = PQgetlength(res, row, col);
	if (len < 0 || (size_t)len >= size)
		return KOBO_ESTORE;
	memcpy(dst, PQgetvalue(res, row, col), (size_t)len);
	dst[len] = '\0';
	return KOBO_OK;
}

const char *store_pg_col_word(const PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

/* The metadata is a block of pool: valid until the pool is freed. */
int store_pg_account_from_row(const PGresult *res, int row, store_pg_pool *pool,
                              kobo_account *out)
{
	memset(out, 0, sizeof *out);
	if (store_pg_col_copy(res, row, 0, out->id, sizeof out->id) != KOBO_OK ||
	    store_pg_col_copy(res, row, 1, out->currency, sizeof out->currency) != KOBO_OK)
		return KOBO_ESTORE;
	out->allow_negative = PQgetvalue(res, row, 2)[0] == 't';
	out->posted = store_pg_col_int(res, row, 3);
	out->pending_out = store_pg_col_int(res, row, 4);
	out->pending_in = store_pg_col_int(res, row, 5);
	if (pool_metadata(pool, res, row, 6, &out->metadata, &out->metadata_len) != KOBO_OK)
		return KOBO_ESTORE;
	out->created_at_ms = store_pg_col_int(res, row, 7);
	return store_pg_col_copy(res, row, 8, out->created_by, sizeof out->created_by);
}

int store_pg_transfer_from_row(const PGresult *res, int row, store_pg_pool *pool,
                               kobo_transfer *out, int64_t *seq)
{
	memset(out, 0, sizeof *out);
	*seq = store_pg_col_int(res, row, 0);
	if (store_pg_col_copy(res, row, 1, out->id, sizeof out->id) != KOBO_OK ||
	    store_pg_col_copy(res, row, 2, out->from, sizeof out->from) != KOBO_OK ||
	    store_pg_col_copy(res, row, 3, out->to, sizeof out->to) != KOBO_OK ||
	    store_pg_col_copy(res, row, 4, out->currency, sizeof out->currency) != KOBO_OK)
		return KOBO_ESTORE;
	out->amount = store_pg_col_int(res, row, 5);
	out->posted_amount = store_pg_col_int(res, row, 6);
	out->pending = PQgetvalue(res, row, 7)[0] == 't';
	int64_t timeout = store_pg_col_int(res, row, 8);
	if (timeout < 0 || timeout > (int64_t)UINT32_MAX)
		return KOBO_ESTORE;
	out->timeout_seconds = (uint32_t)timeout;
	out->expires_at_ms = store_pg_col_int(res, row, 9);
	if (!kobo_transfer_status_parse(store_pg_col_word(res, row, 10), &out->status) ||
	    !kobo_void_reason_parse(store_pg_col_word(res, row, 11), &out->void_reason))
		return KOBO_ESTORE;
	out->error_code = KOBO_RESULT_CREATED;
	const char *error_code = store_pg_col_word(res, row, 12);
	if (error_code != NULL) {
		out->error_code = kobo_result_code_parse(error_code);
		if (out->error_code == KOBO_RESULT_CODE_COUNT)
			return KOBO_ESTORE;
	}
	if (pool_metadata(pool, res, row, 13, &out->metadata, &out->metadata_len) != KOBO_OK)
		return KOBO_ESTORE;
	if (store_pg_col_copy(res, row, 14, out->request_id, sizeof out->request_id) != KOBO_OK)
		return KOBO_ESTORE;
	out->created_at_ms = store_pg_col_int(res, row, 15);
	out->updated_at_ms = store_pg_col_int(res, row, 16);
	if (!kobo_leg_parse(store_pg_col_word(res, row, 17), &out->leg) ||
	    store_pg_col_copy(res, row, 18, out->clearing, sizeof out->clearing) != KOBO_OK ||
	    !kobo_saga_state_parse(store_pg_col_word(res, row, 19), &out->saga))
		return KOBO_ESTORE;
	out->saga_amount = store_pg_col_int(res, row, 20);
	if (!kobo_void_reason_parse(store_pg_col_word(res, row, 21), &out->saga_reason))
		return KOBO_ESTORE;
	if (store_pg_col_copy(res, row, 22, out->created_by, sizeof out->created_by) != KOBO_OK)
		return KOBO_ESTORE;
	return store_pg_col_copy(res, row, 23, out->trace_id, sizeof out->trace_id);
}

/* ---- Readers. ---- */

int store_pg_reader_open(kobo_store *store, kobo_store_reader **out)
{
	pg_reader *r = calloc(1, sizeof *r);

	*out = NULL;
	if (r == NULL)
		return KOBO_ENOMEM;
	int rc = store_pg_connect(store_pg_url(store), store_pg_schema(store), &r->conn);
	if (rc == KOBO_OK)
		rc = prepare_reader(r->conn);
	if (rc == KOBO_OK) {
		/* A standby's reads get a time bound. */
		PGresult *res = PQexec(r->conn, "SELECT pg_is_in_recovery()");
		if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
			rc = KOBO_ESTORE;
		else if (strcmp(PQgetvalue(res, 0, 0), "t") == 0)
			r->timeout_ms = PG_REPLICA_READ_TIMEOUT_MS;
		PQclear(res);
	}
	if (rc != KOBO_OK) {
		PQfinish(r->conn);
		free(r);
		return rc == KOBO_ENOMEM ? rc : KOBO_ESTORE;
	}
	r->base.store = store;
	*out = &r->base;
	return KOBO_OK;
}

void store_pg_reader_close(kobo_store_reader *reader)
{
	pg_reader *r = to_reader(reader);
	PQclear(r->last);
	store_pg_pool_destroy(&r->metadata);
	PQfinish(r->conn);
	free(r);
}

static int64_t mono_ms(void)
{
	return kobo_monotonic_us() / 1000;
}

/* PQexecPrepared within r->timeout_ms. NULL when the answer did not come
 * in time: the connection is then closed (r->conn NULL), since a statement
 * may still be running on it, and the reader answers every later call
 * with a failure (its owner closes it and opens another). */
static PGresult *exec_bounded(pg_reader *r, const char *name, int nparams,
                              const char *const *params)
{
	if (r->timeout_ms == 0)
		return PQexecPrepared(r->conn, name, nparams, params, NULL, NULL, 0);
	if (!PQsendQueryPrepared(r->conn, name, nparams, params, NULL, NULL, 0))
		return NULL;
	int64_t deadline = mono_ms() + r->timeout_ms;
	while (PQisBusy(r->conn)) {
		int64_t left = deadline - mono_ms();
		struct pollfd pfd = {.fd = PQsocket(r->conn), .events = POLLIN};
		int ready = left > 0 && pfd.fd >= 0 ? poll(&pfd, 1, (int)left) : 0;
		if (ready == 0) {
			kobo_log(KOBO_LOG_ERROR, "store_pg_read_timeout",
			         "\"timeout_ms\":%d,\"message\":\"a standby did not answer a "
			         "read in time: its connection is dropped\"", r->timeout_ms);
			PQfinish(r->conn);
			r->conn = NULL;
			return NULL;
		}
		if (ready < 0 || !PQconsumeInput(r->conn))
			break;
	}
	PGresult *last = NULL, *res;
	while ((res = PQgetResult(r->conn)) != NULL) {
		PQclear(last);
		last = res;
	}
	return last;
}

/* Runs a reader statement; NULL (logged) on failure. A broken link is
 * re-opened once, so a reader survives a server restart. */
static PGresult *reader_exec(pg_reader *r, int which, int nparams,
                             const char *const *params)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		if (r->conn == NULL)
			return NULL; /* timed out before: see exec_bounded */
		PGresult *res = exec_bounded(r, reader_sql[which].name, nparams, params);
		if (r->conn == NULL)
			return NULL;
		if (PQresultStatus(res) == PGRES_TUPLES_OK)
			return res;
		store_pg_log_error("store_pg_read_failed", r->conn, res);
		bool lost = store_pg_connection_lost(r->conn, res);
		PQclear(res);
		if (!lost || attempt == 1)
			return NULL;
		PQreset(r->conn);
		if (PQstatus(r->conn) != CONNECTION_OK)
			return NULL;
		char sql[128];
		snprintf(sql, sizeof sql, "SET synchronous_commit = on; SET search_path = %s",
		         store_pg_schema(r->base.store));
		if (store_pg_exec(r->conn, sql, "store_pg_session_failed") != KOBO_OK ||
		    prepare_reader(r->conn) != KOBO_OK)
			return NULL;
	}
	return NULL;
}

int store_pg_read_account(kobo_store_reader *reader, const char *id,
                          kobo_account *out)
{
	pg_reader *r = to_reader(reader);
	const char *params[1] = {id};

	PQclear(r->last);
	store_pg_pool_free(&r->metadata);
	r->last = reader_exec(r, SQL_READ_ACCOUNT, 1, params);
	if (r->last == NULL)
		return KOBO_ESTORE;
	if (PQntuples(r->last) == 0)
		return KOBO_ENOTFOUND;
	return store_pg_account_from_row(r->last, 0, &r->metadata, out);
}

int store_pg_read_transfer(kobo_store_reader *reader, const char *id,
                           kobo_transfer *out)
{
	pg_reader *r = to_reader(reader);
	const char *params[1] = {id};
	int64_t seq;

	PQclear(r->last);
	store_pg_pool_free(&r->metadata);
	r->last = reader_exec(r, SQL_READ_TRANSFER, 1, params);
	if (r->last == NULL)
		return KOBO_ESTORE;
	if (PQntuples(r->last) == 0)
		return KOBO_ENOTFOUND;
	return store_pg_transfer_from_row(r->last, 0, &r->metadata, out, &seq);
}

static int each_transfer_row(pg_reader *r, PGresult *res, kobo_store_transfer_fn each,
                             void *ctx, bool skip_repeats, int64_t last_seq)
{
	int result = KOBO_OK;
	/* The previous read_* record goes: its metadata lives in the pool. */
	PQclear(r->last);
	r->last = NULL;
	for (int row = 0; row < PQntuples(res); row++) {
		kobo_transfer transfer;
		int64_t seq;
		store_pg_pool_free(&r->metadata);
		if (store_pg_transfer_from_row(res, row, &r->metadata, &transfer, &seq) != KOBO_OK) {
			result = KOBO_ESTORE;
			break;
		}
		if (skip_repeats && seq == last_seq)
			continue;
		last_seq = seq;
		if (each(ctx, &transfer, seq) != 0)
			break;
	}
	PQclear(res);
	return result;
}

/* Runs a paged read: $1 the key (account, transfer or request id), $2
 * after_seq, $3 limit. NULL on failure (logged by reader_exec). */
static PGresult *exec_page(pg_reader *r, int sql, const char *key, int64_t after_seq,
                           size_t limit)
{
	char after_text[32];
	char limit_text[32];
	const char *params[3] = {key, after_text, limit_text};
	snprintf(after_text, sizeof after_text, "%" PRId64, after_seq);
	snprintf(limit_text, sizeof limit_text, "%" PRId64,
	         limit > INT64_MAX ? INT64_MAX : (int64_t)limit);
	return reader_exec(r, sql, 3, params);
}

int store_pg_read_history(kobo_store_reader *reader, const char *account_id,
                          int64_t after_seq, size_t limit,
                          kobo_store_transfer_fn each, void *ctx)
{
	pg_reader *r = to_reader(reader);

	if (limit == 0)
		return KOBO_OK;
	PGresult *res = exec_page(r, SQL_READ_HISTORY, account_id, after_seq, limit);
	if (res == NULL)
		return KOBO_ESTORE;
	return each_transfer_row(r, res, each, ctx, true, after_seq);
}

int store_pg_read_events(kobo_store_reader *reader, const char *transfer_id,
                         int64_t after_seq, size_t limit,
                         kobo_store_event_fn each, void *ctx)
{
	pg_reader *r = to_reader(reader);
	int result = KOBO_OK;

	if (limit == 0)
		return KOBO_OK;
	PGresult *res = exec_page(r, SQL_READ_EVENTS, transfer_id, after_seq, limit);
	if (res == NULL)
		return KOBO_ESTORE;
	for (int row = 0; row < PQntuples(res); row++) {
		kobo_event e;
		memset(&e, 0, sizeof e);
		e.seq = store_pg_col_int(res, row, 0);
		e.at_ms = store_pg_col_int(res, row, 3);
		e.shard = (uint32_t)store_pg_col_int(res, row, 4);
		e.amount = store_pg_col_int(res, row, 11);
		const char *kind = store_pg_col_word(res, row, 2);
		const char *leg = store_pg_col_word(res, row, 9);
		const char *status = store_pg_col_word(res, row, 10);
		bool ok = store_pg_col_copy(res, row, 1, e.transfer_id, sizeof e.transfer_id) == KOBO_OK &&
		          store_pg_col_copy(res, row, 5, e.node, sizeof e.node) == KOBO_OK &&
		          store_pg_col_copy(res, row, 6, e.request_id, sizeof e.request_id) == KOBO_OK &&
		          store_pg_col_copy(res, row, 7, e.trace_id, sizeof e.trace_id) == KOBO_OK &&
		          store_pg_col_copy(res, row, 8, e.key_id, sizeof e.key_id) == KOBO_OK &&
		          kind && kobo_event_kind_parse(kind, &e.kind) &&
		          leg && kobo_leg_parse(leg, &e.leg) &&
		          status && kobo_transfer_status_parse(status, &e.status);
		if (!ok) {
			result = KOBO_ESTORE;
			break;
		}
		if (each(ctx, &e) != 0)
			break;
	}
	PQclear(res);
	return result;
}

int store_pg_read_by_request(kobo_store_reader *reader, const char *request_id,
                             int64_t after_seq, size_t limit,
                             kobo_store_transfer_fn each, void *ctx)
{
	pg_reader *r = to_reader(reader);

	if (limit == 0)
		return KOBO_OK;
	PGresult *res = exec_page(r, SQL_READ_BY_REQUEST, request_id, after_seq, limit);
	if (res == NULL)
		return KOBO_ESTORE;
	return each_transfer_row(r, res, each, ctx, false, 0);
}

int store_pg_read_sagas(kobo_store_reader *reader, const char *after_id,
                        size_t limit, kobo_store_transfer_fn each, void *ctx)
{
	pg_reader *r = to_reader(reader);
	char limit_text[32];
	const char *params[2] = {after_id != NULL ? after_id : "", limit_text};

	if (limit == 0)
		return KOBO_OK;
	snprintf(limit_text, sizeof limit_text, "%" PRId64,
	         limit > INT64_MAX ? INT64_MAX : (int64_t)limit);
	PGresult *res = reader_exec(r, SQL_READ_SAGAS, 2, params);
	if (res == NULL)
		return KOBO_ESTORE;
	return each_transfer_row(r, res, each, ctx, false, 0);
}

/* The least string above every string starting with prefix (see
 * sqlite_read.c); false when there is none, or when it would not be valid
 * UTF-8 text (PostgreSQL refuses such a parameter): the caller then reads
 * from prefix on and stops at the first id without it. */
static bool prefix_upper_bound(const char *prefix, char *bound, size_t bound_size)
{
	size_t len = strlen(prefix);

	if (len == 0 || len >= bound_size)
		return false;
	unsigned char last = (unsigned char)prefix[len - 1];
	if (last >= 0x7f)
		return false;
	memcpy(bound, prefix, len);
	bound[len - 1] = (char)(last + 1);
	bound[len] = '\0';
	return true;
}

int store_pg_read_accounts_prefix(kobo_store_reader *reader, const char *prefix,
                                  kobo_store_account_fn each, void *ctx)
{
	pg_reader *r = to_reader(reader);
	char bound[KOBO_ID_LEN_MAX + 2];
	size_t prefix_len = strlen(prefix);
	PGresult *res;
	int result = KOBO_OK;

	if (prefix_len > KOBO_ID_LEN_MAX)
		return KOBO_OK;
	if (prefix_upper_bound(prefix, bound, sizeof bound)) {
		const char *params[2] = {prefix, bound};
		res = reader_exec(r, SQL_READ_ACCOUNTS_RANGE, 2, params);
	} else {
		const char *params[1] = {prefix};
		res = reader_exec(r, SQL_READ_ACCOUNTS_FROM, 1, params);
	}
	if (res == NULL)
		return KOBO_ESTORE;
	PQclear(r->last);
	r->last = NULL;
	for (int row = 0; row < PQntuples(res); row++) {
		kobo_account account;
		store_pg_pool_free(&r->metadata);
		if (store_pg_account_from_row(res, row, &r->metadata, &account) != KOBO_OK) {
			result = KOBO_ESTORE;
			break;
		}
		if (strncmp(account.id, prefix, prefix_len) != 0)
			break; /* ordered by id: past the prefix */
		if (each(ctx, &account) != 0)
			break;
	}
	PQclear(res);
	return result;
}


int store_pg_read_position(kobo_store_reader *reader, kobo_store_position *out)
{
	pg_reader *r = to_reader(reader);

	memset(out, 0, sizeof *out);
	PGresult *res = reader_exec(r, SQL_READ_POSITION, 0, NULL);
	if (res == NULL)
		return KOBO_ESTORE;
	int result = KOBO_ESTORE;
	if (PQntuples(res) == 1) {
		int64_t seq = store_pg_col_int(res, 0, 0);
		int64_t index = store_pg_col_int(res, 0, 1);
		int64_t count = store_pg_col_int(res, 0, 2);
		out->commit_seq = seq > 0 ? (uint64_t)seq : 0;
		out->recorded = true;
		out->shard_index = index >= 0 && index <= UINT32_MAX ? (uint32_t)index : UINT32_MAX;
		out->shard_count = count >= 0 && count <= UINT32_MAX ? (uint32_t)count : UINT32_MAX;
		out->standby = strcmp(PQgetvalue(res, 0, 3), "t") == 0;
		out->lag_us = store_pg_col_int(res, 0, 4);
		result = KOBO_OK;
	}
	PQclear(res);
	return result;
}

/* ---- Saga claims (store.h: claim_saga, release_saga). ---- */

int store_pg_claim_saga(kobo_store_reader *reader, const char *id,
                        const char *node, int64_t lease_ms, bool *claimed)
{
	pg_reader *r = to_reader(reader);
	char lease_text[32];
	const char *params[3] = {id, node, lease_text};

	*claimed = false;
	kobo_assert(lease_ms > 0);
	kobo_assert(strlen(node) <= KOBO_STORE_NODE_LEN_MAX);
	int64_t now = kobo_monotonic_us() / 1000;
	if (now >= r->next_purge_ms) {
		r->next_purge_ms = now + PG_CLAIM_PURGE_INTERVAL_MS;
		PGresult *purged = reader_exec(r, SQL_PURGE_CLAIMS, 0, NULL);
		PQclear(purged); /* a failure is logged; the next purge retries */
	}
	snprintf(lease_text, sizeof lease_text, "%" PRId64, lease_ms);
	PGresult *res = reader_exec(r, SQL_CLAIM_SAGA, 3, params);
	if (res == NULL)
		return KOBO_ESTORE;
	*claimed = PQntuples(res) == 1;
	PQclear(res);
	return KOBO_OK;
}

int store_pg_release_saga(kobo_store_reader *reader, const char *id,
                          const char *node)
{
	pg_reader *r = to_reader(reader);
	const char *params[2] = {id, node};

	PGresult *res = reader_exec(r, SQL_RELEASE_SAGA, 2, params);
	if (res == NULL)
		return KOBO_ESTORE;
	PQclear(res);
	return KOBO_OK;
}

/* ---- API keys (store.h: read_keys). ---- */

/* Decodes a bytea column of exactly len bytes ("\x" + hex). */
static int col_bytes(const PGresult *res, int row, int col, uint8_t *out, size_t len)
{
	const char *text = PQgetvalue(res, row, col);
	if (PQgetisnull(res, row, col) || (size_t)PQgetlength(res, row, col) != 2 + 2 * len ||
	    text[0] != '\\' || text[1] != 'x')
		return KOBO_ESTORE;
	for (size_t i = 0; i < len; i++) {
		int hi = hex_value(text[2 + 2 * i]);
		int lo = hex_value(text[3 + 2 * i]);
		if (hi < 0 || lo < 0)
			return KOBO_ESTORE;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return KOBO_OK;
}

int store_pg_key_from_row(const PGresult *res, int row, kobo_api_key *out)
{
	memset(out, 0, sizeof *out);
	int64_t scopes = store_pg_col_int(res, row, 2);
	if (store_pg_col_copy(res, row, 0, out->id, sizeof out->id) != KOBO_OK ||
	    store_pg_col_copy(res, row, 1, out->name, sizeof out->name) != KOBO_OK ||
	    scopes <= 0 || scopes > (int64_t)KOBO_SCOPES_ALL ||
	    col_bytes(res, row, 3, out->salt, sizeof out->salt) != KOBO_OK ||
	    col_bytes(res, row, 4, out->hash, sizeof out->hash) != KOBO_OK)
		return KOBO_ESTORE;
	out->scopes = (uint32_t)scopes;
	out->created_at_ms = store_pg_col_int(res, row, 5);
	out->revoked_at_ms = store_pg_col_int(res, row, 6);
	return KOBO_OK;
}

int store_pg_read_keys(kobo_store_reader *reader, bool include_revoked,
                       kobo_store_key_fn each, void *ctx)
{
	pg_reader *r = to_reader(reader);
	int result = KOBO_OK;

	PGresult *res = reader_exec(r, include_revoked ? SQL_READ_KEYS_ALL : SQL_READ_KEYS,
	                            0, NULL);
	if (res == NULL)
		return KOBO_ESTORE;
	for (int row = 0; row < PQntuples(res); row++) {
		kobo_api_key key;
		if (store_pg_key_from_row(res, row, &key) != KOBO_OK) {
			result = KOBO_ESTORE;
			break;
		}
		if (each(ctx, &key) != 0)
			break;
	}
	PQclear(res);
	return result;
}
