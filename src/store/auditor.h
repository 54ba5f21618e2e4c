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
 * Nothing outside src/store includes this header (the contract is store.h),
 * except `kobo audit` (src/cli/audit.c) for the cross-shard part below: it
 * compares several shards, which no one store can, so its rules live here
 * beside the per-shard ones and are unit-tested the same way
 * (tests/unit/test_store_audit_pairs.c).
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

/* ---- Across shards: legs and clearing pairs (auditor.c, second half). ----
 *
 * A cross-shard transfer d -> c is a DEBIT leg on shard d (payer -> d's
 * clearing account for c) and a CREDIT leg on shard c (c's clearing account
 * for d -> payee), same transfer id; the lane (ledger.h, "Clearing lanes")
 * is the clearing ids' suffix, "" for the base accounts. The caller feeds
 * every clearing account and every leg naming one, shard by shard (parsing
 * the clearing ids is the shard layer's business: it passes the parts),
 * then calls finish, which checks:
 *   1. per transfer, the two legs agree (rules in auditor.c): a settled
 *      DEBIT leg (saga NONE) and its CREDIT leg say the same thing; while a
 *      saga is under way the CREDIT leg may be one step ahead, never more;
 *      a CREDIT leg without its DEBIT leg is money from nowhere;
 *   2. per pair (d, c, currency, lane) and (c, d, currency, lane):
 *        posted(d:c) + posted(c:d) == sum over sagas in flight of
 *            (DEBIT leg posted_amount - CREDIT leg posted_amount)
 *        pending_in(d:c) - pending_out(c:d) == sum over sagas in flight
 *            d -> c of (DEBIT leg held - CREDIT leg held)
 *      (and the same with d and c swapped), summed in __int128: with no
 *      saga in flight, the pair nets to zero.
 * The rules assume one consistent cut across the shards (nothing wrote
 * between the reads); a cut that is not one may show a discrepancy a
 * progressing saga explains, which only a re-read can tell from a loss.
 * Rejected legs moved nothing: feeding them or not changes no answer.
 *
 * Memory is not bounded by a constant: the checker keeps every leg fed
 * (about 224 bytes each, so about 450 bytes per cross-shard transfer, both
 * legs) and one entry per clearing account and per saga in flight, until
 * finish sorts them; an array grows by doubling (realloc), so allow up to
 * three times that while one grows. The bound is the shards' cross-shard
 * history: about 4.5 GB for 10 million cross-shard transfers. Past what
 * the machine has, store_pairs_clearing / store_pairs_leg answer
 * KOBO_ENOMEM and `kobo audit` reports the pairs as not checked, never as
 * sound. */
typedef struct store_pairs store_pairs;

typedef struct store_pairs_totals {
	size_t pairs;      /* pairs of clearing accounts checked */
	size_t transfers;  /* cross-shard transfers whose legs were compared */
	size_t in_flight;  /* of them, DEBIT legs with a saga step under way */
	size_t problems;   /* discrepancies reported */
} store_pairs_totals;

/* Allocates an empty checker; report (may be NULL) receives one sentence
 * per discrepancy, valid during the call. NULL when out of memory. */
store_pairs *store_pairs_create(kobo_store_report_fn report, void *ctx);
/* Frees it; NULL is fine. */
void store_pairs_destroy(store_pairs *pairs);
/* Adds shard `shard`'s clearing account for shard `other` in currency and
 * lane (account->id is its id; its balances are read). KOBO_ENOMEM. */
int store_pairs_clearing(store_pairs *pairs, uint32_t shard, uint32_t other,
                         const char *currency, const char *lane,
                         const kobo_account *account);
/* Adds a DEBIT or CREDIT leg stored on shard `shard` whose clearing account
 * (transfer->clearing) is shard's account for `other` in currency and lane.
 * LOCAL transfers are ignored. KOBO_ENOMEM. */
int store_pairs_leg(store_pairs *pairs, uint32_t shard, uint32_t other,
                    const char *currency, const char *lane,
                    const kobo_transfer *transfer);
/* Runs the checks over everything added, reports, fills *totals. Call
 * once. */
void store_pairs_finish(store_pairs *pairs, store_pairs_totals *totals);

#endif /* KOBO_STORE_AUDITOR_H */
