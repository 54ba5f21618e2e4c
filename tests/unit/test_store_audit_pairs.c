/*
 * test_store_audit_pairs.c — the cross-shard half of the audit's rules
 * (src/store/auditor.h, store_pairs_*): each transfer's DEBIT leg against
 * its CREDIT leg, and each pair of clearing accounts against the sagas in
 * flight between them.
 *
 * Each test builds the rows `kobo audit` would read from two shards (a
 * clearing account is fed with its balances, a leg as stored) and checks
 * what the checker says: a legitimate saga in flight is sound, and a loss
 * is found whether or not a saga is in flight beside it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "../../src/store/auditor.h"

#define LANE ":0123456789abcdef0123456789abcdef"

typedef struct lines {
	size_t count;
	char text[16][STORE_AUDITOR_LINE_BYTES];
} lines;

static void keep_line(void *ctx, const char *line)
{
	lines *l = ctx;
	if (l->count < 16)
		snprintf(l->text[l->count], sizeof l->text[0], "%s", line);
	l->count++;
}

static bool said(const lines *l, const char *needle)
{
	for (size_t i = 0; i < l->count && i < 16; i++) {
		if (strstr(l->text[i], needle) != NULL)
			return true;
	}
	return false;
}

static void print_lines(const lines *l)
{
	for (size_t i = 0; i < l->count && i < 16; i++)
		print_message("  reported: %s\n", l->text[i]);
}

/* Shard `shard`'s clearing account for `other` (NGN, lane). */
static void clearing(store_pairs *p, uint32_t shard, uint32_t other, const char *lane,
                     int64_t posted, int64_t pending_out, int64_t pending_in)
{
	kobo_account a;
	memset(&a, 0, sizeof a);
	snprintf(a.id, sizeof a.id, "kobo:clearing:%u:%u:NGN%s", shard, other, lane);
	snprintf(a.currency, sizeof a.currency, "NGN");
	a.allow_negative = true;
	a.posted = posted;
	a.pending_out = pending_out;
	a.pending_in = pending_in;
	assert_int_equal(store_pairs_clearing(p, shard, other, "NGN", lane, &a), KOBO_OK);
}

typedef struct leg_spec {
	kobo_leg leg;
	kobo_transfer_status status;
	kobo_saga_state saga;
	bool pending;
	int64_t amount, posted_amount, saga_amount;
} leg_spec;

static void leg(store_pairs *p, uint32_t shard, uint32_t other, const char *lane,
                const char *id, leg_spec spec)
{
	kobo_transfer t;
	memset(&t, 0, sizeof t);
	snprintf(t.id, sizeof t.id, "%s", id);
	snprintf(t.from, sizeof t.from, "payer");
	snprintf(t.to, sizeof t.to, "payee");
	snprintf(t.currency, sizeof t.currency, "NGN");
	snprintf(t.clearing, sizeof t.clearing, "kobo:clearing:%u:%u:NGN%s", shard, other, lane);
	t.leg = spec.leg;
	t.status = spec.status;
	t.saga = spec.saga;
	t.pending = spec.pending;
	t.amount = spec.amount;
	t.posted_amount = spec.posted_amount;
	t.saga_amount = spec.saga_amount;
	assert_int_equal(store_pairs_leg(p, shard, other, "NGN", lane, &t), KOBO_OK);
}

#define DEBIT(...) ((leg_spec){.leg = KOBO_LEG_DEBIT, __VA_ARGS__})
#define CREDIT(...) ((leg_spec){.leg = KOBO_LEG_CREDIT, __VA_ARGS__})

typedef struct check {
	store_pairs *p;
	lines said;
	store_pairs_totals totals;
} check;

static void start(check *c)
{
	memset(c, 0, sizeof *c);
	c->p = store_pairs_create(keep_line, &c->said);
	assert_non_null(c->p);
}

static void finish(check *c)
{
	store_pairs_finish(c->p, &c->totals);
	store_pairs_destroy(c->p);
	assert_int_equal(c->totals.problems, c->said.count);
}

static void expect_sound(check *c, size_t pairs, size_t transfers, size_t in_flight)
{
	finish(c);
	if (c->totals.problems != 0)
		print_lines(&c->said);
	assert_int_equal(c->totals.problems, 0);
	assert_int_equal(c->totals.pairs, pairs);
	assert_int_equal(c->totals.transfers, transfers);
	assert_int_equal(c->totals.in_flight, in_flight);
}

