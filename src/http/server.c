/*
 * server.c — libmicrohttpd wiring: one access handler drives every request
 * through the states of internal.h.
 *
 * Invariants:
 *   1. A handler runs only once the whole body has arrived and the route,
 *      the request id and the body size have been checked here.
 *   2. A connection is suspended before its request is submitted to a shard,
 *      and resumed exactly once: by the shard's done callback, or at once
 *      when the submit is refused. The exchange is freed only by
 *      on_completed, which libmicrohttpd calls after resume, so the writer
 *      thread never touches freed memory.
 *   3. No thread is inside kobo_shard_submit once drain returns (submit_lock).
 *
 * libmicrohttpd runs in poll mode: its epoll mode stalls at 256 connections
 * on Debian's 0.9.75 (../shared/MEASUREMENTS.md). A connection timeout is
 * always set so a slow client cannot hold a connection forever.
 */
#include "internal.h"

#include <errno.h>
#include <netdb.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* Lingering close. A reply queued before the body has arrived makes
 * libmicrohttpd close the connection with the rest of the body unread, and
 * the kernel then resets it: a client still writing (Python's http.client
 * sends the whole body first) sees EPIPE/ECONNRESET, never its 413. So a
 * refused request's body is read and dropped, and the reply is queued once
 * it has ended, within these bounds past the route's limit; past them the
 * connection is closed unanswered. A body announced longer than the bound,
 * or sent only after "Expect: 100-continue", is answered at once. */
#define LINGER_BYTES_MAX (4u << 20)
#define LINGER_US_MAX (2 * 1000 * 1000)

struct http_reader_set {
	kobo_http_server *server;
	kobo_store_reader *readers[KOBO_SHARDS_MAX];
	http_thread_replica replicas[KOBO_SHARDS_MAX]; /* used with --postgres-read */
	http_reader_set *next;
};

static _Thread_local http_reader_set *thread_readers;

/* ---- Replies. ---- */

int kobo__http_fail(kobo_http_exchange *x, int status, const char *code,
                    const char *message)
{
	kobo_http_reply_error(&x->reply, status, code, message, x->request_id);
	return KOBO_HTTP_REPLY_READY;
}

static void refuse(kobo_http_exchange *x, const kobo_http_error *err)
{
	kobo__http_fail(x, err->status, err->code, err->message);
	x->refused = true;
	x->refused_at_us = kobo_monotonic_us();
}

/* Kobo-Consistency-Token (API.md): "kct1:" and, for every shard the write
 * touched, "<shard>@<commit sequence>" read now, after the write's commit,
 * so the token covers it (with several nodes the shard's sequence is the
 * database's meta.commit_seq, so any node's is comparable). A GET that
 * sends it back sees the write: with the embedded store every GET does; a
 * read replica serves it only once its own meta.commit_seq has reached the
 * token's (replicas.c), else the primary does; lookups that route writes
 * read primaries. Only writes have touched shards. Parsed back by
 * kobo_http_token_parse (codec.c). */
static void add_consistency_token(const kobo_http_exchange *x,
                                  struct MHD_Response *response)
{
	char token[16 + KOBO_SHARDS_MAX * 26];
	size_t len = (size_t)snprintf(token, sizeof token, "kct1:");
	bool any = false;
	for (uint32_t i = 0; i < x->server->shard_count; i++) {
		if (!(x->touched[i / 64] & (UINT64_C(1) << (i % 64))))
			continue;
		uint64_t seq = kobo_shard_commit_token(x->server->shards[i]);
		len += (size_t)snprintf(token + len, sizeof token - len,
		                        "%s%" PRIu32 "@%" PRIu64, any ? "," : "", i, seq);
		any = true;
	}
	kobo_assert(len < sizeof token);
	if (any)
		MHD_add_response_header(response, "Kobo-Consistency-Token", token);
}

void kobo__http_touch(kobo_http_exchange *x, uint32_t shard)
{
	kobo_assert(shard < x->server->shard_count);
	x->touched[shard / 64] |= UINT64_C(1) << (shard % 64);
}

