/*
 * test_auth.c — API keys (src/auth/key.h): generate → parse → verify; one
 * flipped character anywhere in the key fails; parse refuses every
 * malformed form (length, prefix, separator, uppercase, non-hex, extra
 * bytes, a NUL inside); a revoked record verifies nothing; the scopes' text
 * form round-trips and refuses empty lists and items, unknown names,
 * duplicates, spaces and trailing commas; key names.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "../../src/auth/key.h"

static int setup(void **state)
{
	(void)state;
	return kobo_auth_init() == KOBO_OK ? 0 : -1;
}

static void new_key(kobo_api_key *rec, char text[KOBO_KEY_TEXT_LEN + 1])
{
	memset(rec, 0, sizeof *rec);
	strcpy(rec->name, "test");
	rec->scopes = KOBO_SCOPE_ACCOUNTS_READ;
	assert_int_equal(kobo_key_generate(rec, text), KOBO_OK);
}

static void generate_parse_verify(void **state)
{
	(void)state;
	kobo_api_key rec;
	char text[KOBO_KEY_TEXT_LEN + 1];
	new_key(&rec, text);
	assert_int_equal(strlen(text), KOBO_KEY_TEXT_LEN);
	assert_memory_equal(text, "kobo_", 5);
	assert_string_equal(rec.name, "test"); /* the caller's fields stay */
	assert_int_equal(rec.scopes, KOBO_SCOPE_ACCOUNTS_READ);

	char id[KOBO_KEY_ID_LEN + 1], secret[KOBO_KEY_SECRET_LEN + 1];
	assert_int_equal(kobo_key_parse(text, strlen(text), id, secret), KOBO_OK);
	assert_string_equal(id, rec.id);
	assert_int_equal(strlen(secret), KOBO_KEY_SECRET_LEN);
	assert_memory_equal(text + 5 + KOBO_KEY_ID_LEN + 1, secret, KOBO_KEY_SECRET_LEN);
	assert_true(kobo_key_verify(&rec, secret));

	/* The stored hash is BLAKE2b-256 of the secret text keyed with the
	 * salt — not the secret, and not the same for two keys. */
	assert_memory_not_equal(rec.hash, secret, KOBO_KEY_HASH_LEN);
	kobo_api_key other;
	char other_text[KOBO_KEY_TEXT_LEN + 1];
	new_key(&other, other_text);
	assert_string_not_equal(other.id, rec.id);
	assert_string_not_equal(other_text, text);
	assert_memory_not_equal(other.salt, rec.salt, KOBO_KEY_SALT_LEN);
	char other_id[KOBO_KEY_ID_LEN + 1], other_secret[KOBO_KEY_SECRET_LEN + 1];
	assert_int_equal(kobo_key_parse(other_text, KOBO_KEY_TEXT_LEN, other_id,
	                                other_secret), KOBO_OK);
	assert_false(kobo_key_verify(&rec, other_secret));
	assert_false(kobo_key_verify(&other, secret));
	assert_true(kobo_key_verify(&other, other_secret));

	/* The same secret under another salt hashes differently. */
	kobo_api_key resalted = rec;
	resalted.salt[0] ^= 1;
	assert_false(kobo_key_verify(&resalted, secret));
	kobo_api_key rehashed = rec;
	rehashed.hash[KOBO_KEY_HASH_LEN - 1] ^= 0x80;
	assert_false(kobo_key_verify(&rehashed, secret));

	/* A revoked record verifies nothing, its own secret included. */
	kobo_api_key revoked = rec;
	revoked.revoked_at_ms = 1;
	assert_false(kobo_key_verify(&revoked, secret));

	/* Secrets of another length, or none. */
	assert_false(kobo_key_verify(&rec, ""));
	char shorter[KOBO_KEY_SECRET_LEN + 1];
	memcpy(shorter, secret, sizeof shorter);
	shorter[KOBO_KEY_SECRET_LEN - 1] = '\0';
	assert_false(kobo_key_verify(&rec, shorter));
	char longer[KOBO_KEY_SECRET_LEN + 2];
	memcpy(longer, secret, KOBO_KEY_SECRET_LEN);
	longer[KOBO_KEY_SECRET_LEN] = 'a';
	longer[KOBO_KEY_SECRET_LEN + 1] = '\0';
	assert_false(kobo_key_verify(&rec, longer));
	assert_false(kobo_key_verify(&rec, NULL));
	assert_false(kobo_key_verify(NULL, secret));
}

