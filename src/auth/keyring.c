/*
 * keyring.c — the live keys kobod checks requests against (keyring.h):
 * immutable snapshots swapped by a refresh thread, read under a rwlock.
 */
#include "keyring.h"

#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "../obs/obs.h"

/* One successful read of the store: the keys and their id index. Never
 * changed after it is built; freed once swapped out (no lookup holds a
 * pointer into it past the read lock). */
typedef struct snapshot {
	kobo_api_key *keys;
	uint32_t count;
	kobo_id_table *index;
} snapshot;

struct kobo_keyring {
	kobo_store *store;
	unsigned refresh_ms;

	pthread_rwlock_t lock; /* guards current */
	snapshot *current;

	/* The refresh thread and its requests. */
	pthread_t thread;
	pthread_mutex_t mutex;
	pthread_cond_t wake;     /* the thread waits on it between refreshes */
	pthread_cond_t finished; /* refresh_wait waits on it */
	bool stopping;
	uint64_t asked;          /* refreshes asked for by refresh_wait */
	uint64_t done;           /* value of asked when the last refresh began */
	int last_rc;
	kobo_store_reader *reader; /* the thread's own (invariant 3) */

	_Atomic uint64_t failures;
};

static const char *key_id_of(const void *records, uint32_t slot)
{
	return ((const kobo_api_key *)records)[slot].id;
}

static void snapshot_free(snapshot *s)
{
	if (!s)
		return;
	kobo_id_table_destroy(s->index);
	if (s->keys)
		sodium_memzero(s->keys, (size_t)s->count * sizeof(*s->keys));
	free(s->keys);
	free(s);
}

/* What read_keys fills: a growing array bounded by KOBO_KEYS_MAX. */
typedef struct collect {
	kobo_api_key *keys;
	uint32_t count, capacity;
	bool too_many;
	bool out_of_memory;
	uint32_t skipped; /* rows that are not a valid live key */
} collect;

