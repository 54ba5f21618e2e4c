/*
 * bench.h — kobo-bench, the load generator and invariant checker.
 *
 * kobo-bench drives transfers at a running kobod over many keep-alive
 * HTTP/1.1 connections, prints live throughput and latency, then checks the
 * invariants of DESIGN.md §1 against what the server answered.
 *
 * Shape (one file per subject):
 *   main.c       options, the phases (setup → workload → verify)
 *   summary.c    the final summary, text or --json
 *   selftest.c   --self-test: the parts that need no server
 *   conn.c       the engine: one epoll loop per worker thread over its share
 *                of the connections, one request in flight per connection
 *   workload.c   setup jobs (accounts, funding), the transfer workload (open
 *                and closed loop), the live line
 *   histogram.c  fixed-memory log-linear latency histogram (µs)
 *   verify.c     read-back and invariant checks
 *   shards.c     where each account lives (the server's shard mapping) and
 *                the per-shard account lists the cross-shard model draws from
 *
 * A phase is a bench_job: the engine asks the job for the next request
 * whenever a connection is idle and hands it every answer. Jobs split their
 * items across worker threads with one atomic counter, so a phase over T
 * threads needs no other coordination.
 *
 * Transfer k of a run is a pure function of (seed, workload, k): its id is
 * prefix "t" k and its from/to/amount are recomputed from a hash whenever
 * needed. The bench therefore stores one outcome byte per transfer and
 * nothing else, and the verifier rebuilds every expected balance from those
 * bytes.
 *
 * Shards (--shards N, --cross-shard P): the bench computes each account's
 * shard exactly as kobod does (kobo_partition_of, then the default map) and
 * makes P % of transfers cross shards, the rest stay on the payer's shard.
 * A cross-shard transfer may answer 202 "processing": acknowledged, its saga
 * still running; verify waits for it to settle before checking.
 */
#ifndef KOBO_BENCH_H
#define KOBO_BENCH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <http_parser.h>

#include "../ledger/ledger.h"
#include "../shard/shard.h"

/* ---- Limits and defaults (the one place they live). ---- */

#define BENCH_CONNECTIONS_MAX 4096
#define BENCH_THREADS_MAX 64
#define BENCH_ACCOUNTS_MAX 10000000u
#define BENCH_BATCH_MAX KOBO_BATCH_OPS_MAX     /* transfers per batch request */
#define BENCH_PREFIX_LEN_MAX 40                /* leaves room for "t" + 20 digits */
/* Longest --key accepted (a Kobo key is 86 characters). */
#define BENCH_KEY_LEN_MAX 512
#define BENCH_TRANSFERS_MAX (1ull << 28)       /* outcome bytes, reserved lazily */
#define BENCH_RESPONSE_BYTES_MAX (64u << 20)   /* a batch of 8,190 answers fits */
#define BENCH_READ_CHUNK_BYTES (256u << 10)
#define BENCH_REQUEST_TIMEOUT_US (30 * 1000000ll)
#define BENCH_DRAIN_TIMEOUT_US (10 * 1000000ll)  /* after --duration */
#define BENCH_SETUP_TIMEOUT_US (300 * 1000000ll)
#define BENCH_SETUP_UNCONNECTED_US (10 * 1000000ll) /* setup: server gone */
#define BENCH_RECONNECT_DELAY_US (100 * 1000ll)
#define BENCH_SETUP_ATTEMPTS_MAX 5
#define BENCH_SETUP_PROCESSING_ATTEMPTS_MAX 240 /* × 0.5 s: sagas settling */
#define BENCH_FUND_AMOUNT_MINOR 1000000000ll     /* per account: 10M NGN */
#define BENCH_AMOUNT_MAX_MINOR 10000             /* transfers: 1..100 NGN */
#define BENCH_SETUP_BATCH_DEFAULT 1000
#define BENCH_VIOLATIONS_PRINTED_MAX 20
#define BENCH_CURRENCY "NGN"
#define BENCH_SHARDS_MAX KOBO_SHARDS_MAX

_Static_assert(BENCH_PREFIX_LEN_MAX + 21 <= KOBO_ID_LEN_MAX,
               "prefix + \"t\" + a 20-digit counter must be a valid id");
