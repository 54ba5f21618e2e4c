/*
 * apikey.h — the API key record: what a store keeps of a key, and the scopes.
 *
 * A key's secret never reaches a store. The client holds
 *
 *     kobo_<id>_<secret>       id: KOBO_KEY_ID_LEN lowercase hex (64 random bits)
 *                              secret: 64 lowercase hex (256 random bits)
 *
 * and a store holds only the id, a random salt and BLAKE2b-256(secret) keyed
 * with that salt (libsodium crypto_generichash), compared in constant time
 * (src/auth/key.h does the work). The id is public: transfers and accounts
 * name the key that created them by it (created_by), logs carry it.
 *
 * Keys live in shard 0's store (every node of a deployment reads the same
 * rows); other shards' stores have the table and leave it empty.
 */
#ifndef KOBO_APIKEY_H
#define KOBO_APIKEY_H

#include <stdbool.h>
#include <stdint.h>

#include "core.h"

#define KOBO_KEY_NAME_LEN_MAX 64   /* name: 1..64 printable ASCII */
#define KOBO_KEY_SALT_LEN 16
#define KOBO_KEY_HASH_LEN 32
#define KOBO_KEY_SECRET_LEN 64     /* hex characters */
#define KOBO_KEYS_MAX 10000        /* live (unrevoked) keys of a deployment */

/* Scopes, a bit each. A route names the one it needs (src/http/routes.c);
 * ADMIN grants every scope. */
typedef enum kobo_scope {
	KOBO_SCOPE_ACCOUNTS_READ = 1u << 0,   /* "accounts:read" */
	KOBO_SCOPE_ACCOUNTS_WRITE = 1u << 1,  /* "accounts:write" */
	KOBO_SCOPE_TRANSFERS_READ = 1u << 2,  /* "transfers:read" */
	KOBO_SCOPE_TRANSFERS_WRITE = 1u << 3, /* "transfers:write" */
	KOBO_SCOPE_ADMIN = 1u << 4,           /* "admin" */
} kobo_scope;

#define KOBO_SCOPES_ALL 0x1fu

typedef struct kobo_api_key {
	char id[KOBO_KEY_ID_LEN + 1];
	char name[KOBO_KEY_NAME_LEN_MAX + 1];
	uint32_t scopes;               /* kobo_scope bits, non-zero */
	uint8_t salt[KOBO_KEY_SALT_LEN];
	uint8_t hash[KOBO_KEY_HASH_LEN];
	int64_t created_at_ms;         /* Unix epoch milliseconds, UTC */
	int64_t revoked_at_ms;         /* 0: live */
} kobo_api_key;

#endif /* KOBO_APIKEY_H */