static void expect_problem(check *c, const char *needle)
{
	finish(c);
	if (!said(&c->said, needle)) {
		print_message("expected a report containing \"%s\"\n", needle);
		print_lines(&c->said);
	}
	assert_true(c->totals.problems > 0);
	assert_true(said(&c->said, needle));
}

/* ---- Settled transfers. ---- */

static void settled_posted_transfer_nets_to_zero(void **state)
{
	(void)state;
	check c;
	start(&c);
	clearing(c.p, 0, 1, "", 300, 0, 0);
	clearing(c.p, 1, 0, "", -300, 0, 0);
	leg(c.p, 0, 1, "", "x", DEBIT(.status = KOBO_STATUS_POSTED, .amount = 300, .posted_amount = 300));
	leg(c.p, 1, 0, "", "x", CREDIT(.status = KOBO_STATUS_POSTED, .amount = 300, .posted_amount = 300));
	expect_sound(&c, 1, 1, 0);
}

static void settled_hold_both_ways_matches(void **state)
{
	(void)state;
	check c;
	start(&c);
	/* 0 -> 1 holds 120, 1 -> 0 holds 50, and a voided one each way. */
	clearing(c.p, 0, 1, "", 0, 50, 120);
	clearing(c.p, 1, 0, "", 0, 120, 50);
	leg(c.p, 0, 1, "", "h", DEBIT(.status = KOBO_STATUS_PENDING, .pending = true, .amount = 120));
	leg(c.p, 1, 0, "", "h", CREDIT(.status = KOBO_STATUS_PENDING, .pending = true, .amount = 120));
	leg(c.p, 1, 0, "", "g", DEBIT(.status = KOBO_STATUS_PENDING, .pending = true, .amount = 50));
	leg(c.p, 0, 1, "", "g", CREDIT(.status = KOBO_STATUS_PENDING, .pending = true, .amount = 50));
	leg(c.p, 0, 1, "", "v", DEBIT(.status = KOBO_STATUS_VOIDED, .pending = true, .amount = 9));
	leg(c.p, 1, 0, "", "v", CREDIT(.status = KOBO_STATUS_VOIDED, .pending = true, .amount = 9));
	leg(c.p, 1, 0, "", "r", DEBIT(.status = KOBO_STATUS_VOIDED, .amount = 7));
	leg(c.p, 0, 1, "", "r", CREDIT(.status = KOBO_STATUS_REJECTED, .amount = 7));
	expect_sound(&c, 1, 4, 0);
}

static void posted_debit_without_credit_is_a_loss(void **state)
{
	(void)state;
	check c;
	start(&c);
	clearing(c.p, 0, 1, "", 300, 0, 0);
	clearing(c.p, 1, 0, "", 0, 0, 0);
	leg(c.p, 0, 1, "", "x", DEBIT(.status = KOBO_STATUS_POSTED, .amount = 300, .posted_amount = 300));
	expect_problem(&c, "debit leg is posted 300 of 300 but credit leg is absent");
	assert_true(said(&c.said, "do not net to 0"));
}

static void credit_leg_alone_is_money_from_nowhere(void **state)
{
	(void)state;
	check c;
	start(&c);
	clearing(c.p, 1, 0, "", -40, 0, 0);
	leg(c.p, 1, 0, "", "orphan", CREDIT(.status = KOBO_STATUS_POSTED, .amount = 40, .posted_amount = 40));
	expect_problem(&c, "money credited that was never debited");
	assert_true(said(&c.said, "(absent)"));
}

static void credit_posting_more_than_debit_is_found(void **state)
{
	(void)state;
	check c;
	start(&c);
	clearing(c.p, 0, 1, "", 300, 0, 0);
	clearing(c.p, 1, 0, "", -399, 0, 0);
	leg(c.p, 0, 1, "", "x", DEBIT(.status = KOBO_STATUS_POSTED, .amount = 300, .posted_amount = 300));
	leg(c.p, 1, 0, "", "x", CREDIT(.status = KOBO_STATUS_POSTED, .amount = 399, .posted_amount = 399));
	expect_problem(&c, "credit leg is posted 399 of 399");
	assert_true(said(&c.said, "sum to -99"));
}

/* ---- Sagas in flight. ---- */

