/*
 * runner.c — the saga runner: one thread that drives every unfinished
 * cross-shard saga to its end (saga.h has the protocol).
 *
 * The runner keeps no state that matters: A's record says which step is
 * outstanding, so after a crash the recovery scan (every
 * KOBO_SAGA_SCAN_INTERVAL_MS, and at start) finds every unfinished saga in
 * the stores and drives it again. The in-memory table only avoids driving
 * one saga twice at once and remembers retries and waiters.
 *
 * Several nodes (kobod processes) may serve the same stores (PostgreSQL),
 * and each one's scan finds every saga. A node drives a saga only while it
 * holds the saga's claim in A's store (store.h claim_saga: a lease on the
 * database's clock). It claims before it reads A's record, so the record
 * it drives from is never older than the last step of the node that held
 * the claim before; it renews the claim once half the lease has passed
 * (while a step is out or a retry waits, too: sweep), and releases it when
 * the saga finishes or the runner stops. A saga another node holds is only
 * watched: read again every KOBO_SAGA_WATCH_MS (KOBO_SAGA_WATCH_WAITED_MS
 * when local requests wait for it) until it finishes, which answers the
 * waiters. A node killed mid-saga stops renewing: once its lease lapses
 * the next scan of a live node claims the saga and takes it over.
 *
 * One saga's life in the runner:
 *
 *   doorbell / scan / waiter ──▶ READY ──claim, read A's record──▶ saga NONE? ──▶ done
 *                                  ▲                          │ no   (waiters answered,
 *                                  │                          ▼       claim released)
 *                                  │               claimed? ──no──▶ WATCH (re-read later)
 *                                  │                          │ yes
 *                                  │                          ▼
 *                                  │            submit the remote op to B
 *                                  │                          │ B committed
 *                                  │                          ▼
 *                                  │            submit SAGA_SETTLE to A
 *                                  └──────── A committed ─────┘
 *   any refusal or failure, or a SETTLE that changed nothing (not UPDATED)
 *                          ──▶ RETRY after a backoff (10 ms doubling to 5 s);
 *                              only an applied SETTLE resets the backoff
 *
 * Invariants
 *   1. At most one request per saga is in a shard queue at any time.
 *   2. A step is submitted only after the previous one committed; every
 *      step is idempotent, so repeating one after a crash or a retry is
 *      harmless.
 *   3. Every waiter is answered exactly once: when its saga has no step
 *      outstanding, at its deadline, or when the runner stops.
 *   4. Nothing is dropped: when a bounded structure is full the saga stays
 *      recorded in its store and the next scan picks it up.
 *   5. Every wait, retry, deadline and stuck age runs on the monotonic
 *      clock: a step of the wall clock neither stalls a saga nor aborts it
 *      early. A saga's age in its state starts when the runner first sees
 *      that state (the doorbell that announced it, or a change seen while
 *      driving it); only a saga found by the scan is aged from its stored
 *      wall-clock updated_at, converted once at discovery (negative: 0).
 *   6. A step is submitted only while this node holds the saga's claim
 *      with at least half its lease left by the monotonic clock (claim).
 *
 * Threads: shard writers call kobo_saga_runner_notify and the step done
 * callback; edge threads call kobo_saga_runner_wait. Each only appends to a
 * queue under `lock`. Everything else runs on the runner thread.
 */
#include <errno.h>
#include <pthread.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../obs/obs.h"
#include "../obs/otlp.h"
#include "saga.h"

#define SWEEP_INTERVAL_MS 10
#define TABLE_BUCKETS 65536 /* power of two, >= KOBO_SAGA_ACTIVE_MAX */
#define SCAN_PAGE 1024
_Static_assert(KOBO_SAGA_CLAIM_LEASE_MS_DEFAULT / 2 >= 20 * SWEEP_INTERVAL_MS,
               "the sweep renews a claim long before its lease ends");

typedef enum step_kind {
	STEP_NONE = 0,
	STEP_REMOTE, /* B's op submitted */
	STEP_SETTLE, /* A's SAGA_SETTLE submitted */
} step_kind;

typedef struct waiter {
	struct waiter *next;
	uint32_t shard;
	char id[KOBO_ID_LEN_MAX + 1];
	int64_t deadline_ms;
	kobo_saga_wait_fn fn;
	void *ctx;
} waiter;

typedef struct saga_entry {
	kobo_saga_runner *runner;
	uint32_t shard; /* A: the payer's shard, where the record is the truth */
	uint32_t remote;
	char id[KOBO_ID_LEN_MAX + 1];
	struct saga_entry *bucket_next;
	struct saga_entry *all_prev, *all_next;
	struct saga_entry *ready_next;
	struct saga_entry *done_next;
	bool ready; /* in the ready list */

	/* A's record as last read; metadata copied into metadata_buf. */
	bool have_record;
	kobo_transfer record;
	char *metadata_buf;
	uint32_t metadata_cap;

	step_kind in_flight;
	kobo_saga_step_kind step_metric;
	int64_t step_started_us;
	int64_t step_started_ns; /* wall clock, for the step's span; 0: none */
	kobo_op op;
	kobo_result result;
	kobo_request request;

	bool retry_due;
	int64_t retry_at_ms;
	int64_t backoff_ms;
	bool stuck;
	/* Monotonic (mono_ms): when the record entered its saga state, as far
	 * as the runner can tell (invariant 5); when a doorbell announced it. */
	int64_t state_since_ms;
	int64_t noticed_at_ms;

	/* This node's claim on the saga (invariant 6): held, and until when
	 * at the latest (monotonic: taken when the claim was asked, so never
	 * later than the database's expiry). */
	bool claimed;
	int64_t claim_until_ms;
	bool watching; /* another node holds the claim: only re-read */

	waiter *waiters;
} saga_entry;

