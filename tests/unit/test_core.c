/*
 * test_core.c — what src/core promises every layer: the id hash is plain
 * FNV-1a 64 (published test vectors; the shard map's partitions depend on
 * it), the seeded and byte variants agree with it, kobo_assert stops the
 * process, and the bounded id table finds what was inserted, refuses past
 * its capacity, resets, removes its newest entries exactly (no tombstones),
 * and keeps colliding ids apart — checked against a plain array model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../src/core/core.h"

/* ---- The id hash. ---- */

static void hash_is_plain_fnv1a64(void **state)
{
	(void)state;
	/* Published FNV-1a 64 vectors (Fowler/Noll/Vo test suite). */
	assert_true(kobo_hash_id("") == 0xcbf29ce484222325ull);
	assert_true(kobo_hash_id("a") == 0xaf63dc4c8601ec8cull);
	assert_true(kobo_hash_id("foobar") == 0x85944171f73967e8ull);
}

static void hash_variants_agree(void **state)
{
	(void)state;
	static const char *const ids[] = {"", "a", "wallet:42", "cash:NGN",
	                                  "kobo:clearing:0:1:NGN"};
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
		const char *id = ids[i];
		size_t len = strlen(id);
		assert_true(kobo_hash_bytes(id, len, 0) == kobo_hash_id(id));
		assert_true(kobo_hash_id_seeded(id, 0) == kobo_hash_id(id));
		for (uint64_t seed = 1; seed < 8; seed++) {
			assert_true(kobo_hash_id_seeded(id, seed) ==
			            kobo_hash_bytes(id, len, seed));
			assert_true(kobo_hash_id_seeded(id, seed) != kobo_hash_id(id));
		}
	}
}

/* Runs fn in a child with stderr silenced; returns the signal that ended it
 * (0 when it exited normally). */
static int signal_of_child(void (*fn)(void))
{
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int null_fd = open("/dev/null", O_WRONLY);
		if (null_fd >= 0)
			dup2(null_fd, STDERR_FILENO);
		fn();
		_exit(0);
	}
	int status = 0;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

static volatile int assert_input = 1;

static void failing_assert(void)
{
	kobo_assert(assert_input == 2);
}

static void holding_assert(void)
{
	kobo_assert(assert_input == 1);
}

static void assert_aborts_only_when_false(void **state)
{
	(void)state;
	assert_int_equal(signal_of_child(failing_assert), SIGABRT);
	assert_int_equal(signal_of_child(holding_assert), 0);
}

/* ---- The bounded id table. ---- */

#define RECORDS_MAX 512

typedef struct record {
	char id[KOBO_ID_LEN_MAX + 1];
} record;

static record records[RECORDS_MAX];

static const char *record_key(const void *base, uint32_t slot)
{
	return ((const record *)base)[slot].id;
}

static kobo_id_table *table_new(uint32_t capacity)
{
	kobo_id_table *table = NULL;
	assert_int_equal(kobo_id_table_create(capacity, record_key, records, &table),
	                 KOBO_OK);
	assert_non_null(table);
	assert_int_equal(kobo_id_table_count(table), 0);
	assert_int_equal(kobo_id_table_capacity(table), capacity);
	return table;
}

/* Puts id in records[slot] and the table. */
static int put(kobo_id_table *table, uint32_t slot, const char *id)
{
	snprintf(records[slot].id, sizeof(records[slot].id), "%s", id);
	return kobo_id_table_insert(table, records[slot].id, slot);
}

static void expect_slot(const kobo_id_table *table, const char *id,
                        uint32_t expected)
{
	uint32_t slot = UINT32_MAX;
	int rc = kobo_id_table_find(table, id, &slot);
	if (rc != KOBO_OK || slot != expected)
		fail_msg("find(%s): expected slot %u, saw status %d slot %u", id,
		         expected, rc, slot);
}

static void expect_absent(const kobo_id_table *table, const char *id)
{
	uint32_t slot = 12345;
	int rc = kobo_id_table_find(table, id, &slot);
	if (rc != KOBO_ENOTFOUND || slot != 12345)
		fail_msg("find(%s): expected not found, saw status %d slot %u", id,
		         rc, slot);
}