static void reserved_hold_before_credit_is_sound(void **state)
{
	(void)state;
	check c;
	start(&c);
	clearing(c.p, 0, 1, "", 0, 0, 120);
	leg(c.p, 0, 1, "", "h", DEBIT(.status = KOBO_STATUS_PROCESSING, .saga = KOBO_SAGA_RESERVED,
	                              .pending = true, .amount = 120));
	expect_sound(&c, 1, 1, 1);
}

static void reserved_transfer_credited_not_settled_is_sound(void **state)
{
	(void)state;
	check c;
	start(&c);
	/* A holds 300 into its clearing; B already posted 300 out of its own. */
	clearing(c.p, 0, 1, "", 0, 0, 300);
	clearing(c.p, 1, 0, "", -300, 0, 0);
	leg(c.p, 0, 1, "", "x", DEBIT(.status = KOBO_STATUS_PROCESSING, .saga = KOBO_SAGA_RESERVED,
	                              .amount = 300));
	leg(c.p, 1, 0, "", "x", CREDIT(.status = KOBO_STATUS_POSTED, .amount = 300, .posted_amount = 300));
	expect_sound(&c, 1, 1, 1);
}

static void posting_and_voiding_one_step_ahead_are_sound(void **state)
{
	(void)state;
	check c;
	start(&c);
	/* 1 -> 0: posting 70 of 100, B posted it; voiding 30, B voided it;
	 * voiding 5, B not yet. */
	clearing(c.p, 1, 0, "", 0, 0, 135);
	clearing(c.p, 0, 1, "", -70, 5, 0);
	leg(c.p, 1, 0, "", "p", DEBIT(.status = KOBO_STATUS_PROCESSING, .saga = KOBO_SAGA_POSTING,
	                              .pending = true, .amount = 100, .saga_amount = 70));
	leg(c.p, 0, 1, "", "p", CREDIT(.status = KOBO_STATUS_POSTED, .pending = true, .amount = 100,
	                               .posted_amount = 70));
	leg(c.p, 1, 0, "", "v", DEBIT(.status = KOBO_STATUS_PROCESSING, .saga = KOBO_SAGA_VOIDING,
	                              .pending = true, .amount = 30));
	leg(c.p, 0, 1, "", "v", CREDIT(.status = KOBO_STATUS_VOIDED, .pending = true, .amount = 30));
	leg(c.p, 1, 0, "", "w", DEBIT(.status = KOBO_STATUS_PROCESSING, .saga = KOBO_SAGA_VOIDING,
	                              .pending = true, .amount = 5));
	leg(c.p, 0, 1, "", "w", CREDIT(.status = KOBO_STATUS_PENDING, .pending = true, .amount = 5));
	expect_sound(&c, 1, 3, 3);
}

static void clearing_off_by_99_is_found_beside_a_saga_in_flight(void **state)
{
	(void)state;
	check c;
	start(&c);
	clearing(c.p, 0, 1, "", 300, 0, 120);
	clearing(c.p, 1, 0, "", -300 + 99, 0, 0);
	leg(c.p, 0, 1, "", "x", DEBIT(.status = KOBO_STATUS_POSTED, .amount = 300, .posted_amount = 300));
	leg(c.p, 1, 0, "", "x", CREDIT(.status = KOBO_STATUS_POSTED, .amount = 300, .posted_amount = 300));
	leg(c.p, 0, 1, "", "h", DEBIT(.status = KOBO_STATUS_PROCESSING, .saga = KOBO_SAGA_RESERVED,
	                              .pending = true, .amount = 120));
	expect_problem(&c, "do not net to 0 (they sum to 99)");
	assert_int_equal(c.totals.in_flight, 1);
}

static void in_flight_amounts_must_match_the_legs(void **state)
{
	(void)state;
	check c;
	start(&c);
	/* B posted 300 for a reserved transfer, but B's clearing says 250. */
	clearing(c.p, 0, 1, "", 0, 0, 300);
	clearing(c.p, 1, 0, "", -250, 0, 0);
	leg(c.p, 0, 1, "", "x", DEBIT(.status = KOBO_STATUS_PROCESSING, .saga = KOBO_SAGA_RESERVED,
	                              .amount = 300));
	leg(c.p, 1, 0, "", "x", CREDIT(.status = KOBO_STATUS_POSTED, .amount = 300, .posted_amount = 300));
	expect_problem(&c, "while the sagas in flight account for -300");
}

