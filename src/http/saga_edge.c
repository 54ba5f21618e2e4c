/*
 * saga_edge.c — the edge's side of cross-shard transfers: waiting for a
 * saga before answering, and batches spread over several shards.
 *
 * A write whose transfer crosses shards is answered only when its saga has
 * settled (201/200 with the final state, or the refusal when the payee's
 * shard refused and the payer was refunded), or with 202 and status
 * "processing" when the wait (--saga-wait-ms) runs out first; the saga goes
 * on regardless and GET /v1/transfers/{id} shows the truth.
 *
 * A non-atomic batch is split into one request per payer shard; each
 * answer is encoded into its slot as it arrives (snapshots are valid only
 * during the done callback) and the reply is assembled in request order
 * once every part and every saga has answered (`pending` counts them).
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

bool kobo__http_saga_pending(const kobo_result *result)
{
	if (!result->has_transfer || result->transfer.leg != KOBO_LEG_DEBIT ||
	    result->transfer.status != KOBO_STATUS_PROCESSING)
		return false;
	return result->code == KOBO_RESULT_CREATED ||
	       result->code == KOBO_RESULT_REPLAYED ||
	       result->code == KOBO_RESULT_UPDATED;
}

void kobo__http_settled_result(const kobo_op *op, kobo_result *result)
{
	if (op->kind != KOBO_OP_CREATE_TRANSFER || result->code != KOBO_RESULT_REPLAYED ||
	    !result->has_transfer || result->transfer.leg != KOBO_LEG_DEBIT)
		return;
	kobo_result outcome;
	kobo_http_saga_outcome(&result->transfer, KOBO_OP_CREATE_TRANSFER, true, &outcome);
	*result = outcome;
}

static int64_t wait_deadline_ms(const kobo_http_server *server)
{
	return kobo_monotonic_us() / 1000 + server->saga_wait_ms;
}

/* ---- One write waiting for its saga. ---- */

/* Runner thread: the saga settled, or the wait ran out. */
static void single_settled(void *ctx, const kobo_transfer *transfer, bool timed_out)
{
	kobo_http_exchange *x = ctx;
	if (transfer && !timed_out) {
		kobo_result outcome;
		kobo_http_saga_outcome(transfer, x->saga_kind, x->saga_replayed, &outcome);
		kobo_http_reply_result(&x->reply, &outcome, x->request_id);
		x->reply.replayed = x->saga_replayed; /* a replayed refusal too */
	} else if (transfer) {
		kobo_http_reply_accepted(&x->reply, transfer);
		x->reply.replayed = x->saga_replayed;
	}
	/* else: keep the 202 encoded when the wait began. */
	kobo__http_resume(x);
}

void kobo__http_wait_saga(kobo_http_exchange *x, const kobo_result *result)
{
	x->saga_kind = x->ops.ops[0].kind;
	x->saga_replayed = result->code == KOBO_RESULT_REPLAYED;
	/* The answer if nothing better comes: encoded now, while the snapshot
	 * is valid. */
	kobo_http_reply_accepted(&x->reply, &result->transfer);
	x->reply.replayed = x->saga_replayed;
	int rc = kobo_saga_runner_wait(x->server->runner, x->shard, result->transfer.id,
	                               wait_deadline_ms(x->server), single_settled, x);
	if (rc != KOBO_OK)
		kobo__http_resume(x);
}

/* ---- Batches over several shards. ---- */

typedef struct http_part {
	kobo_http_exchange *x;
	uint32_t shard;
	kobo_request request;
	kobo_op *ops;       /* slices of split->ops */
	kobo_result *results;
	size_t *index;      /* ops[j] is the batch's op index[j] */
	size_t count;
} http_part;

typedef struct http_item {
	kobo_http_exchange *x;
	size_t index;
	bool replayed;
} http_item;

struct http_split {
	size_t count; /* ops in the batch */
	http_part parts[KOBO_SHARDS_MAX];
	uint32_t part_count;
	kobo_op *ops;
	kobo_result *results;
	size_t *index;
	kobo_http_buf *slots;  /* one encoded entry per op */
	http_item *items;
	atomic_size_t pending; /* parts and sagas not answered yet */
};

void kobo__http_split_free(http_split *split)
{
	if (split->slots)
		for (size_t i = 0; i < split->count; i++)
			kobo_http_buf_free(&split->slots[i]);
	free(split->slots);
	free(split->items);
	free(split->ops);
	free(split->results);
	free(split->index);
	free(split);
}

