/*
 * ledger.c — the ledger state machine: every business rule of Kobo, applied
 * to one batch at a time, with no I/O, no clock and no allocation after
 * kobo_ledger_create(). The contract is ledger.h; the rules are API.md.
 *
 * NOTES ON THE DESIGN
 *
 * Records. The ledger holds the accounts and transfers of one batch in two
 * preallocated arrays of slots, each indexed by a bounded id table (core.h:
 * linear probing, FNV-1a of the id). Slots are only ever appended; the only
 * removal is the rollback of an atomic group, which removes the newest slots
 * in reverse order of insertion (kobo_id_table_truncate) and so leaves the
 * tables exactly as they were before those insertions (no tombstones needed).
 *
 * Capacity. A batch of n ops names at most 3n accounts (an op names one
 * account, two for a transfer or a leg, three for a DEBIT leg with its
 * overflow lane, or the two of the transfer it posts, voids, expires or
 * settles) and at most n transfers, so the arrays hold
 * KOBO_LEDGER_ACCOUNT_IDS_MAX(ops_max) = 3 * ops_max + 1 accounts and
 * ops_max transfers. A clearing account or lane the ledger creates is one of
 * those its op names, so it fits as well.
 * kobo_ledger_apply() checks up front that the ops cannot need more, so it
 * never fails half-way.
 *
 * Legs. A transfer between shards is stored on both (ledger.h, kobo_leg):
 * the DEBIT leg on the payer's shard A moves money from -> clearing, the
 * CREDIT leg on the payee's shard B clearing -> to. Every rule that moves
 * money for a stored record goes through hold_accounts(), which names the
 * record's accounts on this shard (kobo_transfer_debit_account /
 * credit_account), so LOCAL, DEBIT and CREDIT records share the same hold,
 * post and release code. A clearing account is created by the first leg
 * that needs it (create_clearing_account). CREDIT legs never expire: A
 * decides expiry and voids B's hold through its saga.
 *
 * Transfer states and the functions that move them (LOCAL and CREDIT legs):
 *
 *                  create_transfer (pending)
 *      (new) ─────────────────────────────▶ PENDING ──post──▶ POSTED
 *        │  \   create_transfer (!pending)     │  \
 *        │   `────────────────────────────────────────────▶ POSTED
 *        │                                     │    void / expire / post
 *        │  rejected by a rule                 │    after expiry
 *        ▼                                     ▼
 *     REJECTED                               VOIDED (void_reason VOIDED or
 *                                                    EXPIRED)
 *
 *   from       to        op               function              result
 *   (none)     POSTED    CREATE_TRANSFER  apply_create_transfer CREATED
 *   (none)     PENDING   CREATE_TRANSFER  apply_create_transfer CREATED
 *   (none)     REJECTED  CREATE_TRANSFER  apply_create_transfer the rule's code
 *   (none)     POSTED    SAGA_CREDIT      apply_create_transfer CREATED
 *   (none)     PENDING   SAGA_CREDIT      apply_create_transfer CREATED
 *   (none)     REJECTED  SAGA_CREDIT      apply_create_transfer the rule's code
 *   (none)     REJECTED  SAGA_ABORT       apply_saga_abort      CREATED
 *   PENDING    POSTED    POST             apply_post            UPDATED
 *   PENDING    VOIDED    VOID             apply_void            UPDATED
 *   PENDING    VOIDED    EXPIRE           apply_expire          UPDATED
 *   PENDING    VOIDED    POST (expired)   apply_post            NOT_PENDING
 *   any        same      replays          (each)                REPLAYED
 *
 * DEBIT legs never move money on a client's post or void: they start a saga
 * step; their states and the saga ops are in ledger_saga.c.
 *
 * Invariants (checked by check_invariants() after every apply; a broken one
 * aborts, even in release builds):
 *   1. per currency, the posted deltas of the batch sum to 0 and the
 *      pending_out deltas equal the pending_in deltas (double entry);
 *   2. pending_out and pending_in of every changed account are >= 0;
 *   3. an account with allow_negative == false whose available balance was
 *      >= 0 when it was put (or created) still has available >= 0;
 *   4. an account that is not in the change list did not change;
 *   5. a changed transfer's posted_amount agrees with its status; its saga
 *      state agrees with its status and leg (saga != NONE exactly when
 *      PROCESSING, and only on DEBIT legs); CREDIT legs never expire.
 *
 * Atomic groups. While a group runs, every change to a record that existed
 * when the group began is logged (old balances, old transfer state) in an
 * undo log sized for the worst case; records created by the group are
 * removed. On the first failing op the log is replayed backwards
 * (rollback_group), then finish_failed_group gives every op its final
 * answer: the failing op keeps its code; an op that is a replay of a record
 * older than the group stays REPLAYED; every other op is NOT_APPLIED, and a
 * new transfer of the group is recorded as REJECTED so that a retry of the
 * same batch replays the refusal instead of moving money.
 *
 * A replay of a transfer that was itself REJECTED counts as a failure of the
 * group: an atomic batch must not move money for some of its transfers while
 * another of them is (still) refused.
 *
 * Legs and saga ops never run inside a group (check_batch refuses them), but
 * a POST or VOID of a group may target a stored DEBIT leg and start a saga
 * step on it, so the undo log keeps the saga fields and error_code as well.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger.h"
#include "ledger_internal.h"

/* ---- Small helpers. ---- */

/* The keys of the id tables (kobo_id_table_key_fn): records is the ledger. */
static const char *account_key(const void *records, uint32_t slot)
{
	return ((const kobo_ledger *)records)->accounts[slot].account.id;
}

static const char *transfer_key(const void *records, uint32_t slot)
{
	return ((const kobo_ledger *)records)->transfers[slot].transfer.id;
}

static const char *currency_key(const void *records, uint32_t slot)
{
	return ((const kobo_ledger *)records)->currency_sums[slot].currency;
}

static bool metadata_equal(const char *a, uint32_t a_len, const char *b,
                           uint32_t b_len)
{
	if (a_len != b_len)
		return false;
	if (a_len == 0)
		return true;
	return memcmp(a, b, a_len) == 0;
}

static bool is_business_rejection(kobo_result_code code)
{
	return code == KOBO_RESULT_ACCOUNT_NOT_FOUND ||
	       code == KOBO_RESULT_INSUFFICIENT_FUNDS ||
	       code == KOBO_RESULT_CURRENCY_MISMATCH ||
	       code == KOBO_RESULT_SAME_ACCOUNT ||
	       code == KOBO_RESULT_AMOUNT_OVERFLOW ||
	       code == KOBO_RESULT_NOT_APPLIED;
}

/* ---- Lookup and insertion. ---- */

int64_t ledger_account_find(const kobo_ledger *ledger, const char *id)
{
	uint32_t slot;
	if (kobo_id_table_find(ledger->account_table, id, &slot) != KOBO_OK)
		return -1;
	return slot;
}

int64_t ledger_transfer_find(const kobo_ledger *ledger, const char *id)
{
	uint32_t slot;
	if (kobo_id_table_find(ledger->transfer_table, id, &slot) != KOBO_OK)
		return -1;
	return slot;
}

/* Inserts a copy of account; the caller checked capacity and absence. */
uint32_t ledger_account_insert(kobo_ledger *ledger, const kobo_account *account,
                               bool is_new)
{
	KOBO__LEDGER_ASSERT(ledger->account_count < ledger->account_capacity);
	uint32_t slot_index = ledger->account_count++;
	account_slot *slot = &ledger->accounts[slot_index];
	slot->account = *account;
	int rc = kobo_id_table_insert(ledger->account_table, slot->account.id,
	                              slot_index);
	KOBO__LEDGER_ASSERT(rc == KOBO_OK);
	slot->posted_before = account->posted;
	slot->pending_out_before = account->pending_out;
	slot->pending_in_before = account->pending_in;
	slot->change_index = -1;
	slot->is_new = is_new;
	return slot_index;
}

static uint32_t transfer_insert(kobo_ledger *ledger,
                                const kobo_transfer *transfer, bool is_new)
{
	KOBO__LEDGER_ASSERT(ledger->transfer_count < ledger->transfer_capacity);
	uint32_t slot_index = ledger->transfer_count++;
	transfer_slot *slot = &ledger->transfers[slot_index];
	slot->transfer = *transfer;
	int rc = kobo_id_table_insert(ledger->transfer_table, slot->transfer.id,
	                              slot_index);
	KOBO__LEDGER_ASSERT(rc == KOBO_OK);
	slot->change_index = -1;
	slot->is_new = is_new;
	return slot_index;
}

