/*
 * audit.c — `kobo audit --data DIR`: proves that history explains balances
 * (DESIGN.md invariant 6) without a server. Opens every DIR/shard-N.db
 * read-only and runs the store's audit on a consistent snapshot of each, so
 * it may run while kobod writes. Contract in cli.h; what the audit checks
 * is in src/store/store.h.
 *
 * Exit: 0 every shard is sound; 1 any problem (including a missing shard
 * file between shard-0 and the highest one found); 2 bad usage, or, when no
 * problem was found, a shard that could not be opened or read (nothing can
 * be said about it then).
 */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../store/store.h"
#include "cli.h"

/* More shard files than any deployment uses; a bound on the scan. */
#define AUDIT_SHARDS_MAX 4096

typedef struct audit_shard {
	long index;
	char path[4096];
} audit_shard;

typedef struct audit_report {
	bool json;
	long shard;
	json_t *problems; /* --json: this shard's problem lines */
} audit_report;

static void on_problem(void *ctx, const char *line)
{
	audit_report *report = ctx;
	if (report->json) {
		json_array_append_new(report->problems, json_string(line));
		return;
	}
	printf("shard %ld: problem: %s\n", report->shard, line);
}

/* Parses "shard-N.db" (N decimal, no sign, no leading zeros unless "0"). */
static bool shard_file_index(const char *name, long *index)
{
	if (strncmp(name, "shard-", 6) != 0)
		return false;
	const char *digits = name + 6;
	size_t n = strspn(digits, "0123456789");
	if (n == 0 || n > 6 || strcmp(digits + n, ".db") != 0)
		return false;
	if (digits[0] == '0' && n > 1)
		return false;
	*index = strtol(digits, NULL, 10);
	return true;
}

static int by_index(const void *a, const void *b)
{
	long x = ((const audit_shard *)a)->index, y = ((const audit_shard *)b)->index;
	return (x > y) - (x < y);
}

/* Lists DIR/shard-N.db files sorted by N into a malloc'd array. Returns the
 * count, or -1 after printing why the directory could not be read. */
static long list_shards(const char *dir, audit_shard **out)
{
	DIR *d = opendir(dir);
	if (d == NULL) {
		fprintf(stderr, "kobo: audit: cannot open %s: %s\n", dir, strerror(errno));
		return -1;
	}
	audit_shard *shards = NULL;
	long count = 0;
	struct dirent *entry;
	while ((entry = readdir(d)) != NULL) {
		long index;
		if (!shard_file_index(entry->d_name, &index))
			continue;
		if (count == AUDIT_SHARDS_MAX) {
			fprintf(stderr, "kobo: audit: more than %d shard files in %s\n",
			        AUDIT_SHARDS_MAX, dir);
			free(shards);
			closedir(d);
			return -1;
		}
		audit_shard *grown = realloc(shards, (size_t)(count + 1) * sizeof *grown);
		if (grown == NULL) {
			fprintf(stderr, "kobo: out of memory\n");
			free(shards);
			closedir(d);
			return -1;
		}
		shards = grown;
		shards[count].index = index;
		snprintf(shards[count].path, sizeof shards[count].path, "%s/%s", dir,
		         entry->d_name);
		count++;
	}
	closedir(d);
	if (count > 0)
		qsort(shards, (size_t)count, sizeof *shards, by_index);
	*out = shards;
	return count;
}

