/*
 * ledger.h — the ledger state machine: Kobo's business rules, once.
 *
 * Pure C: no I/O, no clocks, no locks, and no allocation after
 * kobo_ledger_create(). The shard writer drives it once per batch:
 *
 *   1. kobo_ledger_reset()                      forget the previous batch
 *   2. kobo_ledger_transfer_ids()               which transfers to load
 *      kobo_ledger_put_transfer() for each one the store has
 *   3. kobo_ledger_account_ids()                which accounts to load (named
 *      kobo_ledger_put_account() for each       by ops or by loaded transfers)
 *   4. kobo_ledger_apply()                      one result per op
 *   5. kobo_ledger_changed_accounts() /         what the store must persist
 *      kobo_ledger_changed_transfers()
 *
 * Time is an input (now_ms), so the same batch over the same state always
 * gives the same results: the randomized tests replay failures from a seed.
 *
 * Invariants asserted after every apply (a broken one stops the process):
 *   - per currency, the sum of posted deltas of the batch is 0 and the sum of
 *     pending_out deltas equals the sum of pending_in deltas (double entry);
 *   - an account with allow_negative == false never ends with available < 0
 *     unless it already was below 0 before the batch touched it;
 *   - pending_out and pending_in are never negative.
 */
#ifndef KOBO_LEDGER_H
#define KOBO_LEDGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"

/* Limits, status codes, the id hash and kobo_assert: src/core/core.h. */

/* ---- Domain types. ---- */

typedef enum kobo_transfer_status {
	KOBO_STATUS_PROCESSING = 0, /* cross-shard saga under way (issue 3) */
	KOBO_STATUS_PENDING,        /* a hold: amount left available, not moved */
	KOBO_STATUS_POSTED,         /* moved: posted_amount left from, reached to */
	KOBO_STATUS_VOIDED,         /* a hold released; see void_reason */
	KOBO_STATUS_REJECTED,       /* refused by a business rule; moved nothing */
} kobo_transfer_status;

typedef enum kobo_void_reason {
	KOBO_VOID_NONE = 0,
	KOBO_VOID_VOIDED,      /* POST /v1/transfers/{id}/void */
	KOBO_VOID_EXPIRED,     /* timeout_seconds elapsed */
	KOBO_VOID_COMPENSATED, /* a cross-shard saga refunded the payer */
} kobo_void_reason;

/* Outcome of one op; the HTTP layer maps these to statuses and codes. */
typedef enum kobo_result_code {
	KOBO_RESULT_CREATED = 0,     /* new account or transfer (201) */
	KOBO_RESULT_REPLAYED,        /* same id, same parameters: original answer */
	KOBO_RESULT_UPDATED,         /* post/void/expire changed a hold (200) */
	KOBO_RESULT_ID_CONFLICT,     /* same id, other parameters (409) */
	/* Business rejections (422). For a new transfer the ledger records the
	 * transfer as rejected with this code, so a retry replays it. */
	KOBO_RESULT_ACCOUNT_NOT_FOUND,
	KOBO_RESULT_INSUFFICIENT_FUNDS,
	KOBO_RESULT_CURRENCY_MISMATCH,
	KOBO_RESULT_SAME_ACCOUNT,
	KOBO_RESULT_AMOUNT_OVERFLOW,
	KOBO_RESULT_NOT_APPLIED,     /* another op of its atomic group failed */
	/* Rejections of post/void (not recorded: they change nothing). */
	KOBO_RESULT_TRANSFER_NOT_FOUND,     /* 404 */
	KOBO_RESULT_NOT_PENDING,            /* 422 */
	KOBO_RESULT_AMOUNT_EXCEEDS_PENDING, /* 422: post amount > held amount */
	/* A cross-shard credit leg refused because its saga passed its
	 * deadline first (KOBO_OP_SAGA_ABORT); the payer was refunded. */
	KOBO_RESULT_SAGA_TIMEOUT,
	/* Post/void of a cross-shard transfer whose saga step is still under
	 * way (409 with Retry-After): retry the same request shortly; it is
	 * not recorded and changes nothing. */
	KOBO_RESULT_TRANSFER_IN_PROGRESS,
	KOBO_RESULT_CODE_COUNT
} kobo_result_code;

