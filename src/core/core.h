/*
 * core.h — what every layer of Kobo shares, and nothing else: status codes,
 * the limits of ids and requests, the id hash, the bounded id table, and the
 * always-on assertion.
 *
 * It sits below the ledger (src/ledger), which includes it; nothing here
 * knows accounts, transfers or stores. A fact that two layers need lives
 * here once instead of in one layer's header that the others borrow.
 */
#ifndef KOBO_CORE_H
#define KOBO_CORE_H

#include <stddef.h>
#include <stdint.h>

/* ---- Limits (the one place they live; see also src/shard/shard.h). ---- */

#define KOBO_ID_LEN_MAX 64             /* id, from, to: 1..64 chars */
#define KOBO_CURRENCY_LEN_MAX 8        /* ^[A-Z][A-Z0-9]{2,7}$ */
#define KOBO_REQUEST_ID_LEN_MAX 128    /* X-Request-Id */
#define KOBO_TRACE_ID_LEN 32           /* W3C traceparent trace id: 32 lowercase hex */
#define KOBO_KEY_ID_LEN 16             /* API key id: 16 lowercase hex (apikey.h) */
#define KOBO_METADATA_BYTES_MAX 4096   /* serialized compact JSON object */
#define KOBO_BATCH_OPS_MAX 8190        /* ops one ledger batch may hold */
#define KOBO_TIMEOUT_SECONDS_MAX 31536000u /* one year: hold expiry cap */

_Static_assert(KOBO_BATCH_OPS_MAX >= 8190,
               "the batch endpoint promises 8,190 transfers in one atomic batch");

/* ---- Status codes shared by every module. 0 is success. ----
 *
 * The store's error kinds (store.h) say what a caller can do:
 *   KOBO_ECONFLICT   nothing was committed; re-run the whole batch
 *                    (a deadlock or serialization failure between nodes).
 *   KOBO_ECONNLOST   the connection to the store broke before commit was
 *                    asked: nothing was committed; reconnect and re-run.
 *   KOBO_EUNKNOWN    commit was asked and its outcome is unknown (a failed
 *                    fsync, a connection lost during COMMIT): the batch may
 *                    or may not be durable. Resolve by looking the ids up,
 *                    or answer 503 "retry with the same id".
 *   KOBO_ESTORE      any other storage failure: permanent for this batch.
 *   KOBO_EFAILED     the store is in its sticky error state (store.h).
 */
enum {
	KOBO_OK = 0,
	KOBO_ENOMEM = -1,      /* allocation failed (only at create time) */
	KOBO_EFULL = -2,       /* a fixed capacity was exhausted */
	KOBO_EINVAL = -3,      /* a caller broke a documented precondition */
	KOBO_ESTORE = -4,      /* storage failed; see above and store.h */
	KOBO_EFAILED = -5,     /* store is in its sticky error state */
	KOBO_EOVERLOADED = -6, /* a bounded queue is full */
	KOBO_ENOTFOUND = -7,   /* a read found nothing */
	KOBO_ESHUTDOWN = -8,   /* the component is stopping */
	KOBO_ECONFLICT = -9,   /* retryable conflict: re-run the batch */
	KOBO_ECONNLOST = -10,  /* store connection lost, nothing committed */
	KOBO_EUNKNOWN = -11,   /* commit outcome unknown: resolve by id */
	KOBO_ECAPACITY = -12,  /* a store's configured limit (accounts, transfer
	                          ids) would be passed: nothing applied */
};

/* A short name for a status code ("ok", "store_failed", …), static. */
const char *kobo_status_name(int status);

/* ---- The id hash. ----
 *
 * FNV-1a 64 of the id's bytes: the account → partition map depends on it
 * (frozen: src/shard/shard_map.c pins known values), and every in-memory id
 * table uses it. seed 0 is plain FNV-1a; another seed (XORed into the
 * offset basis) gives an independent hash of the same id
 * (kobo_hash_id_seeded). kobo_hash_bytes hashes len bytes that need not end
 * in NUL; for a string it equals kobo_hash_id_seeded of the same seed. */
#define KOBO_FNV1A64_OFFSET 0xcbf29ce484222325ull
#define KOBO_FNV1A64_PRIME 0x100000001b3ull

static inline uint64_t kobo_hash_bytes(const void *bytes, size_t len,
                                       uint64_t seed)
{
	uint64_t hash = KOBO_FNV1A64_OFFSET ^ seed;
	const unsigned char *p = bytes;
	for (size_t i = 0; i < len; i++) {
		hash ^= p[i];
		hash *= KOBO_FNV1A64_PRIME;
	}
	return hash;
}

