/*
 * writer.c — one shard's bounded queue and its batch writer thread.
 *
 * Batching is the concurrency control: one thread per shard is the only
 * writer of its store, so no two requests ever read the same balance
 * concurrently, and one commit (one fsync) covers a whole batch.
 *
 * Invariants
 *   1. A request's done callback runs exactly once, after the batch holding
 *      it committed durably (status KOBO_OK) or failed as a whole (a store
 *      error kind, store.h: KOBO_EUNKNOWN — it may be durable — or one
 *      where nothing was applied; or the ledger's KOBO_EINVAL / KOBO_EFULL,
 *      a programmer error, nothing applied). Never before. Requests of a
 *      batch are answered last first (see writer_answer).
 *   2. The queue never holds more than queue_ops_max ops; a request that does
 *      not fit is refused at submit (the edge answers 503 overloaded).
 *   3. A batch holds at least one request and, when it holds more than one,
 *      at most batch_ops_max ops; a request is never split across batches
 *      (atomic batches stay atomic), so one request of up to
 *      KOBO_BATCH_OPS_MAX ops runs alone whatever batch_ops_max says.
 *   4. The writer never waits on a timer while requests are queued: it takes
 *      whatever is there. When idle it sleeps until a submit signals it, or
 *      until the next expiry scan is due (every
 *      KOBO_SHARD_EXPIRY_INTERVAL_MS of monotonic time).
 *   5. After stop, everything accepted before stop is committed and answered
 *      before the thread exits; later submits get KOBO_ESHUTDOWN.
 *   6. Every wait and timer (the expiry scan's cadence, the condvar's timed
 *      wait) runs on the monotonic clock. The wall clock only stamps
 *      records and decides which holds have expired, so a step of the wall
 *      clock moves expiry with it but never stalls the scans. That wall
 *      clock is the store's (kobo_store_now): the database's for a store
 *      several nodes share (PostgreSQL), so every node stamps and expires
 *      by one clock; this node's (config.now_ms, else kobo_now_ms) for
 *      SQLite and mem, which answer the clock the writer passes them.
 *   7. A batch the store answers KOBO_ECONFLICT (nothing committed) runs
 *      again, at most KOBO_SHARD_CONFLICT_RERUNS_MAX more times, before its
 *      requests are answered with the conflict. Every other failure is
 *      answered at once: re-running after KOBO_EUNKNOWN could apply twice
 *      what the retry-by-id protocol applies once.
 *   8. The commit sequence (store.h, the consistency token) grows with
 *      every committed batch.
 *
 * What a failed batch is answered (the edge maps the status, src/http):
 *
 *   status from the batch                       answer
 *   KOBO_ECONFLICT (after the re-runs)          503 overloaded (nothing
 *                                               committed; Retry-After)
 *   KOBO_ECONNLOST, KOBO_EUNKNOWN,              503 storage_unavailable,
 *   KOBO_ESTORE, KOBO_EFAILED                   "outcome unknown, retry
 *                                               with the same id"
 *   KOBO_EINVAL, KOBO_EFULL (the ledger)        500 internal_error, and an
 *                                               error line: a programmer
 *                                               error; the process stays up
 *
 * States of the writer thread
 *
 *        ┌──────── queue empty, not stopping ────────┐
 *        ▼                                            │
 *     IDLE ──submit / expiry due──▶ FORMING ──▶ APPLYING ──▶ ANSWERING
 *        │                                                     │
 *        └──── stopping and queue empty ──▶ EXITED ◀───────────┘ (loop)
 *
 *   transition                      function
 *   IDLE → FORMING                  writer_take_batch()   (waits on the condvar)
 *   FORMING → APPLYING              writer_run_batch()    (kobo_batch_run, batch.c)
 *   APPLYING → ANSWERING            writer_answer()       (done callbacks)
 *   IDLE → APPLYING (expiry)        writer_expire_holds() (internal batch)
 *   any → EXITED                    writer_main() returns once stopping and empty
 *
 * Tracing (spans.c): with OTLP export on, a batch holding a traced request
 * exports its "batch commit" / "store commit" spans before the answers, and
 * an expiry batch a "hold expired" span per hold; off, one test per batch.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../obs/obs.h"
#include "shard.h"
#include "spans.h"

struct kobo_shard {
	kobo_store *store;
	kobo_shard_config config;
	kobo_ledger *ledger;

	/* Queue: a singly linked list of requests, guarded by lock. */
	pthread_mutex_t lock;
	pthread_cond_t wake;
	kobo_request *head;
	kobo_request *tail;
	size_t queued_ops;
	bool stopping;
	bool joined;              /* kobo_shard_quiesce() joined the writer */

	pthread_t thread;

	/* Batch scratch, owned by the writer thread, sized at start. */
	kobo_op *ops;
	kobo_result *results;
	kobo_event *events;   /* the batch's events (batch.c), batch_max */
	kobo_request **batch;          /* requests of the current batch */
	const char **ids;              /* transfer/account ids to load */
	char (*expired_ids)[KOBO_ID_LEN_MAX + 1];
	int64_t next_expiry_scan_ms;   /* monotonic (mono_ms) */
	/* The store's last commit sequence: written by the writer thread
	 * after each commit, read by the edge for Kobo-Consistency-Token. */
	_Atomic uint64_t commit_token;
};