static enum MHD_Result queue_reply(kobo_http_exchange *x)
{
	kobo_http_reply *r = &x->reply;
	if (r->body.failed) {
		kobo_http_buf_free(&r->body);
		kobo_http_reply_error(r, 503, "overloaded", "out of memory", x->request_id);
		r->retry_after_s = 1;
		if (r->body.failed)
			return MHD_NO;
	}
	struct MHD_Response *response = MHD_create_response_from_buffer(
		r->body.len, r->body.data, MHD_RESPMEM_MUST_FREE);
	if (!response)
		return MHD_NO;
	kobo_http_buf_init(&r->body); /* libmicrohttpd frees it now */
	MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE,
	                        r->content_type ? r->content_type : "application/json");
	MHD_add_response_header(response, "X-Request-Id", x->request_id);
	if (x->traceparent[0])
		MHD_add_response_header(response, "traceparent", x->traceparent);
	if (r->replayed)
		MHD_add_response_header(response, "Idempotent-Replayed", "true");
	if (r->retry_after_s) {
		char seconds[16];
		snprintf(seconds, sizeof(seconds), "%u", r->retry_after_s);
		MHD_add_response_header(response, MHD_HTTP_HEADER_RETRY_AFTER, seconds);
	}
	if (r->allow[0])
		MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, r->allow);
	if (x->www_authenticate && (r->status == 401 || r->status == 403))
		MHD_add_response_header(response, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
		                        x->www_authenticate);
	kobo__http_limit_headers(x, response);
	if (r->status >= 200 && r->status < 300)
		add_consistency_token(x, response);
	kobo__http_log_request(x, r->status);
	kobo__http_span_end(x, r->status);
	enum MHD_Result rc = MHD_queue_response(x->connection, (unsigned)r->status,
	                                        response);
	MHD_destroy_response(response);
	return rc;
}

/* ---- Requests: arrival, body, dispatch. ---- */

static enum MHD_Result query_arg(void *cls, enum MHD_ValueKind kind,
                                 const char *key, const char *value)
{
	(void)kind;
	kobo_http_exchange *x = cls;
	kobo_http_error err;
	int rc;
	if (kobo_http_routes[x->route].handler == kobo__http_get_history)
		rc = kobo_http_history_query_arg(&x->query, key, value, &err);
	else if (kobo_http_routes[x->route].handler == kobo__http_list_transfers)
		rc = kobo_http_request_query_arg(&x->query, key, value, &err);
	else if (kobo_http_routes[x->route].handler == kobo__http_get_events)
		rc = kobo_http_events_query_arg(&x->query, key, value, &err);
	else
		rc = kobo_http_error_set(&err, 400, "invalid_request",
		                         "%.64s: unknown query parameter", key);
	if (rc != KOBO_OK) {
		refuse(x, &err);
		return MHD_NO; /* stop iterating */
	}
	return MHD_YES;
}

/* Counts n more bytes of x against KOBO_HTTP_BODIES_BYTES_MAX.
 * Returns false, charging nothing, when the server holds too much already. */
bool kobo__http_charge(kobo_http_exchange *x, size_t n)
{
	atomic_size_t *total = &x->server->body_bytes;
	size_t before = atomic_fetch_add(total, n);
	if (before + n > KOBO_HTTP_BODIES_BYTES_MAX) {
		atomic_fetch_sub(total, n);
		return false;
	}
	x->body_charged += n;
	return true;
}

static const char overloaded_message[] = "the server holds too much request memory; retry";

int kobo__http_overloaded(kobo_http_exchange *x)
{
	kobo__http_fail(x, 503, "overloaded", overloaded_message);
	x->reply.retry_after_s = 1;
	return KOBO_HTTP_REPLY_READY;
}

static void refuse_overloaded(kobo_http_exchange *x)
{
	kobo__http_overloaded(x);
	x->refused = true;
	kobo_http_buf_free(&x->body);
}

