/*
 * internal.h — what the files of src/http share and nobody else sees:
 * the server and per-request structs, the handlers named by the route
 * table, and the edge helpers (request ids, logging).
 *
 * One request's life (server.c drives it, handlers.c fills it in):
 *
 *   RECEIVING ──handler, reply now──────────────────────────▶ READY ──▶ queued
 *       │                                                       ▲
 *       └──handler submits: suspend, kobo_shard_submit ──▶ SUSPENDED
 *                          (writer thread: done → encode → resume)
 *
 * A write that starts a cross-shard saga stays SUSPENDED after its shard
 * answered, until the saga runner says the saga settled or its wait ran out
 * (runner thread: encode → resume), see saga_edge.c.
 */
#ifndef KOBO_HTTP_INTERNAL_H
#define KOBO_HTTP_INTERNAL_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>

#include "../limit/gcra.h"
#include "../obs/obs.h"
#include "codec.h"
#include "routes.h"
#include "server.h"

typedef struct http_reader_set http_reader_set;
typedef struct http_split http_split;
typedef struct http_replicas http_replicas;

struct kobo_http_server {
	struct MHD_Daemon *daemon;
	MHD_socket listen_fd; /* returned by quiesce; closed at stop */
	uint16_t port;
	kobo_shard *shards[KOBO_SHARDS_MAX];
	kobo_store *stores[KOBO_SHARDS_MAX];
	uint32_t shard_count;
	const kobo_shard_map *map;
	kobo_saga_runner *runner;
	unsigned saga_wait_ms;
	/* Submitters hold it shared around kobo_shard_submit; drain takes it
	 * exclusively to set writes_closed, so no submit races a shard stop. */
	pthread_rwlock_t submit_lock;
	bool writes_closed;
	atomic_bool draining;
	atomic_size_t in_flight;
	/* Request memory charged by exchanges (bodies and batch state),
	 * <= KOBO_HTTP_BODIES_BYTES_MAX; see kobo__http_charge. */
	atomic_size_t body_bytes;
	/* Per-thread read connections, closed at stop. */
	pthread_mutex_t readers_lock;
	http_reader_set *readers;
	/* Read replicas (replicas.c); NULL without --postgres-read. */
	http_replicas *replicas;
	/* Per-client-IP limit (limits.c); NULL: off. */
	kobo_gcra *ip_limit;
	/* API keys (auth.c): NULL keyring: --auth off. Per-key limit
	 * (limits.c); NULL: off. */
	kobo_keyring *keyring;
	bool metrics_auth;
	kobo_gcra *key_limit;
	kobo_http_cidr trusted[KOBO_HTTP_TRUSTED_PROXIES_MAX];
	size_t trusted_count;
};

enum {
	KOBO_HTTP_RECEIVING = 0,
	KOBO_HTTP_SUSPENDED,
	KOBO_HTTP_READY,
};

struct kobo_http_exchange {
	kobo_http_server *server;
	struct MHD_Connection *connection;
	const char *method; /* libmicrohttpd's, valid for the request */
	size_t route;       /* index, or kobo_http_route_count when unmatched */
	kobo_http_match match;
	kobo_http_history_query query; /* GET …/transfers only */
	int64_t start_us;
	char request_id[KOBO_REQUEST_ID_LEN_MAX + 1];
	char trace_id[KOBO_HTTP_TRACE_ID_LEN + 1]; /* "" without traceparent */
	char traceparent[KOBO_HTTP_TRACEPARENT_LEN_MAX + 1];

	/* The body, bounded by the route's body_max. */
	kobo_http_buf body;
	size_t body_max;
	size_t body_seen;  /* bytes received, kept or not */
	size_t body_charged; /* bytes counted in server->body_bytes (body and batch state) */
	bool refused;      /* reply decided before the body; body discarded */
	bool lingering;    /* refused: read the body, then reply (server.c) */
	int64_t refused_at_us; /* when refused, for the lingering bound */

	/* A write on its way through a shard. */
	kobo_http_ops ops;
	kobo_result *results;
	kobo_result inline_result;
	kobo_request request;
	uint32_t shard;
	bool is_batch;
	http_split *split;       /* a batch spread over shards (saga_edge.c) */
	kobo_op_kind saga_kind;  /* the op waiting for its saga */
	bool saga_replayed;

