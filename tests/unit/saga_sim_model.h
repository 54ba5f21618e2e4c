/*
 * saga_sim_model.h — the world of the seeded saga simulation
 * (test_saga_sim.c): what the simulated clients, shard queues and saga
 * runner remember, and the seeded random numbers that drive them. Only
 * test_saga_sim.c includes it; everything here is static.
 *
 * Who remembers what across a simulated crash:
 *   - stores: everything committed (the in-memory stores survive a
 *     "process restart", kobo_store_mem_restart);
 *   - clients: their requests and which of them got an answer (clients
 *     live outside the process, so they retry unanswered requests);
 *   - the sim itself (omniscient): which requests landed although their
 *     answer was lost, and every answer given, to check at the end;
 *   - lost: the shard queues and the runner's table of sagas.
 */
#ifndef KOBO_SAGA_SIM_MODEL_H
#define KOBO_SAGA_SIM_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "../../src/ledger/ledger.h"
#include "../../src/saga/saga.h"
#include "../../src/shard/shard.h"
#include "../../src/store/store.h"

/* ---- Sizes and rates (per mille unless named otherwise). ---- */

#define SIM_SHARDS_MAX 4
#define SIM_CURRENCIES 2
#define SIM_USERS 20               /* per currency, plus one funding account */
/* Per currency, for the near-limit scenario only (client_near_limit):
 * payers ("whales") and payees, all allow_negative, each used at most once
 * a run so no user account can overflow: any amount_overflow is Kobo's. */
#define SIM_WHALES 4
#define SIM_BIG_PAYEES 4
#define SIM_REGULAR_ACCOUNTS (SIM_CURRENCIES * (SIM_USERS + 1))
#define SIM_ACCOUNTS (SIM_REGULAR_ACCOUNTS + \
                      SIM_CURRENCIES * (SIM_WHALES + SIM_BIG_PAYEES))
#define SIM_BATCH_OPS_MAX 12       /* ledger capacity: ops per batch */
#define SIM_START_MS 1700000000000LL
#define SIM_DEADLINE_MS 4000       /* past it a RESERVED saga may abort */
#define SIM_SCAN_PAGE 8            /* small, so the recovery scan pages */
#define SIM_EXPIRY_SCAN_MAX 16
#define SIM_METADATA_MAX 64
#define SIM_POST_AMOUNTS_MAX 8
#define SIM_TRACE_LINES 48
#define SIM_TRACE_LINE_BYTES 200
#define SIM_PROBLEMS_PRINTED 25
#define SIM_DRAIN_ROUNDS_MAX 200 /* a sound world rests within ~5 */
#define SIM_AUDIT_EVERY_BATCHES 16 /* a full store audit; totals every batch */

#define SIM_RUNS_DEFAULT 20
#define SIM_OPS_DEFAULT 1500

#define SIM_FAULT_PER_MILLE 30          /* a batch's commit fails */
#define SIM_CRASH_AFTER_COMMIT_PER_MILLE 15 /* committed, answers lost */
#define SIM_DOORBELL_LOST_PER_MILLE 100 /* the runner misses a doorbell */
#define SIM_RACE_CREATE_PER_MILLE 120   /* a hold's post/void races its create */
#define SIM_RECENT_HOLDS 12             /* "recent": likely still in a saga */
#define SIM_NEAR_LIMIT_BURST_MAX 6      /* 1-unit transfers after the big one */

/* ---- Checks: one bit each, so a run reports every group that failed. ---- */

enum {
	CHECK_RUN = 1u << 0,          /* answers during the run */
	CHECK_SETTLED = 1u << 1,      /* (1) no saga in flight at the end */
	CHECK_TOTALS = 1u << 2,       /* (2) double entry, store audits */
	CHECK_CLEARING = 1u << 3,     /* (3) clearing pairs net to zero */
	CHECK_LEGS = 1u << 4,         /* (4) the two legs agree */
	CHECK_MODEL = 1u << 5,        /* (5) balances and outcomes as modelled */
	CHECK_NON_NEGATIVE = 1u << 6, /* (6) */
	CHECK_ONCE = 1u << 7,         /* (7) every id applied once */
	CHECK_ACKED = 1u << 8,        /* acknowledged answers still hold */
	CHECK_COUNT = 9
};

