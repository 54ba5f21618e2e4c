/*
 * handlers.c — one function per route of the table in routes.c.
 *
 * By the time a handler runs, server.c has matched the route, validated the
 * path id, the query and X-Request-Id, and received the whole body within
 * the route's limit. Writes parse the body into ops and go to the shard that
 * owns the account (kobo__http_submit); reads run here, on the HTTP thread,
 * against this thread's read connection, never through the writer.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t kobo__http_shard_of(const kobo_http_exchange *x, const char *account_id)
{
	return kobo_shard_map_account(x->server->map, account_id);
}

static uint32_t shard_of(const kobo_http_exchange *x, const char *account_id)
{
	return kobo__http_shard_of(x, account_id);
}

static const char *body_of(const kobo_http_exchange *x)
{
	return x->body.data ? x->body.data : "";
}

static int parse_failed(kobo_http_exchange *x, int rc, const kobo_http_error *err)
{
	if (rc == KOBO_ENOMEM)
		x->reply.retry_after_s = 1;
	return kobo__http_fail(x, err->status, err->code, err->message);
}

static bool is_system_id(const char *id)
{
	return strncmp(id, KOBO_SYSTEM_ID_PREFIX, strlen(KOBO_SYSTEM_ID_PREFIX)) == 0;
}

static int system_id_refused(kobo_http_exchange *x, const char *field)
{
	char message[128];
	snprintf(message, sizeof(message),
	         "%s: ids starting with \"" KOBO_SYSTEM_ID_PREFIX "\" are reserved for "
	         "Kobo's own accounts", field);
	return kobo__http_fail(x, 400, "invalid_request", message);
}

/* Routes a new transfer: the payer's shard applies it; when the payee lives
 * on another shard it becomes the DEBIT leg of a saga through the payer
 * shard's clearing account for the payee's shard. Both shards are marked
 * touched here, where they are hashed anyway, for the write's
 * Kobo-Consistency-Token (kobo__http_touch). */
static uint32_t route_transfer(kobo_http_exchange *x, kobo_op *op)
{
	kobo_transfer *t = &op->u.transfer;
	uint32_t from = shard_of(x, t->from);
	uint32_t to = shard_of(x, t->to);
	kobo__http_touch(x, from);
	kobo__http_touch(x, to);
	if (from != to) {
		t->leg = KOBO_LEG_DEBIT;
		kobo_clearing_id(t->clearing, from, to, t->currency);
	}
	return from;
}

/* ---- Writes. ---- */

int kobo__http_create_account(kobo_http_exchange *x)
{
	kobo_http_error err;
	int rc = kobo_http_parse_account(body_of(x), x->body.len, &x->ops, &err);
	if (rc != KOBO_OK)
		return parse_failed(x, rc, &err);
	if (is_system_id(x->ops.ops[0].u.account.id))
		return system_id_refused(x, "id");
	return kobo__http_submit(x, shard_of(x, x->ops.ops[0].u.account.id));
}

int kobo__http_create_transfer(kobo_http_exchange *x)
{
	kobo_http_error err;
	int rc = kobo_http_parse_transfer(body_of(x), x->body.len, &x->ops, &err);
	if (rc != KOBO_OK)
		return parse_failed(x, rc, &err);
	const kobo_transfer *t = &x->ops.ops[0].u.transfer;
	if (is_system_id(t->from))
		return system_id_refused(x, "from");
	if (is_system_id(t->to))
		return system_id_refused(x, "to");
	return kobo__http_submit(x, route_transfer(x, &x->ops.ops[0]));
}

static int by_id_then_index(const void *a, const void *b, void *ctx)
{
	const kobo_op *ops = ctx;
	size_t i = *(const size_t *)a, j = *(const size_t *)b;
	int order = strcmp(ops[i].u.transfer.id, ops[j].u.transfer.id);
	return order ? order : (i > j) - (i < j);
}

/* Fills a 400 naming the first repeated transfer id of the batch (the
 * repeat with the lowest index) and returns KOBO_EINVAL; KOBO_OK when every
 * id is named once; KOBO_ENOMEM (retry_after_s set). */