/* ---- Change tracking and the undo log. ---- */

void ledger_account_change_note(kobo_ledger *ledger, uint32_t slot_index)
{
	account_slot *slot = &ledger->accounts[slot_index];
	if (slot->change_index >= 0)
		return;
	uint32_t position = ledger->account_change_count++;
	KOBO__LEDGER_ASSERT(position < ledger->account_capacity);
	ledger->account_changes[position].account = &slot->account;
	ledger->account_changes[position].is_new = slot->is_new;
	ledger->account_change_slots[position] = slot_index;
	slot->change_index = (int32_t)position;
}

static void transfer_change_note(kobo_ledger *ledger, uint32_t slot_index)
{
	transfer_slot *slot = &ledger->transfers[slot_index];
	if (slot->change_index >= 0)
		return;
	uint32_t position = ledger->transfer_change_count++;
	KOBO__LEDGER_ASSERT(position < ledger->transfer_capacity);
	ledger->transfer_changes[position].transfer = &slot->transfer;
	ledger->transfer_changes[position].is_new = slot->is_new;
	ledger->transfer_change_slots[position] = slot_index;
	slot->change_index = (int32_t)position;
}

/* Call before changing an account's balances. */
static kobo_account *account_touch(kobo_ledger *ledger, uint32_t slot_index)
{
	account_slot *slot = &ledger->accounts[slot_index];
	if (ledger->group_active && slot_index < ledger->group_account_count) {
		KOBO__LEDGER_ASSERT(ledger->account_undo_count <
		                    ledger->account_undo_capacity);
		account_undo *undo =
			&ledger->account_undos[ledger->account_undo_count++];
		undo->slot = slot_index;
		undo->posted = slot->account.posted;
		undo->pending_out = slot->account.pending_out;
		undo->pending_in = slot->account.pending_in;
	}
	ledger_account_change_note(ledger, slot_index);
	return &slot->account;
}

/* Call before changing an existing transfer's state. */
kobo_transfer *ledger_transfer_touch(kobo_ledger *ledger, uint32_t slot_index)
{
	transfer_slot *slot = &ledger->transfers[slot_index];
	if (ledger->group_active && slot_index < ledger->group_transfer_count) {
		KOBO__LEDGER_ASSERT(ledger->transfer_undo_count <
		                    ledger->transfer_undo_capacity);
		transfer_undo *undo =
			&ledger->transfer_undos[ledger->transfer_undo_count++];
		undo->slot = slot_index;
		undo->state = kobo_transfer_state_of(&slot->transfer);
	}
	transfer_change_note(ledger, slot_index);
	return &slot->transfer;
}

static void group_begin(kobo_ledger *ledger)
{
	ledger->group_active = true;
	ledger->group_account_count = ledger->account_count;
	ledger->group_transfer_count = ledger->transfer_count;
	ledger->group_account_change_count = ledger->account_change_count;
	ledger->group_transfer_change_count = ledger->transfer_change_count;
	ledger->account_undo_count = 0;
	ledger->transfer_undo_count = 0;
}

static void group_end(kobo_ledger *ledger)
{
	ledger->group_active = false;
	ledger->account_undo_count = 0;
	ledger->transfer_undo_count = 0;
}

/* Puts the ledger back exactly as it was at group_begin(). */
static void rollback_group(kobo_ledger *ledger)
{
	KOBO__LEDGER_ASSERT(ledger->group_active);
	while (ledger->account_undo_count > 0) {
		const account_undo *undo =
			&ledger->account_undos[--ledger->account_undo_count];
		kobo_account *account = &ledger->accounts[undo->slot].account;
		account->posted = undo->posted;
		account->pending_out = undo->pending_out;
		account->pending_in = undo->pending_in;
	}
	while (ledger->transfer_undo_count > 0) {
		const transfer_undo *undo =
			&ledger->transfer_undos[--ledger->transfer_undo_count];
		kobo_transfer_state_set(&ledger->transfers[undo->slot].transfer,
		                        &undo->state);
	}
	/* Forget the change entries made by the group, newest first. */
	while (ledger->account_change_count > ledger->group_account_change_count) {
		uint32_t slot = ledger->account_change_slots
			[--ledger->account_change_count];
		ledger->accounts[slot].change_index = -1;
	}
	while (ledger->transfer_change_count >
	       ledger->group_transfer_change_count) {
		uint32_t slot = ledger->transfer_change_slots
			[--ledger->transfer_change_count];
		ledger->transfers[slot].change_index = -1;
	}
	/* Remove the records the group created, newest first: each removal
	 * restores the id table to its state before that insertion. Slot i is
	 * the table's i-th insertion, so truncating to the group's first slot
	 * removes exactly the group's records. */
	KOBO__LEDGER_ASSERT(kobo_id_table_count(ledger->transfer_table) ==
	                    ledger->transfer_count);
	KOBO__LEDGER_ASSERT(kobo_id_table_count(ledger->account_table) ==
	                    ledger->account_count);
	kobo_id_table_truncate(ledger->transfer_table,
	                       ledger->group_transfer_count);
	ledger->transfer_count = ledger->group_transfer_count;
	kobo_id_table_truncate(ledger->account_table,
	                       ledger->group_account_count);
	ledger->account_count = ledger->group_account_count;
}

/* ---- Lifecycle. ---- */

kobo_ledger *kobo_ledger_create(size_t ops_max)
{
	if (ops_max == 0 || ops_max > KOBO_BATCH_OPS_MAX)
		return NULL;
	kobo_ledger *ledger = calloc(1, sizeof(*ledger));
	if (ledger == NULL)
		return NULL;
	ledger->ops_max = ops_max;
	ledger->account_capacity = (uint32_t)KOBO_LEDGER_ACCOUNT_IDS_MAX(ops_max);
	ledger->transfer_capacity = (uint32_t)ops_max;
	ledger->account_undo_capacity = (uint32_t)(3 * ops_max);
	ledger->transfer_undo_capacity = (uint32_t)ops_max;

	ledger->accounts = calloc(ledger->account_capacity,
	                          sizeof(*ledger->accounts));
	ledger->transfers = calloc(ledger->transfer_capacity,
	                           sizeof(*ledger->transfers));
	ledger->account_changes = calloc(ledger->account_capacity,
	                                 sizeof(*ledger->account_changes));
	ledger->account_change_slots = calloc(
		ledger->account_capacity, sizeof(*ledger->account_change_slots));
	ledger->transfer_changes = calloc(ledger->transfer_capacity,
	                                  sizeof(*ledger->transfer_changes));
	ledger->transfer_change_slots = calloc(
		ledger->transfer_capacity, sizeof(*ledger->transfer_change_slots));
	ledger->account_undos = calloc(ledger->account_undo_capacity,
	                               sizeof(*ledger->account_undos));
	ledger->transfer_undos = calloc(ledger->transfer_undo_capacity,
	                                sizeof(*ledger->transfer_undos));
	ledger->currency_sums = calloc(ledger->account_capacity,
	                               sizeof(*ledger->currency_sums));
	ledger->lane_ids = calloc(ops_max, sizeof(*ledger->lane_ids));
	/* The capacities are within KOBO_ID_TABLE_CAPACITY_MAX (ops_max <=
	 * KOBO_BATCH_OPS_MAX), so a create fails only for memory. */
	if (kobo_id_table_create(ledger->account_capacity, account_key, ledger,
	                         &ledger->account_table) != KOBO_OK ||
	    kobo_id_table_create(ledger->transfer_capacity, transfer_key, ledger,
	                         &ledger->transfer_table) != KOBO_OK ||
	    kobo_id_table_create(ledger->account_capacity, currency_key, ledger,
	                         &ledger->currency_table) != KOBO_OK ||
	    ledger->lane_ids == NULL ||
	    ledger->accounts == NULL || ledger->transfers == NULL ||
	    ledger->account_changes == NULL ||
	    ledger->account_change_slots == NULL ||
	    ledger->transfer_changes == NULL ||
	    ledger->transfer_change_slots == NULL ||
	    ledger->account_undos == NULL || ledger->transfer_undos == NULL ||
	    ledger->currency_sums == NULL) {
		kobo_ledger_destroy(ledger);
		return NULL;
	}
	return ledger;
}

