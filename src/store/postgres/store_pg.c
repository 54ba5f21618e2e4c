/*
 * store_pg.c — the PostgreSQL store: one shard per schema, one transaction
 * per writer batch, any number of kobod on the same database.
 *
 * Implements store.h over libpq. The write side is one connection used by
 * the shard writer thread; every reader opens a connection of its own; the
 * audit opens one for its snapshot. Issue 9 is the brief.
 *
 * NOTES ON THE DESIGN
 *
 * Schema (version 1), in schema kobo_shard_<N> of the database the URL
 * names, created at open under pg_advisory_xact_lock(KOBO, N) with CREATE
 * … IF NOT EXISTS, so several nodes starting at once are safe:
 *
 *   meta(id = 1, schema_version, shard_index, shard_count, commit_seq,
 *        transfer_seq)
 *        shard_index is checked at every open (a URL list in the wrong
 *        order is refused); shard_count is 0 until a caller records it.
 *        commit_seq is the consistency token (store.h); transfer_seq the
 *        last seq handed to a transfer. Every batch updates this row, so
 *        (a) every commit writes, and a commit that writes waits for the
 *        synchronous standby — a batch that only replays still does not
 *        answer before the standby has everything it answers about;
 *        (b) batches of one shard serialize on this row from their write
 *        to their commit, whichever node runs them, so seq grows in commit
 *        order and the history cursor never skips a row that commits late.
 *   accounts(id text COLLATE "C" PRIMARY KEY, currency, allow_negative,
 *        posted, pending_out, pending_in, metadata, created_at_ms)
 *        WITH (fillfactor = 80) and no index on the balances: a balance
 *        update is a HOT update (no index entry written).
 *   transfers(seq bigint PRIMARY KEY, id text COLLATE "C" UNIQUE, … the
 *        columns of the SQLite store, same words: status, legs, saga states
 *        and reasons as their wire names, NULL for a NONE reason and for
 *        error_code CREATED), with the SQLite store's indexes: (from_id,
 *        seq), (to_id, seq), (clearing, seq) WHERE clearing <> '',
 *        (expires_at_ms, seq) WHERE status = 'pending' AND expires_at_ms >
 *        0, (id) WHERE saga <> 'none'.
 *   Ids are COLLATE "C": ORDER BY id is byte order, the order strcmp, the
 *   saga runner's cursor and the prefix ranges assume.
 *
 * The batch transaction (READ COMMITTED; row locks do the isolation):
 *
 *   begin()           BEGIN (after a reconnect if the connection broke)
 *   load_transfers()  SELECT … WHERE id = ANY($1) ORDER BY id
 *                     FOR NO KEY UPDATE, handed out in the caller's order:
 *                     two nodes posting the same hold serialize here, and
 *                     the second sees the first one's result
 *   load_accounts()   the same for accounts: the touched rows locked in one
 *                     global order (id, byte order), so no two batches
 *                     deadlock over them
 *   write()           set-based: INSERT … SELECT FROM unnest($n::type[]),
 *                     UPDATE … FROM unnest(…); meta bumped (RETURNING the
 *                     token and the first seq of the new transfers)
 *   commit()          meta bumped if write() did not; COMMIT
 *
 *   Lock order in every batch: transfers, accounts, meta. A unique
 *   violation on a transfer id means another node inserted it first: the
 *   batch is re-run (KOBO_ECONFLICT) and then replays what that node did.
 *
 * Error kinds (store.h):
 *   40P01 deadlock, 40001 serialization failure  → KOBO_ECONFLICT
 *   23505 on transfers (another node won the id)  → KOBO_ECONFLICT
 *   connection lost before COMMIT was sent        → KOBO_ECONNLOST
 *   anything going wrong during COMMIT            → KOBO_EUNKNOWN (sticky)
 *   anything else                                 → KOBO_ESTORE
 *   ECONFLICT and ECONNLOST leave the store healthy (nothing was
 *   committed); begin() reconnects a broken connection. COMMIT never gets a
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
 *   IDLE → IN_BATCH       store_begin              loads freed; BEGIN
 *   IN_BATCH → IN_BATCH   store_load_*, write      locked SELECT, unnest DML
 *   IN_BATCH → IDLE       store_commit             meta bump; COMMIT
 *   IN_BATCH → IDLE       store_rollback, a load   ROLLBACK (if the link lives)
 *                         or write that conflicts
 *   IN_BATCH → FAILED     store_write, commit      ROLLBACK, failed flag set
 *
 * Invariants:
 *   1. Only the writer thread touches `conn`; healthy() reads `failed`.
 *   2. state == IN_BATCH exactly when `conn` holds a transaction this code
 *      began (or the link broke inside one).
 *   3. `failed` is never cleared: close and open again.
 *   4. Records handed to load callbacks point into PGresults kept in
 *      `loaded` until the next begin() (guarantee 3 of store.h).
 *   5. meta is updated exactly once per committed batch.
 */
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../obs/obs.h"
#include "../auditor.h"
#include "store_pg.h"

/* ---- Limits. ---- */

#define PG_SCHEMA_VERSION 1
#define PG_CONNECT_TIMEOUT_S "5"
#define PG_ADVISORY_KEY 0x6b6f626f /* "kobo": first half of the schema lock */
#define PG_SCHEMA_NAME_BYTES 32
#define PG_ARRAY_COLUMNS_MAX 22    /* the transfer insert's parameters */
#define PG_LOADED_MAX 64           /* load calls one batch may make */
#define PG_SQL_BYTES_MAX 4096

/* ---- Statements. ---- */

#define PG_ACCOUNT_COLUMNS \
	"id, currency, allow_negative, posted, pending_out, pending_in, " \
	"metadata, created_at_ms"
