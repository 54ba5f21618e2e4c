/*
 * conn.c — the engine: an epoll loop over keep-alive HTTP/1.1 connections.
 *
 * One worker owns its connections, its epoll set and its statistics; no
 * other thread touches them except the live line, which takes the worker's
 * interval lock once a second. Each connection carries at most one request:
 *
 *   CLOSED ──connect──▶ CONNECTING ──writable, SO_ERROR 0──▶ IDLE
 *     ▲                     │ error                           │ job->next() SENT
 *     │◀────────────────────┘                                 ▼
 *     │◀── error, EOF, timeout, "Connection: close" ─────── BUSY
 *                                                             │ answer complete,
 *                                           IDLE ◀────────────┘ keep-alive
 *
 * Every failure of a BUSY connection reaches the job as finish(status 0): the
 * job decides whether the outcome is unknown (a transfer) or worth a retry (an
 * idempotent setup request). Idle connections wait on a stack, one entry per
 * connection at most; a connection closed while on it is skipped when popped.
 *
 * The loop always ends: at job->abandon_us whatever is still in flight fails.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "../obs/obs.h"
#include "bench.h"

atomic_bool bench_stop_requested;
atomic_uint bench_workers_running;

#define EVENTS_MAX 256
#define SWEEP_INTERVAL_US (50 * 1000ll)

/* ---- Growable buffers. ---- */

int bench_buf_reserve(bench_buf *buf, size_t extra)
{
	if (buf->cap - buf->len > extra)
		return KOBO_OK;
	size_t cap = buf->cap ? buf->cap : 4096;
	while (cap - buf->len <= extra)
		cap *= 2;
	char *data = realloc(buf->data, cap);
	if (!data)
		return KOBO_ENOMEM;
	buf->data = data;
	buf->cap = cap;
	return KOBO_OK;
}

int bench_buf_append(bench_buf *buf, const char *data, size_t len)
{
	if (bench_buf_reserve(buf, len) != KOBO_OK)
		return KOBO_ENOMEM;
	memcpy(buf->data + buf->len, data, len);
	buf->len += len;
	buf->data[buf->len] = '\0';
	return KOBO_OK;
}

int bench_buf_printf(bench_buf *buf, const char *fmt, ...)
{
	for (;;) {
		size_t room = buf->cap - buf->len;
		va_list args;
		va_start(args, fmt);
		int n = vsnprintf(buf->data ? buf->data + buf->len : NULL, room, fmt, args);
		va_end(args);
		if (n < 0)
			return KOBO_EINVAL;
		if ((size_t)n < room) {
			buf->len += (size_t)n;
			return KOBO_OK;
		}
		if (bench_buf_reserve(buf, (size_t)n + 1) != KOBO_OK)
			return KOBO_ENOMEM;
	}
}

void bench_buf_free(bench_buf *buf)
{
	free(buf->data);
	memset(buf, 0, sizeof(*buf));
}

/* ---- HTTP response parsing (http_parser callbacks). ---- */

static int on_message_begin(http_parser *parser)
{
	bench_conn *conn = parser->data;
	conn->body.len = 0;
	return 0;
}

static int on_body(http_parser *parser, const char *at, size_t len)
{
	bench_conn *conn = parser->data;
	if (conn->body.len + len > BENCH_RESPONSE_BYTES_MAX) {
		conn->response_too_large = true;
		return 1;
	}
	return bench_buf_append(&conn->body, at, len) == KOBO_OK ? 0 : 1;
}

static int on_message_complete(http_parser *parser)
{
	bench_conn *conn = parser->data;
	conn->response_done = true;
	conn->keep_alive = http_should_keep_alive(parser) != 0;
	/* One request in flight: anything after this answer is not ours. */
	http_parser_pause(parser, 1);
	return 0;
}

static const http_parser_settings parser_settings = {
	.on_message_begin = on_message_begin,
	.on_body = on_body,
	.on_message_complete = on_message_complete,
};

