/*
 * store_contract.h — the harness of the store contract suite
 * (test_store_contract.c): the table of backends, what each backend's
 * adapter does that the public API cannot (reopen the same data, fail a
 * commit on demand), the per-test fixture, the batch runner that drives a
 * store the way the shard writer does, and the helpers that read records
 * back and compare them. The tests themselves are in the .c file. (Not
 * named test_*.c: the Makefile builds every such file as a test binary.)
 *
 * Include it once per program, after <cmocka.h>: it defines the fault VFS's
 * state and the next shard number, which are the program's.
 */
#ifndef KOBO_TESTS_UNIT_STORE_CONTRACT_H
#define KOBO_TESTS_UNIT_STORE_CONTRACT_H

#include <dirent.h>
#include <libpq-fe.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/ledger/ledger.h"
#include "../../src/store/store.h"
#include "../../src/store/mem/store_mem.h"
#include "../../src/store/postgres/pg_internal.h"
#include "test_ops.h"

#define TEST_OPS_MAX 1024

/* ---- The backends. ---- */

/* How a test makes the next commit fail. */
typedef enum commit_fault {
	/* Nothing of the batch lands (the log write failed). */
	FAULT_COMMIT_LOST,
	/* The batch lands, token and all, but the answer is lost (a crash
	 * after the fsync, before commit returned). */
	FAULT_COMMIT_LANDED,
	/* The batch may or may not have landed (the fsync failed): nobody
	 * knows until the ids are looked up after a reopen. */
	FAULT_COMMIT_UNKNOWN,
} commit_fault;

/* One row per backend the suite runs against. Every hook may be NULL. */
typedef struct backend {
	const char *name;
	/* The URL: a fixed one, one with "%s" for a fresh temporary
	 * directory, or NULL when it comes from the environment variable
	 * url_env (the group is skipped, saying so, when that is unset). */
	const char *url;
	const char *url_env;
	/* Every open of url is a new, empty store (mem:): the same data can
	 * be reached again only through restart. */
	bool fresh_per_open;
	/* A process restart over the same data; NULL: close and open the
	 * same URL, which is what a restart is for a store with a file or a
	 * server behind it. */
	void (*restart)(kobo_store *store);
	/* Makes the next commit fail as fault says; false when the backend
	 * cannot (the test skips, saying so). */
	bool (*fail_next_commit)(kobo_store *store, commit_fault fault);
	/* The next count commits answer KOBO_ECONFLICT. */
	void (*conflict_next_commits)(kobo_store *store, unsigned count);
	/* Several nodes may serve the store, so a saga claim keeps the other
	 * nodes out while its lease lasts; false: every claim is granted. */
	bool claims_exclude;
	/* Several nodes share the store, so now() answers the store's clock,
	 * not the caller's (store.h). */
	bool shared_clock;
	/* Round trips the store's write side has made so far. */
	uint64_t (*round_trips)(kobo_store *store);
	/* Takes a row lock on row id of table from a session of its own and
	 * keeps it until the returned handle is released: another node in
	 * the middle of a batch. */
	void *(*hold_row_lock)(const char *url, uint32_t shard, const char *table,
	                       const char *id);
	void (*release_row_lock)(void *lock);
	/* Runs sql in the shard's schema on a session of its own, committed:
	 * another node, or an operator. false when it failed. */
	bool (*exec_elsewhere)(const char *url, uint32_t shard, const char *sql);
	/* Opened with --concurrency optimistic. */
	bool optimistic;
	/* The journaled store: a read-only open reads its SQLite projection,
	 * which trails the journal until the projection thread catches up
	 * (tests settle it first through a scanning read, which waits for
	 * it); and a load passes seq 0 for a transfer not projected yet
	 * (store.h: the writer never uses a load's seq). */
	bool read_only_trails;
	bool load_seq_unknown;
} backend;

static inline uint64_t pg_round_trips(kobo_store *store)
{
	return store_pg_round_trips(store);
}

/* A transaction on a connection of its own that locks one row FOR
 * UPDATE; NULL when that failed (the test then fails). */
