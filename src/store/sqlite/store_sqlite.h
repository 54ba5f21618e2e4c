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

#endif /* KOBO_STORE_SQLITE_H */
