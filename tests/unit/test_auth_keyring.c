/*
 * test_auth_keyring.c — the key ring (src/auth/keyring.h) over a store:
 * the first load at start, a key inserted or revoked after start seen or
 * refused after a refresh (asked for, and by the periodic thread alone), a
 * failed refresh keeping the last view and counting, a failed first load
 * failing start, the KOBO_KEYS_MAX cut, rows that are not valid keys
 * skipped, lookups from many threads while the view is swapped, and stop
 * joining the thread (its reader closed).
 *
 * Most tests use a small fake store (the store.h contract's key reads,
 * with a switch that makes them fail: the in-memory backend has no read
 * faults); mem_store_insert_and_revoke runs the same cycle on the real
 * in-memory backend through key_insert / key_revoke.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/auth/keyring.h"
#include "../../src/obs/obs.h"

/* ---- A store that only keeps keys. ---- */

#define FAKE_KEYS_MAX (KOBO_KEYS_MAX + 8)

typedef struct fake_store {
	kobo_store base;
	pthread_mutex_t mutex;
	kobo_api_key *keys;
	size_t count;
	bool fail_reads;
	bool fail_open;
	int readers_open;
	int reads;
} fake_store;

typedef struct fake_reader {
	kobo_store_reader base;
} fake_reader;

static int fake_reader_open(kobo_store *store, kobo_store_reader **out)
{
	fake_store *f = (fake_store *)store;
	pthread_mutex_lock(&f->mutex);
	bool fail = f->fail_open;
	if (!fail)
		f->readers_open++;
	pthread_mutex_unlock(&f->mutex);
	if (fail)
		return KOBO_ESTORE;
	fake_reader *r = calloc(1, sizeof(*r));
	assert_non_null(r);
	r->base.store = store;
	*out = &r->base;
	return KOBO_OK;
}

static void fake_reader_close(kobo_store_reader *reader)
{
	fake_store *f = (fake_store *)reader->store;
	pthread_mutex_lock(&f->mutex);
	f->readers_open--;
	pthread_mutex_unlock(&f->mutex);
	free(reader);
}

static int fake_read_keys(kobo_store_reader *reader, bool include_revoked,
                          kobo_store_key_fn each, void *ctx)
{
	fake_store *f = (fake_store *)reader->store;
	pthread_mutex_lock(&f->mutex);
	f->reads++;
	if (f->fail_reads) {
		pthread_mutex_unlock(&f->mutex);
		return KOBO_ESTORE;
	}
	for (size_t i = 0; i < f->count; i++) {
		if (f->keys[i].revoked_at_ms && !include_revoked)
			continue;
		if (each(ctx, &f->keys[i]) != 0)
			break;
	}
	pthread_mutex_unlock(&f->mutex);
	return KOBO_OK;
}

static const kobo_store_ops fake_ops = {
	.reader_open = fake_reader_open,
	.reader_close = fake_reader_close,
	.read_keys = fake_read_keys,
};

static fake_store *fake_new(void)
{
	fake_store *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->base.ops = &fake_ops;
	f->keys = calloc(FAKE_KEYS_MAX, sizeof(*f->keys));
	assert_non_null(f->keys);
	pthread_mutex_init(&f->mutex, NULL);
	return f;
}

static void fake_free(fake_store *f)
{
	assert_int_equal(f->readers_open, 0); /* every reader closed */
	pthread_mutex_destroy(&f->mutex);
	free(f->keys);
	free(f);
}

/* A new key of scopes in f; its text into text. Returns its slot. */
static size_t fake_add(fake_store *f, uint32_t scopes, char text[KOBO_KEY_TEXT_LEN + 1])
{
	kobo_api_key k = { 0 };
	snprintf(k.name, sizeof k.name, "key %zu", f->count);
	k.scopes = scopes;
	k.created_at_ms = 1700000000000;
	assert_int_equal(kobo_key_generate(&k, text), KOBO_OK);
	pthread_mutex_lock(&f->mutex);
	assert_true(f->count < FAKE_KEYS_MAX);
	size_t slot = f->count++;
	f->keys[slot] = k;
	pthread_mutex_unlock(&f->mutex);
	return slot;
}

static void fake_revoke(fake_store *f, size_t slot)
{
	pthread_mutex_lock(&f->mutex);
	f->keys[slot].revoked_at_ms = 1700000001000;
	pthread_mutex_unlock(&f->mutex);
}