static inline void *pg_hold_row_lock(const char *url, uint32_t shard,
                                     const char *table, const char *id)
{
	char sql[512];
	PGconn *conn = PQconnectdb(url);
	if (PQstatus(conn) != CONNECTION_OK) {
		PQfinish(conn);
		return NULL;
	}
	snprintf(sql, sizeof sql, "BEGIN; SET LOCAL search_path = kobo_shard_%u;"
	         " SELECT 1 FROM %s WHERE id = '%s' FOR UPDATE", shard, table, id);
	PGresult *res = PQexec(conn, sql);
	bool locked = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
	PQclear(res);
	if (!locked) {
		PQfinish(conn);
		return NULL;
	}
	return conn;
}

static inline void pg_release_row_lock(void *lock)
{
	PQclear(PQexec(lock, "ROLLBACK"));
	PQfinish(lock);
}

static inline bool pg_exec_elsewhere(const char *url, uint32_t shard, const char *sql)
{
	char all[2048];
	PGconn *conn = PQconnectdb(url);
	bool ok = PQstatus(conn) == CONNECTION_OK;
	snprintf(all, sizeof all, "BEGIN; SET LOCAL search_path = kobo_shard_%u; %s; COMMIT",
	         shard, sql);
	if (ok) {
		PGresult *res = PQexec(conn, all);
		ok = PQresultStatus(res) == PGRES_COMMAND_OK;
		if (!ok)
			fprintf(stderr, "pg_exec_elsewhere: %s: %s", sql, PQresultErrorMessage(res));
		PQclear(res);
	}
	PQfinish(conn);
	return ok;
}

static inline bool mem_fail_next_commit(kobo_store *store, commit_fault fault)
{
	/* Either outcome is allowed for UNKNOWN; landing is the harder one. */
	kobo_store_mem_fail_next_commit(store, fault != FAULT_COMMIT_LOST);
	return true;
}

static inline bool sqlite_fail_next_commit(kobo_store *store, commit_fault fault);

static const backend backends[] = {
	{"mem", "mem:", NULL, true, kobo_store_mem_restart, mem_fail_next_commit,
	 kobo_store_mem_conflict_next_commits, false, false, NULL, NULL, NULL, NULL, false, false, false},
	{"sqlite", "sqlite:%s", NULL, false, NULL, sqlite_fail_next_commit, NULL, false,
	 false, NULL, NULL, NULL, NULL, false, false, false},
	/* The journaled embedded store (src/store/hot): memory + journal,
	 * SQLite as its projection. */
	{"journal", "journal:%s?segment_mb=2", NULL, false, NULL, NULL, NULL, false, false, NULL, NULL,
	 NULL, NULL, false, true, true},
	/* scripts/pg-cluster.sh sets the variable to a fresh cluster's URI. */
	{"postgres", NULL, "KOBO_TEST_POSTGRES", false, NULL, NULL, NULL, true, true,
	 pg_round_trips, pg_hold_row_lock, pg_release_row_lock, pg_exec_elsewhere, false, false, false},
	/* The same, --concurrency optimistic: the whole suite again. */
	{"postgres-optimistic", NULL, "KOBO_TEST_POSTGRES", false, NULL, NULL, NULL, true,
	 true, pg_round_trips, pg_hold_row_lock, pg_release_row_lock, pg_exec_elsewhere,
	 true, false, false},
};
enum { BACKEND_COUNT = sizeof backends / sizeof backends[0] };

/* ---- A fault-injecting SQLite VFS (a pass-through until armed). ----
 *
 * Installed as SQLite's default VFS before any store opens, so the SQLite
 * backend reaches it whatever path its URL turns into. A write fault fails
 * every xWrite (the commit's WAL frames never land); a sync fault fails
 * every xSync (the frames were written, the fsync says no: the outcome is
 * unknown). */

static sqlite3_vfs *fault_base;
static sqlite3_vfs fault_vfs;
static atomic_bool fault_fail_writes;
static atomic_bool fault_fail_syncs;

typedef struct fault_file {
	sqlite3_file base;
	sqlite3_file *real; /* the base VFS's file, right after this struct */
} fault_file;

static inline sqlite3_file *real_file(sqlite3_file *file)
{
	return ((fault_file *)file)->real;
}

static inline int fault_close(sqlite3_file *f)
{
	return real_file(f)->pMethods->xClose(real_file(f));
}

static inline int fault_read(sqlite3_file *f, void *buf, int amount, sqlite3_int64 offset)
{
	return real_file(f)->pMethods->xRead(real_file(f), buf, amount, offset);
}