typedef struct notice {
	uint32_t shard;
	char id[KOBO_ID_LEN_MAX + 1];
} notice;

struct kobo_saga_runner {
	kobo_saga_config config;
	char node[KOBO_STORE_NODE_LEN_MAX + 1]; /* config.node, or made up */
	pthread_t thread;
	bool started;

	/* Inbox, guarded by lock. */
	pthread_mutex_t lock;
	pthread_cond_t wake;
	notice *notices;
	size_t notice_count;
	bool scan_requested;
	saga_entry *done_head;
	waiter *wait_head;
	size_t waiter_count; /* registered and not yet answered */
	bool stopping;

	/* Runner thread only. */
	bool quitting; /* stopping, as last seen under lock */
	notice *taken;
	saga_entry *buckets[TABLE_BUCKETS];
	saga_entry *all;
	saga_entry *ready_head, *ready_tail;
	size_t active;
	size_t in_flight;
	size_t stuck;
	/* One reader per shard, opened lazily and reopened after a failure
	 * (reader_get): NULL while closed, retried at reader_retry_at_ms. */
	kobo_store_reader *readers[KOBO_SHARDS_MAX];
	int64_t reader_retry_at_ms[KOBO_SHARDS_MAX];
	int64_t reader_backoff_ms[KOBO_SHARDS_MAX];
	int64_t next_sweep_ms;
	int64_t next_scan_ms;
};

static int64_t mono_ms(void)
{
	return kobo_monotonic_us() / 1000;
}

/* Wall clock: only to age a saga found by the scan (invariant 5). */
static int64_t wall_ms(const kobo_saga_runner *r)
{
	return r->config.now_ms ? r->config.now_ms() : kobo_now_ms();
}

/* The id hash seeded with the shard: one transfer id on two shards is two
 * sagas, and lands in unrelated buckets. */
static uint32_t bucket_of(uint32_t shard, const char *id)
{
	return (uint32_t)(kobo_hash_id_seeded(id, shard) & (TABLE_BUCKETS - 1));
}

/* ---- The table of sagas being driven. ---- */

static saga_entry *entry_find(kobo_saga_runner *r, uint32_t shard, const char *id)
{
	for (saga_entry *e = r->buckets[bucket_of(shard, id)]; e; e = e->bucket_next)
		if (e->shard == shard && strcmp(e->id, id) == 0)
			return e;
	return NULL;
}

/* The entry of (shard, id), created when absent; NULL when the table is
 * full (the scan will find the saga later) or out of memory. */
static saga_entry *entry_get(kobo_saga_runner *r, uint32_t shard, const char *id)
{
	saga_entry *e = entry_find(r, shard, id);
	if (e)
		return e;
	if (r->active >= KOBO_SAGA_ACTIVE_MAX || shard >= r->config.shard_count) {
		r->next_scan_ms = 0;
		return NULL;
	}
	e = calloc(1, sizeof(*e));
	if (!e) {
		r->next_scan_ms = 0;
		return NULL;
	}
	e->runner = r;
	e->shard = shard;
	snprintf(e->id, sizeof(e->id), "%s", id);
	uint32_t b = bucket_of(shard, id);
	e->bucket_next = r->buckets[b];
	r->buckets[b] = e;
	e->all_next = r->all;
	if (r->all)
		r->all->all_prev = e;
	r->all = e;
	r->active++;
	kobo_assert(r->active <= KOBO_SAGA_ACTIVE_MAX);
	return e;
}

static void entry_remove(kobo_saga_runner *r, saga_entry *e)
{
	/* Invariant 1: no request of e is in a shard queue, whose done
	 * callback would touch it after the free. Invariant 3: its waiters
	 * were answered before it goes. Off the ready list, except when the
	 * stopping runner dropped that list whole. */
	kobo_assert(e->in_flight == STEP_NONE);
	kobo_assert(e->waiters == NULL);
	kobo_assert(!e->ready || r->quitting);
	saga_entry **link = &r->buckets[bucket_of(e->shard, e->id)];
	while (*link != e) {
		kobo_assert(*link != NULL); /* e is in its bucket */
		link = &(*link)->bucket_next;
	}
	*link = e->bucket_next;
	if (e->all_prev)
		e->all_prev->all_next = e->all_next;
	else
		r->all = e->all_next;
	if (e->all_next)
		e->all_next->all_prev = e->all_prev;
	if (e->stuck) {
		kobo_assert(r->stuck > 0);
		r->stuck--;
	}
	kobo_assert(r->active > 0);
	r->active--;
	free(e->metadata_buf);
	free(e);
}

static void make_ready(kobo_saga_runner *r, saga_entry *e)
{
	if (e->ready || e->in_flight != STEP_NONE)
		return; /* a step is out: its answer re-reads the record anyway */
	e->ready = true;
	e->retry_due = false;
	e->ready_next = NULL;
	kobo_assert((r->ready_head == NULL) == (r->ready_tail == NULL));
	if (r->ready_tail)
		r->ready_tail->ready_next = e;
	else
		r->ready_head = e;
	r->ready_tail = e;
}

