/*
 * test_store_hot_tables.c — the in-memory tables of the journaled store
 * (src/store/hot/tables.h):
 *
 *   hot_accounts  stores whole copies (metadata too: the caller's buffer is
 *                 reused after put), a known id changes only its balances
 *                 in place, a full table refuses new ids and changes
 *                 nothing;
 *   hot_recent    one entry per id holding its newest copy and seq, a put
 *                 of a known id moves it to the back of the seq order,
 *                 drop_upto removes oldest first and only seq <= upto,
 *                 full refuses, a seq going down aborts; a seeded random
 *                 run of 10^5 steps against a plain array model
 *                 (KOBO_SEED replays one);
 *   hot_idset     no false negatives over 10^6 ids, count exact,
 *                 duplicates counted once, full refuses, room().
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
#include <time.h>
#include <unistd.h>

#include "../../src/store/hot/tables.h"

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

/* Fills buffer with len bytes that depend on tag, so two tags differ. */
static void fill_pattern(char *buffer, size_t len, unsigned tag)
{
	for (size_t i = 0; i < len; i++)
		buffer[i] = (char)('a' + (tag * 7 + i * 13) % 26);
}

static void expect_pattern(const char *bytes, size_t len, unsigned tag)
{
	char expected[8192];
	assert_true(len <= sizeof(expected));
	fill_pattern(expected, len, tag);
	assert_memory_equal(bytes, expected, len);
}

/* ======================================================================
 * hot_accounts
 * ====================================================================== */

static kobo_account account_of(const char *id, const char *metadata,
                               uint32_t metadata_len)
{
	kobo_account account;
	memset(&account, 0, sizeof(account));
	snprintf(account.id, sizeof(account.id), "%s", id);
	snprintf(account.currency, sizeof(account.currency), "NGN");
	account.allow_negative = false;
	account.posted = 100;
	account.pending_out = 7;
	account.pending_in = 3;
	account.metadata = metadata;
	account.metadata_len = metadata_len;
	account.created_at_ms = 1700000000000;
	snprintf(account.created_by, sizeof(account.created_by), "0123456789abcdef");
	return account;
}

static void accounts_create_refuses_bad_arguments(void **state)
{
	(void)state;
	hot_accounts *accounts = NULL;
	assert_int_equal(hot_accounts_create(0, &accounts), KOBO_EINVAL);
	assert_int_equal(hot_accounts_create(KOBO_ID_TABLE_CAPACITY_MAX + 1, &accounts),
	                 KOBO_EINVAL);
	assert_int_equal(hot_accounts_create(4, NULL), KOBO_EINVAL);
	assert_null(accounts);
	assert_int_equal(hot_accounts_create(4, &accounts), KOBO_OK);
	assert_int_equal(hot_accounts_capacity(accounts), 4);
	assert_int_equal(hot_accounts_count(accounts), 0);
	hot_accounts_destroy(accounts);
	hot_accounts_destroy(NULL);
}

static void accounts_store_a_copy_with_its_metadata(void **state)
{
	(void)state;
	hot_accounts *accounts = NULL;
	assert_int_equal(hot_accounts_create(8, &accounts), KOBO_OK);
	char buffer[64];
	snprintf(buffer, sizeof(buffer), "{\"owner\":\"ada\"}");
	uint32_t len = (uint32_t)strlen(buffer);
	kobo_account account = account_of("wallet:1", buffer, len);
	assert_int_equal(hot_accounts_put(accounts, &account), KOBO_OK);
	/* The caller reuses both its struct and its buffer. */
	memset(buffer, 'x', sizeof(buffer));
	account = account_of("wallet:2", buffer, 3);
	account.posted = -5;
	account.allow_negative = true;
	assert_int_equal(hot_accounts_put(accounts, &account), KOBO_OK);
	memset(buffer, 'y', sizeof(buffer));
	memset(&account, 0, sizeof(account));

	const kobo_account *one = hot_accounts_find(accounts, "wallet:1");
	assert_non_null(one);
	assert_string_equal(one->id, "wallet:1");
	assert_string_equal(one->currency, "NGN");
	assert_false(one->allow_negative);
	assert_true(one->posted == 100 && one->pending_out == 7 && one->pending_in == 3);
	assert_int_equal(one->metadata_len, len);
	assert_memory_equal(one->metadata, "{\"owner\":\"ada\"}", len);
	assert_true(one->metadata != buffer);
	assert_true(one->created_at_ms == 1700000000000);
	assert_string_equal(one->created_by, "0123456789abcdef");

	const kobo_account *two = hot_accounts_find(accounts, "wallet:2");
	assert_non_null(two);
	assert_true(two->allow_negative);
	assert_true(two->posted == -5);
	assert_int_equal(two->metadata_len, 3);
	assert_memory_equal(two->metadata, "xxx", 3);

	assert_null(hot_accounts_find(accounts, "wallet:3"));
	assert_null(hot_accounts_find(accounts, ""));
	assert_int_equal(hot_accounts_count(accounts), 2);

	/* Zero-length metadata still gives a non-NULL pointer. */
	account = account_of("wallet:3", NULL, 0);
	assert_int_equal(hot_accounts_put(accounts, &account), KOBO_OK);
	const kobo_account *three = hot_accounts_find(accounts, "wallet:3");
	assert_non_null(three);
	assert_non_null(three->metadata);
	assert_int_equal(three->metadata_len, 0);
	hot_accounts_destroy(accounts);
}

