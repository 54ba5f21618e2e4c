/*
 * key.h — API keys: making one, reading the text a client sends, checking
 * it against the stored record, and the scope list's text form.
 *
 * Pure apart from libsodium: no I/O, no clocks, no locks, no allocation.
 * The record a store keeps is kobo_api_key (src/core/apikey.h); the key a
 * client holds is the text
 *
 *     kobo_<id>_<secret>     id: KOBO_KEY_ID_LEN lowercase hex (64 random bits)
 *                            secret: KOBO_KEY_SECRET_LEN lowercase hex (256 bits)
 *
 * and the record holds only id, a random salt and
 *
 *     hash = BLAKE2b-256(secret text, 64 bytes) keyed with salt (16 bytes)
 *          = crypto_generichash(hash, 32, secret, 64, salt, 16)
 *
 * compared with sodium_memcmp (constant time). The secret is shown once, at
 * kobo_key_generate; nothing can recover it from the record. Why keyed
 * BLAKE2b and not a slow password hash: the secret has 256 random bits, so
 * no dictionary applies, and a check must cost microseconds on every
 * request; the per-key salt keeps two records with one secret unlinkable.
 *
 * Scopes' text form (the CLI's --scopes, its JSON output, logs):
 * a comma-separated list of scope names, no spaces, at least one, e.g.
 * "accounts:read,admin". Parsing is strict: an empty list, an empty item
 * (a trailing or doubled comma), an unknown name, a name given twice, or
 * any space is refused (KOBO_EINVAL). Formatting writes the names in the
 * order of the kobo_scope bits, so parse → format gives a canonical form.
 *
 * Thread safety: after kobo_auth_init() returned KOBO_OK, every function
 * here may be called from any number of threads.
 */
#ifndef KOBO_AUTH_KEY_H
#define KOBO_AUTH_KEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/apikey.h"

#define KOBO_KEY_PREFIX "kobo_"
#define KOBO_KEY_PREFIX_LEN 5
#define KOBO_KEY_TEXT_LEN (5 + KOBO_KEY_ID_LEN + 1 + KOBO_KEY_SECRET_LEN) /* "kobo_<id>_<secret>" */
/* The longest scopes text: every name, in bit order, with commas
 * ("accounts:read,accounts:write,transfers:read,transfers:write,admin"). */
#define KOBO_SCOPES_TEXT_LEN_MAX 65

_Static_assert(sizeof(KOBO_KEY_PREFIX) - 1 == KOBO_KEY_PREFIX_LEN,
               "the key text's prefix is kobo_");
_Static_assert(KOBO_KEY_ID_LEN % 2 == 0 && KOBO_KEY_SECRET_LEN % 2 == 0,
               "id and secret are hex of whole random bytes");
_Static_assert(KOBO_KEY_SECRET_LEN / 2 >= 16,
               "a key carries at least 128 random bits");

/* Initializes libsodium (sodium_init), once per process; later calls do
 * nothing more and return KOBO_OK again. Call it before any other function
 * here (kobod and kobo do, at start). Returns KOBO_OK, or KOBO_EINVAL when
 * libsodium cannot initialize (no usable randomness source). */
int kobo_auth_init(void);

/* Makes a new key. Fills rec->id (KOBO_KEY_ID_LEN random lowercase hex),
 * rec->salt (random) and rec->hash (of a new random secret); rec->name,
 * scopes, created_at_ms and revoked_at_ms are the caller's and are left as
 * they are. Writes the whole key "kobo_<id>_<secret>" into text,
 * NUL-terminated: the only copy of the secret — show it once, store only
 * rec. The secret is wiped from this function's memory before it returns.
 * rec and text: the caller's, non-NULL. Returns KOBO_OK (randomness
 * cannot fail once kobo_auth_init succeeded). A store refusing rec->id as
 * taken (KOBO_ECONFLICT: 2^-64 per pair) means: generate again. */
int kobo_key_generate(kobo_api_key *rec, char text[KOBO_KEY_TEXT_LEN + 1]);

/* Reads a key's text, strictly: exactly len bytes (text need not be
 * NUL-terminated and may hold NUL bytes, which are refused) of the form
 * "kobo_" + KOBO_KEY_ID_LEN lowercase hex + "_" + KOBO_KEY_SECRET_LEN
 * lowercase hex. On KOBO_OK, id and secret (the caller's) hold the two
 * parts, NUL-terminated. KOBO_EINVAL for anything else (another length,
 * prefix or separator, an uppercase or non-hex character); id and secret
 * are then left empty (""). Constant-time it is not, and need not be: the
 * format is public; only verify compares a secret. */
int kobo_key_parse(const char *text, size_t len, char id[KOBO_KEY_ID_LEN + 1],
                   char secret[KOBO_KEY_SECRET_LEN + 1]);

/* True when secret (NUL-terminated, as kobo_key_parse gives it) is the
 * secret of rec: its keyed hash equals rec->hash, compared in constant time
 * (sodium_memcmp). False for a secret of another length and for a revoked
 * record (rec->revoked_at_ms != 0), whatever the secret. The caller found
 * rec by the parsed id; rec->id is not compared here. */
bool kobo_key_verify(const kobo_api_key *rec, const char *secret);

/* Parses a NUL-terminated scopes list (the form above) into kobo_scope
 * bits: *out is set only on KOBO_OK, and is then non-zero. KOBO_EINVAL for
 * NULL, empty, unknown, duplicated or empty items, or spaces. */
int kobo_scopes_parse(const char *list, uint32_t *out);

/* Writes the scopes text of scopes (names in bit order, comma-separated;
 * bits outside KOBO_SCOPES_ALL are ignored, no bits gives "") into buf of
 * size bytes, NUL-terminated and truncated to fit, as snprintf does (size 0
 * writes nothing). Returns the length of the whole text, without the NUL:
 * at most KOBO_SCOPES_TEXT_LEN_MAX, so a buffer of that + 1 always fits. */
size_t kobo_scopes_format(uint32_t scopes, char *buf, size_t size);

/* The name of one scope bit ("accounts:read", …; "public" for 0, which
 * routes use for "no key needed"), static; NULL for anything else. */
const char *kobo_scope_name(uint32_t scope);

/* True when name (NUL-terminated) is a valid key name: 1 to
 * KOBO_KEY_NAME_LEN_MAX bytes, each printable ASCII (0x20..0x7e). */
bool kobo_key_name_valid(const char *name);

/* True when a key with scopes grants scope: scope is 0 (a public route),
 * the key has that bit, or the key has KOBO_SCOPE_ADMIN. */
static inline bool kobo_scopes_grant(uint32_t scopes, uint32_t scope)
{
	return scope == 0 || (scopes & (scope | KOBO_SCOPE_ADMIN)) != 0;
}

#endif /* KOBO_AUTH_KEY_H */
