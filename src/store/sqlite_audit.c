/*
 * sqlite_audit.c — proves that a shard file's balances are what its
 * transfers say (DESIGN.md invariant 6, `kobo audit`).
 *
 * The audit opens a read-only connection of its own and reads every account
 * and every transfer inside one read transaction: in WAL mode that is a
 * consistent snapshot, however much the server writes meanwhile. It sums in
 * C with __int128, never with SQL SUM(), which fails (or, for REAL, rounds)
 * once a total passes 2^63 — and a total that large is exactly what an audit
 * must be able to report rather than crash on.
 *
 * Checks, each discrepancy reported as one sentence:
 *   1. per currency, the posted balances sum to 0 and the pending_out sums
 *      equal the pending_in sums (double entry);
 *   2. per account, posted equals the posted_amount of its POSTED transfers
 *      in minus out; pending_out (pending_in) equals the amount of its
 *      PENDING transfers out (in);
 *   3. no account with allow_negative = 0 has available < 0;
 *   4. no non-rejected transfer names an account the shard does not have,
 *      or one of another currency;
 *   5. 0 <= posted_amount <= amount, and posted_amount is 0 unless POSTED.
 * PROCESSING transfers (a cross-shard step under way) move nothing on this
 * shard by themselves: their reservation is a separate PENDING transfer.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite_internal.h"

/* Sentences longer than this are cut; ids are at most 64 characters. */
#define AUDIT_LINE_BYTES 512

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

typedef struct audit {
	kobo_store_report_fn report;
	void *ctx;
	kobo_audit_totals *totals;
	audit_account *accounts;
	size_t account_count;
	size_t *slots; /* open addressing: index + 1, 0 empty */
	size_t slot_mask;
	audit_currency *currencies;
	size_t currency_count;
	size_t currency_cap;
} audit;

