/*
 * edge.c — the worker queue and the JSON work shared by the bench/http
 * servers (contract in edge.h).
 */
#include "edge.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- The worker: drain the queue, write every reply, deliver the batch. ---- */

static void reply_posted(edge_request *r, const char *created_at, uint64_t sequence)
{
	int n = snprintf(r->reply, sizeof r->reply,
	                 "{\"id\":\"%s\",\"from\":\"%s\",\"to\":\"%s\",\"amount\":%" PRId64
	                 ",\"currency\":\"%s\",\"status\":\"posted\",\"pending\":false,"
	                 "\"timeout_seconds\":0,\"void_reason\":null,\"created_at\":\"%s\","
	                 "\"created_by\":\"key:bench-0001\",\"request_id\":\"%s\",\"sequence\":%" PRIu64
	                 ",\"metadata\":{}}",
	                 r->id, r->from, r->to, r->amount_minor, r->currency, created_at,
	                 r->request_id, sequence);
	if (n < 0 || (size_t)n >= sizeof r->reply)
		abort(); /* fields are bounded by edge_parse: cannot happen */
	r->reply_len = (size_t)n;
	r->status = 201;
}

static void *worker_main(void *arg)
{
	edge_worker *w = arg;
	uint64_t sequence = 0;
	struct timespec commit = { .tv_nsec = (long)w->commit_us * 1000 };
	pthread_mutex_lock(&w->lock);
	for (;;) {
		while (!w->head && !w->stopping)
			pthread_cond_wait(&w->wake, &w->lock);
		if (!w->head)
			break; /* stopping with nothing queued */
		edge_request *batch = w->head;
		w->head = NULL;
		w->tail = &w->head;
		w->depth = 0;
		pthread_mutex_unlock(&w->lock);

		struct timespec now;
		struct tm tm;
		char created_at[40];
		clock_gettime(CLOCK_REALTIME, &now);
		gmtime_r(&now.tv_sec, &tm);
		size_t len = strftime(created_at, sizeof created_at, "%Y-%m-%dT%H:%M:%S", &tm);
		snprintf(created_at + len, sizeof created_at - len, ".%06ldZ", now.tv_nsec / 1000);
		for (edge_request *r = batch; r; r = r->next) {
			reply_posted(r, created_at, ++sequence);
			w->requests++;
		}
		w->batches++;
		if (commit.tv_nsec) /* a durable commit waits on the disk, not the CPU */
			nanosleep(&commit, NULL);
		w->deliver(batch, w->context);
		pthread_mutex_lock(&w->lock);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

int edge_worker_start(edge_worker *w, edge_deliver_fn deliver, void *context)
{
	memset(w, 0, sizeof *w);
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->wake, NULL);
	w->tail = &w->head;
	w->deliver = deliver;
	w->context = context;
	const char *commit_us = getenv("EDGE_COMMIT_US");
	w->commit_us = commit_us ? (unsigned)strtoul(commit_us, NULL, 10) : 0;
	if (w->commit_us > 999999)
		w->commit_us = 999999;
	int rc = pthread_create(&w->thread, NULL, worker_main, w);
	if (rc == 0)
		pthread_setname_np(w->thread, "edge-worker");
	return rc;
}

bool edge_submit(edge_worker *w, edge_request *r)
{
	r->next = NULL;
	pthread_mutex_lock(&w->lock);
	bool ok = !w->stopping && w->depth < EDGE_QUEUE_MAX;
	if (ok) {
		*w->tail = r;
		w->tail = &r->next;
		if (w->depth++ == 0)
			pthread_cond_signal(&w->wake);
	}
	pthread_mutex_unlock(&w->lock);
	return ok;
}

void edge_worker_stop(edge_worker *w)
{
	pthread_mutex_lock(&w->lock);
	w->stopping = true;
	pthread_cond_signal(&w->wake);
	pthread_mutex_unlock(&w->lock);
	pthread_join(w->thread, NULL);
	pthread_cond_destroy(&w->wake);
	pthread_mutex_destroy(&w->lock);
	const char *stats = getenv("EDGE_STATS");
	FILE *f = stats ? fopen(stats, "w") : NULL;
	if (f) {
		fprintf(f, "%" PRIu64 " %" PRIu64 "\n", w->batches, w->requests);
		fclose(f);
	}
}

/* ---- JSON in (jansson, strict) and errors out. ---- */

void edge_error(edge_request *r, int status, const char *code, const char *message)
{
	int n = snprintf(r->reply, sizeof r->reply,
	                 "{\"error\":{\"code\":\"%s\",\"message\":\"%s\",\"request_id\":\"%s\"}}",
	                 code, message, r->request_id);
	if (n < 0 || (size_t)n >= sizeof r->reply)
		abort(); /* callers pass short literals */
	r->reply_len = (size_t)n;
	r->status = status;
}

void edge_new_request_id(edge_request *r)
{
	static _Thread_local uint64_t counter;
	snprintf(r->request_id, sizeof r->request_id, "req-%016" PRIx64, ++counter);
}

static bool copy_string(json_t *object, const char *key, char *out, size_t out_size)
{
	json_t *value = json_object_get(object, key);
	if (!json_is_string(value))
		return false;
	size_t len = json_string_length(value);
	if (len < 1 || len >= out_size)
		return false;
	memcpy(out, json_string_value(value), len + 1);
	return strlen(out) == len; /* no NUL inside */
}

bool edge_parse(edge_request *r, const char *body, size_t len)
{
	r->id[0] = r->from[0] = r->to[0] = r->currency[0] = '\0';
	r->amount_minor = 0;
	json_error_t error;
	json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &error);
	if (!root) {
		edge_error(r, 400, "invalid_json", "the body is not valid JSON");
		return false;
	}
	json_t *amount = json_object_get(root, "amount");
	bool ok = json_is_object(root) && copy_string(root, "id", r->id, sizeof r->id) &&
	          copy_string(root, "from", r->from, sizeof r->from) &&
	          copy_string(root, "to", r->to, sizeof r->to) &&
	          copy_string(root, "currency", r->currency, sizeof r->currency) &&
	          json_is_integer(amount) && json_integer_value(amount) > 0;
	if (ok)
		r->amount_minor = json_integer_value(amount);
	/* JSON-escaping the strings back is Kobo's job; here they must need none. */
	const char *fields[] = { r->id, r->from, r->to, r->currency };
	for (size_t i = 0; ok && i < sizeof fields / sizeof fields[0]; i++)
		for (const char *s = fields[i]; ok && *s; s++)
			ok = *s != '"' && *s != '\\' && (unsigned char)*s >= 0x20;
	json_decref(root);
	if (!ok)
		edge_error(r, 400, "invalid_request",
		           "id, from, to: 1-64 characters; amount: a positive integer; currency: 3 letters");
	return ok;
}

/* ---- Process plumbing. ---- */

static sigset_t stop_signals(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	return set;
}

void edge_block_signals(void)
{
	sigset_t set = stop_signals();
	sigaddset(&set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int edge_wait_signal(void)
{
	sigset_t set = stop_signals();
	int signal_number = 0;
	while (sigwait(&set, &signal_number) != 0)
		;
	return signal_number;
}

uint16_t edge_port(const char *text, const char *usage)
{
	char *end = NULL;
	errno = 0;
	unsigned long port = text ? strtoul(text, &end, 10) : 0;
	if (!text || errno || *end || port < 1 || port > 65535) {
		fprintf(stderr, "usage: %s\n", usage);
		exit(2);
	}
	return (uint16_t)port;
}
