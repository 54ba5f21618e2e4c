/*
 * routes.h — the route table: every route Kobo serves, as data.
 *
 * Dispatch, method checks (405 with Allow), body limits (413) and path id
 * validation happen in one place (server.c, through kobo_http_route_match)
 * before any handler runs; handlers only build ops or read.
 */
#ifndef KOBO_HTTP_ROUTES_H
#define KOBO_HTTP_ROUTES_H

#include <stddef.h>

#include "../core/apikey.h"
#include "codec.h"

typedef struct kobo_http_exchange kobo_http_exchange;

/* Runs once the whole body has arrived. Either fills x->reply and returns
 * KOBO_HTTP_REPLY_READY, or hands the request to a shard and returns
 * KOBO_HTTP_REPLY_LATER (the shard's done callback fills the reply). */
typedef int (*kobo_http_handler)(kobo_http_exchange *x);

enum {
	KOBO_HTTP_REPLY_READY = 0,
	KOBO_HTTP_REPLY_LATER = 1,
};

typedef struct kobo_http_route {
	const char *method;  /* "GET", "POST" */
	const char *pattern; /* "/v1/accounts/{id}": {id} is one path segment */
	kobo_http_handler handler;
	size_t body_max;     /* bytes; larger bodies answer 413 */
	const char *name;    /* "GET /v1/accounts/{id}": logs and metrics */
	/* A GET that reads accounts or transfers: it takes a
	 * Kobo-Consistency-Token and may read a replica (replicas.c). */
	bool reads_ledger;
	/* What a request's API key must grant (auth.c): one kobo_scope bit
	 * (src/core/apikey.h; KOBO_SCOPE_ADMIN grants all), or
	 * KOBO_HTTP_SCOPE_PUBLIC / KOBO_HTTP_SCOPE_METRICS. Never 0: every
	 * route names its scope (a unit test checks the table). */
	uint32_t scope;
} kobo_http_route;

/* No key needed (/healthz, /readyz), whatever --auth says. */
#define KOBO_HTTP_SCOPE_PUBLIC (1u << 30)
/* /metrics: public, or admin with kobod --metrics-auth required. */
#define KOBO_HTTP_SCOPE_METRICS (1u << 31)

/* The table, in match order (literal segments before {id} where both could
 * match), and its length. Static for the life of the process. */
extern const kobo_http_route kobo_http_routes[];
extern const size_t kobo_http_route_count;

/* The outcome of matching a request line. */
typedef struct kobo_http_match {
	size_t route;                 /* index into kobo_http_routes when status 0 */
	char id[KOBO_ID_LEN_MAX + 1]; /* the {id} segment, validated, or "" */
	char allow[64];               /* for 405: "GET, POST" */
	kobo_http_error error;        /* status 0: matched; else 400, 404 or 405 */
} kobo_http_match;

/* Matches method and path (already percent-decoded, without the query) to a
 * route. Returns KOBO_OK with m->route and m->id, or KOBO_EINVAL with
 * m->error: 404 not_found for an unknown path, 405 method_not_allowed (and
 * m->allow) for a known path with another method, 400 invalid_request when
 * the {id} segment breaks the id rule. Pure. */
int kobo_http_route_match(const char *method, const char *path,
                          kobo_http_match *m);

#endif /* KOBO_HTTP_ROUTES_H */
