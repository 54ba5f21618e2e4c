/*
 * tables.h — the in-memory state of a journaled shard (store_hot.c).
 *
 * Three bounded tables, sized once at open, none thread-safe (store_hot.c
 * guards them with its own lock). The lookups (find, maybe_contains,
 * count, capacity, room) only read: any number may run at once, under a
 * reader lock, while no put, add or drop runs.
 *
 *   hot_accounts  every account of the shard, whole (metadata copied):
 *                 the batch loads read balances here, never from disk.
 *   hot_recent    the newest state of every transfer a committed batch
 *                 changed that the SQLite projection has not written yet,
 *                 tagged with the commit sequence of that batch; dropped
 *                 in commit order once the projection has them.
 *   hot_idset     a compact set of every transfer id the shard ever
 *                 stored: a 64-bit keyed hash per id (XXH3 with a random
 *                 per-process seed, so nobody can aim collisions). A miss
 *                 proves "new" without touching the disk; a hit is
 *                 confirmed in hot_recent or by a point read.
 *
 * Limits: each create takes a capacity; an insert beyond it answers
 * KOBO_EFULL and changes nothing (the store answers 503 and alerts from
 * 80 %: README, "Capacity").
 */
#ifndef KOBO_HOT_TABLES_H
#define KOBO_HOT_TABLES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../ledger/ledger.h"

/* ---- Accounts. ---- */
typedef struct hot_accounts hot_accounts;

/* capacity 1..KOBO_ID_TABLE_CAPACITY_MAX (core.h). KOBO_OK, KOBO_EINVAL,
 * KOBO_ENOMEM. Memory for the records is reserved lazily (calloc), so a
 * large capacity costs little until used. */
int hot_accounts_create(uint32_t capacity, hot_accounts **out);
void hot_accounts_destroy(hot_accounts *accounts);
/* The stored record, or NULL. Valid (with its metadata) until the table is
 * destroyed: a put of the same id changes its balances in place. */
const kobo_account *hot_accounts_find(const hot_accounts *accounts, const char *id);
/* A new id: stores a copy of the record and its metadata. A known id:
 * sets posted, pending_out and pending_in (nothing else of an account
 * ever changes; a different currency is a bug upstream and aborts).
 * account may be the record find returned. KOBO_OK, KOBO_EFULL (new id,
 * table full: nothing changed), KOBO_ENOMEM (nothing changed). */
int hot_accounts_put(hot_accounts *accounts, const kobo_account *account);
uint32_t hot_accounts_count(const hot_accounts *accounts);
uint32_t hot_accounts_capacity(const hot_accounts *accounts);

/* ---- Transfers the projection has not written yet. ---- */
typedef struct hot_recent hot_recent;

/* capacity: the most entries at once (1..2^28). KOBO_OK, KOBO_EINVAL,
 * KOBO_ENOMEM (also when getrandom(2) gives no seed for its keyed hash). */
int hot_recent_create(uint32_t capacity, hot_recent **out);
void hot_recent_destroy(hot_recent *recent);
/* Stores a copy of transfer (and its metadata) as the newest state of its
 * id, tagged with seq, replacing an older entry of the same id; seq never
 * goes down from one put to the next (asserted). transfer may be the
 * record find returned. KOBO_OK, KOBO_EFULL (a new id and the table
 * full: nothing changed), KOBO_ENOMEM (nothing changed). */
int hot_recent_put(hot_recent *recent, const kobo_transfer *transfer, uint64_t seq);
/* The newest state of id, or NULL; *seq (may be NULL) gets its tag. Valid
 * until the next put or drop. */
const kobo_transfer *hot_recent_find(const hot_recent *recent, const char *id,
                                     uint64_t *seq);
/* Removes every entry tagged <= upto (the projection has written them),
 * oldest first, in time proportional to the entries removed. Returns how
 * many. */
size_t hot_recent_drop_upto(hot_recent *recent, uint64_t upto);
uint32_t hot_recent_count(const hot_recent *recent);
uint32_t hot_recent_capacity(const hot_recent *recent);

/* ---- Every transfer id ever stored, as keyed 64-bit hashes. ---- */
typedef struct hot_idset hot_idset;

/* capacity: ids it can hold (1..2^32); the slot array is the next power
 * of two >= capacity * 4 / 3, calloc'd (8 bytes a slot). KOBO_OK,
 * KOBO_EINVAL, KOBO_ENOMEM (also when getrandom(2) gives no seed). */
int hot_idset_create(uint64_t capacity, hot_idset **out);
void hot_idset_destroy(hot_idset *set);
/* false: id was never added (certain). true: it probably was. */
bool hot_idset_maybe_contains(const hot_idset *set, const char *id);
/* Adds id (adding one already there changes nothing and answers KOBO_OK,
 * full or not). KOBO_OK, or KOBO_EFULL when capacity ids are in and id is
 * new (nothing changed). The set holds hashes: count is the number of
 * distinct hashes, so two ids of equal hash (odds ~n^2 / 2^65) count once. */
int hot_idset_add(hot_idset *set, const char *id);
/* true when n more adds cannot fail for lack of room. */
bool hot_idset_room(const hot_idset *set, uint64_t n);
uint64_t hot_idset_count(const hot_idset *set);
uint64_t hot_idset_capacity(const hot_idset *set);

#endif /* KOBO_HOT_TABLES_H */
