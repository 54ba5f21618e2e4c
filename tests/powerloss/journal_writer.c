/*
 * journal_writer.c — the journal's side of the power-loss test
 * (tests/powerloss/run_journal.py drives it; README "Durability").
 *
 *   journal_writer write DIR SEED APPENDS SEGMENT_BYTES PAYLOAD_MAX SPARE RELEASE_EVERY
 *     Opens the journal in DIR and makes APPENDS appends of 1..6 frames,
 *     each payload 0..PAYLOAD_MAX bytes, all derived from SEED and the batch
 *     number; every RELEASE_EVERY appends (0: never) it releases up to ten
 *     batches behind the last. Run under the shim (powerloss_shim.c), it
 *     prints one line per step to stdout, flushed, with the size of the
 *     shim's log (KOBO_POWERLOSS_LOG) at that moment:
 *       open FIRST LAST LOGPOS      after the open recovered batches FIRST..LAST
 *       begin FIRST COUNT LOGPOS    before an append of COUNT frames
 *       ack FIRST LAST LOGPOS       after kobo_journal_append returned KOBO_OK
 *       release UPTO LOGPOS         before kobo_journal_release
 *     A crash at log offset C (the replayer) then has acknowledged every
 *     ack with LOGPOS <= C, written nothing of a begin with LOGPOS >= C, and
 *     may have released up to the largest UPTO with LOGPOS < C.
 *
 *   journal_writer verify DIR SEED SEGMENT_BYTES PAYLOAD_MAX ACKED RELEASED WRITTEN REFUSAL_OK
 *     Opens the journal a power cut left in DIR and checks: every batch in
 *     (RELEASED, ACKED] is there with its exact bytes, numbers contiguous,
 *     the first <= RELEASED + 1, nothing beyond WRITTEN, every frame present
 *     carries the bytes written for its number; then it appends one frame,
 *     reopens and finds it (recovery left a journal that goes on).
 *     If open refuses, the refusal must be one journal.h documents
 *     (invariant 5: "bad frame … followed by a valid frame" or "… by
 *     non-zero bytes", in the LAST segment) and allowed (REFUSAL_OK = 1: the
 *     policy could write an unsynced append's sectors out of order), and a
 *     scan of the segment files must still find every acknowledged frame,
 *     intact, before the bad one: nothing acknowledged lost, only an
 *     operator needed. Prints one line: "ok …", or for a refusal
 *     "refused-later-frame …" (a valid frame lies after the bad one: an
 *     earlier frame of the append was lost, a later one reached the disk —
 *     journal.h's known limit) or "refused-later-bytes …" (only non-zero
 *     bytes after it: sectors of the torn frame(s) out of order); exits 1
 *     with "FAIL: …" otherwise.
 *
 *   journal_writer verify-batch
 *     The same for each line of stdin (verify's arguments), in one process.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../src/store/journal/journal.h"

#define FRAMES_PER_APPEND_MAX 6
#define RELEASE_LAG_BATCHES 10

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The payload of batch b: its length and bytes follow from (seed, b). */
static size_t payload_of(uint64_t seed, uint64_t b, uint32_t payload_max, uint8_t *out)
{
	uint64_t s = seed * 0x100000001b3ull ^ b;
	size_t len = (size_t)(splitmix(&s) % ((uint64_t)payload_max + 1));
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = splitmix(&s);
		for (size_t k = 0; k < 8 && i + k < len; k++)
			out[i + k] = (uint8_t)(v >> 8 * k);
	}
	return len;
}

static long long log_pos(void)
{
	const char *log = getenv("KOBO_POWERLOSS_LOG");
	struct stat st;
	return log && stat(log, &st) == 0 ? (long long)st.st_size : 0;
}

static uint64_t arg_u64(const char *s, const char *what)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || end == s) {
		fprintf(stderr, "journal_writer: bad %s: %s\n", what, s);
		exit(2);
	}
	return v;
}

