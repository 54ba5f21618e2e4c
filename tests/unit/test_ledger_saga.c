/*
 * test_ledger_saga.c — the ledger's cross-shard rules: DEBIT legs on the
 * payer's shard A, CREDIT legs on the payee's shard B, and the saga steps
 * (SAGA_CREDIT, SAGA_ABORT, SAGA_SETTLE) that join them. The rules are the
 * "Cross-shard rules" comment of src/ledger/ledger.h; the protocol picture
 * is at the top of src/saga/saga.h.
 *
 * Each test drives two shards, each a ledger over a tiny in-memory store fed
 * the way the shard writer feeds it (reset, transfer ids, put, account ids,
 * put, apply, persist), so every op sees what earlier batches persisted.
 * Failures print the expected and the seen value by name.
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
#define OPS_MAX 8
#define STORE_ACCOUNTS_MAX 16
#define STORE_TRANSFERS_MAX 16

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

static void check_name(const char *what, const char *seen,
                       const char *expected, const char *file, int line)
{
	if (strcmp(seen, expected) != 0) {
		print_error("%s: expected %s, saw %s\n", what, expected, seen);
		_fail(file, line);
	}
}

#define EXPECT_I64(seen, expected) \
	check_i64(#seen, (int64_t)(seen), (int64_t)(expected), __FILE__, __LINE__)
#define EXPECT_CODE(result, expected)                                      \
	check_name(#result ".code", kobo_result_code_name((result).code),  \
	           kobo_result_code_name(expected), __FILE__, __LINE__)
#define EXPECT_ERROR(transfer, expected)                                   \
	check_name(#transfer ".error_code",                                \
	           kobo_result_code_name((transfer).error_code),           \
	           kobo_result_code_name(expected), __FILE__, __LINE__)
#define EXPECT_STATUS(transfer, expected)                                  \
	check_name(#transfer ".status",                                    \
	           kobo_transfer_status_name((transfer).status),           \
	           kobo_transfer_status_name(expected), __FILE__, __LINE__)
#define EXPECT_SAGA(transfer, expected)                                    \
	check_name(#transfer ".saga", kobo_saga_state_name((transfer).saga), \
	           kobo_saga_state_name(expected), __FILE__, __LINE__)
#define EXPECT_REASON(transfer, expected)                                  \
	check_i64(#transfer ".void_reason", (transfer).void_reason,        \
	          (expected), __FILE__, __LINE__)
#define EXPECT_TRUE(condition)                                          \
	do {                                                            \
		if (!(condition)) {                                     \
			print_error("expected %s\n", #condition);       \
			_fail(__FILE__, __LINE__);                      \
		}                                                       \
	} while (0)

/* ---- A shard: a ledger over an in-memory store. ---- */

typedef struct shard {
	kobo_ledger *ledger;
	kobo_account accounts[STORE_ACCOUNTS_MAX];
	size_t account_count;
	kobo_transfer transfers[STORE_TRANSFERS_MAX];
	size_t transfer_count;
	/* Changes of the last batch. */
	size_t accounts_changed;
	size_t accounts_created;
	size_t transfers_changed;
} shard;

static shard shard_a, shard_b;

static kobo_account *stored_account(shard *s, const char *id)
{
	for (size_t i = 0; i < s->account_count; i++)
		if (strcmp(s->accounts[i].id, id) == 0)
			return &s->accounts[i];
	return NULL;
}

static kobo_transfer *stored_transfer(shard *s, const char *id)
{
	for (size_t i = 0; i < s->transfer_count; i++)
		if (strcmp(s->transfers[i].id, id) == 0)
			return &s->transfers[i];
	return NULL;
}

/* One batch the way the shard writer runs it; returns apply's status. */
static int run(shard *s, const kobo_op *ops, size_t count, int64_t now_ms,
               kobo_result *results)
{
	const char *ids[KOBO_LEDGER_ACCOUNT_IDS_MAX(OPS_MAX)];
	size_t id_count;
	kobo_ledger_reset(s->ledger);
	kobo_ledger_transfer_ids(ops, count, ids, &id_count);
	for (size_t i = 0; i < id_count; i++) {
		const kobo_transfer *found = stored_transfer(s, ids[i]);
		if (found != NULL)
			assert_int_equal(kobo_ledger_put_transfer(s->ledger,
			                                          found),
			                 KOBO_OK);
	}
	kobo_ledger_account_ids(s->ledger, ops, count, ids, &id_count);
	for (size_t i = 0; i < id_count; i++) {
		const kobo_account *found = stored_account(s, ids[i]);
		if (found != NULL)
			assert_int_equal(kobo_ledger_put_account(s->ledger,
			                                         found),
			                 KOBO_OK);
	}
	int status = kobo_ledger_apply(s->ledger, ops, count, now_ms, results);
	const kobo_account_change *accounts;
	const kobo_transfer_change *transfers;
	s->accounts_changed = kobo_ledger_changed_accounts(s->ledger,
	                                                   &accounts);
	s->transfers_changed = kobo_ledger_changed_transfers(s->ledger,
	                                                     &transfers);
	s->accounts_created = 0;
	for (size_t i = 0; i < s->accounts_changed; i++) {
		kobo_account *old = stored_account(s, accounts[i].account->id);
		EXPECT_TRUE(accounts[i].is_new == (old == NULL));
		if (old == NULL) {
			assert_true(s->account_count < STORE_ACCOUNTS_MAX);
			old = &s->accounts[s->account_count++];
			s->accounts_created++;
		}
		*old = *accounts[i].account;
	}
	for (size_t i = 0; i < s->transfers_changed; i++) {
		kobo_transfer *old =
			stored_transfer(s, transfers[i].transfer->id);
		EXPECT_TRUE(transfers[i].is_new == (old == NULL));
		if (old == NULL) {
			assert_true(s->transfer_count < STORE_TRANSFERS_MAX);
			old = &s->transfers[s->transfer_count++];
		}
		*old = *transfers[i].transfer;
	}
	return status;
}

static kobo_result apply_at(shard *s, kobo_op op, int64_t now_ms)
{
	kobo_result result;
	assert_int_equal(run(s, &op, 1, now_ms, &result), KOBO_OK);
	return result;
}

static kobo_result apply(shard *s, kobo_op op)
{
	return apply_at(s, op, NOW_MS);
}

static void put(shard *s, const char *id, const char *currency,
                bool allow_negative, int64_t posted)
{
	assert_true(s->account_count < STORE_ACCOUNTS_MAX);
	kobo_account *account = &s->accounts[s->account_count++];
	memset(account, 0, sizeof(*account));
	snprintf(account->id, sizeof(account->id), "%s", id);
	snprintf(account->currency, sizeof(account->currency), "%s", currency);
	account->allow_negative = allow_negative;
	account->posted = posted;
	account->metadata = "{}";
	account->metadata_len = 2;
	account->created_at_ms = NOW_MS - 1000;
}

static kobo_account account_of(shard *s, const char *id)
{
	const kobo_account *found = stored_account(s, id);
	if (found == NULL) {
		print_error("account %s does not exist\n", id);
		fail();
	}
	return *found;
}

static kobo_transfer transfer_of(shard *s, const char *id)
{
	const kobo_transfer *found = stored_transfer(s, id);
	if (found == NULL) {
		print_error("transfer %s does not exist\n", id);
		fail();
	}
	return *found;
}

#define EXPECT_BALANCE(s, id, want_posted, want_pending_out, want_pending_in) \
	do {                                                               \
		kobo_account seen_ = account_of(s, id);                    \
		check_i64(#s " " id ".posted", seen_.posted, (want_posted), \
		          __FILE__, __LINE__);                             \
		check_i64(#s " " id ".pending_out", seen_.pending_out,     \
		          (want_pending_out), __FILE__, __LINE__);         \
		check_i64(#s " " id ".pending_in", seen_.pending_in,       \
		          (want_pending_in), __FILE__, __LINE__);          \
	} while (0)

/* A has the payer and a cash account; B the payee. Clearing accounts
 * ("clearing:B" on A, "clearing:A" on B) are created by the legs. */
static int setup(void **state)
{
	(void)state;
	memset(&shard_a, 0, sizeof(shard_a));
	memset(&shard_b, 0, sizeof(shard_b));
	shard_a.ledger = kobo_ledger_create(OPS_MAX);
	shard_b.ledger = kobo_ledger_create(OPS_MAX);
	if (shard_a.ledger == NULL || shard_b.ledger == NULL)
		return -1;
	put(&shard_a, "payer", "NGN", false, 1000);
	put(&shard_a, "cash", "NGN", true, -1000);
	put(&shard_b, "payee", "NGN", false, 0);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	kobo_ledger_destroy(shard_a.ledger);
	kobo_ledger_destroy(shard_b.ledger);
	return 0;
}