static void table_create_refuses_bad_arguments(void **state)
{
	(void)state;
	kobo_id_table *table = NULL;
	assert_int_equal(kobo_id_table_create(0, record_key, records, &table),
	                 KOBO_EINVAL);
	assert_int_equal(kobo_id_table_create(KOBO_ID_TABLE_CAPACITY_MAX + 1,
	                                      record_key, records, &table),
	                 KOBO_EINVAL);
	assert_int_equal(kobo_id_table_create(4, NULL, records, &table), KOBO_EINVAL);
	assert_int_equal(kobo_id_table_create(4, record_key, records, NULL),
	                 KOBO_EINVAL);
	assert_null(table);
	kobo_id_table_destroy(NULL); /* allowed */
}

static void table_finds_what_was_inserted(void **state)
{
	(void)state;
	kobo_id_table *table = table_new(4);
	expect_absent(table, "alice");
	assert_int_equal(put(table, 0, "alice"), KOBO_OK);
	assert_int_equal(put(table, 1, "bob"), KOBO_OK);
	/* Slots need not follow insertion order. */
	assert_int_equal(put(table, 3, "carol"), KOBO_OK);
	assert_int_equal(kobo_id_table_count(table), 3);
	expect_slot(table, "alice", 0);
	expect_slot(table, "bob", 1);
	expect_slot(table, "carol", 3);
	expect_absent(table, "dave");
	expect_absent(table, "");
	expect_absent(table, "alic");
	kobo_id_table_destroy(table);
}

static void table_full_refuses_and_changes_nothing(void **state)
{
	(void)state;
	kobo_id_table *table = table_new(3);
	assert_int_equal(put(table, 0, "a"), KOBO_OK);
	assert_int_equal(put(table, 1, "b"), KOBO_OK);
	assert_int_equal(put(table, 2, "c"), KOBO_OK);
	assert_int_equal(put(table, 3, "d"), KOBO_EFULL);
	assert_int_equal(kobo_id_table_count(table), 3);
	expect_absent(table, "d");
	expect_slot(table, "a", 0);
	expect_slot(table, "b", 1);
	expect_slot(table, "c", 2);
	/* Room again after a removal. */
	kobo_id_table_truncate(table, 2);
	assert_int_equal(put(table, 2, "d"), KOBO_OK);
	expect_slot(table, "d", 2);
	expect_absent(table, "c");
	kobo_id_table_destroy(table);
}

static void table_reset_forgets_everything(void **state)
{
	(void)state;
	kobo_id_table *table = table_new(64);
	char id[16];
	for (int round = 0; round < 3; round++) {
		for (uint32_t i = 0; i < 64; i++) {
			snprintf(id, sizeof(id), "r%d-%u", round, i);
			assert_int_equal(put(table, i, id), KOBO_OK);
		}
		assert_int_equal(put(table, 64, "one too many"), KOBO_EFULL);
		kobo_id_table_reset(table);
		assert_int_equal(kobo_id_table_count(table), 0);
		for (uint32_t i = 0; i < 64; i++) {
			snprintf(id, sizeof(id), "r%d-%u", round, i);
			expect_absent(table, id);
		}
	}
	kobo_id_table_destroy(table);
}

/* n ids of the form "<prefix><k>" whose hashes fall in one bucket of a
 * table with bucket_count buckets, written to out. */
static void colliding_ids(const char *prefix, uint32_t bucket,
                          uint32_t bucket_count, char (*out)[16], int n)
{
	int found = 0;
	for (uint32_t k = 0; found < n; k++) {
		char id[16];
		snprintf(id, sizeof(id), "%s%u", prefix, k);
		if ((kobo_hash_id(id) & (bucket_count - 1)) == bucket)
			memcpy(out[found++], id, sizeof(id));
	}
}

static void table_keeps_colliding_ids_apart(void **state)
{
	(void)state;
	/* Capacity 8: 16 buckets. Six ids of bucket 14 fill 14, 15 and wrap
	 * around to 0..3; two ids of bucket 1 land behind them. */
	kobo_id_table *table = table_new(8);
	char high[6][16], low[2][16];
	colliding_ids("h", 14, 16, high, 6);
	colliding_ids("l", 1, 16, low, 2);
	for (uint32_t i = 0; i < 6; i++)
		assert_int_equal(put(table, i, high[i]), KOBO_OK);
	for (uint32_t i = 0; i < 2; i++)
		assert_int_equal(put(table, 6 + i, low[i]), KOBO_OK);
	for (uint32_t i = 0; i < 6; i++)
		expect_slot(table, high[i], i);
	for (uint32_t i = 0; i < 2; i++)
		expect_slot(table, low[i], 6 + i);

	/* Removing the newest keeps every older id reachable: the runs they
	 * probe through are untouched. */
	kobo_id_table_truncate(table, 5);
	expect_absent(table, low[0]);
	expect_absent(table, low[1]);
	expect_absent(table, high[5]);
	for (uint32_t i = 0; i < 5; i++)
		expect_slot(table, high[i], i);
	kobo_id_table_destroy(table);
}