static void schedule_retry(kobo_saga_runner *r, saga_entry *e)
{
	(void)r;
	e->backoff_ms = e->backoff_ms ? e->backoff_ms * 2 : KOBO_SAGA_RETRY_MIN_MS;
	if (e->backoff_ms > KOBO_SAGA_RETRY_MAX_MS)
		e->backoff_ms = KOBO_SAGA_RETRY_MAX_MS;
	e->retry_due = true;
	e->retry_at_ms = mono_ms() + e->backoff_ms;
}

/* ---- Readers. ---- */

/* The shard's reader, opened when absent. A reader that failed to open
 * (EMFILE, transient I/O) or was dropped after a read error is opened again
 * on a later pass, after a backoff like a step's (10 ms doubling to 5 s),
 * so one bad moment never strands a shard's sagas until a restart. NULL
 * while it cannot be opened (the caller retries the saga later). */
static kobo_store_reader *reader_get(kobo_saga_runner *r, uint32_t shard)
{
	if (r->readers[shard])
		return r->readers[shard];
	int64_t now = mono_ms();
	if (now < r->reader_retry_at_ms[shard])
		return NULL;
	kobo_store_reader *reader = NULL;
	int rc = kobo_store_reader_open(r->config.stores[shard], &reader);
	if (rc != KOBO_OK) {
		int64_t backoff = r->reader_backoff_ms[shard];
		backoff = backoff ? backoff * 2 : KOBO_SAGA_RETRY_MIN_MS;
		if (backoff > KOBO_SAGA_RETRY_MAX_MS)
			backoff = KOBO_SAGA_RETRY_MAX_MS;
		r->reader_backoff_ms[shard] = backoff;
		r->reader_retry_at_ms[shard] = now + backoff;
		kobo_log(KOBO_LOG_ERROR, "saga_reader_open_failed",
		         "\"shard\":%u,\"status\":%d,\"retry_ms\":%lld", shard, rc,
		         (long long)backoff);
		return NULL;
	}
	if (r->reader_backoff_ms[shard])
		kobo_log(KOBO_LOG_INFO, "saga_reader_opened", "\"shard\":%u", shard);
	r->reader_backoff_ms[shard] = 0;
	r->readers[shard] = reader;
	return reader;
}

/* A read failed with an I/O error: close the reader so that the next pass
 * opens a fresh one (reader_get), after the first backoff step. */
static void reader_drop(kobo_saga_runner *r, uint32_t shard, int status)
{
	if (!r->readers[shard])
		return;
	kobo_log(KOBO_LOG_ERROR, "saga_reader_failed",
	         "\"shard\":%u,\"status\":%d", shard, status);
	kobo_store_reader_close(r->readers[shard]);
	r->readers[shard] = NULL;
	r->reader_backoff_ms[shard] = KOBO_SAGA_RETRY_MIN_MS;
	r->reader_retry_at_ms[shard] = mono_ms() + KOBO_SAGA_RETRY_MIN_MS;
}

/* ---- Claims (invariant 6). ---- */

/* true when e's claim is held with at least half its lease left. */
static bool claim_fresh(const kobo_saga_runner *r, const saga_entry *e,
                        int64_t now_ms)
{
	return e->claimed && now_ms < e->claim_until_ms - r->config.claim_lease_ms / 2;
}

/* Makes sure this node holds e's claim with at least half its lease left,
 * asking A's store for it (or for a renewal) when it does not. KOBO_OK
 * with *held, or the store's error with *held false (the reader is dropped
 * after KOBO_ESTORE). A claim that another node took is lost: e is then
 * only watched. */
static int claim(kobo_saga_runner *r, saga_entry *e, bool *held)
{
	int64_t now = mono_ms();
	*held = claim_fresh(r, e, now);
	if (*held)
		return KOBO_OK;
	kobo_store_reader *reader = reader_get(r, e->shard);
	if (!reader)
		return KOBO_ESTORE;
	bool got = false;
	int rc = kobo_store_claim_saga(reader, e->id, r->node,
	                               r->config.claim_lease_ms, &got);
	if (rc != KOBO_OK) {
		if (rc == KOBO_ESTORE)
			reader_drop(r, e->shard, rc);
		if (e->claimed && now >= e->claim_until_ms)
			e->claimed = false;
		return rc;
	}
	if (!got && e->claimed)
		kobo_log(KOBO_LOG_WARN, "saga_claim_lost",
		         "\"transfer_id\":\"%s\",\"shard\":%u,\"node\":\"%s\"",
		         e->id, e->shard, r->node);
	e->claimed = got;
	if (got)
		e->claim_until_ms = now + r->config.claim_lease_ms;
	*held = got;
	return KOBO_OK;
}

/* Drops this node's claim on e, if it holds one. A release that fails
 * lapses with its lease (and the store purges lapsed claims). */
static void release(kobo_saga_runner *r, saga_entry *e)
{
	if (!e->claimed)
		return;
	e->claimed = false;
	kobo_store_reader *reader = reader_get(r, e->shard);
	int rc = reader ? kobo_store_release_saga(reader, e->id, r->node) : KOBO_ESTORE;
	if (rc == KOBO_ESTORE && reader)
		reader_drop(r, e->shard, rc);
}

/* When e, which another node drives, is next read again. */
static int64_t watch_due_ms(const saga_entry *e)
{
	return mono_ms() + (e->waiters ? KOBO_SAGA_WATCH_WAITED_MS : KOBO_SAGA_WATCH_MS);
}

