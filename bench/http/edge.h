/*
 * edge.h — what every bench/http server does per request besides HTTP, so
 * the servers (edge_mhd.c in three modes, edge_h2o.c, edge_uv.c) differ only in
 * their HTTP library. Not part of kobod: `make bench-http` builds and runs
 * them (bench/http/run.sh; results in docs/benchmarks.md).
 *
 * Per request, as Kobo's edge does without the ledger:
 *   1. the server's event loop reads an HTTP/1.1 POST (Content-Length body,
 *      keep-alive) and parses its JSON with jansson (edge_parse, strict as
 *      Kobo: duplicate keys, >64-bit integers and bad UTF-8 are refused);
 *   2. it hands the request to ONE worker thread through a mutex + condvar
 *      queue (edge_submit), as src/shard/writer.c receives submissions;
 *   3. the worker drains the whole queue, writes every reply (~300-byte
 *      JSON with snprintf, as Kobo's on_done does on the writer thread),
 *      optionally waits EDGE_COMMIT_US as a commit would, then hands the
 *      whole batch back (the server's deliver callback);
 *   4. the server's event loop thread writes each reply.
 *
 * Limits (Kobo's defaults, src/http/server.h and API.md): body ≤ 1 MiB
 * (413 past it), request head ≤ 16 KiB where the library lets us say so,
 * 1,024 connections, a 30 s connection timeout, and a bounded worker queue
 * (503 past it).
 */
#ifndef KOBO_BENCH_HTTP_EDGE_H
#define KOBO_BENCH_HTTP_EDGE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EDGE_BODY_MAX (1u << 20)
#define EDGE_HEAD_MAX (16u << 10)
#define EDGE_CONNECTIONS_MAX 1024u
#define EDGE_TIMEOUT_S 30u
#define EDGE_QUEUE_MAX 4096u
#define EDGE_REPLY_MAX 640u
#define EDGE_FIELD_MAX 64u

typedef struct edge_request edge_request;
struct edge_request {
	edge_request *next;  /* worker queue, then the delivered batch */
	void *owner;         /* the server's connection or request: not touched here */
	int status;          /* HTTP status of reply */
	size_t reply_len;
	char reply[EDGE_REPLY_MAX];
	char request_id[24]; /* X-Request-Id of the reply */
	/* The transfer, as edge_parse read it. */
	char id[EDGE_FIELD_MAX + 1], from[EDGE_FIELD_MAX + 1], to[EDGE_FIELD_MAX + 1];
	char currency[4];
	int64_t amount_minor;
};

/* Called on the worker thread with one batch: a list through ->next of
 * requests whose reply is written. The callee owns the requests from here
 * and must get each to the event loop thread, which writes it. */
typedef void (*edge_deliver_fn)(edge_request *batch, void *context);

typedef struct edge_worker {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	edge_request *head, **tail;
	size_t depth; /* ≤ EDGE_QUEUE_MAX */
	bool stopping;
	pthread_t thread;
	edge_deliver_fn deliver;
	void *context;
	unsigned commit_us; /* EDGE_COMMIT_US: sleep per batch, as a commit waits on the disk */
	uint64_t batches, requests; /* worker thread only; read after stop */
} edge_worker;

/* Starts the worker thread (named "edge-worker"). Environment:
 * EDGE_COMMIT_US (0): the worker sleeps this long per batch before it
 * delivers, standing for a durable commit (fdatasync: 110-280 µs here);
 * EDGE_STATS: a file that edge_worker_stop writes "batches requests" to.
 * Returns 0 or an errno. */
int edge_worker_start(edge_worker *worker, edge_deliver_fn deliver, void *context);
/* Queues request; any thread. Returns false, queueing nothing, when the
 * queue is full or stopping: the caller answers it (edge_error 503). */
bool edge_submit(edge_worker *worker, edge_request *request);
/* Delivers what is queued, stops and joins the thread. */
void edge_worker_stop(edge_worker *worker);

/* Fills request from a transfer body: true when it is valid (then submit
 * it); false with request's 400 reply written. Resets request first. */
bool edge_parse(edge_request *request, const char *body, size_t len);
/* Writes an error reply into request (API.md's error shape). */
void edge_error(edge_request *request, int status, const char *code, const char *message);
/* Numbers request with a fresh X-Request-Id (event loop thread). */
void edge_new_request_id(edge_request *request);

/* Blocks SIGINT, SIGTERM and SIGPIPE in the calling thread and every
 * thread it starts afterwards; edge_wait_signal then waits for the first two. */
void edge_block_signals(void);
int edge_wait_signal(void);

/* Parses text as a port (1-65535); exits with usage on anything else
 * (also when text is NULL). */
uint16_t edge_port(const char *text, const char *usage);

#endif
