/*
 * audit.c — `kobo audit --data DIR`: proves that history explains balances
 * (DESIGN.md invariant 6) and that nothing is in limbo between shards
 * (invariant 5), without a server. Contract in cli.h; what the per-shard
 * audit checks is in src/store/store.h.
 *
 *   1. The shard map (DIR/shard-map.json, src/shard/map_file.c) says how many
 *      shards there are; a directory with shard-0.db and no map is data from
 *      the single-shard version: one shard.
 *   2. Each shard file is opened read-only and audited on a consistent
 *      snapshot of its own, so this may run while kobod writes. Its clearing
 *      accounts must be well-formed, name it as their shard, and name a
 *      shard of the map.
 *   3. Sagas in flight (DEBIT legs with a step outstanding) are counted and
 *      the first AUDIT_SAGAS_LISTED are listed.
 *   4. Clearing pairs: shard a's kobo:clearing:a:b:CUR and shard b's
 *      kobo:clearing:b:a:CUR (an absent one has balances 0) net to zero when
 *      no saga is in flight anywhere:
 *        posted(a,b) + posted(b,a) == 0
 *        pending_in(a,b) == pending_out(b,a)   an open cross-shard hold from
 *                                              a to b: payer -> clearing_ab
 *                                              on a, clearing_ba -> payee on b
 *      This compares shards with each other, so it needs one cut across all
 *      of them: the audit takes DIR/kobod.lock (as kobod does) for its whole
 *      run. While kobod holds it the pairs are not checked; that is not a
 *      problem, only an unanswered question (stop kobod to answer it).
 *
 * Exit: 0 everything checked is sound; 1 any problem (including a missing
 * shard file, a shard file outside the map, or a malformed map); 2 bad usage,
 * or, when no problem was found, a shard or the map that could not be read
 * (nothing can be said about it then).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "../shard/shard.h"
#include "../store/store.h"
#include "cli.h"

/* More shard files than any deployment uses; a bound on the scan. */
#define AUDIT_SHARDS_MAX 4096
/* Sagas in flight listed by name; the rest are only counted. */
#define AUDIT_SAGAS_LISTED 20
#define AUDIT_CLEARING_PREFIX KOBO_SYSTEM_ID_PREFIX "clearing:"

typedef struct audit_shard {
	long index;
	char path[4096];
} audit_shard;

typedef struct audit_report {
	bool json;
	long shard;
	size_t problems;  /* reported through this report */
	json_t *lines;    /* --json: the problem lines */
} audit_report;

/* Prints one problem line: "shard N: problem: …" ("clearing pairs: …" when
 * shard is -1), or appends it to the JSON array. */
static void emit_problem(audit_report *report, const char *line)
{
	if (report->json) {
		json_array_append_new(report->lines, json_string(line));
		return;
	}
	if (report->shard < 0)
		printf("clearing pairs: problem: %s\n", line);
	else
		printf("shard %ld: problem: %s\n", report->shard, line);
}

static void report_problemf(audit_report *report, const char *format, ...)
	__attribute__((format(printf, 2, 3)));

/* Reports and counts one problem found here. */
static void report_problemf(audit_report *report, const char *format, ...)
{
	char line[1024];
	va_list args;
	va_start(args, format);
	vsnprintf(line, sizeof(line), format, args);
	va_end(args);
	emit_problem(report, line);
	report->problems++;
}

/* The store's audit counts its own problems: only pass the line on. */
static void on_store_problem(void *ctx, const char *line)
{
	emit_problem(ctx, line);
}

/* ---- Shard files. ---- */

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

/* ---- The data directory's lock. ---- */

typedef enum audit_lock {
	AUDIT_LOCK_HELD,   /* ours: no kobod can write until we exit */
	AUDIT_LOCK_BUSY,   /* kobod holds it */
	AUDIT_LOCK_FAILED, /* could not be taken; why is in the reason */
} audit_lock;

/* Takes DIR/kobod.lock as kobod does (flock, exclusive, non-blocking) and
 * keeps it in *fd until exit. Opened read-only when it exists, so a copy of
 * a data directory on read-only media can still be audited in full. */