static void accounts_put_of_a_known_id_changes_only_balances(void **state)
{
	(void)state;
	hot_accounts *accounts = NULL;
	assert_int_equal(hot_accounts_create(4, &accounts), KOBO_OK);
	kobo_account account = account_of("cash", "{\"a\":1}", 7);
	assert_int_equal(hot_accounts_put(accounts, &account), KOBO_OK);
	const kobo_account *stored = hot_accounts_find(accounts, "cash");
	const char *metadata = stored->metadata;

	kobo_account update = account_of("cash", "{\"other\":2}", 11);
	update.posted = -42;
	update.pending_out = 1000;
	update.pending_in = 2000;
	update.allow_negative = true;
	update.created_at_ms = 5;
	update.created_by[0] = '\0';
	assert_int_equal(hot_accounts_put(accounts, &update), KOBO_OK);

	assert_ptr_equal(hot_accounts_find(accounts, "cash"), stored);
	assert_true(stored->posted == -42);
	assert_true(stored->pending_out == 1000);
	assert_true(stored->pending_in == 2000);
	assert_false(stored->allow_negative);
	assert_true(stored->created_at_ms == 1700000000000);
	assert_string_equal(stored->created_by, "0123456789abcdef");
	assert_ptr_equal(stored->metadata, metadata);
	assert_int_equal(stored->metadata_len, 7);
	assert_memory_equal(stored->metadata, "{\"a\":1}", 7);
	assert_int_equal(hot_accounts_count(accounts), 1);

	/* Putting back the record find gave is fine too. */
	assert_int_equal(hot_accounts_put(accounts, stored), KOBO_OK);
	assert_true(stored->posted == -42);
	hot_accounts_destroy(accounts);
}

static void accounts_full_refuses_new_ids_and_changes_nothing(void **state)
{
	(void)state;
	hot_accounts *accounts = NULL;
	assert_int_equal(hot_accounts_create(3, &accounts), KOBO_OK);
	char id[16];
	for (int i = 0; i < 3; i++) {
		snprintf(id, sizeof(id), "a%d", i);
		kobo_account account = account_of(id, "{}", 2);
		assert_int_equal(hot_accounts_put(accounts, &account), KOBO_OK);
	}
	kobo_account extra = account_of("a3", "{}", 2);
	assert_int_equal(hot_accounts_put(accounts, &extra), KOBO_EFULL);
	assert_int_equal(hot_accounts_count(accounts), 3);
	assert_null(hot_accounts_find(accounts, "a3"));
	/* A known id still updates when the table is full. */
	kobo_account update = account_of("a1", "{}", 2);
	update.posted = 9;
	assert_int_equal(hot_accounts_put(accounts, &update), KOBO_OK);
	assert_true(hot_accounts_find(accounts, "a1")->posted == 9);
	for (int i = 0; i < 3; i++) {
		snprintf(id, sizeof(id), "a%d", i);
		assert_non_null(hot_accounts_find(accounts, id));
	}
	hot_accounts_destroy(accounts);
}

/* Many accounts with metadata of every size up to the limit, and one far
 * past a chunk of the arena: all stay intact and where find says. */
