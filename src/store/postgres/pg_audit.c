/*
 * pg_audit.c — feeds a PostgreSQL shard to the audit's rules (auditor.h,
 * auditor.c; DESIGN.md invariant 6, `kobo audit`).
 *
 * store_pg_audit opens a connection of its own (the writer may be
 * mid-batch) and reads every account and every transfer inside one
 * REPEATABLE READ READ ONLY transaction: one snapshot, however much the
 * server writes meanwhile. It decodes only the columns the checks read; a
 * row that does not decode is reported as a problem, not a reason to stop.
 * The rules themselves, and the list of checks, are in auditor.c.
 */
#include <string.h>

#include "../auditor.h"
#include "pg_internal.h"

/* Feeds one REPEATABLE READ snapshot of the shard to the audit's rules, on
 * a connection of its own (the writer may be mid-batch). */
int store_pg_audit(const char *url, const char *schema,
                   kobo_store_report_fn report, void *ctx,
                   kobo_audit_totals *totals)
{
	store_auditor *a = NULL;
	PGconn *conn = NULL;
	PGresult *res = NULL;
	int result = KOBO_ESTORE;

	memset(totals, 0, sizeof *totals);
	int rc = store_pg_connect(url, schema, &conn);
	if (rc != KOBO_OK)
		return rc == KOBO_ENOMEM ? rc : KOBO_ESTORE;
	if (store_pg_exec(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
	                  "store_pg_audit_failed") != KOBO_OK)
		goto done;
	res = PQexec(conn, "SELECT id, currency, allow_negative, posted, pending_out,"
	                   " pending_in FROM accounts");
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		store_pg_log_error("store_pg_audit_failed", conn, res);
		goto done;
	}
	a = store_auditor_create((size_t)PQntuples(res), report, ctx, totals);
	if (a == NULL) {
		result = KOBO_ENOMEM;
		goto done;
	}
	for (int row = 0; row < PQntuples(res); row++) {
		kobo_account acc;
		memset(&acc, 0, sizeof acc);
		if (store_pg_col_copy(res, row, 0, acc.id, sizeof acc.id) != KOBO_OK ||
		    store_pg_col_copy(res, row, 1, acc.currency, sizeof acc.currency) != KOBO_OK) {
			store_auditor_problem(a, "an account row has an id or currency "
			                         "that is NULL or too long");
			continue;
		}
		acc.allow_negative = PQgetvalue(res, row, 2)[0] == 't';
		acc.posted = store_pg_col_int(res, row, 3);
		acc.pending_out = store_pg_col_int(res, row, 4);
		acc.pending_in = store_pg_col_int(res, row, 5);
		rc = store_auditor_account(a, &acc);
		if (rc != KOBO_OK && rc != KOBO_EFULL) {
			result = rc;
			goto done;
		}
	}
	PQclear(res);
	res = PQexec(conn, "SELECT id, from_id, to_id, currency, amount, posted_amount,"
	                   " status, leg, clearing, saga FROM transfers ORDER BY seq");
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		store_pg_log_error("store_pg_audit_failed", conn, res);
		goto done;
	}
	for (int row = 0; row < PQntuples(res); row++) {
		kobo_transfer t;
		memset(&t, 0, sizeof t);
		if (store_pg_col_copy(res, row, 0, t.id, sizeof t.id) != KOBO_OK ||
		    store_pg_col_copy(res, row, 1, t.from, sizeof t.from) != KOBO_OK ||
		    store_pg_col_copy(res, row, 2, t.to, sizeof t.to) != KOBO_OK ||
		    store_pg_col_copy(res, row, 3, t.currency, sizeof t.currency) != KOBO_OK ||
		    store_pg_col_copy(res, row, 8, t.clearing, sizeof t.clearing) != KOBO_OK) {
			store_auditor_transfer_problem(a, "a transfer row has an id, from, "
			                               "to, currency or clearing that is "
			                               "NULL or too long");
			continue;
		}
		t.amount = store_pg_col_int(res, row, 4);
		t.posted_amount = store_pg_col_int(res, row, 5);
		if (!kobo_transfer_status_parse(store_pg_col_word(res, row, 6), &t.status) ||
		    !kobo_leg_parse(store_pg_col_word(res, row, 7), &t.leg) ||
		    !kobo_saga_state_parse(store_pg_col_word(res, row, 9), &t.saga)) {
			store_auditor_transfer_problem(a, "transfer %s has an unknown "
			                               "status, leg or saga state", t.id);
			continue;
		}
		store_auditor_transfer(a, &t);
	}
	store_auditor_finish(a);
	result = KOBO_OK;
done:
	PQclear(res);
	PQfinish(conn);
	store_auditor_destroy(a);
	return result;
}

