/*
 * test_journal.c — the checksummed journal (src/store/journal/journal.h) on
 * real files in a temporary directory: append / reopen / iterate, many
 * frames across segment rollover, release and the segment limit, a torn
 * last frame cut at EVERY byte offset (file truncated, or tail zeroed) with
 * later appends continuing the sequence, a flipped bit in an earlier frame
 * refused (sampled offsets; every offset and bit with
 * KOBO_JOURNAL_EXHAUSTIVE=1, `make test-journal-exhaustive`), frames moved,
 * swapped or duplicated refused, a missing segment refused, roll-overs
 * served by the spare segment, the FAILED state after an injected write /
 * fdatasync / create error (and a write torn inside a multi-frame append), a
 * reader thread following appends and releases (the projection's use), and
 * kill -9 of a child appending as fast as it can (KOBO_JOURNAL_KILL_ROUNDS
 * rounds, default 5): every acknowledged batch is there, intact, no gap.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../src/store/journal/journal.h"

/* ---- Helpers. ---- */

static char tmp_root[256];
static int dir_counter;

/* A fresh empty data directory under tmp_root. */
static void fresh_dir(char out[512])
{
	snprintf(out, 512, "%s/d%d", tmp_root, dir_counter++);
	assert_int_equal(mkdir(out, 0700), 0);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void remove_tree(const char *dir)
{
	assert_int_equal(nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
}

/* The payload of a batch: deterministic from its number, so any reader can
 * check it. Length 1..max_len, never ending in a zero byte. */
static size_t fill(uint64_t batch, uint8_t *buf, size_t max_len)
{
	size_t len = 1 + (size_t)((batch * 2654435761u) % max_len);
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)(1 + (batch * 31 + i * 7) % 255);
	return len;
}

static kobo_journal_config small_config(uint64_t segment_bytes, uint32_t segments_max)
{
	kobo_journal_config c;
	kobo_journal_config_default(&c);
	c.segment_bytes = segment_bytes;
	c.payload_bytes_max = 2048;
	c.segments_max = segments_max;
	return c;
}

/* Appends batches last+1 … last+n in appends of 1..3 frames. */
static void append_filled(kobo_journal *j, uint64_t n, size_t max_len)
{
	uint8_t bufs[3][4096];
	while (n > 0) {
		uint64_t next = kobo_journal_last_batch(j) + 1;
		size_t k = 1 + next % 3;
		if (k > n)
			k = (size_t)n;
		kobo_journal_payload p[3];
		for (size_t i = 0; i < k; i++)
			p[i] = (kobo_journal_payload){bufs[i], fill(next + i, bufs[i], max_len)};
		uint64_t first = 0;
		assert_int_equal(kobo_journal_append(j, p, k, &first), KOBO_OK);
		assert_int_equal(first, next);
		n -= k;
	}
}

/* Reads from `from` to the end; checks numbers and payloads. */
static uint64_t verify_from(kobo_journal *j, uint64_t from, size_t max_len)
{
	kobo_journal_reader *rd;
	assert_int_equal(kobo_journal_reader_open(j, from, &rd), KOBO_OK);
	uint64_t expect = from, batch;
	const void *payload;
	size_t len;
	uint8_t want[4096];
	int status;
	while ((status = kobo_journal_reader_next(rd, &batch, &payload, &len)) == KOBO_OK) {
		assert_int_equal(batch, expect);
		size_t want_len = fill(batch, want, max_len);
		if (len != want_len || memcmp(payload, want, len) != 0)
			fail_msg("batch %llu: payload differs (len %zu, want %zu)",
			         (unsigned long long)batch, len, want_len);
		expect++;
	}
	if (status != KOBO_ENOTFOUND)
		fail_msg("reader: %d %s", status, kobo_journal_reader_message(rd));
	kobo_journal_reader_close(rd);
	assert_int_equal(expect, kobo_journal_last_batch(j) + 1);
	return expect - from;
}

static void segment_path(char out[600], const char *dir, uint64_t first)
{
	snprintf(out, 600, "%s/journal/%016llu.seg", dir, (unsigned long long)first);
}

static uint8_t *read_file(const char *path, size_t *size)
{
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	*size = (size_t)ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *b = malloc(*size ? *size : 1);
	assert_non_null(b);
	assert_int_equal(fread(b, 1, *size, f), *size);
	fclose(f);
	return b;
}

static void write_file(const char *path, const uint8_t *b, size_t size)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(b, 1, size, f), size);
	fclose(f);
}

/* Writes image as the one segment `first` of a fresh journal directory. */
static void plant_segment(char dir[512], uint64_t first, const uint8_t *image, size_t size)
{
	fresh_dir(dir);
	char path[600];
	snprintf(path, sizeof path, "%s/journal", dir);
	assert_int_equal(mkdir(path, 0700), 0);
	segment_path(path, dir, first);
	write_file(path, image, size);
}

