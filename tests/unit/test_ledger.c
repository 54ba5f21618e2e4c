/*
 * test_ledger.c — the ledger's business rules, one behaviour per test.
 *
 * Each test builds the state it needs by putting accounts and transfers the
 * way a store would (or by applying ops), applies ops and checks results,
 * balances and change lists. Failures print the expected and the seen value
 * by name. The randomized counterpart is test_ledger_random.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "../../src/ledger/ledger.h"
#include "test_ops.h"

#define NOW_MS 1700000000000LL
#define OPS_MAX 64

/* ---- Checks that say what they expected and what they saw. ---- */

static void check_i64(const char *what, int64_t seen, int64_t expected,
                      const char *file, int line)
{
	if (seen != expected) {
		print_error("%s: expected %lld, saw %lld\n", what,
		            (long long)expected, (long long)seen);
		_fail(file, line);
	}
}

static void check_code(const char *what, kobo_result_code seen,
                       kobo_result_code expected, const char *file, int line)
{
	if (seen != expected) {
		print_error("%s: expected %s, saw %s\n", what,
		            kobo_result_code_name(expected),
		            kobo_result_code_name(seen));
		_fail(file, line);
	}
}

static void check_status(const char *what, kobo_transfer_status seen,
                         kobo_transfer_status expected, const char *file,
                         int line)
{
	if (seen != expected) {
		print_error("%s: expected %s, saw %s\n", what,
		            kobo_transfer_status_name(expected),
		            kobo_transfer_status_name(seen));
		_fail(file, line);
	}
}

