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
#include <stdlib.h>
#include <string.h>

static uint32_t shard_of(const kobo_http_exchange *x, const char *account_id)
{
	return kobo_shard_of_partition(kobo_partition_of(account_id),
	                               x->server->shard_count);
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

/* ---- Writes. ---- */

int kobo__http_create_account(kobo_http_exchange *x)
{
	kobo_http_error err;
	int rc = kobo_http_parse_account(body_of(x), x->body.len, &x->ops, &err);
	if (rc != KOBO_OK)
		return parse_failed(x, rc, &err);
	return kobo__http_submit(x, shard_of(x, x->ops.ops[0].u.account.id));
}

int kobo__http_create_transfer(kobo_http_exchange *x)
{
	kobo_http_error err;
	int rc = kobo_http_parse_transfer(body_of(x), x->body.len, &x->ops, &err);
	if (rc != KOBO_OK)
		return parse_failed(x, rc, &err);
	/* The payer's shard applies the transfer (cross-shard sagas later). */
	return kobo__http_submit(x, shard_of(x, x->ops.ops[0].u.transfer.from));
}

int kobo__http_create_batch(kobo_http_exchange *x)
{
	kobo_http_error err;
	int rc = kobo_http_parse_batch(body_of(x), x->body.len, &x->ops, &err);
	if (rc != KOBO_OK)
		return parse_failed(x, rc, &err);
	uint32_t shard = shard_of(x, x->ops.ops[0].u.transfer.from);
	for (size_t i = 1; i < x->ops.count; i++) {
		if (shard_of(x, x->ops.ops[i].u.transfer.from) == shard)
			continue;
		if (x->ops.atomic)
			return kobo__http_fail(x, 422, "atomic_cross_shard", NULL);
		/* Splitting a batch across shards comes with sagas. */
		return kobo__http_fail(x, 422, "batch_cross_shard",
		                       "a batch must stay on one shard until cross-shard "
		                       "transfers are built");
	}
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

static int target(kobo_http_exchange *x, bool post)
{
	kobo_http_error err;
	int rc = post ? kobo_http_parse_post(body_of(x), x->body.len, x->match.id,
	                                     &x->ops, &err)
	              : kobo_http_parse_void(body_of(x), x->body.len, x->match.id,
	                                     &x->ops, &err);
	if (rc != KOBO_OK)
		return parse_failed(x, rc, &err);
	/* Only one shard is served for now; with more, the transfer lives on
	 * its payer's shard and the id alone will need a lookup. */
	return kobo__http_submit(x, shard_of(x, x->match.id));
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
	kobo_store_reader *reader;
	kobo_account account;
	int rc = kobo__http_reader(x->server, shard_of(x, x->match.id), &reader);
	if (rc == KOBO_OK)
		rc = kobo_store_read_account(reader, x->match.id, &account);
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
	/* Look first where the id hashes, then on the other shards: a transfer
	 * lives with its payer, whose shard the id alone does not tell. */
	uint32_t count = x->server->shard_count;
	uint32_t first = shard_of(x, x->match.id);
	for (uint32_t n = 0; n < count; n++) {
		uint32_t shard = (first + n) % count;
		kobo_store_reader *reader;
		kobo_transfer transfer;
		int rc = kobo__http_reader(x->server, shard, &reader);
		if (rc == KOBO_OK)
			rc = kobo_store_read_transfer(reader, x->match.id, &transfer);
		if (rc == KOBO_ENOTFOUND)
			continue;
		if (rc != KOBO_OK)
			return read_failed(x, rc);
		x->reply.status = 200;
		kobo_http_encode_transfer(&x->reply.body, &transfer);
		return KOBO_HTTP_REPLY_READY;
	}
	return kobo__http_fail(x, 404, "transfer_not_found", NULL);
}

typedef struct history_page {
	kobo_http_buf *buf;
	size_t limit;
	size_t rows;
	int64_t last_seq;
	bool more;
} history_page;

static int history_row(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	history_page *page = ctx;
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

int kobo__http_get_history(kobo_http_exchange *x)
{
	kobo_store_reader *reader;
	kobo_account account;
	int rc = kobo__http_reader(x->server, shard_of(x, x->match.id), &reader);
	if (rc == KOBO_OK)
		rc = kobo_store_read_account(reader, x->match.id, &account);
	if (rc == KOBO_ENOTFOUND)
		return kobo__http_fail(x, 404, "account_not_found", NULL);
	if (rc != KOBO_OK)
		return read_failed(x, rc);

	kobo_http_buf *buf = &x->reply.body;
	history_page page = { .buf = buf, .limit = x->query.limit };
	kobo_http_buf_puts(buf, "{\"data\":[");
	rc = kobo_store_read_history(reader, x->match.id, x->query.after_seq,
	                             x->query.limit + 1, history_row, &page);
	if (rc != KOBO_OK) {
		buf->len = 0;
		return read_failed(x, rc);
	}
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
