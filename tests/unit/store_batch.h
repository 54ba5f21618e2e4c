/*
 * store_batch.h — one batch through a store the way the shard writer runs it
 * (src/shard/batch.c), for the store's own unit tests, which link the store
 * layer without the shard layer: begin → load transfers → load accounts →
 * ledger apply → write → commit. Included by test_store_mem.c and
 * test_store_sqlite.c (test_store_contract.c has its own, which also copies
 * every write's input to catch a backend that keeps pointers).
 */
#ifndef KOBO_TESTS_UNIT_STORE_BATCH_H
#define KOBO_TESTS_UNIT_STORE_BATCH_H

#include <string.h>

#include "../../src/ledger/ledger.h"
#include "../../src/store/store.h"

#define STORE_BATCH_OPS_MAX 1024

/* Load callbacks the way src/shard/batch.c puts rows into the ledger. */
static inline int store_batch_put_transfer(void *ctx, const kobo_transfer *transfer,
                                           int64_t seq)
{
	(void)seq;
	return kobo_ledger_put_transfer(ctx, transfer);
}

static inline int store_batch_put_account(void *ctx, const kobo_account *account)
{
	return kobo_ledger_put_account(ctx, account);
}

/* The consistency token of the last committed batch. */
static uint64_t store_batch_last_token;

/* Runs ops through store and ledger into results. Returns the first failing
 * store status (after rolling back), or KOBO_OK once committed. When commit
 * is false the batch stops after write() (the transaction stays open for the
 * caller). forged, when not NULL, is put into the ledger instead of the
 * stored account of the same id: a batch built on a lie, for the audit. */
static inline int store_batch_run(kobo_store *store, kobo_ledger *ledger,
                                  const kobo_op *ops, size_t count, int64_t now_ms,
                                  kobo_result *results, bool commit,
                                  const kobo_account *forged)
{
	static const char *transfer_ids[STORE_BATCH_OPS_MAX];
	static const char *account_ids[KOBO_LEDGER_ACCOUNT_IDS_MAX(STORE_BATCH_OPS_MAX)];
	size_t transfer_count = 0, account_count = 0;
	int rc;

	assert_true(count <= STORE_BATCH_OPS_MAX);
	kobo_ledger_reset(ledger);
	rc = kobo_store_begin(store);
	if (rc != KOBO_OK)
		return rc;
	kobo_ledger_transfer_ids(ops, count, transfer_ids, &transfer_count);
	rc = kobo_store_load_transfers(store, transfer_ids, transfer_count,
	                               store_batch_put_transfer, ledger);
	if (rc != KOBO_OK)
		goto fail;
	kobo_ledger_account_ids(ledger, ops, count, account_ids, &account_count);
	if (forged != NULL) {
		assert_int_equal(kobo_ledger_put_account(ledger, forged), KOBO_OK);
		size_t kept = 0;
		for (size_t i = 0; i < account_count; i++)
			if (strcmp(account_ids[i], forged->id) != 0)
				account_ids[kept++] = account_ids[i];
		account_count = kept;
	}
	rc = kobo_store_load_accounts(store, account_ids, account_count,
	                              store_batch_put_account, ledger);
	if (rc != KOBO_OK)
		goto fail;
	assert_int_equal(kobo_ledger_apply(ledger, ops, count, now_ms, results), KOBO_OK);
	const kobo_account_change *accounts;
	const kobo_transfer_change *transfers;
	size_t changed_accounts = kobo_ledger_changed_accounts(ledger, &accounts);
	size_t changed_transfers = kobo_ledger_changed_transfers(ledger, &transfers);
	rc = kobo_store_write(store, accounts, changed_accounts, transfers,
	                      changed_transfers);
	if (rc != KOBO_OK)
		goto fail;
	if (!commit)
		return KOBO_OK;
	uint64_t token = 0;
	rc = kobo_store_commit(store, &token);
	if (rc != KOBO_OK)
		goto fail;
	store_batch_last_token = token;
	return KOBO_OK;
fail:
	kobo_store_rollback(store);
	return rc;
}

#endif