static int repeated_id_refused(kobo_http_exchange *x)
{
	size_t count = x->ops.count;
	size_t *order = malloc(count * sizeof(*order));
	if (!order) {
		x->reply.retry_after_s = 1;
		return KOBO_ENOMEM;
	}
	for (size_t i = 0; i < count; i++)
		order[i] = i;
	qsort_r(order, count, sizeof(*order), by_id_then_index, x->ops.ops);
	size_t first = count, repeat = count;
	for (size_t k = 1; k < count; k++) {
		/* Within a run of one id, order[run start] is its first use. */
		size_t start = k - 1;
		if (strcmp(x->ops.ops[order[start]].u.transfer.id,
		           x->ops.ops[order[k]].u.transfer.id) != 0)
			continue;
		if (order[k] < repeat) {
			repeat = order[k];
			first = order[start];
		}
		while (k + 1 < count && strcmp(x->ops.ops[order[k]].u.transfer.id,
		                               x->ops.ops[order[k + 1]].u.transfer.id) == 0)
			k++;
	}
	free(order);
	if (repeat == count)
		return KOBO_OK;
	char message[KOBO_HTTP_ERROR_MESSAGE_MAX];
	snprintf(message, sizeof(message),
	         "transfers[%zu].id: \"%s\" is also transfers[%zu].id; a batch whose "
	         "transfers span shards may name each id once", repeat,
	         x->ops.ops[repeat].u.transfer.id, first);
	kobo__http_fail(x, 400, "invalid_request", message);
	return KOBO_EINVAL;
}

int kobo__http_create_batch(kobo_http_exchange *x)
{
	kobo_http_error err;
	int rc = kobo_http_parse_batch(body_of(x), x->body.len, &x->ops, &err);
	if (rc != KOBO_OK)
		return parse_failed(x, rc, &err);
	/* The rest of the batch's rate-limit cost, now that its size is
	 * known: over the limit it is refused 429 before anything is queued. */
	if (kobo__http_limit_batch(x, x->ops.count) != KOBO_OK) {
		kobo_http_ops_free(&x->ops);
		return KOBO_HTTP_REPLY_READY;
	}
	/* A small body expands into ~1.9 KB of state a transfer: count it
	 * with the body, or 1,024 such batches would hold ~10 GB. The ops
	 * were allocated by the parse: one request's worth at most per HTTP
	 * thread, held only until this refusal frees them. */
	if (x->ops.count > 1 &&
	    !kobo__http_charge(x, x->ops.count * (sizeof(kobo_op) + sizeof(kobo_result) +
	                                          KOBO_HTTP_BATCH_REPLY_ITEM_BYTES))) {
		kobo_http_ops_free(&x->ops);
		return kobo__http_overloaded(x);
	}
	uint32_t *shards = calloc(x->ops.count, sizeof(*shards));
	if (!shards) {
		x->reply.retry_after_s = 1;
		return kobo__http_fail(x, 503, "overloaded", "out of memory");
	}
	bool one_shard = true, crossing = false;
	for (size_t i = 0; i < x->ops.count; i++) {
		kobo_op *op = &x->ops.ops[i];
		char field[48];
		if (is_system_id(op->u.transfer.from) || is_system_id(op->u.transfer.to)) {
			snprintf(field, sizeof(field), "transfers[%zu].%s", i,
			         is_system_id(op->u.transfer.from) ? "from" : "to");
			free(shards);
			return system_id_refused(x, field);
		}
		shards[i] = route_transfer(x, op);
		crossing |= op->u.transfer.leg != KOBO_LEG_LOCAL;
		one_shard &= shards[i] == shards[0];
	}
	if (x->ops.atomic && (crossing || !one_shard)) {
		free(shards);
		return kobo__http_fail(x, 422, "atomic_cross_shard", NULL);
	}
	if (!one_shard || crossing) {
		/* Split per payer shard, each part's ledger sees only its own
		 * ops: an id named twice with payers on two shards would be
		 * applied twice. Refuse any repeat here, where the whole
		 * request is seen (one shard's ledger still answers a repeat
		 * in a one-shard batch: replay or id_conflict). */
		rc = repeated_id_refused(x);
		if (rc != KOBO_OK) {
			free(shards);
			return rc == KOBO_ENOMEM ? kobo__http_fail(x, 503, "overloaded", "out of memory")
			                         : KOBO_HTTP_REPLY_READY;
		}
		rc = kobo__http_submit_split(x, shards);
		free(shards);
		return rc;
	}
	uint32_t shard = shards[0];
	free(shards);
	if (x->ops.count > 1) {
		x->results = calloc(x->ops.count, sizeof(kobo_result));
		if (!x->results) {
			x->results = &x->inline_result;
			x->reply.retry_after_s = 1;
			return kobo__http_fail(x, 503, "overloaded", "out of memory");
		}
	}
	x->is_batch = true;
	return kobo__http_submit(x, shard);
}