#define PG_TRANSFER_COLUMNS \
	"seq, id, from_id, to_id, currency, amount, posted_amount, pending, " \
	"timeout_seconds, expires_at_ms, status, void_reason, error_code, " \
	"metadata, request_id, created_at_ms, updated_at_ms, leg, clearing, " \
	"saga, saga_amount, saga_reason"

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
	"  created_at_ms  bigint  NOT NULL"
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
	"                    ('voided', 'expired', 'compensated'))"
	");"
	"CREATE INDEX IF NOT EXISTS transfers_from_seq ON transfers (from_id, seq);"
	"CREATE INDEX IF NOT EXISTS transfers_to_seq ON transfers (to_id, seq);"
	"CREATE INDEX IF NOT EXISTS transfers_clearing_seq ON transfers (clearing, seq)"
	"  WHERE clearing <> '';"
	"CREATE INDEX IF NOT EXISTS transfers_expiry ON transfers (expires_at_ms, seq)"
	"  WHERE status = 'pending' AND expires_at_ms > 0;"
	"CREATE INDEX IF NOT EXISTS transfers_sagas ON transfers (id)"
	"  WHERE saga <> 'none';";

enum {
	SQL_LOAD_TRANSFERS,
	SQL_LOAD_ACCOUNTS,
	SQL_INSERT_ACCOUNTS,
	SQL_UPDATE_ACCOUNTS,
	SQL_BUMP_META,
	SQL_INSERT_TRANSFERS,
	SQL_UPDATE_TRANSFERS,
	SQL_EXPIRED_HOLDS,
	SQL_WRITER_COUNT
};

static const struct {
	const char *name;
	const char *sql;
} writer_sql[SQL_WRITER_COUNT] = {
	/* Locked in id order (MATERIALIZED keeps the locking scan apart from
	 * the join), handed out in the caller's order. */
	[SQL_LOAD_TRANSFERS] = {"kobo_load_transfers",
		"WITH locked AS MATERIALIZED ("
		"  SELECT " PG_TRANSFER_COLUMNS " FROM transfers"
		"  WHERE id = ANY ($1::text[]) ORDER BY id FOR NO KEY UPDATE) "
		"SELECT l.* FROM unnest($1::text[]) WITH ORDINALITY AS q(id, ord)"
		" JOIN locked l ON l.id = q.id ORDER BY q.ord"},
	[SQL_LOAD_ACCOUNTS] = {"kobo_load_accounts",
		"WITH locked AS MATERIALIZED ("
		"  SELECT " PG_ACCOUNT_COLUMNS " FROM accounts"
		"  WHERE id = ANY ($1::text[]) ORDER BY id FOR NO KEY UPDATE) "
		"SELECT l.* FROM unnest($1::text[]) WITH ORDINALITY AS q(id, ord)"
		" JOIN locked l ON l.id = q.id ORDER BY q.ord"},
	[SQL_INSERT_ACCOUNTS] = {"kobo_insert_accounts",
		"INSERT INTO accounts (" PG_ACCOUNT_COLUMNS ") "
		"SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::int8[],"
		" $5::int8[], $6::int8[], $7::bytea[], $8::int8[])"},
	[SQL_UPDATE_ACCOUNTS] = {"kobo_update_accounts",
		"UPDATE accounts a SET posted = u.posted, pending_out = u.pending_out,"
		" pending_in = u.pending_in "
		"FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[])"
		" AS u(id, posted, pending_out, pending_in) WHERE a.id = u.id"},
	[SQL_BUMP_META] = {"kobo_bump_meta",
		"UPDATE meta SET commit_seq = commit_seq + 1,"
		" transfer_seq = transfer_seq + $1::int8 WHERE id = 1"
		" RETURNING commit_seq, transfer_seq - $1::int8"},
	[SQL_INSERT_TRANSFERS] = {"kobo_insert_transfers",
		"INSERT INTO transfers (" PG_TRANSFER_COLUMNS ") "
		"SELECT $1::int8 + u.ord, u.id, u.from_id, u.to_id, u.currency,"
		" u.amount, u.posted_amount, u.pending, u.timeout_seconds,"
		" u.expires_at_ms, u.status, u.void_reason, u.error_code, u.metadata,"
		" u.request_id, u.created_at_ms, u.updated_at_ms, u.leg, u.clearing,"
		" u.saga, u.saga_amount, u.saga_reason "
		"FROM unnest($2::text[], $3::text[], $4::text[], $5::text[],"
		" $6::int8[], $7::int8[], $8::bool[], $9::int8[], $10::int8[],"
		" $11::text[], $12::text[], $13::text[], $14::bytea[], $15::text[],"
		" $16::int8[], $17::int8[], $18::text[], $19::text[], $20::text[],"
		" $21::int8[], $22::text[]) WITH ORDINALITY"
		" AS u(id, from_id, to_id, currency, amount, posted_amount, pending,"
		" timeout_seconds, expires_at_ms, status, void_reason, error_code,"
		" metadata, request_id, created_at_ms, updated_at_ms, leg, clearing,"
		" saga, saga_amount, saga_reason, ord)"},
	/* kobo_transfer_state, no more (store.h guarantee 4). */
	[SQL_UPDATE_TRANSFERS] = {"kobo_update_transfers",
		"UPDATE transfers t SET status = u.status,"
		" posted_amount = u.posted_amount, void_reason = u.void_reason,"
		" error_code = u.error_code, updated_at_ms = u.updated_at_ms,"
		" saga = u.saga, saga_amount = u.saga_amount,"
		" saga_reason = u.saga_reason "
		"FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[],"
		" $5::text[], $6::int8[], $7::text[], $8::int8[], $9::text[])"
		" AS u(id, status, posted_amount, void_reason, error_code,"
		" updated_at_ms, saga, saga_amount, saga_reason) WHERE t.id = u.id"},
	[SQL_EXPIRED_HOLDS] = {"kobo_expired_holds",
		"SELECT id FROM transfers WHERE status = 'pending'"
		" AND expires_at_ms > 0 AND expires_at_ms <= $1::int8"
		" ORDER BY expires_at_ms, seq LIMIT $2::int8"},
};