static inline int fault_write(sqlite3_file *f, const void *buf, int amount,
                       sqlite3_int64 offset)
{
	if (atomic_load(&fault_fail_writes))
		return SQLITE_IOERR_WRITE;
	return real_file(f)->pMethods->xWrite(real_file(f), buf, amount, offset);
}

static inline int fault_truncate(sqlite3_file *f, sqlite3_int64 size)
{
	return real_file(f)->pMethods->xTruncate(real_file(f), size);
}

static inline int fault_sync(sqlite3_file *f, int flags)
{
	if (atomic_load(&fault_fail_syncs))
		return SQLITE_IOERR_FSYNC;
	return real_file(f)->pMethods->xSync(real_file(f), flags);
}

static inline int fault_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
	return real_file(f)->pMethods->xFileSize(real_file(f), size);
}

static inline int fault_lock(sqlite3_file *f, int level)
{
	return real_file(f)->pMethods->xLock(real_file(f), level);
}

static inline int fault_unlock(sqlite3_file *f, int level)
{
	return real_file(f)->pMethods->xUnlock(real_file(f), level);
}

static inline int fault_check_reserved(sqlite3_file *f, int *out)
{
	return real_file(f)->pMethods->xCheckReservedLock(real_file(f), out);
}

static inline int fault_file_control(sqlite3_file *f, int op, void *arg)
{
	return real_file(f)->pMethods->xFileControl(real_file(f), op, arg);
}

static inline int fault_sector_size(sqlite3_file *f)
{
	return real_file(f)->pMethods->xSectorSize(real_file(f));
}

static inline int fault_device_characteristics(sqlite3_file *f)
{
	return real_file(f)->pMethods->xDeviceCharacteristics(real_file(f));
}

static inline int fault_shm_map(sqlite3_file *f, int region, int size, int extend,
                         void volatile **out)
{
	return real_file(f)->pMethods->xShmMap(real_file(f), region, size, extend, out);
}

static inline int fault_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
	return real_file(f)->pMethods->xShmLock(real_file(f), offset, n, flags);
}

static inline void fault_shm_barrier(sqlite3_file *f)
{
	real_file(f)->pMethods->xShmBarrier(real_file(f));
}

static inline int fault_shm_unmap(sqlite3_file *f, int delete_flag)
{
	return real_file(f)->pMethods->xShmUnmap(real_file(f), delete_flag);
}

static inline int fault_fetch(sqlite3_file *f, sqlite3_int64 offset, int amount, void **out)
{
	return real_file(f)->pMethods->xFetch(real_file(f), offset, amount, out);
}

static inline int fault_unfetch(sqlite3_file *f, sqlite3_int64 offset, void *p)
{
	return real_file(f)->pMethods->xUnfetch(real_file(f), offset, p);
}

static const sqlite3_io_methods fault_io = {
	.iVersion = 3,
	.xClose = fault_close,
	.xRead = fault_read,
	.xWrite = fault_write,
	.xTruncate = fault_truncate,
	.xSync = fault_sync,
	.xFileSize = fault_file_size,
	.xLock = fault_lock,
	.xUnlock = fault_unlock,
	.xCheckReservedLock = fault_check_reserved,
	.xFileControl = fault_file_control,
	.xSectorSize = fault_sector_size,
	.xDeviceCharacteristics = fault_device_characteristics,
	.xShmMap = fault_shm_map,
	.xShmLock = fault_shm_lock,
	.xShmBarrier = fault_shm_barrier,
	.xShmUnmap = fault_shm_unmap,
	.xFetch = fault_fetch,
	.xUnfetch = fault_unfetch,
};

static inline int fault_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file,
                      int flags, int *out_flags)
{
	(void)vfs;
	fault_file *f = (fault_file *)file;
	f->real = (sqlite3_file *)(f + 1);
	int rc = fault_base->xOpen(fault_base, name, f->real, flags, out_flags);
	/* SQLite calls xClose whenever pMethods is set, even after a failed
	 * open, so mirror the real file's. */
	file->pMethods = f->real->pMethods != NULL ? &fault_io : NULL;
	return rc;
}