/* ---- Ops. ---- */

/* Step 1 on A: payer -> payee (on B), through clearing:B. */
static kobo_op op_debit(const char *id, int64_t amount, bool pending,
                        uint32_t timeout_seconds)
{
	kobo_op op = op_transfer(id, "payer", "payee", amount);
	op.u.transfer.pending = pending;
	op.u.transfer.timeout_seconds = timeout_seconds;
	op.u.transfer.leg = KOBO_LEG_DEBIT;
	snprintf(op.u.transfer.clearing, sizeof(op.u.transfer.clearing),
	         "clearing:B");
	return op;
}

/* Step 2 (SAGA_CREDIT) or 2' (SAGA_ABORT) on B for a DEBIT create. */
static kobo_op op_credit_for(kobo_op debit, kobo_op_kind kind)
{
	kobo_op op = debit;
	op.kind = kind;
	op.u.transfer.leg = KOBO_LEG_CREDIT;
	snprintf(op.u.transfer.clearing, sizeof(op.u.transfer.clearing),
	         "clearing:A");
	return op;
}

static kobo_op op_credit(const char *id, int64_t amount, bool pending)
{
	return op_credit_for(op_debit(id, amount, pending, 0),
	                     KOBO_OP_SAGA_CREDIT);
}

/* Step 3 on A; these tests name every settle "req-settle". */
static kobo_op op_settle(const char *id, bool refused,
                         kobo_result_code refusal)
{
	return test_op_named(test_op_settle(id, refused, refusal), "req-settle");
}

static kobo_op op_credited(const char *id)
{
	return op_settle(id, false, KOBO_RESULT_CREATED);
}

/* A's record of a pending DEBIT leg of 300 whose credit leg B made: PENDING,
 * saga NONE, holding 300 (payer pending_out, clearing:B pending_in). */
static void pending_debit(const char *id, uint32_t timeout_seconds)
{
	EXPECT_CODE(apply(&shard_a, op_debit(id, 300, true, timeout_seconds)),
	            KOBO_RESULT_CREATED);
	EXPECT_CODE(apply(&shard_a, op_credited(id)), KOBO_RESULT_UPDATED);
	EXPECT_STATUS(transfer_of(&shard_a, id), KOBO_STATUS_PENDING);
}

/* ---- Names. ---- */

static void test_names(void **state)
{
	(void)state;
	assert_string_equal(kobo_result_code_name(KOBO_RESULT_SAGA_TIMEOUT),
	                    "saga_timeout");
	assert_int_equal(kobo_result_code_parse("saga_timeout"),
	                 KOBO_RESULT_SAGA_TIMEOUT);
	assert_string_equal(kobo_leg_name(KOBO_LEG_LOCAL), "local");
	assert_string_equal(kobo_leg_name(KOBO_LEG_DEBIT), "debit");
	assert_string_equal(kobo_leg_name(KOBO_LEG_CREDIT), "credit");
	assert_string_equal(kobo_saga_state_name(KOBO_SAGA_NONE), "none");
	assert_string_equal(kobo_saga_state_name(KOBO_SAGA_RESERVED),
	                    "reserved");
	assert_string_equal(kobo_saga_state_name(KOBO_SAGA_POSTING), "posting");
	assert_string_equal(kobo_saga_state_name(KOBO_SAGA_VOIDING), "voiding");
	assert_string_equal(kobo_void_reason_name(KOBO_VOID_COMPENSATED),
	                    "compensated");
}

/* ---- Step 1: the DEBIT leg on A. ---- */

static void test_debit_create_reserves(void **state)
{
	(void)state;
	kobo_result result = apply(&shard_a, op_debit("t1", 300, false, 0));
	EXPECT_CODE(result, KOBO_RESULT_CREATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_PROCESSING);
	EXPECT_SAGA(result.transfer, KOBO_SAGA_RESERVED);
	EXPECT_I64(result.transfer.leg, KOBO_LEG_DEBIT);
	assert_string_equal(result.transfer.clearing, "clearing:B");
	assert_string_equal(result.transfer.to, "payee");
	EXPECT_I64(result.transfer.posted_amount, 0);
	EXPECT_I64(result.transfer.expires_at_ms, 0);
	EXPECT_BALANCE(&shard_a, "payer", 1000, 300, 0);
	EXPECT_BALANCE(&shard_a, "clearing:B", 0, 0, 300);
	/* The clearing account was created, as a new account. */
	EXPECT_I64(shard_a.accounts_created, 1);
	kobo_account clearing = account_of(&shard_a, "clearing:B");
	EXPECT_TRUE(clearing.allow_negative);
	assert_string_equal(clearing.currency, "NGN");
	EXPECT_I64(clearing.metadata_len, 2);
	EXPECT_TRUE(memcmp(clearing.metadata, "{}", 2) == 0);
	EXPECT_I64(clearing.created_at_ms, NOW_MS);

	/* A second leg reuses it. */
	EXPECT_CODE(apply(&shard_a, op_debit("t2", 100, false, 0)),
	            KOBO_RESULT_CREATED);
	EXPECT_I64(shard_a.accounts_created, 0);
	EXPECT_BALANCE(&shard_a, "clearing:B", 0, 0, 400);
}

static void test_debit_create_pending_expiry(void **state)
{
	(void)state;
	kobo_result result = apply(&shard_a, op_debit("t1", 300, true, 60));
	EXPECT_STATUS(result.transfer, KOBO_STATUS_PROCESSING);
	EXPECT_I64(result.transfer.expires_at_ms, NOW_MS + 60000);
	result = apply(&shard_a, op_debit("t2", 300, false, 60));
	EXPECT_I64(result.transfer.expires_at_ms, 0); /* not a hold */
}

static void test_debit_create_replay_and_conflict(void **state)
{
	(void)state;
	kobo_op debit = op_debit("t1", 300, false, 0);
	apply(&shard_a, debit);
	kobo_result result = apply(&shard_a, debit);
	EXPECT_CODE(result, KOBO_RESULT_REPLAYED);
	EXPECT_SAGA(result.transfer, KOBO_SAGA_RESERVED);
	EXPECT_I64(shard_a.accounts_changed + shard_a.transfers_changed, 0);

	kobo_op other_amount = op_debit("t1", 301, false, 0);
	kobo_op other_clearing = debit;
	snprintf(other_clearing.u.transfer.clearing,
	         sizeof(other_clearing.u.transfer.clearing), "clearing:C");
	kobo_op local = op_transfer("t1", "payer", "cash", 300);
	kobo_op other_leg = debit; /* differs only by its leg */
	other_leg.kind = KOBO_OP_SAGA_CREDIT;
	other_leg.u.transfer.leg = KOBO_LEG_CREDIT;
	EXPECT_CODE(apply(&shard_a, other_leg), KOBO_RESULT_ID_CONFLICT);
	EXPECT_CODE(apply(&shard_a, other_amount), KOBO_RESULT_ID_CONFLICT);
	EXPECT_CODE(apply(&shard_a, other_clearing), KOBO_RESULT_ID_CONFLICT);
	EXPECT_CODE(apply(&shard_a, local), KOBO_RESULT_ID_CONFLICT);
	EXPECT_I64(shard_a.transfers_changed, 0);
	EXPECT_BALANCE(&shard_a, "payer", 1000, 300, 0);
}

static void test_debit_create_rejections(void **state)
{
	(void)state;
	kobo_result result = apply(&shard_a, op_debit("t1", 1001, false, 0));
	EXPECT_CODE(result, KOBO_RESULT_INSUFFICIENT_FUNDS);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_REJECTED);
	EXPECT_SAGA(result.transfer, KOBO_SAGA_NONE);
	EXPECT_I64(result.transfer.leg, KOBO_LEG_DEBIT);
	EXPECT_ERROR(result.transfer, KOBO_RESULT_INSUFFICIENT_FUNDS);
	/* Nothing moved, and no clearing account for a refusal. */
	EXPECT_I64(shard_a.accounts_changed, 0);
	EXPECT_TRUE(stored_account(&shard_a, "clearing:B") == NULL);
	result = apply(&shard_a, op_debit("t1", 1001, false, 0));
	EXPECT_CODE(result, KOBO_RESULT_REPLAYED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_REJECTED);

	kobo_op no_payer = op_debit("t2", 10, false, 0);
	snprintf(no_payer.u.transfer.from, sizeof(no_payer.u.transfer.from),
	         "ghost");
	EXPECT_CODE(apply(&shard_a, no_payer),
	            KOBO_RESULT_ACCOUNT_NOT_FOUND);

	/* An existing clearing account of another currency: a caller bug,
	 * refused as a currency mismatch. */
	put(&shard_a, "clearing:B", "USD", true, 0);
	result = apply(&shard_a, op_debit("t3", 10, false, 0));
	EXPECT_CODE(result, KOBO_RESULT_CURRENCY_MISMATCH);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_REJECTED);
}

