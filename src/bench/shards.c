/*
 * shards.c — where each bench account lives, so that --cross-shard P can
 * choose a payee on another shard than the payer (or on the same one).
 *
 * The shard of an account is computed exactly as kobod routes it: the
 * account id's partition (kobo_partition_of: FNV-1a 64 of the id mod
 * KOBO_PARTITIONS) and the default shard map (kobo_shard_of_partition:
 * partition mod shards). --shards must therefore equal the server's
 * --shards; with another value the bench's "local" and "cross-shard" labels
 * (and their latency classes) are simply wrong, the invariants still hold.
 *
 * The tables are built once, before the workload: account_shard[i] for the
 * model's "is this transfer cross-shard" question, and the accounts grouped
 * by shard (a counting sort) for "pick an account on shard s".
 */
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

uint32_t bench_shard_of_id(const char *account_id, uint32_t shards)
{
	return kobo_shard_of_partition(kobo_partition_of(account_id), shards);
}

void bench_shards_free(bench_config *config)
{
	free(config->account_shard);
	free(config->shard_accounts);
	config->account_shard = NULL;
	config->shard_accounts = NULL;
}

int bench_shards_init(bench_config *config)
{
	uint32_t n = config->accounts, shards = config->shards;
	bench_shards_free(config);
	if (shards <= 1)
		return BENCH_EXIT_OK;
	config->account_shard = malloc((size_t)n * sizeof(*config->account_shard));
	config->shard_accounts = malloc((size_t)n * sizeof(*config->shard_accounts));
	if (!config->account_shard || !config->shard_accounts) {
		fprintf(stderr, "kobo-bench: out of memory for the shards of %u accounts\n", n);
		bench_shards_free(config);
		return BENCH_EXIT_USAGE;
	}
	uint32_t count[BENCH_SHARDS_MAX] = {0};
	char id[KOBO_ID_LEN_MAX + 1];
	for (uint32_t i = 0; i < n; i++) {
		bench_account_id(config, i, id);
		uint32_t s = bench_shard_of_id(id, shards);
		config->account_shard[i] = (uint16_t)s;
		count[s]++;
	}
	config->shard_first[0] = 0;
	for (uint32_t s = 0; s < shards; s++) {
		if (count[s] < 2) {
			fprintf(stderr, "kobo-bench: shard %u of %u holds %u of the %u accounts; every shard "
			        "needs at least 2 (use more --accounts)\n", s, shards, count[s], n);
			bench_shards_free(config);
			return BENCH_EXIT_USAGE;
		}
		config->shard_first[s + 1] = config->shard_first[s] + count[s];
	}
	uint32_t next[BENCH_SHARDS_MAX];
	for (uint32_t s = 0; s < shards; s++)
		next[s] = config->shard_first[s];
	for (uint32_t i = 0; i < n; i++)
		config->shard_accounts[next[config->account_shard[i]]++] = i;
	return BENCH_EXIT_OK;
}
