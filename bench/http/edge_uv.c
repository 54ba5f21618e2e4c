/*
 * edge_uv.c — the bench edge (edge.h) on libuv (Debian libuv1-dev 1.44)
 * with http-parser 2.9 for HTTP/1.1, one event loop thread. Everything an
 * HTTP library would do is here, kept to what this bench needs, to see
 * what owning it costs in code and what it gains in CPU.
 *   edge-uv PORT
 *
 * A connection's states:
 *
 *   READING --message complete--> IN_WORKER --on_answers--> WRITING
 *      ^      (parser paused: busy)                             |
 *      +------ write done, keep-alive: parse what is buffered --+
 *   any --error, timeout, peer reset, write done without keep-alive--> CLOSING
 *
 * Invariants:
 *   1. One request per connection is in the worker or being written at a
 *      time (busy): the parser is paused on message complete. Reads go on
 *      into the read buffer (conn.in) while busy, so the socket is not
 *      taken out of epoll and put back for every request (2 epoll_ctl);
 *      they stop only when the buffer is full, or at end of stream, which
 *      closes the connection once the reply is written.
 *   2. A connection is freed once both its handles are closed and the
 *      worker no longer holds its request (conn_release).
 *
 * Limits: request head ≤ EDGE_HEAD_MAX (431), body ≤ EDGE_BODY_MAX (413,
 * then close: no lingering close), EDGE_CONNECTIONS_MAX connections (more
 * are accepted and closed at once), EDGE_TIMEOUT_S without progress
 * while reading or writing closes the connection. Not done: "Expect:
 * 100-continue", a lingering close after 413, HTTP/1.0 without keep-alive
 * beyond closing after the reply.
 */
#include <http_parser.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "edge.h"

#define READ_BUFFER_BYTES (16u << 10)
#define URL_MAX 256u

typedef struct conn {
	uv_tcp_t tcp;
	uv_timer_t timer;
	http_parser parser;
	int handles_open;
	bool closing, in_worker, keep_alive, refused;
	bool busy;    /* a request is in the worker or being written (invariant 1) */
	bool reading; /* uv_read_start is in effect */
	bool ended;   /* the peer ended its stream: close after the reply */
	size_t url_len;
	char url[URL_MAX];
	char *body;
	size_t body_len, body_cap;
	char in[READ_BUFFER_BYTES]; /* read buffer; in[in_off, in_len) is not yet parsed */
	size_t in_off, in_len;
	uv_write_t write;
	char head[256];
	edge_request request;
} conn;

static uv_loop_t *loop;
static uv_tcp_t listener;
static uv_async_t answers_async, stop_async;
static pthread_mutex_t answers_lock = PTHREAD_MUTEX_INITIALIZER;
static edge_request *answers; /* delivered by the worker, for the loop */
static edge_worker worker;
static http_parser_settings settings;
static unsigned connections;
static char date[64];
static time_t date_s;

static void conn_read(conn *c);

static void read_stop(conn *c)
{
	if (c->reading)
		uv_read_stop((uv_stream_t *)&c->tcp);
	c->reading = false;
}

/* ---- Lifecycle (invariant 2). ---- */

static void conn_release(conn *c)
{
	if (c->handles_open == 0 && !c->in_worker) {
		free(c->body);
		free(c);
		connections--;
	}
}

static void on_handle_closed(uv_handle_t *handle)
{
	conn *c = handle->data;
	c->handles_open--;
	conn_release(c);
}