static kobo_journal_config config_of(uint64_t segment_bytes, uint32_t payload_max, bool spare)
{
	kobo_journal_config c;
	kobo_journal_config_default(&c);
	c.segment_bytes = segment_bytes;
	c.payload_bytes_max = payload_max;
	c.segments_max = 4096;
	c.spare_segment = spare;
	return c;
}

static int run_write(char **argv)
{
	const char *dir = argv[0];
	uint64_t seed = arg_u64(argv[1], "seed"), appends = arg_u64(argv[2], "appends");
	kobo_journal_config c = config_of(arg_u64(argv[3], "segment bytes"),
	                                  (uint32_t)arg_u64(argv[4], "payload max"),
	                                  arg_u64(argv[5], "spare") != 0);
	uint64_t release_every = arg_u64(argv[6], "release every");
	kobo_journal_recovery rec;
	kobo_journal *j;
	if (kobo_journal_open(dir, &c, &rec, &j) != KOBO_OK) {
		fprintf(stderr, "journal_writer: open: %s\n", rec.message);
		return 1;
	}
	printf("open %" PRIu64 " %" PRIu64 " %lld\n", kobo_journal_first_batch(j),
	       kobo_journal_last_batch(j), log_pos());
	fflush(stdout);
	uint8_t *bufs = malloc((size_t)FRAMES_PER_APPEND_MAX * (c.payload_bytes_max + 1));
	if (!bufs)
		return 1;
	uint64_t rng = seed ^ 0x5eedull;
	for (uint64_t a = 0; a < appends; a++) {
		size_t count = 1 + (size_t)(splitmix(&rng) % FRAMES_PER_APPEND_MAX);
		uint64_t first = kobo_journal_last_batch(j) + 1;
		kobo_journal_payload p[FRAMES_PER_APPEND_MAX];
		for (size_t i = 0; i < count; i++) {
			uint8_t *b = bufs + i * (c.payload_bytes_max + 1);
			p[i] = (kobo_journal_payload){b, payload_of(seed, first + i, c.payload_bytes_max, b)};
		}
		printf("begin %" PRIu64 " %zu %lld\n", first, count, log_pos());
		fflush(stdout);
		uint64_t got;
		int status = kobo_journal_append(j, p, count, &got);
		if (status != KOBO_OK || got != first) {
			fprintf(stderr, "journal_writer: append %" PRIu64 ": status %d\n", a, status);
			return 1;
		}
		printf("ack %" PRIu64 " %" PRIu64 " %lld\n", first, first + count - 1, log_pos());
		fflush(stdout);
		uint64_t last = first + count - 1;
		if (release_every && (a + 1) % release_every == 0 && last > RELEASE_LAG_BATCHES) {
			printf("release %" PRIu64 " %lld\n", last - RELEASE_LAG_BATCHES, log_pos());
			fflush(stdout);
			if (kobo_journal_release(j, last - RELEASE_LAG_BATCHES, NULL) != KOBO_OK) {
				fprintf(stderr, "journal_writer: release failed\n");
				return 1;
			}
		}
	}
	free(bufs);
	kobo_journal_close(j);
	return 0;
}

/* ---- verify ---- */

typedef struct checker {
	uint64_t seed;
	uint32_t payload_max;
	uint8_t *expect;
	uint64_t next;     /* the batch the next frame must carry, 0: any */
	uint64_t last;     /* last frame seen */
	const char *bad;   /* first mismatch, or NULL */
	char why[200];
} checker;

static void check_payload(checker *k, uint64_t batch, const void *payload, size_t len)
{
	size_t want = payload_of(k->seed, batch, k->payload_max, k->expect);
	if (!k->bad && (want != len || memcmp(k->expect, payload, len) != 0)) {
		snprintf(k->why, sizeof k->why, "batch %" PRIu64 " holds %zu bytes that are not the"
		         " %zu bytes written for it", batch, len, want);
		k->bad = k->why;
	}
	if (!k->bad && k->next && batch != k->next) {
		snprintf(k->why, sizeof k->why, "batch %" PRIu64 " where %" PRIu64 " belongs", batch,
		         k->next);
		k->bad = k->why;
	}
	k->next = batch + 1;
	k->last = batch;
}

