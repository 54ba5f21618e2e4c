/*
 * batch.c — one batch through the ledger and the store, start to commit.
 *
 * The shard writer runs every batch through kobo_batch_run(), and so does
 * the saga simulation (tests/unit/test_saga_sim.c) over its in-memory stores:
 * the order of steps below is the one the simulation crashes between.
 */
#include "../obs/obs.h"
#include "shard.h"

int kobo_batch_run(kobo_store *store, kobo_ledger *ledger, const kobo_op *ops,
                   size_t count, int64_t now_ms, kobo_result *results,
                   const char **ids, int64_t *commit_us)
{
	size_t id_count = 0;
	int rc;

	*commit_us = 0;
	kobo_ledger_reset(ledger);
	rc = kobo_store_begin(store);
	if (rc != KOBO_OK)
		return rc;

	kobo_ledger_transfer_ids(ops, count, ids, &id_count);
	rc = kobo_store_load_transfers(store, ids, id_count, ledger);
	if (rc != KOBO_OK)
		goto fail;
	kobo_ledger_account_ids(ledger, ops, count, ids, &id_count);
	rc = kobo_store_load_accounts(store, ids, id_count, ledger);
	if (rc != KOBO_OK)
		goto fail;

	/* Pure: the only place business rules run. Aborts on a broken
	 * invariant; KOBO_EFULL or KOBO_EINVAL would be a caller bug. */
	rc = kobo_ledger_apply(ledger, ops, count, now_ms, results);
	if (rc != KOBO_OK)
		goto fail;

	rc = kobo_store_write(store, ledger);
	if (rc != KOBO_OK)
		goto fail;
	int64_t started_us = kobo_monotonic_us();
	rc = kobo_store_commit(store);
	*commit_us = kobo_monotonic_us() - started_us;
	if (rc != KOBO_OK)
		goto fail;
	return KOBO_OK;

fail:
	kobo_store_rollback(store);
	return rc;
}
