/*
 * fuzz_journal.c — libFuzzer target for journal recovery's segment scan
 * (kobo__journal_scan, src/store/journal/journal.h), the code that decides
 * what of a segment file is kept, cut as torn, or refused as corrupt.
 *
 * The first byte picks the mode, the rest is its input. Bit 0:
 *   0     the bytes ARE a segment image (first batch 1, no anchor check).
 *   1     a recipe, so the fuzzer reaches states past valid frames (it
 *         cannot forge an XXH3-128): one byte n (frames, 0..15), then for
 *         each frame one length byte and that many payload bytes; this
 *         harness encodes the frames itself (its own encoder, not
 *         journal.c's) into a 4 KiB image; the remaining bytes are
 *         mutations of 4 bytes each (op, offset lo, offset hi, value):
 *         0 flip a bit, 1 set a byte, 2 zero from offset to the end,
 *         3 truncate the image at offset.
 *
 * Bit 1 set: the image is also written as segment 1 of a journal directory
 * on tmpfs (/dev/shm, so fsync costs nothing) and opened with
 * kobo_journal_open — the whole recovery: it must agree with the scan
 * (refused exactly when the scan says corrupt, else the same last batch), a
 * reader must then read exactly the recovered frames, one more append must
 * take the next batch number, and a second open must find it with nothing
 * torn (recovery is idempotent).
 *
 * Must never crash or trip a sanitizer, and: every frame the scan accepts
 * carries the right XXH3-128 (recomputed here with libxxhash directly) and
 * the expected batch number; in recipe mode every accepted frame is byte for
 * byte the frame built at that offset, and with no mutation all built frames
 * are accepted and nothing is torn or corrupt.
 */
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "../../src/store/journal/journal.h"

#define IMAGE_BYTES 4096u
/* Recovery accepts any payload length a config may allow (journal.c). */
#define PAYLOAD_MAX KOBO_JOURNAL_PAYLOAD_BYTES_MAX

typedef struct check {
	const uint8_t *original; /* recipe mode: the image before mutation */
	uint64_t original_size;
	uint64_t next_batch;
} check;

static void put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void on_frame(void *ctx, uint64_t batch, uint64_t offset, const uint8_t *frame,
                     size_t frame_bytes)
{
	check *c = ctx;
	if (batch != c->next_batch++ || frame_bytes < KOBO_JOURNAL_FRAME_OVERHEAD)
		abort();
	size_t len = frame_bytes - KOBO_JOURNAL_FRAME_OVERHEAD;
	XXH128_hash_t h = XXH3_128bits(frame, KOBO_JOURNAL_HEADER_BYTES + len);
	uint8_t want[16];
	put_le(want, h.low64, 8);
	put_le(want + 8, h.high64, 8);
	if (memcmp(want, frame + KOBO_JOURNAL_HEADER_BYTES + len, 16) != 0)
		abort(); /* accepted a frame whose checksum is wrong */
	if (c->original && (offset + frame_bytes > c->original_size ||
	                    memcmp(frame, c->original + offset, frame_bytes) != 0))
		abort(); /* accepted a frame that was not written there */
}

/* Encodes a frame as journal.h describes it; returns its size. */
static size_t encode(uint8_t *out, uint64_t batch, const uint8_t *payload, size_t len,
                     const uint8_t prev[16])
{
	memcpy(out, "KbJl", 4);
	put_le(out + 4, 1, 2);
	put_le(out + 6, 0, 2);
	put_le(out + 8, batch, 8);
	put_le(out + 16, len, 4);
	put_le(out + 20, 0, 4);
	memcpy(out + 24, prev, 16);
	memcpy(out + 40, payload, len);
	XXH128_hash_t h = XXH3_128bits(out, 40 + len);
	put_le(out + 40 + len, h.low64, 8);
	put_le(out + 48 + len, h.high64, 8);
	return 56 + len;
}

static char dir[128], jdir[160];

/* Empties the journal directory (and at exit removes it). */
static void clear_journal_dir(void)
{
	DIR *d = opendir(jdir);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		char path[512];
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "%s/%s", jdir, e->d_name);
		unlink(path);
	}
	closedir(d);
}

static void remove_dirs(void)
{
	clear_journal_dir();
	rmdir(jdir);
	rmdir(dir);
}

/* Writes image as segment 1 of a fresh journal on tmpfs and runs the whole
 * recovery on it; checks it against the scan's verdict. */