#define EXPECT_I64(seen, expected) \
	check_i64(#seen, (int64_t)(seen), (int64_t)(expected), __FILE__, __LINE__)
#define EXPECT_CODE(result, expected) \
	check_code(#result ".code", (result).code, (expected), __FILE__, __LINE__)
#define EXPECT_STATUS(transfer, expected)                                  \
	check_status(#transfer ".status", (transfer).status, (expected),  \
	             __FILE__, __LINE__)
#define EXPECT_TRUE(condition)                                          \
	do {                                                            \
		if (!(condition)) {                                     \
			print_error("expected %s\n", #condition);       \
			_fail(__FILE__, __LINE__);                      \
		}                                                       \
	} while (0)

/* ---- Building ops and state. ---- */

static kobo_ledger *ledger;

/* Accounts as put (or created) by the test, to read balances of accounts
 * the ledger did not change. */
static kobo_account registry[64];
static size_t registry_count;

static int setup(void **state)
{
	(void)state;
	ledger = kobo_ledger_create(OPS_MAX);
	registry_count = 0;
	return ledger == NULL ? -1 : 0;
}

static int teardown(void **state)
{
	(void)state;
	kobo_ledger_destroy(ledger);
	ledger = NULL;
	return 0;
}

static kobo_account make_account(const char *id, const char *currency,
                                 bool allow_negative, int64_t posted,
                                 int64_t pending_out, int64_t pending_in)
{
	kobo_account account;
	memset(&account, 0, sizeof(account));
	snprintf(account.id, sizeof(account.id), "%s", id);
	snprintf(account.currency, sizeof(account.currency), "%s", currency);
	account.allow_negative = allow_negative;
	account.posted = posted;
	account.pending_out = pending_out;
	account.pending_in = pending_in;
	account.metadata = "{}";
	account.metadata_len = 2;
	account.created_at_ms = NOW_MS - 1000;
	return account;
}

/* Puts an account as a store would. */
static void put(const char *id, bool allow_negative, int64_t posted,
                int64_t pending_out, int64_t pending_in)
{
	kobo_account account = make_account(id, "NGN", allow_negative, posted,
	                                    pending_out, pending_in);
	assert_int_equal(kobo_ledger_put_account(ledger, &account), KOBO_OK);
	registry[registry_count++] = account;
}

static kobo_op op_account(const char *id, const char *currency,
                          bool allow_negative)
{
	kobo_op op;
	memset(&op, 0, sizeof(op));
	op.kind = KOBO_OP_CREATE_ACCOUNT;
	snprintf(op.request_id, sizeof(op.request_id), "req-%s", id);
	op.u.account = make_account(id, currency, allow_negative, 0, 0, 0);
	return op;
}

static kobo_op op_hold(const char *id, const char *from, const char *to,
                       int64_t amount, uint32_t timeout_seconds)
{
	kobo_op op = op_transfer(id, from, to, amount);
	op.u.transfer.pending = true;
	op.u.transfer.timeout_seconds = timeout_seconds;
	return op;
}

static kobo_op in_group(kobo_op op, uint32_t group)
{
	op.atomic_group = group;
	return op;
}

/* Applies one op at now_ms and returns its result. */
static kobo_result apply_at(kobo_op op, int64_t now_ms)
{
	kobo_result result;
	assert_int_equal(kobo_ledger_apply(ledger, &op, 1, now_ms, &result),
	                 KOBO_OK);
	return result;
}

static kobo_result apply(kobo_op op)
{
	return apply_at(op, NOW_MS);
}

static void apply_batch(const kobo_op *ops, size_t count, kobo_result *results)
{
	assert_int_equal(kobo_ledger_apply(ledger, ops, count, NOW_MS, results),
	                 KOBO_OK);
}

/* The current state of an account: from the change list, else as put. */
static kobo_account account_state(const char *id)
{
	const kobo_account_change *changes;
	size_t count = kobo_ledger_changed_accounts(ledger, &changes);
	for (size_t i = 0; i < count; i++) {
		if (strcmp(changes[i].account->id, id) == 0)
			return *changes[i].account;
	}
	for (size_t i = 0; i < registry_count; i++) {
		if (strcmp(registry[i].id, id) == 0)
			return registry[i];
	}
	print_error("account %s is unknown to the test\n", id);
	fail();
	return registry[0];
}

#define EXPECT_BALANCE(id, want_posted, want_pending_out, want_pending_in) \
	do {                                                               \
		kobo_account seen_ = account_state(id);                    \
		check_i64(id ".posted", seen_.posted, (want_posted),       \
		          __FILE__, __LINE__);                             \
		check_i64(id ".pending_out", seen_.pending_out,            \
		          (want_pending_out), __FILE__, __LINE__);         \
		check_i64(id ".pending_in", seen_.pending_in,              \
		          (want_pending_in), __FILE__, __LINE__);          \
	} while (0)

/* The changed transfer with this id, or NULL. */
static const kobo_transfer_change *transfer_change(const char *id)
{
	const kobo_transfer_change *changes;
	size_t count = kobo_ledger_changed_transfers(ledger, &changes);
	for (size_t i = 0; i < count; i++) {
		if (strcmp(changes[i].transfer->id, id) == 0)
			return &changes[i];
	}
	return NULL;
}

static size_t transfer_change_count(void)
{
	const kobo_transfer_change *changes;
	return kobo_ledger_changed_transfers(ledger, &changes);
}

static size_t account_change_count(void)
{
	const kobo_account_change *changes;
	return kobo_ledger_changed_accounts(ledger, &changes);
}

/* A wallet with balance and a cash account that may go negative. */
static void put_wallets(int64_t a_posted)
{
	put("cash", true, 0, 0, 0);
	put("a", false, a_posted, 0, 0);
	put("b", false, 0, 0, 0);
}

/* ---- Names. ---- */

static void test_names_round_trip(void **state)
{
	(void)state;
	static const char *const names[] = {
		"created", "replayed", "updated", "id_conflict",
		"account_not_found", "insufficient_funds", "currency_mismatch",
		"same_account", "amount_overflow", "not_applied",
		"transfer_not_found", "not_pending", "amount_exceeds_pending",
		"saga_timeout", "transfer_in_progress",
	};
	assert_int_equal(sizeof(names) / sizeof(names[0]),
	                 KOBO_RESULT_CODE_COUNT);
	for (int code = 0; code < KOBO_RESULT_CODE_COUNT; code++) {
		assert_string_equal(kobo_result_code_name(code), names[code]);
		assert_int_equal(kobo_result_code_parse(names[code]), code);
	}
	assert_int_equal(kobo_result_code_parse("nope"), KOBO_RESULT_CODE_COUNT);
	assert_int_equal(kobo_result_code_parse(NULL), KOBO_RESULT_CODE_COUNT);
	assert_string_equal(kobo_transfer_status_name(KOBO_STATUS_PROCESSING),
	                    "processing");
	assert_string_equal(kobo_transfer_status_name(KOBO_STATUS_PENDING),
	                    "pending");
	assert_string_equal(kobo_transfer_status_name(KOBO_STATUS_POSTED),
	                    "posted");
	assert_string_equal(kobo_transfer_status_name(KOBO_STATUS_VOIDED),
	                    "voided");
	assert_string_equal(kobo_transfer_status_name(KOBO_STATUS_REJECTED),
	                    "rejected");
	assert_null(kobo_void_reason_name(KOBO_VOID_NONE));
	assert_string_equal(kobo_void_reason_name(KOBO_VOID_VOIDED), "voided");
	assert_string_equal(kobo_void_reason_name(KOBO_VOID_EXPIRED), "expired");
	assert_string_equal(kobo_void_reason_name(KOBO_VOID_COMPENSATED),
	                    "compensated");
}

/* ---- Accounts. ---- */

static void test_create_account(void **state)
{
	(void)state;
	kobo_result result = apply(op_account("wallet:1", "NGN", false));
	EXPECT_CODE(result, KOBO_RESULT_CREATED);
	EXPECT_TRUE(result.has_account && !result.has_transfer);
	assert_string_equal(result.account.id, "wallet:1");
	assert_string_equal(result.account.currency, "NGN");
	EXPECT_I64(result.account.posted, 0);
	EXPECT_I64(result.account.pending_out, 0);
	EXPECT_I64(result.account.pending_in, 0);
	EXPECT_I64(result.account.created_at_ms, NOW_MS);
	EXPECT_I64(result.account.metadata_len, 2);
	const kobo_account_change *changes;
	EXPECT_I64(kobo_ledger_changed_accounts(ledger, &changes), 1);
	EXPECT_TRUE(changes[0].is_new);
	assert_string_equal(changes[0].account->id, "wallet:1");
}

static void test_create_account_replay_has_current_balances(void **state)
{
	(void)state;
	put("cash", true, 0, 0, 0);
	put("wallet:1", false, 0, 0, 0);
	EXPECT_CODE(apply(op_transfer("t1", "cash", "wallet:1", 700)),
	            KOBO_RESULT_CREATED);
	kobo_result result = apply(op_account("wallet:1", "NGN", false));
	EXPECT_CODE(result, KOBO_RESULT_REPLAYED);
	EXPECT_TRUE(result.has_account);
	EXPECT_I64(result.account.posted, 700);
	EXPECT_I64(result.account.created_at_ms, NOW_MS - 1000);
	/* Replaying an account created in the same ledger works too. */
	EXPECT_CODE(apply(op_account("wallet:2", "NGN", true)),
	            KOBO_RESULT_CREATED);
	EXPECT_CODE(apply(op_account("wallet:2", "NGN", true)),
	            KOBO_RESULT_REPLAYED);
	/* The replay changed nothing: wallet:1 is listed once, for t1. */
	EXPECT_I64(account_change_count(), 3);
}

static void test_create_account_id_conflict(void **state)
{
	(void)state;
	put("wallet:1", false, 0, 0, 0);
	kobo_result result = apply(op_account("wallet:1", "USD", false));
	EXPECT_CODE(result, KOBO_RESULT_ID_CONFLICT);
	EXPECT_TRUE(!result.has_account);
	EXPECT_CODE(apply(op_account("wallet:1", "NGN", true)),
	            KOBO_RESULT_ID_CONFLICT);
	kobo_op other_metadata = op_account("wallet:1", "NGN", false);
	other_metadata.u.account.metadata = "{\"a\":1}";
	other_metadata.u.account.metadata_len = 7;
	EXPECT_CODE(apply(other_metadata), KOBO_RESULT_ID_CONFLICT);
	/* Same length, other bytes. */
	other_metadata.u.account.metadata = "{ }";
	other_metadata.u.account.metadata_len = 2;
	EXPECT_CODE(apply(other_metadata), KOBO_RESULT_ID_CONFLICT);
	/* Same bytes at another address: a replay. */
	static const char same[] = "{}";
	kobo_op same_metadata = op_account("wallet:1", "NGN", false);
	same_metadata.u.account.metadata = same;
	EXPECT_CODE(apply(same_metadata), KOBO_RESULT_REPLAYED);
	EXPECT_I64(account_change_count(), 0);
}

/* ---- Transfers. ---- */

static void test_transfer_posted_moves_money(void **state)
{
	(void)state;
	put_wallets(1000);
	kobo_result result = apply_at(op_transfer("t1", "a", "b", 400),
	                              NOW_MS + 5);
	EXPECT_CODE(result, KOBO_RESULT_CREATED);
	EXPECT_TRUE(result.has_transfer && !result.has_account);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_POSTED);
	EXPECT_I64(result.transfer.posted_amount, 400);
	EXPECT_I64(result.transfer.amount, 400);
	EXPECT_I64(result.transfer.created_at_ms, NOW_MS + 5);
	EXPECT_I64(result.transfer.updated_at_ms, NOW_MS + 5);
	EXPECT_I64(result.transfer.expires_at_ms, 0);
	assert_string_equal(result.transfer.request_id, "req-t1");
	EXPECT_BALANCE("a", 600, 0, 0);
	EXPECT_BALANCE("b", 400, 0, 0);
	const kobo_transfer_change *change = transfer_change("t1");
	EXPECT_TRUE(change != NULL && change->is_new);
	EXPECT_I64(account_change_count(), 2);
	/* The whole available balance may be spent, not one more. */
	EXPECT_CODE(apply(op_transfer("t2", "a", "b", 600)), KOBO_RESULT_CREATED);
	EXPECT_BALANCE("a", 0, 0, 0);
	EXPECT_CODE(apply(op_transfer("t3", "a", "b", 1)),
	            KOBO_RESULT_INSUFFICIENT_FUNDS);
}

static void test_transfer_allow_negative_goes_negative(void **state)
{
	(void)state;
	put_wallets(0);
	EXPECT_CODE(apply(op_transfer("t1", "cash", "a", 5000)),
	            KOBO_RESULT_CREATED);
	EXPECT_BALANCE("cash", -5000, 0, 0);
	EXPECT_BALANCE("a", 5000, 0, 0);
}

static void test_transfer_replay_and_id_conflict(void **state)
{
	(void)state;
	put_wallets(1000);
	kobo_op op = op_transfer("t1", "a", "b", 100);
	EXPECT_CODE(apply(op), KOBO_RESULT_CREATED);
	kobo_result replay = apply_at(op, NOW_MS + 99);
	EXPECT_CODE(replay, KOBO_RESULT_REPLAYED);
	EXPECT_TRUE(replay.has_transfer);
	EXPECT_I64(replay.transfer.created_at_ms, NOW_MS);
	EXPECT_BALANCE("a", 900, 0, 0);

	/* Each parameter that differs is a conflict, which records nothing. */
	kobo_op variants[8];
	for (int i = 0; i < 8; i++)
		variants[i] = op;
	variants[0].u.transfer.amount = 101;
	snprintf(variants[1].u.transfer.to, KOBO_ID_LEN_MAX + 1, "cash");
	snprintf(variants[2].u.transfer.from, KOBO_ID_LEN_MAX + 1, "cash");
	snprintf(variants[3].u.transfer.currency, KOBO_CURRENCY_LEN_MAX + 1,
	         "USD");
	variants[4].u.transfer.pending = true;
	variants[5].u.transfer.timeout_seconds = 10;
	variants[6].u.transfer.metadata = "{\"x\":1}";
	variants[6].u.transfer.metadata_len = 7;
	variants[7].u.transfer.metadata = "{}}";
	variants[7].u.transfer.metadata_len = 3;
	for (int i = 0; i < 8; i++) {
		kobo_result result = apply(variants[i]);
		EXPECT_CODE(result, KOBO_RESULT_ID_CONFLICT);
		EXPECT_TRUE(!result.has_transfer);
	}
	/* The request id is not a parameter: a retry may carry a new one. */
	kobo_op other_request = op;
	snprintf(other_request.request_id, sizeof(other_request.request_id),
	         "retry");
	replay = apply(other_request);
	EXPECT_CODE(replay, KOBO_RESULT_REPLAYED);
	assert_string_equal(replay.transfer.request_id, "req-t1");
	EXPECT_I64(transfer_change_count(), 1);
	EXPECT_BALANCE("a", 900, 0, 0);
	EXPECT_BALANCE("b", 100, 0, 0);
}

static void test_transfer_replay_of_stored_transfer(void **state)
{
	(void)state;
	put_wallets(1000);
	kobo_op op = op_transfer("t1", "a", "b", 100);
	kobo_transfer stored = op.u.transfer;
	stored.status = KOBO_STATUS_VOIDED;
	stored.void_reason = KOBO_VOID_EXPIRED;
	stored.pending = false;
	assert_int_equal(kobo_ledger_put_transfer(ledger, &stored), KOBO_OK);
	kobo_result result = apply(op);
	EXPECT_CODE(result, KOBO_RESULT_REPLAYED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_VOIDED);
	EXPECT_I64(transfer_change_count(), 0);
	EXPECT_I64(account_change_count(), 0);
}

/* A rejection of a new transfer is recorded, moves nothing and replays. */
static void expect_recorded_rejection(kobo_op op, kobo_result_code code)
{
	size_t changes_before = transfer_change_count();
	kobo_result result = apply(op);
	EXPECT_CODE(result, code);
	EXPECT_TRUE(result.has_transfer);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_REJECTED);
	check_code("transfer.error_code", result.transfer.error_code, code,
	           __FILE__, __LINE__);
	EXPECT_I64(result.transfer.posted_amount, 0);
	EXPECT_I64(transfer_change_count(), changes_before + 1);
	const kobo_transfer_change *change = transfer_change(op.u.transfer.id);
	EXPECT_TRUE(change != NULL && change->is_new);
	EXPECT_STATUS(*change->transfer, KOBO_STATUS_REJECTED);
	/* The retry replays the refusal; other parameters conflict. */
	kobo_result replay = apply(op);
	EXPECT_CODE(replay, KOBO_RESULT_REPLAYED);
	EXPECT_STATUS(replay.transfer, KOBO_STATUS_REJECTED);
	check_code("replay.transfer.error_code", replay.transfer.error_code,
	           code, __FILE__, __LINE__);
	kobo_op other = op;
	other.u.transfer.amount = op.u.transfer.amount == 1 ? 2 : 1;
	EXPECT_CODE(apply(other), KOBO_RESULT_ID_CONFLICT);
	EXPECT_I64(transfer_change_count(), changes_before + 1);
}

static void test_rejection_same_account(void **state)
{
	(void)state;
	put_wallets(1000);
	expect_recorded_rejection(op_transfer("t1", "a", "a", 10),
	                          KOBO_RESULT_SAME_ACCOUNT);
	/* Checked before existence. */
	expect_recorded_rejection(op_transfer("t2", "ghost", "ghost", 10),
	                          KOBO_RESULT_SAME_ACCOUNT);
	EXPECT_I64(account_change_count(), 0);
}

static void test_rejection_account_not_found(void **state)
{
	(void)state;
	put_wallets(1000);
	expect_recorded_rejection(op_transfer("t1", "ghost", "b", 10),
	                          KOBO_RESULT_ACCOUNT_NOT_FOUND);
	expect_recorded_rejection(op_transfer("t2", "a", "ghost", 10),
	                          KOBO_RESULT_ACCOUNT_NOT_FOUND);
	EXPECT_I64(account_change_count(), 0);
}

static void test_rejection_currency_mismatch(void **state)
{
	(void)state;
	put_wallets(1000);
	kobo_account usd = make_account("usd", "USD", false, 1000, 0, 0);
	assert_int_equal(kobo_ledger_put_account(ledger, &usd), KOBO_OK);
	/* Op currency differs from the accounts', then from one of them. */
	kobo_op op = op_transfer("t1", "a", "b", 10);
	snprintf(op.u.transfer.currency, KOBO_CURRENCY_LEN_MAX + 1, "USD");
	expect_recorded_rejection(op, KOBO_RESULT_CURRENCY_MISMATCH);
	expect_recorded_rejection(op_transfer("t2", "a", "usd", 10),
	                          KOBO_RESULT_CURRENCY_MISMATCH);
	expect_recorded_rejection(op_transfer("t3", "usd", "a", 10),
	                          KOBO_RESULT_CURRENCY_MISMATCH);
	/* Currency is checked before funds. */
	expect_recorded_rejection(op_transfer("t4", "b", "usd", 10),
	                          KOBO_RESULT_CURRENCY_MISMATCH);
	EXPECT_I64(account_change_count(), 0);
}

static void test_rejection_insufficient_funds(void **state)
{
	(void)state;
	put_wallets(1000);
	expect_recorded_rejection(op_transfer("t1", "a", "b", 1001),
	                          KOBO_RESULT_INSUFFICIENT_FUNDS);
	expect_recorded_rejection(op_transfer("t2", "b", "a", 1),
	                          KOBO_RESULT_INSUFFICIENT_FUNDS);
	expect_recorded_rejection(op_transfer("t3", "a", "b", INT64_MAX),
	                          KOBO_RESULT_INSUFFICIENT_FUNDS);
	/* A hold takes from available at once. */
	EXPECT_CODE(apply(op_hold("h1", "a", "b", 600, 0)), KOBO_RESULT_CREATED);
	expect_recorded_rejection(op_transfer("t4", "a", "b", 401),
	                          KOBO_RESULT_INSUFFICIENT_FUNDS);
	expect_recorded_rejection(op_hold("h2", "a", "b", 401, 0),
	                          KOBO_RESULT_INSUFFICIENT_FUNDS);
	EXPECT_CODE(apply(op_transfer("t5", "a", "b", 400)), KOBO_RESULT_CREATED);
	EXPECT_BALANCE("a", 600, 600, 0);
	/* An account already below 0 (put so) cannot spend. */
	put("debtor", false, -5, 0, 0);
	expect_recorded_rejection(op_transfer("t6", "debtor", "b", 1),
	                          KOBO_RESULT_INSUFFICIENT_FUNDS);
}

/* ---- Overflow edges. ---- */

static void test_overflow_posted(void **state)
{
	(void)state;
	put_wallets(0);
	EXPECT_CODE(apply(op_transfer("t1", "cash", "a", INT64_MAX)),
	            KOBO_RESULT_CREATED);
	EXPECT_BALANCE("cash", -INT64_MAX, 0, 0);
	EXPECT_BALANCE("a", INT64_MAX, 0, 0);
	/* b receiving is fine; a receiving one more overflows a.posted. */
	expect_recorded_rejection(op_transfer("t2", "cash", "a", 1),
	                          KOBO_RESULT_AMOUNT_OVERFLOW);
	/* cash.posted = -INT64_MAX: one more is INT64_MIN (fits), two not. */
	EXPECT_CODE(apply(op_transfer("t3", "cash", "b", 1)),
	            KOBO_RESULT_CREATED);
	EXPECT_BALANCE("cash", INT64_MIN, 0, 0);
	expect_recorded_rejection(op_transfer("t4", "cash", "b", 1),
	                          KOBO_RESULT_AMOUNT_OVERFLOW);
	EXPECT_BALANCE("b", 1, 0, 0);
	/* Spending everything from INT64_MAX works. */
	EXPECT_CODE(apply(op_transfer("t5", "a", "cash", INT64_MAX)),
	            KOBO_RESULT_CREATED);
	EXPECT_BALANCE("a", 0, 0, 0);
}

static void test_overflow_near_limits_put(void **state)
{
	(void)state;
	put("low", true, INT64_MIN + 5, 0, 0);
	put("high", false, INT64_MAX - 5, 0, 0);
	put("zero", false, 0, 0, 0);
	EXPECT_CODE(apply(op_transfer("t1", "low", "zero", 5)),
	            KOBO_RESULT_CREATED);
	expect_recorded_rejection(op_transfer("t2", "low", "zero", 1),
	                          KOBO_RESULT_AMOUNT_OVERFLOW);
	expect_recorded_rejection(op_transfer("t3", "zero", "high", 6),
	                          KOBO_RESULT_INSUFFICIENT_FUNDS);
	EXPECT_CODE(apply(op_transfer("t4", "zero", "high", 5)),
	            KOBO_RESULT_CREATED);
	EXPECT_BALANCE("high", INT64_MAX, 0, 0);
	EXPECT_BALANCE("low", INT64_MIN, 0, 0);
}

static void test_overflow_pending_sums(void **state)
{
	(void)state;
	put_wallets(0);
	put("c", false, 0, 0, 0);
	EXPECT_CODE(apply(op_hold("h1", "cash", "a", INT64_MAX, 0)),
	            KOBO_RESULT_CREATED);
	EXPECT_BALANCE("cash", 0, INT64_MAX, 0);
	EXPECT_BALANCE("a", 0, 0, INT64_MAX);
	/* cash.pending_out + 1 overflows. */
	expect_recorded_rejection(op_hold("h2", "cash", "b", 1, 0),
	                          KOBO_RESULT_AMOUNT_OVERFLOW);
	/* a.pending_in + 1 overflows (c is allowed, it has no money: use a
	 * second cash account). */
	put("cash2", true, 0, 0, 0);
	expect_recorded_rejection(op_hold("h3", "cash2", "a", 1, 0),
	                          KOBO_RESULT_AMOUNT_OVERFLOW);
	/* A posted transfer is refused too while cash.pending_out + amount
	 * cannot be represented. */
	expect_recorded_rejection(op_transfer("t4", "cash", "b", 2),
	                          KOBO_RESULT_AMOUNT_OVERFLOW);
	EXPECT_CODE(apply(op_hold("h5", "cash2", "b", 5, 0)),
	            KOBO_RESULT_CREATED);
	EXPECT_BALANCE("cash2", 0, 5, 0);
}

static void test_overflow_available_of_put_account(void **state)
{
	(void)state;
	put("low", true, INT64_MIN + 10, 0, 0);
	put("b", false, 0, 0, 0);
	/* pending_out would fit but posted - pending_out would not. */
	expect_recorded_rejection(op_hold("h1", "low", "b", 11, 0),
	                          KOBO_RESULT_AMOUNT_OVERFLOW);
	EXPECT_CODE(apply(op_hold("h2", "low", "b", 10, 0)),
	            KOBO_RESULT_CREATED);
	EXPECT_BALANCE("low", INT64_MIN + 10, 10, 0);
}

static void test_overflow_at_post(void **state)
{
	(void)state;
	put("cash", true, 0, 0, 0);
	put("w", false, INT64_MAX - 15, 0, 0);
	EXPECT_CODE(apply(op_hold("h1", "cash", "w", 10, 0)),
	            KOBO_RESULT_CREATED);
	EXPECT_CODE(apply(op_transfer("t1", "cash", "w", 10)),
	            KOBO_RESULT_CREATED);
	kobo_result result = apply(op_target(KOBO_OP_POST, "h1"));
	EXPECT_CODE(result, KOBO_RESULT_AMOUNT_OVERFLOW);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_PENDING);
	EXPECT_STATUS(*transfer_change("h1")->transfer, KOBO_STATUS_PENDING);
	EXPECT_BALANCE("w", INT64_MAX - 5, 0, 10);
	EXPECT_BALANCE("cash", -10, 10, 0);
	/* A partial post that fits goes through. */
	EXPECT_CODE(apply(op_post_amount("h1", 5)), KOBO_RESULT_UPDATED);
	EXPECT_BALANCE("w", INT64_MAX, 0, 0);
	EXPECT_BALANCE("cash", -15, 0, 0);
}