/* Offsets of the frames of a segment image (via the scan). */
typedef struct frame_list {
	uint64_t offset[64];
	uint64_t bytes[64];
	int count;
} frame_list;

static void collect(void *ctx, uint64_t batch, uint64_t offset, const uint8_t *frame,
                    size_t frame_bytes)
{
	(void)batch;
	(void)frame;
	frame_list *l = ctx;
	assert_true(l->count < 64);
	l->offset[l->count] = offset;
	l->bytes[l->count++] = frame_bytes;
}

/* A golden segment image: `frames` frames of fill() payloads up to max_len,
 * written through the journal into a 16 KiB segment. */
static uint8_t *golden_segment(int frames, size_t max_len, size_t *size, frame_list *list)
{
	char dir[512];
	fresh_dir(dir);
	kobo_journal_config c = small_config(16384, 4);
	kobo_journal *j;
	assert_int_equal(kobo_journal_open(dir, &c, NULL, &j), KOBO_OK);
	uint8_t buf[4096];
	for (int i = 1; i <= frames; i++) {
		kobo_journal_payload p = {buf, fill((uint64_t)i, buf, max_len)};
		assert_int_equal(kobo_journal_append(j, &p, 1, NULL), KOBO_OK);
	}
	kobo_journal_close(j);
	char path[600];
	segment_path(path, dir, 1);
	uint8_t *image = read_file(path, size);
	memset(list, 0, sizeof *list);
	kobo_journal_scan scan;
	assert_int_equal(kobo__journal_scan(image, *size, 1, NULL, 2048, collect, list, &scan),
	                 KOBO_OK);
	assert_int_equal(list->count, frames);
	remove_tree(dir);
	return image;
}

/* ---- Tests. ---- */

static void append_reopen_iterate(void **state)
{
	(void)state;
	char dir[512];
	fresh_dir(dir);
	kobo_journal_config c = small_config(1 << 20, 8);
	kobo_journal_recovery r;
	kobo_journal *j;
	assert_int_equal(kobo_journal_open(dir, &c, &r, &j), KOBO_OK);
	assert_int_equal(r.last_batch, 0);
	assert_int_equal(r.first_batch, 1);
	assert_int_equal(kobo_journal_last_batch(j), 0);

	/* An empty journal: a reader at 1 is caught up, and sees new frames. */
	kobo_journal_reader *rd;
	assert_int_equal(kobo_journal_reader_open(j, 1, &rd), KOBO_OK);
	uint64_t batch;
	const void *payload;
	size_t len;
	assert_int_equal(kobo_journal_reader_next(rd, &batch, &payload, &len), KOBO_ENOTFOUND);
	append_filled(j, 10, 300);
	for (uint64_t b = 1; b <= 10; b++) {
		assert_int_equal(kobo_journal_reader_next(rd, &batch, &payload, &len), KOBO_OK);
		assert_int_equal(batch, b);
	}
	assert_int_equal(kobo_journal_reader_next(rd, &batch, &payload, &len), KOBO_ENOTFOUND);
	kobo_journal_reader_close(rd);

	/* A zero-length payload is a frame too. */
	kobo_journal_payload empty = {NULL, 0};
	uint64_t first;
	assert_int_equal(kobo_journal_append(j, &empty, 1, &first), KOBO_OK);
	assert_int_equal(first, 11);

	/* Bad arguments write nothing. */
	uint8_t big[4096] = {0};
	kobo_journal_payload too_big = {big, 2049};
	assert_int_equal(kobo_journal_append(j, &too_big, 1, NULL), KOBO_EINVAL);
	assert_int_equal(kobo_journal_append(j, &empty, 0, NULL), KOBO_EINVAL);
	assert_int_equal(kobo_journal_reader_open(j, 13, &rd), KOBO_EINVAL);
	assert_int_equal(kobo_journal_reader_open(j, 0, &rd), KOBO_EINVAL);

	/* A second journal on the same directory is refused. */
	kobo_journal *other;
	kobo_journal_recovery r2;
	assert_int_equal(kobo_journal_open(dir, &c, &r2, &other), KOBO_ESTORE);
	assert_non_null(strstr(r2.message, "in use"));
	kobo_journal_close(j);

	assert_int_equal(kobo_journal_open(dir, &c, &r, &j), KOBO_OK);
	assert_int_equal(r.last_batch, 11);
	assert_int_equal(r.frames, 11);
	assert_int_equal(r.torn_bytes, 0);
	assert_int_equal(kobo_journal_reader_open(j, 11, &rd), KOBO_OK);
	assert_int_equal(kobo_journal_reader_next(rd, &batch, &payload, &len), KOBO_OK);
	assert_int_equal(batch, 11);
	assert_int_equal(len, 0);
	kobo_journal_reader_close(rd);
	append_filled(j, 5, 300);
	assert_int_equal(kobo_journal_last_batch(j), 16);
	assert_int_equal(verify_from(j, 12, 300), 5);
	/* From 5 (before the empty frame 11): every batch, in order. */
	assert_int_equal(kobo_journal_reader_open(j, 5, &rd), KOBO_OK);
	uint64_t expect = 5;
	while (kobo_journal_reader_next(rd, &batch, &payload, &len) == KOBO_OK)
		assert_int_equal(batch, expect++);
	assert_int_equal(expect, 17);
	kobo_journal_reader_close(rd);
	kobo_journal_close(j);
	remove_tree(dir);
}