static bool record_valid(const kobo_api_key *k)
{
	/* The id must be one a key's text can name (key.h): lowercase hex. */
	if (strnlen(k->id, sizeof(k->id)) != KOBO_KEY_ID_LEN)
		return false;
	for (size_t i = 0; i < KOBO_KEY_ID_LEN; i++) {
		char c = k->id[i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return false;
	}
	return k->scopes != 0 && (k->scopes & ~KOBO_SCOPES_ALL) == 0 &&
	       k->revoked_at_ms == 0;
}

static int collect_key(void *ctx, const kobo_api_key *key)
{
	collect *c = ctx;
	if (!record_valid(key)) {
		c->skipped++;
		return 0;
	}
	if (c->count == KOBO_KEYS_MAX) {
		c->too_many = true;
		return 1; /* stop: invariant 2 */
	}
	if (c->count == c->capacity) {
		uint32_t capacity = c->capacity ? c->capacity * 2 : 64;
		if (capacity > KOBO_KEYS_MAX)
			capacity = KOBO_KEYS_MAX;
		kobo_api_key *keys = realloc(c->keys, (size_t)capacity * sizeof(*keys));
		if (!keys) {
			c->out_of_memory = true;
			return 1;
		}
		c->keys = keys;
		c->capacity = capacity;
	}
	c->keys[c->count++] = *key;
	return 0;
}

/* Reads the live keys through reader into a new snapshot. */
static int load(kobo_store_reader *reader, snapshot **out)
{
	*out = NULL;
	collect c = { 0 };
	int rc = kobo_store_read_keys(reader, false, collect_key, &c);
	if (rc == KOBO_OK && c.out_of_memory)
		rc = KOBO_ENOMEM;
	snapshot *s = NULL;
	if (rc == KOBO_OK) {
		s = calloc(1, sizeof(*s));
		rc = s ? KOBO_OK : KOBO_ENOMEM;
	}
	if (rc == KOBO_OK) {
		s->keys = c.keys;
		s->count = c.count;
		c.keys = NULL;
		rc = kobo_id_table_create(s->count ? s->count : 1, key_id_of, s->keys, &s->index);
		for (uint32_t i = 0; rc == KOBO_OK && i < s->count; i++) {
			uint32_t slot;
			if (kobo_id_table_find(s->index, s->keys[i].id, &slot) == KOBO_OK) {
				rc = KOBO_ESTORE; /* two rows with one id: not a store's answer */
				break;
			}
			rc = kobo_id_table_insert(s->index, s->keys[i].id, i);
		}
	}
	if (c.skipped)
		kobo_log(KOBO_LOG_WARN, "auth_keys_skipped",
		         "\"reason\":\"rows that are not a valid live key\",\"count\":%u",
		         c.skipped);
	if (c.too_many)
		kobo_log(KOBO_LOG_WARN, "auth_keys_too_many",
		         "\"reason\":\"the store returned more live keys than KOBO_KEYS_MAX; "
		         "the rest are refused\",\"max\":%d", KOBO_KEYS_MAX);
	free(c.keys);
	if (rc != KOBO_OK) {
		snapshot_free(s);
		return rc;
	}
	*out = s;
	return c.too_many ? KOBO_EFULL : KOBO_OK;
}

static void swap_in(kobo_keyring *ring, snapshot *s)
{
	pthread_rwlock_wrlock(&ring->lock);
	snapshot *old = ring->current;
	ring->current = s;
	pthread_rwlock_unlock(&ring->lock);
	if (!old || old->count != s->count)
		kobo_log(KOBO_LOG_INFO, "auth_keys_loaded", "\"live\":%u", s->count);
	kobo_metrics_auth_keys(s->count);
	snapshot_free(old);
}

/* One refresh on the refresh thread. A failure keeps the last view. */
static int refresh_once(kobo_keyring *ring)
{
	int rc = KOBO_OK;
	if (!ring->reader)
		rc = kobo_store_reader_open(ring->store, &ring->reader);
	snapshot *s = NULL;
	if (rc == KOBO_OK)
		rc = load(ring->reader, &s);
	if (s)
		swap_in(ring, s); /* also a cut view (KOBO_EFULL): newer is safer */
	if (rc != KOBO_OK) {
		atomic_fetch_add_explicit(&ring->failures, 1, memory_order_relaxed);
		kobo_metrics_auth_refresh_failure();
		kobo_log(KOBO_LOG_WARN, "auth_refresh_failed",
		         "\"status\":\"%s\",\"reason\":\"kept the last view of the keys\"",
		         kobo_status_name(rc));
		if (rc != KOBO_EFULL && ring->reader) {
			/* Reopen next time: a broken connection heals so. */
			kobo_store_reader_close(ring->reader);
			ring->reader = NULL;
		}
	}
	return rc;
}

static void *refresh_main(void *arg)
{
	kobo_keyring *ring = arg;
	pthread_mutex_lock(&ring->mutex);
	for (;;) {
		struct timespec until = kobo_deadline_after_ms(ring->refresh_ms);
		while (!ring->stopping && ring->asked == ring->done) {
			if (pthread_cond_timedwait(&ring->wake, &ring->mutex, &until) != 0)
				break; /* the period ended */
		}
		if (ring->stopping)
			break;
		uint64_t asked = ring->asked;
		pthread_mutex_unlock(&ring->mutex);
		int rc = refresh_once(ring);
		pthread_mutex_lock(&ring->mutex);
		ring->done = asked;
		ring->last_rc = rc;
		pthread_cond_broadcast(&ring->finished);
	}
	pthread_mutex_unlock(&ring->mutex);
	if (ring->reader)
		kobo_store_reader_close(ring->reader);
	ring->reader = NULL;
	return NULL;
}

int kobo_keyring_start(kobo_store *store, unsigned refresh_ms, kobo_keyring **out)
{
	if (!out)
		return KOBO_EINVAL;
	*out = NULL;
	if (!store || refresh_ms > KOBO_KEYRING_REFRESH_MS_MAX)
		return KOBO_EINVAL;
	if (kobo_auth_init() != KOBO_OK)
		return KOBO_EINVAL;
	kobo_keyring *ring = calloc(1, sizeof(*ring));
	if (!ring)
		return KOBO_ENOMEM;
	ring->store = store;
	ring->refresh_ms = refresh_ms ? refresh_ms : KOBO_KEYRING_REFRESH_MS_DEFAULT;
	atomic_init(&ring->failures, 0);

	/* The first load, on this thread through a reader of its own. */
	kobo_store_reader *reader = NULL;
	int rc = kobo_store_reader_open(store, &reader);
	snapshot *s = NULL;
	if (rc == KOBO_OK) {
		rc = load(reader, &s);
		kobo_store_reader_close(reader);
	}
	if (rc == KOBO_EFULL && s)
		rc = KOBO_OK; /* a view cut at KOBO_KEYS_MAX (logged) still serves */
	if (rc != KOBO_OK) {
		snapshot_free(s);
		free(ring);
		return rc;
	}

	pthread_rwlockattr_t attr;
	pthread_rwlockattr_init(&attr);
	/* A steady stream of lookups must not starve the swap. */
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&ring->lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	pthread_mutex_init(&ring->mutex, NULL);
	kobo_cond_init_monotonic(&ring->wake);
	kobo_cond_init_monotonic(&ring->finished);
	swap_in(ring, s);
	if (pthread_create(&ring->thread, NULL, refresh_main, ring) != 0) {
		pthread_cond_destroy(&ring->wake);
		pthread_cond_destroy(&ring->finished);
		pthread_mutex_destroy(&ring->mutex);
		pthread_rwlock_destroy(&ring->lock);
		snapshot_free(ring->current);
		free(ring);
		return KOBO_ENOMEM;
	}
	*out = ring;
	return KOBO_OK;
}

void kobo_keyring_stop(kobo_keyring *ring)
{
	if (!ring)
		return;
	pthread_mutex_lock(&ring->mutex);
	ring->stopping = true;
	pthread_cond_broadcast(&ring->wake);
	pthread_cond_broadcast(&ring->finished);
	pthread_mutex_unlock(&ring->mutex);
	pthread_join(ring->thread, NULL);
	pthread_cond_destroy(&ring->wake);
	pthread_cond_destroy(&ring->finished);
	pthread_mutex_destroy(&ring->mutex);
	pthread_rwlock_destroy(&ring->lock);
	snapshot_free(ring->current);
	free(ring);
}

int kobo_keyring_find(kobo_keyring *ring, const char *id, kobo_api_key *out)
{
	int rc = KOBO_ENOTFOUND;
	pthread_rwlock_rdlock(&ring->lock);
	const snapshot *s = ring->current;
	uint32_t slot;
	if (s->count && kobo_id_table_find(s->index, id, &slot) == KOBO_OK) {
		*out = s->keys[slot];
		rc = KOBO_OK;
	}
	pthread_rwlock_unlock(&ring->lock);
	return rc;
}

kobo_keyring_check kobo_keyring_authenticate(kobo_keyring *ring, const char *text,
                                             size_t len, kobo_api_key *out)
{
	char id[KOBO_KEY_ID_LEN + 1], secret[KOBO_KEY_SECRET_LEN + 1];
	kobo_keyring_check result;
	memset(out, 0, sizeof(*out));
	if (kobo_key_parse(text, len, id, secret) != KOBO_OK)
		return KOBO_KEYRING_MALFORMED;
	if (kobo_keyring_find(ring, id, out) != KOBO_OK)
		result = KOBO_KEYRING_UNKNOWN;
	else if (!kobo_key_verify(out, secret))
		result = KOBO_KEYRING_WRONG_SECRET;
	else
		result = KOBO_KEYRING_OK;
	sodium_memzero(secret, sizeof secret);
	if (result != KOBO_KEYRING_OK)
		memset(out, 0, sizeof(*out));
	return result;
}

int kobo_keyring_refresh_wait(kobo_keyring *ring, unsigned timeout_ms)
{
	struct timespec until = kobo_deadline_after_ms(timeout_ms);
	pthread_mutex_lock(&ring->mutex);
	uint64_t mine = ++ring->asked;
	pthread_cond_signal(&ring->wake);
	int rc = KOBO_OK;
	while (ring->done < mine && !ring->stopping) {
		if (pthread_cond_timedwait(&ring->finished, &ring->mutex, &until) != 0) {
			rc = KOBO_EOVERLOADED;
			break;
		}
	}
	if (rc == KOBO_OK)
		rc = ring->stopping && ring->done < mine ? KOBO_ESHUTDOWN : ring->last_rc;
	pthread_mutex_unlock(&ring->mutex);
	return rc;
}

size_t kobo_keyring_count(kobo_keyring *ring)
{
	pthread_rwlock_rdlock(&ring->lock);
	size_t n = ring->current->count;
	pthread_rwlock_unlock(&ring->lock);
	return n;
}

uint64_t kobo_keyring_refresh_failures(kobo_keyring *ring)
{
	return atomic_load_explicit(&ring->failures, memory_order_relaxed);
}