static inline void fault_vfs_install(void)
{
	fault_base = sqlite3_vfs_find(NULL);
	if (fault_base == NULL || fault_base->iVersion < 2) {
		fprintf(stderr, "no usable default SQLite VFS\n");
		exit(1);
	}
	fault_vfs = *fault_base;
	fault_vfs.zName = "kobo_contract_fault";
	fault_vfs.pNext = NULL;
	fault_vfs.szOsFile = (int)sizeof(fault_file) + fault_base->szOsFile;
	fault_vfs.xOpen = fault_open;
	if (sqlite3_vfs_register(&fault_vfs, 1) != SQLITE_OK) {
		fprintf(stderr, "cannot register the fault VFS\n");
		exit(1);
	}
}

/* Arms the VFS for the store's next commit (the test disarms it when
 * commit returns: see disarm_commit_fault). A SQLite commit cannot be
 * made to land and still fail deterministically. */
static inline bool sqlite_fail_next_commit(kobo_store *store, commit_fault fault)
{
	(void)store;
	switch (fault) {
	case FAULT_COMMIT_LOST:
		atomic_store(&fault_fail_writes, true);
		return true;
	case FAULT_COMMIT_UNKNOWN:
		atomic_store(&fault_fail_syncs, true);
		return true;
	case FAULT_COMMIT_LANDED:
		break;
	}
	return false;
}

/* ---- Fixture: one store of one backend. ---- */

typedef struct env {
	const backend *backend;
	char dir[256]; /* the SQLite backend's temporary directory */
	char url[PATH_MAX];
	uint32_t shard;
	kobo_store *store;
	kobo_ledger *ledger;
	uint64_t token; /* the last commit token run_batch saw */
	/* Readers a test opened and has not closed: a failed assertion leaves
	 * them open, and teardown closes them before the store. */
	kobo_store_reader *readers[4];
	kobo_result results[TEST_OPS_MAX];
} env;

static inline void remove_dir(const char *path)
{
	DIR *dir = opendir(path);
	struct dirent *entry;
	char file[PATH_MAX + 256];

	if (dir == NULL)
		return;
	while ((entry = readdir(dir)) != NULL) {
		if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
			continue;
		snprintf(file, sizeof file, "%s/%s", path, entry->d_name);
		if (unlink(file) != 0)
			remove_dir(file); /* the journaled store's shard-N.journal/ */
	}
	closedir(dir);
	rmdir(path);
}

/* The store `kobo key create --data DIR` opens beside a running writer:
 * the URL itself, except that the journaled store's keys live in its
 * SQLite file, which the CLI opens as sqlite:DIR (src/cli/target.c). */
static inline int open_key_tool_store(const env *e, kobo_store **out)
{
	char url[sizeof e->url];
	if (strncmp(e->url, "journal:", 8) == 0) {
		const char *dir = e->url + 8;
		size_t len = strcspn(dir, "?");
		snprintf(url, sizeof url, "sqlite:%.*s", (int)len, dir);
	} else {
		snprintf(url, sizeof url, "%s", e->url);
	}
	return kobo_store_open(url, e->shard, false, out);
}

static inline kobo_store *open_url(const env *e, bool read_only)
{
	kobo_store *store = NULL;
	int rc = kobo_store_open(e->url, e->shard, read_only, &store);
	if (rc != KOBO_OK)
		fail_msg("%s: kobo_store_open(\"%s\", %u) answered %s, expected ok",
		         e->backend->name, e->url, e->shard, kobo_status_name(rc));
	assert_non_null(store);
	if (e->backend->optimistic && !read_only)
		assert_int_equal(kobo_store_set_concurrency(store, KOBO_STORE_OPTIMISTIC),
		                 KOBO_OK);
	return store;
}

static uint32_t next_shard = 3;

static inline int setup(void **state)
{
	const backend *b = *state;
	env *e = calloc(1, sizeof *e);

	assert_non_null(e);
	e->backend = b;
	/* A shard of its own per test (a server-backed store keeps its data
	 * between tests), never 0: the number must reach the backend. Odd,
	 * so that shard + 1 is free for shards_of_one_url_are_separate. */
	e->shard = next_shard;
	next_shard += 2;
	if (b->url_env != NULL) {
		snprintf(e->url, sizeof e->url, "%s", getenv(b->url_env));
	} else if (strstr(b->url, "%s") != NULL) {
		snprintf(e->dir, sizeof e->dir, "/tmp/kobo-contract-%s-XXXXXX", b->name);
		assert_non_null(mkdtemp(e->dir));
		snprintf(e->url, sizeof e->url, b->url, e->dir);
	} else {
		snprintf(e->url, sizeof e->url, "%s", b->url);
	}
	e->store = open_url(e, false);
	e->ledger = kobo_ledger_create(TEST_OPS_MAX);
	assert_non_null(e->ledger);
	*state = e;
	return 0;
}

