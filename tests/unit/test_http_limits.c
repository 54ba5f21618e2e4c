/*
 * test_http_limits.c — kobo_http_cidr_parse (src/http/limits.c), the
 * parser behind kobod --trusted-proxy: IPv4 and IPv6, with or without a
 * prefix, host bits past the prefix refused, and every malformed form
 * refused without touching the output.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "../../src/http/server.h"

static void parses_good_networks(void **state)
{
	(void)state;
	static const struct {
		const char *text;
		int family;
		unsigned prefix;
		uint8_t first, last; /* addr[0], addr[prefix-byte or 3/15] */
	} good[] = {
		{ "127.0.0.1", AF_INET, 32, 127, 1 },
		{ "127.0.0.1/32", AF_INET, 32, 127, 1 },
		{ "10.0.0.0/8", AF_INET, 8, 10, 0 },
		{ "0.0.0.0/0", AF_INET, 0, 0, 0 },
		{ "192.168.4.0/22", AF_INET, 22, 192, 0 },
		{ "::1", AF_INET6, 128, 0, 1 },
		{ "::1/128", AF_INET6, 128, 0, 1 },
		{ "2001:db8::/32", AF_INET6, 32, 0x20, 0 },
		{ "::/0", AF_INET6, 0, 0, 0 },
	};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		kobo_http_cidr c;
		memset(&c, 0xaa, sizeof(c));
		if (kobo_http_cidr_parse(good[i].text, &c) != KOBO_OK)
			fail_msg("%s: refused", good[i].text);
		assert_int_equal(c.family, good[i].family);
		assert_int_equal(c.prefix, good[i].prefix);
		assert_int_equal(c.addr[0], good[i].first);
		assert_int_equal(c.addr[good[i].family == AF_INET ? 3 : 15], good[i].last);
	}
}

static void refuses_bad_networks(void **state)
{
	(void)state;
	static const char *const bad[] = {
		"", "/8", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/+8",
		"10.0.0.0/8/8", "10.0.0.0/08x", "10.0.0.1/8", "10.0.0.0/1000",
		"::1/129", "2001:db8::1/32", "example.com", "10.0.0", "10.0.0.256",
		" 10.0.0.0/8", "10.0.0.0 /8", "[::1]", "::1%lo",
		"0000000000000000000000000000000000000000000000000000000000:1/128",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		kobo_http_cidr c = { .family = 77 };
		if (kobo_http_cidr_parse(bad[i], &c) != KOBO_EINVAL)
			fail_msg("'%s': accepted", bad[i]);
		assert_int_equal(c.family, 77); /* untouched */
	}
	kobo_http_cidr c;
	assert_int_equal(kobo_http_cidr_parse(NULL, &c), KOBO_EINVAL);
	assert_int_equal(kobo_http_cidr_parse("::1", NULL), KOBO_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(parses_good_networks),
		cmocka_unit_test(refuses_bad_networks),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
