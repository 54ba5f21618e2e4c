/*
 * test_saga_sim.c — a seeded, deterministic, single-threaded simulation of
 * 2..4 shards running cross-shard transfers as sagas over in-memory stores,
 * with failed commits and process crashes injected at every step boundary.
 * The protocol is src/saga/saga.h; the ledger's rules are the "Cross-shard
 * rules" of src/ledger/ledger.h; the world's state is saga_sim_model.h.
 *
 * One run:
 *   setup   2 currencies, each a funding account (allow_negative) and 20
 *           users spread over the shards by the default shard map, and
 *           the near-limit scenario's whales and payees (allow_negative);
 *   run     random events until the clients have sent ~1,500 requests:
 *           a client sends a request (deposit, transfer ~60 % cross-shard,
 *           post or void of a hold, a resend of an answered request, an id
 *           conflict, an id reused across shards) or retries an unanswered
 *           one (also one answered transfer_in_progress: a saga step of
 *           the transfer was under way). Issue 7's interleavings: a post or
 *           void races its hold's create (sent before or just after it);
 *           a post or void of a recent cross-shard hold is misrouted, as
 *           the old edge did, to the payee's shard B, the shard of
 *           hash(id) or any other, while the saga is RESERVED, credited or
 *           posting: it must answer transfer_not_found and change nothing;
 *           once per currency a whale pays ~INT64_MAX to a payee on another
 *           shard next to a burst of 1-unit transfers on the same clearing
 *           pair, so the RESERVED sagas together would overflow the base
 *           clearing account: each must settle, none may be refused for
 *           an overflow (overflow lanes, ledger.h "Clearing lanes");
 *           a shard writer runs the head of its queue as one batch
 *           (kobo_batch_run, as the writer does); the runner model reads a
 *           saga's record on A, sends kobo_saga_remote_op to B, sends
 *           kobo_saga_settle_op back to A, each a separate event; the writer
 *           expires holds (kobo_store_expired_holds); the runner rescans
 *           (kobo_store_read_sagas); the clock moves;
 *   faults  before a batch a commit may fail (kobo_store_mem_fail_next_commit,
 *           applied or not), a committed batch may lose its answers, and a
 *           plain crash may happen between any two events. Each is a
 *           process crash: queues and the runner's table are lost, every
 *           store restarts, the runner rescans, clients retry what went
 *           unanswered with the same id;
 *   drain   faults stop; unanswered requests are retried and every saga is
 *           driven until read_sagas is empty everywhere (bounded);
 *   check   (1) nothing in flight, (2) double entry over all shards and
 *           clean store audits, (3) clearing pairs net to zero, lane by
 *           lane, (4) the legs of every cross-shard transfer agree, each
 *           leg in the same lane, (5) every account's
 *           balances recomputed from the final transfers and every outcome
 *           allowed by what the client asked, (6) no non-negative account
 *           below zero, (7) every id applied once, plus every answer given
 *           during the run still true. Then every hold is expired, the
 *           world drained and checked again.
 *
 * KOBO_SEED=n reruns one run exactly; KOBO_SIM_RUNS and KOBO_SIM_OPS size
 * the test. A failure prints the seed, the check and the last events.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../src/store/mem/store_mem.h"
#include "saga_sim_model.h"

/* ---- Reporting. ---- */