/* This node's wall clock, which the store may overrule (invariant 6). */
static int64_t shard_now_ms(const kobo_shard *shard)
{
	return shard->config.now_ms ? shard->config.now_ms() : kobo_now_ms();
}

/* Monotonic clock: every wait and timer. */
static int64_t mono_ms(void)
{
	return kobo_monotonic_us() / 1000;
}

/* ---- Submitting (edge threads). ---- */

int kobo_shard_submit(kobo_shard *shard, kobo_request *request)
{
	if (request->op_count == 0 || request->op_count > KOBO_BATCH_OPS_MAX)
		return KOBO_EINVAL;

	pthread_mutex_lock(&shard->lock);
	if (shard->stopping) {
		pthread_mutex_unlock(&shard->lock);
		return KOBO_ESHUTDOWN;
	}
	if (shard->queued_ops + request->op_count > shard->config.queue_ops_max) {
		pthread_mutex_unlock(&shard->lock);
		kobo_metrics_overloaded(shard->config.index);
		return KOBO_EOVERLOADED;
	}
	request->next = NULL;
	request->status = KOBO_OK;
	kobo_assert(request->done != NULL);
	if (shard->tail)
		shard->tail->next = request;
	else
		shard->head = request;
	shard->tail = request;
	shard->queued_ops += request->op_count;
	kobo_assert(shard->queued_ops <= shard->config.queue_ops_max); /* 2 */
	pthread_cond_signal(&shard->wake);
	pthread_mutex_unlock(&shard->lock);
	return KOBO_OK;
}

size_t kobo_shard_queue_depth(kobo_shard *shard)
{
	pthread_mutex_lock(&shard->lock);
	size_t depth = shard->queued_ops;
	pthread_mutex_unlock(&shard->lock);
	return depth;
}

bool kobo_shard_ready(kobo_shard *shard)
{
	return kobo_store_healthy(shard->store);
}

uint64_t kobo_shard_commit_token(kobo_shard *shard)
{
	return atomic_load(&shard->commit_token);
}

/* ---- The writer thread. ---- */

/* Waits for work and detaches a batch of whole requests from the queue head.
 * Returns the number of requests taken; 0 means "no requests: run an expiry
 * scan if due, or exit if stopping" (*exit_now tells which). */
static size_t writer_take_batch(kobo_shard *shard, bool *exit_now)
{
	size_t taken = 0;
	size_t ops = 0;

	*exit_now = false;
	pthread_mutex_lock(&shard->lock);
	while (!shard->head && !shard->stopping) {
		int64_t wait_ms = shard->next_expiry_scan_ms - mono_ms();
		if (wait_ms <= 0)
			break;
		struct timespec deadline = kobo_deadline_after_ms(wait_ms);
		int rc = pthread_cond_timedwait(&shard->wake, &shard->lock, &deadline);
		if (rc == ETIMEDOUT)
			break;
	}
	while (shard->head &&
	       (taken == 0 || ops + shard->head->op_count <= shard->config.batch_ops_max)) {
		kobo_request *request = shard->head;
		shard->head = request->next;
		if (!shard->head)
			shard->tail = NULL;
		request->next = NULL;
		ops += request->op_count;
		shard->batch[taken++] = request;
	}
	/* Invariant 3: whole requests, at most batch_ops_max ops unless one
	 * request runs alone. */
	kobo_assert(taken <= 1 || ops <= shard->config.batch_ops_max);
	kobo_assert(ops <= shard->queued_ops);
	shard->queued_ops -= ops;
	size_t depth = shard->queued_ops;
	if (taken == 0 && !shard->head && shard->stopping)
		*exit_now = true;
	pthread_mutex_unlock(&shard->lock);

	kobo_metrics_queue_depth(shard->config.index, depth);
	return taken;
}

