/*
 * key.c — API keys (key.h): generation, strict parsing, the keyed-hash
 * check, and the scopes' text form. libsodium does the randomness, the
 * hash and the constant-time compare.
 */
#include "key.h"

#include <sodium.h>
#include <string.h>

_Static_assert(KOBO_KEY_HASH_LEN == crypto_generichash_BYTES,
               "the stored hash is BLAKE2b-256");
_Static_assert(KOBO_KEY_SALT_LEN >= crypto_generichash_KEYBYTES_MIN &&
               KOBO_KEY_SALT_LEN <= crypto_generichash_KEYBYTES_MAX,
               "the salt is a valid BLAKE2b key");

/* The scope names, in bit order (bit i is names[i]). */
static const char *const scope_names[] = {
	"accounts:read", "accounts:write", "transfers:read", "transfers:write", "admin",
};
#define SCOPE_COUNT (sizeof(scope_names) / sizeof(scope_names[0]))
_Static_assert((1u << SCOPE_COUNT) - 1 == KOBO_SCOPES_ALL,
               "one name per scope bit");

int kobo_auth_init(void)
{
	/* 0: initialized now; 1: already was; -1: failed. Thread-safe. */
	return sodium_init() < 0 ? KOBO_EINVAL : KOBO_OK;
}

static const char hex_digits[] = "0123456789abcdef";

static void hex_encode(const uint8_t *bytes, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex_digits[bytes[i] >> 4];
		out[2 * i + 1] = hex_digits[bytes[i] & 0x0f];
	}
	out[2 * n] = '\0';
}

static bool lower_hex(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return false;
	}
	return true;
}

/* hash = BLAKE2b-256(secret, 64 bytes) keyed with salt. */
static void secret_hash(const uint8_t salt[KOBO_KEY_SALT_LEN], const char *secret,
                        uint8_t hash[KOBO_KEY_HASH_LEN])
{
	int rc = crypto_generichash(hash, KOBO_KEY_HASH_LEN,
	                            (const unsigned char *)secret, KOBO_KEY_SECRET_LEN,
	                            salt, KOBO_KEY_SALT_LEN);
	kobo_assert(rc == 0); /* fails only for out-of-range lengths */
}

int kobo_key_generate(kobo_api_key *rec, char text[KOBO_KEY_TEXT_LEN + 1])
{
	kobo_assert(rec != NULL && text != NULL);
	uint8_t id_bytes[KOBO_KEY_ID_LEN / 2];
	uint8_t secret_bytes[KOBO_KEY_SECRET_LEN / 2];
	char secret[KOBO_KEY_SECRET_LEN + 1];

	randombytes_buf(id_bytes, sizeof id_bytes);
	randombytes_buf(secret_bytes, sizeof secret_bytes);
	randombytes_buf(rec->salt, sizeof rec->salt);
	hex_encode(id_bytes, sizeof id_bytes, rec->id);
	hex_encode(secret_bytes, sizeof secret_bytes, secret);
	secret_hash(rec->salt, secret, rec->hash);

	memcpy(text, KOBO_KEY_PREFIX, KOBO_KEY_PREFIX_LEN);
	memcpy(text + KOBO_KEY_PREFIX_LEN, rec->id, KOBO_KEY_ID_LEN);
	text[KOBO_KEY_PREFIX_LEN + KOBO_KEY_ID_LEN] = '_';
	memcpy(text + KOBO_KEY_PREFIX_LEN + KOBO_KEY_ID_LEN + 1, secret, KOBO_KEY_SECRET_LEN);
	text[KOBO_KEY_TEXT_LEN] = '\0';

	sodium_memzero(secret_bytes, sizeof secret_bytes);
	sodium_memzero(secret, sizeof secret);
	return KOBO_OK;
}

