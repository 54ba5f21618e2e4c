/*
 * shard_map.c — where an account lives.
 *
 * An account id hashes (FNV-1a, 64 bit) into one of KOBO_PARTITIONS fixed
 * partitions; partitions map to shards. The hash and the partition count are
 * part of the on-disk format: changing either would silently move accounts,
 * so both are frozen here and checked by tests/unit/test_shard.c against known
 * values.
 */
#include "shard.h"

_Static_assert((KOBO_PARTITIONS & (KOBO_PARTITIONS - 1)) == 0,
               "partition count is a power of two");
_Static_assert(KOBO_SHARDS_MAX <= KOBO_PARTITIONS,
               "every shard owns at least one partition");

uint32_t kobo_partition_of(const char *account_id)
{
	uint64_t hash = 0xcbf29ce484222325ull; /* FNV-1a 64 offset basis */

	for (const unsigned char *p = (const unsigned char *)account_id; *p; p++) {
		hash ^= *p;
		hash *= 0x100000001b3ull; /* FNV-1a 64 prime */
	}
	return (uint32_t)(hash % KOBO_PARTITIONS);
}

uint32_t kobo_shard_of_partition(uint32_t partition, uint32_t shard_count)
{
	if (shard_count == 0)
		return 0;
	return partition % shard_count;
}