/* ---- Holds. ---- */

static void test_hold_created(void **state)
{
	(void)state;
	put_wallets(1000);
	kobo_result result = apply(op_hold("h1", "a", "b", 300, 60));
	EXPECT_CODE(result, KOBO_RESULT_CREATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_PENDING);
	EXPECT_I64(result.transfer.posted_amount, 0);
	EXPECT_I64(result.transfer.expires_at_ms, NOW_MS + 60000);
	EXPECT_TRUE(result.transfer.pending);
	EXPECT_BALANCE("a", 1000, 300, 0);
	EXPECT_BALANCE("b", 0, 0, 300);
	result = apply(op_hold("h2", "a", "b", 100, 0));
	EXPECT_I64(result.transfer.expires_at_ms, 0);
	EXPECT_BALANCE("a", 1000, 400, 0);
}

static void test_hold_post_full(void **state)
{
	(void)state;
	put_wallets(1000);
	apply(op_hold("h1", "a", "b", 300, 0));
	kobo_result result = apply_at(op_target(KOBO_OP_POST, "h1"), NOW_MS + 7);
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_POSTED);
	EXPECT_I64(result.transfer.posted_amount, 300);
	EXPECT_I64(result.transfer.updated_at_ms, NOW_MS + 7);
	EXPECT_I64(result.transfer.created_at_ms, NOW_MS);
	EXPECT_BALANCE("a", 700, 0, 0);
	EXPECT_BALANCE("b", 300, 0, 0);
	/* Posting again replays; voiding a posted hold is refused. */
	result = apply(op_target(KOBO_OP_POST, "h1"));
	EXPECT_CODE(result, KOBO_RESULT_REPLAYED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_POSTED);
	result = apply(op_target(KOBO_OP_VOID, "h1"));
	EXPECT_CODE(result, KOBO_RESULT_NOT_PENDING);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_POSTED);
	EXPECT_BALANCE("a", 700, 0, 0);
	EXPECT_I64(transfer_change_count(), 1);
}

