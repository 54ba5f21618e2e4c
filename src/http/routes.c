/*
 * routes.c — the route table and the matcher (see routes.h).
 *
 * "batch" is a valid transfer id: GET /v1/transfers/batch reads transfer
 * "batch", while POST /v1/transfers/batch is the batch endpoint. The matcher
 * therefore considers every pattern that fits the path, and only then the
 * method, which also gives 405 its full Allow list.
 */
#include "routes.h"

#include <stdio.h>
#include <string.h>

#include "internal.h"

const kobo_http_route kobo_http_routes[] = {
	{ "POST", "/v1/accounts", kobo__http_create_account, KOBO_HTTP_BODY_MAX,
	  "POST /v1/accounts", false, KOBO_SCOPE_ACCOUNTS_WRITE },
	{ "GET", "/v1/accounts/{id}", kobo__http_get_account, KOBO_HTTP_BODY_MAX,
	  "GET /v1/accounts/{id}", true, KOBO_SCOPE_ACCOUNTS_READ },
	{ "GET", "/v1/accounts/{id}/transfers", kobo__http_get_history,
	  KOBO_HTTP_BODY_MAX, "GET /v1/accounts/{id}/transfers", true,
	  KOBO_SCOPE_ACCOUNTS_READ },
	{ "POST", "/v1/transfers", kobo__http_create_transfer, KOBO_HTTP_BODY_MAX,
	  "POST /v1/transfers", false, KOBO_SCOPE_TRANSFERS_WRITE },
	{ "POST", "/v1/transfers/batch", kobo__http_create_batch,
	  KOBO_HTTP_BATCH_BODY_MAX, "POST /v1/transfers/batch", false, KOBO_SCOPE_TRANSFERS_WRITE },
	{ "GET", "/v1/transfers", kobo__http_list_transfers, KOBO_HTTP_BODY_MAX,
	  "GET /v1/transfers", true, KOBO_SCOPE_TRANSFERS_READ },
	{ "GET", "/v1/transfers/{id}", kobo__http_get_transfer, KOBO_HTTP_BODY_MAX,
	  "GET /v1/transfers/{id}", true, KOBO_SCOPE_TRANSFERS_READ },
	{ "GET", "/v1/transfers/{id}/events", kobo__http_get_events, KOBO_HTTP_BODY_MAX,
	  "GET /v1/transfers/{id}/events", true, KOBO_SCOPE_TRANSFERS_READ },
	{ "POST", "/v1/transfers/{id}/post", kobo__http_post_transfer,
	  KOBO_HTTP_BODY_MAX, "POST /v1/transfers/{id}/post", false, KOBO_SCOPE_TRANSFERS_WRITE },
	{ "POST", "/v1/transfers/{id}/void", kobo__http_void_transfer,
	  KOBO_HTTP_BODY_MAX, "POST /v1/transfers/{id}/void", false, KOBO_SCOPE_TRANSFERS_WRITE },
	{ "GET", "/healthz", kobo__http_healthz, KOBO_HTTP_BODY_MAX, "GET /healthz", false,
	  KOBO_HTTP_SCOPE_PUBLIC },
	{ "GET", "/readyz", kobo__http_readyz, KOBO_HTTP_BODY_MAX, "GET /readyz", false,
	  KOBO_HTTP_SCOPE_PUBLIC },
	{ "GET", "/metrics", kobo__http_metrics, KOBO_HTTP_BODY_MAX, "GET /metrics", false,
	  KOBO_HTTP_SCOPE_METRICS },
};

const size_t kobo_http_route_count = sizeof(kobo_http_routes) / sizeof(kobo_http_routes[0]);

_Static_assert(sizeof(kobo_http_routes) / sizeof(kobo_http_routes[0]) <
               KOBO_METRICS_ROUTES_MAX, "metrics has a label for every route");

/* Does path fit pattern? On success *id and *id_len locate the {id} segment
 * (id_len 0 when the pattern has none). */
static bool pattern_fits(const char *pattern, const char *path, const char **id,
                         size_t *id_len)
{
	*id = NULL;
	*id_len = 0;
	while (*pattern) {
		if (strncmp(pattern, "{id}", 4) == 0) {
			size_t len = strcspn(path, "/");
			if (len == 0)
				return false;
			*id = path;
			*id_len = len;
			path += len;
			pattern += 4;
			continue;
		}
		if (*pattern != *path)
			return false;
		pattern++;
		path++;
	}
	return *path == '\0';
}

static void allow_add(char *allow, size_t size, const char *method)
{
	/* Methods are whole words: look for an exact entry. */
	size_t method_len = strlen(method);
	for (const char *p = allow; *p;) {
		size_t len = strcspn(p, ",");
		if (len == method_len && strncmp(p, method, len) == 0)
			return;
		p += len;
		while (*p == ',' || *p == ' ')
			p++;
	}
	size_t used = strlen(allow);
	snprintf(allow + used, size - used, "%s%s", used ? ", " : "", method);
}

int kobo_http_route_match(const char *method, const char *path,
                          kobo_http_match *m)
{
	memset(m, 0, sizeof(*m));
	bool path_known = false;
	for (size_t i = 0; i < kobo_http_route_count; i++) {
		const kobo_http_route *r = &kobo_http_routes[i];
		const char *id;
		size_t id_len;
		if (!pattern_fits(r->pattern, path, &id, &id_len))
			continue;
		path_known = true;
		allow_add(m->allow, sizeof(m->allow), r->method);
		if (strcmp(r->method, method) != 0)
			continue;
		if (id && !kobo_http_id_valid(id, id_len)) {
			kobo_http_error_set(&m->error, 400, "invalid_request",
			                    "id: must be 1-64 characters of A-Z a-z 0-9 . _ : @ - (path %.*s)",
			                    id_len > 64 ? 64 : (int)id_len, id);
			return KOBO_EINVAL;
		}
		if (id)
			memcpy(m->id, id, id_len);
		m->id[id ? id_len : 0] = '\0';
		m->route = i;
		m->allow[0] = '\0';
		return KOBO_OK;
	}
	if (path_known)
		return kobo_http_error_set(&m->error, 405, "method_not_allowed",
		                           "%.16s is not allowed here; allowed: %s",
		                           method, m->allow);
	m->allow[0] = '\0';
	return kobo_http_error_set(&m->error, 404, "not_found", "no such path");
}
