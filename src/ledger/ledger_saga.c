/*
 * ledger_saga.c — the ledger's cross-shard rules: legs, clearing accounts
 * and their overflow lanes, and the saga ops (SAGA_ABORT, SAGA_SETTLE, and
 * the saga steps a client's post or void of a DEBIT leg starts). Pure, like
 * the rest of the ledger; the contract is ledger.h ("Cross-shard rules",
 * "Clearing lanes"), the protocol src/saga/saga.h.
 *
 * A DEBIT leg on the payer's shard A holds from -> A's clearing account for
 * B; the CREDIT leg on B moves B's clearing account for A -> to; SAGA_SETTLE
 * on A finishes each step once B did (or refused) its part. Only the saga
 * runner's ops (SAGA_CREDIT, SAGA_ABORT, SAGA_POST, SAGA_VOID) touch a
 * CREDIT leg (ledger.c, find_target).
 *
 * Clearing bound. Kobo's own clearing accounts are checked as if every hold
 * on them posts (ledger.c, check_new_transfer): A's keeps posted + pending_in
 * <= INT64_MAX, B's posted - pending_out >= -INT64_MAX. Sagas in flight that
 * each fit then fit together, so A can always post what B credited.
 *
 * B's account is not quite A's mirror: a reverse saga (B -> A) that A has
 * credited lowers A's account at once but raises B's only when B settles it;
 * until then its money sits in B's pending_in, which the bound cannot count
 * (the saga could still be refunded). So a credit A's account admitted can
 * find B's short by at most the reverse sagas in flight. Such a SAGA_CREDIT
 * answers TRANSFER_IN_PROGRESS, recorded nowhere, and the runner asks again
 * with its backoff: the reverse sagas settle (A credited them, so they
 * complete), and the credit then fits. Only a refusal B's clearing account
 * would not cause (the payee's own overflow, currency, absence) is recorded.
 *
 * Lanes. A DEBIT leg that the base clearing account cannot take goes to an
 * overflow lane named from its transfer id (kobo_clearing_lane_id); a fresh
 * lane takes any amount, so one client's transfers never make another's fail
 * on Kobo's account. The leg records the lane it took; a client's retry that
 * names the base account replays it (ledger_clearing_equal).
 *
 * DEBIT legs never move money on a client's post or void: they start a saga
 * step (status PROCESSING, saga field) and SAGA_SETTLE finishes it once B
 * has done its part. While PROCESSING the record holds `amount`.
 *
 *      (new) ──create_transfer──▶ PROCESSING/RESERVED ──settle──▶ POSTED,
 *                                                      PENDING or VOIDED
 *                                                      (compensated)
 *      PENDING ──post──▶ PROCESSING/POSTING ──settle──▶ POSTED or PENDING
 *      PENDING ──void / expire / late post──▶ PROCESSING/VOIDING
 *                                            ──settle──▶ VOIDED
 *
 *   from        to          op                function         result
 *   (none)      RESERVED    CREATE_TRANSFER   apply_create_transfer CREATED
 *   RESERVED    POSTED      SAGA_SETTLE       apply_saga_settle UPDATED
 *   RESERVED    PENDING     SAGA_SETTLE       apply_saga_settle UPDATED
 *   RESERVED    VOIDED      SAGA_SETTLE       apply_saga_settle UPDATED
 *   PENDING     POSTING     POST              apply_post        UPDATED
 *   PENDING     VOIDING     VOID              apply_void        UPDATED
 *   PENDING     VOIDING     EXPIRE            apply_expire      UPDATED
 *   PENDING     VOIDING     POST (expired)    apply_post        NOT_PENDING
 *   POSTING     POSTED      SAGA_SETTLE       apply_saga_settle UPDATED
 *   POSTING     PENDING     SAGA_SETTLE       apply_saga_settle UPDATED
 *   VOIDING     VOIDED      SAGA_SETTLE       apply_saga_settle UPDATED
 *   POSTING     same        POST              apply_post        REPLAYED
 *   VOIDING     same        VOID              apply_void        REPLAYED
 *   settled     same        SAGA_SETTLE       apply_saga_settle REPLAYED
 *   PROCESSING  same        other POST/VOID   apply_post/void   TRANSFER_IN_PROGRESS
 *
 * (apply_create_transfer, apply_post, apply_void and apply_expire live in
 * ledger.c: a DEBIT leg shares them with LOCAL transfers up to the point
 * where it starts a step here, ledger_start_saga_step.)
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ledger.h"
#include "ledger_internal.h"

/* A second 64-bit hash of id, independent of kobo_hash_id: FNV-1a from
 * another basis (core.h), then MurmurHash3's finalizer. With kobo_hash_id it
 * names a lane by 128 bits. */
static uint64_t hash_id_2(const char *id)
{
	uint64_t hash = kobo_hash_bytes(id, strlen(id), 0x9e3779b97f4a7c15ull);
	hash ^= hash >> 33;
	hash *= 0xff51afd7ed558ccdull;
	hash ^= hash >> 33;
	hash *= 0xc4ceb9fe1a85ec53ull;
	hash ^= hash >> 33;
	return hash;
}

