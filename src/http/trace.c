/*
 * trace.c — the HTTP server span of every request, when OTLP export is on
 * (src/obs/otlp.h). Off, both calls return at their first test: no
 * allocation, no random draw, the caller's traceparent is echoed as before.
 *
 * On:
 *   - a valid traceparent in → its trace continues: the caller's span is
 *     the parent, its sampled flag feeds the parent-based samplers;
 *   - none (or invalid) → a new trace id (x->trace_id, so logs carry it);
 *   - the answer's traceparent is 00-<trace>-<kobod's span>-<01|00>, the
 *     flag saying whether kobod sampled (and so exports) its span.
 *
 * The span (kind SERVER, name "METHOD route", or "METHOD" when no route
 * matched) carries the semantic-convention attributes http.request.method,
 * http.route, http.response.status_code, url.path, server.address,
 * server.port, client.address and kobo.request_id; a 5xx sets status ERROR.
 *
 * A write that went through one shard also gets, under the server span:
 *
 *   shard write   from kobo_shard_submit until the writer answered
 *                 (kobo.shard, kobo.ops; ERROR when the batch failed), with
 *                 a link to the "batch commit" span that committed it (the
 *                 batch's own trace, src/shard/spans.c, which links back);
 *    └ queue wait from submit until the writer took it into a batch;
 *   transfer      per transfer the write created that goes on without the
 *                 request (a cross-shard saga, a hold that can expire): the
 *                 parent of the saga's step spans and of "hold expired".
 *                 Its span id is derived from the trace id and the transfer
 *                 id (kobo_otlp_transfer_span_id), so those later spans —
 *                 after a restart too — find it with nothing stored. At most
 *                 KOBO_HTTP_TRANSFER_SPANS_MAX per shard answer.
 *
 * The write spans are built on the HTTP thread at the end; the writer
 * thread reads the clock and, for "transfer", exports from the results it
 * just answered (they are valid only then).
 */
#include "internal.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../obs/otlp.h"

void kobo__http_span_begin(kobo_http_exchange *x, const char *url)
{
	if (!kobo_otlp_enabled())
		return;
	x->span.on = true;
	bool has_parent = false, parent_sampled = false;
	if (x->trace_id[0]) {
		/* arrive() validated it: 00-<32 hex>-<16 hex>-<2 hex>. */
		has_parent = kobo_otlp_unhex(x->span.trace_id, x->traceparent + 3, 16) &&
		             kobo_otlp_unhex(x->span.parent_id, x->traceparent + 36, 8);
		uint8_t flags = 0;
		if (has_parent && kobo_otlp_unhex(&flags, x->traceparent + 53, 1))
			parent_sampled = flags & 1;
	}
	if (!has_parent) {
		memset(x->span.parent_id, 0, sizeof x->span.parent_id);
		kobo_otlp_random_id(x->span.trace_id, sizeof x->span.trace_id);
		kobo_otlp_hex(x->trace_id, x->span.trace_id, 16);
	}
	kobo_otlp_random_id(x->span.span_id, sizeof x->span.span_id);
	x->span.sampled = kobo_otlp_sample(x->span.trace_id, has_parent, parent_sampled);
	/* The span began when the request did (x->start_us, monotonic). */
	int64_t since_us = kobo_monotonic_us() - x->start_us;
	x->span.start_ns = kobo_otlp_now_ns() - (since_us > 0 ? since_us * 1000 : 0);

	char span_hex[17];
	kobo_otlp_hex(span_hex, x->span.span_id, 8);
	snprintf(x->traceparent, sizeof x->traceparent, "00-%s-%s-%s", x->trace_id, span_hex,
	         x->span.sampled ? "01" : "00");
	snprintf(x->span.path, sizeof x->span.path, "%s", url ? url : "");
}