/* Another node holds e's claim: read it again later, without driving. */
static void watch(kobo_saga_runner *r, saga_entry *e)
{
	(void)r;
	e->watching = true;
	e->retry_due = true;
	e->retry_at_ms = watch_due_ms(e);
}

/* ---- Waiters. ---- */

static void waiters_answer(kobo_saga_runner *r, saga_entry *e, bool timed_out)
{
	const kobo_transfer *record = e->have_record ? &e->record : NULL;
	while (e->waiters) {
		waiter *w = e->waiters;
		e->waiters = w->next;
		w->fn(w->ctx, record, timed_out);
		free(w);
		pthread_mutex_lock(&r->lock);
		kobo_assert(r->waiter_count > 0);
		r->waiter_count--;
		pthread_mutex_unlock(&r->lock);
	}
}

static void waiters_expire(kobo_saga_runner *r, saga_entry *e, int64_t now_ms)
{
	waiter **link = &e->waiters;
	while (*link) {
		waiter *w = *link;
		if (w->deadline_ms > now_ms) {
			link = &w->next;
			continue;
		}
		*link = w->next;
		w->fn(w->ctx, e->have_record ? &e->record : NULL, true);
		free(w);
		pthread_mutex_lock(&r->lock);
		kobo_assert(r->waiter_count > 0);
		r->waiter_count--;
		pthread_mutex_unlock(&r->lock);
	}
}

/* ---- Steps. ---- */

static void log_step(const saga_entry *e, const char *step, uint32_t shard,
                     const char *outcome, int64_t latency_us)
{
	kobo_log(KOBO_LOG_INFO, "saga_step",
	         "\"request_id\":\"%s\",\"trace_id\":\"%s\",\"key_id\":\"%s\","
	         "\"transfer_id\":\"%s\",\"step\":\"%s\","
	         "\"shard\":%u,\"payer_shard\":%u,\"payee_shard\":%u,"
	         "\"outcome\":\"%s\",\"latency_us\":%lld",
	         e->record.request_id, e->record.trace_id, e->record.created_by,
	         e->id, step, shard, e->shard, e->remote,
	         outcome, (long long)latency_us);
}

/* The step's span "saga STEP" in the trace of the request that created the
 * transfer (its DEBIT leg's trace_id, stored with the record), when OTLP
 * is on and the record has a trace. Its parent is that request's
 * "transfer" span, whose id both sides derive from the trace id and the
 * transfer id (kobo_otlp_transfer_span_id): nothing more is stored, so a
 * step run after a restart, or by another node, still finds its parent.
 * The original request's sampled flag is not stored: the sampler decides
 * as for a root span of that trace (parentbased_always_on, the default,
 * keeps every one; a ratio sampler decides by the trace id, as it did for
 * the request without a parent). */
static void export_step_span(const saga_entry *e, const char *step, uint32_t shard,
                             const char *outcome, bool failed)
{
	if (!e->step_started_ns || !kobo_otlp_enabled())
		return;
	kobo_otlp_span span;
	memset(&span, 0, sizeof span);
	if (strlen(e->record.trace_id) != KOBO_TRACE_ID_LEN ||
	    !kobo_otlp_unhex(span.trace_id, e->record.trace_id, 16) ||
	    !kobo_otlp_sample(span.trace_id, false, false))
		return;
	kobo_otlp_transfer_span_id(span.parent_id, span.trace_id, e->id);
	kobo_otlp_random_id(span.span_id, sizeof span.span_id);
	span.kind = KOBO_OTLP_KIND_INTERNAL;
	span.start_ns = e->step_started_ns;
	span.end_ns = kobo_otlp_now_ns();
	if (span.end_ns < span.start_ns)
		span.end_ns = span.start_ns;
	span.error = failed;
	snprintf(span.name, sizeof span.name, "saga %s", step);
	kobo_otlp_attr_str(&span, "kobo.transfer_id", e->id);
	kobo_otlp_attr_int(&span, "kobo.shard", shard);
	kobo_otlp_attr_str(&span, "kobo.step", step);
	kobo_otlp_attr_str(&span, "kobo.outcome", outcome);
	kobo_otlp_attr_str(&span, "kobo.request_id", e->record.request_id);
	kobo_otlp_attr_int(&span, "kobo.payer_shard", e->shard);
	kobo_otlp_attr_int(&span, "kobo.payee_shard", e->remote);
	kobo_otlp_export(&span);
}

/* Runs on a shard's writer thread once the step's batch is durable (or
 * failed). The result's snapshots borrow the writer's memory: drop the
 * pointers, then hand the entry to the runner thread. */
static void step_done(kobo_request *request)
{
	saga_entry *e = request->user;
	kobo_saga_runner *r = e->runner;
	e->result.transfer.metadata = NULL;
	e->result.transfer.metadata_len = 0;
	e->result.account.metadata = NULL;
	e->result.account.metadata_len = 0;
	pthread_mutex_lock(&r->lock);
	e->done_next = r->done_head;
	r->done_head = e;
	pthread_cond_signal(&r->wake);
	pthread_mutex_unlock(&r->lock);
}

