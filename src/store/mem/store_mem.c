/*
 * store_mem.c — the in-memory store: store.h's contract without a file.
 *
 * For tests and the seeded saga simulation: the same semantics as the
 * SQLite store (store_sqlite.c) — batches, replays, history order and
 * cursor, expiry scan, sticky error, readers that never see an
 * uncommitted batch, the same audit rules (auditor.c, which both feed) —
 * plus injected commit faults and a "process restart". "Durable" means
 * committed to the maps below. Simple and obviously correct comes before
 * fast: reads scan, writes are O(1) amortized per row.
 *
 * NOTES ON THE DESIGN
 *
 * Data. Committed accounts and transfers are two arrays of rows, each with
 * an open-addressing hash index by id (row + 1 in a slot, 0 empty, at most
 * half full). Rows are never deleted, so a row number stays valid forever
 * and a transfer's seq is its row + 1 (insertion order, as SQLite's rowid).
 * Every row owns its metadata (malloc'd copy; "{}" when none was given).
 * One mutex guards the committed rows; readers, the audit, the expiry scan
 * and commit take it, and nobody calls back into the caller while holding
 * it: reads copy what they found (a snapshot) under the mutex, then
 * deliver it. An update rewrites only what may change after creation,
 * the same columns as SQLite: an account's posted, pending_out and
 * pending_in; a transfer's kobo_transfer_state (ledger.h, the one list of
 * a transfer's mutable fields), moved with kobo_transfer_state_of/_set.
 *
 * Batches. write() stages copies of the changed rows it is given in a
 * batch of its own (two more row tables, writer thread only) and checks
 * them as SQLite's constraints would: inserting an id that exists, or
 * updating one that does not, is a failed write. commit() applies the
 * staged rows under the mutex after reserving every array and index it
 * needs, so applying cannot fail half-way, and counts the batch in
 * commit_seq (the consistency token, store.h). Until then readers see
 * nothing of the batch. Metadata of the rows handed to the load callbacks
 * is copied into `loaded`, freed by the next begin().
 *
 * The write-side state machine (writer thread only):
 *
 *          open() ──▶ IDLE ── begin() ──▶ IN_BATCH ◀──┐ load_*(), write()
 *                      ▲ ▲                  │ │ │     │
 *                      │ └── commit() ok ───┘ │ └─────┘
 *                      └──── rollback(), or commit() with a conflict armed
 *
 *          IN_BATCH ── write() refused by a constraint, out of memory,
 *                      or commit() with a fault armed ──▶ FAILED
 *          FAILED ── kobo_store_mem_restart() ──▶ IDLE
 *
 *   transition            performed by              what happens
 *   IDLE → IN_BATCH       mem_begin                 loaded metadata freed,
 *                                                   staged rows dropped
 *   IN_BATCH → IN_BATCH   mem_load_*, mem_write     copies out / stages
 *   IN_BATCH → IDLE       mem_commit                staged rows applied
 *   IN_BATCH → IDLE       mem_rollback              staged rows dropped
 *   IN_BATCH → IDLE       mem_commit (conflict)     staged rows dropped,
 *                                                   KOBO_ECONFLICT
 *   IN_BATCH → FAILED     mem_write, mem_commit     staged rows dropped
 *                         (mem_fail)                (or, for a fault with
 *                                                   applied, applied first)
 *   FAILED → IDLE         kobo_store_mem_restart    failed flag cleared
 *
 * API keys. A sorted array of kobo_api_key under the same mutex, written
 * by key_insert / key_revoke at once (no batch) and copied out by
 * read_keys before its callbacks run; a restart keeps them.
 *
 * Faults. kobo_store_mem_fail_next_commit arms one fault for the next
 * commit: applied = false drops the batch (a failed fsync), applied = true
 * applies it and still answers KOBO_EUNKNOWN (a crash after the fsync,
 * before the answer). The fault belongs to the "disk": a restart does not
 * disarm a fault that has not fired yet. kobo_store_mem_conflict_next_commits
 * makes the next commits answer KOBO_ECONFLICT (nothing lands, healthy).
 *
 * Invariants:
 *   1. Committed rows change only inside mem_commit, under the mutex, and
 *      only by whole batches.
 *   2. state == IN_BATCH exactly between a successful begin() and the end
 *      of that batch; staged rows exist only then.
 *   3. `failed` is set exactly while state == FAILED; only a restart (or
 *      close) clears it.
 *   4. Row r of the committed transfers has seq r + 1; rows are never
 *      removed or reordered.
 *   5. No caller callback runs while the mutex is held.
 */
#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/core.h"
#include "../auditor.h" /* the audit's rules (store_auditor_*) */
#include "store_mem.h"

#define MEM_INDEX_SLOTS_MIN 16

static const char empty_metadata[] = "{}";

/* ---- Rows and their id index. ---- */

typedef struct mem_account {
	kobo_account a; /* a.metadata: owned */
	bool is_new;    /* staged rows: insert rather than update */
} mem_account;

typedef struct mem_transfer {
	kobo_transfer t; /* t.metadata: owned */
	bool is_new;
} mem_transfer;

typedef struct id_index {
	size_t *slots;     /* row + 1; 0: empty */
	size_t slot_count; /* a power of two, at least twice the rows */
} id_index;

typedef struct account_rows {
	mem_account *rows;
	size_t count;
	size_t cap;
	id_index index;
} account_rows;

typedef struct transfer_rows {
	mem_transfer *rows;
	size_t count;
	size_t cap;
	id_index index;
} transfer_rows;

#define NO_ROW SIZE_MAX

/* The row whose id is id, or NO_ROW. id_of(rows, r) names row r. */
typedef const char *(*row_id_fn)(const void *rows, size_t row);

static size_t index_find(const id_index *ix, const void *rows, row_id_fn id_of,
                         const char *id)
{
	if (ix->slot_count == 0)
		return NO_ROW;
	size_t mask = ix->slot_count - 1;
	for (size_t i = kobo_hash_id(id) & mask;; i = (i + 1) & mask) {
		if (ix->slots[i] == 0)
			return NO_ROW;
		if (strcmp(id_of(rows, ix->slots[i] - 1), id) == 0)
			return ix->slots[i] - 1;
	}
}

