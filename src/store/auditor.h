/*
 * auditor.h — the audit's rules, shared by every store backend.
 *
 * A backend feeds one consistent snapshot to an auditor: every account,
 * then every transfer (in seq order), then finishes; the auditor reports
 * each discrepancy through report, counts into *totals and checks the rules
 * of kobo_store_ops.audit (the list of checks opens auditor.c). Keeping the
 * rules here, once, means the SQLite store (sqlite_audit.c) and the
 * in-memory store (store_mem.c) can never disagree about what a sound shard
 * is. Nothing here knows how a backend stores its rows.
 * Nothing outside src/store includes this header: the contract is store.h.
 */
#ifndef KOBO_STORE_AUDITOR_H
#define KOBO_STORE_AUDITOR_H

#include <stddef.h>

#include "store.h"

/* A reported sentence is cut at this many bytes, terminator included; ids
 * are at most 64 characters, so no sentence comes near it. A backend that
 * keeps the sentences (store_mem.c) sizes its buffers by it. */
#define STORE_AUDITOR_LINE_BYTES 512

typedef struct store_auditor store_auditor;

/* Allocates an auditor for at most accounts_max accounts; zeroes *totals,
 * which must outlive the auditor. report (may be NULL) is called with ctx
 * and one sentence per discrepancy; the sentence lives only for the call.
 * NULL when out of memory. */
store_auditor *store_auditor_create(size_t accounts_max, kobo_store_report_fn report,
                                    void *ctx, kobo_audit_totals *totals);
/* Adds one account (id, currency, allow_negative, balances; metadata is
 * not read). KOBO_EFULL past accounts_max, KOBO_ENOMEM. */
int store_auditor_account(store_auditor *audit, const kobo_account *account);
/* Checks one transfer against the accounts added so far (all of them must
 * have been added first) and adds what it moves or holds. */
void store_auditor_transfer(store_auditor *audit, const kobo_transfer *transfer);
/* Reports a row the backend could not decode, as one sentence. */
void store_auditor_problem(store_auditor *audit, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* The same for a transfer row, which still counts as a transfer in
 * totals->transfers (the count is of rows, decoded or not). */
void store_auditor_transfer_problem(store_auditor *audit, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Compares every account with what its transfers say, and the per-currency
 * sums; call once, after the last transfer. */
void store_auditor_finish(store_auditor *audit);
/* Frees the auditor; NULL is fine. */
void store_auditor_destroy(store_auditor *audit);

#endif /* KOBO_STORE_AUDITOR_H */