static void problem(audit *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void problem(audit *a, const char *fmt, ...)
{
	char line[AUDIT_LINE_BYTES];
	va_list args;

	va_start(args, fmt);
	vsnprintf(line, sizeof line, fmt, args);
	va_end(args);
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

static audit_account *find_account(const audit *a, const char *id)
{
	for (size_t i = hash_id(id) & a->slot_mask;; i = (i + 1) & a->slot_mask) {
		size_t slot = a->slots[i];
		if (slot == 0)
			return NULL;
		if (strcmp(a->accounts[slot - 1].id, id) == 0)
			return &a->accounts[slot - 1];
	}
}

static audit_currency *find_currency(audit *a, const char *code)
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

static int load_accounts(audit *a, sqlite3 *db, const char *path)
{
	sqlite3_stmt *stmt = NULL;
	int64_t count = 0;
	int rc;

	/* The count and the rows come from the same snapshot. */
	rc = sqlite3_prepare_v2(db, "SELECT count(*) FROM accounts", -1, &stmt, NULL);
	if (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW)
		count = sqlite3_column_int64(stmt, 0);
	sqlite3_finalize(stmt);
	if (rc != SQLITE_ROW)
		goto sql_fail;

	size_t slot_count = 16;
	while (slot_count < 2 * (size_t)count)
		slot_count *= 2;
	a->accounts = calloc((size_t)count + 1, sizeof *a->accounts);
	a->slots = calloc(slot_count, sizeof *a->slots);
	if (a->accounts == NULL || a->slots == NULL)
		return KOBO_ENOMEM;
	a->slot_mask = slot_count - 1;

	rc = sqlite3_prepare_v2(db,
		"SELECT id, currency, allow_negative, posted, pending_out, pending_in "
		"FROM accounts", -1, &stmt, NULL);
	if (rc != SQLITE_OK)
		goto sql_fail;
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		if (a->account_count == (size_t)count)
			break; /* cannot happen inside one snapshot */
		audit_account *acc = &a->accounts[a->account_count];
		if (store_sqlite_copy_text(stmt, 0, acc->id, sizeof acc->id) != KOBO_OK ||
		    store_sqlite_copy_text(stmt, 1, acc->currency, sizeof acc->currency) != KOBO_OK) {
			problem(a, "an account row has an id or currency that is NULL or too long");
			continue;
		}
		acc->allow_negative = sqlite3_column_int(stmt, 2) != 0;
		acc->posted = sqlite3_column_int64(stmt, 3);
		acc->pending_out = sqlite3_column_int64(stmt, 4);
		acc->pending_in = sqlite3_column_int64(stmt, 5);
		size_t i = hash_id(acc->id) & a->slot_mask;
		while (a->slots[i] != 0)
			i = (i + 1) & a->slot_mask;
		a->slots[i] = ++a->account_count;

		audit_currency *c = find_currency(a, acc->currency);
		if (c == NULL) {
			sqlite3_finalize(stmt);
			return KOBO_ENOMEM;
		}
		c->posted += acc->posted;
		c->pending_out += acc->pending_out;
		c->pending_in += acc->pending_in;
	}
	sqlite3_finalize(stmt);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		goto sql_fail;
	a->totals->accounts = a->account_count;
	return KOBO_OK;
sql_fail:
	store_sqlite_log_error(db, "store_audit_failed", path);
	return KOBO_ESTORE;
}

/* The transfer's side on one account: checks it exists and shares the
 * transfer's currency. NULL when it does not (reported). */
static audit_account *transfer_side(audit *a, const char *transfer_id,
                                    const char *role, const char *account_id,
                                    const char *currency)
{
	audit_account *acc = find_account(a, account_id);
	if (acc == NULL) {
		problem(a, "transfer %s names %s account %s, which does not exist",
		        transfer_id, role, account_id);
		return NULL;
	}
	if (strcmp(acc->currency, currency) != 0) {
		problem(a, "transfer %s is in %s but its %s account %s is in %s",
		        transfer_id, currency, role, account_id, acc->currency);
	}
	return acc;
}

static int check_transfers(audit *a, sqlite3 *db, const char *path)
{
	sqlite3_stmt *stmt = NULL;
	int rc = sqlite3_prepare_v2(db,
		"SELECT id, from_id, to_id, currency, amount, posted_amount, status "
		"FROM transfers ORDER BY seq", -1, &stmt, NULL);
	if (rc != SQLITE_OK)
		goto sql_fail;
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		char id[KOBO_ID_LEN_MAX + 1];
		char from[KOBO_ID_LEN_MAX + 1];
		char to[KOBO_ID_LEN_MAX + 1];
		char currency[KOBO_CURRENCY_LEN_MAX + 1];
		kobo_transfer_status status;

		a->totals->transfers++;
		if (store_sqlite_copy_text(stmt, 0, id, sizeof id) != KOBO_OK ||
		    store_sqlite_copy_text(stmt, 1, from, sizeof from) != KOBO_OK ||
		    store_sqlite_copy_text(stmt, 2, to, sizeof to) != KOBO_OK ||
		    store_sqlite_copy_text(stmt, 3, currency, sizeof currency) != KOBO_OK) {
			problem(a, "a transfer row has an id, from, to or currency that "
			        "is NULL or too long");
			continue;
		}
		int64_t amount = sqlite3_column_int64(stmt, 4);
		int64_t posted_amount = sqlite3_column_int64(stmt, 5);
		if (store_sqlite_status_parse((const char *)sqlite3_column_text(stmt, 6),
		                              &status) != KOBO_OK) {
			problem(a, "transfer %s has an unknown status", id);
			continue;
		}
		if (amount < 1)
			problem(a, "transfer %s has amount %" PRId64 ", below 1", id, amount);
		if (posted_amount < 0 || posted_amount > amount)
			problem(a, "transfer %s has posted_amount %" PRId64
			        " outside 0..amount (%" PRId64 ")", id, posted_amount, amount);
		if (status != KOBO_STATUS_POSTED && posted_amount != 0)
			problem(a, "transfer %s is %s but has posted_amount %" PRId64
			        " (only posted transfers move money)", id,
			        store_sqlite_status_text(status), posted_amount);
		if (status == KOBO_STATUS_REJECTED)
			continue; /* moved nothing; may name accounts that never existed */

		audit_account *debit = transfer_side(a, id, "from", from, currency);
		audit_account *credit = transfer_side(a, id, "to", to, currency);
		if (status == KOBO_STATUS_POSTED) {
			if (debit != NULL)
				debit->expected_posted -= posted_amount;
			if (credit != NULL)
				credit->expected_posted += posted_amount;
		} else if (status == KOBO_STATUS_PENDING) {
			if (debit != NULL)
				debit->expected_pending_out += amount;
			if (credit != NULL)
				credit->expected_pending_in += amount;
		}
	}
	sqlite3_finalize(stmt);
	if (rc != SQLITE_DONE)
		goto sql_fail;
	return KOBO_OK;
sql_fail:
	store_sqlite_log_error(db, "store_audit_failed", path);
	return KOBO_ESTORE;
}