static void rollover_many_frames(void **state)
{
	(void)state;
	char dir[512];
	fresh_dir(dir);
	kobo_journal_config c = small_config(8192, 1000);
	kobo_journal *j;
	assert_int_equal(kobo_journal_open(dir, &c, NULL, &j), KOBO_OK);
	append_filled(j, 2000, 1500);
	uint32_t segments = kobo_journal_segments(j);
	assert_true(segments > 100);
	/* One append of many frames that spans several segments. */
	static uint8_t bufs[40][2048];
	kobo_journal_payload p[40];
	uint64_t next = kobo_journal_last_batch(j) + 1;
	for (int i = 0; i < 40; i++)
		p[i] = (kobo_journal_payload){bufs[i], fill(next + (uint64_t)i, bufs[i], 1500)};
	assert_int_equal(kobo_journal_append(j, p, 40, NULL), KOBO_OK);
	assert_true(kobo_journal_segments(j) > segments + 3);
	assert_int_equal(verify_from(j, 1, 1500), 2040);
	assert_int_equal(verify_from(j, 1234, 1500), 2040 - 1233);
	kobo_journal_close(j);
	kobo_journal_recovery r;
	assert_int_equal(kobo_journal_open(dir, &c, &r, &j), KOBO_OK);
	assert_int_equal(r.last_batch, 2040);
	assert_int_equal(r.frames, 2040);
	assert_int_equal(r.segments, kobo_journal_segments(j));
	assert_int_equal(verify_from(j, 1, 1500), 2040);
	kobo_journal_close(j);
	remove_tree(dir);
}

static void release_and_segment_limit(void **state)
{
	(void)state;
	char dir[512];
	fresh_dir(dir);
	kobo_journal_config c = small_config(8192, 6);
	kobo_journal *j;
	assert_int_equal(kobo_journal_open(dir, &c, NULL, &j), KOBO_OK);
	/* Fill until the limit answers EFULL: nothing written, still usable. */
	uint8_t buf[4096];
	int status;
	uint64_t acked = 0;
	for (;;) {
		kobo_journal_payload p = {buf, fill(acked + 1, buf, 1500)};
		status = kobo_journal_append(j, &p, 1, NULL);
		if (status != KOBO_OK)
			break;
		acked++;
	}
	assert_int_equal(status, KOBO_EFULL);
	assert_int_equal(kobo_journal_segments(j), 6);
	assert_int_equal(kobo_journal_last_batch(j), acked);
	assert_false(kobo_journal_failed(j));
	assert_int_equal(kobo_journal_release(j, acked + 1, NULL), KOBO_EINVAL);

	/* Nothing released below the first segment's end. */
	uint32_t released;
	assert_int_equal(kobo_journal_release(j, 1, &released), KOBO_OK);
	assert_int_equal(released, 0);
	/* Release everything: the current segment stays (invariant 6). */
	assert_int_equal(kobo_journal_release(j, acked, &released), KOBO_OK);
	assert_int_equal(released, 5);
	assert_int_equal(kobo_journal_segments(j), 1);
	uint64_t first = kobo_journal_first_batch(j);
	assert_true(first > 1 && first <= acked);
	kobo_journal_reader *rd;
	assert_int_equal(kobo_journal_reader_open(j, first - 1, &rd), KOBO_EINVAL);
	assert_int_equal(verify_from(j, first, 1500), acked - first + 1);
	append_filled(j, 20, 1500);
	kobo_journal_close(j);

	/* Reopen: the oldest kept frame is the anchor; the sequence goes on. */
	kobo_journal_recovery r;
	assert_int_equal(kobo_journal_open(dir, &c, &r, &j), KOBO_OK);
	assert_int_equal(r.first_batch, first);
	assert_int_equal(r.last_batch, acked + 20);
	append_filled(j, 3, 1500);
	assert_int_equal(verify_from(j, first, 1500), acked + 23 - first + 1);
	kobo_journal_close(j);
	remove_tree(dir);
}