static void fake_set(fake_store *f, bool *flag, bool value)
{
	pthread_mutex_lock(&f->mutex);
	*flag = value;
	pthread_mutex_unlock(&f->mutex);
}

static kobo_keyring_check check(kobo_keyring *ring, const char *text)
{
	kobo_api_key k;
	return kobo_keyring_authenticate(ring, text, strlen(text), &k);
}

/* ---- Tests. ---- */

static int setup(void **state)
{
	(void)state;
	kobo_log_set_level(KOBO_LOG_ERROR); /* the warnings are expected */
	return kobo_auth_init() == KOBO_OK ? 0 : -1;
}

static void loads_at_start_and_checks(void **state)
{
	(void)state;
	fake_store *f = fake_new();
	char reader_text[KOBO_KEY_TEXT_LEN + 1], admin_text[KOBO_KEY_TEXT_LEN + 1];
	size_t reader_slot = fake_add(f, KOBO_SCOPE_ACCOUNTS_READ, reader_text);
	fake_add(f, KOBO_SCOPE_ADMIN, admin_text);
	kobo_keyring *ring;
	assert_int_equal(kobo_keyring_start(&f->base, 60000, &ring), KOBO_OK);
	assert_int_equal(kobo_keyring_count(ring), 2);

	kobo_api_key k;
	assert_int_equal(kobo_keyring_authenticate(ring, reader_text, KOBO_KEY_TEXT_LEN, &k),
	                 KOBO_KEYRING_OK);
	assert_string_equal(k.id, f->keys[reader_slot].id);
	assert_string_equal(k.name, "key 0");
	assert_int_equal(k.scopes, KOBO_SCOPE_ACCOUNTS_READ);
	assert_int_equal(check(ring, admin_text), KOBO_KEYRING_OK);

	/* A wrong secret under a live id; an unknown id; a malformed text. */
	char wrong[KOBO_KEY_TEXT_LEN + 1];
	memcpy(wrong, reader_text, sizeof wrong);
	wrong[KOBO_KEY_TEXT_LEN - 1] = wrong[KOBO_KEY_TEXT_LEN - 1] == '0' ? '1' : '0';
	assert_int_equal(kobo_keyring_authenticate(ring, wrong, KOBO_KEY_TEXT_LEN, &k),
	                 KOBO_KEYRING_WRONG_SECRET);
	assert_string_equal(k.id, ""); /* nothing of the key leaks out */
	assert_int_equal(k.scopes, 0);
	char unknown[KOBO_KEY_TEXT_LEN + 1];
	memcpy(unknown, reader_text, sizeof unknown);
	unknown[5] = unknown[5] == '0' ? '1' : '0';
	assert_int_equal(check(ring, unknown), KOBO_KEYRING_UNKNOWN);
	assert_int_equal(check(ring, "kobo_"), KOBO_KEYRING_MALFORMED);
	assert_int_equal(kobo_keyring_authenticate(ring, reader_text, KOBO_KEY_TEXT_LEN - 1, &k),
	                 KOBO_KEYRING_MALFORMED);
	assert_int_equal(kobo_keyring_authenticate(ring, "", 0, &k), KOBO_KEYRING_MALFORMED);

	assert_int_equal(kobo_keyring_find(ring, f->keys[reader_slot].id, &k), KOBO_OK);
	assert_int_equal(kobo_keyring_find(ring, "0000000000000000", &k), KOBO_ENOTFOUND);
	assert_int_equal(kobo_keyring_refresh_failures(ring), 0);
	kobo_keyring_stop(ring);
	fake_free(f);
}

static void inserted_and_revoked_after_start(void **state)
{
	(void)state;
	fake_store *f = fake_new();
	kobo_keyring *ring;
	assert_int_equal(kobo_keyring_start(&f->base, 60000, &ring), KOBO_OK);
	assert_int_equal(kobo_keyring_count(ring), 0);

	char text[KOBO_KEY_TEXT_LEN + 1];
	size_t slot = fake_add(f, KOBO_SCOPE_TRANSFERS_WRITE, text);
	/* Not seen before a refresh (the period is a minute here)… */
	assert_int_equal(check(ring, text), KOBO_KEYRING_UNKNOWN);
	/* …and seen after one. */
	assert_int_equal(kobo_keyring_refresh_wait(ring, 5000), KOBO_OK);
	assert_int_equal(check(ring, text), KOBO_KEYRING_OK);
	assert_int_equal(kobo_keyring_count(ring), 1);

	fake_revoke(f, slot);
	assert_int_equal(check(ring, text), KOBO_KEYRING_OK); /* until the refresh */
	assert_int_equal(kobo_keyring_refresh_wait(ring, 5000), KOBO_OK);
	assert_int_equal(check(ring, text), KOBO_KEYRING_UNKNOWN);
	assert_int_equal(kobo_keyring_count(ring), 0);
	kobo_keyring_stop(ring);
	fake_free(f);
}