/* snake_case wire name of a result code ("insufficient_funds"), static. */
const char *kobo_result_code_name(kobo_result_code code);
/* Parses a wire name back; returns KOBO_RESULT_CODE_COUNT when unknown. */
kobo_result_code kobo_result_code_parse(const char *name);
const char *kobo_transfer_status_name(kobo_transfer_status status);
const char *kobo_void_reason_name(kobo_void_reason reason); /* NULL for NONE */

/* Where a transfer's money moves on the shard that stores this record.
 *
 * A transfer whose accounts live on two shards A (payer) and B (payee) is
 * stored on both, with the same logical from/to/amount, as two legs joined
 * by clearing accounts (see src/saga/saga.h for the protocol):
 *
 *   leg      shard  money moves on this shard        record's role
 *   LOCAL    any    from ──▶ to                      an ordinary transfer
 *   DEBIT    A      from ──▶ clearing (A's for B)    the truth; drives the saga
 *   CREDIT   B      clearing (B's for A) ──▶ to      follows A, step by step
 */
typedef enum kobo_leg {
	KOBO_LEG_LOCAL = 0,
	KOBO_LEG_DEBIT,
	KOBO_LEG_CREDIT,
} kobo_leg;

/* Saga progress of a DEBIT leg (always NONE on LOCAL and CREDIT legs).
 * While it is not NONE the record's status is PROCESSING and the debit leg
 * holds `amount` (from.pending_out, clearing.pending_in). */
typedef enum kobo_saga_state {
	KOBO_SAGA_NONE = 0, /* no step outstanding */
	KOBO_SAGA_RESERVED, /* created: waiting for the credit leg */
	KOBO_SAGA_POSTING,  /* post asked (saga_amount): waiting for B to post */
	KOBO_SAGA_VOIDING,  /* void asked (saga_reason): waiting for B to void */
} kobo_saga_state;

const char *kobo_leg_name(kobo_leg leg);               /* "local", … */
const char *kobo_saga_state_name(kobo_saga_state state); /* "none", … */
/* Parsers of the wire names (names.c, beside the names): true and *out set
 * when name is one; a NULL void reason parses as NONE. */
bool kobo_transfer_status_parse(const char *name, kobo_transfer_status *out);
bool kobo_void_reason_parse(const char *name, kobo_void_reason *out);
bool kobo_leg_parse(const char *name, kobo_leg *out);
bool kobo_saga_state_parse(const char *name, kobo_saga_state *out);

typedef struct kobo_account {
	char id[KOBO_ID_LEN_MAX + 1];
	char currency[KOBO_CURRENCY_LEN_MAX + 1];
	bool allow_negative;
	int64_t posted;      /* posted credits - posted debits */
	int64_t pending_out; /* sum of open holds out of the account, >= 0 */
	int64_t pending_in;  /* sum of open holds into the account, >= 0 */
	/* Compact JSON object text, not NUL-terminated, never NULL ("{}" at
	 * least). Borrowed: valid as long as whoever filled the struct says. */
	const char *metadata;
	uint32_t metadata_len;
	int64_t created_at_ms; /* Unix epoch milliseconds, UTC */
	/* The id of the API key whose request created the account, "" when
	 * none did (auth off, or created by Kobo itself: clearing accounts). */
	char created_by[KOBO_KEY_ID_LEN + 1];
} kobo_account;