/* The last frame cut after k bytes, for every k: truncated file, or the
 * rest zeroed. Opens with the previous frames; appends go on at the same
 * batch; a reopen sees them. */
static void torn_last_frame_every_offset(void **state)
{
	(void)state;
	size_t size;
	frame_list fl;
	uint8_t *image = golden_segment(3, 200, &size, &fl);
	uint64_t last_off = fl.offset[2], last_bytes = fl.bytes[2];
	uint8_t *copy = malloc(size);
	assert_non_null(copy);
	for (int variant = 0; variant < 2; variant++) {
		for (uint64_t k = 0; k < last_bytes; k++) {
			memcpy(copy, image, size);
			size_t planted = size;
			if (variant == 0)
				planted = (size_t)(last_off + k);              /* truncated */
			else
				memset(copy + last_off + k, 0, size - last_off - k); /* zeroed */
			char dir[512];
			plant_segment(dir, 1, copy, planted);
			kobo_journal_config c = small_config(16384, 4);
			kobo_journal_recovery r;
			kobo_journal *j;
			int status = kobo_journal_open(dir, &c, &r, &j);
			if (status != KOBO_OK)
				fail_msg("variant %d, %llu bytes of the last frame: %s", variant,
				         (unsigned long long)k, r.message);
			assert_int_equal(r.last_batch, 2);
			assert_true(r.torn_bytes <= k);
			if (k > 0)
				assert_int_equal(r.torn_offset, last_off);
			uint8_t buf[4096];
			kobo_journal_payload p = {buf, fill(3, buf, 200)};
			uint64_t first;
			assert_int_equal(kobo_journal_append(j, &p, 1, &first), KOBO_OK);
			assert_int_equal(first, 3);
			kobo_journal_close(j);
			assert_int_equal(kobo_journal_open(dir, &c, &r, &j), KOBO_OK);
			assert_int_equal(r.last_batch, 3);
			assert_int_equal(r.torn_bytes, 0);
			assert_int_equal(verify_from(j, 1, 200), 3);
			kobo_journal_close(j);
			remove_tree(dir);
		}
	}
	free(copy);
	free(image);
}

static bool exhaustive(void)
{
	const char *e = getenv("KOBO_JOURNAL_EXHAUSTIVE");
	return e && strcmp(e, "1") == 0;
}

/* Opens image as segment 1 and expects corruption naming the segment. */
static void expect_corrupt(const uint8_t *image, size_t size, const char *what)
{
	char dir[512];
	plant_segment(dir, 1, image, size);
	kobo_journal_config c = small_config(16384, 4);
	kobo_journal_recovery r;
	kobo_journal *j = NULL;
	int status = kobo_journal_open(dir, &c, &r, &j);
	if (status != KOBO_ESTORE || !r.corrupt)
		fail_msg("%s: open answered %d (corrupt %d), expected corruption", what, status,
		         r.corrupt);
	assert_null(j);
	if (!strstr(r.message, "0000000000000001.seg") || !strstr(r.message, "offset"))
		fail_msg("%s: message does not name segment and offset: %s", what, r.message);
	remove_tree(dir);
}

static void bit_flip_in_earlier_frame_refused(void **state)
{
	(void)state;
	size_t size;
	frame_list fl;
	uint8_t *image = golden_segment(4, 120, &size, &fl);
	uint64_t end_of_earlier = fl.offset[3]; /* frames 1..3 are "earlier" */
	uint64_t step = exhaustive() ? 1 : 5;
	uint8_t *copy = malloc(size);
	assert_non_null(copy);
	int cases = 0;
	for (uint64_t off = 0; off < end_of_earlier; off += step) {
		for (int bit = 0; bit < 8; bit += exhaustive() ? 1 : 8) {
			int b = exhaustive() ? bit : (int)(off % 8);
			memcpy(copy, image, size);
			copy[off] ^= (uint8_t)(1u << b);
			char what[64];
			snprintf(what, sizeof what, "bit %d of byte %llu", b, (unsigned long long)off);
			expect_corrupt(copy, size, what);
			cases++;
		}
	}
	print_message("bit flips refused: %d cases%s\n", cases, exhaustive() ? " (exhaustive)" : "");
	free(copy);
	free(image);
}