void kobo_ledger_destroy(kobo_ledger *ledger)
{
	if (ledger == NULL)
		return;
	free(ledger->accounts);
	kobo_id_table_destroy(ledger->account_table);
	free(ledger->transfers);
	kobo_id_table_destroy(ledger->transfer_table);
	free(ledger->account_changes);
	free(ledger->account_change_slots);
	free(ledger->transfer_changes);
	free(ledger->transfer_change_slots);
	free(ledger->account_undos);
	free(ledger->transfer_undos);
	free(ledger->currency_sums);
	kobo_id_table_destroy(ledger->currency_table);
	free(ledger->lane_ids);
	free(ledger);
}

void kobo_ledger_reset(kobo_ledger *ledger)
{
	/* kobo_id_table_reset clears only the entries inserted, which keeps
	 * reset proportional to the batch, not to the capacity. */
	kobo_id_table_reset(ledger->account_table);
	kobo_id_table_reset(ledger->transfer_table);
	ledger->account_count = 0;
	ledger->transfer_count = 0;
	ledger->account_change_count = 0;
	ledger->transfer_change_count = 0;
	group_end(ledger);
}

/* ---- Id lists. ---- */

/* Heapsort of string pointers by strcmp: in place, no allocation (qsort may
 * allocate), O(n log n). Sorted ids also give the stores a deadlock-free
 * locking order. */
static void sift_down(const char **ids, size_t root, size_t count)
{
	for (;;) {
		size_t child = 2 * root + 1;
		if (child >= count)
			return;
		if (child + 1 < count && strcmp(ids[child], ids[child + 1]) < 0)
			child++;
		if (strcmp(ids[root], ids[child]) >= 0)
			return;
		const char *swap = ids[root];
		ids[root] = ids[child];
		ids[child] = swap;
		root = child;
	}
}

static size_t sort_unique(const char **ids, size_t count)
{
	if (count < 2)
		return count;
	for (size_t i = count / 2; i-- > 0;)
		sift_down(ids, i, count);
	for (size_t end = count - 1; end > 0; end--) {
		const char *swap = ids[0];
		ids[0] = ids[end];
		ids[end] = swap;
		sift_down(ids, 0, end);
	}
	size_t unique = 1;
	for (size_t i = 1; i < count; i++) {
		if (strcmp(ids[i], ids[unique - 1]) != 0)
			ids[unique++] = ids[i];
	}
	return unique;
}

void kobo_ledger_transfer_ids(const kobo_op *ops, size_t ops_count,
                              const char **ids, size_t *count)
{
	size_t n = 0;
	for (size_t i = 0; i < ops_count; i++) {
		switch (ops[i].kind) {
		case KOBO_OP_CREATE_TRANSFER:
		case KOBO_OP_SAGA_CREDIT:
		case KOBO_OP_SAGA_ABORT:
			ids[n++] = ops[i].u.transfer.id;
			break;
		case KOBO_OP_POST:
		case KOBO_OP_VOID:
		case KOBO_OP_EXPIRE:
		case KOBO_OP_SAGA_POST:
		case KOBO_OP_SAGA_VOID:
			ids[n++] = ops[i].u.target.id;
			break;
		case KOBO_OP_SAGA_SETTLE:
			ids[n++] = ops[i].u.settle.id;
			break;
		case KOBO_OP_CREATE_ACCOUNT:
			break;
		}
	}
	*count = sort_unique(ids, n);
}

/* The accounts of a loaded transfer matter only when an op posts, voids,
 * expires or settles it: a CREATE_TRANSFER that finds its id answers from
 * the stored transfer alone. Only accounts of this shard are listed (a leg
 * names its clearing account instead of the other shard's one), and at most
 * two per op, which keeps the count within 2 * ops_count. */
void kobo_ledger_account_ids(kobo_ledger *ledger, const kobo_op *ops,
                             size_t ops_count, const char **ids, size_t *count)
{
	size_t n = 0;
	for (size_t i = 0; i < ops_count; i++) {
		const kobo_op *op = &ops[i];
		const char *target_id = NULL;
		switch (op->kind) {
		case KOBO_OP_CREATE_ACCOUNT:
			ids[n++] = op->u.account.id;
			break;
		case KOBO_OP_CREATE_TRANSFER:
		case KOBO_OP_SAGA_CREDIT:
			/* LOCAL from/to, DEBIT from/clearing (+ lane), CREDIT
			 * clearing/to. */
			ids[n++] = kobo_transfer_debit_account(&op->u.transfer);
			ids[n++] = kobo_transfer_credit_account(&op->u.transfer);
			if (op->kind == KOBO_OP_CREATE_TRANSFER &&
			    op->u.transfer.leg == KOBO_LEG_DEBIT &&
			    ledger_debit_clearing_fits_lane(&op->u.transfer) &&
			    i < ledger->ops_max) {
				kobo_clearing_lane_id(ledger->lane_ids[i],
				                      op->u.transfer.clearing,
				                      op->u.transfer.id);
				ids[n++] = ledger->lane_ids[i];
			}
			break;
		case KOBO_OP_SAGA_ABORT:
			break; /* records a refusal: moves nothing */
		case KOBO_OP_POST:
		case KOBO_OP_VOID:
		case KOBO_OP_EXPIRE:
		case KOBO_OP_SAGA_POST:
		case KOBO_OP_SAGA_VOID:
			target_id = op->u.target.id;
			break;
		case KOBO_OP_SAGA_SETTLE:
			target_id = op->u.settle.id;
			break;
		}
		if (target_id == NULL)
			continue;
		int64_t slot = ledger_transfer_find(ledger, target_id);
		if (slot >= 0) {
			const kobo_transfer *transfer =
				&ledger->transfers[slot].transfer;
			ids[n++] = kobo_transfer_debit_account(transfer);
			ids[n++] = kobo_transfer_credit_account(transfer);
		}
	}
	*count = sort_unique(ids, n);
}

/* ---- Putting stored records. ---- */

int kobo_ledger_put_account(kobo_ledger *ledger, const kobo_account *account)
{
	if (ledger_account_find(ledger, account->id) >= 0)
		return KOBO_EINVAL;
	if (ledger->account_count >= ledger->account_capacity)
		return KOBO_EFULL;
	ledger_account_insert(ledger, account, false);
	return KOBO_OK;
}

int kobo_ledger_put_transfer(kobo_ledger *ledger, const kobo_transfer *transfer)
{
	if (ledger_transfer_find(ledger, transfer->id) >= 0)
		return KOBO_EINVAL;
	if (ledger->transfer_count >= ledger->transfer_capacity)
		return KOBO_EFULL;
	transfer_insert(ledger, transfer, false);
	return KOBO_OK;
}

/* ---- The rules, one function per op kind. ---- */

static void snapshot_account(const kobo_ledger *ledger, int64_t slot,
                             kobo_result *result)
{
	result->has_account = true;
	result->account = ledger->accounts[slot].account;
}

void ledger_snapshot_transfer(const kobo_ledger *ledger, int64_t slot,
                              kobo_result *result)
{
	result->has_transfer = true;
	result->transfer = ledger->transfers[slot].transfer;
}

static kobo_result_code apply_create_account(kobo_ledger *ledger,
                                             const kobo_op *op, int64_t now_ms,
                                             kobo_result *result)
{
	const kobo_account *wanted = &op->u.account;
	int64_t slot = ledger_account_find(ledger, wanted->id);
	if (slot >= 0) {
		const kobo_account *stored = &ledger->accounts[slot].account;
		if (strcmp(stored->currency, wanted->currency) != 0 ||
		    stored->allow_negative != wanted->allow_negative ||
		    !metadata_equal(stored->metadata, stored->metadata_len,
		                    wanted->metadata, wanted->metadata_len))
			return KOBO_RESULT_ID_CONFLICT;
		snapshot_account(ledger, slot, result);
		return KOBO_RESULT_REPLAYED;
	}
	kobo_account account;
	memset(&account, 0, sizeof(account));
	memcpy(account.id, wanted->id, sizeof(account.id));
	memcpy(account.currency, wanted->currency, sizeof(account.currency));
	account.allow_negative = wanted->allow_negative;
	account.metadata = wanted->metadata;
	account.metadata_len = wanted->metadata_len;
	account.created_at_ms = now_ms;
	memcpy(account.created_by, op->created_by, sizeof(account.created_by));
	slot = ledger_account_insert(ledger, &account, true);
	ledger_account_change_note(ledger, (uint32_t)slot);
	snapshot_account(ledger, slot, result);
	return KOBO_RESULT_CREATED;
}

