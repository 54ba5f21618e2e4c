/*
 * test_ops.h — the kobo_op builders the unit tests share (test_store_mem.c,
 * test_store_sqlite.c, test_ledger.c, test_ledger_saga.c). Everything here is
 * static inline and needs only the ledger's types. (Not named test_*.c: the
 * Makefile builds every such file as a test binary.)
 *
 * Every builder starts from a zeroed op (test_op_blank) and fills in only
 * what it names; the rest stays zero. Transfers are in NGN.
 *
 * Two spellings, kept apart because the tests that use them differ:
 *   - the store tests' (test_op_account, test_op_transfer, test_op_debit,
 *     test_op_credit, test_op_target, test_op_settle): each request is named
 *     after its op ("req-<id>", "req-<id>-<kind>", "req-<id>-settle") and
 *     transfers carry the metadata {"note":"suya"};
 *   - the ledger tests' plain one (op_transfer, op_target, op_post_amount,
 *     the names those tests always used): a posted LOCAL transfer with the
 *     metadata "{}", and every POST, VOID or EXPIRE named "req-target".
 * test_op_named renames an op's request, for a test with names of its own
 * (test_ledger_saga.c names every settle "req-settle").
 */
#ifndef KOBO_TESTS_UNIT_TEST_OPS_H
#define KOBO_TESTS_UNIT_TEST_OPS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../../src/ledger/ledger.h"

/* op with its request named request_id (zeroed first, as if built so). */
static inline kobo_op test_op_named(kobo_op op, const char *request_id)
{
	memset(op.request_id, 0, sizeof op.request_id);
	snprintf(op.request_id, sizeof op.request_id, "%s", request_id);
	return op;
}

/* A zeroed op of kind. */
static inline kobo_op test_op_blank(kobo_op_kind kind)
{
	kobo_op op;
	memset(&op, 0, sizeof op);
	op.kind = kind;
	return op;
}

/* ---- The store tests' spelling. ---- */

/* CREATE_ACCOUNT id in currency; metadata NULL means "{}". */
static inline kobo_op test_op_account(const char *id, const char *currency,
                                      bool allow_negative, const char *metadata)
{
	kobo_op op = test_op_blank(KOBO_OP_CREATE_ACCOUNT);
	snprintf(op.request_id, sizeof op.request_id, "req-%s", id);
	snprintf(op.u.account.id, sizeof op.u.account.id, "%s", id);
	snprintf(op.u.account.currency, sizeof op.u.account.currency, "%s", currency);
	op.u.account.allow_negative = allow_negative;
	op.u.account.metadata = metadata != NULL ? metadata : "{}";
	op.u.account.metadata_len = (uint32_t)strlen(op.u.account.metadata);
	return op;
}

/* CREATE_TRANSFER of a LOCAL leg from -> to. */
static inline kobo_op test_op_transfer(const char *id, const char *from,
                                       const char *to, int64_t amount,
                                       bool pending, uint32_t timeout_seconds)
{
	kobo_op op = test_op_blank(KOBO_OP_CREATE_TRANSFER);
	snprintf(op.request_id, sizeof op.request_id, "req-%s", id);
	snprintf(op.u.transfer.id, sizeof op.u.transfer.id, "%s", id);
	snprintf(op.u.transfer.from, sizeof op.u.transfer.from, "%s", from);
	snprintf(op.u.transfer.to, sizeof op.u.transfer.to, "%s", to);
	snprintf(op.u.transfer.currency, sizeof op.u.transfer.currency, "NGN");
	op.u.transfer.amount = amount;
	op.u.transfer.pending = pending;
	op.u.transfer.timeout_seconds = timeout_seconds;
	op.u.transfer.metadata = "{\"note\":\"suya\"}";
	op.u.transfer.metadata_len = (uint32_t)strlen(op.u.transfer.metadata);
	return op;
}

/* POST, VOID or EXPIRE of id; has_amount/amount only mean something for POST. */
static inline kobo_op test_op_target(kobo_op_kind kind, const char *id,
                                     bool has_amount, int64_t amount)
{
	kobo_op op = test_op_blank(kind);
	snprintf(op.request_id, sizeof op.request_id, "req-%s-%d", id, (int)kind);
	snprintf(op.u.target.id, sizeof op.u.target.id, "%s", id);
	op.u.target.has_amount = has_amount;
	op.u.target.amount = amount;
	return op;
}

/* Step 1 of a saga on the payer's shard: a DEBIT leg from -> clearing. */
static inline kobo_op test_op_debit(const char *id, const char *from,
                                    const char *to, const char *clearing,
                                    int64_t amount, bool pending,
                                    uint32_t timeout_seconds)
{
	kobo_op op = test_op_transfer(id, from, to, amount, pending, timeout_seconds);
	op.u.transfer.leg = KOBO_LEG_DEBIT;
	snprintf(op.u.transfer.clearing, sizeof op.u.transfer.clearing, "%s", clearing);
	return op;
}

/* Step 2 on the payee's shard: the CREDIT leg clearing -> to. */
static inline kobo_op test_op_credit(const char *id, const char *from,
                                     const char *to, const char *clearing,
                                     int64_t amount, bool pending)
{
	kobo_op op = test_op_transfer(id, from, to, amount, pending, 0);
	op.kind = KOBO_OP_SAGA_CREDIT;
	op.u.transfer.leg = KOBO_LEG_CREDIT;
	snprintf(op.u.transfer.clearing, sizeof op.u.transfer.clearing, "%s", clearing);
	return op;
}

/* Step 3 on the payer's shard: what the payee's shard answered. */
static inline kobo_op test_op_settle(const char *id, bool refused,
                                     kobo_result_code refusal)
{
	kobo_op op = test_op_blank(KOBO_OP_SAGA_SETTLE);
	snprintf(op.request_id, sizeof op.request_id, "req-%s-settle", id);
	snprintf(op.u.settle.id, sizeof op.u.settle.id, "%s", id);
	op.u.settle.refused = refused;
	op.u.settle.refusal = refusal;
	return op;
}

/* ---- The ledger tests' plain spelling. ---- */

/* CREATE_TRANSFER of a posted LOCAL leg from -> to, metadata "{}". */
static inline kobo_op op_transfer(const char *id, const char *from,
                                  const char *to, int64_t amount)
{
	kobo_op op = test_op_transfer(id, from, to, amount, false, 0);
	op.u.transfer.metadata = "{}";
	op.u.transfer.metadata_len = 2;
	return op;
}

/* POST (of the whole hold), VOID or EXPIRE of id, named "req-target". */
static inline kobo_op op_target(kobo_op_kind kind, const char *id)
{
	return test_op_named(test_op_target(kind, id, false, 0), "req-target");
}

/* POST of amount out of the hold id, named "req-target". */
static inline kobo_op op_post_amount(const char *id, int64_t amount)
{
	return test_op_named(test_op_target(KOBO_OP_POST, id, true, amount),
	                     "req-target");
}

/* The saga runner's post / void of a CREDIT leg on the payee's shard. */
static inline kobo_op op_saga_post_amount(const char *id, int64_t amount)
{
	return test_op_named(test_op_target(KOBO_OP_SAGA_POST, id, true, amount),
	                     "req-target");
}

static inline kobo_op op_saga_void(const char *id)
{
	return op_target(KOBO_OP_SAGA_VOID, id);
}

#endif