static void accounts_keep_many_metadata_intact(void **state)
{
	(void)state;
	enum { COUNT = 5000 };
	hot_accounts *accounts = NULL;
	assert_int_equal(hot_accounts_create(COUNT + 1, &accounts), KOBO_OK);
	static char buffer[100000];
	char id[32];
	const kobo_account *stored[COUNT];
	for (unsigned i = 0; i < COUNT; i++) {
		uint32_t len = (i * 977u) % (KOBO_METADATA_BYTES_MAX + 1);
		fill_pattern(buffer, len, i);
		snprintf(id, sizeof(id), "acct-%u", i);
		kobo_account account = account_of(id, buffer, len);
		account.posted = i;
		assert_int_equal(hot_accounts_put(accounts, &account), KOBO_OK);
		stored[i] = hot_accounts_find(accounts, id);
		if (i == COUNT / 2) {
			/* An outsized one in the middle (the arena's own chunk). */
			fill_pattern(buffer, sizeof(buffer), 99);
			kobo_account big = account_of("big", buffer, sizeof(buffer));
			assert_int_equal(hot_accounts_put(accounts, &big), KOBO_OK);
		}
	}
	assert_int_equal(hot_accounts_count(accounts), COUNT + 1);
	for (unsigned i = 0; i < COUNT; i++) {
		snprintf(id, sizeof(id), "acct-%u", i);
		const kobo_account *account = hot_accounts_find(accounts, id);
		assert_ptr_equal(account, stored[i]);
		assert_true(account->posted == (int64_t)i);
		uint32_t len = (i * 977u) % (KOBO_METADATA_BYTES_MAX + 1);
		assert_int_equal(account->metadata_len, len);
		expect_pattern(account->metadata, len, i);
	}
	const kobo_account *big = hot_accounts_find(accounts, "big");
	assert_non_null(big);
	assert_int_equal(big->metadata_len, sizeof(buffer));
	char *expected = malloc(sizeof(buffer));
	assert_non_null(expected);
	fill_pattern(expected, sizeof(buffer), 99);
	assert_memory_equal(big->metadata, expected, sizeof(buffer));
	free(expected);
	hot_accounts_destroy(accounts);
}

static hot_accounts *misuse_accounts;

static void put_other_currency(void)
{
	kobo_account account = account_of("cash", "{}", 2);
	snprintf(account.currency, sizeof(account.currency), "USD");
	hot_accounts_put(misuse_accounts, &account);
}

static void accounts_currency_change_aborts(void **state)
{
	(void)state;
	assert_int_equal(hot_accounts_create(2, &misuse_accounts), KOBO_OK);
	kobo_account account = account_of("cash", "{}", 2);
	assert_int_equal(hot_accounts_put(misuse_accounts, &account), KOBO_OK);
	assert_int_equal(signal_of_child(put_other_currency), SIGABRT);
	hot_accounts_destroy(misuse_accounts);
}

/* ======================================================================
 * hot_recent
 * ====================================================================== */

static kobo_transfer transfer_of(const char *id, int64_t amount,
                                 const char *metadata, uint32_t metadata_len)
{
	kobo_transfer transfer;
	memset(&transfer, 0, sizeof(transfer));
	snprintf(transfer.id, sizeof(transfer.id), "%s", id);
	snprintf(transfer.from, sizeof(transfer.from), "payer");
	snprintf(transfer.to, sizeof(transfer.to), "payee");
	snprintf(transfer.currency, sizeof(transfer.currency), "NGN");
	snprintf(transfer.request_id, sizeof(transfer.request_id), "req-%s", id);
	transfer.amount = amount;
	transfer.status = KOBO_STATUS_POSTED;
	transfer.posted_amount = amount;
	transfer.metadata = metadata;
	transfer.metadata_len = metadata_len;
	transfer.created_at_ms = 1700000000000;
	transfer.updated_at_ms = 1700000000000;
	return transfer;
}