static void conn_close(conn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
	uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_timeout(uv_timer_t *timer)
{
	conn_close(timer->data);
}

static void arm_timeout(conn *c)
{
	uv_timer_start(&c->timer, on_timeout, EDGE_TIMEOUT_S * 1000u, 0);
}

/* ---- Replies. ---- */

static const char *reason(int status)
{
	switch (status) {
	case 201: return "Created";
	case 400: return "Bad Request";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 413: return "Payload Too Large";
	case 431: return "Request Header Fields Too Large";
	case 503: return "Service Unavailable";
	default: return "Error";
	}
}

static const char *http_date(void)
{
	time_t now = time(NULL);
	if (now != date_s) {
		struct tm tm;
		gmtime_r(&now, &tm);
		strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
		date_s = now;
	}
	return date;
}

static void on_written(uv_write_t *write, int status)
{
	conn *c = write->data;
	if (status < 0 || !c->keep_alive) {
		conn_close(c);
		return;
	}
	c->busy = false;
	/* Invariant 1: the next request, if already buffered, goes on now. */
	c->refused = false;
	c->body_len = 0;
	c->url_len = 0;
	http_parser_pause(&c->parser, 0);
	arm_timeout(c);
	conn_read(c);
}

static void reply(conn *c)
{
	edge_request *r = &c->request;
	const char *connection = !c->keep_alive ? "Connection: close\r\n"
	                         : c->parser.http_minor == 0 ? "Connection: keep-alive\r\n" : "";
	int n = snprintf(c->head, sizeof c->head,
	                 "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: application/json\r\n"
	                 "Content-Length: %zu\r\nX-Request-Id: %s\r\n%s\r\n",
	                 r->status, reason(r->status), http_date(), r->reply_len, r->request_id,
	                 connection);
	if (n < 0 || (size_t)n >= sizeof c->head)
		abort(); /* every part is bounded */
	uv_buf_t bufs[2] = { uv_buf_init(c->head, (unsigned)n),
		             uv_buf_init(r->reply, (unsigned)r->reply_len) };
	c->busy = true; /* until on_written: nothing more is parsed */
	arm_timeout(c); /* a client that never reads is closed */
	c->write.data = c;
	if (uv_write(&c->write, (uv_stream_t *)&c->tcp, bufs, 2, on_written) != 0)
		conn_close(c);
}

static void refuse(conn *c, int status, const char *code, const char *message)
{
	edge_error(&c->request, status, code, message);
	c->keep_alive = false;
	reply(c);
}

/* ---- Parsing. ---- */

static int on_message_begin(http_parser *p)
{
	conn *c = p->data;
	c->url_len = 0;
	c->body_len = 0;
	c->refused = false;
	edge_new_request_id(&c->request);
	return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
	conn *c = p->data;
	if (len > URL_MAX - 1 - c->url_len) {
		c->refused = true; /* answered 404 when the message ends */
		return 0;
	}
	memcpy(c->url + c->url_len, at, len);
	c->url_len += len;
	return 0;
}

static int on_headers_complete(http_parser *p)
{
	conn *c = p->data;
	if (c->refused || c->url_len != strlen("/v1/transfers") ||
	    memcmp(c->url, "/v1/transfers", c->url_len) != 0) {
		edge_error(&c->request, 404, "not_found", "no such route");
		c->refused = true;
	} else if (p->method != HTTP_POST) {
		edge_error(&c->request, 405, "method_not_allowed", "POST only");
		c->refused = true;
	} else if (!(p->flags & F_CHUNKED) && p->content_length > EDGE_BODY_MAX) {
		return -1; /* an error (1 would mean "no body"): 413, said by conn_parse */
	} else if (!(p->flags & F_CHUNKED) && p->content_length > c->body_cap) {
		char *body = realloc(c->body, (size_t)p->content_length);
		if (!body)
			return -1;
		c->body = body;
		c->body_cap = (size_t)p->content_length;
	}
	return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
	conn *c = p->data;
	if (c->refused)
		return 0;
	if (len > EDGE_BODY_MAX - c->body_len)
		return 1; /* chunked past the limit */
	if (c->body_len + len > c->body_cap) {
		size_t cap = c->body_cap * 2 > c->body_len + len ? c->body_cap * 2 : c->body_len + len;
		char *body = realloc(c->body, cap);
		if (!body)
			return 1;
		c->body = body;
		c->body_cap = cap;
	}
	memcpy(c->body + c->body_len, at, len);
	c->body_len += len;
	return 0;
}

static int on_message_complete(http_parser *p)
{
	conn *c = p->data;
	http_parser_pause(p, 1); /* invariant 1 */
	c->busy = true;
	c->keep_alive = http_should_keep_alive(p);
	uv_timer_stop(&c->timer);
	if (c->refused || !edge_parse(&c->request, c->body, c->body_len)) {
		reply(c);
		return 0;
	}
	c->request.owner = c;
	c->in_worker = true;
	if (!edge_submit(&worker, &c->request)) {
		c->in_worker = false;
		edge_error(&c->request, 503, "overloaded", "the queue is full; retry");
		reply(c);
	}
	return 0;
}

/* Parses c->in[in_off, in_len); stops at a complete message (paused). */
static void conn_parse(conn *c)
{
	size_t len = c->in_len - c->in_off;
	size_t done = http_parser_execute(&c->parser, &settings, c->in + c->in_off, len);
	c->in_off += done;
	enum http_errno error = HTTP_PARSER_ERRNO(&c->parser);
	if (error == HPE_PAUSED || (error == HPE_OK && done == len))
		return;
	if (error == HPE_HEADER_OVERFLOW)
		refuse(c, 431, "headers_too_large", "request head: at most 16 KiB");
	else if (error == HPE_CB_headers_complete || error == HPE_CB_body)
		refuse(c, 413, "payload_too_large", "body: at most 1 MiB");
	else
		refuse(c, 400, "invalid_request", "malformed HTTP request");
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
	(void)suggested;
	conn *c = handle->data;
	/* Keep what is not parsed yet (a request read while busy), at the start. */
	memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
	c->in_len -= c->in_off;
	c->in_off = 0;
	/* Never empty: reads stop when the buffer fills (on_read). */
	*buf = uv_buf_init(c->in + c->in_len, (unsigned)(sizeof c->in - c->in_len));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	(void)buf;
	conn *c = stream->data;
	if (nread == UV_EOF && c->busy) {
		c->ended = true; /* answer what is buffered, then close (conn_read) */
		read_stop(c);
		return;
	}
	if (nread < 0) {
		conn_close(c);
		return;
	}
	c->in_len += (size_t)nread;
	if (c->busy) { /* parsed once the reply is written (invariant 1) */
		if (c->in_len == sizeof c->in)
			read_stop(c);
		return;
	}
	arm_timeout(c);
	conn_parse(c);
}

/* Parses what is buffered, then reads more unless a message is complete. */
static void conn_read(conn *c)
{
	if (c->in_off < c->in_len)
		conn_parse(c);
	if (c->ended && !c->busy) /* nothing more will come */
		conn_close(c);
	if (!c->closing && !c->ended && !c->reading && c->in_len - c->in_off < sizeof c->in) {
		c->reading = true;
		uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
	}
}

/* ---- Accepting. ---- */

static void on_refused_closed(uv_handle_t *handle)
{
	free(handle);
}

static void on_connection(uv_stream_t *server, int status)
{
	if (status < 0)
		return;
	conn *c = connections < EDGE_CONNECTIONS_MAX ? calloc(1, sizeof *c) : NULL;
	if (!c) { /* over the limit: accept and close */
		uv_tcp_t *refused = malloc(sizeof *refused);
		if (refused && uv_tcp_init(loop, refused) == 0) {
			if (uv_accept(server, (uv_stream_t *)refused) != 0) {}
			uv_close((uv_handle_t *)refused, on_refused_closed);
		} else {
			free(refused);
		}
		return;
	}
	connections++;
	uv_tcp_init(loop, &c->tcp);
	uv_timer_init(loop, &c->timer);
	c->handles_open = 2;
	c->tcp.data = c->timer.data = c;
	if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
		conn_close(c);
		return;
	}
	uv_tcp_nodelay(&c->tcp, 1);
	http_parser_init(&c->parser, HTTP_REQUEST);
	c->parser.data = c;
	arm_timeout(c);
	conn_read(c);
}

