/*
 * ledger_internal.h — private to src/ledger: the ledger's records, the
 * helpers its two rule files share (ledger.c: records, local rules, groups,
 * apply; ledger_saga.c: the cross-shard rules).
 *
 * A broken invariant in money code is a programmer error, and continuing
 * would persist a wrong balance. So unlike <assert.h> this check stays on in
 * release builds (Redis serverAssert, TIGER_STYLE): it prints what broke and
 * where, then aborts.
 */
#ifndef KOBO_LEDGER_INTERNAL_H
#define KOBO_LEDGER_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "ledger.h"

/* ---- Records. ---- */

typedef struct account_slot {
	kobo_account account;
	/* Balances when the account was put or created (invariants). */
	int64_t posted_before;
	int64_t pending_out_before;
	int64_t pending_in_before;
	int32_t change_index; /* position in account_changes, or -1 */
	bool is_new;
} account_slot;

typedef struct transfer_slot {
	kobo_transfer transfer;
	int32_t change_index;
	bool is_new;
} transfer_slot;

/* Undo log entries: the mutable parts of a record before an op of an atomic
 * group changed it. */
typedef struct account_undo {
	uint32_t slot;
	int64_t posted;
	int64_t pending_out;
	int64_t pending_in;
} account_undo;

typedef struct transfer_undo {
	uint32_t slot;
	/* A POST or VOID of a group may start a saga step on a DEBIT leg, so
	 * the whole mutable state is kept. */
	kobo_transfer_state state;
} transfer_undo;

/* Per-currency sums of one batch's deltas (invariant 1); modular arithmetic
 * is enough: a true sum of 0 is 0 mod 2^64. */
typedef struct currency_sum {
	char currency[KOBO_CURRENCY_LEN_MAX + 1];
	uint64_t posted;
	uint64_t pending_out;
	uint64_t pending_in;
} currency_sum;

struct kobo_ledger {
	size_t ops_max;

	account_slot *accounts;
	uint32_t account_count;
	uint32_t account_capacity;
	/* id -> slot of accounts; holds exactly the first account_count slots,
	 * in insertion order (so a group's rollback truncates it). */
	kobo_id_table *account_table;

	transfer_slot *transfers;
	uint32_t transfer_count;
	uint32_t transfer_capacity;
	kobo_id_table *transfer_table; /* like account_table */

	kobo_account_change *account_changes;
	uint32_t *account_change_slots; /* slot of each account_changes entry */
	uint32_t account_change_count;
	kobo_transfer_change *transfer_changes;
	uint32_t *transfer_change_slots;
	uint32_t transfer_change_count;

	/* The atomic group being applied, if any. */
	bool group_active;
	uint32_t group_account_count;
	uint32_t group_transfer_count;
	uint32_t group_account_change_count;
	uint32_t group_transfer_change_count;
	account_undo *account_undos;
	uint32_t account_undo_count;
	uint32_t account_undo_capacity;
	transfer_undo *transfer_undos;
	uint32_t transfer_undo_count;
	uint32_t transfer_undo_capacity;

	/* The overflow lane of each op's DEBIT leg, named by
	 * kobo_ledger_account_ids() (ops_max entries). */
	char (*lane_ids)[KOBO_ID_LEN_MAX + 1];

	/* Scratch for check_invariants(): one sum per currency of the changed
	 * accounts (at most account_capacity), found by currency_table and
	 * emptied after every check. */
	currency_sum *currency_sums;
	kobo_id_table *currency_table;
};

/* ---- Shared by ledger.c and ledger_saga.c (see each definition). ---- */

/* ledger.c */
int64_t ledger_account_find(const kobo_ledger *ledger, const char *id);
int64_t ledger_transfer_find(const kobo_ledger *ledger, const char *id);
uint32_t ledger_account_insert(kobo_ledger *ledger, const kobo_account *account, bool is_new);
void ledger_account_change_note(kobo_ledger *ledger, uint32_t slot_index);
kobo_transfer *ledger_transfer_touch(kobo_ledger *ledger, uint32_t slot_index);
void ledger_snapshot_transfer(const kobo_ledger *ledger, int64_t slot, kobo_result *result);
kobo_result_code ledger_answer_existing_transfer(const kobo_ledger *ledger, int64_t slot, const kobo_transfer *wanted, kobo_result *result);
uint32_t ledger_record_transfer(kobo_ledger *ledger, const kobo_op *op, int64_t now_ms, kobo_transfer_status status, kobo_result_code error_code);
void ledger_release_hold(kobo_ledger *ledger, uint32_t transfer_slot_index, kobo_void_reason reason, kobo_result_code error_code, int64_t now_ms);
bool ledger_post_fits(const kobo_ledger *ledger, const kobo_transfer *transfer, int64_t amount);
void ledger_post_hold(kobo_ledger *ledger, uint32_t transfer_slot_index, int64_t amount, int64_t now_ms);
void ledger_end_saga_step(kobo_transfer *transfer, kobo_result_code error_code);

/* ledger_saga.c */
bool ledger_debit_clearing_fits_lane(const kobo_transfer *transfer);
bool ledger_clearing_equal(const kobo_transfer *stored, const kobo_transfer *wanted);
kobo_account ledger_clearing_account(const kobo_transfer *leg, int64_t now_ms);
uint32_t ledger_create_clearing_account(kobo_ledger *ledger, const kobo_transfer *leg, int64_t now_ms);
kobo_result_code ledger_apply_saga_abort(kobo_ledger *ledger, const kobo_op *op, int64_t now_ms, kobo_result *result);
void ledger_start_saga_step(kobo_ledger *ledger, uint32_t transfer_slot_index, kobo_saga_state saga, int64_t saga_amount, kobo_void_reason saga_reason, int64_t now_ms);
kobo_result_code ledger_apply_saga_settle(kobo_ledger *ledger, const kobo_op *op, int64_t now_ms, kobo_result *result);
void ledger_check_transfer_legs(const kobo_transfer *transfer);


/* The ledger's name for kobo_assert (src/core/core.h): always on. */
#define KOBO__LEDGER_ASSERT(condition) kobo_assert(condition)

#endif /* KOBO_LEDGER_INTERNAL_H */