static void on_frame(void *ctx, uint64_t batch, uint64_t offset, const uint8_t *frame,
                     size_t frame_bytes)
{
	(void)offset;
	check_payload(ctx, batch, frame + KOBO_JOURNAL_HEADER_BYTES,
	              frame_bytes - KOBO_JOURNAL_FRAME_OVERHEAD);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* The segment numbers in DIR/journal, sorted; returns how many (<= max). */
static size_t list_segments(const char *dir, uint64_t *out, size_t max)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/journal", dir);
	DIR *d = opendir(path);
	size_t n = 0;
	struct dirent *e;
	while (d && (e = readdir(d)) != NULL && n < max) {
		size_t len = strlen(e->d_name);
		if (len == 20 && strcmp(e->d_name + 16, ".seg") == 0 &&
		    strspn(e->d_name, "0123456789") == 16)
			out[n++] = strtoull(e->d_name, NULL, 10);
	}
	if (d)
		closedir(d);
	qsort(out, n, sizeof *out, cmp_u64);
	return n;
}

#define SEGMENTS_LISTED_MAX 8192

/* Whether a checksum-valid frame starts anywhere after `from` in a segment
 * image; its batch in *batch. */
static bool valid_frame_after(const uint8_t *map, uint64_t size, uint64_t from, uint64_t *batch)
{
	for (uint64_t at = from + 1; at + KOBO_JOURNAL_FRAME_OVERHEAD <= size; at++) {
		if (memcmp(map + at, "KbJl", 4) != 0)
			continue;
		uint64_t b = 0;
		for (int i = 7; i >= 0; i--)
			b = b << 8 | map[at + 8 + i];
		kobo_journal_scan scan;
		kobo__journal_scan(map + at, size - at, b, NULL, KOBO_JOURNAL_PAYLOAD_BYTES_MAX, NULL,
		                   NULL, &scan);
		if (scan.frames > 0) {
			*batch = b;
			return true;
		}
	}
	return false;
}

/* After a refusal: scans every segment as recovery does (chained), checks
 * each frame's bytes, and answers the last batch found before the bad
 * frame (which must lie in the last segment, at `bad_offset`); *later: a
 * valid frame lies after the bad one (its batch in *later_batch). */