/* Applies ops[0..count) in one store transaction (results land in
 * shard->results), re-running it while the store answers KOBO_ECONFLICT
 * (invariant 7), and, once it is durable, rings the saga runner for every
 * saga the batch started or moved on. */
static int writer_apply(kobo_shard *shard, size_t count, int64_t *commit_us)
{
	uint64_t token = 0;
	int rc;
	kobo_batch_events events = {
		.shard = shard->config.index,
		.node = shard->config.node,
		.buf = shard->events,
	};
	const kobo_batch_events *batch_events = &events;
#ifdef KOBO_BENCH_NO_EVENTS
	/* Only for the benchmark floor (build/bench-noevents/kobod, make
	 * bench-otlp): batches commit with no event rows, to measure what the
	 * events cost. Never defined in a build that serves money. */
	batch_events = NULL;
#endif

	for (unsigned run = 0;; run++) {
		rc = kobo_batch_run(shard->store, shard->ledger, shard->ops, count,
		                    shard_now_ms(shard), shard->results, shard->ids,
		                    commit_us, &token, batch_events);
		if (rc != KOBO_ECONFLICT || run == KOBO_SHARD_CONFLICT_RERUNS_MAX)
			break;
		kobo_log(KOBO_LOG_WARN, "batch_conflict",
		         "\"shard\":%u,\"size\":%zu,\"rerun\":%u",
		         shard->config.index, count, run + 1);
	}
	if (rc != KOBO_OK)
		return rc;
	kobo_assert(token > atomic_load(&shard->commit_token)); /* invariant 8 */
	atomic_store(&shard->commit_token, token);
	if (!shard->config.saga_started)
		return KOBO_OK;
	const kobo_transfer_change *changes;
	size_t changed = kobo_ledger_changed_transfers(shard->ledger, &changes);
	for (size_t i = 0; i < changed; i++) {
		const kobo_transfer *transfer = changes[i].transfer;
		if (transfer->saga != KOBO_SAGA_NONE)
			shard->config.saga_started(shard->config.saga_ctx,
			                           shard->config.index, transfer);
	}
	return KOBO_OK;
}

/* Copies every op of the batch's requests into the contiguous ops array the
 * ledger takes. Atomic group numbers are per request; they are renumbered so
 * that two requests' groups never merge. */
static size_t writer_gather_ops(kobo_shard *shard, size_t requests)
{
	size_t count = 0;

	for (size_t r = 0; r < requests; r++) {
		const kobo_request *request = shard->batch[r];
		memcpy(&shard->ops[count], request->ops,
		       request->op_count * sizeof(kobo_op));
		for (size_t i = 0; i < request->op_count; i++) {
			kobo_op *op = &shard->ops[count + i];
			if (op->atomic_group != 0)
				op->atomic_group = (uint32_t)(r + 1);
		}
		count += request->op_count;
	}
	return count;
}

/* Hands every request its results (or the batch's failure) and calls done.
 * Runs only after writer_apply returned: answers follow the commit.
 *
 * Last request first: a result may borrow memory (metadata) from the ops of
 * an earlier request of the same batch — a replay points at the op that
 * created the transfer earlier in the batch — and a request's memory may be
 * freed as soon as its done returns. Results only ever point backwards, so
 * answering in reverse keeps every borrowed byte alive until its last use. */
static void writer_answer(kobo_shard *shard, size_t requests, int status)
{
	size_t offset = 0;

	for (size_t r = 0; r < requests; r++)
		offset += shard->batch[r]->op_count;
	for (size_t r = requests; r-- > 0;) {
		kobo_request *request = shard->batch[r];
		offset -= request->op_count;
		request->status = status;
		if (status == KOBO_OK)
			memcpy(request->results, &shard->results[offset],
			       request->op_count * sizeof(kobo_result));
		request->done(request);
	}
}