static inline int teardown(void **state)
{
	env *e = *state;
	atomic_store(&fault_fail_writes, false);
	atomic_store(&fault_fail_syncs, false);
	for (size_t i = 0; i < 4; i++)
		if (e->readers[i] != NULL)
			kobo_store_reader_close(e->readers[i]);
	if (e->store != NULL)
		kobo_store_close(e->store);
	kobo_ledger_destroy(e->ledger);
	if (e->dir[0] != '\0')
		remove_dir(e->dir);
	free(e);
	return 0;
}

/* A process restart over the same data: what was committed stays, an open
 * batch is abandoned and the sticky error is cleared. Readers must be
 * closed first. */
static inline void reopen_store(env *e)
{
	if (e->backend->restart != NULL) {
		e->backend->restart(e->store);
		return;
	}
	kobo_store_close(e->store);
	e->store = open_url(e, false);
}

/* Arms fault for the next commit; false when the backend cannot. */
static inline bool arm_commit_fault(env *e, commit_fault fault)
{
	return e->backend->fail_next_commit != NULL &&
	       e->backend->fail_next_commit(e->store, fault);
}

static inline void disarm_commit_fault(void)
{
	atomic_store(&fault_fail_writes, false);
	atomic_store(&fault_fail_syncs, false);
}

static inline bool arm_commit_conflicts(env *e, unsigned count)
{
	if (e->backend->conflict_next_commits == NULL)
		return false;
	e->backend->conflict_next_commits(e->store, count);
	return true;
}

/* Skips the running test, saying which backend cannot do what. */
static inline void skip_because(const env *e, const char *cannot)
{
	printf("[  SKIPPED ] %s cannot %s\n", e->backend->name, cannot);
	skip();
}

/* ---- Batches, the way the shard writer runs them. ---- */

typedef struct load_ctx {
	kobo_ledger *ledger;
	const char *forged_id; /* an account id not to put (see run_batch_ex) */
	int rc;
} load_ctx;

static inline int put_transfer(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	load_ctx *c = ctx;
	(void)seq;
	c->rc = kobo_ledger_put_transfer(c->ledger, transfer);
	return c->rc != KOBO_OK;
}

static inline int put_account(void *ctx, const kobo_account *account)
{
	load_ctx *c = ctx;
	if (c->forged_id != NULL && strcmp(account->id, c->forged_id) == 0)
		return 0;
	c->rc = kobo_ledger_put_account(c->ledger, account);
	return c->rc != KOBO_OK;
}

static inline char *copy_bytes(const char *bytes, uint32_t len)
{
	char *copy = malloc((size_t)len + 1);
	assert_non_null(copy);
	memcpy(copy, bytes, len);
	return copy;
}

/* Persists what the ledger changed. write() copies what it needs (store.h,
 * guarantee 3), so it is handed copies of the change lists, records and
 * metadata that are scribbled over and freed as soon as it returns: a
 * backend that kept a pointer reads garbage, or ASan stops it. */