static bool submit(kobo_saga_runner *r, saga_entry *e, uint32_t shard,
                   step_kind kind, kobo_saga_step_kind metric)
{
	/* Invariant 1: nothing of e's is queued (its request is about to be
	 * overwritten), and an entry with a step out is never on the ready
	 * list (make_ready). */
	kobo_assert(e->in_flight == STEP_NONE);
	kobo_assert(!e->ready);
	kobo_assert(kind == STEP_REMOTE || kind == STEP_SETTLE);
	kobo_assert(shard < r->config.shard_count);
	memset(&e->request, 0, sizeof(e->request));
	memset(&e->result, 0, sizeof(e->result));
	e->request.ops = &e->op;
	e->request.results = &e->result;
	e->request.op_count = 1;
	e->request.done = step_done;
	e->request.user = e;
	e->in_flight = kind;
	e->step_metric = metric;
	e->step_started_us = kobo_monotonic_us();
	e->step_started_ns = kobo_otlp_enabled() ? kobo_otlp_now_ns() : 0;
	int rc = kobo_shard_submit(r->config.shards[shard], &e->request);
	if (rc != KOBO_OK) {
		e->in_flight = STEP_NONE;
		schedule_retry(r, e);
		return false;
	}
	r->in_flight++;
	kobo_assert(r->in_flight <= r->active);
	return true;
}

/* Copies a read record into the entry (metadata included). */
static bool keep_record(saga_entry *e, const kobo_transfer *t)
{
	if (t->metadata_len > e->metadata_cap) {
		char *buf = realloc(e->metadata_buf, t->metadata_len);
		if (!buf)
			return false;
		e->metadata_buf = buf;
		e->metadata_cap = t->metadata_len;
	}
	e->record = *t;
	if (t->metadata_len)
		memcpy(e->metadata_buf, t->metadata, t->metadata_len);
	e->record.metadata = e->metadata_buf ? e->metadata_buf : "";
	e->have_record = true;
	return true;
}

/* Starts the monotonic age of the state just read (invariant 5). known:
 * the runner had read an earlier state of this saga, so the change happened
 * since then: now is as close as it can tell. */
static void start_state_age(kobo_saga_runner *r, saga_entry *e, bool known)
{
	int64_t now = mono_ms();
	if (known) {
		e->state_since_ms = now;
	} else if (e->noticed_at_ms) {
		e->state_since_ms = e->noticed_at_ms;
	} else {
		int64_t age_ms = wall_ms(r) - e->record.updated_at_ms;
		e->state_since_ms = now - (age_ms > 0 ? age_ms : 0);
	}
	kobo_assert(e->state_since_ms <= now); /* invariant 5: ages >= 0 */
	if (e->stuck) {
		kobo_assert(r->stuck > 0);
		e->stuck = false;
		r->stuck--;
	}
}

static void finish(kobo_saga_runner *r, saga_entry *e)
{
	release(r, e);
	kobo_metrics_saga_finished(e->record.status,
	                           e->record.void_reason == KOBO_VOID_COMPENSATED);
	waiters_answer(r, e, false);
	entry_remove(r, e);
}

static kobo_saga_step_kind remote_metric(const kobo_op *op)
{
	switch (op->kind) {
	case KOBO_OP_SAGA_ABORT: return KOBO_SAGA_STEP_ABORT;
	case KOBO_OP_SAGA_POST: return KOBO_SAGA_STEP_POST;
	case KOBO_OP_SAGA_VOID: return KOBO_SAGA_STEP_VOID;
	default: return KOBO_SAGA_STEP_CREDIT;
	}
}

/* Reads A's record and submits the next step, or finishes the saga. */
static void drive(kobo_saga_runner *r, saga_entry *e)
{
	if (e->in_flight != STEP_NONE || r->quitting)
		return;
	/* Claim first, then read (invariant 6): once the claim is ours, the
	 * node that held it before has stopped, so the record read next
	 * already shows its last step. */
	bool held = false;
	if (claim(r, e, &held) != KOBO_OK) {
		schedule_retry(r, e);
		return;
	}
	kobo_store_reader *reader = reader_get(r, e->shard);
	kobo_transfer record;
	bool known = e->have_record;
	kobo_saga_state known_saga = e->record.saga;
	int64_t known_updated_at_ms = e->record.updated_at_ms;
	int rc = reader ? kobo_store_read_transfer(reader, e->id, &record) : KOBO_ESTORE;
	if (rc == KOBO_ENOTFOUND) {
		/* Doorbells follow commits, so this is a transfer that is not
		 * a saga's record: nothing to drive. */
		kobo_log(KOBO_LOG_ERROR, "saga_record_missing",
		         "\"transfer_id\":\"%s\",\"shard\":%u", e->id, e->shard);
		release(r, e);
		waiters_answer(r, e, true);
		entry_remove(r, e);
		return;
	}
	if (rc == KOBO_ESTORE && reader)
		reader_drop(r, e->shard, rc);
	if (rc != KOBO_OK || !keep_record(e, &record)) {
		schedule_retry(r, e);
		return;
	}
	if (!known || e->record.saga != known_saga ||
	    e->record.updated_at_ms != known_updated_at_ms)
		start_state_age(r, e, known);
	if (e->record.saga == KOBO_SAGA_NONE || e->record.leg != KOBO_LEG_DEBIT) {
		finish(r, e);
		return;
	}
	if (!held) {
		watch(r, e);
		return;
	}
	e->watching = false;
	e->remote = kobo_shard_map_account(r->config.map, e->record.to);
	char b_clearing[KOBO_ID_LEN_MAX + 1];
	kobo_clearing_id(b_clearing, e->remote, e->shard, e->record.currency);
	bool abort = e->record.saga == KOBO_SAGA_RESERVED &&
	             mono_ms() - e->state_since_ms > r->config.deadline_ms;
	if (!kobo_saga_remote_op(&e->record, b_clearing, abort, &e->op)) {
		finish(r, e);
		return;
	}
	submit(r, e, e->remote, STEP_REMOTE, remote_metric(&e->op));
}

