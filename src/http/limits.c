/*
 * limits.c — the per-client-IP rate limit at the edge (GCRA, see
 * src/limit/gcra.h), and who the client is.
 *
 * Where it acts: arrive() (server.c) calls kobo__http_limit_arrive as soon
 * as the request line and headers have matched a route, before the body is
 * read into memory, parsed or anything is queued. A limited request is
 * answered 429 rate_limited (Retry-After, RateLimit-*); its body is read
 * and dropped (the lingering close of server.c) or, awaiting 100-continue
 * or announced past the lingering bound, answered at once; nothing of it
 * reaches a handler or a shard. /healthz, /readyz and /metrics are never limited.
 * A batch is charged 1 on arrival and, once its body is parsed and its size
 * known, the rest of its cost (kobo_gcra_batch_cost) before it is queued
 * (kobo__http_limit_batch).
 *
 * The client IP: the peer address of the connection; when the peer is in
 * a trusted proxy's network (--trusted-proxy), the last hop of the last
 * X-Forwarded-For header instead — the address that proxy saw, the only
 * one it vouches for (earlier hops are whatever the client wrote). A last
 * hop that is not a plain IPv4/IPv6 address leaves the peer address. The
 * key is the address text as inet_ntop writes it (an IPv4-mapped IPv6
 * peer counts as its IPv4 address), so one client has one key.
 *
 * Allowed requests carry RateLimit-Limit / -Remaining / -Reset too when
 * the limit is on (kobo__http_limit_headers).
 *
 * The per-key limit (--rate-limit R --rate-burst B) works the same way,
 * keyed by the API key's id, once auth.c has authenticated the request
 * (kobo__http_limit_key): so an unauthenticated flood is met by the per-IP
 * limit alone, before any key is checked. A request passes only when both
 * limits that apply let it through; each charges its own table (a request
 * the key limit refuses has still been charged to its IP: it arrived). A
 * batch's extra cost is charged to both. The RateLimit-* headers describe
 * the limit closer to refusing (fewer remaining), or the one that refused.
 */
#include "internal.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

int kobo_http_cidr_parse(const char *text, kobo_http_cidr *out)
{
	if (!text || !out)
		return KOBO_EINVAL;
	char address[INET6_ADDRSTRLEN + 1];
	const char *slash = strchr(text, '/');
	size_t len = slash ? (size_t)(slash - text) : strlen(text);
	if (len == 0 || len >= sizeof(address))
		return KOBO_EINVAL;
	memcpy(address, text, len);
	address[len] = '\0';
	kobo_http_cidr c = { 0 };
	unsigned bits;
	if (inet_pton(AF_INET, address, c.addr) == 1) {
		c.family = AF_INET;
		bits = 32;
	} else if (inet_pton(AF_INET6, address, c.addr) == 1) {
		c.family = AF_INET6;
		bits = 128;
	} else {
		return KOBO_EINVAL;
	}
	c.prefix = bits;
	if (slash) {
		const char *p = slash + 1;
		if (*p < '0' || *p > '9' || strlen(p) > 3)
			return KOBO_EINVAL;
		unsigned n = 0;
		for (; *p; p++) {
			if (*p < '0' || *p > '9')
				return KOBO_EINVAL;
			n = n * 10 + (unsigned)(*p - '0');
		}
		if (n > bits)
			return KOBO_EINVAL;
		c.prefix = n;
	}
	/* Host bits must be zero: "10.0.0.1/8" is most likely a typo. */
	for (unsigned i = c.prefix; i < bits; i++)
		if (c.addr[i / 8] & (0x80u >> (i % 8)))
			return KOBO_EINVAL;
	*out = c;
	return KOBO_OK;
}

static bool cidr_contains(const kobo_http_cidr *c, int family, const uint8_t *addr)
{
	if (c->family != family)
		return false;
	unsigned full = c->prefix / 8, rest = c->prefix % 8;
	if (memcmp(c->addr, addr, full) != 0)
		return false;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xffu << (8 - rest));
	return (c->addr[full] & mask) == (addr[full] & mask);
}

