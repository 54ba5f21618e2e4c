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
 *
 * The second half (store_pairs_*) compares shards with each other, for
 * `kobo audit`: each cross-shard transfer's DEBIT leg with its CREDIT leg,
 * then each pair of clearing accounts with the sagas in flight between
 * them (the checks are listed in auditor.h). What may a CREDIT leg on c be
 * while the DEBIT leg on d is in a given state? B acts only after A
 * committed the step, and A leaves a saga state only after B's step
 * committed (ledger.h, SAGA_SETTLE; src/saga/saga.h), so in one cut:
 *
 *   DEBIT leg (d)              CREDIT leg (c) may be
 *   REJECTED                   none (absent or rejected)
 *   PENDING                    PENDING
 *   POSTED p                   POSTED p
 *   VOIDED                     none, or VOIDED
 *   PROCESSING, RESERVED       none; PENDING if a hold was asked, else
 *                              POSTED amount (B credited, A not settled)
 *   PROCESSING, POSTING s      PENDING (not yet, or refused), POSTED s
 *   PROCESSING, VOIDING        PENDING (not yet), VOIDED
 *   (no DEBIT leg)             none: a CREDIT leg alone is money from
 *                              nowhere
 *
 * and the amount of both legs is the same. Only the rows with a saga in
 * flight may leave the pair of clearing accounts off zero, by exactly what
 * their CREDIT leg has done that the DEBIT leg has not yet settled.
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