typedef struct kobo_transfer {
	char id[KOBO_ID_LEN_MAX + 1];
	char from[KOBO_ID_LEN_MAX + 1];
	char to[KOBO_ID_LEN_MAX + 1];
	char currency[KOBO_CURRENCY_LEN_MAX + 1];
	char request_id[KOBO_REQUEST_ID_LEN_MAX + 1];
	/* As kobo_account.created_by; a CREDIT leg carries its DEBIT leg's. */
	char created_by[KOBO_KEY_ID_LEN + 1];
	/* The trace id of the request that created the transfer ("" when
	 * none), fixed at creation like request_id; a CREDIT leg carries its
	 * DEBIT leg's, so saga steps rejoin the request's trace. */
	char trace_id[KOBO_TRACE_ID_LEN + 1];
	int64_t amount;        /* as requested, 1..INT64_MAX */
	int64_t posted_amount; /* what moved: 0 unless POSTED */
	bool pending;          /* requested as a hold */
	uint32_t timeout_seconds;
	int64_t expires_at_ms; /* 0: never; else created_at + timeout */
	kobo_transfer_status status;
	kobo_void_reason void_reason;
	/* REJECTED: why. VOIDED with COMPENSATED: why the credit leg was
	 * refused. PENDING after a refused cross-shard post: why it was
	 * refused. KOBO_RESULT_CREATED otherwise. */
	kobo_result_code error_code;
	const char *metadata;        /* as in kobo_account */
	uint32_t metadata_len;
	int64_t created_at_ms;
	int64_t updated_at_ms;
	/* Cross-shard transfers (LOCAL: leg 0, clearing "", saga NONE). */
	kobo_leg leg;
	char clearing[KOBO_ID_LEN_MAX + 1]; /* this shard's clearing account */
	kobo_saga_state saga;
	int64_t saga_amount;          /* POSTING: the amount to post */
	kobo_void_reason saga_reason; /* VOIDING: the reason to record */
} kobo_transfer;

/* What of a stored transfer may change after it is created — the one list
 * of those fields. The ledger's undo log, the stores' updates and their
 * schema notes all move exactly these, through the two functions below;
 * everything else in kobo_transfer is fixed at creation. */
typedef struct kobo_transfer_state {
	kobo_transfer_status status;
	int64_t posted_amount;
	kobo_void_reason void_reason;
	kobo_result_code error_code;
	int64_t updated_at_ms;
	kobo_saga_state saga;
	int64_t saga_amount;
	kobo_void_reason saga_reason;
} kobo_transfer_state;

static inline kobo_transfer_state kobo_transfer_state_of(const kobo_transfer *t)
{
	kobo_transfer_state state = {
		.status = t->status,
		.posted_amount = t->posted_amount,
		.void_reason = t->void_reason,
		.error_code = t->error_code,
		.updated_at_ms = t->updated_at_ms,
		.saga = t->saga,
		.saga_amount = t->saga_amount,
		.saga_reason = t->saga_reason,
	};
	return state;
}

static inline void kobo_transfer_state_set(kobo_transfer *t,
                                           const kobo_transfer_state *state)
{
	t->status = state->status;
	t->posted_amount = state->posted_amount;
	t->void_reason = state->void_reason;
	t->error_code = state->error_code;
	t->updated_at_ms = state->updated_at_ms;
	t->saga = state->saga;
	t->saga_amount = state->saga_amount;
	t->saga_reason = state->saga_reason;
}

/* The accounts of this shard a transfer debits and credits:
 * LOCAL from/to, DEBIT from/clearing, CREDIT clearing/to. */
static inline const char *kobo_transfer_debit_account(const kobo_transfer *t)
{
	return t->leg == KOBO_LEG_CREDIT ? t->clearing : t->from;
}

static inline const char *kobo_transfer_credit_account(const kobo_transfer *t)
{
	return t->leg == KOBO_LEG_DEBIT ? t->clearing : t->to;
}

/* true when the record holds money as a hold on this shard: PENDING, or
 * PROCESSING (a DEBIT leg whose saga is under way). */
static inline bool kobo_transfer_holds(const kobo_transfer *t)
{
	return t->status == KOBO_STATUS_PENDING ||
	       t->status == KOBO_STATUS_PROCESSING;
}

/* Available balance: posted - pending_out. Callers must have checked that it
 * does not overflow (the ledger never stores an account where it would). */
static inline int64_t kobo_account_available(const kobo_account *account)
{
	return account->posted - account->pending_out;
}

/* ---- Clearing lanes. ----
 *
 * Shard A's clearing account for shard B in a currency (named by the shard
 * layer, "kobo:clearing:<A>:<B>:<CUR>") is shared by every A -> B transfer:
 * its totals are the sum of everyone's money in flight and moved. So that
 * one client's huge transfer can never make another client's transfer fail
 * on Kobo's own account, a DEBIT leg that would overflow the base account
 * (its posted + pending_in past INT64_MAX, counting every hold as posted)
 * goes to an overflow lane of its own: the base id + ":" + 32 hex digits
 * derived from the transfer id (kobo_clearing_lane_id). A fresh lane holds
 * any amount. The CREDIT leg on B uses B's account of the same lane, so
 * each lane pair nets to zero like the base pair. */