static void test_hold_post_partial_releases_rest(void **state)
{
	(void)state;
	put_wallets(1000);
	apply(op_hold("h1", "a", "b", 300, 0));
	kobo_result result = apply(op_post_amount("h1", 120));
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_I64(result.transfer.posted_amount, 120);
	EXPECT_I64(result.transfer.amount, 300);
	EXPECT_BALANCE("a", 880, 0, 0);
	EXPECT_BALANCE("b", 120, 0, 0);
	/* Posting a posted hold replays, whatever amount is asked. */
	result = apply(op_post_amount("h1", 300));
	EXPECT_CODE(result, KOBO_RESULT_REPLAYED);
	EXPECT_I64(result.transfer.posted_amount, 120);
}

static void test_hold_post_more_than_held(void **state)
{
	(void)state;
	put_wallets(1000);
	apply(op_hold("h1", "a", "b", 300, 0));
	kobo_result result = apply(op_post_amount("h1", 301));
	EXPECT_CODE(result, KOBO_RESULT_AMOUNT_EXCEEDS_PENDING);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_PENDING);
	EXPECT_BALANCE("a", 1000, 300, 0);
	EXPECT_BALANCE("b", 0, 0, 300);
	EXPECT_CODE(apply(op_post_amount("h1", 300)), KOBO_RESULT_UPDATED);
}

static void test_hold_void(void **state)
{
	(void)state;
	put_wallets(1000);
	apply(op_hold("h1", "a", "b", 300, 60));
	kobo_result result = apply(op_target(KOBO_OP_VOID, "h1"));
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_VOIDED);
	EXPECT_I64(result.transfer.void_reason, KOBO_VOID_VOIDED);
	EXPECT_I64(result.transfer.posted_amount, 0);
	EXPECT_BALANCE("a", 1000, 0, 0);
	EXPECT_BALANCE("b", 0, 0, 0);
	/* Void again replays; post after void is refused. */
	EXPECT_CODE(apply(op_target(KOBO_OP_VOID, "h1")), KOBO_RESULT_REPLAYED);
	result = apply(op_target(KOBO_OP_POST, "h1"));
	EXPECT_CODE(result, KOBO_RESULT_NOT_PENDING);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_VOIDED);
	EXPECT_CODE(apply(op_target(KOBO_OP_EXPIRE, "h1")),
	            KOBO_RESULT_NOT_PENDING);
	EXPECT_BALANCE("a", 1000, 0, 0);
}