	kobo_http_reply reply;
	atomic_int state;

	/* A GET's Kobo-Consistency-Token (replicas.c), parsed in arrive()
	 * (allocated only when sent: it is 2 KB, most requests have none),
	 * and when its wait for replicas to replay it ends (0: not begun). */
	kobo_http_token *token;
	int64_t token_deadline_us;

	/* Shards this write touched (bit i: shard i), for its
	 * Kobo-Consistency-Token; set before the write is submitted. */
	uint64_t touched[(KOBO_SHARDS_MAX + 63) / 64];

	/* The rate limit's client IP and latest decision (limits.c);
	 * limit_on: a limit applied, the reply carries RateLimit-*. */
	char client_ip[46]; /* INET6_ADDRSTRLEN */
	bool limit_on;
	kobo_gcra_decision limit;
	/* The per-key limit's latest decision (limits.c). */
	bool key_limit_on;
	kobo_gcra_decision key_limit;

	/* The request's API key once authenticated (auth.c): its id ("" when
	 * auth is off or the route is public) goes into every op's
	 * created_by and the request's log line. */
	char key_id[KOBO_KEY_ID_LEN + 1];
	uint32_t key_scopes;
	/* A 401/403's WWW-Authenticate value (static), or NULL. */
	const char *www_authenticate;

	/* The request's server span (trace.c), only while OTLP export is on
	 * (span.on): its trace and span ids, the caller's span id (all zero:
	 * a new trace), the sampler's decision, its wall-clock start. */
	struct {
		bool on, sampled, ended;
		uint8_t trace_id[16], span_id[8], parent_id[8];
		int64_t start_ns;
		char path[201]; /* url.path, cut (KOBO_OTLP_ATTR_STR_MAX) */
		/* The shard write, sampled spans only: submitted, answered by
		 * the writer (0: not yet), status; its span id and the batch's
		 * are in request.trace. */
		int64_t write_start_ns, write_end_ns;
		int write_status;
	} span;
};

/* ---- Traces (trace.c). ---- */

/* After arrive(): when OTLP export is on, continues the caller's trace (or
 * starts one), draws the server span's id and rewrites x->traceparent to
 * carry it, so the answer's traceparent names kobod's span. No-op when
 * export is off (x->traceparent stays the caller's, echoed). */
void kobo__http_span_begin(kobo_http_exchange *x, const char *url);
/* Around a write's trip through a shard: before kobo_shard_submit, and on
 * the writer thread when the shard answers (one clock read each, only for
 * sampled spans). The child span is built and exported by span_end. */
void kobo__http_span_write_begin(kobo_http_exchange *x);
void kobo__http_span_write_end(kobo_http_exchange *x, int status);
/* On the writer thread, when a shard answered ops[0..count) of x with
 * results (OK): a "transfer" span per created transfer that goes on
 * without the request (trace.c). No-op unless x's span is sampled. */
#define KOBO_HTTP_TRANSFER_SPANS_MAX 32
void kobo__http_span_transfers(const kobo_http_exchange *x, uint32_t shard,
                               const kobo_op *ops, const kobo_result *results, size_t count);
/* When the reply is queued: ends the server span with the status and hands
 * it to the exporter if sampled. Once per exchange; no-op when off. */
void kobo__http_span_end(kobo_http_exchange *x, int status);

/* ---- Handlers (handlers.c), named by the route table. ---- */

int kobo__http_create_account(kobo_http_exchange *x);
int kobo__http_get_account(kobo_http_exchange *x);
int kobo__http_get_history(kobo_http_exchange *x);
int kobo__http_create_transfer(kobo_http_exchange *x);
int kobo__http_create_batch(kobo_http_exchange *x);
int kobo__http_get_transfer(kobo_http_exchange *x);
int kobo__http_get_events(kobo_http_exchange *x);
int kobo__http_list_transfers(kobo_http_exchange *x);
int kobo__http_post_transfer(kobo_http_exchange *x);
int kobo__http_void_transfer(kobo_http_exchange *x);
int kobo__http_healthz(kobo_http_exchange *x);
int kobo__http_readyz(kobo_http_exchange *x);
int kobo__http_metrics(kobo_http_exchange *x);