/* ---- Step 2 / 2': the CREDIT leg on B. ---- */

static void test_credit_posted(void **state)
{
	(void)state;
	kobo_result result = apply(&shard_b, op_credit("t1", 300, false));
	EXPECT_CODE(result, KOBO_RESULT_CREATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_POSTED);
	EXPECT_I64(result.transfer.leg, KOBO_LEG_CREDIT);
	EXPECT_SAGA(result.transfer, KOBO_SAGA_NONE);
	EXPECT_I64(result.transfer.posted_amount, 300);
	EXPECT_I64(shard_b.accounts_created, 1);
	EXPECT_BALANCE(&shard_b, "clearing:A", -300, 0, 0);
	EXPECT_BALANCE(&shard_b, "payee", 300, 0, 0);

	result = apply(&shard_b, op_credit("t1", 300, false));
	EXPECT_CODE(result, KOBO_RESULT_REPLAYED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_POSTED);
	EXPECT_I64(shard_b.accounts_changed + shard_b.transfers_changed, 0);
	EXPECT_BALANCE(&shard_b, "payee", 300, 0, 0);
}

static void test_credit_pending_never_expires(void **state)
{
	(void)state;
	kobo_op credit = op_credit_for(op_debit("t1", 300, true, 60),
	                               KOBO_OP_SAGA_CREDIT);
	kobo_result result = apply(&shard_b, credit);
	EXPECT_CODE(result, KOBO_RESULT_CREATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_PENDING);
	EXPECT_I64(result.transfer.timeout_seconds, 60);
	EXPECT_I64(result.transfer.expires_at_ms, 0);
	EXPECT_BALANCE(&shard_b, "clearing:A", 0, 300, 0);
	EXPECT_BALANCE(&shard_b, "payee", 0, 0, 300);
	/* EXPIRE ignores CREDIT legs, however late. */
	result = apply_at(&shard_b, op_target(KOBO_OP_EXPIRE, "t1"),
	                  NOW_MS + 3600000);
	EXPECT_CODE(result, KOBO_RESULT_NOT_PENDING);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_PENDING);
}

static void test_credit_refusals_recorded(void **state)
{
	(void)state;
	/* Payee missing. */
	kobo_op missing = op_credit("t1", 300, false);
	snprintf(missing.u.transfer.to, sizeof(missing.u.transfer.to), "ghost");
	kobo_result result = apply(&shard_b, missing);
	EXPECT_CODE(result, KOBO_RESULT_ACCOUNT_NOT_FOUND);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_REJECTED);
	EXPECT_I64(result.transfer.leg, KOBO_LEG_CREDIT);
	EXPECT_ERROR(result.transfer, KOBO_RESULT_ACCOUNT_NOT_FOUND);
	EXPECT_TRUE(stored_account(&shard_b, "clearing:A") == NULL);
	result = apply(&shard_b, missing);
	EXPECT_CODE(result, KOBO_RESULT_REPLAYED);
	EXPECT_ERROR(result.transfer, KOBO_RESULT_ACCOUNT_NOT_FOUND);

	/* Currency mismatch. */
	put(&shard_b, "payee:usd", "USD", false, 0);
	kobo_op usd = op_credit("t2", 300, false);
	snprintf(usd.u.transfer.to, sizeof(usd.u.transfer.to), "payee:usd");
	result = apply(&shard_b, usd);
	EXPECT_CODE(result, KOBO_RESULT_CURRENCY_MISMATCH);
	EXPECT_ERROR(result.transfer, KOBO_RESULT_CURRENCY_MISMATCH);

	/* Overflow of the payee. */
	put(&shard_b, "payee:full", "NGN", false, INT64_MAX - 10);
	kobo_op full = op_credit("t3", 300, false);
	snprintf(full.u.transfer.to, sizeof(full.u.transfer.to), "payee:full");
	result = apply(&shard_b, full);
	EXPECT_CODE(result, KOBO_RESULT_AMOUNT_OVERFLOW);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_REJECTED);
	result = apply(&shard_b, full);
	EXPECT_CODE(result, KOBO_RESULT_REPLAYED);
	EXPECT_ERROR(result.transfer, KOBO_RESULT_AMOUNT_OVERFLOW);
	EXPECT_BALANCE(&shard_b, "payee:full", INT64_MAX - 10, 0, 0);
}

static void test_credit_id_conflict_with_local(void **state)
{
	(void)state;
	put(&shard_b, "other", "NGN", true, 0);
	EXPECT_CODE(apply(&shard_b, op_transfer("t1", "other", "payee", 5)),
	            KOBO_RESULT_CREATED);
	kobo_result result = apply(&shard_b, op_credit("t1", 5, false));
	EXPECT_CODE(result, KOBO_RESULT_ID_CONFLICT);
	EXPECT_TRUE(!result.has_transfer);
	EXPECT_I64(shard_b.transfers_changed, 0);
	EXPECT_CODE(apply(&shard_b, op_credit_for(op_debit("t1", 5, false, 0),
	                                          KOBO_OP_SAGA_ABORT)),
	            KOBO_RESULT_ID_CONFLICT);
	EXPECT_BALANCE(&shard_b, "payee", 5, 0, 0);
}

static void test_abort_before_credit(void **state)
{
	(void)state;
	kobo_op debit = op_debit("t1", 300, false, 0);
	kobo_result result = apply(&shard_b,
	                           op_credit_for(debit, KOBO_OP_SAGA_ABORT));
	EXPECT_CODE(result, KOBO_RESULT_CREATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_REJECTED);
	EXPECT_I64(result.transfer.leg, KOBO_LEG_CREDIT);
	EXPECT_ERROR(result.transfer, KOBO_RESULT_SAGA_TIMEOUT);
	EXPECT_I64(shard_b.accounts_changed, 0);
	/* A late credit replays the refusal; a repeated abort too. */
	result = apply(&shard_b, op_credit_for(debit, KOBO_OP_SAGA_CREDIT));
	EXPECT_CODE(result, KOBO_RESULT_REPLAYED);
	EXPECT_ERROR(result.transfer, KOBO_RESULT_SAGA_TIMEOUT);
	result = apply(&shard_b, op_credit_for(debit, KOBO_OP_SAGA_ABORT));
	EXPECT_CODE(result, KOBO_RESULT_REPLAYED);
	EXPECT_BALANCE(&shard_b, "payee", 0, 0, 0);
}

static void test_abort_after_credit(void **state)
{
	(void)state;
	kobo_op debit = op_debit("t1", 300, false, 0);
	apply(&shard_b, op_credit_for(debit, KOBO_OP_SAGA_CREDIT));
	kobo_result result = apply(&shard_b,
	                           op_credit_for(debit, KOBO_OP_SAGA_ABORT));
	EXPECT_CODE(result, KOBO_RESULT_REPLAYED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_POSTED);
	EXPECT_I64(shard_b.transfers_changed, 0);
	EXPECT_BALANCE(&shard_b, "payee", 300, 0, 0);
}

/* ---- Step 3: SAGA_SETTLE on A. ---- */

static void test_settle_reserved_credited_posts(void **state)
{
	(void)state;
	apply(&shard_a, op_debit("t1", 300, false, 0));
	kobo_result result = apply(&shard_a, op_credited("t1"));
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_POSTED);
	EXPECT_SAGA(result.transfer, KOBO_SAGA_NONE);
	EXPECT_I64(result.transfer.posted_amount, 300);
	EXPECT_BALANCE(&shard_a, "payer", 700, 0, 0);
	EXPECT_BALANCE(&shard_a, "clearing:B", 300, 0, 0);
	/* Settling again moves nothing. */
	result = apply(&shard_a, op_credited("t1"));
	EXPECT_CODE(result, KOBO_RESULT_REPLAYED);
	EXPECT_I64(shard_a.accounts_changed + shard_a.transfers_changed, 0);
	EXPECT_BALANCE(&shard_a, "payer", 700, 0, 0);
}

