/*
 * key_bench.c — what API keys cost a store: key_insert (a `kobo key create`'s
 * store write: its own connection, the live-key count and the insert under a
 * lock, a durable commit), read_keys of a full ring (what kobod's key ring
 * reads every 2 s), and key_insert answering KOBO_EFULL at the bound.
 *
 *   key-bench URL [INSERTS]       URL: sqlite:DIR or postgresql://…
 *
 * Opens shard 0 of URL (creating it), fills KOBO_KEYS_MAX - INSERTS live keys
 * in one SQL statement on a connection of its own, then times INSERTS
 * key_insert calls (default 50), three read_keys of the KOBO_KEYS_MAX live
 * keys, and one key_insert past the bound. Use an empty store: the ids are
 * fixed. `make bench-keys` runs it on SQLite and on a throw-away PostgreSQL
 * cluster (docs/benchmarks.md has the numbers).
 */
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../src/store/layout.h"
#include "../../src/store/store.h"

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static int count_key(void *ctx, const kobo_api_key *key)
{
	(void)key;
	(*(size_t *)ctx)++;
	return 0;
}

/* count live keys "f" + 15 hex digits in one statement beside the store. */
static int bulk_fill(const char *url, int count)
{
	char sql[1024];
	if (strncmp(url, "sqlite:", 7) == 0) {
		char path[4096];
		sqlite3 *db = NULL;
		if (!kobo_layout_shard_path(path, sizeof path, url + 7, 0))
			return -1;
		snprintf(sql, sizeof sql,
		         "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
		         " WHERE i < %d) INSERT INTO api_keys (id, name, scopes, salt, hash,"
		         " created_at_ms) SELECT printf('f%%015x', i), 'bulk', 1,"
		         " zeroblob(16), zeroblob(32), 1 FROM n", count);
		int rc = sqlite3_open(path, &db);
		if (rc == SQLITE_OK) {
			sqlite3_busy_timeout(db, 10000);
			rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
			if (rc != SQLITE_OK)
				fprintf(stderr, "key-bench: fill: %s\n", sqlite3_errmsg(db));
		}
		sqlite3_close(db);
		return rc == SQLITE_OK ? 0 : -1;
	}
	snprintf(sql, sizeof sql,
	         "INSERT INTO kobo_shard_0.api_keys (id, name, scopes, salt, hash, created_at_ms)"
	         " SELECT 'f' || lpad(to_hex(g), 15, '0'), 'bulk', 1,"
	         " decode(repeat('00', 16), 'hex'), decode(repeat('00', 32), 'hex'), 1"
	         " FROM generate_series(1, %d) g", count);
	PGconn *conn = PQconnectdb(url);
	int ok = PQstatus(conn) == CONNECTION_OK;
	if (ok) {
		PGresult *res = PQexec(conn, sql);
		ok = PQresultStatus(res) == PGRES_COMMAND_OK;
		if (!ok)
			fprintf(stderr, "key-bench: fill: %s", PQresultErrorMessage(res));
		PQclear(res);
	}
	PQfinish(conn);
	return ok ? 0 : -1;
}

static kobo_api_key bench_key(int i)
{
	kobo_api_key key;
	memset(&key, 0, sizeof key);
	snprintf(key.id, sizeof key.id, "%016x", (unsigned)i);
	snprintf(key.name, sizeof key.name, "bench %d", i);
	key.scopes = KOBO_SCOPE_ADMIN;
	key.created_at_ms = 1;
	return key;
}

int main(int argc, char **argv)
{
	kobo_store *store = NULL;
	kobo_store_reader *reader = NULL;

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: key-bench URL [INSERTS]\n");
		return 2;
	}
	int inserts = argc == 3 ? atoi(argv[2]) : 50;
	if (inserts < 1 || inserts > KOBO_KEYS_MAX) {
		fprintf(stderr, "key-bench: INSERTS: 1..%d\n", KOBO_KEYS_MAX);
		return 2;
	}
	if (kobo_store_open(argv[1], 0, false, &store) != KOBO_OK) {
		fprintf(stderr, "key-bench: cannot open %s\n", argv[1]);
		return 1;
	}
	int rc = 1;
	if (bulk_fill(argv[1], KOBO_KEYS_MAX - inserts) != 0)
		goto out;
	double total = 0, worst = 0;
	for (int i = 0; i < inserts; i++) {
		kobo_api_key key = bench_key(i);
		double start = now_ms();
		int status = kobo_store_key_insert(store, &key);
		double took = now_ms() - start;
		if (status != KOBO_OK) {
			fprintf(stderr, "key-bench: key_insert %d: %s\n", i, kobo_status_name(status));
			goto out;
		}
		total += took;
		worst = took > worst ? took : worst;
	}
	printf("key_insert: %d calls, mean %.1f ms, worst %.1f ms\n", inserts,
	       total / inserts, worst);
	if (kobo_store_reader_open(store, &reader) != KOBO_OK)
		goto out;
	for (int round = 0; round < 3; round++) {
		size_t count = 0;
		double start = now_ms();
		if (kobo_store_read_keys(reader, false, count_key, &count) != KOBO_OK)
			goto out;
		printf("read_keys: %zu live keys in %.1f ms\n", count, now_ms() - start);
	}
	kobo_api_key extra = bench_key(KOBO_KEYS_MAX + 1);
	double start = now_ms();
	int status = kobo_store_key_insert(store, &extra);
	printf("key_insert past %d live keys: %s in %.1f ms\n", KOBO_KEYS_MAX,
	       kobo_status_name(status), now_ms() - start);
	rc = status == KOBO_EFULL ? 0 : 1;
out:
	if (reader != NULL)
		kobo_store_reader_close(reader);
	kobo_store_close(store);
	return rc;
}