/* ---- The worker's answers, on the loop thread. ---- */

static void deliver(edge_request *batch, void *unused)
{
	(void)unused;
	edge_request *last = batch;
	while (last->next)
		last = last->next;
	pthread_mutex_lock(&answers_lock);
	last->next = answers; /* order between batches does not matter */
	answers = batch;
	pthread_mutex_unlock(&answers_lock);
	uv_async_send(&answers_async);
}

static void on_answers(uv_async_t *async)
{
	(void)async;
	pthread_mutex_lock(&answers_lock);
	edge_request *batch = answers;
	answers = NULL;
	pthread_mutex_unlock(&answers_lock);
	for (edge_request *r = batch, *next; r; r = next) {
		next = r->next;
		conn *c = r->owner;
		c->in_worker = false;
		if (c->closing)
			conn_release(c);
		else
			reply(c);
	}
}

static void on_stop(uv_async_t *async)
{
	(void)async;
	uv_close((uv_handle_t *)&listener, NULL);
	uv_stop(loop);
}

static void *signal_main(void *unused)
{
	(void)unused;
	edge_wait_signal();
	uv_async_send(&stop_async);
	return NULL;
}

int main(int argc, char **argv)
{
	uint16_t port = edge_port(argc == 2 ? argv[1] : NULL, "edge-uv PORT");
	edge_block_signals();
	http_parser_set_max_header_size(EDGE_HEAD_MAX);
	settings = (http_parser_settings){
		.on_message_begin = on_message_begin,
		.on_url = on_url,
		.on_headers_complete = on_headers_complete,
		.on_body = on_body,
		.on_message_complete = on_message_complete,
	};
	loop = uv_default_loop();
	uv_async_init(loop, &answers_async, on_answers);
	uv_async_init(loop, &stop_async, on_stop);
	struct sockaddr_in address;
	uv_ip4_addr("127.0.0.1", port, &address);
	uv_tcp_init(loop, &listener);
	if (uv_tcp_bind(&listener, (const struct sockaddr *)&address, 0) != 0 ||
	    uv_listen((uv_stream_t *)&listener, SOMAXCONN, on_connection) != 0) {
		fprintf(stderr, "edge-uv: cannot listen on port %u\n", (unsigned)port);
		return 1;
	}
	if (edge_worker_start(&worker, deliver, NULL) != 0)
		return 1;
	pthread_t signals;
	if (pthread_create(&signals, NULL, signal_main, NULL) != 0)
		return 1;
	uv_run(loop, UV_RUN_DEFAULT);
	edge_worker_stop(&worker);
	pthread_join(signals, NULL);
	on_answers(NULL); /* what the worker delivered last */
	uv_run(loop, UV_RUN_NOWAIT);
	return 0;
}