static void test_post_void_unknown_and_not_holds(void **state)
{
	(void)state;
	put_wallets(1000);
	kobo_result result = apply(op_target(KOBO_OP_POST, "nope"));
	EXPECT_CODE(result, KOBO_RESULT_TRANSFER_NOT_FOUND);
	EXPECT_TRUE(!result.has_transfer);
	EXPECT_CODE(apply(op_target(KOBO_OP_VOID, "nope")),
	            KOBO_RESULT_TRANSFER_NOT_FOUND);
	EXPECT_CODE(apply(op_target(KOBO_OP_EXPIRE, "nope")),
	            KOBO_RESULT_NOT_PENDING);
	/* A posted transfer posts as a replay and does not void. */
	apply(op_transfer("t1", "a", "b", 10));
	EXPECT_CODE(apply(op_target(KOBO_OP_POST, "t1")), KOBO_RESULT_REPLAYED);
	EXPECT_CODE(apply(op_target(KOBO_OP_VOID, "t1")),
	            KOBO_RESULT_NOT_PENDING);
	/* Rejected and processing transfers are not pending. */
	apply(op_transfer("t2", "a", "b", 5000));
	EXPECT_CODE(apply(op_target(KOBO_OP_POST, "t2")),
	            KOBO_RESULT_NOT_PENDING);
	EXPECT_CODE(apply(op_target(KOBO_OP_VOID, "t2")),
	            KOBO_RESULT_NOT_PENDING);
	kobo_transfer processing = op_transfer("p1", "a", "b", 10).u.transfer;
	processing.status = KOBO_STATUS_PROCESSING;
	assert_int_equal(kobo_ledger_put_transfer(ledger, &processing), KOBO_OK);
	EXPECT_CODE(apply(op_target(KOBO_OP_POST, "p1")),
	            KOBO_RESULT_TRANSFER_IN_PROGRESS);
	EXPECT_CODE(apply(op_target(KOBO_OP_VOID, "p1")),
	            KOBO_RESULT_TRANSFER_IN_PROGRESS);
	EXPECT_CODE(apply(op_target(KOBO_OP_EXPIRE, "p1")),
	            KOBO_RESULT_NOT_PENDING);
	EXPECT_TRUE(transfer_change("p1") == NULL);
}

static void test_expire(void **state)
{
	(void)state;
	put_wallets(1000);
	apply(op_hold("h1", "a", "b", 300, 10));
	apply(op_hold("forever", "a", "b", 100, 0));
	int64_t expiry = NOW_MS + 10000;
	EXPECT_CODE(apply_at(op_target(KOBO_OP_EXPIRE, "h1"), expiry - 1),
	            KOBO_RESULT_NOT_PENDING);
	EXPECT_BALANCE("a", 1000, 400, 0);
	kobo_result result = apply_at(op_target(KOBO_OP_EXPIRE, "h1"), expiry);
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_VOIDED);
	EXPECT_I64(result.transfer.void_reason, KOBO_VOID_EXPIRED);
	EXPECT_I64(result.transfer.updated_at_ms, expiry);
	EXPECT_BALANCE("a", 1000, 100, 0);
	EXPECT_BALANCE("b", 0, 0, 100);
	EXPECT_CODE(apply_at(op_target(KOBO_OP_EXPIRE, "h1"), expiry + 1),
	            KOBO_RESULT_NOT_PENDING);
	/* A hold without a timeout never expires. */
	EXPECT_CODE(apply_at(op_target(KOBO_OP_EXPIRE, "forever"), INT64_MAX),
	            KOBO_RESULT_NOT_PENDING);
	/* Voiding an expired hold replays its voided state. */
	EXPECT_CODE(apply(op_target(KOBO_OP_VOID, "h1")), KOBO_RESULT_REPLAYED);
}

static void test_post_after_expiry_expires(void **state)
{
	(void)state;
	put_wallets(1000);
	apply(op_hold("h1", "a", "b", 300, 10));
	int64_t expiry = NOW_MS + 10000;
	/* Just before expiry a post works... */
	apply(op_hold("h2", "a", "b", 200, 10));
	EXPECT_CODE(apply_at(op_target(KOBO_OP_POST, "h2"), expiry - 1),
	            KOBO_RESULT_UPDATED);
	/* ...at expiry the hold expires first and the post is refused. */
	kobo_result result = apply_at(op_target(KOBO_OP_POST, "h1"), expiry);
	EXPECT_CODE(result, KOBO_RESULT_NOT_PENDING);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_VOIDED);
	EXPECT_I64(result.transfer.void_reason, KOBO_VOID_EXPIRED);
	const kobo_transfer_change *change = transfer_change("h1");
	EXPECT_STATUS(*change->transfer, KOBO_STATUS_VOIDED);
	EXPECT_BALANCE("a", 800, 0, 0);
	EXPECT_BALANCE("b", 200, 0, 0);
}

static void test_void_after_expiry_says_expired(void **state)
{
	(void)state;
	put_wallets(1000);
	apply(op_hold("h1", "a", "b", 300, 1));
	kobo_result result = apply_at(op_target(KOBO_OP_VOID, "h1"),
	                              NOW_MS + 1000);
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_I64(result.transfer.void_reason, KOBO_VOID_EXPIRED);
	EXPECT_BALANCE("a", 1000, 0, 0);
}

static void test_stored_hold_is_updated_not_new(void **state)
{
	(void)state;
	put("a", false, 1000, 300, 0);
	put("b", false, 0, 0, 300);
	kobo_transfer hold = op_hold("h1", "a", "b", 300, 0).u.transfer;
	hold.status = KOBO_STATUS_PENDING;
	assert_int_equal(kobo_ledger_put_transfer(ledger, &hold), KOBO_OK);
	EXPECT_CODE(apply(op_post_amount("h1", 100)), KOBO_RESULT_UPDATED);
	const kobo_transfer_change *change = transfer_change("h1");
	EXPECT_TRUE(change != NULL && !change->is_new);
	const kobo_account_change *accounts;
	size_t count = kobo_ledger_changed_accounts(ledger, &accounts);
	EXPECT_I64(count, 2);
	EXPECT_TRUE(!accounts[0].is_new && !accounts[1].is_new);
	EXPECT_BALANCE("a", 900, 0, 0);
	EXPECT_BALANCE("b", 100, 0, 0);
}

/* ---- Batches. ---- */

static void test_batch_create_and_post_hold(void **state)
{
	(void)state;
	put_wallets(1000);
	kobo_op ops[3] = {
		op_hold("h1", "a", "b", 300, 0),
		op_post_amount("h1", 250),
		op_target(KOBO_OP_VOID, "h1"),
	};
	kobo_result results[3];
	apply_batch(ops, 3, results);
	EXPECT_CODE(results[0], KOBO_RESULT_CREATED);
	EXPECT_STATUS(results[0].transfer, KOBO_STATUS_PENDING);
	EXPECT_CODE(results[1], KOBO_RESULT_UPDATED);
	EXPECT_CODE(results[2], KOBO_RESULT_NOT_PENDING);
	EXPECT_I64(transfer_change_count(), 1);
	const kobo_transfer_change *change = transfer_change("h1");
	EXPECT_TRUE(change->is_new);
	EXPECT_STATUS(*change->transfer, KOBO_STATUS_POSTED);
	EXPECT_BALANCE("a", 750, 0, 0);
	EXPECT_BALANCE("b", 250, 0, 0);
}

static void test_batch_same_new_id_twice(void **state)
{
	(void)state;
	put_wallets(1000);
	kobo_op ops[4] = {
		op_transfer("t1", "a", "b", 100),
		op_transfer("t1", "a", "b", 100),
		op_transfer("t1", "a", "b", 999),
		op_account("n1", "NGN", false),
	};
	kobo_result results[4];
	apply_batch(ops, 4, results);
	EXPECT_CODE(results[0], KOBO_RESULT_CREATED);
	EXPECT_CODE(results[1], KOBO_RESULT_REPLAYED);
	EXPECT_CODE(results[2], KOBO_RESULT_ID_CONFLICT);
	EXPECT_CODE(results[3], KOBO_RESULT_CREATED);
	EXPECT_I64(transfer_change_count(), 1);
	EXPECT_BALANCE("a", 900, 0, 0);
	/* Accounts created earlier in a batch are usable later in it. */
	kobo_op more[2] = {
		op_account("n2", "NGN", false),
		op_transfer("t2", "a", "n2", 50),
	};
	apply_batch(more, 2, results);
	EXPECT_CODE(results[1], KOBO_RESULT_CREATED);
	EXPECT_BALANCE("n2", 50, 0, 0);
}