static bool transfer_params_equal(const kobo_transfer *stored,
                                  const kobo_transfer *wanted)
{
	/* leg and clearing are parameters too: a DEBIT create and a CREDIT
	 * leg of the same id never replay each other. */
	return strcmp(stored->from, wanted->from) == 0 &&
	       strcmp(stored->to, wanted->to) == 0 &&
	       stored->amount == wanted->amount &&
	       strcmp(stored->currency, wanted->currency) == 0 &&
	       stored->pending == wanted->pending &&
	       stored->timeout_seconds == wanted->timeout_seconds &&
	       stored->leg == wanted->leg &&
	       ledger_clearing_equal(stored, wanted) &&
	       metadata_equal(stored->metadata, stored->metadata_len,
	                      wanted->metadata, wanted->metadata_len);
}

/* A CREATE_TRANSFER, SAGA_CREDIT or SAGA_ABORT whose id is stored at slot:
 * the same parameters replay the stored record, others are a conflict. */
kobo_result_code ledger_answer_existing_transfer(const kobo_ledger *ledger,
                                                 int64_t slot,
                                                 const kobo_transfer *wanted,
                                                 kobo_result *result)
{
	if (!transfer_params_equal(&ledger->transfers[slot].transfer, wanted))
		return KOBO_RESULT_ID_CONFLICT;
	ledger_snapshot_transfer(ledger, slot, result);
	return KOBO_RESULT_REPLAYED;
}

/* Records a new transfer from a CREATE_TRANSFER, SAGA_CREDIT or SAGA_ABORT
 * op with the given outcome (the caller moves the money); returns its slot.
 * A PROCESSING record is a DEBIT leg whose saga starts RESERVED. */
static uint32_t record_leg(kobo_ledger *ledger, const kobo_op *op,
                           const kobo_transfer *wanted, int64_t now_ms,
                           kobo_transfer_status status,
                           kobo_result_code error_code)
{
	kobo_transfer transfer;
	memset(&transfer, 0, sizeof(transfer));
	memcpy(transfer.id, wanted->id, sizeof(transfer.id));
	memcpy(transfer.from, wanted->from, sizeof(transfer.from));
	memcpy(transfer.to, wanted->to, sizeof(transfer.to));
	memcpy(transfer.currency, wanted->currency, sizeof(transfer.currency));
	memcpy(transfer.request_id, op->request_id, sizeof(transfer.request_id));
	memcpy(transfer.created_by, op->created_by, sizeof(transfer.created_by));
	memcpy(transfer.trace_id, op->trace_id, sizeof(transfer.trace_id));
	transfer.amount = wanted->amount;
	transfer.pending = wanted->pending;
	transfer.timeout_seconds = wanted->timeout_seconds;
	transfer.metadata = wanted->metadata;
	transfer.metadata_len = wanted->metadata_len;
	transfer.status = status;
	transfer.void_reason = KOBO_VOID_NONE;
	transfer.error_code = status == KOBO_STATUS_REJECTED ? error_code
	                                                     : KOBO_RESULT_CREATED;
	transfer.created_at_ms = now_ms;
	transfer.updated_at_ms = now_ms;
	transfer.leg = wanted->leg;
	memcpy(transfer.clearing, wanted->clearing, sizeof(transfer.clearing));
	if (status == KOBO_STATUS_PROCESSING) {
		KOBO__LEDGER_ASSERT(wanted->leg == KOBO_LEG_DEBIT);
		transfer.saga = KOBO_SAGA_RESERVED;
	}
	if (status == KOBO_STATUS_POSTED)
		transfer.posted_amount = wanted->amount;
	/* A hold expires when asked; a CREDIT leg never does (A decides). */
	if (kobo_transfer_holds(&transfer) && wanted->pending &&
	    wanted->timeout_seconds > 0 && wanted->leg != KOBO_LEG_CREDIT) {
		int64_t expires_at_ms;
		if (__builtin_mul_overflow((int64_t)wanted->timeout_seconds,
		                           (int64_t)1000, &expires_at_ms) ||
		    __builtin_add_overflow(now_ms, expires_at_ms,
		                           &expires_at_ms))
			expires_at_ms = INT64_MAX;
		transfer.expires_at_ms = expires_at_ms;
	}
	uint32_t slot = transfer_insert(ledger, &transfer, true);
	transfer_change_note(ledger, slot);
	return slot;
}

uint32_t ledger_record_transfer(kobo_ledger *ledger, const kobo_op *op,
                                int64_t now_ms, kobo_transfer_status status,
                                kobo_result_code error_code)
{
	return record_leg(ledger, op, &op->u.transfer, now_ms, status,
	                  error_code);
}

/* The business rules of a new transfer or leg, in the documented order, on
 * the accounts it debits and credits on this shard. The clearing account of
 * a leg may be absent (it counts as empty; *slot_out is -1 then, and the
 * caller creates it). A DEBIT leg always holds first, so its totals are
 * checked as for a hold. On success returns CREATED and the two slots;
 * nothing is changed. */
static kobo_result_code check_new_transfer(const kobo_ledger *ledger,
                                           const kobo_transfer *wanted,
                                           bool clearing_as_new,
                                           int64_t *debit_slot_out,
                                           int64_t *credit_slot_out)
{
	const char *debit_id = kobo_transfer_debit_account(wanted);
	const char *credit_id = kobo_transfer_credit_account(wanted);
	if (strcmp(debit_id, credit_id) == 0)
		return KOBO_RESULT_SAME_ACCOUNT;
	int64_t debit_slot = ledger_account_find(ledger, debit_id);
	int64_t credit_slot = ledger_account_find(ledger, credit_id);
	bool debit_is_clearing = wanted->leg == KOBO_LEG_CREDIT;
	bool credit_is_clearing = wanted->leg == KOBO_LEG_DEBIT;
	if (clearing_as_new && debit_is_clearing)
		debit_slot = -1;
	if (clearing_as_new && credit_is_clearing)
		credit_slot = -1;
	if ((debit_slot < 0 && !debit_is_clearing) ||
	    (credit_slot < 0 && !credit_is_clearing))
		return KOBO_RESULT_ACCOUNT_NOT_FOUND;
	kobo_account absent = ledger_clearing_account(wanted, 0);
	const kobo_account *from = debit_slot >= 0
		? &ledger->accounts[debit_slot].account : &absent;
	const kobo_account *to = credit_slot >= 0
		? &ledger->accounts[credit_slot].account : &absent;
	if (strcmp(wanted->currency, from->currency) != 0 ||
	    strcmp(wanted->currency, to->currency) != 0)
		return KOBO_RESULT_CURRENCY_MISMATCH;
	int64_t amount = wanted->amount;
	if (!from->allow_negative) {
		/* Overflow here means a very negative balance: not enough. */
		int64_t available, rest;
		if (__builtin_sub_overflow(from->posted, from->pending_out,
		                           &available) ||
		    __builtin_sub_overflow(available, amount, &rest) || rest < 0)
			return KOBO_RESULT_INSUFFICIENT_FUNDS;
	}
	int64_t from_posted, to_posted, from_pending_out, to_pending_in;
	if (__builtin_sub_overflow(from->posted, amount, &from_posted) ||
	    __builtin_add_overflow(to->posted, amount, &to_posted) ||
	    __builtin_add_overflow(from->pending_out, amount,
	                           &from_pending_out) ||
	    __builtin_add_overflow(to->pending_in, amount, &to_pending_in))
		return KOBO_RESULT_AMOUNT_OVERFLOW;
	/* Kobo's own clearing accounts are bounded as if every hold on them
	 * posts, symmetrically on both shards: A's (credited by DEBIT legs)
	 * keeps posted + pending_in <= INT64_MAX, B's (debited by CREDIT
	 * legs) posted - pending_out >= -INT64_MAX. So several sagas in flight
	 * that each fit also fit together, A can always post what B credited,
	 * and B accepts whatever A's mirror account accepted. */
	if (wanted->leg == KOBO_LEG_DEBIT &&
	    (__int128)to->posted + to->pending_in + amount > INT64_MAX)
		return KOBO_RESULT_AMOUNT_OVERFLOW;
	if (wanted->leg == KOBO_LEG_CREDIT &&
	    (__int128)from->posted - from->pending_out - amount < -INT64_MAX)
		return KOBO_RESULT_AMOUNT_OVERFLOW;
	/* The available balances the transfer leaves behind must fit too. */
	int64_t from_available, to_available;
	if (wanted->pending || wanted->leg == KOBO_LEG_DEBIT) {
		if (__builtin_sub_overflow(from->posted, from_pending_out,
		                           &from_available) ||
		    __builtin_sub_overflow(to->posted, to->pending_out,
		                           &to_available))
			return KOBO_RESULT_AMOUNT_OVERFLOW;
	} else {
		if (__builtin_sub_overflow(from_posted, from->pending_out,
		                           &from_available) ||
		    __builtin_sub_overflow(to_posted, to->pending_out,
		                           &to_available))
			return KOBO_RESULT_AMOUNT_OVERFLOW;
	}
	*debit_slot_out = debit_slot;
	*credit_slot_out = credit_slot;
	return KOBO_RESULT_CREATED;
}

