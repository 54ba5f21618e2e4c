/*
 * test_limit.c — the GCRA table of src/limit/gcra.h against tables of
 * expected decisions: a burst from idle, the steady rate after it, recovery
 * after idle, a clock that does not move, huge gaps, a clock that goes
 * backwards (treated as not moving), the header values (remaining, reset,
 * retry-after), costs (batches, a cost above the burst), bad arguments,
 * and the bounded table: idle keys are reused, a full set evicts the
 * oldest TAT, memory never grows — and threads sharing a key admit exactly
 * what one thread would.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "../../src/limit/gcra.h"

#define S 1000000 /* one second in microseconds */

typedef struct step {
	int64_t now_us;
	uint32_t cost;
	bool allowed;
	uint32_t remaining;
	int64_t reset_us;
	int64_t retry_after_us;
} step;

/* Runs steps on one key of a fresh 10/s, burst 5 table (T = 100 ms). */
static void run(const step *steps, size_t n)
{
	kobo_gcra *g;
	assert_int_equal(kobo_gcra_create(10.0, 5, 64, &g), KOBO_OK);
	for (size_t i = 0; i < n; i++) {
		kobo_gcra_decision d;
		assert_int_equal(kobo_gcra_take(g, "10.0.0.1", 8, steps[i].cost,
		                                steps[i].now_us, &d), KOBO_OK);
		if (d.allowed != steps[i].allowed || d.remaining != steps[i].remaining ||
		    d.reset_us != steps[i].reset_us ||
		    d.retry_after_us != steps[i].retry_after_us)
			fail_msg("step %zu: got allowed %d remaining %u reset %lld retry %lld",
			         i, d.allowed, d.remaining, (long long)d.reset_us,
			         (long long)d.retry_after_us);
		assert_int_equal(d.limit, 5);
	}
	kobo_gcra_destroy(g);
}

#define T 100000 /* the emission interval at 10/s */

static void burst_then_refused(void **state)
{
	(void)state;
	const int64_t t0 = 1000 * (int64_t)S;
	static step steps[7];
	/* Five at once (the burst), the sixth refused until one T passes. */
	for (int i = 0; i < 5; i++)
		steps[i] = (step){ t0, 1, true, (uint32_t)(4 - i), (i + 1) * T, 0 };
	steps[5] = (step){ t0, 1, false, 0, 5 * T, T };
	steps[6] = (step){ t0 + T - 1, 1, false, 0, 5 * T - (T - 1), 1 };
	run(steps, 7);
}

static void steady_rate(void **state)
{
	(void)state;
	const int64_t t0 = 5 * (int64_t)S;
	step steps[5 + 2 * 4];
	size_t n = 0;
	for (int i = 0; i < 5; i++)
		steps[n++] = (step){ t0, 1, true, (uint32_t)(4 - i), (i + 1) * T, 0 };
	/* Then exactly one every T: each admitted, the next at once refused. */
	for (int k = 1; k <= 4; k++) {
		int64_t now = t0 + k * T;
		steps[n++] = (step){ now, 1, true, 0, 5 * T, 0 };
		steps[n++] = (step){ now, 1, false, 0, 5 * T, T };
	}
	run(steps, n);
}

static void recovery_after_idle_and_huge_gaps(void **state)
{
	(void)state;
	const int64_t t0 = 7 * (int64_t)S;
	step steps[] = {
		{ t0, 5, true, 0, 5 * T, 0 },               /* the whole burst */
		{ t0 + 2 * T, 1, true, 1, 4 * T, 0 },        /* two refilled, one taken */
		{ t0 + 10 * T, 1, true, 4, T, 0 },           /* idle: full burst again */
		{ t0 + 10 * T, 4, true, 0, 5 * T, 0 },
		/* A gap of ~100 years: nothing overflows, a full burst. */
		{ t0 + INT64_C(3155760000) * S, 1, true, 4, T, 0 },
		{ INT64_MAX / 2, 5, true, 0, 5 * T, 0 },
	};
	run(steps, sizeof(steps) / sizeof(steps[0]));
}