static inline int write_changes(env *e)
{
	const kobo_account_change *accounts = NULL;
	const kobo_transfer_change *transfers = NULL;
	size_t n = kobo_ledger_changed_accounts(e->ledger, &accounts);
	size_t m = kobo_ledger_changed_transfers(e->ledger, &transfers);
	kobo_account_change *account_changes = calloc(n + 1, sizeof *account_changes);
	kobo_transfer_change *transfer_changes = calloc(m + 1, sizeof *transfer_changes);
	kobo_account *account_rows = calloc(n + 1, sizeof *account_rows);
	kobo_transfer *transfer_rows = calloc(m + 1, sizeof *transfer_rows);
	char **metadata = calloc(n + m + 1, sizeof *metadata);

	assert_true(account_changes && transfer_changes && account_rows &&
	            transfer_rows && metadata);
	for (size_t i = 0; i < n; i++) {
		account_rows[i] = *accounts[i].account;
		metadata[i] = copy_bytes(account_rows[i].metadata, account_rows[i].metadata_len);
		account_rows[i].metadata = metadata[i];
		account_changes[i].account = &account_rows[i];
		account_changes[i].is_new = accounts[i].is_new;
	}
	for (size_t i = 0; i < m; i++) {
		transfer_rows[i] = *transfers[i].transfer;
		metadata[n + i] = copy_bytes(transfer_rows[i].metadata,
		                             transfer_rows[i].metadata_len);
		transfer_rows[i].metadata = metadata[n + i];
		transfer_changes[i].transfer = &transfer_rows[i];
		transfer_changes[i].is_new = transfers[i].is_new;
	}
	int rc = kobo_store_write(e->store, account_changes, n, transfer_changes, m);
	for (size_t i = 0; i < n; i++) {
		memset(metadata[i], '#', account_rows[i].metadata_len);
		free(metadata[i]);
	}
	for (size_t i = 0; i < m; i++) {
		memset(metadata[n + i], '#', transfer_rows[i].metadata_len);
		free(metadata[n + i]);
	}
	memset(account_rows, 0x5a, (n + 1) * sizeof *account_rows);
	memset(transfer_rows, 0x5a, (m + 1) * sizeof *transfer_rows);
	free(metadata);
	free(account_rows);
	free(transfer_rows);
	free(account_changes);
	free(transfer_changes);
	return rc;
}

/* One batch. Returns the first failing store status (after rolling back),
 * or KOBO_OK once committed (e->token then holds its commit token). When
 * commit is false the batch stops after write(), open for the caller.
 * forged, when not NULL, is put into the ledger instead of the stored
 * account of the same id: a batch built on a lie, which only the audit can
 * catch — tampering that needs no backend-specific access. */
static inline int run_batch_ex(env *e, const kobo_op *ops, size_t count, int64_t now_ms,
                        bool commit, const kobo_account *forged)
{
	static const char *transfer_ids[TEST_OPS_MAX];
	static const char *account_ids[KOBO_LEDGER_ACCOUNT_IDS_MAX(TEST_OPS_MAX)];
	size_t transfer_count = 0;
	size_t account_count = 0;
	load_ctx c = {.ledger = e->ledger, .rc = KOBO_OK};
	int rc;

	assert_true(count <= TEST_OPS_MAX);
	kobo_ledger_reset(e->ledger);
	rc = kobo_store_begin(e->store);
	if (rc != KOBO_OK)
		return rc;
	kobo_ledger_transfer_ids(ops, count, transfer_ids, &transfer_count);
	rc = kobo_store_load_transfers(e->store, transfer_ids, transfer_count,
	                               put_transfer, &c);
	assert_int_equal(c.rc, KOBO_OK);
	if (rc != KOBO_OK)
		goto fail;
	kobo_ledger_account_ids(e->ledger, ops, count, account_ids, &account_count);
	if (forged != NULL) {
		assert_int_equal(kobo_ledger_put_account(e->ledger, forged), KOBO_OK);
		c.forged_id = forged->id;
	}
	rc = kobo_store_load_accounts(e->store, account_ids, account_count,
	                              put_account, &c);
	assert_int_equal(c.rc, KOBO_OK);
	if (rc != KOBO_OK)
		goto fail;
	/* As the writer does; the tests' own clock still stamps the records
	 * (batch_clock_is_the_stores_when_nodes_share_it checks now()). */
	int64_t batch_now_ms = 0;
	rc = kobo_store_now(e->store, now_ms, &batch_now_ms);
	if (rc != KOBO_OK)
		goto fail;
	if (!e->backend->shared_clock)
		assert_int_equal(batch_now_ms, now_ms);
	assert_int_equal(kobo_ledger_apply(e->ledger, ops, count, now_ms, e->results),
	                 KOBO_OK);
	rc = write_changes(e);
	if (rc != KOBO_OK)
		goto fail;
	/* The events, as src/shard/batch.c makes and stamps them. */
	static kobo_event events[TEST_OPS_MAX];
	size_t event_count = kobo_events_derive(ops, e->results, count, events);
	for (size_t i = 0; i < event_count; i++) {
		events[i].at_ms = batch_now_ms;
		events[i].shard = e->shard;
		snprintf(events[i].node, sizeof events[i].node, "node-a");
	}
	rc = kobo_store_write_events(e->store, events, event_count);
	if (rc != KOBO_OK)
		goto fail;
	if (!commit)
		return KOBO_OK;
	rc = kobo_store_commit(e->store, &e->token);
	if (rc != KOBO_OK)
		goto fail;
	return KOBO_OK;
fail:
	kobo_store_rollback(e->store);
	return rc;
}