int bench_conn_request(bench_conn *conn, const char *method, const char *path,
                       const char *body, size_t body_len)
{
	const bench_config *config = conn->worker->config;
	conn->out.len = 0;
	int rc = bench_buf_printf(&conn->out,
	                          "%s %s HTTP/1.1\r\nHost: %s\r\n%s"
	                          "Content-Type: application/json\r\n"
	                          "Content-Length: %zu\r\n\r\n",
	                          method, path, config->host_header, config->auth_header,
	                          body ? body_len : 0);
	if (rc == KOBO_OK && body && body_len)
		rc = bench_buf_append(&conn->out, body, body_len);
	return rc;
}

/* ---- Connection life cycle. ---- */

static void epoll_set(bench_worker *worker, bench_conn *conn, int op, uint32_t events)
{
	struct epoll_event event = {.events = events, .data.u32 = conn->index};
	if (epoll_ctl(worker->epoll_fd, op, conn->fd, &event) != 0 && op != EPOLL_CTL_DEL)
		fprintf(stderr, "kobo-bench: epoll_ctl: %s\n", strerror(errno));
}

/* At most one entry per connection (conn->on_idle_stack), so the stack
 * never holds more than conn_count entries. A connection closed while on it
 * keeps its entry: reopened and idle again, it is not pushed a second time
 * (pushing it again overflowed the stack when a server kept closing idle
 * keep-alive connections while a job waited to retry). */
static void idle_push(bench_worker *worker, bench_conn *conn)
{
	if (conn->on_idle_stack)
		return;
	conn->on_idle_stack = true;
	worker->idle[worker->idle_len++] = conn->index;
}

static void count_connect_error(bench_worker *worker)
{
	worker->counts.errors_transport++;
	pthread_mutex_lock(&worker->interval_lock);
	worker->interval.errors++;
	pthread_mutex_unlock(&worker->interval_lock);
}

/* Closes conn; a request in flight fails (finish with status 0). */
static void conn_close(bench_worker *worker, bench_conn *conn, int64_t now_us, int64_t retry_delay_us)
{
	bench_conn_state was = conn->state;
	if (conn->fd >= 0) {
		epoll_set(worker, conn, EPOLL_CTL_DEL, 0);
		close(conn->fd);
		conn->fd = -1;
	}
	conn->state = BENCH_CONN_CLOSED;
	conn->retry_at_us = now_us + retry_delay_us;
	if (retry_delay_us == 0)
		worker->sweep_now = true;
	if (was == BENCH_CONN_BUSY) {
		worker->busy--;
		worker->job->finish(worker->job, worker, conn, 0, NULL, 0, now_us);
	}
}

static void conn_became_idle(bench_worker *worker, bench_conn *conn)
{
	conn->state = BENCH_CONN_IDLE;
	idle_push(worker, conn);
}