static const char *const sim_check_names[CHECK_COUNT] = {
	"run", "settled", "totals", "clearing", "legs",
	"model", "non_negative", "once", "acked",
};

/* Bugs the simulation can inject into its own runner or clients, to prove
 * that the checks catch them (test_saga_sim_catches_injected_bugs). */
typedef enum sim_bug {
	BUG_NONE = 0,
	BUG_SETTLE_WITHOUT_REMOTE, /* settle "credited" without running B's step */
	BUG_CREDIT_TWICE,          /* B credited again under another id */
	BUG_REFUSAL_AS_CREDIT,     /* B's refusal settled as a credit */
	BUG_NO_RECOVERY_SCAN,      /* sagas whose doorbell was lost are forgotten */
	BUG_RETRY_NEW_ID,          /* a client retries a lost create with a new id */
	BUG_POST_FULL_AMOUNT,      /* B asked to post the whole hold on a partial post */
	/* The old edge and ledger: a client's post/void misrouted to the
	 * payee's shard acts on the CREDIT leg there (sent as SAGA_POST /
	 * SAGA_VOID, which is what the old ledger did with a client's). */
	BUG_MISROUTE_ACTS_ON_CREDIT,
	BUG_COUNT
} sim_bug;

static const char *const sim_bug_names[BUG_COUNT] = {
	"none", "settle_without_remote", "credit_twice", "refusal_as_credit",
	"no_recovery_scan", "retry_new_id", "post_full_amount",
	"misroute_acts_on_credit",
};

/* Step boundaries the faults hit, and protocol paths taken: the seeded
 * test fails if a default-sized test run misses one, so the simulation
 * cannot silently stop exercising what it claims to. */
typedef enum sim_path {
	AT_DEBIT_CREATE_LOST = 0, /* step 1's commit failed, nothing landed */
	AT_DEBIT_CREATE_APPLIED,  /* step 1 landed, its answer was lost */
	AT_CREDIT_LOST,           /* step 2 (SAGA_CREDIT / SAGA_ABORT) on B */
	AT_CREDIT_APPLIED,        /* B committed, A not settled */
	AT_REMOTE_TARGET_LOST,    /* B's POST / VOID of its credit leg */
	AT_REMOTE_TARGET_APPLIED,
	AT_SETTLE_LOST,           /* step 3 on A */
	AT_SETTLE_APPLIED,
	AT_CRASH_READY,           /* a plain crash while a saga waited to be read */
	AT_CRASH_REMOTE,          /* ... while B's step was queued */
	AT_CRASH_SETTLE,          /* ... while A's settle was queued (B done) */
	PATH_ABORT_REFUSED,       /* SAGA_ABORT recorded the refusal */
	PATH_ABORT_FOUND_CREDIT,  /* SAGA_ABORT found step 2 done: it stands */
	PATH_PARTIAL_POST_CROSS,  /* a partial post of a cross-shard hold */
	PATH_EXPIRED_DEBIT_LEG,   /* a cross-shard hold voided as expired */
	PATH_REFUSED_CREDIT,      /* B refused the credit leg (rule or conflict) */
	PATH_RACED_CREATE,        /* a post/void ran before its create: not found */
	PATH_IN_PROGRESS,         /* a post/void answered in_progress, retried */
	PATH_MISROUTED_RESERVED,  /* a misrouted post/void while A was RESERVED */
	PATH_MISROUTED_CREDITED,  /* ... while B held the credit leg's hold */
	PATH_MISROUTED_POSTING,   /* ... while A was POSTING */
	PATH_CLEARING_LANE,       /* a debit leg took an overflow clearing lane */
	PATH_SMALL_IN_LANE,       /* ... a small one: the base account was full */
	PATH_COUNT
} sim_path;