/* CREATE_TRANSFER (LOCAL or DEBIT leg) and SAGA_CREDIT (CREDIT leg). */
static kobo_result_code apply_create_transfer(kobo_ledger *ledger,
                                              const kobo_op *op,
                                              int64_t now_ms,
                                              kobo_result *result)
{
	const kobo_transfer *wanted = &op->u.transfer;
	int64_t slot = ledger_transfer_find(ledger, wanted->id);
	if (slot >= 0)
		return ledger_answer_existing_transfer(ledger, slot, wanted, result);
	int64_t debit_slot = -1, credit_slot = -1;
	kobo_result_code code = check_new_transfer(ledger, wanted, false,
	                                           &debit_slot, &credit_slot);
	kobo_transfer in_lane;
	if (code == KOBO_RESULT_AMOUNT_OVERFLOW &&
	    wanted->leg == KOBO_LEG_DEBIT) {
		/* The shared clearing account is full: this leg takes an
		 * overflow lane of its own (ledger.h, "Clearing lanes"). */
		in_lane = *wanted;
		kobo_clearing_lane_id(in_lane.clearing, wanted->clearing,
		                      wanted->id);
		code = check_new_transfer(ledger, &in_lane, false,
		                          &debit_slot, &credit_slot);
		if (code == KOBO_RESULT_CREATED)
			wanted = &in_lane;
	}
	if (code == KOBO_RESULT_AMOUNT_OVERFLOW &&
	    wanted->leg == KOBO_LEG_CREDIT &&
	    check_new_transfer(ledger, wanted, true, &debit_slot,
	                       &credit_slot) == KOBO_RESULT_CREATED) {
		/* Only B's clearing account is in the way: reverse sagas
		 * A already credited have not settled here yet (their money
		 * sits in its pending_in, which the bound may not count). A
		 * passing state, not a refusal: nothing is recorded, and the
		 * runner asks again (ledger.h, SAGA_CREDIT). */
		return KOBO_RESULT_TRANSFER_IN_PROGRESS;
	}
	if (code != KOBO_RESULT_CREATED) {
		slot = ledger_record_transfer(ledger, op, now_ms, KOBO_STATUS_REJECTED,
		                       code);
		ledger_snapshot_transfer(ledger, slot, result);
		return code;
	}
	if (debit_slot < 0)
		debit_slot = ledger_create_clearing_account(ledger, wanted, now_ms);
	if (credit_slot < 0)
		credit_slot = ledger_create_clearing_account(ledger, wanted, now_ms);
	kobo_account *debit = account_touch(ledger, (uint32_t)debit_slot);
	kobo_account *credit = account_touch(ledger, (uint32_t)credit_slot);
	kobo_transfer_status status;
	if (wanted->leg == KOBO_LEG_DEBIT)
		status = KOBO_STATUS_PROCESSING; /* held until settled */
	else if (wanted->pending)
		status = KOBO_STATUS_PENDING;
	else
		status = KOBO_STATUS_POSTED;
	if (status == KOBO_STATUS_POSTED) {
		debit->posted -= wanted->amount;
		credit->posted += wanted->amount;
	} else {
		debit->pending_out += wanted->amount;
		credit->pending_in += wanted->amount;
	}
	slot = record_leg(ledger, op, wanted, now_ms, status,
	                  KOBO_RESULT_CREATED);
	ledger_snapshot_transfer(ledger, slot, result);
	return KOBO_RESULT_CREATED;
}

/* The accounts of this shard a stored hold (PENDING or PROCESSING) debits
 * and credits; kobo_ledger_apply() checked up front that both were put. */
static void hold_accounts(const kobo_ledger *ledger,
                          const kobo_transfer *transfer, uint32_t *debit_slot,
                          uint32_t *credit_slot)
{
	int64_t debit = ledger_account_find(ledger,
	                             kobo_transfer_debit_account(transfer));
	int64_t credit = ledger_account_find(ledger,
	                              kobo_transfer_credit_account(transfer));
	KOBO__LEDGER_ASSERT(debit >= 0 && credit >= 0);
	*debit_slot = (uint32_t)debit;
	*credit_slot = (uint32_t)credit;
}

/* Ends whatever saga step a record had: the hold is settled or stays
 * PENDING. error_code as ledger.h says (a refused post's code, else
 * CREATED). */
void ledger_end_saga_step(kobo_transfer *transfer, kobo_result_code error_code)
{
	transfer->saga = KOBO_SAGA_NONE;
	transfer->saga_amount = 0;
	transfer->saga_reason = KOBO_VOID_NONE;
	transfer->error_code = error_code;
}

/* Releases the hold of a PENDING or PROCESSING transfer and marks it
 * VOIDED with reason (error_code: why, for a compensation). */
void ledger_release_hold(kobo_ledger *ledger, uint32_t transfer_slot_index,
                         kobo_void_reason reason, kobo_result_code error_code,
                         int64_t now_ms)
{
	kobo_transfer *transfer = ledger_transfer_touch(ledger, transfer_slot_index);
	KOBO__LEDGER_ASSERT(kobo_transfer_holds(transfer));
	uint32_t debit_slot, credit_slot;
	hold_accounts(ledger, transfer, &debit_slot, &credit_slot);
	kobo_account *debit = account_touch(ledger, debit_slot);
	kobo_account *credit = account_touch(ledger, credit_slot);
	KOBO__LEDGER_ASSERT(debit->pending_out >= transfer->amount);
	KOBO__LEDGER_ASSERT(credit->pending_in >= transfer->amount);
	debit->pending_out -= transfer->amount;
	credit->pending_in -= transfer->amount;
	transfer->status = KOBO_STATUS_VOIDED;
	transfer->void_reason = reason;
	transfer->posted_amount = 0;
	transfer->updated_at_ms = now_ms;
	ledger_end_saga_step(transfer, error_code);
}

/* Whether posting amount (<= the held amount) of a stored hold fits: no
 * balance may wrap. to.posted + amount is the only sum a valid state can
 * overflow; the rest is checked as well so no arithmetic in ledger_post_hold()
 * can wrap. */
bool ledger_post_fits(const kobo_ledger *ledger, const kobo_transfer *transfer,
                      int64_t amount)
{
	uint32_t debit_slot, credit_slot;
	hold_accounts(ledger, transfer, &debit_slot, &credit_slot);
	const kobo_account *from = &ledger->accounts[debit_slot].account;
	const kobo_account *to = &ledger->accounts[credit_slot].account;
	KOBO__LEDGER_ASSERT(amount >= 1 && amount <= transfer->amount);
	KOBO__LEDGER_ASSERT(from->pending_out >= transfer->amount);
	KOBO__LEDGER_ASSERT(to->pending_in >= transfer->amount);
	int64_t from_posted, to_posted, from_available, to_available;
	return !__builtin_add_overflow(to->posted, amount, &to_posted) &&
	       !__builtin_sub_overflow(from->posted, amount, &from_posted) &&
	       !__builtin_sub_overflow(from_posted,
	                               from->pending_out - transfer->amount,
	                               &from_available) &&
	       !__builtin_sub_overflow(to_posted, to->pending_out,
	                               &to_available);
}

