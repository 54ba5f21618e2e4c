/*
 * store_sqlite.h — how kobo_store_open (store.c) reaches the SQLite backend.
 *
 * Everyone else opens it with kobo_store_open("sqlite:DIR", shard, …).
 */
#ifndef KOBO_STORE_SQLITE_H
#define KOBO_STORE_SQLITE_H

#include "../store.h"

/* Opens (creating and migrating as needed) the SQLite shard file at path
 * (a file name, or a "file:" URI, which tests use to pick a fault-injecting
 * VFS): WAL mode, synchronous=FULL, schema versioned by PRAGMA
 * user_version. read_only: open for audit and reads only (begin() returns
 * KOBO_EINVAL), never creating or migrating. Returns KOBO_OK with *out
 * (the caller's until close), KOBO_ENOMEM, or KOBO_ESTORE (logged) with
 * *out NULL. */
int store_sqlite_open(const char *path, bool read_only, kobo_store **out);

/* For the journaled embedded store (src/store/hot), whose SQLite file is an
 * asynchronous projection of its journal. On the write side, by the one
 * thread that owns it.
 *
 * store_sqlite_commit_seq: meta.commit_seq as last committed (the last
 * journal batch the file holds).
 * store_sqlite_set_next_commit_seq: the next commit stores seq (greater
 * than the current one) instead of current + 1: one projection
 * transaction holds many journal batches and records the last one's.
 * store_sqlite_each_transfer_id: calls each with every transfer id of the
 * shard (any order), outside a batch; stops at the first non-KOBO_OK
 * return and returns it. KOBO_ESTORE when the read fails. */
uint64_t store_sqlite_commit_seq(kobo_store *store);
/* How many accounts and transfers the file holds. KOBO_ESTORE. */
int store_sqlite_counts(kobo_store *store, uint64_t *accounts, uint64_t *transfers);
void store_sqlite_set_next_commit_seq(kobo_store *store, uint64_t seq);
int store_sqlite_each_transfer_id(kobo_store *store,
                                  int (*each)(void *ctx, const char *id),
                                  void *ctx);

#endif /* KOBO_STORE_SQLITE_H */