#define KOBO_CLEARING_LANE_HEX 32
#define KOBO_CLEARING_LANE_LEN_MAX (1 + KOBO_CLEARING_LANE_HEX)

/* Writes base + ":" + the lane digits of transfer_id into out
 * (KOBO_ID_LEN_MAX + 1 bytes). base must be a clearing id without a lane
 * (at most KOBO_ID_LEN_MAX - KOBO_CLEARING_LANE_LEN_MAX chars). */
void kobo_clearing_lane_id(char *out, const char *base, const char *transfer_id);

/* ---- Ops: what a batch asks for. ---- */

typedef enum kobo_op_kind {
	KOBO_OP_CREATE_ACCOUNT = 0,
	KOBO_OP_CREATE_TRANSFER,
	KOBO_OP_POST,   /* post a hold, in full or in part */
	KOBO_OP_VOID,   /* release a hold */
	KOBO_OP_EXPIRE, /* internal: void a hold whose expiry has passed */
	/* Saga steps (src/saga), sent by the saga runner, never by clients. */
	KOBO_OP_SAGA_CREDIT, /* step 2 on B: create the CREDIT leg */
	KOBO_OP_SAGA_ABORT,  /* step 2' on B: refuse the CREDIT leg for good */
	KOBO_OP_SAGA_SETTLE, /* step 3 on A: finish the DEBIT leg */
	KOBO_OP_SAGA_POST,   /* step 2 of a post on B: post the CREDIT leg */
	KOBO_OP_SAGA_VOID,   /* step 2 of a void on B: void the CREDIT leg */
} kobo_op_kind;

typedef struct kobo_op {
	kobo_op_kind kind;
	/* 0: independent. Ops of a batch sharing a non-zero group apply all or
	 * none; they must be contiguous in the batch. */
	uint32_t atomic_group;
	char request_id[KOBO_REQUEST_ID_LEN_MAX + 1];
	/* The API key id of the request ("" when none): recorded as
	 * created_by on the account or transfer the op creates. */
	char created_by[KOBO_KEY_ID_LEN + 1];
	/* The request's traceparent trace id ("" when none): recorded on the
	 * events the op makes (events.h) and as trace_id on the transfer the
	 * op creates; saga step ops carry the DEBIT leg's. */
	char trace_id[KOBO_TRACE_ID_LEN + 1];
	union {
		/* CREATE_ACCOUNT: id, currency, allow_negative, metadata. */
		kobo_account account;
		/* CREATE_TRANSFER: id, from, to, amount, currency, pending,
		 * timeout_seconds, metadata, and leg + clearing: LOCAL, or
		 * DEBIT when `to` lives on another shard (clearing = this
		 * shard's clearing account for it; it is created on first
		 * use). SAGA_CREDIT / SAGA_ABORT: the same fields with leg
		 * CREDIT. Other fields are ignored. */
		kobo_transfer transfer;
		/* POST, VOID, EXPIRE, SAGA_POST, SAGA_VOID. has_amount/
		 * amount only for POST and SAGA_POST. */
		struct {
			char id[KOBO_ID_LEN_MAX + 1];
			bool has_amount;
			int64_t amount;
		} target;
		/* SAGA_SETTLE: what B answered to the outstanding step. */
		struct {
			char id[KOBO_ID_LEN_MAX + 1];
			bool refused;               /* B refused for good */
			kobo_result_code refusal;   /* why, when refused */
			/* The step B answered: the settle applies only while
			 * the record is still in it, so a late or repeated
			 * answer can never settle a later step. NONE: not
			 * checked (hand-built test ops). */
			kobo_saga_state step;
		} settle;
	} u;
} kobo_op;

/* The result of one op. The account/transfer snapshot (the state after the
 * op, or the replayed original) is valid until the next kobo_ledger_reset();
 * its metadata pointer is borrowed from the op or from what was put. */
typedef struct kobo_result {
	kobo_result_code code;
	bool has_account;  /* CREATE_ACCOUNT results */
	bool has_transfer; /* transfer results, including recorded rejections */
	kobo_account account;
	kobo_transfer transfer;
} kobo_result;

/* ---- The state machine. ---- */

typedef struct kobo_ledger kobo_ledger;