static int read_failed(kobo_http_exchange *x, int rc);

/* Finds the transfer id: its payer's record (LOCAL or DEBIT leg) when it
 * exists. Returns KOBO_OK with *out and *shard, KOBO_ENOTFOUND, or a read
 * error. A cross-shard transfer is also stored on the payee's shard (its
 * CREDIT leg); that copy only points the way to the payer's: when both
 * legs exist *out is always the DEBIT leg, whichever shard was read first.
 * Only when the payer's shard holds no record of the id (it always does
 * once a CREDIT leg exists, short of a damaged store) is *out a CREDIT
 * leg: fine to show, never a record to post or void (target()). routing:
 * the lookup decides where a write goes, so it reads primaries only (a
 * replica could miss a record a write must find); a GET may read
 * replicas (replicas.c). */
static int read_transfer_on(kobo_http_exchange *x, uint32_t shard, bool routing,
                            const char *id, kobo_transfer *out)
{
	kobo_http_read read;
	int rc = kobo__http_read_begin(x, shard, routing, &read);
	do {
		if (rc == KOBO_OK)
			rc = kobo_store_read_transfer(read.reader, id, out);
	} while (kobo__http_read_retry(x, &read, &rc));
	return rc;
}

static int find_transfer(kobo_http_exchange *x, const char *id, bool routing,
                         kobo_transfer *out, uint32_t *shard_out)
{
	uint32_t count = x->server->shard_count;
	uint32_t first = shard_of(x, id);
	for (uint32_t n = 0; n < count; n++) {
		uint32_t shard = (first + n) % count;
		int rc = read_transfer_on(x, shard, routing, id, out);
		if (rc == KOBO_ENOTFOUND)
			continue;
		if (rc != KOBO_OK)
			return rc;
		*shard_out = shard;
		if (out->leg != KOBO_LEG_CREDIT)
			return KOBO_OK;
		uint32_t payer = shard_of(x, out->from);
		kobo_transfer debit;
		rc = read_transfer_on(x, payer, routing, id, &debit);
		if (rc == KOBO_OK) {
			*out = debit;
			*shard_out = payer;
		}
		return rc == KOBO_ENOTFOUND ? KOBO_OK : rc;
	}
	return KOBO_ENOTFOUND;
}

static int target(kobo_http_exchange *x, bool post)
{
	kobo_http_error err;
	int rc = post ? kobo_http_parse_post(body_of(x), x->body.len, x->match.id,
	                                     &x->ops, &err)
	              : kobo_http_parse_void(body_of(x), x->body.len, x->match.id,
	                                     &x->ops, &err);
	if (rc != KOBO_OK)
		return parse_failed(x, rc, &err);
	/* A hold lives with its payer; with one shard there is nothing to
	 * look up. With several, only the payer's record (LOCAL or DEBIT leg)
	 * may be posted or voided by a client: the CREDIT leg on the payee's
	 * shard belongs to the saga runner. An id no shard holds is answered
	 * here: sending it to a shard guessed from its hash could land on the
	 * payee's shard just as a CREDIT leg of that id appears there. */
	uint32_t shard = 0;
	if (x->server->shard_count > 1) {
		kobo_transfer found;
		rc = find_transfer(x, x->match.id, true, &found, &shard);
		if (rc == KOBO_OK && found.leg == KOBO_LEG_CREDIT)
			rc = KOBO_ENOTFOUND; /* its DEBIT leg was not found */
		if (rc == KOBO_ENOTFOUND)
			return kobo__http_fail(x, 404, "transfer_not_found", NULL);
		if (rc != KOBO_OK)
			return read_failed(x, rc);
		shard = shard_of(x, found.from);
		kobo__http_touch(x, shard_of(x, found.to)); /* its saga's B */
	}
	return kobo__http_submit(x, shard);
}

int kobo__http_post_transfer(kobo_http_exchange *x)
{
	return target(x, true);
}

int kobo__http_void_transfer(kobo_http_exchange *x)
{
	return target(x, false);
}

/* ---- Reads. ---- */