static void test_settle_reserved_credited_pending(void **state)
{
	(void)state;
	apply(&shard_a, op_debit("t1", 300, true, 0));
	kobo_result result = apply(&shard_a, op_credited("t1"));
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_PENDING);
	EXPECT_SAGA(result.transfer, KOBO_SAGA_NONE);
	EXPECT_ERROR(result.transfer, KOBO_RESULT_CREATED);
	EXPECT_BALANCE(&shard_a, "payer", 1000, 300, 0);
	EXPECT_BALANCE(&shard_a, "clearing:B", 0, 0, 300);
	EXPECT_CODE(apply(&shard_a, op_credited("t1")), KOBO_RESULT_REPLAYED);
}

static void test_settle_reserved_refused_compensates(void **state)
{
	(void)state;
	apply(&shard_a, op_debit("t1", 300, true, 0));
	kobo_op refused = op_settle("t1", true, KOBO_RESULT_ACCOUNT_NOT_FOUND);
	kobo_result result = apply(&shard_a, refused);
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_VOIDED);
	EXPECT_REASON(result.transfer, KOBO_VOID_COMPENSATED);
	EXPECT_ERROR(result.transfer, KOBO_RESULT_ACCOUNT_NOT_FOUND);
	EXPECT_SAGA(result.transfer, KOBO_SAGA_NONE);
	EXPECT_BALANCE(&shard_a, "payer", 1000, 0, 0);
	EXPECT_BALANCE(&shard_a, "clearing:B", 0, 0, 0);
	result = apply(&shard_a, refused);
	EXPECT_CODE(result, KOBO_RESULT_REPLAYED);
	EXPECT_ERROR(result.transfer, KOBO_RESULT_ACCOUNT_NOT_FOUND);
	EXPECT_I64(shard_a.accounts_changed, 0);
}

static void test_settle_unknown_and_local(void **state)
{
	(void)state;
	EXPECT_CODE(apply(&shard_a, op_credited("nope")),
	            KOBO_RESULT_TRANSFER_NOT_FOUND);
	apply(&shard_a, op_transfer("t1", "payer", "cash", 5));
	EXPECT_CODE(apply(&shard_a, op_credited("t1")), KOBO_RESULT_REPLAYED);
}

/* ---- Post, void and expire of a DEBIT leg start saga steps. ---- */

static void test_post_debit_starts_posting(void **state)
{
	(void)state;
	pending_debit("t1", 0);
	kobo_result result = apply(&shard_a, op_post_amount("t1", 200));
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_PROCESSING);
	EXPECT_SAGA(result.transfer, KOBO_SAGA_POSTING);
	EXPECT_I64(result.transfer.saga_amount, 200);
	/* Nothing moves yet: the whole amount stays held. */
	EXPECT_BALANCE(&shard_a, "payer", 1000, 300, 0);
	EXPECT_BALANCE(&shard_a, "clearing:B", 0, 0, 300);

	EXPECT_CODE(apply(&shard_a, op_target(KOBO_OP_POST, "t1")),
	            KOBO_RESULT_REPLAYED);
	/* Another step is under way: a client may retry it (409). */
	EXPECT_CODE(apply(&shard_a, op_target(KOBO_OP_VOID, "t1")),
	            KOBO_RESULT_TRANSFER_IN_PROGRESS);
	EXPECT_CODE(apply(&shard_a, op_target(KOBO_OP_EXPIRE, "t1")),
	            KOBO_RESULT_NOT_PENDING);
	EXPECT_SAGA(transfer_of(&shard_a, "t1"), KOBO_SAGA_POSTING);
	EXPECT_I64(transfer_of(&shard_a, "t1").saga_amount, 200);

	/* B posted 200: the rest of the hold is released. */
	result = apply(&shard_a, op_credited("t1"));
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_POSTED);
	EXPECT_I64(result.transfer.posted_amount, 200);
	EXPECT_I64(result.transfer.saga_amount, 0);
	EXPECT_BALANCE(&shard_a, "payer", 800, 0, 0);
	EXPECT_BALANCE(&shard_a, "clearing:B", 200, 0, 0);
	EXPECT_CODE(apply(&shard_a, op_credited("t1")), KOBO_RESULT_REPLAYED);
	EXPECT_BALANCE(&shard_a, "payer", 800, 0, 0);
}

/* An answer that belongs to an earlier step (RESERVED) arriving while the
 * record is POSTING changes nothing: only the step's own answer settles it. */
static void test_settle_of_another_step_is_stale(void **state)
{
	(void)state;
	pending_debit("t1", 0);
	apply(&shard_a, op_post_amount("t1", 200));
	kobo_op stale = op_credited("t1");
	stale.u.settle.step = KOBO_SAGA_RESERVED;
	EXPECT_CODE(apply(&shard_a, stale), KOBO_RESULT_REPLAYED);
	EXPECT_SAGA(transfer_of(&shard_a, "t1"), KOBO_SAGA_POSTING);
	EXPECT_BALANCE(&shard_a, "payer", 1000, 300, 0);
	kobo_op own = op_credited("t1");
	own.u.settle.step = KOBO_SAGA_POSTING;
	EXPECT_CODE(apply(&shard_a, own), KOBO_RESULT_UPDATED);
	EXPECT_BALANCE(&shard_a, "payer", 800, 0, 0);
	kobo_result result;
	own.u.settle.step = (kobo_saga_state)(KOBO_SAGA_VOIDING + 1);
	assert_int_equal(run(&shard_a, &own, 1, NOW_MS, &result), KOBO_EINVAL);
}

static void test_post_debit_checks_amount(void **state)
{
	(void)state;
	pending_debit("t1", 0);
	kobo_result result = apply(&shard_a, op_post_amount("t1", 301));
	EXPECT_CODE(result, KOBO_RESULT_AMOUNT_EXCEEDS_PENDING);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_PENDING);
	/* A reserved leg is not a hold a client may post or void yet: its
	 * create is still under way, so the answer says retry. */
	apply(&shard_a, op_debit("t2", 10, true, 0));
	EXPECT_CODE(apply(&shard_a, op_target(KOBO_OP_POST, "t2")),
	            KOBO_RESULT_TRANSFER_IN_PROGRESS);
	EXPECT_CODE(apply(&shard_a, op_target(KOBO_OP_VOID, "t2")),
	            KOBO_RESULT_TRANSFER_IN_PROGRESS);
	EXPECT_SAGA(transfer_of(&shard_a, "t2"), KOBO_SAGA_RESERVED);
}

static void test_settle_posting_refused(void **state)
{
	(void)state;
	pending_debit("t1", 0);
	apply(&shard_a, op_target(KOBO_OP_POST, "t1"));
	kobo_result result = apply(&shard_a,
	                           op_settle("t1", true,
	                                     KOBO_RESULT_AMOUNT_OVERFLOW));
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_PENDING);
	EXPECT_SAGA(result.transfer, KOBO_SAGA_NONE);
	EXPECT_ERROR(result.transfer, KOBO_RESULT_AMOUNT_OVERFLOW);
	EXPECT_BALANCE(&shard_a, "payer", 1000, 300, 0);
	/* A new post starts over and forgets the old refusal. */
	result = apply(&shard_a, op_target(KOBO_OP_POST, "t1"));
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_SAGA(result.transfer, KOBO_SAGA_POSTING);
	EXPECT_ERROR(result.transfer, KOBO_RESULT_CREATED);
}

static void test_void_debit_starts_voiding(void **state)
{
	(void)state;
	pending_debit("t1", 0);
	kobo_result result = apply(&shard_a, op_target(KOBO_OP_VOID, "t1"));
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_PROCESSING);
	EXPECT_SAGA(result.transfer, KOBO_SAGA_VOIDING);
	EXPECT_REASON(result.transfer, KOBO_VOID_NONE);
	EXPECT_I64(result.transfer.saga_reason, KOBO_VOID_VOIDED);
	EXPECT_BALANCE(&shard_a, "payer", 1000, 300, 0);
	EXPECT_CODE(apply(&shard_a, op_target(KOBO_OP_VOID, "t1")),
	            KOBO_RESULT_REPLAYED);
	EXPECT_CODE(apply(&shard_a, op_target(KOBO_OP_POST, "t1")),
	            KOBO_RESULT_TRANSFER_IN_PROGRESS);
	/* B can always void: a refusal is a caller bug that changes
	 * nothing. */
	EXPECT_CODE(apply(&shard_a, op_settle("t1", true,
	                                      KOBO_RESULT_NOT_PENDING)),
	            KOBO_RESULT_NOT_PENDING);
	EXPECT_I64(shard_a.transfers_changed, 0);
	result = apply(&shard_a, op_credited("t1"));
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_VOIDED);
	EXPECT_REASON(result.transfer, KOBO_VOID_VOIDED);
	EXPECT_I64(result.transfer.saga_reason, KOBO_VOID_NONE);
	EXPECT_BALANCE(&shard_a, "payer", 1000, 0, 0);
	EXPECT_BALANCE(&shard_a, "clearing:B", 0, 0, 0);
	EXPECT_CODE(apply(&shard_a, op_target(KOBO_OP_VOID, "t1")),
	            KOBO_RESULT_REPLAYED);
}