/* "host", "host:port", "[v6]:port" → host and port (0 when none). */
static void split_host(const char *value, char *host, size_t size, int64_t *port)
{
	*port = 0;
	const char *end;
	const char *start = value;
	if (*value == '[') {
		start = value + 1;
		end = strchr(start, ']');
		if (!end) {
			snprintf(host, size, "%s", value);
			return;
		}
		if (end[1] == ':')
			*port = strtol(end + 2, NULL, 10);
	} else {
		end = strrchr(value, ':');
		if (end)
			*port = strtol(end + 1, NULL, 10);
		else
			end = value + strlen(value);
	}
	snprintf(host, size, "%.*s", (int)(end - start), start);
	if (*port < 0 || *port > 65535)
		*port = 0;
}

void kobo__http_span_write_begin(kobo_http_exchange *x)
{
	if (!x->span.sampled)
		return;
	x->span.write_start_ns = kobo_otlp_now_ns();
	kobo_request_trace *t = &x->request.trace;
	t->sampled = true;
	memcpy(t->trace_id, x->span.trace_id, sizeof t->trace_id);
	kobo_otlp_random_id(t->span_id, sizeof t->span_id);
}

void kobo__http_span_write_end(kobo_http_exchange *x, int status)
{
	if (x->span.sampled && x->span.write_start_ns) {
		x->span.write_end_ns = kobo_otlp_now_ns();
		x->span.write_status = status;
	}
}

void kobo__http_span_transfers(const kobo_http_exchange *x, uint32_t shard,
                               const kobo_op *ops, const kobo_result *results, size_t count)
{
	if (!x->span.sampled)
		return;
	/* A batch split over shards has no single shard write: from the
	 * request's start. */
	int64_t start_ns = x->span.write_start_ns ? x->span.write_start_ns : x->span.start_ns;
	int64_t now_ns = kobo_otlp_now_ns();
	size_t made = 0;
	for (size_t i = 0; i < count && made < KOBO_HTTP_TRANSFER_SPANS_MAX; i++) {
		const kobo_transfer *t = &results[i].transfer;
		if (ops[i].kind != KOBO_OP_CREATE_TRANSFER || results[i].code != KOBO_RESULT_CREATED ||
		    !results[i].has_transfer)
			continue;
		bool saga = t->leg == KOBO_LEG_DEBIT;
		bool expires = t->status == KOBO_STATUS_PENDING && t->expires_at_ms > 0;
		if (!saga && !expires)
			continue;
		kobo_otlp_span span;
		memset(&span, 0, sizeof span);
		memcpy(span.trace_id, x->span.trace_id, 16);
		memcpy(span.parent_id, x->span.span_id, 8);
		kobo_otlp_transfer_span_id(span.span_id, span.trace_id, t->id);
		span.kind = KOBO_OTLP_KIND_INTERNAL;
		span.start_ns = start_ns;
		span.end_ns = now_ns < start_ns ? start_ns : now_ns;
		snprintf(span.name, sizeof span.name, "transfer");
		kobo_otlp_attr_str(&span, "kobo.transfer_id", t->id);
		kobo_otlp_attr_int(&span, "kobo.shard", shard);
		kobo_otlp_attr_str(&span, "kobo.continues", saga ? "saga" : "hold");
		kobo_otlp_export(&span);
		made++;
	}
}

/* The "queue wait" child of the shard write span w. */
static void export_queue_span(const kobo_http_exchange *x, const kobo_otlp_span *w)
{
	int64_t taken_ns = x->request.trace.taken_ns;
	if (!taken_ns)
		return;
	kobo_otlp_span span;
	memset(&span, 0, sizeof span);
	memcpy(span.trace_id, w->trace_id, 16);
	memcpy(span.parent_id, w->span_id, 8);
	kobo_otlp_random_id(span.span_id, sizeof span.span_id);
	span.kind = KOBO_OTLP_KIND_INTERNAL;
	span.start_ns = w->start_ns;
	span.end_ns = taken_ns < w->start_ns ? w->start_ns : taken_ns > w->end_ns ? w->end_ns : taken_ns;
	snprintf(span.name, sizeof span.name, "queue wait");
	kobo_otlp_attr_int(&span, "kobo.shard", x->shard);
	kobo_otlp_export(&span);
}

