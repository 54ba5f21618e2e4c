/*
 * test_ledger_random.c — a seeded randomized simulation of the ledger.
 *
 * An in-memory "store" (arrays) feeds the ledger the way the shard writer
 * does (reset, transfer_ids, put found transfers, account_ids, put found
 * accounts, apply, persist the changes), for thousands of random batches:
 * account creation, transfers between random accounts (cash accounts may go
 * negative), huge amounts, holds with timeouts under a moving clock, posts,
 * partial posts, voids, expiries, replays of old ids with the same and with
 * other parameters, and atomic groups.
 *
 * Two independent checks run after every batch:
 *   - a reference model (a second, deliberately plain implementation of the
 *     rules, using 128-bit arithmetic for overflow) must give the same result
 *     for every op and hold the same records as the store;
 *   - an auditor proves double entry on the store: per currency posted sums
 *     to 0 and pending_out to pending_in; every account's balances equal what
 *     its transfers say; no account that may not go negative is negative;
 *     every recorded rejection matches the code that was answered.
 *
 * The seed comes from KOBO_SEED or the clock and is printed first; any
 * failure replays exactly with the same seed. KOBO_RANDOM_BATCHES sets the
 * number of batches.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "../../src/ledger/ledger.h"

#define BATCHES_DEFAULT 40000
#define TRANSFERS_PER_BATCH_MAX 6 /* sizes the arrays; then only replays */
#define BATCH_OPS_MAX 32
#define ACCOUNTS_MAX 40   /* acc0..acc39 may be created */
#define ACCOUNT_NUMBERS 48 /* acc40..acc47 never exist */
#define CURRENCIES 2
#define METADATAS 2

static const char *const currencies[CURRENCIES] = {"NGN", "USD"};
static const char *const metadatas[METADATAS] = {"{}", "{\"n\":1}"};

typedef __int128 wide;

/* ---- Deterministic random numbers (splitmix64). ---- */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint32_t rng_below(uint32_t n)
{
	return (uint32_t)(rng_next() % n);
}

static bool rng_chance(uint32_t percent)
{
	return rng_below(100) < percent;
}

/* ---- Failure reporting. ---- */

static uint64_t seed;
static long batch_number;
static size_t op_number;