/* Each character of the key changed to another of the same class (a hex
 * digit to another hex digit, so the text still parses where it did):
 * either parse refuses it or verify does — never both accept. */
static void one_flipped_character_fails(void **state)
{
	(void)state;
	kobo_api_key rec;
	char text[KOBO_KEY_TEXT_LEN + 1];
	new_key(&rec, text);
	int parsed_but_refused = 0;
	for (size_t i = 0; i < KOBO_KEY_TEXT_LEN; i++) {
		char flipped[KOBO_KEY_TEXT_LEN + 1];
		memcpy(flipped, text, sizeof flipped);
		char c = flipped[i];
		flipped[i] = c == '0' ? '1' : (c >= '0' && c <= '9') ? '0' :
		             c == 'a' ? 'b' : (c >= 'a' && c <= 'f') ? 'a' : 'x';
		assert_int_not_equal(flipped[i], c);
		char id[KOBO_KEY_ID_LEN + 1], secret[KOBO_KEY_SECRET_LEN + 1];
		int rc = kobo_key_parse(flipped, KOBO_KEY_TEXT_LEN, id, secret);
		if (rc != KOBO_OK)
			continue; /* the prefix and separator */
		if (strcmp(id, rec.id) != 0) {
			parsed_but_refused++; /* another id: the ring finds no key */
			continue;
		}
		if (kobo_key_verify(&rec, secret))
			fail_msg("flipping character %zu still verifies", i);
		parsed_but_refused++;
	}
	assert_int_equal(parsed_but_refused, KOBO_KEY_ID_LEN + KOBO_KEY_SECRET_LEN);
}

static void expect_malformed(const char *text, size_t len)
{
	char id[KOBO_KEY_ID_LEN + 1] = "x", secret[KOBO_KEY_SECRET_LEN + 1] = "x";
	if (kobo_key_parse(text, len, id, secret) != KOBO_EINVAL)
		fail_msg("accepted a malformed key of %zu bytes: %.*s", len, (int)len, text);
	assert_string_equal(id, "");
	assert_string_equal(secret, "");
}

