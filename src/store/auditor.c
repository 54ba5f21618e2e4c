/*
 * auditor.c — proves that a shard's balances are what its transfers say
 * (DESIGN.md invariant 6, `kobo audit`): the rules, for every backend.
 *
 * The auditor knows nothing of how a backend stores its rows: a backend
 * feeds it one consistent snapshot, account by account and transfer by
 * transfer, and it reports every discrepancy (auditor.h). The SQLite store
 * feeds it from a read transaction (sqlite_audit.c), the in-memory store
 * from under its mutex (store_mem.c), so both agree on what a sound shard
 * is. It sums with __int128, never with SQL SUM(), which fails (or, for
 * REAL, rounds) once a total passes 2^63 — and a total that large is
 * exactly what an audit must be able to report rather than crash on.
 *
 * Checks, each discrepancy reported as one sentence:
 *   1. per currency, the posted balances sum to 0 and the pending_out sums
 *      equal the pending_in sums (double entry);
 *   2. per account, posted equals the posted_amount of its POSTED transfers
 *      in minus out; pending_out (pending_in) equals the amount of the
 *      holds out of (into) it, a hold being a PENDING or a PROCESSING
 *      record (kobo_transfer_holds). "Out of" and "into" mean the accounts
 *      the record moves money between on this shard
 *      (kobo_transfer_debit_account / kobo_transfer_credit_account): from
 *      and to for a LOCAL transfer, from and the clearing account for a
 *      DEBIT leg, the clearing account and to for a CREDIT leg; the
 *      other shard's account of a leg is not checked here;
 *   3. no account with allow_negative = 0 has available < 0;
 *   4. no non-rejected transfer names an account the shard does not have,
 *      or one of another currency;
 *   5. 0 <= posted_amount <= amount, and posted_amount is 0 unless POSTED;
 *   6. legs and sagas are coherent: a LOCAL transfer has no clearing
 *      account, a DEBIT or CREDIT leg has one; a saga is under way (saga
 *      != NONE) only on a DEBIT leg, and exactly while its status is
 *      PROCESSING (ledger.h, kobo_saga_state).
 * Sagas under way are counted into totals->sagas_in_flight.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auditor.h"

typedef struct audit_account {
	char id[KOBO_ID_LEN_MAX + 1];
	char currency[KOBO_CURRENCY_LEN_MAX + 1];
	bool allow_negative;
	int64_t posted;
	int64_t pending_out;
	int64_t pending_in;
	/* What the transfers say. */
	__int128 expected_posted;
	__int128 expected_pending_out;
	__int128 expected_pending_in;
} audit_account;

typedef struct audit_currency {
	char code[KOBO_CURRENCY_LEN_MAX + 1];
	__int128 posted;
	__int128 pending_out;
	__int128 pending_in;
} audit_currency;

struct store_auditor {
	kobo_store_report_fn report;
	void *ctx;
	kobo_audit_totals *totals;
	audit_account *accounts;
	size_t account_count;
	size_t accounts_max;
	size_t *slots; /* open addressing: index + 1, 0 empty */
	size_t slot_mask;
	audit_currency *currencies;
	size_t currency_count;
	size_t currency_cap;
};

static void report_problem(store_auditor *a, const char *fmt, va_list args)
	__attribute__((format(printf, 2, 0)));

static void report_problem(store_auditor *a, const char *fmt, va_list args)
{
	char line[STORE_AUDITOR_LINE_BYTES];

	vsnprintf(line, sizeof line, fmt, args);
	a->totals->problems++;
	if (a->report != NULL)
		a->report(a->ctx, line);
}

/* Formats a 128-bit sum in decimal (printf has no conversion for it). */
static const char *int128_text(__int128 value, char buf[48])
{
	char digits[48];
	size_t n = 0;
	unsigned __int128 magnitude = value < 0 ? -(unsigned __int128)value :
	                              (unsigned __int128)value;

	do {
		digits[n++] = (char)('0' + (int)(magnitude % 10));
		magnitude /= 10;
	} while (magnitude != 0);
	size_t out = 0;
	if (value < 0)
		buf[out++] = '-';
	while (n > 0)
		buf[out++] = digits[--n];
	buf[out] = '\0';
	return buf;
}

static uint64_t hash_id(const char *id)
{
	uint64_t h = 14695981039346656037ull; /* FNV-1a */
	for (; *id != '\0'; id++) {
		h ^= (unsigned char)*id;
		h *= 1099511628211ull;
	}
	return h;
}

static audit_account *find_account(const store_auditor *a, const char *id)
{
	for (size_t i = hash_id(id) & a->slot_mask;; i = (i + 1) & a->slot_mask) {
		size_t slot = a->slots[i];
		if (slot == 0)
			return NULL;
		if (strcmp(a->accounts[slot - 1].id, id) == 0)
			return &a->accounts[slot - 1];
	}
}