static void moved_frames_refused(void **state)
{
	(void)state;
	size_t size;
	frame_list fl;
	/* Equal lengths so frames can trade places: fill() with max_len 1
	 * gives 1-byte payloads. */
	uint8_t *image = golden_segment(4, 1, &size, &fl);
	assert_int_equal(fl.bytes[1], fl.bytes[2]);
	uint64_t fb = fl.bytes[1];
	uint8_t *copy = malloc(size);
	assert_non_null(copy);

	memcpy(copy, image, size); /* frames 2 and 3 swapped */
	memcpy(copy + fl.offset[1], image + fl.offset[2], fb);
	memcpy(copy + fl.offset[2], image + fl.offset[1], fb);
	expect_corrupt(copy, size, "frames 2 and 3 swapped");

	memcpy(copy, image, size); /* frame 2 duplicated over frame 3 */
	memcpy(copy + fl.offset[2], image + fl.offset[1], fb);
	expect_corrupt(copy, size, "frame 2 duplicated over frame 3");

	memcpy(copy, image, size); /* the last frame written twice */
	memcpy(copy + fl.offset[3] + fb, image + fl.offset[3], fb);
	expect_corrupt(copy, size, "last frame duplicated after itself");

	/* A stray byte after the last frame, far beyond one frame's length
	 * (an unacknowledged append's sector that reached the disk while its
	 * header's did not): no valid frame follows, so it is a torn tail,
	 * cut; every frame before it is kept. */
	memcpy(copy, image, size);
	copy[size - 100] = 0x5a;
	kobo_journal_scan scan;
	assert_int_equal(kobo__journal_scan(copy, size, 1, NULL, 4096, NULL, NULL, &scan), KOBO_OK);
	assert_int_equal(scan.frames, 4);
	assert_int_equal(scan.end, fl.offset[3] + fb);
	assert_int_equal(scan.torn_end, size - 99);

	/* A segment whose name is not its first frame's batch. */
	char dir[512];
	plant_segment(dir, 7, image, size);
	kobo_journal_recovery r;
	kobo_journal *j;
	kobo_journal_config c = small_config(16384, 4);
	assert_int_equal(kobo_journal_open(dir, &c, &r, &j), KOBO_ESTORE);
	assert_true(r.corrupt);
	assert_non_null(strstr(r.message, "0000000000000007.seg"));
	remove_tree(dir);
	free(copy);
	free(image);
}

static void missing_segment_refused(void **state)
{
	(void)state;
	char dir[512];
	fresh_dir(dir);
	kobo_journal_config c = small_config(4096, 100);
	kobo_journal *j;
	assert_int_equal(kobo_journal_open(dir, &c, NULL, &j), KOBO_OK);
	append_filled(j, 60, 400);
	assert_true(kobo_journal_segments(j) >= 3);
	kobo_journal_close(j);
	char cmd[800];
	snprintf(cmd, sizeof cmd, "cd '%s/journal' && rm \"$(ls | sed -n 2p)\"", dir);
	assert_int_equal(system(cmd), 0);
	kobo_journal_recovery r;
	assert_int_equal(kobo_journal_open(dir, &c, &r, &j), KOBO_ESTORE);
	assert_true(r.corrupt);
	assert_non_null(strstr(r.message, "previous segment ends"));
	remove_tree(dir);
}

/* Roll-overs take the spare the journal's thread made ahead; close removes
 * an unused spare; a leftover spare (a crash) is deleted at open. */
static void spare_segment_serves_rollovers(void **state)
{
	(void)state;
	char dir[512];
	fresh_dir(dir);
	kobo_journal_config c = small_config(65536, 100);
	assert_true(c.spare_segment);
	kobo_journal *j;
	assert_int_equal(kobo_journal_open(dir, &c, NULL, &j), KOBO_OK);
	uint8_t buf[2048];
	for (int i = 0; i < 400; i++) {
		uint64_t next = kobo_journal_last_batch(j) + 1;
		kobo_journal_payload p = {buf, fill(next, buf, 1500)};
		assert_int_equal(kobo_journal_append(j, &p, 1, NULL), KOBO_OK);
		struct timespec tick = {0, 2000000L}; /* time for the spare thread */
		nanosleep(&tick, NULL);
	}
	uint32_t segments = kobo_journal_segments(j);
	uint64_t used = kobo_journal_spares_used(j);
	print_message("%u segments, %llu roll-overs served by a spare\n", segments,
	              (unsigned long long)used);
	assert_true(segments >= 4);
	assert_true(used >= 1 && used <= segments - 1);
	verify_from(j, 1, 1500);
	kobo_journal_close(j);

	char spare[600];
	snprintf(spare, sizeof spare, "%s/journal/0000000000000000.seg.tmp", dir);
	struct stat st;
	assert_int_equal(stat(spare, &st), -1); /* close removed it */
	write_file(spare, (const uint8_t *)"leftover", 8);
	kobo_journal_recovery r;
	assert_int_equal(kobo_journal_open(dir, &c, &r, &j), KOBO_OK);
	assert_int_equal(r.last_batch, 400);
	kobo_journal_close(j);
	assert_int_equal(stat(spare, &st), -1);
	remove_tree(dir);
}

/* ---- Injected I/O errors. ---- */

typedef struct fault_plan {
	kobo_journal_io io;
	int countdown;     /* fail the countdown-th I/O of that kind (1 = next) */
	size_t keep_bytes; /* for WRITE: bytes really written before failing */
	int err;
	int fired;
} fault_plan;

