/*
 * store_mem.h — the in-memory backend's own hooks, for tests.
 *
 * The in-memory store (store_mem.c) meets store.h's contract without a file
 * and is opened like any store: kobo_store_open("mem:", …). What only it
 * can do — inject faults, simulate a process restart — is declared here, so
 * that only tests and the saga simulation reach for it.
 */
#ifndef KOBO_STORE_MEM_H
#define KOBO_STORE_MEM_H

#include "../store.h"

/* A fresh, empty in-memory store (kobo_store_open's "mem:"). read_only:
 * begin() answers KOBO_EINVAL. KOBO_OK or KOBO_ENOMEM. */
int store_mem_open(bool read_only, kobo_store **out);

/* Fault injection. The next commit fails with KOBO_EUNKNOWN: when applied
 * is false nothing of the batch lands (a failed fsync); when true the
 * batch lands, token and all, and commit still reports KOBO_EUNKNOWN (a
 * crash after the fsync, before the answer). Either way the store enters
 * its sticky error state. */
void kobo_store_mem_fail_next_commit(kobo_store *store, bool applied);
/* The next count commits answer KOBO_ECONFLICT: nothing lands, the batch
 * is over, the store stays healthy (a serialization failure between
 * nodes, as PostgreSQL reports it). */
void kobo_store_mem_conflict_next_commits(kobo_store *store, unsigned count);
/* A process restart: abandons an open batch and clears the sticky error;
 * committed data (and the commit sequence) stays. Readers must be closed
 * first. */
void kobo_store_mem_restart(kobo_store *store);

#endif /* KOBO_STORE_MEM_H */
