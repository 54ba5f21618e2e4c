/*
 * edge_h2o.c — the bench edge (edge.h) on h2o's evloop (Debian's
 * libh2o-evloop-dev 2.2.5, libh2o-evloop 0.13), one event loop thread.
 *   edge-h2o PORT
 *
 * h2o buffers the whole body before on_request runs (413 past
 * max_request_entity_size, its own text reply). on_request parses and
 * submits; the worker's deliver sends each request back to the loop
 * through h2o's multithread queue (a pipe wake-up when the queue was
 * empty), and on_answers writes the replies. A client that goes away
 * while its request is in the worker has its h2o_req_t disposed: the
 * shared slot in the request's pool (on_dispose) clears pending->req, and
 * on_answers then frees the pending request without answering.
 */
#define H2O_USE_LIBUV 0
#include <h2o.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "edge.h"

typedef struct pending {
	h2o_multithread_message_t message;
	h2o_req_t *req;        /* NULL once h2o disposed it */
	struct pending **slot; /* in req's pool: points back here while in the worker */
	edge_request request;
} pending;

static h2o_globalconf_t config;
static h2o_context_t context;
static h2o_accept_ctx_t accept_context;
static h2o_multithread_queue_t *queue;
static h2o_multithread_receiver_t receiver;
static edge_worker worker;
static atomic_bool stopping;

static const char *reason(int status)
{
	switch (status) {
	case 201: return "Created";
	case 400: return "Bad Request";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 503: return "Service Unavailable";
	default: return "Error";
	}
}

static void answer(h2o_req_t *req, const edge_request *r)
{
	req->res.status = r->status;
	req->res.reason = reason(r->status);
	req->res.content_length = r->reply_len; /* else h2o sends it chunked */
	h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
	               H2O_STRLIT("application/json"));
	h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0,
	                      NULL, r->request_id, strlen(r->request_id));
	h2o_send_inline(req, r->reply, r->reply_len); /* copies into req's pool */
}

static void on_dispose(void *slot_memory)
{
	pending *p = *(pending **)slot_memory;
	if (p)
		p->req = NULL; /* still in the worker: on_answers frees it */
}

static int on_request(h2o_handler_t *self, h2o_req_t *req)
{
	(void)self;
	pending *p = malloc(sizeof *p);
	if (!p)
		return -1;
	p->message = (h2o_multithread_message_t){ { NULL, NULL } }; /* unlinked */
	p->req = req;
	p->slot = NULL;
	edge_new_request_id(&p->request);
	if (!h2o_memis(req->path_normalized.base, req->path_normalized.len,
	               H2O_STRLIT("/v1/transfers")))
		edge_error(&p->request, 404, "not_found", "no such route");
	else if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST")))
		edge_error(&p->request, 405, "method_not_allowed", "POST only");
	else if (edge_parse(&p->request, req->entity.base, req->entity.len)) {
		p->slot = h2o_mem_alloc_shared(&req->pool, sizeof *p->slot, on_dispose);
		*p->slot = p;
		p->request.owner = p;
		if (edge_submit(&worker, &p->request))
			return 0; /* answered by on_answers */
		*p->slot = NULL;
		edge_error(&p->request, 503, "overloaded", "the queue is full; retry");
	}
	answer(req, &p->request);
	free(p);
	return 0;
}

/* Worker thread: post each written request to the loop. */
static void deliver(edge_request *batch, void *unused)
{
	(void)unused;
	for (edge_request *r = batch, *next; r; r = next) {
		next = r->next;
		pending *p = r->owner;
		h2o_multithread_send_message(&receiver, &p->message);
	}
}

/* Loop thread. */
static void on_answers(h2o_multithread_receiver_t *self, h2o_linklist_t *messages)
{
	(void)self;
	while (!h2o_linklist_is_empty(messages)) {
		h2o_multithread_message_t *m =
			H2O_STRUCT_FROM_MEMBER(h2o_multithread_message_t, link, messages->next);
		h2o_linklist_unlink(&m->link);
		pending *p = H2O_STRUCT_FROM_MEMBER(pending, message, m);
		if (p->req) {
			*p->slot = NULL;
			answer(p->req, &p->request);
		}
		free(p);
	}
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
	if (err)
		return;
	h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
	if (sock)
		h2o_accept(&accept_context, sock);
}

static void *signal_main(void *unused)
{
	(void)unused;
	edge_wait_signal();
	atomic_store(&stopping, true);
	h2o_multithread_send_message(&receiver, NULL); /* wakes the loop */
	return NULL;
}

int main(int argc, char **argv)
{
	uint16_t port = edge_port(argc == 2 ? argv[1] : NULL, "edge-h2o PORT");
	edge_block_signals();

	h2o_config_init(&config);
	config.max_request_entity_size = EDGE_BODY_MAX;
	config.http1.req_timeout = EDGE_TIMEOUT_S * 1000;
	config.http2.idle_timeout = EDGE_TIMEOUT_S * 1000;
	h2o_hostconf_t *host = h2o_config_register_host(&config, h2o_iovec_init(H2O_STRLIT("default")),
	                                                65535);
	h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
	h2o_handler_t *handler = h2o_create_handler(path, sizeof *handler);
	handler->on_req = on_request;

	h2o_context_init(&context, h2o_evloop_create(), &config);
	accept_context.ctx = &context;
	accept_context.hosts = config.hosts;
	queue = h2o_multithread_create_queue(context.loop);
	h2o_multithread_register_receiver(queue, &receiver, on_answers);

	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(port),
	                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
	    bind(fd, (struct sockaddr *)&address, sizeof address) != 0 ||
	    listen(fd, SOMAXCONN) != 0) {
		fprintf(stderr, "edge-h2o: cannot listen on port %u\n", (unsigned)port);
		return 1;
	}
	h2o_socket_t *listener = h2o_evloop_socket_create(context.loop, fd, H2O_SOCKET_FLAG_DONT_READ);
	h2o_socket_read_start(listener, on_accept);

	if (edge_worker_start(&worker, deliver, NULL) != 0)
		return 1;
	pthread_t signals;
	if (pthread_create(&signals, NULL, signal_main, NULL) != 0)
		return 1;
	while (!atomic_load(&stopping))
		h2o_evloop_run(context.loop, 1000);
	h2o_socket_read_stop(listener);
	h2o_socket_close(listener);
	edge_worker_stop(&worker); /* delivers what is queued */
	pthread_join(signals, NULL);
	for (int i = 0; i < 10; i++) /* answers those */
		h2o_evloop_run(context.loop, 10);
	return 0;
}