static void clock_still_and_backwards(void **state)
{
	(void)state;
	const int64_t t0 = 50 * (int64_t)S;
	step steps[] = {
		{ t0, 1, true, 4, T, 0 },
		{ t0, 1, true, 3, 2 * T, 0 },                 /* not moving: no refill */
		{ t0, 3, true, 0, 5 * T, 0 },
		{ t0 - 10 * S, 1, false, 0, 5 * T, T },       /* backwards = t0 */
		{ 0, 1, false, 0, 5 * T, T },                 /* far back: still t0 */
		{ t0 + T, 1, true, 0, 5 * T, 0 },             /* forward again */
		{ t0 - 1, 1, false, 0, 5 * T, T },            /* = t0 + T */
	};
	run(steps, sizeof(steps) / sizeof(steps[0]));
}

static void costs(void **state)
{
	(void)state;
	assert_int_equal(kobo_gcra_batch_cost(0), 1);
	assert_int_equal(kobo_gcra_batch_cost(1), 1);
	assert_int_equal(kobo_gcra_batch_cost(99), 1);
	assert_int_equal(kobo_gcra_batch_cost(100), 2);
	assert_int_equal(kobo_gcra_batch_cost(KOBO_BATCH_OPS_MAX), 82);
	const int64_t t0 = 9 * (int64_t)S;
	step steps[] = {
		{ t0, 3, true, 2, 3 * T, 0 },
		{ t0, 3, false, 2, 3 * T, T },  /* needs 3, has 2: refused whole */
		{ t0, 2, true, 0, 5 * T, 0 },
		/* A cost above the burst counts as the burst: admitted from idle. */
		{ t0 + 5 * T, 82, true, 0, 5 * T, 0 },
		{ t0 + 5 * T + 1, 82, false, 0, 5 * T - 1, 5 * T - 1 },
	};
	run(steps, sizeof(steps) / sizeof(steps[0]));
}

static void header_seconds(void **state)
{
	(void)state;
	assert_int_equal(kobo_gcra_seconds_up(0), 0);
	assert_int_equal(kobo_gcra_seconds_up(-5), 0);
	assert_int_equal(kobo_gcra_seconds_up(1), 1);
	assert_int_equal(kobo_gcra_seconds_up(S), 1);
	assert_int_equal(kobo_gcra_seconds_up(S + 1), 2);
	/* A slow limit: one a minute, burst 2 → retry after 60 s. */
	kobo_gcra *g;
	assert_int_equal(kobo_gcra_create(1.0 / 60, 2, 8, &g), KOBO_OK);
	assert_int_equal(kobo_gcra_interval_us(g), 60 * (int64_t)S);
	assert_int_equal(kobo_gcra_burst(g), 2);
	kobo_gcra_decision d;
	for (int i = 0; i < 2; i++) {
		assert_int_equal(kobo_gcra_take(g, "k", 1, 1, 0, &d), KOBO_OK);
		assert_true(d.allowed);
	}
	assert_int_equal(kobo_gcra_take(g, "k", 1, 1, 0, &d), KOBO_OK);
	assert_false(d.allowed);
	assert_int_equal(kobo_gcra_seconds_up(d.retry_after_us), 60);
	assert_int_equal(kobo_gcra_seconds_up(d.reset_us), 120);
	kobo_gcra_destroy(g);
}

static void bad_arguments(void **state)
{
	(void)state;
	kobo_gcra *g = NULL;
	assert_int_equal(kobo_gcra_create(0.0, 1, 64, &g), KOBO_EINVAL);
	assert_int_equal(kobo_gcra_create(-1.0, 1, 64, &g), KOBO_EINVAL);
	assert_int_equal(kobo_gcra_create(0.0 / 0.0, 1, 64, &g), KOBO_EINVAL);
	assert_int_equal(kobo_gcra_create(2e6, 1, 64, &g), KOBO_EINVAL);
	assert_int_equal(kobo_gcra_create(1.0, 0, 64, &g), KOBO_EINVAL);
	assert_int_equal(kobo_gcra_create(1.0, KOBO_GCRA_BURST_MAX + 1, 64, &g), KOBO_EINVAL);
	assert_int_equal(kobo_gcra_create(1.0, 1, 100, &g), KOBO_EINVAL); /* not 2^k */
	assert_int_equal(kobo_gcra_create(1.0, 1, 4, &g), KOBO_EINVAL);
	assert_int_equal(kobo_gcra_create(1.0, 1, KOBO_GCRA_KEYS_MAX * 2u, &g), KOBO_EINVAL);
	assert_null(g);
	assert_int_equal(kobo_gcra_create(1.0, 1, 64, &g), KOBO_OK);
	kobo_gcra_decision d = { .limit = 77 };
	char long_key[KOBO_GCRA_KEY_LEN_MAX + 1];
	memset(long_key, 'a', sizeof(long_key));
	assert_int_equal(kobo_gcra_take(g, long_key, sizeof(long_key), 1, 0, &d), KOBO_EINVAL);
	assert_int_equal(kobo_gcra_take(g, "k", 0, 1, 0, &d), KOBO_EINVAL);
	assert_int_equal(kobo_gcra_take(g, "k", 1, 0, 0, &d), KOBO_EINVAL);
	assert_int_equal(d.limit, 77); /* untouched */
	assert_int_equal(kobo_gcra_count(g), 0);
	assert_int_equal(kobo_gcra_take(g, long_key, KOBO_GCRA_KEY_LEN_MAX, 1, 0, &d), KOBO_OK);
	assert_true(d.allowed);
	kobo_gcra_destroy(g);
	kobo_gcra_destroy(NULL);
}