static void index_put(id_index *ix, const char *id, size_t row)
{
	size_t mask = ix->slot_count - 1;
	size_t i = kobo_hash_id(id) & mask;
	while (ix->slots[i] != 0)
		i = (i + 1) & mask;
	ix->slots[i] = row + 1;
}

/* Makes room for rows_max rows (rows[0..count) already indexed), growing
 * and rehashing when needed. KOBO_ENOMEM leaves the index as it was. */
static int index_reserve(id_index *ix, const void *rows, row_id_fn id_of,
                         size_t count, size_t rows_max)
{
	size_t slot_count = ix->slot_count == 0 ? MEM_INDEX_SLOTS_MIN : ix->slot_count;
	while (slot_count < 2 * rows_max)
		slot_count *= 2;
	if (slot_count == ix->slot_count)
		return KOBO_OK;
	size_t *slots = calloc(slot_count, sizeof *slots);
	if (slots == NULL)
		return KOBO_ENOMEM;
	free(ix->slots);
	ix->slots = slots;
	ix->slot_count = slot_count;
	for (size_t r = 0; r < count; r++)
		index_put(ix, id_of(rows, r), r);
	return KOBO_OK;
}

static void index_clear(id_index *ix)
{
	if (ix->slots != NULL)
		memset(ix->slots, 0, ix->slot_count * sizeof *ix->slots);
}

static const char *account_id_of(const void *rows, size_t row)
{
	return ((const mem_account *)rows)[row].a.id;
}

static const char *transfer_id_of(const void *rows, size_t row)
{
	return ((const mem_transfer *)rows)[row].t.id;
}

static size_t find_account(const account_rows *t, const char *id)
{
	return index_find(&t->index, t->rows, account_id_of, id);
}

static size_t find_transfer(const transfer_rows *t, const char *id)
{
	return index_find(&t->index, t->rows, transfer_id_of, id);
}

/* Room for extra more rows in the array and the index. */
static int accounts_reserve(account_rows *t, size_t extra)
{
	size_t need = t->count + extra;
	if (need > t->cap) {
		size_t cap = t->cap == 0 ? 64 : t->cap;
		while (cap < need)
			cap *= 2;
		mem_account *rows = realloc(t->rows, cap * sizeof *rows);
		if (rows == NULL)
			return KOBO_ENOMEM;
		t->rows = rows;
		t->cap = cap;
	}
	return index_reserve(&t->index, t->rows, account_id_of, t->count, need);
}

static int transfers_reserve(transfer_rows *t, size_t extra)
{
	size_t need = t->count + extra;
	if (need > t->cap) {
		size_t cap = t->cap == 0 ? 64 : t->cap;
		while (cap < need)
			cap *= 2;
		mem_transfer *rows = realloc(t->rows, cap * sizeof *rows);
		if (rows == NULL)
			return KOBO_ENOMEM;
		t->rows = rows;
		t->cap = cap;
	}
	return index_reserve(&t->index, t->rows, transfer_id_of, t->count, need);
}

/* Appends a row (room reserved); the row's metadata moves in with it. */
static void accounts_append(account_rows *t, const mem_account *row)
{
	assert(t->count < t->cap);
	t->rows[t->count] = *row;
	index_put(&t->index, row->a.id, t->count);
	t->count++;
}

static void transfers_append(transfer_rows *t, const mem_transfer *row)
{
	assert(t->count < t->cap);
	t->rows[t->count] = *row;
	index_put(&t->index, row->t.id, t->count);
	t->count++;
}

/* Frees every row's metadata and forgets the rows (keeps the memory). */
static void accounts_clear(account_rows *t)
{
	for (size_t r = 0; r < t->count; r++)
		free((char *)t->rows[r].a.metadata);
	t->count = 0;
	index_clear(&t->index);
}

static void transfers_clear(transfer_rows *t)
{
	for (size_t r = 0; r < t->count; r++)
		free((char *)t->rows[r].t.metadata);
	t->count = 0;
	index_clear(&t->index);
}

static void accounts_free(account_rows *t)
{
	accounts_clear(t);
	free(t->rows);
	free(t->index.slots);
	memset(t, 0, sizeof *t);
}

static void transfers_free(transfer_rows *t)
{
	transfers_clear(t);
	free(t->rows);
	free(t->index.slots);
	memset(t, 0, sizeof *t);
}

/* A malloc'd copy of metadata; "{}" for none, as SQLite stores it. */
static char *metadata_copy(const char *metadata, uint32_t len, uint32_t *len_out)
{
	if (metadata == NULL || len == 0) {
		metadata = empty_metadata;
		len = (uint32_t)strlen(empty_metadata);
	}
	char *copy = malloc(len);
	if (copy != NULL)
		memcpy(copy, metadata, len);
	*len_out = len;
	return copy;
}

/* ---- Handles. ---- */

typedef enum mem_state {
	MEM_IDLE = 0,
	MEM_IN_BATCH,
	MEM_FAILED,
} mem_state;

typedef struct mem_store {
	kobo_store base; /* first: kobo_store * converts to mem_store * */
	pthread_mutex_t mutex;
	/* Under mutex. */
	account_rows accounts;
	transfer_rows transfers;
	bool fault_armed;
	bool fault_applied;
	unsigned conflicts_armed;
	uint64_t commit_seq; /* committed batches: the consistency token */
	kobo_api_key *keys;  /* API keys, in id order (key_insert keeps it so) */
	size_t key_count;
	size_t key_cap;
	size_t keys_live;    /* keys with revoked_at_ms == 0 */
	kobo_event *events;  /* committed events; seq = row + 1 */
	size_t event_count;
	size_t event_cap;
	/* Writer thread only. */
	mem_state state;
	bool read_only;
	account_rows staged_accounts;
	transfer_rows staged_transfers;
	kobo_event *staged_events;
	size_t staged_event_count;
	char **loaded; /* metadata handed to the ledger, freed by begin() */
	size_t loaded_count;
	size_t loaded_cap;
	/* Any thread. */
	atomic_bool failed;
	atomic_size_t readers_open;
} mem_store;

