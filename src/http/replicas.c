/*
 * replicas.c — read replicas (kobod --postgres-read): which connection a
 * GET reads each shard from, and the Kobo-Consistency-Token it may send.
 *
 * Per shard with a replica, a monitor thread (one for the server) opens
 * the replica store (kobo_store_open_replica: refused unless it records
 * this shard index and shard count) and every REPLICA_SAMPLE_MS asks it,
 * on a reader of its own, read_position: its commit sequence, which shard
 * its meta row records, how far its replay trails. It publishes "usable"
 * (answers, as this shard) and the lag metric. A replica that does not
 * answer, or answers as another shard (a wrong URL, or a server swapped
 * behind it: checked at every sample, so within REPLICA_SAMPLE_MS of a
 * reconnect), is not used; the monitor retries with a backoff doubling
 * from REPLICA_BACKOFF_MIN_MS to REPLICA_BACKOFF_MAX_MS.
 *
 * A GET (kobo__http_read_begin) reads shard s:
 *
 *   routing lookup (post/void finding a hold) ─────────────▶ primary
 *   no replica, or the monitor says not usable ────────────▶ primary
 *   this thread's replica reader failed < backoff ago ─────▶ primary
 *   token names s at T: read_position on this thread's replica reader
 *        ≥ T ────────────────────────────────────────────────▶ replica
 *        < T: poll every TOKEN_POLL_MS until the request's
 *             TOKEN_WAIT_MS budget is spent, then ──────────▶ primary
 *   otherwise (no token for s: a stale answer is allowed) ─▶ replica
 *
 * The check and the read run on the same replica connection, one after
 * the other; replay only moves forward, so the read sees at least what the
 * check saw. A replica read that fails is read again from the primary
 * (kobo__http_read_retry): a GET the primary can serve never fails because
 * of a replica. A read on a replica waits at most PG_REPLICA_READ_TIMEOUT_MS
 * (1 s, pg_read.c) for its answer, so a frozen replica costs one GET that
 * second, once: the failure marks the replica unusable for every thread
 * until the monitor's next sample finds it answering. Every GET read of a shard that has a replica is counted in
 * kobo_replica_reads_total{shard,served}.
 *
 * Threads: the monitor alone touches its readers and opens the stores;
 * it publishes each store once (never replaced, closed only at stop, after
 * every reader on it) and "usable" as atomics. Each HTTP thread's replica
 * readers live in its reader set (server.c), like its primary readers.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How often the monitor samples each replica. Bounded cost: one
 * single-row query per replica per sample on one connection. */
#define REPLICA_SAMPLE_MS 250
/* Reconnect backoff (monitor and HTTP threads), doubling from min to max. */
#define REPLICA_BACKOFF_MIN_MS 100
#define REPLICA_BACKOFF_MAX_MS 2000
/* How long one GET may wait, in all, for replicas to replay its token
 * before reading the primaries instead. A streaming replica on a healthy
 * link replays a commit within a few milliseconds, so 50 ms covers normal
 * lag with room; past it the replica is behind for a reason (paused,
 * overloaded, cut off) and waiting longer only adds latency, while the
 * primary answers at once. The wait holds an HTTP thread (reads are
 * synchronous on it), which is why it is short. */
#define TOKEN_WAIT_MS 50
#define TOKEN_POLL_MS 2

_Static_assert(KOBO_HTTP_TOKEN_SHARDS_MAX == KOBO_SHARDS_MAX,
               "a token can name every shard");
_Static_assert(TOKEN_POLL_MS < TOKEN_WAIT_MS, "at least a few polls per wait");

typedef struct http_replica {
	char *url; /* NULL: this shard has no replica */
	_Atomic(kobo_store *) store; /* published once by the monitor */
	atomic_bool usable;
	/* Monitor thread only. */
	kobo_store_reader *reader;
	int64_t retry_at_us;
	int backoff_ms;
	int64_t lag_us;
	enum { REPLICA_UNKNOWN, REPLICA_UP, REPLICA_DOWN, REPLICA_WRONG } said;
} http_replica;