static int fault_hook(void *ctx, kobo_journal_io io, size_t *bytes)
{
	fault_plan *f = ctx;
	if (io != f->io || f->countdown <= 0 || --f->countdown > 0)
		return 0;
	f->fired++;
	if (io == KOBO_JOURNAL_IO_WRITE && *bytes > f->keep_bytes)
		*bytes = f->keep_bytes;
	return f->err;
}

static void failed_state_after(kobo_journal_io io, size_t keep_bytes)
{
	char dir[512];
	fresh_dir(dir);
	fault_plan f = {io, 0, keep_bytes, io == KOBO_JOURNAL_IO_WRITE ? ENOSPC : EIO, 0};
	kobo_journal_config c = small_config(16384, 4);
	c.spare_segment = false; /* the hook counts I/O of this thread only */
	c.fault = fault_hook;
	c.fault_ctx = &f;
	kobo_journal *j;
	assert_int_equal(kobo_journal_open(dir, &c, NULL, &j), KOBO_OK);
	append_filled(j, 5, 300);
	f.countdown = 1;
	uint8_t buf[4096];
	kobo_journal_payload p = {buf, fill(6, buf, 300)};
	int status = kobo_journal_append(j, &p, 1, NULL);
	if (io == KOBO_JOURNAL_IO_CREATE) {
		/* Fill the segment so the next append must create one. */
		while (status == KOBO_OK) {
			p.len = fill(kobo_journal_last_batch(j) + 1, buf, 300);
			status = kobo_journal_append(j, &p, 1, NULL);
		}
	}
	assert_int_equal(f.fired, 1);
	assert_int_equal(status, KOBO_EUNKNOWN);
	assert_true(kobo_journal_failed(j));
	uint64_t acked = kobo_journal_last_batch(j);
	/* Every later call refuses; fsync is never retried. */
	assert_int_equal(kobo_journal_append(j, &p, 1, NULL), KOBO_EFAILED);
	assert_int_equal(kobo_journal_release(j, 1, NULL), KOBO_EFAILED);
	assert_int_equal(f.fired, 1);
	kobo_journal_close(j);

	/* Reopen: every acknowledged frame is there; an unacknowledged one may
	 * be (its bytes reached the page cache) or be cut as torn. */
	c.fault = NULL;
	kobo_journal_recovery r;
	assert_int_equal(kobo_journal_open(dir, &c, &r, &j), KOBO_OK);
	assert_true(r.last_batch == acked || r.last_batch == acked + 1);
	if (io == KOBO_JOURNAL_IO_WRITE)
		assert_int_equal(r.last_batch, acked); /* torn: cut */
	append_filled(j, 2, 300);
	verify_from(j, 1, 300);
	kobo_journal_close(j);
	remove_tree(dir);
}

static void failed_after_fdatasync_error(void **state)
{
	(void)state;
	failed_state_after(KOBO_JOURNAL_IO_FDATASYNC, 0);
}

static void failed_after_torn_write_error(void **state)
{
	(void)state;
	failed_state_after(KOBO_JOURNAL_IO_WRITE, 30);
}

static void failed_after_write_error_nothing_written(void **state)
{
	(void)state;
	failed_state_after(KOBO_JOURNAL_IO_WRITE, 0);
}

static void failed_after_create_error(void **state)
{
	(void)state;
	failed_state_after(KOBO_JOURNAL_IO_CREATE, 0);
}

/* A write torn inside the second frame of a three-frame append: the append
 * answers KOBO_EUNKNOWN; reopened, the complete first frame is there (never
 * acknowledged, but whole: the caller's "outcome unknown" covers it), the
 * torn rest is cut, and the sequence goes on after it. */
static void failed_after_torn_multi_frame_append(void **state)
{
	(void)state;
	char dir[512];
	fresh_dir(dir);
	fault_plan f = {KOBO_JOURNAL_IO_WRITE, 0, 0, EIO, 0};
	kobo_journal_config c = small_config(16384, 4);
	c.spare_segment = false;
	c.fault = fault_hook;
	c.fault_ctx = &f;
	kobo_journal *j;
	assert_int_equal(kobo_journal_open(dir, &c, NULL, &j), KOBO_OK);
	append_filled(j, 4, 300);
	uint8_t bufs[3][512];
	kobo_journal_payload p[3];
	for (int i = 0; i < 3; i++)
		p[i] = (kobo_journal_payload){bufs[i], fill(5 + (uint64_t)i, bufs[i], 300)};
	f.countdown = 1;
	f.keep_bytes = KOBO_JOURNAL_FRAME_OVERHEAD + p[0].len + 20;
	assert_int_equal(kobo_journal_append(j, p, 3, NULL), KOBO_EUNKNOWN);
	assert_int_equal(kobo_journal_last_batch(j), 4);
	kobo_journal_close(j);
	c.fault = NULL;
	kobo_journal_recovery r;
	assert_int_equal(kobo_journal_open(dir, &c, &r, &j), KOBO_OK);
	assert_int_equal(r.last_batch, 5);
	assert_true(r.torn_bytes > 0 && r.torn_bytes <= 20); /* up to its last non-zero byte */
	append_filled(j, 3, 300);
	assert_int_equal(verify_from(j, 1, 300), 8);
	kobo_journal_close(j);
	remove_tree(dir);
}