typedef struct mem_reader {
	kobo_store_reader base; /* first */
	char *buffer;           /* metadata of the last read_account/transfer */
} mem_reader;

static mem_store *to_store(kobo_store *store)
{
	return (mem_store *)store;
}

static mem_reader *to_reader(kobo_store_reader *reader)
{
	return (mem_reader *)reader;
}

static void loaded_free(mem_store *s)
{
	for (size_t i = 0; i < s->loaded_count; i++)
		free(s->loaded[i]);
	s->loaded_count = 0;
}

/* A copy of metadata that lives until the next begin(); NULL when out of
 * memory. */
static const char *loaded_keep(mem_store *s, const char *metadata, uint32_t len)
{
	if (s->loaded_count == s->loaded_cap) {
		size_t cap = s->loaded_cap == 0 ? 64 : 2 * s->loaded_cap;
		char **grown = realloc(s->loaded, cap * sizeof *grown);
		if (grown == NULL)
			return NULL;
		s->loaded = grown;
		s->loaded_cap = cap;
	}
	uint32_t copied_len;
	char *copy = metadata_copy(metadata, len, &copied_len);
	if (copy == NULL)
		return NULL;
	s->loaded[s->loaded_count++] = copy;
	return copy;
}

static void drop_batch(mem_store *s)
{
	accounts_clear(&s->staged_accounts);
	transfers_clear(&s->staged_transfers);
	free(s->staged_events);
	s->staged_events = NULL;
	s->staged_event_count = 0;
}

/* ---- The write side. ---- */

/* IN_BATCH → FAILED: the batch is dropped and writes are refused until a
 * restart, as the SQLite store refuses them until reopened. */
static int mem_fail(mem_store *s)
{
	kobo_assert(s->state == MEM_IN_BATCH);
	drop_batch(s);
	s->state = MEM_FAILED;
	atomic_store(&s->failed, true);
	return KOBO_ESTORE;
}

static int mem_begin(kobo_store *store)
{
	mem_store *s = to_store(store);

	if (s->read_only)
		return KOBO_EINVAL;
	if (atomic_load(&s->failed))
		return KOBO_EFAILED;
	kobo_assert(s->state == MEM_IDLE);
	loaded_free(s);
	drop_batch(s);
	s->state = MEM_IN_BATCH;
	return KOBO_OK;
}

/* A load stops at the first non-zero return of the callback and hands it
 * back; the batch stays open (the caller rolls back). */
static int mem_load_transfers(kobo_store *store, const char *const *ids,
                              size_t count, kobo_store_transfer_fn each,
                              void *ctx)
{
	mem_store *s = to_store(store);

	kobo_assert(s->state == MEM_IN_BATCH);
	for (size_t i = 0; i < count; i++) {
		kobo_transfer transfer;

		pthread_mutex_lock(&s->mutex);
		size_t row = find_transfer(&s->transfers, ids[i]);
		if (row != NO_ROW) {
			transfer = s->transfers.rows[row].t;
			transfer.metadata = loaded_keep(s, transfer.metadata,
			                                transfer.metadata_len);
		}
		pthread_mutex_unlock(&s->mutex);
		if (row == NO_ROW)
			continue;
		if (transfer.metadata == NULL)
			return KOBO_ESTORE; /* no memory for the copy */
		int rc = each(ctx, &transfer, (int64_t)row + 1);
		if (rc != 0)
			return rc;
	}
	return KOBO_OK;
}

static int mem_load_accounts(kobo_store *store, const char *const *ids,
                             size_t count, kobo_store_account_fn each, void *ctx)
{
	mem_store *s = to_store(store);

	kobo_assert(s->state == MEM_IN_BATCH);
	for (size_t i = 0; i < count; i++) {
		kobo_account account;

		pthread_mutex_lock(&s->mutex);
		size_t row = find_account(&s->accounts, ids[i]);
		if (row != NO_ROW) {
			account = s->accounts.rows[row].a;
			account.metadata = loaded_keep(s, account.metadata,
			                               account.metadata_len);
		}
		pthread_mutex_unlock(&s->mutex);
		if (row == NO_ROW)
			continue;
		if (account.metadata == NULL)
			return KOBO_ESTORE; /* no memory for the copy */
		int rc = each(ctx, &account);
		if (rc != 0)
			return rc;
	}
	return KOBO_OK;
}

/* The columns an update rewrites (see the notes above). */
static void account_update(kobo_account *row, const kobo_account *changed)
{
	row->posted = changed->posted;
	row->pending_out = changed->pending_out;
	row->pending_in = changed->pending_in;
}

/* Exactly kobo_transfer_state: the one list of a transfer's mutable
 * fields (ledger.h), as SQLite's UPDATE binds it. */
static void transfer_update(kobo_transfer *row, const kobo_transfer *changed)
{
	kobo_transfer_state state = kobo_transfer_state_of(changed);
	kobo_transfer_state_set(row, &state);
}

/* Stages one changed account. An insert of an id that exists, committed
 * or staged, or an update of one that does not, is what SQLite's
 * constraints (or its "one row changed" check) would refuse: KOBO_ESTORE. */
static int stage_account(mem_store *s, const kobo_account_change *change)
{
	account_rows *staged = &s->staged_accounts;
	size_t row = find_account(staged, change->account->id);

	if (row != NO_ROW) {
		if (change->is_new)
			return KOBO_ESTORE;
		account_update(&staged->rows[row].a, change->account);
		return KOBO_OK;
	}
	pthread_mutex_lock(&s->mutex);
	bool committed = find_account(&s->accounts, change->account->id) != NO_ROW;
	pthread_mutex_unlock(&s->mutex);
	if (committed == change->is_new)
		return KOBO_ESTORE;
	if (accounts_reserve(staged, 1) != KOBO_OK)
		return KOBO_ENOMEM;
	mem_account copy = {.a = *change->account, .is_new = change->is_new};
	copy.a.metadata = metadata_copy(change->account->metadata,
	                                change->account->metadata_len,
	                                &copy.a.metadata_len);
	if (copy.a.metadata == NULL)
		return KOBO_ENOMEM;
	accounts_append(staged, &copy);
	return KOBO_OK;
}