static void parse_refuses_malformed(void **state)
{
	(void)state;
	kobo_api_key rec;
	char good[KOBO_KEY_TEXT_LEN + 1];
	new_key(&rec, good);
	char buf[2 * KOBO_KEY_TEXT_LEN + 16];

	/* Lengths: empty, one short, one long, the whole key plus extra bytes
	 * (len counts them), and a length that stops before the end. */
	expect_malformed(good, 0);
	expect_malformed(NULL, KOBO_KEY_TEXT_LEN);
	expect_malformed(good, KOBO_KEY_TEXT_LEN - 1);
	memcpy(buf, good, KOBO_KEY_TEXT_LEN);
	memcpy(buf + KOBO_KEY_TEXT_LEN, "0", 2);
	expect_malformed(buf, KOBO_KEY_TEXT_LEN + 1);
	memcpy(buf + KOBO_KEY_TEXT_LEN, " ", 2);
	expect_malformed(buf, KOBO_KEY_TEXT_LEN + 1);
	memcpy(buf + KOBO_KEY_TEXT_LEN, "\r\n", 3);
	expect_malformed(buf, KOBO_KEY_TEXT_LEN + 2);
	memcpy(buf, good, KOBO_KEY_TEXT_LEN);
	memcpy(buf + KOBO_KEY_TEXT_LEN, good, KOBO_KEY_TEXT_LEN);
	expect_malformed(buf, 2 * KOBO_KEY_TEXT_LEN);
	/* A leading space (and the rest shifted) */
	buf[0] = ' ';
	memcpy(buf + 1, good, KOBO_KEY_TEXT_LEN);
	expect_malformed(buf, KOBO_KEY_TEXT_LEN);
	expect_malformed(buf, KOBO_KEY_TEXT_LEN + 1);

	/* Prefix and separator. */
	const char *prefixes[] = {"Kobo_", "KOBO_", "kobo-", "kobox", "obo_k", "kobo "};
	for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
		memcpy(buf, good, KOBO_KEY_TEXT_LEN);
		memcpy(buf, prefixes[i], 5);
		expect_malformed(buf, KOBO_KEY_TEXT_LEN);
	}
	const char separators[] = {'-', '.', ':', ' ', 'a', '0', '\0'};
	for (size_t i = 0; i < sizeof separators; i++) {
		memcpy(buf, good, KOBO_KEY_TEXT_LEN);
		buf[5 + KOBO_KEY_ID_LEN] = separators[i];
		expect_malformed(buf, KOBO_KEY_TEXT_LEN);
	}

	/* Every hex position: uppercase, non-hex letters and punctuation, a
	 * NUL, a byte above 0x7f. */
	const char bad[] = {'A', 'F', 'g', 'z', 'G', '_', ' ', '\0', '\t', (char)0xc3, (char)0xff, '+', '/', '='};
	for (size_t pos = 5; pos < KOBO_KEY_TEXT_LEN; pos++) {
		if (pos == 5 + KOBO_KEY_ID_LEN)
			continue;
		for (size_t b = 0; b < sizeof bad; b++) {
			memcpy(buf, good, KOBO_KEY_TEXT_LEN);
			buf[pos] = bad[b];
			expect_malformed(buf, KOBO_KEY_TEXT_LEN);
		}
	}

	/* The whole key uppercased. */
	memcpy(buf, good, KOBO_KEY_TEXT_LEN);
	for (size_t i = 5; i < KOBO_KEY_TEXT_LEN; i++)
		if (buf[i] >= 'a' && buf[i] <= 'f')
			buf[i] = (char)(buf[i] - 'a' + 'A');
	expect_malformed(buf, KOBO_KEY_TEXT_LEN);

	/* The id and secret swapped in length (right total, wrong shape). */
	memset(buf, 'a', KOBO_KEY_TEXT_LEN);
	memcpy(buf, "kobo_", 5);
	buf[5 + KOBO_KEY_SECRET_LEN] = '_';
	expect_malformed(buf, KOBO_KEY_TEXT_LEN);

	/* And the good key still parses after all that. */
	char id[KOBO_KEY_ID_LEN + 1], secret[KOBO_KEY_SECRET_LEN + 1];
	assert_int_equal(kobo_key_parse(good, KOBO_KEY_TEXT_LEN, id, secret), KOBO_OK);
}

static void scopes_round_trip(void **state)
{
	(void)state;
	char buf[KOBO_SCOPES_TEXT_LEN_MAX + 1];
	for (uint32_t scopes = 1; scopes <= KOBO_SCOPES_ALL; scopes++) {
		size_t n = kobo_scopes_format(scopes, buf, sizeof buf);
		assert_int_equal(n, strlen(buf));
		assert_true(n <= KOBO_SCOPES_TEXT_LEN_MAX);
		uint32_t back = 0;
		assert_int_equal(kobo_scopes_parse(buf, &back), KOBO_OK);
		assert_int_equal(back, scopes);
	}
	assert_int_equal(kobo_scopes_format(KOBO_SCOPES_ALL, buf, sizeof buf),
	                 KOBO_SCOPES_TEXT_LEN_MAX);
	assert_string_equal(buf, "accounts:read,accounts:write,transfers:read,"
	                         "transfers:write,admin");

	/* Any order parses; format gives the canonical order. */
	uint32_t s = 0;
	assert_int_equal(kobo_scopes_parse("admin,accounts:read", &s), KOBO_OK);
	assert_int_equal(s, KOBO_SCOPE_ADMIN | KOBO_SCOPE_ACCOUNTS_READ);
	kobo_scopes_format(s, buf, sizeof buf);
	assert_string_equal(buf, "accounts:read,admin");
	assert_int_equal(kobo_scopes_parse("transfers:write", &s), KOBO_OK);
	assert_int_equal(s, KOBO_SCOPE_TRANSFERS_WRITE);

	/* Bits outside the set are ignored; none gives "". */
	kobo_scopes_format(0, buf, sizeof buf);
	assert_string_equal(buf, "");
	kobo_scopes_format(0x20u | KOBO_SCOPE_ADMIN, buf, sizeof buf);
	assert_string_equal(buf, "admin");

	/* Truncation as snprintf: the length of the whole text comes back. */
	char small[8];
	assert_int_equal(kobo_scopes_format(KOBO_SCOPE_ACCOUNTS_READ | KOBO_SCOPE_ADMIN,
	                                    small, sizeof small), 19);
	assert_string_equal(small, "account");
	assert_int_equal(kobo_scopes_format(KOBO_SCOPE_ADMIN, small, 0), 5);
	assert_int_equal(kobo_scopes_format(KOBO_SCOPE_ADMIN, small, 1), 5);
	assert_string_equal(small, "");
	char exact[6];
	assert_int_equal(kobo_scopes_format(KOBO_SCOPE_ADMIN, exact, sizeof exact), 5);
	assert_string_equal(exact, "admin");
}