static int read_failed(kobo_http_exchange *x, int rc)
{
	(void)rc;
	x->reply.retry_after_s = 1;
	return kobo__http_fail(x, 503, "storage_unavailable", "the read failed; retry");
}

int kobo__http_get_account(kobo_http_exchange *x)
{
	kobo_http_read read;
	kobo_account account;
	int rc = kobo__http_read_begin(x, shard_of(x, x->match.id), false, &read);
	do {
		if (rc == KOBO_OK)
			rc = kobo_store_read_account(read.reader, x->match.id, &account);
	} while (kobo__http_read_retry(x, &read, &rc));
	if (rc == KOBO_ENOTFOUND)
		return kobo__http_fail(x, 404, "account_not_found", NULL);
	if (rc != KOBO_OK)
		return read_failed(x, rc);
	x->reply.status = 200;
	kobo_http_encode_account(&x->reply.body, &account);
	return KOBO_HTTP_REPLY_READY;
}

int kobo__http_get_transfer(kobo_http_exchange *x)
{
	kobo_transfer transfer;
	uint32_t shard;
	int rc = find_transfer(x, x->match.id, false, &transfer, &shard);
	if (rc == KOBO_ENOTFOUND)
		return kobo__http_fail(x, 404, "transfer_not_found", NULL);
	if (rc != KOBO_OK)
		return read_failed(x, rc);
	x->reply.status = 200;
	kobo_http_encode_transfer(&x->reply.body, &transfer);
	return KOBO_HTTP_REPLY_READY;
}

/* ---- The journey of a payment. ---- */

/* One shard's events of a transfer: at most cap, after a seq. */
typedef struct event_read {
	kobo_event *events;
	size_t count;
	size_t cap;
} event_read;

static int collect_event(void *ctx, const kobo_event *event)
{
	event_read *read = ctx;
	if (read->count == read->cap)
		return 1;
	read->events[read->count++] = *event;
	return 0;
}

static int read_events_on(kobo_http_exchange *x, uint32_t shard, const char *id,
                          int64_t after_seq, event_read *out)
{
	kobo_http_read read;
	int rc = kobo__http_read_begin(x, shard, false, &read);
	do {
		out->count = 0;
		if (rc == KOBO_OK)
			rc = kobo_store_read_events(read.reader, id, after_seq, out->cap,
			                            collect_event, out);
	} while (kobo__http_read_retry(x, &read, &rc));
	return rc;
}

/* The shards a transfer touched: its payer's (where find_transfer found
 * the DEBIT or LOCAL leg) and, for a cross-shard transfer, its payee's. */
static size_t transfer_shards(kobo_http_exchange *x, const kobo_transfer *t,
                              uint32_t found_on, uint32_t shards[KOBO_EVENTS_LISTS_MAX])
{
	size_t n = 0;
	shards[n++] = t->leg == KOBO_LEG_LOCAL ? found_on : shard_of(x, t->from);
	if (t->leg != KOBO_LEG_LOCAL) {
		uint32_t payee = shard_of(x, t->to);
		if (payee != shards[0])
			shards[n++] = payee;
	}
	return n;
}

/* GET /v1/transfers/{id}/events?limit=&after=: one page of the journey,
 * oldest first, "next" the cursor of the rest or null. Each shard is read
 * for limit + 1 events after the cursor's position on it, and the page is
 * the first limit of their merge (events.h, kobo_events_merge_page: exact,
 * and the extra event tells whether another page exists). Nothing is left
 * out without a "next" that leads to it. */
