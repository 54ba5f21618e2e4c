/*
 * audit.c — `kobo audit --data DIR` or `kobo audit --postgres URL …`: proves
 * that history explains balances
 * (DESIGN.md invariant 6) and that nothing is in limbo between shards
 * (invariant 5), without a server. Contract in cli.h; what the per-shard
 * audit checks is listed at the top of src/store/auditor.c.
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
 *   4. Clearing pairs and legs, across shards (the rules and their table
 *      of what a CREDIT leg may be beside its DEBIT leg are in
 *      src/store/auditor.h and auditor.c, store_pairs_*): every clearing
 *      account and every leg naming one is read, shard by shard, and
 *        - each cross-shard transfer's DEBIT leg (payer's shard) and
 *          CREDIT leg (payee's shard), matched by id, pair and lane, agree,
 *          a saga in flight allowing the CREDIT leg one step ahead;
 *        - shard a's kobo:clearing:a:b:CUR[lane] and shard b's
 *          kobo:clearing:b:a:CUR[lane] (an absent one has balances 0) net
 *          to what the sagas in flight between them account for (zero when
 *          none is):
 *            posted(a,b) + posted(b,a) == sum(DEBIT posted - CREDIT posted)
 *            pending_in(a,b) - pending_out(b,a) == sum(DEBIT held - CREDIT
 *                                                  held), a -> b sagas
 *      This compares shards with each other, so it wants one cut across
 *      all of them: the audit takes DIR/kobod.lock (as kobod does) for its
 *      whole run, and then one read is definite. While kobod holds the
 *      lock, a saga may progress between the reads of two shards: the
 *      read is repeated (AUDIT_PAIRS_ATTEMPTS, AUDIT_PAIRS_RETRY_MS apart)
 *      until one finds nothing, else the answer is "unknown" with the
 *      discrepancies shown as unconfirmed. Never "sound" unchecked.
 *
 * With --postgres (one URL per shard, in shard order, as kobod takes them)
 * step 1 is the list itself: its length is the shard count and the map is
 * the default map for it (kobo_shard_map_fixed); each shard is opened
 * read-only with kobo_store_open_sharded, which refuses a database that
 * records another index or count (exit 2). There is no lock to take: the
 * clearing pairs are always read as while kobod runs (re-read, then
 * "unknown" if still unexplained), and each shard's own audit runs on a
 * REPEATABLE READ snapshot.
 *
 * --metrics-file FILE also leaves the verdict for Prometheus (node_exporter's
 * textfile collector reads FILE; alerts KoboAudit* in
 * deploy/prometheus/rules/kobo-alerts.yml): kobo_audit_verdict{verdict} (1
 * for the verdict reached, 0 for the others), kobo_audit_problems,
 * kobo_audit_sagas_in_flight, kobo_audit_last_run_timestamp_seconds. Written
 * to FILE.tmp and renamed, so a scrape never reads half a file; written
 * whenever the audit ran (bad usage writes nothing, so the timestamp goes
 * stale). A file that cannot be written turns exit 0 into 2.
 *
 * Exit: 0 everything was checked and is sound (sagas in flight included);
 * 1 any problem (including a missing shard file, a shard file outside the
 * map, or a malformed map); 2 bad usage, or, when no problem was found, a
 * shard or the map that could not be read (nothing can be said about it
 * then); 3 no problem found, but the clearing pairs could not be settled
 * while kobod writes ("unknown": stop kobod and audit again).
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
#include <time.h>
#include <unistd.h>

#include "../shard/shard.h"
#include "../store/auditor.h" /* store_pairs_*: the cross-shard rules */
#include "../store/hot/store_hot.h" /* a journaled shard replays first */
#include "../store/layout.h"
#include "../store/store.h"
#include "cli.h"

/* More shard files than any deployment uses; a bound on the scan. */
#define AUDIT_SHARDS_MAX 4096
/* Sagas in flight listed by name; the rest are only counted. */
#define AUDIT_SAGAS_LISTED 20
#define AUDIT_CLEARING_PREFIX KOBO_SYSTEM_ID_PREFIX "clearing:"
/* Reads of the clearing pairs while kobod writes, and the pause between
 * them, before the answer is "unknown" (exit 3). */
#define AUDIT_PAIRS_ATTEMPTS 5
#define AUDIT_PAIRS_RETRY_MS 200