static audit_lock take_lock(const char *dir, int *fd, char *reason, size_t reason_len)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/kobod.lock", dir);
	*fd = open(path, O_RDONLY | O_CLOEXEC);
	if (*fd < 0 && errno == ENOENT)
		*fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (*fd < 0) {
		snprintf(reason, reason_len, "cannot open %s: %s", path, strerror(errno));
		return AUDIT_LOCK_FAILED;
	}
	if (flock(*fd, LOCK_EX | LOCK_NB) == 0)
		return AUDIT_LOCK_HELD;
	bool busy = errno == EWOULDBLOCK;
	snprintf(reason, reason_len, "cannot lock %s: %s", path, strerror(errno));
	close(*fd);
	*fd = -1;
	return busy ? AUDIT_LOCK_BUSY : AUDIT_LOCK_FAILED;
}

/* ---- Clearing accounts. ---- */

typedef struct clearing_side {
	uint32_t a, b; /* kobo:clearing:a:b:currency, stored on shard a */
	char currency[KOBO_CURRENCY_LEN_MAX + 1];
	char id[KOBO_ID_LEN_MAX + 1];
	int64_t posted, pending_out, pending_in;
} clearing_side;

typedef struct clearing_list {
	clearing_side *sides;
	size_t count, capacity;
	bool out_of_memory;
	/* The shard being read, for the checks of each account. */
	uint32_t shard, shard_count;
	audit_report *report;
} clearing_list;

/* Checks one clearing account of the shard being read and keeps it for the
 * pair check when it belongs there. */
static int on_clearing_account(void *ctx, const kobo_account *account)
{
	clearing_list *list = ctx;
	clearing_side side = {0};

	if (!kobo_clearing_parse(account->id, &side.a, &side.b, side.currency, NULL)) {
		report_problemf(list->report, "%s is not a well-formed clearing account id",
		                account->id);
		return 0;
	}
	if (side.a != list->shard) {
		report_problemf(list->report,
		                "clearing account %s belongs on shard %u, not on this one",
		                account->id, side.a);
		return 0;
	}
	if (side.b >= list->shard_count) {
		/* Still paired below: its partner is absent, so any balance on it
		 * is reported as money with no counterpart too. */
		report_problemf(list->report,
		                "clearing account %s names shard %u, but there %s only %u "
		                "shard%s", account->id, side.b,
		                list->shard_count == 1 ? "is" : "are", list->shard_count,
		                list->shard_count == 1 ? "" : "s");
	}
	if (strcmp(account->currency, side.currency) != 0) {
		report_problemf(list->report, "clearing account %s holds currency %s",
		                account->id, account->currency);
	}
	if (list->count == list->capacity) {
		size_t capacity = list->capacity ? list->capacity * 2 : 64;
		clearing_side *grown = realloc(list->sides, capacity * sizeof *grown);
		if (grown == NULL) {
			list->out_of_memory = true;
			return 1;
		}
		list->sides = grown;
		list->capacity = capacity;
	}
	snprintf(side.id, sizeof(side.id), "%s", account->id);
	side.posted = account->posted;
	side.pending_out = account->pending_out;
	side.pending_in = account->pending_in;
	list->sides[list->count++] = side;
	return 0;
}

static uint32_t side_low(const clearing_side *s) { return s->a < s->b ? s->a : s->b; }
static uint32_t side_high(const clearing_side *s) { return s->a < s->b ? s->b : s->a; }

/* Orders sides by pair (low shard, high shard, currency), then by a: the two
 * sides of a pair end up next to each other, low shard's first. */
static int by_pair(const void *x, const void *y)
{
	const clearing_side *p = x, *q = y;
	if (side_low(p) != side_low(q))
		return side_low(p) < side_low(q) ? -1 : 1;
	if (side_high(p) != side_high(q))
		return side_high(p) < side_high(q) ? -1 : 1;
	int c = strcmp(p->currency, q->currency);
	if (c != 0)
		return c;
	return (p->a > q->a) - (p->a < q->a);
}

