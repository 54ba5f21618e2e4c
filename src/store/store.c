/*
 * store.c — kobo_store_open: a store URL to the backend that serves it.
 *
 * The one place that knows which backends this build has (store.h lists
 * the schemes). A new backend adds a row to `backends` and a folder under
 * src/store.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hot/store_hot.h"
#include "layout.h"
#include "mem/store_mem.h"
#include "postgres/store_pg.h"
#include "sqlite/store_sqlite.h"
#include "store.h"

#define STORE_PATH_BYTES_MAX 4096

static int open_sqlite(const char *rest, uint32_t shard, uint32_t shard_count,
                       bool read_only, kobo_store **out)
{
	(void)shard_count; /* the data directory's shard map checks it */
	char path[STORE_PATH_BYTES_MAX];
	if (rest[0] == '\0') {
		fprintf(stderr, "kobo: store url \"sqlite:\" names no directory "
		                "(sqlite:DIR)\n");
		return KOBO_EINVAL;
	}
	if (!kobo_layout_shard_path(path, sizeof path, rest, shard)) {
		fprintf(stderr, "kobo: store directory path is too long: %s\n", rest);
		return KOBO_EINVAL;
	}
	return store_sqlite_open(path, read_only, out);
}

/* "journal:DIR[?accounts=N&transfers=N]": the journaled embedded store
 * (src/store/hot). DIR may not contain '?'. The query: accounts=N,
 * transfers=N, segment_mb=N, fit (store_hot.h, hot_config). */
static int open_journal(const char *rest, uint32_t shard, uint32_t shard_count,
                        bool read_only, kobo_store **out)
{
	(void)shard_count; /* the data directory's shard map checks it */
	char dir[STORE_PATH_BYTES_MAX];
	hot_config config = { .accounts_max = HOT_ACCOUNTS_MAX_DEFAULT,
	                      .transfers_max = HOT_TRANSFERS_MAX_DEFAULT,
	                      .segment_mb = HOT_SEGMENT_MB_DEFAULT };
	const char *query = strchr(rest, '?');
	size_t dir_len = query ? (size_t)(query - rest) : strlen(rest);
	if (dir_len == 0 || dir_len >= sizeof dir) {
		fprintf(stderr, "kobo: store url \"journal:%s\" names no directory, or "
		                "one too long (journal:DIR)\n", rest);
		return KOBO_EINVAL;
	}
	memcpy(dir, rest, dir_len);
	dir[dir_len] = '\0';
	while (query != NULL) {
		const char *param = query + 1;
		query = strchr(param, '&');
		char *end;
		unsigned long long n;
		errno = 0;
		if (strncmp(param, "accounts=", 9) == 0) {
			n = strtoull(param + 9, &end, 10);
			if (errno || end == param + 9 || (*end != '&' && *end != '\0') || n == 0 ||
			    n > HOT_ACCOUNTS_MAX_LIMIT)
				goto bad;
			config.accounts_max = (uint32_t)n;
		} else if (strncmp(param, "transfers=", 10) == 0) {
			n = strtoull(param + 10, &end, 10);
			if (errno || end == param + 10 || (*end != '&' && *end != '\0') || n == 0 ||
			    n > HOT_TRANSFERS_MAX_LIMIT)
				goto bad;
			config.transfers_max = n;
		} else if (strncmp(param, "fit", 3) == 0 && (param[3] == '&' || param[3] == '\0')) {
			config.fit = true;
		} else if (strncmp(param, "segment_mb=", 11) == 0) {
			n = strtoull(param + 11, &end, 10);
			if (errno || end == param + 11 || (*end != '&' && *end != '\0') ||
			    n < HOT_SEGMENT_MB_MIN || n > HOT_SEGMENT_MB_MAX)
				goto bad;
			config.segment_mb = (uint32_t)n;
		} else {
			goto bad;
		}
	}
	return store_hot_open(dir, shard, &config, read_only, out);
bad:
	fprintf(stderr, "kobo: store url \"journal:%s\": the query takes accounts=N "
	                "(1..%u), transfers=N (1..%llu) and segment_mb=N (%u..%u)\n", rest,
	        HOT_ACCOUNTS_MAX_LIMIT, (unsigned long long)HOT_TRANSFERS_MAX_LIMIT,
	        HOT_SEGMENT_MB_MIN, HOT_SEGMENT_MB_MAX);
	return KOBO_EINVAL;
}

static int open_mem(const char *rest, uint32_t shard, uint32_t shard_count,
                    bool read_only, kobo_store **out)
{
	(void)shard;
	(void)shard_count;
	if (rest[0] != '\0') {
		fprintf(stderr, "kobo: store url \"mem:%s\": mem: takes nothing "
		                "after the colon\n", rest);
		return KOBO_EINVAL;
	}
	return store_mem_open(read_only, out);
}

static int open_postgres(const char *rest, uint32_t shard, uint32_t shard_count,
                         bool read_only, kobo_store **out)
{
	/* libpq parses the whole URI, scheme included. */
	char uri[STORE_PATH_BYTES_MAX];
	int n = snprintf(uri, sizeof uri, "postgresql:%s", rest);
	if (n < 0 || (size_t)n >= sizeof uri) {
		fprintf(stderr, "kobo: store url is too long\n");
		return KOBO_EINVAL;
	}
	return store_pg_open(uri, shard, shard_count, read_only, out);
}

static const struct {
	const char *scheme; /* with its colon */
	int (*open)(const char *rest, uint32_t shard, uint32_t shard_count,
	            bool read_only, kobo_store **out);
} backends[] = {
	{ "sqlite:", open_sqlite },
	{ "journal:", open_journal },
	{ "mem:", open_mem },
	{ "postgresql:", open_postgres },
	{ "postgres:", open_postgres },
};

int kobo_store_open(const char *url, uint32_t shard, bool read_only,
                    kobo_store **out)
{
	return kobo_store_open_sharded(url, shard, 0, read_only, out);
}

int kobo_store_open_sharded(const char *url, uint32_t shard,
                            uint32_t shard_count, bool read_only,
                            kobo_store **out)
{
	*out = NULL;
	for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++) {
		size_t len = strlen(backends[i].scheme);
		if (strncmp(url, backends[i].scheme, len) == 0)
			return backends[i].open(url + len, shard, shard_count, read_only, out);
	}
	fprintf(stderr, "kobo: cannot open store \"%s\": this build supports "
	                "sqlite:DIR, journal:DIR, postgresql://… (or postgres://…) "
	                "and mem: only\n", url);
	return KOBO_EINVAL;
}

int kobo_store_open_replica(const char *url, uint32_t shard, uint32_t shard_count,
                            kobo_store **out)
{
	*out = NULL;
	if (strncmp(url, "postgresql:", 11) != 0 && strncmp(url, "postgres:", 9) != 0) {
		fprintf(stderr, "kobo: a read replica is a PostgreSQL standby: expected a "
		                "postgresql:// or postgres:// URL\n");
		return KOBO_EINVAL;
	}
	if (shard_count == 0) {
		fprintf(stderr, "kobo: a read replica needs the deployment's shard count\n");
		return KOBO_EINVAL;
	}
	return kobo_store_open_sharded(url, shard, shard_count, true, out);
}
