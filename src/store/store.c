/*
 * store.c — kobo_store_open: a store URL to the backend that serves it.
 *
 * The one place that knows which backends this build has (store.h lists
 * the schemes). A new backend adds a row to `backends` and a folder under
 * src/store.
 */
#include <stdio.h>
#include <string.h>

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
	                "sqlite:DIR, postgresql://… (or postgres://…) and mem: "
	                "only\n", url);
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