static void recent_create_refuses_bad_arguments(void **state)
{
	(void)state;
	hot_recent *recent = NULL;
	assert_int_equal(hot_recent_create(0, &recent), KOBO_EINVAL);
	assert_int_equal(hot_recent_create((1u << 28) + 1, &recent), KOBO_EINVAL);
	assert_int_equal(hot_recent_create(4, NULL), KOBO_EINVAL);
	assert_null(recent);
	assert_int_equal(hot_recent_create(4, &recent), KOBO_OK);
	assert_int_equal(hot_recent_capacity(recent), 4);
	assert_int_equal(hot_recent_count(recent), 0);
	assert_null(hot_recent_find(recent, "t", NULL));
	assert_int_equal(hot_recent_drop_upto(recent, UINT64_MAX), 0);
	hot_recent_destroy(recent);
	hot_recent_destroy(NULL);
}

static void recent_stores_a_copy_with_its_metadata(void **state)
{
	(void)state;
	hot_recent *recent = NULL;
	assert_int_equal(hot_recent_create(8, &recent), KOBO_OK);
	static char buffer[KOBO_METADATA_BYTES_MAX];
	/* Short (kept in the entry) and long (its own buffer) metadata. */
	fill_pattern(buffer, 20, 1);
	kobo_transfer transfer = transfer_of("t1", 10, buffer, 20);
	assert_int_equal(hot_recent_put(recent, &transfer, 5), KOBO_OK);
	fill_pattern(buffer, sizeof(buffer), 2);
	transfer = transfer_of("t2", 20, buffer, sizeof(buffer));
	transfer.leg = KOBO_LEG_DEBIT;
	snprintf(transfer.clearing, sizeof(transfer.clearing), "kobo:clearing:0:1:NGN");
	assert_int_equal(hot_recent_put(recent, &transfer, 6), KOBO_OK);
	transfer = transfer_of("t3", 30, NULL, 0);
	assert_int_equal(hot_recent_put(recent, &transfer, 6), KOBO_OK);
	memset(buffer, 'z', sizeof(buffer));
	memset(&transfer, 0, sizeof(transfer));

	uint64_t seq = 0;
	const kobo_transfer *one = hot_recent_find(recent, "t1", &seq);
	assert_non_null(one);
	assert_true(seq == 5);
	assert_string_equal(one->id, "t1");
	assert_string_equal(one->request_id, "req-t1");
	assert_true(one->amount == 10);
	assert_int_equal(one->metadata_len, 20);
	expect_pattern(one->metadata, 20, 1);

	const kobo_transfer *two = hot_recent_find(recent, "t2", &seq);
	assert_non_null(two);
	assert_true(seq == 6);
	assert_int_equal(two->leg, KOBO_LEG_DEBIT);
	assert_string_equal(two->clearing, "kobo:clearing:0:1:NGN");
	assert_int_equal(two->metadata_len, KOBO_METADATA_BYTES_MAX);
	expect_pattern(two->metadata, KOBO_METADATA_BYTES_MAX, 2);

	const kobo_transfer *three = hot_recent_find(recent, "t3", NULL);
	assert_non_null(three);
	assert_non_null(three->metadata);
	assert_int_equal(three->metadata_len, 0);

	assert_null(hot_recent_find(recent, "t4", &seq));
	assert_null(hot_recent_find(recent, "", &seq));
	char long_id[KOBO_ID_LEN_MAX + 8];
	memset(long_id, 'q', sizeof(long_id) - 1);
	long_id[sizeof(long_id) - 1] = '\0';
	assert_null(hot_recent_find(recent, long_id, &seq));
	assert_int_equal(hot_recent_count(recent), 3);
	hot_recent_destroy(recent); /* frees t2's own buffer (ASan checks) */
}

