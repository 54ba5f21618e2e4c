/*
 * keyring.h — kobod's in-memory view of the live API keys, refreshed from
 * shard 0's store, and the check of a request's key against it.
 *
 * Where it sits: below src/http (which asks it on every request), above
 * src/store (whose read_keys fills it). A request never waits for the
 * store: lookups read an in-memory snapshot, and one thread of the ring's
 * own replaces that snapshot every refresh_ms through its own reader.
 *
 *   start ──load (caller's thread, a reader of its own)──▶ serving
 *   serving: every refresh_ms (or when asked: refresh_wait)
 *            refresh thread: read_keys ──ok──▶ build a new snapshot, swap
 *                                      └─fail─▶ keep the last snapshot, log,
 *                                               count, retry next period
 *   stop: wake the thread, join it, free the snapshot
 *
 * Invariants:
 *   1. A lookup sees one whole snapshot: the keys of one successful
 *      read_keys, never a mix of two (the swap is one pointer store under
 *      the write side of a rwlock; lookups copy the record out under the
 *      read side, so no snapshot is freed while read).
 *   2. At most KOBO_KEYS_MAX keys are held (a store that returned more is
 *      cut there and the refresh logged as a failure: the store promises
 *      fewer).
 *   3. Only the refresh thread uses its reader (store.h: a reader belongs
 *      to the thread that opened it); start's load uses a reader of its
 *      own, closed before start returns.
 *
 * Revocation bound. A key revoked (or created) in the store is refused
 * (accepted) by every node at most refresh_ms (2 s by default) plus the
 * length of one read_keys after its commit, as long as shard 0's store
 * answers; while it does not, each node keeps the view of its last
 * successful refresh, so the bound grows by the time the store is
 * unreachable (writes fail then anyway: every transfer needs a store).
 * API.md promises 10 s.
 *
 * Lookups are O(1) (an open-addressing id table per snapshot) and
 * thread-safe for any number of HTTP threads; they never allocate.
 *
 * Lifecycle: start → (authenticate | find)* … → stop.
 */
#ifndef KOBO_AUTH_KEYRING_H
#define KOBO_AUTH_KEYRING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../store/store.h"
#include "key.h"

#define KOBO_KEYRING_REFRESH_MS_DEFAULT 2000
#define KOBO_KEYRING_REFRESH_MS_MAX 60000

_Static_assert(KOBO_KEYRING_REFRESH_MS_DEFAULT <= 5000,
               "API.md: a new or revoked key is honoured within 10 s");

typedef struct kobo_keyring kobo_keyring;

/* Loads the live keys of store (shard 0's store, borrowed: it must outlive
 * the ring) on the calling thread, then starts the refresh thread, which
 * re-reads them every refresh_ms (1..KOBO_KEYRING_REFRESH_MS_MAX; 0: the
 * default). Returns KOBO_OK with *out (the caller's until
 * kobo_keyring_stop), KOBO_EINVAL (bad arguments), KOBO_ENOMEM, or the
 * store's error of the first load (KOBO_ESTORE …): kobod with --auth
 * required then exits, saying so. *out is NULL on error. */
int kobo_keyring_start(kobo_store *store, unsigned refresh_ms, kobo_keyring **out);

/* Stops the refresh thread (wakes it, joins it), closes its reader and
 * frees the ring. No lookup may run concurrently or follow. NULL is fine. */
void kobo_keyring_stop(kobo_keyring *ring);

/* Copies the live key whose id is id (NUL-terminated) into *out.
 * KOBO_OK, or KOBO_ENOTFOUND (unknown or revoked as of the last refresh).
 * Thread-safe, O(1). */
int kobo_keyring_find(kobo_keyring *ring, const char *id, kobo_api_key *out);

/* The outcome of checking a key's text. */
typedef enum kobo_keyring_check {
	KOBO_KEYRING_OK = 0,       /* a live key; *out filled */
	KOBO_KEYRING_MALFORMED,    /* not "kobo_<16 hex>_<64 hex>" (key.h) */
	KOBO_KEYRING_UNKNOWN,      /* no live key has its id */
	KOBO_KEYRING_WRONG_SECRET, /* the id is live, the secret is not its */
} kobo_keyring_check;

/* Checks the len bytes of text (a bearer token, not NUL-terminated):
 * parse (key.h), find the id, verify the secret in constant time. On
 * KOBO_KEYRING_OK *out holds the key's record (id, name, scopes); on
 * anything else *out is zeroed. Thread-safe; no allocation; the secret is
 * wiped from this function's memory before it returns. */
kobo_keyring_check kobo_keyring_authenticate(kobo_keyring *ring, const char *text,
                                             size_t len, kobo_api_key *out);

/* Asks the refresh thread to refresh now and waits, at most timeout_ms,
 * until it has finished one refresh begun after the call. Returns that
 * refresh's status (KOBO_OK, or the store's error: the last view was
 * kept), or KOBO_EOVERLOADED when the wait ran out. For tests and
 * operators; requests never call it. */
int kobo_keyring_refresh_wait(kobo_keyring *ring, unsigned timeout_ms);

/* Live keys in the current snapshot; refreshes that failed since start. */
size_t kobo_keyring_count(kobo_keyring *ring);
uint64_t kobo_keyring_refresh_failures(kobo_keyring *ring);

#endif /* KOBO_AUTH_KEYRING_H */