static void test_expire_debit_starts_voiding(void **state)
{
	(void)state;
	pending_debit("t1", 60);
	EXPECT_CODE(apply_at(&shard_a, op_target(KOBO_OP_EXPIRE, "t1"),
	                     NOW_MS + 59999),
	            KOBO_RESULT_NOT_PENDING);
	kobo_result result = apply_at(&shard_a,
	                              op_target(KOBO_OP_EXPIRE, "t1"),
	                              NOW_MS + 60000);
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_SAGA(result.transfer, KOBO_SAGA_VOIDING);
	EXPECT_I64(result.transfer.saga_reason, KOBO_VOID_EXPIRED);
	EXPECT_BALANCE(&shard_a, "payer", 1000, 300, 0);
	EXPECT_CODE(apply_at(&shard_a, op_target(KOBO_OP_EXPIRE, "t1"),
	                     NOW_MS + 60000),
	            KOBO_RESULT_NOT_PENDING);
	result = apply(&shard_a, op_credited("t1"));
	EXPECT_STATUS(result.transfer, KOBO_STATUS_VOIDED);
	EXPECT_REASON(result.transfer, KOBO_VOID_EXPIRED);
	EXPECT_BALANCE(&shard_a, "payer", 1000, 0, 0);
}

static void test_late_post_and_void_of_debit(void **state)
{
	(void)state;
	pending_debit("t1", 60);
	kobo_result result = apply_at(&shard_a, op_target(KOBO_OP_POST, "t1"),
	                              NOW_MS + 60000);
	EXPECT_CODE(result, KOBO_RESULT_NOT_PENDING);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_PROCESSING);
	EXPECT_SAGA(result.transfer, KOBO_SAGA_VOIDING);
	EXPECT_I64(result.transfer.saga_reason, KOBO_VOID_EXPIRED);
	EXPECT_I64(shard_a.transfers_changed, 1);

	pending_debit("t2", 60);
	result = apply_at(&shard_a, op_target(KOBO_OP_VOID, "t2"),
	                  NOW_MS + 60000);
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_I64(result.transfer.saga_reason, KOBO_VOID_EXPIRED);
}

/* ---- Kobo's clearing accounts: bounds and lanes (issue 7 items 2, 4). ---- */

/* A DEBIT leg from an account of its own, as a client with allow_negative
 * would send it. */
static kobo_op op_debit_from(const char *id, const char *from, int64_t amount,
                             bool pending)
{
	kobo_op op = op_debit(id, amount, pending, 0);
	snprintf(op.u.transfer.from, sizeof(op.u.transfer.from), "%s", from);
	return op;
}

/* Several sagas in flight that each fit the clearing account but not
 * together: once B credited them all, A must be able to post every one
 * (today the second stayed PROCESSING for ever, answering amount_overflow
 * to every settle while the payee was already paid). */
static void test_clearing_bound_counts_every_hold(void **state)
{
	(void)state;
	put(&shard_a, "bank", "NGN", true, 0);
	EXPECT_CODE(apply(&shard_a, op_debit_from("big", "bank", INT64_MAX - 1,
	                                          false)),
	            KOBO_RESULT_CREATED);
	EXPECT_CODE(apply(&shard_a, op_credited("big")), KOBO_RESULT_UPDATED);
	EXPECT_BALANCE(&shard_a, "clearing:B", INT64_MAX - 1, 0, 0);

	kobo_op ops[2] = {op_debit_from("s1", "cash", 1, false),
	                  op_debit_from("s2", "cash", 1, false)};
	kobo_result results[2];
	assert_int_equal(run(&shard_a, ops, 2, NOW_MS, results), KOBO_OK);
	EXPECT_CODE(results[0], KOBO_RESULT_CREATED);
	EXPECT_CODE(results[1], KOBO_RESULT_CREATED);
	for (int i = 0; i < 2; i++) {
		const char *id = ops[i].u.transfer.id;
		EXPECT_CODE(apply(&shard_a, op_credited(id)),
		            KOBO_RESULT_UPDATED);
		EXPECT_STATUS(transfer_of(&shard_a, id), KOBO_STATUS_POSTED);
	}
	/* The account stayed within range: the second took a lane. */
	EXPECT_BALANCE(&shard_a, "clearing:B", INT64_MAX, 0, 0);
	char lane[KOBO_ID_LEN_MAX + 1];
	kobo_clearing_lane_id(lane, "clearing:B", "s2");
	assert_string_equal(transfer_of(&shard_a, "s2").clearing, lane);
	kobo_account in_lane = account_of(&shard_a, lane);
	EXPECT_I64(in_lane.posted, 1);
	EXPECT_I64(in_lane.pending_in, 0);
}

/* B's bound mirrors A's: A's account stops at +INT64_MAX, so B's stops at
 * -INT64_MAX, not one unit further (INT64_MIN). B's can lag A's by the
 * reverse sagas A credited and B has not settled yet: a credit that only
 * B's clearing account blocks waits ("not yet") instead of refusing. */
static void test_credit_bound_mirrors_debit_bound(void **state)
{
	(void)state;
	EXPECT_CODE(apply(&shard_b, op_credit("c1", INT64_MAX - 1, false)),
	            KOBO_RESULT_CREATED);
	EXPECT_CODE(apply(&shard_b, op_credit("c2", 1, false)),
	            KOBO_RESULT_CREATED);
	EXPECT_BALANCE(&shard_b, "clearing:A", -INT64_MAX, 0, 0);
	/* One more, to a payee with room, would pass -INT64_MAX. Only Kobo's
	 * account is in the way, so it is not a refusal: "not yet", nothing
	 * recorded. */
	put(&shard_b, "payee2", "NGN", false, 0);
	kobo_op c3 = op_credit("c3", 1, true);
	snprintf(c3.u.transfer.to, sizeof(c3.u.transfer.to), "payee2");
	kobo_result result = apply(&shard_b, c3);
	EXPECT_CODE(result, KOBO_RESULT_TRANSFER_IN_PROGRESS);
	EXPECT_TRUE(!result.has_transfer);
	EXPECT_I64(shard_b.transfers_changed + shard_b.accounts_changed, 0);
	EXPECT_BALANCE(&shard_b, "clearing:A", -INT64_MAX, 0, 0);
	/* A reverse saga (B -> A) that A already credited settles on B:
	 * now the credit fits. */
	kobo_op back = op_debit_from("r1", "payee", 5, false);
	snprintf(back.u.transfer.to, sizeof(back.u.transfer.to), "payer");
	snprintf(back.u.transfer.clearing, sizeof(back.u.transfer.clearing),
	         "clearing:A");
	EXPECT_CODE(apply(&shard_b, back), KOBO_RESULT_CREATED);
	EXPECT_BALANCE(&shard_b, "clearing:A", -INT64_MAX, 0, 5);
	EXPECT_CODE(apply(&shard_b, c3), KOBO_RESULT_TRANSFER_IN_PROGRESS);
	EXPECT_CODE(apply(&shard_b, op_credited("r1")), KOBO_RESULT_UPDATED);
	EXPECT_BALANCE(&shard_b, "clearing:A", -INT64_MAX + 5, 0, 0);
	result = apply(&shard_b, c3);
	EXPECT_CODE(result, KOBO_RESULT_CREATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_PENDING);
	/* The payee's own limit is a refusal, recorded as before. */
	EXPECT_CODE(apply(&shard_b, op_credit("c4", INT64_MAX, false)),
	            KOBO_RESULT_AMOUNT_OVERFLOW);
	EXPECT_STATUS(transfer_of(&shard_b, "c4"), KOBO_STATUS_REJECTED);
}

/* One client's INT64_MAX hold with no timeout used to fill the shared
 * clearing account, so every other client's A -> B transfer in that
 * currency was a recorded amount_overflow. Now the others' legs take
 * overflow lanes; each replays as itself and posts. */