_Static_assert((unsigned long long)BENCH_ACCOUNTS_MAX * BENCH_FUND_AMOUNT_MINOR < (1ull << 62),
               "funding all accounts must not overflow the cash balance");

/* Exit codes. */
enum {
	BENCH_EXIT_OK = 0,
	BENCH_EXIT_VIOLATION = 1,
	BENCH_EXIT_USAGE = 2,
	BENCH_EXIT_UNREACHABLE = 3,
};

typedef enum bench_mode {
	BENCH_MODE_UNIFORM = 0,
	BENCH_MODE_HOT,
	BENCH_MODE_MERCHANT,
} bench_mode;

typedef struct bench_config {
	char url[256];
	char host_header[280];
	/* "Authorization: Bearer KEY\r\n" (--key or KOBO_API_KEY), or "". */
	char auth_header[BENCH_KEY_LEN_MAX + 32];
	struct sockaddr_storage addr;
	socklen_t addr_len;
	uint32_t connections;
	uint32_t threads;
	double duration_s;
	uint64_t rate_per_s;     /* transfers/s; 0 = closed loop, flat out */
	uint32_t accounts;
	uint32_t hot;            /* with BENCH_MODE_HOT */
	bench_mode mode;
	uint32_t batch;          /* 0 = POST /v1/transfers, else per batch request */
	uint32_t setup_batch;    /* funding transfers per batch request; 0 = single */
	uint64_t seed;
	char prefix[BENCH_PREFIX_LEN_MAX + 1];
	bool json;
	bool verify;
	bool setup_only;
	double verify_timeout_s;
	int64_t fund_amount_minor;
	uint32_t amount_max_minor;
	/* The server's --shards and the share of cross-shard transfers. */
	uint32_t shards;           /* 1..BENCH_SHARDS_MAX */
	uint32_t cross_shard_pct;  /* 0..100; needs shards >= 2 */
	bool cross_shard_model;    /* --cross-shard given: the model picks by shard */
	/* Filled by bench_shards_init() when shards > 1 (else NULL): account
	 * i lives on account_shard[i]; shard s's accounts are
	 * shard_accounts[shard_first[s] .. shard_first[s + 1]). */
	uint16_t *account_shard;
	uint32_t *shard_accounts;
	uint32_t shard_first[BENCH_SHARDS_MAX + 1];
} bench_config;

/* ---- Latency histogram (histogram.c). ----
 * Log-linear buckets: values below 128 µs are exact, above that each power of
 * two is split in 64 steps (relative error < 1.6 %), up to 2^40 µs. */

#define BENCH_HIST_SUB_BITS 7
#define BENCH_HIST_SUB_COUNT (1u << BENCH_HIST_SUB_BITS)
#define BENCH_HIST_MAGNITUDE_MAX 40
#define BENCH_HIST_BUCKETS \
	(BENCH_HIST_SUB_COUNT + (BENCH_HIST_MAGNITUDE_MAX - BENCH_HIST_SUB_BITS + 1) * (BENCH_HIST_SUB_COUNT / 2))

typedef struct bench_histogram {
	uint64_t count;
	uint64_t sum_us;
	uint64_t min_us;
	uint64_t max_us;
	uint64_t buckets[BENCH_HIST_BUCKETS];
} bench_histogram;

void bench_hist_reset(bench_histogram *hist);
void bench_hist_record(bench_histogram *hist, int64_t value_us);
void bench_hist_merge(bench_histogram *into, const bench_histogram *from);
/* The value at or below which `percentile` % of the recorded values lie
 * (highest value of that bucket, capped at the maximum seen); 0 if empty. */
uint64_t bench_hist_percentile(const bench_histogram *hist, double percentile);
/* Exposed for the self-check in main.c --self-test. */
uint32_t bench_hist_index(uint64_t value_us);
uint64_t bench_hist_bucket_high(uint32_t index);

/* ---- Results the workload counts. ---- */