static int stage_transfer(mem_store *s, const kobo_transfer_change *change)
{
	transfer_rows *staged = &s->staged_transfers;
	size_t row = find_transfer(staged, change->transfer->id);

	if (row != NO_ROW) {
		if (change->is_new)
			return KOBO_ESTORE;
		transfer_update(&staged->rows[row].t, change->transfer);
		return KOBO_OK;
	}
	pthread_mutex_lock(&s->mutex);
	bool committed = find_transfer(&s->transfers, change->transfer->id) != NO_ROW;
	pthread_mutex_unlock(&s->mutex);
	if (committed == change->is_new)
		return KOBO_ESTORE;
	if (transfers_reserve(staged, 1) != KOBO_OK)
		return KOBO_ENOMEM;
	mem_transfer copy = {.t = *change->transfer, .is_new = change->is_new};
	copy.t.metadata = metadata_copy(change->transfer->metadata,
	                                change->transfer->metadata_len,
	                                &copy.t.metadata_len);
	if (copy.t.metadata == NULL)
		return KOBO_ENOMEM;
	transfers_append(staged, &copy);
	return KOBO_OK;
}

static int mem_write(kobo_store *store, const kobo_account_change *accounts,
                     size_t account_count, const kobo_transfer_change *transfers,
                     size_t transfer_count)
{
	mem_store *s = to_store(store);

	kobo_assert(s->state == MEM_IN_BATCH);
	for (size_t i = 0; i < account_count; i++) {
		if (stage_account(s, &accounts[i]) != KOBO_OK)
			return mem_fail(s);
	}
	/* In array order: it fixes each new transfer's seq at commit. */
	for (size_t i = 0; i < transfer_count; i++) {
		if (stage_transfer(s, &transfers[i]) != KOBO_OK)
			return mem_fail(s);
	}
	return KOBO_OK;
}

static int mem_write_events(kobo_store *store, const kobo_event *events, size_t count)
{
	mem_store *s = to_store(store);

	kobo_assert(s->state == MEM_IN_BATCH);
	if (count == 0)
		return KOBO_OK;
	if (s->staged_event_count != 0)
		return mem_fail(s); /* one call per batch */
	s->staged_events = malloc(count * sizeof *events);
	if (s->staged_events == NULL)
		return mem_fail(s);
	memcpy(s->staged_events, events, count * sizeof *events);
	s->staged_event_count = count;
	return KOBO_OK;
}

/* Applies the staged batch to the committed rows; the caller holds the
 * mutex. Reserves first, so that it applies all or nothing. Staged
 * metadata of new rows moves into the committed rows. */
static int apply_batch(mem_store *s)
{
	account_rows *staged_accounts = &s->staged_accounts;
	transfer_rows *staged_transfers = &s->staged_transfers;
	size_t new_accounts = 0;
	size_t new_transfers = 0;

	for (size_t r = 0; r < staged_accounts->count; r++)
		new_accounts += staged_accounts->rows[r].is_new;
	for (size_t r = 0; r < staged_transfers->count; r++)
		new_transfers += staged_transfers->rows[r].is_new;
	if (accounts_reserve(&s->accounts, new_accounts) != KOBO_OK ||
	    transfers_reserve(&s->transfers, new_transfers) != KOBO_OK)
		return KOBO_ENOMEM;
	if (s->event_count + s->staged_event_count > s->event_cap) {
		size_t cap = s->event_cap ? s->event_cap : 64;
		while (cap < s->event_count + s->staged_event_count)
			cap *= 2;
		kobo_event *events = realloc(s->events, cap * sizeof *events);
		if (events == NULL)
			return KOBO_ENOMEM;
		s->events = events;
		s->event_cap = cap;
	}
	s->commit_seq++;
	for (size_t e = 0; e < s->staged_event_count; e++) {
		s->events[s->event_count] = s->staged_events[e];
		s->events[s->event_count].seq = (int64_t)s->event_count + 1;
		s->event_count++;
	}

	for (size_t r = 0; r < staged_accounts->count; r++) {
		mem_account *row = &staged_accounts->rows[r];
		if (row->is_new) {
			row->is_new = false;
			accounts_append(&s->accounts, row);
			row->a.metadata = NULL; /* moved */
		} else {
			size_t at = find_account(&s->accounts, row->a.id);
			assert(at != NO_ROW); /* checked when staged */
			account_update(&s->accounts.rows[at].a, &row->a);
		}
	}
	for (size_t r = 0; r < staged_transfers->count; r++) {
		mem_transfer *row = &staged_transfers->rows[r];
		if (row->is_new) {
			row->is_new = false;
			transfers_append(&s->transfers, row);
			row->t.metadata = NULL; /* moved */
		} else {
			size_t at = find_transfer(&s->transfers, row->t.id);
			assert(at != NO_ROW);
			transfer_update(&s->transfers.rows[at].t, &row->t);
		}
	}
	return KOBO_OK;
}

static int mem_commit(kobo_store *store, uint64_t *token)
{
	mem_store *s = to_store(store);
	int rc;

	kobo_assert(s->state == MEM_IN_BATCH);
	pthread_mutex_lock(&s->mutex);
	if (s->conflicts_armed > 0) {
		s->conflicts_armed--;
		pthread_mutex_unlock(&s->mutex);
		drop_batch(s); /* nothing landed; re-run the batch */
		s->state = MEM_IDLE;
		return KOBO_ECONFLICT;
	}
	bool fault = s->fault_armed;
	s->fault_armed = false;
	if (fault && !s->fault_applied)
		rc = KOBO_ESTORE; /* the fsync failed: nothing landed */
	else
		rc = apply_batch(s);
	uint64_t seq = s->commit_seq;
	pthread_mutex_unlock(&s->mutex);
	if (fault) {
		mem_fail(s); /* drops what is left of the batch */
		return KOBO_EUNKNOWN;
	}
	if (rc != KOBO_OK)
		return mem_fail(s); /* out of memory: nothing landed */
	drop_batch(s);
	s->state = MEM_IDLE;
	*token = seq;
	return KOBO_OK;
}

/* One writer per shard: the rows need no guarding against other nodes,
 * so there is nothing to be optimistic about (store.h). */