static void check_balances(audit *a)
{
	char want[48];
	char have[48];

	for (size_t i = 0; i < a->account_count; i++) {
		const audit_account *acc = &a->accounts[i];
		if (acc->posted != acc->expected_posted)
			problem(a, "account %s has posted %s but its transfers say %s",
			        acc->id, int128_text(acc->posted, have),
			        int128_text(acc->expected_posted, want));
		if (acc->pending_out != acc->expected_pending_out)
			problem(a, "account %s has pending_out %s but its pending "
			        "transfers out sum to %s", acc->id,
			        int128_text(acc->pending_out, have),
			        int128_text(acc->expected_pending_out, want));
		if (acc->pending_in != acc->expected_pending_in)
			problem(a, "account %s has pending_in %s but its pending "
			        "transfers in sum to %s", acc->id,
			        int128_text(acc->pending_in, have),
			        int128_text(acc->expected_pending_in, want));
		__int128 available = (__int128)acc->posted - acc->pending_out;
		if (!acc->allow_negative && available < 0)
			problem(a, "account %s may not go negative but has available %s",
			        acc->id, int128_text(available, have));
	}
	for (size_t i = 0; i < a->currency_count; i++) {
		const audit_currency *c = &a->currencies[i];
		if (c->posted != 0)
			problem(a, "%s posted balances sum to %s, not 0", c->code,
			        int128_text(c->posted, have));
		if (c->pending_out != c->pending_in)
			problem(a, "%s pending_out balances sum to %s but pending_in "
			        "balances sum to %s", c->code,
			        int128_text(c->pending_out, have),
			        int128_text(c->pending_in, want));
	}
}

int store_sqlite_audit(const char *path, kobo_store_report_fn report, void *ctx,
                       kobo_audit_totals *totals)
{
	audit a = {.report = report, .ctx = ctx, .totals = totals};
	sqlite3 *db = NULL;
	int result;

	memset(totals, 0, sizeof *totals);
	result = store_sqlite_connect(path, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
	                              STORE_SQLITE_BUSY_TIMEOUT_MS, &db);
	if (result != KOBO_OK)
		return result;
	/* BEGIN is deferred: the first SELECT fixes the snapshot, and every
	 * later one in the transaction reads the same one. */
	if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
		store_sqlite_log_error(db, "store_audit_failed", path);
		result = KOBO_ESTORE;
		goto done;
	}
	result = load_accounts(&a, db, path);
	if (result == KOBO_OK)
		result = check_transfers(&a, db, path);
	(void)sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
	if (result == KOBO_OK)
		check_balances(&a);
done:
	sqlite3_close(db);
	free(a.accounts);
	free(a.slots);
	free(a.currencies);
	return result;
}