/* Checks everything knowable from the request line and headers. */
static void arrive(kobo_http_exchange *x, const char *url)
{
	struct MHD_Connection *c = x->connection;
	kobo_http_error err;
	const char *traceparent = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "traceparent");
	if (traceparent && kobo_http_traceparent_parse(traceparent, strlen(traceparent),
	                                               x->trace_id))
		memcpy(x->traceparent, traceparent, strlen(traceparent) + 1);

	const char *request_id = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
	if (request_id && kobo_http_request_id_valid(request_id, strlen(request_id))) {
		memcpy(x->request_id, request_id, strlen(request_id) + 1);
	} else {
		kobo__http_new_request_id(x->request_id);
		if (request_id) {
			kobo_http_error_set(&err, 400, "invalid_request",
			                    "X-Request-Id: must be 1-128 characters of A-Z a-z 0-9 . _ -");
			refuse(x, &err);
			return;
		}
	}

	if (kobo_http_route_match(x->method, url, &x->match) != KOBO_OK) {
		refuse(x, &x->match.error);
		if (x->match.error.status == 405)
			memcpy(x->reply.allow, x->match.allow, sizeof(x->reply.allow));
		return;
	}
	x->route = x->match.route;
	x->body_max = kobo_http_routes[x->route].body_max;
	if (!kobo__http_limit_arrive(x) || !kobo__http_auth_arrive(x)) {
		/* 429 (limits.c), 401 or 403 (auth.c): a body within the
		 * lingering bounds is read and dropped, then answered; one
		 * announced longer, or awaiting "100-continue", is answered at
		 * once (on_request). */
		x->refused = true;
		x->refused_at_us = kobo_monotonic_us();
		const char *length = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
		                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
		const char *expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
		                                                 MHD_HTTP_HEADER_EXPECT);
		x->lingering = !(expect && strcasecmp(expect, "100-continue") == 0);
		if (length) {
			char *end;
			errno = 0;
			unsigned long long n = strtoull(length, &end, 10);
			x->lingering &= !errno && !*end && n <= x->body_max + LINGER_BYTES_MAX;
		}
		return;
	}
	if (kobo_http_routes[x->route].reads_ledger) {
		/* Read-your-writes (replicas.c): validated in every mode, so a
		 * client learns of a bad token before it matters. */
		const char *token = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
		                                                "Kobo-Consistency-Token");
		if (token) {
			x->token = malloc(sizeof(*x->token));
			if (!x->token) {
				kobo_http_error_set(&err, 503, "overloaded", "out of memory");
				refuse(x, &err);
				x->reply.retry_after_s = 1;
				return;
			}
			if (kobo_http_token_parse(token, strlen(token), x->server->shard_count,
			                          x->token, &err) != KOBO_OK) {
				refuse(x, &err);
				return;
			}
		}
	}
	kobo_http_history_query_init(&x->query);
	MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, query_arg, x);
	if (x->refused)
		return;

	const char *length = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
	                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
	if (length) {
		char *end;
		errno = 0;
		unsigned long long n = strtoull(length, &end, 10);
		if (errno || *end || n > x->body_max) {
			kobo_http_error_set(&err, 413, "payload_too_large",
			                    "body: at most %zu bytes on this route", x->body_max);
			refuse(x, &err);
			const char *expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
			                                                 MHD_HTTP_HEADER_EXPECT);
			x->lingering = !errno && !*end && n <= x->body_max + LINGER_BYTES_MAX &&
			               !(expect && strcasecmp(expect, "100-continue") == 0);
			return;
		}
		if (n && !kobo__http_charge(x, (size_t)n)) {
			refuse_overloaded(x);
			return;
		}
		if (n && !kobo_http_buf_reserve(&x->body, (size_t)n)) {
			kobo_http_error_set(&err, 503, "overloaded", "out of memory");
			refuse(x, &err);
			x->reply.retry_after_s = 1;
		}
	}
}

static kobo_http_exchange *exchange_new(kobo_http_server *server,
                                        struct MHD_Connection *connection,
                                        const char *url, const char *method)
{
	kobo_http_exchange *x = calloc(1, sizeof(*x));
	if (!x)
		return NULL;
	atomic_fetch_add(&server->in_flight, 1);
	x->server = server;
	x->connection = connection;
	x->method = method;
	x->route = kobo_http_route_count;
	x->body_max = KOBO_HTTP_BODY_MAX;
	x->start_us = kobo_monotonic_us();
	x->results = &x->inline_result;
	kobo_http_buf_init(&x->body);
	kobo_http_ops_init(&x->ops);
	kobo_http_reply_init(&x->reply);
	atomic_init(&x->state, KOBO_HTTP_RECEIVING);
	arrive(x, url);
	kobo__http_span_begin(x, url);
	return x;
}