static void sim_trace(sim *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void sim_fail(sim *s, unsigned check, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void sim_trace(sim *s, const char *fmt, ...)
{
	char *line = s->trace[s->trace_count++ % SIM_TRACE_LINES];
	int n = snprintf(line, SIM_TRACE_LINE_BYTES, "t+%lld ",
	                 (long long)(s->now_ms - SIM_START_MS));
	va_list args;
	va_start(args, fmt);
	vsnprintf(line + n, SIM_TRACE_LINE_BYTES - (size_t)n, fmt, args);
	va_end(args);
}

static void checks_text(unsigned bits, char *out, size_t len)
{
	size_t used = 0;
	out[0] = '\0';
	for (unsigned i = 0; i < CHECK_COUNT; i++)
		if (bits & (1u << i))
			used += (size_t)snprintf(out + used, len - used, "%s%s",
			                         used ? "," : "", sim_check_names[i]);
}

/* Records a failed check; prints it (and, the first time, the seed and the
 * last events) unless the run is quiet. The run goes on, so one run reports
 * every check group that fails. */
static void sim_fail(sim *s, unsigned check, const char *fmt, ...)
{
	s->failed |= check;
	if (s->quiet)
		return;
	if (s->problems == 0) {
		printf("saga simulation FAILED seed=%llu shards=%u bug=%s "
		       "(rerun with KOBO_SEED=%llu)\n", (unsigned long long)s->seed,
		       s->shard_count, sim_bug_names[s->bug],
		       (unsigned long long)s->seed);
		size_t first = s->trace_count > SIM_TRACE_LINES
		                   ? s->trace_count - SIM_TRACE_LINES : 0;
		printf("  last events:\n");
		for (size_t i = first; i < s->trace_count; i++)
			printf("    %s\n", s->trace[i % SIM_TRACE_LINES]);
	}
	if (++s->problems <= SIM_PROBLEMS_PRINTED) {
		char line[512];
		va_list args;
		va_start(args, fmt);
		vsnprintf(line, sizeof(line), fmt, args);
		va_end(args);
		printf("  check %s failed: %s\n",
		       sim_check_names[__builtin_ctz(check)], line);
	}
	fflush(stdout);
}

static const char *op_kind_name(kobo_op_kind kind)
{
	switch (kind) {
	case KOBO_OP_CREATE_ACCOUNT: return "create_account";
	case KOBO_OP_CREATE_TRANSFER: return "create";
	case KOBO_OP_POST: return "post";
	case KOBO_OP_VOID: return "void";
	case KOBO_OP_EXPIRE: return "expire";
	case KOBO_OP_SAGA_CREDIT: return "saga_credit";
	case KOBO_OP_SAGA_ABORT: return "saga_abort";
	case KOBO_OP_SAGA_SETTLE: return "saga_settle";
	case KOBO_OP_SAGA_POST: return "saga_post";
	case KOBO_OP_SAGA_VOID: return "saga_void";
	}
	return "?";
}

static const char *op_target(const kobo_op *op)
{
	switch (op->kind) {
	case KOBO_OP_CREATE_ACCOUNT: return op->u.account.id;
	case KOBO_OP_CREATE_TRANSFER:
	case KOBO_OP_SAGA_CREDIT:
	case KOBO_OP_SAGA_ABORT: return op->u.transfer.id;
	case KOBO_OP_POST:
	case KOBO_OP_VOID:
	case KOBO_OP_EXPIRE:
	case KOBO_OP_SAGA_POST:
	case KOBO_OP_SAGA_VOID: return op->u.target.id;
	case KOBO_OP_SAGA_SETTLE: return op->u.settle.id;
	}
	return "?";
}

static const char *code_name(kobo_result_code code)
{
	const char *name = kobo_result_code_name(code);
	return name ? name : "?";
}

static const char *status_name(kobo_transfer_status status)
{
	const char *name = kobo_transfer_status_name(status);
	return name ? name : "?";
}

static const char *reason_name(kobo_void_reason reason)
{
	const char *name = kobo_void_reason_name(reason);
	return name ? name : "none";
}

/* ---- Lookups. ---- */

static const sim_account *account_find(const sim *s, const char *id)
{
	for (size_t i = 0; i < s->account_count; i++)
		if (strcmp(s->accounts[i].id, id) == 0)
			return &s->accounts[i];
	return NULL;
}

/* The transfer whose record on shard is id: ids are "t<index>", except a
 * reused id, which names the transfer that used it first. */
static sim_xfer *xfer_find(sim *s, const char *id, uint32_t shard)
{
	if (id[0] != 't')
		return NULL;
	char *end;
	unsigned long index = strtoul(id + 1, &end, 10);
	if (*end != '\0' || index >= s->xfer_count)
		return NULL;
	sim_xfer *x = &s->xfers[index];
	if (strcmp(x->op.u.transfer.id, id) != 0)
		return NULL;
	if (x->shard_a == shard)
		return x;
	if (x->reused_by >= 0 && s->xfers[x->reused_by].shard_a == shard)
		return &s->xfers[x->reused_by];
	return NULL;
}

static void copy_record(kobo_transfer *out, const kobo_transfer *in)
{
	*out = *in;
	out->metadata = NULL; /* borrowed memory: never kept */
	out->metadata_len = 0;
}

/* ---- Queues. ---- */

static void enqueue(sim *s, uint32_t shard, const kobo_op *op, origin from,
                    uint32_t ref)
{
	sim_queue *q = &s->queues[shard];
	if (q->count == q->cap) {
		size_t cap = q->cap ? 2 * q->cap : 64;
		queued *items = realloc(q->items, cap * sizeof(*items));
		assert_non_null(items);
		q->items = items;
		q->cap = cap;
	}
	q->items[q->count++] = (queued){ .op = *op, .from = from, .ref = ref };
}

static size_t queued_total(const sim *s)
{
	size_t total = 0;
	for (uint32_t i = 0; i < s->shard_count; i++)
		total += s->queues[i].count;
	return total;
}

/* ---- The runner's table. ---- */

static sim_saga *saga_find(sim *s, uint32_t shard, const char *id)
{
	for (size_t i = 0; i < s->saga_high; i++) {
		sim_saga *g = &s->sagas[i];
		if (g->used && g->shard == shard && strcmp(g->id, id) == 0)
			return g;
	}
	return NULL;
}

/* A doorbell or a scan row: drive the saga of id on shard unless the
 * runner already does. */
static void saga_add(sim *s, uint32_t shard, const char *id)
{
	if (saga_find(s, shard, id))
		return;
	size_t slot = 0;
	while (slot < s->saga_high && s->sagas[slot].used)
		slot++;
	assert_true(slot < s->saga_cap);
	if (slot == s->saga_high)
		s->saga_high++;
	sim_saga *g = &s->sagas[slot];
	memset(g, 0, sizeof(*g));
	g->used = true;
	g->phase = PHASE_READY;
	g->shard = shard;
	snprintf(g->id, sizeof(g->id), "%s", id);
}

static void saga_remove(sim *s, sim_saga *g)
{
	g->used = false;
	while (s->saga_high > 0 && !s->sagas[s->saga_high - 1].used)
		s->saga_high--;
}

static size_t sagas_active(const sim *s)
{
	size_t n = 0;
	for (size_t i = 0; i < s->saga_high; i++)
		n += s->sagas[i].used;
	return n;
}

typedef struct scan_ctx {
	sim *s;
	uint32_t shard;
	bool drive; /* hand what is listed to the runner */
	char last[KOBO_ID_LEN_MAX + 1];
	size_t rows;
} scan_ctx;

static int scan_row(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	(void)seq;
	scan_ctx *scan = ctx;
	snprintf(scan->last, sizeof(scan->last), "%s", transfer->id);
	scan->rows++;
	if (transfer->leg != KOBO_LEG_DEBIT || transfer->saga == KOBO_SAGA_NONE)
		sim_fail(scan->s, CHECK_RUN, "read_sagas on shard %u listed %s "
		         "(leg %s, saga %s)", scan->shard, transfer->id,
		         kobo_leg_name(transfer->leg),
		         kobo_saga_state_name(transfer->saga));
	if (scan->drive)
		saga_add(scan->s, scan->shard, transfer->id);
	return 0;
}

/* The runner's recovery scan, page by page as runner.c does (a runner
 * with BUG_NO_RECOVERY_SCAN drives nothing it lists). Returns the number
 * of sagas the stores list. */
static size_t rescan(sim *s)
{
	size_t listed = 0;
	for (uint32_t shard = 0; shard < s->shard_count; shard++) {
		scan_ctx scan = { .s = s, .shard = shard,
		                  .drive = s->bug != BUG_NO_RECOVERY_SCAN };
		do {
			scan.rows = 0;
			int rc = kobo_store_read_sagas(s->readers[shard], scan.last,
			                               SIM_SCAN_PAGE, scan_row, &scan);
			if (rc != KOBO_OK) {
				sim_fail(s, CHECK_RUN, "read_sagas on shard %u: %d",
				         shard, rc);
				break;
			}
			listed += scan.rows;
		} while (scan.rows == SIM_SCAN_PAGE);
	}
	return listed;
}

/* ---- Crashes. ---- */

static void sim_checks_now(sim *s, const char *when);

/* The process dies and restarts: what was queued or in the runner's table
 * is gone, the stores keep what they committed, clients will retry. */
static void crash(sim *s, const char *why)
{
	s->stats.crashes++;
	bool phases[3] = { false, false, false };
	for (size_t i = 0; i < s->saga_high; i++)
		if (s->sagas[i].used)
			phases[s->sagas[i].phase] = true;
	s->stats.paths[AT_CRASH_READY] += phases[PHASE_READY];
	s->stats.paths[AT_CRASH_REMOTE] += phases[PHASE_REMOTE];
	s->stats.paths[AT_CRASH_SETTLE] += phases[PHASE_SETTLE];
	sim_trace(s, "CRASH (%s): %zu queued ops and %zu sagas forgotten", why,
	          queued_total(s), sagas_active(s));
	for (uint32_t shard = 0; shard < s->shard_count; shard++) {
		sim_queue *q = &s->queues[shard];
		for (size_t i = 0; i < q->count; i++)
			if (q->items[i].from == FROM_CLIENT)
				s->requests[q->items[i].ref].in_flight = false;
		q->count = 0;
	}
	for (size_t i = 0; i < s->saga_high; i++)
		s->sagas[i].used = false;
	s->saga_high = 0;
	for (uint32_t shard = 0; shard < s->shard_count; shard++) {
		kobo_store_reader_close(s->readers[shard]);
		s->readers[shard] = NULL;
		kobo_store_mem_restart(s->stores[shard]);
		assert_true(kobo_store_healthy(s->stores[shard]));
		assert_int_equal(kobo_store_reader_open(s->stores[shard],
		                                        &s->readers[shard]), KOBO_OK);
	}
	sim_checks_now(s, why);
	rescan(s); /* the restarted runner's first scan */
}

/* ---- Client answers. ---- */

static bool transfer_matches(const kobo_transfer *t, const kobo_transfer *want)
{
	return strcmp(t->id, want->id) == 0 && strcmp(t->from, want->from) == 0 &&
	       strcmp(t->to, want->to) == 0 &&
	       strcmp(t->currency, want->currency) == 0 &&
	       t->amount == want->amount && t->pending == want->pending &&
	       t->timeout_seconds == want->timeout_seconds;
}

static void create_answered(sim *s, sim_request *r, const kobo_result *res)
{
	sim_xfer *x = &s->xfers[r->xfer];
	const kobo_transfer *want = &x->op.u.transfer;

	if (r->expect == EXPECT_CONFLICT) {
		if (res->code != KOBO_RESULT_ID_CONFLICT)
			sim_fail(s, CHECK_ONCE, "create %s resent with another amount "
			         "answered %s, expected id_conflict", want->id,
			         code_name(res->code));
		return;
	}
	switch (res->code) {
	case KOBO_RESULT_CREATED:
	case KOBO_RESULT_REPLAYED:
	case KOBO_RESULT_ACCOUNT_NOT_FOUND:
	case KOBO_RESULT_INSUFFICIENT_FUNDS:
	case KOBO_RESULT_CURRENCY_MISMATCH:
	case KOBO_RESULT_SAME_ACCOUNT:
		break;
	default:
		sim_fail(s, CHECK_RUN, "create %s answered %s", want->id,
		         code_name(res->code));
		return;
	}
	/* Exactly once: an id that landed before replays; one that never did
	 * cannot. */
	if (x->landed && res->code != KOBO_RESULT_REPLAYED)
		sim_fail(s, CHECK_ONCE, "create %s (attempt %u) answered %s although "
		         "an earlier attempt committed: applied twice", want->id,
		         r->attempts, code_name(res->code));
	if (!x->landed && res->code == KOBO_RESULT_REPLAYED)
		sim_fail(s, CHECK_ONCE, "create %s answered replayed although no "
		         "attempt ever committed", want->id);
	if (!res->has_transfer || !transfer_matches(&res->transfer, want) ||
	    res->transfer.leg != want->leg) {
		sim_fail(s, CHECK_RUN, "create %s answered %s with a snapshot of "
		         "another transfer", want->id, code_name(res->code));
		return;
	}
	if (res->code == KOBO_RESULT_REPLAYED)
		s->stats.replays++;
	if (!x->answered) {
		x->answered = true;
		copy_record(&x->first, &res->transfer);
	}
	x->landed = true;
}

/* Which step the saga of a misrouted post/void was in when it ran on
 * r->shard, for the coverage counts: A's record (unchanged by the batch
 * on another shard) and, when misrouted to B, B's credit leg. */
static void count_misrouted(sim *s, const sim_request *r)
{
	const sim_xfer *x = &s->xfers[r->xfer];
	kobo_transfer t;
	s->stats.misrouted++;
	if (kobo_store_read_transfer(s->readers[x->shard_a], r->op.u.target.id,
	                             &t) == KOBO_OK && t.leg == KOBO_LEG_DEBIT) {
		s->stats.paths[PATH_MISROUTED_RESERVED] += t.saga == KOBO_SAGA_RESERVED;
		s->stats.paths[PATH_MISROUTED_POSTING] += t.saga == KOBO_SAGA_POSTING;
	}
	if (r->shard == x->shard_b &&
	    kobo_store_read_transfer(s->readers[x->shard_b], r->op.u.target.id,
	                             &t) == KOBO_OK &&
	    t.leg == KOBO_LEG_CREDIT && t.status == KOBO_STATUS_PENDING)
		s->stats.paths[PATH_MISROUTED_CREDITED]++;
}

/* POST and VOID answers; what an UPDATED answer promises is kept for the
 * end (CHECK_ACKED). Returns false when the client must ask again later
 * (transfer_in_progress: a saga step of the transfer is under way). */
static bool target_answered(sim *s, sim_request *r, const kobo_result *res)
{
	sim_xfer *x = &s->xfers[r->xfer];
	const char *id = r->op.u.target.id;
	bool post = r->kind == REQ_POST;

	if (r->misrouted) {
		/* No shard but the payer's holds a record a client may post
		 * or void: B's credit leg belongs to the saga. */
		count_misrouted(s, r);
		if (res->code != KOBO_RESULT_TRANSFER_NOT_FOUND)
			sim_fail(s, CHECK_RUN, "%s %s misrouted to shard %u (payer %u, "
			         "payee %u) answered %s, expected transfer_not_found",
			         post ? "post" : "void", id, r->shard, x->shard_a,
			         x->shard_b, code_name(res->code));
	}
	switch (res->code) {
	case KOBO_RESULT_UPDATED:
	case KOBO_RESULT_REPLAYED:
	case KOBO_RESULT_NOT_PENDING:
	case KOBO_RESULT_TRANSFER_NOT_FOUND:
		break;
	case KOBO_RESULT_TRANSFER_IN_PROGRESS:
		/* Only a DEBIT leg has saga steps; the client retries (409
		 * with Retry-After) and must get a final answer by the end. */
		if (!x->cross || r->misrouted)
			sim_fail(s, CHECK_RUN, "%s %s on shard %u (%s) answered "
			         "transfer_in_progress", post ? "post" : "void", id,
			         r->shard, x->cross ? "misrouted" : "local");
		s->stats.in_progress++;
		s->stats.paths[PATH_IN_PROGRESS]++;
		return false;
	case KOBO_RESULT_AMOUNT_EXCEEDS_PENDING:
		if (post)
			break;
		/* fall through */
	default:
		sim_fail(s, CHECK_RUN, "%s %s answered %s", post ? "post" : "void",
		         id, code_name(res->code));
		return true;
	}
	/* On the payer's shard a post/void finds the transfer once its
	 * create committed; before, it raced the create and found nothing. */
	if (res->code == KOBO_RESULT_TRANSFER_NOT_FOUND && !r->misrouted) {
		if (x->landed)
			sim_fail(s, CHECK_ACKED, "%s %s answered transfer_not_found "
			         "although its create committed",
			         post ? "post" : "void", id);
		else
			s->stats.paths[PATH_RACED_CREATE]++;
	}
	bool lost_update = r->landed && r->lost_answer == KOBO_RESULT_UPDATED;
	bool resend_update = r->expect == EXPECT_REPLAY;
	if ((lost_update || resend_update) && res->code != KOBO_RESULT_REPLAYED)
		sim_fail(s, CHECK_ONCE, "%s %s: an earlier attempt was updated, "
		         "this one answered %s instead of replayed",
		         post ? "post" : "void", id, code_name(res->code));
	if (res->code == KOBO_RESULT_REPLAYED)
		s->stats.replays++;
	bool acked = res->code == KOBO_RESULT_UPDATED ||
	             (res->code == KOBO_RESULT_REPLAYED && lost_update);
	if (!acked)
		return true;
	if (post) {
		int64_t amount = r->op.u.target.has_amount ? r->op.u.target.amount
		                                           : x->op.u.transfer.amount;
		if (x->post_acked && res->code == KOBO_RESULT_UPDATED)
			sim_fail(s, CHECK_ONCE, "hold %s posted twice (%lld, then "
			         "%lld)", id, (long long)x->post_acked_amount,
			         (long long)amount);
		if (!x->post_acked) {
			x->post_acked = true;
			x->post_acked_amount = amount;
		}
	} else {
		x->void_acked = true;
	}
	if (x->post_acked && x->void_acked)
		sim_fail(s, CHECK_ONCE, "hold %s was both posted and voided", id);
	return true;
}

static void client_answered(sim *s, uint32_t ref, const kobo_result *res)
{
	sim_request *r = &s->requests[ref];
	r->in_flight = false;
	if (r->kind == REQ_CREATE)
		create_answered(s, r, res);
	else if (!target_answered(s, r, res))
		return; /* not final: client_retry sends it again */
	r->answered = true;
	r->answer = res->code;
}

/* ---- The runner's steps. ---- */

static void expiry_answered(sim *s, uint32_t shard, const kobo_op *op,
                            const kobo_result *res)
{
	if (res->code == KOBO_RESULT_NOT_PENDING)
		return;
	if (res->code != KOBO_RESULT_UPDATED) {
		sim_fail(s, CHECK_RUN, "expire %s on shard %u answered %s",
		         op->u.target.id, shard, code_name(res->code));
		return;
	}
	s->stats.expired++;
	sim_xfer *x = xfer_find(s, op->u.target.id, shard);
	if (x)
		x->expire_acked = true;
}

/* B refused a credit leg for an overflow. No client account of the sim
 * can overflow (users hold little; a near-limit payee is paid once), so it
 * was Kobo's clearing account: fail now, with both sides of the pair as
 * they are, while the events that led here are still in the trace. */
static void credit_overflowed(sim *s, const sim_saga *g)
{
	kobo_account a_side, b_side;
	memset(&a_side, 0, sizeof(a_side));
	memset(&b_side, 0, sizeof(b_side));
	kobo_store_read_account(s->readers[g->shard], g->record.clearing, &a_side);
	kobo_store_read_account(s->readers[g->remote], g->op.u.transfer.clearing,
	                        &b_side);
	sim_fail(s, CHECK_MODEL, "B=%u refused the credit leg of %s (%lld %s) "
	         "with amount_overflow; after that batch B's %s has posted %lld "
	         "pending_out %lld pending_in %lld, A=%u's %s posted %lld "
	         "pending_out %lld pending_in %lld", g->remote, g->id, (long long)g->record.amount,
	         g->record.currency, g->op.u.transfer.clearing,
	         (long long)b_side.posted, (long long)b_side.pending_out,
	         (long long)b_side.pending_in, g->shard, g->record.clearing,
	         (long long)a_side.posted, (long long)a_side.pending_out,
	         (long long)a_side.pending_in);
}

/* B answered the step: settle on A, or (an answer the protocol does not
 * expect) read again later. */
static void remote_answered(sim *s, sim_saga *g, const kobo_result *res)
{
	kobo_op settle;
	if (kobo_saga_remote_busy(&g->op, res)) {
		s->stats.credit_waits++;
		g->phase = PHASE_READY; /* as the runner: ask again later */
		return;
	}
	if (!kobo_saga_settle_op(&g->record, &g->op, res, &settle)) {
		sim_fail(s, CHECK_RUN, "saga %s (A=%u, %s) got %s from B=%u for %s: "
		         "not a final answer", g->id, g->shard,
		         kobo_saga_state_name(g->record.saga), code_name(res->code),
		         g->remote, op_kind_name(g->op.kind));
		g->phase = PHASE_READY;
		return;
	}
	if (g->op.kind == KOBO_OP_SAGA_ABORT)
		s->stats.paths[res->code == KOBO_RESULT_CREATED ? PATH_ABORT_REFUSED
		                                                : PATH_ABORT_FOUND_CREDIT]++;
	else if (g->op.kind == KOBO_OP_SAGA_CREDIT && settle.u.settle.refused)
		s->stats.paths[PATH_REFUSED_CREDIT]++;
	if (g->op.kind == KOBO_OP_SAGA_CREDIT && settle.u.settle.refused &&
	    settle.u.settle.refusal == KOBO_RESULT_AMOUNT_OVERFLOW)
		credit_overflowed(s, g);
	if (g->record.saga == KOBO_SAGA_POSTING &&
	    g->record.saga_amount < g->record.amount)
		s->stats.paths[PATH_PARTIAL_POST_CROSS]++;
	if (g->record.saga == KOBO_SAGA_VOIDING &&
	    g->record.saga_reason == KOBO_VOID_EXPIRED)
		s->stats.paths[PATH_EXPIRED_DEBIT_LEG]++;
	if (s->bug == BUG_REFUSAL_AS_CREDIT && settle.u.settle.refused &&
	    sim_chance(s, 500)) {
		settle.u.settle.refused = false;
		settle.u.settle.refusal = KOBO_RESULT_CREATED;
	}
	g->op = settle;
	g->phase = PHASE_SETTLE;
	enqueue(s, g->shard, &settle, FROM_SETTLE, (uint32_t)(g - s->sagas));
}

static void settle_answered(sim *s, sim_saga *g, const kobo_result *res)
{
	s->stats.settles++;
	if (res->code != KOBO_RESULT_UPDATED && res->code != KOBO_RESULT_REPLAYED)
		sim_fail(s, CHECK_RUN, "saga_settle %s on shard %u answered %s",
		         g->id, g->shard, code_name(res->code));
	g->phase = PHASE_READY; /* re-read: finished, or the next step began */
}

/* B's clearing account for the leg a_clearing names on A: B's base
 * account for A, plus the same lane suffix when A's leg took an overflow
 * lane (ledger.h, "Clearing lanes"): each lane pairs like the base. */
static void mirror_clearing(char *out, const char *a_clearing, uint32_t shard_a,
                            uint32_t shard_b, const char *currency)
{
	char base[KOBO_ID_LEN_MAX + 1];
	char lane[KOBO_CLEARING_LANE_LEN_MAX + 1] = "";
	char parsed_currency[KOBO_CURRENCY_LEN_MAX + 1];
	uint32_t x, y;
	if (!kobo_clearing_parse(a_clearing, &x, &y, parsed_currency, lane))
		lane[0] = '\0';
	kobo_clearing_id(base, shard_b, shard_a, currency);
	size_t base_len = strlen(base), lane_len = strlen(lane);
	assert_true(base_len + lane_len <= KOBO_ID_LEN_MAX);
	memcpy(out, base, base_len);
	memcpy(out + base_len, lane, lane_len + 1);
}

/* saga.h's contract for B's op: the step the record's saga state names,
 * about the same transfer, as a CREDIT leg through B's clearing account
 * of the lane A's leg took. */
static bool remote_op_as_documented(const kobo_transfer *a, uint32_t shard_a,
                                    uint32_t shard_b, bool give_up,
                                    const kobo_op *op)
{
	switch (a->saga) {
	case KOBO_SAGA_RESERVED: {
		const kobo_transfer *t = &op->u.transfer;
		char b_clearing[KOBO_ID_LEN_MAX + 1];
		mirror_clearing(b_clearing, a->clearing, shard_a, shard_b, a->currency);
		return op->kind == (give_up ? KOBO_OP_SAGA_ABORT : KOBO_OP_SAGA_CREDIT) &&
		       transfer_matches(t, a) && t->leg == KOBO_LEG_CREDIT &&
		       strcmp(t->clearing, b_clearing) == 0 &&
		       t->metadata_len == a->metadata_len &&
		       memcmp(t->metadata, a->metadata, a->metadata_len) == 0;
	}
	case KOBO_SAGA_POSTING:
		return op->kind == KOBO_OP_SAGA_POST && strcmp(op->u.target.id, a->id) == 0 &&
		       op->u.target.has_amount && op->u.target.amount == a->saga_amount;
	case KOBO_SAGA_VOIDING:
		return op->kind == KOBO_OP_SAGA_VOID && strcmp(op->u.target.id, a->id) == 0;
	case KOBO_SAGA_NONE:
		break;
	}
	return false;
}

/* One runner event: read A's record and send B's step. */
static void runner_step(sim *s, sim_saga *g)
{
	kobo_transfer record;
	int rc = kobo_store_read_transfer(s->readers[g->shard], g->id, &record);
	if (rc != KOBO_OK) {
		/* Doorbells and scans follow commits: the record exists. */
		sim_fail(s, CHECK_RUN, "saga %s: reading its record on shard %u: %d",
		         g->id, g->shard, rc);
		saga_remove(s, g);
		return;
	}
	if (record.leg != KOBO_LEG_DEBIT || record.saga == KOBO_SAGA_NONE) {
		sim_trace(s, "runner %s on %u: %s, done", g->id, g->shard,
		          status_name(record.status));
		saga_remove(s, g);
		return;
	}
	if (record.metadata_len > SIM_METADATA_MAX) {
		sim_fail(s, CHECK_RUN, "saga %s: metadata of %u bytes", g->id,
		         record.metadata_len);
		saga_remove(s, g);
		return;
	}
	g->record = record;
	memcpy(g->metadata, record.metadata, record.metadata_len);
	g->record.metadata = g->metadata;
	g->remote = kobo_shard_map_account(&s->map, record.to);
	if (g->remote == g->shard || g->remote >= s->shard_count) {
		sim_fail(s, CHECK_RUN, "saga %s on shard %u has its payee %s on "
		         "shard %u", g->id, g->shard, record.to, g->remote);
		saga_remove(s, g);
		return;
	}
	char b_clearing[KOBO_ID_LEN_MAX + 1];
	kobo_clearing_id(b_clearing, g->remote, g->shard, record.currency);
	bool late = record.saga == KOBO_SAGA_RESERVED &&
	            s->now_ms - record.updated_at_ms > SIM_DEADLINE_MS;
	/* Mostly as the runner does; sometimes a late runner still credits. */
	bool give_up = late && sim_chance(s, 750);
	if (!kobo_saga_remote_op(&g->record, b_clearing, give_up, &g->op)) {
		sim_fail(s, CHECK_RUN, "saga %s: no remote op for saga state %s",
		         g->id, kobo_saga_state_name(record.saga));
		saga_remove(s, g);
		return;
	}
	if (!remote_op_as_documented(&g->record, g->shard, g->remote, give_up,
	                             &g->op))
		sim_fail(s, CHECK_RUN, "saga %s (%s, abort %d): kobo_saga_remote_op "
		         "gave %s for %s", g->id, kobo_saga_state_name(record.saga),
		         give_up, op_kind_name(g->op.kind), op_target(&g->op));
	sim_xfer *x = xfer_find(s, g->id, g->shard);
	if (g->op.kind == KOBO_OP_SAGA_ABORT) {
		s->stats.aborts++;
		if (x)
			x->abort_sent = true;
	}
	sim_trace(s, "runner %s on %u (%s) -> %s on %u", g->id, g->shard,
	          kobo_saga_state_name(record.saga), op_kind_name(g->op.kind),
	          g->remote);

	if (s->bug == BUG_SETTLE_WITHOUT_REMOTE &&
	    record.saga == KOBO_SAGA_RESERVED && sim_chance(s, 200)) {
		kobo_op settle;
		memset(&settle, 0, sizeof(settle));
		settle.kind = KOBO_OP_SAGA_SETTLE;
		memcpy(settle.u.settle.id, record.id, sizeof(settle.u.settle.id));
		g->op = settle;
		g->phase = PHASE_SETTLE;
		enqueue(s, g->shard, &settle, FROM_SETTLE, (uint32_t)(g - s->sagas));
		return;
	}
	if (s->bug == BUG_POST_FULL_AMOUNT && g->op.kind == KOBO_OP_SAGA_POST)
		g->op.u.target.amount = record.amount;
	if (s->bug == BUG_CREDIT_TWICE && g->op.kind == KOBO_OP_SAGA_CREDIT &&
	    sim_chance(s, 100)) {
		kobo_op twice = g->op;
		size_t len = strlen(twice.u.transfer.id);
		twice.u.transfer.id[len] = '~';
		twice.u.transfer.id[len + 1] = '\0';
		enqueue(s, g->remote, &twice, FROM_BUG, 0);
	}
	g->phase = PHASE_REMOTE;
	s->stats.remote_steps++;
	enqueue(s, g->remote, &g->op, FROM_REMOTE, (uint32_t)(g - s->sagas));
}

/* ---- The shard writer. ---- */

typedef enum fault { FAULT_NONE = 0, FAULT_LOST, FAULT_APPLIED } fault;

/* Which step boundaries a batch that died with the process hit. */
static void count_boundaries(sim *s, const queued *taken, size_t count,
                             bool applied)
{
	for (size_t i = 0; i < count; i++) {
		const kobo_op *op = &taken[i].op;
		sim_path at = PATH_COUNT;
		if (op->kind == KOBO_OP_CREATE_TRANSFER &&
		    op->u.transfer.leg == KOBO_LEG_DEBIT)
			at = AT_DEBIT_CREATE_LOST;
		else if (taken[i].from == FROM_REMOTE &&
		         (op->kind == KOBO_OP_SAGA_CREDIT || op->kind == KOBO_OP_SAGA_ABORT))
			at = AT_CREDIT_LOST;
		else if (taken[i].from == FROM_REMOTE)
			at = AT_REMOTE_TARGET_LOST;
		else if (taken[i].from == FROM_SETTLE)
			at = AT_SETTLE_LOST;
		if (at != PATH_COUNT)
			s->stats.paths[at + applied]++;
	}
}

/* The clients of a batch that died with the process will retry. */
static void batch_unanswered(sim *s, const queued *taken, size_t count)
{
	for (size_t i = 0; i < count; i++)
		if (taken[i].from == FROM_CLIENT)
			s->requests[taken[i].ref].in_flight = false;
}

static void collect_accounts(sim *s, const char *when);
static void check_totals(sim *s, const char *when);
static void audit_shard(sim *s, uint32_t shard, const char *when);

/* A batch committed but its answers never left the process: clients that
 * asked will retry, and the sim remembers what they would have heard. */
static void answers_lost(sim *s, const queued *taken, size_t count,
                         const kobo_result *results)
{
	for (size_t i = 0; i < count; i++) {
		if (taken[i].from != FROM_CLIENT)
			continue;
		sim_request *r = &s->requests[taken[i].ref];
		s->stats.lost_answers++;
		/* An UPDATED that was lost stays the one to replay, whatever
		 * later lost attempts (in_progress, replayed) answered. */
		if (!r->landed || results[i].code == KOBO_RESULT_UPDATED) {
			r->landed = true;
			r->lost_answer = results[i].code;
		}
		if (r->kind == REQ_CREATE && r->expect != EXPECT_CONFLICT)
			s->xfers[r->xfer].landed = true;
	}
}

/* The writer's doorbell: every changed DEBIT leg with a step under way. */
static void ring_doorbells(sim *s, uint32_t shard)
{
	const kobo_transfer_change *changes;
	size_t count = kobo_ledger_changed_transfers(s->ledgers[shard], &changes);
	for (size_t i = 0; i < count; i++) {
		const kobo_transfer *t = changes[i].transfer;
		if (t->leg != KOBO_LEG_DEBIT || t->saga == KOBO_SAGA_NONE)
			continue;
		if (s->faults && sim_chance(s, SIM_DOORBELL_LOST_PER_MILLE)) {
			s->stats.doorbells_lost++; /* the next scan finds it */
			continue;
		}
		saga_add(s, shard, t->id);
	}
}

/* Runs the first 1..SIM_BATCH_OPS_MAX ops of shard's queue as one batch. */
static void writer_step(sim *s, uint32_t shard, size_t count)
{
	sim_queue *q = &s->queues[shard];
	kobo_op ops[SIM_BATCH_OPS_MAX];
	kobo_result results[SIM_BATCH_OPS_MAX];
	queued taken[SIM_BATCH_OPS_MAX];
	const char *ids[KOBO_LEDGER_ACCOUNT_IDS_MAX(SIM_BATCH_OPS_MAX)];

	if (count > q->count)
		count = q->count;
	if (count > SIM_BATCH_OPS_MAX)
		count = SIM_BATCH_OPS_MAX;
	if (count == 0)
		return;
	memcpy(taken, q->items, count * sizeof(*taken));
	memmove(q->items, q->items + count, (q->count - count) * sizeof(*q->items));
	q->count -= count;
	for (size_t i = 0; i < count; i++)
		ops[i] = taken[i].op;

	fault armed = FAULT_NONE;
	if (s->faults && sim_chance(s, SIM_FAULT_PER_MILLE)) {
		armed = sim_chance(s, 500) ? FAULT_APPLIED : FAULT_LOST;
		kobo_store_mem_fail_next_commit(s->stores[shard], armed == FAULT_APPLIED);
	}
	int64_t commit_us;
	uint64_t token;
	static kobo_event event_buf[SIM_BATCH_OPS_MAX];
	kobo_batch_events events = {.shard = shard, .node = "sim", .buf = event_buf};
	int rc = kobo_batch_run(s->stores[shard], s->ledgers[shard], ops, count,
	                        s->now_ms, results, ids, &commit_us, &token, &events);
	s->stats.batches++;
	s->stats.ops_run += count;

	char summary[SIM_TRACE_LINE_BYTES];
	size_t used = 0;
	for (size_t i = 0; i < count && used < sizeof(summary) - 1; i++)
		used += (size_t)snprintf(summary + used, sizeof(summary) - used, " %s:%s",
		                         op_kind_name(ops[i].kind), op_target(&ops[i]));
	sim_trace(s, "batch on %u rc=%d fault=%s:%s", shard, rc,
	          armed == FAULT_NONE ? "none" : armed == FAULT_LOST ? "lost" : "applied",
	          summary);

	if (rc != KOBO_OK) {
		if (rc != KOBO_EUNKNOWN || armed == FAULT_NONE) {
			sim_fail(s, CHECK_RUN, "batch of %zu ops on shard %u failed "
			         "with %d and no fault armed", count, shard, rc);
		} else {
			s->stats.failed_commits++;
			if (armed == FAULT_APPLIED) {
				/* apply() filled the answers before the commit
				 * "failed": they are what the batch did. */
				s->stats.failed_applied++;
				answers_lost(s, taken, count, results);
			}
		}
		count_boundaries(s, taken, count, armed == FAULT_APPLIED);
		batch_unanswered(s, taken, count);
		crash(s, "failed commit");
		return;
	}
	if (armed != FAULT_NONE) {
		sim_fail(s, CHECK_RUN, "shard %u: an armed commit fault did not fire",
		         shard);
		batch_unanswered(s, taken, count);
		crash(s, "unfired fault");
		return;
	}
	if (s->faults && sim_chance(s, SIM_CRASH_AFTER_COMMIT_PER_MILLE)) {
		answers_lost(s, taken, count, results);
		count_boundaries(s, taken, count, true);
		batch_unanswered(s, taken, count);
		crash(s, "after commit, before answers");
		return;
	}
	/* Invariants after every step: totals over all shards (cheap: the
	 * accounts), the full audit of the shard now and then. */
	collect_accounts(s, "after a batch");
	check_totals(s, "after a batch");
	if (s->stats.batches % SIM_AUDIT_EVERY_BATCHES == 0)
		audit_shard(s, shard, "after a batch");
	ring_doorbells(s, shard);
	for (size_t i = 0; i < count; i++) {
		switch (taken[i].from) {
		case FROM_CLIENT:
			client_answered(s, taken[i].ref, &results[i]);
			break;
		case FROM_REMOTE:
			remote_answered(s, &s->sagas[taken[i].ref], &results[i]);
			break;
		case FROM_SETTLE:
			settle_answered(s, &s->sagas[taken[i].ref], &results[i]);
			break;
		case FROM_EXPIRY:
			expiry_answered(s, shard, &ops[i], &results[i]);
			break;
		case FROM_BUG:
			break;
		}
	}
}

/* The writer's expiry scan: EXPIRE every hold past its expiry. */
static void expiry_scan(sim *s, uint32_t shard)
{
	char ids[SIM_EXPIRY_SCAN_MAX][KOBO_ID_LEN_MAX + 1];
	size_t count = 0;
	int rc = kobo_store_expired_holds(s->stores[shard], s->now_ms, ids,
	                                  SIM_EXPIRY_SCAN_MAX, &count);
	if (rc != KOBO_OK) {
		sim_fail(s, CHECK_RUN, "expired_holds on shard %u: %d", shard, rc);
		return;
	}
	for (size_t i = 0; i < count; i++) {
		kobo_op op;
		memset(&op, 0, sizeof(op));
		op.kind = KOBO_OP_EXPIRE;
		memcpy(op.u.target.id, ids[i], sizeof(op.u.target.id));
		enqueue(s, shard, &op, FROM_EXPIRY, 0);
	}
}

/* ---- Clients. ---- */

static sim_request *request_send(sim *s, req_kind kind, uint32_t xfer,
                                 uint32_t shard, const kobo_op *op,
                                 req_expect expect)
{
	assert_true(s->request_count < s->request_cap);
	uint32_t ref = (uint32_t)s->request_count++;
	sim_request *r = &s->requests[ref];
	memset(r, 0, sizeof(*r));
	r->kind = kind;
	r->expect = expect;
	r->xfer = xfer;
	r->shard = shard;
	r->op = *op;
	r->in_flight = true;
	r->attempts = 1;
	snprintf(r->op.request_id, sizeof(r->op.request_id), "req-%u", ref);
	enqueue(s, shard, &r->op, FROM_CLIENT, ref);
	return r;
}

static sim_xfer *xfer_new(sim *s)
{
	assert_true(s->xfer_count < s->xfer_cap);
	sim_xfer *x = &s->xfers[s->xfer_count];
	memset(x, 0, sizeof(*x));
	x->reused_by = -1;
	x->op.kind = KOBO_OP_CREATE_TRANSFER;
	snprintf(x->op.u.transfer.id, sizeof(x->op.u.transfer.id), "t%05zu",
	         s->xfer_count);
	s->xfer_count++;
	return x;
}

static const sim_account *random_user(sim *s, uint32_t currency)
{
	return &s->accounts[currency * (SIM_USERS + 1) + 1 + sim_below(s, SIM_USERS)];
}

static const sim_account *fund_of(const sim *s, uint32_t currency)
{
	return &s->accounts[currency * (SIM_USERS + 1)];
}

/* A user of currency (other than not_id) on shard when same, else on any
 * other shard; NULL when none is found quickly. */
static const sim_account *user_where(sim *s, uint32_t currency, uint32_t shard,
                                     bool same, const char *not_id)
{
	for (int tries = 0; tries < 64; tries++) {
		const sim_account *u = random_user(s, currency);
		if ((u->shard == shard) == same && strcmp(u->id, not_id) != 0)
			return u;
	}
	return NULL;
}

static int64_t available_of(sim *s, const sim_account *a)
{
	kobo_account account;
	if (kobo_store_read_account(s->readers[a->shard], a->id, &account) != KOBO_OK)
		return 0;
	return kobo_account_available(&account);
}

/* Routes a create like the edge (src/http/handlers.c route_transfer): to
 * the payer's shard, as a DEBIT leg when the payee lives elsewhere. */
static void route(sim *s, sim_xfer *x)
{
	kobo_transfer *t = &x->op.u.transfer;
	x->shard_a = kobo_shard_map_account(&s->map, t->from);
	x->shard_b = kobo_shard_map_account(&s->map, t->to);
	x->cross = x->shard_a != x->shard_b;
	t->leg = KOBO_LEG_LOCAL;
	t->clearing[0] = '\0';
	if (x->cross) {
		t->leg = KOBO_LEG_DEBIT;
		kobo_clearing_id(t->clearing, x->shard_a, x->shard_b, t->currency);
	}
}

static void client_race_create(sim *s, uint32_t index);

static void send_create(sim *s, sim_xfer *x)
{
	kobo_transfer *t = &x->op.u.transfer;
	if (sim_chance(s, 500))
		snprintf(x->metadata, sizeof(x->metadata), "{}");
	else
		snprintf(x->metadata, sizeof(x->metadata), "{\"n\":%zu}",
		         (size_t)(x - s->xfers));
	t->metadata = x->metadata;
	t->metadata_len = (uint32_t)strlen(x->metadata);
	route(s, x);
	uint32_t index = (uint32_t)(x - s->xfers);
	if (t->pending)
		s->holds[s->hold_count++] = index;
	/* A client that posts or voids the hold it is creating, on another
	 * connection: the post/void may reach the shard first. */
	bool race = t->pending && sim_chance(s, SIM_RACE_CREATE_PER_MILLE);
	bool race_first = race && sim_chance(s, 500);
	if (race_first)
		client_race_create(s, index);
	sim_trace(s, "client create %s %s -> %s %lld %s%s (shard %u%s)", t->id,
	          t->from, t->to, (long long)t->amount, t->currency,
	          t->pending ? " pending" : "", x->shard_a, x->cross ? ", cross" : "");
	request_send(s, REQ_CREATE, index, x->shard_a, &x->op, EXPECT_ANY);
	if (race && !race_first)
		client_race_create(s, index);
}

static void client_deposit(sim *s, const sim_account *to)
{
	sim_xfer *x = xfer_new(s);
	kobo_transfer *t = &x->op.u.transfer;
	x->kind = KIND_DEPOSIT;
	snprintf(t->from, sizeof(t->from), "%s", fund_of(s, to->currency)->id);
	snprintf(t->to, sizeof(t->to), "%s", to->id);
	snprintf(t->currency, sizeof(t->currency), "%s", sim_currencies[to->currency]);
	t->amount = 1000 + sim_below(s, 20000);
	send_create(s, x);
}

static void client_transfer(sim *s)
{
	sim_xfer *x = xfer_new(s);
	kobo_transfer *t = &x->op.u.transfer;
	uint32_t currency = sim_below(s, SIM_CURRENCIES);
	const sim_account *from = random_user(s, currency);
	const sim_account *to = NULL;
	uint32_t roll = sim_below(s, 1000);

	x->kind = KIND_NORMAL;
	snprintf(t->from, sizeof(t->from), "%s", from->id);
	snprintf(t->currency, sizeof(t->currency), "%s", sim_currencies[currency]);
	if (roll < 50) {
		x->kind = KIND_GHOST_PAYEE;
		snprintf(t->to, sizeof(t->to), "%s-ghost-%u", sim_currencies[currency],
		         sim_below(s, 100));
	} else if (roll < 100) {
		x->kind = KIND_FOREIGN_PAYEE;
		to = random_user(s, (currency + 1) % SIM_CURRENCIES);
	} else if (roll < 120) {
		x->kind = KIND_WRONG_CURRENCY;
		snprintf(t->currency, sizeof(t->currency), "%s",
		         sim_currencies[(currency + 1) % SIM_CURRENCIES]);
		to = user_where(s, (currency + 1) % SIM_CURRENCIES, from->shard,
		                !sim_chance(s, 600), from->id);
	} else if (roll < 130) {
		x->kind = KIND_SAME_ACCOUNT;
		to = from;
	} else {
		to = user_where(s, currency, from->shard, !sim_chance(s, 600), from->id);
	}
	if (x->kind != KIND_GHOST_PAYEE) {
		if (to == NULL)
			to = random_user(s, currency);
		if (to == from && x->kind != KIND_SAME_ACCOUNT)
			x->kind = KIND_SAME_ACCOUNT;
		snprintf(t->to, sizeof(t->to), "%s", to->id);
	}
	int64_t available = available_of(s, from);
	if (available < 1 || sim_chance(s, 100))
		t->amount = (available > 0 ? available : 0) + 1 + sim_below(s, 1000);
	else
		t->amount = 1 + (int64_t)sim_below(s, (uint32_t)(available / 3 + 1));
	if (sim_chance(s, 350)) {
		t->pending = true;
		if (sim_chance(s, 500))
			t->timeout_seconds = 1 + sim_below(s, 20);
	}
	send_create(s, x);
}

/* A cross-shard transfer whose id is already a local transfer's on the
 * payee's shard: the edge does not stop it, B must refuse (id_conflict)
 * and A compensate. */
static bool client_reused_id(sim *s)
{
	for (int tries = 0; tries < 32; tries++) {
		uint32_t i = sim_below(s, (uint32_t)s->xfer_count);
		sim_xfer *old = &s->xfers[i];
		if (old->cross || !old->answered || old->reused_by >= 0 ||
		    old->kind == KIND_REUSED_ID || old->kind == KIND_DEPOSIT ||
		    old->kind == KIND_WRONG_CURRENCY || old->kind == KIND_FOREIGN_PAYEE ||
		    old->kind == KIND_GHOST_PAYEE || old->kind == KIND_NEAR_LIMIT)
			continue;
		uint32_t currency = 0;
		while (strcmp(sim_currencies[currency], old->op.u.transfer.currency) != 0)
			currency++;
		const sim_account *to = user_where(s, currency, old->shard_a, true, "");
		const sim_account *from = user_where(s, currency, old->shard_a, false, "");
		if (!to || !from)
			continue;
		sim_xfer *x = xfer_new(s);
		kobo_transfer *t = &x->op.u.transfer;
		x->kind = KIND_REUSED_ID;
		memcpy(t->id, old->op.u.transfer.id, sizeof(t->id));
		snprintf(t->from, sizeof(t->from), "%s", from->id);
		snprintf(t->to, sizeof(t->to), "%s", to->id);
		snprintf(t->currency, sizeof(t->currency), "%s", sim_currencies[currency]);
		t->amount = 1 + sim_below(s, 500);
		old->reused_by = (int32_t)(x - s->xfers);
		send_create(s, x);
		return true;
	}
	return false;
}

/* Sends a post or void of transfer index to shard: the payer's, or
 * (misrouted) another, as the old edge did with an id it found on no shard
 * yet. A post asks for the whole hold, part of it, or more than it. */
static void client_target(sim *s, uint32_t index, bool post, uint32_t shard)
{
	sim_xfer *x = &s->xfers[index];
	bool misrouted = shard != x->shard_a;
	kobo_op op;
	memset(&op, 0, sizeof(op));
	op.kind = post ? KOBO_OP_POST : KOBO_OP_VOID;
	memcpy(op.u.target.id, x->op.u.transfer.id, sizeof(op.u.target.id));
	if (post) {
		int64_t amount = x->op.u.transfer.amount;
		uint32_t below = amount > UINT32_MAX ? UINT32_MAX : (uint32_t)amount;
		uint32_t roll = sim_below(s, 100);
		if (roll < 35) {
			op.u.target.has_amount = true;
			op.u.target.amount = 1 + (int64_t)sim_below(s, below);
		} else if (roll < 42 && amount <= INT64_MAX - 101) {
			op.u.target.has_amount = true;
			op.u.target.amount = amount + 1 + sim_below(s, 100);
		}
		/* Amounts a misrouted post asked can never be posted. */
		int64_t asked = op.u.target.has_amount ? op.u.target.amount : amount;
		if (!misrouted && x->post_amount_count < SIM_POST_AMOUNTS_MAX)
			x->post_amounts[x->post_amount_count++] = asked;
		else if (!misrouted)
			x->post_amounts_overflow = true;
	} else if (!misrouted) {
		x->void_sent = true;
	}
	if (misrouted && shard == x->shard_b && s->bug == BUG_MISROUTE_ACTS_ON_CREDIT)
		op.kind = post ? KOBO_OP_SAGA_POST : KOBO_OP_SAGA_VOID;
	sim_trace(s, "client %s %s%s%s", post ? "post" : "void", op.u.target.id,
	          op.u.target.has_amount ? " (partial)" : "",
	          misrouted ? (shard == x->shard_b ? " MISROUTED to the payee's shard"
	                                           : " MISROUTED") : "");
	sim_request *r = request_send(s, post ? REQ_POST : REQ_VOID, index, shard,
	                              &op, EXPECT_ANY);
	r->misrouted = misrouted;
}

static bool client_post_or_void(sim *s, bool post)
{
	if (s->hold_count == 0)
		return false;
	uint32_t index = s->holds[sim_below(s, (uint32_t)s->hold_count)];
	client_target(s, index, post, s->xfers[index].shard_a);
	return true;
}

/* Where the old edge sent a post/void of an id it found on no shard: the
 * payee's shard B, or the shard of hash(id), or any; never the payer's. */
static uint32_t misroute_shard(sim *s, const sim_xfer *x)
{
	uint32_t roll = sim_below(s, 10);
	uint32_t shard = x->shard_b;
	if (roll >= 6 && roll < 8)
		shard = kobo_shard_map_account(&s->map, x->op.u.transfer.id);
	else if (roll >= 8)
		shard = sim_below(s, s->shard_count);
	return shard == x->shard_a ? x->shard_b : shard;
}

/* A post or void racing the create of hold index, on the payer's shard
 * or misrouted. */
static void client_race_create(sim *s, uint32_t index)
{
	const sim_xfer *x = &s->xfers[index];
	bool post = sim_chance(s, 500);
	uint32_t shard = x->cross && sim_chance(s, 300) ? misroute_shard(s, x)
	                                                : x->shard_a;
	client_target(s, index, post, shard);
}

/* A post or void of a recent cross-shard hold (likely RESERVED, credited
 * on B, or with a post or void under way) misrouted away from its payer,
 * sometimes right after the client's own post/void on the payer's shard,
 * so it meets the saga in POSTING or VOIDING. It must change nothing. */
static bool client_misroute(sim *s)
{
	for (int tries = 0; tries < 8 && s->hold_count > 0; tries++) {
		uint32_t recent = s->hold_count < SIM_RECENT_HOLDS
		                      ? (uint32_t)s->hold_count : SIM_RECENT_HOLDS;
		uint32_t index = s->holds[s->hold_count - 1 - sim_below(s, recent)];
		const sim_xfer *x = &s->xfers[index];
		if (!x->cross)
			continue;
		if (sim_chance(s, 500))
			client_target(s, index, sim_chance(s, 600), x->shard_a);
		client_target(s, index, sim_chance(s, 600), misroute_shard(s, x));
		return true;
	}
	return false;
}

/* An account of currency on shard among the regular users; NULL when none
 * is found quickly. */
static const sim_account *user_on(sim *s, uint32_t currency, uint32_t shard)
{
	for (int tries = 0; tries < 64; tries++) {
		const sim_account *u = random_user(s, currency);
		if (u->shard == shard)
			return u;
	}
	return NULL;
}

/* 1-unit transfers from users on shard a to users on shard b: sent
 * together, they land in a batch or two, each a RESERVED saga on the same
 * clearing pair as the near-limit transfer. */
static void near_limit_burst(sim *s, uint32_t currency, uint32_t a, uint32_t b,
                             uint32_t count)
{
	for (uint32_t i = 0; i < count; i++) {
		const sim_account *from = user_on(s, currency, a);
		const sim_account *to = user_on(s, currency, b);
		if (!from || !to)
			continue;
		sim_xfer *x = xfer_new(s);
		kobo_transfer *t = &x->op.u.transfer;
		x->kind = KIND_NORMAL;
		snprintf(t->from, sizeof(t->from), "%s", from->id);
		snprintf(t->to, sizeof(t->to), "%s", to->id);
		snprintf(t->currency, sizeof(t->currency), "%s", sim_currencies[currency]);
		t->amount = 1;
		t->pending = sim_chance(s, 250);
		send_create(s, x);
	}
}

/* Item 2 of issue 7: a whale (allow_negative) pays ~INT64_MAX to a payee
 * on another shard, with a burst of 1-unit transfers on the same clearing
 * pair just before or after it, so several RESERVED sagas together would
 * overflow the base clearing account. Every one must end settled, and none
 * may be refused for an overflow: no client account can overflow here (the
 * whale and the payee are used once), so an amount_overflow would be a
 * client's transfer failing on Kobo's own account. */
static bool client_near_limit(sim *s, uint32_t currency)
{
	size_t base = SIM_REGULAR_ACCOUNTS + currency * (SIM_WHALES + SIM_BIG_PAYEES);
	uint32_t w0 = sim_below(s, SIM_WHALES), p0 = sim_below(s, SIM_BIG_PAYEES);
	size_t whale = 0, payee = 0;
	bool found = false;
	for (uint32_t i = 0; i < SIM_WHALES && !found; i++) {
		whale = base + (w0 + i) % SIM_WHALES;
		for (uint32_t k = 0; k < SIM_BIG_PAYEES && !found && !s->big_used[whale]; k++) {
			payee = base + SIM_WHALES + (p0 + k) % SIM_BIG_PAYEES;
			found = !s->big_used[payee] &&
			        s->accounts[payee].shard != s->accounts[whale].shard;
		}
	}
	if (!found)
		return false;
	s->big_used[whale] = s->big_used[payee] = true;
	uint32_t a = s->accounts[whale].shard, b = s->accounts[payee].shard;
	bool big_first = sim_chance(s, 700);
	uint32_t burst = 2 + sim_below(s, SIM_NEAR_LIMIT_BURST_MAX - 1);
	sim_trace(s, "client near-limit %s: %s -> %s (shards %u -> %u), %u 1-unit "
	          "transfers %s", sim_currencies[currency], s->accounts[whale].id,
	          s->accounts[payee].id, a, b, burst, big_first ? "after" : "before");
	if (!big_first)
		near_limit_burst(s, currency, a, b, burst);
	sim_xfer *x = xfer_new(s);
	kobo_transfer *t = &x->op.u.transfer;
	x->kind = KIND_NEAR_LIMIT;
	snprintf(t->from, sizeof(t->from), "%s", s->accounts[whale].id);
	snprintf(t->to, sizeof(t->to), "%s", s->accounts[payee].id);
	snprintf(t->currency, sizeof(t->currency), "%s", sim_currencies[currency]);
	t->amount = INT64_MAX - 1 - (int64_t)sim_below(s, 3);
	/* Half the time exactly what the base clearing account has room for
	 * (as if every hold posts), so the big one fills it and the burst
	 * after it no longer fits: they need lanes. Otherwise the base is
	 * rarely empty enough, and the big one takes a lane itself. */
	char clearing[KOBO_ID_LEN_MAX + 1];
	kobo_account account;
	kobo_clearing_id(clearing, a, b, sim_currencies[currency]);
	if (sim_chance(s, 500) &&
	    kobo_store_read_account(s->readers[a], clearing, &account) == KOBO_OK) {
		__int128 room = (__int128)INT64_MAX - account.posted - account.pending_in;
		if (room > INT64_MAX / 2 && room <= INT64_MAX)
			t->amount = (int64_t)room;
	}
	if (sim_chance(s, 300)) {
		t->pending = true;
		if (sim_chance(s, 500))
			t->timeout_seconds = 1 + sim_below(s, 20);
	}
	send_create(s, x);
	if (big_first)
		near_limit_burst(s, currency, a, b, burst);
	s->stats.near_limit++;
	return true;
}

/* Sends an answered request again with the same id: it must replay (for a
 * create, or a post or void that was updated), or, with another amount,
 * answer id_conflict. */
static bool client_resend(sim *s, bool conflict)
{
	for (int tries = 0; tries < 16; tries++) {
		if (s->request_count == 0)
			return false;
		sim_request *old = &s->requests[sim_below(s, (uint32_t)s->request_count)];
		if (!old->answered || old->expect == EXPECT_CONFLICT)
			continue;
		if (conflict && old->kind != REQ_CREATE)
			continue;
		kobo_op op = old->op;
		req_expect expect = EXPECT_ANY;
		if (conflict) {
			/* Another amount; a near-limit one may not grow. */
			op.u.transfer.amount += op.u.transfer.amount < INT64_MAX ? 1 : -1;
			expect = EXPECT_CONFLICT;
		} else if (old->kind == REQ_CREATE ||
		           old->answer == KOBO_RESULT_UPDATED) {
			expect = EXPECT_REPLAY;
		}
		sim_trace(s, "client resends %s %s%s", op_kind_name(op.kind),
		          op_target(&op), conflict ? " with another amount" : "");
		sim_request *r = request_send(s, old->kind, old->xfer, old->shard,
		                              &op, expect);
		r->misrouted = old->misrouted; /* the same shard, the same rule */
		return true;
	}
	return false;
}

/* A client whose request went unanswered sends it again, same id. */
static void retry_one(sim *s, uint32_t ref)
{
	sim_request *r = &s->requests[ref];
	if (s->bug == BUG_RETRY_NEW_ID && r->kind == REQ_CREATE &&
	    r->expect == EXPECT_ANY) {
		/* A client that forgot its id: a new one per attempt. */
		char *id = r->op.u.transfer.id;
		snprintf(id + 6, sizeof(r->op.u.transfer.id) - 6, "r%u", r->attempts);
	}
	r->in_flight = true;
	r->attempts++;
	s->stats.retries++;
	sim_trace(s, "client retries %s %s (attempt %u)", op_kind_name(r->op.kind),
	          op_target(&r->op), r->attempts);
	enqueue(s, r->shard, &r->op, FROM_CLIENT, ref);
}

/* Retries one unanswered request picked at random, or all of them. */
static bool client_retry(sim *s, bool all)
{
	size_t candidates = 0;
	for (size_t i = 0; i < s->request_count; i++)
		candidates += !s->requests[i].answered && !s->requests[i].in_flight;
	if (candidates == 0)
		return false;
	uint32_t pick = all ? 0 : sim_below(s, (uint32_t)candidates);
	for (size_t i = 0; i < s->request_count; i++) {
		if (s->requests[i].answered || s->requests[i].in_flight)
			continue;
		if (!all && pick-- != 0)
			continue;
		retry_one(s, (uint32_t)i);
		if (!all)
			break;
	}
	return true;
}

static void client_step(sim *s)
{
	for (uint32_t c = 0; c < SIM_CURRENCIES; c++) {
		if (s->stats.client_ops == s->near_limit_at[c] &&
		    client_near_limit(s, c)) {
			s->stats.client_ops++;
			return;
		}
	}
	uint32_t roll = sim_below(s, 1000);
	bool sent = true;
	if (roll < 80)
		client_deposit(s, random_user(s, sim_below(s, SIM_CURRENCIES)));
	else if (roll < 580)
		client_transfer(s);
	else if (roll < 690)
		sent = client_post_or_void(s, true);
	else if (roll < 760)
		sent = client_post_or_void(s, false);
	else if (roll < 810)
		sent = client_misroute(s);
	else if (roll < 945)
		sent = client_resend(s, false);
	else if (roll < 970)
		sent = client_resend(s, true);
	else
		sent = client_reused_id(s);
	if (!sent)
		client_transfer(s);
	s->stats.client_ops++;
}

/* ---- Setup. ---- */

static void run_direct(sim *s, uint32_t shard, const kobo_op *ops, size_t count,
                       kobo_result *results)
{
	const char *ids[KOBO_LEDGER_ACCOUNT_IDS_MAX(SIM_BATCH_OPS_MAX)];
	int64_t commit_us;
	uint64_t token;
	assert_int_equal(kobo_batch_run(s->stores[shard], s->ledgers[shard], ops,
	                                count, s->now_ms, results, ids, &commit_us,
	                                &token, NULL),
	                 KOBO_OK);
}

static void add_account(sim *s, const char *id, uint32_t currency,
                        bool allow_negative)
{
	sim_account *a = &s->accounts[s->account_count++];
	snprintf(a->id, sizeof(a->id), "%s", id);
	a->currency = currency;
	a->allow_negative = allow_negative;
	a->shard = kobo_shard_map_account(&s->map, id);
}

static void setup_accounts(sim *s)
{
	char id[KOBO_ID_LEN_MAX + 1];
	for (uint32_t c = 0; c < SIM_CURRENCIES; c++) {
		snprintf(id, sizeof(id), "%s-fund", sim_currencies[c]);
		add_account(s, id, c, true);
		for (uint32_t u = 0; u < SIM_USERS; u++) {
			snprintf(id, sizeof(id), "%s-user-%02u", sim_currencies[c], u);
			add_account(s, id, c, false);
		}
	}
	/* After the regular ones (random_user and fund_of index those). */
	for (uint32_t c = 0; c < SIM_CURRENCIES; c++) {
		for (uint32_t u = 0; u < SIM_WHALES; u++) {
			snprintf(id, sizeof(id), "%s-whale-%02u", sim_currencies[c], u);
			add_account(s, id, c, true);
		}
		for (uint32_t u = 0; u < SIM_BIG_PAYEES; u++) {
			snprintf(id, sizeof(id), "%s-big-%02u", sim_currencies[c], u);
			add_account(s, id, c, true);
		}
	}
	assert_int_equal(s->account_count, SIM_ACCOUNTS);
	static const char metadata[] = "{}";
	for (uint32_t shard = 0; shard < s->shard_count; shard++) {
		kobo_op ops[SIM_BATCH_OPS_MAX];
		kobo_result results[SIM_BATCH_OPS_MAX];
		size_t count = 0;
		for (size_t i = 0; i <= s->account_count; i++) {
			if (count == SIM_BATCH_OPS_MAX ||
			    (i == s->account_count && count > 0)) {
				run_direct(s, shard, ops, count, results);
				for (size_t k = 0; k < count; k++)
					assert_int_equal(results[k].code, KOBO_RESULT_CREATED);
				count = 0;
			}
			if (i == s->account_count || s->accounts[i].shard != shard)
				continue;
			kobo_op *op = &ops[count++];
			memset(op, 0, sizeof(*op));
			op->kind = KOBO_OP_CREATE_ACCOUNT;
			snprintf(op->u.account.id, sizeof(op->u.account.id), "%s",
			         s->accounts[i].id);
			snprintf(op->u.account.currency, sizeof(op->u.account.currency),
			         "%s", sim_currencies[s->accounts[i].currency]);
			op->u.account.allow_negative = s->accounts[i].allow_negative;
			op->u.account.metadata = metadata;
			op->u.account.metadata_len = sizeof(metadata) - 1;
		}
	}
}

static void sim_open(sim *s, uint64_t seed, size_t ops, sim_bug bug, bool quiet)
{
	memset(s, 0, sizeof(*s));
	s->seed = seed;
	s->rng = seed;
	s->bug = bug;
	s->quiet = quiet;
	s->shard_count = 2 + sim_below(s, SIM_SHARDS_MAX - 1);
	for (uint32_t c = 0; c < SIM_CURRENCIES; c++)
		s->near_limit_at[c] = ops / 10 + sim_below(s, (uint32_t)(ops * 8 / 10 + 1));
	s->now_ms = SIM_START_MS;
	kobo_shard_map_default(&s->map, s->shard_count);
	for (uint32_t i = 0; i < s->shard_count; i++) {
		assert_int_equal(kobo_store_open("mem:", i, false, &s->stores[i]), KOBO_OK);
		assert_int_equal(kobo_store_reader_open(s->stores[i], &s->readers[i]),
		                 KOBO_OK);
		s->ledgers[i] = kobo_ledger_create(SIM_BATCH_OPS_MAX);
		assert_non_null(s->ledgers[i]);
	}
	/* Every client op makes at most one transfer and two requests (a
	 * post/void racing a create, a misroute after a post); a near-limit
	 * scenario a burst more; the initial deposits a bounded number. */
	size_t near_limit_max = SIM_CURRENCIES * (SIM_NEAR_LIMIT_BURST_MAX + 1);
	s->xfer_cap = ops + SIM_ACCOUNTS + 16 + near_limit_max;
	s->request_cap = 2 * ops + SIM_ACCOUNTS + 16 + 2 * near_limit_max;
	s->saga_cap = s->xfer_cap;
	s->xfers = calloc(s->xfer_cap, sizeof(*s->xfers));
	s->holds = calloc(s->xfer_cap, sizeof(*s->holds));
	s->requests = calloc(s->request_cap, sizeof(*s->requests));
	s->sagas = calloc(s->saga_cap, sizeof(*s->sagas));
	assert_true(s->xfers && s->holds && s->requests && s->sagas);
	setup_accounts(s);
}

static void sim_close(sim *s)
{
	for (uint32_t i = 0; i < s->shard_count; i++) {
		kobo_store_reader_close(s->readers[i]);
		kobo_store_close(s->stores[i]);
		kobo_ledger_destroy(s->ledgers[i]);
		free(s->queues[i].items);
	}
	free(s->xfers);
	free(s->holds);
	free(s->requests);
	free(s->sagas);
	free(s->seen);
}

/* ---- The run. ---- */

static uint32_t random_busy_shard(sim *s)
{
	uint32_t busy[SIM_SHARDS_MAX], count = 0;
	for (uint32_t i = 0; i < s->shard_count; i++)
		if (s->queues[i].count > 0)
			busy[count++] = i;
	return count ? busy[sim_below(s, count)] : UINT32_MAX;
}

static sim_saga *random_ready_saga(sim *s)
{
	size_t ready = 0;
	sim_saga *pick = NULL;
	for (size_t i = 0; i < s->saga_high; i++) {
		sim_saga *g = &s->sagas[i];
		if (g->used && g->phase == PHASE_READY && sim_below(s, (uint32_t)++ready) == 0)
			pick = g;
	}
	return pick;
}

static void run_events(sim *s, size_t ops_target)
{
	s->faults = true;
	/* Every user's first deposit, through the same queues and faults. */
	for (size_t i = 0; i < s->account_count; i++)
		if (!s->accounts[i].allow_negative)
			client_deposit(s, &s->accounts[i]);

	size_t events = 0;
	while (s->stats.client_ops < ops_target) {
		s->now_ms += sim_below(s, 25);
		uint32_t roll = sim_below(s, 1000);
		if (roll < 260) {
			client_step(s);
		} else if (roll < 320) {
			if (!client_retry(s, false))
				client_step(s);
		} else if (roll < 620) {
			uint32_t shard = random_busy_shard(s);
			if (shard != UINT32_MAX)
				writer_step(s, shard, 1 + sim_below(s, SIM_BATCH_OPS_MAX));
		} else if (roll < 900) {
			sim_saga *g = random_ready_saga(s);
			if (g)
				runner_step(s, g);
		} else if (roll < 930) {
			expiry_scan(s, sim_below(s, s->shard_count));
		} else if (roll < 950) {
			rescan(s);
		} else if (roll < 958) {
			s->now_ms += 1000 + sim_below(s, 15000);
		} else if (roll < 962) {
			s->stats.plain_crashes++;
			crash(s, "plain crash");
		}
		if (++events % 500 == 0)
			sim_checks_now(s, "periodic");
	}
}

/* Without faults: answer every client, finish every saga. Returns false
 * when the world does not come to rest within the bound. */
static bool drain(sim *s)
{
	s->faults = false;
	for (int round = 0; round < SIM_DRAIN_ROUNDS_MAX; round++) {
		client_retry(s, true);
		for (uint32_t shard = 0; shard < s->shard_count; shard++)
			while (s->queues[shard].count > 0)
				writer_step(s, shard, SIM_BATCH_OPS_MAX);
		for (size_t i = 0; i < s->saga_high; i++)
			if (s->sagas[i].used && s->sagas[i].phase == PHASE_READY)
				runner_step(s, &s->sagas[i]);
		if (queued_total(s) == 0 && sagas_active(s) == 0) {
			size_t listed = rescan(s);
			bool unanswered = false;
			for (size_t i = 0; i < s->request_count; i++)
				unanswered |= !s->requests[i].answered;
			if (listed == 0 && !unanswered)
				return true;
			if (listed > 0 && sagas_active(s) == 0 && !unanswered)
				return false; /* listed, but nobody drives them */
		}
		s->now_ms += 10;
	}
	return false;
}

/* ---- Checks. ---- */

static void report_line(void *ctx, const char *line)
{
	sim *s = ctx;
	sim_fail(s, CHECK_TOTALS, "audit: %s", line);
}

static int collect_account(void *ctx, const kobo_account *account)
{
	sim *s = ctx;
	if (s->seen_count == s->seen_cap) {
		size_t cap = s->seen_cap ? 2 * s->seen_cap : 128;
		seen_account *seen = realloc(s->seen, cap * sizeof(*seen));
		assert_non_null(seen);
		s->seen = seen;
		s->seen_cap = cap;
	}
	seen_account *a = &s->seen[s->seen_count++];
	a->account = *account;
	a->account.metadata = NULL;
	a->account.metadata_len = 0;
	return 0;
}

/* Audits one store: double entry, history explains balances (its rules
 * are sqlite_audit.c's). Records the number of transfers it holds. */
static void audit_shard(sim *s, uint32_t shard, const char *when)
{
	kobo_audit_totals totals;
	int rc = kobo_store_audit(s->stores[shard], report_line, s, &totals);
	if (rc != KOBO_OK || totals.problems != 0)
		sim_fail(s, CHECK_TOTALS, "%s: shard %u audit rc=%d with %zu problems",
		         when, shard, rc, totals.problems);
	s->store_transfers[shard] = totals.transfers;
}

/* Reads every account of every shard into s->seen. */
static void collect_accounts(sim *s, const char *when)
{
	s->seen_count = 0;
	for (uint32_t shard = 0; shard < s->shard_count; shard++) {
		size_t before = s->seen_count;
		int rc = kobo_store_read_accounts_prefix(s->readers[shard], "",
		                                         collect_account, s);
		if (rc != KOBO_OK)
			sim_fail(s, CHECK_TOTALS, "%s: read_accounts_prefix on shard %u: "
			         "%d", when, shard, rc);
		for (size_t i = before; i < s->seen_count; i++)
			s->seen[i].shard = shard;
	}
}

static void collect_state(sim *s, const char *when)
{
	for (uint32_t shard = 0; shard < s->shard_count; shard++)
		audit_shard(s, shard, when);
	collect_accounts(s, when);
}

/* (2) and (6), also mid-run: per currency the balances of all shards sum
 * to zero (each batch is balanced on its shard; money in flight sits on
 * clearing accounts), and no account that may not go negative did. And
 * (3) mid-run: every clearing account within its bound "as if every hold
 * posts" (ledger.h, "Clearing lanes"): posted + pending_in <= INT64_MAX
 * (DEBIT legs credit it), posted - pending_out >= -INT64_MAX (CREDIT legs
 * debit it), so what is in flight on it can always post. */
static void check_totals(sim *s, const char *when)
{
	for (uint32_t c = 0; c < SIM_CURRENCIES; c++) {
		/* Balances may be near INT64_MAX: sum them in more bits. */
		__int128 posted = 0, pending_out = 0, pending_in = 0;
		for (size_t i = 0; i < s->seen_count; i++) {
			const kobo_account *a = &s->seen[i].account;
			if (strcmp(a->currency, sim_currencies[c]) != 0)
				continue;
			posted += a->posted;
			pending_out += a->pending_out;
			pending_in += a->pending_in;
		}
		if (posted != 0 || pending_out != pending_in)
			sim_fail(s, CHECK_TOTALS, "%s: %s over all shards: posted sums to "
			         "%lld, pending_out %lld vs pending_in %lld", when,
			         sim_currencies[c], (long long)posted,
			         (long long)pending_out, (long long)pending_in);
	}
	for (size_t i = 0; i < s->seen_count; i++) {
		const kobo_account *a = &s->seen[i].account;
		if (a->pending_out < 0 || a->pending_in < 0 ||
		    (!a->allow_negative && kobo_account_available(a) < 0))
			sim_fail(s, CHECK_NON_NEGATIVE, "%s: account %s on shard %u: "
			         "posted %lld, pending_out %lld, pending_in %lld%s", when,
			         a->id, s->seen[i].shard, (long long)a->posted,
			         (long long)a->pending_out, (long long)a->pending_in,
			         a->allow_negative ? "" : " (may not go negative)");
		uint32_t x, y;
		char currency[KOBO_CURRENCY_LEN_MAX + 1];
		if (kobo_clearing_parse(a->id, &x, &y, currency, NULL) &&
		    ((__int128)a->posted + a->pending_in > INT64_MAX ||
		     (__int128)a->posted - a->pending_out < -INT64_MAX))
			sim_fail(s, CHECK_CLEARING, "%s: clearing account %s on shard "
			         "%u past its bound: posted %lld, pending_out %lld, "
			         "pending_in %lld", when, a->id, s->seen[i].shard,
			         (long long)a->posted, (long long)a->pending_out,
			         (long long)a->pending_in);
	}
}

static void sim_checks_now(sim *s, const char *when)
{
	collect_state(s, when);
	check_totals(s, when);
}

/* (1) */
static void check_settled(sim *s)
{
	for (uint32_t shard = 0; shard < s->shard_count; shard++) {
		scan_ctx scan = { .s = s, .shard = shard, .drive = false };
		if (kobo_store_read_sagas(s->readers[shard], "", 1000, scan_row,
		                          &scan) != KOBO_OK || scan.rows != 0)
			sim_fail(s, CHECK_SETTLED, "shard %u still lists %zu sagas in "
			         "flight (first %s)", shard, scan.rows, scan.last);
	}
	for (size_t i = 0; i < s->xfer_count; i++) {
		const sim_xfer *x = &s->xfers[i];
		if ((x->has_a && x->final_a.status == KOBO_STATUS_PROCESSING) ||
		    (x->has_b && x->final_b.status == KOBO_STATUS_PROCESSING))
			sim_fail(s, CHECK_SETTLED, "transfer %s is still processing",
			         x->op.u.transfer.id);
	}
	for (size_t i = 0; i < s->request_count; i++)
		if (!s->requests[i].answered)
			sim_fail(s, CHECK_SETTLED, "request %zu (%s %s) never answered",
			         i, op_kind_name(s->requests[i].op.kind),
			         op_target(&s->requests[i].op));
}

/* (3): per currency and lane, shard x's clearing account for y and y's for
 * x net to zero. A lane's accounts (ledger.h, "Clearing lanes") pair with
 * each other only; a side never created counts as zero. */
typedef struct clearing_side {
	uint32_t x, y, currency;
	char lane[KOBO_CLEARING_LANE_LEN_MAX + 1];
	const kobo_account *account;
} clearing_side;

/* Orders sides so the two of a pair are adjacent: currency, lane, then
 * the unordered pair of shards, then x. */
static int clearing_side_cmp(const void *pa, const void *pb)
{
	const clearing_side *a = pa, *b = pb;
	uint32_t a_lo = a->x < a->y ? a->x : a->y, b_lo = b->x < b->y ? b->x : b->y;
	uint32_t a_hi = a->x ^ a->y ^ a_lo, b_hi = b->x ^ b->y ^ b_lo;
	int c = strcmp(a->lane, b->lane);
	if (a->currency != b->currency)
		return a->currency < b->currency ? -1 : 1;
	if (c != 0)
		return c;
	if (a_lo != b_lo)
		return a_lo < b_lo ? -1 : 1;
	if (a_hi != b_hi)
		return a_hi < b_hi ? -1 : 1;
	return a->x < b->x ? -1 : a->x > b->x;
}

static bool clearing_same_pair(const clearing_side *a, const clearing_side *b)
{
	return a->currency == b->currency && strcmp(a->lane, b->lane) == 0 &&
	       a->x == b->y && a->y == b->x;
}

static void check_clearing(sim *s)
{
	clearing_side *sides = calloc(s->seen_count + 1, sizeof(*sides));
	assert_non_null(sides);
	size_t count = 0;
	for (size_t i = 0; i < s->seen_count; i++) {
		const kobo_account *a = &s->seen[i].account;
		clearing_side *side = &sides[count];
		char currency[KOBO_CURRENCY_LEN_MAX + 1];
		if (!kobo_clearing_parse(a->id, &side->x, &side->y, currency, side->lane))
			continue;
		side->currency = 0;
		while (side->currency < SIM_CURRENCIES &&
		       strcmp(sim_currencies[side->currency], currency) != 0)
			side->currency++;
		if (side->x != s->seen[i].shard || side->y >= s->shard_count ||
		    side->currency == SIM_CURRENCIES ||
		    strcmp(a->currency, currency) != 0 || !a->allow_negative) {
			sim_fail(s, CHECK_CLEARING, "clearing account %s found on shard "
			         "%u (currency %s, allow_negative %d)", a->id,
			         s->seen[i].shard, a->currency, a->allow_negative);
			continue;
		}
		side->account = a;
		count++;
	}
	qsort(sides, count, sizeof(*sides), clearing_side_cmp);
	static const kobo_account zero;
	for (size_t i = 0; i < count; i++) {
		const clearing_side *first = &sides[i];
		const kobo_account *xy = first->account, *yx = &zero;
		if (i + 1 < count && clearing_same_pair(first, &sides[i + 1]))
			yx = sides[++i].account;
		if ((__int128)xy->posted + yx->posted != 0 ||
		    xy->pending_in != yx->pending_out ||
		    xy->pending_out != yx->pending_in)
			sim_fail(s, CHECK_CLEARING, "clearing %u<->%u %s%s: posted "
			         "%lld + %lld != 0, or pending in/out %lld/%lld vs "
			         "out/in %lld/%lld", first->x, first->y,
			         sim_currencies[first->currency], first->lane,
			         (long long)xy->posted, (long long)yx->posted,
			         (long long)xy->pending_in, (long long)xy->pending_out,
			         (long long)yx->pending_out, (long long)yx->pending_in);
	}
	free(sides);
}

/* Reads every transfer's records as the stores hold them now. */
static void read_finals(sim *s)
{
	for (size_t i = 0; i < s->xfer_count; i++) {
		sim_xfer *x = &s->xfers[i];
		const kobo_transfer *want = &x->op.u.transfer;
		kobo_transfer t;
		x->has_a = x->has_b = false;
		if (kobo_store_read_transfer(s->readers[x->shard_a], want->id, &t) ==
		    KOBO_OK) {
			x->has_a = true;
			copy_record(&x->final_a, &t);
		}
		if (x->cross &&
		    kobo_store_read_transfer(s->readers[x->shard_b], want->id, &t) ==
		    KOBO_OK && t.leg == KOBO_LEG_CREDIT) {
			x->has_b = true;
			copy_record(&x->final_b, &t);
		}
	}
}

/* (4) */
static void check_legs(sim *s)
{
	for (size_t i = 0; i < s->xfer_count; i++) {
		const sim_xfer *x = &s->xfers[i];
		const char *id = x->op.u.transfer.id;
		if (!x->cross)
			continue;
		if (!x->has_a) {
			if (x->has_b)
				sim_fail(s, CHECK_LEGS, "%s: credit leg on %u without a "
				         "debit leg on %u", id, x->shard_b, x->shard_a);
			continue;
		}
		const kobo_transfer *a = &x->final_a;
		const kobo_transfer *b = x->has_b ? &x->final_b : NULL;
		char b_clearing[KOBO_ID_LEN_MAX + 1];
		mirror_clearing(b_clearing, a->clearing, x->shard_a, x->shard_b,
		                x->op.u.transfer.currency);
		if (b && (!transfer_matches(b, &x->op.u.transfer) ||
		          strcmp(b->clearing, b_clearing) != 0)) {
			sim_fail(s, CHECK_LEGS, "%s: credit leg on %u differs from the "
			         "transfer (%s -> %s %lld, clearing %s)", id, x->shard_b,
			         b->from, b->to, (long long)b->amount, b->clearing);
			continue;
		}
		if (b && strcmp(b->request_id, a->request_id) != 0)
			sim_fail(s, CHECK_LEGS, "%s: credit leg on %u carries request id "
			         "%s, the debit leg %s", id, x->shard_b, b->request_id,
			         a->request_id);
		bool ok = true;
		switch (a->status) {
		case KOBO_STATUS_REJECTED:
			ok = b == NULL;
			break;
		case KOBO_STATUS_POSTED:
			ok = b && b->status == KOBO_STATUS_POSTED &&
			     b->posted_amount == a->posted_amount;
			break;
		case KOBO_STATUS_PENDING:
			ok = b && b->status == KOBO_STATUS_PENDING;
			break;
		case KOBO_STATUS_VOIDED:
			if (a->void_reason == KOBO_VOID_COMPENSATED)
				ok = b == NULL || (b->status == KOBO_STATUS_REJECTED &&
				                   b->error_code == a->error_code);
			else
				ok = b && b->status == KOBO_STATUS_VOIDED;
			break;
		case KOBO_STATUS_PROCESSING:
			ok = false;
			break;
		}
		if (!ok)
			sim_fail(s, CHECK_LEGS, "%s: debit leg on %u is %s (posted %lld, "
			         "%s, error %s) but credit leg on %u is %s (posted %lld, "
			         "error %s)", id, x->shard_a, status_name(a->status),
			         (long long)a->posted_amount, reason_name(a->void_reason),
			         code_name(a->error_code), x->shard_b,
			         b ? status_name(b->status) : "absent",
			         b ? (long long)b->posted_amount : 0LL,
			         b ? code_name(b->error_code) : "-");
	}
}

/* Whether the final record of x is an outcome its request allows. */
static bool outcome_allowed(const sim_xfer *x, char *why, size_t len)
{
	const kobo_transfer *a = &x->final_a;
	const kobo_transfer *want = &x->op.u.transfer;
	kobo_result_code e = a->error_code;
	bool moved = a->status == KOBO_STATUS_POSTED ||
	             a->status == KOBO_STATUS_PENDING ||
	             (a->status == KOBO_STATUS_VOIDED &&
	              a->void_reason != KOBO_VOID_COMPENSATED);
	if (moved && x->kind != KIND_NORMAL && x->kind != KIND_DEPOSIT &&
	    x->kind != KIND_NEAR_LIMIT) {
		snprintf(why, len, "a refused kind of request was applied");
		return false;
	}
	if (a->status == KOBO_STATUS_REJECTED) {
		bool ok = false;
		switch (x->kind) {
		case KIND_NORMAL:
		case KIND_REUSED_ID: ok = e == KOBO_RESULT_INSUFFICIENT_FUNDS; break;
		case KIND_DEPOSIT:
		case KIND_NEAR_LIMIT: ok = false; break;
		case KIND_SAME_ACCOUNT: ok = e == KOBO_RESULT_SAME_ACCOUNT; break;
		case KIND_WRONG_CURRENCY: ok = e == KOBO_RESULT_CURRENCY_MISMATCH; break;
		case KIND_GHOST_PAYEE:
			ok = x->cross ? e == KOBO_RESULT_INSUFFICIENT_FUNDS
			              : e == KOBO_RESULT_ACCOUNT_NOT_FOUND;
			break;
		case KIND_FOREIGN_PAYEE:
			ok = x->cross ? e == KOBO_RESULT_INSUFFICIENT_FUNDS
			              : e == KOBO_RESULT_CURRENCY_MISMATCH;
			break;
		}
		snprintf(why, len, "rejected with %s", code_name(e));
		return ok;
	}
	if (a->status == KOBO_STATUS_VOIDED && a->void_reason == KOBO_VOID_COMPENSATED) {
		bool ok = x->cross;
		if (e == KOBO_RESULT_SAGA_TIMEOUT)
			ok = ok && x->abort_sent;
		else if (x->kind == KIND_GHOST_PAYEE)
			ok = ok && e == KOBO_RESULT_ACCOUNT_NOT_FOUND;
		else if (x->kind == KIND_FOREIGN_PAYEE)
			ok = ok && e == KOBO_RESULT_CURRENCY_MISMATCH;
		else if (x->kind == KIND_REUSED_ID)
			ok = ok && e == KOBO_RESULT_ID_CONFLICT;
		else
			ok = false;
		snprintf(why, len, "compensated with %s%s", code_name(e),
		         x->abort_sent ? " (an abort was sent)" : " (no abort sent)");
		return ok;
	}
	if (a->status == KOBO_STATUS_VOIDED) {
		bool ok = want->pending &&
		          (a->void_reason == KOBO_VOID_VOIDED ? x->void_sent
		           : a->void_reason == KOBO_VOID_EXPIRED ? want->timeout_seconds > 0
		           : false);
		snprintf(why, len, "voided (%s)", reason_name(a->void_reason));
		return ok;
	}
	if (a->status == KOBO_STATUS_POSTED) {
		bool ok = a->posted_amount == want->amount && !want->pending;
		for (uint32_t k = 0; !ok && k < x->post_amount_count; k++)
			ok = want->pending && x->post_amounts[k] == a->posted_amount;
		ok = ok || (want->pending && x->post_amounts_overflow &&
		            a->posted_amount <= want->amount);
		snprintf(why, len, "posted %lld of %lld", (long long)a->posted_amount,
		         (long long)want->amount);
		return ok;
	}
	if (a->status == KOBO_STATUS_PENDING) {
		snprintf(why, len, "pending");
		return want->pending;
	}
	snprintf(why, len, "%s", status_name(a->status));
	return false;
}

/* (5): every outcome allowed by its request, and every client account's
 * balances recomputed from the final transfers (the payer's record is the
 * truth of a cross-shard transfer). */
static void check_model(sim *s)
{
	/* Amounts may be near INT64_MAX: sum them in more bits. */
	__int128 posted[SIM_ACCOUNTS] = { 0 }, pending_out[SIM_ACCOUNTS] = { 0 },
	         pending_in[SIM_ACCOUNTS] = { 0 };
	for (size_t i = 0; i < s->xfer_count; i++) {
		const sim_xfer *x = &s->xfers[i];
		const kobo_transfer *want = &x->op.u.transfer;
		if (!x->has_a)
			continue;
		char why[160];
		if (!outcome_allowed(x, why, sizeof(why)))
			sim_fail(s, CHECK_MODEL, "%s (%s -> %s %lld %s%s, %s): %s",
			         want->id, want->from, want->to, (long long)want->amount,
			         want->currency, want->pending ? " pending" : "",
			         x->cross ? "cross" : "local", why);
		const kobo_transfer *a = &x->final_a;
		if (a->status != KOBO_STATUS_POSTED && a->status != KOBO_STATUS_PENDING)
			continue;
		const sim_account *from = account_find(s, want->from);
		const sim_account *to = account_find(s, want->to);
		if (!from || !to) {
			sim_fail(s, CHECK_MODEL, "%s moved money to or from an account "
			         "that does not exist", want->id);
			continue;
		}
		size_t f = (size_t)(from - s->accounts), t = (size_t)(to - s->accounts);
		if (a->status == KOBO_STATUS_POSTED) {
			posted[f] -= a->posted_amount;
			posted[t] += a->posted_amount;
		} else {
			pending_out[f] += want->amount;
			pending_in[t] += want->amount;
		}
	}
	for (size_t i = 0; i < s->account_count; i++) {
		const sim_account *expected = &s->accounts[i];
		const kobo_account *found = NULL;
		for (size_t k = 0; k < s->seen_count && !found; k++)
			if (strcmp(s->seen[k].account.id, expected->id) == 0 &&
			    s->seen[k].shard == expected->shard)
				found = &s->seen[k].account;
		if (!found) {
			sim_fail(s, CHECK_MODEL, "account %s missing on shard %u",
			         expected->id, expected->shard);
			continue;
		}
		if (found->posted != posted[i] || found->pending_out != pending_out[i] ||
		    found->pending_in != pending_in[i])
			sim_fail(s, CHECK_MODEL, "account %s on shard %u: posted %lld, "
			         "pending_out %lld, pending_in %lld; its transfers say "
			         "%lld, %lld, %lld", expected->id, expected->shard,
			         (long long)found->posted, (long long)found->pending_out,
			         (long long)found->pending_in, (long long)posted[i],
			         (long long)pending_out[i], (long long)pending_in[i]);
	}
	/* Every account the stores hold is a client's or a clearing account. */
	for (size_t k = 0; k < s->seen_count; k++) {
		uint32_t x, y;
		char currency[KOBO_CURRENCY_LEN_MAX + 1];
		const char *id = s->seen[k].account.id;
		if (!account_find(s, id) && !kobo_clearing_parse(id, &x, &y, currency, NULL))
			sim_fail(s, CHECK_MODEL, "unknown account %s on shard %u", id,
			         s->seen[k].shard);
	}
}

/* (7): every create landed exactly once, where it should, as asked; the
 * stores hold no other transfer. */
static void check_once(sim *s)
{
	size_t expected[SIM_SHARDS_MAX] = { 0 };
	for (size_t i = 0; i < s->xfer_count; i++) {
		const sim_xfer *x = &s->xfers[i];
		const kobo_transfer *want = &x->op.u.transfer;
		if (!x->has_a) {
			sim_fail(s, CHECK_ONCE, "%s (%s) has no record on shard %u",
			         want->id, x->landed ? "committed" : "never committed",
			         x->shard_a);
			continue;
		}
		const kobo_transfer *a = &x->final_a;
		/* A DEBIT leg names the base clearing account it was routed
		 * with, or that base's overflow lane for its id. */
		char lane[KOBO_ID_LEN_MAX + 1] = "";
		if (want->leg == KOBO_LEG_DEBIT)
			kobo_clearing_lane_id(lane, want->clearing, want->id);
		if (!transfer_matches(a, want) || a->leg != want->leg ||
		    (strcmp(a->clearing, want->clearing) != 0 &&
		     strcmp(a->clearing, lane) != 0))
			sim_fail(s, CHECK_ONCE, "%s on shard %u is not what was asked "
			         "(%s -> %s %lld %s, leg %s)", want->id, x->shard_a,
			         a->from, a->to, (long long)a->amount, a->currency,
			         kobo_leg_name(a->leg));
		expected[x->shard_a]++;
		if (x->has_b)
			expected[x->shard_b]++;
	}
	for (uint32_t shard = 0; shard < s->shard_count; shard++)
		if (expected[shard] != s->store_transfers[shard])
			sim_fail(s, CHECK_ONCE, "shard %u holds %zu transfer records, the "
			         "clients' transfers explain %zu", shard,
			         s->store_transfers[shard], expected[shard]);
}

/* Every answer given during the run still holds. */
static void check_acked(sim *s)
{
	for (size_t i = 0; i < s->xfer_count; i++) {
		const sim_xfer *x = &s->xfers[i];
		const char *id = x->op.u.transfer.id;
		if (!x->has_a)
			continue;
		const kobo_transfer *a = &x->final_a;
		const kobo_transfer *first = &x->first;
		if (x->answered) {
			bool ok = true;
			if (first->status == KOBO_STATUS_POSTED)
				ok = a->status == KOBO_STATUS_POSTED &&
				     a->posted_amount == first->posted_amount;
			else if (first->status == KOBO_STATUS_REJECTED)
				ok = a->status == KOBO_STATUS_REJECTED &&
				     a->error_code == first->error_code;
			else if (first->status == KOBO_STATUS_VOIDED)
				ok = a->status == KOBO_STATUS_VOIDED;
			if (!ok)
				sim_fail(s, CHECK_ACKED, "%s was answered %s but ends %s",
				         id, status_name(first->status), status_name(a->status));
		}
		if (x->post_acked && (a->status != KOBO_STATUS_POSTED ||
		                      a->posted_amount != x->post_acked_amount))
			sim_fail(s, CHECK_ACKED, "%s: a post of %lld was acknowledged but "
			         "it ends %s with %lld posted", id,
			         (long long)x->post_acked_amount, status_name(a->status),
			         (long long)a->posted_amount);
		if (x->void_acked && a->status != KOBO_STATUS_VOIDED)
			sim_fail(s, CHECK_ACKED, "%s: a void was acknowledged but it ends "
			         "%s", id, status_name(a->status));
		if (x->expire_acked && (a->status != KOBO_STATUS_VOIDED ||
		                        a->void_reason != KOBO_VOID_EXPIRED))
			sim_fail(s, CHECK_ACKED, "%s: an expiry was applied but it ends "
			         "%s (%s)", id, status_name(a->status),
			         reason_name(a->void_reason));
	}
}

/* Every check over what read_finals and collect_state gathered. */
static void evaluate_checks(sim *s, const char *when)
{
	check_totals(s, when);
	check_settled(s);
	check_clearing(s);
	check_legs(s);
	check_model(s);
	check_once(s);
	check_acked(s);
}

static void check_all(sim *s, const char *when)
{
	read_finals(s);
	collect_state(s, when);
	evaluate_checks(s, when);
}

static void count_outcomes(sim *s)
{
	for (size_t i = 0; i < s->xfer_count; i++) {
		const sim_xfer *x = &s->xfers[i];
		if (!x->has_a)
			continue;
		s->stats.cross += x->cross;
		s->stats.sagas += x->cross && x->final_a.status != KOBO_STATUS_REJECTED;
		s->stats.compensated += x->final_a.status == KOBO_STATUS_VOIDED &&
		                        x->final_a.void_reason == KOBO_VOID_COMPENSATED;
		s->stats.posted += x->final_a.status == KOBO_STATUS_POSTED;
		bool lane = x->cross &&
		            strcmp(x->final_a.clearing, x->op.u.transfer.clearing) != 0;
		s->stats.paths[PATH_CLEARING_LANE] += lane;
		s->stats.paths[PATH_SMALL_IN_LANE] +=
			lane && x->op.u.transfer.amount < INT64_MAX / 2;
	}
}

/* A digest of everything the stores hold, to prove a seed replays. */
static uint64_t world_digest(sim *s)
{
	uint64_t h = 0xcbf29ce484222325ull;
#define MIX(v) (h = (h ^ (uint64_t)(v)) * 0x100000001b3ull)
	for (size_t i = 0; i < s->xfer_count; i++) {
		const sim_xfer *x = &s->xfers[i];
		MIX(x->has_a);
		MIX(x->final_a.status);
		MIX(x->final_a.posted_amount);
		MIX(x->final_a.updated_at_ms);
		MIX(x->final_a.error_code);
		MIX(x->has_b);
		MIX(x->final_b.status);
	}
	for (size_t i = 0; i < s->seen_count; i++) {
		MIX(s->seen[i].account.posted);
		MIX(s->seen[i].account.pending_out);
	}
	MIX(s->stats.crashes);
	MIX(s->stats.batches);
#undef MIX
	return h;
}

typedef struct sim_outcome {
	unsigned failed;
	uint64_t digest;
	sim_stats stats;
	uint32_t shards;
} sim_outcome;

/* One whole run; prints its one-line summary unless quiet. */
static sim_outcome sim_run(uint64_t seed, size_t ops, sim_bug bug, bool quiet)
{
	sim *s = calloc(1, sizeof(*s));
	assert_non_null(s);
	sim_open(s, seed, ops, bug, quiet);
	run_events(s, ops);
	if (!drain(s))
		sim_fail(s, CHECK_SETTLED, "the world did not come to rest after %d "
		         "drain rounds (%zu sagas, %zu queued ops)",
		         SIM_DRAIN_ROUNDS_MAX, sagas_active(s), queued_total(s));
	check_all(s, "at rest");
	count_outcomes(s);

	/* Then let every hold with a timeout expire, and check again. */
	s->now_ms += (int64_t)KOBO_TIMEOUT_SECONDS_MAX * 1000;
	for (int pass = 0; pass < 64; pass++) {
		for (uint32_t shard = 0; shard < s->shard_count; shard++)
			expiry_scan(s, shard);
		if (queued_total(s) == 0)
			break;
		/* A world that cannot come to rest has failed already; more
		 * passes would only retry the same stuck steps and clients. */
		if (!drain(s)) {
			sim_fail(s, CHECK_SETTLED, "after expiry the world did not "
			         "come to rest after %d drain rounds (%zu sagas, %zu "
			         "queued ops)", SIM_DRAIN_ROUNDS_MAX, sagas_active(s),
			         queued_total(s));
			break;
		}
	}
	check_all(s, "after expiry");

	sim_outcome out = { .failed = s->failed, .digest = world_digest(s),
	                    .stats = s->stats, .shards = s->shard_count };
	if (!quiet) {
		const sim_stats *st = &s->stats;
		printf("saga sim seed=%llu shards=%u ops=%zu transfers=%zu cross=%zu "
		       "sagas=%zu posted=%zu compensated=%zu aborts=%zu batches=%zu "
		       "crashes=%zu (plain %zu) failed_commits=%zu (applied %zu) "
		       "lost_answers=%zu retries=%zu replays=%zu expired=%zu "
		       "doorbells_lost=%zu misrouted=%zu in_progress=%zu "
		       "near_limit=%zu lanes=%zu credit_waits=%zu%s\n",
		       (unsigned long long)seed,
		       s->shard_count, st->client_ops, s->xfer_count, st->cross,
		       st->sagas, st->posted, st->compensated, st->aborts, st->batches,
		       st->crashes, st->plain_crashes, st->failed_commits,
		       st->failed_applied, st->lost_answers, st->retries, st->replays,
		       st->expired, st->doorbells_lost, st->misrouted, st->in_progress,
		       st->near_limit, st->paths[PATH_CLEARING_LANE],
		       st->credit_waits, s->failed ? " FAILED" : "");
		fflush(stdout);
	}
	sim_close(s);
	free(s);
	return out;
}

/* ---- Configuration from the environment. ---- */

static bool env_u64(const char *name, uint64_t *out)
{
	const char *text = getenv(name);
	if (!text || !*text)
		return false;
	char *end;
	unsigned long long value = strtoull(text, &end, 10);
	if (*end != '\0')
		return false;
	*out = value;
	return true;
}

static uint64_t base_seed(bool *given)
{
	uint64_t seed;
	*given = env_u64("KOBO_SEED", &seed);
	if (*given)
		return seed;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	return ((uint64_t)now.tv_sec * 1000003u) ^ (uint64_t)now.tv_nsec ^
	       ((uint64_t)getpid() << 32);
}

/* ---- Tests. ---- */

/* The simulation proper: several seeds, every check. */
static void test_saga_sim_seeded_runs(void **state)
{
	(void)state;
	bool given;
	uint64_t seed = base_seed(&given) % 1000000000000ull;
	uint64_t runs = given ? 1 : SIM_RUNS_DEFAULT, ops = SIM_OPS_DEFAULT;
	env_u64("KOBO_SIM_RUNS", &runs);
	env_u64("KOBO_SIM_OPS", &ops);
	printf("saga simulation seed=%llu (rerun with KOBO_SEED=%llu), %llu runs "
	       "of %llu client ops; run i uses seed+i\n", (unsigned long long)seed,
	       (unsigned long long)seed, (unsigned long long)runs,
	       (unsigned long long)ops);
	unsigned failed_any = 0;
	size_t paths[PATH_COUNT] = { 0 };
	for (uint64_t i = 0; i < runs; i++) {
		sim_outcome out = sim_run(seed + i, (size_t)ops, BUG_NONE, false);
		for (int p = 0; p < PATH_COUNT; p++)
			paths[p] += out.stats.paths[p];
		if (out.failed) {
			char names[128];
			checks_text(out.failed, names, sizeof(names));
			print_error("saga simulation seed=%llu failed checks: %s "
			            "(rerun with KOBO_SEED=%llu)\n",
			            (unsigned long long)(seed + i), names,
			            (unsigned long long)(seed + i));
			failed_any |= out.failed;
		}
	}
	/* A default-sized run must have crashed at every step boundary and
	 * taken every protocol path at least once. */
	bool covered = true;
	printf("step boundaries and paths over all runs:");
	for (int p = 0; p < PATH_COUNT; p++) {
		printf("%s %s=%zu", p % 4 ? "," : "\n ", sim_path_names[p], paths[p]);
		covered &= paths[p] > 0;
	}
	printf("\n");
	if (runs * ops >= 10000 && !covered) {
		print_error("some step boundary or path was never exercised\n");
		failed_any |= CHECK_RUN;
	}
	assert_int_equal(failed_any, 0);
}

/* Each check fails when the state it reads is wrong: a world at rest is
 * tampered with, one fact at a time, and each tamper must be caught by
 * its check (the stores cannot be made inconsistent through the ledger,
 * so (2) and (6) are proven here). */
static void test_saga_sim_checks_fail_on_tampered_state(void **state)
{
	(void)state;
	bool given;
	uint64_t seed = base_seed(&given) % 1000000000000ull + 99;
	sim *s = calloc(1, sizeof(*s));
	assert_non_null(s);
	sim_open(s, seed, 500, BUG_NONE, true);
	run_events(s, 500);
	assert_true(drain(s));
	check_all(s, "before tampering");
	assert_int_equal(s->failed, 0);

	/* Facts to tamper with: a user, a clearing account, a posted
	 * cross-shard transfer, an acknowledged answer. */
	kobo_account *user = NULL, *other_user = NULL, *clearing = NULL;
	for (size_t i = 0; i < s->seen_count; i++) {
		kobo_account *a = &s->seen[i].account;
		uint32_t x, y;
		char currency[KOBO_CURRENCY_LEN_MAX + 1];
		if (kobo_clearing_parse(a->id, &x, &y, currency, NULL))
			clearing = clearing ? clearing : a;
		else if (!a->allow_negative && !user)
			user = a;
		else if (!a->allow_negative && user && !other_user &&
		         strcmp(a->currency, user->currency) == 0)
			other_user = a;
	}
	sim_xfer *cross = NULL, *acked = NULL;
	for (size_t i = 0; i < s->xfer_count; i++) {
		sim_xfer *x = &s->xfers[i];
		if (!cross && x->cross && x->has_b &&
		    x->final_a.status == KOBO_STATUS_POSTED)
			cross = x;
		if (!acked && x->answered && x->first.status == KOBO_STATUS_POSTED)
			acked = x;
	}
	assert_true(user && other_user && clearing && cross && acked);

#define TAMPERED(what, field, delta, expected)                                  \
	do {                                                                    \
		s->failed = 0;                                                  \
		int64_t by = (int64_t)(delta);                                  \
		(field) += by;                                                  \
		evaluate_checks(s, what);                                       \
		(field) -= by;                                                  \
		char seen_names[128];                                           \
		checks_text(s->failed, seen_names, sizeof(seen_names));        \
		printf("tampered %-34s caught by: %s\n", what,                  \
		       s->failed ? seen_names : "NOTHING");                     \
		if (!(s->failed & (expected))) {                                \
			print_error("%s: expected check %s to fail\n", what,     \
			            sim_check_names[__builtin_ctz(expected)]);   \
			fail();                                                 \
		}                                                               \
	} while (0)

	TAMPERED("a user's posted balance +1", user->posted, 1, CHECK_TOTALS);
	TAMPERED("a user's pending_out past posted", user->pending_out,
	         user->posted - user->pending_out + 1, CHECK_NON_NEGATIVE);
	TAMPERED("a clearing account's posted +5", clearing->posted, 5, CHECK_CLEARING);
	TAMPERED("a credit leg's posted amount -1", cross->final_b.posted_amount, -1,
	         CHECK_LEGS);
	TAMPERED("a debit leg back to processing", cross->final_a.status,
	         KOBO_STATUS_PROCESSING - KOBO_STATUS_POSTED, CHECK_SETTLED);
	TAMPERED("one more record on shard 0", s->store_transfers[0], 1, CHECK_ONCE);
	TAMPERED("an acknowledged posted amount +1", acked->first.posted_amount, 1,
	         CHECK_ACKED);
	/* Money moved between two users: every total still balances. */
	other_user->posted -= 7;
	TAMPERED("7 moved from one user to another", user->posted, 7, CHECK_MODEL);
	other_user->posted += 7;
#undef TAMPERED

	s->failed = 0;
	evaluate_checks(s, "untampered again");
	assert_int_equal(s->failed, 0);
	sim_close(s);
	free(s);
}

/* A seed replays the same run: same crashes, same batches, same ledger. */
static void test_saga_sim_same_seed_same_run(void **state)
{
	(void)state;
	bool given;
	uint64_t seed = base_seed(&given) % 1000000000000ull + 7777;
	sim_outcome first = sim_run(seed, 300, BUG_NONE, true);
	sim_outcome second = sim_run(seed, 300, BUG_NONE, true);
	if (first.digest != second.digest || first.failed != second.failed) {
		print_error("seed %llu ran twice gave digests %llx and %llx\n",
		            (unsigned long long)seed,
		            (unsigned long long)first.digest,
		            (unsigned long long)second.digest);
		fail();
	}
	assert_int_equal(first.failed, 0);
	assert_true(first.stats.crashes > 0);
}

/* Each bug injected into the sim's own runner or clients is caught, by the
 * checks one expects to catch it. */
static void test_saga_sim_catches_injected_bugs(void **state)
{
	(void)state;
	static const struct {
		sim_bug bug;
		unsigned expected; /* at least one of these checks must fail */
	} cases[] = {
		{ BUG_SETTLE_WITHOUT_REMOTE, CHECK_LEGS | CHECK_CLEARING },
		{ BUG_CREDIT_TWICE, CHECK_CLEARING | CHECK_MODEL | CHECK_ONCE },
		{ BUG_REFUSAL_AS_CREDIT, CHECK_LEGS | CHECK_MODEL },
		{ BUG_NO_RECOVERY_SCAN, CHECK_SETTLED },
		{ BUG_RETRY_NEW_ID, CHECK_ONCE },
		{ BUG_POST_FULL_AMOUNT, CHECK_LEGS | CHECK_CLEARING },
		/* Caught by what the stores hold, not only by the misrouted
		 * op's answer (CHECK_RUN): the legs part, sagas stick. */
		{ BUG_MISROUTE_ACTS_ON_CREDIT,
		  CHECK_LEGS | CHECK_CLEARING | CHECK_SETTLED | CHECK_MODEL },
	};
	bool given;
	uint64_t seed = base_seed(&given) % 1000000000000ull + 4242;
	bool all_caught = true;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		unsigned caught = 0;
		/* A bug fires at random: try a few seeds before calling it missed. */
		for (uint64_t k = 0; k < 4 && !(caught & cases[i].expected); k++)
			caught |= sim_run(seed + 100 * i + k, 600, cases[i].bug, true).failed;
		char names[128];
		checks_text(caught, names, sizeof(names));
		printf("injected bug %-22s caught by: %s\n", sim_bug_names[cases[i].bug],
		       caught ? names : "NOTHING");
		if (!(caught & cases[i].expected)) {
			char wanted[128];
			checks_text(cases[i].expected, wanted, sizeof(wanted));
			print_error("bug %s (seed %llu) was not caught by %s\n",
			            sim_bug_names[cases[i].bug],
			            (unsigned long long)(seed + 100 * i), wanted);
			all_caught = false;
		}
	}
	assert_true(all_caught);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_saga_sim_seeded_runs),
		cmocka_unit_test(test_saga_sim_same_seed_same_run),
		cmocka_unit_test(test_saga_sim_checks_fail_on_tampered_state),
		cmocka_unit_test(test_saga_sim_catches_injected_bugs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
