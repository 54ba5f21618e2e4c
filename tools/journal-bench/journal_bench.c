/*
 * journal_bench.c — micro-benchmark of the journal (src/store/journal):
 * appends/s and MB/s with one fdatasync per append, for a few payload sizes
 * and frames per append, against SQLite committing the same bytes (one
 * INSERT of a BLOB per transaction; WAL, synchronous=FULL as
 * src/store/sqlite configures it). `make bench-journal` builds and runs it;
 * results go to docs/benchmarks.md by hand.
 *
 *   journal-bench DIR [SECONDS_PER_CASE]   (default 3; each case bounded)
 *
 * DIR must be empty or absent and on the disk being measured; it is
 * removed case by case as it goes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "../../src/store/journal/journal.h"

#define LATENCIES_MAX 1000000

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double *latencies;

static void report(const char *what, size_t payload, size_t frames, long appends,
                   double seconds)
{
	qsort(latencies, (size_t)appends, sizeof *latencies, cmp_double);
	double per_s = (double)appends / seconds;
	double mb_s = per_s * (double)(payload * frames) / (1024.0 * 1024.0);
	printf("| %-7s | %8zu | %3zu | %9.0f | %9.0f | %8.1f | %6.2f | %6.2f |\n", what, payload,
	       frames, per_s, per_s * (double)frames, mb_s,
	       latencies[appends / 2] * 1e3, latencies[(appends * 99) / 100] * 1e3);
	fflush(stdout);
}

static void rm_rf(const char *dir)
{
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		exit(1);
}

static void bench_journal(const char *dir, size_t payload, size_t frames, double seconds)
{
	rm_rf(dir);
	if (mkdir(dir, 0700) != 0) {
		perror(dir);
		exit(1);
	}
	kobo_journal_config c;
	kobo_journal_config_default(&c);
	c.segments_max = 1024;
	kobo_journal *j;
	kobo_journal_recovery r;
	if (kobo_journal_open(dir, &c, &r, &j) != KOBO_OK) {
		fprintf(stderr, "open: %s\n", r.message);
		exit(1);
	}
	uint8_t *buf = malloc(payload);
	memset(buf, 0xa5, payload);
	kobo_journal_payload p[64];
	for (size_t i = 0; i < frames; i++)
		p[i] = (kobo_journal_payload){buf, payload};
	/* The first append creates the first segment: not timed. */
	if (kobo_journal_append(j, p, 1, NULL) != KOBO_OK)
		exit(1);
	long appends = 0;
	double start = now_s(), end = start + seconds, t = start;
	while (t < end && appends < LATENCIES_MAX) {
		int status = kobo_journal_append(j, p, frames, NULL);
		if (status == KOBO_EFULL) {
			kobo_journal_release(j, kobo_journal_last_batch(j), NULL);
			continue;
		}
		if (status != KOBO_OK) {
			fprintf(stderr, "append: %d\n", status);
			exit(1);
		}
		double t2 = now_s();
		latencies[appends++] = t2 - t;
		t = t2;
		/* Keep disk use bounded as a projection would. */
		if (kobo_journal_segments(j) > 8)
			kobo_journal_release(j, kobo_journal_last_batch(j), NULL);
	}
	report("journal", payload, frames, appends, t - start);
	kobo_journal_close(j);
	free(buf);
	rm_rf(dir);
}