/* Posts amount of a PENDING or PROCESSING hold (the rest of the hold is
 * released) and marks it POSTED. The caller checked ledger_post_fits(). */
void ledger_post_hold(kobo_ledger *ledger, uint32_t transfer_slot_index,
                      int64_t amount, int64_t now_ms)
{
	kobo_transfer *held = ledger_transfer_touch(ledger, transfer_slot_index);
	KOBO__LEDGER_ASSERT(kobo_transfer_holds(held));
	KOBO__LEDGER_ASSERT(ledger_post_fits(ledger, held, amount));
	uint32_t debit_slot, credit_slot;
	hold_accounts(ledger, held, &debit_slot, &credit_slot);
	kobo_account *from = account_touch(ledger, debit_slot);
	kobo_account *to = account_touch(ledger, credit_slot);
	from->pending_out -= held->amount;
	to->pending_in -= held->amount;
	from->posted -= amount;
	to->posted += amount;
	held->posted_amount = amount;
	held->status = KOBO_STATUS_POSTED;
	held->updated_at_ms = now_ms;
	ledger_end_saga_step(held, KOBO_RESULT_CREATED);
}

/* Voids a PENDING hold: at once, or for a DEBIT leg by asking B first. */
static void void_hold(kobo_ledger *ledger, uint32_t transfer_slot_index,
                      kobo_void_reason reason, int64_t now_ms)
{
	const kobo_transfer *transfer =
		&ledger->transfers[transfer_slot_index].transfer;
	KOBO__LEDGER_ASSERT(transfer->status == KOBO_STATUS_PENDING);
	if (transfer->leg == KOBO_LEG_DEBIT)
		ledger_start_saga_step(ledger, transfer_slot_index, KOBO_SAGA_VOIDING,
		                0, reason, now_ms);
	else
		ledger_release_hold(ledger, transfer_slot_index, reason,
		             KOBO_RESULT_CREATED, now_ms);
}

/* CREDIT legs never expire: A voids them through its saga. */
static bool hold_expired(const kobo_transfer *transfer, int64_t now_ms)
{
	return transfer->leg != KOBO_LEG_CREDIT &&
	       transfer->expires_at_ms != 0 && now_ms >= transfer->expires_at_ms;
}

/* A POST or VOID of a record already in (or past) that step repeats it. */
static bool post_replays(const kobo_transfer *transfer)
{
	return transfer->status == KOBO_STATUS_POSTED ||
	       (transfer->status == KOBO_STATUS_PROCESSING &&
	        transfer->saga == KOBO_SAGA_POSTING);
}

static bool void_replays(const kobo_transfer *transfer)
{
	return transfer->status == KOBO_STATUS_VOIDED ||
	       (transfer->status == KOBO_STATUS_PROCESSING &&
	        transfer->saga == KOBO_SAGA_VOIDING);
}

/* The record a POST or VOID may act on: a client's (POST, VOID) is a LOCAL
 * transfer or a DEBIT leg, the runner's (SAGA_POST, SAGA_VOID) a CREDIT leg.
 * A CREDIT leg is invisible to clients' post/void: the transfer they name
 * lives with its payer, so on the payee's shard it is not found. */
static int64_t find_target(const kobo_ledger *ledger, const kobo_op *op)
{
	int64_t slot = ledger_transfer_find(ledger, op->u.target.id);
	if (slot < 0)
		return -1;
	bool credit = ledger->transfers[slot].transfer.leg == KOBO_LEG_CREDIT;
	bool runner = op->kind == KOBO_OP_SAGA_POST ||
	              op->kind == KOBO_OP_SAGA_VOID;
	return credit == runner ? slot : -1;
}

static kobo_result_code apply_post(kobo_ledger *ledger, const kobo_op *op,
                                   int64_t now_ms, kobo_result *result)
{
	int64_t slot = find_target(ledger, op);
	if (slot < 0)
		return KOBO_RESULT_TRANSFER_NOT_FOUND;
	const kobo_transfer *transfer = &ledger->transfers[slot].transfer;
	int64_t amount = op->u.target.has_amount ? op->u.target.amount
	                                         : transfer->amount;
	kobo_result_code code;
	if (post_replays(transfer)) {
		code = KOBO_RESULT_REPLAYED;
	} else if (transfer->status == KOBO_STATUS_PROCESSING) {
		code = KOBO_RESULT_TRANSFER_IN_PROGRESS;
	} else if (transfer->status != KOBO_STATUS_PENDING) {
		code = KOBO_RESULT_NOT_PENDING;
	} else if (hold_expired(transfer, now_ms)) {
		/* The hold lapsed before this post: the expiry happens now,
		 * and the post finds nothing to post. */
		void_hold(ledger, (uint32_t)slot, KOBO_VOID_EXPIRED, now_ms);
		code = KOBO_RESULT_NOT_PENDING;
	} else if (amount > transfer->amount) {
		code = KOBO_RESULT_AMOUNT_EXCEEDS_PENDING;
	} else if (!ledger_post_fits(ledger, transfer, amount)) {
		code = KOBO_RESULT_AMOUNT_OVERFLOW;
	} else {
		if (transfer->leg == KOBO_LEG_DEBIT)
			ledger_start_saga_step(ledger, (uint32_t)slot,
			                KOBO_SAGA_POSTING, amount,
			                KOBO_VOID_NONE, now_ms);
		else
			ledger_post_hold(ledger, (uint32_t)slot, amount, now_ms);
		code = KOBO_RESULT_UPDATED;
	}
	ledger_snapshot_transfer(ledger, slot, result);
	return code;
}

static kobo_result_code apply_void(kobo_ledger *ledger, const kobo_op *op,
                                   int64_t now_ms, kobo_result *result)
{
	int64_t slot = find_target(ledger, op);
	if (slot < 0)
		return KOBO_RESULT_TRANSFER_NOT_FOUND;
	const kobo_transfer *transfer = &ledger->transfers[slot].transfer;
	kobo_result_code code;
	if (void_replays(transfer)) {
		code = KOBO_RESULT_REPLAYED;
	} else if (transfer->status == KOBO_STATUS_PROCESSING) {
		code = KOBO_RESULT_TRANSFER_IN_PROGRESS;
	} else if (transfer->status == KOBO_STATUS_PENDING) {
		void_hold(ledger, (uint32_t)slot,
		          hold_expired(transfer, now_ms) ? KOBO_VOID_EXPIRED
		                                         : KOBO_VOID_VOIDED,
		          now_ms);
		code = KOBO_RESULT_UPDATED;
	} else {
		code = KOBO_RESULT_NOT_PENDING;
	}
	ledger_snapshot_transfer(ledger, slot, result);
	return code;
}

/* EXPIRE is the writer's own op: anything but an expired PENDING hold
 * (including an unknown id, a PROCESSING record and a CREDIT leg) answers
 * NOT_PENDING, a no-op it ignores. */
static kobo_result_code apply_expire(kobo_ledger *ledger, const kobo_op *op,
                                     int64_t now_ms, kobo_result *result)
{
	int64_t slot = ledger_transfer_find(ledger, op->u.target.id);
	if (slot < 0)
		return KOBO_RESULT_NOT_PENDING;
	const kobo_transfer *transfer = &ledger->transfers[slot].transfer;
	kobo_result_code code = KOBO_RESULT_NOT_PENDING;
	if (transfer->status == KOBO_STATUS_PENDING &&
	    hold_expired(transfer, now_ms)) {
		void_hold(ledger, (uint32_t)slot, KOBO_VOID_EXPIRED, now_ms);
		code = KOBO_RESULT_UPDATED;
	}
	ledger_snapshot_transfer(ledger, slot, result);
	return code;
}

static kobo_result_code apply_op(kobo_ledger *ledger, const kobo_op *op,
                                 int64_t now_ms, kobo_result *result)
{
	memset(result, 0, sizeof(*result));
	kobo_result_code code = KOBO_RESULT_NOT_APPLIED;
	switch (op->kind) {
	case KOBO_OP_CREATE_ACCOUNT:
		code = apply_create_account(ledger, op, now_ms, result);
		break;
	case KOBO_OP_CREATE_TRANSFER:
	case KOBO_OP_SAGA_CREDIT:
		code = apply_create_transfer(ledger, op, now_ms, result);
		break;
	case KOBO_OP_SAGA_ABORT:
		code = ledger_apply_saga_abort(ledger, op, now_ms, result);
		break;
	case KOBO_OP_POST:
	case KOBO_OP_SAGA_POST:
		code = apply_post(ledger, op, now_ms, result);
		break;
	case KOBO_OP_VOID:
	case KOBO_OP_SAGA_VOID:
		code = apply_void(ledger, op, now_ms, result);
		break;
	case KOBO_OP_EXPIRE:
		code = apply_expire(ledger, op, now_ms, result);
		break;
	case KOBO_OP_SAGA_SETTLE:
		code = ledger_apply_saga_settle(ledger, op, now_ms, result);
		break;
	}
	result->code = code;
	return code;
}