/* Fills an absent side: the partner account was never created, balance 0. */
static void absent_side(clearing_side *out, uint32_t a, uint32_t b, const char *currency)
{
	*out = (clearing_side){.a = a, .b = b};
	snprintf(out->currency, sizeof(out->currency), "%s", currency);
	kobo_clearing_id(out->id, a, b, currency);
}

/* Checks every pair; returns the number of pairs checked. */
static size_t check_pairs(clearing_list *list, audit_report *report)
{
	size_t pairs = 0;
	if (list->count > 0)
		qsort(list->sides, list->count, sizeof *list->sides, by_pair);
	for (size_t i = 0; i < list->count; pairs++) {
		clearing_side low, high;
		const clearing_side *first = &list->sides[i];
		const clearing_side *next = i + 1 < list->count ? &list->sides[i + 1] : NULL;
		/* Ids are unique per shard and only shard a keeps a:b, so a pair
		 * has at most two sides, sorted low shard's first. */
		bool both = next != NULL && side_low(first) == side_low(next) &&
		            side_high(first) == side_high(next) &&
		            strcmp(first->currency, next->currency) == 0;
		if (both) {
			low = *first;
			high = *next;
			i += 2;
		} else if (first->a < first->b) {
			low = *first;
			absent_side(&high, first->b, first->a, first->currency);
			i++;
		} else {
			high = *first;
			absent_side(&low, first->b, first->a, first->currency);
			i++;
		}
		const char *low_note = both || first->a == low.a ? "" : " (absent)";
		const char *high_note = both || first->a == high.a ? "" : " (absent)";
		int64_t sum;
		if (__builtin_add_overflow(low.posted, high.posted, &sum) || sum != 0) {
			report_problemf(report,
			                "%s on shard %u posted %" PRId64 "%s and %s on shard %u "
			                "posted %" PRId64 "%s do not net to 0",
			                low.id, low.a, low.posted, low_note, high.id, high.a,
			                high.posted, high_note);
		}
		if (low.pending_in != high.pending_out) {
			report_problemf(report,
			                "holds from shard %u to shard %u in %s disagree: %s "
			                "pending_in %" PRId64 "%s, %s pending_out %" PRId64 "%s",
			                low.a, high.a, low.currency, low.id, low.pending_in,
			                low_note, high.id, high.pending_out, high_note);
		}
		if (high.pending_in != low.pending_out) {
			report_problemf(report,
			                "holds from shard %u to shard %u in %s disagree: %s "
			                "pending_in %" PRId64 "%s, %s pending_out %" PRId64 "%s",
			                high.a, low.a, high.currency, high.id, high.pending_in,
			                high_note, low.id, low.pending_out, low_note);
		}
	}
	return pairs;
}

/* ---- Sagas in flight. ---- */

typedef struct saga_list {
	bool json;
	long shard;
	size_t listed;
	json_t *items; /* --json */
} saga_list;

static int on_saga(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	(void)seq;
	saga_list *list = ctx;
	const char *state = kobo_saga_state_name(transfer->saga);
	if (list->json) {
		json_array_append_new(list->items,
		        json_pack("{s:I,s:s,s:s,s:s}", "shard", (json_int_t)list->shard,
		                  "id", transfer->id, "state", state, "request_id",
		                  transfer->request_id));
	} else {
		printf("  shard %ld: %s %s (request_id %s)\n", list->shard, transfer->id, state,
		       transfer->request_id[0] != '\0' ? transfer->request_id : "none");
	}
	list->listed++;
	return list->listed == AUDIT_SAGAS_LISTED;
}

/* ---- The command. ---- */

/* One shard of the map as audited. */
typedef struct audit_slot {
	const audit_shard *file; /* NULL: the file is missing */
	kobo_store *store;       /* open while the audit runs; NULL if unreadable */
	kobo_audit_totals totals;
} audit_slot;

typedef struct audit_run {
	kobo_cli *cli;
	const char *dir;
	uint32_t shard_count;
	audit_slot slots[KOBO_SHARDS_MAX];
	clearing_list clearing;
	size_t accounts, transfers, problems, sagas;
	bool cannot_read;
	json_t *shards_json;
} audit_run;