/* No refresh asked for: the thread's own period brings the change. */
static void periodic_refresh(void **state)
{
	(void)state;
	fake_store *f = fake_new();
	kobo_keyring *ring;
	assert_int_equal(kobo_keyring_start(&f->base, 50, &ring), KOBO_OK);
	char text[KOBO_KEY_TEXT_LEN + 1];
	size_t slot = fake_add(f, KOBO_SCOPE_ACCOUNTS_WRITE, text);
	int64_t until = kobo_monotonic_us() + 5 * 1000 * 1000;
	while (check(ring, text) != KOBO_KEYRING_OK && kobo_monotonic_us() < until)
		nanosleep(&(struct timespec){ .tv_nsec = 10 * 1000 * 1000 }, NULL);
	assert_int_equal(check(ring, text), KOBO_KEYRING_OK);
	fake_revoke(f, slot);
	until = kobo_monotonic_us() + 5 * 1000 * 1000;
	while (check(ring, text) == KOBO_KEYRING_OK && kobo_monotonic_us() < until)
		nanosleep(&(struct timespec){ .tv_nsec = 10 * 1000 * 1000 }, NULL);
	assert_int_equal(check(ring, text), KOBO_KEYRING_UNKNOWN);
	kobo_keyring_stop(ring);
	fake_free(f);
}

static void failed_refresh_keeps_the_last_view(void **state)
{
	(void)state;
	fake_store *f = fake_new();
	char text[KOBO_KEY_TEXT_LEN + 1], later[KOBO_KEY_TEXT_LEN + 1];
	size_t slot = fake_add(f, KOBO_SCOPE_ACCOUNTS_READ, text);
	kobo_keyring *ring;
	assert_int_equal(kobo_keyring_start(&f->base, 60000, &ring), KOBO_OK);

	fake_set(f, &f->fail_reads, true);
	fake_revoke(f, slot);
	fake_add(f, KOBO_SCOPE_ACCOUNTS_READ, later);
	assert_int_equal(kobo_keyring_refresh_wait(ring, 5000), KOBO_ESTORE);
	assert_int_equal(kobo_keyring_refresh_failures(ring), 1);
	/* The last view stands: the revoked key still passes (the documented
	 * bound grows while the store is unreachable), the new one is unknown. */
	assert_int_equal(check(ring, text), KOBO_KEYRING_OK);
	assert_int_equal(check(ring, later), KOBO_KEYRING_UNKNOWN);

	/* The reader itself cannot be opened either: still the last view. */
	fake_set(f, &f->fail_open, true);
	assert_int_equal(kobo_keyring_refresh_wait(ring, 5000), KOBO_ESTORE);
	assert_int_equal(kobo_keyring_refresh_failures(ring), 2);
	assert_int_equal(check(ring, text), KOBO_KEYRING_OK);

	/* The store answers again: the next refresh catches up. */
	fake_set(f, &f->fail_open, false);
	fake_set(f, &f->fail_reads, false);
	assert_int_equal(kobo_keyring_refresh_wait(ring, 5000), KOBO_OK);
	assert_int_equal(check(ring, text), KOBO_KEYRING_UNKNOWN);
	assert_int_equal(check(ring, later), KOBO_KEYRING_OK);
	assert_int_equal(kobo_keyring_refresh_failures(ring), 2);

	/* The metric counts them too. */
	char *buf = malloc(1 << 20);
	assert_non_null(buf);
	size_t n = kobo_metrics_render(buf, 1 << 20);
	assert_true(n < (1 << 20));
	assert_non_null(strstr(buf, "kobo_auth_refresh_failures_total 2\n"));
	assert_non_null(strstr(buf, "kobo_auth_keys 1\n"));
	free(buf);
	kobo_keyring_stop(ring);
	fake_free(f);
}