static audit_currency *find_currency(store_auditor *a, const char *code)
{
	for (size_t i = 0; i < a->currency_count; i++) {
		if (strcmp(a->currencies[i].code, code) == 0)
			return &a->currencies[i];
	}
	if (a->currency_count == a->currency_cap) {
		size_t cap = a->currency_cap == 0 ? 8 : 2 * a->currency_cap;
		audit_currency *grown = realloc(a->currencies, cap * sizeof *grown);
		if (grown == NULL)
			return NULL;
		a->currencies = grown;
		a->currency_cap = cap;
	}
	audit_currency *c = &a->currencies[a->currency_count++];
	memset(c, 0, sizeof *c);
	snprintf(c->code, sizeof c->code, "%s", code);
	return c;
}

/* ---- The auditor (auditor.h). ---- */

void store_auditor_problem(store_auditor *a, const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	report_problem(a, fmt, args);
	va_end(args);
}

void store_auditor_transfer_problem(store_auditor *a, const char *fmt, ...)
{
	va_list args;

	a->totals->transfers++;
	va_start(args, fmt);
	report_problem(a, fmt, args);
	va_end(args);
}

store_auditor *store_auditor_create(size_t accounts_max, kobo_store_report_fn report,
                                void *ctx, kobo_audit_totals *totals)
{
	store_auditor *a = calloc(1, sizeof *a);
	size_t slot_count = 16;

	memset(totals, 0, sizeof *totals);
	if (a == NULL)
		return NULL;
	a->report = report;
	a->ctx = ctx;
	a->totals = totals;
	a->accounts_max = accounts_max;
	/* At most half full, so every probe sequence ends at an empty slot. */
	while (slot_count < 2 * accounts_max)
		slot_count *= 2;
	a->accounts = calloc(accounts_max + 1, sizeof *a->accounts);
	a->slots = calloc(slot_count, sizeof *a->slots);
	if (a->accounts == NULL || a->slots == NULL) {
		store_auditor_destroy(a);
		return NULL;
	}
	a->slot_mask = slot_count - 1;
	return a;
}

void store_auditor_destroy(store_auditor *a)
{
	if (a == NULL)
		return;
	free(a->accounts);
	free(a->slots);
	free(a->currencies);
	free(a);
}

int store_auditor_account(store_auditor *a, const kobo_account *account)
{
	if (a->account_count == a->accounts_max)
		return KOBO_EFULL;
	audit_account *acc = &a->accounts[a->account_count];
	snprintf(acc->id, sizeof acc->id, "%s", account->id);
	snprintf(acc->currency, sizeof acc->currency, "%s", account->currency);
	acc->allow_negative = account->allow_negative;
	acc->posted = account->posted;
	acc->pending_out = account->pending_out;
	acc->pending_in = account->pending_in;
	audit_currency *c = find_currency(a, acc->currency);
	if (c == NULL)
		return KOBO_ENOMEM;
	size_t i = hash_id(acc->id) & a->slot_mask;
	while (a->slots[i] != 0)
		i = (i + 1) & a->slot_mask;
	a->slots[i] = ++a->account_count;
	c->posted += acc->posted;
	c->pending_out += acc->pending_out;
	c->pending_in += acc->pending_in;
	a->totals->accounts = a->account_count;
	return KOBO_OK;
}

/* The transfer's side on one account: checks it exists and shares the
 * transfer's currency. NULL when it does not (reported). */
static audit_account *transfer_side(store_auditor *a, const char *transfer_id,
                                    const char *role, const char *account_id,
                                    const char *currency)
{
	audit_account *acc = find_account(a, account_id);
	if (acc == NULL) {
		store_auditor_problem(a, "transfer %s names %s account %s, which does "
		                    "not exist", transfer_id, role, account_id);
		return NULL;
	}
	if (strcmp(acc->currency, currency) != 0) {
		store_auditor_problem(a, "transfer %s is in %s but its %s account %s "
		                    "is in %s", transfer_id, currency, role,
		                    account_id, acc->currency);
	}
	return acc;
}

