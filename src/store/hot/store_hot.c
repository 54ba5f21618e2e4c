/*
 * store_hot.c — the journaled embedded store: "journal:DIR".
 *
 * One shard's state lives in memory and in a checksummed journal; SQLite
 * becomes an asynchronous projection of the journal (history, reads,
 * backups, audit). A batch costs one journal append (one fdatasync of a
 * pre-allocated segment) instead of SQLite's B-tree page writes and WAL
 * fsync.
 *
 *   shard writer ──begin/load/write/commit──▶ store_hot
 *        loads: accounts from memory (hot_accounts); transfers from
 *               hot_recent (changed, not yet projected), else, when the
 *               id set says the id may exist, a point read of SQLite
 *        commit: encode the effects (codec.h) ─▶ journal append (fsync)
 *               ─▶ apply to memory ─▶ queue the frame ─▶ answer
 *   projection thread: queued frames ─▶ one SQLite transaction for many
 *        frames (records meta.commit_seq = the last frame's) ─▶ drop
 *        those transfers from hot_recent ─▶ the writer releases journal
 *        segments every projected frame covers
 *
 * States of a batch (writer thread):
 *
 *   IDLE ──begin──▶ IN_BATCH ──load*, now, write, write_events──▶ IN_BATCH
 *     ▲                │ commit: append ok, memory applied ──▶ IDLE
 *     │                │ rollback / any error before append ──▶ IDLE
 *     └────────────────┘ append or apply failed ──▶ FAILED (sticky)
 *
 * Invariants
 *   1. A batch is acknowledged (commit returns KOBO_OK) only after its
 *      frame's fdatasync returned: nothing acknowledged can be lost, since
 *      recovery replays every frame the projection does not hold.
 *   2. Memory (hot_accounts, hot_recent, hot_idset) changes only after the
 *      append succeeded, so memory never shows a batch the disk may not
 *      have; if applying to memory fails after the append, the store is
 *      FAILED (restart rebuilds memory from disk).
 *   3. The newest state of every transfer is in hot_recent or in SQLite: an
 *      entry leaves hot_recent only after the projection transaction that
 *      wrote it (or a later state) committed, so "not in hot_recent" means
 *      "SQLite has the newest state" for every reader.
 *   4. Frames carry the shard's commit sequence (the consistency token);
 *      it grows by one per batch, and the projection's meta.commit_seq is
 *      the last frame it holds. Replay applies frames commit_seq + 1, + 2,
 *      … exactly; a gap is corruption and open refuses it.
 *   5. A journal segment is released only once every frame in it is
 *      durable in SQLite (the projection commits with synchronous=FULL).
 *   6. Bounded: hot_accounts and hot_idset by the config (an insert beyond
 *      answers KOBO_ECAPACITY, nothing applied), hot_recent and the queued
 *      frame bytes by HOT_RECENT_MAX and HOT_BACKLOG_BYTES_MAX
 *      (backpressure: begin waits, then KOBO_EOVERLOADED), the journal by
 *      its segments_max (an append past it answers KOBO_EOVERLOADED).
 *
 * Reads (any thread, store.h guarantee 2: a read sees every batch
 * acknowledged before it began): accounts from memory; a transfer from
 * hot_recent, else SQLite; everything that scans (history, events,
 * sagas, by request, accounts by prefix) waits until the projection holds
 * every batch acknowledged when the read began (HOT_PROJECTION_WAIT_MS),
 * then reads SQLite. API keys and saga claims are not journaled: they go
 * straight to SQLite, as in the sqlite backend.
 *
 * Failure: a journal write or fsync error, or a projection error, puts the
 * store in its sticky FAILED state (healthy() false, /readyz 503, begin
 * answers KOBO_EFAILED): never retry an fsync. Restart recovers from the
 * disk: replay of the journal past the projection.
 */
#include <errno.h>
#include <stdarg.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>

#include "../../obs/obs.h"
#include "../journal/journal.h"
#include "../layout.h"
#include "../sqlite/store_sqlite.h"
#include "codec.h"
#include "store_hot.h"
#include "tables.h"

#define HOT_PATH_MAX 4096

/* A committed batch's frame, waiting for the projection. */
typedef struct hot_queued {
	struct hot_queued *next;
	uint64_t commit_seq;
	uint64_t journal_batch;
	size_t len;
	uint8_t bytes[];
} hot_queued;

/* Memory the loads hand out, valid until the next begin (store.h 3). */
typedef struct hot_arena {
	char *buf;
	size_t used, cap;
} hot_arena;

/* Loaded metadata: chunks that never move, so every copy handed to the
 * ledger stays put until the next begin (store.h 3). */
typedef struct hot_chunk {
	struct hot_chunk *next;
	size_t used, cap;
	char bytes[];
} hot_chunk;

#define HOT_CHUNK_BYTES (64u << 10)

/* The batch being formed: copies of what write / write_events gave (their
 * metadata in the loaded chunks, or, for an updated account, the stable
 * copy hot_accounts holds). */
typedef struct hot_staged {
	kobo_account *accounts;
	kobo_account_change *account_changes;
	size_t account_count, accounts_cap, account_changes_cap;
	kobo_transfer *transfers;
	kobo_transfer_change *transfer_changes;
	size_t transfer_count, transfers_cap, transfer_changes_cap;
	kobo_event *events;
	size_t event_count, events_cap;
} hot_staged;

/* A committed batch (seq) that left holds expiring at min_expires_ms or
 * later; merged marks cover several batches: the latest seq, the earliest
 * expiry. */
typedef struct hot_hold_mark {
	int64_t min_expires_ms;
	uint64_t seq;
} hot_hold_mark;

typedef struct hot_store {
	kobo_store base;
	uint32_t shard;
	char path[HOT_PATH_MAX];         /* the SQLite projection */
	char journal_dir[HOT_PATH_MAX];
	hot_config config;

	kobo_store *proj;   /* SQLite, write side: the projection thread's */
	kobo_store *scan;   /* SQLite read-only: the writer's expiry scans */
	kobo_store_reader *load_reader; /* on proj: the writer's point reads */
	kobo_journal *journal;

	/* In-memory state. The writer changes it at commit and only it reads
	 * hot_idset; readers and the projection (drop) take state_lock. */
	pthread_rwlock_t state_lock;
	hot_accounts *accounts;
	hot_recent *recent;
	hot_idset *ids;

	/* Writer thread. */
	bool in_batch;
	hot_staged staged;
	hot_chunk *loaded; /* newest first; the last one is kept on reset */
	uint64_t released_upto;       /* journal batches released so far */
	_Atomic uint64_t commit_seq;  /* acknowledged */
	/* The committed batches that left a hold with an expiry (status
	 * PENDING, expires_at_ms > 0) and may not be projected yet, oldest
	 * first: what an expiry scan must wait for (hot_expired_holds). */
	hot_hold_mark marks[HOT_HOLD_MARKS_MAX];
	size_t marks_head, marks_count;
	_Atomic uint64_t expiry_waits; /* scans that waited (store_hot_usage) */

	/* Projection. */
	pthread_mutex_t proj_lock;
	pthread_cond_t proj_wake;     /* the projection thread waits for work */
	pthread_cond_t proj_done;     /* readers / backpressure wait for it */
	hot_queued *q_head, *q_tail;
	uint64_t q_bytes, q_batches;
	bool proj_stop;
	bool proj_started;
	pthread_t proj_thread;
	_Atomic uint64_t projected_seq;
	_Atomic uint64_t release_upto; /* journal batch the projection holds durably */

	_Atomic bool failed;
} hot_store;

typedef struct hot_reader {
	kobo_store_reader base;
	kobo_store_reader *sql;
	hot_arena copy; /* the last record handed out (store.h 3) */
} hot_reader;

static void report_usage(hot_store *s);

static hot_store *to_hot(kobo_store *store)
{
	return (hot_store *)store;
}