/* A step came back from a shard. */
static void step_answered(kobo_saga_runner *r, saga_entry *e)
{
	/* Each submitted step is answered once (invariant 1): a second done
	 * callback for one request would find no step out. */
	step_kind kind = e->in_flight;
	kobo_assert(kind == STEP_REMOTE || kind == STEP_SETTLE);
	kobo_assert(!e->ready);
	kobo_assert(r->in_flight > 0);
	e->in_flight = STEP_NONE;
	r->in_flight--;
	int64_t latency_us = kobo_monotonic_us() - e->step_started_us;
	bool ok = e->request.status == KOBO_OK;
	kobo_metrics_saga_step(e->step_metric, ok, latency_us);
	const char *step = kobo_saga_step_name(e->step_metric);
	uint32_t shard = kind == STEP_REMOTE ? e->remote : e->shard;
	if (!ok) {
		log_step(e, step, shard, "store_failed", latency_us);
		export_step_span(e, step, shard, "store_failed", true);
		schedule_retry(r, e);
		return;
	}
	log_step(e, step, shard, kobo_result_code_name(e->result.code), latency_us);
	export_step_span(e, step, shard, kobo_result_code_name(e->result.code), false);
	if (r->quitting)
		return;
	if (kind == STEP_SETTLE) {
		if (e->result.code == KOBO_RESULT_UPDATED) {
			e->backoff_ms = 0;
			make_ready(r, e); /* re-read: finished, or the next saga began */
		} else {
			/* The settle changed nothing (AMOUNT_OVERFLOW, REPLAYED,
			 * not found): re-reading at once would find the same
			 * record and repeat the same steps in a tight loop. Keep
			 * backing off until a settle applies. */
			schedule_retry(r, e);
		}
		return;
	}
	if (kobo_saga_remote_busy(&e->op, &e->result)) {
		schedule_retry(r, e); /* B's clearing account: not yet */
		return;
	}
	kobo_op settle;
	if (!kobo_saga_settle_op(&e->record, &e->op, &e->result, &settle)) {
		kobo_log(KOBO_LOG_ERROR, "saga_step_unexpected",
		         "\"request_id\":\"%s\",\"trace_id\":\"%s\",\"transfer_id\":\"%s\","
		         "\"step\":\"%s\",\"code\":\"%s\"", e->record.request_id,
		         e->record.trace_id, e->id, step,
		         kobo_result_code_name(e->result.code));
		schedule_retry(r, e);
		return;
	}
	bool held = false;
	if (claim(r, e, &held) != KOBO_OK) {
		schedule_retry(r, e); /* the next drive repeats B's step: harmless */
		return;
	}
	if (!held) {
		watch(r, e);
		return;
	}
	e->op = settle;
	submit(r, e, e->shard, STEP_SETTLE, KOBO_SAGA_STEP_SETTLE);
}

/* ---- Periodic work. ---- */

static void sweep(kobo_saga_runner *r)
{
	int64_t now = mono_ms();
	size_t reserved = 0, posting = 0, voiding = 0;
	for (saga_entry *e = r->all, *next; e; e = next) {
		next = e->all_next;
		waiters_expire(r, e, now);
		/* Keep the claim of a saga whose step is out or whose retry
		 * waits (invariant 6): it must not lapse under a live node. */
		if (e->claimed && !e->ready && !claim_fresh(r, e, now)) {
			bool held;
			(void)claim(r, e, &held);
		}
		if (e->retry_due && e->retry_at_ms <= now)
			make_ready(r, e);
		if (!e->have_record)
			continue;
		switch (e->record.saga) {
		case KOBO_SAGA_RESERVED: reserved++; break;
		case KOBO_SAGA_POSTING: posting++; break;
		case KOBO_SAGA_VOIDING: voiding++; break;
		case KOBO_SAGA_NONE: break;
		}
		if (!e->stuck && e->record.saga != KOBO_SAGA_NONE &&
		    now - e->state_since_ms > r->config.stuck_ms) {
			e->stuck = true;
			r->stuck++;
			kobo_log(KOBO_LOG_ERROR, "saga_stuck",
			         "\"request_id\":\"%s\",\"trace_id\":\"%s\","
			         "\"key_id\":\"%s\",\"transfer_id\":\"%s\","
			         "\"state\":\"%s\",\"payer_shard\":%u,\"payee_shard\":%u,"
			         "\"age_ms\":%lld", e->record.request_id,
			         e->record.trace_id, e->record.created_by, e->id,
			         kobo_saga_state_name(e->record.saga), e->shard, e->remote,
			         (long long)(now - e->state_since_ms));
		}
	}
	kobo_metrics_sagas_active(reserved, posting, voiding, r->stuck);
}

typedef struct scan_ctx {
	kobo_saga_runner *runner;
	uint32_t shard;
	char last[KOBO_ID_LEN_MAX + 1];
	size_t rows;
	bool full;
} scan_ctx;