static void recent_replace_keeps_one_entry_and_moves_it_last(void **state)
{
	(void)state;
	hot_recent *recent = NULL;
	assert_int_equal(hot_recent_create(8, &recent), KOBO_OK);
	static char big[1000];
	fill_pattern(big, sizeof(big), 3);
	kobo_transfer a = transfer_of("a", 1, big, sizeof(big));
	kobo_transfer b = transfer_of("b", 2, "{}", 2);
	kobo_transfer c = transfer_of("c", 3, "{}", 2);
	assert_int_equal(hot_recent_put(recent, &a, 1), KOBO_OK);
	assert_int_equal(hot_recent_put(recent, &b, 2), KOBO_OK);
	assert_int_equal(hot_recent_put(recent, &c, 3), KOBO_OK);
	/* a's newer state: short metadata now, a later seq. */
	kobo_transfer a2 = transfer_of("a", 1, "{\"v\":2}", 7);
	a2.status = KOBO_STATUS_VOIDED;
	a2.void_reason = KOBO_VOID_VOIDED;
	assert_int_equal(hot_recent_put(recent, &a2, 4), KOBO_OK);
	assert_int_equal(hot_recent_count(recent), 3);
	uint64_t seq = 0;
	const kobo_transfer *found = hot_recent_find(recent, "a", &seq);
	assert_true(seq == 4);
	assert_int_equal(found->status, KOBO_STATUS_VOIDED);
	assert_int_equal(found->metadata_len, 7);
	assert_memory_equal(found->metadata, "{\"v\":2}", 7);

	/* a no longer sits first: dropping up to 3 leaves it. */
	assert_int_equal(hot_recent_drop_upto(recent, 3), 2);
	assert_int_equal(hot_recent_count(recent), 1);
	assert_null(hot_recent_find(recent, "b", NULL));
	assert_null(hot_recent_find(recent, "c", NULL));
	assert_non_null(hot_recent_find(recent, "a", NULL));

	/* Back to long metadata, at the same seq (seq may stay equal). */
	kobo_transfer a3 = transfer_of("a", 1, big, sizeof(big));
	assert_int_equal(hot_recent_put(recent, &a3, 4), KOBO_OK);
	found = hot_recent_find(recent, "a", &seq);
	assert_true(seq == 4);
	expect_pattern(found->metadata, sizeof(big), 3);

	/* Putting back exactly what find gave (long, then short metadata). */
	assert_int_equal(hot_recent_put(recent, found, 5), KOBO_OK);
	found = hot_recent_find(recent, "a", &seq);
	assert_true(seq == 5);
	assert_int_equal(found->metadata_len, sizeof(big));
	expect_pattern(found->metadata, sizeof(big), 3);
	assert_int_equal(hot_recent_put(recent, &a2, 6), KOBO_OK);
	found = hot_recent_find(recent, "a", NULL);
	assert_int_equal(hot_recent_put(recent, found, 7), KOBO_OK);
	found = hot_recent_find(recent, "a", &seq);
	assert_true(seq == 7);
	assert_memory_equal(found->metadata, "{\"v\":2}", 7);
	assert_int_equal(hot_recent_count(recent), 1);

	assert_int_equal(hot_recent_drop_upto(recent, 6), 0);
	assert_int_equal(hot_recent_drop_upto(recent, 7), 1);
	assert_int_equal(hot_recent_count(recent), 0);
	hot_recent_destroy(recent);
}

static void recent_drops_oldest_first_up_to_seq(void **state)
{
	(void)state;
	enum { COUNT = 100 };
	hot_recent *recent = NULL;
	assert_int_equal(hot_recent_create(COUNT, &recent), KOBO_OK);
	char id[16];
	/* Two transfers per seq: 10, 10, 11, 11, … */
	for (int i = 0; i < COUNT; i++) {
		snprintf(id, sizeof(id), "t%d", i);
		kobo_transfer t = transfer_of(id, i + 1, "{}", 2);
		assert_int_equal(hot_recent_put(recent, &t, 10 + (uint64_t)i / 2), KOBO_OK);
	}
	assert_int_equal(hot_recent_drop_upto(recent, 9), 0);
	assert_int_equal(hot_recent_drop_upto(recent, 10), 2);
	assert_int_equal(hot_recent_drop_upto(recent, 10), 0);
	assert_int_equal(hot_recent_drop_upto(recent, 14), 8);
	assert_int_equal(hot_recent_count(recent), COUNT - 10);
	for (int i = 0; i < COUNT; i++) {
		snprintf(id, sizeof(id), "t%d", i);
		uint64_t seq = 0;
		const kobo_transfer *t = hot_recent_find(recent, id, &seq);
		if (i < 10) {
			assert_null(t);
		} else {
			assert_non_null(t);
			assert_true(seq == 10 + (uint64_t)i / 2);
			assert_true(t->amount == i + 1);
		}
	}
	assert_int_equal(hot_recent_drop_upto(recent, UINT64_MAX), COUNT - 10);
	assert_int_equal(hot_recent_count(recent), 0);
	hot_recent_destroy(recent);
}