/* ---- Atomic groups. ---- */

static bool op_failed_group(const kobo_result *result)
{
	switch (result->code) {
	case KOBO_RESULT_CREATED:
	case KOBO_RESULT_UPDATED:
		return false;
	case KOBO_RESULT_REPLAYED:
		/* A replayed refusal is still a refusal (see the notes). */
		return result->has_transfer &&
		       result->transfer.status == KOBO_STATUS_REJECTED;
	default:
		return true;
	}
}

static const char *op_record_id(const kobo_op *op)
{
	switch (op->kind) {
	case KOBO_OP_CREATE_ACCOUNT: return op->u.account.id;
	case KOBO_OP_CREATE_TRANSFER:
	case KOBO_OP_SAGA_CREDIT:
	case KOBO_OP_SAGA_ABORT: return op->u.transfer.id;
	case KOBO_OP_POST:
	case KOBO_OP_VOID:
	case KOBO_OP_EXPIRE:
	case KOBO_OP_SAGA_POST:
	case KOBO_OP_SAGA_VOID: return op->u.target.id;
	case KOBO_OP_SAGA_SETTLE: return op->u.settle.id;
	}
	return op->u.target.id;
}

/* The answer of a non-failing op of a failed group, after rollback: REPLAYED
 * when it is a replay of a record that existed before the group or that an
 * earlier op of the group recorded as refused just now, ID_CONFLICT
 * when a record with its id exists with other parameters (so that a retry of
 * the batch answers what the first attempt did), else NOT_APPLIED (recording
 * a new transfer as REJECTED). */
static void answer_not_applied(kobo_ledger *ledger, const kobo_op *op,
                               int64_t now_ms, kobo_result *result)
{
	memset(result, 0, sizeof(*result));
	result->code = KOBO_RESULT_NOT_APPLIED;
	if (op->kind == KOBO_OP_CREATE_ACCOUNT) {
		const kobo_account *wanted = &op->u.account;
		int64_t slot = ledger_account_find(ledger, wanted->id);
		if (slot < 0)
			return;
		const kobo_account *stored = &ledger->accounts[slot].account;
		KOBO__LEDGER_ASSERT(slot < ledger->group_account_count);
		if (strcmp(stored->currency, wanted->currency) == 0 &&
		    stored->allow_negative == wanted->allow_negative &&
		    metadata_equal(stored->metadata, stored->metadata_len,
		                   wanted->metadata, wanted->metadata_len)) {
			result->code = KOBO_RESULT_REPLAYED;
			snapshot_account(ledger, slot, result);
		} else {
			result->code = KOBO_RESULT_ID_CONFLICT;
		}
		return;
	}
	int64_t slot = ledger_transfer_find(ledger, op_record_id(op));
	if (op->kind == KOBO_OP_CREATE_TRANSFER && slot < 0) {
		slot = ledger_record_transfer(ledger, op, now_ms, KOBO_STATUS_REJECTED,
		                       KOBO_RESULT_NOT_APPLIED);
		ledger_snapshot_transfer(ledger, slot, result);
		return;
	}
	if (slot < 0)
		return;
	const kobo_transfer *stored = &ledger->transfers[slot].transfer;
	if (op->kind == KOBO_OP_CREATE_TRANSFER &&
	    !transfer_params_equal(stored, &op->u.transfer)) {
		result->code = KOBO_RESULT_ID_CONFLICT;
		return;
	}
	if (slot >= ledger->group_transfer_count) {
		/* Recorded by an earlier op of this failed group, just now: a
		 * repeat of that create answers what the record says, as its
		 * retry will (only the group's own ops post or void it). */
		if (op->kind == KOBO_OP_CREATE_TRANSFER) {
			result->code = KOBO_RESULT_REPLAYED;
			ledger_snapshot_transfer(ledger, slot, result);
		}
		return;
	}
	bool replay = false;
	switch (op->kind) {
	case KOBO_OP_CREATE_TRANSFER:
		replay = true; /* same parameters: a conflict returned above */
		break;
	case KOBO_OP_POST:
		replay = stored->leg != KOBO_LEG_CREDIT && post_replays(stored);
		break;
	case KOBO_OP_VOID:
		replay = stored->leg != KOBO_LEG_CREDIT && void_replays(stored);
		break;
	default:
		break;
	}
	if (replay) {
		result->code = KOBO_RESULT_REPLAYED;
		ledger_snapshot_transfer(ledger, slot, result);
	}
}

/* Rolls a failed group back and gives each of its ops its final answer. */
static void finish_failed_group(kobo_ledger *ledger, const kobo_op *ops,
                                size_t group_start, size_t group_end_index,
                                size_t failed, int64_t now_ms,
                                kobo_result *results)
{
	rollback_group(ledger);
	/* Nothing below needs undoing: stop logging. */
	ledger->group_active = false;
	for (size_t i = group_start; i < group_end_index; i++) {
		kobo_result *result = &results[i];
		if (i != failed) {
			answer_not_applied(ledger, &ops[i], now_ms, result);
			continue;
		}
		/* The failing op keeps its code; its snapshot is retaken
		 * from the state as rolled back. */
		result->has_account = false;
		if (!result->has_transfer)
			continue;
		result->has_transfer = false;
		const kobo_op *op = &ops[i];
		int64_t slot = ledger_transfer_find(ledger, op_record_id(op));
		if (op->kind == KOBO_OP_CREATE_TRANSFER &&
		    is_business_rejection(result->code)) {
			KOBO__LEDGER_ASSERT(slot < 0);
			slot = ledger_record_transfer(ledger, op, now_ms,
			                       KOBO_STATUS_REJECTED,
			                       result->code);
		}
		if (slot >= 0)
			ledger_snapshot_transfer(ledger, slot, result);
	}
	group_end(ledger);
}

/* ---- Apply. ---- */

/* The fields of a new transfer or leg the edge does not validate. */
static bool transfer_op_valid(const kobo_transfer *transfer)
{
	return transfer->amount >= 1 &&
	       transfer->timeout_seconds <= KOBO_TIMEOUT_SECONDS_MAX &&
	       (transfer->metadata != NULL || transfer->metadata_len == 0);
}

/* The leg an op may carry: CREATE_TRANSFER LOCAL (no clearing account) or
 * DEBIT, SAGA_CREDIT / SAGA_ABORT CREDIT; a leg names its clearing
 * account. */
static bool transfer_op_leg_valid(const kobo_op *op)
{
	const kobo_transfer *transfer = &op->u.transfer;
	bool has_clearing = transfer->clearing[0] != '\0';
	if (op->kind != KOBO_OP_CREATE_TRANSFER)
		return transfer->leg == KOBO_LEG_CREDIT && has_clearing;
	if (transfer->leg == KOBO_LEG_LOCAL)
		return !has_clearing;
	/* A DEBIT leg names the base account: its lane must fit an id. */
	return transfer->leg == KOBO_LEG_DEBIT && has_clearing &&
	       ledger_debit_clearing_fits_lane(transfer);
}

/* A stored hold an op targets must come with its accounts on this shard. */
static bool target_accounts_put(const kobo_ledger *ledger, const char *id)
{
	int64_t slot = ledger_transfer_find(ledger, id);
	if (slot < 0)
		return true;
	const kobo_transfer *transfer = &ledger->transfers[slot].transfer;
	return !kobo_transfer_holds(transfer) ||
	       (ledger_account_find(ledger, kobo_transfer_debit_account(transfer)) >=
	                0 &&
	        ledger_account_find(ledger, kobo_transfer_credit_account(transfer)) >=
	                0);
}

/* Preconditions that make apply all-or-nothing: valid ops, and room for
 * every record the ops could create. New records are counted per op, not
 * per distinct id, which over-counts only ids the batch names twice: with
 * the accounts put being those kobo_ledger_account_ids() listed, the count
 * stays within the 3 ids per op the capacity is sized for. */
