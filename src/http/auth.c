/*
 * auth.c — API keys at the edge: who is asking, and may they.
 *
 * Where it acts: arrive() (server.c) calls kobo__http_auth_arrive right
 * after the route matched and the per-IP limit let the request through
 * (so a flood of bad keys is limited per IP before any hash is computed),
 * before the body is read, parsed or anything queued. In order:
 *
 *   route's scope PUBLIC (or METRICS without --metrics-auth), or no key
 *   ring (--auth off)                          → go on, no key
 *   Authorization missing                      → 401 unauthenticated
 *   not exactly one "Bearer <token>" header    → 401 (error="invalid_token")
 *   token not a key, unknown id, revoked key,
 *   wrong secret                               → 401 (error="invalid_token")
 *   key lacks the route's scope (admin grants
 *   every scope)                               → 403 forbidden
 *   per-key limit exceeded                     → 429 rate_limited
 *   else                                       → go on; x->key_id set
 *
 * A refusal is answered like the per-IP 429 (server.c): a small body is
 * read and dropped, then answered; one awaiting 100-continue or announced
 * past the lingering bound is answered at once; nothing of it reaches a
 * handler, a shard or the ledger. Each is counted in
 * kobo_auth_failures_total{reason} (obs.h). Unknown, revoked and wrong
 * secret answer the same words, so an answer does not tell which ids
 * exist; only the metric tells them apart.
 *
 * The key check reads the key ring's in-memory view (src/auth/keyring.h):
 * no store round trip, no timer in the request path.
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#define REALM "Bearer realm=\"kobo\""

int kobo_http_bearer_parse(const char *value, size_t len, const char **token,
                           size_t *token_len)
{
	static const char scheme[] = "Bearer ";
	const size_t scheme_len = sizeof(scheme) - 1;
	if (!value || len <= scheme_len || len > KOBO_HTTP_AUTHORIZATION_LEN_MAX ||
	    strncasecmp(value, scheme, scheme_len - 1) != 0 || value[scheme_len - 1] != ' ')
		return KOBO_EINVAL;
	for (size_t i = scheme_len; i < len; i++) {
		unsigned char c = (unsigned char)value[i];
		if (c < 0x21 || c > 0x7e)
			return KOBO_EINVAL; /* a space (two tokens), control, non-ASCII */
	}
	*token = value + scheme_len;
	*token_len = len - scheme_len;
	return KOBO_OK;
}

/* Counts Authorization headers and keeps the first. */
typedef struct authorization {
	const char *value;
	size_t len;
	unsigned count;
} authorization;

static enum MHD_Result find_authorization(void *cls, enum MHD_ValueKind kind,
                                          const char *key, size_t key_size,
                                          const char *value, size_t value_size)
{
	(void)kind;
	authorization *a = cls;
	if (key && key_size == 13 && strncasecmp(key, "Authorization", 13) == 0) {
		if (a->count++ == 0) {
			a->value = value;
			a->len = value ? value_size : 0;
		}
	}
	return MHD_YES;
}

static bool refuse_auth(kobo_http_exchange *x, kobo_auth_failure reason,
                        const char *message)
{
	kobo_metrics_auth_failure(reason);
	if (reason == KOBO_AUTH_FAILURE_SCOPE) {
		kobo__http_fail(x, 403, "forbidden", message);
		x->www_authenticate = REALM ", error=\"insufficient_scope\"";
	} else {
		kobo__http_fail(x, 401, "unauthenticated", message);
		/* RFC 6750 3.1: no error code when no credentials were sent. */
		x->www_authenticate = reason == KOBO_AUTH_FAILURE_MISSING
		                      ? REALM : REALM ", error=\"invalid_token\"";
	}
	x->key_id[0] = '\0';
	x->key_scopes = 0;
	return false;
}

bool kobo__http_auth_arrive(kobo_http_exchange *x)
{
	kobo_http_server *server = x->server;
	uint32_t scope = kobo_http_routes[x->route].scope;
	kobo_assert(scope != 0); /* every route names one (routes.h) */
	if (scope == KOBO_HTTP_SCOPE_METRICS)
		scope = server->metrics_auth ? KOBO_SCOPE_ADMIN : KOBO_HTTP_SCOPE_PUBLIC;
	if (!server->keyring || scope == KOBO_HTTP_SCOPE_PUBLIC)
		return true;

	authorization a = { 0 };
	MHD_get_connection_values_n(x->connection, MHD_HEADER_KIND, find_authorization, &a);
	if (a.count == 0)
		return refuse_auth(x, KOBO_AUTH_FAILURE_MISSING,
		                   "this route needs an API key: Authorization: Bearer <key>");
	const char *token;
	size_t token_len;
	if (a.count > 1 || kobo_http_bearer_parse(a.value, a.len, &token, &token_len) != KOBO_OK)
		return refuse_auth(x, KOBO_AUTH_FAILURE_MALFORMED,
		                   "Authorization: expected exactly one header "
		                   "'Bearer <key>' (one space, one key)");
	kobo_api_key key;
	switch (kobo_keyring_authenticate(server->keyring, token, token_len, &key)) {
	case KOBO_KEYRING_OK:
		break;
	case KOBO_KEYRING_MALFORMED:
		return refuse_auth(x, KOBO_AUTH_FAILURE_MALFORMED,
		                   "Authorization: the bearer token is not a Kobo API key "
		                   "(kobo_<16 hex>_<64 hex>)");
	case KOBO_KEYRING_UNKNOWN:
		return refuse_auth(x, KOBO_AUTH_FAILURE_UNKNOWN,
		                   "invalid API key (unknown, revoked or wrong)");
	case KOBO_KEYRING_WRONG_SECRET:
		return refuse_auth(x, KOBO_AUTH_FAILURE_SECRET,
		                   "invalid API key (unknown, revoked or wrong)");
	}
	memcpy(x->key_id, key.id, sizeof(x->key_id));
	x->key_scopes = key.scopes;
	if (!kobo_scopes_grant(key.scopes, scope)) {
		char message[160];
		snprintf(message, sizeof(message), "this API key lacks the scope %s (or admin)",
		         kobo_scope_name(scope));
		refuse_auth(x, KOBO_AUTH_FAILURE_SCOPE, message);
		/* The key is known: name it in the refusal's log line. */
		memcpy(x->key_id, key.id, sizeof(x->key_id));
		x->key_scopes = key.scopes;
		return false;
	}
	return kobo__http_limit_key(x);
}
