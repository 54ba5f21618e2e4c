/*
 * store_mem.h — the in-memory backend's own hooks, for tests.
 *
 * The in-memory store (store_mem.c) meets store.h's contract without a file;
 * it is opened like any store, kobo_store_open("mem:", …). What only it can
 * do — inject faults, simulate a process restart — is declared here, so
 * that only tests and the saga simulation reach for it.
 */
#ifndef KOBO_STORE_MEM_H
#define KOBO_STORE_MEM_H

#include "../store.h"

/* Opens a fresh, empty in-memory store (kobo_store_open's "mem:"). */
int kobo_store_mem_open(kobo_store **out);
/* Fault injection. The next commit fails: when applied is false nothing of
 * the batch lands (a failed fsync); when true the batch lands and commit
 * still reports KOBO_ESTORE (a crash after the fsync, before the answer).
 * Either way the store enters its sticky error state. */
void kobo_store_mem_fail_next_commit(kobo_store *store, bool applied);
/* A process restart: abandons an open batch and clears the sticky error;
 * committed data stays. Readers must be closed first. */
void kobo_store_mem_restart(kobo_store *store);

#endif /* KOBO_STORE_MEM_H */