static void recent_full_refuses_new_ids_and_changes_nothing(void **state)
{
	(void)state;
	hot_recent *recent = NULL;
	assert_int_equal(hot_recent_create(2, &recent), KOBO_OK);
	kobo_transfer a = transfer_of("a", 1, "{}", 2);
	kobo_transfer b = transfer_of("b", 2, "{}", 2);
	kobo_transfer c = transfer_of("c", 3, "{}", 2);
	assert_int_equal(hot_recent_put(recent, &a, 1), KOBO_OK);
	assert_int_equal(hot_recent_put(recent, &b, 2), KOBO_OK);
	assert_int_equal(hot_recent_put(recent, &c, 3), KOBO_EFULL);
	assert_int_equal(hot_recent_count(recent), 2);
	assert_null(hot_recent_find(recent, "c", NULL));
	/* The refused put did not move anything: a is still the oldest. */
	assert_int_equal(hot_recent_drop_upto(recent, 1), 1);
	assert_null(hot_recent_find(recent, "a", NULL));
	/* A known id replaces when full; a drop makes room again. */
	assert_int_equal(hot_recent_put(recent, &a, 3), KOBO_OK);
	kobo_transfer b2 = transfer_of("b", 22, "{}", 2);
	assert_int_equal(hot_recent_put(recent, &b2, 4), KOBO_OK);
	assert_int_equal(hot_recent_put(recent, &c, 4), KOBO_EFULL);
	assert_true(hot_recent_find(recent, "b", NULL)->amount == 22);
	assert_int_equal(hot_recent_drop_upto(recent, 3), 1);
	assert_int_equal(hot_recent_put(recent, &c, 5), KOBO_OK);
	assert_int_equal(hot_recent_count(recent), 2);
	hot_recent_destroy(recent);
}

static hot_recent *misuse_recent;

static void put_lower_seq(void)
{
	kobo_transfer t = transfer_of("other", 1, "{}", 2);
	hot_recent_put(misuse_recent, &t, 9);
}

static void recent_seq_going_down_aborts(void **state)
{
	(void)state;
	assert_int_equal(hot_recent_create(4, &misuse_recent), KOBO_OK);
	kobo_transfer t = transfer_of("t", 1, "{}", 2);
	assert_int_equal(hot_recent_put(misuse_recent, &t, 10), KOBO_OK);
	/* Even after everything is dropped, the order of puts holds. */
	assert_int_equal(hot_recent_drop_upto(misuse_recent, 10), 1);
	assert_int_equal(signal_of_child(put_lower_seq), SIGABRT);
	hot_recent_destroy(misuse_recent);
}

/* ---- The random run against a model. ---- */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
	/* splitmix64: small, seedable, good enough to pick actions. */
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint32_t rng_below(uint32_t n)
{
	return (uint32_t)(rng_next() % n);
}

/* 400 ids for 100 entries: the table fills now and then (a few hundred
 * refused puts a run), and drops keep emptying it. */
enum { MODEL_IDS = 400, MODEL_CAPACITY = 100, MODEL_STEPS = 100000 };

typedef struct model_entry {
	bool present;
	uint64_t seq;
	int64_t amount;       /* differs on every put */
	uint32_t metadata_len;
	unsigned tag;         /* fill_pattern tag of the metadata */
} model_entry;

static model_entry model[MODEL_IDS];
static uint64_t model_seed;