/* ---- Server services used by handlers (server.c). ---- */

/* Suspends the connection and queues x->ops on shard; the reply comes from
 * the done callback. On refusal (overloaded, shutting down) fills the 503
 * reply and resumes at once. Always returns KOBO_HTTP_REPLY_LATER. */
int kobo__http_submit(kobo_http_exchange *x, uint32_t shard);

/* Marks shard as touched by this write (see kobo_http_exchange.touched).
 * kobo__http_submit marks the shard it submits to; the handlers mark the
 * others a write reaches: a transfer's payer and payee shards when they
 * route it, a post or void's payee shard. */
void kobo__http_touch(kobo_http_exchange *x, uint32_t shard);

/* What one batch transfer's encoded reply is counted as (its entry in the
 * reply, or its slot in a split batch); the body's metadata is counted
 * with the body. */
#define KOBO_HTTP_BATCH_REPLY_ITEM_BYTES 512

/* Counts bytes more of x's memory against the server's request budget
 * (KOBO_HTTP_BODIES_BYTES_MAX), released when x is freed. false, charging
 * nothing, when the budget would be exceeded: the caller answers 503
 * overloaded (kobo__http_overloaded). */
bool kobo__http_charge(kobo_http_exchange *x, size_t bytes);

/* Fills the 503 overloaded reply (Retry-After: 1) of a request past the
 * memory budget; returns KOBO_HTTP_REPLY_READY. */
int kobo__http_overloaded(kobo_http_exchange *x);

/* The shard of an account under the server's shard map. */
uint32_t kobo__http_shard_of(const kobo_http_exchange *x, const char *account_id);

/* true when the result is a cross-shard transfer whose saga is under way. */
bool kobo__http_saga_pending(const kobo_result *result);

/* A replayed create of a settled cross-shard transfer answers like the
 * first answer did: a compensated one replays its refusal (422). Rewrites
 * result in place; anything else is left alone. */
void kobo__http_settled_result(const kobo_op *op, kobo_result *result);

/* Instead of answering x now (on_done), waits for the saga of its result;
 * answers 202 with the current state if it does not settle in time. */
void kobo__http_wait_saga(kobo_http_exchange *x, const kobo_result *result);

/* Submits a batch whose transfers live on several shards or cross them:
 * one request per shard, answers gathered in request order, sagas waited
 * for. shards[i] is the shard of ops[i]. Returns KOBO_HTTP_REPLY_LATER or
 * READY (a 503 when out of memory). */
int kobo__http_submit_split(kobo_http_exchange *x, const uint32_t *shards);
/* Frees what kobo__http_submit_split allocated (exchange_free). */
void kobo__http_split_free(http_split *split);

/* Resumes x with the reply it holds: it belongs to libmicrohttpd again. */
void kobo__http_resume(kobo_http_exchange *x);

/* true when writes are open and every shard can commit (/readyz). */
bool kobo__http_shards_ready(kobo_http_server *server);

/* The calling thread's read connection on shard, opened on first use.
 * KOBO_OK with *reader, or a store error. */
int kobo__http_reader(kobo_http_server *server, uint32_t shard,
                      kobo_store_reader **reader);

/* ---- Read replicas (replicas.c). ---- */

/* Starts the replica monitor for shard_count shards; urls[i] is shard i's
 * replica URL or NULL. Samples each once before returning (a replica that
 * cannot be reached now is retried in the background). KOBO_ENOMEM. */
int kobo__http_replicas_start(const char *const *urls, uint32_t shard_count,
                              http_replicas **out);
/* Stops the monitor thread (GETs read primaries from now on). */
void kobo__http_replicas_stop(http_replicas *replicas);
/* Closes the replica stores; every reader on them must be closed. */
void kobo__http_replicas_free(http_replicas *replicas);

/* One HTTP thread's reader on one shard's replica (in its reader set). */
typedef struct http_thread_replica {
	kobo_store_reader *reader; /* NULL: none open */
	int64_t retry_at_us;       /* after a failure: no reopen before */
	int backoff_ms;
} http_thread_replica;