static int mem_set_concurrency(kobo_store *store, kobo_store_concurrency mode)
{
	(void)store;
	return mode == KOBO_STORE_PESSIMISTIC ? KOBO_OK : KOBO_EINVAL;
}

/* One process serves this store: its clock is the caller's (store.h). */
static int mem_now(kobo_store *store, int64_t local_now_ms, int64_t *now_ms)
{
	(void)store;
	*now_ms = local_now_ms;
	return KOBO_OK;
}

static void mem_rollback(kobo_store *store)
{
	mem_store *s = to_store(store);

	if (s->state != MEM_IN_BATCH)
		return; /* never begun, already ended, or FAILED (dropped) */
	drop_batch(s);
	s->state = MEM_IDLE;
}

typedef struct expiry {
	int64_t expires_at_ms;
	size_t row; /* seq - 1: breaks ties the way SQLite's index does */
} expiry;

static int expiry_order(const void *left, const void *right)
{
	const expiry *a = left;
	const expiry *b = right;
	if (a->expires_at_ms != b->expires_at_ms)
		return a->expires_at_ms < b->expires_at_ms ? -1 : 1;
	return a->row < b->row ? -1 : a->row > b->row;
}

static int mem_expired_holds(kobo_store *store, int64_t now_ms,
                             char (*ids)[KOBO_ID_LEN_MAX + 1], size_t max,
                             size_t *count)
{
	mem_store *s = to_store(store);
	expiry *due = NULL;
	size_t due_count = 0;
	size_t due_cap = 0;
	int result = KOBO_OK;

	*count = 0;
	if (atomic_load(&s->failed))
		return KOBO_EFAILED;
	assert(s->state != MEM_IN_BATCH);
	if (max == 0)
		return KOBO_OK;
	pthread_mutex_lock(&s->mutex);
	for (size_t r = 0; r < s->transfers.count; r++) {
		const kobo_transfer *t = &s->transfers.rows[r].t;
		/* Only PENDING: a PROCESSING record's saga decides its end. */
		if (t->status != KOBO_STATUS_PENDING || t->expires_at_ms <= 0 ||
		    t->expires_at_ms > now_ms)
			continue;
		if (due_count == due_cap) {
			size_t cap = due_cap == 0 ? 64 : 2 * due_cap;
			expiry *grown = realloc(due, cap * sizeof *grown);
			if (grown == NULL) {
				result = KOBO_ESTORE; /* out of memory (store.h) */
				break;
			}
			due = grown;
			due_cap = cap;
		}
		due[due_count++] = (expiry){t->expires_at_ms, r};
	}
	if (result == KOBO_OK) {
		if (due_count > 0)
			qsort(due, due_count, sizeof *due, expiry_order);
		for (size_t i = 0; i < due_count && i < max; i++)
			memcpy(ids[i], s->transfers.rows[due[i].row].t.id, sizeof ids[i]);
		*count = due_count < max ? due_count : max;
	}
	pthread_mutex_unlock(&s->mutex);
	free(due);
	return result;
}

static bool mem_healthy(kobo_store *store)
{
	return !atomic_load(&to_store(store)->failed);
}

/* ---- Readers. ---- */

static int mem_reader_open(kobo_store *store, kobo_store_reader **reader)
{
	mem_reader *r = calloc(1, sizeof *r);

	*reader = NULL;
	if (r == NULL)
		return KOBO_ENOMEM;
	r->base.store = store;
	atomic_fetch_add(&to_store(store)->readers_open, 1);
	*reader = &r->base;
	return KOBO_OK;
}

static void mem_reader_close(kobo_store_reader *reader)
{
	mem_reader *r = to_reader(reader);

	if (r == NULL)
		return;
	atomic_fetch_sub(&to_store(r->base.store)->readers_open, 1);
	free(r->buffer);
	free(r);
}

/* Keeps a copy of metadata in the reader, valid until its next call. */
static const char *reader_keep(mem_reader *r, const char *metadata, uint32_t len)
{
	uint32_t copied_len;
	char *copy = metadata_copy(metadata, len, &copied_len);
	if (copy == NULL)
		return NULL;
	free(r->buffer);
	r->buffer = copy;
	return copy;
}

static int mem_read_account(kobo_store_reader *reader, const char *id,
                            kobo_account *out)
{
	mem_reader *r = to_reader(reader);
	mem_store *s = to_store(reader->store);
	int result = KOBO_OK;

	pthread_mutex_lock(&s->mutex);
	size_t row = find_account(&s->accounts, id);
	if (row == NO_ROW) {
		result = KOBO_ENOTFOUND;
	} else {
		*out = s->accounts.rows[row].a;
		out->metadata = reader_keep(r, out->metadata, out->metadata_len);
		if (out->metadata == NULL)
			result = KOBO_ENOMEM;
	}
	pthread_mutex_unlock(&s->mutex);
	return result;
}

static int mem_read_transfer(kobo_store_reader *reader, const char *id,
                             kobo_transfer *out)
{
	mem_reader *r = to_reader(reader);
	mem_store *s = to_store(reader->store);
	int result = KOBO_OK;

	pthread_mutex_lock(&s->mutex);
	size_t row = find_transfer(&s->transfers, id);
	if (row == NO_ROW) {
		result = KOBO_ENOTFOUND;
	} else {
		*out = s->transfers.rows[row].t;
		out->metadata = reader_keep(r, out->metadata, out->metadata_len);
		if (out->metadata == NULL)
			result = KOBO_ENOMEM;
	}
	pthread_mutex_unlock(&s->mutex);
	return result;
}

/* A snapshot of some transfers: copies taken under the mutex, handed to
 * the caller's callback after it is released. */
typedef struct transfer_snapshot {
	kobo_transfer *transfers; /* metadata: owned */
	int64_t *seqs;
	size_t count;
	size_t cap;
} transfer_snapshot;

