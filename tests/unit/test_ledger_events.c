/*
 * test_ledger_events.c — the events of a batch (src/ledger/events.h): made
 * purely from ops and results, one per state change, none for what changed
 * nothing, and every one naming a transfer the batch wrote; and the merge of
 * two shards' events in time order with a saga's causal order on ties, whole
 * or in pages that resume from a position per shard.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "../../src/ledger/events.h"
#include "test_ops.h"

#define CLEARING "kobo:clearing:0:1:NGN"

static kobo_op with_ids(kobo_op op, const char *trace_id, const char *key_id)
{
	snprintf(op.trace_id, sizeof op.trace_id, "%s", trace_id);
	snprintf(op.created_by, sizeof op.created_by, "%s", key_id);
	return op;
}

static bool changed(const kobo_ledger *ledger, const char *id)
{
	const kobo_transfer_change *changes;
	size_t n = kobo_ledger_changed_transfers(ledger, &changes);
	for (size_t i = 0; i < n; i++)
		if (strcmp(changes[i].transfer->id, id) == 0)
			return true;
	return false;
}

/* One batch on the payer's shard through the real ledger. */
static void a_batch_makes_one_event_per_state_change(void **state)
{
	(void)state;
	kobo_ledger *ledger = kobo_ledger_create(64);
	assert_non_null(ledger);
	kobo_op ops[] = {
		test_op_account("cash", "NGN", true, NULL),
		test_op_account("alice", "NGN", false, NULL),
		test_op_account("bob", "NGN", false, NULL),
		with_ids(test_op_transfer("t1", "cash", "alice", 1000, false, 0),
		         "4bf92f3577b34da6a3ce929d0e0e4736", "0123456789abcdef"),
		test_op_transfer("t2", "alice", "bob", 100, true, 60),
		test_op_transfer("t3", "alice", "bob", 999999, false, 0),
		test_op_target(KOBO_OP_POST, "t2", true, 40),
		test_op_transfer("t4", "alice", "bob", 50, true, 60),
		test_op_target(KOBO_OP_VOID, "t4", false, 0),
		test_op_transfer("t1", "cash", "alice", 1000, false, 0),
		test_op_debit("t5", "alice", "zed", CLEARING, 10, false, 0),
		test_op_target(KOBO_OP_POST, "t-missing", false, 0),
		test_op_target(KOBO_OP_VOID, "t2", false, 0),
	};
	size_t count = sizeof ops / sizeof ops[0];
	kobo_result results[sizeof ops / sizeof ops[0]];
	kobo_event events[sizeof ops / sizeof ops[0]];
	assert_int_equal(kobo_ledger_apply(ledger, ops, count, 5000, results), KOBO_OK);
	size_t n = kobo_events_derive(ops, results, count, events);

	static const struct { const char *id; kobo_event_kind kind;
	                      kobo_transfer_status status; int64_t amount; } want[] = {
		{ "t1", KOBO_EVENT_CREATED, KOBO_STATUS_POSTED, 1000 },
		{ "t2", KOBO_EVENT_RESERVED, KOBO_STATUS_PENDING, 100 },
		{ "t3", KOBO_EVENT_REJECTED, KOBO_STATUS_REJECTED, 999999 },
		{ "t2", KOBO_EVENT_POSTED, KOBO_STATUS_POSTED, 40 },
		{ "t4", KOBO_EVENT_RESERVED, KOBO_STATUS_PENDING, 50 },
		{ "t4", KOBO_EVENT_VOIDED, KOBO_STATUS_VOIDED, 50 },
		{ "t1", KOBO_EVENT_REPLAYED, KOBO_STATUS_POSTED, 1000 },
		{ "t5", KOBO_EVENT_RESERVED, KOBO_STATUS_PROCESSING, 10 },
	};
	assert_int_equal(n, sizeof want / sizeof want[0]);
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(events[i].transfer_id, want[i].id);
		assert_int_equal(events[i].kind, want[i].kind);
		assert_int_equal(events[i].status, want[i].status);
		assert_int_equal(events[i].amount, want[i].amount);
		/* Every event tells of a record the batch writes (a replay
		 * writes nothing; its record exists). */
		assert_true(events[i].kind == KOBO_EVENT_REPLAYED || changed(ledger, want[i].id));
	}
	assert_string_equal(events[0].request_id, "req-t1");
	assert_string_equal(events[0].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
	assert_string_equal(events[0].key_id, "0123456789abcdef");
	assert_int_equal(events[0].leg, KOBO_LEG_LOCAL);
	assert_int_equal(events[7].leg, KOBO_LEG_DEBIT);
	assert_string_equal(events[1].trace_id, "");
	assert_string_equal(kobo_event_kind_name(events[7].kind), "reserved");
	kobo_ledger_destroy(ledger);
}