struct http_replicas {
	uint32_t shard_count;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	bool stop; /* under lock */
	http_replica shard[KOBO_SHARDS_MAX];
};

static int next_backoff(int backoff_ms)
{
	if (backoff_ms < REPLICA_BACKOFF_MIN_MS)
		return REPLICA_BACKOFF_MIN_MS;
	return backoff_ms * 2 > REPLICA_BACKOFF_MAX_MS ? REPLICA_BACKOFF_MAX_MS : backoff_ms * 2;
}

/* The position answers as shard `shard` of shard_count. */
static bool position_matches(const kobo_store_position *pos, uint32_t shard,
                             uint32_t shard_count)
{
	return pos->recorded && pos->shard_index == shard &&
	       pos->shard_count == shard_count;
}

/* ---- The monitor. ---- */

static void say(http_replica *r, uint32_t shard, int state, const char *detail)
{
	if ((int)r->said == state)
		return;
	r->said = state;
	if (state == REPLICA_UP)
		kobo_log(KOBO_LOG_WARN, "replica_up", "\"shard\":%" PRIu32 ",\"message\":\"the "
		         "shard's read replica answers: GETs read it\"", shard);
	else
		kobo_log(KOBO_LOG_ERROR, state == REPLICA_WRONG ? "replica_wrong_shard"
		                                                 : "replica_down",
		         "\"shard\":%" PRIu32 ",\"message\":\"%s: GETs read the primary "
		         "until it answers as this shard\"", shard, detail);
}

static void replica_down(http_replica *r, uint32_t shard, int state, const char *detail,
                         int64_t now_us)
{
	atomic_store(&r->usable, false);
	if (r->reader) {
		kobo_store_reader_close(r->reader);
		r->reader = NULL;
	}
	r->backoff_ms = next_backoff(r->backoff_ms);
	r->retry_at_us = now_us + (int64_t)r->backoff_ms * 1000;
	kobo_metrics_replica_state(shard, false, r->lag_us);
	say(r, shard, state, detail);
}

static void sample(http_replicas *set, uint32_t shard)
{
	http_replica *r = &set->shard[shard];
	int64_t now = kobo_monotonic_us();
	if (now < r->retry_at_us)
		return;
	kobo_store *store = atomic_load(&r->store);
	if (store == NULL) {
		int rc = kobo_store_open_replica(r->url, shard, set->shard_count, &store);
		if (rc != KOBO_OK) {
			replica_down(r, shard, rc == KOBO_EINVAL ? REPLICA_WRONG : REPLICA_DOWN,
			             rc == KOBO_EINVAL ? "the read replica holds another shard "
			             "or deployment" : "the read replica cannot be opened", now);
			return;
		}
		atomic_store(&r->store, store);
	}
	if (r->reader == NULL && kobo_store_reader_open(store, &r->reader) != KOBO_OK) {
		r->reader = NULL;
		replica_down(r, shard, REPLICA_DOWN, "the read replica does not answer", now);
		return;
	}
	kobo_store_position pos;
	if (kobo_store_read_position(r->reader, &pos) != KOBO_OK) {
		replica_down(r, shard, REPLICA_DOWN, "the read replica does not answer", now);
		return;
	}
	if (!position_matches(&pos, shard, set->shard_count)) {
		replica_down(r, shard, REPLICA_WRONG, "the read replica's database records "
		             "another shard index or shard count", now);
		return;
	}
	r->lag_us = pos.lag_us;
	r->backoff_ms = 0;
	kobo_metrics_replica_state(shard, true, pos.lag_us);
	atomic_store(&r->usable, true);
	say(r, shard, REPLICA_UP, NULL);
}

static void *monitor_main(void *arg)
{
	http_replicas *set = arg;
	pthread_mutex_lock(&set->lock);
	while (!set->stop) {
		pthread_mutex_unlock(&set->lock);
		for (uint32_t i = 0; i < set->shard_count; i++)
			if (set->shard[i].url)
				sample(set, i);
		struct timespec deadline = kobo_deadline_after_ms(REPLICA_SAMPLE_MS);
		pthread_mutex_lock(&set->lock);
		while (!set->stop &&
		       pthread_cond_timedwait(&set->wake, &set->lock, &deadline) == 0)
			;
	}
	pthread_mutex_unlock(&set->lock);
	return NULL;
}