void kobo_clearing_lane_id(char *out, const char *base, const char *transfer_id)
{
	KOBO__LEDGER_ASSERT(strlen(base) <=
	                    KOBO_ID_LEN_MAX - KOBO_CLEARING_LANE_LEN_MAX);
	int n = snprintf(out, KOBO_ID_LEN_MAX + 1, "%s:%016" PRIx64 "%016" PRIx64,
	                 base, kobo_hash_id(transfer_id), hash_id_2(transfer_id));
	KOBO__LEDGER_ASSERT(n > 0 && n <= KOBO_ID_LEN_MAX);
}

/* A DEBIT leg's base clearing id leaves room for a lane suffix. */
bool ledger_debit_clearing_fits_lane(const kobo_transfer *transfer)
{
	return strlen(transfer->clearing) <=
	       KOBO_ID_LEN_MAX - KOBO_CLEARING_LANE_LEN_MAX;
}

/* A DEBIT leg names the base clearing account it was asked for, or the
 * overflow lane the ledger chose instead (see check_new_debit_leg). */
bool ledger_clearing_equal(const kobo_transfer *stored,
                           const kobo_transfer *wanted)
{
	if (strcmp(stored->clearing, wanted->clearing) == 0)
		return true;
	if (stored->leg != KOBO_LEG_DEBIT || !ledger_debit_clearing_fits_lane(wanted))
		return false;
	char lane[KOBO_ID_LEN_MAX + 1];
	kobo_clearing_lane_id(lane, wanted->clearing, wanted->id);
	return strcmp(stored->clearing, lane) == 0;
}

/* The clearing account a leg creates on first use, with zero balances.
 * check_new_transfer() treats an absent clearing account as this one. */
kobo_account ledger_clearing_account(const kobo_transfer *leg, int64_t now_ms)
{
	static const char empty_metadata[] = "{}";
	kobo_account account;
	memset(&account, 0, sizeof(account));
	memcpy(account.id, leg->clearing, sizeof(account.id));
	memcpy(account.currency, leg->currency, sizeof(account.currency));
	/* Money in flight to another shard: its balance is what this shard
	 * owes or is owed, either sign. */
	account.allow_negative = true;
	account.metadata = empty_metadata;
	account.metadata_len = sizeof(empty_metadata) - 1;
	account.created_at_ms = now_ms;
	return account;
}

uint32_t ledger_create_clearing_account(kobo_ledger *ledger,
                                        const kobo_transfer *leg,
                                        int64_t now_ms)
{
	KOBO__LEDGER_ASSERT(ledger_account_find(ledger, leg->clearing) < 0);
	kobo_account account = ledger_clearing_account(leg, now_ms);
	uint32_t slot = ledger_account_insert(ledger, &account, true);
	ledger_account_change_note(ledger, slot);
	return slot;
}

/* SAGA_ABORT: B refuses the credit leg for good, unless step 2 already
 * happened (then whatever it did stands). */
kobo_result_code ledger_apply_saga_abort(kobo_ledger *ledger,
                                         const kobo_op *op, int64_t now_ms,
                                         kobo_result *result)
{
	const kobo_transfer *wanted = &op->u.transfer;
	int64_t slot = ledger_transfer_find(ledger, wanted->id);
	if (slot >= 0)
		return ledger_answer_existing_transfer(ledger, slot, wanted, result);
	slot = ledger_record_transfer(ledger, op, now_ms, KOBO_STATUS_REJECTED,
	                       KOBO_RESULT_SAGA_TIMEOUT);
	ledger_snapshot_transfer(ledger, slot, result);
	return KOBO_RESULT_CREATED;
}

/* Starts a saga step on a PENDING DEBIT leg: the hold stays where it is
 * until SAGA_SETTLE reports that B did its part. */
void ledger_start_saga_step(kobo_ledger *ledger, uint32_t transfer_slot_index,
                            kobo_saga_state saga, int64_t saga_amount,
                            kobo_void_reason saga_reason, int64_t now_ms)
{
	kobo_transfer *transfer = ledger_transfer_touch(ledger, transfer_slot_index);
	KOBO__LEDGER_ASSERT(transfer->status == KOBO_STATUS_PENDING &&
	                    transfer->leg == KOBO_LEG_DEBIT);
	transfer->status = KOBO_STATUS_PROCESSING;
	transfer->saga = saga;
	transfer->saga_amount = saga_amount;
	transfer->saga_reason = saga_reason;
	transfer->error_code = KOBO_RESULT_CREATED;
	transfer->updated_at_ms = now_ms;
}

/* Ends a DEBIT leg's saga step with its hold kept: PENDING again, the hold
 * where it was (B holds its credit leg, or refused a post for good;
 * error_code as end_saga_step says). */
