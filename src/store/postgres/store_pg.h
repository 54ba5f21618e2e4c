/*
 * store_pg.h — how kobo_store_open (store.c) reaches the PostgreSQL backend.
 *
 * Everyone else opens it with kobo_store_open("postgresql://…", shard, …).
 * Design notes (schema, the batch transaction, error kinds): store_pg.c.
 */
#ifndef KOBO_STORE_PG_H
#define KOBO_STORE_PG_H

#include "../store.h"

/* Opens shard `shard` of the PostgreSQL database that url names (a libpq
 * connection string or postgresql:// URI, several hosts allowed). The
 * shard's tables live in schema kobo_shard_<shard> of that database, so
 * one database may hold several shards (tests) or one (production: one
 * database per shard). Unless read_only, the schema is created or migrated
 * under an advisory lock, so several kobod may start at once. A schema
 * that records another shard index, or a newer schema version, is refused.
 * shard_count > 0: the shard is one of that many (kobo_store_open_sharded):
 * it is recorded when the shard is created, and a shard recording another
 * count, or a database whose shards show the URL list is out of order, is
 * refused with a sentence on stderr (KOBO_EINVAL). A writable store runs a
 * probe thread (healthy() is false while the primary does not answer).
 * Returns KOBO_OK with *out (the caller's until close), KOBO_ENOMEM,
 * KOBO_EINVAL, or KOBO_ESTORE (logged; the database cannot be reached or is
 * not ours) with *out NULL. */
int store_pg_open(const char *url, uint32_t shard, uint32_t shard_count,
                  bool read_only, kobo_store **out);

#endif /* KOBO_STORE_PG_H */