static int check_batch(const kobo_ledger *ledger, const kobo_op *ops,
                       size_t ops_count)
{
	if (ops_count > ledger->ops_max)
		return KOBO_EINVAL;
	uint32_t new_accounts = 0, new_transfers = 0;
	for (size_t i = 0; i < ops_count; i++) {
		const kobo_op *op = &ops[i];
		switch (op->kind) {
		case KOBO_OP_CREATE_ACCOUNT:
			if (op->u.account.metadata == NULL &&
			    op->u.account.metadata_len != 0)
				return KOBO_EINVAL;
			if (ledger_account_find(ledger, op->u.account.id) < 0)
				new_accounts++;
			break;
		case KOBO_OP_CREATE_TRANSFER:
		case KOBO_OP_SAGA_CREDIT:
		case KOBO_OP_SAGA_ABORT: {
			const kobo_transfer *transfer = &op->u.transfer;
			if (!transfer_op_valid(transfer) ||
			    !transfer_op_leg_valid(op))
				return KOBO_EINVAL;
			/* A saga step commits alone: never in a group. */
			if (transfer->leg != KOBO_LEG_LOCAL &&
			    op->atomic_group != 0)
				return KOBO_EINVAL;
			if (ledger_transfer_find(ledger, transfer->id) >= 0)
				break;
			new_transfers++;
			/* A leg may create its clearing account, a DEBIT leg
			 * its overflow lane instead (never both). */
			if (op->kind != KOBO_OP_SAGA_ABORT &&
			    transfer->leg != KOBO_LEG_LOCAL &&
			    (ledger_account_find(ledger, transfer->clearing) < 0 ||
			     transfer->leg == KOBO_LEG_DEBIT))
				new_accounts++;
			break;
		}
		case KOBO_OP_SAGA_POST:
		case KOBO_OP_SAGA_VOID:
			/* A saga step commits alone: never in a group. */
			if (op->atomic_group != 0)
				return KOBO_EINVAL;
			/* fall through */
		case KOBO_OP_POST:
		case KOBO_OP_VOID:
		case KOBO_OP_EXPIRE:
			if ((op->kind == KOBO_OP_POST ||
			     op->kind == KOBO_OP_SAGA_POST) &&
			    op->u.target.has_amount && op->u.target.amount < 1)
				return KOBO_EINVAL;
			if (!target_accounts_put(ledger, op->u.target.id))
				return KOBO_EINVAL;
			break;
		case KOBO_OP_SAGA_SETTLE:
			if (op->atomic_group != 0 ||
			    (unsigned)op->u.settle.step > KOBO_SAGA_VOIDING ||
			    (op->u.settle.refused &&
			     (unsigned)op->u.settle.refusal >=
			             KOBO_RESULT_CODE_COUNT))
				return KOBO_EINVAL;
			if (!target_accounts_put(ledger, op->u.settle.id))
				return KOBO_EINVAL;
			break;
		default:
			return KOBO_EINVAL;
		}
	}
	if (new_accounts > ledger->account_capacity - ledger->account_count ||
	    new_transfers > ledger->transfer_capacity - ledger->transfer_count)
		return KOBO_EFULL;
	return KOBO_OK;
}

static void check_invariants(kobo_ledger *ledger)
{
	KOBO__LEDGER_ASSERT(kobo_id_table_count(ledger->currency_table) == 0);
	for (uint32_t i = 0; i < ledger->account_count; i++) {
		const account_slot *slot = &ledger->accounts[i];
		const kobo_account *account = &slot->account;
		if (slot->change_index < 0) {
			/* 4: unlisted means unchanged. */
			KOBO__LEDGER_ASSERT(account->posted == slot->posted_before);
			KOBO__LEDGER_ASSERT(account->pending_out ==
			                    slot->pending_out_before);
			KOBO__LEDGER_ASSERT(account->pending_in ==
			                    slot->pending_in_before);
			continue;
		}
		/* 2 */
		KOBO__LEDGER_ASSERT(account->pending_out >= 0);
		KOBO__LEDGER_ASSERT(account->pending_in >= 0);
		/* 3 */
		int64_t available_before, available_after;
		if (!account->allow_negative &&
		    !__builtin_sub_overflow(slot->posted_before,
		                            slot->pending_out_before,
		                            &available_before) &&
		    available_before >= 0) {
			KOBO__LEDGER_ASSERT(!__builtin_sub_overflow(
				account->posted, account->pending_out,
				&available_after));
			KOBO__LEDGER_ASSERT(available_after >= 0);
		}
		/* 1: accumulate per currency; sums are appended in the order
		 * their currency is first seen. */
		uint32_t sum_slot;
		if (kobo_id_table_find(ledger->currency_table, account->currency,
		                       &sum_slot) != KOBO_OK) {
			sum_slot = kobo_id_table_count(ledger->currency_table);
			currency_sum *fresh = &ledger->currency_sums[sum_slot];
			memset(fresh, 0, sizeof(*fresh));
			memcpy(fresh->currency, account->currency,
			       sizeof(fresh->currency));
			int rc = kobo_id_table_insert(ledger->currency_table,
			                              fresh->currency, sum_slot);
			KOBO__LEDGER_ASSERT(rc == KOBO_OK);
		}
		currency_sum *sum = &ledger->currency_sums[sum_slot];
		sum->posted += (uint64_t)account->posted -
		               (uint64_t)slot->posted_before;
		sum->pending_out += (uint64_t)account->pending_out -
		                    (uint64_t)slot->pending_out_before;
		sum->pending_in += (uint64_t)account->pending_in -
		                   (uint64_t)slot->pending_in_before;
	}
	uint32_t sum_count = kobo_id_table_count(ledger->currency_table);
	for (uint32_t i = 0; i < sum_count; i++) {
		const currency_sum *sum = &ledger->currency_sums[i];
		KOBO__LEDGER_ASSERT(sum->posted == 0);
		KOBO__LEDGER_ASSERT(sum->pending_out == sum->pending_in);
	}
	kobo_id_table_reset(ledger->currency_table);
	/* 5 */
	for (uint32_t i = 0; i < ledger->transfer_change_count; i++) {
		const kobo_transfer *transfer =
			ledger->transfer_changes[i].transfer;
		if (transfer->status == KOBO_STATUS_POSTED)
			KOBO__LEDGER_ASSERT(transfer->posted_amount >= 1 &&
			                    transfer->posted_amount <=
			                            transfer->amount);
		else
			KOBO__LEDGER_ASSERT(transfer->posted_amount == 0);
		ledger_check_transfer_legs(transfer);
	}
}

int kobo_ledger_apply(kobo_ledger *ledger, const kobo_op *ops, size_t ops_count,
                      int64_t now_ms, kobo_result *results)
{
	int status = check_batch(ledger, ops, ops_count);
	if (status != KOBO_OK)
		return status;
	size_t i = 0;
	while (i < ops_count) {
		uint32_t group = ops[i].atomic_group;
		if (group == 0) {
			apply_op(ledger, &ops[i], now_ms, &results[i]);
			i++;
			continue;
		}
		/* One group: the maximal run of ops with this group number. */
		size_t group_start = i;
		size_t group_end_index = i;
		while (group_end_index < ops_count &&
		       ops[group_end_index].atomic_group == group)
			group_end_index++;
		group_begin(ledger);
		size_t failed = group_end_index;
		for (size_t j = group_start; j < group_end_index; j++) {
			apply_op(ledger, &ops[j], now_ms, &results[j]);
			if (op_failed_group(&results[j])) {
				failed = j;
				break;
			}
		}
		if (failed < group_end_index)
			finish_failed_group(ledger, ops, group_start,
			                    group_end_index, failed, now_ms,
			                    results);
		else
			group_end(ledger);
		i = group_end_index;
	}
	check_invariants(ledger);
	return KOBO_OK;
}

/* ---- Changes. ---- */

size_t kobo_ledger_changed_accounts(const kobo_ledger *ledger,
                                    const kobo_account_change **changes)
{
	*changes = ledger->account_changes;
	return ledger->account_change_count;
}

size_t kobo_ledger_changed_transfers(const kobo_ledger *ledger,
                                     const kobo_transfer_change **changes)
{
	*changes = ledger->transfer_changes;
	return ledger->transfer_change_count;
}