static void split_finish(kobo_http_exchange *x)
{
	http_split *split = x->split;
	kobo_http_buf *buf = &x->reply.body;
	size_t total = 32;
	for (size_t i = 0; i < x->ops.count; i++)
		total += split->slots[i].len + 1;
	buf->len = 0;
	kobo_http_buf_reserve(buf, total);
	kobo_http_buf_puts(buf, "{\"results\":[");
	for (size_t i = 0; i < x->ops.count; i++) {
		if (i)
			kobo_http_buf_puts(buf, ",");
		kobo_http_buf_append(buf, split->slots[i].data ? split->slots[i].data : "",
		                     split->slots[i].len);
	}
	kobo_http_buf_puts(buf, "]}");
	x->reply.status = 200;
	kobo__http_resume(x);
}

static void split_answered(kobo_http_exchange *x)
{
	if (atomic_fetch_sub(&x->split->pending, 1) == 1)
		split_finish(x);
}

static void slot_error(kobo_http_buf *slot, const char *id, int status, const char *code)
{
	slot->len = 0;
	kobo_http_buf_puts(slot, "{\"id\":");
	kobo_http_buf_json_string(slot, id, strlen(id));
	kobo_http_buf_printf(slot, ",\"status\":%d,\"error\":{\"code\":\"%s\",\"message\":", status,
	                     code);
	const char *message = kobo_http_error_message(code);
	kobo_http_buf_json_string(slot, message, strlen(message));
	kobo_http_buf_puts(slot, "}}");
}

int kobo__http_write_failed(int status, const char **code)
{
	if (status == KOBO_ESHUTDOWN) {
		*code = "shutting_down";
		return 503;
	}
	if (status == KOBO_EINVAL || status == KOBO_EFULL) {
		*code = "internal_error"; /* a ledger refusal: a bug of ours */
		return 500;
	}
	if (status == KOBO_ECONFLICT || status == KOBO_EOVERLOADED) {
		/* re-runs exhausted, or the store's backlog is full (the
		 * journaled store's projection behind): nothing committed */
		*code = "overloaded";
		return 503;
	}
	if (status == KOBO_ECAPACITY) {
		*code = "capacity_exhausted"; /* a store limit: nothing committed */
		return 503;
	}
	/* KOBO_EUNKNOWN, KOBO_ESTORE, KOBO_EFAILED, KOBO_ECONNLOST: the
	 * outcome may be unknown; the client retries with the same id. */
	*code = "storage_unavailable";
	return 503;
}

/* Runner thread: one entry's saga settled or its wait ran out. */
static void item_settled(void *ctx, const kobo_transfer *transfer, bool timed_out)
{
	http_item *item = ctx;
	kobo_http_exchange *x = item->x;
	kobo_http_buf *slot = &x->split->slots[item->index];
	if (transfer) {
		slot->len = 0;
		if (timed_out) {
			kobo_http_encode_batch_accepted(slot, transfer);
		} else {
			kobo_result outcome;
			kobo_http_saga_outcome(transfer, KOBO_OP_CREATE_TRANSFER, item->replayed,
			                       &outcome);
			kobo_http_encode_batch_item(slot, transfer->id, &outcome);
		}
	}
	split_answered(x);
}

/* Writer thread: one shard's part of the batch is durable (or failed). */
static void part_done(kobo_request *request)
{
	http_part *part = request->user;
	kobo_http_exchange *x = part->x;
	http_split *split = x->split;
	/* x is alive until this part is answered (split_answered below). */
	if (request->status == KOBO_OK)
		kobo__http_span_transfers(x, part->shard, part->ops, part->results, part->count);
	for (size_t j = 0; j < part->count; j++) {
		size_t i = part->index[j];
		kobo_http_buf *slot = &split->slots[i];
		const kobo_result *result = &part->results[j];
		const char *id = part->ops[j].u.transfer.id;
		if (request->status != KOBO_OK) {
			const char *code;
			int status = kobo__http_write_failed(request->status, &code);
			slot_error(slot, id, status, code);
			continue;
		}
		if (!kobo__http_saga_pending(result)) {
			kobo_result settled = *result;
			kobo__http_settled_result(&part->ops[j], &settled);
			kobo_http_encode_batch_item(slot, id, &settled);
			continue;
		}
		kobo_http_encode_batch_accepted(slot, &result->transfer);
		http_item *item = &split->items[i];
		item->x = x;
		item->index = i;
		item->replayed = result->code == KOBO_RESULT_REPLAYED;
		atomic_fetch_add(&split->pending, 1);
		if (kobo_saga_runner_wait(x->server->runner, part->shard, id,
		                          wait_deadline_ms(x->server), item_settled,
		                          item) != KOBO_OK)
			atomic_fetch_sub(&split->pending, 1);
	}
	split_answered(x);
}

