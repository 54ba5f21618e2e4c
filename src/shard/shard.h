/*
 * shard.h — shard routing, bounded queues and the per-shard batch writer.
 *
 * Each shard has one store, one bounded queue and one writer thread. Edge
 * threads submit requests (each 1..KOBO_BATCH_OPS_MAX ops); the writer
 * drains whatever is queued (up to batch_ops_max ops) into one batch, applies
 * it with the ledger, commits it with one fsync, and only then calls each
 * request's done callback. The design notes and state table are at the top of
 * writer.c.
 */
#ifndef KOBO_SHARD_H
#define KOBO_SHARD_H

#include <stdatomic.h>

#include "../ledger/ledger.h"
#include "../store/store.h"

/* ---- Limits and defaults. ---- */

#define KOBO_SHARD_QUEUE_OPS_DEFAULT 65536  /* queued ops before 503 */
#define KOBO_SHARD_BATCH_OPS_DEFAULT 8190   /* ops per ledger batch */
#define KOBO_SHARD_EXPIRED_SCAN_MAX 1024    /* holds expired per scan */
#define KOBO_SHARD_EXPIRY_INTERVAL_MS 250   /* scan cadence: expiry < 1 s late */
#define KOBO_SHARD_CONFLICT_RERUNS_MAX 3    /* re-runs of a batch the store
                                               answered KOBO_ECONFLICT */
#define KOBO_SHARDS_MAX 256
#define KOBO_PARTITIONS 4096                /* fixed: account hash space */

_Static_assert(KOBO_SHARD_QUEUE_OPS_DEFAULT >= KOBO_BATCH_OPS_MAX,
               "one maximal request must fit an empty queue");
_Static_assert(KOBO_SHARD_EXPIRED_SCAN_MAX <= KOBO_BATCH_OPS_MAX,
               "one expiry scan fits a default batch (smaller batch_ops_max "
               "configurations scan fewer holds at a time)");

/* ---- Routing. ---- */

/* Stable partition of an account id: FNV-1a 64 of its bytes mod
 * KOBO_PARTITIONS. Never changes across versions: data depends on it. */
uint32_t kobo_partition_of(const char *account_id);
/* Shard of a partition with shard_count shards (the default map,
 * partition % shard_count). */
uint32_t kobo_shard_of_partition(uint32_t partition, uint32_t shard_count);

/* The shard map: which shard owns each partition. It is stored with the data
 * (DIR/shard-map.json, see map_file.c) so that data is never read through a
 * different map; today it is always the default map for its shard count
 * (with PostgreSQL, by rule: kobo_shard_map_fixed). */
typedef struct kobo_shard_map {
	uint32_t shard_count; /* 1..KOBO_SHARDS_MAX */
	uint16_t shard_of[KOBO_PARTITIONS];
} kobo_shard_map;

/* Fills map with the default assignment for shard_count shards. */
void kobo_shard_map_default(kobo_shard_map *map, uint32_t shard_count);

/* Shard of an account: a clearing account lives on the shard its id names,
 * any other account on its partition's shard. */
uint32_t kobo_shard_map_account(const kobo_shard_map *map, const char *account_id);

/* Loads DIR/shard-map.json, or creates it for shard_count shards when the
 * directory holds no shard yet (a directory with shard-0.db but no map is
 * data from before maps existed: it gets a one-shard map). Refuses, with a
 * sentence in error[0..error_len), a map whose shard count differs from
 * shard_count, a malformed map, or shard files the map does not explain.
 * Written atomically (temp file, fsync, rename, fsync of the directory).
 * Returns KOBO_OK, KOBO_EINVAL (refused) or KOBO_ESTORE (I/O). */
int kobo_shard_map_open(const char *dir, uint32_t shard_count,
                        kobo_shard_map *map, char *error, size_t error_len);
/* Reads an existing map without creating one (kobo audit). KOBO_ENOTFOUND
 * when DIR has no map. */
int kobo_shard_map_read(const char *dir, kobo_shard_map *map, char *error,
                        size_t error_len);
/* The map of shards kept in PostgreSQL (kobod --postgres, kobo audit
 * --postgres): there is no data directory every node sees, so the map is
 * the default map for shard_count shards, which every node computes alike
 * from the count alone, and each shard's database records the count
 * (kobo_store_open_sharded) so a node given another count, or the URLs in
 * another order, is refused before it routes anything. KOBO_OK, or
 * KOBO_EINVAL with a sentence for a count outside 1..KOBO_SHARDS_MAX. */