/* The calling thread's replica slot for shard (server.c); NULL when out of
 * memory. */
http_thread_replica *kobo__http_thread_replica(kobo_http_server *server, uint32_t shard);

/* Where one GET read of one shard goes (see replicas.c). */
typedef struct kobo_http_read {
	uint32_t shard;
	kobo_store_reader *reader;
	bool replica; /* reader is the thread's replica reader */
	bool counted; /* counted in kobo_replica_reads_total */
} kobo_http_read;

/* Picks the reader for a read of shard: routing lookups (a write finding
 * its shard) always read the primary; other GETs read the replica when
 * there is a usable one that has replayed x's token for shard (waiting a
 * bounded time), else the primary. KOBO_OK with read->reader, or the
 * primary reader's open error. */
int kobo__http_read_begin(kobo_http_exchange *x, uint32_t shard, bool routing,
                          kobo_http_read *read);
/* Call after each attempt with its result in *rc: true when the attempt
 * ran on a replica and failed, and read now holds the primary's reader
 * (or *rc its open error and false): do the read again. Counts the read
 * once it is final. */
bool kobo__http_read_retry(kobo_http_exchange *x, kobo_http_read *read, int *rc);

/* The one map from a failed write's status (kobo_request.status, shard.h)
 * to its answer: KOBO_ESHUTDOWN 503 shutting_down; the ledger's
 * KOBO_EINVAL / KOBO_EFULL (a programmer error inside the batch) 500
 * internal_error; KOBO_ECONFLICT (re-runs exhausted, nothing committed) 503
 * overloaded; any other store error kind 503 storage_unavailable (outcome
 * unknown: retry with the same id). Sets *code, returns the HTTP status. */
int kobo__http_write_failed(int status, const char **code);

/* Fills x->reply with the error and returns KOBO_HTTP_REPLY_READY. */
int kobo__http_fail(kobo_http_exchange *x, int status, const char *code,
                    const char *message);

/* ---- Rate limits (limits.c). ---- */

/* Copies the trusted proxies and creates the per-IP table when
 * config->ip_rate > 0. KOBO_OK, KOBO_EINVAL (bad rate, burst or proxy
 * count), KOBO_ENOMEM. */
int kobo__http_limits_init(kobo_http_server *server, const kobo_http_config *config);
void kobo__http_limits_free(kobo_http_server *server);
/* Charges one request to x's client IP (x->route matched). true: go on;
 * false: x->reply holds the 429 (counted in metrics). */
bool kobo__http_limit_arrive(kobo_http_exchange *x);
/* Charges the rest of a parsed batch's cost (kobo_gcra_batch_cost − 1).
 * KOBO_OK: go on; else x->reply holds the 429: answer it, queue nothing. */
int kobo__http_limit_batch(kobo_http_exchange *x, size_t transfers);
/* Adds RateLimit-Limit, -Remaining, -Reset when a limit applied to x. */
void kobo__http_limit_headers(const kobo_http_exchange *x, struct MHD_Response *response);

/* Charges one request to x's API key (x->key_id set). true: go on;
 * false: x->reply holds the 429 (counted, by="key"). */
bool kobo__http_limit_key(kobo_http_exchange *x);

/* ---- API keys (auth.c). ---- */

/* After the route matched and the IP limit passed: when the server has a
 * key ring and the route is not public, checks the Authorization header,
 * the key and its scope, then the per-key limit. true: go on (x->key_id
 * set when a key was checked); false: x->reply holds the 401, 403 or 429
 * (counted) and nothing of the request may run. */
bool kobo__http_auth_arrive(kobo_http_exchange *x);

/* ---- Edge (edge.c). ---- */

/* 32 random lowercase hex digits + NUL into out (33 bytes): a per-thread
 * PRNG seeded from getrandom(2). */
void kobo__http_new_request_id(char *out);

/* Logs the http_request line and counts the request in metrics. */
void kobo__http_log_request(const kobo_http_exchange *x, int status);

#endif /* KOBO_HTTP_INTERNAL_H */