typedef struct audit_shard {
	long index;
	char path[4096];  /* the file, or the PostgreSQL URL without its password */
	const char *url;  /* --postgres: the shard's URL (borrowed from argv) */
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
		if (!kobo_layout_shard_file(entry->d_name, &index))
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
	(void)kobo_layout_lock_path(path, sizeof(path), dir);
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

/* ---- Clearing accounts, shard by shard. ---- */

typedef struct clearing_check {
	uint32_t shard, shard_count; /* the shard being read */
	audit_report *report;
} clearing_check;

/* Checks one clearing account of the shard being read: well-formed, kept
 * on its own shard, naming a shard of the map, in its own currency. Its
 * balances are compared with its partner's later (pairs_check). */
static int on_clearing_account(void *ctx, const kobo_account *account)
{
	clearing_check *check = ctx;
	uint32_t a, b;
	char currency[KOBO_CURRENCY_LEN_MAX + 1];

	if (!kobo_clearing_parse(account->id, &a, &b, currency, NULL)) {
		report_problemf(check->report, "%s is not a well-formed clearing account id",
		                account->id);
		return 0;
	}
	if (a != check->shard) {
		report_problemf(check->report,
		                "clearing account %s belongs on shard %u, not on this one",
		                account->id, a);
		return 0;
	}
	if (b >= check->shard_count) {
		/* Still paired below: its partner is absent, so any balance on it
		 * is reported as money with no counterpart too. */
		report_problemf(check->report,
		                "clearing account %s names shard %u, but there %s only %u "
		                "shard%s", account->id, b,
		                check->shard_count == 1 ? "is" : "are", check->shard_count,
		                check->shard_count == 1 ? "" : "s");
	}
	if (strcmp(account->currency, currency) != 0) {
		report_problemf(check->report, "clearing account %s holds currency %s",
		                account->id, account->currency);
	}
	return 0;
}

/* ---- Clearing pairs and legs, across shards. ---- */

/* One read of every shard's clearing accounts and the legs naming them,
 * fed to the cross-shard rules (src/store/auditor.h, store_pairs_*). */
typedef struct pairs_read {
	store_pairs *pairs;
	kobo_store_reader *reader;
	uint32_t shard;
	int rc;
	/* The clearing account whose legs are being read. */
	const char *clearing_id;
	uint32_t other;
	char currency[KOBO_CURRENCY_LEN_MAX + 1];
	char lane[KOBO_CLEARING_LANE_LEN_MAX + 1];
} pairs_read;

static int on_pair_leg(void *ctx, const kobo_transfer *transfer, int64_t seq)
{
	(void)seq;
	pairs_read *read = ctx;
	if (transfer->leg == KOBO_LEG_LOCAL || strcmp(transfer->clearing, read->clearing_id) != 0)
		return 0;
	read->rc = store_pairs_leg(read->pairs, read->shard, read->other, read->currency,
	                           read->lane, transfer);
	return read->rc != KOBO_OK;
}

static int on_pair_account(void *ctx, const kobo_account *account)
{
	pairs_read *read = ctx;
	uint32_t a;
	if (!kobo_clearing_parse(account->id, &a, &read->other, read->currency, read->lane) ||
	    a != read->shard)
		return 0; /* reported by the shard's own checks */
	read->rc = store_pairs_clearing(read->pairs, read->shard, read->other,
	                                read->currency, read->lane, account);
	if (read->rc != KOBO_OK)
		return 1;
	/* The legs are read inside the scan of the accounts: on SQLite the
	 * scan's statement keeps one read transaction open on the reader's
	 * connection, so a shard's legs and balances come from one snapshot
	 * even while kobod writes. (Across shards there is no such cut.) */
	read->clearing_id = account->id;
	int rc = kobo_store_read_history(read->reader, account->id, 0, SIZE_MAX,
	                                 on_pair_leg, read);
	if (read->rc == KOBO_OK)
		read->rc = rc;
	return read->rc != KOBO_OK;
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
	size_t accounts, transfers, problems, sagas;
	bool cannot_read;
	bool lock_held;     /* DIR/kobod.lock is ours: no kobod runs */
	bool pairs_unknown; /* the pairs could not be settled (exit 3) */
	json_t *shards_json;
} audit_run;

static void audit_one_shard(audit_run *run, uint32_t index)
{
	audit_slot *slot = &run->slots[index];
	kobo_cli *cli = run->cli;
	audit_report report = {.json = cli->json, .shard = index};
	report.lines = cli->json ? json_array() : NULL;

	if (slot->file == NULL) {
		char missing[PATH_MAX];
		(void)kobo_layout_shard_path(missing, sizeof missing, run->dir, index);
		report_problemf(&report, "%s is missing", missing);
		run->problems += report.problems;
		if (cli->json) {
			json_array_append_new(run->shards_json,
			        json_pack("{s:I,s:s,s:o}", "shard", (json_int_t)index, "status",
			                  "missing", "problems", report.lines));
		}
		return;
	}
	const char *path = slot->file->path;
	char url[PATH_MAX + 8];
	int open_rc;
	if (slot->file->url != NULL)
		open_rc = kobo_store_open_sharded(slot->file->url, index, run->shard_count,
		                                  true, &slot->store);
	else if (run->lock_held && store_hot_journal_present(run->dir, index))
		/* kobod is stopped and left frames its projection may not hold:
		 * replay them first (what kobod's start does), then audit. */
		open_rc = (size_t)snprintf(url, sizeof url, "journal:%s?fit", run->dir) < sizeof url
			? kobo_store_open(url, index, false, &slot->store)
			: KOBO_EINVAL;
	else
		open_rc = (size_t)snprintf(url, sizeof url, "sqlite:%s", run->dir) < sizeof url
			? kobo_store_open(url, index, true, &slot->store)
			: KOBO_EINVAL;
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
		/* The clearing accounts, checked one by one (the pairs are
		 * compared across shards later, pairs_check). */
		kobo_store_reader *reader = NULL;
		clearing_check check = {.shard = index, .shard_count = run->shard_count,
		                        .report = &report};
		rc = kobo_store_reader_open(slot->store, &reader);
		if (rc == KOBO_OK) {
			rc = kobo_store_read_accounts_prefix(reader, AUDIT_CLEARING_PREFIX,
			                                     on_clearing_account, &check);
			kobo_store_reader_close(reader);
		}
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

/* One sentence of the cross-shard rules, kept until the attempt's outcome
 * says whether it is a problem or an unconfirmed discrepancy. */
static void keep_pair_line(void *ctx, const char *line)
{
	json_array_append_new(ctx, json_string(line));
}

/* Reads every shard's clearing accounts and legs once and runs the
 * cross-shard rules; the sentences go to lines. */
static int read_pairs_once(audit_run *run, json_t *lines, store_pairs_totals *totals)
{
	store_pairs *pairs = store_pairs_create(keep_pair_line, lines);
	if (pairs == NULL)
		return KOBO_ENOMEM;
	int rc = KOBO_OK;
	for (uint32_t i = 0; i < run->shard_count && rc == KOBO_OK; i++) {
		audit_slot *slot = &run->slots[i];
		if (slot->store == NULL)
			continue; /* missing: reported; its partners' sides stand alone */
		pairs_read read = {.pairs = pairs, .shard = i};
		rc = kobo_store_reader_open(slot->store, &read.reader);
		if (rc != KOBO_OK)
			break;
		rc = kobo_store_read_accounts_prefix(read.reader, AUDIT_CLEARING_PREFIX,
		                                     on_pair_account, &read);
		kobo_store_reader_close(read.reader);
		if (rc == KOBO_OK)
			rc = read.rc;
		if (rc != KOBO_OK) {
			fprintf(stderr, "kobo: audit: cannot read the clearing accounts and legs "
			        "of %s (error %d)\n", slot->file->path, rc);
		}
	}
	if (rc == KOBO_OK)
		store_pairs_finish(pairs, totals);
	store_pairs_destroy(pairs);
	return rc;
}

/* Prints (or, with --json, returns) the lines of an attempt under a label. */
static void print_pair_lines(json_t *lines, const char *label)
{
	size_t i;
	json_t *line;
	json_array_foreach(lines, i, line)
		printf("clearing pairs: %s: %s\n", label, json_string_value(line));
}

/* Checks the clearing pairs and each cross-shard transfer's two legs, with
 * the sagas in flight accounted for (store_pairs_*). With the lock ours,
 * nothing writes: one read is a cut across all shards, and what it finds
 * is definite. Without it (kobod running), the shards are read one after
 * the other while sagas progress, so a discrepancy may be a saga seen on
 * one shard before a step and on the other after it: the read is repeated
 * up to AUDIT_PAIRS_ATTEMPTS times, and when every read finds one the
 * answer is "unknown", never "sound". */
static json_t *pairs_check(audit_run *run, audit_lock lock, const char *lock_reason)
{
	bool json = run->cli->json;
	if (run->cannot_read) {
		const char *reason = "not checked because a shard could not be read";
		if (json)
			return json_pack("{s:s,s:s}", "status", "not_checked", "reason", reason);
		printf("clearing pairs: %s\n", reason);
		return NULL;
	}
	bool cut = lock == AUDIT_LOCK_HELD;
	int attempts_max = cut ? 1 : AUDIT_PAIRS_ATTEMPTS;
	int attempts = 0;
	json_t *lines = NULL;
	store_pairs_totals totals = {0};
	int rc = KOBO_OK;
	while (attempts < attempts_max) {
		if (attempts > 0) {
			struct timespec pause = {0, AUDIT_PAIRS_RETRY_MS * 1000000L};
			nanosleep(&pause, NULL);
		}
		attempts++;
		json_decref(lines);
		lines = json_array();
		rc = lines != NULL ? read_pairs_once(run, lines, &totals) : KOBO_ENOMEM;
		if (rc != KOBO_OK || totals.problems == 0)
			break;
	}
	if (rc != KOBO_OK) {
		run->cannot_read = true;
		json_decref(lines);
		const char *reason = "not checked: the clearing accounts or legs could not be read";
		if (json)
			return json_pack("{s:s,s:s}", "status", "not_checked", "reason", reason);
		printf("clearing pairs: %s\n", reason);
		return NULL;
	}
	char why[PATH_MAX + 512] = "";
	const char *status = "checked";
	if (totals.problems > 0 && cut) {
		run->problems += totals.problems;
	} else if (totals.problems > 0) {
		status = "unknown";
		run->pairs_unknown = true;
		snprintf(why, sizeof(why),
		         "%zu discrepanc%s in each of %d reads %d ms apart (%s): a saga "
		         "progressing between the reads of two shards, or a loss; stop kobod "
		         "for a definite answer", totals.problems,
		         totals.problems == 1 ? "y" : "ies", attempts, AUDIT_PAIRS_RETRY_MS,
		         lock == AUDIT_LOCK_BUSY ? "kobod is running" : lock_reason);
	}
	if (json) {
		bool unknown = run->pairs_unknown;
		json_t *out = json_pack("{s:s,s:I,s:I,s:I,s:I,s:b}", "status", status,
		        "attempts", (json_int_t)attempts, "pairs", (json_int_t)totals.pairs,
		        "transfers", (json_int_t)totals.transfers,
		        "in_flight", (json_int_t)totals.in_flight, "consistent_cut", cut);
		json_object_set_new(out, "problems", unknown ? json_array() : json_incref(lines));
		if (unknown) {
			json_object_set_new(out, "unconfirmed", json_incref(lines));
			json_object_set_new(out, "reason", json_string(why));
		}
		json_decref(lines);
		return out;
	}
	if (run->pairs_unknown) {
		print_pair_lines(lines, "unconfirmed");
		printf("clearing pairs: unknown: %s\n", why);
	} else {
		print_pair_lines(lines, "problem");
		printf("clearing pairs: %zu checked (%zu cross-shard transfers, %zu in flight), "
		       "%zu problems%s\n", totals.pairs, totals.transfers, totals.in_flight,
		       totals.problems, cut ? "" : " (read while kobod runs)");
	}
	json_decref(lines);
	return NULL;
}

/* ---- --metrics-file: the verdict for Prometheus. ---- */

/* Writes path.tmp, then renames it over path. false (with a message on
 * stderr) when it cannot. */
static bool write_metrics_file(const char *path, const char *verdict, size_t problems,
                               size_t sagas)
{
	static const char *const verdicts[] = {"sound", "unsound", "unknown", "incomplete"};
	char tmp[PATH_MAX];
	if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) {
		fprintf(stderr, "kobo: audit: --metrics-file: path too long\n");
		return false;
	}
	FILE *f = fopen(tmp, "w");
	if (f == NULL) {
		fprintf(stderr, "kobo: audit: --metrics-file: cannot write %s: %s\n", tmp,
		        strerror(errno));
		return false;
	}
	fprintf(f, "# HELP kobo_audit_verdict The last kobo audit's verdict: 1 for the one it reached.\n"
	           "# TYPE kobo_audit_verdict gauge\n");
	for (size_t i = 0; i < sizeof verdicts / sizeof verdicts[0]; i++)
		fprintf(f, "kobo_audit_verdict{verdict=\"%s\"} %d\n", verdicts[i],
		        strcmp(verdict, verdicts[i]) == 0);
	fprintf(f, "# HELP kobo_audit_problems Discrepancies the last kobo audit found.\n"
	           "# TYPE kobo_audit_problems gauge\n"
	           "kobo_audit_problems %zu\n"
	           "# HELP kobo_audit_sagas_in_flight Cross-shard sagas under way at the last kobo audit.\n"
	           "# TYPE kobo_audit_sagas_in_flight gauge\n"
	           "kobo_audit_sagas_in_flight %zu\n"
	           "# HELP kobo_audit_last_run_timestamp_seconds When the last kobo audit finished.\n"
	           "# TYPE kobo_audit_last_run_timestamp_seconds gauge\n"
	           "kobo_audit_last_run_timestamp_seconds %lld\n",
	        problems, sagas, (long long)time(NULL));
	bool ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
	ok = fclose(f) == 0 && ok;
	if (!ok || rename(tmp, path) != 0) {
		fprintf(stderr, "kobo: audit: --metrics-file: cannot write %s: %s\n", path,
		        strerror(errno));
		unlink(tmp);
		return false;
	}
	return true;
}

int kobo_cli_cmd_audit(kobo_cli *cli, int argc_in, char **argv_in)
{
	static const char *urls[KOBO_SHARDS_MAX];
	char **argv = calloc((size_t)argc_in + 1, sizeof *argv);
	int argc = 0;
	if (argv == NULL) {
		fprintf(stderr, "kobo: out of memory\n");
		return KOBO_CLI_EXIT_USAGE;
	}
	long url_count = kobo_cli_take_postgres_urls("audit", argc_in, argv_in, urls, argv, &argc);
	kobo_cli_option options[] = {{.name = "data", .takes_value = true},
	                             {.name = "metrics-file", .takes_value = true}};
	const char *positional[1];
	size_t positional_count;
	int rc = url_count < 0 ? KOBO_CLI_EXIT_USAGE
		: kobo_cli_parse_args(cli, argc, argv, 1, options, 2, positional, 0,
		                      &positional_count);
	free(argv);
	if (rc != 0)
		return rc;
	bool postgres = url_count > 0;
	if (postgres == options[0].present ||
	    (options[0].present && options[0].value[0] == '\0') ||
	    (options[1].present && options[1].value[0] == '\0')) {
		fprintf(stderr, "kobo: usage: kobo audit --data DIR [--json] [--metrics-file FILE]\n"
		                "       kobo audit --postgres URL [--postgres URL ...] [--json]"
		                " [--metrics-file FILE]\n"
		                "       (one of --data and --postgres)\n");
		return KOBO_CLI_EXIT_USAGE;
	}
	const char *dir = postgres ? "(postgres)" : options[0].value;
	audit_shard *files = NULL;
	long count;
	if (postgres) {
		files = calloc((size_t)url_count, sizeof *files);
		if (files == NULL) {
			fprintf(stderr, "kobo: out of memory\n");
			return KOBO_CLI_EXIT_USAGE;
		}
		for (long i = 0; i < url_count; i++) {
			files[i].index = i;
			files[i].url = urls[i];
			kobo_cli_redact_url(urls[i], files[i].path, sizeof files[i].path);
		}
		count = url_count;
	} else {
		count = list_shards(dir, &files);
	}
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
	int map_rc = postgres
		? kobo_shard_map_fixed((uint32_t)count, &map, map_error, sizeof(map_error))
		: kobo_shard_map_read(dir, &map, map_error, sizeof(map_error));
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

	/* 2. The lock first, so the cut holds for everything read below. */
	int lock_fd = -1;
	char lock_reason[PATH_MAX + 128] = "";
	audit_lock lock = AUDIT_LOCK_FAILED;
	if (postgres)
		snprintf(lock_reason, sizeof(lock_reason), "PostgreSQL shards have no lock "
		         "to take: kobod may be writing");
	else
		lock = take_lock(dir, &lock_fd, lock_reason, sizeof(lock_reason));
	run->lock_held = lock == AUDIT_LOCK_HELD;

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
		: run->problems > 0 ? "unsound" : run->pairs_unknown ? "unknown" : "sound";
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
		printf("total: %ld shard %s, %zu accounts, %zu transfers, %zu problems: %s\n",
		       count, postgres ? "databases" : "files", run->accounts,
		       run->transfers, run->problems, verdict);
	}

	for (uint32_t i = 0; i < run->shard_count; i++) {
		if (run->slots[i].store != NULL)
			kobo_store_close(run->slots[i].store);
	}
	if (lock_fd >= 0)
		close(lock_fd);
	size_t problems = run->problems;
	bool cannot_read = run->cannot_read;
	bool pairs_unknown = run->pairs_unknown;
	bool written = !options[1].present ||
		write_metrics_file(options[1].value, verdict, problems, run->sagas);
	free(run);
	free(files);
	/* A problem found is a definite answer even if another shard could
	 * not be read; an unreadable shard alone leaves the question open. */
	if (problems > 0)
		return KOBO_CLI_EXIT_FAILED;
	if (cannot_read || !written)
		return KOBO_CLI_EXIT_USAGE;
	return pairs_unknown ? KOBO_CLI_EXIT_UNKNOWN : KOBO_CLI_EXIT_OK;
}