static void exchange_free(kobo_http_exchange *x)
{
	kobo_http_server *server = x->server;
	/* Invariant 2: a suspended exchange still belongs to a shard (or a
	 * saga wait), whose callback would write into freed memory. */
	kobo_assert(atomic_load(&x->state) != KOBO_HTTP_SUSPENDED);
	if (x->split)
		kobo__http_split_free(x->split);
	if (x->results != &x->inline_result)
		free(x->results);
	kobo_http_ops_free(&x->ops);
	kobo_http_buf_free(&x->body);
	free(x->token);
	kobo_http_reply_free(&x->reply);
	size_t charged_before = atomic_fetch_sub(&server->body_bytes, x->body_charged);
	kobo_assert(charged_before >= x->body_charged); /* never below zero */
	free(x);
	size_t in_flight_before = atomic_fetch_sub(&server->in_flight, 1);
	kobo_assert(in_flight_before > 0);
}

/* Returns false when the connection should be dropped instead of answered. */
static bool receive(kobo_http_exchange *x, const char *data, size_t size)
{
	x->body_seen += size;
	if (x->refused) {
		/* Drop the body of a refused request, within the lingering
		 * bounds; its reply goes out when the body has ended. */
		return x->body_seen <= x->body_max + LINGER_BYTES_MAX &&
		       kobo_monotonic_us() - x->refused_at_us <= LINGER_US_MAX;
	}
	if (x->body_seen > x->body_max) {
		/* A chunked body outgrew the limit: answer 413 once it ends. */
		kobo_http_error err;
		kobo_http_error_set(&err, 413, "payload_too_large",
		                    "body: at most %zu bytes on this route", x->body_max);
		refuse(x, &err);
		kobo_http_buf_free(&x->body);
		return true;
	}
	/* A chunked body (or one longer than announced) is charged as it grows. */
	if (x->body.len + size > x->body_charged &&
	    !kobo__http_charge(x, x->body.len + size - x->body_charged)) {
		refuse_overloaded(x);
		return true;
	}
	kobo_http_buf_append(&x->body, data, size);
	return true;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *connection,
                                  const char *url, const char *method,
                                  const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
	(void)version;
	kobo_http_server *server = cls;
	kobo_http_exchange *x = *con_cls;
	if (!x) {
		x = exchange_new(server, connection, url, method);
		if (!x)
			return MHD_NO;
		*con_cls = x;
		/* Too large for the route (413), over a rate limit (429),
		 * without a valid key or scope (401, 403) or for the server's
		 * memory budget (503): say so now rather than read megabytes to
		 * drop them (libmicrohttpd then closes the connection), unless
		 * the body is within the lingering bounds: then it is read and
		 * dropped and the answer follows it (receive). A 503 is said at
		 * once: an overloaded server reads no more than it must. */
		if (x->refused && !x->lingering &&
		    (x->reply.status == 413 || x->reply.status == 429 ||
		     x->reply.status == 401 || x->reply.status == 403 ||
		     x->reply.status == 503))
			return queue_reply(x);
		return MHD_YES;
	}
	if (*upload_data_size) {
		bool keep = receive(x, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return keep ? MHD_YES : MHD_NO;
	}
	switch (atomic_load_explicit(&x->state, memory_order_acquire)) {
	case KOBO_HTTP_RECEIVING:
		if (x->refused)
			return queue_reply(x);
		if (x->body.failed) {
			kobo__http_fail(x, 503, "overloaded", "out of memory");
			x->reply.retry_after_s = 1;
			return queue_reply(x);
		}
		/* Invariant 1: the whole body is in, and arrive() matched the
		 * route and checked the request id and the body size. */
		kobo_assert(x->route < kobo_http_route_count);
		kobo_assert(x->request_id[0] != '\0');
		kobo_assert(x->body_seen <= x->body_max && x->body.len <= x->body_max);
		if (kobo_http_routes[x->route].handler(x) == KOBO_HTTP_REPLY_READY) {
			/* Answered here, so nothing was submitted or suspended. */
			kobo_assert(atomic_load(&x->state) == KOBO_HTTP_RECEIVING);
			return queue_reply(x);
		}
		return MHD_YES;
	case KOBO_HTTP_READY:
		return queue_reply(x);
	default: /* suspended: libmicrohttpd does not call us then */
		return MHD_YES;
	}
}

static void on_completed(void *cls, struct MHD_Connection *connection,
                         void **con_cls, enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)connection;
	(void)toe;
	if (*con_cls)
		exchange_free(*con_cls);
	*con_cls = NULL;
}