static const char *const sim_path_names[PATH_COUNT] = {
	"fail step 1 (lost)", "fail step 1 (applied)",
	"fail step 2 credit/abort (lost)", "fail step 2 credit/abort (applied)",
	"fail B post/void (lost)", "fail B post/void (applied)",
	"fail step 3 settle (lost)", "fail step 3 settle (applied)",
	"crash, saga to read", "crash, B step queued", "crash, settle queued",
	"abort refused the credit", "abort found the credit", "partial cross post",
	"cross hold expired", "B refused the credit",
	"post/void raced its create", "post/void in progress (retried)",
	"misrouted while reserved", "misrouted while B held the credit",
	"misrouted while posting", "clearing overflow lane",
	"small transfer in a lane (base full)",
};

/* ---- Accounts the clients know. ---- */

typedef struct sim_account {
	char id[KOBO_ID_LEN_MAX + 1];
	uint32_t currency; /* index into sim_currencies */
	uint32_t shard;
	bool allow_negative; /* the funding accounts */
} sim_account;

static const char *const sim_currencies[SIM_CURRENCIES] = { "NGN", "USD" };

/* ---- Transfers the clients created (one per logical transfer). ---- */

/* What the client meant to do; it fixes the outcomes the ledger may give. */
typedef enum xfer_kind {
	KIND_NORMAL = 0,
	KIND_DEPOSIT,        /* from a funding account (allow_negative) */
	KIND_SAME_ACCOUNT,   /* from == to */
	KIND_GHOST_PAYEE,    /* to was never created */
	KIND_FOREIGN_PAYEE,  /* to holds the other currency */
	KIND_WRONG_CURRENCY, /* the transfer names the payer's other currency */
	KIND_REUSED_ID,      /* cross-shard, id already used on the payee's shard */
	KIND_NEAR_LIMIT,     /* cross-shard, a whale pays ~INT64_MAX to a payee of
	                      * its own: no account of a client can overflow */
} xfer_kind;

typedef struct sim_xfer {
	kobo_op op; /* the CREATE_TRANSFER as routed; metadata points below */
	char metadata[SIM_METADATA_MAX];
	xfer_kind kind;
	uint32_t shard_a, shard_b; /* payer's and payee's shard */
	bool cross;
	int32_t reused_by;         /* a later transfer reusing this id, or -1 */

	/* What the simulation saw. */
	bool landed;       /* some attempt of the create committed */
	bool answered;     /* some attempt of the create was answered */
	kobo_transfer first; /* the first answer's snapshot (metadata NULL) */
	bool post_acked;   /* a POST answered UPDATED (or its lost answer was) */
	int64_t post_acked_amount;
	bool void_acked;
	bool expire_acked;
	bool void_sent;
	bool abort_sent;   /* the runner sent SAGA_ABORT for it */
	int64_t post_amounts[SIM_POST_AMOUNTS_MAX]; /* amounts posts asked */
	uint32_t post_amount_count;
	bool post_amounts_overflow;

	/* Final records, read at the end. */
	bool has_a, has_b;
	kobo_transfer final_a, final_b; /* metadata NULL */
} sim_xfer;

/* ---- Client requests. ---- */

typedef enum req_kind { REQ_CREATE, REQ_POST, REQ_VOID } req_kind;

typedef enum req_expect {
	EXPECT_ANY = 0,
	EXPECT_REPLAY,   /* a resend of an answered request */
	EXPECT_CONFLICT, /* the id of an answered create with other parameters */
} req_expect;

typedef struct sim_request {
	req_kind kind;
	req_expect expect;
	uint32_t xfer;
	uint32_t shard;
	kobo_op op;
	bool in_flight; /* queued or in a batch in this process's life */
	bool answered;
	kobo_result_code answer;
	/* Sent to a shard other than the payer's (the old edge's routing of
	 * an id it found nowhere yet): it must find nothing and change
	 * nothing there. */
	bool misrouted;
	bool landed;    /* an attempt committed but its answer was lost */
	kobo_result_code lost_answer; /* UPDATED if any lost answer was */
	uint32_t attempts;
} sim_request;

/* ---- Shard queues: what the writers have not run yet. ---- */

typedef enum origin {
	FROM_CLIENT = 0, /* ref: request */
	FROM_REMOTE,     /* ref: saga; B's step */
	FROM_SETTLE,     /* ref: saga; A's SAGA_SETTLE */
	FROM_EXPIRY,     /* ref: unused; the writer's own EXPIRE */
	FROM_BUG,        /* ref: unused; an injected extra op */
} origin;

