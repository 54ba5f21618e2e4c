/*
 * edge_mhd.c — the bench edge (edge.h) on libmicrohttpd.
 *   edge-mhd poll PORT          one internal thread in poll mode with
 *                               suspend/resume: kobod's flags today
 *                               (src/http/server.c, kobo_http_server_start)
 *   edge-mhd poll-pool2 PORT    a pool of 2 threads in poll mode (kobod
 *                               --http-threads 2)
 *   edge-mhd epoll-pool2 PORT   a pool of 2 threads, each in epoll mode
 *
 * A request's connection is suspended before it is submitted to the
 * worker and resumed exactly once by deliver (worker thread) or at once
 * when the queue refuses it; libmicrohttpd then calls on_request again on
 * the connection's own thread, which queues the reply. The exchange is
 * freed only by on_completed, after that.
 */
#include "edge.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { RECEIVING, SUSPENDED, READY };

typedef struct exchange {
	struct MHD_Connection *connection;
	atomic_int state;
	bool refused; /* reply already written: answer once the body has ended */
	size_t body_len, body_cap;
	char *body;
	edge_request request;
} exchange;

static edge_worker worker;

static enum MHD_Result queue_reply(exchange *x)
{
	edge_request *r = &x->request;
	struct MHD_Response *response = MHD_create_response_from_buffer(
		r->reply_len, r->reply, MHD_RESPMEM_MUST_COPY);
	if (!response)
		return MHD_NO;
	MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	MHD_add_response_header(response, "X-Request-Id", r->request_id);
	enum MHD_Result rc = MHD_queue_response(x->connection, (unsigned)r->status, response);
	MHD_destroy_response(response);
	return rc;
}

static exchange *arrive(struct MHD_Connection *c, const char *url, const char *method)
{
	exchange *x = calloc(1, sizeof *x);
	if (!x)
		return NULL;
	x->connection = c;
	atomic_init(&x->state, RECEIVING);
	x->request.owner = x;
	edge_new_request_id(&x->request);
	if (strcmp(url, "/v1/transfers") != 0) {
		edge_error(&x->request, 404, "not_found", "no such route");
		x->refused = true;
		return x;
	}
	if (strcmp(method, MHD_HTTP_METHOD_POST) != 0) {
		edge_error(&x->request, 405, "method_not_allowed", "POST only");
		x->refused = true;
		return x;
	}
	const char *length = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
	                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
	char *end = NULL;
	unsigned long long n = length ? strtoull(length, &end, 10) : 0;
	if (length && (*end || n > EDGE_BODY_MAX)) {
		edge_error(&x->request, 413, "payload_too_large", "body: at most 1 MiB");
		x->refused = true;
		return x;
	}
	x->body_cap = n ? (size_t)n : 1024;
	x->body = malloc(x->body_cap);
	if (!x->body) {
		edge_error(&x->request, 503, "overloaded", "out of memory");
		x->refused = true;
	}
	return x;
}

static bool receive(exchange *x, const char *data, size_t size)
{
	if (x->refused)
		return true; /* read and dropped; answered when the body ends */
	if (x->body_len + size > EDGE_BODY_MAX) {
		edge_error(&x->request, 413, "payload_too_large", "body: at most 1 MiB");
		x->refused = true;
		return true;
	}
	if (x->body_len + size > x->body_cap) { /* chunked, or longer than announced */
		size_t cap = x->body_cap * 2 > x->body_len + size ? x->body_cap * 2 : x->body_len + size;
		char *grown = realloc(x->body, cap);
		if (!grown)
			return false;
		x->body = grown;
		x->body_cap = cap;
	}
	memcpy(x->body + x->body_len, data, size);
	x->body_len += size;
	return true;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *data, size_t *size, void **context)
{
	(void)cls;
	(void)version;
	exchange *x = *context;
	if (!x) {
		*context = x = arrive(c, url, method);
		if (!x)
			return MHD_NO;
		/* Too large: said at once (no lingering close here; kobod reads
		 * up to 4 MiB more first, see LINGER_BYTES_MAX in server.c). */
		return x->refused && x->request.status == 413 ? queue_reply(x) : MHD_YES;
	}
	if (*size) {
		bool keep = receive(x, data, *size);
		*size = 0;
		return keep ? MHD_YES : MHD_NO;
	}
	switch (atomic_load_explicit(&x->state, memory_order_acquire)) {
	case RECEIVING:
		if (x->refused || !edge_parse(&x->request, x->body, x->body_len))
			return queue_reply(x);
		atomic_store(&x->state, SUSPENDED);
		MHD_suspend_connection(c);
		if (!edge_submit(&worker, &x->request)) {
			edge_error(&x->request, 503, "overloaded", "the queue is full; retry");
			atomic_store_explicit(&x->state, READY, memory_order_release);
			MHD_resume_connection(c);
		}
		return MHD_YES;
	case READY:
		return queue_reply(x);
	default: /* suspended: not called */
		abort();
	}
}

static void on_completed(void *cls, struct MHD_Connection *c, void **context,
                         enum MHD_RequestTerminationCode code)
{
	(void)cls;
	(void)c;
	(void)code;
	exchange *x = *context;
	if (x) {
		if (atomic_load(&x->state) == SUSPENDED)
			abort(); /* the worker still holds it */
		free(x->body);
		free(x);
	}
	*context = NULL;
}

/* Worker thread: the batch is written; wake each connection's thread. */
static void deliver(edge_request *batch, void *context)
{
	(void)context;
	for (edge_request *r = batch, *next; r; r = next) {
		next = r->next; /* r may be freed once its connection resumes */
		exchange *x = r->owner;
		atomic_store_explicit(&x->state, READY, memory_order_release);
		MHD_resume_connection(x->connection);
	}
}

int main(int argc, char **argv)
{
	const char *usage = "edge-mhd poll|poll-pool2|epoll-pool2 PORT";
	bool epoll = argc == 3 && strcmp(argv[1], "epoll-pool2") == 0;
	bool pool = epoll || (argc == 3 && strcmp(argv[1], "poll-pool2") == 0);
	if (argc != 3 || (!pool && strcmp(argv[1], "poll") != 0)) {
		fprintf(stderr, "usage: %s\n", usage);
		return 2;
	}
	uint16_t port = edge_port(argv[2], usage);
	edge_block_signals();
	if (edge_worker_start(&worker, deliver, NULL) != 0)
		return 1;
	unsigned flags = (epoll ? MHD_USE_EPOLL_INTERNAL_THREAD : MHD_USE_POLL_INTERNAL_THREAD) |
	                 MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(port),
	                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct MHD_Daemon *daemon = MHD_start_daemon(
		flags, port, NULL, NULL, on_request, NULL,
		MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&address,
		MHD_OPTION_CONNECTION_TIMEOUT, EDGE_TIMEOUT_S,
		MHD_OPTION_CONNECTION_LIMIT, EDGE_CONNECTIONS_MAX,
		/* kobod's pool: the head (16 KiB) and the body's read buffer. */
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(32u << 10),
		MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
		pool ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, 2u,
		MHD_OPTION_END);
	if (!daemon) {
		fprintf(stderr, "edge-mhd: cannot listen on port %u\n", (unsigned)port);
		return 1;
	}
	edge_wait_signal();
	MHD_socket listener = MHD_quiesce_daemon(daemon);
	edge_worker_stop(&worker); /* delivers what is queued */
	MHD_stop_daemon(daemon);
	if (listener != MHD_INVALID_SOCKET)
		close(listener);
	return 0;
}
