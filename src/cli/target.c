/*
 * target.c — which store a local command (`kobo audit`, `kobo key`) works
 * on, without a server: --postgres URL lists, the data directory check, and
 * opening shard 0's store. Contract in cli.h.
 *
 * A local command never creates a store. kobod creates a data directory
 * (DIR/shard-N.db, DIR/shard-map.json: src/store/layout.h) or a PostgreSQL
 * shard at its first start; a command given a directory or database kobod
 * never used refuses it instead of leaving an empty store behind that a
 * kobod started later would take for its own. So shard 0 is first opened
 * read-only (SQLite refuses a file it did not migrate, PostgreSQL a
 * database that holds no Kobo shard or another count), and only then, for
 * a write, opened writable (which then finds the schema in place).
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../shard/shard.h"
#include "../store/layout.h"
#include "../store/store.h"
#include "cli.h"

void kobo_cli_redact_url(const char *url, char *out, size_t size)
{
	snprintf(out, size, "%s", url);
	char *start = strstr(out, "://");
	if (start != NULL) {
		start += 3;
		char *at = strchr(start, '@');
		char *slash = strchr(start, '/');
		char *colon = strchr(start, ':');
		if (at != NULL && (slash == NULL || at < slash) && colon != NULL &&
		    colon < at && at - colon >= 4) {
			memcpy(colon, ":***", 4);
			memmove(colon + 4, at, strlen(at) + 1);
		}
	}
	for (char *p = strstr(out, "password="); p != NULL; p = strstr(p + 1, "password=")) {
		char *value = p + 9;
		size_t len = strcspn(value, "& ");
		if (len >= 3) {
			memcpy(value, "***", 3);
			memmove(value + 3, value + len, strlen(value + len) + 1);
		}
	}
}

/* true for a postgresql:// or postgres:// URL. */
static bool postgres_url(const char *value)
{
	return strncmp(value, "postgresql://", 13) == 0 || strncmp(value, "postgres://", 11) == 0;
}

long kobo_cli_take_postgres_urls(const char *cmd, int argc, char **argv,
                                 const char **urls, char **rest, int *rest_count)
{
	long count = 0;
	*rest_count = 0;
	rest[(*rest_count)++] = argv[0];
	for (int i = 1; i < argc; i++) {
		const char *value = NULL;
		if (strcmp(argv[i], "--") == 0) {
			while (i < argc)
				rest[(*rest_count)++] = argv[i++];
			break;
		}
		if (strcmp(argv[i], "--postgres") == 0) {
			if (i + 1 == argc) {
				fprintf(stderr, "kobo: %s: --postgres needs a URL\n", cmd);
				return -1;
			}
			value = argv[++i];
		} else if (strncmp(argv[i], "--postgres=", 11) == 0) {
			value = argv[i] + 11;
		} else {
			rest[(*rest_count)++] = argv[i];
			continue;
		}
		if (!postgres_url(value)) {
			/* Not echoed: a mistyped URL may hold a password. */
			fprintf(stderr, "kobo: %s: --postgres: expected a postgresql:// "
			        "or postgres:// URL\n", cmd);
			return -1;
		}
		if (count == KOBO_SHARDS_MAX) {
			fprintf(stderr, "kobo: %s: more than %d --postgres URLs\n", cmd,
			        KOBO_SHARDS_MAX);
			return -1;
		}
		urls[count++] = value;
	}
	return count;
}