/* Rejection codes of 422 answers, counted by name. */
typedef enum bench_reject {
	BENCH_REJECT_INSUFFICIENT_FUNDS = 0,
	BENCH_REJECT_ACCOUNT_NOT_FOUND,
	BENCH_REJECT_CURRENCY_MISMATCH,
	BENCH_REJECT_SAME_ACCOUNT,
	BENCH_REJECT_AMOUNT_OVERFLOW,
	BENCH_REJECT_OTHER,
	BENCH_REJECT_COUNT,
} bench_reject;
extern const char *const bench_reject_names[BENCH_REJECT_COUNT];
bench_reject bench_reject_from_code(const char *code, size_t len);

/* One outcome byte per transfer of the workload. */
typedef enum bench_outcome {
	BENCH_OUTCOME_UNSENT = 0,
	BENCH_OUTCOME_POSTED,       /* 201 (or resolved posted) */
	BENCH_OUTCOME_REJECTED,     /* 422: moved nothing */
	BENCH_OUTCOME_NOT_APPLIED,  /* 4xx/503/429: the server refused it whole */
	BENCH_OUTCOME_UNKNOWN,      /* transport error, 5xx, 202: may or may not move */
	BENCH_OUTCOME_RESOLVED_POSTED,
	BENCH_OUTCOME_RESOLVED_NONE,
	BENCH_OUTCOME_ACCEPTED,     /* 202: acknowledged, its saga still running */
} bench_outcome;

/* Latency classes of the workload's requests (with --shards > 1). */
enum {
	BENCH_CLASS_LOCAL = 0,  /* payer and payee on one shard */
	BENCH_CLASS_CROSS,      /* a cross-shard transfer (batch: any of them) */
	BENCH_CLASS_COUNT,
};

typedef struct bench_counts {
	uint64_t requests;            /* answered requests */
	uint64_t transfers_acked;     /* 201 */
	uint64_t transfers_unknown;   /* outcome unknown */
	uint64_t transfers_accepted;  /* 202 processing: acknowledged, saga running */
	uint64_t transfers_cross;     /* cross-shard transfers answered */
	uint64_t transfers_refused;   /* non-422 refusal of a transfer */
	uint64_t rejected[BENCH_REJECT_COUNT];
	uint64_t errors_http;         /* non-2xx answers other than 422 */
	uint64_t errors_transport;    /* connect/read/write failures, timeouts */
	uint64_t status[600];         /* HTTP status per transfer (batch: per item) */
} bench_counts;

/* What one second of the live line shows; guarded by the worker's lock. */
typedef struct bench_interval {
	bench_histogram latency;
	uint64_t transfers_acked;
	uint64_t rejected;
	uint64_t errors;
} bench_interval;

/* ---- Engine (conn.c). ---- */

typedef struct bench_buf {
	char *data;
	size_t len;
	size_t cap;
} bench_buf;