static void keys_are_apart(void **state)
{
	(void)state;
	kobo_gcra *g;
	assert_int_equal(kobo_gcra_create(1.0, 2, 1024, &g), KOBO_OK);
	kobo_gcra_decision d;
	/* Keys that share a prefix, and a key that is a prefix of another. */
	const char *keys[] = { "10.0.0.1", "10.0.0.10", "10.0.0.1\0x", "::1" };
	size_t lens[] = { 8, 9, 10, 3 };
	for (int k = 0; k < 4; k++) {
		for (int i = 0; i < 2; i++) {
			assert_int_equal(kobo_gcra_take(g, keys[k], lens[k], 1, 0, &d), KOBO_OK);
			assert_true(d.allowed);
		}
		assert_int_equal(kobo_gcra_take(g, keys[k], lens[k], 1, 0, &d), KOBO_OK);
		assert_false(d.allowed);
	}
	assert_int_equal(kobo_gcra_count(g), 4);
	kobo_gcra_destroy(g);
}

/* One set of 8 slots (capacity 8): the table never holds more than 8. */
static void full_table_evicts(void **state)
{
	(void)state;
	kobo_gcra *g;
	assert_int_equal(kobo_gcra_create(1.0, 2, KOBO_GCRA_WAYS, &g), KOBO_OK);
	kobo_gcra_decision d;
	char key[16];
	/* Keys 0..7 at times 0..7 s, each taking its whole burst: live. */
	for (int k = 0; k < 8; k++) {
		int n = snprintf(key, sizeof(key), "k%d", k);
		assert_int_equal(kobo_gcra_take(g, key, (size_t)n, 2, k * (int64_t)S, &d), KOBO_OK);
		assert_true(d.allowed);
	}
	assert_int_equal(kobo_gcra_count(g), 8);
	/* At 7.5 s, k0..k5 are idle (TAT k+2 s <= 7.5 s); k6 (8 s), k7 (9 s)
	 * are live. */
	const int64_t t = 7 * (int64_t)S + S / 2;
	assert_int_equal(kobo_gcra_take(g, "k7", 2, 1, t, &d), KOBO_OK);
	assert_false(d.allowed); /* TAT 9 s: a cost of 1 needs 8 s */
	/* A new key takes an idle slot: the live k6, k7 are kept. */
	assert_int_equal(kobo_gcra_take(g, "n1", 2, 2, t, &d), KOBO_OK);
	assert_true(d.allowed);
	assert_int_equal(kobo_gcra_count(g), 8);
	assert_int_equal(kobo_gcra_take(g, "k6", 2, 2, t, &d), KOBO_OK);
	assert_false(d.allowed); /* still remembered: TAT 8 s */
	/* n2..n6 take the five other idle slots: every slot is live now. */
	for (int k = 2; k <= 6; k++) {
		int n = snprintf(key, sizeof(key), "n%d", k);
		assert_int_equal(kobo_gcra_take(g, key, (size_t)n, 2, t + k, &d), KOBO_OK);
		assert_true(d.allowed);
	}
	assert_int_equal(kobo_gcra_count(g), 8);
	/* Full of live keys: a new key evicts the oldest TAT, k6 (8 s)… */
	assert_int_equal(kobo_gcra_take(g, "x", 1, 2, t + 10, &d), KOBO_OK);
	assert_true(d.allowed);
	assert_int_equal(kobo_gcra_count(g), 8);
	/* …so k6 is forgotten: a full burst again (documented), evicting k7. */
	assert_int_equal(kobo_gcra_take(g, "k6", 2, 2, t + 11, &d), KOBO_OK);
	assert_true(d.allowed);
	assert_int_equal(kobo_gcra_take(g, "k7", 2, 2, t + 12, &d), KOBO_OK);
	assert_true(d.allowed); /* evicts n1 (TAT t + 2 s, the oldest) */
	assert_int_equal(kobo_gcra_take(g, "n1", 2, 2, t + 13, &d), KOBO_OK);
	assert_true(d.allowed); /* evicts n2 */
	/* A live key that was not the oldest is still limited. */
	assert_int_equal(kobo_gcra_take(g, "n3", 2, 2, t + 14, &d), KOBO_OK);
	assert_false(d.allowed);
	assert_int_equal(kobo_gcra_count(g), 8);
	/* Many new keys: the table never holds more than its capacity. */
	for (int k = 0; k < 1000; k++) {
		int n = snprintf(key, sizeof(key), "m%d", k);
		assert_int_equal(kobo_gcra_take(g, key, (size_t)n, 1, t + 100 + k, &d), KOBO_OK);
		assert_true(d.allowed);
		assert_true(kobo_gcra_count(g) <= 8);
	}
	assert_int_equal(kobo_gcra_count(g), 8);
	kobo_gcra_destroy(g);
}

