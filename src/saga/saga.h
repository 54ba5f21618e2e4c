/*
 * saga.h — transfers between shards: the protocol (pure) and its runner.
 *
 * A transfer whose payer lives on shard A and payee on shard B runs as a
 * saga of local transactions, each idempotent by the transfer id, each with
 * a compensation. A's record (the DEBIT leg) is the truth and remembers the
 * step under way in its `saga` field:
 *
 *                 CREATE (A, DEBIT leg: hold payer → A's clearing for B)
 *                        │
 *                        ▼
 *    ┌────────────── RESERVED ───── B: SAGA_CREDIT (or SAGA_ABORT past
 *    │                   │          the deadline) creates the CREDIT leg
 *    │     B refused     │ B credited          (clearing for A → payee)
 *    ▼                   ▼
 *  VOIDED          pending? ──no──▶ POSTED        (A: SAGA_SETTLE)
 *  compensated       │yes
 *                    ▼
 *                 PENDING ──POST──▶ POSTING ── B posts ──▶ POSTED
 *                    │  ▲                 └─ B refused ──▶ PENDING
 *                    │  └──────────────────────────────────┘
 *                    └─VOID/EXPIRE─▶ VOIDING ── B voids ──▶ VOIDED
 *
 * Every arrow out of RESERVED, POSTING and VOIDING is one local transaction
 * on A (SAGA_SETTLE) taken only after B's step committed; a crash between
 * any two steps leaves a record whose saga state says what to repeat, and
 * repeating any step is harmless (B's ops replay by id, SETTLE of a settled
 * record replays). The functions below are the whole decision logic: the
 * runner (runner.c) only moves their ops between shards, and the seeded
 * simulation (tests/unit/test_saga_sim.c) drives the same functions.
 */
#ifndef KOBO_SAGA_H
#define KOBO_SAGA_H

#include "../ledger/ledger.h"
#include "../shard/shard.h"

/* ---- The protocol (pure, saga.c). ---- */

/* The op B must run next for A's record (a DEBIT leg with saga != NONE),
 * into *op. b_clearing is B's clearing account for A. abort: the saga has
 * passed its deadline, so a RESERVED saga asks B to refuse the credit leg
 * (SAGA_ABORT) instead of creating it. Returns false when the record has no
 * step outstanding. */
bool kobo_saga_remote_op(const kobo_transfer *a_record, const char *b_clearing,
                         bool abort, kobo_op *op);

/* What B's answer means for A: fills *settle with the SAGA_SETTLE op and
 * returns true; returns false when the answer is not final (B failed as a
 * whole, or answered something the protocol does not expect): the step must
 * be repeated later. b_op is the op sent, b_result B's result for it. */
bool kobo_saga_settle_op(const kobo_transfer *a_record, const kobo_op *b_op,
                         const kobo_result *b_result, kobo_op *settle);

/* true when B answered "not yet" (TRANSFER_IN_PROGRESS to a SAGA_CREDIT: its
 * clearing account waits for reverse sagas to settle; ledger.h): an
 * expected answer, not a failure; the step is asked again after a backoff.
 * kobo_saga_settle_op() returns false for it. */
bool kobo_saga_remote_busy(const kobo_op *b_op, const kobo_result *b_result);

/* ---- The runner (runner.c): drives every unfinished saga. ---- */

#define KOBO_SAGA_ACTIVE_MAX 16384       /* sagas driven at once (then the scan) */
#define KOBO_SAGA_WAITERS_MAX 16384      /* requests waiting for a saga */
#define KOBO_SAGA_NOTIFY_MAX 65536       /* doorbells queued (then the scan) */
#define KOBO_SAGA_DEADLINE_MS_DEFAULT 30000   /* then RESERVED aborts */
#define KOBO_SAGA_STUCK_MS_DEFAULT 60000      /* then it is reported */
#define KOBO_SAGA_SCAN_INTERVAL_MS 1000       /* recovery scan cadence */
#define KOBO_SAGA_RETRY_MIN_MS 10
#define KOBO_SAGA_RETRY_MAX_MS 5000
/* A saga's claim (store.h claim_saga): how long one lasts on the database's
 * clock. The driver renews it once half of it has passed, so it never
 * lapses under a live node; a node killed mid-saga is taken over by
 * another's scan within a lease and a scan interval. */