/* ---- Writes through a shard. ---- */

/* Runs on the shard's writer thread once the batch is durable. */
static void on_done(kobo_request *request)
{
	kobo_http_exchange *x = request->user;
	kobo__http_span_write_end(x, request->status);
	if (request->status == KOBO_OK)
		kobo__http_span_transfers(x, x->shard, x->ops.ops, x->results, x->ops.count);
	if (request->status != KOBO_OK) {
		const char *code;
		int status = kobo__http_write_failed(request->status, &code);
		kobo__http_fail(x, status, code, NULL);
		x->reply.retry_after_s = status == 503 ? 1 : 0;
	} else if (x->is_batch) {
		kobo_http_reply_batch(&x->reply, x->ops.ops, x->results, x->ops.count,
		                      x->request_id);
	} else if (x->server->runner && kobo__http_saga_pending(&x->results[0])) {
		kobo__http_wait_saga(x, &x->results[0]);
		return; /* answered when the saga settles */
	} else {
		bool replayed = x->results[0].code == KOBO_RESULT_REPLAYED;
		kobo__http_settled_result(&x->ops.ops[0], &x->results[0]);
		kobo_http_reply_result(&x->reply, &x->results[0], x->request_id);
		x->reply.replayed = replayed; /* a replayed refusal too */
	}
	kobo__http_resume(x);
}

void kobo__http_resume(kobo_http_exchange *x)
{
	/* Invariant 2: resumed exactly once, and only once suspended. */
	int was = atomic_exchange_explicit(&x->state, KOBO_HTTP_READY,
	                                   memory_order_acq_rel);
	kobo_assert(was == KOBO_HTTP_SUSPENDED);
	/* x belongs to libmicrohttpd again from here on. */
	MHD_resume_connection(x->connection);
}

int kobo__http_submit(kobo_http_exchange *x, uint32_t shard)
{
	kobo_http_server *server = x->server;
	x->shard = shard;
	for (size_t i = 0; i < x->ops.count; i++) {
		memcpy(x->ops.ops[i].request_id, x->request_id, sizeof(x->request_id));
		memcpy(x->ops.ops[i].created_by, x->key_id, sizeof(x->key_id));
		memcpy(x->ops.ops[i].trace_id, x->trace_id, sizeof(x->trace_id));
	}
	x->request.ops = x->ops.ops;
	x->request.results = x->results;
	x->request.op_count = x->ops.count;
	x->request.done = on_done;
	x->request.user = x;
	kobo__http_touch(x, shard);
	/* Invariant 2: suspended once, before the shard can see it. */
	kobo_assert(atomic_load(&x->state) == KOBO_HTTP_RECEIVING);
	atomic_store(&x->state, KOBO_HTTP_SUSPENDED);
	MHD_suspend_connection(x->connection);

	kobo__http_span_write_begin(x);
	pthread_rwlock_rdlock(&server->submit_lock);
	int rc = server->writes_closed ? KOBO_ESHUTDOWN
	                               : kobo_shard_submit(server->shards[shard], &x->request);
	pthread_rwlock_unlock(&server->submit_lock);
	if (rc != KOBO_OK) {
		if (rc == KOBO_EOVERLOADED) {
			/* kobo_shard_submit counted it in kobo_overloaded_total. */
			kobo__http_fail(x, 503, "overloaded", NULL);
		} else if (rc == KOBO_ESHUTDOWN) {
			kobo__http_fail(x, 503, "shutting_down", NULL);
		} else {
			kobo__http_fail(x, 500, "internal_error", "the shard refused the request");
		}
		x->reply.retry_after_s = rc == KOBO_EINVAL ? 0 : 1;
		kobo__http_resume(x);
	}
	return KOBO_HTTP_REPLY_LATER;
}

bool kobo__http_shards_ready(kobo_http_server *server)
{
	pthread_rwlock_rdlock(&server->submit_lock);
	bool ready = !server->writes_closed;
	for (uint32_t i = 0; ready && i < server->shard_count; i++)
		ready = kobo_shard_ready(server->shards[i]);
	pthread_rwlock_unlock(&server->submit_lock);
	return ready;
}

/* ---- Reads: one connection per HTTP thread and shard. ---- */