static int scan_row(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	(void)seq;
	scan_ctx *s = ctx;
	snprintf(s->last, sizeof(s->last), "%s", transfer->id);
	s->rows++;
	saga_entry *e = entry_get(s->runner, s->shard, transfer->id);
	if (!e) {
		s->full = true;
		return 1;
	}
	if (!e->retry_due)
		make_ready(s->runner, e);
	return 0;
}

/* Finds every saga recorded as under way: after a restart, and whatever a
 * full table or inbox let slip. */
static void scan(kobo_saga_runner *r)
{
	r->scan_requested = false;
	for (uint32_t shard = 0; shard < r->config.shard_count; shard++) {
		kobo_store_reader *reader = reader_get(r, shard);
		if (!reader)
			continue; /* the next scan tries again */
		scan_ctx s = { .runner = r, .shard = shard };
		do {
			s.rows = 0;
			int rc = kobo_store_read_sagas(reader, s.last, SCAN_PAGE,
			                               scan_row, &s);
			if (rc != KOBO_OK) {
				if (rc == KOBO_ESTORE)
					reader_drop(r, shard, rc);
				break;
			}
		} while (s.rows == SCAN_PAGE && !s.full);
		if (s.full)
			return;
	}
}

/* ---- The thread. ---- */

static void take_inbox(kobo_saga_runner *r, size_t *notices, saga_entry **done,
                       waiter **waits, bool *stopping)
{
	int64_t wake_at = r->next_sweep_ms;
	pthread_mutex_lock(&r->lock);
	while (!r->notice_count && !r->done_head && !r->wait_head &&
	       (!r->stopping || r->quitting) &&
	       !r->ready_head) {
		int64_t wait_ms = wake_at - mono_ms();
		if (wait_ms <= 0)
			break;
		struct timespec deadline = kobo_deadline_after_ms(wait_ms); /* monotonic */
		if (pthread_cond_timedwait(&r->wake, &r->lock, &deadline) == ETIMEDOUT)
			break;
	}
	*notices = r->notice_count;
	memcpy(r->taken, r->notices, r->notice_count * sizeof(notice));
	r->notice_count = 0;
	if (r->scan_requested)
		r->next_scan_ms = 0;
	r->scan_requested = false;
	*done = r->done_head;
	r->done_head = NULL;
	/* Waiters arrive newest first; order does not matter. */
	*waits = r->wait_head;
	r->wait_head = NULL;
	*stopping = r->stopping;
	r->quitting = r->stopping;
	pthread_mutex_unlock(&r->lock);
}

static void attach_waiter(kobo_saga_runner *r, waiter *w)
{
	saga_entry *e = entry_get(r, w->shard, w->id);
	if (!e) {
		w->fn(w->ctx, NULL, true);
		free(w);
		pthread_mutex_lock(&r->lock);
		kobo_assert(r->waiter_count > 0);
		r->waiter_count--;
		pthread_mutex_unlock(&r->lock);
		return;
	}
	w->next = e->waiters;
	e->waiters = w;
	if (!e->retry_due)
		make_ready(r, e);
	else if (e->watching && e->retry_at_ms > watch_due_ms(e))
		e->retry_at_ms = watch_due_ms(e);
}

static void *runner_main(void *arg)
{
	kobo_saga_runner *r = arg;
	for (uint32_t i = 0; i < r->config.shard_count; i++)
		(void)reader_get(r, i); /* a failure is logged and retried */

	for (;;) {
		size_t notices;
		saga_entry *done;
		waiter *waits;
		bool stopping;
		take_inbox(r, &notices, &done, &waits, &stopping);

		int64_t noticed_at_ms = mono_ms();
		for (size_t i = 0; i < notices; i++) {
			saga_entry *e = entry_get(r, r->taken[i].shard, r->taken[i].id);
			if (e && !e->have_record && !e->noticed_at_ms)
				e->noticed_at_ms = noticed_at_ms;
			if (e && !e->retry_due)
				make_ready(r, e);
		}
		while (done) {
			saga_entry *e = done;
			done = e->done_next;
			step_answered(r, e);
		}
		while (waits) {
			waiter *w = waits;
			waits = w->next;
			attach_waiter(r, w);
		}
		if (stopping) {
			/* Answer every waiter; wait only for steps already out. */
			for (saga_entry *e = r->all; e; e = e->all_next)
				waiters_answer(r, e, true);
			r->ready_head = r->ready_tail = NULL;
			if (r->in_flight == 0)
				break;
			/* Sleep until an answer comes back, not in a spin. */
			r->next_sweep_ms = mono_ms() + SWEEP_INTERVAL_MS;
			continue;
		}
		while (r->ready_head) {
			saga_entry *e = r->ready_head;
			r->ready_head = e->ready_next;
			if (!r->ready_head)
				r->ready_tail = NULL;
			kobo_assert(e->ready && e->in_flight == STEP_NONE);
			e->ready = false;
			drive(r, e);
		}
		int64_t now = mono_ms();
		if (now >= r->next_sweep_ms) {
			sweep(r);
			r->next_sweep_ms = now + SWEEP_INTERVAL_MS;
		}
		if (now >= r->next_scan_ms) {
			scan(r);
			r->next_scan_ms = now + KOBO_SAGA_SCAN_INTERVAL_MS;
		}
	}

	/* Unfinished sagas go back to whichever node scans next. */
	for (saga_entry *e = r->all; e; e = e->all_next)
		release(r, e);
	while (r->all)
		entry_remove(r, r->all);
	for (uint32_t i = 0; i < r->config.shard_count; i++)
		if (r->readers[i])
			kobo_store_reader_close(r->readers[i]);
	return NULL;
}

