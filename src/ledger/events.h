/*
 * events.h — the journey of a payment: one event per state change of a
 * transfer on a shard (issue 13, "The journey of a payment").
 *
 * Made purely from a batch's ops and results (kobo_events_derive, no I/O),
 * stamped with the batch's time, the shard and the node by the shard layer
 * (src/shard/batch.c), and stored by the store in the batch's own
 * transaction, beside the money (store.h, write_events): an event exists
 * exactly when the change it tells of was committed.
 *
 * The events, by the op that makes them (A = the payer's shard of a
 * cross-shard transfer, B = the payee's):
 *
 *   event           op                         when
 *   created         CREATE_TRANSFER            a transfer moved money (posted)
 *   reserved        CREATE_TRANSFER            a hold (pending), or a DEBIT
 *                                              leg on A holding for its saga
 *   rejected        CREATE_TRANSFER            refused by a rule, recorded
 *   replayed        CREATE_TRANSFER            an idempotent retry answered
 *                                              from the stored record
 *   credited        SAGA_CREDIT on B           the CREDIT leg was applied
 *   credit_refused  SAGA_CREDIT / SAGA_ABORT   B refused the CREDIT leg (a
 *                                              rule, or the saga's deadline)
 *   settled         SAGA_SETTLE on A           A finished a saga step
 *   compensated     SAGA_SETTLE on A           B refused: the payer refunded
 *   post_asked      POST of a DEBIT leg on A   a cross-shard post started
 *   void_asked      VOID / EXPIRE of a DEBIT   a cross-shard void started
 *   posted          POST, SAGA_POST            a hold was posted
 *   voided          VOID, SAGA_VOID            a hold was released
 *   expired         EXPIRE, SAGA_VOID          a hold ran out of time
 *
 * Nothing else makes an event: account ops, refused posts and voids (they
 * change nothing), and saga steps the runner repeats (REPLAYED saga ops).
 *
 * Retention: events are part of the audit trail, kept as long as the
 * transfers they tell of (never deleted by Kobo). Per transfer they are
 * bounded by its life: at most one create and two saga rounds (create,
 * post or void), plus one `replayed` per client retry of the create.
 */
#ifndef KOBO_EVENTS_H
#define KOBO_EVENTS_H

#include "ledger.h"

typedef enum kobo_event_kind {
	KOBO_EVENT_CREATED = 0,
	KOBO_EVENT_RESERVED,
	KOBO_EVENT_REJECTED,
	KOBO_EVENT_REPLAYED,
	KOBO_EVENT_CREDITED,
	KOBO_EVENT_CREDIT_REFUSED,
	KOBO_EVENT_SETTLED,
	KOBO_EVENT_COMPENSATED,
	KOBO_EVENT_POST_ASKED,
	KOBO_EVENT_VOID_ASKED,
	KOBO_EVENT_POSTED,
	KOBO_EVENT_VOIDED,
	KOBO_EVENT_EXPIRED,
	KOBO_EVENT_KIND_COUNT
} kobo_event_kind;

/* Longest node name an event records (kobod --node-name). */
#define KOBO_EVENT_NODE_LEN_MAX 127

typedef struct kobo_event {
	char transfer_id[KOBO_ID_LEN_MAX + 1];
	kobo_event_kind kind;
	int64_t at_ms;   /* the batch's time (store.h, now) */
	uint32_t shard;  /* the shard that stored it */
	char node[KOBO_EVENT_NODE_LEN_MAX + 1]; /* the kobod that wrote it */
	char request_id[KOBO_REQUEST_ID_LEN_MAX + 1];
	char trace_id[KOBO_TRACE_ID_LEN + 1];   /* "" when none */
	char key_id[KOBO_KEY_ID_LEN + 1];       /* created_by of the op, "" */
	kobo_leg leg;                 /* the leg this shard stores */
	kobo_transfer_status status;  /* the record's status after the change */
	int64_t amount;  /* what the step is about: the amount, or what posted */
	int64_t seq;     /* shard-local order, given by the store when read */
} kobo_event;

/* "created", … (static); NULL for a kind out of range. */
const char *kobo_event_kind_name(kobo_event_kind kind);
/* true and *out set when name is one of the names above. */
bool kobo_event_kind_parse(const char *name, kobo_event_kind *out);

/* Fills out[0..) with the events of ops[0..count) and their results (as
 * kobo_ledger_apply wrote them), in op order, and returns how many: at most
 * one per op, so out must hold count entries. Sets everything but at_ms,
 * shard, node and seq (the shard layer stamps those). Pure. */
size_t kobo_events_derive(const kobo_op *ops, const kobo_result *results,
                          size_t count, kobo_event *out);

/* Merges the events of one transfer read from n shards (lists[i] oldest
 * first, lens[i] long) into out (sum of lens entries), oldest first: by
 * at_ms; on a tie between shards, the causal order of a saga (a CREDIT
 * leg's step on B answers the DEBIT leg's reserved / post_asked /
 * void_asked on A before A settles). Each shard's own order is kept.
 * Returns how many. Pure. */
size_t kobo_events_merge(const kobo_event *const *lists, const size_t *lens,
                         size_t n, kobo_event *out);

/* The shards one transfer's events live on: its payer's and, for a
 * cross-shard transfer, its payee's. */
#define KOBO_EVENTS_LISTS_MAX 2

/* Where a paged merge of one transfer's events stands (GET
 * /v1/transfers/{id}/events?after=): everything before it was given. A
 * position per list, not a place in the merged order, so that an event
 * written later on either shard is still given by a later page however it
 * sorts by time: paging can reorder a live journey, never skip an event. */
typedef struct kobo_events_position {
	/* Per list, the seq of the last event given (0: none yet). */
	int64_t after_seq[KOBO_EVENTS_LISTS_MAX];
	/* The last event given asked B (reserved, post_asked or void_asked of
	 * a DEBIT leg): on a time tie B's answer comes next, as in
	 * kobo_events_merge. */
	bool after_ask;
} kobo_events_position;

/* One page of kobo_events_merge: the first `limit` (≥ 1) events of the
 * merged journey after *pos, into out (limit entries), in the same order
 * kobo_events_merge gives them; *pos is advanced past them, so that pages
 * laid end to end are exactly the whole merge. n ≤ KOBO_EVENTS_LISTS_MAX;
 * lists[i] holds list i's events with seq > pos->after_seq[i], oldest
 * first: all of them, or at least its first limit + 1 (a page takes at most
 * limit from one list, so it is exact either way; the one more shows
 * whether the list goes on). *more is set when some list holds an event
 * the page did not take: with lists read that way, exactly when another
 * page exists. Returns how many (≤ limit). Pure. */
size_t kobo_events_merge_page(const kobo_event *const *lists, const size_t *lens,
                              size_t n, size_t limit, kobo_events_position *pos,
                              kobo_event *out, bool *more);

#endif /* KOBO_EVENTS_H */