/* Allocates a ledger able to hold ops_max ops per batch (1..KOBO_BATCH_OPS_MAX)
 * and the accounts and transfers they touch. Returns NULL when out of memory.
 * Owned by the caller; free with kobo_ledger_destroy(). */
kobo_ledger *kobo_ledger_create(size_t ops_max);
void kobo_ledger_destroy(kobo_ledger *ledger);

/* Forgets all accounts, transfers and changes of the previous batch. */
void kobo_ledger_reset(kobo_ledger *ledger);

/* Lists the distinct transfer ids the ops refer to (POST/VOID/EXPIRE/
 * SAGA_SETTLE targets, and CREATE_TRANSFER/SAGA_CREDIT/SAGA_ABORT ids for
 * replay detection) into ids[0..*count). ids must hold ops_count entries.
 * The strings are borrowed from ops. */
void kobo_ledger_transfer_ids(const kobo_op *ops, size_t ops_count,
                              const char **ids, size_t *count);

/* Entries the id lists below may need for ops_count ops: a DEBIT leg names
 * its payer, its clearing account and its overflow lane. */
#define KOBO_LEDGER_ACCOUNT_IDS_MAX(ops_count) (3 * (size_t)(ops_count) + 1)

/* Lists the distinct account ids of this shard the batch may touch: those
 * the ops name (for a leg, its local account, its clearing account and, for
 * a DEBIT leg, the overflow lane it would use: see "Clearing lanes") and
 * the debit/credit accounts of every put transfer that a POST, VOID, EXPIRE
 * or SAGA_SETTLE targets.
 * Both id lists come back sorted (strcmp): a deadlock-free lock order. ids must hold
 * KOBO_LEDGER_ACCOUNT_IDS_MAX(ops_count) entries. Call after putting the loaded transfers. Strings are borrowed from
 * ops or from the ledger (valid until reset). */
void kobo_ledger_account_ids(kobo_ledger *ledger, const kobo_op *ops,
                             size_t ops_count, const char **ids, size_t *count);

/* Hands the ledger an existing account / transfer as stored. The struct is
 * copied; its metadata must stay valid until reset. Returns KOBO_EFULL when
 * the capacity is exhausted, KOBO_EINVAL when the id was already put. */
int kobo_ledger_put_account(kobo_ledger *ledger, const kobo_account *account);
int kobo_ledger_put_transfer(kobo_ledger *ledger, const kobo_transfer *transfer);