static audit_account *find_account(const store_auditor *a, const char *id)
{
	for (size_t i = kobo_hash_id(id) & a->slot_mask;; i = (i + 1) & a->slot_mask) {
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
	size_t i = kobo_hash_id(acc->id) & a->slot_mask;
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

/* ---- Across shards: legs and clearing pairs (auditor.h). ---- */

/* One leg, with what the checks read of it. */
typedef struct pairs_leg {
	uint32_t debit_shard, credit_shard; /* the transfer's d -> c */
	char currency[KOBO_CURRENCY_LEN_MAX + 1];
	char lane[KOBO_CLEARING_LANE_LEN_MAX + 1];
	char id[KOBO_ID_LEN_MAX + 1];
	char clearing[KOBO_ID_LEN_MAX + 1];
	kobo_leg leg;
	kobo_transfer_status status;
	kobo_saga_state saga;
	bool pending;
	int64_t amount;
	int64_t posted_amount;
	int64_t saga_amount;
} pairs_leg;

/* A pair is (low, high, currency, lane); an entry is one clearing account
 * of it (a side), or what one saga in flight leaves on it (a delta). */
typedef struct pairs_entry {
	uint32_t low, high;
	char currency[KOBO_CURRENCY_LEN_MAX + 1];
	char lane[KOBO_CLEARING_LANE_LEN_MAX + 1];
	bool is_side;
	/* Side: shard `owner`'s account id with its balances. */
	uint32_t owner;
	char id[KOBO_ID_LEN_MAX + 1];
	int64_t posted, pending_out, pending_in;
	/* Delta: posted left on the pair, and holds low -> high (high -> low)
	 * on the payer's side not matched on the payee's. */
	__int128 posted_delta, low_high_delta, high_low_delta;
} pairs_entry;

struct store_pairs {
	kobo_store_report_fn report;
	void *ctx;
	size_t problems;
	pairs_leg *legs;
	size_t leg_count, leg_cap;
	pairs_entry *entries;
	size_t entry_count, entry_cap;
};

static void pairs_problem(store_pairs *p, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void pairs_problem(store_pairs *p, const char *fmt, ...)
{
	char line[STORE_AUDITOR_LINE_BYTES];
	va_list args;

	va_start(args, fmt);
	vsnprintf(line, sizeof line, fmt, args);
	va_end(args);
	p->problems++;
	if (p->report != NULL)
		p->report(p->ctx, line);
}

/* Grows *items (of item_size bytes) to hold one more; false when out of
 * memory. */
static bool grow(void **items, size_t *cap, size_t count, size_t item_size)
{
	if (count < *cap)
		return true;
	size_t want = *cap == 0 ? 64 : 2 * *cap;
	void *grown = realloc(*items, want * item_size);
	if (grown == NULL)
		return false;
	*items = grown;
	*cap = want;
	return true;
}

store_pairs *store_pairs_create(kobo_store_report_fn report, void *ctx)
{
	store_pairs *p = calloc(1, sizeof *p);
	if (p == NULL)
		return NULL;
	p->report = report;
	p->ctx = ctx;
	return p;
}

void store_pairs_destroy(store_pairs *p)
{
	if (p == NULL)
		return;
	free(p->legs);
	free(p->entries);
	free(p);
}

static pairs_entry *new_entry(store_pairs *p, uint32_t x, uint32_t y,
                              const char *currency, const char *lane)
{
	if (!grow((void **)&p->entries, &p->entry_cap, p->entry_count, sizeof *p->entries))
		return NULL;
	pairs_entry *e = &p->entries[p->entry_count++];
	memset(e, 0, sizeof *e);
	e->low = x < y ? x : y;
	e->high = x < y ? y : x;
	snprintf(e->currency, sizeof e->currency, "%s", currency);
	snprintf(e->lane, sizeof e->lane, "%s", lane);
	return e;
}

int store_pairs_clearing(store_pairs *p, uint32_t shard, uint32_t other,
                         const char *currency, const char *lane,
                         const kobo_account *account)
{
	pairs_entry *e = new_entry(p, shard, other, currency, lane);
	if (e == NULL)
		return KOBO_ENOMEM;
	e->is_side = true;
	e->owner = shard;
	snprintf(e->id, sizeof e->id, "%s", account->id);
	e->posted = account->posted;
	e->pending_out = account->pending_out;
	e->pending_in = account->pending_in;
	return KOBO_OK;
}

int store_pairs_leg(store_pairs *p, uint32_t shard, uint32_t other,
                    const char *currency, const char *lane,
                    const kobo_transfer *t)
{
	if (t->leg == KOBO_LEG_LOCAL)
		return KOBO_OK;
	if (!grow((void **)&p->legs, &p->leg_cap, p->leg_count, sizeof *p->legs))
		return KOBO_ENOMEM;
	pairs_leg *l = &p->legs[p->leg_count++];
	memset(l, 0, sizeof *l);
	l->debit_shard = t->leg == KOBO_LEG_DEBIT ? shard : other;
	l->credit_shard = t->leg == KOBO_LEG_DEBIT ? other : shard;
	snprintf(l->currency, sizeof l->currency, "%s", currency);
	snprintf(l->lane, sizeof l->lane, "%s", lane);
	snprintf(l->id, sizeof l->id, "%s", t->id);
	snprintf(l->clearing, sizeof l->clearing, "%s", t->clearing);
	l->leg = t->leg;
	l->status = t->status;
	l->saga = t->saga;
	l->pending = t->pending;
	l->amount = t->amount;
	l->posted_amount = t->posted_amount;
	l->saga_amount = t->saga_amount;
	return KOBO_OK;
}

/* Orders legs by transfer (d, c, currency, lane, id), DEBIT leg first. */
static int leg_order(const void *x, const void *y)
{
	const pairs_leg *a = x, *b = y;
	if (a->debit_shard != b->debit_shard)
		return a->debit_shard < b->debit_shard ? -1 : 1;
	if (a->credit_shard != b->credit_shard)
		return a->credit_shard < b->credit_shard ? -1 : 1;
	int c = strcmp(a->currency, b->currency);
	if (c == 0)
		c = strcmp(a->lane, b->lane);
	if (c == 0)
		c = strcmp(a->id, b->id);
	if (c != 0)
		return c;
	return (a->leg > b->leg) - (a->leg < b->leg);
}

static bool same_transfer(const pairs_leg *a, const pairs_leg *b)
{
	return a->debit_shard == b->debit_shard && a->credit_shard == b->credit_shard &&
	       strcmp(a->currency, b->currency) == 0 && strcmp(a->lane, b->lane) == 0 &&
	       strcmp(a->id, b->id) == 0;
}

/* "posted 300", "pending 120", "processing (reserved)", "absent", …:
 * what a leg says, for a report. */
static const char *leg_text(const pairs_leg *l, char *buf, size_t len)
{
	if (l == NULL)
		snprintf(buf, len, "absent");
	else if (l->status == KOBO_STATUS_POSTED)
		snprintf(buf, len, "posted %" PRId64 " of %" PRId64, l->posted_amount, l->amount);
	else if (l->saga != KOBO_SAGA_NONE)
		snprintf(buf, len, "%s (%s) %" PRId64, kobo_transfer_status_name(l->status),
		         kobo_saga_state_name(l->saga), l->amount);
	else
		snprintf(buf, len, "%s %" PRId64, kobo_transfer_status_name(l->status),
		         l->amount);
	return buf;
}

/* The table at the top of this file's second half: may the CREDIT leg c
 * (NULL: absent) stand beside the DEBIT leg d in one cut? */
static bool legs_agree(const pairs_leg *d, const pairs_leg *c)
{
	/* A rejected CREDIT leg moved nothing and never will. */
	bool none = c == NULL || c->status == KOBO_STATUS_REJECTED;
	if (!none && c->amount != d->amount)
		return false;
	bool pending = !none && c->status == KOBO_STATUS_PENDING;
	bool posted = !none && c->status == KOBO_STATUS_POSTED;
	bool voided = !none && c->status == KOBO_STATUS_VOIDED;

	switch (d->saga) {
	case KOBO_SAGA_NONE:
		switch (d->status) {
		case KOBO_STATUS_REJECTED: return none;
		case KOBO_STATUS_PENDING: return pending;
		case KOBO_STATUS_POSTED: return posted && c->posted_amount == d->posted_amount;
		case KOBO_STATUS_VOIDED: return none || voided;
		case KOBO_STATUS_PROCESSING: return false; /* no step: nothing can follow */
		}
		return false;
	case KOBO_SAGA_RESERVED:
		return none || (d->pending ? pending
		                           : posted && c->posted_amount == d->amount);
	case KOBO_SAGA_POSTING:
		return pending || (posted && c->posted_amount == d->saga_amount);
	case KOBO_SAGA_VOIDING:
		return pending || voided;
	}
	return false;
}

/* Compares one transfer's legs (d or c may be NULL, not both) and records
 * what a saga in flight leaves on its pair. */
static int check_transfer(store_pairs *p, const pairs_leg *d, const pairs_leg *c,
                          store_pairs_totals *totals)
{
	char dt[96], ct[96];
	const pairs_leg *any = d != NULL ? d : c;

	totals->transfers++;
	if (d == NULL) {
		if (c->status != KOBO_STATUS_REJECTED)
			pairs_problem(p, "transfer %s: credit leg on shard %u (%s) is %s but "
			              "shard %u has no debit leg for it: money credited that "
			              "was never debited", c->id, c->credit_shard, c->clearing,
			              leg_text(c, ct, sizeof ct), c->debit_shard);
		return KOBO_OK;
	}
	if (!legs_agree(d, c)) {
		pairs_problem(p, "transfer %s from shard %u to shard %u in %s%s: debit leg "
		              "is %s but credit leg is %s", any->id, any->debit_shard,
		              any->credit_shard, any->currency, any->lane,
		              leg_text(d, dt, sizeof dt), leg_text(c, ct, sizeof ct));
	}
	if (d->saga == KOBO_SAGA_NONE)
		return KOBO_OK;
	totals->in_flight++;
	bool c_counts = c != NULL && c->status != KOBO_STATUS_REJECTED;
	__int128 posted = (d->status == KOBO_STATUS_POSTED ? d->posted_amount : 0) -
	                  (c_counts && c->status == KOBO_STATUS_POSTED ? c->posted_amount : 0);
	__int128 held = (d->status == KOBO_STATUS_PENDING ||
	                 d->status == KOBO_STATUS_PROCESSING ? d->amount : 0) -
	                (c_counts && c->status == KOBO_STATUS_PENDING ? c->amount : 0);
	pairs_entry *e = new_entry(p, d->debit_shard, d->credit_shard, d->currency, d->lane);
	if (e == NULL)
		return KOBO_ENOMEM;
	e->posted_delta = posted;
	if (d->debit_shard < d->credit_shard)
		e->low_high_delta = held;
	else
		e->high_low_delta = held;
	return KOBO_OK;
}

/* Orders entries by pair (low, high, currency, lane), sides by owner. */
static int entry_order(const void *x, const void *y)
{
	const pairs_entry *a = x, *b = y;
	if (a->low != b->low)
		return a->low < b->low ? -1 : 1;
	if (a->high != b->high)
		return a->high < b->high ? -1 : 1;
	int c = strcmp(a->currency, b->currency);
	if (c == 0)
		c = strcmp(a->lane, b->lane);
	if (c != 0)
		return c;
	if (a->is_side != b->is_side)
		return a->is_side ? -1 : 1;
	return (a->owner > b->owner) - (a->owner < b->owner);
}

static bool same_pair(const pairs_entry *a, const pairs_entry *b)
{
	return a->low == b->low && a->high == b->high &&
	       strcmp(a->currency, b->currency) == 0 && strcmp(a->lane, b->lane) == 0;
}

/* The side of shard `owner` among entries[0..n), or an absent one. */
static pairs_entry pair_side(const pairs_entry *group, size_t n, uint32_t owner,
                             uint32_t other, bool *absent)
{
	for (size_t i = 0; i < n; i++) {
		if (group[i].is_side && group[i].owner == owner) {
			*absent = false;
			return group[i];
		}
	}
	pairs_entry e = group[0];
	e.is_side = true;
	e.owner = owner;
	e.posted = e.pending_out = e.pending_in = 0;
	/* Named for the report only; ids are the shard layer's business. */
	snprintf(e.id, sizeof e.id, "shard %u's clearing account for %u", owner, other);
	*absent = true;
	return e;
}

/* The sentence's tail for a sum that sagas in flight explain in part. */
static const char *flight_note(__int128 expected, char *buf, size_t len)
{
	char num[48];
	if (expected == 0)
		buf[0] = '\0';
	else
		snprintf(buf, len, ", while the sagas in flight account for %s",
		         int128_text(expected, num));
	return buf;
}

static void check_pair(store_pairs *p, const pairs_entry *group, size_t n)
{
	bool low_absent, high_absent;
	pairs_entry low = pair_side(group, n, group[0].low, group[0].high, &low_absent);
	pairs_entry high = pair_side(group, n, group[0].high, group[0].low, &high_absent);
	const char *low_note = low_absent ? " (absent)" : "";
	const char *high_note = high_absent ? " (absent)" : "";
	__int128 posted = 0, low_high = 0, high_low = 0;
	char a[48], b[48], c[48], note[96];

	for (size_t i = 0; i < n; i++) {
		if (group[i].is_side)
			continue;
		posted += group[i].posted_delta;
		low_high += group[i].low_high_delta;
		high_low += group[i].high_low_delta;
	}
	__int128 sum = (__int128)low.posted + high.posted;
	if (sum != posted) {
		pairs_problem(p, "%s on shard %u posted %s%s and %s on shard %u posted %s%s "
		              "do not net to 0 (they sum to %s%s)", low.id, low.owner,
		              int128_text(low.posted, a), low_note, high.id, high.owner,
		              int128_text(high.posted, b), high_note, int128_text(sum, c),
		              flight_note(posted, note, sizeof note));
	}
	if ((__int128)low.pending_in - high.pending_out != low_high) {
		pairs_problem(p, "holds from shard %u to shard %u in %s%s disagree: %s "
		              "pending_in %s%s, %s pending_out %s%s%s", low.owner,
		              high.owner, low.currency, low.lane, low.id,
		              int128_text(low.pending_in, a), low_note, high.id,
		              int128_text(high.pending_out, b), high_note,
		              flight_note(low_high, note, sizeof note));
	}
	if ((__int128)high.pending_in - low.pending_out != high_low) {
		pairs_problem(p, "holds from shard %u to shard %u in %s%s disagree: %s "
		              "pending_in %s%s, %s pending_out %s%s%s", high.owner,
		              low.owner, high.currency, high.lane, high.id,
		              int128_text(high.pending_in, a), high_note, low.id,
		              int128_text(low.pending_out, b), low_note,
		              flight_note(high_low, note, sizeof note));
	}
}

void store_pairs_finish(store_pairs *p, store_pairs_totals *totals)
{
	memset(totals, 0, sizeof *totals);
	if (p->leg_count > 0)
		qsort(p->legs, p->leg_count, sizeof *p->legs, leg_order);
	for (size_t i = 0; i < p->leg_count;) {
		size_t n = 1;
		while (i + n < p->leg_count && same_transfer(&p->legs[i], &p->legs[i + n]))
			n++;
		const pairs_leg *d = p->legs[i].leg == KOBO_LEG_DEBIT ? &p->legs[i] : NULL;
		const pairs_leg *c = p->legs[i + n - 1].leg == KOBO_LEG_CREDIT
		                     ? &p->legs[i + n - 1] : NULL;
		if (n > 2 || (n == 2 && (d == NULL || c == NULL))) {
			/* Ids are unique per shard: each shard holds one leg. */
			pairs_problem(p, "transfer %s from shard %u to shard %u in %s%s has %zu "
			              "legs where 2 at most belong", p->legs[i].id,
			              p->legs[i].debit_shard, p->legs[i].credit_shard,
			              p->legs[i].currency, p->legs[i].lane, n);
		} else if (check_transfer(p, d, c, totals) != KOBO_OK) {
			pairs_problem(p, "out of memory comparing the legs of transfer %s; "
			              "the pair sums below are not to be trusted", p->legs[i].id);
		}
		i += n;
	}
	if (p->entry_count > 0)
		qsort(p->entries, p->entry_count, sizeof *p->entries, entry_order);
	for (size_t i = 0; i < p->entry_count;) {
		size_t n = 1;
		while (i + n < p->entry_count && same_pair(&p->entries[i], &p->entries[i + n]))
			n++;
		check_pair(p, &p->entries[i], n);
		totals->pairs++;
		i += n;
	}
	totals->problems = p->problems;
}