/* ---- A reader following the appender (the projection's use). ---- */

typedef struct follower {
	kobo_journal *journal;
	uint64_t until;           /* stop once this batch is read */
	_Atomic uint64_t read_upto; /* last batch read and checked */
	int status;
	char message[KOBO_JOURNAL_MESSAGE_BYTES];
} follower;

static void *follow(void *arg)
{
	follower *f = arg;
	kobo_journal_reader *rd;
	f->status = kobo_journal_reader_open(f->journal, 1, &rd);
	if (f->status != KOBO_OK)
		return NULL;
	uint64_t expect = 1, batch;
	const void *payload;
	size_t len;
	uint8_t want[4096];
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	while (expect <= f->until) {
		int status = kobo_journal_reader_next(rd, &batch, &payload, &len);
		if (status == KOBO_ENOTFOUND) {
			clock_gettime(CLOCK_MONOTONIC, &now);
			if (now.tv_sec - start.tv_sec > 60) {
				f->status = KOBO_ESHUTDOWN; /* bounded: never hang the suite */
				break;
			}
			struct timespec tick = {0, 100000L};
			nanosleep(&tick, NULL);
			continue;
		}
		if (status != KOBO_OK || batch != expect || len != fill(batch, want, 1500) ||
		    memcmp(payload, want, len) != 0) {
			f->status = status != KOBO_OK ? status : KOBO_EINVAL;
			snprintf(f->message, sizeof f->message, "batch %llu (expected %llu): %s",
			         (unsigned long long)batch, (unsigned long long)expect,
			         kobo_journal_reader_message(rd));
			break;
		}
		f->read_upto = expect++;
	}
	kobo_journal_reader_close(rd);
	return NULL;
}

static void reader_follows_appends_and_releases(void **state)
{
	(void)state;
	char dir[512];
	fresh_dir(dir);
	kobo_journal_config c = small_config(8192, 3);
	kobo_journal *j;
	assert_int_equal(kobo_journal_open(dir, &c, NULL, &j), KOBO_OK);
	follower f = {.journal = j, .until = 800};
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, follow, &f), 0);
	uint64_t efull = 0;
	while (kobo_journal_last_batch(j) < f.until) {
		/* Release what the reader has, as the projection will; when the
		 * segment limit answers EFULL, wait for the reader. */
		assert_int_equal(kobo_journal_release(j, f.read_upto, NULL), KOBO_OK);
		uint8_t buf[2048];
		uint64_t next = kobo_journal_last_batch(j) + 1;
		kobo_journal_payload p = {buf, fill(next, buf, 1500)};
		int status = kobo_journal_append(j, &p, 1, NULL);
		if (status == KOBO_EFULL) {
			efull++;
			struct timespec tick = {0, 200000L};
			nanosleep(&tick, NULL);
			continue;
		}
		assert_int_equal(status, KOBO_OK);
		assert_true(kobo_journal_segments(j) <= 3);
	}
	assert_int_equal(pthread_join(t, NULL), 0);
	if (f.status != KOBO_OK)
		fail_msg("reader: %d %s", f.status, f.message);
	assert_int_equal(f.read_upto, f.until);
	print_message("reader followed %llu batches; %llu appends waited on the segment limit\n",
	              (unsigned long long)f.until, (unsigned long long)efull);
	kobo_journal_close(j);
	remove_tree(dir);
}

/* ---- kill -9. ---- */

static void child_append_forever(const char *dir, int report_fd)
{
	kobo_journal_config c = small_config(65536, 1000);
	kobo_journal *j;
	if (kobo_journal_open(dir, &c, NULL, &j) != KOBO_OK)
		_exit(3);
	uint8_t bufs[3][4096];
	for (;;) {
		uint64_t next = kobo_journal_last_batch(j) + 1;
		size_t k = 1 + next % 3;
		kobo_journal_payload p[3];
		for (size_t i = 0; i < k; i++)
			p[i] = (kobo_journal_payload){bufs[i], fill(next + i, bufs[i], 2000)};
		if (kobo_journal_append(j, p, k, NULL) != KOBO_OK)
			_exit(4);
		uint64_t acked = next + k - 1;
		if (write(report_fd, &acked, sizeof acked) != sizeof acked)
			_exit(5);
		if (acked % 97 == 0 && acked > 300 &&
		    kobo_journal_release(j, acked - 300, NULL) != KOBO_OK)
			_exit(6);
	}
}