static hot_reader *to_reader(kobo_store_reader *reader)
{
	return (hot_reader *)reader;
}

/* ---- Small helpers. ---- */

static void arena_reset(hot_arena *a)
{
	a->used = 0;
}

/* Copies len bytes into the arena and returns them. The arena grows by
 * doubling, so earlier copies move: callers copy everything of a batch
 * first (staged), or reset it per record (readers). NULL on no memory. */
static char *arena_copy(hot_arena *a, const char *bytes, size_t len)
{
	if (a->used + len + 1 > a->cap) {
		size_t cap = a->cap ? a->cap : 4096;
		while (cap < a->used + len + 1)
			cap *= 2;
		char *buf = realloc(a->buf, cap);
		if (buf == NULL)
			return NULL;
		a->buf = buf;
		a->cap = cap;
	}
	char *out = a->buf + a->used;
	if (len)
		memcpy(out, bytes, len);
	out[len] = '\0';
	a->used += len + 1;
	return out;
}

static int grow(void **array, size_t *cap, size_t need, size_t size)
{
	if (need <= *cap)
		return KOBO_OK;
	size_t n = *cap ? *cap : 64;
	while (n < need)
		n *= 2;
	void *p = realloc(*array, n * size);
	if (p == NULL)
		return KOBO_ENOMEM;
	*array = p;
	*cap = n;
	return KOBO_OK;
}

static int hot_fail(hot_store *s, const char *event, int status)
{
	atomic_store(&s->failed, true);
	kobo_log(KOBO_LOG_ERROR, event,
	         "\"shard\":%u,\"status\":\"%s\",\"message\":\"the journaled store "
	         "refuses writes until kobod restarts and recovers from its journal\"",
	         s->shard, kobo_status_name(status));
	pthread_mutex_lock(&s->proj_lock);
	pthread_cond_broadcast(&s->proj_done);
	pthread_mutex_unlock(&s->proj_lock);
	return status;
}

static bool wait_until(pthread_cond_t *cond, pthread_mutex_t *lock,
                       int64_t deadline_us)
{
	int64_t left_us = deadline_us - kobo_monotonic_us();
	if (left_us <= 0)
		return false;
	struct timespec deadline = kobo_deadline_after_ms(left_us / 1000 + 1);
	pthread_cond_timedwait(cond, lock, &deadline);
	return true;
}

/* Waits until the projection holds batch seq. KOBO_OK, or KOBO_ESTORE
 * (failed, or not within wait_ms). */
static int wait_projected(hot_store *s, uint64_t seq, int64_t wait_ms)
{
	if (atomic_load(&s->projected_seq) >= seq)
		return KOBO_OK;
	int64_t deadline = kobo_monotonic_us() + wait_ms * 1000;
	int rc = KOBO_OK;
	pthread_mutex_lock(&s->proj_lock);
	while (atomic_load(&s->projected_seq) < seq) {
		if (atomic_load(&s->failed) || !wait_until(&s->proj_done, &s->proj_lock, deadline)) {
			rc = KOBO_ESTORE;
			break;
		}
	}
	pthread_mutex_unlock(&s->proj_lock);
	if (rc != KOBO_OK && wait_ms >= HOT_PROJECTION_WAIT_MS)
		kobo_log(KOBO_LOG_WARN, "projection_wait_failed",
		         "\"shard\":%u,\"want\":%llu,\"projected\":%llu", s->shard,
		         (unsigned long long)seq,
		         (unsigned long long)atomic_load(&s->projected_seq));
	return rc;
}

/* Copies len bytes (and a NUL) into the loaded chunks. NULL: no memory. */
static const char *loaded_copy(hot_store *s, const char *bytes, size_t len)
{
	hot_chunk *c = s->loaded;
	if (c == NULL || c->used + len + 1 > c->cap) {
		size_t cap = len + 1 > HOT_CHUNK_BYTES ? len + 1 : HOT_CHUNK_BYTES;
		c = malloc(sizeof *c + cap);
		if (c == NULL)
			return NULL;
		c->next = s->loaded;
		c->used = 0;
		c->cap = cap;
		s->loaded = c;
	}
	char *out = c->bytes + c->used;
	if (len)
		memcpy(out, bytes, len);
	out[len] = '\0';
	c->used += len + 1;
	return out;
}

/* Forgets every loaded copy; keeps one ordinary chunk for the next batch
 * when keep_one. */
static void loaded_reset(hot_store *s, bool keep_one)
{
	hot_chunk *keep = NULL;
	for (hot_chunk *c = s->loaded; c != NULL;) {
		hot_chunk *next = c->next;
		if (keep_one && keep == NULL && c->cap == HOT_CHUNK_BYTES) {
			keep = c;
			keep->next = NULL;
			keep->used = 0;
		} else {
			free(c);
		}
		c = next;
	}
	s->loaded = keep;
}

static int load_give_transfer(hot_store *s, kobo_transfer *t, kobo_store_transfer_fn each,
                              void *ctx)
{
	t->metadata = loaded_copy(s, t->metadata ? t->metadata : "", t->metadata_len);
	if (t->metadata == NULL)
		return KOBO_ESTORE;
	return each(ctx, t, 0);
}

/* ---- Projection: frames into SQLite. ---- */

/* Writes one frame's effects into the open SQLite transaction. */
static int project_frame(hot_store *s, hot_decoded *d, const void *bytes, size_t len)
{
	char why[200];
	if (hot_codec_decode(bytes, len, d, why, sizeof why) != KOBO_OK) {
		kobo_log(KOBO_LOG_ERROR, "projection_frame_invalid",
		         "\"shard\":%u,\"message\":\"%s\"", s->shard, why);
		return KOBO_ESTORE;
	}
	int rc = kobo_store_write(s->proj, d->account_changes, d->account_count,
	                          d->transfer_changes, d->transfer_count);
	if (rc == KOBO_OK && d->event_count > 0)
		rc = kobo_store_write_events(s->proj, d->events, d->event_count);
	return rc;
}

/* Begins a projection transaction. A begin that fails wrote nothing (the
 * file's write lock held by another process — `kobo key create`, a backup
 * — past SQLite's busy timeout): retry with backoff while the frames wait
 * in the journal and memory (the backlog bounds and backpressure hold
 * meanwhile). Gives up only when kobod stops. */
static int projection_begin(hot_store *s)
{
	int64_t backoff_ms = 50;
	for (;;) {
		int rc = kobo_store_begin(s->proj);
		if (rc != KOBO_ESTORE)
			return rc;
		kobo_log(KOBO_LOG_WARN, "projection_begin_retry",
		         "\"shard\":%u,\"retry_in_ms\":%lld", s->shard, (long long)backoff_ms);
		pthread_mutex_lock(&s->proj_lock);
		bool stop = s->proj_stop;
		if (!stop) {
			struct timespec deadline = kobo_deadline_after_ms(backoff_ms);
			pthread_cond_timedwait(&s->proj_wake, &s->proj_lock, &deadline);
		}
		pthread_mutex_unlock(&s->proj_lock);
		if (stop)
			return rc;
		if (backoff_ms < 1000)
			backoff_ms *= 2;
	}
}