enum {
	SQL_READ_ACCOUNT,
	SQL_READ_TRANSFER,
	SQL_READ_HISTORY,
	SQL_READ_SAGAS,
	SQL_READ_ACCOUNTS_FROM,
	SQL_READ_ACCOUNTS_RANGE,
	SQL_READER_COUNT
};

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
	[SQL_READ_SAGAS] = {"kobo_read_sagas",
		"SELECT " PG_TRANSFER_COLUMNS " FROM transfers"
		" WHERE saga <> 'none' AND id > $1 ORDER BY id LIMIT $2"},
	[SQL_READ_ACCOUNTS_FROM] = {"kobo_read_accounts_from",
		"SELECT " PG_ACCOUNT_COLUMNS " FROM accounts WHERE id >= $1 ORDER BY id"},
	[SQL_READ_ACCOUNTS_RANGE] = {"kobo_read_accounts_range",
		"SELECT " PG_ACCOUNT_COLUMNS " FROM accounts WHERE id >= $1 AND id < $2"
		" ORDER BY id"},
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

/* ---- Decoded metadata, kept as long as the contract says. ---- */

typedef struct pg_pool {
	char **blocks;
	size_t count;
	size_t cap;
} pg_pool;

static void pool_free(pg_pool *p)
{
	for (size_t i = 0; i < p->count; i++)
		free(p->blocks[i]);
	p->count = 0;
}

static void pool_destroy(pg_pool *p)
{
	pool_free(p);
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
static int pool_metadata(pg_pool *p, const PGresult *res, int row, int col,
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

/* ---- Handles. ---- */

typedef enum pg_state { PG_IDLE, PG_IN_BATCH, PG_FAILED } pg_state;

typedef struct pg_store {
	kobo_store base; /* first */
	char *url;
	uint32_t shard;
	bool read_only;
	char schema[PG_SCHEMA_NAME_BYTES];
	PGconn *conn; /* the writer's; NULL for read_only stores */
	pg_state state;
	atomic_bool failed;
	bool meta_bumped;      /* this batch updated meta */
	uint64_t token;        /* commit_seq after this batch, once bumped */
	PGresult *loaded[PG_LOADED_MAX]; /* this batch's load results */
	size_t loaded_count;
	pg_pool metadata; /* this batch's loaded metadata */
	pg_idset looked_up_transfers; /* ids this batch's loads asked for */
	pg_idset looked_up_accounts;
	pg_buf cols[PG_ARRAY_COLUMNS_MAX];
} pg_store;

typedef struct pg_reader {
	kobo_store_reader base; /* first */
	PGconn *conn;
	PGresult *last; /* the record of the last read_account/read_transfer */
	pg_pool metadata; /* its metadata (or the current callback row's) */
} pg_reader;

static pg_store *to_store(kobo_store *store)
{
	return (pg_store *)store;
}

static pg_reader *to_reader(kobo_store_reader *reader)
{
	return (pg_reader *)reader;
}

/* ---- Errors. ---- */

static void log_pg(const char *event, PGconn *conn, const PGresult *res)
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
	kobo_log(KOBO_LOG_ERROR, event, "\"sqlstate\":\"%s\",\"message\":\"%s\"",
	         state != NULL ? state : "", message);
}

static bool sqlstate_is(const PGresult *res, const char *code)
{
	const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	return state != NULL && strcmp(state, code) == 0;
}

/* true when the failure means the link to the server is gone (or going):
 * a broken connection, or the server shutting down / in recovery. */
static bool connection_lost(PGconn *conn, const PGresult *res)
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

/* The kind of a failed statement inside a batch, before COMMIT. */
static int batch_error_kind(PGconn *conn, const PGresult *res, bool unique_is_conflict)
{
	if (connection_lost(conn, res))
		return KOBO_ECONNLOST;
	if (sqlstate_is(res, "40P01") || sqlstate_is(res, "40001"))
		return KOBO_ECONFLICT;
	if (unique_is_conflict && sqlstate_is(res, "23505"))
		return KOBO_ECONFLICT;
	return KOBO_ESTORE;
}

/* ---- Connections. ---- */

static int schema_name(char *out, size_t size, uint32_t shard)
{
	int n = snprintf(out, size, "kobo_shard_%" PRIu32, shard);
	return n > 0 && (size_t)n < size ? KOBO_OK : KOBO_EINVAL;
}

static int exec_ok(PGconn *conn, const char *sql, const char *event)
{
	PGresult *res = PQexec(conn, sql);
	ExecStatusType st = PQresultStatus(res);
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		log_pg(event, conn, res);
		PQclear(res);
		return KOBO_ESTORE;
	}
	PQclear(res);
	return KOBO_OK;
}

/* Opens a connection with the session settings every Kobo connection
 * uses. Earlier keywords are defaults the URL may override (libpq keeps
 * the last value of a repeated keyword; dbname is expanded in place). */
static int pg_connect(const char *url, const char *schema, PGconn **out)
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
		log_pg("store_pg_connect_failed", conn, NULL);
		PQfinish(conn);
		return KOBO_ECONNLOST;
	}
	/* synchronous_commit on: a commit returns once flushed here and, with
	 * synchronous_standby_names, on the standby. search_path: the shard. */
	snprintf(sql, sizeof sql,
	         "SET synchronous_commit = on; SET search_path = %s; SET client_min_messages = warning; "
	         "SET client_encoding = 'UTF8'", schema);
	if (exec_ok(conn, sql, "store_pg_session_failed") != KOBO_OK) {
		PQfinish(conn);
		return KOBO_ESTORE;
	}
	*out = conn;
	return KOBO_OK;
}

static int prepare_all(PGconn *conn, const char *const *names,
                       const char *const *sqls, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		PGresult *res = PQprepare(conn, names[i], sqls[i], 0, NULL);
		if (PQresultStatus(res) != PGRES_COMMAND_OK) {
			log_pg("store_pg_prepare_failed", conn, res);
			int kind = connection_lost(conn, res) ? KOBO_ECONNLOST : KOBO_ESTORE;
			PQclear(res);
			return kind;
		}
		PQclear(res);
	}
	return KOBO_OK;
}

static int prepare_writer(PGconn *conn)
{
	const char *names[SQL_WRITER_COUNT];
	const char *sqls[SQL_WRITER_COUNT];
	for (size_t i = 0; i < SQL_WRITER_COUNT; i++) {
		names[i] = writer_sql[i].name;
		sqls[i] = writer_sql[i].sql;
	}
	return prepare_all(conn, names, sqls, SQL_WRITER_COUNT);
}