static void kill9_keeps_every_acknowledged_batch(void **state)
{
	(void)state;
	const char *env = getenv("KOBO_JOURNAL_KILL_ROUNDS");
	int rounds = env ? atoi(env) : 5;
	char dir[512];
	fresh_dir(dir);
	srand((unsigned)time(NULL));
	uint64_t max_acked = 0;
	for (int round = 0; round < rounds; round++) {
		int fds[2];
		assert_int_equal(pipe(fds), 0);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			close(fds[0]);
			child_append_forever(dir, fds[1]);
		}
		close(fds[1]);
		/* Once the child acknowledged its first append of the round (at
		 * most 20 s), let it run 0..200 ms more, reading acknowledgements,
		 * then kill it. */
		long nap_ns = (rand() % 200) * 1000000L;
		int flags = fcntl(fds[0], F_GETFL);
		fcntl(fds[0], F_SETFL, flags | O_NONBLOCK);
		uint64_t acked, round_floor = max_acked;
		struct timespec start, now;
		bool started = false;
		clock_gettime(CLOCK_MONOTONIC, &start);
		for (;;) {
			while (read(fds[0], &acked, sizeof acked) == sizeof acked)
				max_acked = acked > max_acked ? acked : max_acked;
			clock_gettime(CLOCK_MONOTONIC, &now);
			long elapsed_ns = (now.tv_sec - start.tv_sec) * 1000000000L +
			                  (now.tv_nsec - start.tv_nsec);
			if (!started && (max_acked > round_floor || elapsed_ns > 20000000000L)) {
				started = true;
				start = now;
				continue;
			}
			if (started && elapsed_ns >= nap_ns)
				break;
			struct timespec tick = {0, 1000000L};
			nanosleep(&tick, NULL);
		}
		assert_int_equal(kill(pid, SIGKILL), 0);
		int wstatus;
		assert_int_equal(waitpid(pid, &wstatus, 0), pid);
		if (!WIFSIGNALED(wstatus))
			fail_msg("round %d: child exited by itself (status %d)", round,
			         WEXITSTATUS(wstatus));
		fcntl(fds[0], F_SETFL, flags);
		while (read(fds[0], &acked, sizeof acked) == sizeof acked)
			max_acked = acked > max_acked ? acked : max_acked;
		close(fds[0]);

		kobo_journal_config c = small_config(65536, 1000);
		kobo_journal_recovery r;
		kobo_journal *j;
		if (kobo_journal_open(dir, &c, &r, &j) != KOBO_OK)
			fail_msg("round %d: reopen failed: %s", round, r.message);
		if (r.last_batch < max_acked)
			fail_msg("round %d: acknowledged %llu, recovered only %llu", round,
			         (unsigned long long)max_acked, (unsigned long long)r.last_batch);
		verify_from(j, kobo_journal_first_batch(j), 2000);
		print_message("round %d: acknowledged %llu, recovered %llu, torn %llu bytes\n",
		              round, (unsigned long long)max_acked,
		              (unsigned long long)r.last_batch, (unsigned long long)r.torn_bytes);
		max_acked = r.last_batch; /* recovered frames are the new floor */
		kobo_journal_close(j);
	}
	remove_tree(dir);
}

static int setup_root(void **state)
{
	(void)state;
	snprintf(tmp_root, sizeof tmp_root, "%s/kobo-journal-XXXXXX",
	         getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	return mkdtemp(tmp_root) ? 0 : -1;
}

static int teardown_root(void **state)
{
	(void)state;
	remove_tree(tmp_root);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(append_reopen_iterate),
		cmocka_unit_test(rollover_many_frames),
		cmocka_unit_test(release_and_segment_limit),
		cmocka_unit_test(torn_last_frame_every_offset),
		cmocka_unit_test(bit_flip_in_earlier_frame_refused),
		cmocka_unit_test(moved_frames_refused),
		cmocka_unit_test(missing_segment_refused),
		cmocka_unit_test(spare_segment_serves_rollovers),
		cmocka_unit_test(failed_after_fdatasync_error),
		cmocka_unit_test(failed_after_torn_write_error),
		cmocka_unit_test(failed_after_write_error_nothing_written),
		cmocka_unit_test(failed_after_create_error),
		cmocka_unit_test(failed_after_torn_multi_frame_append),
		cmocka_unit_test(reader_follows_appends_and_releases),
		cmocka_unit_test(kill9_keeps_every_acknowledged_batch),
	};
	return cmocka_run_group_tests(tests, setup_root, teardown_root);
}
