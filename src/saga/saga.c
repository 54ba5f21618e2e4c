/*
 * saga.c — the cross-shard protocol as two pure functions: which op B runs
 * next for A's record, and what B's answer means for A. No I/O, no clock:
 * the runner and the simulation feed them.
 */
#include <stdio.h>
#include <string.h>

#include "saga.h"

bool kobo_saga_remote_op(const kobo_transfer *a_record, const char *b_clearing,
                         bool abort, kobo_op *op)
{
	if (a_record->leg != KOBO_LEG_DEBIT || a_record->saga == KOBO_SAGA_NONE)
		return false;
	memset(op, 0, sizeof(*op));
	memcpy(op->request_id, a_record->request_id, sizeof(op->request_id));
	/* Both legs name the key whose request created the DEBIT leg. */
	memcpy(op->created_by, a_record->created_by, sizeof(op->created_by));
	/* And the trace of that request: B's events and leg join it. */
	memcpy(op->trace_id, a_record->trace_id, sizeof(op->trace_id));
	switch (a_record->saga) {
	case KOBO_SAGA_RESERVED: {
		op->kind = abort ? KOBO_OP_SAGA_ABORT : KOBO_OP_SAGA_CREDIT;
		kobo_transfer *t = &op->u.transfer;
		memcpy(t->id, a_record->id, sizeof(t->id));
		memcpy(t->from, a_record->from, sizeof(t->from));
		memcpy(t->to, a_record->to, sizeof(t->to));
		memcpy(t->currency, a_record->currency, sizeof(t->currency));
		t->amount = a_record->amount;
		t->pending = a_record->pending;
		t->timeout_seconds = a_record->timeout_seconds;
		t->metadata = a_record->metadata; /* borrowed from a_record */
		t->metadata_len = a_record->metadata_len;
		t->leg = KOBO_LEG_CREDIT;
		/* B's account of the lane A's leg took (ledger.h, "Clearing
		 * lanes"): the base, or the base + the same lane suffix. */
		char currency[KOBO_CURRENCY_LEN_MAX + 1];
		char lane[KOBO_CLEARING_LANE_LEN_MAX + 1];
		uint32_t a, b;
		if (!kobo_clearing_parse(a_record->clearing, &a, &b, currency, lane))
			lane[0] = '\0';
		snprintf(t->clearing, sizeof(t->clearing), "%s%s", b_clearing, lane);
		return true;
	}
	case KOBO_SAGA_POSTING:
		op->kind = KOBO_OP_SAGA_POST;
		memcpy(op->u.target.id, a_record->id, sizeof(op->u.target.id));
		op->u.target.has_amount = true;
		op->u.target.amount = a_record->saga_amount;
		return true;
	case KOBO_SAGA_VOIDING:
		op->kind = KOBO_OP_SAGA_VOID;
		memcpy(op->u.target.id, a_record->id, sizeof(op->u.target.id));
		return true;
	case KOBO_SAGA_NONE:
		break;
	}
	return false;
}

static void settle_init(const kobo_transfer *a_record, kobo_op *settle,
                        bool refused, kobo_result_code refusal)
{
	memset(settle, 0, sizeof(*settle));
	settle->kind = KOBO_OP_SAGA_SETTLE;
	memcpy(settle->request_id, a_record->request_id, sizeof(settle->request_id));
	memcpy(settle->created_by, a_record->created_by, sizeof(settle->created_by));
	memcpy(settle->trace_id, a_record->trace_id, sizeof(settle->trace_id));
	memcpy(settle->u.settle.id, a_record->id, sizeof(settle->u.settle.id));
	settle->u.settle.refused = refused;
	settle->u.settle.refusal = refused ? refusal : KOBO_RESULT_CREATED;
	settle->u.settle.step = a_record->saga;
}

/* B's answer to SAGA_CREDIT / SAGA_ABORT: the CREDIT leg exists (credited),
 * is recorded as refused, or another record owns the id (refused). */
static bool credit_outcome(const kobo_result *b_result, bool *refused,
                           kobo_result_code *refusal)
{
	if (b_result->code == KOBO_RESULT_ID_CONFLICT) {
		*refused = true;
		*refusal = KOBO_RESULT_ID_CONFLICT;
		return true;
	}
	if (!b_result->has_transfer)
		return false;
	const kobo_transfer *leg = &b_result->transfer;
	if (leg->leg != KOBO_LEG_CREDIT)
		return false;
	if (leg->status == KOBO_STATUS_REJECTED) {
		*refused = true;
		*refusal = leg->error_code;
		return true;
	}
	*refused = false;
	return b_result->code == KOBO_RESULT_CREATED ||
	       b_result->code == KOBO_RESULT_REPLAYED;
}

bool kobo_saga_settle_op(const kobo_transfer *a_record, const kobo_op *b_op,
                         const kobo_result *b_result, kobo_op *settle)
{
	bool refused = false;
	kobo_result_code refusal = KOBO_RESULT_CREATED;

	switch (a_record->saga) {
	case KOBO_SAGA_RESERVED:
		if (b_op->kind != KOBO_OP_SAGA_CREDIT && b_op->kind != KOBO_OP_SAGA_ABORT)
			return false;
		if (!credit_outcome(b_result, &refused, &refusal))
			return false;
		break;
	case KOBO_SAGA_POSTING:
		if (b_op->kind != KOBO_OP_SAGA_POST)
			return false;
		if (b_result->code == KOBO_RESULT_AMOUNT_OVERFLOW) {
			refused = true;
			refusal = KOBO_RESULT_AMOUNT_OVERFLOW;
		} else if (b_result->code != KOBO_RESULT_UPDATED &&
		           !(b_result->code == KOBO_RESULT_REPLAYED &&
		             b_result->has_transfer &&
		             b_result->transfer.status == KOBO_STATUS_POSTED)) {
			return false;
		}
		break;
	case KOBO_SAGA_VOIDING:
		if (b_op->kind != KOBO_OP_SAGA_VOID)
			return false;
		if (b_result->code != KOBO_RESULT_UPDATED &&
		    b_result->code != KOBO_RESULT_REPLAYED)
			return false;
		break;
	case KOBO_SAGA_NONE:
		return false;
	}
	settle_init(a_record, settle, refused, refusal);
	return true;
}

bool kobo_saga_remote_busy(const kobo_op *b_op, const kobo_result *b_result)
{
	return b_op->kind == KOBO_OP_SAGA_CREDIT &&
	       b_result->code == KOBO_RESULT_TRANSFER_IN_PROGRESS;
}