static void test_clearing_lanes_isolate_clients(void **state)
{
	(void)state;
	put(&shard_a, "bank", "NGN", true, 0);
	EXPECT_CODE(apply(&shard_a, op_debit_from("hog", "bank", INT64_MAX,
	                                          true)),
	            KOBO_RESULT_CREATED);
	EXPECT_CODE(apply(&shard_a, op_credited("hog")), KOBO_RESULT_UPDATED);
	EXPECT_BALANCE(&shard_a, "clearing:B", 0, 0, INT64_MAX);

	kobo_op mine = op_debit("mine", 10, false, 0);
	kobo_result result = apply(&shard_a, mine);
	EXPECT_CODE(result, KOBO_RESULT_CREATED);
	char lane[KOBO_ID_LEN_MAX + 1];
	kobo_clearing_lane_id(lane, "clearing:B", "mine");
	assert_string_equal(result.transfer.clearing, lane);
	/* The client's retry names the base account: still a replay. */
	EXPECT_CODE(apply(&shard_a, mine), KOBO_RESULT_REPLAYED);
	kobo_op other = mine;
	other.u.transfer.amount = 11;
	EXPECT_CODE(apply(&shard_a, other), KOBO_RESULT_ID_CONFLICT);
	EXPECT_CODE(apply(&shard_a, op_credited("mine")), KOBO_RESULT_UPDATED);
	EXPECT_STATUS(transfer_of(&shard_a, "mine"), KOBO_STATUS_POSTED);
	kobo_account in_lane = account_of(&shard_a, lane);
	EXPECT_I64(in_lane.posted, 10);
	EXPECT_I64(in_lane.pending_in, 0);
	EXPECT_BALANCE(&shard_a, "payer", 990, 0, 0);
	EXPECT_BALANCE(&shard_a, "clearing:B", 0, 0, INT64_MAX);

	/* The payer's own limits still apply: not a lane question. */
	EXPECT_CODE(apply(&shard_a, op_debit("broke", 5000, false, 0)),
	            KOBO_RESULT_INSUFFICIENT_FUNDS);
}

/* ---- Post and void of a CREDIT leg: a plain hold on B. ---- */

static void test_post_credit_leg(void **state)
{
	(void)state;
	apply(&shard_b, op_credit("t1", 300, true));
	kobo_result result = apply(&shard_b, op_saga_post_amount("t1", 200));
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_POSTED);
	EXPECT_I64(result.transfer.posted_amount, 200);
	EXPECT_BALANCE(&shard_b, "clearing:A", -200, 0, 0);
	EXPECT_BALANCE(&shard_b, "payee", 200, 0, 0);
	EXPECT_CODE(apply(&shard_b, op_saga_post_amount("t1", 200)),
	            KOBO_RESULT_REPLAYED);
	EXPECT_BALANCE(&shard_b, "payee", 200, 0, 0);
}

/* Issue 7 item 1: a client's post or void that reaches the payee's shard
 * (misrouted, or racing the create) never touches the CREDIT leg, which
 * only the saga runner moves: it answers transfer_not_found and changes
 * nothing, whatever the leg's state. */
static void test_client_post_void_never_touch_credit_leg(void **state)
{
	(void)state;
	apply(&shard_b, op_credit("t1", 300, true));
	EXPECT_CODE(apply(&shard_b, op_post_amount("t1", 1)),
	            KOBO_RESULT_TRANSFER_NOT_FOUND);
	EXPECT_CODE(apply(&shard_b, op_target(KOBO_OP_POST, "t1")),
	            KOBO_RESULT_TRANSFER_NOT_FOUND);
	EXPECT_CODE(apply(&shard_b, op_target(KOBO_OP_VOID, "t1")),
	            KOBO_RESULT_TRANSFER_NOT_FOUND);
	EXPECT_I64(shard_b.transfers_changed + shard_b.accounts_changed, 0);
	EXPECT_STATUS(transfer_of(&shard_b, "t1"), KOBO_STATUS_PENDING);
	EXPECT_BALANCE(&shard_b, "clearing:A", 0, 300, 0);
	EXPECT_BALANCE(&shard_b, "payee", 0, 0, 300);
	/* In an atomic group too: the group fails, nothing moves. */
	kobo_op ops[1] = {op_target(KOBO_OP_VOID, "t1")};
	ops[0].atomic_group = 1;
	kobo_result results[1];
	assert_int_equal(run(&shard_b, ops, 1, NOW_MS, results), KOBO_OK);
	EXPECT_CODE(results[0], KOBO_RESULT_TRANSFER_NOT_FOUND);
	EXPECT_STATUS(transfer_of(&shard_b, "t1"), KOBO_STATUS_PENDING);
	/* And the runner's ops never touch a LOCAL transfer or a DEBIT leg. */
	apply(&shard_a, op_debit("t9", 10, true, 0));
	EXPECT_CODE(apply(&shard_a, op_saga_void("t9")),
	            KOBO_RESULT_TRANSFER_NOT_FOUND);
	EXPECT_SAGA(transfer_of(&shard_a, "t9"), KOBO_SAGA_RESERVED);
}

static void test_void_credit_leg(void **state)
{
	(void)state;
	apply(&shard_b, op_credit("t1", 300, true));
	kobo_result result = apply(&shard_b, op_saga_void("t1"));
	EXPECT_CODE(result, KOBO_RESULT_UPDATED);
	EXPECT_STATUS(result.transfer, KOBO_STATUS_VOIDED);
	EXPECT_REASON(result.transfer, KOBO_VOID_VOIDED);
	EXPECT_BALANCE(&shard_b, "clearing:A", 0, 0, 0);
	EXPECT_BALANCE(&shard_b, "payee", 0, 0, 0);
	EXPECT_CODE(apply(&shard_b, op_saga_void("t1")),
	            KOBO_RESULT_REPLAYED);
}

/* ---- Preconditions, id lists, capacity, groups. ---- */

static void expect_refused(shard *s, const kobo_op *ops, size_t count)
{
	kobo_result results[OPS_MAX];
	assert_int_equal(run(s, ops, count, NOW_MS, results), KOBO_EINVAL);
	EXPECT_I64(s->transfers_changed + s->accounts_changed, 0);
}

static void test_legs_and_saga_ops_refused_in_groups(void **state)
{
	(void)state;
	kobo_op debit = op_debit("t1", 10, false, 0);
	kobo_op ops[2] = {op_transfer("t0", "payer", "cash", 1), debit};
	ops[0].atomic_group = ops[1].atomic_group = 1;
	expect_refused(&shard_a, ops, 2);
	kobo_op credit = op_credit_for(debit, KOBO_OP_SAGA_CREDIT);
	credit.atomic_group = 1;
	expect_refused(&shard_b, &credit, 1);
	kobo_op abort = op_credit_for(debit, KOBO_OP_SAGA_ABORT);
	abort.atomic_group = 1;
	expect_refused(&shard_b, &abort, 1);
	kobo_op settle = op_credited("t1");
	settle.atomic_group = 1;
	expect_refused(&shard_a, &settle, 1);
}

static void test_invalid_leg_ops_refused(void **state)
{
	(void)state;
	kobo_op no_clearing = op_debit("t1", 10, false, 0);
	no_clearing.u.transfer.clearing[0] = '\0';
	expect_refused(&shard_a, &no_clearing, 1);
	kobo_op local_with_clearing = op_transfer("t1", "payer", "cash", 10);
	snprintf(local_with_clearing.u.transfer.clearing,
	         sizeof(local_with_clearing.u.transfer.clearing), "clearing:B");
	expect_refused(&shard_a, &local_with_clearing, 1);
	kobo_op create_credit = op_credit("t1", 10, false);
	create_credit.kind = KOBO_OP_CREATE_TRANSFER;
	expect_refused(&shard_b, &create_credit, 1);
	kobo_op credit_debit = op_debit("t1", 10, false, 0);
	credit_debit.kind = KOBO_OP_SAGA_CREDIT;
	expect_refused(&shard_b, &credit_debit, 1);
	kobo_op credit_no_clearing = op_credit("t1", 10, false);
	credit_no_clearing.u.transfer.clearing[0] = '\0';
	expect_refused(&shard_b, &credit_no_clearing, 1);
	kobo_op credit_zero = op_credit("t1", 0, false);
	expect_refused(&shard_b, &credit_zero, 1);
	kobo_op abort_zero = op_credit_for(op_debit("t1", 0, false, 0),
	                                   KOBO_OP_SAGA_ABORT);
	expect_refused(&shard_b, &abort_zero, 1);
	kobo_op bad_refusal = op_settle("t1", true, KOBO_RESULT_CODE_COUNT);
	expect_refused(&shard_a, &bad_refusal, 1);
}

static bool listed(const char **ids, size_t count, const char *id)
{
	for (size_t i = 0; i < count; i++)
		if (strcmp(ids[i], id) == 0)
			return true;
	return false;
}