/* Many keys in the default table: bounded by its capacity. */
static void default_table_bounded(void **state)
{
	(void)state;
	kobo_gcra *g;
	assert_int_equal(kobo_gcra_create(100.0, 10, KOBO_GCRA_KEYS_DEFAULT, &g), KOBO_OK);
	kobo_gcra_decision d;
	char key[32];
	for (uint32_t k = 0; k < 3 * KOBO_GCRA_KEYS_DEFAULT; k++) {
		int n = snprintf(key, sizeof(key), "192.168.%u.%u", k >> 8, k & 255);
		assert_int_equal(kobo_gcra_take(g, key, (size_t)n, 1, 1000, &d), KOBO_OK);
		assert_true(d.allowed); /* each new key (or evicted one) has its burst */
	}
	assert_true(kobo_gcra_count(g) <= KOBO_GCRA_KEYS_DEFAULT);
	assert_true(kobo_gcra_count(g) > KOBO_GCRA_KEYS_DEFAULT / 2);
	kobo_gcra_destroy(g);
}

/* Four threads hammer one key at a still clock: exactly the burst passes. */
typedef struct hammer {
	kobo_gcra *g;
	int allowed;
} hammer;

static void *hammer_run(void *arg)
{
	hammer *h = arg;
	for (int i = 0; i < 10000; i++) {
		kobo_gcra_decision d;
		if (kobo_gcra_take(h->g, "shared", 6, 1, 42, &d) == KOBO_OK && d.allowed)
			h->allowed++;
	}
	return NULL;
}

static void threads_share_a_key(void **state)
{
	(void)state;
	kobo_gcra *g;
	assert_int_equal(kobo_gcra_create(1.0, 100, 64, &g), KOBO_OK);
	hammer h[4];
	pthread_t t[4];
	for (int i = 0; i < 4; i++) {
		h[i] = (hammer){ g, 0 };
		assert_int_equal(pthread_create(&t[i], NULL, hammer_run, &h[i]), 0);
	}
	int total = 0;
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		total += h[i].allowed;
	}
	assert_int_equal(total, 100);
	kobo_gcra_destroy(g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(burst_then_refused),
		cmocka_unit_test(steady_rate),
		cmocka_unit_test(recovery_after_idle_and_huge_gaps),
		cmocka_unit_test(clock_still_and_backwards),
		cmocka_unit_test(costs),
		cmocka_unit_test(header_seconds),
		cmocka_unit_test(bad_arguments),
		cmocka_unit_test(keys_are_apart),
		cmocka_unit_test(full_table_evicts),
		cmocka_unit_test(default_table_bounded),
		cmocka_unit_test(threads_share_a_key),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