static void scopes_refused(void **state)
{
	(void)state;
	const char *bad[] = {
		"", ",", "admin,", ",admin", "admin,,accounts:read", "admin,admin",
		"accounts:read,transfers:read,accounts:read", "root", "Admin", "ADMIN",
		"accounts", "accounts:", "accounts:read ", " admin", "admin, accounts:read",
		"accounts:read;admin", "accounts:readx", "admi", "admin\n", "*",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		uint32_t out = 0xdeadu;
		if (kobo_scopes_parse(bad[i], &out) != KOBO_EINVAL)
			fail_msg("accepted scopes \"%s\"", bad[i]);
		assert_int_equal(out, 0xdeadu); /* untouched */
	}
	uint32_t out = 0;
	assert_int_equal(kobo_scopes_parse(NULL, &out), KOBO_EINVAL);
}

static void scope_names_and_grants(void **state)
{
	(void)state;
	assert_string_equal(kobo_scope_name(0), "public");
	assert_string_equal(kobo_scope_name(KOBO_SCOPE_TRANSFERS_READ), "transfers:read");
	assert_string_equal(kobo_scope_name(KOBO_SCOPE_ADMIN), "admin");
	assert_null(kobo_scope_name(KOBO_SCOPE_ADMIN | KOBO_SCOPE_ACCOUNTS_READ));
	assert_null(kobo_scope_name(0x20u));

	assert_true(kobo_scopes_grant(KOBO_SCOPE_ACCOUNTS_READ, 0));
	assert_true(kobo_scopes_grant(KOBO_SCOPE_ACCOUNTS_READ, KOBO_SCOPE_ACCOUNTS_READ));
	assert_false(kobo_scopes_grant(KOBO_SCOPE_ACCOUNTS_READ, KOBO_SCOPE_ACCOUNTS_WRITE));
	assert_false(kobo_scopes_grant(KOBO_SCOPE_TRANSFERS_READ, KOBO_SCOPE_TRANSFERS_WRITE));
	for (uint32_t bit = 1; bit <= KOBO_SCOPE_ADMIN; bit <<= 1)
		assert_true(kobo_scopes_grant(KOBO_SCOPE_ADMIN, bit));
	assert_false(kobo_scopes_grant(KOBO_SCOPES_ALL & ~KOBO_SCOPE_ADMIN, KOBO_SCOPE_ADMIN));
}

static void key_names(void **state)
{
	(void)state;
	char longest[KOBO_KEY_NAME_LEN_MAX + 2];
	memset(longest, 'n', sizeof longest);
	longest[KOBO_KEY_NAME_LEN_MAX] = '\0';
	assert_true(kobo_key_name_valid(longest));
	longest[KOBO_KEY_NAME_LEN_MAX] = 'n';
	longest[KOBO_KEY_NAME_LEN_MAX + 1] = '\0';
	assert_false(kobo_key_name_valid(longest));
	assert_true(kobo_key_name_valid("a"));
	assert_true(kobo_key_name_valid("payments service (prod) #2 ~ok"));
	assert_false(kobo_key_name_valid(""));
	assert_false(kobo_key_name_valid(NULL));
	assert_false(kobo_key_name_valid("tab\there"));
	assert_false(kobo_key_name_valid("line\n"));
	assert_false(kobo_key_name_valid("caf\xc3\xa9"));
	assert_false(kobo_key_name_valid("del\x7f"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(generate_parse_verify),
		cmocka_unit_test(one_flipped_character_fails),
		cmocka_unit_test(parse_refuses_malformed),
		cmocka_unit_test(scopes_round_trip),
		cmocka_unit_test(scopes_refused),
		cmocka_unit_test(scope_names_and_grants),
		cmocka_unit_test(key_names),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