int kobo__http_replicas_start(const char *const *urls, uint32_t shard_count,
                              http_replicas **out)
{
	*out = NULL;
	http_replicas *set = calloc(1, sizeof *set);
	if (set == NULL)
		return KOBO_ENOMEM;
	set->shard_count = shard_count;
	uint32_t count = 0;
	for (uint32_t i = 0; i < shard_count; i++) {
		atomic_init(&set->shard[i].store, NULL);
		atomic_init(&set->shard[i].usable, false);
		if (urls[i] == NULL)
			continue;
		set->shard[i].url = strdup(urls[i]);
		if (set->shard[i].url == NULL)
			goto nomem;
		count = i + 1;
	}
	kobo_metrics_replicas(count);
	/* The first sample now, so a replica that answers serves the first
	 * GET. */
	for (uint32_t i = 0; i < shard_count; i++)
		if (set->shard[i].url)
			sample(set, i);
	if (pthread_mutex_init(&set->lock, NULL) != 0)
		goto nomem;
	if (kobo_cond_init_monotonic(&set->wake) != 0) {
		pthread_mutex_destroy(&set->lock);
		goto nomem;
	}
	if (pthread_create(&set->thread, NULL, monitor_main, set) != 0) {
		pthread_cond_destroy(&set->wake);
		pthread_mutex_destroy(&set->lock);
		goto nomem;
	}
	*out = set;
	return KOBO_OK;
nomem:
	for (uint32_t i = 0; i < shard_count; i++) {
		if (set->shard[i].reader)
			kobo_store_reader_close(set->shard[i].reader);
		kobo_store *store = atomic_load(&set->shard[i].store);
		if (store)
			kobo_store_close(store);
		free(set->shard[i].url);
	}
	free(set);
	return KOBO_ENOMEM;
}

void kobo__http_replicas_stop(http_replicas *set)
{
	if (set == NULL)
		return;
	pthread_mutex_lock(&set->lock);
	set->stop = true;
	pthread_cond_signal(&set->wake);
	pthread_mutex_unlock(&set->lock);
	pthread_join(set->thread, NULL);
	for (uint32_t i = 0; i < set->shard_count; i++) {
		atomic_store(&set->shard[i].usable, false);
		if (set->shard[i].reader) {
			kobo_store_reader_close(set->shard[i].reader);
			set->shard[i].reader = NULL;
		}
	}
}

void kobo__http_replicas_free(http_replicas *set)
{
	if (set == NULL)
		return;
	for (uint32_t i = 0; i < set->shard_count; i++) {
		kobo_store *store = atomic_load(&set->shard[i].store);
		if (store)
			kobo_store_close(store);
		free(set->shard[i].url);
	}
	pthread_cond_destroy(&set->wake);
	pthread_mutex_destroy(&set->lock);
	free(set);
}

/* ---- Choosing a reader for a GET. ---- */

static bool has_replica(const kobo_http_exchange *x, uint32_t shard)
{
	return x->server->replicas != NULL && x->server->replicas->shard[shard].url != NULL;
}

/* This thread's reader on the shard's replica, opened when absent and the
 * thread's backoff allows; NULL when there is none to use. */
static kobo_store_reader *replica_reader(kobo_http_exchange *x, uint32_t shard)
{
	http_replica *r = &x->server->replicas->shard[shard];
	if (!atomic_load(&r->usable))
		return NULL;
	kobo_store *store = atomic_load(&r->store);
	http_thread_replica *mine = kobo__http_thread_replica(x->server, shard);
	if (store == NULL || mine == NULL)
		return NULL;
	if (mine->reader == NULL) {
		if (kobo_monotonic_us() < mine->retry_at_us)
			return NULL;
		if (kobo_store_reader_open(store, &mine->reader) != KOBO_OK) {
			mine->reader = NULL;
			mine->backoff_ms = next_backoff(mine->backoff_ms);
			mine->retry_at_us = kobo_monotonic_us() + (int64_t)mine->backoff_ms * 1000;
			return NULL;
		}
	}
	return mine->reader;
}