typedef struct queued {
	kobo_op op;
	origin from;
	uint32_t ref;
} queued;

typedef struct sim_queue {
	queued *items;
	size_t count, cap;
} sim_queue;

/* ---- The runner's table: sagas under way, as the runner knows them. ---- */

typedef enum saga_phase {
	PHASE_READY = 0, /* next: read A's record */
	PHASE_REMOTE,    /* B's step queued or running */
	PHASE_SETTLE,    /* A's SAGA_SETTLE queued or running */
} saga_phase;

typedef struct sim_saga {
	bool used;
	saga_phase phase;
	uint32_t shard, remote; /* A and B */
	char id[KOBO_ID_LEN_MAX + 1];
	kobo_transfer record; /* A's record as last read; metadata below */
	char metadata[SIM_METADATA_MAX];
	kobo_op op;           /* the step in flight */
} sim_saga;

typedef struct sim_stats {
	size_t client_ops;
	size_t batches;
	size_t ops_run;
	size_t remote_steps;
	size_t settles;
	size_t crashes;
	size_t plain_crashes;
	size_t failed_commits;
	size_t failed_applied;
	size_t lost_answers;
	size_t retries;
	size_t replays;
	size_t aborts;
	size_t expired;
	size_t doorbells_lost;
	size_t misrouted;
	size_t in_progress;
	size_t near_limit;
	/* B answered a SAGA_CREDIT "not yet": its clearing account waits for
	 * reverse sagas A credited to settle (ledger_saga.c, "Clearing
	 * bound"); rare, so counted but not a required path. */
	size_t credit_waits;
	size_t paths[PATH_COUNT];
	/* From the final records. */
	size_t cross;
	size_t sagas;
	size_t compensated;
	size_t posted;
} sim_stats;

/* One account as the stores hold it at the end. */
typedef struct seen_account {
	kobo_account account; /* metadata NULL */
	uint32_t shard;
} seen_account;

typedef struct sim {
	uint64_t seed;
	uint64_t rng;
	sim_bug bug;
	bool quiet;
	bool faults; /* off while draining */
	uint32_t shard_count;
	kobo_shard_map map;
	kobo_store *stores[SIM_SHARDS_MAX];
	kobo_store_reader *readers[SIM_SHARDS_MAX];
	kobo_ledger *ledgers[SIM_SHARDS_MAX];
	sim_queue queues[SIM_SHARDS_MAX];
	int64_t now_ms;

	sim_account accounts[SIM_ACCOUNTS];
	size_t account_count;
	sim_xfer *xfers;
	size_t xfer_count, xfer_cap;
	uint32_t *holds; /* xfers created as holds */
	size_t hold_count;
	sim_request *requests;
	size_t request_count, request_cap;
	sim_saga *sagas;
	size_t saga_high, saga_cap; /* slots [0, saga_high) may be used */

	seen_account *seen;
	size_t seen_count, seen_cap;
	size_t store_transfers[SIM_SHARDS_MAX]; /* audit totals at the end */

	/* The client op count at which each currency's near-limit scenario
	 * runs, and the whales and payees already used. */
	size_t near_limit_at[SIM_CURRENCIES];
	bool big_used[SIM_ACCOUNTS];

	sim_stats stats;
	unsigned failed; /* CHECK_* bits */
	size_t problems;
	char trace[SIM_TRACE_LINES][SIM_TRACE_LINE_BYTES];
	size_t trace_count;
} sim;

/* ---- Seeded randomness: splitmix64, so a seed replays a run exactly. ---- */

static uint64_t sim_rng_next(sim *s)
{
	uint64_t z = (s->rng += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in 0..n-1 (n >= 1; the modulo bias is irrelevant here). */
static uint32_t sim_below(sim *s, uint32_t n)
{
	return (uint32_t)(sim_rng_next(s) % n);
}

static bool sim_chance(sim *s, uint32_t per_mille)
{
	return sim_below(s, 1000) < per_mille;
}

#endif /* KOBO_SAGA_SIM_MODEL_H */