static void *projection_main(void *arg)
{
	hot_store *s = arg;
	hot_decoded decoded = { 0 };

	for (;;) {
		pthread_mutex_lock(&s->proj_lock);
		while (s->q_head == NULL && !s->proj_stop)
			pthread_cond_wait(&s->proj_wake, &s->proj_lock);
		if (s->q_head == NULL) {
			pthread_mutex_unlock(&s->proj_lock);
			break;
		}
		/* Take frames up to HOT_PROJECTION_TXN_BYTES (at least one). */
		hot_queued *first = s->q_head, *last = first;
		uint64_t bytes = first->len, batches = 1;
		while (last->next && bytes + last->next->len <= HOT_PROJECTION_TXN_BYTES) {
			last = last->next;
			bytes += last->len;
			batches++;
		}
		s->q_head = last->next;
		if (s->q_head == NULL)
			s->q_tail = NULL;
		last->next = NULL;
		pthread_mutex_unlock(&s->proj_lock);

		int64_t started_us = kobo_monotonic_us();
		int rc = projection_begin(s);
		for (hot_queued *q = first; rc == KOBO_OK && q; q = q->next)
			rc = project_frame(s, &decoded, q->bytes, q->len);
		uint64_t token = 0;
		if (rc == KOBO_OK) {
			store_sqlite_set_next_commit_seq(s->proj, last->commit_seq);
			rc = kobo_store_commit(s->proj, &token);
		}
		if (rc != KOBO_OK) {
			kobo_store_rollback(s->proj);
			hot_fail(s, "projection_failed", rc);
			/* The frames stay in the journal; a restart replays them.
			 * Keep the queue's accounting: nothing more is projected. */
			while (first) {
				hot_queued *next = first->next;
				free(first);
				first = next;
			}
			break;
		}
		kobo_assert(token == last->commit_seq);
		pthread_rwlock_wrlock(&s->state_lock);
		hot_recent_drop_upto(s->recent, last->commit_seq);
		pthread_rwlock_unlock(&s->state_lock);

		pthread_mutex_lock(&s->proj_lock);
		s->q_bytes -= bytes;
		s->q_batches -= batches;
		atomic_store(&s->projected_seq, last->commit_seq);
		atomic_store(&s->release_upto, last->journal_batch);
		pthread_cond_broadcast(&s->proj_done);
		pthread_mutex_unlock(&s->proj_lock);
		report_usage(s);
		kobo_log(KOBO_LOG_DEBUG, "projection_committed",
		         "\"shard\":%u,\"batches\":%llu,\"bytes\":%llu,\"commit_seq\":%llu,"
		         "\"took_us\":%lld", s->shard, (unsigned long long)batches,
		         (unsigned long long)bytes, (unsigned long long)last->commit_seq,
		         (long long)(kobo_monotonic_us() - started_us));
		while (first) {
			hot_queued *next = first->next;
			free(first);
			first = next;
		}
	}
	hot_decoded_free(&decoded);
	return NULL;
}

/* ---- The write side. ---- */

static int hot_begin(kobo_store *store)
{
	hot_store *s = to_hot(store);

	if (atomic_load(&s->failed))
		return KOBO_EFAILED;
	kobo_assert(!s->in_batch);
	/* Release the segments the projection holds (invariant 5): the
	 * journal's releases run on its appending thread, this one. */
	uint64_t upto = atomic_load(&s->release_upto);
	if (upto > s->released_upto) {
		int rc = kobo_journal_release(s->journal, upto, NULL);
		if (rc != KOBO_OK)
			return hot_fail(s, "journal_release_failed", rc);
		s->released_upto = upto;
	}
	if (s->load_reader == NULL) {
		/* Readers belong to the thread that opens them: the writer's. */
		int rc = kobo_store_reader_open(s->proj, &s->load_reader);
		if (rc != KOBO_OK)
			return KOBO_ESTORE;
	}
	/* Backpressure (invariant 6). */
	int64_t deadline = kobo_monotonic_us() + (int64_t)HOT_BACKPRESSURE_WAIT_MS * 1000;
	pthread_mutex_lock(&s->proj_lock);
	for (;;) {
		pthread_rwlock_rdlock(&s->state_lock);
		uint32_t recent = hot_recent_count(s->recent);
		pthread_rwlock_unlock(&s->state_lock);
		bool behind = s->q_bytes > HOT_BACKLOG_BYTES_MAX ||
		              recent + KOBO_BATCH_OPS_MAX * 2 > HOT_RECENT_MAX;
		if (!behind)
			break;
		if (atomic_load(&s->failed) || !wait_until(&s->proj_done, &s->proj_lock, deadline)) {
			pthread_mutex_unlock(&s->proj_lock);
			kobo_log(KOBO_LOG_WARN, "projection_backpressure",
			         "\"shard\":%u,\"backlog_bytes\":%llu,\"recent\":%u",
			         s->shard, (unsigned long long)s->q_bytes, recent);
			return atomic_load(&s->failed) ? KOBO_EFAILED : KOBO_EOVERLOADED;
		}
	}
	pthread_mutex_unlock(&s->proj_lock);
	loaded_reset(s, true);
	s->staged.account_count = 0;
	s->staged.transfer_count = 0;
	s->staged.event_count = 0;
	s->in_batch = true;
	return KOBO_OK;
}

static int hot_load_transfers(kobo_store *store, const char *const *ids,
                              size_t count, kobo_store_transfer_fn each, void *ctx)
{
	hot_store *s = to_hot(store);

	kobo_assert(s->in_batch);
	for (size_t i = 0; i < count; i++) {
		kobo_transfer t;
		pthread_rwlock_rdlock(&s->state_lock);
		const kobo_transfer *r = hot_recent_find(s->recent, ids[i], NULL);
		if (r != NULL) {
			t = *r;
			/* metadata copied under the lock: the entry may be dropped
			 * by the projection once the lock is released */
			t.metadata = loaded_copy(s, r->metadata ? r->metadata : "", r->metadata_len);
			pthread_rwlock_unlock(&s->state_lock);
			if (t.metadata == NULL)
				return KOBO_ESTORE;
			int rc = each(ctx, &t, 0);
			if (rc != 0)
				return rc;
			continue;
		}
		pthread_rwlock_unlock(&s->state_lock);
		if (!hot_idset_maybe_contains(s->ids, ids[i]))
			continue; /* certainly new */
		int rc = kobo_store_read_transfer(s->load_reader, ids[i], &t);
		if (rc == KOBO_ENOTFOUND)
			continue; /* a hash collision */
		if (rc != KOBO_OK)
			return KOBO_ESTORE;
		rc = load_give_transfer(s, &t, each, ctx);
		if (rc != 0)
			return rc;
	}
	return KOBO_OK;
}

static int hot_load_accounts(kobo_store *store, const char *const *ids,
                             size_t count, kobo_store_account_fn each, void *ctx)
{
	hot_store *s = to_hot(store);

	kobo_assert(s->in_batch);
	for (size_t i = 0; i < count; i++) {
		/* Only this thread changes hot_accounts, and a record's metadata
		 * never moves: no lock, no copy. */
		const kobo_account *a = hot_accounts_find(s->accounts, ids[i]);
		if (a == NULL)
			continue;
		kobo_account copy = *a;
		int rc = each(ctx, &copy);
		if (rc != 0)
			return rc;
	}
	return KOBO_OK;
}

static int hot_now(kobo_store *store, int64_t local_now_ms, int64_t *now_ms)
{
	(void)store;
	*now_ms = local_now_ms; /* one process serves the shard: its clock */
	return KOBO_OK;
}

static int hot_set_concurrency(kobo_store *store, kobo_store_concurrency mode)
{
	(void)store;
	return mode == KOBO_STORE_PESSIMISTIC ? KOBO_OK : KOBO_EINVAL;
}

/* A write that breaks the store's constraints (an insert of an id that
 * exists, an update of one that does not): memory believed in rows the
 * store does not have. Sticky, as SQLite's failed write is. */
static int write_refused(hot_store *s, const char *why)
{
	kobo_log(KOBO_LOG_ERROR, "store_write_refused", "\"shard\":%u,\"why\":\"%s\"",
	         s->shard, why);
	return hot_fail(s, "store_failed_sticky", KOBO_ESTORE);
}

/* The stored newest state of transfer id (hot_recent, else SQLite) into
 * *out, its metadata copied into the loaded chunks (valid until the next
 * begin). KOBO_OK, KOBO_ENOTFOUND, KOBO_ESTORE. Writer thread. */