static int snapshot_add(transfer_snapshot *snap, const kobo_transfer *t, int64_t seq)
{
	if (snap->count == snap->cap) {
		size_t cap = snap->cap == 0 ? 16 : 2 * snap->cap;
		kobo_transfer *transfers = realloc(snap->transfers, cap * sizeof *transfers);
		if (transfers == NULL)
			return KOBO_ENOMEM;
		snap->transfers = transfers;
		int64_t *seqs = realloc(snap->seqs, cap * sizeof *seqs);
		if (seqs == NULL)
			return KOBO_ENOMEM;
		snap->seqs = seqs;
		snap->cap = cap;
	}
	kobo_transfer *copy = &snap->transfers[snap->count];
	*copy = *t;
	copy->metadata = metadata_copy(t->metadata, t->metadata_len, &copy->metadata_len);
	if (copy->metadata == NULL)
		return KOBO_ENOMEM;
	snap->seqs[snap->count++] = seq;
	return KOBO_OK;
}

/* Calls each for every transfer of the snapshot (until it returns
 * non-zero), then frees the snapshot. */
static void snapshot_deliver(transfer_snapshot *snap, kobo_store_transfer_fn each,
                             void *ctx)
{
	bool stopped = false;

	for (size_t i = 0; i < snap->count; i++) {
		if (!stopped && each != NULL)
			stopped = each(ctx, &snap->transfers[i], snap->seqs[i]) != 0;
		free((char *)snap->transfers[i].metadata);
	}
	free(snap->transfers);
	free(snap->seqs);
	memset(snap, 0, sizeof *snap);
}

static int mem_read_events(kobo_store_reader *reader, const char *transfer_id,
                           int64_t after_seq, size_t limit, kobo_store_event_fn each,
                           void *ctx)
{
	mem_store *s = to_store(reader->store);
	kobo_event *found = NULL;
	size_t count = 0;
	size_t cap = 0;
	int result = KOBO_OK;

	pthread_mutex_lock(&s->mutex);
	size_t row = after_seq <= 0 ? 0 : (size_t)after_seq;
	for (; row < s->event_count && count < limit; row++) {
		if (strcmp(s->events[row].transfer_id, transfer_id) != 0)
			continue;
		if (count == cap) {
			cap = cap ? 2 * cap : 8;
			kobo_event *grown = realloc(found, cap * sizeof *found);
			if (grown == NULL) {
				result = KOBO_ESTORE;
				break;
			}
			found = grown;
		}
		found[count++] = s->events[row];
	}
	pthread_mutex_unlock(&s->mutex);
	for (size_t i = 0; result == KOBO_OK && i < count; i++)
		if (each(ctx, &found[i]) != 0)
			break;
	free(found);
	return result;
}

static int mem_read_by_request(kobo_store_reader *reader, const char *request_id,
                               int64_t after_seq, size_t limit,
                               kobo_store_transfer_fn each, void *ctx)
{
	mem_store *s = to_store(reader->store);
	transfer_snapshot snap = {0};
	int result = KOBO_OK;

	if (limit == 0)
		return KOBO_OK;
	pthread_mutex_lock(&s->mutex);
	size_t row = after_seq <= 0 ? 0 : (size_t)after_seq;
	for (; row < s->transfers.count && snap.count < limit; row++) {
		const kobo_transfer *t = &s->transfers.rows[row].t;
		if (strcmp(t->request_id, request_id) != 0)
			continue;
		result = snapshot_add(&snap, t, (int64_t)row + 1);
		if (result != KOBO_OK)
			break;
	}
	pthread_mutex_unlock(&s->mutex);
	if (result != KOBO_OK) {
		each = NULL;
		result = KOBO_ESTORE;
	}
	snapshot_deliver(&snap, each, ctx);
	return result;
}

/* Whether a transfer shows in account_id's history: it names the account
 * as from, to or clearing account, and was not rejected. */
static bool in_history(const kobo_transfer *t, const char *account_id)
{
	if (t->status == KOBO_STATUS_REJECTED)
		return false;
	return strcmp(t->from, account_id) == 0 || strcmp(t->to, account_id) == 0 ||
	       (t->clearing[0] != '\0' && strcmp(t->clearing, account_id) == 0);
}

static int mem_read_history(kobo_store_reader *reader, const char *account_id,
                            int64_t after_seq, size_t limit,
                            kobo_store_transfer_fn each, void *ctx)
{
	mem_store *s = to_store(reader->store);
	transfer_snapshot snap = {0};
	int result = KOBO_OK;

	if (limit == 0)
		return KOBO_OK;
	pthread_mutex_lock(&s->mutex);
	/* seq = row + 1, so the rows after after_seq start at row after_seq. */
	size_t row = after_seq <= 0 ? 0 : (size_t)after_seq;
	for (; row < s->transfers.count && snap.count < limit; row++) {
		const kobo_transfer *t = &s->transfers.rows[row].t;
		if (!in_history(t, account_id))
			continue;
		result = snapshot_add(&snap, t, (int64_t)row + 1);
		if (result != KOBO_OK)
			break;
	}
	pthread_mutex_unlock(&s->mutex);
	if (result != KOBO_OK)
		each = NULL; /* free what was copied, deliver nothing */
	snapshot_deliver(&snap, each, ctx);
	return result;
}

/* Sorting rows by id needs the rows: qsort has no context argument, so
 * the sort works on (id, row) pairs copied out. */
typedef struct id_row {
	const char *id; /* points into a committed row: stable under the mutex */
	size_t row;
} id_row;

static int id_row_order(const void *left, const void *right)
{
	return strcmp(((const id_row *)left)->id, ((const id_row *)right)->id);
}

static int id_rows_add(id_row **rows, size_t *count, size_t *cap, const char *id,
                       size_t row)
{
	if (*count == *cap) {
		size_t grown_cap = *cap == 0 ? 64 : 2 * *cap;
		id_row *grown = realloc(*rows, grown_cap * sizeof *grown);
		if (grown == NULL)
			return KOBO_ENOMEM;
		*rows = grown;
		*cap = grown_cap;
	}
	(*rows)[(*count)++] = (id_row){id, row};
	return KOBO_OK;
}