/* ---- Public API. ---- */

int kobo_saga_runner_create(const kobo_saga_config *config, kobo_saga_runner **out)
{
	if (!config || !config->shards || !config->stores || !config->map ||
	    config->shard_count < 1 || config->shard_count > KOBO_SHARDS_MAX)
		return KOBO_EINVAL;
	kobo_saga_runner *r = calloc(1, sizeof(*r));
	if (!r)
		return KOBO_ENOMEM;
	r->config = *config;
	if (r->config.deadline_ms <= 0)
		r->config.deadline_ms = KOBO_SAGA_DEADLINE_MS_DEFAULT;
	if (r->config.stuck_ms <= 0)
		r->config.stuck_ms = KOBO_SAGA_STUCK_MS_DEFAULT;
	if (r->config.claim_lease_ms <= 0)
		r->config.claim_lease_ms = KOBO_SAGA_CLAIM_LEASE_MS_DEFAULT;
	if (r->config.node) {
		snprintf(r->node, sizeof(r->node), "%s", r->config.node);
	} else {
		/* Unique per process: two kobod on one host differ in pid, and
		 * a restart that reuses a pid differs in start time. */
		char host[64] = "";
		(void)gethostname(host, sizeof(host) - 1);
		snprintf(r->node, sizeof(r->node), "%s:%ld:%lld", host,
		         (long)getpid(), (long long)kobo_now_ms());
	}
	r->config.node = r->node;
	r->notices = calloc(KOBO_SAGA_NOTIFY_MAX, sizeof(notice));
	r->taken = calloc(KOBO_SAGA_NOTIFY_MAX, sizeof(notice));
	if (!r->notices || !r->taken) {
		free(r->notices);
		free(r->taken);
		free(r);
		return KOBO_ENOMEM;
	}
	pthread_mutex_init(&r->lock, NULL);
	if (kobo_cond_init_monotonic(&r->wake) != 0) {
		pthread_mutex_destroy(&r->lock);
		free(r->notices);
		free(r->taken);
		free(r);
		return KOBO_ENOMEM;
	}
	*out = r;
	return KOBO_OK;
}

int kobo_saga_runner_start(kobo_saga_runner *r)
{
	if (r->started)
		return KOBO_EINVAL;
	if (pthread_create(&r->thread, NULL, runner_main, r) != 0)
		return KOBO_ENOMEM;
	r->started = true;
	return KOBO_OK;
}

void kobo_saga_runner_notify(void *runner, uint32_t shard,
                             const kobo_transfer *transfer)
{
	kobo_saga_runner *r = runner;
	pthread_mutex_lock(&r->lock);
	if (r->stopping) {
		/* Draining shards: the next start's scan resumes this saga. */
	} else if (r->notice_count < KOBO_SAGA_NOTIFY_MAX) {
		notice *n = &r->notices[r->notice_count++];
		n->shard = shard;
		snprintf(n->id, sizeof(n->id), "%s", transfer->id);
	} else {
		r->scan_requested = true;
	}
	pthread_cond_signal(&r->wake);
	pthread_mutex_unlock(&r->lock);
}

int kobo_saga_runner_wait(kobo_saga_runner *r, uint32_t shard, const char *id,
                          int64_t deadline_ms, kobo_saga_wait_fn fn, void *ctx)
{
	waiter *w = calloc(1, sizeof(*w));
	if (!w)
		return KOBO_EOVERLOADED;
	w->shard = shard;
	snprintf(w->id, sizeof(w->id), "%s", id);
	w->deadline_ms = deadline_ms;
	w->fn = fn;
	w->ctx = ctx;
	pthread_mutex_lock(&r->lock);
	int rc = KOBO_OK;
	if (r->stopping)
		rc = KOBO_ESHUTDOWN;
	else if (r->waiter_count >= KOBO_SAGA_WAITERS_MAX)
		rc = KOBO_EOVERLOADED;
	if (rc == KOBO_OK) {
		w->next = r->wait_head;
		r->wait_head = w;
		r->waiter_count++;
		pthread_cond_signal(&r->wake);
	}
	pthread_mutex_unlock(&r->lock);
	if (rc != KOBO_OK)
		free(w);
	return rc;
}

void kobo_saga_runner_stop(kobo_saga_runner *r)
{
	pthread_mutex_lock(&r->lock);
	r->stopping = true;
	pthread_cond_signal(&r->wake);
	pthread_mutex_unlock(&r->lock);
	if (r->started)
		pthread_join(r->thread, NULL);
	r->started = false;
	/* Waiters registered after the thread's last look are answered here. */
	pthread_mutex_lock(&r->lock);
	waiter *waits = r->wait_head;
	r->wait_head = NULL;
	r->waiter_count = 0;
	pthread_mutex_unlock(&r->lock);
	while (waits) {
		waiter *w = waits;
		waits = w->next;
		w->fn(w->ctx, NULL, true);
		free(w);
	}
}

void kobo_saga_runner_destroy(kobo_saga_runner *r)
{
	if (!r->stopping || r->started)
		kobo_saga_runner_stop(r);
	pthread_cond_destroy(&r->wake);
	pthread_mutex_destroy(&r->lock);
	free(r->notices);
	free(r->taken);
	free(r);
}
