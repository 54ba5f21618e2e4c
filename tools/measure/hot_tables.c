/*
 * hot_tables.c — what the journaled store's in-memory tables cost
 * (src/store/hot/tables.h): resident memory (VmRSS) of a shard's tables
 * created empty and after filling, and ns per operation:
 *
 *   hot_idset     add and lookup (present, absent) at IDS ids in a set of
 *                 capacity IDS;
 *   hot_accounts  put (new), find, put (known id: balances) at ACCOUNTS;
 *   hot_recent    put (new), find, put (replace), drop_upto at RECENT
 *                 entries, with metadata of 2, 200 and 1000 bytes (the first
 *                 two inside the entry, the last in its own malloc).
 *
 * Ids are formatted into a buffer per chunk before the clock starts, and
 * that buffer is freed before RSS is read. Times are this thread's CPU
 * time (CLOCK_THREAD_CPUTIME_ID, page faults included), so other work on a
 * shared machine does not count, though its cache pressure still does.
 *
 *   make build/measure/hot-tables && build/measure/hot-tables [IDS [ACCOUNTS [RECENT]]]
 *   (defaults 10000000 1000000 1000000)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../src/store/hot/tables.h"

#define ID_SIZE 24
#define CHUNK 1000000u

/* This thread's CPU time, ns. */
static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static long rss_kib(void)
{
	FILE *file = fopen("/proc/self/status", "r");
	if (file == NULL)
		return -1;
	char line[256];
	long kib = -1;
	while (fgets(line, sizeof(line), file) != NULL)
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	fclose(file);
	return kib;
}

static void check(int rc, const char *what)
{
	if (rc != KOBO_OK) {
		fprintf(stderr, "%s: %s\n", what, kobo_status_name(rc));
		exit(1);
	}
}

/* ids[i] = prefix + (first + i), for i < n. */
static void format_ids(char (*ids)[ID_SIZE], const char *prefix, uint64_t first,
                       uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		snprintf(ids[i], ID_SIZE, "%s%llu", prefix,
		         (unsigned long long)(first + i));
}

typedef enum { IDSET_ADD, IDSET_HIT, IDSET_MISS } idset_op;

/* ns per op over total ids, chunk by chunk. */
static double idset_pass(hot_idset *set, char (*ids)[ID_SIZE], uint64_t total,
                         idset_op op)
{
	double spent = 0;
	uint64_t found = 0;
	for (uint64_t first = 0; first < total; first += CHUNK) {
		uint32_t n = (uint32_t)(total - first < CHUNK ? total - first : CHUNK);
		format_ids(ids, op == IDSET_MISS ? "absent-" : "transfer-", first, n);
		double start = now_ns();
		for (uint32_t i = 0; i < n; i++) {
			if (op == IDSET_ADD)
				check(hot_idset_add(set, ids[i]), "hot_idset_add");
			else
				found += hot_idset_maybe_contains(set, ids[i]);
		}
		spent += now_ns() - start;
	}
	if (op == IDSET_HIT && found != total)
		fprintf(stderr, "idset: %llu of %llu found\n",
		        (unsigned long long)found, (unsigned long long)total);
	if (op == IDSET_MISS)
		printf("  idset false positives among %llu absent ids: %llu\n",
		       (unsigned long long)total, (unsigned long long)found);
	return spent / (double)total;
}

static void measure_accounts(hot_accounts *accounts, char (*ids)[ID_SIZE],
                             uint32_t count)
{
	kobo_account account;
	memset(&account, 0, sizeof(account));
	snprintf(account.currency, sizeof(account.currency), "NGN");
	account.metadata = "{\"owner\":\"someone\"}";
	account.metadata_len = (uint32_t)strlen(account.metadata);
	double put_ns = 0, find_ns = 0, update_ns = 0;
	for (uint32_t first = 0; first < count; first += CHUNK) {
		uint32_t n = count - first < CHUNK ? count - first : CHUNK;
		format_ids(ids, "wallet:", first, n);
		double start = now_ns();
		for (uint32_t i = 0; i < n; i++) {
			memcpy(account.id, ids[i], ID_SIZE);
			check(hot_accounts_put(accounts, &account), "hot_accounts_put");
		}
		put_ns += now_ns() - start;
		start = now_ns();
		int64_t sum = 0;
		for (uint32_t i = 0; i < n; i++)
			sum += hot_accounts_find(accounts, ids[i])->posted;
		find_ns += now_ns() - start;
		start = now_ns();
		for (uint32_t i = 0; i < n; i++) {
			memcpy(account.id, ids[i], ID_SIZE);
			account.posted = i + sum;
			check(hot_accounts_put(accounts, &account), "hot_accounts_put");
		}
		update_ns += now_ns() - start;
	}
	printf("  accounts at %u: put new %.0f ns, find %.0f ns, put known %.0f ns\n",
	       count, put_ns / count, find_ns / count, update_ns / count);
}