/* The "shard write" child of the server span s, if the write was answered. */
static void export_write_span(const kobo_http_exchange *x, const kobo_otlp_span *server)
{
	if (!x->span.write_start_ns || !x->span.write_end_ns)
		return;
	const kobo_request_trace *t = &x->request.trace;
	kobo_otlp_span span;
	memset(&span, 0, sizeof span);
	memcpy(span.trace_id, server->trace_id, 16);
	memcpy(span.parent_id, server->span_id, 8);
	memcpy(span.span_id, t->span_id, 8);
	span.kind = KOBO_OTLP_KIND_INTERNAL;
	span.start_ns = x->span.write_start_ns;
	span.end_ns = x->span.write_end_ns;
	/* Within the parent, whatever the wall clock did meanwhile. */
	if (span.start_ns < server->start_ns)
		span.start_ns = server->start_ns;
	if (span.end_ns > server->end_ns)
		span.end_ns = server->end_ns;
	if (span.end_ns < span.start_ns)
		span.end_ns = span.start_ns;
	span.error = x->span.write_status != KOBO_OK;
	snprintf(span.name, sizeof span.name, "shard write");
	kobo_otlp_attr_int(&span, "kobo.shard", x->shard);
	kobo_otlp_attr_int(&span, "kobo.ops", (int64_t)x->ops.count);
	static const uint8_t none[8];
	if (memcmp(t->batch_span_id, none, sizeof none) != 0)
		kobo_otlp_link_add(&span, t->batch_trace_id, t->batch_span_id);
	kobo_otlp_export(&span);
	export_queue_span(x, &span);
}

void kobo__http_span_end(kobo_http_exchange *x, int status)
{
	if (!x->span.on || x->span.ended)
		return;
	x->span.ended = true;
	if (!x->span.sampled)
		return;

	kobo_otlp_span span; /* ~2.3 KB, copied into the exporter's ring */
	memset(&span, 0, sizeof span);
	kobo_otlp_span *s = &span;
	memcpy(s->trace_id, x->span.trace_id, 16);
	memcpy(s->span_id, x->span.span_id, 8);
	memcpy(s->parent_id, x->span.parent_id, 8);
	s->kind = KOBO_OTLP_KIND_SERVER;
	s->start_ns = x->span.start_ns;
	s->end_ns = kobo_otlp_now_ns();
	if (s->end_ns < s->start_ns)
		s->end_ns = s->start_ns;
	s->error = status >= 500;

	const char *method = x->method ? x->method : "";
	bool routed = x->route < kobo_http_route_count;
	if (routed)
		snprintf(s->name, sizeof s->name, "%s", kobo_http_routes[x->route].name);
	else
		snprintf(s->name, sizeof s->name, "%.16s", method);
	kobo_otlp_attr_str(s, "http.request.method", method);
	if (routed)
		kobo_otlp_attr_str(s, "http.route", kobo_http_routes[x->route].pattern);
	kobo_otlp_attr_int(s, "http.response.status_code", status);

	kobo_otlp_attr_str(s, "url.path", x->span.path);
	struct MHD_Connection *c = x->connection;
	const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
	if (host) {
		char name[KOBO_OTLP_ATTR_STR_MAX + 1];
		int64_t port;
		split_host(host, name, sizeof name, &port);
		kobo_otlp_attr_str(s, "server.address", name);
		if (port)
			kobo_otlp_attr_int(s, "server.port", port);
	}
	const union MHD_ConnectionInfo *info =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	if (info && info->client_addr) {
		char ip[INET6_ADDRSTRLEN] = "";
		const struct sockaddr *sa = info->client_addr;
		if (sa->sa_family == AF_INET)
			inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr,
			          ip, sizeof ip);
		else if (sa->sa_family == AF_INET6)
			inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr,
			          ip, sizeof ip);
		if (ip[0])
			kobo_otlp_attr_str(s, "client.address", ip);
	}
	kobo_otlp_attr_str(s, "kobo.request_id", x->request_id);
	kobo_otlp_export(s);
	export_write_span(x, s);
}