static int prepare_reader(PGconn *conn)
{
	const char *names[SQL_READER_COUNT];
	const char *sqls[SQL_READER_COUNT];
	for (size_t i = 0; i < SQL_READER_COUNT; i++) {
		names[i] = reader_sql[i].name;
		sqls[i] = reader_sql[i].sql;
	}
	return prepare_all(conn, names, sqls, SQL_READER_COUNT);
}

/* Reads meta and checks it belongs to this build and this shard. */
static int check_meta(PGconn *conn, uint32_t shard)
{
	PGresult *res = PQexec(conn, "SELECT schema_version, shard_index FROM meta WHERE id = 1");
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		log_pg("store_pg_meta_unreadable", conn, res);
		PQclear(res);
		return KOBO_ESTORE;
	}
	long version = strtol(PQgetvalue(res, 0, 0), NULL, 10);
	long index = strtol(PQgetvalue(res, 0, 1), NULL, 10);
	PQclear(res);
	if (version != PG_SCHEMA_VERSION) {
		kobo_log(KOBO_LOG_ERROR, "store_pg_schema_version",
		         "\"message\":\"the shard's schema version is %ld; this build "
		         "reads version %d only\"", version, PG_SCHEMA_VERSION);
		return KOBO_ESTORE;
	}
	if (index != (long)shard) {
		kobo_log(KOBO_LOG_ERROR, "store_pg_shard_mismatch",
		         "\"message\":\"this database holds shard %ld in schema "
		         "kobo_shard_%" PRIu32 ", opened as shard %" PRIu32
		         ": is the --postgres list in shard order?\"", index, shard, shard);
		return KOBO_ESTORE;
	}
	return KOBO_OK;
}

/* Creates the shard's schema if needed, under a transaction-scoped
 * advisory lock so that nodes starting together create it once. */
static int create_schema(PGconn *conn, const char *schema, uint32_t shard)
{
	char sql[PG_SQL_BYTES_MAX * 2];
	int n;

	n = snprintf(sql, sizeof sql, "BEGIN; SELECT pg_advisory_xact_lock(%d, %d);",
	             PG_ADVISORY_KEY, (int)(shard & 0x7fffffff));
	if (exec_ok(conn, sql, "store_pg_schema_lock_failed") != KOBO_OK)
		return KOBO_ESTORE;
	n = snprintf(sql, sizeof sql, schema_sql, schema, schema);
	if (n <= 0 || (size_t)n >= sizeof sql ||
	    exec_ok(conn, sql, "store_pg_schema_failed") != KOBO_OK)
		goto fail;
	n = snprintf(sql, sizeof sql,
	             "INSERT INTO meta (id, schema_version, shard_index, shard_count,"
	             " commit_seq, transfer_seq) VALUES (1, %d, %" PRIu32 ", 0, 0, 0)"
	             " ON CONFLICT (id) DO NOTHING", PG_SCHEMA_VERSION, shard);
	if (exec_ok(conn, sql, "store_pg_meta_failed") != KOBO_OK)
		goto fail;
	if (check_meta(conn, shard) != KOBO_OK)
		goto fail;
	if (exec_ok(conn, "COMMIT", "store_pg_schema_commit_failed") != KOBO_OK)
		return KOBO_ESTORE;
	return KOBO_OK;
fail:
	(void)exec_ok(conn, "ROLLBACK", "store_pg_rollback_failed");
	return KOBO_ESTORE;
}

/* ---- The write side. ---- */

static void free_loaded(pg_store *s)
{
	for (size_t i = 0; i < s->loaded_count; i++)
		PQclear(s->loaded[i]);
	s->loaded_count = 0;
	pool_free(&s->metadata);
	idset_clear(&s->looked_up_transfers);
	idset_clear(&s->looked_up_accounts);
}

/* Abandons the open transaction if the link still lives. */
static void rollback_transaction(pg_store *s)
{
	if (s->conn != NULL && PQstatus(s->conn) == CONNECTION_OK &&
	    PQtransactionStatus(s->conn) != PQTRANS_IDLE)
		(void)exec_ok(s->conn, "ROLLBACK", "store_pg_rollback_failed");
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
	end_batch(s, PG_IDLE);
	return kind;
}

/* Reconnects a broken writer connection (bounded by connect_timeout). */
static int ensure_connection(pg_store *s)
{
	if (s->conn != NULL && PQstatus(s->conn) == CONNECTION_OK)
		return KOBO_OK;
	if (s->conn != NULL) {
		PQfinish(s->conn);
		s->conn = NULL;
	}
	int rc = pg_connect(s->url, s->schema, &s->conn);
	if (rc != KOBO_OK)
		return rc == KOBO_ENOMEM ? rc : KOBO_ECONNLOST;
	rc = prepare_writer(s->conn);
	if (rc != KOBO_OK) {
		PQfinish(s->conn);
		s->conn = NULL;
		return KOBO_ECONNLOST;
	}
	return KOBO_OK;
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
	s->meta_bumped = false;
	int rc = ensure_connection(s);
	if (rc != KOBO_OK)
		return rc;
	PGresult *res = PQexec(s->conn, "BEGIN");
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		log_pg("store_pg_begin_failed", s->conn, res);
		rc = batch_error_kind(s->conn, res, false);
		PQclear(res);
		rollback_transaction(s);
		return rc;
	}
	PQclear(res);
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

/* Runs a prepared statement of the batch; on failure abandons the batch or
 * fails the store (sticky) as the error kind says. */
static PGresult *batch_exec(pg_store *s, int which, int nparams,
                            const char *const *params, ExecStatusType want,
                            bool unique_is_conflict, bool sticky, int *rc)
{
	PGresult *res = PQexecPrepared(s->conn, writer_sql[which].name, nparams,
	                               params, NULL, NULL, 0);
	if (PQresultStatus(res) == want) {
		*rc = KOBO_OK;
		return res;
	}
	log_pg("store_pg_statement_failed", s->conn, res);
	int kind = batch_error_kind(s->conn, res, unique_is_conflict);
	PQclear(res);
	if (kind == KOBO_ESTORE && sticky)
		*rc = store_fail(s, kind);
	else
		*rc = store_abandon(s, kind);
	return NULL;
}

