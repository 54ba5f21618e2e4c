/*
 * fuzz_auth.c — libFuzzer target for what the edge reads of a client's API
 * key: the Authorization header (kobo_http_bearer_parse), the key text
 * (kobo_key_parse) and, for the CLI, a scopes list (kobo_scopes_parse) and
 * a key name (kobo_key_name_valid).
 *
 * The first byte picks the input, the rest is it:
 *   0 an Authorization value (exact-size buffer, as libmicrohttpd gives its
 *     length), then the bearer token to the key parser
 *   1 a key text straight to the key parser (exact size)
 *   2 a scopes list (C string): accepted lists format back to a list that
 *     parses to the same bits
 *   3 a key name (C string)
 * Every acceptance is checked against the rule it claims; must never
 * crash, read past the input or trip a sanitizer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/auth/key.h"
#include "../../src/http/server.h"

static bool lower_hex(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

static void fuzz_key(const char *text, size_t len)
{
	char id[KOBO_KEY_ID_LEN + 1], secret[KOBO_KEY_SECRET_LEN + 1];
	if (kobo_key_parse(text, len, id, secret) != KOBO_OK) {
		if (id[0] || secret[0])
			abort(); /* a refusal leaves both empty */
		return;
	}
	/* Accepted: exactly "kobo_" + id + "_" + secret, lowercase hex. */
	if (len != KOBO_KEY_TEXT_LEN || memcmp(text, "kobo_", 5) != 0 ||
	    strlen(id) != KOBO_KEY_ID_LEN || strlen(secret) != KOBO_KEY_SECRET_LEN ||
	    memcmp(text + 5, id, KOBO_KEY_ID_LEN) != 0 || text[5 + KOBO_KEY_ID_LEN] != '_' ||
	    memcmp(text + 6 + KOBO_KEY_ID_LEN, secret, KOBO_KEY_SECRET_LEN) != 0 ||
	    !lower_hex(id, KOBO_KEY_ID_LEN) || !lower_hex(secret, KOBO_KEY_SECRET_LEN))
		abort();
	/* A record with no relation to it verifies nothing. */
	static const kobo_api_key unrelated = { .id = "0000000000000000", .scopes = 1 };
	if (kobo_key_verify(&unrelated, secret))
		abort();
}

static void fuzz_authorization(const char *value, size_t len)
{
	const char *token;
	size_t token_len;
	if (kobo_http_bearer_parse(value, len, &token, &token_len) != KOBO_OK)
		return;
	if (len > KOBO_HTTP_AUTHORIZATION_LEN_MAX || token_len < 1 || token != value + 7 ||
	    token_len != len - 7)
		abort();
	for (size_t i = 0; i < token_len; i++)
		if ((unsigned char)token[i] < 0x21 || (unsigned char)token[i] > 0x7e)
			abort();
	fuzz_key(token, token_len);
}

static void fuzz_scopes(const char *list)
{
	uint32_t scopes = 0xdead;
	if (kobo_scopes_parse(list, &scopes) != KOBO_OK) {
		if (scopes != 0xdead)
			abort(); /* untouched on refusal */
		return;
	}
	if (scopes == 0 || (scopes & ~KOBO_SCOPES_ALL) != 0)
		abort();
	char text[KOBO_SCOPES_TEXT_LEN_MAX + 1];
	size_t n = kobo_scopes_format(scopes, text, sizeof(text));
	uint32_t again = 0;
	if (n != strlen(text) || kobo_scopes_parse(text, &again) != KOBO_OK || again != scopes)
		abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return kobo_auth_init() == KOBO_OK ? 0 : 1; /* verify hashes */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t kind = data[0] % 4;
	size_t len = size - 1;
	/* Exact-size copies, so ASan catches a read past the end. */
	char *input = malloc(len + 1);
	if (!input)
		return 0;
	memcpy(input, data + 1, len);
	if (kind == 0) {
		fuzz_authorization(input, len);
	} else if (kind == 1) {
		fuzz_key(input, len);
	} else {
		input[len] = '\0';
		if (kind == 2) {
			fuzz_scopes(input);
		} else {
			bool valid = kobo_key_name_valid(input);
			size_t n = strlen(input);
			if (valid && (n < 1 || n > KOBO_KEY_NAME_LEN_MAX))
				abort();
		}
	}
	free(input);
	return 0;
}