/* The ledger refused the batch: a caller broke one of its preconditions
 * (ledger.h, kobo_ledger_apply / kobo_ledger_put_*). */
static bool writer_programmer_error(int status)
{
	return status == KOBO_EINVAL || status == KOBO_EFULL;
}

static void writer_log_batch(const kobo_shard *shard, size_t ops, int status,
                             int64_t commit_us)
{
	if (writer_programmer_error(status)) {
		kobo_log(KOBO_LOG_ERROR, "batch_refused_by_ledger",
		         "\"shard\":%u,\"size\":%zu,\"status\":%d,"
		         "\"message\":\"a programmer error: the batch broke a ledger "
		         "precondition; nothing was applied, answered 500\"",
		         shard->config.index, ops, status);
	} else if (status == KOBO_OK) {
		kobo_metrics_batch(shard->config.index, ops, commit_us);
		kobo_log(KOBO_LOG_INFO, "batch_committed",
		         "\"shard\":%u,\"size\":%zu,\"commit_us\":%lld",
		         shard->config.index, ops, (long long)commit_us);
	} else {
		kobo_log(KOBO_LOG_ERROR, "batch_failed",
		         "\"shard\":%u,\"size\":%zu,\"status\":%d,\"store_healthy\":%s",
		         shard->config.index, ops, status,
		         kobo_store_healthy(shard->store) ? "true" : "false");
	}
}

static void writer_run_batch(kobo_shard *shard, size_t requests)
{
	int64_t taken_ns = kobo__shard_span_clock(); /* 0: tracing off */
	size_t count = writer_gather_ops(shard, requests);
	int64_t commit_us = 0;
	int status = writer_apply(shard, count, &commit_us);

	writer_log_batch(shard, count, status, commit_us);
	kobo__shard_span_batch(shard->config.index, shard->batch, requests, count, taken_ns,
	                       commit_us, status);
	writer_answer(shard, requests, status);
}

/* Voids holds whose expiry has passed, in batches of their own. A hold may
 * also be expired by the ledger when someone posts or voids it late; EXPIRE
 * of an already-ended hold is a harmless NOT_PENDING. */
static void writer_expire_holds(kobo_shard *shard)
{
	int64_t now_ms = 0;
	int64_t scanned_at_ms = mono_ms();
	size_t count = 0;

	shard->next_expiry_scan_ms = scanned_at_ms + KOBO_SHARD_EXPIRY_INTERVAL_MS;
	if (!kobo_store_healthy(shard->store))
		return;
	int rc = kobo_store_now(shard->store, shard_now_ms(shard), &now_ms);
	if (rc != KOBO_OK) {
		kobo_log(KOBO_LOG_ERROR, "expiry_scan_failed",
		         "\"shard\":%u,\"status\":%d", shard->config.index, rc);
		return;
	}
	size_t scan_max = KOBO_SHARD_EXPIRED_SCAN_MAX;
	if (scan_max > shard->config.batch_ops_max)
		scan_max = shard->config.batch_ops_max;
	rc = kobo_store_expired_holds(shard->store, now_ms, shard->expired_ids,
	                                  scan_max, &count);
	if (rc != KOBO_OK) {
		kobo_log(KOBO_LOG_ERROR, "expiry_scan_failed",
		         "\"shard\":%u,\"status\":%d", shard->config.index, rc);
		return;
	}
	if (count == 0)
		return;

	for (size_t i = 0; i < count; i++) {
		kobo_op *op = &shard->ops[i];
		memset(op, 0, sizeof(*op));
		op->kind = KOBO_OP_EXPIRE;
		memcpy(op->u.target.id, shard->expired_ids[i], sizeof(op->u.target.id));
		memcpy(op->request_id, "expiry", sizeof("expiry"));
	}
	int64_t started_ns = kobo__shard_span_clock(); /* 0: tracing off */
	int64_t commit_us = 0;
	rc = writer_apply(shard, count, &commit_us);
	writer_log_batch(shard, count, rc, commit_us);
	if (rc != KOBO_OK)
		return;
	kobo__shard_span_expired(shard->config.index, shard->results, count, started_ns);

	size_t expired = 0;
	for (size_t i = 0; i < count; i++)
		if (shard->results[i].code == KOBO_RESULT_UPDATED)
			expired++;
	kobo_metrics_expired(shard->config.index, expired);
	/* More may be waiting: scan again at once. */
	if (count == scan_max)
		shard->next_expiry_scan_ms = scanned_at_ms;
}