static inline int run_batch(env *e, const kobo_op *ops, size_t count, int64_t now_ms)
{
	return run_batch_ex(e, ops, count, now_ms, true, NULL);
}

/* Three NGN accounts: cash (may go negative), alice and bob; alice gets
 * 10,000 from cash. */
static inline void seed(env *e, int64_t now_ms)
{
	kobo_op ops[] = {
		test_op_account("cash", "NGN", true, NULL),
		test_op_account("alice", "NGN", false, "{\"owner\":\"ada\"}"),
		test_op_account("bob", "NGN", false, NULL),
		test_op_transfer("t-fund", "cash", "alice", 10000, false, 0),
	};
	assert_int_equal(run_batch(e, ops, 4, now_ms), KOBO_OK);
	assert_int_equal(e->results[3].code, KOBO_RESULT_CREATED);
}

/* ---- Reading back. ---- */

static inline kobo_store_reader *reader_open_ok(env *e)
{
	kobo_store_reader *reader = NULL;
	assert_int_equal(kobo_store_reader_open(e->store, &reader), KOBO_OK);
	assert_non_null(reader);
	for (size_t i = 0; i < 4; i++) {
		if (e->readers[i] == NULL) {
			e->readers[i] = reader;
			return reader;
		}
	}
	fail_msg("a test holds more than 4 readers");
	return NULL;
}

static inline void reader_close(env *e, kobo_store_reader *reader)
{
	for (size_t i = 0; i < 4; i++)
		if (e->readers[i] == reader)
			e->readers[i] = NULL;
	kobo_store_reader_close(reader);
}

static inline kobo_account read_account_ok(kobo_store_reader *reader, const char *id)
{
	kobo_account account;
	int rc = kobo_store_read_account(reader, id, &account);
	if (rc != KOBO_OK)
		fail_msg("read_account(%s) answered %s, expected ok", id, kobo_status_name(rc));
	return account;
}

static inline kobo_transfer read_transfer_ok(kobo_store_reader *reader, const char *id)
{
	kobo_transfer transfer;
	int rc = kobo_store_read_transfer(reader, id, &transfer);
	if (rc != KOBO_OK)
		fail_msg("read_transfer(%s) answered %s, expected ok", id, kobo_status_name(rc));
	return transfer;
}

/* A record read from a reader lives until the next call on it (store.h,
 * guarantee 3); these keep one longer, its metadata copied into buf. */
static inline kobo_account keep_account(kobo_account account,
                                 char (*buf)[KOBO_METADATA_BYTES_MAX])
{
	assert_true(account.metadata_len <= sizeof *buf);
	memcpy(*buf, account.metadata, account.metadata_len);
	account.metadata = *buf;
	return account;
}

static inline kobo_transfer keep_transfer(kobo_transfer transfer,
                                   char (*buf)[KOBO_METADATA_BYTES_MAX])
{
	assert_true(transfer.metadata_len <= sizeof *buf);
	memcpy(*buf, transfer.metadata, transfer.metadata_len);
	transfer.metadata = *buf;
	return transfer;
}

static inline void assert_account_absent(kobo_store_reader *reader, const char *id)
{
	kobo_account account;
	assert_int_equal(kobo_store_read_account(reader, id, &account), KOBO_ENOTFOUND);
}

static inline void assert_transfer_absent(kobo_store_reader *reader, const char *id)
{
	kobo_transfer transfer;
	assert_int_equal(kobo_store_read_transfer(reader, id, &transfer), KOBO_ENOTFOUND);
}