static void audit_one_shard(audit_run *run, uint32_t index)
{
	audit_slot *slot = &run->slots[index];
	kobo_cli *cli = run->cli;
	audit_report report = {.json = cli->json, .shard = index};
	report.lines = cli->json ? json_array() : NULL;

	if (slot->file == NULL) {
		report_problemf(&report, "%s/shard-%u.db is missing", run->dir, index);
		run->problems += report.problems;
		if (cli->json) {
			json_array_append_new(run->shards_json,
			        json_pack("{s:I,s:s,s:o}", "shard", (json_int_t)index, "status",
			                  "missing", "problems", report.lines));
		}
		return;
	}
	const char *path = slot->file->path;
	int open_rc = kobo_store_sqlite_open(path, true, &slot->store);
	int rc = open_rc == KOBO_OK
		? kobo_store_audit(slot->store, on_store_problem, &report, &slot->totals)
		: open_rc;
	const char *status;
	if (rc != KOBO_OK) {
		run->cannot_read = true;
		status = "unreadable";
		fprintf(stderr, "kobo: audit: cannot %s %s (error %d)\n",
		        open_rc != KOBO_OK ? "open" : "read", path, rc);
		if (slot->store != NULL)
			kobo_store_close(slot->store);
		slot->store = NULL;
	} else {
		/* The clearing accounts, checked one by one now and kept for
		 * the pair check. They are read after the audit's snapshot; only
		 * the pair check needs both to agree, and it runs only when
		 * nothing writes (the lock is ours). */
		kobo_store_reader *reader = NULL;
		run->clearing.shard = index;
		run->clearing.report = &report;
		rc = kobo_store_reader_open(slot->store, &reader);
		if (rc == KOBO_OK) {
			rc = kobo_store_read_accounts_prefix(reader, AUDIT_CLEARING_PREFIX,
			                                     on_clearing_account, &run->clearing);
			kobo_store_reader_close(reader);
		}
		if (rc == KOBO_OK && run->clearing.out_of_memory)
			rc = KOBO_ENOMEM;
		if (rc != KOBO_OK) {
			/* What the audit found stands; the pairs cannot be checked. */
			run->cannot_read = true;
			fprintf(stderr, "kobo: audit: cannot read the clearing accounts of %s "
			        "(error %d)\n", path, rc);
		}
		size_t problems = slot->totals.problems + report.problems;
		status = problems == 0 ? "sound" : "problems";
		run->accounts += slot->totals.accounts;
		run->transfers += slot->totals.transfers;
		run->problems += problems;
		run->sagas += slot->totals.sagas_in_flight;
		if (!cli->json) {
			printf("shard %u: %zu accounts, %zu transfers, %zu problems (%s)\n", index,
			       slot->totals.accounts, slot->totals.transfers, problems, path);
		}
	}
	if (cli->json) {
		json_array_append_new(run->shards_json,
		        json_pack("{s:I,s:s,s:s,s:I,s:I,s:I,s:o}", "shard", (json_int_t)index,
		                  "path", path, "status", status, "accounts",
		                  (json_int_t)slot->totals.accounts, "transfers",
		                  (json_int_t)slot->totals.transfers, "sagas_in_flight",
		                  (json_int_t)slot->totals.sagas_in_flight, "problems",
		                  report.lines));
	} else {
		json_decref(report.lines);
	}
}