static void *writer_main(void *arg)
{
	kobo_shard *shard = arg;

	for (;;) {
		bool exit_now = false;
		size_t requests = writer_take_batch(shard, &exit_now);
		if (requests > 0)
			writer_run_batch(shard, requests);
		else if (exit_now)
			break;
		if (mono_ms() >= shard->next_expiry_scan_ms)
			writer_expire_holds(shard);
	}
	return NULL;
}

/* ---- Lifecycle. ---- */

static void shard_free(kobo_shard *shard)
{
	kobo_ledger_destroy(shard->ledger);
	free(shard->ops);
	free(shard->events);
	free(shard->results);
	free(shard->batch);
	free(shard->ids);
	free(shard->expired_ids);
	free(shard);
}

int kobo_shard_start(kobo_store *store, const kobo_shard_config *config,
                     kobo_shard **out)
{
	kobo_shard *shard = calloc(1, sizeof(*shard));
	if (!shard)
		return KOBO_ENOMEM;
	shard->store = store;
	shard->config = *config;
	if (shard->config.queue_ops_max == 0)
		shard->config.queue_ops_max = KOBO_SHARD_QUEUE_OPS_DEFAULT;
	if (shard->config.batch_ops_max == 0)
		shard->config.batch_ops_max = KOBO_SHARD_BATCH_OPS_DEFAULT;
	if (shard->config.batch_ops_max > KOBO_BATCH_OPS_MAX ||
	    shard->config.queue_ops_max < KOBO_BATCH_OPS_MAX) {
		free(shard);
		return KOBO_EINVAL;
	}
	/* Scratch is sized for the largest single request, which may exceed
	 * batch_ops_max (invariant 3). */
	size_t batch_max = KOBO_BATCH_OPS_MAX;

	shard->ledger = kobo_ledger_create(batch_max);
	shard->ops = calloc(batch_max, sizeof(*shard->ops));
	shard->results = calloc(batch_max, sizeof(*shard->results));
	shard->events = calloc(batch_max, sizeof(*shard->events));
	shard->batch = calloc(batch_max, sizeof(*shard->batch));
	shard->ids = calloc(KOBO_LEDGER_ACCOUNT_IDS_MAX(batch_max),
	                    sizeof(*shard->ids));
	shard->expired_ids = calloc(KOBO_SHARD_EXPIRED_SCAN_MAX,
	                            sizeof(*shard->expired_ids));
	if (!shard->ledger || !shard->ops || !shard->results || !shard->events ||
	    !shard->batch ||
	    !shard->ids || !shard->expired_ids) {
		shard_free(shard);
		return KOBO_ENOMEM;
	}
	pthread_mutex_init(&shard->lock, NULL);
	if (kobo_cond_init_monotonic(&shard->wake) != 0) {
		pthread_mutex_destroy(&shard->lock);
		shard_free(shard);
		return KOBO_ENOMEM;
	}
	kobo_metrics_queue_capacity(shard->config.index, shard->config.queue_ops_max);
	shard->next_expiry_scan_ms = 0; /* scan once at start: holds may have
	                                   expired while the process was down */
	if (pthread_create(&shard->thread, NULL, writer_main, shard) != 0) {
		pthread_cond_destroy(&shard->wake);
		pthread_mutex_destroy(&shard->lock);
		shard_free(shard);
		return KOBO_ENOMEM;
	}
	*out = shard;
	return KOBO_OK;
}

void kobo_shard_quiesce(kobo_shard *shard)
{
	if (shard->joined)
		return;
	pthread_mutex_lock(&shard->lock);
	shard->stopping = true;
	pthread_cond_signal(&shard->wake);
	pthread_mutex_unlock(&shard->lock);
	pthread_join(shard->thread, NULL);
	shard->joined = true;
	/* Invariant 5: everything accepted was answered. */
	kobo_assert(shard->head == NULL && shard->queued_ops == 0);
}

void kobo_shard_stop(kobo_shard *shard)
{
	kobo_shard_quiesce(shard);
	pthread_cond_destroy(&shard->wake);
	pthread_mutex_destroy(&shard->lock);
	shard_free(shard);
}