/* The calling thread's reader set on server, made on first use. */
static http_reader_set *thread_set(kobo_http_server *server)
{
	http_reader_set *set = thread_readers;
	if (!set || set->server != server) {
		set = calloc(1, sizeof(*set));
		if (!set)
			return NULL;
		set->server = server;
		pthread_mutex_lock(&server->readers_lock);
		set->next = server->readers;
		server->readers = set;
		pthread_mutex_unlock(&server->readers_lock);
		thread_readers = set;
	}
	return set;
}

http_thread_replica *kobo__http_thread_replica(kobo_http_server *server, uint32_t shard)
{
	http_reader_set *set = thread_set(server);
	return set ? &set->replicas[shard] : NULL;
}

int kobo__http_reader(kobo_http_server *server, uint32_t shard,
                      kobo_store_reader **reader)
{
	http_reader_set *set = thread_set(server);
	if (!set)
		return KOBO_ENOMEM;
	if (!set->readers[shard]) {
		int rc = kobo_store_reader_open(server->stores[shard], &set->readers[shard]);
		if (rc != KOBO_OK) {
			set->readers[shard] = NULL;
			return rc;
		}
	}
	*reader = set->readers[shard];
	return KOBO_OK;
}

/* ---- Lifecycle. ---- */

static void on_library_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	char message[512], escaped[1024];
	vsnprintf(message, sizeof(message), fmt, ap);
	size_t len = strlen(message);
	while (len && (message[len - 1] == '\n' || message[len - 1] == '\r'))
		message[--len] = '\0';
	kobo_json_escape(escaped, sizeof(escaped), message);
	kobo_log(KOBO_LOG_WARN, "http_library", "\"message\":\"%s\"", escaped);
}

int kobo_http_server_start(const kobo_http_config *config, kobo_http_server **out)
{
	if (!config || !out || !config->map || config->shard_count < 1 ||
	    config->map->shard_count != config->shard_count ||
	    (config->shard_count > 1 && !config->runner) ||
	    config->shard_count > KOBO_SHARDS_MAX || config->threads > KOBO_HTTP_THREADS_MAX)
		return KOBO_EINVAL;
	const char *host = config->host ? config->host : "127.0.0.1";
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
	struct addrinfo *addresses = NULL;
	int gai = getaddrinfo(host, NULL, &hints, &addresses);
	if (gai != 0 || !addresses) {
		kobo_log(KOBO_LOG_ERROR, "http_listen_failed",
		         "\"reason\":\"cannot resolve the listen host\"");
		return KOBO_EINVAL;
	}
	struct sockaddr_storage address;
	memcpy(&address, addresses->ai_addr, addresses->ai_addrlen);
	bool ipv6 = addresses->ai_family == AF_INET6;
	freeaddrinfo(addresses);
	if (ipv6)
		((struct sockaddr_in6 *)&address)->sin6_port = htons(config->port);
	else
		((struct sockaddr_in *)&address)->sin_port = htons(config->port);

	if (!config->keyring && (config->metrics_auth || config->key_rate > 0))
		return KOBO_EINVAL; /* both need keys */
	kobo_http_server *server = calloc(1, sizeof(*server));
	if (!server)
		return KOBO_ENOMEM;
	server->keyring = config->keyring;
	server->metrics_auth = config->metrics_auth;
	int limits_rc = kobo__http_limits_init(server, config);
	if (limits_rc != KOBO_OK) {
		free(server);
		return limits_rc;
	}
	server->listen_fd = MHD_INVALID_SOCKET;
	server->shard_count = config->shard_count;
	server->map = config->map;
	server->runner = config->runner;
	server->saga_wait_ms = config->saga_wait_ms ? config->saga_wait_ms
	                                            : KOBO_HTTP_SAGA_WAIT_MS_DEFAULT;
	if (config->replica_urls &&
	    kobo__http_replicas_start(config->replica_urls, config->shard_count,
	                              &server->replicas) != KOBO_OK) {
		kobo__http_limits_free(server);
		free(server);
		return KOBO_ENOMEM;
	}
	for (uint32_t i = 0; i < config->shard_count; i++) {
		server->shards[i] = config->shards[i];
		server->stores[i] = config->stores[i];
	}
	pthread_rwlock_init(&server->submit_lock, NULL);
	pthread_mutex_init(&server->readers_lock, NULL);
	atomic_init(&server->draining, false);
	atomic_init(&server->in_flight, 0);
	atomic_init(&server->body_bytes, 0);

	static const char *names[KOBO_METRICS_ROUTES_MAX];
	for (size_t i = 0; i < kobo_http_route_count; i++)
		names[i] = kobo_http_routes[i].name;
	kobo_metrics_set_routes(names, kobo_http_route_count);

	unsigned timeout = config->connection_timeout_s ? config->connection_timeout_s
	                                                : KOBO_HTTP_CONNECTION_TIMEOUT_S_DEFAULT;
	unsigned connections = config->connections_max ? config->connections_max
	                                               : KOBO_HTTP_CONNECTIONS_MAX_DEFAULT;
	size_t memory = config->connection_memory_bytes ? config->connection_memory_bytes
	                                                : KOBO_HTTP_CONNECTION_MEMORY_DEFAULT;
	unsigned threads = config->threads ? config->threads : KOBO_HTTP_THREADS_DEFAULT;
	unsigned flags = MHD_USE_POLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
	                 MHD_USE_ERROR_LOG | (ipv6 ? MHD_USE_IPv6 : 0);
	server->daemon = MHD_start_daemon(
		flags, config->port, NULL, NULL, on_request, server,
		MHD_OPTION_EXTERNAL_LOGGER, on_library_log, server, /* first: see MHD */
		MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&address,
		MHD_OPTION_CONNECTION_TIMEOUT, timeout,
		MHD_OPTION_CONNECTION_LIMIT, connections,
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, memory,
		MHD_OPTION_NOTIFY_COMPLETED, on_completed, server,
		/* A pool only when asked: END cuts the list short otherwise. */
		threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, threads,
		MHD_OPTION_END);
	if (!server->daemon) {
		kobo_log(KOBO_LOG_ERROR, "http_listen_failed",
		         "\"reason\":\"cannot listen (address in use or not permitted)\","
		         "\"port\":%u", (unsigned)config->port);
		pthread_rwlock_destroy(&server->submit_lock);
		pthread_mutex_destroy(&server->readers_lock);
		kobo__http_replicas_stop(server->replicas);
		kobo__http_replicas_free(server->replicas);
		kobo__http_limits_free(server);
		free(server);
		return KOBO_ESTORE;
	}
	const union MHD_DaemonInfo *info = MHD_get_daemon_info(server->daemon,
	                                                       MHD_DAEMON_INFO_BIND_PORT);
	server->port = info ? info->port : config->port;
	*out = server;
	return KOBO_OK;
}