static void test_id_lists_name_this_shards_accounts(void **state)
{
	(void)state;
	pending_debit("t1", 0); /* stored on A */
	kobo_op ops[3] = {
		op_debit("t2", 10, false, 0),
		op_credited("t1"),
		op_credit_for(op_debit("t3", 10, false, 0), KOBO_OP_SAGA_ABORT),
	};
	const char *ids[KOBO_LEDGER_ACCOUNT_IDS_MAX(3)];
	size_t count;
	kobo_ledger_reset(shard_a.ledger);
	kobo_ledger_transfer_ids(ops, 3, ids, &count);
	EXPECT_I64(count, 3);
	EXPECT_TRUE(listed(ids, count, "t1") && listed(ids, count, "t2") &&
	            listed(ids, count, "t3"));
	assert_int_equal(kobo_ledger_put_transfer(shard_a.ledger,
	                                          stored_transfer(&shard_a,
	                                                          "t1")),
	                 KOBO_OK);
	kobo_ledger_account_ids(shard_a.ledger, ops, 3, ids, &count);
	/* payer, clearing:B and t2's overflow lane; never payee */
	char lane[KOBO_ID_LEN_MAX + 1];
	kobo_clearing_lane_id(lane, "clearing:B", "t2");
	EXPECT_I64(count, 3);
	EXPECT_TRUE(listed(ids, count, "payer") &&
	            listed(ids, count, "clearing:B") && listed(ids, count, lane));

	kobo_op credit = op_credit("t4", 10, false);
	kobo_ledger_reset(shard_b.ledger);
	kobo_ledger_account_ids(shard_b.ledger, &credit, 1, ids, &count);
	EXPECT_I64(count, 2);
	EXPECT_TRUE(listed(ids, count, "clearing:A") &&
	            listed(ids, count, "payee"));
}

static void test_capacity_counts_clearing_accounts(void **state)
{
	(void)state;
	kobo_ledger *small = kobo_ledger_create(1); /* 4 accounts */
	assert_non_null(small);
	static const char *const names[4] = {"payer", "x", "y", "z"};
	for (int i = 0; i < 4; i++) {
		kobo_account account = shard_a.accounts[0];
		snprintf(account.id, sizeof(account.id), "%s", names[i]);
		assert_int_equal(kobo_ledger_put_account(small, &account),
		                 KOBO_OK);
	}
	kobo_op debit = op_debit("t1", 10, false, 0);
	kobo_result result;
	assert_int_equal(kobo_ledger_apply(small, &debit, 1, NOW_MS, &result),
	                 KOBO_EFULL);
	kobo_op credit = op_credit("t1", 10, false);
	assert_int_equal(kobo_ledger_apply(small, &credit, 1, NOW_MS, &result),
	                 KOBO_EFULL);
	/* An abort creates no account. */
	kobo_op abort = op_credit_for(debit, KOBO_OP_SAGA_ABORT);
	assert_int_equal(kobo_ledger_apply(small, &abort, 1, NOW_MS, &result),
	                 KOBO_OK);
	EXPECT_CODE(result, KOBO_RESULT_CREATED);
	kobo_ledger_destroy(small);
}

/* A POST of a group may start a saga step; a failing group undoes it, as
 * an op after the group in the same batch sees. */
static void test_group_rollback_undoes_saga_step(void **state)
{
	(void)state;
	pending_debit("t1", 0);
	kobo_op ops[3] = {op_target(KOBO_OP_POST, "t1"),
	                  op_target(KOBO_OP_POST, "nope"), op_credited("t1")};
	ops[0].atomic_group = ops[1].atomic_group = 7;
	kobo_result results[3];
	assert_int_equal(run(&shard_a, ops, 3, NOW_MS, results), KOBO_OK);
	EXPECT_CODE(results[0], KOBO_RESULT_NOT_APPLIED);
	EXPECT_CODE(results[1], KOBO_RESULT_TRANSFER_NOT_FOUND);
	EXPECT_CODE(results[2], KOBO_RESULT_REPLAYED); /* nothing to settle */
	EXPECT_I64(shard_a.transfers_changed, 0);
	kobo_transfer t1 = transfer_of(&shard_a, "t1");
	EXPECT_STATUS(t1, KOBO_STATUS_PENDING);
	EXPECT_SAGA(t1, KOBO_SAGA_NONE);
	EXPECT_I64(t1.saga_amount, 0);
}

/* ---- The whole protocol over two shards. ---- */

/* Runs the saga of A's record id to its end the way src/saga does: B's op
 * for the outstanding step, then A's SAGA_SETTLE with B's answer. debit is
 * the DEBIT create, needed only while the saga is RESERVED. */
static void drive(const char *id, const kobo_op *debit)
{
	for (int steps = 0; steps < 4; steps++) {
		kobo_transfer record = transfer_of(&shard_a, id);
		kobo_op b_op;
		memset(&b_op, 0, sizeof(b_op));
		switch (record.saga) {
		case KOBO_SAGA_NONE:
			return;
		case KOBO_SAGA_RESERVED:
			assert_non_null(debit);
			b_op = op_credit_for(*debit, KOBO_OP_SAGA_CREDIT);
			break;
		case KOBO_SAGA_POSTING:
			b_op = op_saga_post_amount(id, record.saga_amount);
			break;
		case KOBO_SAGA_VOIDING:
			b_op = op_saga_void(id);
			break;
		}
		kobo_result b = apply(&shard_b, b_op);
		bool refused = b.has_transfer &&
		               b.transfer.status == KOBO_STATUS_REJECTED;
		EXPECT_CODE(apply(&shard_a,
		                  op_settle(id, refused,
		                            refused ? b.transfer.error_code
		                                    : KOBO_RESULT_CREATED)),
		            KOBO_RESULT_UPDATED);
	}
	fail_msg("saga of %s did not settle", id);
}

static void start(const char *id, int64_t amount, bool pending)
{
	kobo_op debit = op_debit(id, amount, pending, 0);
	EXPECT_CODE(apply(&shard_a, debit), KOBO_RESULT_CREATED);
	drive(id, &debit);
}

/* Nothing in flight: the clearing pair nets to zero, no hold open. */
static void expect_clearing_nets_to_zero(void)
{
	kobo_account a = account_of(&shard_a, "clearing:B");
	kobo_account b = account_of(&shard_b, "clearing:A");
	EXPECT_I64(a.posted + b.posted, 0);
	EXPECT_I64(a.pending_in + a.pending_out + b.pending_in + b.pending_out,
	           0);
}

static void test_end_to_end_posted(void **state)
{
	(void)state;
	start("t1", 300, false);
	EXPECT_STATUS(transfer_of(&shard_a, "t1"), KOBO_STATUS_POSTED);
	EXPECT_STATUS(transfer_of(&shard_b, "t1"), KOBO_STATUS_POSTED);
	EXPECT_BALANCE(&shard_a, "payer", 700, 0, 0);
	EXPECT_BALANCE(&shard_b, "payee", 300, 0, 0);
	expect_clearing_nets_to_zero();
}

static void test_end_to_end_pending_post_partial(void **state)
{
	(void)state;
	start("t1", 300, true);
	/* Both legs hold 300 while the transfer is pending. */
	EXPECT_BALANCE(&shard_a, "clearing:B", 0, 0, 300);
	EXPECT_BALANCE(&shard_b, "clearing:A", 0, 300, 0);
	EXPECT_BALANCE(&shard_b, "payee", 0, 0, 300);
	apply(&shard_a, op_post_amount("t1", 120));
	drive("t1", NULL);
	EXPECT_I64(transfer_of(&shard_a, "t1").posted_amount, 120);
	EXPECT_I64(transfer_of(&shard_b, "t1").posted_amount, 120);
	EXPECT_BALANCE(&shard_a, "payer", 880, 0, 0);
	EXPECT_BALANCE(&shard_b, "payee", 120, 0, 0);
	expect_clearing_nets_to_zero();
}

static void test_end_to_end_pending_void(void **state)
{
	(void)state;
	start("t1", 300, true);
	apply(&shard_a, op_target(KOBO_OP_VOID, "t1"));
	drive("t1", NULL);
	EXPECT_STATUS(transfer_of(&shard_a, "t1"), KOBO_STATUS_VOIDED);
	EXPECT_STATUS(transfer_of(&shard_b, "t1"), KOBO_STATUS_VOIDED);
	EXPECT_BALANCE(&shard_a, "payer", 1000, 0, 0);
	EXPECT_BALANCE(&shard_b, "payee", 0, 0, 0);
	expect_clearing_nets_to_zero();
}