int kobo_key_parse(const char *text, size_t len, char id[KOBO_KEY_ID_LEN + 1],
                   char secret[KOBO_KEY_SECRET_LEN + 1])
{
	kobo_assert(id != NULL && secret != NULL);
	id[0] = '\0';
	secret[0] = '\0';
	if (text == NULL || len != KOBO_KEY_TEXT_LEN)
		return KOBO_EINVAL;
	const char *id_at = text + KOBO_KEY_PREFIX_LEN;
	const char *secret_at = id_at + KOBO_KEY_ID_LEN + 1;
	if (memcmp(text, KOBO_KEY_PREFIX, KOBO_KEY_PREFIX_LEN) != 0 ||
	    id_at[KOBO_KEY_ID_LEN] != '_' ||
	    !lower_hex(id_at, KOBO_KEY_ID_LEN) ||
	    !lower_hex(secret_at, KOBO_KEY_SECRET_LEN))
		return KOBO_EINVAL;
	memcpy(id, id_at, KOBO_KEY_ID_LEN);
	id[KOBO_KEY_ID_LEN] = '\0';
	memcpy(secret, secret_at, KOBO_KEY_SECRET_LEN);
	secret[KOBO_KEY_SECRET_LEN] = '\0';
	return KOBO_OK;
}

bool kobo_key_verify(const kobo_api_key *rec, const char *secret)
{
	if (rec == NULL || secret == NULL || rec->revoked_at_ms != 0)
		return false;
	if (strnlen(secret, KOBO_KEY_SECRET_LEN + 1) != KOBO_KEY_SECRET_LEN)
		return false;
	uint8_t hash[KOBO_KEY_HASH_LEN];
	secret_hash(rec->salt, secret, hash);
	bool same = sodium_memcmp(hash, rec->hash, KOBO_KEY_HASH_LEN) == 0;
	sodium_memzero(hash, sizeof hash);
	return same;
}

int kobo_scopes_parse(const char *list, uint32_t *out)
{
	kobo_assert(out != NULL);
	if (list == NULL || list[0] == '\0')
		return KOBO_EINVAL;
	uint32_t scopes = 0;
	const char *p = list;
	for (;;) {
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		uint32_t bit = 0;
		for (size_t i = 0; i < SCOPE_COUNT; i++) {
			if (strlen(scope_names[i]) == n && memcmp(scope_names[i], p, n) == 0) {
				bit = 1u << i;
				break;
			}
		}
		if (bit == 0 || (scopes & bit) != 0)
			return KOBO_EINVAL; /* empty, unknown (spaces too), or twice */
		scopes |= bit;
		if (end == NULL)
			break;
		p = end + 1;
	}
	*out = scopes;
	return KOBO_OK;
}

size_t kobo_scopes_format(uint32_t scopes, char *buf, size_t size)
{
	size_t len = 0;
	for (size_t i = 0; i < SCOPE_COUNT; i++) {
		if ((scopes & (1u << i)) == 0)
			continue;
		const char *parts[2] = {len > 0 ? "," : "", scope_names[i]};
		for (size_t k = 0; k < 2; k++) {
			for (const char *c = parts[k]; *c; c++, len++)
				if (len + 1 < size)
					buf[len] = *c;
		}
	}
	if (size > 0)
		buf[len < size ? len : size - 1] = '\0';
	kobo_assert(len <= KOBO_SCOPES_TEXT_LEN_MAX);
	return len;
}

const char *kobo_scope_name(uint32_t scope)
{
	if (scope == 0)
		return "public";
	for (size_t i = 0; i < SCOPE_COUNT; i++)
		if (scope == 1u << i)
			return scope_names[i];
	return NULL;
}

bool kobo_key_name_valid(const char *name)
{
	if (name == NULL)
		return false;
	size_t n = 0;
	for (; name[n] != '\0'; n++) {
		if (n >= KOBO_KEY_NAME_LEN_MAX)
			return false;
		unsigned char c = (unsigned char)name[n];
		if (c < 0x20 || c > 0x7e)
			return false;
	}
	return n >= 1;
}
