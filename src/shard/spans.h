/*
 * spans.h — the writer's spans (private to src/shard; see spans.c).
 */
#ifndef KOBO_SHARD_SPANS_H
#define KOBO_SHARD_SPANS_H

#include "shard.h"

/* Wall-clock start of a batch when tracing is on, else 0 (no cost). */
int64_t kobo__shard_span_clock(void);

/* After a batch of batch[0..requests) (ops ops) taken at taken_ns ran to
 * status, its commit taking commit_us: exports "batch commit" and its
 * "store commit" child when a request in it is traced, and fills every
 * traced request's trace.taken_ns / batch ids. Before the answers. */
void kobo__shard_span_batch(uint32_t shard, kobo_request *const *batch, size_t requests,
                            size_t ops, int64_t taken_ns, int64_t commit_us, int status);

/* After an expiry batch that began at started_ns committed: one "hold
 * expired" span per hold results[0..count) expired, in the trace that
 * created the hold, under its "transfer" span. */
void kobo__shard_span_expired(uint32_t shard, const kobo_result *results, size_t count,
                              int64_t started_ns);

#endif /* KOBO_SHARD_SPANS_H */