static void test_end_to_end_compensated(void **state)
{
	(void)state;
	start("t0", 100, false); /* both clearing accounts exist */
	kobo_op debit = op_debit("t1", 300, false, 0);
	snprintf(debit.u.transfer.to, sizeof(debit.u.transfer.to), "ghost");
	EXPECT_CODE(apply(&shard_a, debit), KOBO_RESULT_CREATED);
	drive("t1", &debit);
	kobo_transfer record = transfer_of(&shard_a, "t1");
	EXPECT_STATUS(record, KOBO_STATUS_VOIDED);
	EXPECT_REASON(record, KOBO_VOID_COMPENSATED);
	EXPECT_ERROR(record, KOBO_RESULT_ACCOUNT_NOT_FOUND);
	EXPECT_STATUS(transfer_of(&shard_b, "t1"), KOBO_STATUS_REJECTED);
	EXPECT_BALANCE(&shard_a, "payer", 900, 0, 0);
	EXPECT_BALANCE(&shard_b, "payee", 100, 0, 0);
	expect_clearing_nets_to_zero();
}

/* created_by comes from the op: an account and a local transfer name their
 * op's key, a DEBIT leg its op's, the CREDIT and ABORT legs on B the key
 * their op carries (the saga runner copies the DEBIT leg's: test_saga.c),
 * and the clearing accounts Kobo creates name none. A replay by another
 * key keeps the first key. */
static void test_created_by_comes_from_the_op(void **state)
{
	(void)state;
	kobo_op account = test_op_account("fresh", "NGN", false, NULL);
	snprintf(account.created_by, sizeof(account.created_by), "aaaaaaaaaaaaaaaa");
	EXPECT_CODE(apply(&shard_a, account), KOBO_RESULT_CREATED);
	check_name("fresh.created_by", account_of(&shard_a, "fresh").created_by,
	           "aaaaaaaaaaaaaaaa", __FILE__, __LINE__);

	kobo_op local = op_transfer("t-local", "payer", "cash", 5);
	snprintf(local.created_by, sizeof(local.created_by), "bbbbbbbbbbbbbbbb");
	kobo_result r = apply(&shard_a, local);
	EXPECT_CODE(r, KOBO_RESULT_CREATED);
	check_name("result.created_by", r.transfer.created_by, "bbbbbbbbbbbbbbbb",
	           __FILE__, __LINE__);
	check_name("t-local.created_by", transfer_of(&shard_a, "t-local").created_by,
	           "bbbbbbbbbbbbbbbb", __FILE__, __LINE__);
	snprintf(local.created_by, sizeof(local.created_by), "cccccccccccccccc");
	EXPECT_CODE(apply(&shard_a, local), KOBO_RESULT_REPLAYED);
	check_name("t-local.created_by after a replay",
	           transfer_of(&shard_a, "t-local").created_by, "bbbbbbbbbbbbbbbb",
	           __FILE__, __LINE__);

	kobo_op debit = op_debit("t-x", 300, false, 0);
	snprintf(debit.created_by, sizeof(debit.created_by), "dddddddddddddddd");
	EXPECT_CODE(apply(&shard_a, debit), KOBO_RESULT_CREATED);
	check_name("A t-x.created_by", transfer_of(&shard_a, "t-x").created_by,
	           "dddddddddddddddd", __FILE__, __LINE__);
	check_name("clearing:B.created_by", account_of(&shard_a, "clearing:B").created_by,
	           "", __FILE__, __LINE__);
	EXPECT_CODE(apply(&shard_b, op_credit_for(debit, KOBO_OP_SAGA_CREDIT)),
	            KOBO_RESULT_CREATED);
	check_name("B t-x.created_by", transfer_of(&shard_b, "t-x").created_by,
	           "dddddddddddddddd", __FILE__, __LINE__);
	check_name("clearing:A.created_by", account_of(&shard_b, "clearing:A").created_by,
	           "", __FILE__, __LINE__);

	kobo_op aborted = op_debit("t-y", 300, false, 0);
	snprintf(aborted.created_by, sizeof(aborted.created_by), "eeeeeeeeeeeeeeee");
	EXPECT_CODE(apply(&shard_b, op_credit_for(aborted, KOBO_OP_SAGA_ABORT)),
	            KOBO_RESULT_CREATED);
	EXPECT_STATUS(transfer_of(&shard_b, "t-y"), KOBO_STATUS_REJECTED);
	check_name("B t-y.created_by", transfer_of(&shard_b, "t-y").created_by,
	           "eeeeeeeeeeeeeeee", __FILE__, __LINE__);
}

/* trace_id comes from the op like request_id: a local transfer and a
 * DEBIT leg record their op's, the CREDIT leg on B the one its op carries
 * (the runner copies the DEBIT leg's: test_saga.c); a replay in another
 * trace and a later update keep the first. */
static void test_trace_id_comes_from_the_op(void **state)
{
	(void)state;
	const char *trace = "4bf92f3577b34da6a3ce929d0e0e4736";
	kobo_op local = op_transfer("t-local", "payer", "cash", 5);
	snprintf(local.trace_id, sizeof(local.trace_id), "%s", trace);
	kobo_result r = apply(&shard_a, local);
	EXPECT_CODE(r, KOBO_RESULT_CREATED);
	check_name("result.trace_id", r.transfer.trace_id, trace, __FILE__, __LINE__);
	snprintf(local.trace_id, sizeof(local.trace_id), "00f067aa0ba902b700f067aa0ba902b7");
	EXPECT_CODE(apply(&shard_a, local), KOBO_RESULT_REPLAYED);
	check_name("t-local.trace_id after a replay",
	           transfer_of(&shard_a, "t-local").trace_id, trace, __FILE__, __LINE__);

	kobo_op debit = op_debit("t-x", 300, false, 0);
	snprintf(debit.trace_id, sizeof(debit.trace_id), "%s", trace);
	EXPECT_CODE(apply(&shard_a, debit), KOBO_RESULT_CREATED);
	check_name("A t-x.trace_id", transfer_of(&shard_a, "t-x").trace_id, trace,
	           __FILE__, __LINE__);
	EXPECT_CODE(apply(&shard_b, op_credit_for(debit, KOBO_OP_SAGA_CREDIT)),
	            KOBO_RESULT_CREATED);
	check_name("B t-x.trace_id", transfer_of(&shard_b, "t-x").trace_id, trace,
	           __FILE__, __LINE__);
	kobo_op plain = op_transfer("t-none", "payer", "cash", 5);
	EXPECT_CODE(apply(&shard_a, plain), KOBO_RESULT_CREATED);
	check_name("t-none.trace_id", transfer_of(&shard_a, "t-none").trace_id, "",
	           __FILE__, __LINE__);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_names),
		T(test_debit_create_reserves),
		T(test_debit_create_pending_expiry),
		T(test_debit_create_replay_and_conflict),
		T(test_debit_create_rejections),
		T(test_credit_posted),
		T(test_credit_pending_never_expires),
		T(test_credit_refusals_recorded),
		T(test_credit_id_conflict_with_local),
		T(test_abort_before_credit),
		T(test_abort_after_credit),
		T(test_settle_reserved_credited_posts),
		T(test_settle_reserved_credited_pending),
		T(test_settle_reserved_refused_compensates),
		T(test_settle_unknown_and_local),
		T(test_post_debit_starts_posting),
		T(test_settle_of_another_step_is_stale),
		T(test_post_debit_checks_amount),
		T(test_settle_posting_refused),
		T(test_void_debit_starts_voiding),
		T(test_expire_debit_starts_voiding),
		T(test_late_post_and_void_of_debit),
		T(test_clearing_bound_counts_every_hold),
		T(test_credit_bound_mirrors_debit_bound),
		T(test_clearing_lanes_isolate_clients),
		T(test_post_credit_leg),
		T(test_client_post_void_never_touch_credit_leg),
		T(test_void_credit_leg),
		T(test_legs_and_saga_ops_refused_in_groups),
		T(test_invalid_leg_ops_refused),
		T(test_id_lists_name_this_shards_accounts),
		T(test_capacity_counts_clearing_accounts),
		T(test_group_rollback_undoes_saga_step),
		T(test_end_to_end_posted),
		T(test_end_to_end_pending_post_partial),
		T(test_end_to_end_pending_void),
		T(test_end_to_end_compensated),
		T(test_created_by_comes_from_the_op),
		T(test_trace_id_comes_from_the_op),
	};
#undef T
	return cmocka_run_group_tests(tests, NULL, NULL);
}