static void credit_two_steps_ahead_is_found(void **state)
{
	(void)state;
	check c;
	start(&c);
	/* Reserved on A, yet B's hold is already voided: A never asked. */
	clearing(c.p, 0, 1, "", 0, 0, 80);
	leg(c.p, 0, 1, "", "h", DEBIT(.status = KOBO_STATUS_PROCESSING, .saga = KOBO_SAGA_RESERVED,
	                              .pending = true, .amount = 80));
	leg(c.p, 1, 0, "", "h", CREDIT(.status = KOBO_STATUS_VOIDED, .pending = true, .amount = 80));
	expect_problem(&c, "debit leg is processing (reserved) 80 but credit leg is voided 80");
}

static void posting_with_credit_posting_another_amount_is_found(void **state)
{
	(void)state;
	check c;
	start(&c);
	clearing(c.p, 0, 1, "", 0, 0, 100);
	clearing(c.p, 1, 0, "", -90, 0, 0);
	leg(c.p, 0, 1, "", "p", DEBIT(.status = KOBO_STATUS_PROCESSING, .saga = KOBO_SAGA_POSTING,
	                              .pending = true, .amount = 100, .saga_amount = 70));
	leg(c.p, 1, 0, "", "p", CREDIT(.status = KOBO_STATUS_POSTED, .pending = true, .amount = 100,
	                               .posted_amount = 90));
	expect_problem(&c, "credit leg is posted 90 of 100");
}

/* ---- Lanes. ---- */

static void lanes_pair_apart_from_the_base_accounts(void **state)
{
	(void)state;
	check c;
	start(&c);
	clearing(c.p, 0, 1, "", 10, 0, 0);
	clearing(c.p, 1, 0, "", -10, 0, 0);
	clearing(c.p, 0, 1, LANE, 500, 0, 0);
	clearing(c.p, 1, 0, LANE, -500, 0, 0);
	leg(c.p, 0, 1, "", "small", DEBIT(.status = KOBO_STATUS_POSTED, .amount = 10, .posted_amount = 10));
	leg(c.p, 1, 0, "", "small", CREDIT(.status = KOBO_STATUS_POSTED, .amount = 10, .posted_amount = 10));
	leg(c.p, 0, 1, LANE, "big", DEBIT(.status = KOBO_STATUS_POSTED, .amount = 500, .posted_amount = 500));
	leg(c.p, 1, 0, LANE, "big", CREDIT(.status = KOBO_STATUS_POSTED, .amount = 500, .posted_amount = 500));
	expect_sound(&c, 2, 2, 0);
}

static void a_credit_leg_in_another_lane_does_not_match(void **state)
{
	(void)state;
	check c;
	start(&c);
	clearing(c.p, 0, 1, LANE, 500, 0, 0);
	clearing(c.p, 1, 0, "", -500, 0, 0);
	leg(c.p, 0, 1, LANE, "big", DEBIT(.status = KOBO_STATUS_POSTED, .amount = 500, .posted_amount = 500));
	leg(c.p, 1, 0, "", "big", CREDIT(.status = KOBO_STATUS_POSTED, .amount = 500, .posted_amount = 500));
	expect_problem(&c, "money credited that was never debited");
	assert_true(said(&c.said, "in NGN" LANE ": debit leg is posted 500 of 500 but credit leg is absent"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(settled_posted_transfer_nets_to_zero),
		cmocka_unit_test(settled_hold_both_ways_matches),
		cmocka_unit_test(posted_debit_without_credit_is_a_loss),
		cmocka_unit_test(credit_leg_alone_is_money_from_nowhere),
		cmocka_unit_test(credit_posting_more_than_debit_is_found),
		cmocka_unit_test(reserved_hold_before_credit_is_sound),
		cmocka_unit_test(reserved_transfer_credited_not_settled_is_sound),
		cmocka_unit_test(posting_and_voiding_one_step_ahead_are_sound),
		cmocka_unit_test(clearing_off_by_99_is_found_beside_a_saga_in_flight),
		cmocka_unit_test(in_flight_amounts_must_match_the_legs),
		cmocka_unit_test(credit_two_steps_ahead_is_found),
		cmocka_unit_test(posting_with_credit_posting_another_amount_is_found),
		cmocka_unit_test(lanes_pair_apart_from_the_base_accounts),
		cmocka_unit_test(a_credit_leg_in_another_lane_does_not_match),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
