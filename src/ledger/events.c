/*
 * events.c — the events of a batch, made from its ops and results, and the
 * merge of one transfer's events across shards (events.h). Pure.
 */
#include <stdint.h>
#include <string.h>

#include "events.h"

static const char *const kind_names[KOBO_EVENT_KIND_COUNT] = {
	[KOBO_EVENT_CREATED] = "created",
	[KOBO_EVENT_RESERVED] = "reserved",
	[KOBO_EVENT_REJECTED] = "rejected",
	[KOBO_EVENT_REPLAYED] = "replayed",
	[KOBO_EVENT_CREDITED] = "credited",
	[KOBO_EVENT_CREDIT_REFUSED] = "credit_refused",
	[KOBO_EVENT_SETTLED] = "settled",
	[KOBO_EVENT_COMPENSATED] = "compensated",
	[KOBO_EVENT_POST_ASKED] = "post_asked",
	[KOBO_EVENT_VOID_ASKED] = "void_asked",
	[KOBO_EVENT_POSTED] = "posted",
	[KOBO_EVENT_VOIDED] = "voided",
	[KOBO_EVENT_EXPIRED] = "expired",
};

const char *kobo_event_kind_name(kobo_event_kind kind)
{
	if ((unsigned)kind >= KOBO_EVENT_KIND_COUNT)
		return NULL;
	return kind_names[kind];
}

bool kobo_event_kind_parse(const char *name, kobo_event_kind *out)
{
	for (int k = 0; k < KOBO_EVENT_KIND_COUNT; k++) {
		if (strcmp(kind_names[k], name) == 0) {
			*out = (kobo_event_kind)k;
			return true;
		}
	}
	return false;
}

/* A business refusal the ledger records on a new transfer. */
static bool recorded_refusal(const kobo_result *r)
{
	switch (r->code) {
	case KOBO_RESULT_ACCOUNT_NOT_FOUND:
	case KOBO_RESULT_INSUFFICIENT_FUNDS:
	case KOBO_RESULT_CURRENCY_MISMATCH:
	case KOBO_RESULT_SAME_ACCOUNT:
	case KOBO_RESULT_AMOUNT_OVERFLOW:
	case KOBO_RESULT_NOT_APPLIED:
	case KOBO_RESULT_SAGA_TIMEOUT:
		return r->has_transfer && r->transfer.status == KOBO_STATUS_REJECTED;
	default:
		return false;
	}
}

static kobo_event_kind released(const kobo_transfer *t)
{
	return t->void_reason == KOBO_VOID_EXPIRED ? KOBO_EVENT_EXPIRED
	                                           : KOBO_EVENT_VOIDED;
}

/* The event one op made, or false when it made none. */
static bool kind_of(const kobo_op *op, const kobo_result *r, kobo_event_kind *kind)
{
	const kobo_transfer *t = &r->transfer;

	if (!r->has_transfer)
		return false;
	switch (op->kind) {
	case KOBO_OP_CREATE_TRANSFER:
		if (r->code == KOBO_RESULT_CREATED)
			*kind = t->status == KOBO_STATUS_POSTED ? KOBO_EVENT_CREATED
			                                        : KOBO_EVENT_RESERVED;
		else if (r->code == KOBO_RESULT_REPLAYED)
			*kind = KOBO_EVENT_REPLAYED;
		else if (recorded_refusal(r))
			*kind = KOBO_EVENT_REJECTED;
		else
			return false;
		return true;
	case KOBO_OP_SAGA_CREDIT:
	case KOBO_OP_SAGA_ABORT:
		if (r->code == KOBO_RESULT_CREATED)
			*kind = t->status == KOBO_STATUS_REJECTED ? KOBO_EVENT_CREDIT_REFUSED
			                                          : KOBO_EVENT_CREDITED;
		else if (recorded_refusal(r))
			*kind = KOBO_EVENT_CREDIT_REFUSED;
		else
			return false;
		return true;
	case KOBO_OP_POST:
	case KOBO_OP_VOID:
	case KOBO_OP_EXPIRE:
	case KOBO_OP_SAGA_POST:
	case KOBO_OP_SAGA_VOID:
		if (r->code != KOBO_RESULT_UPDATED)
			return false;
		if (t->status == KOBO_STATUS_POSTED)
			*kind = KOBO_EVENT_POSTED;
		else if (t->status == KOBO_STATUS_VOIDED)
			*kind = released(t);
		else if (t->status == KOBO_STATUS_PROCESSING && t->saga == KOBO_SAGA_POSTING)
			*kind = KOBO_EVENT_POST_ASKED;
		else if (t->status == KOBO_STATUS_PROCESSING && t->saga == KOBO_SAGA_VOIDING)
			*kind = KOBO_EVENT_VOID_ASKED;
		else
			return false;
		return true;
	case KOBO_OP_SAGA_SETTLE:
		if (r->code != KOBO_RESULT_UPDATED)
			return false;
		*kind = t->status == KOBO_STATUS_VOIDED &&
		        t->void_reason == KOBO_VOID_COMPENSATED
		        ? KOBO_EVENT_COMPENSATED : KOBO_EVENT_SETTLED;
		return true;
	default:
		return false;
	}
}

