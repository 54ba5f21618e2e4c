/*
 * sqlite_audit.c — feeds a SQLite shard file to the audit's rules
 * (auditor.h, auditor.c; DESIGN.md invariant 6, `kobo audit`).
 *
 * store_sqlite_audit opens a read-only connection of its own and reads
 * every account and every transfer inside one read transaction: in WAL
 * mode that is a consistent snapshot, however much the server writes
 * meanwhile. It decodes only the columns the checks read; a row that does
 * not decode is reported as a problem, not a reason to stop. The rules
 * themselves, and the list of checks, are in auditor.c.
 */
#include <string.h>

#include "../auditor.h"
#include "sqlite_internal.h"

static int sql_failed(sqlite3 *db, const char *path)
{
	store_sqlite_log_error(db, "store_audit_failed", path);
	return KOBO_ESTORE;
}

static int load_accounts(store_auditor **out, sqlite3 *db, const char *path,
                         kobo_store_report_fn report, void *ctx,
                         kobo_audit_totals *totals)
{
	sqlite3_stmt *stmt = NULL;
	int64_t count = 0;
	int rc;

	/* The count and the rows come from the same snapshot. */
	rc = sqlite3_prepare_v2(db, "SELECT count(*) FROM accounts", -1, &stmt, NULL);
	if (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW)
		count = sqlite3_column_int64(stmt, 0);
	sqlite3_finalize(stmt);
	if (rc != SQLITE_ROW || count < 0)
		return sql_failed(db, path);
	store_auditor *a = store_auditor_create((size_t)count, report, ctx, totals);
	if (a == NULL)
		return KOBO_ENOMEM;
	*out = a;

	rc = sqlite3_prepare_v2(db,
		"SELECT id, currency, allow_negative, posted, pending_out, pending_in "
		"FROM accounts", -1, &stmt, NULL);
	if (rc != SQLITE_OK)
		return sql_failed(db, path);
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		kobo_account acc;
		memset(&acc, 0, sizeof acc);
		if (store_sqlite_copy_text(stmt, 0, acc.id, sizeof acc.id) != KOBO_OK ||
		    store_sqlite_copy_text(stmt, 1, acc.currency, sizeof acc.currency) != KOBO_OK) {
			store_auditor_problem(a, "an account row has an id or currency "
			                    "that is NULL or too long");
			continue;
		}
		acc.allow_negative = sqlite3_column_int(stmt, 2) != 0;
		acc.posted = sqlite3_column_int64(stmt, 3);
		acc.pending_out = sqlite3_column_int64(stmt, 4);
		acc.pending_in = sqlite3_column_int64(stmt, 5);
		int result = store_auditor_account(a, &acc);
		if (result == KOBO_EFULL)
			break; /* cannot happen inside one snapshot */
		if (result != KOBO_OK) {
			sqlite3_finalize(stmt);
			return result;
		}
	}
	sqlite3_finalize(stmt);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		return sql_failed(db, path);
	return KOBO_OK;
}

/* Decodes only what the checks read; a row that does not decode is a
 * problem to report, not a reason to stop. */
static int check_transfers(store_auditor *a, sqlite3 *db, const char *path)
{
	sqlite3_stmt *stmt = NULL;
	int rc = sqlite3_prepare_v2(db,
		"SELECT id, from_id, to_id, currency, amount, posted_amount, status, "
		"leg, clearing, saga FROM transfers ORDER BY seq", -1, &stmt, NULL);
	if (rc != SQLITE_OK)
		return sql_failed(db, path);
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		kobo_transfer t;

		memset(&t, 0, sizeof t);
		if (store_sqlite_copy_text(stmt, 0, t.id, sizeof t.id) != KOBO_OK ||
		    store_sqlite_copy_text(stmt, 1, t.from, sizeof t.from) != KOBO_OK ||
		    store_sqlite_copy_text(stmt, 2, t.to, sizeof t.to) != KOBO_OK ||
		    store_sqlite_copy_text(stmt, 3, t.currency, sizeof t.currency) != KOBO_OK ||
		    store_sqlite_copy_text(stmt, 8, t.clearing, sizeof t.clearing) != KOBO_OK) {
			store_auditor_transfer_problem(a, "a transfer row has an id, from, "
			                               "to, currency or clearing that is "
			                               "NULL or too long");
			continue;
		}
		t.amount = sqlite3_column_int64(stmt, 4);
		t.posted_amount = sqlite3_column_int64(stmt, 5);
		if (!kobo_transfer_status_parse((const char *)sqlite3_column_text(stmt, 6),
		                              &t.status) ||
		    !kobo_leg_parse((const char *)sqlite3_column_text(stmt, 7),
		                           &t.leg) ||
		    !kobo_saga_state_parse((const char *)sqlite3_column_text(stmt, 9),
		                            &t.saga)) {
			store_auditor_transfer_problem(a, "transfer %s has an unknown "
			                               "status, leg or saga state", t.id);
			continue;
		}
		store_auditor_transfer(a, &t);
	}
	sqlite3_finalize(stmt);
	if (rc != SQLITE_DONE)
		return sql_failed(db, path);
	return KOBO_OK;
}

int store_sqlite_audit(const char *path, kobo_store_report_fn report, void *ctx,
                       kobo_audit_totals *totals)
{
	store_auditor *a = NULL;
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
		result = sql_failed(db, path);
		goto done;
	}
	result = load_accounts(&a, db, path, report, ctx, totals);
	if (result == KOBO_OK)
		result = check_transfers(a, db, path);
	(void)sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
	if (result == KOBO_OK)
		store_auditor_finish(a);
done:
	sqlite3_close(db);
	store_auditor_destroy(a);
	return result;
}