int kobo__http_get_events(kobo_http_exchange *x)
{
	kobo_transfer transfer;
	uint32_t found_on;
	int rc = find_transfer(x, x->match.id, false, &transfer, &found_on);
	if (rc == KOBO_ENOTFOUND)
		return kobo__http_fail(x, 404, "transfer_not_found", NULL);
	if (rc != KOBO_OK)
		return read_failed(x, rc);
	uint32_t shards[KOBO_EVENTS_LISTS_MAX];
	size_t n = transfer_shards(x, &transfer, found_on, shards);
	kobo_events_position pos = x->query.events_after; /* zero without after */
	if (n == 1 && pos.after_seq[1] != 0) /* a position on a shard it never touched */
		return kobo__http_fail(x, 400, "invalid_request",
		                       "after: must be a cursor returned as \"next\" for this transfer");
	size_t limit = x->query.has_limit ? x->query.limit : KOBO_HTTP_EVENTS_LIMIT_DEFAULT;
	size_t per_shard = limit + 1; /* the one more: is there another page? */
	kobo_event *all = malloc((KOBO_EVENTS_LISTS_MAX * per_shard + limit) * sizeof *all);
	if (all == NULL) {
		x->reply.retry_after_s = 1;
		return kobo__http_fail(x, 503, "overloaded", "out of memory");
	}
	event_read reads[KOBO_EVENTS_LISTS_MAX];
	const kobo_event *lists[KOBO_EVENTS_LISTS_MAX];
	size_t lens[KOBO_EVENTS_LISTS_MAX];
	for (size_t i = 0; i < n; i++) {
		reads[i] = (event_read){ .events = all + i * per_shard, .cap = per_shard };
		rc = read_events_on(x, shards[i], x->match.id, pos.after_seq[i], &reads[i]);
		if (rc != KOBO_OK) {
			free(all);
			return read_failed(x, rc);
		}
		lists[i] = reads[i].events;
		lens[i] = reads[i].count;
	}
	kobo_event *page = all + KOBO_EVENTS_LISTS_MAX * per_shard;
	bool more;
	size_t count = kobo_events_merge_page(lists, lens, n, limit, &pos, page, &more);
	kobo_http_buf *buf = &x->reply.body;
	kobo_http_buf_puts(buf, "{\"data\":[");
	for (size_t i = 0; i < count; i++) {
		if (i)
			kobo_http_buf_puts(buf, ",");
		kobo_http_encode_event(buf, &page[i]);
	}
	free(all);
	if (more) {
		char cursor[KOBO_HTTP_EVENTS_CURSOR_LEN_MAX + 1];
		kobo_http_events_cursor_format(cursor, &pos);
		kobo_http_buf_printf(buf, "],\"next\":\"%s\"}", cursor);
	} else {
		kobo_http_buf_puts(buf, "],\"next\":null}");
	}
	x->reply.status = 200;
	return KOBO_HTTP_REPLY_READY;
}

/* A page of transfers being encoded into buf: at most limit rows, then
 * "more" once the extra row asked for shows another page exists. */
typedef struct transfer_page {
	kobo_http_buf *buf;
	size_t limit;
	size_t rows;
	int64_t last_seq;
	bool more;
	bool skip_credit_legs; /* the request listing shows a payer's leg only */
} transfer_page;

static int page_row(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	transfer_page *page = ctx;
	if (page->skip_credit_legs && transfer->leg == KOBO_LEG_CREDIT) {
		page->last_seq = seq;
		return 0;
	}
	if (page->rows == page->limit) {
		page->more = true; /* the extra row asked for: another page exists */
		return 1;
	}
	if (page->rows)
		kobo_http_buf_puts(page->buf, ",");
	kobo_http_encode_transfer(page->buf, transfer);
	page->rows++;
	page->last_seq = seq;
	return 0;
}

/* GET /v1/transfers?request_id=X: the records the request created, shard
 * by shard (0, 1, …), each shard's oldest first; "next" is "SHARD.SEQ".
 * A cross-shard transfer shows once, as its payer's leg (the CREDIT leg
 * on the payee's shard carries the same request id and is left out). */
int kobo__http_list_transfers(kobo_http_exchange *x)
{
	kobo_http_buf *buf = &x->reply.body;
	if (!x->query.has_request_id)
		return kobo__http_fail(x, 400, "invalid_request",
		                       "request_id: required (GET /v1/transfers?request_id=X)");
	if (x->query.after_shard >= x->server->shard_count)
		return kobo__http_fail(x, 400, "invalid_request",
		                       "after: must be a cursor returned as \"next\"");
	transfer_page page = { .buf = buf, .limit = x->query.limit, .skip_credit_legs = true };
	kobo_http_buf_puts(buf, "{\"data\":[");
	uint32_t shard = x->query.after_shard;
	int64_t after = x->query.after_seq;
	bool more = false;
	for (; shard < x->server->shard_count; shard++, after = 0) {
		size_t mark = buf->len;
		size_t rows = page.rows;
		kobo_http_read read;
		int rc = kobo__http_read_begin(x, shard, false, &read);
		do {
			buf->len = mark;
			page.rows = rows;
			page.more = false;
			page.last_seq = after;
			if (rc == KOBO_OK)
				rc = kobo_store_read_by_request(read.reader, x->query.request_id,
				                                after, page.limit - page.rows + 1,
				                                page_row, &page);
		} while (kobo__http_read_retry(x, &read, &rc));
		if (rc != KOBO_OK) {
			buf->len = 0;
			return read_failed(x, rc);
		}
		if (page.more) {
			more = true;
			break;
		}
		if (page.rows == page.limit) {
			/* Full: the next shard's first row, if any, is the next page. */
			if (shard + 1 < x->server->shard_count) {
				more = true;
				shard++;
				page.last_seq = 0;
			}
			break;
		}
	}
	if (more)
		kobo_http_buf_printf(buf, "],\"next\":\"%" PRIu32 ".%" PRId64 "\"}", shard,
		                     page.last_seq);
	else
		kobo_http_buf_puts(buf, "],\"next\":null}");
	x->reply.status = 200;
	return KOBO_HTTP_REPLY_READY;
}