int kobo__http_limits_init(kobo_http_server *server, const kobo_http_config *config)
{
	if (config->trusted_proxy_count > KOBO_HTTP_TRUSTED_PROXIES_MAX ||
	    (config->trusted_proxy_count && !config->trusted_proxies))
		return KOBO_EINVAL;
	for (size_t i = 0; i < config->trusted_proxy_count; i++)
		server->trusted[i] = config->trusted_proxies[i];
	server->trusted_count = config->trusted_proxy_count;
	if (config->key_rate > 0 && !config->keyring)
		return KOBO_EINVAL; /* a per-key limit needs keys */
	int rc = KOBO_OK;
	if (config->ip_rate > 0)
		rc = kobo_gcra_create(config->ip_rate, config->ip_burst, KOBO_GCRA_KEYS_DEFAULT,
		                      &server->ip_limit);
	/* A table a little larger than the live keys: a live key is never
	 * evicted for lack of room (set-associative sets may still collide,
	 * gcra.h: then the key closest to idle restarts with a full burst). */
	if (rc == KOBO_OK && config->key_rate > 0)
		rc = kobo_gcra_create(config->key_rate, config->key_burst,
		                      KOBO_HTTP_KEY_LIMIT_SLOTS, &server->key_limit);
	if (rc != KOBO_OK)
		kobo__http_limits_free(server);
	return rc;
}

void kobo__http_limits_free(kobo_http_server *server)
{
	kobo_gcra_destroy(server->ip_limit);
	server->ip_limit = NULL;
	kobo_gcra_destroy(server->key_limit);
	server->key_limit = NULL;
}

static enum MHD_Result last_forwarded(void *cls, enum MHD_ValueKind kind,
                                      const char *key, const char *value)
{
	(void)kind;
	if (key && value && strcasecmp(key, "X-Forwarded-For") == 0)
		*(const char **)cls = value;
	return MHD_YES;
}

/* The last hop of the last X-Forwarded-For header, parsed; false when there
 * is none or it is not a plain address. */
static bool forwarded_for(struct MHD_Connection *c, int *family, uint8_t *addr)
{
	const char *value = NULL;
	MHD_get_connection_values(c, MHD_HEADER_KIND, last_forwarded, &value);
	if (!value)
		return false;
	const char *start = strrchr(value, ',');
	start = start ? start + 1 : value;
	while (*start == ' ' || *start == '\t')
		start++;
	size_t len = strlen(start);
	while (len && (start[len - 1] == ' ' || start[len - 1] == '\t'))
		len--;
	char hop[INET6_ADDRSTRLEN + 1];
	if (len == 0 || len >= sizeof(hop))
		return false;
	memcpy(hop, start, len);
	hop[len] = '\0';
	if (inet_pton(AF_INET, hop, addr) == 1) {
		*family = AF_INET;
		return true;
	}
	if (inet_pton(AF_INET6, hop, addr) == 1) {
		*family = AF_INET6;
		return true;
	}
	return false;
}