int kobo_cli_target_resolve(const char *cmd, const char *data_flag,
                            const char **urls, long url_count,
                            kobo_cli_target *target)
{
	memset(target, 0, sizeof *target);
	target->urls = urls;
	if (data_flag != NULL && url_count > 0) {
		fprintf(stderr, "kobo: %s: --data and --postgres cannot be used together: "
		        "shards live either in a data directory or in PostgreSQL\n", cmd);
		return KOBO_CLI_EXIT_USAGE;
	}
	if (data_flag != NULL) {
		target->dir = data_flag;
	} else if (url_count > 0) {
		target->url_count = (size_t)url_count;
	} else {
		/* No flag: the environment, as kobod reads it. */
		const char *env_pg = getenv("KOBO_POSTGRES");
		const char *env_data = getenv("KOBO_DATA");
		bool have_pg = env_pg != NULL && env_pg[strspn(env_pg, " \t\r\n")] != '\0';
		bool have_data = env_data != NULL && env_data[0] != '\0';
		if (have_pg && have_data) {
			fprintf(stderr, "kobo: %s: KOBO_DATA and KOBO_POSTGRES are both set: "
			        "give --data DIR or --postgres URL\n", cmd);
			return KOBO_CLI_EXIT_USAGE;
		}
		if (have_pg) {
			target->env_copy = strdup(env_pg);
			if (target->env_copy == NULL) {
				fprintf(stderr, "kobo: out of memory\n");
				return KOBO_CLI_EXIT_USAGE;
			}
			char *save = NULL;
			for (char *url = strtok_r(target->env_copy, " \t\r\n", &save); url != NULL;
			     url = strtok_r(NULL, " \t\r\n", &save)) {
				if (!postgres_url(url)) {
					fprintf(stderr, "kobo: %s: KOBO_POSTGRES: expected postgresql:// "
					        "or postgres:// URLs separated by whitespace\n", cmd);
					return KOBO_CLI_EXIT_USAGE;
				}
				if (target->url_count == KOBO_SHARDS_MAX) {
					fprintf(stderr, "kobo: %s: KOBO_POSTGRES: more than %d URLs\n",
					        cmd, KOBO_SHARDS_MAX);
					return KOBO_CLI_EXIT_USAGE;
				}
				urls[target->url_count++] = url;
			}
		} else {
			target->dir = have_data ? env_data : KOBO_CLI_DEFAULT_DATA;
		}
	}
	if (target->dir != NULL) {
		if (target->dir[0] == '\0') {
			fprintf(stderr, "kobo: %s: --data needs a directory\n", cmd);
			return KOBO_CLI_EXIT_USAGE;
		}
		snprintf(target->where, sizeof target->where, "data directory %s", target->dir);
	} else {
		char redacted[sizeof target->where - 64];
		kobo_cli_redact_url(urls[0], redacted, sizeof redacted);
		snprintf(target->where, sizeof target->where, "shard 0 of %zu (%s)",
		         target->url_count, redacted);
	}
	return 0;
}

void kobo_cli_target_free(kobo_cli_target *target)
{
	free(target->env_copy);
	target->env_copy = NULL;
}

/* A data directory kobod created: a directory holding shard-0.db, and a
 * readable shard map when it has one (a directory of the single-shard
 * version has none). Prints why not. */
static bool data_dir_ok(const char *cmd, const char *dir)
{
	struct stat st;
	if (stat(dir, &st) != 0) {
		fprintf(stderr, "kobo: %s: %s: %s: give the data directory kobod uses "
		        "(--data DIR or KOBO_DATA)\n", cmd, dir, strerror(errno));
		return false;
	}
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "kobo: %s: %s is not a directory: give the data directory "
		        "kobod uses (--data DIR or KOBO_DATA)\n", cmd, dir);
		return false;
	}
	char path[PATH_MAX];
	if (!kobo_layout_shard_path(path, sizeof path, dir, 0)) {
		fprintf(stderr, "kobo: %s: %s: path too long\n", cmd, dir);
		return false;
	}
	if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
		fprintf(stderr, "kobo: %s: %s is not a Kobo data directory (no shard-0.db): "
		        "kobod creates it at its first start; this command never does\n",
		        cmd, dir);
		return false;
	}
	static kobo_shard_map map;
	char error[PATH_MAX + 256];
	int rc = kobo_shard_map_read(dir, &map, error, sizeof error);
	if (rc != KOBO_OK && rc != KOBO_ENOTFOUND) {
		fprintf(stderr, "kobo: %s: %s\n", cmd, error);
		return false;
	}
	return true;
}

int kobo_cli_target_open_shard0(const char *cmd, const kobo_cli_target *target,
                                bool read_only, kobo_store **out)
{
	*out = NULL;
	char url[PATH_MAX + 8];
	const char *open_url;
	uint32_t count = 0;
	if (target->dir != NULL) {
		if (!data_dir_ok(cmd, target->dir))
			return KOBO_EINVAL;
		if ((size_t)snprintf(url, sizeof url, "sqlite:%s", target->dir) >= sizeof url) {
			fprintf(stderr, "kobo: %s: %s: path too long\n", cmd, target->dir);
			return KOBO_EINVAL;
		}
		open_url = url;
	} else {
		open_url = target->urls[0];
		count = (uint32_t)target->url_count;
	}
	/* Read-only first: refuses a store kobod never created (see the top). */
	kobo_store *probe = NULL;
	int rc = kobo_store_open_sharded(open_url, 0, count, true, &probe);
	if (rc == KOBO_OK && read_only) {
		*out = probe;
		return KOBO_OK;
	}
	if (probe != NULL)
		kobo_store_close(probe);
	if (rc == KOBO_OK)
		rc = kobo_store_open_sharded(open_url, 0, count, false, out);
	if (rc != KOBO_OK) {
		fprintf(stderr, "kobo: %s: cannot open the %s (error %d): %s\n", cmd,
		        target->where, rc,
		        rc == KOBO_EINVAL ? "not a Kobo store kobod created, or not shard 0"
		                          : "unreachable or unreadable");
	}
	return rc;
}