static void end_saga_step_pending(kobo_ledger *ledger,
                                  uint32_t transfer_slot_index,
                                  kobo_result_code error_code, int64_t now_ms)
{
	kobo_transfer *held = ledger_transfer_touch(ledger, transfer_slot_index);
	KOBO__LEDGER_ASSERT(held->status == KOBO_STATUS_PROCESSING &&
	                    held->leg == KOBO_LEG_DEBIT);
	held->status = KOBO_STATUS_PENDING;
	held->updated_at_ms = now_ms;
	ledger_end_saga_step(held, error_code);
}

/* SAGA_SETTLE: B did (or refused for good) the step A's record waits for.
 * Posting can still overflow on A if A's balances moved since the step
 * began; the answer is then AMOUNT_OVERFLOW and nothing changes (the runner
 * repeats the settle; the saga stays visible as stuck). */
kobo_result_code ledger_apply_saga_settle(kobo_ledger *ledger,
                                          const kobo_op *op, int64_t now_ms,
                                          kobo_result *result)
{
	int64_t slot = ledger_transfer_find(ledger, op->u.settle.id);
	if (slot < 0)
		return KOBO_RESULT_TRANSFER_NOT_FOUND;
	const kobo_transfer *transfer = &ledger->transfers[slot].transfer;
	bool refused = op->u.settle.refused;
	kobo_result_code refusal = op->u.settle.refusal;
	kobo_result_code code = KOBO_RESULT_UPDATED;
	kobo_saga_state step = op->u.settle.step;
	switch (step != KOBO_SAGA_NONE && step != transfer->saga ? KOBO_SAGA_NONE
	                                                        : transfer->saga) {
	case KOBO_SAGA_NONE:
		code = KOBO_RESULT_REPLAYED; /* already settled, or a stale answer */
		break;
	case KOBO_SAGA_RESERVED:
		if (refused) {
			ledger_release_hold(ledger, (uint32_t)slot,
			             KOBO_VOID_COMPENSATED, refusal, now_ms);
		} else if (transfer->pending) {
			end_saga_step_pending(ledger, (uint32_t)slot,
			                      KOBO_RESULT_CREATED, now_ms);
		} else if (ledger_post_fits(ledger, transfer, transfer->amount)) {
			ledger_post_hold(ledger, (uint32_t)slot, transfer->amount,
			          now_ms);
		} else {
			code = KOBO_RESULT_AMOUNT_OVERFLOW;
		}
		break;
	case KOBO_SAGA_POSTING:
		if (refused) {
			end_saga_step_pending(ledger, (uint32_t)slot, refusal,
			                      now_ms);
		} else if (ledger_post_fits(ledger, transfer, transfer->saga_amount)) {
			ledger_post_hold(ledger, (uint32_t)slot,
			          transfer->saga_amount, now_ms);
		} else {
			code = KOBO_RESULT_AMOUNT_OVERFLOW;
		}
		break;
	case KOBO_SAGA_VOIDING:
		/* B can always void its hold: a refusal is never sent. */
		if (refused)
			code = KOBO_RESULT_NOT_PENDING;
		else
			ledger_release_hold(ledger, (uint32_t)slot,
			             transfer->saga_reason, KOBO_RESULT_CREATED,
			             now_ms);
		break;
	}
	ledger_snapshot_transfer(ledger, slot, result);
	return code;
}

/* Invariant 5, legs and sagas: a saga step is under way exactly while the
 * record is PROCESSING, only on a DEBIT leg, and says what it will do;
 * CREDIT legs never expire; only legs name a clearing account. */
void ledger_check_transfer_legs(const kobo_transfer *transfer)
{
	KOBO__LEDGER_ASSERT((transfer->saga != KOBO_SAGA_NONE) ==
	                    (transfer->status == KOBO_STATUS_PROCESSING));
	if (transfer->saga != KOBO_SAGA_NONE)
		KOBO__LEDGER_ASSERT(transfer->leg == KOBO_LEG_DEBIT);
	if (transfer->saga == KOBO_SAGA_POSTING)
		KOBO__LEDGER_ASSERT(transfer->saga_amount >= 1 &&
		                    transfer->saga_amount <= transfer->amount);
	else
		KOBO__LEDGER_ASSERT(transfer->saga_amount == 0);
	if (transfer->saga == KOBO_SAGA_VOIDING)
		KOBO__LEDGER_ASSERT(transfer->saga_reason == KOBO_VOID_VOIDED ||
		                    transfer->saga_reason == KOBO_VOID_EXPIRED);
	else
		KOBO__LEDGER_ASSERT(transfer->saga_reason == KOBO_VOID_NONE);
	if (transfer->leg == KOBO_LEG_CREDIT)
		KOBO__LEDGER_ASSERT(transfer->expires_at_ms == 0);
	KOBO__LEDGER_ASSERT((transfer->leg == KOBO_LEG_LOCAL) ==
	                    (transfer->clearing[0] == '\0'));
}