#define model_check(condition)                                                 \
	do {                                                                   \
		if (!(condition)) {                                            \
			print_error("seed=%llu step=%d: %s\n",                 \
			            (unsigned long long)model_seed, step, #condition); \
			fail();                                                \
		}                                                              \
	} while (0)

static void recent_matches_a_model(void **state)
{
	(void)state;
	const char *env = getenv("KOBO_SEED");
	model_seed = env != NULL ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
	printf("hot_recent model: seed=%llu (replay with KOBO_SEED)\n",
	       (unsigned long long)model_seed);
	rng_state = model_seed;
	memset(model, 0, sizeof(model));
	hot_recent *recent = NULL;
	assert_int_equal(hot_recent_create(MODEL_CAPACITY, &recent), KOBO_OK);
	uint32_t count = 0;
	uint64_t seq = 1;
	int64_t next_amount = 1;
	static char buffer[KOBO_METADATA_BYTES_MAX];
	char id[16];
	for (int step = 0; step < MODEL_STEPS; step++) {
		uint32_t action = rng_below(100);
		uint32_t which = rng_below(MODEL_IDS);
		snprintf(id, sizeof(id), "tr-%u", which);
		model_entry *m = &model[which];
		if (action < 50) {
			/* put: often several in one seq, like a batch */
			if (rng_below(4) == 0)
				seq++;
			uint32_t len = rng_below(4) == 0 ? rng_below(KOBO_METADATA_BYTES_MAX + 1)
			                                 : rng_below(300);
			unsigned tag = (unsigned)step;
			fill_pattern(buffer, len, tag);
			kobo_transfer t = transfer_of(id, next_amount, buffer, len);
			int rc = hot_recent_put(recent, &t, seq);
			if (!m->present && count == MODEL_CAPACITY) {
				model_check(rc == KOBO_EFULL);
			} else {
				model_check(rc == KOBO_OK);
				if (!m->present)
					count++;
				*m = (model_entry){true, seq, next_amount, len, tag};
				next_amount++;
			}
			memset(buffer, 0, len);
		} else if (action < 90) {
			uint64_t got_seq = 0;
			const kobo_transfer *t = hot_recent_find(recent, id, &got_seq);
			if (!m->present) {
				model_check(t == NULL);
			} else {
				model_check(t != NULL);
				model_check(strcmp(t->id, id) == 0);
				model_check(got_seq == m->seq);
				model_check(t->amount == m->amount);
				model_check(t->metadata_len == m->metadata_len);
				char expected[KOBO_METADATA_BYTES_MAX];
				fill_pattern(expected, m->metadata_len, m->tag);
				model_check(memcmp(t->metadata, expected, m->metadata_len) == 0);
			}
		} else {
			/* drop_upto somewhere in the recent past */
			uint64_t back = rng_below(60);
			uint64_t upto = seq > back ? seq - back : 0;
			size_t expected = 0;
			for (uint32_t i = 0; i < MODEL_IDS; i++) {
				if (model[i].present && model[i].seq <= upto) {
					model[i].present = false;
					expected++;
				}
			}
			size_t dropped = hot_recent_drop_upto(recent, upto);
			model_check(dropped == expected);
			count -= (uint32_t)expected;
		}
		model_check(hot_recent_count(recent) == count);
	}
	int step = MODEL_STEPS;
	for (uint32_t i = 0; i < MODEL_IDS; i++) {
		snprintf(id, sizeof(id), "tr-%u", i);
		uint64_t got_seq = 0;
		const kobo_transfer *t = hot_recent_find(recent, id, &got_seq);
		model_check((t != NULL) == model[i].present);
		if (t != NULL)
			model_check(got_seq == model[i].seq && t->amount == model[i].amount);
	}
	hot_recent_destroy(recent);
}

/* ======================================================================
 * hot_idset
 * ====================================================================== */

static void idset_create_refuses_bad_arguments(void **state)
{
	(void)state;
	hot_idset *set = NULL;
	assert_int_equal(hot_idset_create(0, &set), KOBO_EINVAL);
	assert_int_equal(hot_idset_create((UINT64_C(1) << 32) + 1, &set), KOBO_EINVAL);
	assert_int_equal(hot_idset_create(4, NULL), KOBO_EINVAL);
	assert_null(set);
	assert_int_equal(hot_idset_create(1, &set), KOBO_OK);
	assert_true(hot_idset_capacity(set) == 1);
	assert_true(hot_idset_count(set) == 0);
	assert_false(hot_idset_maybe_contains(set, "x"));
	assert_int_equal(hot_idset_add(set, "x"), KOBO_OK);
	assert_true(hot_idset_maybe_contains(set, "x"));
	assert_int_equal(hot_idset_add(set, "y"), KOBO_EFULL);
	hot_idset_destroy(set);
	hot_idset_destroy(NULL);
}

/* 10^6 ids: every one found after the adds, the count exact, and ids never
 * added answer false (a 64-bit hash: a false positive among 10^5 lookups in
 * a set of 10^6 has odds near 10^-8). */
static void idset_has_no_false_negatives(void **state)
{
	(void)state;
	enum { COUNT = 1000000, ABSENT = 100000 };
	hot_idset *set = NULL;
	assert_int_equal(hot_idset_create(COUNT, &set), KOBO_OK);
	char id[32];
	for (uint32_t i = 0; i < COUNT; i++) {
		snprintf(id, sizeof(id), "transfer-%u", i);
		assert_int_equal(hot_idset_add(set, id), KOBO_OK);
	}
	assert_true(hot_idset_count(set) == COUNT);
	uint32_t missing = 0;
	for (uint32_t i = 0; i < COUNT; i++) {
		snprintf(id, sizeof(id), "transfer-%u", i);
		if (!hot_idset_maybe_contains(set, id))
			missing++;
	}
	assert_int_equal(missing, 0);
	uint32_t false_positives = 0;
	for (uint32_t i = 0; i < ABSENT; i++) {
		snprintf(id, sizeof(id), "other-%u", i);
		if (hot_idset_maybe_contains(set, id))
			false_positives++;
	}
	assert_int_equal(false_positives, 0);
	/* Full: no room, refuses a new id, changes nothing. */
	assert_true(hot_idset_room(set, 0));
	assert_false(hot_idset_room(set, 1));
	assert_int_equal(hot_idset_add(set, "one-more"), KOBO_EFULL);
	assert_true(hot_idset_count(set) == COUNT);
	assert_false(hot_idset_maybe_contains(set, "one-more"));
	/* A known id is still fine to add when full. */
	assert_int_equal(hot_idset_add(set, "transfer-7"), KOBO_OK);
	assert_true(hot_idset_count(set) == COUNT);
	hot_idset_destroy(set);
}

static void idset_counts_duplicates_once(void **state)
{
	(void)state;
	hot_idset *set = NULL;
	assert_int_equal(hot_idset_create(100, &set), KOBO_OK);
	char id[16];
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 40; i++) {
			snprintf(id, sizeof(id), "d%d", i);
			assert_int_equal(hot_idset_add(set, id), KOBO_OK);
		}
		assert_true(hot_idset_count(set) == 40);
	}
	assert_int_equal(hot_idset_add(set, ""), KOBO_OK);
	assert_true(hot_idset_maybe_contains(set, ""));
	assert_true(hot_idset_count(set) == 41);
	hot_idset_destroy(set);
}