static int scan_refused(const char *dir, checker *k, uint64_t bad_first, uint64_t bad_offset,
                        bool *later, uint64_t *later_batch, char *why, size_t why_len)
{
	static uint64_t segs[SEGMENTS_LISTED_MAX];
	size_t n = list_segments(dir, segs, SEGMENTS_LISTED_MAX);
	if (n == 0 || segs[n - 1] != bad_first) {
		snprintf(why, why_len, "the refused segment %" PRIu64 " is not the last one", bad_first);
		return -1;
	}
	uint8_t prev[KOBO_JOURNAL_CHECKSUM_BYTES];
	for (size_t i = 0; i < n; i++) {
		char path[4200];
		snprintf(path, sizeof path, "%s/journal/%016" PRIu64 ".seg", dir, segs[i]);
		int fd = open(path, O_RDONLY);
		struct stat st;
		if (fd < 0 || fstat(fd, &st) != 0 || st.st_size == 0) {
			snprintf(why, why_len, "segment %" PRIu64 ": cannot read", segs[i]);
			if (fd >= 0)
				close(fd);
			return -1;
		}
		uint8_t *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		close(fd);
		if (map == MAP_FAILED) {
			snprintf(why, why_len, "segment %" PRIu64 ": mmap", segs[i]);
			return -1;
		}
		kobo_journal_scan scan;
		k->next = segs[i];
		int status = kobo__journal_scan(map, (uint64_t)st.st_size, segs[i], i ? prev : NULL,
		                                KOBO_JOURNAL_PAYLOAD_BYTES_MAX, on_frame, k, &scan);
		if (i + 1 == n)
			*later = valid_frame_after(map, (uint64_t)st.st_size, bad_offset, later_batch);
		munmap(map, (size_t)st.st_size);
		memcpy(prev, scan.last_checksum, sizeof prev);
		bool last = i + 1 == n;
		if (!last && (status != KOBO_OK || scan.torn_end != scan.end)) {
			snprintf(why, why_len, "segment %" PRIu64 " (not the last) is bad: %s", segs[i],
			         scan.message);
			return -1;
		}
		if (last && (status != KOBO_ESTORE || scan.end != bad_offset)) {
			snprintf(why, why_len, "scanning the last segment gives status %d at offset %"
			         PRIu64 ", not the refusal at offset %" PRIu64, status, scan.end, bad_offset);
			return -1;
		}
		if (i + 1 < n && scan.last_batch + 1 != segs[i + 1]) {
			snprintf(why, why_len, "gap after segment %" PRIu64, segs[i]);
			return -1;
		}
	}
	return 0;
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("FAIL: ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	/* At once: the leak checker would report what a failed check left open. */
	fflush(stdout);
	_exit(1);
}

static int run_verify(char **argv)
{
	const char *dir = argv[0];
	checker k = {.seed = arg_u64(argv[1], "seed")};
	kobo_journal_config c = config_of(arg_u64(argv[2], "segment bytes"),
	                                  (uint32_t)arg_u64(argv[3], "payload max"), false);
	uint64_t acked = arg_u64(argv[4], "acked"), released = arg_u64(argv[5], "released");
	uint64_t written = arg_u64(argv[6], "written");
	bool refusal_ok = arg_u64(argv[7], "refusal ok") != 0;
	k.payload_max = c.payload_bytes_max;
	k.expect = malloc(c.payload_bytes_max + 1u);
	if (!k.expect)
		return fail("out of memory");

	kobo_journal_recovery rec;
	kobo_journal *j;
	int status = kobo_journal_open(dir, &c, &rec, &j);
	if (status != KOBO_OK) {
		/* "DIR/journal/NNNN.seg: corrupt: bad frame at offset N followed by …" */
		const char *name = strstr(rec.message, "/journal/");
		const char *at = strstr(rec.message, ": corrupt: bad frame at offset ");
		bool valid_after = strstr(rec.message, " followed by a valid frame at offset ") != NULL;
		bool nonzero_after = strstr(rec.message, " followed by non-zero bytes at offset ") != NULL;
		if (status != KOBO_ESTORE || !rec.corrupt || !name || !at ||
		    (!valid_after && !nonzero_after))
			return fail("open: status %d, not a documented refusal: %s", status, rec.message);
		if (!refusal_ok)
			return fail("open refused where this policy leaves no unsynced sector out of"
			            " order: %s", rec.message);
		uint64_t bad_first = strtoull(name + strlen("/journal/"), NULL, 10);
		uint64_t bad_offset = strtoull(at + strlen(": corrupt: bad frame at offset "), NULL, 10);
		char why[400];
		bool later = false;
		uint64_t later_batch = 0;
		if (scan_refused(dir, &k, bad_first, bad_offset, &later, &later_batch, why,
		                 sizeof why) != 0)
			return fail("refused (%s), and %s", rec.message, why);
		if (k.bad)
			return fail("refused (%s), and %s", rec.message, k.bad);
		if (k.last < acked)
			return fail("refused (%s) and acknowledged batch %" PRIu64 " lies at or after"
			            " the bad frame (last good %" PRIu64 ")", rec.message, acked, k.last);
		if (later && later_batch <= k.last)
			return fail("refused (%s), and a valid frame of batch %" PRIu64 " after the bad"
			            " one repeats a batch already found", rec.message, later_batch);
		printf("%s last_good=%" PRIu64 " acked=%" PRIu64 " later_batch=%" PRIu64 "\n",
		       later ? "refused-later-frame" : "refused-later-bytes", k.last, acked,
		       later_batch);
		free(k.expect);
		return 0;
	}

	uint64_t first = kobo_journal_first_batch(j), last = kobo_journal_last_batch(j);
	if (last < acked)
		return fail("acknowledged batch %" PRIu64 " lost: the journal ends at %" PRIu64,
		            acked, last);
	if (last > written)
		return fail("batch %" PRIu64 " present, but only %" PRIu64 " were written", last,
		            written);
	if (first > released + 1)
		return fail("first batch %" PRIu64 " but only batches <= %" PRIu64 " were released",
		            first, released);
	kobo_journal_reader *rd;
	if (kobo_journal_reader_open(j, first, &rd) != KOBO_OK)
		return fail("reader_open at %" PRIu64, first);
	k.next = first;
	uint64_t batch;
	const void *payload;
	size_t len;
	uint64_t frames = 0;
	while ((status = kobo_journal_reader_next(rd, &batch, &payload, &len)) == KOBO_OK) {
		check_payload(&k, batch, payload, len);
		frames++;
	}
	if (status != KOBO_ENOTFOUND)
		return fail("reader: %s", kobo_journal_reader_message(rd));
	kobo_journal_reader_close(rd);
	if (k.bad)
		return fail("%s", k.bad);
	if (frames != (last >= first ? last - first + 1 : 0))
		return fail("read %" PRIu64 " frames for batches %" PRIu64 "..%" PRIu64, frames,
		            first, last);

	/* The recovered journal goes on: one more frame, reopen, still there. */
	uint8_t one = 0x5a;
	kobo_journal_payload p = {&one, 1};
	if (kobo_journal_append(j, &p, 1, NULL) != KOBO_OK)
		return fail("append after recovery");
	kobo_journal_close(j);
	kobo_journal_recovery again;
	if (kobo_journal_open(dir, &c, &again, &j) != KOBO_OK)
		return fail("reopen after recovery: %s", again.message);
	if (kobo_journal_last_batch(j) != last + 1 || again.torn_bytes != 0)
		return fail("reopen: last %" PRIu64 " (want %" PRIu64 "), torn %" PRIu64,
		            kobo_journal_last_batch(j), last + 1, again.torn_bytes);
	kobo_journal_close(j);
	printf("ok first=%" PRIu64 " last=%" PRIu64 " acked=%" PRIu64 " torn=%" PRIu64 "\n", first,
	       last, acked, rec.torn_bytes);
	free(k.expect);
	return 0;
}

/* verify-batch: one verify per stdin line (its 8 arguments), one answer
 * line each, flushed: the driver checks thousands of images without
 * starting a process for each. A failed check still ends the process. */
static int run_verify_batch(void)
{
	char line[8192];
	while (fgets(line, sizeof line, stdin)) {
		char *args[8];
		int n = 0;
		for (char *save, *t = strtok_r(line, " \n", &save); t && n < 8;
		     t = strtok_r(NULL, " \n", &save))
			args[n++] = t;
		if (n != 8)
			return fail("verify-batch: a line of %d arguments, 8 expected", n);
		if (run_verify(args) != 0)
			return 1;
		fflush(stdout);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 9 && strcmp(argv[1], "write") == 0)
		return run_write(argv + 2);
	if (argc == 10 && strcmp(argv[1], "verify") == 0)
		return run_verify(argv + 2);
	if (argc == 2 && strcmp(argv[1], "verify-batch") == 0)
		return run_verify_batch();
	fprintf(stderr, "usage: journal_writer write DIR SEED APPENDS SEGMENT_BYTES PAYLOAD_MAX"
	        " SPARE RELEASE_EVERY\n"
	        "       journal_writer verify DIR SEED SEGMENT_BYTES PAYLOAD_MAX ACKED RELEASED"
	        " WRITTEN REFUSAL_OK\n"
	        "       journal_writer verify-batch   (verify's arguments, one line each, on stdin)\n");
	return 2;
}