/* Lists the first AUDIT_SAGAS_LISTED sagas in flight, shard by shard. */
static json_t *list_sagas(audit_run *run)
{
	saga_list list = {.json = run->cli->json};
	list.items = run->cli->json ? json_array() : NULL;
	if (!run->cli->json)
		printf("sagas in flight: %zu\n", run->sagas);
	for (uint32_t i = 0; i < run->shard_count && run->sagas > 0; i++) {
		audit_slot *slot = &run->slots[i];
		if (slot->store == NULL || slot->totals.sagas_in_flight == 0 ||
		    list.listed == AUDIT_SAGAS_LISTED)
			continue;
		kobo_store_reader *reader = NULL;
		list.shard = i;
		int rc = kobo_store_reader_open(slot->store, &reader);
		if (rc == KOBO_OK) {
			rc = kobo_store_read_sagas(reader, "", AUDIT_SAGAS_LISTED - list.listed,
			                           on_saga, &list);
			kobo_store_reader_close(reader);
		}
		if (rc != KOBO_OK) {
			fprintf(stderr, "kobo: audit: cannot list the sagas of %s (error %d)\n",
			        slot->file->path, rc);
		}
	}
	if (!run->cli->json && run->sagas > list.listed)
		printf("  and %zu more\n", run->sagas - list.listed);
	return list.items;
}