int kobo_shard_map_fixed(uint32_t shard_count, kobo_shard_map *map, char *error,
                         size_t error_len);

/* ---- Clearing accounts. ---- */

/* Account ids starting with this prefix are Kobo's own; clients can neither
 * create them nor name them in a transfer. */
#define KOBO_SYSTEM_ID_PREFIX "kobo:"

/* Shard a's clearing account for shard b in currency:
 * "kobo:clearing:<a>:<b>:<currency>" into out (KOBO_ID_LEN_MAX + 1 bytes). */
void kobo_clearing_id(char *out, uint32_t a, uint32_t b, const char *currency);
/* Parses a clearing id, base or overflow lane (ledger.h,
 * kobo_clearing_lane_id): false when id is not one. lane, when not NULL,
 * receives the lane suffix (":" + KOBO_CLEARING_LANE_HEX hex digits, at
 * most KOBO_CLEARING_LANE_LEN_MAX + 1 bytes), "" for the base account. */
bool kobo_clearing_parse(const char *id, uint32_t *a, uint32_t *b,
                         char *currency /* KOBO_CURRENCY_LEN_MAX + 1 */,
                         char *lane);

/* ---- Requests. ---- */

typedef struct kobo_request kobo_request;

/* Called on the writer thread once the request's batch is durable (or has
 * failed as a whole). The results and their snapshots are valid only during
 * the call: encode or copy what you need. Must not block. A snapshot may
 * borrow memory (metadata) from an earlier request of the same batch; the
 * writer answers requests last first so that memory is still alive. */
typedef void (*kobo_request_done_fn)(kobo_request *request);

/* A request's part in tracing (src/obs/otlp.h); all zero when it is not
 * traced. The writer exports one "batch commit" span per batch that holds
 * a traced request (its own trace, linked to each traced request's write
 * span, with a "store commit" child), and tells each traced request when
 * it was taken and which batch span committed it, so the submitter can
 * build its "queue wait" span and link back. See src/shard/spans.c. */
typedef struct kobo_request_trace {
	/* Filled by the submitter. */
	bool sampled;         /* traced: the fields below mean something */
	uint8_t trace_id[16]; /* the request's trace */
	uint8_t span_id[8];   /* its span for the trip through the shard */
	/* Filled by the shard before done (sampled requests only). */
	int64_t taken_ns;           /* the writer took it into a batch
	                               (Unix epoch ns; 0: never) */
	uint8_t batch_trace_id[16]; /* the "batch commit" span; zero: none */
	uint8_t batch_span_id[8];
} kobo_request_trace;

struct kobo_request {
	/* Filled by the submitter; owned by it, borrowed by the shard from
	 * submit until done returns. */
	const kobo_op *ops;
	kobo_result *results; /* op_count entries */
	size_t op_count;      /* 1..KOBO_BATCH_OPS_MAX */
	kobo_request_done_fn done;
	void *user;
	kobo_request_trace trace;
	/* Filled by the shard before done: KOBO_OK (results valid), or
	 *   a store error kind (KOBO_EUNKNOWN: the batch may be durable;
	 *   KOBO_ESTORE, KOBO_EFAILED, KOBO_ECONNLOST: nothing was applied) —
	 *   the edge answers 503 storage_unavailable, "retry with the same id";
	 *   KOBO_ECONFLICT after KOBO_SHARD_CONFLICT_RERUNS_MAX re-runs:
	 *   nothing was applied — the edge answers 503 overloaded;
	 *   KOBO_EINVAL / KOBO_EFULL: the ledger refused the batch, a
	 *   programmer error (nothing was applied) — the edge answers 500;
	 *   KOBO_ESHUTDOWN: nothing was applied. */
	int status;
	/* Private to the shard. */
	kobo_request *next;
};

/* ---- One batch (batch.c): shared by the writer and the simulation. ---- */