static inline uint64_t kobo_hash_id_seeded(const char *id, uint64_t seed)
{
	uint64_t hash = KOBO_FNV1A64_OFFSET ^ seed;
	for (const unsigned char *p = (const unsigned char *)id; *p; p++) {
		hash ^= *p;
		hash *= KOBO_FNV1A64_PRIME;
	}
	return hash;
}

static inline uint64_t kobo_hash_id(const char *id)
{
	return kobo_hash_id_seeded(id, 0);
}

/* ---- The bounded id table (id_table.c). ----
 *
 * Maps an id (a NUL-terminated string) to a uint32 slot of an array the
 * caller owns; the table holds no records and copies no ids. It is the one
 * open-addressing index of Kobo's in-memory id lookups: a fixed capacity
 * chosen at create, a power-of-two bucket array at least twice that (load
 * <= 1/2, at least 16 buckets), linear probing from kobo_hash_id(id).
 *
 * Entries are only ever added, then either all cleared (reset, proportional
 * to the entries inserted, not to the capacity) or removed newest first
 * (remove_newest / truncate). Removing the newest entry empties the bucket
 * its insertion filled, and with linear probing and no other removal that
 * leaves the buckets exactly as they were before it: no tombstones. A table
 * that must forget an arbitrary entry is not this one.
 *
 * Keys are compared through key(records, slot), the caller's callback
 * returning the id stored in its slot: the table stays valid while that id
 * does not change, and reads it only during find and insert. Not thread
 * safe; no allocation after create.
 *
 * Lifecycle: create → insert / find → (reset | truncate)* → destroy. */
#define KOBO_ID_TABLE_CAPACITY_MAX (1u << 28)

typedef struct kobo_id_table kobo_id_table;

/* The id kept in the caller's slot: NUL-terminated, valid while the entry
 * is in the table. records is the pointer given to create. */
typedef const char *(*kobo_id_table_key_fn)(const void *records, uint32_t slot);

/* Creates an empty table for up to capacity entries.
 *   capacity  1..KOBO_ID_TABLE_CAPACITY_MAX.
 *   key       the callback above; records is passed to it unchanged (the
 *             table never dereferences it).
 *   out       receives the table, owned by the caller until destroy.
 * Returns KOBO_OK, KOBO_EINVAL (capacity out of range, key or out NULL), or
 * KOBO_ENOMEM (*out untouched). */
int kobo_id_table_create(uint32_t capacity, kobo_id_table_key_fn key,
                         const void *records, kobo_id_table **out);

/* Frees the table (NULL is fine). The caller's records are not touched. */
void kobo_id_table_destroy(kobo_id_table *table);

/* Looks id up. Returns KOBO_OK with its slot in *slot, or KOBO_ENOTFOUND
 * (*slot untouched). */
int kobo_id_table_find(const kobo_id_table *table, const char *id,
                       uint32_t *slot);

/* Adds id → slot. id must not be in the table yet (asserted: it is a
 * programmer error), slot < UINT32_MAX, and by the next find or insert
 * key(records, slot) must return an id equal to id. Returns KOBO_OK, or
 * KOBO_EFULL when capacity entries are in (nothing changes). */
int kobo_id_table_insert(kobo_id_table *table, const char *id, uint32_t slot);

/* Entries in the table; its capacity as created. */
uint32_t kobo_id_table_count(const kobo_id_table *table);
uint32_t kobo_id_table_capacity(const kobo_id_table *table);

/* Removes the newest entries until count entries remain (count <= the
 * current count, asserted), newest first: the table is then exactly as it
 * was after its count-th insertion. Costs the entries removed. */
void kobo_id_table_truncate(kobo_id_table *table, uint32_t count);

/* Removes every entry; costs the entries there were, not the capacity. */
void kobo_id_table_reset(kobo_id_table *table);

/* ---- The always-on assertion. ----
 *
 * A broken invariant in money code is a programmer error, and continuing
 * would persist a wrong balance or answer a client wrongly. So unlike
 * <assert.h> this check stays on in release builds (Redis serverAssert,
 * TIGER_STYLE): it prints what broke and where, then aborts. Use it for
 * what a module's opening comment states as an invariant. */
_Noreturn void kobo__assert_fail(const char *what, const char *file, int line);

#define kobo_assert(condition)                                             \
	do {                                                               \
		if (!(condition))                                          \
			kobo__assert_fail(#condition, __FILE__, __LINE__); \
	} while (0)

#endif /* KOBO_CORE_H */