static void test_change_lists(void **state)
{
	(void)state;
	put_wallets(1000);
	put("idle", false, 5, 0, 0);
	kobo_op ops[5] = {
		op_transfer("t1", "a", "b", 10),
		op_account("n1", "NGN", false),
		op_transfer("t2", "b", "a", 5),
		op_transfer("t3", "a", "b", 5000),
		op_transfer("t4", "a", "n1", 1),
	};
	kobo_result results[5];
	apply_batch(ops, 5, results);
	const kobo_transfer_change *transfers;
	size_t count = kobo_ledger_changed_transfers(ledger, &transfers);
	EXPECT_I64(count, 4);
	static const char *const order[] = {"t1", "t2", "t3", "t4"};
	for (size_t i = 0; i < 4; i++) {
		assert_string_equal(transfers[i].transfer->id, order[i]);
		EXPECT_TRUE(transfers[i].is_new);
	}
	const kobo_account_change *accounts;
	count = kobo_ledger_changed_accounts(ledger, &accounts);
	/* a, b and n1, each once; cash and idle unchanged. */
	EXPECT_I64(count, 3);
	for (size_t i = 0; i < count; i++) {
		EXPECT_TRUE(strcmp(accounts[i].account->id, "idle") != 0);
		EXPECT_TRUE(accounts[i].is_new ==
		            (strcmp(accounts[i].account->id, "n1") == 0));
	}
	EXPECT_BALANCE("a", 994, 0, 0);
	/* reset forgets everything. */
	kobo_ledger_reset(ledger);
	EXPECT_I64(transfer_change_count(), 0);
	EXPECT_I64(account_change_count(), 0);
	registry_count = 0;
	EXPECT_CODE(apply(op_target(KOBO_OP_POST, "t1")),
	            KOBO_RESULT_TRANSFER_NOT_FOUND);
}

/* ---- Atomic groups. ---- */

static void test_atomic_success(void **state)
{
	(void)state;
	put_wallets(1000);
	kobo_op ops[4] = {
		in_group(op_transfer("t1", "a", "b", 600), 1),
		in_group(op_transfer("t2", "b", "a", 100), 1),
		in_group(op_transfer("t3", "a", "b", 500), 1),
		op_transfer("t4", "b", "a", 1),
	};
	kobo_result results[4];
	apply_batch(ops, 4, results);
	for (int i = 0; i < 4; i++)
		EXPECT_CODE(results[i], KOBO_RESULT_CREATED);
	EXPECT_BALANCE("a", 1, 0, 0);
	EXPECT_BALANCE("b", 999, 0, 0);
}

/* The retry of a batch on a fresh ledger loaded from what was persisted. */
static void reload(const kobo_op *ops, size_t count)
{
	static kobo_transfer saved_transfers[OPS_MAX];
	static kobo_account saved_accounts[2 * OPS_MAX];
	const kobo_transfer_change *transfers;
	const kobo_account_change *accounts;
	size_t transfer_count = kobo_ledger_changed_transfers(ledger, &transfers);
	for (size_t i = 0; i < transfer_count; i++)
		saved_transfers[i] = *transfers[i].transfer;
	size_t account_count = kobo_ledger_changed_accounts(ledger, &accounts);
	for (size_t i = 0; i < account_count; i++)
		saved_accounts[i] = *accounts[i].account;
	/* Unchanged accounts come from the registry. */
	for (size_t i = 0; i < registry_count; i++) {
		bool changed = false;
		for (size_t j = 0; j < account_count; j++)
			changed |= strcmp(saved_accounts[j].id,
			                  registry[i].id) == 0;
		if (!changed)
			saved_accounts[account_count++] = registry[i];
	}
	kobo_ledger_reset(ledger);
	registry_count = 0;
	for (size_t i = 0; i < transfer_count; i++)
		assert_int_equal(kobo_ledger_put_transfer(ledger,
		                                          &saved_transfers[i]),
		                 KOBO_OK);
	const char *ids[KOBO_LEDGER_ACCOUNT_IDS_MAX(OPS_MAX)];
	size_t id_count;
	kobo_ledger_account_ids(ledger, ops, count, ids, &id_count);
	for (size_t i = 0; i < account_count; i++) {
		assert_int_equal(kobo_ledger_put_account(ledger,
		                                         &saved_accounts[i]),
		                 KOBO_OK);
		registry[registry_count++] = saved_accounts[i];
	}
}

static void test_atomic_failure_undoes_and_records(void **state)
{
	(void)state;
	put_wallets(1000);
	kobo_op ops[6] = {
		op_transfer("before", "a", "b", 100),
		in_group(op_transfer("t1", "a", "b", 600), 7),
		in_group(op_account("n1", "NGN", false), 7),
		in_group(op_transfer("t2", "a", "b", 600), 7),
		in_group(op_transfer("t3", "b", "n1", 10), 7),
		op_transfer("after", "b", "a", 50),
	};
	kobo_result results[6];
	apply_batch(ops, 6, results);
	EXPECT_CODE(results[0], KOBO_RESULT_CREATED);
	EXPECT_CODE(results[1], KOBO_RESULT_NOT_APPLIED);
	EXPECT_CODE(results[2], KOBO_RESULT_NOT_APPLIED);
	EXPECT_CODE(results[3], KOBO_RESULT_INSUFFICIENT_FUNDS);
	EXPECT_CODE(results[4], KOBO_RESULT_NOT_APPLIED);
	EXPECT_CODE(results[5], KOBO_RESULT_CREATED);
	EXPECT_TRUE(!results[2].has_account);
	/* The group's effects are gone: only before and after moved money. */
	EXPECT_BALANCE("a", 950, 0, 0);
	EXPECT_BALANCE("b", 50, 0, 0);
	/* Each new transfer of the group is recorded as rejected. */
	const kobo_transfer_change *transfers;
	size_t count = kobo_ledger_changed_transfers(ledger, &transfers);
	EXPECT_I64(count, 5);
	static const char *const order[] = {"before", "t1", "t2", "t3", "after"};
	static const kobo_transfer_status statuses[] = {
		KOBO_STATUS_POSTED, KOBO_STATUS_REJECTED, KOBO_STATUS_REJECTED,
		KOBO_STATUS_REJECTED, KOBO_STATUS_POSTED,
	};
	static const kobo_result_code errors[] = {
		KOBO_RESULT_CREATED, KOBO_RESULT_NOT_APPLIED,
		KOBO_RESULT_INSUFFICIENT_FUNDS, KOBO_RESULT_NOT_APPLIED,
		KOBO_RESULT_CREATED,
	};
	for (size_t i = 0; i < count; i++) {
		assert_string_equal(transfers[i].transfer->id, order[i]);
		EXPECT_STATUS(*transfers[i].transfer, statuses[i]);
		EXPECT_TRUE(transfers[i].is_new);
		if (statuses[i] == KOBO_STATUS_REJECTED) {
			check_code("error_code", transfers[i].transfer->error_code,
			           errors[i], __FILE__, __LINE__);
			EXPECT_I64(transfers[i].transfer->posted_amount, 0);
		}
	}
	EXPECT_TRUE(results[1].has_transfer);
	EXPECT_STATUS(results[1].transfer, KOBO_STATUS_REJECTED);
	EXPECT_STATUS(results[3].transfer, KOBO_STATUS_REJECTED);
	/* n1 was created by the failed group: it does not exist. */
	const kobo_account_change *accounts;
	count = kobo_ledger_changed_accounts(ledger, &accounts);
	EXPECT_I64(count, 2);
	for (size_t i = 0; i < count; i++)
		EXPECT_TRUE(strcmp(accounts[i].account->id, "n1") != 0);

	/* The retry of the same batch replays every answer and moves
	 * nothing; the group now fails on the replayed refusal. */
	reload(ops, 6);
	apply_batch(ops, 6, results);
	for (int i = 0; i < 6; i++) {
		if (i == 2)
			continue;
		EXPECT_CODE(results[i], KOBO_RESULT_REPLAYED);
	}
	EXPECT_CODE(results[2], KOBO_RESULT_NOT_APPLIED);
	check_code("t1 replay error", results[1].transfer.error_code,
	           KOBO_RESULT_NOT_APPLIED, __FILE__, __LINE__);
	check_code("t2 replay error", results[3].transfer.error_code,
	           KOBO_RESULT_INSUFFICIENT_FUNDS, __FILE__, __LINE__);
	EXPECT_I64(transfer_change_count(), 0);
	EXPECT_I64(account_change_count(), 0);
}