size_t kobo_events_derive(const kobo_op *ops, const kobo_result *results,
                          size_t count, kobo_event *out)
{
	size_t n = 0;

	for (size_t i = 0; i < count; i++) {
		const kobo_result *r = &results[i];
		const kobo_transfer *t = &r->transfer;
		kobo_event_kind kind;
		if (!kind_of(&ops[i], r, &kind))
			continue;
		kobo_event *e = &out[n++];
		memset(e, 0, sizeof *e);
		memcpy(e->transfer_id, t->id, sizeof e->transfer_id);
		e->kind = kind;
		/* The request that asked, not the one that made the record: a
		 * replay names the retry's request. */
		memcpy(e->request_id, ops[i].request_id, sizeof e->request_id);
		/* An expiry has no request: its event joins the trace of the
		 * request that made the hold. */
		memcpy(e->trace_id, ops[i].kind == KOBO_OP_EXPIRE ? t->trace_id : ops[i].trace_id,
		       sizeof e->trace_id);
		memcpy(e->key_id, ops[i].created_by, sizeof e->key_id);
		e->leg = t->leg;
		e->status = t->status;
		if (kind == KOBO_EVENT_POSTED || (kind == KOBO_EVENT_SETTLED &&
		                                  t->status == KOBO_STATUS_POSTED))
			e->amount = t->posted_amount;
		else if (kind == KOBO_EVENT_POST_ASKED)
			e->amount = t->saga_amount;
		else
			e->amount = t->amount;
	}
	return n;
}

/* A step on A that B answers next. */
static bool asks_b(const kobo_event *e)
{
	return e->leg == KOBO_LEG_DEBIT &&
	       (e->kind == KOBO_EVENT_RESERVED || e->kind == KOBO_EVENT_POST_ASKED ||
	        e->kind == KOBO_EVENT_VOID_ASKED);
}

/* The merge from at[] (per list, how many taken), *after_ask (the last
 * event given asked B), at most limit events. Advances at[] and
 * *after_ask. */
static size_t merge(const kobo_event *const *lists, const size_t *lens, size_t n,
                    size_t at[], bool *after_ask, size_t limit, kobo_event *out)
{
	size_t count = 0;

	while (count < limit) {
		size_t best = n;
		for (size_t i = 0; i < n; i++) {
			if (at[i] >= lens[i])
				continue;
			const kobo_event *e = &lists[i][at[i]];
			if (best == n) {
				best = i;
				continue;
			}
			const kobo_event *b = &lists[best][at[best]];
			if (e->at_ms < b->at_ms) {
				best = i;
			} else if (e->at_ms == b->at_ms) {
				/* A tie: after a step that asks B, B's answer first;
				 * otherwise the DEBIT (or LOCAL) leg's shard first. */
				bool e_b = e->leg == KOBO_LEG_CREDIT;
				bool b_b = b->leg == KOBO_LEG_CREDIT;
				if (e_b != b_b && e_b == *after_ask)
					best = i;
			}
		}
		if (best == n)
			break;
		out[count] = lists[best][at[best]++];
		*after_ask = asks_b(&out[count]);
		count++;
	}
	return count;
}

size_t kobo_events_merge(const kobo_event *const *lists, const size_t *lens,
                         size_t n, kobo_event *out)
{
	size_t at[16] = {0};
	bool after_ask = false;

	if (n > sizeof at / sizeof at[0])
		n = sizeof at / sizeof at[0];
	return merge(lists, lens, n, at, &after_ask, SIZE_MAX, out);
}

size_t kobo_events_merge_page(const kobo_event *const *lists, const size_t *lens,
                              size_t n, size_t limit, kobo_events_position *pos,
                              kobo_event *out, bool *more)
{
	size_t at[KOBO_EVENTS_LISTS_MAX] = {0};

	kobo_assert(n <= KOBO_EVENTS_LISTS_MAX && limit >= 1);
	size_t count = merge(lists, lens, n, at, &pos->after_ask, limit, out);
	*more = false;
	for (size_t i = 0; i < n; i++) {
		if (at[i] > 0)
			pos->after_seq[i] = lists[i][at[i] - 1].seq;
		if (at[i] < lens[i])
			*more = true;
	}
	return count;
}