static void table_truncate_restores_the_earlier_table(void **state)
{
	(void)state;
	kobo_id_table *table = table_new(32);
	char id[16];
	for (uint32_t i = 0; i < 20; i++) {
		snprintf(id, sizeof(id), "t%u", i);
		assert_int_equal(put(table, i, id), KOBO_OK);
	}
	kobo_id_table_truncate(table, 20); /* nothing to remove */
	assert_int_equal(kobo_id_table_count(table), 20);
	kobo_id_table_truncate(table, 12);
	assert_int_equal(kobo_id_table_count(table), 12);
	for (uint32_t i = 0; i < 20; i++) {
		snprintf(id, sizeof(id), "t%u", i);
		if (i < 12)
			expect_slot(table, id, i);
		else
			expect_absent(table, id);
	}
	/* The removed ids can come back, in other slots. */
	for (uint32_t i = 12; i < 20; i++) {
		snprintf(id, sizeof(id), "t%u", 31 - i);
		assert_int_equal(put(table, i, id), KOBO_OK);
	}
	for (uint32_t i = 12; i < 20; i++) {
		snprintf(id, sizeof(id), "t%u", 31 - i);
		expect_slot(table, id, i);
	}
	kobo_id_table_truncate(table, 0);
	assert_int_equal(kobo_id_table_count(table), 0);
	expect_absent(table, "t0");
	kobo_id_table_destroy(table);
}

static kobo_id_table *duplicate_table;

static void insert_duplicate(void)
{
	put(duplicate_table, 1, "same");
}

static void truncate_past_count(void)
{
	kobo_id_table_truncate(duplicate_table, 5);
}

static void table_misuse_aborts(void **state)
{
	(void)state;
	duplicate_table = table_new(4);
	assert_int_equal(put(duplicate_table, 0, "same"), KOBO_OK);
	assert_int_equal(signal_of_child(insert_duplicate), SIGABRT);
	assert_int_equal(signal_of_child(truncate_past_count), SIGABRT);
	kobo_id_table_destroy(duplicate_table);
}

/* A seeded random run against a model (the live ids are exactly slots
 * 0..count-1, as in the ledger): inserts of fresh and repeated ids, finds,
 * truncations and resets, with small ids so that collisions are common. */
static void table_matches_a_model(void **state)
{
	(void)state;
	enum { CAPACITY = 200, STEPS = 20000 };
	kobo_id_table *table = table_new(CAPACITY);
	uint32_t count = 0;
	unsigned seed = 8;
	srand(seed);
	char id[16];
	for (int step = 0; step < STEPS; step++) {
		int action = rand() % 100;
		snprintf(id, sizeof(id), "%d", rand() % 400);
		int64_t at = -1;
		for (uint32_t i = 0; i < count; i++)
			if (strcmp(records[i].id, id) == 0)
				at = i;
		if (action < 60) {
			if (at >= 0) {
				expect_slot(table, id, (uint32_t)at);
			} else if (count == CAPACITY) {
				assert_int_equal(put(table, count, id), KOBO_EFULL);
			} else {
				assert_int_equal(put(table, count, id), KOBO_OK);
				count++;
			}
		} else if (action < 97) {
			if (at >= 0)
				expect_slot(table, id, (uint32_t)at);
			else
				expect_absent(table, id);
		} else if (action < 99) {
			count = count ? (uint32_t)rand() % count : 0;
			kobo_id_table_truncate(table, count);
		} else {
			count = 0;
			kobo_id_table_reset(table);
		}
		assert_int_equal(kobo_id_table_count(table), count);
	}
	for (uint32_t i = 0; i < count; i++)
		expect_slot(table, records[i].id, i);
	kobo_id_table_destroy(table);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(hash_is_plain_fnv1a64),
		cmocka_unit_test(hash_variants_agree),
		cmocka_unit_test(assert_aborts_only_when_false),
		cmocka_unit_test(table_create_refuses_bad_arguments),
		cmocka_unit_test(table_finds_what_was_inserted),
		cmocka_unit_test(table_full_refuses_and_changes_nothing),
		cmocka_unit_test(table_reset_forgets_everything),
		cmocka_unit_test(table_keeps_colliding_ids_apart),
		cmocka_unit_test(table_truncate_restores_the_earlier_table),
		cmocka_unit_test(table_misuse_aborts),
		cmocka_unit_test(table_matches_a_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