static void failed_first_load_fails_start(void **state)
{
	(void)state;
	fake_store *f = fake_new();
	kobo_keyring *ring = (kobo_keyring *)f; /* overwritten with NULL */
	fake_set(f, &f->fail_reads, true);
	assert_int_equal(kobo_keyring_start(&f->base, 0, &ring), KOBO_ESTORE);
	assert_null(ring);
	fake_set(f, &f->fail_reads, false);
	fake_set(f, &f->fail_open, true);
	assert_int_equal(kobo_keyring_start(&f->base, 0, &ring), KOBO_ESTORE);
	assert_null(ring);
	assert_int_equal(kobo_keyring_start(NULL, 0, &ring), KOBO_EINVAL);
	assert_int_equal(kobo_keyring_start(&f->base, KOBO_KEYRING_REFRESH_MS_MAX + 1, &ring),
	                 KOBO_EINVAL);
	fake_free(f);
}

static void bounded_and_valid_rows_only(void **state)
{
	(void)state;
	fake_store *f = fake_new();
	char text[KOBO_KEY_TEXT_LEN + 1];
	/* Rows no key text can name, or with no scope: skipped. */
	fake_add(f, KOBO_SCOPE_ADMIN, text);
	f->keys[0].id[0] = 'A';
	fake_add(f, KOBO_SCOPE_ADMIN, text);
	f->keys[1].scopes = 0;
	fake_add(f, KOBO_SCOPE_ADMIN, text);
	f->keys[2].scopes = 0x40;
	char good[KOBO_KEY_TEXT_LEN + 1];
	fake_add(f, KOBO_SCOPE_ADMIN, good);
	kobo_keyring *ring;
	assert_int_equal(kobo_keyring_start(&f->base, 60000, &ring), KOBO_OK);
	assert_int_equal(kobo_keyring_count(ring), 1);
	assert_int_equal(check(ring, good), KOBO_KEYRING_OK);

	/* More live keys than KOBO_KEYS_MAX: the view is cut there, the
	 * refresh reports it (counted), and the keys it holds still work. */
	while (f->count < FAKE_KEYS_MAX)
		fake_add(f, KOBO_SCOPE_ACCOUNTS_READ, text);
	assert_int_equal(kobo_keyring_refresh_wait(ring, 30000), KOBO_EFULL);
	assert_int_equal(kobo_keyring_count(ring), KOBO_KEYS_MAX);
	assert_int_equal(check(ring, good), KOBO_KEYRING_OK);
	assert_int_equal(check(ring, text), KOBO_KEYRING_UNKNOWN); /* past the cut */
	kobo_keyring_stop(ring);
	fake_free(f);
}

/* Lookups from several threads while the ring swaps views as fast as it
 * can: a key never revoked always passes, one revoked and restored flips. */
typedef struct hammer {
	kobo_keyring *ring;
	const char *text;
	atomic_bool *stop;
	long checks;
	long failures;
} hammer;

static void *hammer_main(void *arg)
{
	hammer *h = arg;
	while (!atomic_load(h->stop)) {
		if (check(h->ring, h->text) != KOBO_KEYRING_OK)
			h->failures++;
		h->checks++;
	}
	return NULL;
}

static void many_threads_while_swapping(void **state)
{
	(void)state;
	fake_store *f = fake_new();
	char text[KOBO_KEY_TEXT_LEN + 1], other[KOBO_KEY_TEXT_LEN + 1];
	fake_add(f, KOBO_SCOPE_ADMIN, text);
	for (int i = 0; i < 100; i++)
		fake_add(f, KOBO_SCOPE_ACCOUNTS_READ, other);
	kobo_keyring *ring;
	assert_int_equal(kobo_keyring_start(&f->base, 1, &ring), KOBO_OK);
	atomic_bool stop;
	atomic_init(&stop, false);
	enum { THREADS = 4 };
	pthread_t threads[THREADS];
	hammer h[THREADS];
	for (int i = 0; i < THREADS; i++) {
		h[i] = (hammer){ .ring = ring, .text = text, .stop = &stop };
		assert_int_equal(pthread_create(&threads[i], NULL, hammer_main, &h[i]), 0);
	}
	int reads_before = f->reads;
	for (int i = 0; i < 20; i++)
		assert_int_equal(kobo_keyring_refresh_wait(ring, 5000), KOBO_OK);
	atomic_store(&stop, true);
	long checks = 0;
	for (int i = 0; i < THREADS; i++) {
		pthread_join(threads[i], NULL);
		assert_int_equal(h[i].failures, 0);
		checks += h[i].checks;
	}
	assert_true(checks > 0);
	pthread_mutex_lock(&f->mutex);
	assert_true(f->reads - reads_before >= 20);
	pthread_mutex_unlock(&f->mutex);
	kobo_keyring_stop(ring);
	fake_free(f);
}