/* The client's address (see the top). false when the peer is unknown. */
static bool client_address(kobo_http_exchange *x, int *family, uint8_t *addr)
{
	const union MHD_ConnectionInfo *info = MHD_get_connection_info(
		x->connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	if (!info || !info->client_addr)
		return false;
	const struct sockaddr *sa = info->client_addr;
	if (sa->sa_family == AF_INET) {
		*family = AF_INET;
		memcpy(addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED(a6)) {
			*family = AF_INET;
			memcpy(addr, a6->s6_addr + 12, 4);
		} else {
			*family = AF_INET6;
			memcpy(addr, a6->s6_addr, 16);
		}
	} else {
		return false;
	}
	const kobo_http_server *server = x->server;
	for (size_t i = 0; i < server->trusted_count; i++) {
		if (cidr_contains(&server->trusted[i], *family, addr)) {
			int f;
			uint8_t a[16];
			if (forwarded_for(x->connection, &f, a)) {
				if (f == AF_INET6 && IN6_IS_ADDR_V4MAPPED((struct in6_addr *)a)) {
					f = AF_INET;
					memmove(a, a + 12, 4);
				}
				*family = f;
				memcpy(addr, a, 16);
			}
			break;
		}
	}
	return true;
}

/* Fills x's 429 from the decision that refused it (the IP's, or the
 * key's when by_key); returns KOBO_HTTP_REPLY_READY. */
static int limited(kobo_http_exchange *x, bool by_key)
{
	const kobo_gcra_decision *d = by_key ? &x->key_limit : &x->limit;
	if (by_key)
		kobo_metrics_rate_limited_key();
	else
		kobo_metrics_rate_limited_ip();
	kobo__http_fail(x, 429, "rate_limited",
	                by_key ? "too many requests with this API key; retry after "
	                         "Retry-After seconds"
	                       : "too many requests from this client IP; retry after "
	                         "Retry-After seconds");
	int64_t seconds = kobo_gcra_seconds_up(d->retry_after_us);
	x->reply.retry_after_s = seconds < 1 ? 1u
	                       : seconds > 86400 * 365 ? 86400u * 365 : (unsigned)seconds;
	return KOBO_HTTP_REPLY_READY;
}

static bool exempt(const kobo_http_exchange *x)
{
	kobo_http_handler h = kobo_http_routes[x->route].handler;
	return h == kobo__http_healthz || h == kobo__http_readyz || h == kobo__http_metrics;
}

bool kobo__http_limit_arrive(kobo_http_exchange *x)
{
	kobo_http_server *server = x->server;
	if (!server->ip_limit || exempt(x))
		return true;
	int family;
	uint8_t addr[16];
	if (!client_address(x, &family, addr))
		return true; /* no peer address: nothing to key on (not seen on TCP) */
	if (!inet_ntop(family, addr, x->client_ip, sizeof(x->client_ip)))
		return true;
	if (kobo_gcra_take(server->ip_limit, x->client_ip, strlen(x->client_ip), 1,
	                   kobo_monotonic_us(), &x->limit) != KOBO_OK)
		return true;
	x->limit_on = true;
	if (x->limit.allowed)
		return true;
	limited(x, false);
	return false;
}

bool kobo__http_limit_key(kobo_http_exchange *x)
{
	kobo_http_server *server = x->server;
	if (!server->key_limit || !x->key_id[0] || exempt(x))
		return true;
	if (kobo_gcra_take(server->key_limit, x->key_id, strlen(x->key_id), 1,
	                   kobo_monotonic_us(), &x->key_limit) != KOBO_OK)
		return true;
	x->key_limit_on = true;
	if (x->key_limit.allowed)
		return true;
	limited(x, true);
	return false;
}

int kobo__http_limit_batch(kobo_http_exchange *x, size_t transfers)
{
	uint32_t extra = kobo_gcra_batch_cost(transfers) - 1;
	if (extra == 0)
		return KOBO_OK;
	int64_t now_us = kobo_monotonic_us();
	if (x->limit_on &&
	    kobo_gcra_take(x->server->ip_limit, x->client_ip, strlen(x->client_ip), extra,
	                   now_us, &x->limit) == KOBO_OK && !x->limit.allowed) {
		limited(x, false);
		return KOBO_EOVERLOADED;
	}
	if (x->key_limit_on &&
	    kobo_gcra_take(x->server->key_limit, x->key_id, strlen(x->key_id), extra,
	                   now_us, &x->key_limit) == KOBO_OK && !x->key_limit.allowed) {
		limited(x, true);
		return KOBO_EOVERLOADED;
	}
	return KOBO_OK;
}

void kobo__http_limit_headers(const kobo_http_exchange *x, struct MHD_Response *response)
{
	const kobo_gcra_decision *d = NULL;
	if (x->limit_on)
		d = &x->limit;
	if (x->key_limit_on &&
	    (!d || (d->allowed && (!x->key_limit.allowed ||
	                           x->key_limit.remaining < d->remaining))))
		d = &x->key_limit;
	if (!d)
		return;
	char value[32];
	snprintf(value, sizeof(value), "%" PRIu32, d->limit);
	MHD_add_response_header(response, "RateLimit-Limit", value);
	snprintf(value, sizeof(value), "%" PRIu32, d->remaining);
	MHD_add_response_header(response, "RateLimit-Remaining", value);
	snprintf(value, sizeof(value), "%" PRId64, kobo_gcra_seconds_up(d->reset_us));
	MHD_add_response_header(response, "RateLimit-Reset", value);
}