static void conn_connect(bench_worker *worker, bench_conn *conn, int64_t now_us)
{
	const bench_config *config = worker->config;
	int fd = socket(config->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		count_connect_error(worker);
		conn->retry_at_us = now_us + BENCH_RECONNECT_DELAY_US;
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	conn->fd = fd;
	conn->sent_us = now_us; /* the connect timeout counts from here */
	if (connect(fd, (const struct sockaddr *)&config->addr, config->addr_len) == 0) {
		epoll_set(worker, conn, EPOLL_CTL_ADD, EPOLLIN | EPOLLRDHUP);
		conn_became_idle(worker, conn);
	} else if (errno == EINPROGRESS) {
		conn->state = BENCH_CONN_CONNECTING;
		epoll_set(worker, conn, EPOLL_CTL_ADD, EPOLLOUT);
	} else {
		close(fd);
		conn->fd = -1;
		count_connect_error(worker);
		conn->retry_at_us = now_us + BENCH_RECONNECT_DELAY_US;
	}
}

static void conn_connected(bench_worker *worker, bench_conn *conn, int64_t now_us)
{
	int error = 0;
	socklen_t len = sizeof(error);
	if (getsockopt(conn->fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0) {
		count_connect_error(worker);
		conn_close(worker, conn, now_us, BENCH_RECONNECT_DELAY_US);
		return;
	}
	epoll_set(worker, conn, EPOLL_CTL_MOD, EPOLLIN | EPOLLRDHUP);
	conn_became_idle(worker, conn);
}

static void conn_write(bench_worker *worker, bench_conn *conn, int64_t now_us)
{
	while (conn->out_off < conn->out.len) {
		ssize_t n = send(conn->fd, conn->out.data + conn->out_off, conn->out.len - conn->out_off,
		                 MSG_NOSIGNAL);
		if (n > 0) {
			conn->out_off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			epoll_set(worker, conn, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
			return;
		}
		conn_close(worker, conn, now_us, BENCH_RECONNECT_DELAY_US);
		return;
	}
}

static void conn_send(bench_worker *worker, bench_conn *conn, int64_t now_us)
{
	conn->state = BENCH_CONN_BUSY;
	worker->busy++;
	conn->out_off = 0;
	conn->sent_us = now_us;
	if (conn->start_us == 0)
		conn->start_us = now_us;
	conn->response_done = false;
	conn->response_too_large = false;
	conn->body.len = 0;
	http_parser_init(&conn->parser, HTTP_RESPONSE);
	conn->parser.data = conn;
	conn_write(worker, conn, now_us); /* the rest, if any, on EPOLLOUT */
}

static void conn_complete(bench_worker *worker, bench_conn *conn, int64_t now_us)
{
	int status = (int)conn->parser.status_code;
	bool keep_alive = conn->keep_alive;
	conn->state = BENCH_CONN_IDLE;
	worker->busy--;
	if (conn->body.data == NULL)
		bench_buf_reserve(&conn->body, 1);
	if (conn->body.data)
		conn->body.data[conn->body.len] = '\0';
	worker->job->finish(worker->job, worker, conn, status, conn->body.data ? conn->body.data : "",
	                    conn->body.len, now_us);
	if (!keep_alive) {
		conn_close(worker, conn, now_us, 0);
		return;
	}
	if (conn->out_off < conn->out.len) { /* answered before we finished writing */
		conn->out_off = conn->out.len;
		epoll_set(worker, conn, EPOLL_CTL_MOD, EPOLLIN | EPOLLRDHUP);
	}
	idle_push(worker, conn);
}

static void conn_read(bench_worker *worker, bench_conn *conn, int64_t now_us)
{
	for (;;) {
		ssize_t n = recv(conn->fd, worker->read_buf, BENCH_READ_CHUNK_BYTES, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0) {
			/* EOF ends a body without Content-Length; anything else failed. */
			if (n == 0)
				http_parser_execute(&conn->parser, &parser_settings, NULL, 0);
			if (conn->response_done) {
				conn->keep_alive = false;
				conn_complete(worker, conn, now_us);
			} else {
				conn_close(worker, conn, now_us, BENCH_RECONNECT_DELAY_US);
			}
			return;
		}
		size_t used = http_parser_execute(&conn->parser, &parser_settings, worker->read_buf, (size_t)n);
		if (conn->response_done) {
			if (used < (size_t)n && HTTP_PARSER_ERRNO(&conn->parser) == HPE_PAUSED &&
			    used + 1 < (size_t)n)
				conn->keep_alive = false; /* bytes after the answer: not ours */
			conn_complete(worker, conn, now_us);
			return;
		}
		if (HTTP_PARSER_ERRNO(&conn->parser) != HPE_OK || used != (size_t)n) {
			if (!conn->response_too_large)
				fprintf(stderr, "kobo-bench: bad HTTP answer: %s\n",
				        http_errno_description(HTTP_PARSER_ERRNO(&conn->parser)));
			conn_close(worker, conn, now_us, BENCH_RECONNECT_DELAY_US);
			return;
		}
	}
}

static void conn_event(bench_worker *worker, bench_conn *conn, uint32_t events, int64_t now_us)
{
	switch (conn->state) {
	case BENCH_CONN_CONNECTING:
		conn_connected(worker, conn, now_us);
		return;
	case BENCH_CONN_IDLE:
		/* The server closed (or wrote to) a connection we were not using. */
		conn_close(worker, conn, now_us, 0);
		return;
	case BENCH_CONN_BUSY:
		if ((events & EPOLLOUT) && conn->out_off < conn->out.len) {
			conn_write(worker, conn, now_us);
			if (conn->state != BENCH_CONN_BUSY)
				return;
			if (conn->out_off == conn->out.len)
				epoll_set(worker, conn, EPOLL_CTL_MOD, EPOLLIN | EPOLLRDHUP);
		}
		if (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))
			conn_read(worker, conn, now_us);
		return;
	case BENCH_CONN_CLOSED:
		return;
	}
}

/* ---- Workers. ---- */

int bench_worker_init(bench_worker *worker, uint32_t index, const bench_config *config,
                      uint32_t conn_count)
{
	memset(worker, 0, sizeof(*worker));
	worker->index = index;
	worker->config = config;
	worker->conn_count = conn_count;
	worker->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	worker->conns = calloc(conn_count, sizeof(*worker->conns));
	worker->idle = calloc((size_t)conn_count + 1, sizeof(*worker->idle)); /* see idle_push() */
	worker->read_buf = malloc(BENCH_READ_CHUNK_BYTES);
	if (worker->epoll_fd < 0 || !worker->conns || !worker->idle || !worker->read_buf)
		return KOBO_ENOMEM;
	for (uint32_t i = 0; i < conn_count; i++) {
		worker->conns[i].fd = -1;
		worker->conns[i].index = i;
		worker->conns[i].worker = worker;
	}
	pthread_mutex_init(&worker->interval_lock, NULL);
	bench_hist_reset(&worker->latency);
	bench_hist_reset(&worker->interval.latency);
	return KOBO_OK;
}

void bench_worker_close(bench_worker *worker)
{
	for (uint32_t i = 0; worker->conns && i < worker->conn_count; i++) {
		bench_conn *conn = &worker->conns[i];
		if (conn->fd >= 0)
			close(conn->fd);
		bench_buf_free(&conn->out);
		bench_buf_free(&conn->body);
	}
	if (worker->epoll_fd >= 0)
		close(worker->epoll_fd);
	free(worker->conns);
	free(worker->idle);
	free(worker->read_buf);
	free(worker->retry);
	bench_buf_free(&worker->scratch);
	pthread_mutex_destroy(&worker->interval_lock);
}

/* Pops an idle connection, skipping ones closed while they waited (their
 * entry leaves with them); NULL if none. */
static bench_conn *idle_pop(bench_worker *worker)
{
	while (worker->idle_len > 0) {
		bench_conn *conn = &worker->conns[worker->idle[--worker->idle_len]];
		conn->on_idle_stack = false;
		if (conn->state == BENCH_CONN_IDLE)
			return conn;
	}
	return NULL;
}

static int epoll_wait_us(int epoll_fd, struct epoll_event *events, int max, int64_t timeout_us)
{
	if (timeout_us < 0)
		timeout_us = 0;
	struct timespec timeout = {.tv_sec = timeout_us / 1000000, .tv_nsec = (timeout_us % 1000000) * 1000};
	int n = epoll_pwait2(epoll_fd, events, max, &timeout, NULL);
	if (n < 0 && errno == ENOSYS)
		n = epoll_wait(epoll_fd, events, max, (int)((timeout_us + 999) / 1000));
	return n;
}

void bench_worker_run(bench_worker *worker, bench_job *job)
{
	struct epoll_event events[EVENTS_MAX];
	worker->job = job;
	worker->idle_len = 0;
	for (uint32_t i = 0; i < worker->conn_count; i++)
		worker->conns[i].on_idle_stack = false;
	for (uint32_t i = 0; i < worker->conn_count; i++)
		if (worker->conns[i].state == BENCH_CONN_IDLE)
			idle_push(worker, &worker->conns[i]);
	bool job_done = false;
	int64_t last_sweep_us = 0;
	int64_t last_connected_us = kobo_monotonic_us();
	worker->gave_up = false;

	for (;;) {
		int64_t now_us = kobo_monotonic_us();
		bool stopping = job_done || now_us >= job->stop_sending_us ||
		                atomic_load_explicit(&bench_stop_requested, memory_order_relaxed);
		if (stopping && worker->busy == 0)
			break;
		bool give_up = job->give_up_unconnected_us > 0 &&
		               now_us - last_connected_us >= job->give_up_unconnected_us;
		if (now_us >= job->abandon_us || give_up) {
			for (uint32_t i = 0; i < worker->conn_count; i++)
				if (worker->conns[i].state == BENCH_CONN_BUSY)
					conn_close(worker, &worker->conns[i], now_us, 0);
			worker->gave_up = give_up;
			break;
		}
		int64_t wake_us = now_us + 1000000;
		if (!stopping && job->stop_sending_us < wake_us)
			wake_us = job->stop_sending_us;
		if (job->abandon_us < wake_us)
			wake_us = job->abandon_us;

		/* Reconnects and request timeouts, a few times a second. */
		if (worker->sweep_now || now_us - last_sweep_us >= SWEEP_INTERVAL_US) {
			worker->sweep_now = false;
			last_sweep_us = now_us;
			for (uint32_t i = 0; i < worker->conn_count; i++) {
				bench_conn *conn = &worker->conns[i];
				if (conn->state == BENCH_CONN_IDLE || conn->state == BENCH_CONN_BUSY)
					last_connected_us = now_us;
				if (conn->state == BENCH_CONN_CLOSED && !stopping && conn->retry_at_us <= now_us)
					conn_connect(worker, conn, now_us);
				else if ((conn->state == BENCH_CONN_BUSY || conn->state == BENCH_CONN_CONNECTING) &&
				         now_us - conn->sent_us >
				                 BENCH_REQUEST_TIMEOUT_US)
					conn_close(worker, conn, now_us, BENCH_RECONNECT_DELAY_US);
				if (conn->state == BENCH_CONN_CLOSED && !stopping && conn->retry_at_us > now_us &&
				    conn->retry_at_us < wake_us)
					wake_us = conn->retry_at_us;
			}
			if (last_sweep_us + SWEEP_INTERVAL_US < wake_us)
				wake_us = last_sweep_us + SWEEP_INTERVAL_US;
		}

		/* Hand every idle connection a request while the job has one. */
		while (!stopping) {
			bench_conn *conn = idle_pop(worker);
			if (!conn)
				break;
			int64_t job_wake_us = wake_us;
			conn->start_us = 0;
			int rc = job->next(job, worker, conn, now_us, &job_wake_us);
			if (rc == BENCH_JOB_SENT) {
				conn_send(worker, conn, now_us);
				continue;
			}
			idle_push(worker, conn);
			if (rc == BENCH_JOB_DONE) {
				job_done = true;
			} else if (job_wake_us < wake_us) {
				wake_us = job_wake_us;
			}
			break;
		}
		if (job_done && worker->busy == 0)
			break;

		int n = epoll_wait_us(worker->epoll_fd, events, EVENTS_MAX, wake_us - now_us);
		if (n <= 0)
			continue;
		now_us = kobo_monotonic_us();
		for (int i = 0; i < n; i++) {
			bench_conn *conn = &worker->conns[events[i].data.u32];
			conn_event(worker, conn, events[i].events, now_us);
		}
	}
	worker->job = NULL;
}

static void *worker_main(void *arg)
{
	bench_worker *worker = arg;
	bench_worker_run(worker, worker->job);
	atomic_fetch_sub(&bench_workers_running, 1);
	return NULL;
}

void bench_job_start(bench_worker *workers, uint32_t worker_count, bench_job *job)
{
	atomic_store(&bench_workers_running, worker_count);
	for (uint32_t i = 0; i < worker_count; i++) {
		bench_worker *worker = &workers[i];
		worker->job = job;
		worker->job_sent = 0;
		worker->job_first_us = 0;
		worker->job_last_answer_us = 0;
		worker->retry_len = 0;
		worker->thread_started = pthread_create(&worker->thread, NULL, worker_main, worker) == 0;
		if (!worker->thread_started) {
			/* No thread: run it here, in turn. */
			bench_worker_run(worker, job);
			atomic_fetch_sub(&bench_workers_running, 1);
		}
	}
}

void bench_job_wait(bench_worker *workers, uint32_t worker_count)
{
	for (uint32_t i = 0; i < worker_count; i++) {
		if (workers[i].thread_started)
			pthread_join(workers[i].thread, NULL);
		workers[i].thread_started = false;
	}
}

void bench_run_job(bench_worker *workers, uint32_t worker_count, bench_job *job)
{
	bench_job_start(workers, worker_count, job);
	bench_job_wait(workers, worker_count);
}