/* The payee's shard: credited, then the payer's settle; a refusal. */
static void saga_steps_make_their_events(void **state)
{
	(void)state;
	kobo_ledger *b = kobo_ledger_create(16);
	kobo_ledger *a = kobo_ledger_create(16);
	assert_non_null(a);
	assert_non_null(b);
	kobo_op on_b[] = {
		test_op_account("zed", "NGN", false, NULL),
		test_op_credit("t5", "alice", "zed", "kobo:clearing:1:0:NGN", 10, false),
		test_op_credit("t6", "alice", "nobody", "kobo:clearing:1:0:NGN", 10, false),
	};
	kobo_result rb[3];
	kobo_event events[3];
	assert_int_equal(kobo_ledger_apply(b, on_b, 3, 6000, rb), KOBO_OK);
	assert_int_equal(kobo_events_derive(on_b, rb, 3, events), 2);
	assert_int_equal(events[0].kind, KOBO_EVENT_CREDITED);
	assert_int_equal(events[0].leg, KOBO_LEG_CREDIT);
	assert_int_equal(events[1].kind, KOBO_EVENT_CREDIT_REFUSED);
	assert_int_equal(events[1].status, KOBO_STATUS_REJECTED);

	kobo_op on_a[] = {
		test_op_account("alice", "NGN", true, NULL),
		test_op_debit("t5", "alice", "zed", CLEARING, 10, false, 0),
		test_op_debit("t6", "alice", "nobody", CLEARING, 10, false, 0),
		test_op_settle("t5", false, KOBO_RESULT_CREATED),
		test_op_settle("t6", true, KOBO_RESULT_ACCOUNT_NOT_FOUND),
		test_op_settle("t5", false, KOBO_RESULT_CREATED), /* late: nothing */
	};
	kobo_result ra[6];
	kobo_event ea[6];
	assert_int_equal(kobo_ledger_apply(a, on_a, 6, 6000, ra), KOBO_OK);
	assert_int_equal(kobo_events_derive(on_a, ra, 6, ea), 4);
	assert_int_equal(ea[2].kind, KOBO_EVENT_SETTLED);
	assert_int_equal(ea[2].status, KOBO_STATUS_POSTED);
	assert_int_equal(ea[3].kind, KOBO_EVENT_COMPENSATED);
	assert_int_equal(ea[3].status, KOBO_STATUS_VOIDED);
	kobo_ledger_destroy(a);
	kobo_ledger_destroy(b);
}

/* Results built by hand: expiry, and the start of a cross-shard post and
 * void (DEBIT leg PROCESSING with its saga step). */