/* stop wakes the thread out of a long period at once, joins it and closes
 * its reader (fake_free checks no reader is left open). */
static void stop_joins_the_thread(void **state)
{
	(void)state;
	fake_store *f = fake_new();
	kobo_keyring *ring;
	assert_int_equal(kobo_keyring_start(&f->base, KOBO_KEYRING_REFRESH_MS_MAX, &ring),
	                 KOBO_OK);
	assert_int_equal(kobo_keyring_refresh_wait(ring, 5000), KOBO_OK); /* opens its reader */
	pthread_mutex_lock(&f->mutex);
	assert_int_equal(f->readers_open, 1);
	pthread_mutex_unlock(&f->mutex);
	int64_t t0 = kobo_monotonic_us();
	kobo_keyring_stop(ring);
	assert_true(kobo_monotonic_us() - t0 < 10 * 1000 * 1000); /* far below the period */
	assert_int_equal(f->readers_open, 0);
	kobo_keyring_stop(NULL);
	fake_free(f);
}

/* The in-memory backend: keys written through the store's own key_insert
 * and key_revoke are seen and refused after a refresh. */
static void mem_store_insert_and_revoke(void **state)
{
	(void)state;
	kobo_store *store;
	assert_int_equal(kobo_store_open("mem:", 0, false, &store), KOBO_OK);
	kobo_api_key first = { .scopes = KOBO_SCOPE_ADMIN, .created_at_ms = 1 };
	strcpy(first.name, "first");
	char first_text[KOBO_KEY_TEXT_LEN + 1];
	assert_int_equal(kobo_key_generate(&first, first_text), KOBO_OK);
	assert_int_equal(kobo_store_key_insert(store, &first), KOBO_OK);

	kobo_keyring *ring;
	assert_int_equal(kobo_keyring_start(store, 60000, &ring), KOBO_OK);
	kobo_api_key k;
	assert_int_equal(kobo_keyring_authenticate(ring, first_text, KOBO_KEY_TEXT_LEN, &k),
	                 KOBO_KEYRING_OK);
	assert_string_equal(k.name, "first");
	assert_int_equal(k.scopes, KOBO_SCOPE_ADMIN);

	kobo_api_key second = { .scopes = KOBO_SCOPE_TRANSFERS_READ, .created_at_ms = 2 };
	strcpy(second.name, "second");
	char second_text[KOBO_KEY_TEXT_LEN + 1];
	assert_int_equal(kobo_key_generate(&second, second_text), KOBO_OK);
	assert_int_equal(kobo_store_key_insert(store, &second), KOBO_OK);
	assert_int_equal(check(ring, second_text), KOBO_KEYRING_UNKNOWN);
	assert_int_equal(kobo_keyring_refresh_wait(ring, 5000), KOBO_OK);
	assert_int_equal(check(ring, second_text), KOBO_KEYRING_OK);

	assert_int_equal(kobo_store_key_revoke(store, first.id, 3), KOBO_OK);
	assert_int_equal(check(ring, first_text), KOBO_KEYRING_OK);
	assert_int_equal(kobo_keyring_refresh_wait(ring, 5000), KOBO_OK);
	assert_int_equal(check(ring, first_text), KOBO_KEYRING_UNKNOWN);
	assert_int_equal(check(ring, second_text), KOBO_KEYRING_OK);
	assert_int_equal(kobo_keyring_count(ring), 1);
	kobo_keyring_stop(ring); /* closes its reader: the store may close now */
	kobo_store_close(store);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(loads_at_start_and_checks),
		cmocka_unit_test(inserted_and_revoked_after_start),
		cmocka_unit_test(periodic_refresh),
		cmocka_unit_test(failed_refresh_keeps_the_last_view),
		cmocka_unit_test(failed_first_load_fails_start),
		cmocka_unit_test(bounded_and_valid_rows_only),
		cmocka_unit_test(many_threads_while_swapping),
		cmocka_unit_test(stop_joins_the_thread),
		cmocka_unit_test(mem_store_insert_and_revoke),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
