/*
 * spans.c — the shard writer's spans, when OTLP export is on
 * (src/obs/otlp.h). Off, kobo__shard_span_clock() answers 0 and the writer
 * calls nothing else: no clock read, no allocation.
 *
 * A batch commits many requests of many traces at once, so it cannot sit
 * in any one of them. It gets a trace of its own, and links both ways
 * (OpenTelemetry's batch pattern):
 *
 *   trace of request A                      trace of the batch
 *   POST /v1/transfers (server)             batch commit ──links──▶ A's, B's shard write
 *    └ shard write ──link──▶ batch commit    └ store commit
 *       └ queue wait
 *
 *   - "batch commit" (INTERNAL, root): from the writer taking the batch
 *     until it is answered; kobo.shard, kobo.batch.requests, kobo.batch.ops;
 *     ERROR when the batch failed; a link to every traced request's
 *     "shard write" span (KOBO_OTLP_LINKS_MAX, the rest counted in
 *     droppedLinksCount). Exported only when at least one request of the
 *     batch is traced (sampled): an untraced load costs one clock read per
 *     batch.
 *   - "store commit" (INTERNAL, child of batch commit): the store's commit
 *     (journal append + fsync, or SQLite / PostgreSQL COMMIT).
 *   - The request side ("shard write", "queue wait") is built by the
 *     submitter (src/http/trace.c) from trace.taken_ns and the batch ids
 *     this file fills in.
 *
 * Holds that expire have no request: "hold expired" goes into the trace
 * of the request that created the hold (its stored trace id), under that
 * request's "transfer" span, whose id both sides derive from the trace id
 * and the transfer id (kobo_otlp_transfer_span_id) — nothing else is
 * stored, so it holds across restarts.
 */
#include <string.h>

#include "../obs/otlp.h"
#include "spans.h"

int64_t kobo__shard_span_clock(void)
{
	return kobo_otlp_enabled() ? kobo_otlp_now_ns() : 0;
}

static bool all_zero(const uint8_t *bytes, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (bytes[i])
			return false;
	return true;
}

void kobo__shard_span_batch(uint32_t shard, kobo_request *const *batch, size_t requests,
                            size_t ops, int64_t taken_ns, int64_t commit_us, int status)
{
	if (!taken_ns)
		return;
	size_t traced = 0;
	for (size_t r = 0; r < requests; r++)
		traced += batch[r]->trace.sampled;
	if (traced == 0)
		return;

	int64_t end_ns = kobo_otlp_now_ns();
	if (end_ns < taken_ns)
		end_ns = taken_ns;
	kobo_otlp_span span; /* ~2.7 KB, copied into the exporter's ring */
	memset(&span, 0, sizeof span);
	kobo_otlp_random_id(span.trace_id, sizeof span.trace_id);
	kobo_otlp_random_id(span.span_id, sizeof span.span_id);
	span.kind = KOBO_OTLP_KIND_INTERNAL;
	span.start_ns = taken_ns;
	span.end_ns = end_ns;
	span.error = status != KOBO_OK;
	memcpy(span.name, "batch commit", sizeof "batch commit");
	kobo_otlp_attr_int(&span, "kobo.shard", shard);
	kobo_otlp_attr_int(&span, "kobo.batch.requests", (int64_t)requests);
	kobo_otlp_attr_int(&span, "kobo.batch.ops", (int64_t)ops);
	kobo_otlp_attr_int(&span, "kobo.batch.traced_requests", (int64_t)traced);
	for (size_t r = 0; r < requests; r++) {
		kobo_request_trace *t = &batch[r]->trace;
		if (!t->sampled)
			continue;
		kobo_otlp_link_add(&span, t->trace_id, t->span_id);
		t->taken_ns = taken_ns;
		memcpy(t->batch_trace_id, span.trace_id, sizeof t->batch_trace_id);
		memcpy(t->batch_span_id, span.span_id, sizeof t->batch_span_id);
	}
	kobo_otlp_export(&span);

	/* The commit itself: the last commit_us of the batch (batch.c times
	 * kobo_store_commit alone). None when the batch failed before it. */
	if (commit_us <= 0)
		return;
	kobo_otlp_span commit;
	memset(&commit, 0, sizeof commit);
	memcpy(commit.trace_id, span.trace_id, sizeof commit.trace_id);
	memcpy(commit.parent_id, span.span_id, sizeof commit.parent_id);
	kobo_otlp_random_id(commit.span_id, sizeof commit.span_id);
	commit.kind = KOBO_OTLP_KIND_INTERNAL;
	commit.end_ns = end_ns;
	commit.start_ns = end_ns - commit_us * 1000;
	if (commit.start_ns < taken_ns)
		commit.start_ns = taken_ns;
	commit.error = status != KOBO_OK;
	memcpy(commit.name, "store commit", sizeof "store commit");
	kobo_otlp_attr_int(&commit, "kobo.shard", shard);
	kobo_otlp_attr_int(&commit, "kobo.batch.ops", (int64_t)ops);
	kobo_otlp_export(&commit);
}

void kobo__shard_span_expired(uint32_t shard, const kobo_result *results, size_t count,
                              int64_t started_ns)
{
	if (!started_ns)
		return;
	int64_t end_ns = kobo_otlp_now_ns();
	if (end_ns < started_ns)
		end_ns = started_ns;
	for (size_t i = 0; i < count; i++) {
		const kobo_result *r = &results[i];
		const kobo_transfer *t = &r->transfer;
		if (r->code != KOBO_RESULT_UPDATED || !r->has_transfer)
			continue;
		kobo_otlp_span span;
		memset(&span, 0, sizeof span);
		if (strlen(t->trace_id) != KOBO_TRACE_ID_LEN || !kobo_otlp_unhex(span.trace_id, t->trace_id, 16) ||
		    all_zero(span.trace_id, 16) || !kobo_otlp_sample(span.trace_id, false, false))
			continue;
		kobo_otlp_transfer_span_id(span.parent_id, span.trace_id, t->id);
		kobo_otlp_random_id(span.span_id, sizeof span.span_id);
		span.kind = KOBO_OTLP_KIND_INTERNAL;
		span.start_ns = started_ns;
		span.end_ns = end_ns;
		memcpy(span.name, "hold expired", sizeof "hold expired");
		kobo_otlp_attr_str(&span, "kobo.transfer_id", t->id);
		kobo_otlp_attr_int(&span, "kobo.shard", shard);
		kobo_otlp_attr_str(&span, "kobo.request_id", t->request_id);
		kobo_otlp_export(&span);
	}
}