static void open_check(const uint8_t *image, uint64_t size, int scan_status,
                       const kobo_journal_scan *scan)
{
	static char seg[200];
	if (!dir[0]) {
		snprintf(dir, sizeof dir, "/dev/shm/kobo-fuzz-journal-%d", (int)getpid());
		snprintf(jdir, sizeof jdir, "%s/journal", dir);
		snprintf(seg, sizeof seg, "%s/0000000000000001.seg", jdir);
		mkdir(dir, 0700);
		atexit(remove_dirs);
	}
	mkdir(jdir, 0700);
	clear_journal_dir();
	FILE *f = fopen(seg, "wb");
	if (!f || (size && fwrite(image, 1, size, f) != size) || fclose(f) != 0)
		abort();

	kobo_journal_config c;
	kobo_journal_config_default(&c);
	c.segment_bytes = 4096;
	c.payload_bytes_max = 2048;
	c.spare_segment = false; /* a thread per input would slow the fuzzer down */
	kobo_journal_recovery r;
	kobo_journal *j;
	int status = kobo_journal_open(dir, &c, &r, &j);
	if (scan_status != KOBO_OK) {
		if (status != KOBO_ESTORE || !r.corrupt)
			abort(); /* the scan refused it: so must open */
		return;
	}
	if (status != KOBO_OK || r.last_batch != scan->last_batch ||
	    r.torn_bytes != scan->torn_end - scan->end)
		abort();
	kobo_journal_reader *rd;
	if (kobo_journal_reader_open(j, 1, &rd) != KOBO_OK)
		abort();
	uint64_t batch, n = 0;
	const void *payload;
	size_t len;
	int rs;
	while ((rs = kobo_journal_reader_next(rd, &batch, &payload, &len)) == KOBO_OK)
		if (batch != ++n)
			abort();
	if (rs != KOBO_ENOTFOUND || n != r.last_batch)
		abort();
	kobo_journal_reader_close(rd);
	kobo_journal_payload one = {"x", 1};
	uint64_t first;
	if (kobo_journal_append(j, &one, 1, &first) != KOBO_OK || first != r.last_batch + 1)
		abort();
	kobo_journal_close(j);
	kobo_journal_recovery again;
	if (kobo_journal_open(dir, &c, &again, &j) != KOBO_OK ||
	    again.last_batch != r.last_batch + 1 || again.torn_bytes != 0)
		abort();
	kobo_journal_close(j);
}

static void recipe(const uint8_t *data, size_t size, bool also_open)
{
	static uint8_t image[IMAGE_BYTES], original[IMAGE_BYTES];
	memset(image, 0, sizeof image);
	if (size < 1)
		return;
	size_t n = data[0] % 16, at = 1;
	uint64_t used = 0;
	uint8_t prev[16] = {0};
	size_t built = 0;
	for (size_t i = 0; i < n && at < size; i++) {
		size_t len = data[at++];
		if (len > size - at)
			len = size - at;
		if (used + 56 + len > IMAGE_BYTES)
			break;
		used += encode(image + used, i + 1, data + at, len, prev);
		memcpy(prev, image + used - 16, 16);
		at += len;
		built++;
	}
	memcpy(original, image, sizeof image);
	uint64_t image_size = IMAGE_BYTES;
	int mutations = 0;
	for (; at + 4 <= size; at += 4, mutations++) {
		uint64_t off = (uint64_t)(data[at + 1] | data[at + 2] << 8) % IMAGE_BYTES;
		switch (data[at] % 4) {
		case 0: image[off] ^= (uint8_t)(1u << (data[at + 3] % 8)); break;
		case 1: image[off] = data[at + 3]; break;
		case 2: memset(image + off, 0, IMAGE_BYTES - off); break;
		default: if (off < image_size) image_size = off; break;
		}
	}
	check c = {original, IMAGE_BYTES, 1};
	kobo_journal_scan scan;
	int status = kobo__journal_scan(image, image_size, 1, NULL, PAYLOAD_MAX, on_frame, &c,
	                                &scan);
	if (mutations == 0 && (status != KOBO_OK || scan.frames != built ||
	                       scan.torn_end != scan.end || scan.end != used))
		abort();
	if (also_open)
		open_check(image, image_size, status, &scan);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] & 1) {
		recipe(data + 1, size - 1, data[0] & 2);
		return 0;
	}
	/* A copy, so reading past the image is caught by ASan. */
	uint8_t *image = malloc(size - 1 ? size - 1 : 1);
	if (!image)
		return 0;
	memcpy(image, data + 1, size - 1);
	check c = {NULL, 0, 1};
	kobo_journal_scan scan;
	int status = kobo__journal_scan(image, size - 1, 1, NULL, PAYLOAD_MAX, on_frame, &c,
	                                &scan);
	if (scan.frames != c.next_batch - 1 || scan.torn_end < scan.end ||
	    scan.end > size - 1 || scan.torn_end > size - 1 ||
	    (status != KOBO_OK && status != KOBO_ESTORE))
		abort();
	if (data[0] & 2)
		open_check(image, size - 1, status, &scan);
	free(image);
	return 0;
}