static int mem_read_sagas(kobo_store_reader *reader, const char *after_id,
                          size_t limit, kobo_store_transfer_fn each, void *ctx)
{
	mem_store *s = to_store(reader->store);
	transfer_snapshot snap = {0};
	id_row *found = NULL;
	size_t found_count = 0;
	size_t found_cap = 0;
	int result = KOBO_OK;

	if (limit == 0)
		return KOBO_OK;
	if (after_id == NULL)
		after_id = "";
	pthread_mutex_lock(&s->mutex);
	for (size_t r = 0; r < s->transfers.count && result == KOBO_OK; r++) {
		const kobo_transfer *t = &s->transfers.rows[r].t;
		if (t->saga != KOBO_SAGA_NONE && strcmp(t->id, after_id) > 0)
			result = id_rows_add(&found, &found_count, &found_cap, t->id, r);
	}
	if (result == KOBO_OK && found_count > 0)
		qsort(found, found_count, sizeof *found, id_row_order);
	for (size_t i = 0; i < found_count && i < limit && result == KOBO_OK; i++)
		result = snapshot_add(&snap, &s->transfers.rows[found[i].row].t,
		                      (int64_t)found[i].row + 1);
	pthread_mutex_unlock(&s->mutex);
	free(found);
	if (result != KOBO_OK)
		each = NULL;
	snapshot_deliver(&snap, each, ctx);
	return result;
}

/* One process serves an in-memory store: every claim is granted (store.h). */
static int mem_claim_saga(kobo_store_reader *reader, const char *id,
                          const char *node, int64_t lease_ms, bool *claimed)
{
	(void)reader;
	(void)id;
	(void)node;
	(void)lease_ms;
	*claimed = true;
	return KOBO_OK;
}

static int mem_release_saga(kobo_store_reader *reader, const char *id,
                            const char *node)
{
	(void)reader;
	(void)id;
	(void)node;
	return KOBO_OK;
}

static int mem_read_position(kobo_store_reader *reader, kobo_store_position *out)
{
	mem_store *s = to_store(reader->store);

	memset(out, 0, sizeof *out);
	pthread_mutex_lock(&s->mutex);
	out->commit_seq = s->commit_seq;
	pthread_mutex_unlock(&s->mutex);
	return KOBO_OK;
}

static int mem_read_accounts_prefix(kobo_store_reader *reader, const char *prefix,
                                    kobo_store_account_fn each, void *ctx)
{
	mem_store *s = to_store(reader->store);
	size_t prefix_len = strlen(prefix);
	id_row *found = NULL;
	size_t found_count = 0;
	size_t found_cap = 0;
	kobo_account *copies = NULL;
	size_t copied = 0;
	int result = KOBO_OK;

	pthread_mutex_lock(&s->mutex);
	for (size_t r = 0; r < s->accounts.count && result == KOBO_OK; r++) {
		const char *id = s->accounts.rows[r].a.id;
		if (strncmp(id, prefix, prefix_len) == 0)
			result = id_rows_add(&found, &found_count, &found_cap, id, r);
	}
	if (result == KOBO_OK && found_count > 0) {
		qsort(found, found_count, sizeof *found, id_row_order);
		copies = calloc(found_count, sizeof *copies);
		if (copies == NULL)
			result = KOBO_ENOMEM;
	}
	for (; result == KOBO_OK && copied < found_count; copied++) {
		copies[copied] = s->accounts.rows[found[copied].row].a;
		copies[copied].metadata = metadata_copy(copies[copied].metadata,
		                                        copies[copied].metadata_len,
		                                        &copies[copied].metadata_len);
		if (copies[copied].metadata == NULL)
			result = KOBO_ENOMEM;
	}
	pthread_mutex_unlock(&s->mutex);
	free(found);
	bool stopped = result != KOBO_OK;
	for (size_t i = 0; i < copied; i++) {
		if (!stopped && copies[i].metadata != NULL)
			stopped = each(ctx, &copies[i]) != 0;
		free((char *)copies[i].metadata);
	}
	free(copies);
	return result;
}

/* ---- Audit, close, open. ---- */

/* Report lines kept while the snapshot is held (invariant 5); the auditor
 * cuts a line at STORE_AUDITOR_LINE_BYTES. */
typedef struct audit_lines {
	char (*lines)[STORE_AUDITOR_LINE_BYTES];
	size_t count;
	size_t cap;
	size_t lost; /* lines that found no memory; still counted as problems */
} audit_lines;

static void keep_line(void *ctx, const char *line)
{
	audit_lines *kept = ctx;
	if (kept->count == kept->cap) {
		size_t cap = kept->cap == 0 ? 16 : 2 * kept->cap;
		char (*grown)[STORE_AUDITOR_LINE_BYTES] =
			realloc(kept->lines, cap * sizeof *grown);
		if (grown == NULL) {
			kept->lost++;
			return;
		}
		kept->lines = grown;
		kept->cap = cap;
	}
	snprintf(kept->lines[kept->count++], STORE_AUDITOR_LINE_BYTES, "%s", line);
}

static int mem_audit(kobo_store *store, kobo_store_report_fn report, void *ctx,
                     kobo_audit_totals *totals)
{
	mem_store *s = to_store(store);
	audit_lines kept = {0};
	int result = KOBO_OK;

	memset(totals, 0, sizeof *totals);
	pthread_mutex_lock(&s->mutex);
	store_auditor *auditor = store_auditor_create(s->accounts.count, keep_line,
	                                              &kept, totals);
	if (auditor == NULL)
		result = KOBO_ENOMEM;
	for (size_t r = 0; result == KOBO_OK && r < s->accounts.count; r++)
		result = store_auditor_account(auditor, &s->accounts.rows[r].a);
	if (result == KOBO_OK) {
		for (size_t r = 0; r < s->transfers.count; r++)
			store_auditor_transfer(auditor, &s->transfers.rows[r].t);
		store_auditor_finish(auditor);
	}
	pthread_mutex_unlock(&s->mutex);
	store_auditor_destroy(auditor);
	for (size_t i = 0; i < kept.count; i++)
		if (report != NULL && result == KOBO_OK)
			report(ctx, kept.lines[i]);
	free(kept.lines);
	if (result == KOBO_OK && kept.lost > 0)
		result = KOBO_ENOMEM; /* the count is right, the sentences are not all there */
	return result;
}

/* ---- API keys: a sorted array under the mutex, any thread. ---- */