/* Check 6: the leg, clearing account, saga state and status agree. */
static void check_leg(store_auditor *a, const kobo_transfer *t)
{
	const char *id = t->id;

	if (t->leg == KOBO_LEG_LOCAL && t->clearing[0] != '\0')
		store_auditor_problem(a, "transfer %s is local but names clearing "
		                    "account %s", id, t->clearing);
	if (t->leg != KOBO_LEG_LOCAL && t->clearing[0] == '\0')
		store_auditor_problem(a, "transfer %s is a %s leg without a clearing "
		                    "account", id, kobo_leg_name(t->leg));
	if (t->saga != KOBO_SAGA_NONE && t->leg != KOBO_LEG_DEBIT)
		store_auditor_problem(a, "transfer %s is a %s leg but has saga state %s "
		                    "(only debit legs run sagas)", id,
		                    kobo_leg_name(t->leg), kobo_saga_state_name(t->saga));
	if (t->saga != KOBO_SAGA_NONE && t->status != KOBO_STATUS_PROCESSING)
		store_auditor_problem(a, "transfer %s has saga state %s but is %s, not "
		                    "processing", id, kobo_saga_state_name(t->saga),
		                    kobo_transfer_status_name(t->status));
	if (t->status == KOBO_STATUS_PROCESSING && t->saga == KOBO_SAGA_NONE)
		store_auditor_problem(a, "transfer %s is processing but no saga step is "
		                    "under way", id);
}

void store_auditor_transfer(store_auditor *a, const kobo_transfer *t)
{
	const char *id = t->id;

	a->totals->transfers++;
	if (t->saga != KOBO_SAGA_NONE)
		a->totals->sagas_in_flight++;
	if (t->amount < 1)
		store_auditor_problem(a, "transfer %s has amount %" PRId64 ", below 1",
		                    id, t->amount);
	if (t->posted_amount < 0 || t->posted_amount > t->amount)
		store_auditor_problem(a, "transfer %s has posted_amount %" PRId64
		                    " outside 0..amount (%" PRId64 ")", id,
		                    t->posted_amount, t->amount);
	if (t->status != KOBO_STATUS_POSTED && t->posted_amount != 0)
		store_auditor_problem(a, "transfer %s is %s but has posted_amount %"
		                    PRId64 " (only posted transfers move money)", id,
		                    kobo_transfer_status_name(t->status), t->posted_amount);
	check_leg(a, t);
	if (t->status == KOBO_STATUS_REJECTED)
		return; /* moved nothing; may name accounts that never existed */

	/* The roles name the field the account comes from, so that a report
	 * points at the column to look at. */
	const char *debit_role = t->leg == KOBO_LEG_CREDIT ? "clearing" : "from";
	const char *credit_role = t->leg == KOBO_LEG_DEBIT ? "clearing" : "to";
	audit_account *debit = transfer_side(a, id, debit_role,
	                                     kobo_transfer_debit_account(t),
	                                     t->currency);
	audit_account *credit = transfer_side(a, id, credit_role,
	                                      kobo_transfer_credit_account(t),
	                                      t->currency);
	if (t->status == KOBO_STATUS_POSTED) {
		if (debit != NULL)
			debit->expected_posted -= t->posted_amount;
		if (credit != NULL)
			credit->expected_posted += t->posted_amount;
	} else if (kobo_transfer_holds(t)) {
		if (debit != NULL)
			debit->expected_pending_out += t->amount;
		if (credit != NULL)
			credit->expected_pending_in += t->amount;
	}
}

void store_auditor_finish(store_auditor *a)
{
	char want[48];
	char have[48];

	for (size_t i = 0; i < a->account_count; i++) {
		const audit_account *acc = &a->accounts[i];
		if (acc->posted != acc->expected_posted)
			store_auditor_problem(a, "account %s has posted %s but its "
			                    "transfers say %s", acc->id,
			                    int128_text(acc->posted, have),
			                    int128_text(acc->expected_posted, want));
		if (acc->pending_out != acc->expected_pending_out)
			store_auditor_problem(a, "account %s has pending_out %s but its "
			                    "pending transfers out sum to %s", acc->id,
			                    int128_text(acc->pending_out, have),
			                    int128_text(acc->expected_pending_out, want));
		if (acc->pending_in != acc->expected_pending_in)
			store_auditor_problem(a, "account %s has pending_in %s but its "
			                    "pending transfers in sum to %s", acc->id,
			                    int128_text(acc->pending_in, have),
			                    int128_text(acc->expected_pending_in, want));
		__int128 available = (__int128)acc->posted - acc->pending_out;
		if (!acc->allow_negative && available < 0)
			store_auditor_problem(a, "account %s may not go negative but has "
			                    "available %s", acc->id,
			                    int128_text(available, have));
	}
	for (size_t i = 0; i < a->currency_count; i++) {
		const audit_currency *c = &a->currencies[i];
		if (c->posted != 0)
			store_auditor_problem(a, "%s posted balances sum to %s, not 0",
			                    c->code, int128_text(c->posted, have));
		if (c->pending_out != c->pending_in)
			store_auditor_problem(a, "%s pending_out balances sum to %s but "
			                    "pending_in balances sum to %s", c->code,
			                    int128_text(c->pending_out, have),
			                    int128_text(c->pending_in, want));
	}
}