#define KOBO_SAGA_CLAIM_LEASE_MS_DEFAULT 5000
/* How often a saga another node drives is read again, to answer the local
 * requests that wait for it: with waiters, and without (the scan's pace). */
#define KOBO_SAGA_WATCH_WAITED_MS 50
#define KOBO_SAGA_WATCH_MS KOBO_SAGA_SCAN_INTERVAL_MS

typedef struct kobo_saga_runner kobo_saga_runner;

typedef struct kobo_saga_config {
	kobo_shard **shards;        /* borrowed, shard_count entries */
	kobo_store **stores;        /* borrowed: the runner opens readers */
	uint32_t shard_count;
	const kobo_shard_map *map;  /* borrowed */
	/* Both measured on the monotonic clock from when the runner first
	 * saw the saga in its state (a saga found by the scan, whose age is
	 * known only from its stored wall-clock updated_at, is aged from that
	 * once, at discovery; a negative age counts as 0). */
	int64_t deadline_ms;        /* 0: KOBO_SAGA_DEADLINE_MS_DEFAULT */
	int64_t stuck_ms;           /* 0: KOBO_SAGA_STUCK_MS_DEFAULT */
	/* Wall clock in Unix epoch milliseconds, used only to age a saga found
	 * by the scan; NULL: the real clock. Tests step it. */
	int64_t (*now_ms)(void);
	/* This process's name in saga claims (store.h claim_saga): unique
	 * among the nodes serving the same stores, at most
	 * KOBO_STORE_NODE_LEN_MAX bytes; copied. NULL: "host:pid:start ms". */
	const char *node;
	int64_t claim_lease_ms;     /* 0: KOBO_SAGA_CLAIM_LEASE_MS_DEFAULT */
} kobo_saga_config;

/* Lifecycle, around the shards':
 *   create    before the shards start: their doorbells need the runner
 *   start     once the shards run: starts the thread (it scans at once)
 *   stop      before the shards stop (see below)
 *   destroy   after the shards stopped: doorbells rung while they drain
 *             are ignored until then (the next start's scan finds them)
 * config->shards and config->stores are borrowed arrays whose entries may
 * be filled between create and start. */
int kobo_saga_runner_create(const kobo_saga_config *config, kobo_saga_runner **out);
int kobo_saga_runner_start(kobo_saga_runner *runner);
void kobo_saga_runner_destroy(kobo_saga_runner *runner);

/* The shard writer's doorbell (kobo_shard_config.saga_started): a saga of
 * A's record is under way. Never blocks; if the runner is full the recovery
 * scan finds the saga later. */
void kobo_saga_runner_notify(void *runner, uint32_t shard,
                             const kobo_transfer *transfer);

/* Called once, on the runner's thread, when the saga of the transfer id on
 * shard has no step outstanding (transfer: A's record, valid during the
 * call), or with timed_out when the deadline passed first or the runner
 * stops (transfer: the last state read, or NULL when none could be read).
 * Must not block. */
typedef void (*kobo_saga_wait_fn)(void *ctx, const kobo_transfer *transfer,
                                  bool timed_out);

/* Asks for fn once the saga of id on shard settles, at most until
 * deadline_ms (monotonic, kobo_monotonic_us()/1000 scale). KOBO_OK, or
 * KOBO_EOVERLOADED / KOBO_ESHUTDOWN: fn will not be called. Thread-safe. */
int kobo_saga_runner_wait(kobo_saga_runner *runner, uint32_t shard,
                          const char *id, int64_t deadline_ms,
                          kobo_saga_wait_fn fn, void *ctx);

/* Stops driving: answers every waiter (timed_out), waits for the steps
 * already submitted to shards to come back, joins the thread. Later waits
 * answer KOBO_ESHUTDOWN. Unfinished sagas stay recorded and resume at the
 * next start. */
void kobo_saga_runner_stop(kobo_saga_runner *runner);

#endif /* KOBO_SAGA_H */