int kobo_cli_cmd_audit(kobo_cli *cli, int argc, char **argv)
{
	kobo_cli_option options[] = {{.name = "data", .takes_value = true}};
	const char *positional[1];
	size_t positional_count;
	int rc = kobo_cli_parse_args(cli, argc, argv, 1, options, 1, positional, 0,
	                             &positional_count);
	if (rc != 0)
		return rc;
	if (!options[0].present || options[0].value[0] == '\0') {
		fprintf(stderr, "kobo: usage: kobo audit --data DIR [--json]\n");
		return KOBO_CLI_EXIT_USAGE;
	}
	const char *dir = options[0].value;
	audit_shard *shards = NULL;
	long count = list_shards(dir, &shards);
	if (count < 0)
		return KOBO_CLI_EXIT_USAGE;
	if (count == 0) {
		fprintf(stderr, "kobo: audit: no shard-N.db files in %s\n", dir);
		free(shards);
		return KOBO_CLI_EXIT_USAGE;
	}

	json_t *shards_json = cli->json ? json_array() : NULL;
	size_t total_accounts = 0, total_transfers = 0, total_problems = 0;
	bool cannot_read = false;
	/* Shard files are numbered 0..N-1; a gap means a shard is missing. */
	long expected = 0;
	for (long i = 0; i < count; i++) {
		for (; expected < shards[i].index; expected++) {
			total_problems++;
			if (cli->json) {
				json_array_append_new(shards_json,
				        json_pack("{s:I,s:s,s:[s]}", "shard", (json_int_t)expected,
				                  "status", "missing", "problems",
				                  "shard file is missing"));
			} else {
				printf("shard %ld: problem: %s/shard-%ld.db is missing\n", expected,
				       dir, expected);
			}
		}
		expected = shards[i].index + 1;

		audit_report report = {.json = cli->json, .shard = shards[i].index};
		report.problems = cli->json ? json_array() : NULL;
		kobo_audit_totals totals = {0};
		kobo_store *store = NULL;
		int open_rc = kobo_store_sqlite_open(shards[i].path, true, &store);
		int audit_rc = open_rc == KOBO_OK
			? kobo_store_audit(store, on_problem, &report, &totals)
			: open_rc;
		if (store != NULL)
			kobo_store_close(store);
		const char *status;
		if (audit_rc != KOBO_OK) {
			cannot_read = true;
			status = "unreadable";
			fprintf(stderr, "kobo: audit: cannot %s %s (error %d)\n",
			        open_rc != KOBO_OK ? "open" : "read", shards[i].path, audit_rc);
		} else {
			status = totals.problems == 0 ? "sound" : "problems";
			total_accounts += totals.accounts;
			total_transfers += totals.transfers;
			total_problems += totals.problems;
		}
		if (cli->json) {
			json_array_append_new(shards_json,
			        json_pack("{s:I,s:s,s:s,s:I,s:I,s:o}", "shard",
			                  (json_int_t)shards[i].index, "path", shards[i].path,
			                  "status", status, "accounts", (json_int_t)totals.accounts,
			                  "transfers", (json_int_t)totals.transfers, "problems",
			                  report.problems));
		} else if (audit_rc == KOBO_OK) {
			printf("shard %ld: %zu accounts, %zu transfers, %zu problems (%s)\n",
			       shards[i].index, totals.accounts, totals.transfers, totals.problems,
			       shards[i].path);
		}
	}

	const char *verdict = cannot_read ? "incomplete" : total_problems == 0 ? "sound" : "unsound";
	if (cli->json) {
		json_t *root = json_pack("{s:s,s:s,s:I,s:I,s:I,s:o}", "data", dir, "verdict",
		                         verdict, "accounts", (json_int_t)total_accounts,
		                         "transfers", (json_int_t)total_transfers, "problems",
		                         (json_int_t)total_problems, "shards", shards_json);
		char *text = root != NULL ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
		if (text != NULL)
			puts(text);
		free(text);
		json_decref(root);
	} else {
		printf("total: %ld shard files, %zu accounts, %zu transfers, %zu problems: %s\n",
		       count, total_accounts, total_transfers, total_problems, verdict);
	}
	free(shards);
	/* A problem found is a definite answer even if another shard could
	 * not be read; an unreadable shard alone leaves the question open. */
	if (total_problems > 0)
		return KOBO_CLI_EXIT_FAILED;
	return cannot_read ? KOBO_CLI_EXIT_USAGE : KOBO_CLI_EXIT_OK;
}