int bench_buf_reserve(bench_buf *buf, size_t extra);
int bench_buf_append(bench_buf *buf, const char *data, size_t len);
int bench_buf_printf(bench_buf *buf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void bench_buf_free(bench_buf *buf);

typedef enum bench_conn_state {
	BENCH_CONN_CLOSED = 0,   /* no socket; reconnect at retry_at_us */
	BENCH_CONN_CONNECTING,   /* non-blocking connect under way */
	BENCH_CONN_IDLE,         /* connected, nothing in flight */
	BENCH_CONN_BUSY,         /* a request written or being answered */
} bench_conn_state;

typedef struct bench_worker bench_worker;

typedef struct bench_conn {
	int fd;
	uint32_t index;
	bench_conn_state state;
	int64_t retry_at_us;
	bench_buf out;           /* the request being written */
	size_t out_off;
	bench_buf body;          /* the answer's body */
	http_parser parser;
	bool response_done;
	bool response_too_large;
	bool keep_alive;
	bool on_idle_stack;      /* has an entry on worker->idle (conn.c) */
	int64_t sent_us;         /* when the request was handed to the socket */
	int64_t start_us;        /* latency origin: scheduled time, or sent_us */
	/* Set by the job for its own use. */
	uint64_t tag;
	uint64_t tag_count;
	uint32_t attempt;
	bench_worker *worker;
} bench_conn;

/* next() answers. */
enum {
	BENCH_JOB_SENT = 0,  /* a request was built in conn->out */
	BENCH_JOB_WAIT,      /* nothing now; ask again at *wake_us */
	BENCH_JOB_DONE,      /* nothing more for this worker, ever */
};

typedef struct bench_job bench_job;
struct bench_job {
	/* Builds the next request into conn->out (bench_conn_request()) and may
	 * set conn->start_us (else the send time is the latency origin). */
	int (*next)(bench_job *job, bench_worker *worker, bench_conn *conn, int64_t now_us,
	            int64_t *wake_us);
	/* The answer to conn's request: status >= 100 with the body, or 0 on a
	 * transport failure (connection lost, timed out, abandoned at the end). */
	void (*finish)(bench_job *job, bench_worker *worker, bench_conn *conn, int status,
	               const char *body, size_t body_len, int64_t now_us);
	int64_t stop_sending_us;   /* no new requests from then on */
	int64_t abandon_us;        /* requests still in flight then fail (status 0) */
	/* > 0: when none of the worker's connections has been open (connected,
	 * idle or busy) for this long, the worker gives up at once (sets
	 * worker->gave_up) instead of reconnecting until stop_sending_us. */
	int64_t give_up_unconnected_us;
	void *ctx;
};

struct bench_worker {
	uint32_t index;
	const bench_config *config;
	int epoll_fd;
	bench_conn *conns;
	uint32_t conn_count;
	uint32_t *idle;
	uint32_t idle_len;
	uint32_t busy;
	char *read_buf;
	pthread_t thread;
	bool thread_started;
	bench_job *job;
	/* Statistics of the workload phase. */
	bench_histogram latency;
	bench_histogram latency_class[BENCH_CLASS_COUNT]; /* with shards > 1 */
	bench_counts counts;
	pthread_mutex_t interval_lock;
	bench_interval interval;
	/* Scratch owned by the running job. */
	uint64_t job_sent;
	int64_t job_first_us;
	uint64_t *retry;
	size_t retry_len;
	size_t retry_cap;
	uint64_t job_failed;
	int64_t job_last_answer_us;
	bench_buf scratch;
	bool sweep_now;          /* a connection wants reconnecting at once */
	bool gave_up;            /* the last job ended by give_up_unconnected_us */
};

/* Creates the worker's epoll set and `conn_count` connections (connected
 * lazily). Returns 0 or KOBO_ENOMEM / KOBO_EINVAL. */
int bench_worker_init(bench_worker *worker, uint32_t index, const bench_config *config,
                      uint32_t conn_count);
void bench_worker_close(bench_worker *worker);
/* Runs job on this worker until it is DONE and nothing is in flight, or
 * until job->abandon_us. */
void bench_worker_run(bench_worker *worker, bench_job *job);
/* Runs job on every worker, one thread each, and waits for all.
 * bench_job_start() / bench_job_wait() split it so the caller can print the
 * live line meanwhile; bench_workers_running counts workers still looping. */
void bench_run_job(bench_worker *workers, uint32_t worker_count, bench_job *job);
void bench_job_start(bench_worker *workers, uint32_t worker_count, bench_job *job);
void bench_job_wait(bench_worker *workers, uint32_t worker_count);
extern atomic_uint bench_workers_running;
/* Writes an HTTP/1.1 request into conn->out; body may be NULL. */
int bench_conn_request(bench_conn *conn, const char *method, const char *path,
                       const char *body, size_t body_len);
/* Set by SIGINT: every job stops sending and drains. */
extern atomic_bool bench_stop_requested;

/* ---- Workload model (workload.c). ---- */

typedef struct bench_transfer {
	uint32_t from;
	uint32_t to;
	int64_t amount_minor;
} bench_transfer;

/* Transfer k of the run: a pure function of the configuration and k. */
bench_transfer bench_transfer_make(const bench_config *config, uint64_t k);
/* true when transfer t's payer and payee live on different shards. */
bool bench_transfer_is_cross(const bench_config *config, bench_transfer t);

/* ---- Shards (shards.c). ---- */

/* Computes every account's shard and the per-shard lists (config->shards >
 * 1). With --shards, each shard must hold at least two accounts so that a
 * local payee other than the payer exists. 0, or BENCH_EXIT_USAGE with a
 * message on stderr; bench_shards_free() releases the tables. */
int bench_shards_init(bench_config *config);
void bench_shards_free(bench_config *config);
/* The shard of an account id with `shards` shards, as kobod routes it. */
uint32_t bench_shard_of_id(const char *account_id, uint32_t shards);
/* Ids; each writes at most KOBO_ID_LEN_MAX + 1 bytes. */
void bench_account_id(const bench_config *config, uint32_t account, char *dst);
void bench_cash_id(const bench_config *config, char *dst);
void bench_transfer_id(const bench_config *config, uint64_t k, char *dst);
/* Appends the JSON object of transfer k (or a funding transfer) to buf. */
int bench_transfer_json(bench_buf *buf, const bench_config *config, uint64_t k);

typedef struct bench_run {
	const bench_config *config;
	bench_worker *workers;
	uint32_t worker_count;
	/* Outcome byte per transfer k; reserved for BENCH_TRANSFERS_MAX. */
	_Atomic uint64_t transfers_next;
	uint8_t *outcomes;
	/* Shared item counter of the setup and verify jobs. */
	_Atomic uint64_t items_next;
	_Atomic uint64_t items_failed;
	_Atomic uint64_t prefix_reused;
	int64_t workload_start_us;
	int64_t workload_end_us;
	double setup_s;
} bench_run;

/* Items of a setup or verify job: a due retry of this worker first, else
 * the next of `items` from run->items_next. Returns BENCH_JOB_SENT with
 * *item and *attempt set, BENCH_JOB_WAIT (retries not yet due, or answers
 * still outstanding that may ask for one) or BENCH_JOB_DONE. */
int bench_item_next(bench_run *run, bench_worker *worker, uint64_t items, int64_t now_us,
                    int64_t *wake_us, uint64_t *item, uint32_t *attempt);
/* Queues item for another attempt on this worker, not before not_before_us. */
void bench_retry_push(bench_worker *worker, uint64_t item, uint32_t attempt, int64_t not_before_us);

/* Setup: cash + accounts, then funding. 0 or BENCH_EXIT_UNREACHABLE. */
int bench_setup(bench_run *run);
/* The measured phase with the live line on stderr. */
void bench_workload(bench_run *run);

/* ---- Verification (verify.c). ---- */

typedef struct bench_verify_report {
	bool complete;             /* every check could run */
	bool balances_complete;    /* every balance was read: invariants checked */
	uint64_t violations;
	uint64_t transfers_checked;
	uint64_t transfers_to_check;
	uint64_t unknown;          /* outcome unknown after the workload */
	uint64_t unresolved;       /* still unknown after resolution */
	uint64_t accepted;         /* answered 202: waited for */
	uint64_t compensated;      /* of those, ended voided (payer refunded) */
	uint64_t unsettled;        /* of those, still processing at the deadline */
	double verify_s;
} bench_verify_report;

/* Runs every check; prints violations and the "verify:" line to stderr. */
void bench_verify(bench_run *run, bench_verify_report *report);

/* ---- Summary (summary.c) and self-test (selftest.c). ---- */

/* Prints the workload's totals, and verify's verdict when given; --json
 * makes it one JSON object on stdout. */
void bench_print_summary(const bench_run *run, const bench_verify_report *verify);
/* Checks the server-independent parts; returns an exit code. */
int bench_self_test(bench_config *config);

/* ---- Small JSON helpers for answers (workload.c). ---- */

/* Finds the error code in a 422 body ("code":"…"). */
bench_reject bench_reject_in_body(const char *body, size_t len);
/* true when an error answer's code is "overloaded": kobod refused the
 * request before anything was committed (a full queue, or a batch whose
 * conflict re-runs ran out). Any other 503 may follow a commit. */
bool bench_body_says_overloaded(const char *body, size_t len);
/* Scans a batch answer for the per-item integer "status" values (and the
 * reject code of each 422). Returns the number of items found, at most cap. */
size_t bench_scan_batch(const char *body, size_t len, uint16_t *statuses,
                        uint8_t *rejects, size_t cap);

#endif /* KOBO_BENCH_H */