static void bench_sqlite(const char *dir, size_t payload, size_t frames, double seconds)
{
	rm_rf(dir);
	if (mkdir(dir, 0700) != 0)
		exit(1);
	char path[600];
	snprintf(path, sizeof path, "%s/bench.db", dir);
	sqlite3 *db;
	if (sqlite3_open(path, &db) != SQLITE_OK ||
	    sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
	                     "CREATE TABLE frames(batch INTEGER PRIMARY KEY, payload BLOB)",
	                 NULL, NULL, NULL) != SQLITE_OK) {
		fprintf(stderr, "sqlite: %s\n", sqlite3_errmsg(db));
		exit(1);
	}
	sqlite3_stmt *ins;
	sqlite3_prepare_v2(db, "INSERT INTO frames(payload) VALUES (?)", -1, &ins, NULL);
	uint8_t *buf = malloc(payload);
	memset(buf, 0xa5, payload);
	long appends = 0;
	size_t written = 0;
	double start = now_s(), end = start + seconds, t = start;
	while (t < end && appends < LATENCIES_MAX) {
		sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
		for (size_t i = 0; i < frames; i++) {
			sqlite3_bind_blob(ins, 1, buf, (int)payload, SQLITE_STATIC);
			if (sqlite3_step(ins) != SQLITE_DONE)
				exit(1);
			sqlite3_reset(ins);
		}
		if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
			exit(1);
		double t2 = now_s();
		latencies[appends++] = t2 - t;
		t = t2;
		/* Bounded disk: empty the table now and then (outside timing). */
		written += payload * frames;
		if (written > (256u << 20)) {
			written = 0;
			sqlite3_exec(db, "DELETE FROM frames; PRAGMA wal_checkpoint(TRUNCATE)", NULL,
			             NULL, NULL);
			t = now_s();
		}
	}
	report("sqlite", payload, frames, appends, t - start);
	sqlite3_finalize(ins);
	sqlite3_close(db);
	free(buf);
	rm_rf(dir);
}

/* Recovery speed: fills `mib` MiB of 64 KiB frames, closes, drops nothing
 * from the page cache (so it measures verification, not the disk), and times
 * kobo_journal_open's scan. */
static void bench_recovery(const char *dir, unsigned mib)
{
	rm_rf(dir);
	if (mkdir(dir, 0700) != 0)
		exit(1);
	kobo_journal_config c;
	kobo_journal_config_default(&c);
	kobo_journal *j;
	kobo_journal_recovery r;
	if (kobo_journal_open(dir, &c, &r, &j) != KOBO_OK)
		exit(1);
	static uint8_t buf[65536];
	memset(buf, 0x5a, sizeof buf);
	kobo_journal_payload p[16];
	for (int i = 0; i < 16; i++)
		p[i] = (kobo_journal_payload){buf, sizeof buf};
	for (unsigned done = 0; done < mib; done++)
		if (kobo_journal_append(j, p, 16, NULL) != KOBO_OK)
			exit(1);
	kobo_journal_close(j);
	double t = now_s();
	if (kobo_journal_open(dir, &c, &r, &j) != KOBO_OK)
		exit(1);
	double took = now_s() - t;
	printf("\nrecovery: %u MiB in %u segments, %llu frames verified in %.3f s (%.0f MB/s, "
	       "page cache warm)\n", mib, r.segments, (unsigned long long)r.frames, took,
	       (double)mib / took);
	kobo_journal_close(j);
	rm_rf(dir);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: journal-bench DIR [SECONDS_PER_CASE]\n");
		return 2;
	}
	double seconds = argc > 2 ? atof(argv[2]) : 3.0;
	if (seconds <= 0 || seconds > 60)
		seconds = 3.0;
	latencies = malloc(LATENCIES_MAX * sizeof *latencies);
	if (!latencies)
		return 1;
	static const struct { size_t payload, frames; } cases[] = {
		{1024, 1}, {65536, 1}, {1048576, 1}, {1024, 16}, {65536, 16},
	};
	printf("| store   | payload  | fr/append | appends/s | frames/s | MB/s | p50 ms | p99 ms |\n");
	printf("|---|---:|---:|---:|---:|---:|---:|---:|\n");
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		bench_journal(argv[1], cases[i].payload, cases[i].frames, seconds);
		bench_sqlite(argv[1], cases[i].payload, cases[i].frames, seconds);
	}
	bench_recovery(argv[1], 256);
	free(latencies);
	return 0;
}