/* The account, then a page of its history, on one reader: a replica
 * answers both from its replay position, as the primary would. */
static int read_history_page(kobo_http_exchange *x, kobo_store_reader *reader,
                             kobo_account *account, transfer_page *page)
{
	int rc = kobo_store_read_account(reader, x->match.id, account);
	if (rc != KOBO_OK)
		return rc;
	page->rows = 0;
	page->more = false;
	page->last_seq = 0;
	page->buf->len = 0;
	kobo_http_buf_puts(page->buf, "{\"data\":[");
	return kobo_store_read_history(reader, x->match.id, x->query.after_seq,
	                               x->query.limit + 1, page_row, page);
}

int kobo__http_get_history(kobo_http_exchange *x)
{
	kobo_http_read read;
	kobo_account account;
	kobo_http_buf *buf = &x->reply.body;
	transfer_page page = { .buf = buf, .limit = x->query.limit };
	int rc = kobo__http_read_begin(x, shard_of(x, x->match.id), false, &read);
	do {
		if (rc == KOBO_OK)
			rc = read_history_page(x, read.reader, &account, &page);
	} while (kobo__http_read_retry(x, &read, &rc));
	if (rc != KOBO_OK)
		buf->len = 0;
	if (rc == KOBO_ENOTFOUND)
		return kobo__http_fail(x, 404, "account_not_found", NULL);
	if (rc != KOBO_OK)
		return read_failed(x, rc);
	if (page.more)
		kobo_http_buf_printf(buf, "],\"next\":\"%" PRId64 "\"}", page.last_seq);
	else
		kobo_http_buf_puts(buf, "],\"next\":null}");
	x->reply.status = 200;
	return KOBO_HTTP_REPLY_READY;
}

/* ---- Operations. ---- */

int kobo__http_healthz(kobo_http_exchange *x)
{
	x->reply.status = 200;
	kobo_http_buf_puts(&x->reply.body, "{\"status\":\"ok\"}");
	return KOBO_HTTP_REPLY_READY;
}

int kobo__http_readyz(kobo_http_exchange *x)
{
	bool ready = kobo__http_shards_ready(x->server);
	x->reply.status = ready ? 200 : 503;
	kobo_http_buf_puts(&x->reply.body, ready ? "{\"status\":\"ready\"}"
	                                         : "{\"status\":\"unavailable\"}");
	return KOBO_HTTP_REPLY_READY;
}

int kobo__http_metrics(kobo_http_exchange *x)
{
	kobo_http_buf *buf = &x->reply.body;
	size_t cap = 64 * 1024;
	/* kobo_shard_ready{shard}: sampled now, under the lock /readyz takes. */
	pthread_rwlock_rdlock(&x->server->submit_lock);
	for (uint32_t i = 0; i < x->server->shard_count; i++)
		kobo_metrics_shard_ready(i, kobo_shard_ready(x->server->shards[i]));
	pthread_rwlock_unlock(&x->server->submit_lock);
	for (int attempt = 0; attempt < 4; attempt++) {
		if (!kobo_http_buf_reserve(buf, cap))
			break;
		size_t len = kobo_metrics_render(buf->data, buf->cap);
		if (len < buf->cap) {
			buf->len = len;
			x->reply.status = 200;
			x->reply.content_type = "text/plain; version=0.0.4";
			return KOBO_HTTP_REPLY_READY;
		}
		cap = len + 1;
	}
	return kobo__http_fail(x, 503, "overloaded", "out of memory");
}