static int stored_transfer(hot_store *s, const char *id, kobo_transfer *out)
{
	pthread_rwlock_rdlock(&s->state_lock);
	const kobo_transfer *r = hot_recent_find(s->recent, id, NULL);
	if (r != NULL) {
		*out = *r;
		/* copied under the lock: the projection may drop the entry */
		out->metadata = loaded_copy(s, r->metadata ? r->metadata : "", r->metadata_len);
		pthread_rwlock_unlock(&s->state_lock);
		return out->metadata ? KOBO_OK : KOBO_ESTORE;
	}
	pthread_rwlock_unlock(&s->state_lock);
	if (!hot_idset_maybe_contains(s->ids, id))
		return KOBO_ENOTFOUND;
	int rc = kobo_store_read_transfer(s->load_reader, id, out);
	if (rc != KOBO_OK)
		return rc == KOBO_ENOTFOUND ? rc : KOBO_ESTORE;
	out->metadata = loaded_copy(s, out->metadata ? out->metadata : "", out->metadata_len);
	return out->metadata ? KOBO_OK : KOBO_ESTORE;
}

static int hot_write(kobo_store *store, const kobo_account_change *accounts,
                     size_t account_count, const kobo_transfer_change *transfers,
                     size_t transfer_count)
{
	hot_store *s = to_hot(store);
	hot_staged *st = &s->staged;

	kobo_assert(s->in_batch);
	/* Capacity (invariant 6), before anything is staged. */
	size_t new_accounts = 0, new_transfers = 0;
	for (size_t i = 0; i < account_count; i++)
		new_accounts += accounts[i].is_new;
	for (size_t i = 0; i < transfer_count; i++)
		new_transfers += transfers[i].is_new;
	if ((uint64_t)hot_accounts_count(s->accounts) + new_accounts > s->config.accounts_max ||
	    !hot_idset_room(s->ids, new_transfers)) {
		kobo_log(KOBO_LOG_ERROR, "store_capacity_exhausted",
		         "\"shard\":%u,\"accounts\":%u,\"accounts_max\":%u,"
		         "\"transfers\":%llu,\"transfers_max\":%llu", s->shard,
		         hot_accounts_count(s->accounts), s->config.accounts_max,
		         (unsigned long long)hot_idset_count(s->ids),
		         (unsigned long long)s->config.transfers_max);
		return KOBO_ECAPACITY;
	}
	if (grow((void **)&st->accounts, &st->accounts_cap, st->account_count + account_count,
	         sizeof *st->accounts) != KOBO_OK ||
	    grow((void **)&st->account_changes, &st->account_changes_cap,
	         st->account_count + account_count, sizeof *st->account_changes) != KOBO_OK ||
	    grow((void **)&st->transfers, &st->transfers_cap,
	         st->transfer_count + transfer_count, sizeof *st->transfers) != KOBO_OK ||
	    grow((void **)&st->transfer_changes, &st->transfer_changes_cap,
	         st->transfer_count + transfer_count, sizeof *st->transfer_changes) != KOBO_OK)
		return KOBO_ESTORE;
	/* Records by value; metadata in chunks that never move. */
	for (size_t i = 0; i < account_count; i++) {
		kobo_account *a = &st->accounts[st->account_count];
		const kobo_account *given = accounts[i].account;
		const kobo_account *stored = hot_accounts_find(s->accounts, given->id);
		if (accounts[i].is_new == (stored != NULL))
			return write_refused(s, accounts[i].is_new ? "a new account's id exists"
			                                            : "an updated account does not exist");
		if (stored != NULL) {
			/* An update moves the balances only (store.h 4); the
			 * metadata stays hot_accounts' own copy, which never moves. */
			*a = *stored;
			a->posted = given->posted;
			a->pending_out = given->pending_out;
			a->pending_in = given->pending_in;
		} else {
			*a = *given;
			a->metadata = loaded_copy(s, a->metadata ? a->metadata : "", a->metadata_len);
			if (a->metadata == NULL)
				return KOBO_ESTORE;
		}
		st->account_changes[st->account_count].is_new = accounts[i].is_new;
		st->account_count++;
	}
	for (size_t i = 0; i < transfer_count; i++) {
		kobo_transfer *t = &st->transfers[st->transfer_count];
		const kobo_transfer *given = transfers[i].transfer;
		int rc = stored_transfer(s, given->id, t);
		if (rc == KOBO_ESTORE)
			return KOBO_ESTORE;
		if (transfers[i].is_new == (rc == KOBO_OK))
			return write_refused(s, transfers[i].is_new ? "a new transfer's id exists"
			                                             : "an updated transfer does not exist");
		if (rc == KOBO_OK) {
			/* An update moves kobo_transfer_state only (store.h 4). */
			kobo_transfer_state state = kobo_transfer_state_of(given);
			kobo_transfer_state_set(t, &state);
		} else {
			*t = *given;
			t->metadata = loaded_copy(s, t->metadata ? t->metadata : "", t->metadata_len);
			if (t->metadata == NULL)
				return KOBO_ESTORE;
		}
		st->transfer_changes[st->transfer_count].is_new = transfers[i].is_new;
		st->transfer_count++;
	}
	return KOBO_OK;
}

static int hot_write_events(kobo_store *store, const kobo_event *events, size_t count)
{
	hot_store *s = to_hot(store);
	hot_staged *st = &s->staged;

	kobo_assert(s->in_batch);
	if (count == 0)
		return KOBO_OK;
	if (grow((void **)&st->events, &st->events_cap, st->event_count + count,
	         sizeof *st->events) != KOBO_OK)
		return KOBO_ESTORE;
	memcpy(&st->events[st->event_count], events, count * sizeof *events);
	st->event_count += count;
	return KOBO_OK;
}

/* Points the change lists at the staged records (their arrays are final
 * once the batch's writes are in). */
static void staged_link(hot_staged *st)
{
	for (size_t i = 0; i < st->account_count; i++)
		st->account_changes[i].account = &st->accounts[i];
	for (size_t i = 0; i < st->transfer_count; i++)
		st->transfer_changes[i].transfer = &st->transfers[i];
}

/* After the append: the batch into memory (invariant 2). */
static int apply_to_memory(hot_store *s, uint64_t seq)
{
	hot_staged *st = &s->staged;
	int rc = KOBO_OK;

	pthread_rwlock_wrlock(&s->state_lock);
	for (size_t i = 0; rc == KOBO_OK && i < st->account_count; i++)
		rc = hot_accounts_put(s->accounts, &st->accounts[i]);
	for (size_t i = 0; rc == KOBO_OK && i < st->transfer_count; i++) {
		rc = hot_recent_put(s->recent, &st->transfers[i], seq);
		if (rc == KOBO_OK && st->transfer_changes[i].is_new)
			rc = hot_idset_add(s->ids, st->transfers[i].id);
	}
	pthread_rwlock_unlock(&s->state_lock);
	return rc;
}

/* Notes that batch seq left holds that can expire (writer thread). When
 * the marks are full the newest absorbs this one: a scan may then wait for
 * a little more than it needs, never for less. */
static void mark_holds(hot_store *s, const hot_staged *st, uint64_t seq)
{
	int64_t min = INT64_MAX;
	for (size_t i = 0; i < st->transfer_count; i++) {
		const kobo_transfer *t = &st->transfers[i];
		if (t->status == KOBO_STATUS_PENDING && t->expires_at_ms > 0 && t->expires_at_ms < min)
			min = t->expires_at_ms;
	}
	if (min == INT64_MAX)
		return;
	if (s->marks_count == HOT_HOLD_MARKS_MAX) {
		hot_hold_mark *newest =
			&s->marks[(s->marks_head + s->marks_count - 1) % HOT_HOLD_MARKS_MAX];
		if (min < newest->min_expires_ms)
			newest->min_expires_ms = min;
		newest->seq = seq;
		return;
	}
	s->marks[(s->marks_head + s->marks_count) % HOT_HOLD_MARKS_MAX] =
		(hot_hold_mark){ .min_expires_ms = min, .seq = seq };
	s->marks_count++;
}

