/*
 * test_http_auth.c — the edge's auth data and parser: every route in the
 * route table names its scope (a route added without one fails here), the
 * scopes are the ones API.md and the README promise, and
 * kobo_http_bearer_parse accepts exactly one "Bearer <token>".
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "../../src/auth/key.h"
#include "../../src/http/routes.h"
#include "../../src/http/server.h"

static void every_route_names_a_scope(void **state)
{
	(void)state;
	for (size_t i = 0; i < kobo_http_route_count; i++) {
		const kobo_http_route *r = &kobo_http_routes[i];
		uint32_t s = r->scope;
		bool one_scope = s != 0 && (s & (s - 1)) == 0 && (s & KOBO_SCOPES_ALL) == s;
		if (!one_scope && s != KOBO_HTTP_SCOPE_PUBLIC && s != KOBO_HTTP_SCOPE_METRICS)
			fail_msg("route %s names no scope (scope 0x%x): give it one in "
			         "src/http/routes.c", r->name, s);
	}
}

static void scopes_are_the_documented_ones(void **state)
{
	(void)state;
	static const struct {
		const char *name;
		uint32_t scope;
	} expected[] = {
		{ "POST /v1/accounts", KOBO_SCOPE_ACCOUNTS_WRITE },
		{ "GET /v1/accounts/{id}", KOBO_SCOPE_ACCOUNTS_READ },
		{ "GET /v1/accounts/{id}/transfers", KOBO_SCOPE_ACCOUNTS_READ },
		{ "POST /v1/transfers", KOBO_SCOPE_TRANSFERS_WRITE },
		{ "POST /v1/transfers/batch", KOBO_SCOPE_TRANSFERS_WRITE },
		{ "GET /v1/transfers/{id}", KOBO_SCOPE_TRANSFERS_READ },
		{ "GET /v1/transfers", KOBO_SCOPE_TRANSFERS_READ },
		{ "GET /v1/transfers/{id}/events", KOBO_SCOPE_TRANSFERS_READ },
		{ "POST /v1/transfers/{id}/post", KOBO_SCOPE_TRANSFERS_WRITE },
		{ "POST /v1/transfers/{id}/void", KOBO_SCOPE_TRANSFERS_WRITE },
		{ "GET /healthz", KOBO_HTTP_SCOPE_PUBLIC },
		{ "GET /readyz", KOBO_HTTP_SCOPE_PUBLIC },
		{ "GET /metrics", KOBO_HTTP_SCOPE_METRICS },
	};
	for (size_t e = 0; e < sizeof(expected) / sizeof(expected[0]); e++) {
		bool found = false;
		for (size_t i = 0; i < kobo_http_route_count; i++) {
			if (strcmp(kobo_http_routes[i].name, expected[e].name) != 0)
				continue;
			found = true;
			if (kobo_http_routes[i].scope != expected[e].scope)
				fail_msg("%s: scope 0x%x, expected 0x%x", expected[e].name,
				         kobo_http_routes[i].scope, expected[e].scope);
		}
		if (!found)
			fail_msg("route %s is gone from the table", expected[e].name);
	}
	/* Only /healthz and /readyz are public whatever the flags; every
	 * route under /v1 needs a key scope. */
	for (size_t i = 0; i < kobo_http_route_count; i++) {
		const kobo_http_route *r = &kobo_http_routes[i];
		if (strncmp(r->pattern, "/v1/", 4) == 0 &&
		    (r->scope & KOBO_SCOPES_ALL) != r->scope)
			fail_msg("%s is under /v1 but needs no key scope", r->name);
	}
}

static int parse(const char *value, const char **token, size_t *len)
{
	return kobo_http_bearer_parse(value, value ? strlen(value) : 0, token, len);
}

static void bearer_parse(void **state)
{
	(void)state;
	const char *token;
	size_t len;
	assert_int_equal(parse("Bearer abc", &token, &len), KOBO_OK);
	assert_int_equal(len, 3);
	assert_memory_equal(token, "abc", 3);
	assert_int_equal(parse("bearer x", &token, &len), KOBO_OK);
	assert_int_equal(parse("BEARER kobo_0123456789abcdef_00", &token, &len), KOBO_OK);
	assert_int_equal(len, 24);
	assert_int_equal(parse("BeArEr !~", &token, &len), KOBO_OK);

	const char *bad[] = {
		"", "Bearer", "Bearer ", "Bearer  abc", "Bearer abc def", "Bearer abc ",
		" Bearer abc", "Bearer\tabc", "Basic abc", "Bearerabc", "Bearer: abc",
		"Token abc", "Bearer ab\x01" "c", "Bearer caf\xc3\xa9", "Bearer abc\x7f",
		"Bearer abc,def", /* visible bytes only: one (long) token */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = parse(bad[i], &token, &len);
		if (i == sizeof(bad) / sizeof(bad[0]) - 1) {
			/* A comma is a visible byte: parsed as one token, which
			 * the key parser then refuses (not "kobo_…"). */
			assert_int_equal(rc, KOBO_OK);
			char id[KOBO_KEY_ID_LEN + 1], secret[KOBO_KEY_SECRET_LEN + 1];
			assert_int_equal(kobo_key_parse(token, len, id, secret), KOBO_EINVAL);
			continue;
		}
		if (rc != KOBO_EINVAL)
			fail_msg("accepted Authorization value \"%s\"", bad[i]);
	}
	assert_int_equal(parse(NULL, &token, &len), KOBO_EINVAL);

	/* A NUL inside the value (len counts it) is refused. */
	assert_int_equal(kobo_http_bearer_parse("Bearer a\0b", 10, &token, &len), KOBO_EINVAL);

	/* Length: the longest accepted, one more refused (a 10 KB key too). */
	static char value[KOBO_HTTP_AUTHORIZATION_LEN_MAX + 16];
	memcpy(value, "Bearer ", 7);
	memset(value + 7, 'k', sizeof(value) - 7);
	assert_int_equal(kobo_http_bearer_parse(value, KOBO_HTTP_AUTHORIZATION_LEN_MAX,
	                                        &token, &len), KOBO_OK);
	assert_int_equal(len, KOBO_HTTP_AUTHORIZATION_LEN_MAX - 7);
	assert_int_equal(kobo_http_bearer_parse(value, KOBO_HTTP_AUTHORIZATION_LEN_MAX + 1,
	                                        &token, &len), KOBO_EINVAL);

	/* A real key goes through both parsers. */
	assert_int_equal(kobo_auth_init(), KOBO_OK);
	kobo_api_key rec = { 0 };
	char text[KOBO_KEY_TEXT_LEN + 1], header[KOBO_KEY_TEXT_LEN + 8];
	assert_int_equal(kobo_key_generate(&rec, text), KOBO_OK);
	memcpy(header, "Bearer ", 7);
	memcpy(header + 7, text, sizeof(text));
	assert_int_equal(parse(header, &token, &len), KOBO_OK);
	char id[KOBO_KEY_ID_LEN + 1], secret[KOBO_KEY_SECRET_LEN + 1];
	assert_int_equal(kobo_key_parse(token, len, id, secret), KOBO_OK);
	assert_string_equal(id, rec.id);
	assert_true(kobo_key_verify(&rec, secret));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(every_route_names_a_scope),
		cmocka_unit_test(scopes_are_the_documented_ones),
		cmocka_unit_test(bearer_parse),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