/* Lays the ops out shard by shard (a counting sort keeps request order
 * within a shard) and fills the parts. */
static void split_layout(kobo_http_exchange *x, const uint32_t *shards)
{
	http_split *split = x->split;
	size_t counts[KOBO_SHARDS_MAX] = { 0 };
	size_t offsets[KOBO_SHARDS_MAX];
	for (size_t i = 0; i < x->ops.count; i++)
		counts[shards[i]]++;
	size_t at = 0;
	for (uint32_t s = 0; s < x->server->shard_count; s++) {
		offsets[s] = at;
		if (counts[s]) {
			http_part *part = &split->parts[split->part_count++];
			part->x = x;
			part->shard = s;
			part->ops = &split->ops[at];
			part->results = &split->results[at];
			part->index = &split->index[at];
			part->count = counts[s];
		}
		at += counts[s];
	}
	for (size_t i = 0; i < x->ops.count; i++) {
		size_t to = offsets[shards[i]]++;
		split->ops[to] = x->ops.ops[i];
		memcpy(split->ops[to].request_id, x->request_id, sizeof(x->request_id));
		memcpy(split->ops[to].created_by, x->key_id, sizeof(x->key_id));
		memcpy(split->ops[to].trace_id, x->trace_id, sizeof(x->trace_id));
		split->index[to] = i;
	}
}

int kobo__http_submit_split(kobo_http_exchange *x, const uint32_t *shards)
{
	kobo_http_server *server = x->server;
	size_t count = x->ops.count;
	/* The split's copy of every op and result, its slots and their text,
	 * on top of what kobo__http_create_batch charged. */
	size_t per_op = sizeof(kobo_op) + sizeof(kobo_result) + sizeof(size_t) +
	                sizeof(kobo_http_buf) + sizeof(http_item) +
	                KOBO_HTTP_BATCH_REPLY_ITEM_BYTES;
	if (!kobo__http_charge(x, sizeof(http_split) + count * per_op))
		return kobo__http_overloaded(x);
	http_split *split = calloc(1, sizeof(*split));
	if (split) {
		split->ops = calloc(count, sizeof(*split->ops));
		split->results = calloc(count, sizeof(*split->results));
		split->index = calloc(count, sizeof(*split->index));
		split->slots = calloc(count, sizeof(*split->slots));
		split->items = calloc(count, sizeof(*split->items));
	}
	if (!split || !split->ops || !split->results || !split->index || !split->slots ||
	    !split->items) {
		if (split)
			kobo__http_split_free(split); /* slots hold nothing yet */
		x->reply.retry_after_s = 1;
		return kobo__http_fail(x, 503, "overloaded", "out of memory");
	}
	split->count = count;
	for (size_t i = 0; i < count; i++)
		kobo_http_buf_init(&split->slots[i]);
	x->split = split;
	x->is_batch = true;
	split_layout(x, shards);
	atomic_init(&split->pending, split->part_count);

	/* Every part's shard (a payer's) and every payee's were marked
	 * touched when the handler routed the transfers (route_transfer). */
	atomic_store(&x->state, KOBO_HTTP_SUSPENDED);
	MHD_suspend_connection(x->connection);
	/* From the first submit on, part_done may finish x on another thread:
	 * read nothing of x or split after the loop. */
	uint32_t parts = split->part_count;
	for (uint32_t p = 0; p < parts; p++) {
		http_part *part = &split->parts[p];
		part->request.ops = part->ops;
		part->request.results = part->results;
		part->request.op_count = part->count;
		part->request.done = part_done;
		part->request.user = part;
		pthread_rwlock_rdlock(&server->submit_lock);
		int rc = server->writes_closed
		                 ? KOBO_ESHUTDOWN
		                 : kobo_shard_submit(server->shards[part->shard], &part->request);
		pthread_rwlock_unlock(&server->submit_lock);
		if (rc == KOBO_OK)
			continue;
		const char *code = rc == KOBO_ESHUTDOWN ? "shutting_down" : "overloaded";
		for (size_t j = 0; j < part->count; j++)
			slot_error(&split->slots[part->index[j]], part->ops[j].u.transfer.id, 503,
			           code);
		split_answered(x);
	}
	return KOBO_HTTP_REPLY_LATER;
}