uint16_t kobo_http_server_port(const kobo_http_server *server)
{
	return server->port;
}

size_t kobo_http_server_in_flight(const kobo_http_server *server)
{
	return atomic_load(&server->in_flight);
}

void kobo_http_server_drain(kobo_http_server *server)
{
	if (atomic_exchange(&server->draining, true))
		return;
	server->listen_fd = MHD_quiesce_daemon(server->daemon);
	pthread_rwlock_wrlock(&server->submit_lock);
	server->writes_closed = true;
	pthread_rwlock_unlock(&server->submit_lock);
}

void kobo_http_server_stop(kobo_http_server *server, unsigned wait_ms)
{
	kobo_http_server_drain(server);
	for (unsigned waited = 0; waited < wait_ms && kobo_http_server_in_flight(server);
	     waited += 10)
		nanosleep(&(struct timespec){ .tv_nsec = 10 * 1000 * 1000 }, NULL);
	MHD_stop_daemon(server->daemon);
	if (server->listen_fd != MHD_INVALID_SOCKET)
		close(server->listen_fd);
	kobo__http_replicas_stop(server->replicas);
	for (http_reader_set *set = server->readers, *next; set; set = next) {
		next = set->next;
		for (uint32_t i = 0; i < server->shard_count; i++) {
			if (set->readers[i])
				kobo_store_reader_close(set->readers[i]);
			if (set->replicas[i].reader)
				kobo_store_reader_close(set->replicas[i].reader);
		}
		free(set);
	}
	kobo__http_replicas_free(server->replicas);
	pthread_rwlock_destroy(&server->submit_lock);
	pthread_mutex_destroy(&server->readers_lock);
	kobo__http_limits_free(server);
	free(server);
}