/* ---- Row decoding (text results). ---- */

static int64_t col_int(const PGresult *res, int row, int col)
{
	return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static int col_copy(const PGresult *res, int row, int col, char *dst, size_t size)
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

static const char *col_word(const PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

/* The metadata points into res: valid until res is cleared. */
static int account_from_row(const PGresult *res, int row, pg_pool *pool,
                            kobo_account *out)
{
	memset(out, 0, sizeof *out);
	if (col_copy(res, row, 0, out->id, sizeof out->id) != KOBO_OK ||
	    col_copy(res, row, 1, out->currency, sizeof out->currency) != KOBO_OK)
		return KOBO_ESTORE;
	out->allow_negative = PQgetvalue(res, row, 2)[0] == 't';
	out->posted = col_int(res, row, 3);
	out->pending_out = col_int(res, row, 4);
	out->pending_in = col_int(res, row, 5);
	if (pool_metadata(pool, res, row, 6, &out->metadata, &out->metadata_len) != KOBO_OK)
		return KOBO_ESTORE;
	out->created_at_ms = col_int(res, row, 7);
	return KOBO_OK;
}

static int transfer_from_row(const PGresult *res, int row, pg_pool *pool,
                             kobo_transfer *out, int64_t *seq)
{
	memset(out, 0, sizeof *out);
	*seq = col_int(res, row, 0);
	if (col_copy(res, row, 1, out->id, sizeof out->id) != KOBO_OK ||
	    col_copy(res, row, 2, out->from, sizeof out->from) != KOBO_OK ||
	    col_copy(res, row, 3, out->to, sizeof out->to) != KOBO_OK ||
	    col_copy(res, row, 4, out->currency, sizeof out->currency) != KOBO_OK)
		return KOBO_ESTORE;
	out->amount = col_int(res, row, 5);
	out->posted_amount = col_int(res, row, 6);
	out->pending = PQgetvalue(res, row, 7)[0] == 't';
	int64_t timeout = col_int(res, row, 8);
	if (timeout < 0 || timeout > (int64_t)UINT32_MAX)
		return KOBO_ESTORE;
	out->timeout_seconds = (uint32_t)timeout;
	out->expires_at_ms = col_int(res, row, 9);
	if (!kobo_transfer_status_parse(col_word(res, row, 10), &out->status) ||
	    !kobo_void_reason_parse(col_word(res, row, 11), &out->void_reason))
		return KOBO_ESTORE;
	out->error_code = KOBO_RESULT_CREATED;
	const char *error_code = col_word(res, row, 12);
	if (error_code != NULL) {
		out->error_code = kobo_result_code_parse(error_code);
		if (out->error_code == KOBO_RESULT_CODE_COUNT)
			return KOBO_ESTORE;
	}
	if (pool_metadata(pool, res, row, 13, &out->metadata, &out->metadata_len) != KOBO_OK)
		return KOBO_ESTORE;
	if (col_copy(res, row, 14, out->request_id, sizeof out->request_id) != KOBO_OK)
		return KOBO_ESTORE;
	out->created_at_ms = col_int(res, row, 15);
	out->updated_at_ms = col_int(res, row, 16);
	if (!kobo_leg_parse(col_word(res, row, 17), &out->leg) ||
	    col_copy(res, row, 18, out->clearing, sizeof out->clearing) != KOBO_OK ||
	    !kobo_saga_state_parse(col_word(res, row, 19), &out->saga))
		return KOBO_ESTORE;
	out->saga_amount = col_int(res, row, 20);
	if (!kobo_void_reason_parse(col_word(res, row, 21), &out->saga_reason))
		return KOBO_ESTORE;
	return KOBO_OK;
}

/* Runs a locking load and keeps its result for the batch. */
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
	PGresult *res = batch_exec(s, which, 1, params, PGRES_TUPLES_OK, false, false, rc);
	if (res != NULL)
		s->loaded[s->loaded_count++] = res;
	return res;
}

static int store_load_transfers(kobo_store *store, const char *const *ids,
                                size_t count, kobo_store_transfer_fn each, void *ctx)
{
	pg_store *s = to_store(store);
	int rc;

	if (count == 0)
		return KOBO_OK;
	PGresult *res = load_rows(s, SQL_LOAD_TRANSFERS, ids, count, &rc);
	if (res == NULL)
		return rc;
	for (int row = 0; row < PQntuples(res); row++) {
		kobo_transfer transfer;
		int64_t seq;
		if (transfer_from_row(res, row, &s->metadata, &transfer, &seq) != KOBO_OK) {
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
		return KOBO_OK;
	PGresult *res = load_rows(s, SQL_LOAD_ACCOUNTS, ids, count, &rc);
	if (res == NULL)
		return rc;
	for (int row = 0; row < PQntuples(res); row++) {
		kobo_account account;
		if (account_from_row(res, row, &s->metadata, &account) != KOBO_OK) {
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

/* Checks that an UPDATE matched exactly `want` rows: an update of a row
 * the database does not have means memory believed in a row that is not
 * there. */
static bool updated_rows(PGresult *res, size_t want)
{
	const char *tuples = PQcmdTuples(res);
	return tuples != NULL && strtoull(tuples, NULL, 10) == (unsigned long long)want;
}

static int write_accounts(pg_store *s, const kobo_account_change *changes,
                          size_t count, bool is_new)
{
	const char *params[8];
	size_t rows = 0;
	int rc;

	reset_arrays(s, is_new ? 8 : 4);
	for (size_t i = 0; i < count; i++) {
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
		} else {
			arr_str(&s->cols[0], a->id);
			arr_int(&s->cols[1], a->posted);
			arr_int(&s->cols[2], a->pending_out);
			arr_int(&s->cols[3], a->pending_in);
		}
	}
	if (rows == 0)
		return KOBO_OK;
	if (finish_arrays(s, is_new ? 8 : 4, params) != KOBO_OK)
		return store_fail(s, KOBO_ESTORE);
	bool race_possible = is_new;
	for (size_t i = 0; race_possible && i < count; i++) {
		if (changes[i].is_new &&
		    !idset_has(&s->looked_up_accounts, changes[i].account->id))
			race_possible = false;
	}
	PGresult *res = batch_exec(s, is_new ? SQL_INSERT_ACCOUNTS : SQL_UPDATE_ACCOUNTS,
	                           is_new ? 8 : 4, params, PGRES_COMMAND_OK,
	                           race_possible, true, &rc);
	if (res == NULL)
		return rc;
	bool matched = updated_rows(res, rows);
	PQclear(res);
	if (!matched) {
		kobo_log(KOBO_LOG_ERROR, "store_pg_write_mismatch",
		         "\"table\":\"accounts\",\"shard\":%" PRIu32, s->shard);
		return store_fail(s, KOBO_ESTORE);
	}
	return KOBO_OK;
}

/* Bumps meta: the commit sequence (the token) and room for `new_transfers`
 * seqs; *first_seq is the last seq before them. */
static int bump_meta(pg_store *s, size_t new_transfers, int64_t *first_seq, bool sticky)
{
	char count[32];
	const char *params[1] = {count};
	int rc;

	kobo_assert(!s->meta_bumped);
	snprintf(count, sizeof count, "%zu", new_transfers);
	PGresult *res = batch_exec(s, SQL_BUMP_META, 1, params, PGRES_TUPLES_OK,
	                           false, sticky, &rc);
	if (res == NULL)
		return rc;
	if (PQntuples(res) != 1) {
		PQclear(res);
		kobo_log(KOBO_LOG_ERROR, "store_pg_meta_missing", "\"shard\":%" PRIu32, s->shard);
		return sticky ? store_fail(s, KOBO_ESTORE) : store_abandon(s, KOBO_ESTORE);
	}
	s->token = (uint64_t)col_int(res, 0, 0);
	*first_seq = col_int(res, 0, 1);
	PQclear(res);
	s->meta_bumped = true;
	return KOBO_OK;
}

static int insert_transfers(pg_store *s, const kobo_transfer_change *changes,
                            size_t count, size_t rows, int64_t first_seq)
{
	const char *params[PG_ARRAY_COLUMNS_MAX];
	char seq_text[32];
	int rc;

	if (rows == 0)
		return KOBO_OK;
	snprintf(seq_text, sizeof seq_text, "%" PRId64, first_seq);
	reset_arrays(s, PG_ARRAY_COLUMNS_MAX - 1);
	/* In array order: ordinality + first_seq fixes each one's seq. */
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
	}
	params[0] = seq_text;
	if (finish_arrays(s, PG_ARRAY_COLUMNS_MAX - 1, params + 1) != KOBO_OK)
		return store_fail(s, KOBO_ESTORE);
	/* A unique violation here is another node's insert of an id this
	 * batch looked up and did not find: re-run the batch, which then
	 * replays it (see "The ids a batch asked to load"). */
	bool race_possible = true;
	for (size_t i = 0; race_possible && i < count; i++) {
		if (changes[i].is_new &&
		    !idset_has(&s->looked_up_transfers, changes[i].transfer->id))
			race_possible = false;
	}
	PGresult *res = batch_exec(s, SQL_INSERT_TRANSFERS, PG_ARRAY_COLUMNS_MAX,
	                           params, PGRES_COMMAND_OK, race_possible, true, &rc);
	if (res == NULL)
		return rc;
	bool matched = updated_rows(res, rows);
	PQclear(res);
	if (!matched)
		return store_fail(s, KOBO_ESTORE);
	return KOBO_OK;
}

static int update_transfers(pg_store *s, const kobo_transfer_change *changes,
                            size_t count)
{
	const char *params[9];
	size_t rows = 0;
	int rc;

	reset_arrays(s, 9);
	for (size_t i = 0; i < count; i++) {
		const kobo_transfer *t = changes[i].transfer;
		if (changes[i].is_new)
			continue;
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
	}
	if (rows == 0)
		return KOBO_OK;
	if (finish_arrays(s, 9, params) != KOBO_OK)
		return store_fail(s, KOBO_ESTORE);
	PGresult *res = batch_exec(s, SQL_UPDATE_TRANSFERS, 9, params,
	                           PGRES_COMMAND_OK, false, true, &rc);
	if (res == NULL)
		return rc;
	bool matched = updated_rows(res, rows);
	PQclear(res);
	if (!matched) {
		kobo_log(KOBO_LOG_ERROR, "store_pg_write_mismatch",
		         "\"table\":\"transfers\",\"shard\":%" PRIu32, s->shard);
		return store_fail(s, KOBO_ESTORE);
	}
	return KOBO_OK;
}

static int store_write(kobo_store *store, const kobo_account_change *accounts,
                       size_t account_count, const kobo_transfer_change *transfers,
                       size_t transfer_count)
{
	pg_store *s = to_store(store);
	size_t new_transfers = 0;
	int64_t first_seq = 0;
	int rc;

	kobo_assert(s->state == PG_IN_BATCH);
	for (size_t i = 0; i < transfer_count; i++)
		new_transfers += transfers[i].is_new ? 1 : 0;
	if ((rc = write_accounts(s, accounts, account_count, true)) != KOBO_OK ||
	    (rc = write_accounts(s, accounts, account_count, false)) != KOBO_OK)
		return rc;
	if (!s->meta_bumped) {
		if ((rc = bump_meta(s, new_transfers, &first_seq, true)) != KOBO_OK)
			return rc;
	} else if (new_transfers > 0) {
		/* A second write() in one batch: seqs were handed out already. */
		return store_fail(s, KOBO_EINVAL);
	}
	if ((rc = insert_transfers(s, transfers, transfer_count, new_transfers,
	                           first_seq)) != KOBO_OK ||
	    (rc = update_transfers(s, transfers, transfer_count)) != KOBO_OK)
		return rc;
	return KOBO_OK;
}

static int store_commit(kobo_store *store, uint64_t *token)
{
	pg_store *s = to_store(store);
	int64_t first_seq;
	int rc;

	kobo_assert(s->state == PG_IN_BATCH);
	/* A batch that only replays writes meta too: its COMMIT then waits for
	 * the synchronous standby like any other. */
	if (!s->meta_bumped && (rc = bump_meta(s, 0, &first_seq, false)) != KOBO_OK)
		return rc;
	/* No timeout here, ever: a COMMIT cancelled while it waits for the
	 * standby has committed locally. */
	PGresult *res = PQexec(s->conn, "COMMIT");
	bool committed = PQresultStatus(res) == PGRES_COMMAND_OK &&
	                 strcmp(PQcmdStatus(res), "COMMIT") == 0;
	if (!committed) {
		log_pg("store_pg_commit_failed", s->conn, res);
		PQclear(res);
		return store_fail(s, KOBO_EUNKNOWN);
	}
	PQclear(res);
	s->state = PG_IDLE;
	*token = s->token;
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
	PGresult *res = PQexecPrepared(s->conn, writer_sql[SQL_EXPIRED_HOLDS].name,
	                               2, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		log_pg("store_pg_expired_holds_failed", s->conn, res);
		PQclear(res);
		return KOBO_ESTORE;
	}
	for (int row = 0; row < PQntuples(res) && *count < max; row++) {
		if (col_copy(res, row, 0, ids[*count], sizeof ids[*count]) != KOBO_OK) {
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
	return !atomic_load(&to_store(store)->failed);
}

/* ---- Readers. ---- */

static int store_reader_open(kobo_store *store, kobo_store_reader **out)
{
	pg_store *s = to_store(store);
	pg_reader *r = calloc(1, sizeof *r);

	*out = NULL;
	if (r == NULL)
		return KOBO_ENOMEM;
	int rc = pg_connect(s->url, s->schema, &r->conn);
	if (rc == KOBO_OK)
		rc = prepare_reader(r->conn);
	if (rc != KOBO_OK) {
		PQfinish(r->conn);
		free(r);
		return rc == KOBO_ENOMEM ? rc : KOBO_ESTORE;
	}
	r->base.store = store;
	*out = &r->base;
	return KOBO_OK;
}

static void store_reader_close(kobo_store_reader *reader)
{
	pg_reader *r = to_reader(reader);
	PQclear(r->last);
	pool_destroy(&r->metadata);
	PQfinish(r->conn);
	free(r);
}

/* Runs a reader statement; NULL (logged) on failure. A broken link is
 * re-opened once, so a reader survives a server restart. */
static PGresult *reader_exec(pg_reader *r, int which, int nparams,
                             const char *const *params)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		PGresult *res = PQexecPrepared(r->conn, reader_sql[which].name, nparams,
		                               params, NULL, NULL, 0);
		if (PQresultStatus(res) == PGRES_TUPLES_OK)
			return res;
		log_pg("store_pg_read_failed", r->conn, res);
		bool lost = connection_lost(r->conn, res);
		PQclear(res);
		if (!lost || attempt == 1)
			return NULL;
		PQreset(r->conn);
		if (PQstatus(r->conn) != CONNECTION_OK)
			return NULL;
		pg_store *s = to_store(r->base.store);
		char sql[128];
		snprintf(sql, sizeof sql, "SET synchronous_commit = on; SET search_path = %s",
		         s->schema);
		if (exec_ok(r->conn, sql, "store_pg_session_failed") != KOBO_OK ||
		    prepare_reader(r->conn) != KOBO_OK)
			return NULL;
	}
	return NULL;
}

static int store_read_account(kobo_store_reader *reader, const char *id,
                              kobo_account *out)
{
	pg_reader *r = to_reader(reader);
	const char *params[1] = {id};

	PQclear(r->last);
	pool_free(&r->metadata);
	r->last = reader_exec(r, SQL_READ_ACCOUNT, 1, params);
	if (r->last == NULL)
		return KOBO_ESTORE;
	if (PQntuples(r->last) == 0)
		return KOBO_ENOTFOUND;
	return account_from_row(r->last, 0, &r->metadata, out);
}

static int store_read_transfer(kobo_store_reader *reader, const char *id,
                               kobo_transfer *out)
{
	pg_reader *r = to_reader(reader);
	const char *params[1] = {id};
	int64_t seq;

	PQclear(r->last);
	pool_free(&r->metadata);
	r->last = reader_exec(r, SQL_READ_TRANSFER, 1, params);
	if (r->last == NULL)
		return KOBO_ESTORE;
	if (PQntuples(r->last) == 0)
		return KOBO_ENOTFOUND;
	return transfer_from_row(r->last, 0, &r->metadata, out, &seq);
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
		pool_free(&r->metadata);
		if (transfer_from_row(res, row, &r->metadata, &transfer, &seq) != KOBO_OK) {
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

static int store_read_history(kobo_store_reader *reader, const char *account_id,
                              int64_t after_seq, size_t limit,
                              kobo_store_transfer_fn each, void *ctx)
{
	pg_reader *r = to_reader(reader);
	char after_text[32];
	char limit_text[32];
	const char *params[3] = {account_id, after_text, limit_text};

	if (limit == 0)
		return KOBO_OK;
	snprintf(after_text, sizeof after_text, "%" PRId64, after_seq);
	snprintf(limit_text, sizeof limit_text, "%" PRId64,
	         limit > INT64_MAX ? INT64_MAX : (int64_t)limit);
	PGresult *res = reader_exec(r, SQL_READ_HISTORY, 3, params);
	if (res == NULL)
		return KOBO_ESTORE;
	return each_transfer_row(r, res, each, ctx, true, after_seq);
}

static int store_read_sagas(kobo_store_reader *reader, const char *after_id,
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

static int store_read_accounts_prefix(kobo_store_reader *reader, const char *prefix,
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
		pool_free(&r->metadata);
		if (account_from_row(res, row, &r->metadata, &account) != KOBO_OK) {
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

/* ---- Audit. ---- */

/* Feeds one REPEATABLE READ snapshot of the shard to the audit's rules, on
 * a connection of its own (the writer may be mid-batch). */
static int store_audit(kobo_store *store, kobo_store_report_fn report, void *ctx,
                       kobo_audit_totals *totals)
{
	pg_store *s = to_store(store);
	store_auditor *a = NULL;
	PGconn *conn = NULL;
	PGresult *res = NULL;
	int result = KOBO_ESTORE;

	memset(totals, 0, sizeof *totals);
	int rc = pg_connect(s->url, s->schema, &conn);
	if (rc != KOBO_OK)
		return rc == KOBO_ENOMEM ? rc : KOBO_ESTORE;
	if (exec_ok(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
	            "store_pg_audit_failed") != KOBO_OK)
		goto done;
	res = PQexec(conn, "SELECT id, currency, allow_negative, posted, pending_out,"
	                   " pending_in FROM accounts");
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		log_pg("store_pg_audit_failed", conn, res);
		goto done;
	}
	a = store_auditor_create((size_t)PQntuples(res), report, ctx, totals);
	if (a == NULL) {
		result = KOBO_ENOMEM;
		goto done;
	}
	for (int row = 0; row < PQntuples(res); row++) {
		kobo_account acc;
		memset(&acc, 0, sizeof acc);
		if (col_copy(res, row, 0, acc.id, sizeof acc.id) != KOBO_OK ||
		    col_copy(res, row, 1, acc.currency, sizeof acc.currency) != KOBO_OK) {
			store_auditor_problem(a, "an account row has an id or currency "
			                         "that is NULL or too long");
			continue;
		}
		acc.allow_negative = PQgetvalue(res, row, 2)[0] == 't';
		acc.posted = col_int(res, row, 3);
		acc.pending_out = col_int(res, row, 4);
		acc.pending_in = col_int(res, row, 5);
		rc = store_auditor_account(a, &acc);
		if (rc != KOBO_OK && rc != KOBO_EFULL) {
			result = rc;
			goto done;
		}
	}
	PQclear(res);
	res = PQexec(conn, "SELECT id, from_id, to_id, currency, amount, posted_amount,"
	                   " status, leg, clearing, saga FROM transfers ORDER BY seq");
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		log_pg("store_pg_audit_failed", conn, res);
		goto done;
	}
	for (int row = 0; row < PQntuples(res); row++) {
		kobo_transfer t;
		memset(&t, 0, sizeof t);
		if (col_copy(res, row, 0, t.id, sizeof t.id) != KOBO_OK ||
		    col_copy(res, row, 1, t.from, sizeof t.from) != KOBO_OK ||
		    col_copy(res, row, 2, t.to, sizeof t.to) != KOBO_OK ||
		    col_copy(res, row, 3, t.currency, sizeof t.currency) != KOBO_OK ||
		    col_copy(res, row, 8, t.clearing, sizeof t.clearing) != KOBO_OK) {
			store_auditor_transfer_problem(a, "a transfer row has an id, from, "
			                               "to, currency or clearing that is "
			                               "NULL or too long");
			continue;
		}
		t.amount = col_int(res, row, 4);
		t.posted_amount = col_int(res, row, 5);
		if (!kobo_transfer_status_parse(col_word(res, row, 6), &t.status) ||
		    !kobo_leg_parse(col_word(res, row, 7), &t.leg) ||
		    !kobo_saga_state_parse(col_word(res, row, 9), &t.saga)) {
			store_auditor_transfer_problem(a, "transfer %s has an unknown "
			                               "status, leg or saga state", t.id);
			continue;
		}
		store_auditor_transfer(a, &t);
	}
	store_auditor_finish(a);
	result = KOBO_OK;
done:
	PQclear(res);
	PQfinish(conn);
	store_auditor_destroy(a);
	return result;
}

/* ---- Open and close. ---- */

static void store_close(kobo_store *store)
{
	pg_store *s = to_store(store);

	if (s->state == PG_IN_BATCH)
		end_batch(s, PG_IDLE);
	free_loaded(s);
	pool_destroy(&s->metadata);
	free(s->looked_up_transfers.ids);
	free(s->looked_up_accounts.ids);
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
	.commit = store_commit,
	.rollback = store_rollback,
	.expired_holds = store_expired_holds,
	.healthy = store_healthy,
	.reader_open = store_reader_open,
	.reader_close = store_reader_close,
	.read_account = store_read_account,
	.read_transfer = store_read_transfer,
	.read_history = store_read_history,
	.read_sagas = store_read_sagas,
	.read_accounts_prefix = store_read_accounts_prefix,
	.audit = store_audit,
	.close = store_close,
};

int store_pg_open(const char *url, uint32_t shard, bool read_only, kobo_store **out)
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
	atomic_init(&s->failed, false);
	s->url = strdup(url);
	if (s->url == NULL || schema_name(s->schema, sizeof s->schema, shard) != KOBO_OK) {
		free(s->url);
		free(s);
		return KOBO_ENOMEM;
	}
	rc = pg_connect(url, s->schema, &conn);
	if (rc != KOBO_OK)
		goto fail;
	rc = read_only ? check_meta(conn, shard) : create_schema(conn, s->schema, shard);
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
	}
	*out = &s->base;
	return KOBO_OK;
fail:
	PQfinish(conn);
	free(s->url);
	free(s);
	return rc == KOBO_ENOMEM ? rc : KOBO_ESTORE;
}

int store_pg_drop_shard(const char *url, uint32_t shard)
{
	char schema[PG_SCHEMA_NAME_BYTES];
	char sql[128];
	PGconn *conn = NULL;

	if (schema_name(schema, sizeof schema, shard) != KOBO_OK)
		return KOBO_EINVAL;
	if (pg_connect(url, "public", &conn) != KOBO_OK)
		return KOBO_ESTORE;
	snprintf(sql, sizeof sql, "SET client_min_messages = warning; "
	         "DROP SCHEMA IF EXISTS %s CASCADE", schema);
	int rc = exec_ok(conn, sql, "store_pg_drop_failed");
	PQfinish(conn);
	return rc;
}