static void test_atomic_failure_keeps_replays_of_older_records(void **state)
{
	(void)state;
	put_wallets(1000);
	put("old", false, 0, 0, 0);
	EXPECT_CODE(apply(op_transfer("t0", "a", "b", 100)), KOBO_RESULT_CREATED);
	EXPECT_CODE(apply(op_hold("h0", "a", "b", 100, 0)), KOBO_RESULT_CREATED);
	kobo_op ops[7] = {
		in_group(op_transfer("t0", "a", "b", 100), 3),  /* replay */
		in_group(op_account("old", "NGN", false), 3),   /* replay */
		in_group(op_target(KOBO_OP_POST, "h0"), 3),     /* updated */
		in_group(op_target(KOBO_OP_POST, "h0"), 3),     /* replay */
		in_group(op_transfer("t0", "a", "b", 1), 3),    /* conflict */
		in_group(op_transfer("t0", "a", "b", 100), 3),  /* replay */
		in_group(op_transfer("t9", "a", "b", 1), 3),    /* new */
	};
	kobo_result results[7];
	apply_batch(ops, 7, results);
	EXPECT_CODE(results[0], KOBO_RESULT_REPLAYED);
	EXPECT_CODE(results[1], KOBO_RESULT_REPLAYED);
	EXPECT_TRUE(results[1].has_account);
	EXPECT_CODE(results[2], KOBO_RESULT_NOT_APPLIED);
	/* h0 was posted by the group, which did not happen. */
	EXPECT_CODE(results[3], KOBO_RESULT_NOT_APPLIED);
	EXPECT_CODE(results[4], KOBO_RESULT_ID_CONFLICT);
	EXPECT_TRUE(!results[4].has_transfer);
	EXPECT_CODE(results[5], KOBO_RESULT_REPLAYED);
	EXPECT_CODE(results[6], KOBO_RESULT_NOT_APPLIED);
	EXPECT_TRUE(results[6].has_transfer);
	EXPECT_STATUS(transfer_change("h0")->transfer[0], KOBO_STATUS_PENDING);
	EXPECT_STATUS(transfer_change("t9")->transfer[0], KOBO_STATUS_REJECTED);
	EXPECT_BALANCE("a", 900, 100, 0);
	EXPECT_BALANCE("b", 100, 0, 100);
}

static void test_atomic_failure_with_new_id_twice(void **state)
{
	(void)state;
	put_wallets(1000);
	kobo_op ops[3] = {
		in_group(op_transfer("n1", "a", "b", 10), 1),
		in_group(op_transfer("n1", "a", "b", 10), 1),
		in_group(op_transfer("n2", "a", "ghost", 10), 1),
	};
	kobo_result results[3];
	apply_batch(ops, 3, results);
	EXPECT_CODE(results[0], KOBO_RESULT_NOT_APPLIED);
	EXPECT_TRUE(results[0].has_transfer);
	/* The second n1 names the transfer the first recorded (refused,
	 * not_applied): it answers that record, as its retry will; n1 is
	 * recorded once. */
	EXPECT_CODE(results[1], KOBO_RESULT_REPLAYED);
	EXPECT_TRUE(results[1].has_transfer);
	EXPECT_I64(results[1].transfer.error_code, KOBO_RESULT_NOT_APPLIED);
	EXPECT_CODE(results[2], KOBO_RESULT_ACCOUNT_NOT_FOUND);
	EXPECT_I64(transfer_change_count(), 2);
	EXPECT_BALANCE("a", 1000, 0, 0);
}

/* What a client reads of an answer: a replayed refusal is that refusal. */
static kobo_result_code answer_of(const kobo_result *result)
{
	if (result->code == KOBO_RESULT_REPLAYED && result->has_transfer &&
	    result->transfer.status == KOBO_STATUS_REJECTED)
		return result->transfer.error_code;
	return result->code;
}

/* Issue 7 item 6: [X fails, X same] answered (insufficient_funds,
 * not_applied) and its retry (insufficient_funds, insufficient_funds).
 * The second X names the transfer the first recorded: both attempts answer
 * what that record says. */
static void test_atomic_retry_with_repeated_id_answers_the_same(void **state)
{
	(void)state;
	put_wallets(10);
	kobo_op ops[2] = {
		in_group(op_transfer("x", "a", "b", 50), 1),
		in_group(op_transfer("x", "a", "b", 50), 1),
	};
	kobo_result first[2], retry[2];
	apply_batch(ops, 2, first);
	EXPECT_I64(answer_of(&first[0]), KOBO_RESULT_INSUFFICIENT_FUNDS);
	EXPECT_I64(answer_of(&first[1]), KOBO_RESULT_INSUFFICIENT_FUNDS);
	EXPECT_I64(transfer_change_count(), 1);
	kobo_transfer stored = first[0].transfer;

	kobo_ledger_reset(ledger);
	registry_count = 0;
	put_wallets(10);
	assert_int_equal(kobo_ledger_put_transfer(ledger, &stored), KOBO_OK);
	apply_batch(ops, 2, retry);
	for (int i = 0; i < 2; i++)
		EXPECT_I64(answer_of(&retry[i]), answer_of(&first[i]));
	EXPECT_I64(transfer_change_count(), 0);
	EXPECT_BALANCE("a", 10, 0, 0);
}

static void test_atomic_failure_on_post_undoes_hold(void **state)
{
	(void)state;
	put_wallets(1000);
	kobo_op ops[3] = {
		in_group(op_hold("h1", "a", "b", 300, 0), 1),
		in_group(op_post_amount("h1", 500), 1),
		in_group(op_target(KOBO_OP_VOID, "missing"), 2),
	};
	kobo_result results[3];
	apply_batch(ops, 3, results);
	EXPECT_CODE(results[0], KOBO_RESULT_NOT_APPLIED);
	EXPECT_CODE(results[1], KOBO_RESULT_AMOUNT_EXCEEDS_PENDING);
	EXPECT_CODE(results[2], KOBO_RESULT_TRANSFER_NOT_FOUND);
	EXPECT_STATUS(transfer_change("h1")->transfer[0], KOBO_STATUS_REJECTED);
	EXPECT_I64(account_change_count(), 0);
	EXPECT_BALANCE("a", 1000, 0, 0);
}

static void test_atomic_replayed_rejection_fails_group(void **state)
{
	(void)state;
	put_wallets(1000);
	EXPECT_CODE(apply(op_transfer("r1", "a", "b", 5000)),
	            KOBO_RESULT_INSUFFICIENT_FUNDS);
	kobo_op ops[2] = {
		in_group(op_transfer("n1", "a", "b", 10), 1),
		in_group(op_transfer("r1", "a", "b", 5000), 1),
	};
	kobo_result results[2];
	apply_batch(ops, 2, results);
	EXPECT_CODE(results[0], KOBO_RESULT_NOT_APPLIED);
	EXPECT_CODE(results[1], KOBO_RESULT_REPLAYED);
	EXPECT_STATUS(results[1].transfer, KOBO_STATUS_REJECTED);
	EXPECT_BALANCE("a", 1000, 0, 0);
}

/* A retry of a failed atomic batch answers what the first attempt did, even
 * when an op after the failing one conflicts with a recorded id. */
static void test_atomic_retry_keeps_id_conflict(void **state)
{
	(void)state;
	put_wallets(1000);
	kobo_op ops[2] = {
		in_group(op_transfer("ic1", "a", "b", 10), 1),
		in_group(op_transfer("ic1", "a", "b", 20), 1),
	};
	kobo_result first[2], retry[2];
	apply_batch(ops, 2, first);
	EXPECT_CODE(first[0], KOBO_RESULT_NOT_APPLIED);
	EXPECT_CODE(first[1], KOBO_RESULT_ID_CONFLICT);
	apply_batch(ops, 2, retry);
	EXPECT_CODE(retry[0], KOBO_RESULT_REPLAYED);
	EXPECT_STATUS(retry[0].transfer, KOBO_STATUS_REJECTED);
	EXPECT_CODE(retry[1], KOBO_RESULT_ID_CONFLICT);
	EXPECT_BALANCE("a", 1000, 0, 0);
}

static void test_atomic_adjacent_groups(void **state)
{
	(void)state;
	put_wallets(1000);
	kobo_op ops[4] = {
		in_group(op_transfer("g1a", "a", "b", 100), 1),
		in_group(op_transfer("g1b", "a", "b", 100), 1),
		in_group(op_transfer("g2a", "a", "b", 100), 2),
		in_group(op_transfer("g2b", "a", "ghost", 100), 2),
	};
	kobo_result results[4];
	apply_batch(ops, 4, results);
	EXPECT_CODE(results[0], KOBO_RESULT_CREATED);
	EXPECT_CODE(results[1], KOBO_RESULT_CREATED);
	EXPECT_CODE(results[2], KOBO_RESULT_NOT_APPLIED);
	EXPECT_CODE(results[3], KOBO_RESULT_ACCOUNT_NOT_FOUND);
	EXPECT_BALANCE("a", 800, 0, 0);
}