/* The newest batch an expiry scan at now_ms must see projected: the last
 * one that left a hold due by now_ms and is not projected yet (0: none).
 * Drops the marks the projection holds. Writer thread. */
static uint64_t due_unprojected_seq(hot_store *s, int64_t now_ms)
{
	uint64_t projected = atomic_load(&s->projected_seq);
	while (s->marks_count && s->marks[s->marks_head].seq <= projected) {
		s->marks_head = (s->marks_head + 1) % HOT_HOLD_MARKS_MAX;
		s->marks_count--;
	}
	uint64_t need = 0;
	for (size_t i = 0; i < s->marks_count; i++) {
		const hot_hold_mark *m = &s->marks[(s->marks_head + i) % HOT_HOLD_MARKS_MAX];
		if (m->min_expires_ms <= now_ms)
			need = m->seq;
	}
	return need;
}

static int hot_commit(kobo_store *store, uint64_t *token)
{
	hot_store *s = to_hot(store);
	hot_staged *st = &s->staged;
	uint64_t seq = atomic_load(&s->commit_seq) + 1;

	kobo_assert(s->in_batch);
	staged_link(st);
	size_t size = hot_codec_size(st->account_changes, st->account_count,
	                             st->transfer_changes, st->transfer_count,
	                             st->events, st->event_count);
	hot_queued *q = malloc(sizeof *q + size);
	if (q == NULL)
		return KOBO_ESTORE;
	size_t len = 0;
	if (hot_codec_encode(seq, st->account_changes, st->account_count,
	                     st->transfer_changes, st->transfer_count, st->events,
	                     st->event_count, q->bytes, size, &len) != KOBO_OK) {
		free(q);
		return KOBO_ESTORE;
	}
	kobo_journal_payload payload = { .bytes = q->bytes, .len = len };
	uint64_t batch = 0;
	int rc = kobo_journal_append(s->journal, &payload, 1, &batch);
	if (rc == KOBO_EFULL || rc == KOBO_EINVAL) {
		/* Nothing written: segments full (the projection is behind) or
		 * a frame larger than the journal takes. */
		free(q);
		kobo_log(KOBO_LOG_WARN, "journal_append_refused",
		         "\"shard\":%u,\"status\":\"%s\",\"bytes\":%zu", s->shard,
		         kobo_status_name(rc), len);
		return KOBO_EOVERLOADED;
	}
	if (rc != KOBO_OK) {
		free(q);
		hot_fail(s, "journal_append_failed", rc);
		return KOBO_EUNKNOWN; /* the frame may or may not be durable */
	}
	rc = apply_to_memory(s, seq);
	if (rc != KOBO_OK) {
		free(q);
		hot_fail(s, "memory_apply_failed", rc);
		return KOBO_EUNKNOWN; /* durable, but memory is not to be trusted */
	}
	q->next = NULL;
	q->commit_seq = seq;
	q->journal_batch = batch;
	q->len = len;
	pthread_mutex_lock(&s->proj_lock);
	if (s->q_tail)
		s->q_tail->next = q;
	else
		s->q_head = q;
	s->q_tail = q;
	s->q_bytes += len;
	s->q_batches++;
	pthread_cond_signal(&s->proj_wake);
	pthread_mutex_unlock(&s->proj_lock);
	atomic_store(&s->commit_seq, seq);
	mark_holds(s, st, seq);
	s->in_batch = false;
	report_usage(s);
	*token = seq;
	return KOBO_OK;
}

static void hot_rollback(kobo_store *store)
{
	hot_store *s = to_hot(store);
	s->in_batch = false;
}

static int hot_expired_holds(kobo_store *store, int64_t now_ms,
                             char (*ids)[KOBO_ID_LEN_MAX + 1], size_t max,
                             size_t *count)
{
	hot_store *s = to_hot(store);

	*count = 0;
	if (atomic_load(&s->failed))
		return KOBO_EFAILED;
	/* The scan reads the projection. A hold due by now_ms that a batch
	 * not projected yet left is waited for (HOT_EXPIRY_WAIT_MS, so the
	 * writer never stalls long); nothing else is: under load the
	 * projection always trails by a transaction, and waiting for all of
	 * it stalled the writer up to 100 ms in every 250 (half of kobod's
	 * single-transfer throughput in `make bench-otlp`). Past the wait, a
	 * hold the projection lists that memory has already ended is left out
	 * below, and a hold it does not list yet is found by a later scan
	 * (expiry late, never early). */
	uint64_t need = due_unprojected_seq(s, now_ms);
	if (need) {
		atomic_fetch_add_explicit(&s->expiry_waits, 1, memory_order_relaxed);
		(void)wait_projected(s, need, HOT_EXPIRY_WAIT_MS);
	}
	size_t found = 0;
	int rc = kobo_store_expired_holds(s->scan, now_ms, ids, max, &found);
	if (rc != KOBO_OK)
		return rc == KOBO_EFAILED ? KOBO_ESTORE : rc;
	pthread_rwlock_rdlock(&s->state_lock);
	for (size_t i = 0; i < found; i++) {
		const kobo_transfer *t = hot_recent_find(s->recent, ids[i], NULL);
		if (t != NULL && (t->status != KOBO_STATUS_PENDING || t->saga != KOBO_SAGA_NONE))
			continue;
		if (*count != i)
			memcpy(ids[*count], ids[i], sizeof ids[i]);
		(*count)++;
	}
	pthread_rwlock_unlock(&s->state_lock);
	return KOBO_OK;
}

static bool hot_healthy(kobo_store *store)
{
	hot_store *s = to_hot(store);
	return !atomic_load(&s->failed) && !kobo_journal_failed(s->journal);
}

/* ---- Readers. ---- */

static int hot_reader_open(kobo_store *store, kobo_store_reader **out)
{
	hot_store *s = to_hot(store);
	hot_reader *r = calloc(1, sizeof *r);

	*out = NULL;
	if (r == NULL)
		return KOBO_ENOMEM;
	r->base.store = store;
	int rc = kobo_store_reader_open(s->proj, &r->sql);
	if (rc != KOBO_OK) {
		free(r);
		return rc;
	}
	*out = &r->base;
	return KOBO_OK;
}

static void hot_reader_close(kobo_store_reader *reader)
{
	hot_reader *r = to_reader(reader);
	if (r == NULL)
		return;
	kobo_store_reader_close(r->sql);
	free(r->copy.buf);
	free(r);
}

static int hot_read_account(kobo_store_reader *reader, const char *id, kobo_account *out)
{
	hot_reader *r = to_reader(reader);
	hot_store *s = to_hot(reader->store);
	int rc = KOBO_ENOTFOUND;

	arena_reset(&r->copy);
	pthread_rwlock_rdlock(&s->state_lock);
	const kobo_account *a = hot_accounts_find(s->accounts, id);
	if (a != NULL) {
		*out = *a;
		out->metadata = arena_copy(&r->copy, a->metadata ? a->metadata : "",
		                           a->metadata_len);
		rc = out->metadata ? KOBO_OK : KOBO_ESTORE;
	}
	pthread_rwlock_unlock(&s->state_lock);
	return rc;
}

static int hot_read_transfer(kobo_store_reader *reader, const char *id, kobo_transfer *out)
{
	hot_reader *r = to_reader(reader);
	hot_store *s = to_hot(reader->store);

	arena_reset(&r->copy);
	pthread_rwlock_rdlock(&s->state_lock);
	const kobo_transfer *t = hot_recent_find(s->recent, id, NULL);
	if (t != NULL) {
		*out = *t;
		out->metadata = arena_copy(&r->copy, t->metadata ? t->metadata : "",
		                           t->metadata_len);
		pthread_rwlock_unlock(&s->state_lock);
		return out->metadata ? KOBO_OK : KOBO_ESTORE;
	}
	pthread_rwlock_unlock(&s->state_lock);
	/* Invariant 3: not in hot_recent, so SQLite has its newest state. */
	return kobo_store_read_transfer(r->sql, id, out);
}

