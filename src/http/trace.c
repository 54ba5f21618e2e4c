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
 * A write that went through a shard also gets a child span (kind INTERNAL,
 * "shard write": from kobo_shard_submit until the writer answered, i.e. the
 * queue wait and the batch commit; attributes kobo.shard, kobo.ops; ERROR
 * when the shard failed the batch). Built on the HTTP thread at the end;
 * the writer thread only reads the clock.
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
	if (x->span.sampled)
		x->span.write_start_ns = kobo_otlp_now_ns();
}

void kobo__http_span_write_end(kobo_http_exchange *x, int status)
{
	if (x->span.sampled && x->span.write_start_ns) {
		x->span.write_end_ns = kobo_otlp_now_ns();
		x->span.write_status = status;
	}
}

/* The "shard write" child of the server span s, if the write was answered. */
static void export_write_span(const kobo_http_exchange *x, const kobo_otlp_span *server)
{
	if (!x->span.write_start_ns || !x->span.write_end_ns)
		return;
	kobo_otlp_span span;
	memset(&span, 0, sizeof span);
	memcpy(span.trace_id, server->trace_id, 16);
	memcpy(span.parent_id, server->span_id, 8);
	kobo_otlp_random_id(span.span_id, sizeof span.span_id);
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
	kobo_otlp_export(&span);
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
