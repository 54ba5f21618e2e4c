/*
 * id_table.c — the bounded id table of core.h: an open-addressing index from
 * an id to a slot of the caller's array (the contract and its rules are in
 * core.h, "The bounded id table").
 *
 * Layout. buckets[] holds slot + 1 (0 is an empty bucket), probed linearly
 * from kobo_hash_id(id) & mask. order[] holds, for the i-th insertion still
 * in the table, the bucket it filled: reset clears exactly those buckets
 * (cost proportional to the batch, not to the capacity) and truncate empties
 * them newest first.
 *
 * Why newest-first removal needs no tombstones: an insertion fills the first
 * empty bucket of its probe run; every entry that later probed across that
 * bucket was inserted after it and, removal being newest first, is already
 * gone. Emptying the bucket therefore restores the exact bucket array the
 * insertion found, and no run that a remaining entry relies on is cut.
 */
#include <stdlib.h>
#include <string.h>

#include "core.h"

struct kobo_id_table {
	uint32_t *buckets; /* slot + 1; 0 = empty */
	uint32_t *order;   /* order[i]: bucket filled by the i-th insertion */
	uint32_t mask;     /* bucket count - 1, a power of two minus one */
	uint32_t capacity;
	uint32_t count;
	kobo_id_table_key_fn key;
	const void *records;
};

_Static_assert(KOBO_ID_TABLE_CAPACITY_MAX <= (UINT32_MAX >> 2),
               "twice the capacity, rounded up to a power of two, fits a uint32");

/* At least twice the capacity (load <= 1/2 keeps probe runs short), at
 * least 16, a power of two so that a mask picks the bucket. */
static uint32_t bucket_count_for(uint32_t capacity)
{
	uint32_t count = 16;
	while (count < 2 * capacity)
		count *= 2;
	return count;
}

int kobo_id_table_create(uint32_t capacity, kobo_id_table_key_fn key,
                         const void *records, kobo_id_table **out)
{
	if (capacity == 0 || capacity > KOBO_ID_TABLE_CAPACITY_MAX || key == NULL ||
	    out == NULL)
		return KOBO_EINVAL;
	kobo_id_table *table = calloc(1, sizeof(*table));
	if (table == NULL)
		return KOBO_ENOMEM;
	uint32_t bucket_count = bucket_count_for(capacity);
	table->buckets = calloc(bucket_count, sizeof(*table->buckets));
	table->order = calloc(capacity, sizeof(*table->order));
	if (table->buckets == NULL || table->order == NULL) {
		kobo_id_table_destroy(table);
		return KOBO_ENOMEM;
	}
	table->mask = bucket_count - 1;
	table->capacity = capacity;
	table->key = key;
	table->records = records;
	*out = table;
	return KOBO_OK;
}

void kobo_id_table_destroy(kobo_id_table *table)
{
	if (table == NULL)
		return;
	free(table->buckets);
	free(table->order);
	free(table);
}

int kobo_id_table_find(const kobo_id_table *table, const char *id,
                       uint32_t *slot)
{
	uint32_t index = (uint32_t)kobo_hash_id(id) & table->mask;
	for (;;) {
		uint32_t entry = table->buckets[index];
		if (entry == 0)
			return KOBO_ENOTFOUND;
		if (strcmp(table->key(table->records, entry - 1), id) == 0) {
			*slot = entry - 1;
			return KOBO_OK;
		}
		index = (index + 1) & table->mask;
	}
}

int kobo_id_table_insert(kobo_id_table *table, const char *id, uint32_t slot)
{
	kobo_assert(slot < UINT32_MAX);
	if (table->count >= table->capacity)
		return KOBO_EFULL;
	uint32_t index = (uint32_t)kobo_hash_id(id) & table->mask;
	while (table->buckets[index] != 0) {
		/* The probe passes every entry an equal id could be in, so the
		 * "not there yet" precondition costs only these compares. */
		kobo_assert(strcmp(table->key(table->records,
		                              table->buckets[index] - 1), id) != 0);
		index = (index + 1) & table->mask;
	}
	table->buckets[index] = slot + 1;
	table->order[table->count++] = index;
	return KOBO_OK;
}

uint32_t kobo_id_table_count(const kobo_id_table *table)
{
	return table->count;
}

uint32_t kobo_id_table_capacity(const kobo_id_table *table)
{
	return table->capacity;
}

void kobo_id_table_truncate(kobo_id_table *table, uint32_t count)
{
	kobo_assert(count <= table->count);
	while (table->count > count) {
		uint32_t index = table->order[--table->count];
		kobo_assert(table->buckets[index] != 0);
		table->buckets[index] = 0;
	}
}

void kobo_id_table_reset(kobo_id_table *table)
{
	for (uint32_t i = 0; i < table->count; i++)
		table->buckets[table->order[i]] = 0;
	table->count = 0;
}