/* Applies ops[0..ops_count) in order against what was put, writing one result
 * per op. New records get created_at/updated_at = now_ms; request_id and
 * created_by are taken from the op (a SAGA_CREDIT op carries the DEBIT leg's). ops_count must not exceed ops_max; ops must have passed the
 * edge validation (ids, currency syntax, amount >= 1). Returns KOBO_OK, or
 * KOBO_EFULL if the ops need more accounts or transfers than were sized (a
 * caller bug: nothing is applied then), or KOBO_EINVAL if an op breaks a
 * precondition (too many ops, amount < 1, timeout above the maximum, NULL
 * metadata with a length, a targeted hold whose accounts were not put):
 * nothing is applied then either. Aborts on a broken invariant.
 *
 * Inside an atomic group, a replay of a transfer recorded as rejected fails
 * the group: a batch must not move part of its money because one of its ids
 * was refused earlier. Ops with a leg other than LOCAL and SAGA_* ops must
 * not be in an atomic group (KOBO_EINVAL).
 *
 * Cross-shard rules (A = payer's shard, B = payee's shard; the saga runner
 * in src/saga sends the SAGA_* ops; see docs/architecture.md):
 *
 *   CREATE_TRANSFER, leg DEBIT, on A (step 1). Replay/id_conflict as for any
 *     create (leg and clearing are parameters too). Checks only what A can
 *     see: from exists and has the currency (else ACCOUNT_NOT_FOUND /
 *     CURRENCY_MISMATCH, recorded REJECTED as usual), funds, overflow of
 *     from and clearing totals (a clearing account counted as if every hold
 *     on it posted; a leg it cannot take goes to its overflow lane, see
 *     "Clearing lanes"). The clearing account is created if absent
 *     (allow_negative, the transfer's currency, metadata "{}"). Then a hold
 *     from -> clearing of `amount` (pending or not), status PROCESSING,
 *     saga RESERVED; expires_at set as for a pending hold when pending and
 *     timeout_seconds > 0. Result CREATED.
 *   SAGA_CREDIT, leg CREDIT, on B (step 2). Id exists: a CREDIT leg with the
 *     same parameters -> REPLAYED (its snapshot says what happened: PENDING /
 *     POSTED / VOIDED = applied, REJECTED = refused, with error_code);
 *     anything else -> ID_CONFLICT (nothing recorded). Else checks to
 *     exists and has the currency, overflow of to and clearing totals; a
 *     refusal is recorded as a REJECTED CREDIT leg with its code (so a
 *     repeat answers the same). Else clearing (created if absent) -> to:
 *     a PENDING hold when pending (expires_at 0: A decides expiry), else
 *     POSTED. Result CREATED (a refusal answers its own code, as a local
 *     create does). When only B's clearing account stands in the way (a
 *     fresh one would take the leg: reverse sagas A credited have not
 *     settled on B yet), TRANSFER_IN_PROGRESS: nothing recorded, ask again
 *     later (ledger_saga.c, "Clearing bound").
 *   SAGA_ABORT, leg CREDIT, on B (step 2', the deadline passed). Id exists
 *     -> REPLAYED with its snapshot (whatever step 2 did stands); a
 *     different record -> ID_CONFLICT. Else records a REJECTED CREDIT leg
 *     with error SAGA_TIMEOUT so a late SAGA_CREDIT replays the refusal.
 *     Result CREATED.
 *   SAGA_SETTLE on A (step 3). Unknown id -> TRANSFER_NOT_FOUND; saga NONE,
 *     or a saga state other than u.settle.step (when set) -> REPLAYED
 *     (already settled; nothing changes). Otherwise, by saga state:
 *       RESERVED, credited: pending -> status PENDING (hold stays);
 *                 else the hold is posted in full -> POSTED.
 *       RESERVED, refused:  hold released -> VOIDED, void_reason
 *                 COMPENSATED, error_code = refusal.
 *       POSTING, credited:  hold posted with saga_amount -> POSTED.
 *       POSTING, refused:   back to PENDING, error_code = refusal.
 *       VOIDING, credited:  hold released -> VOIDED with saga_reason.
 *       VOIDING, refused:   never sent (B can always void its hold); the
 *                 ledger answers NOT_PENDING and changes nothing.
 *     saga becomes NONE, saga_amount 0, saga_reason NONE. Result UPDATED.
 *   POST / VOID / EXPIRE of a DEBIT leg on A start a saga instead of moving
 *     money: PENDING + POST (amount checked as for a local hold, and A's
 *     overflow) -> PROCESSING, saga POSTING, saga_amount; PENDING + VOID
 *     -> PROCESSING, saga VOIDING, saga_reason VOIDED (EXPIRED when the
 *     hold has expired); PENDING + expired + EXPIRE, or + POST late ->
 *     VOIDING with EXPIRED (the POST answers NOT_PENDING). Result UPDATED,
 *     snapshot PROCESSING. A POST while POSTING, or a VOID while VOIDING,
 *     -> REPLAYED (the same step is under way); any other post/void of a
 *     PROCESSING record -> NOT_PENDING; EXPIRE of one -> NOT_PENDING.
 *   POST / VOID of a CREDIT leg on B: as for a local hold, on
 *     clearing -> to (sent by the runner only). CREDIT legs never expire. */
int kobo_ledger_apply(kobo_ledger *ledger, const kobo_op *ops, size_t ops_count,
                      int64_t now_ms, kobo_result *results);

/* What apply changed, for the store to persist. Each entry points into the
 * ledger (valid until reset). *is_new tells insert from update. */
typedef struct kobo_account_change {
	const kobo_account *account;
	bool is_new;
} kobo_account_change;

typedef struct kobo_transfer_change {
	const kobo_transfer *transfer;
	bool is_new;
} kobo_transfer_change;

size_t kobo_ledger_changed_accounts(const kobo_ledger *ledger,
                                    const kobo_account_change **changes);
size_t kobo_ledger_changed_transfers(const kobo_ledger *ledger,
                                     const kobo_transfer_change **changes);

#endif /* KOBO_LEDGER_H */