/* Drops this thread's replica reader of shard (it failed): the thread
 * reads the primary until its backoff ends, and every thread does until
 * the monitor's next sample finds the replica answering again (so no other
 * thread stalls on it meanwhile). */
static void replica_reader_failed(kobo_http_exchange *x, uint32_t shard, const char *why)
{
	atomic_store(&x->server->replicas->shard[shard].usable, false);
	http_thread_replica *mine = kobo__http_thread_replica(x->server, shard);
	if (mine == NULL)
		return;
	if (mine->reader) {
		kobo_store_reader_close(mine->reader);
		mine->reader = NULL;
	}
	mine->backoff_ms = next_backoff(mine->backoff_ms);
	mine->retry_at_us = kobo_monotonic_us() + (int64_t)mine->backoff_ms * 1000;
	kobo_log(KOBO_LOG_WARN, "replica_read_fallback",
	         "\"shard\":%" PRIu32 ",\"request_id\":\"%s\",\"message\":\"%s: read "
	         "from the primary\"", shard, x->request_id, why);
}

/* true when the replica reader has replayed at least seq, polling within
 * the request's wait budget. */
static bool replica_caught_up(kobo_http_exchange *x, uint32_t shard,
                              kobo_store_reader *reader, uint64_t seq)
{
	for (;;) {
		kobo_store_position pos;
		if (kobo_store_read_position(reader, &pos) != KOBO_OK) {
			replica_reader_failed(x, shard, "the replica's position is unreadable");
			return false;
		}
		if (!position_matches(&pos, shard, x->server->shard_count)) {
			replica_reader_failed(x, shard, "the replica records another shard");
			return false;
		}
		if (pos.commit_seq >= seq)
			return true;
		int64_t now = kobo_monotonic_us();
		if (x->token_deadline_us == 0)
			x->token_deadline_us = now + TOKEN_WAIT_MS * 1000;
		if (now >= x->token_deadline_us)
			return false;
		int64_t left_us = x->token_deadline_us - now;
		int64_t nap_us = left_us < TOKEN_POLL_MS * 1000 ? left_us : TOKEN_POLL_MS * 1000;
		nanosleep(&(struct timespec){ .tv_sec = 0, .tv_nsec = (long)nap_us * 1000 }, NULL);
	}
}

int kobo__http_read_begin(kobo_http_exchange *x, uint32_t shard, bool routing,
                          kobo_http_read *read)
{
	read->shard = shard;
	read->replica = false;
	read->counted = !routing && has_replica(x, shard);
	read->reader = NULL;
	if (read->counted) {
		kobo_store_reader *reader = replica_reader(x, shard);
		uint64_t seq = 0;
		if (reader != NULL && x->token && kobo_http_token_names(x->token, shard, &seq) &&
		    seq > 0 && !replica_caught_up(x, shard, reader, seq))
			reader = NULL; /* read the primary: it has the token's batches */
		if (reader != NULL) {
			read->reader = reader;
			read->replica = true;
			return KOBO_OK;
		}
	}
	return kobo__http_reader(x->server, shard, &read->reader);
}

bool kobo__http_read_retry(kobo_http_exchange *x, kobo_http_read *read, int *rc)
{
	if (read->replica && *rc != KOBO_OK && *rc != KOBO_ENOTFOUND) {
		replica_reader_failed(x, read->shard, "a read on the replica failed");
		read->replica = false;
		*rc = kobo__http_reader(x->server, read->shard, &read->reader);
		if (*rc == KOBO_OK)
			return true; /* read again, from the primary */
	}
	if (read->counted && (*rc == KOBO_OK || *rc == KOBO_ENOTFOUND))
		kobo_metrics_replica_read(read->shard, read->replica);
	return false;
}