static void expiry_and_saga_asks_by_their_results(void **state)
{
	(void)state;
	kobo_op ops[] = {
		test_op_target(KOBO_OP_EXPIRE, "h1", false, 0),
		test_op_target(KOBO_OP_POST, "h2", true, 7),
		test_op_target(KOBO_OP_VOID, "h3", false, 0),
		test_op_target(KOBO_OP_POST, "h4", false, 0),
	};
	kobo_result r[4];
	memset(r, 0, sizeof r);
	for (size_t i = 0; i < 4; i++) {
		r[i].code = KOBO_RESULT_UPDATED;
		r[i].has_transfer = true;
		snprintf(r[i].transfer.id, sizeof r[i].transfer.id, "h%zu", i + 1);
		r[i].transfer.amount = 9;
	}
	r[0].transfer.status = KOBO_STATUS_VOIDED;
	r[0].transfer.void_reason = KOBO_VOID_EXPIRED;
	/* The hold's trace: an expiry has no request of its own. */
	snprintf(r[0].transfer.trace_id, sizeof r[0].transfer.trace_id, "%s",
	         "4bf92f3577b34da6a3ce929d0e0e4736");
	snprintf(r[1].transfer.trace_id, sizeof r[1].transfer.trace_id, "%s",
	         "0af7651916cd43dd8448eb211c80319c");
	r[1].transfer.status = KOBO_STATUS_PROCESSING;
	r[1].transfer.saga = KOBO_SAGA_POSTING;
	r[1].transfer.saga_amount = 7;
	r[2].transfer.status = KOBO_STATUS_PROCESSING;
	r[2].transfer.saga = KOBO_SAGA_VOIDING;
	r[3].code = KOBO_RESULT_NOT_PENDING; /* changed nothing */
	kobo_event events[4];
	assert_int_equal(kobo_events_derive(ops, r, 4, events), 3);
	assert_int_equal(events[0].kind, KOBO_EVENT_EXPIRED);
	assert_string_equal(events[0].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
	assert_int_equal(events[1].kind, KOBO_EVENT_POST_ASKED);
	/* Any other op: the trace of the request that asked (none here). */
	assert_string_equal(events[1].trace_id, "");
	assert_int_equal(events[1].amount, 7);
	assert_int_equal(events[2].kind, KOBO_EVENT_VOID_ASKED);
}

static kobo_event ev(kobo_event_kind kind, kobo_leg leg, int64_t at_ms)
{
	kobo_event e;
	memset(&e, 0, sizeof e);
	e.kind = kind;
	e.leg = leg;
	e.at_ms = at_ms;
	return e;
}

/* Time order first; on a tie, B's answer after A's ask, A's settle after
 * B's answer; each shard's own order kept. */
static void merge_keeps_time_then_saga_order(void **state)
{
	(void)state;
	kobo_event a[] = {
		ev(KOBO_EVENT_RESERVED, KOBO_LEG_DEBIT, 100),
		ev(KOBO_EVENT_SETTLED, KOBO_LEG_DEBIT, 100),
		ev(KOBO_EVENT_POST_ASKED, KOBO_LEG_DEBIT, 100),
		ev(KOBO_EVENT_SETTLED, KOBO_LEG_DEBIT, 100),
		ev(KOBO_EVENT_REPLAYED, KOBO_LEG_DEBIT, 300),
	};
	kobo_event b[] = {
		ev(KOBO_EVENT_CREDITED, KOBO_LEG_CREDIT, 100),
		ev(KOBO_EVENT_POSTED, KOBO_LEG_CREDIT, 100),
	};
	const kobo_event *lists[2] = {b, a}; /* B first: order must not matter */
	size_t lens[2] = {2, 5};
	kobo_event out[7];
	assert_int_equal(kobo_events_merge(lists, lens, 2, out), 7);
	kobo_event_kind want[] = {
		KOBO_EVENT_RESERVED, KOBO_EVENT_CREDITED, KOBO_EVENT_SETTLED,
		KOBO_EVENT_POST_ASKED, KOBO_EVENT_POSTED, KOBO_EVENT_SETTLED,
		KOBO_EVENT_REPLAYED,
	};
	for (size_t i = 0; i < 7; i++)
		assert_int_equal(out[i].kind, want[i]);
	kobo_event later[] = { ev(KOBO_EVENT_CREDITED, KOBO_LEG_CREDIT, 50) };
	lists[0] = later;
	lens[0] = 1;
	assert_int_equal(kobo_events_merge(lists, lens, 2, out), 6);
	assert_int_equal(out[0].kind, KOBO_EVENT_CREDITED); /* earlier in time */
}

/* Seeded: the list's events with seq > after, at most max of them. */
static size_t after_seq(const kobo_event *list, size_t len, int64_t after, size_t max,
                        const kobo_event **from)
{
	size_t i = 0;
	while (i < len && list[i].seq <= after)
		i++;
	*from = list + i;
	return len - i < max ? len - i : max;
}

/* Pages of any size, each read as the events endpoint reads (limit + 1
 * after the position, or everything), laid end to end are exactly the
 * whole merge; "more" holds until the last page. Ties in time are many
 * (at_ms over 4 values), so page boundaries fall between a saga's ask on
 * A and B's answer: the position's after_ask carries the tie order. */
static void merge_pages_are_the_whole_merge(void **state)
{
	(void)state;
	static const kobo_event_kind a_kinds[] = {
		KOBO_EVENT_RESERVED, KOBO_EVENT_SETTLED, KOBO_EVENT_REPLAYED,
		KOBO_EVENT_POST_ASKED, KOBO_EVENT_VOID_ASKED, KOBO_EVENT_COMPENSATED,
	};
	static const kobo_event_kind b_kinds[] = {
		KOBO_EVENT_CREDITED, KOBO_EVENT_POSTED, KOBO_EVENT_VOIDED,
	};
	uint64_t seed = 0x9e3779b97f4a7c15u;
	for (int round = 0; round < 300; round++) {
		kobo_event a[40], b[12], whole[52], paged[52];
		size_t la = 0, lb = 0;
		size_t want_a = (size_t)(round % 41), want_b = (size_t)((round / 3) % 13);
		int64_t t = 0;
		while (la < want_a || lb < want_b) {
			seed = seed * 6364136223846793005u + 1442695040888963407u;
			unsigned r = (unsigned)(seed >> 33);
			if (r % 4 == 0)
				t += 1 + r % 3; /* time moves now and then: ties abound */
			if ((r & 16) ? la < want_a : lb >= want_b) {
				a[la] = ev(a_kinds[(r >> 8) % 6], KOBO_LEG_DEBIT, t);
				a[la].seq = (int64_t)(la * 3 + 1 + round); /* gaps: other transfers */
				la++;
			} else {
				b[lb] = ev(b_kinds[(r >> 8) % 3], KOBO_LEG_CREDIT, t);
				b[lb].seq = (int64_t)(lb * 5 + 2);
				lb++;
			}
		}
		const kobo_event *lists[2] = {a, b};
		size_t lens[2] = {la, lb};
		size_t total = kobo_events_merge(lists, lens, 2, whole);
		assert_int_equal(total, la + lb);
		for (size_t limit = 1; limit <= 8; limit++) {
			for (int read_all = 0; read_all < 2; read_all++) {
				kobo_events_position pos;
				memset(&pos, 0, sizeof pos);
				size_t got = 0, pages = 0;
				bool more = true;
				while (more) {
					const kobo_event *from[2];
					size_t cut[2];
					size_t max = read_all ? SIZE_MAX : limit + 1;
					cut[0] = after_seq(a, la, pos.after_seq[0], max, &from[0]);
					cut[1] = after_seq(b, lb, pos.after_seq[1], max, &from[1]);
					size_t n = kobo_events_merge_page(from, cut, 2, limit, &pos,
					                                  paged + got, &more);
					assert_true(n <= limit);
					assert_true(n == limit || !more);
					got += n;
					pages++;
					assert_true(pages <= total + 1);
				}
				assert_int_equal(got, total);
				assert_int_equal(pages, total ? (total + limit - 1) / limit : 1);
				for (size_t i = 0; i < total; i++) {
					assert_int_equal(paged[i].kind, whole[i].kind);
					assert_int_equal(paged[i].seq, whole[i].seq);
					assert_int_equal(paged[i].leg, whole[i].leg);
				}
			}
		}
	}
}

/* The boundary the position exists for: a page ending on A's post_asked
 * (tied in time with B's posted and A's settled) resumes with B's answer. */
static void a_page_ending_on_an_ask_resumes_with_the_answer(void **state)
{
	(void)state;
	kobo_event a[] = {
		ev(KOBO_EVENT_POST_ASKED, KOBO_LEG_DEBIT, 100),
		ev(KOBO_EVENT_SETTLED, KOBO_LEG_DEBIT, 100),
	};
	kobo_event b[] = { ev(KOBO_EVENT_POSTED, KOBO_LEG_CREDIT, 100) };
	a[0].seq = 7;
	a[1].seq = 9;
	b[0].seq = 4;
	const kobo_event *lists[2] = {a, b};
	size_t lens[2] = {2, 1};
	kobo_events_position pos = { .after_seq = {6, 3} };
	kobo_event out[3];
	bool more;
	assert_int_equal(kobo_events_merge_page(lists, lens, 2, 1, &pos, out, &more), 1);
	assert_int_equal(out[0].kind, KOBO_EVENT_POST_ASKED);
	assert_true(more);
	assert_true(pos.after_ask);
	assert_int_equal(pos.after_seq[0], 7);
	assert_int_equal(pos.after_seq[1], 3); /* nothing taken from B: kept */
	lists[0] = a + 1;
	lens[0] = 1;
	assert_int_equal(kobo_events_merge_page(lists, lens, 2, 5, &pos, out, &more), 2);
	assert_int_equal(out[0].kind, KOBO_EVENT_POSTED);
	assert_int_equal(out[1].kind, KOBO_EVENT_SETTLED);
	assert_false(more);
	assert_false(pos.after_ask);
	assert_int_equal(pos.after_seq[0], 9);
	assert_int_equal(pos.after_seq[1], 4);
	/* Nothing left: an empty page, no more, the position unchanged. */
	lens[0] = lens[1] = 0;
	assert_int_equal(kobo_events_merge_page(lists, lens, 2, 5, &pos, out, &more), 0);
	assert_false(more);
	assert_int_equal(pos.after_seq[0], 9);
}

static void names_round_trip(void **state)
{
	(void)state;
	for (int k = 0; k < KOBO_EVENT_KIND_COUNT; k++) {
		kobo_event_kind back;
		assert_non_null(kobo_event_kind_name((kobo_event_kind)k));
		assert_true(kobo_event_kind_parse(kobo_event_kind_name((kobo_event_kind)k), &back));
		assert_int_equal(back, k);
	}
	kobo_event_kind back;
	assert_false(kobo_event_kind_parse("moved", &back));
	assert_null(kobo_event_kind_name(KOBO_EVENT_KIND_COUNT));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(a_batch_makes_one_event_per_state_change),
		cmocka_unit_test(saga_steps_make_their_events),
		cmocka_unit_test(expiry_and_saga_asks_by_their_results),
		cmocka_unit_test(merge_keeps_time_then_saga_order),
		cmocka_unit_test(merge_pages_are_the_whole_merge),
		cmocka_unit_test(a_page_ending_on_an_ask_resumes_with_the_answer),
		cmocka_unit_test(names_round_trip),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