static inline void assert_account_equal(const kobo_account *want, const kobo_account *got)
{
	assert_string_equal(got->id, want->id);
	assert_string_equal(got->currency, want->currency);
	assert_int_equal(got->allow_negative, want->allow_negative);
	assert_int_equal(got->posted, want->posted);
	assert_int_equal(got->pending_out, want->pending_out);
	assert_int_equal(got->pending_in, want->pending_in);
	assert_int_equal(got->metadata_len, want->metadata_len);
	assert_memory_equal(got->metadata, want->metadata, want->metadata_len);
	assert_int_equal(got->created_at_ms, want->created_at_ms);
	assert_string_equal(got->created_by, want->created_by);
}

static inline void assert_transfer_equal(const kobo_transfer *want, const kobo_transfer *got)
{
	assert_string_equal(got->id, want->id);
	assert_string_equal(got->from, want->from);
	assert_string_equal(got->to, want->to);
	assert_string_equal(got->currency, want->currency);
	assert_string_equal(got->request_id, want->request_id);
	assert_int_equal(got->amount, want->amount);
	assert_int_equal(got->posted_amount, want->posted_amount);
	assert_int_equal(got->pending, want->pending);
	assert_int_equal(got->timeout_seconds, want->timeout_seconds);
	assert_int_equal(got->expires_at_ms, want->expires_at_ms);
	assert_int_equal(got->status, want->status);
	assert_int_equal(got->void_reason, want->void_reason);
	assert_int_equal(got->error_code, want->error_code);
	assert_int_equal(got->metadata_len, want->metadata_len);
	assert_memory_equal(got->metadata, want->metadata, want->metadata_len);
	assert_int_equal(got->created_at_ms, want->created_at_ms);
	assert_int_equal(got->updated_at_ms, want->updated_at_ms);
	assert_int_equal(got->leg, want->leg);
	assert_string_equal(got->clearing, want->clearing);
	assert_int_equal(got->saga, want->saga);
	assert_int_equal(got->saga_amount, want->saga_amount);
	assert_int_equal(got->saga_reason, want->saga_reason);
	assert_string_equal(got->created_by, want->created_by);
	assert_string_equal(got->trace_id, want->trace_id);
}

typedef struct seen {
	char ids[16][KOBO_ID_LEN_MAX + 1];
	int64_t seqs[16];
	size_t count;
	size_t stop_after;
} seen;

static inline int collect(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	seen *s = ctx;
	assert_true(s->count < 16);
	assert_true(transfer->metadata_len > 0);
	snprintf(s->ids[s->count], sizeof s->ids[s->count], "%s", transfer->id);
	s->seqs[s->count++] = seq;
	return s->stop_after != 0 && s->count >= s->stop_after;
}

typedef struct seen_accounts {
	char ids[16][KOBO_ID_LEN_MAX + 1];
	size_t count;
	size_t stop_after;
} seen_accounts;

static inline int collect_account(void *ctx, const kobo_account *account)
{
	seen_accounts *s = ctx;
	assert_true(s->count < 16);
	assert_true(account->metadata_len > 0);
	snprintf(s->ids[s->count++], sizeof s->ids[0], "%s", account->id);
	return s->stop_after != 0 && s->count >= s->stop_after;
}

static inline size_t history_count(kobo_store_reader *reader, const char *account_id)
{
	seen s;
	memset(&s, 0, sizeof s);
	assert_int_equal(kobo_store_read_history(reader, account_id, 0, 16, collect, &s),
	                 KOBO_OK);
	return s.count;
}

typedef struct report_log {
	char lines[8][512];
	size_t count;
} report_log;

static inline void collect_report(void *ctx, const char *line)
{
	report_log *log = ctx;
	if (log->count < 8)
		snprintf(log->lines[log->count], sizeof log->lines[0], "%s", line);
	log->count++;
}

static inline bool report_mentions(const report_log *log, const char *text)
{
	for (size_t i = 0; i < log->count && i < 8; i++)
		if (strstr(log->lines[i], text) != NULL)
			return true;
	return false;
}

static inline void assert_audit_clean(env *e, kobo_audit_totals *totals)
{
	report_log log;
	memset(&log, 0, sizeof log);
	assert_int_equal(kobo_store_audit(e->store, collect_report, &log, totals), KOBO_OK);
	if (totals->problems != 0)
		fail_msg("%s: audit found %zu problems, first: %s", e->backend->name,
		         totals->problems, log.lines[0]);
}

#endif