/* Every scanning read: first the projection catches up with what was
 * acknowledged when the read began. */
static int catch_up(kobo_store_reader *reader)
{
	hot_store *s = to_hot(reader->store);
	return wait_projected(s, atomic_load(&s->commit_seq), HOT_PROJECTION_WAIT_MS);
}

static int hot_read_history(kobo_store_reader *reader, const char *account_id,
                            int64_t after_seq, size_t limit,
                            kobo_store_transfer_fn each, void *ctx)
{
	int rc = catch_up(reader);
	return rc != KOBO_OK ? rc :
	       kobo_store_read_history(to_reader(reader)->sql, account_id, after_seq,
	                               limit, each, ctx);
}

static int hot_read_sagas(kobo_store_reader *reader, const char *after_id,
                          size_t limit, kobo_store_transfer_fn each, void *ctx)
{
	int rc = catch_up(reader);
	return rc != KOBO_OK ? rc :
	       kobo_store_read_sagas(to_reader(reader)->sql, after_id, limit, each, ctx);
}

static int hot_read_events(kobo_store_reader *reader, const char *transfer_id,
                           int64_t after_seq, size_t limit, kobo_store_event_fn each,
                           void *ctx)
{
	int rc = catch_up(reader);
	return rc != KOBO_OK ? rc :
	       kobo_store_read_events(to_reader(reader)->sql, transfer_id, after_seq,
	                              limit, each, ctx);
}

static int hot_read_by_request(kobo_store_reader *reader, const char *request_id,
                               int64_t after_seq, size_t limit,
                               kobo_store_transfer_fn each, void *ctx)
{
	int rc = catch_up(reader);
	return rc != KOBO_OK ? rc :
	       kobo_store_read_by_request(to_reader(reader)->sql, request_id, after_seq,
	                                  limit, each, ctx);
}

static int hot_read_accounts_prefix(kobo_store_reader *reader, const char *prefix,
                                    kobo_store_account_fn each, void *ctx)
{
	int rc = catch_up(reader);
	return rc != KOBO_OK ? rc :
	       kobo_store_read_accounts_prefix(to_reader(reader)->sql, prefix, each, ctx);
}

static int hot_read_position(kobo_store_reader *reader, kobo_store_position *out)
{
	hot_store *s = to_hot(reader->store);
	memset(out, 0, sizeof *out);
	/* Every read on this reader sees every acknowledged batch (memory,
	 * or a wait for the projection). */
	out->commit_seq = atomic_load(&s->commit_seq);
	return KOBO_OK;
}

static int hot_claim_saga(kobo_store_reader *reader, const char *id, const char *node,
                          int64_t lease_ms, bool *claimed)
{
	return kobo_store_claim_saga(to_reader(reader)->sql, id, node, lease_ms, claimed);
}

static int hot_release_saga(kobo_store_reader *reader, const char *id, const char *node)
{
	return kobo_store_release_saga(to_reader(reader)->sql, id, node);
}

static int hot_key_insert(kobo_store *store, const kobo_api_key *key)
{
	/* Keys are not journaled: SQLite's own connection for keys. */
	return kobo_store_key_insert(to_hot(store)->proj, key);
}

static int hot_key_revoke(kobo_store *store, const char *id, int64_t at_ms)
{
	return kobo_store_key_revoke(to_hot(store)->proj, id, at_ms);
}

static int hot_read_keys(kobo_store_reader *reader, bool include_revoked,
                         kobo_store_key_fn each, void *ctx)
{
	return kobo_store_read_keys(to_reader(reader)->sql, include_revoked, each, ctx);
}

/* ---- Audit: the projection's rules, then the journal against it. ---- */