static void measure_recent(hot_recent *recent, char (*ids)[ID_SIZE],
                           uint32_t count, uint32_t metadata_len, uint64_t *seq,
                           const char *pass)
{
	static char metadata[KOBO_METADATA_BYTES_MAX];
	memset(metadata, 'm', sizeof(metadata));
	kobo_transfer transfer;
	memset(&transfer, 0, sizeof(transfer));
	snprintf(transfer.currency, sizeof(transfer.currency), "NGN");
	transfer.metadata = metadata;
	transfer.metadata_len = metadata_len;
	uint32_t n = count < CHUNK ? count : CHUNK;
	format_ids(ids, "transfer-", 0, n);
	double start = now_ns();
	for (uint32_t i = 0; i < n; i++) {
		memcpy(transfer.id, ids[i], ID_SIZE);
		check(hot_recent_put(recent, &transfer, ++*seq / 64), "hot_recent_put");
	}
	double put_ns = now_ns() - start;
	start = now_ns();
	uint64_t tag = 0, sum = 0;
	for (uint32_t i = 0; i < n; i++)
		sum += hot_recent_find(recent, ids[i], &tag)->amount + tag;
	double find_ns = now_ns() - start;
	start = now_ns();
	for (uint32_t i = 0; i < n; i++) {
		memcpy(transfer.id, ids[i], ID_SIZE);
		transfer.amount = (int64_t)(sum + i);
		check(hot_recent_put(recent, &transfer, ++*seq / 64), "hot_recent_put");
	}
	double replace_ns = now_ns() - start;
	long full_kib = rss_kib();
	start = now_ns();
	size_t dropped = hot_recent_drop_upto(recent, *seq / 64);
	double drop_ns = now_ns() - start;
	if (dropped != n)
		fprintf(stderr, "recent: dropped %zu of %u\n", dropped, n);
	printf("  recent at %u, metadata %4u B, %s: put new %.0f ns, find %.0f ns, "
	       "put replace %.0f ns, drop %.0f ns; RSS full %ld MiB\n",
	       n, metadata_len, pass, put_ns / n, find_ns / n, replace_ns / n,
	       drop_ns / n, full_kib / 1024);
}

int main(int argc, char **argv)
{
	uint64_t ids_total = argc > 1 ? strtoull(argv[1], NULL, 10) : 10000000;
	uint32_t account_count = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 1000000;
	uint32_t recent_count = argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 10) : 1000000;

	long base_kib = rss_kib();
	hot_idset *set = NULL;
	hot_accounts *accounts = NULL;
	hot_recent *recent = NULL;
	check(hot_idset_create(ids_total, &set), "hot_idset_create");
	check(hot_accounts_create(account_count, &accounts), "hot_accounts_create");
	check(hot_recent_create(recent_count, &recent), "hot_recent_create");
	long empty_kib = rss_kib();
	printf("RSS: process %ld MiB; + idset(%llu) + accounts(%u) + recent(%u), "
	       "empty: %ld MiB\n", base_kib / 1024, (unsigned long long)ids_total,
	       account_count, recent_count, empty_kib / 1024);

	char (*ids)[ID_SIZE] = malloc((size_t)CHUNK * ID_SIZE);
	if (ids == NULL)
		return 1;
	double add_ns = idset_pass(set, ids, ids_total, IDSET_ADD);
	double hit_ns = idset_pass(set, ids, ids_total, IDSET_HIT);
	double miss_ns = idset_pass(set, ids, ids_total, IDSET_MISS);
	free(ids);
	long idset_kib = rss_kib();
	printf("idset at %llu ids (capacity %llu): add %.0f ns, lookup present %.0f ns, "
	       "lookup absent %.0f ns\n", (unsigned long long)hot_idset_count(set),
	       (unsigned long long)hot_idset_capacity(set), add_ns, hit_ns, miss_ns);
	printf("RSS after filling the idset: %ld MiB\n", idset_kib / 1024);

	ids = malloc((size_t)CHUNK * ID_SIZE);
	if (ids == NULL)
		return 1;
	measure_accounts(accounts, ids, account_count);
	uint64_t seq = 0;
	/* Each size twice: the first pass also pays for first touches (the
	 * entry pool, the heap), the second is the steady state. */
	static const uint32_t sizes[] = {2, 200, 1000};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		measure_recent(recent, ids, recent_count, sizes[i], &seq, "first");
		measure_recent(recent, ids, recent_count, sizes[i], &seq, "again");
	}
	free(ids);
	printf("RSS at the end (idset full, accounts full, recent emptied): %ld MiB\n",
	       rss_kib() / 1024);
	hot_recent_destroy(recent);
	hot_accounts_destroy(accounts);
	hot_idset_destroy(set);
	return 0;
}