/* Runs ops[0..count) as one store transaction: begin, load the transfers
 * and accounts they name (put into ledger), kobo_ledger_apply at now_ms
 * into results, write the ledger's changes, commit. Returns KOBO_OK once
 * durable (results and kobo_ledger_changed_transfers(ledger) valid until
 * the next reset; *token the store's commit sequence, store.h), else after
 * a rollback the failing store status (store.h: KOBO_ECONFLICT,
 * KOBO_ECONNLOST, KOBO_EUNKNOWN, KOBO_ESTORE, KOBO_EFAILED) or the
 * ledger's KOBO_EFULL / KOBO_EINVAL; nothing was applied, except that after
 * KOBO_EUNKNOWN the batch may be durable. ids must hold
 * KOBO_LEDGER_ACCOUNT_IDS_MAX(count) entries. *commit_us gets the commit
 * time.
 *
 * events: where the batch's events (events.h) are made, stamped with the
 * batch's time, events->shard and events->node, and written with
 * write_events in the batch's transaction; buf holds count entries. NULL:
 * no events (hand-built test batches). */
typedef struct kobo_batch_events {
	uint32_t shard;
	const char *node;  /* at most KOBO_EVENT_NODE_LEN_MAX bytes are kept */
	kobo_event *buf;
} kobo_batch_events;

int kobo_batch_run(kobo_store *store, kobo_ledger *ledger, const kobo_op *ops,
                   size_t count, int64_t now_ms, kobo_result *results,
                   const char **ids, int64_t *commit_us, uint64_t *token,
                   const kobo_batch_events *events);

/* ---- Shards. ---- */

typedef struct kobo_shard kobo_shard;

typedef struct kobo_shard_config {
	uint32_t index;        /* shard number, for logs and metrics */
	/* Queued ops before submit answers KOBO_EOVERLOADED; at least
	 * KOBO_BATCH_OPS_MAX so that any request fits an empty queue.
	 * KOBO_SHARD_QUEUE_OPS_DEFAULT if 0. */
	size_t queue_ops_max;
	/* Ops the writer gathers from several requests into one batch,
	 * 1..KOBO_BATCH_OPS_MAX; a single larger request still runs alone.
	 * KOBO_SHARD_BATCH_OPS_DEFAULT if 0. */
	size_t batch_ops_max;
	/* Clock in Unix epoch milliseconds; NULL: the real clock. Tests use it
	 * to move time for hold expiry. */
	int64_t (*now_ms)(void);
	/* Called on the writer thread after each commit and before the batch
	 * is answered, once per changed DEBIT-leg transfer whose saga is
	 * under way (saga != KOBO_SAGA_NONE): the saga runner's doorbell.
	 * Must not block. NULL: nobody listens (one shard, unit tests). */
	void (*saga_started)(void *ctx, uint32_t shard, const kobo_transfer *transfer);
	void *saga_ctx;
	/* This kobod's name (--node-name), recorded on every event the shard
	 * writes; NULL: "". Borrowed: must outlive the shard. */
	const char *node;
} kobo_shard_config;

/* Starts the writer thread over store (borrowed; must outlive the shard).
 * Returns KOBO_ENOMEM, KOBO_EINVAL (bad config) or KOBO_OK with *out. */
int kobo_shard_start(kobo_store *store, const kobo_shard_config *config,
                     kobo_shard **out);

/* Queues request. KOBO_EOVERLOADED when its ops do not fit the queue now
 * (counted in kobo_overloaded_total), KOBO_ESHUTDOWN once stopping,
 * KOBO_EINVAL for 0 or more than KOBO_BATCH_OPS_MAX ops. On any error done
 * is never called. Thread-safe. */
int kobo_shard_submit(kobo_shard *shard, kobo_request *request);

/* Stops accepting, commits and answers everything already queued, then
 * joins the writer; the shard stays readable (kobo_shard_ready,
 * kobo_shard_commit_token, kobo_shard_queue_depth), since the answers just
 * given may still be on their way out through threads that read it (the
 * HTTP server adds the commit token to each 2xx). Idempotent. */
void kobo_shard_quiesce(kobo_shard *shard);
/* kobo_shard_quiesce() if not done yet, then frees the shard: nothing may
 * read it any more. The store stays open. */
void kobo_shard_stop(kobo_shard *shard);

/* Ops waiting in the queue now. Thread-safe. */
size_t kobo_shard_queue_depth(kobo_shard *shard);
/* true while the writer can commit (the store is healthy). Thread-safe. */
bool kobo_shard_ready(kobo_shard *shard);
/* The store's commit sequence after the writer's last commit (store.h,
 * CONSISTENCY TOKEN); 0 before the first. Thread-safe. A write answered
 * after its commit is covered by the value read at answer time. */
uint64_t kobo_shard_commit_token(kobo_shard *shard);

#endif /* KOBO_SHARD_H */