/* Runs the pair check when it can be answered; else says why not. */
static json_t *pairs_check(audit_run *run, audit_lock lock, const char *lock_reason)
{
	char reason[PATH_MAX + 256] = "";
	if (lock == AUDIT_LOCK_BUSY) {
		snprintf(reason, sizeof(reason),
		         "not checked while kobod is running (stop it for a consistent cut "
		         "across shards)");
	} else if (lock == AUDIT_LOCK_FAILED) {
		snprintf(reason, sizeof(reason),
		         "not checked: %s (no consistent cut across shards)", lock_reason);
	} else if (run->sagas > 0) {
		snprintf(reason, sizeof(reason),
		         "not checked because %zu saga%s in flight (kobod resumes %s when it "
		         "starts)", run->sagas, run->sagas == 1 ? " is" : "s are",
		         run->sagas == 1 ? "it" : "them");
	} else if (run->cannot_read) {
		snprintf(reason, sizeof(reason),
		         "not checked because a shard could not be read");
	}
	if (reason[0] != '\0') {
		if (run->cli->json)
			return json_pack("{s:s,s:s}", "status", "not_checked", "reason", reason);
		printf("clearing pairs: %s\n", reason);
		return NULL;
	}
	audit_report report = {.json = run->cli->json, .shard = -1};
	report.lines = run->cli->json ? json_array() : NULL;
	size_t pairs = check_pairs(&run->clearing, &report);
	run->problems += report.problems;
	if (run->cli->json) {
		return json_pack("{s:s,s:I,s:o}", "status", "checked", "pairs",
		                 (json_int_t)pairs, "problems", report.lines);
	}
	printf("clearing pairs: %zu checked, %zu problems\n", pairs, report.problems);
	return NULL;
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
	audit_shard *files = NULL;
	long count = list_shards(dir, &files);
	if (count < 0)
		return KOBO_CLI_EXIT_USAGE;

	audit_run *run = calloc(1, sizeof(*run));
	if (run == NULL) {
		fprintf(stderr, "kobo: out of memory\n");
		free(files);
		return KOBO_CLI_EXIT_USAGE;
	}
	run->cli = cli;
	run->dir = dir;
	run->shards_json = cli->json ? json_array() : NULL;

	/* 1. How many shards: the map's count, else what the files say. */
	static kobo_shard_map map;
	char map_error[PATH_MAX + 256] = "";
	const char *map_status = "present";
	int map_rc = kobo_shard_map_read(dir, &map, map_error, sizeof(map_error));
	if (map_rc == KOBO_OK) {
		run->shard_count = map.shard_count;
	} else {
		long highest = count > 0 ? files[count - 1].index : -1;
		run->shard_count = highest < 0 ? 0
			: highest >= KOBO_SHARDS_MAX ? KOBO_SHARDS_MAX : (uint32_t)highest + 1;
		if (map_rc == KOBO_ENOTFOUND) {
			map_status = "absent";
			if (count == 0) {
				fprintf(stderr, "kobo: audit: no shard-N.db files in %s\n", dir);
				json_decref(run->shards_json);
				free(run);
				free(files);
				return KOBO_CLI_EXIT_USAGE;
			}
			/* Data from the single-shard version: one shard. */
			run->shard_count = 1;
		} else if (map_rc == KOBO_EINVAL) {
			map_status = "malformed";
			run->problems++;
			if (!cli->json)
				printf("shard map: problem: %s\n", map_error);
		} else {
			map_status = "unreadable";
			run->cannot_read = true;
			fprintf(stderr, "kobo: audit: %s\n", map_error);
		}
	}
	if (map_rc != KOBO_EINVAL)
		map_error[0] = '\0';
	run->clearing.shard_count = run->shard_count;

	/* 2. The lock first, so the cut holds for everything read below. */
	int lock_fd = -1;
	char lock_reason[PATH_MAX + 128] = "";
	audit_lock lock = take_lock(dir, &lock_fd, lock_reason, sizeof(lock_reason));

	/* 3. Every shard of the map, then the files beyond it (problems). */
	for (long i = 0; i < count; i++) {
		if (files[i].index < (long)run->shard_count)
			run->slots[files[i].index].file = &files[i];
	}
	for (uint32_t i = 0; i < run->shard_count; i++)
		audit_one_shard(run, i);
	for (long i = 0; i < count; i++) {
		if (files[i].index < (long)run->shard_count)
			continue;
		audit_report report = {.json = cli->json, .shard = files[i].index};
		report.lines = cli->json ? json_array() : NULL;
		if (map_rc == KOBO_ENOTFOUND)
			report_problemf(&report, "%s is beyond shard-0.db in a directory "
			                "without a shard map", files[i].path);
		else
			report_problemf(&report, "%s is not in the shard map (%u shard%s)",
			                files[i].path, run->shard_count,
			                run->shard_count == 1 ? "" : "s");
		run->problems += report.problems;
		if (cli->json) {
			json_array_append_new(run->shards_json,
			        json_pack("{s:I,s:s,s:s,s:o}", "shard", (json_int_t)files[i].index,
			                  "path", files[i].path, "status", "not_in_map",
			                  "problems", report.lines));
		} else {
			json_decref(report.lines);
		}
	}

	/* 4, 5. Sagas in flight, then the clearing pairs. */
	json_t *sagas_json = list_sagas(run);
	json_t *pairs_json = pairs_check(run, lock, lock_reason);

	const char *verdict = run->cannot_read ? "incomplete"
		: run->problems == 0 ? "sound" : "unsound";
	if (cli->json) {
		json_t *root = json_pack("{s:s,s:s,s:{s:s,s:I,s:s*},s:I,s:I,s:I,s:I,s:o,s:o,s:o}",
		        "data", dir, "verdict", verdict,
		        "shard_map", "status", map_status, "shards", (json_int_t)run->shard_count,
		        "problem", map_error[0] != '\0' ? map_error : NULL,
		        "accounts", (json_int_t)run->accounts,
		        "transfers", (json_int_t)run->transfers,
		        "problems", (json_int_t)run->problems,
		        "sagas_in_flight", (json_int_t)run->sagas,
		        "sagas", sagas_json,
		        "clearing_pairs", pairs_json,
		        "shards", run->shards_json);
		char *text = root != NULL ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
		if (text != NULL)
			puts(text);
		else
			fprintf(stderr, "kobo: audit: cannot encode the report\n");
		free(text);
		json_decref(root);
	} else {
		printf("total: %ld shard files, %zu accounts, %zu transfers, %zu problems: %s\n",
		       count, run->accounts, run->transfers, run->problems, verdict);
	}

	for (uint32_t i = 0; i < run->shard_count; i++) {
		if (run->slots[i].store != NULL)
			kobo_store_close(run->slots[i].store);
	}
	if (lock_fd >= 0)
		close(lock_fd);
	size_t problems = run->problems;
	bool cannot_read = run->cannot_read;
	free(run->clearing.sides);
	free(run);
	free(files);
	/* A problem found is a definite answer even if another shard could
	 * not be read; an unreadable shard alone leaves the question open. */
	if (problems > 0)
		return KOBO_CLI_EXIT_FAILED;
	return cannot_read ? KOBO_CLI_EXIT_USAGE : KOBO_CLI_EXIT_OK;
}