/* The index of key id, or where it would go (*found false). */
static size_t key_position(const mem_store *s, const char *id, bool *found)
{
	size_t lo = 0, hi = s->key_count;
	*found = false;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int cmp = strcmp(s->keys[mid].id, id);
		if (cmp == 0) {
			*found = true;
			return mid;
		}
		if (cmp < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int mem_key_insert(kobo_store *store, const kobo_api_key *key)
{
	mem_store *s = to_store(store);
	bool found;
	int rc = KOBO_OK;

	if (s->read_only)
		return KOBO_EINVAL;
	pthread_mutex_lock(&s->mutex);
	size_t at = key_position(s, key->id, &found);
	if (found) {
		rc = KOBO_ECONFLICT;
	} else if (s->keys_live >= KOBO_KEYS_MAX) {
		rc = KOBO_EFULL;
	} else if (s->key_count == s->key_cap) {
		size_t cap = s->key_cap ? 2 * s->key_cap : 16;
		kobo_api_key *keys = realloc(s->keys, cap * sizeof *keys);
		if (keys == NULL)
			rc = KOBO_ENOMEM;
		else {
			s->keys = keys;
			s->key_cap = cap;
		}
	}
	if (rc == KOBO_OK) {
		memmove(&s->keys[at + 1], &s->keys[at], (s->key_count - at) * sizeof *s->keys);
		s->keys[at] = *key;
		s->keys[at].revoked_at_ms = 0;
		s->key_count++;
		s->keys_live++;
	}
	pthread_mutex_unlock(&s->mutex);
	return rc;
}

static int mem_key_revoke(kobo_store *store, const char *id, int64_t at_ms)
{
	mem_store *s = to_store(store);
	bool found;

	if (s->read_only || at_ms <= 0)
		return KOBO_EINVAL;
	pthread_mutex_lock(&s->mutex);
	size_t at = key_position(s, id, &found);
	if (found && s->keys[at].revoked_at_ms == 0) {
		s->keys[at].revoked_at_ms = at_ms; /* the first time is kept */
		s->keys_live--;
	}
	pthread_mutex_unlock(&s->mutex);
	return found ? KOBO_OK : KOBO_ENOTFOUND;
}

static int mem_read_keys(kobo_store_reader *reader, bool include_revoked,
                         kobo_store_key_fn each, void *ctx)
{
	mem_store *s = to_store(reader->store);
	kobo_api_key *copy = NULL;
	size_t count = 0;

	/* A snapshot under the mutex, delivered without it (invariant 5). */
	pthread_mutex_lock(&s->mutex);
	if (s->key_count > 0) {
		copy = malloc(s->key_count * sizeof *copy);
		if (copy == NULL) {
			pthread_mutex_unlock(&s->mutex);
			return KOBO_ENOMEM;
		}
		for (size_t i = 0; i < s->key_count; i++)
			if (include_revoked || s->keys[i].revoked_at_ms == 0)
				copy[count++] = s->keys[i];
	}
	pthread_mutex_unlock(&s->mutex);
	for (size_t i = 0; i < count; i++)
		if (each(ctx, &copy[i]) != 0)
			break;
	free(copy);
	return KOBO_OK;
}

static void mem_close(kobo_store *store)
{
	mem_store *s = to_store(store);

	if (s == NULL)
		return;
	assert(atomic_load(&s->readers_open) == 0);
	loaded_free(s);
	free(s->loaded);
	accounts_free(&s->staged_accounts);
	transfers_free(&s->staged_transfers);
	accounts_free(&s->accounts);
	transfers_free(&s->transfers);
	free(s->events);
	free(s->keys);
	pthread_mutex_destroy(&s->mutex);
	free(s);
}

static const kobo_store_ops mem_ops = {
	.begin = mem_begin,
	.load_transfers = mem_load_transfers,
	.load_accounts = mem_load_accounts,
	.write = mem_write,
	.write_events = mem_write_events,
	.commit = mem_commit,
	.rollback = mem_rollback,
	.now = mem_now,
	.set_concurrency = mem_set_concurrency,
	.expired_holds = mem_expired_holds,
	.healthy = mem_healthy,
	.reader_open = mem_reader_open,
	.reader_close = mem_reader_close,
	.read_account = mem_read_account,
	.read_transfer = mem_read_transfer,
	.read_history = mem_read_history,
	.read_events = mem_read_events,
	.read_by_request = mem_read_by_request,
	.read_sagas = mem_read_sagas,
	.read_accounts_prefix = mem_read_accounts_prefix,
	.read_position = mem_read_position,
	.claim_saga = mem_claim_saga,
	.release_saga = mem_release_saga,
	.key_insert = mem_key_insert,
	.key_revoke = mem_key_revoke,
	.read_keys = mem_read_keys,
	.audit = mem_audit,
	.close = mem_close,
};

int store_mem_open(bool read_only, kobo_store **out)
{
	mem_store *s = calloc(1, sizeof *s);

	*out = NULL;
	if (s == NULL)
		return KOBO_ENOMEM;
	s->base.ops = &mem_ops;
	s->state = MEM_IDLE;
	s->read_only = read_only;
	atomic_init(&s->failed, false);
	atomic_init(&s->readers_open, 0);
	pthread_mutex_init(&s->mutex, NULL);
	*out = &s->base;
	return KOBO_OK;
}

void kobo_store_mem_fail_next_commit(kobo_store *store, bool applied)
{
	mem_store *s = to_store(store);

	assert(store->ops == &mem_ops);
	pthread_mutex_lock(&s->mutex);
	s->fault_armed = true;
	s->fault_applied = applied;
	pthread_mutex_unlock(&s->mutex);
}

void kobo_store_mem_conflict_next_commits(kobo_store *store, unsigned count)
{
	mem_store *s = to_store(store);

	kobo_assert(store->ops == &mem_ops);
	pthread_mutex_lock(&s->mutex);
	s->conflicts_armed = count;
	pthread_mutex_unlock(&s->mutex);
}

void kobo_store_mem_restart(kobo_store *store)
{
	mem_store *s = to_store(store);

	assert(store->ops == &mem_ops);
	loaded_free(s);
	drop_batch(s);
	s->state = MEM_IDLE;
	atomic_store(&s->failed, false);
}
