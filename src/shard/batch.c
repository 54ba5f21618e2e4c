/*
 * batch.c — one batch through the ledger and the store, start to commit.
 *
 * The shard writer runs every batch through kobo_batch_run(), and so does
 * the saga simulation (tests/unit/test_saga_sim.c) over its in-memory stores:
 * the order of steps below is the one the simulation crashes between.
 *
 * This is the one place where the store and the ledger meet: the store hands
 * loaded rows to the callbacks below as plain records, which put them into
 * the ledger, and takes the ledger's change lists as plain arrays. Neither
 * knows the other (store.h, ledger.h).
 */
#include <stdio.h>

#include "../obs/obs.h"
#include "shard.h"

/* Load callbacks: a row the ledger refuses (KOBO_EFULL: more rows than it
 * was sized for; KOBO_EINVAL: an id loaded twice) stops the load with that
 * status, a programmer error the writer answers 500. */
static int put_transfer(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	(void)seq;
	return kobo_ledger_put_transfer(ctx, transfer);
}

static int put_account(void *ctx, const kobo_account *account)
{
	return kobo_ledger_put_account(ctx, account);
}

int kobo_batch_run(kobo_store *store, kobo_ledger *ledger, const kobo_op *ops,
                   size_t count, int64_t now_ms, kobo_result *results,
                   const char **ids, int64_t *commit_us, uint64_t *token,
                   const kobo_batch_events *events)
{
	size_t id_count = 0;
	int rc;

	*commit_us = 0;
	kobo_ledger_reset(ledger);
	rc = kobo_store_begin(store);
	if (rc != KOBO_OK)
		return rc;

	kobo_ledger_transfer_ids(ops, count, ids, &id_count);
	rc = kobo_store_load_transfers(store, ids, id_count, put_transfer, ledger);
	if (rc != KOBO_OK)
		goto fail;
	kobo_ledger_account_ids(ledger, ops, count, ids, &id_count);
	rc = kobo_store_load_accounts(store, ids, id_count, put_account, ledger);
	if (rc != KOBO_OK)
		goto fail;

	/* The batch's time: the store's clock where several nodes share the
	 * store (PostgreSQL: the database's), else now_ms (store.h, now). */
	rc = kobo_store_now(store, now_ms, &now_ms);
	if (rc != KOBO_OK)
		goto fail;

	/* Pure: the only place business rules run. Aborts on a broken
	 * invariant; KOBO_EFULL or KOBO_EINVAL would be a caller bug. */
	rc = kobo_ledger_apply(ledger, ops, count, now_ms, results);
	if (rc != KOBO_OK)
		goto fail;

	const kobo_account_change *accounts;
	const kobo_transfer_change *transfers;
	size_t account_count = kobo_ledger_changed_accounts(ledger, &accounts);
	size_t transfer_count = kobo_ledger_changed_transfers(ledger, &transfers);
	rc = kobo_store_write(store, accounts, account_count, transfers,
	                      transfer_count);
	if (rc != KOBO_OK)
		goto fail;
	if (events != NULL) {
		size_t n = kobo_events_derive(ops, results, count, events->buf);
		for (size_t i = 0; i < n; i++) {
			kobo_event *e = &events->buf[i];
			e->at_ms = now_ms;
			e->shard = events->shard;
			snprintf(e->node, sizeof e->node, "%s", events->node ? events->node : "");
		}
		rc = kobo_store_write_events(store, events->buf, n);
		if (rc != KOBO_OK)
			goto fail;
	}
	int64_t started_us = kobo_monotonic_us();
	rc = kobo_store_commit(store, token);
	*commit_us = kobo_monotonic_us() - started_us;
	if (rc != KOBO_OK)
		goto fail;
	return KOBO_OK;

fail:
	kobo_store_rollback(store);
	return rc;
}