#define CHECK(condition, ...)                                                  \
	do {                                                                   \
		if (!(condition)) {                                            \
			print_error("seed=%llu batch=%ld op=%zu: ",            \
			            (unsigned long long)seed, batch_number,    \
			            op_number);                                \
			print_error(__VA_ARGS__);                              \
			print_error("\n  (check: %s)\n", #condition);          \
			_fail(__FILE__, __LINE__);                             \
		}                                                              \
	} while (0)

/* ---- Ids. ---- */

static int id_number(const char *id, const char *prefix)
{
	size_t length = strlen(prefix);
	if (strncmp(id, prefix, length) != 0)
		return -1;
	return atoi(id + length);
}

static int currency_index(const char *currency)
{
	for (int i = 0; i < CURRENCIES; i++)
		if (strcmp(currency, currencies[i]) == 0)
			return i;
	return -1;
}

static int metadata_index(const char *metadata, uint32_t length)
{
	for (int i = 0; i < METADATAS; i++)
		if (strlen(metadatas[i]) == length &&
		    memcmp(metadatas[i], metadata, length) == 0)
			return i;
	return -1;
}

/* ---- The store: what a real store would hold, as the ledger left it. ---- */

static kobo_account store_accounts[ACCOUNT_NUMBERS];
static bool store_account_exists[ACCOUNT_NUMBERS];
static kobo_transfer *store_transfers;
static bool *store_transfer_exists;
static size_t transfers_max;

/* Per account, what its stored transfers say (kept incrementally). */
typedef struct derived {
	wide posted, pending_out, pending_in;
} derived;
static derived derived_balances[ACCOUNT_NUMBERS];

static void derive(const kobo_transfer *transfer, int sign)
{
	int from = id_number(transfer->from, "acc");
	int to = id_number(transfer->to, "acc");
	if (transfer->status == KOBO_STATUS_POSTED) {
		derived_balances[from].posted -= sign * (wide)transfer->posted_amount;
		derived_balances[to].posted += sign * (wide)transfer->posted_amount;
	} else if (transfer->status == KOBO_STATUS_PENDING) {
		derived_balances[from].pending_out += sign * (wide)transfer->amount;
		derived_balances[to].pending_in += sign * (wide)transfer->amount;
	}
}

/* ---- The reference model. ---- */

typedef struct model_account {
	bool exists;
	int currency;
	bool allow_negative;
	int metadata;
	int64_t posted, pending_out, pending_in;
} model_account;

typedef struct model_transfer {
	bool exists;
	int from, to, currency, metadata;
	int64_t amount;
	bool pending;
	uint32_t timeout_seconds;
	kobo_transfer_status status;
	kobo_void_reason void_reason;
	kobo_result_code error_code;
	int64_t posted_amount;
	int64_t expires_at_ms;
} model_transfer;

static model_account model_accounts[ACCOUNT_NUMBERS];
static model_transfer *model_transfers;
static int next_transfer; /* tx0 .. tx(next_transfer - 1) were used */

/* What the model expects an op to answer. */
typedef struct expected {
	kobo_result_code code;
	bool has_account, has_transfer;
	model_account account;
	model_transfer transfer;
} expected;

/* Undo log of the model for atomic groups: old copies of records. */
typedef struct model_undo {
	bool is_account;
	int number;
	model_account account;
	model_transfer transfer;
} model_undo;

static model_undo model_undos[3 * BATCH_OPS_MAX];
static int model_undo_count;
static bool model_group;
static int group_transfer_marks_generation;
static int *transfer_marks; /* generation when recorded by a failed-group pass */

/* Every touched transfer of the batch, to compare with the store. */
static int touched_transfers[4 * BATCH_OPS_MAX];
static int touched_count;

static model_account *model_account_touch(int number)
{
	if (model_group) {
		model_undo *undo = &model_undos[model_undo_count++];
		undo->is_account = true;
		undo->number = number;
		undo->account = model_accounts[number];
	}
	return &model_accounts[number];
}

static model_transfer *model_transfer_touch(int number)
{
	if (model_group) {
		model_undo *undo = &model_undos[model_undo_count++];
		undo->is_account = false;
		undo->number = number;
		undo->transfer = model_transfers[number];
	}
	touched_transfers[touched_count++] = number;
	return &model_transfers[number];
}

static bool fits(wide value)
{
	return value >= INT64_MIN && value <= INT64_MAX;
}

static model_transfer transfer_from_op(const kobo_op *op)
{
	const kobo_transfer *wanted = &op->u.transfer;
	model_transfer transfer;
	memset(&transfer, 0, sizeof(transfer));
	transfer.from = id_number(wanted->from, "acc");
	transfer.to = id_number(wanted->to, "acc");
	transfer.currency = currency_index(wanted->currency);
	transfer.metadata = metadata_index(wanted->metadata,
	                                   wanted->metadata_len);
	transfer.amount = wanted->amount;
	transfer.pending = wanted->pending;
	transfer.timeout_seconds = wanted->timeout_seconds;
	return transfer;
}

static bool same_transfer_params(const model_transfer *a,
                                 const model_transfer *b)
{
	return a->from == b->from && a->to == b->to && a->amount == b->amount &&
	       a->currency == b->currency && a->pending == b->pending &&
	       a->timeout_seconds == b->timeout_seconds &&
	       a->metadata == b->metadata;
}

static void model_record(int number, const kobo_op *op,
                         kobo_transfer_status status, kobo_result_code code,
                         int64_t now_ms, expected *out)
{
	model_transfer *transfer = model_transfer_touch(number);
	*transfer = transfer_from_op(op);
	transfer->exists = true;
	transfer->status = status;
	transfer->error_code = status == KOBO_STATUS_REJECTED ? code
	                                                      : KOBO_RESULT_CREATED;
	if (status == KOBO_STATUS_POSTED)
		transfer->posted_amount = transfer->amount;
	if (status == KOBO_STATUS_PENDING && transfer->timeout_seconds > 0)
		transfer->expires_at_ms =
			now_ms + (int64_t)transfer->timeout_seconds * 1000;
	out->has_transfer = true;
	out->transfer = *transfer;
}

static kobo_result_code model_new_transfer_code(const model_transfer *t)
{
	if (t->from == t->to)
		return KOBO_RESULT_SAME_ACCOUNT;
	const model_account *from = &model_accounts[t->from];
	const model_account *to = &model_accounts[t->to];
	if (!from->exists || !to->exists)
		return KOBO_RESULT_ACCOUNT_NOT_FOUND;
	if (from->currency != t->currency || to->currency != t->currency)
		return KOBO_RESULT_CURRENCY_MISMATCH;
	if (!from->allow_negative &&
	    (wide)from->posted - from->pending_out - t->amount < 0)
		return KOBO_RESULT_INSUFFICIENT_FUNDS;
	wide from_posted = (wide)from->posted - t->amount;
	wide from_pending_out = (wide)from->pending_out + t->amount;
	if (!fits(from_posted) || !fits((wide)to->posted + t->amount) ||
	    !fits(from_pending_out) || !fits((wide)to->pending_in + t->amount))
		return KOBO_RESULT_AMOUNT_OVERFLOW;
	wide from_available = t->pending ? from->posted - from_pending_out
	                                 : from_posted - from->pending_out;
	if (!fits(from_available))
		return KOBO_RESULT_AMOUNT_OVERFLOW;
	return KOBO_RESULT_CREATED;
}

static void model_release(int number, kobo_void_reason reason)
{
	model_transfer *transfer = model_transfer_touch(number);
	model_account_touch(transfer->from)->pending_out -= transfer->amount;
	model_account_touch(transfer->to)->pending_in -= transfer->amount;
	transfer->status = KOBO_STATUS_VOIDED;
	transfer->void_reason = reason;
}

static bool model_expired(const model_transfer *transfer, int64_t now_ms)
{
	return transfer->expires_at_ms != 0 && now_ms >= transfer->expires_at_ms;
}

static void model_apply_op(const kobo_op *op, int64_t now_ms, expected *out)
{
	memset(out, 0, sizeof(*out));
	if (op->kind == KOBO_OP_CREATE_ACCOUNT) {
		const kobo_account *wanted = &op->u.account;
		int number = id_number(wanted->id, "acc");
		model_account *account = &model_accounts[number];
		int currency = currency_index(wanted->currency);
		int metadata = metadata_index(wanted->metadata,
		                              wanted->metadata_len);
		if (account->exists) {
			if (account->currency != currency ||
			    account->allow_negative != wanted->allow_negative ||
			    account->metadata != metadata) {
				out->code = KOBO_RESULT_ID_CONFLICT;
				return;
			}
			out->code = KOBO_RESULT_REPLAYED;
		} else {
			account = model_account_touch(number);
			memset(account, 0, sizeof(*account));
			account->exists = true;
			account->currency = currency;
			account->allow_negative = wanted->allow_negative;
			account->metadata = metadata;
			out->code = KOBO_RESULT_CREATED;
		}
		out->has_account = true;
		out->account = *account;
		return;
	}
	if (op->kind == KOBO_OP_CREATE_TRANSFER) {
		int number = id_number(op->u.transfer.id, "tx");
		model_transfer wanted = transfer_from_op(op);
		model_transfer *stored = &model_transfers[number];
		if (stored->exists) {
			if (!same_transfer_params(stored, &wanted)) {
				out->code = KOBO_RESULT_ID_CONFLICT;
				return;
			}
			out->code = KOBO_RESULT_REPLAYED;
			out->has_transfer = true;
			out->transfer = *stored;
			return;
		}
		kobo_result_code code = model_new_transfer_code(&wanted);
		out->code = code;
		if (code != KOBO_RESULT_CREATED) {
			model_record(number, op, KOBO_STATUS_REJECTED, code, now_ms,
			             out);
			return;
		}
		model_account *from = model_account_touch(wanted.from);
		model_account *to = model_account_touch(wanted.to);
		if (wanted.pending) {
			from->pending_out += wanted.amount;
			to->pending_in += wanted.amount;
		} else {
			from->posted -= wanted.amount;
			to->posted += wanted.amount;
		}
		model_record(number, op,
		             wanted.pending ? KOBO_STATUS_PENDING
		                            : KOBO_STATUS_POSTED,
		             code, now_ms, out);
		return;
	}
	/* POST, VOID, EXPIRE. */
	int number = id_number(op->u.target.id, "tx");
	model_transfer *transfer = number >= 0 && number < (int)transfers_max
	                                   ? &model_transfers[number]
	                                   : NULL;
	if (transfer == NULL || !transfer->exists) {
		out->code = op->kind == KOBO_OP_EXPIRE
		                    ? KOBO_RESULT_NOT_PENDING
		                    : KOBO_RESULT_TRANSFER_NOT_FOUND;
		return;
	}
	bool pending = transfer->status == KOBO_STATUS_PENDING;
	if (op->kind == KOBO_OP_POST) {
		if (transfer->status == KOBO_STATUS_POSTED) {
			out->code = KOBO_RESULT_REPLAYED;
		} else if (!pending) {
			out->code = KOBO_RESULT_NOT_PENDING;
		} else if (model_expired(transfer, now_ms)) {
			model_release(number, KOBO_VOID_EXPIRED);
			out->code = KOBO_RESULT_NOT_PENDING;
		} else {
			int64_t amount = op->u.target.has_amount
			                         ? op->u.target.amount
			                         : transfer->amount;
			if (amount > transfer->amount) {
				out->code = KOBO_RESULT_AMOUNT_EXCEEDS_PENDING;
			} else if (!fits((wide)model_accounts[transfer->to].posted +
			                 amount)) {
				out->code = KOBO_RESULT_AMOUNT_OVERFLOW;
			} else {
				transfer = model_transfer_touch(number);
				model_account *from =
					model_account_touch(transfer->from);
				model_account *to =
					model_account_touch(transfer->to);
				from->pending_out -= transfer->amount;
				to->pending_in -= transfer->amount;
				from->posted -= amount;
				to->posted += amount;
				transfer->posted_amount = amount;
				transfer->status = KOBO_STATUS_POSTED;
				out->code = KOBO_RESULT_UPDATED;
			}
		}
	} else if (op->kind == KOBO_OP_VOID) {
		if (transfer->status == KOBO_STATUS_VOIDED) {
			out->code = KOBO_RESULT_REPLAYED;
		} else if (pending) {
			model_release(number, model_expired(transfer, now_ms)
			                              ? KOBO_VOID_EXPIRED
			                              : KOBO_VOID_VOIDED);
			out->code = KOBO_RESULT_UPDATED;
		} else {
			out->code = KOBO_RESULT_NOT_PENDING;
		}
	} else {
		if (pending && model_expired(transfer, now_ms)) {
			model_release(number, KOBO_VOID_EXPIRED);
			out->code = KOBO_RESULT_UPDATED;
		} else {
			out->code = KOBO_RESULT_NOT_PENDING;
		}
	}
	out->has_transfer = true;
	out->transfer = model_transfers[number];
}

static bool model_failed(const expected *e)
{
	if (e->code == KOBO_RESULT_CREATED || e->code == KOBO_RESULT_UPDATED)
		return false;
	if (e->code == KOBO_RESULT_REPLAYED)
		return e->has_transfer &&
		       e->transfer.status == KOBO_STATUS_REJECTED;
	return true;
}

static bool is_rejection(kobo_result_code code)
{
	return code >= KOBO_RESULT_ACCOUNT_NOT_FOUND &&
	       code <= KOBO_RESULT_NOT_APPLIED;
}

/* A failed group after rollback: the answer of each op. */
static void model_failed_group(const kobo_op *ops, size_t count,
                               size_t failed, int64_t now_ms, expected *outs)
{
	while (model_undo_count > 0) {
		const model_undo *undo = &model_undos[--model_undo_count];
		if (undo->is_account)
			model_accounts[undo->number] = undo->account;
		else
			model_transfers[undo->number] = undo->transfer;
	}
	model_group = false;
	group_transfer_marks_generation++;
	for (size_t i = 0; i < count; i++) {
		const kobo_op *op = &ops[i];
		expected *out = &outs[i];
		if (i == failed) {
			out->has_account = false;
			if (!out->has_transfer)
				continue;
			int number = id_number(op->kind == KOBO_OP_CREATE_TRANSFER
			                               ? op->u.transfer.id
			                               : op->u.target.id,
			                       "tx");
			if (op->kind == KOBO_OP_CREATE_TRANSFER &&
			    is_rejection(out->code)) {
				model_record(number, op, KOBO_STATUS_REJECTED,
				             out->code, now_ms, out);
				transfer_marks[number] =
					group_transfer_marks_generation;
			} else {
				out->has_transfer = model_transfers[number].exists;
				out->transfer = model_transfers[number];
			}
			continue;
		}
		memset(out, 0, sizeof(*out));
		out->code = KOBO_RESULT_NOT_APPLIED;
		if (op->kind == KOBO_OP_CREATE_ACCOUNT) {
			const model_account *account =
				&model_accounts[id_number(op->u.account.id, "acc")];
			if (account->exists &&
			    account->currency ==
			            currency_index(op->u.account.currency) &&
			    account->allow_negative == op->u.account.allow_negative &&
			    account->metadata ==
			            metadata_index(op->u.account.metadata,
			                           op->u.account.metadata_len)) {
				out->code = KOBO_RESULT_REPLAYED;
				out->has_account = true;
				out->account = *account;
			} else if (account->exists) {
				out->code = KOBO_RESULT_ID_CONFLICT;
			}
			continue;
		}
		bool create = op->kind == KOBO_OP_CREATE_TRANSFER;
		int number = id_number(create ? op->u.transfer.id
		                              : op->u.target.id,
		                       "tx");
		bool known = number >= 0 && number < (int)transfers_max &&
		             model_transfers[number].exists;
		if (create && !known) {
			model_record(number, op, KOBO_STATUS_REJECTED,
			             KOBO_RESULT_NOT_APPLIED, now_ms, out);
			transfer_marks[number] = group_transfer_marks_generation;
			continue;
		}
		if (!known)
			continue;
		const model_transfer *stored = &model_transfers[number];
		if (create) {
			model_transfer other = transfer_from_op(op);
			if (!same_transfer_params(stored, &other)) {
				out->code = KOBO_RESULT_ID_CONFLICT;
				continue;
			}
		}
		if (transfer_marks[number] == group_transfer_marks_generation) {
			/* Recorded by this group's answers just now: a
			 * repeated create answers what the record says. */
			if (create) {
				out->code = KOBO_RESULT_REPLAYED;
				out->has_transfer = true;
				out->transfer = *stored;
			}
			continue;
		}
		model_transfer wanted;
		bool replay = false;
		switch (op->kind) {
		case KOBO_OP_CREATE_TRANSFER:
			wanted = transfer_from_op(op);
			replay = same_transfer_params(stored, &wanted);
			break;
		case KOBO_OP_POST:
			replay = stored->status == KOBO_STATUS_POSTED;
			break;
		case KOBO_OP_VOID:
			replay = stored->status == KOBO_STATUS_VOIDED;
			break;
		default:
			break;
		}
		if (replay) {
			out->code = KOBO_RESULT_REPLAYED;
			out->has_transfer = true;
			out->transfer = *stored;
		}
	}
}

static void model_apply(const kobo_op *ops, size_t count, int64_t now_ms,
                        expected *outs)
{
	size_t i = 0;
	while (i < count) {
		if (ops[i].atomic_group == 0) {
			model_apply_op(&ops[i], now_ms, &outs[i]);
			i++;
			continue;
		}
		size_t end = i;
		while (end < count && ops[end].atomic_group == ops[i].atomic_group)
			end++;
		model_group = true;
		model_undo_count = 0;
		size_t failed = end;
		for (size_t j = i; j < end; j++) {
			model_apply_op(&ops[j], now_ms, &outs[j]);
			if (model_failed(&outs[j])) {
				failed = j;
				break;
			}
		}
		if (failed < end)
			model_failed_group(&ops[i], end - i, failed - i, now_ms,
			                   &outs[i]);
		model_group = false;
		model_undo_count = 0;
		i = end;
	}
}

/* ---- Generating ops. ---- */

static int accounts_created; /* acc0..acc(accounts_created-1) were asked for */
static bool account_is_cash[ACCOUNTS_MAX];
static int account_currency[ACCOUNTS_MAX];
static int recent_holds[64];
static int recent_hold_count;

static int random_account(void)
{
	if (accounts_created == 0 || rng_chance(3))
		return ACCOUNTS_MAX + (int)rng_below(ACCOUNT_NUMBERS - ACCOUNTS_MAX);
	return (int)rng_below((uint32_t)accounts_created);
}

static int64_t random_amount(void)
{
	uint32_t roll = rng_below(100);
	if (roll < 70)
		return 1 + (int64_t)rng_below(1000);
	if (roll < 85)
		return 1 + (int64_t)(rng_next() % 1000000000ull);
	if (roll < 95)
		return 1 + (int64_t)(rng_next() >> (2 + rng_below(8)));
	return INT64_MAX - (int64_t)rng_below(3);
}

static void set_id(char *field, const char *prefix, int number)
{
	snprintf(field, KOBO_ID_LEN_MAX + 1, "%s%d", prefix, number);
}

static kobo_op make_account_op(int number)
{
	kobo_op op;
	memset(&op, 0, sizeof(op));
	op.kind = KOBO_OP_CREATE_ACCOUNT;
	snprintf(op.request_id, sizeof(op.request_id), "r%ld", batch_number);
	set_id(op.u.account.id, "acc", number);
	int index = number < ACCOUNTS_MAX ? number : 0;
	snprintf(op.u.account.currency, sizeof(op.u.account.currency), "%s",
	         currencies[account_currency[index]]);
	op.u.account.allow_negative = account_is_cash[index];
	op.u.account.metadata = metadatas[number % METADATAS];
	op.u.account.metadata_len = (uint32_t)strlen(op.u.account.metadata);
	return op;
}

static kobo_op make_transfer_op(int number, int from, int to, int64_t amount,
                                int currency, bool pending,
                                uint32_t timeout_seconds, int metadata)
{
	kobo_op op;
	memset(&op, 0, sizeof(op));
	op.kind = KOBO_OP_CREATE_TRANSFER;
	snprintf(op.request_id, sizeof(op.request_id), "r%ld", batch_number);
	set_id(op.u.transfer.id, "tx", number);
	set_id(op.u.transfer.from, "acc", from);
	set_id(op.u.transfer.to, "acc", to);
	snprintf(op.u.transfer.currency, sizeof(op.u.transfer.currency), "%s",
	         currencies[currency]);
	op.u.transfer.amount = amount;
	op.u.transfer.pending = pending;
	op.u.transfer.timeout_seconds = timeout_seconds;
	op.u.transfer.metadata = metadatas[metadata];
	op.u.transfer.metadata_len = (uint32_t)strlen(metadatas[metadata]);
	return op;
}

static kobo_op random_new_transfer(void)
{
	int from = random_account();
	int to = rng_chance(3) ? from : random_account();
	/* Cash accounts fund the others most of the time. */
	if (rng_chance(30) && accounts_created > 0) {
		int cash = (int)rng_below((uint32_t)accounts_created);
		if (account_is_cash[cash])
			from = cash;
	}
	int currency = from < ACCOUNTS_MAX && from < accounts_created
	                       ? account_currency[from]
	                       : 0;
	if (rng_chance(3))
		currency = 1 - currency;
	bool pending = rng_chance(30);
	uint32_t timeout = pending && rng_chance(60) ? 1 + rng_below(30) : 0;
	int number = next_transfer++;
	if (pending && recent_hold_count < 64)
		recent_holds[recent_hold_count++] = number;
	else if (pending)
		recent_holds[rng_below(64)] = number;
	return make_transfer_op(number, from, to, random_amount(), currency,
	                        pending, timeout, (int)rng_below(METADATAS));
}

static kobo_op random_target(kobo_op_kind kind);

/* A replay of an old transfer id, with the same or other parameters. */
static kobo_op random_replay(void)
{
	int number = (int)rng_below((uint32_t)next_transfer);
	const model_transfer *t = &model_transfers[number];
	if (!t->exists)
		return random_target(KOBO_OP_VOID);
	kobo_op op = make_transfer_op(number, t->from, t->to, t->amount,
	                              t->currency, t->pending,
	                              t->timeout_seconds, t->metadata);
	if (rng_chance(30)) {
		switch (rng_below(4)) {
		case 0:
			op.u.transfer.amount = t->amount == 1 ? 2 : t->amount - 1;
			break;
		case 1:
			op.u.transfer.pending = !t->pending;
			break;
		case 2:
			set_id(op.u.transfer.to, "acc", random_account());
			break;
		default:
			op.u.transfer.metadata = metadatas[1 - t->metadata];
			op.u.transfer.metadata_len =
				(uint32_t)strlen(op.u.transfer.metadata);
			break;
		}
	}
	return op;
}

static kobo_op random_target(kobo_op_kind kind)
{
	kobo_op op;
	memset(&op, 0, sizeof(op));
	op.kind = kind;
	snprintf(op.request_id, sizeof(op.request_id), "r%ld", batch_number);
	int number;
	if (recent_hold_count > 0 && rng_chance(80)) {
		/* Prefer holds that are still pending. */
		number = recent_holds[rng_below((uint32_t)recent_hold_count)];
		for (int tries = 0; tries < 3; tries++) {
			if (model_transfers[number].status == KOBO_STATUS_PENDING)
				break;
			number = recent_holds[rng_below(
				(uint32_t)recent_hold_count)];
		}
	} else if (next_transfer > 0 && rng_chance(90))
		number = (int)rng_below((uint32_t)next_transfer);
	else
		number = (int)transfers_max + 5; /* never exists */
	set_id(op.u.target.id, "tx", number);
	if (kind == KOBO_OP_POST && rng_chance(50) && number < next_transfer) {
		int64_t held = model_transfers[number].exists
		                       ? model_transfers[number].amount
		                       : 100;
		op.u.target.has_amount = true;
		op.u.target.amount = rng_chance(85)
		                             ? 1 + (int64_t)(rng_next() %
		                                             (uint64_t)held)
		                             : (held == INT64_MAX ? held
		                                                  : held + 1);
	}
	return op;
}

/* The ops of the batch being generated, so later ops can refer to transfers
 * that earlier ops of the same batch create. */
static const kobo_op *batch_ops;
static size_t batch_op_count;
static int batch_first_transfer;

static bool random_same_batch_op(kobo_op *out)
{
	if (batch_op_count == 0)
		return false;
	const kobo_op *earlier = &batch_ops[rng_below((uint32_t)batch_op_count)];
	if (earlier->kind != KOBO_OP_CREATE_TRANSFER ||
	    id_number(earlier->u.transfer.id, "tx") < batch_first_transfer)
		return false;
	uint32_t roll = rng_below(100);
	if (roll < 60) {
		*out = *earlier;
		if (roll < 20)
			out->u.transfer.amount = earlier->u.transfer.amount == 1
			                                 ? 2
			                                 : 1;
		return true;
	}
	memset(out, 0, sizeof(*out));
	out->kind = roll < 85 ? KOBO_OP_POST : KOBO_OP_VOID;
	memcpy(out->u.target.id, earlier->u.transfer.id,
	       sizeof(out->u.target.id));
	if (out->kind == KOBO_OP_POST && rng_chance(50)) {
		out->u.target.has_amount = true;
		out->u.target.amount = 1 + (int64_t)(rng_next() %
		        (uint64_t)earlier->u.transfer.amount);
	}
	return true;
}

static kobo_op random_op(void)
{
	kobo_op same_batch;
	if (rng_chance(8) && random_same_batch_op(&same_batch))
		return same_batch;
	uint32_t roll = rng_below(100);
	if (accounts_created < ACCOUNTS_MAX &&
	    (roll < 8 || accounts_created < 4)) {
		int number = accounts_created++;
		account_is_cash[number] = number % 5 == 0;
		account_currency[number] = number % 7 == 3 ? 1 : 0;
		return make_account_op(number);
	}
	if (roll < 11 && accounts_created > 0) {
		/* Replay or conflict on an account. */
		kobo_op op = make_account_op(
			(int)rng_below((uint32_t)accounts_created));
		if (rng_chance(30))
			op.u.account.allow_negative = !op.u.account.allow_negative;
		return op;
	}
	if (roll < 55 && (size_t)next_transfer + 1 < transfers_max)
		return random_new_transfer();
	if (roll < 65 && next_transfer > 0)
		return random_replay();
	if (roll < 80)
		return random_target(KOBO_OP_POST);
	if (roll < 90)
		return random_target(KOBO_OP_VOID);
	return random_target(KOBO_OP_EXPIRE);
}

/* ---- One batch through ledger, store and model. ---- */

static kobo_ledger *ledger;

static void load(const kobo_op *ops, size_t count)
{
	const char *ids[2 * BATCH_OPS_MAX + 1];
	size_t id_count;
	kobo_ledger_reset(ledger);
	kobo_ledger_transfer_ids(ops, count, ids, &id_count);
	for (size_t i = 0; i < id_count; i++) {
		int number = id_number(ids[i], "tx");
		CHECK(number >= 0, "odd transfer id %s", ids[i]);
		if (number < (int)transfers_max && store_transfer_exists[number])
			CHECK(kobo_ledger_put_transfer(
				      ledger, &store_transfers[number]) == KOBO_OK,
			      "put_transfer %s", ids[i]);
	}
	kobo_ledger_account_ids(ledger, ops, count, ids, &id_count);
	CHECK(id_count <= 2 * count + 1, "too many account ids: %zu", id_count);
	for (size_t i = 0; i < id_count; i++) {
		for (size_t j = 0; j < i; j++)
			CHECK(strcmp(ids[i], ids[j]) != 0, "duplicate id %s",
			      ids[i]);
		int number = id_number(ids[i], "acc");
		CHECK(number >= 0 && number < ACCOUNT_NUMBERS, "odd account %s",
		      ids[i]);
		if (store_account_exists[number])
			CHECK(kobo_ledger_put_account(
				      ledger, &store_accounts[number]) == KOBO_OK,
			      "put_account %s", ids[i]);
	}
}

static void persist(void)
{
	const kobo_account_change *accounts;
	size_t count = kobo_ledger_changed_accounts(ledger, &accounts);
	for (size_t i = 0; i < count; i++) {
		int number = id_number(accounts[i].account->id, "acc");
		CHECK(accounts[i].is_new == !store_account_exists[number],
		      "account %s is_new=%d but stored=%d",
		      accounts[i].account->id, accounts[i].is_new,
		      store_account_exists[number]);
		for (size_t j = 0; j < i; j++)
			CHECK(accounts[j].account != accounts[i].account,
			      "account %s listed twice", accounts[i].account->id);
		store_accounts[number] = *accounts[i].account;
		store_account_exists[number] = true;
	}
	const kobo_transfer_change *transfers;
	count = kobo_ledger_changed_transfers(ledger, &transfers);
	for (size_t i = 0; i < count; i++) {
		const kobo_transfer *transfer = transfers[i].transfer;
		int number = id_number(transfer->id, "tx");
		CHECK(number >= 0 && number < (int)transfers_max, "odd id %s",
		      transfer->id);
		CHECK(transfers[i].is_new == !store_transfer_exists[number],
		      "transfer %s is_new=%d but stored=%d", transfer->id,
		      transfers[i].is_new, store_transfer_exists[number]);
		if (store_transfer_exists[number])
			derive(&store_transfers[number], -1);
		store_transfers[number] = *transfer;
		store_transfer_exists[number] = true;
		derive(transfer, +1);
		touched_transfers[touched_count++] = number;
	}
}

/* ---- Checks. ---- */

static void check_transfer_equal(int number)
{
	const model_transfer *m = &model_transfers[number];
	CHECK(m->exists == store_transfer_exists[number],
	      "tx%d exists: model %d, store %d", number, m->exists,
	      store_transfer_exists[number]);
	if (!m->exists)
		return;
	const kobo_transfer *s = &store_transfers[number];
	CHECK(s->status == m->status, "tx%d status: model %s, store %s", number,
	      kobo_transfer_status_name(m->status),
	      kobo_transfer_status_name(s->status));
	CHECK(s->posted_amount == m->posted_amount,
	      "tx%d posted_amount: model %lld, store %lld", number,
	      (long long)m->posted_amount, (long long)s->posted_amount);
	CHECK(s->void_reason == m->void_reason, "tx%d void_reason: %d vs %d",
	      number, m->void_reason, s->void_reason);
	CHECK(s->expires_at_ms == m->expires_at_ms, "tx%d expires_at_ms", number);
	CHECK(s->amount == m->amount && s->pending == m->pending &&
	      s->timeout_seconds == m->timeout_seconds &&
	      id_number(s->from, "acc") == m->from &&
	      id_number(s->to, "acc") == m->to &&
	      currency_index(s->currency) == m->currency &&
	      metadata_index(s->metadata, s->metadata_len) == m->metadata,
	      "tx%d parameters differ", number);
	if (m->status == KOBO_STATUS_REJECTED)
		CHECK(s->error_code == m->error_code,
		      "tx%d error_code: model %s, store %s", number,
		      kobo_result_code_name(m->error_code),
		      kobo_result_code_name(s->error_code));
}

static void check_result(const kobo_op *op, const kobo_result *result,
                         const expected *e)
{
	CHECK(result->code == e->code, "kind %d %s: expected %s, saw %s",
	      op->kind,
	      op->kind == KOBO_OP_CREATE_ACCOUNT ? op->u.account.id
	      : op->kind == KOBO_OP_CREATE_TRANSFER ? op->u.transfer.id
	                                           : op->u.target.id,
	      kobo_result_code_name(e->code),
	      kobo_result_code_name(result->code));
	CHECK(result->has_account == e->has_account,
	      "has_account: expected %d, saw %d", e->has_account,
	      result->has_account);
	CHECK(result->has_transfer == e->has_transfer,
	      "has_transfer: expected %d, saw %d", e->has_transfer,
	      result->has_transfer);
	if (result->has_account) {
		CHECK(result->account.posted == e->account.posted &&
		      result->account.pending_out == e->account.pending_out &&
		      result->account.pending_in == e->account.pending_in,
		      "account snapshot balances differ");
	}
	if (result->has_transfer) {
		CHECK(result->transfer.status == e->transfer.status,
		      "snapshot status: expected %s, saw %s",
		      kobo_transfer_status_name(e->transfer.status),
		      kobo_transfer_status_name(result->transfer.status));
		CHECK(result->transfer.posted_amount == e->transfer.posted_amount,
		      "snapshot posted_amount: expected %lld, saw %lld",
		      (long long)e->transfer.posted_amount,
		      (long long)result->transfer.posted_amount);
		CHECK(result->transfer.void_reason == e->transfer.void_reason,
		      "snapshot void_reason");
		if (result->transfer.status == KOBO_STATUS_REJECTED)
			CHECK(result->transfer.error_code ==
			              e->transfer.error_code,
			      "snapshot error_code");
	}
	/* The answer agrees with what is now recorded. */
	if (op->kind == KOBO_OP_CREATE_TRANSFER && is_rejection(result->code) &&
	    result->has_transfer) {
		int number = id_number(op->u.transfer.id, "tx");
		CHECK(store_transfer_exists[number] &&
		      store_transfers[number].status == KOBO_STATUS_REJECTED &&
		      store_transfers[number].error_code == result->code,
		      "rejection %s of %s is not recorded as such",
		      kobo_result_code_name(result->code), op->u.transfer.id);
	}
	if (op->kind == KOBO_OP_CREATE_TRANSFER &&
	    result->code == KOBO_RESULT_CREATED) {
		int number = id_number(op->u.transfer.id, "tx");
		CHECK(store_transfer_exists[number] &&
		      store_transfers[number].status != KOBO_STATUS_REJECTED,
		      "created %s is not recorded", op->u.transfer.id);
	}
}

/* Double entry and history on the store alone. */
static void audit(bool full)
{
	if (full) {
		memset(derived_balances, 0, sizeof(derived_balances));
		for (size_t i = 0; i < transfers_max; i++)
			if (store_transfer_exists[i])
				derive(&store_transfers[i], +1);
	}
	wide posted[CURRENCIES] = {0}, pending_out[CURRENCIES] = {0},
	     pending_in[CURRENCIES] = {0};
	for (int n = 0; n < ACCOUNT_NUMBERS; n++) {
		const derived *d = &derived_balances[n];
		if (!store_account_exists[n]) {
			CHECK(d->posted == 0 && d->pending_out == 0 &&
			      d->pending_in == 0,
			      "acc%d does not exist but has money", n);
			continue;
		}
		const kobo_account *a = &store_accounts[n];
		int currency = currency_index(a->currency);
		posted[currency] += a->posted;
		pending_out[currency] += a->pending_out;
		pending_in[currency] += a->pending_in;
		CHECK(d->posted == a->posted, "acc%d posted %lld, history says %lld",
		      n, (long long)a->posted, (long long)d->posted);
		CHECK(d->pending_out == a->pending_out,
		      "acc%d pending_out %lld, history says %lld", n,
		      (long long)a->pending_out, (long long)d->pending_out);
		CHECK(d->pending_in == a->pending_in,
		      "acc%d pending_in %lld, history says %lld", n,
		      (long long)a->pending_in, (long long)d->pending_in);
		CHECK(a->pending_out >= 0 && a->pending_in >= 0,
		      "acc%d negative pending", n);
		if (!a->allow_negative)
			CHECK((wide)a->posted - a->pending_out >= 0,
			      "acc%d may not go negative but has %lld available",
			      n, (long long)(a->posted - a->pending_out));
		const model_account *m = &model_accounts[n];
		CHECK(m->exists && m->posted == a->posted &&
		      m->pending_out == a->pending_out &&
		      m->pending_in == a->pending_in,
		      "acc%d differs from the model", n);
	}
	for (int c = 0; c < CURRENCIES; c++) {
		CHECK(posted[c] == 0, "%s posted sums to non-zero", currencies[c]);
		CHECK(pending_out[c] == pending_in[c],
		      "%s pending_out != pending_in", currencies[c]);
	}
	for (int n = 0; n < ACCOUNT_NUMBERS; n++)
		CHECK(model_accounts[n].exists == store_account_exists[n],
		      "acc%d existence differs from the model", n);
	if (full)
		for (size_t i = 0; i < transfers_max; i++)
			check_transfer_equal((int)i);
}

static long env_long(const char *name, long fallback)
{
	const char *value = getenv(name);
	if (value == NULL || *value == '\0')
		return fallback;
	return strtol(value, NULL, 10);
}

static void test_random_batches(void **state)
{
	(void)state;
	long batches = env_long("KOBO_RANDOM_BATCHES", BATCHES_DEFAULT);
	transfers_max = (size_t)batches * TRANSFERS_PER_BATCH_MAX +
	                BATCH_OPS_MAX;
	store_transfers = calloc(transfers_max, sizeof(*store_transfers));
	store_transfer_exists = calloc(transfers_max, sizeof(bool));
	model_transfers = calloc(transfers_max, sizeof(*model_transfers));
	transfer_marks = calloc(transfers_max, sizeof(int));
	assert_non_null(store_transfers);
	assert_non_null(store_transfer_exists);
	assert_non_null(model_transfers);
	assert_non_null(transfer_marks);
	ledger = kobo_ledger_create(BATCH_OPS_MAX);
	assert_non_null(ledger);

	static kobo_op ops[BATCH_OPS_MAX];
	static kobo_result results[BATCH_OPS_MAX];
	static expected outs[BATCH_OPS_MAX];
	int64_t now_ms = 1700000000000LL;
	long counts[KOBO_RESULT_CODE_COUNT] = {0};
	long full_audit_every = batches / 20 > 500 ? batches / 20 : 500;
	for (batch_number = 0; batch_number < batches; batch_number++) {
		now_ms += rng_below(100) < 70 ? rng_below(300) : rng_below(4000);
		size_t count = rng_chance(5) ? BATCH_OPS_MAX
		                             : 1 + rng_below(16);
		uint32_t group = 0;
		batch_ops = ops;
		batch_first_transfer = next_transfer;
		for (size_t i = 0; i < count; i++) {
			batch_op_count = i;
			ops[i] = random_op();
			/* Runs of ops in atomic groups. */
			if (rng_chance(5))
				group = rng_chance(50) ? (uint32_t)(i + 1) : 0;
			ops[i].atomic_group = group;
		}
		touched_count = 0;
		load(ops, count);
		op_number = 0;
		CHECK(kobo_ledger_apply(ledger, ops, count, now_ms, results) ==
		              KOBO_OK,
		      "apply failed");
		persist();
		model_apply(ops, count, now_ms, outs);
		for (size_t i = 0; i < count; i++) {
			op_number = i;
			check_result(&ops[i], &results[i], &outs[i]);
			counts[results[i].code]++;
		}
		op_number = 0;
		for (int i = 0; i < touched_count; i++)
			check_transfer_equal(touched_transfers[i]);
		/* The full audit walks every transfer: about 20 per run. */
		audit(batch_number % full_audit_every == full_audit_every - 1 ||
		      batch_number == batches - 1);
	}
	printf("batches=%ld transfers=%d accounts=%d\n", batches, next_transfer,
	       accounts_created);
	for (int code = 0; code < KOBO_RESULT_CODE_COUNT; code++)
		printf("  %-24s %ld\n", kobo_result_code_name(code), counts[code]);
	kobo_ledger_destroy(ledger);
	free(store_transfers);
	free(store_transfer_exists);
	free(model_transfers);
	free(transfer_marks);
}

int main(void)
{
	seed = (uint64_t)env_long("KOBO_SEED", (long)time(NULL));
	printf("seed=%llu; replay with KOBO_SEED=%llu\n",
	       (unsigned long long)seed, (unsigned long long)seed);
	fflush(stdout);
	rng_state = seed;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_random_batches),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