static void idset_room_says_how_many_adds_fit(void **state)
{
	(void)state;
	hot_idset *set = NULL;
	assert_int_equal(hot_idset_create(5, &set), KOBO_OK);
	assert_true(hot_idset_room(set, 5));
	assert_false(hot_idset_room(set, 6));
	assert_false(hot_idset_room(set, UINT64_MAX));
	char id[16];
	for (int i = 0; i < 5; i++) {
		snprintf(id, sizeof(id), "r%d", i);
		assert_true(hot_idset_room(set, (uint64_t)(5 - i)));
		assert_false(hot_idset_room(set, (uint64_t)(6 - i)));
		assert_int_equal(hot_idset_add(set, id), KOBO_OK);
	}
	assert_true(hot_idset_room(set, 0));
	assert_false(hot_idset_room(set, 1));
	assert_int_equal(hot_idset_add(set, "r5"), KOBO_EFULL);
	assert_true(hot_idset_count(set) == 5);
	assert_true(hot_idset_capacity(set) == 5);
	hot_idset_destroy(set);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(accounts_create_refuses_bad_arguments),
		cmocka_unit_test(accounts_store_a_copy_with_its_metadata),
		cmocka_unit_test(accounts_put_of_a_known_id_changes_only_balances),
		cmocka_unit_test(accounts_full_refuses_new_ids_and_changes_nothing),
		cmocka_unit_test(accounts_keep_many_metadata_intact),
		cmocka_unit_test(accounts_currency_change_aborts),
		cmocka_unit_test(recent_create_refuses_bad_arguments),
		cmocka_unit_test(recent_stores_a_copy_with_its_metadata),
		cmocka_unit_test(recent_replace_keeps_one_entry_and_moves_it_last),
		cmocka_unit_test(recent_drops_oldest_first_up_to_seq),
		cmocka_unit_test(recent_full_refuses_new_ids_and_changes_nothing),
		cmocka_unit_test(recent_seq_going_down_aborts),
		cmocka_unit_test(recent_matches_a_model),
		cmocka_unit_test(idset_create_refuses_bad_arguments),
		cmocka_unit_test(idset_has_no_false_negatives),
		cmocka_unit_test(idset_counts_duplicates_once),
		cmocka_unit_test(idset_room_says_how_many_adds_fit),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