/* ---- Ids, capacity, preconditions. ---- */

static void test_ids_are_distinct(void **state)
{
	(void)state;
	kobo_transfer stored = op_hold("h1", "x", "y", 5, 0).u.transfer;
	stored.status = KOBO_STATUS_PENDING;
	assert_int_equal(kobo_ledger_put_transfer(ledger, &stored), KOBO_OK);
	kobo_op ops[6] = {
		op_transfer("t1", "a", "b", 1),
		op_transfer("t1", "b", "a", 1),
		op_target(KOBO_OP_POST, "h1"),
		op_target(KOBO_OP_VOID, "h1"),
		op_account("a", "NGN", false),
		op_target(KOBO_OP_EXPIRE, "unknown"),
	};
	const char *ids[KOBO_LEDGER_ACCOUNT_IDS_MAX(6)];
	size_t count;
	kobo_ledger_transfer_ids(ops, 6, ids, &count);
	EXPECT_I64(count, 3); /* t1, h1, unknown */
	for (size_t i = 0; i < count; i++)
		for (size_t j = i + 1; j < count; j++)
			EXPECT_TRUE(strcmp(ids[i], ids[j]) != 0);
	kobo_ledger_account_ids(ledger, ops, 6, ids, &count);
	EXPECT_I64(count, 4); /* a, b, x, y */
	bool seen_x = false, seen_y = false;
	for (size_t i = 0; i < count; i++) {
		seen_x |= strcmp(ids[i], "x") == 0;
		seen_y |= strcmp(ids[i], "y") == 0;
		for (size_t j = i + 1; j < count; j++)
			EXPECT_TRUE(strcmp(ids[i], ids[j]) != 0);
	}
	EXPECT_TRUE(seen_x && seen_y);
}

static void test_capacity(void **state)
{
	(void)state;
	kobo_ledger *small = kobo_ledger_create(2);
	assert_non_null(small);
	char id[16];
	/* Room for KOBO_LEDGER_ACCOUNT_IDS_MAX(2) = 7 accounts. */
	for (int i = 0; i < 7; i++) {
		snprintf(id, sizeof(id), "acc%d", i);
		kobo_account account = make_account(id, "NGN", true, 0, 0, 0);
		assert_int_equal(kobo_ledger_put_account(small, &account),
		                 KOBO_OK);
	}
	kobo_account extra = make_account("acc9", "NGN", true, 0, 0, 0);
	assert_int_equal(kobo_ledger_put_account(small, &extra), KOBO_EFULL);
	kobo_account again = make_account("acc0", "NGN", true, 0, 0, 0);
	assert_int_equal(kobo_ledger_put_account(small, &again), KOBO_EINVAL);

	/* A new account does not fit: nothing is applied. */
	kobo_op ops[3] = {
		op_transfer("t1", "acc0", "acc1", 5),
		op_account("acc9", "NGN", false),
		op_transfer("t2", "acc0", "acc1", 5),
	};
	kobo_result results[3];
	assert_int_equal(kobo_ledger_apply(small, ops, 2, NOW_MS, results),
	                 KOBO_EFULL);
	const kobo_transfer_change *transfers;
	assert_int_equal(kobo_ledger_changed_transfers(small, &transfers), 0);
	/* More ops than sized: a caller bug, refused. */
	assert_int_equal(kobo_ledger_apply(small, ops, 3, NOW_MS, results),
	                 KOBO_EINVAL);
	/* Transfers: two fit, and then nothing new does. */
	assert_int_equal(kobo_ledger_apply(small, &ops[0], 1, NOW_MS, results),
	                 KOBO_OK);
	kobo_transfer stored = op_transfer("s1", "acc0", "acc1", 5).u.transfer;
	assert_int_equal(kobo_ledger_put_transfer(small, &stored), KOBO_OK);
	kobo_transfer one_more = op_transfer("s2", "acc0", "acc1", 5).u.transfer;
	assert_int_equal(kobo_ledger_put_transfer(small, &one_more), KOBO_EFULL);
	assert_int_equal(kobo_ledger_put_transfer(small, &stored), KOBO_EINVAL);
	assert_int_equal(kobo_ledger_apply(small, &ops[2], 1, NOW_MS, results),
	                 KOBO_EFULL);
	/* Replays need no room. */
	assert_int_equal(kobo_ledger_apply(small, &ops[0], 1, NOW_MS, results),
	                 KOBO_OK);
	EXPECT_CODE(results[0], KOBO_RESULT_REPLAYED);
	/* After reset everything fits again. */
	kobo_ledger_reset(small);
	assert_int_equal(kobo_ledger_put_account(small, &extra), KOBO_OK);
	kobo_ledger_destroy(small);

	assert_null(kobo_ledger_create(0));
	assert_null(kobo_ledger_create(KOBO_BATCH_OPS_MAX + 1));
	kobo_ledger *largest = kobo_ledger_create(KOBO_BATCH_OPS_MAX);
	assert_non_null(largest);
	kobo_ledger_destroy(largest);
}

static void test_invalid_ops_refused(void **state)
{
	(void)state;
	put_wallets(1000);
	kobo_op zero = op_transfer("t1", "a", "b", 0);
	kobo_result result;
	assert_int_equal(kobo_ledger_apply(ledger, &zero, 1, NOW_MS, &result),
	                 KOBO_EINVAL);
	kobo_op post_zero = op_post_amount("t1", 0);
	assert_int_equal(kobo_ledger_apply(ledger, &post_zero, 1, NOW_MS,
	                                   &result),
	                 KOBO_EINVAL);
	kobo_op long_hold = op_hold("t1", "a", "b", 1,
	                            KOBO_TIMEOUT_SECONDS_MAX + 1);
	assert_int_equal(kobo_ledger_apply(ledger, &long_hold, 1, NOW_MS,
	                                   &result),
	                 KOBO_EINVAL);
	/* A stored hold whose accounts were not put. */
	kobo_transfer orphan = op_hold("h1", "x", "y", 5, 0).u.transfer;
	orphan.status = KOBO_STATUS_PENDING;
	assert_int_equal(kobo_ledger_put_transfer(ledger, &orphan), KOBO_OK);
	kobo_op post = op_target(KOBO_OP_POST, "h1");
	assert_int_equal(kobo_ledger_apply(ledger, &post, 1, NOW_MS, &result),
	                 KOBO_EINVAL);
	EXPECT_I64(transfer_change_count(), 0);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_names_round_trip),
		T(test_create_account),
		T(test_create_account_replay_has_current_balances),
		T(test_create_account_id_conflict),
		T(test_transfer_posted_moves_money),
		T(test_transfer_allow_negative_goes_negative),
		T(test_transfer_replay_and_id_conflict),
		T(test_transfer_replay_of_stored_transfer),
		T(test_rejection_same_account),
		T(test_rejection_account_not_found),
		T(test_rejection_currency_mismatch),
		T(test_rejection_insufficient_funds),
		T(test_overflow_posted),
		T(test_overflow_near_limits_put),
		T(test_overflow_pending_sums),
		T(test_overflow_available_of_put_account),
		T(test_overflow_at_post),
		T(test_hold_created),
		T(test_hold_post_full),
		T(test_hold_post_partial_releases_rest),
		T(test_hold_post_more_than_held),
		T(test_hold_void),
		T(test_post_void_unknown_and_not_holds),
		T(test_expire),
		T(test_post_after_expiry_expires),
		T(test_void_after_expiry_says_expired),
		T(test_stored_hold_is_updated_not_new),
		T(test_batch_create_and_post_hold),
		T(test_batch_same_new_id_twice),
		T(test_change_lists),
		T(test_atomic_success),
		T(test_atomic_failure_undoes_and_records),
		T(test_atomic_failure_keeps_replays_of_older_records),
		T(test_atomic_failure_with_new_id_twice),
		T(test_atomic_retry_with_repeated_id_answers_the_same),
		T(test_atomic_failure_on_post_undoes_hold),
		T(test_atomic_replayed_rejection_fails_group),
		T(test_atomic_retry_keeps_id_conflict),
		T(test_atomic_adjacent_groups),
		T(test_ids_are_distinct),
		T(test_capacity),
		T(test_invalid_ops_refused),
	};
#undef T
	return cmocka_run_group_tests(tests, NULL, NULL);
}