static void audit_report(kobo_store_report_fn report, void *ctx,
                         kobo_audit_totals *totals, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void audit_report(kobo_store_report_fn report, void *ctx,
                         kobo_audit_totals *totals, const char *fmt, ...)
{
	char line[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	report(ctx, line);
	totals->problems++;
}

/* Every kept frame decodes, the commit sequences follow each other, the
 * last is the acknowledged one, and the projection is not ahead. */
static int audit_journal(hot_store *s, uint64_t projected, kobo_store_report_fn report,
                         void *ctx, kobo_audit_totals *totals)
{
	kobo_journal_reader *jr = NULL;
	int rc = kobo_journal_reader_open(s->journal, kobo_journal_first_batch(s->journal), &jr);
	if (rc != KOBO_OK)
		return KOBO_ESTORE;
	hot_decoded d = { 0 };
	uint64_t prev = 0, batch;
	const void *bytes;
	size_t len;
	char why[200];
	while ((rc = kobo_journal_reader_next(jr, &batch, &bytes, &len)) == KOBO_OK) {
		if (hot_codec_decode(bytes, len, &d, why, sizeof why) != KOBO_OK) {
			audit_report(report, ctx, totals, "journal batch %llu does not decode: %s",
			             (unsigned long long)batch, why);
			continue;
		}
		if (prev != 0 && d.commit_seq != prev + 1)
			audit_report(report, ctx, totals,
			             "journal batch %llu has commit sequence %llu after %llu",
			             (unsigned long long)batch, (unsigned long long)d.commit_seq,
			             (unsigned long long)prev);
		prev = d.commit_seq;
	}
	int read_rc = rc;
	const char *message = kobo_journal_reader_message(jr);
	if (read_rc != KOBO_ENOTFOUND)
		audit_report(report, ctx, totals, "journal unreadable: %s", message);
	kobo_journal_reader_close(jr);
	hot_decoded_free(&d);
	if (prev != 0 && prev < projected)
		audit_report(report, ctx, totals,
		             "the journal ends at commit sequence %llu but the projection "
		             "holds %llu", (unsigned long long)prev,
		             (unsigned long long)projected);
	return KOBO_OK;
}

static int hot_audit(kobo_store *store, kobo_store_report_fn report, void *ctx,
                     kobo_audit_totals *totals)
{
	hot_store *s = to_hot(store);
	int rc = wait_projected(s, atomic_load(&s->commit_seq), HOT_PROJECTION_WAIT_MS);
	if (rc != KOBO_OK)
		return rc;
	/* A handle of its own: s->scan belongs to the writer thread. */
	kobo_store *snapshot = NULL;
	rc = store_sqlite_open(s->path, true, &snapshot);
	if (rc != KOBO_OK)
		return KOBO_ESTORE;
	rc = kobo_store_audit(snapshot, report, ctx, totals);
	kobo_store_close(snapshot);
	if (rc != KOBO_OK)
		return rc;
	return audit_journal(s, atomic_load(&s->projected_seq), report, ctx, totals);
}

/* ---- Open, recover, close. ---- */

static void projection_stop(hot_store *s)
{
	if (!s->proj_started)
		return;
	pthread_mutex_lock(&s->proj_lock);
	s->proj_stop = true;
	pthread_cond_signal(&s->proj_wake);
	pthread_mutex_unlock(&s->proj_lock);
	pthread_join(s->proj_thread, NULL);
	s->proj_started = false;
}

static void hot_close(kobo_store *store)
{
	hot_store *s = to_hot(store);
	if (s == NULL)
		return;
	/* Everything acknowledged is in the journal; the projection drains
	 * what is queued so a clean stop leaves little to replay. */
	projection_stop(s);
	while (s->q_head) {
		hot_queued *next = s->q_head->next;
		free(s->q_head);
		s->q_head = next;
	}
	if (s->load_reader)
		kobo_store_reader_close(s->load_reader);
	loaded_reset(s, false);
	kobo_journal_close(s->journal);
	if (s->scan)
		kobo_store_close(s->scan);
	if (s->proj)
		kobo_store_close(s->proj);
	hot_accounts_destroy(s->accounts);
	hot_recent_destroy(s->recent);
	hot_idset_destroy(s->ids);
	free(s->staged.accounts);
	free(s->staged.account_changes);
	free(s->staged.transfers);
	free(s->staged.transfer_changes);
	free(s->staged.events);
	pthread_rwlock_destroy(&s->state_lock);
	pthread_mutex_destroy(&s->proj_lock);
	pthread_cond_destroy(&s->proj_wake);
	pthread_cond_destroy(&s->proj_done);
	free(s);
}

/* Replays every journal frame past the projection into SQLite (invariant
 * 4), in transactions of up to HOT_PROJECTION_TXN_BYTES, and sets the
 * store's commit sequence. */
static int recover(hot_store *s)
{
	uint64_t projected = store_sqlite_commit_seq(s->proj);
	uint64_t expected = projected + 1;
	kobo_journal_reader *jr = NULL;
	int rc = kobo_journal_reader_open(s->journal, kobo_journal_first_batch(s->journal), &jr);
	if (rc != KOBO_OK) {
		fprintf(stderr, "kobo: shard %u: cannot read the journal in %s\n", s->shard,
		        s->journal_dir);
		return KOBO_ESTORE;
	}
	hot_decoded d = { 0 };
	uint64_t batch, replayed = 0, last_batch_projected = 0;
	const void *bytes;
	size_t len, txn_bytes = 0;
	bool open_txn = false;
	int64_t started_us = kobo_monotonic_us();
	while ((rc = kobo_journal_reader_next(jr, &batch, &bytes, &len)) == KOBO_OK) {
		uint64_t seq;
		if (hot_codec_peek_seq(bytes, len, &seq) != KOBO_OK) {
			fprintf(stderr, "kobo: shard %u: journal batch %llu in %s is not a "
			        "frame of this version; refusing to start\n", s->shard,
			        (unsigned long long)batch, s->journal_dir);
			rc = KOBO_ESTORE;
			break;
		}
		if (seq <= projected) {
			last_batch_projected = batch;
			continue;
		}
		if (seq != expected) {
			fprintf(stderr, "kobo: shard %u: journal batch %llu in %s carries commit "
			        "sequence %llu where %llu was expected (the projection holds "
			        "%llu): frames are missing; refusing to start\n", s->shard,
			        (unsigned long long)batch, s->journal_dir, (unsigned long long)seq,
			        (unsigned long long)expected, (unsigned long long)projected);
			rc = KOBO_ESTORE;
			break;
		}
		if (!open_txn) {
			rc = kobo_store_begin(s->proj);
			if (rc != KOBO_OK)
				break;
			open_txn = true;
		}
		rc = project_frame(s, &d, bytes, len);
		if (rc != KOBO_OK) {
			fprintf(stderr, "kobo: shard %u: journal batch %llu in %s could not be "
			        "written into %s; refusing to start\n", s->shard,
			        (unsigned long long)batch, s->journal_dir, s->path);
			break;
		}
		expected++;
		replayed++;
		txn_bytes += len;
		last_batch_projected = batch;
		if (txn_bytes >= HOT_PROJECTION_TXN_BYTES) {
			uint64_t token;
			store_sqlite_set_next_commit_seq(s->proj, expected - 1);
			rc = kobo_store_commit(s->proj, &token);
			open_txn = false;
			txn_bytes = 0;
			if (rc != KOBO_OK)
				break;
		}
	}
	if (rc == KOBO_ENOTFOUND) {
		rc = KOBO_OK;
		if (open_txn) {
			uint64_t token;
			store_sqlite_set_next_commit_seq(s->proj, expected - 1);
			rc = kobo_store_commit(s->proj, &token);
			open_txn = false;
		}
	} else if (kobo_journal_reader_message(jr)[0] != '\0') {
		fprintf(stderr, "kobo: shard %u: %s\n", s->shard, kobo_journal_reader_message(jr));
	}
	if (open_txn)
		kobo_store_rollback(s->proj);
	kobo_journal_reader_close(jr);
	hot_decoded_free(&d);
	if (rc != KOBO_OK)
		return KOBO_ESTORE;
	uint64_t seq = store_sqlite_commit_seq(s->proj);
	atomic_store(&s->commit_seq, seq);
	atomic_store(&s->projected_seq, seq);
	if (last_batch_projected > 0) {
		rc = kobo_journal_release(s->journal, last_batch_projected, NULL);
		if (rc != KOBO_OK)
			return KOBO_ESTORE;
		s->released_upto = last_batch_projected;
	}
	atomic_store(&s->release_upto, s->released_upto);
	kobo_log(KOBO_LOG_INFO, "journal_recovered",
	         "\"shard\":%u,\"replayed\":%llu,\"commit_seq\":%llu,\"took_ms\":%lld",
	         s->shard, (unsigned long long)replayed, (unsigned long long)seq,
	         (long long)((kobo_monotonic_us() - started_us) / 1000));
	return KOBO_OK;
}

typedef struct load_ctx {
	hot_store *s;
	int status;
} load_ctx;

static int load_account(void *ctx, const kobo_account *account)
{
	load_ctx *l = ctx;
	l->status = hot_accounts_put(l->s->accounts, account);
	return l->status == KOBO_OK ? 0 : 1;
}

static int load_id(void *ctx, const char *id)
{
	load_ctx *l = ctx;
	l->status = hot_idset_add(l->s->ids, id);
	return l->status;
}

/* The in-memory state from the projection (which recovery made whole). */
static int load_memory(hot_store *s)
{
	kobo_store_reader *reader = NULL;
	load_ctx l = { .s = s, .status = KOBO_OK };
	int64_t started_us = kobo_monotonic_us();
	int rc = kobo_store_reader_open(s->proj, &reader);
	if (rc != KOBO_OK)
		return KOBO_ESTORE;
	rc = kobo_store_read_accounts_prefix(reader, "", load_account, &l);
	kobo_store_reader_close(reader);
	if (rc == KOBO_OK && l.status == KOBO_OK)
		rc = store_sqlite_each_transfer_id(s->proj, load_id, &l);
	if (l.status == KOBO_EFULL) {
		fprintf(stderr, "kobo: shard %u holds more accounts or transfers than this "
		        "kobod is configured for (--max-accounts %u, --max-transfers %llu): "
		        "raise them (README: Capacity)\n", s->shard, s->config.accounts_max,
		        (unsigned long long)s->config.transfers_max);
		return KOBO_ECAPACITY;
	}
	if (rc != KOBO_OK || l.status != KOBO_OK)
		return rc != KOBO_OK ? rc : l.status;
	kobo_log(KOBO_LOG_INFO, "journal_state_loaded",
	         "\"shard\":%u,\"accounts\":%u,\"transfers\":%llu,\"took_ms\":%lld",
	         s->shard, hot_accounts_count(s->accounts),
	         (unsigned long long)hot_idset_count(s->ids),
	         (long long)((kobo_monotonic_us() - started_us) / 1000));
	return KOBO_OK;
}

static const kobo_store_ops hot_ops = {
	.begin = hot_begin,
	.load_transfers = hot_load_transfers,
	.load_accounts = hot_load_accounts,
	.now = hot_now,
	.set_concurrency = hot_set_concurrency,
	.write = hot_write,
	.write_events = hot_write_events,
	.commit = hot_commit,
	.rollback = hot_rollback,
	.expired_holds = hot_expired_holds,
	.healthy = hot_healthy,
	.reader_open = hot_reader_open,
	.reader_close = hot_reader_close,
	.read_account = hot_read_account,
	.read_transfer = hot_read_transfer,
	.read_history = hot_read_history,
	.read_sagas = hot_read_sagas,
	.read_events = hot_read_events,
	.read_by_request = hot_read_by_request,
	.read_accounts_prefix = hot_read_accounts_prefix,
	.read_position = hot_read_position,
	.claim_saga = hot_claim_saga,
	.release_saga = hot_release_saga,
	.key_insert = hot_key_insert,
	.key_revoke = hot_key_revoke,
	.read_keys = hot_read_keys,
	.audit = hot_audit,
	.close = hot_close,
};

int store_hot_open(const char *dir, uint32_t shard, const hot_config *config,
                   bool read_only, kobo_store **out)
{
	*out = NULL;
	if (read_only) {
		/* Read-only (audit, reads of a stopped kobod's data): the
		 * projection, as far as it goes; a read-write open replays the
		 * rest. */
		char path[HOT_PATH_MAX];
		if (!kobo_layout_shard_path(path, sizeof path, dir, shard))
			return KOBO_EINVAL;
		return store_sqlite_open(path, true, out);
	}
	hot_store *s = calloc(1, sizeof *s);
	if (s == NULL)
		return KOBO_ENOMEM;
	s->base.ops = &hot_ops;
	s->shard = shard;
	s->config = *config;
	pthread_rwlock_init(&s->state_lock, NULL);
	pthread_mutex_init(&s->proj_lock, NULL);
	kobo_cond_init_monotonic(&s->proj_wake);
	kobo_cond_init_monotonic(&s->proj_done);
	if (!kobo_layout_shard_path(s->path, sizeof s->path, dir, shard) ||
	    !kobo_layout_journal_dir(s->journal_dir, sizeof s->journal_dir, dir, shard)) {
		fprintf(stderr, "kobo: store directory path is too long: %s\n", dir);
		hot_close(&s->base);
		return KOBO_EINVAL;
	}
	int rc = store_sqlite_open(s->path, false, &s->proj);
	if (rc != KOBO_OK)
		goto fail;
	if (mkdir(s->journal_dir, 0700) != 0 && errno != EEXIST) {
		fprintf(stderr, "kobo: cannot create %s: %s\n", s->journal_dir, strerror(errno));
		rc = KOBO_ESTORE;
		goto fail;
	}
	kobo_journal_config jc;
	kobo_journal_config_default(&jc);
	jc.spare_segment = !config->fit; /* the audit appends nothing */
	jc.segment_bytes = (uint64_t)config->segment_mb << 20;
	uint64_t payload_max = jc.segment_bytes - 4096; /* a frame fits a segment */
	jc.payload_bytes_max = payload_max < KOBO_JOURNAL_PAYLOAD_BYTES_MAX
		? (uint32_t)payload_max : KOBO_JOURNAL_PAYLOAD_BYTES_MAX;
	/* 4 GiB of segments (at least 4): past it the projection is far
	 * behind and appends answer 503 until it catches up. */
	jc.segments_max = (uint32_t)((4096u + config->segment_mb - 1) / config->segment_mb);
	if (jc.segments_max < 4)
		jc.segments_max = 4;
	kobo_journal_recovery recovery;
	rc = kobo_journal_open(s->journal_dir, &jc, &recovery, &s->journal);
	if (rc != KOBO_OK) {
		fprintf(stderr, "kobo: shard %u: the journal in %s cannot be opened: %s\n",
		        shard, s->journal_dir, recovery.message);
		rc = KOBO_ESTORE;
		goto fail;
	}
	if (recovery.torn_bytes > 0)
		kobo_log(KOBO_LOG_WARN, "journal_torn_tail_cut",
		         "\"shard\":%u,\"bytes\":%llu,\"offset\":%llu,\"message\":\"a last "
		         "frame that was never acknowledged was cut\"", shard,
		         (unsigned long long)recovery.torn_bytes,
		         (unsigned long long)recovery.torn_offset);
	rc = recover(s);
	if (rc != KOBO_OK)
		goto fail;
	if (config->fit) {
		uint64_t accounts = 0, transfers = 0;
		rc = store_sqlite_counts(s->proj, &accounts, &transfers);
		if (rc != KOBO_OK)
			goto fail;
		s->config.accounts_max = (uint32_t)(accounts + 1024 < HOT_ACCOUNTS_MAX_LIMIT
		                                    ? accounts + 1024 : HOT_ACCOUNTS_MAX_LIMIT);
		s->config.transfers_max = transfers + 1024 < HOT_TRANSFERS_MAX_LIMIT
		                          ? transfers + 1024 : HOT_TRANSFERS_MAX_LIMIT;
	}
	if ((rc = hot_accounts_create(s->config.accounts_max, &s->accounts)) != KOBO_OK ||
	    (rc = hot_recent_create(HOT_RECENT_MAX, &s->recent)) != KOBO_OK ||
	    (rc = hot_idset_create(s->config.transfers_max, &s->ids)) != KOBO_OK)
		goto fail;
	rc = load_memory(s);
	if (rc != KOBO_OK)
		goto fail;
	rc = store_sqlite_open(s->path, true, &s->scan);
	if (rc != KOBO_OK)
		goto fail;
	if (pthread_create(&s->proj_thread, NULL, projection_main, s) != 0) {
		rc = KOBO_ENOMEM;
		goto fail;
	}
	s->proj_started = true;
	report_usage(s);
	*out = &s->base;
	return KOBO_OK;
fail:
	hot_close(&s->base);
	return rc == KOBO_ENOMEM || rc == KOBO_EINVAL || rc == KOBO_ECAPACITY ? rc : KOBO_ESTORE;
}

/* Reports this shard's usage to /metrics (obs.h kobo_metrics_journal). */
static void report_usage(hot_store *s)
{
	hot_usage u;
	store_hot_usage(&s->base, &u);
	kobo_metrics_journal_usage m = {
		.accounts = u.accounts, .accounts_max = u.accounts_max,
		.transfers = u.transfers, .transfers_max = u.transfers_max,
		.backlog_batches = u.backlog_batches, .backlog_bytes = u.backlog_bytes,
		.segments = u.journal_segments,
	};
	kobo_metrics_journal(s->shard, &m);
}

bool store_hot_usage(kobo_store *store, hot_usage *out)
{
	if (store == NULL || store->ops != &hot_ops)
		return false;
	hot_store *s = to_hot(store);
	memset(out, 0, sizeof *out);
	pthread_rwlock_rdlock(&s->state_lock);
	out->accounts = hot_accounts_count(s->accounts);
	out->transfers = hot_idset_count(s->ids);
	pthread_rwlock_unlock(&s->state_lock);
	out->accounts_max = s->config.accounts_max;
	out->transfers_max = s->config.transfers_max;
	pthread_mutex_lock(&s->proj_lock);
	out->backlog_batches = s->q_batches;
	out->backlog_bytes = s->q_bytes;
	pthread_mutex_unlock(&s->proj_lock);
	out->commit_seq = atomic_load(&s->commit_seq);
	out->projected_seq = atomic_load(&s->projected_seq);
	out->journal_segments = kobo_journal_segments(s->journal);
	out->expiry_waits = atomic_load_explicit(&s->expiry_waits, memory_order_relaxed);
	return true;
}

bool store_hot_journal_present(const char *dir, uint32_t shard)
{
	char journal_dir[HOT_PATH_MAX];
	char path[HOT_PATH_MAX + 16];
	if (!kobo_layout_journal_dir(journal_dir, sizeof journal_dir, dir, shard))
		return false;
	snprintf(path, sizeof path, "%s/journal", journal_dir);
	DIR *d = opendir(path);
	if (d == NULL)
		return false;
	bool found = false;
	struct dirent *entry;
	while (!found && (entry = readdir(d)) != NULL) {
		size_t len = strlen(entry->d_name);
		found = len > 4 && strcmp(entry->d_name + len - 4, ".seg") == 0;
	}
	closedir(d);
	return found;
}
