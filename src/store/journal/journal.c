/*
 * journal.c — the checksummed append-only journal (format, invariants and
 * states: journal.h). Sections: frame encoding, the pure segment scan
 * (recovery's rule, also fed to the fuzzer), segment files, open/recover,
 * append, release, readers.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "journal.h"

#define HDR KOBO_JOURNAL_HEADER_BYTES
#define SUM KOBO_JOURNAL_CHECKSUM_BYTES
static const uint8_t journal_magic[4] = {'K', 'b', 'J', 'l'};
#define JOURNAL_VERSION 1u
#define ZERO_CHUNK_BYTES (64u << 10)
#define SEGMENT_NAME_DIGITS 16
/* The spare segment: a temporary name (batch 0 is never a segment), so an
 * open deletes a leftover one like any interrupted creation. */
#define SPARE_NAME "0000000000000000.seg.tmp"

/* ---- Frame encoding. ---- */

static void put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get_u32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}
static uint64_t get_u64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void encode_header(uint8_t h[HDR], uint64_t batch, uint32_t len,
                          const uint8_t prev[SUM])
{
	memcpy(h, journal_magic, 4);
	put_u16(h + 4, JOURNAL_VERSION);
	put_u16(h + 6, 0);
	put_u64(h + 8, batch);
	put_u32(h + 16, len);
	put_u32(h + 20, 0);
	memcpy(h + 24, prev, SUM);
}

static void hash_to_bytes(XXH128_hash_t hash, uint8_t out[SUM])
{
	put_u64(out, hash.low64);
	put_u64(out + 8, hash.high64);
}

/* Checksum of a header and a payload held apart (append) or together. */
static void checksum_parts(const uint8_t *header, const void *payload, size_t len,
                           uint8_t out[SUM])
{
	XXH3_state_t state;
	XXH3_128bits_reset(&state);
	XXH3_128bits_update(&state, header, HDR);
	if (len)
		XXH3_128bits_update(&state, payload, len);
	hash_to_bytes(XXH3_128bits_digest(&state), out);
}

void kobo__journal_checksum(const uint8_t *frame, size_t payload_len, uint8_t out[SUM])
{
	hash_to_bytes(XXH3_128bits(frame, HDR + payload_len), out);
}

/* Whether a header's fixed fields are those of a frame this code writes,
 * with a payload length it accepts (the length is then trusted for extent). */
static bool header_plausible(const uint8_t *h, uint32_t payload_max)
{
	return memcmp(h, journal_magic, 4) == 0 && get_u16(h + 4) == JOURNAL_VERSION &&
	       get_u16(h + 6) == 0 && get_u32(h + 20) == 0 && get_u32(h + 16) <= payload_max;
}

/* A complete, checksum-valid frame at off (position not checked). */
static bool frame_valid(const uint8_t *bytes, uint64_t size, uint64_t off,
                        uint32_t payload_max, uint64_t *frame_bytes)
{
	if (size - off < HDR || !header_plausible(bytes + off, payload_max))
		return false;
	uint64_t len = get_u32(bytes + off + 16);
	if (size - off < HDR + len + SUM)
		return false;
	uint8_t sum[SUM];
	kobo__journal_checksum(bytes + off, len, sum);
	if (memcmp(sum, bytes + off + HDR + len, SUM) != 0)
		return false;
	*frame_bytes = HDR + len + SUM;
	return true;
}

/* ---- The segment scan: recovery's rule (journal.h invariant 5). ---- */

/* Whether n bytes are all zero: a segment's unused tail is most of what
 * recovery reads, so this compares in blocks (memcmp is vectorized). */
static bool all_zero(const uint8_t *p, uint64_t n)
{
	static const uint8_t zero_block[4096];
	while (n >= sizeof zero_block) {
		if (memcmp(p, zero_block, sizeof zero_block) != 0)
			return false;
		p += sizeof zero_block;
		n -= sizeof zero_block;
	}
	for (uint64_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

static void scan_fail(kobo_journal_scan *scan, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(scan->message, sizeof scan->message, fmt, ap);
	va_end(ap);
}

int kobo__journal_scan(const uint8_t *bytes, uint64_t size, uint64_t first_batch,
                       const uint8_t *prev, uint32_t payload_max,
                       kobo_journal_frame_fn on_frame, void *ctx,
                       kobo_journal_scan *scan)
{
	memset(scan, 0, sizeof *scan);
	scan->last_batch = first_batch - 1;
	bool have_prev = prev != NULL;
	if (have_prev)
		memcpy(scan->last_checksum, prev, SUM);
	uint64_t off = 0;
	uint64_t frame_bytes;
	while (off < size) {
		if (!frame_valid(bytes, size, off, payload_max, &frame_bytes))
			break;
		const uint8_t *f = bytes + off;
		uint64_t batch = get_u64(f + 8);
		if (batch != scan->last_batch + 1) {
			scan_fail(scan, "frame at offset %" PRIu64 " carries batch %" PRIu64
			          " where batch %" PRIu64 " belongs (a frame from another position)",
			          off, batch, scan->last_batch + 1);
			scan->end = scan->torn_end = off;
			return KOBO_ESTORE;
		}
		if (have_prev && memcmp(f + 24, scan->last_checksum, SUM) != 0) {
			scan_fail(scan, "frame at offset %" PRIu64 " (batch %" PRIu64
			          ") does not chain to the previous frame's checksum", off, batch);
			scan->end = scan->torn_end = off;
			return KOBO_ESTORE;
		}
		if (on_frame)
			on_frame(ctx, batch, off, f, (size_t)frame_bytes);
		memcpy(scan->last_checksum, f + frame_bytes - SUM, SUM);
		have_prev = true;
		scan->last_batch = batch;
		scan->frames++;
		off += frame_bytes;
	}
	scan->end = scan->torn_end = off;
	if (off >= size || all_zero(bytes + off, size - off))
		return KOBO_OK;

	/* Bytes after the last valid frame: an unacknowledged append torn by a
	 * crash — however its sectors reached the disk, in any order — unless
	 * a valid frame lies anywhere after them (then an acknowledged frame
	 * was damaged: corruption). Segments are zeroed and synced before use
	 * and appends are sequential, so nothing acknowledged lies past the
	 * last valid frame when no valid frame follows. */
	uint64_t last_nonzero = size - 1;
	while (bytes[last_nonzero] == 0)
		last_nonzero--;
	for (uint64_t at = off + 1; at <= last_nonzero; at++) {
		if (bytes[at] == journal_magic[0] &&
		    frame_valid(bytes, size, at, payload_max, &frame_bytes)) {
			scan_fail(scan, "bad frame at offset %" PRIu64 " followed by a valid frame"
			          " at offset %" PRIu64 " (batch %" PRIu64 ")", off, at,
			          get_u64(bytes + at + 8));
			return KOBO_ESTORE;
		}
	}
	scan->torn_end = last_nonzero + 1;
	return KOBO_OK;
}

/* ---- The journal. ---- */

typedef struct segment {
	uint64_t first_batch;
	uint64_t last_batch;   /* first_batch - 1 while empty */
	uint64_t size;         /* file size: its capacity */
} segment;

struct kobo_journal {
	kobo_journal_config config;
	int dir_fd;              /* DIR/journal, flocked */
	char path[PATH_MAX];     /* DIR/journal */

	pthread_mutex_t lock;    /* guards segs, seg_count, last_batch, failed */
	segment *segs;           /* oldest first; the last is appended to */
	uint32_t seg_count;
	uint32_t seg_capacity;
	uint64_t last_batch;
	bool failed;

	/* Appender-only state. */
	int fd;                  /* the last segment, or -1 before the first */
	uint64_t write_offset;   /* end of its frames */
	uint8_t last_checksum[SUM];
	uint8_t *headers;        /* APPEND_FRAMES_MAX × (HDR + SUM) scratch */
	struct iovec *iov;       /* IOV_MAX scratch */
	uint8_t *zeros;          /* ZERO_CHUNK_BYTES of zeros (read-only) */

	/* The spare segment (config.spare_segment). */
	pthread_mutex_t spare_lock; /* guards the fields below */
	pthread_cond_t spare_wake;
	pthread_t spare_thread;
	bool spare_started;
	bool spare_stop;
	bool spare_failed;
	int spare_fd;            /* a ready spare, or -1 */
	uint64_t spares_used;
};

void kobo_journal_config_default(kobo_journal_config *config)
{
	memset(config, 0, sizeof *config);
	config->segment_bytes = KOBO_JOURNAL_SEGMENT_BYTES_DEFAULT;
	config->payload_bytes_max = KOBO_JOURNAL_PAYLOAD_BYTES_DEFAULT;
	config->segments_max = KOBO_JOURNAL_SEGMENTS_DEFAULT;
	config->spare_segment = true;
}

static int fault(kobo_journal *j, kobo_journal_io io, size_t *bytes)
{
	return j->config.fault ? j->config.fault(j->config.fault_ctx, io, bytes) : 0;
}

static void segment_name(char out[SEGMENT_NAME_DIGITS + 9], uint64_t first_batch, bool tmp)
{
	snprintf(out, SEGMENT_NAME_DIGITS + 9, "%016" PRIu64 ".seg%s", first_batch,
	         tmp ? ".tmp" : "");
}

/* Parses "NNNNNNNNNNNNNNNN.seg" (exactly); false for any other name. */
static bool parse_segment_name(const char *name, uint64_t *first_batch)
{
	uint64_t v = 0;
	for (int i = 0; i < SEGMENT_NAME_DIGITS; i++) {
		if (name[i] < '0' || name[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(name[i] - '0');
	}
	if (strcmp(name + SEGMENT_NAME_DIGITS, ".seg") != 0)
		return false;
	*first_batch = v;
	return true;
}

static bool is_tmp_name(const char *name)
{
	size_t n = strlen(name);
	return n == SEGMENT_NAME_DIGITS + 8 && strcmp(name + SEGMENT_NAME_DIGITS, ".seg.tmp") == 0;
}

static void journal_fail(kobo_journal *j)
{
	pthread_mutex_lock(&j->lock);
	j->failed = true;
	pthread_mutex_unlock(&j->lock);
}

/* Writes all of [iov, iov + n) at offset, through the fault hook. */
static int write_all(kobo_journal *j, int fd, struct iovec *iov, int n, uint64_t offset,
                     kobo_journal_io io)
{
	while (n > 0) {
		size_t want = 0;
		for (int i = 0; i < n; i++)
			want += iov[i].iov_len;
		size_t allowed = want;
		int injected = fault(j, io, &allowed);
		ssize_t done;
		if (allowed < want) {
			/* The hook tears this write: write only its first bytes. */
			size_t left = allowed;
			int k = 0;
			struct iovec part[IOV_MAX];
			while (left > 0 && k < n) {
				part[k] = iov[k];
				if (part[k].iov_len > left)
					part[k].iov_len = left;
				left -= part[k].iov_len;
				k++;
			}
			done = k ? pwritev(fd, part, k, (off_t)offset) : 0;
			if (done >= 0)
				errno = injected ? injected : EIO;
			return KOBO_EUNKNOWN;
		}
		if (injected) {
			errno = injected;
			return KOBO_EUNKNOWN;
		}
		done = pwritev(fd, iov, n, (off_t)offset);
		if (done < 0) {
			if (errno == EINTR)
				continue;
			return KOBO_EUNKNOWN;
		}
		if (done == 0) {
			errno = EIO;
			return KOBO_EUNKNOWN;
		}
		offset += (uint64_t)done;
		while (n > 0 && (size_t)done >= iov->iov_len) {
			done -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (uint8_t *)iov->iov_base + done;
			iov->iov_len -= (size_t)done;
		}
	}
	return KOBO_OK;
}

static int sync_fd(kobo_journal *j, int fd, kobo_journal_io io)
{
	size_t none = 0;
	int injected = fault(j, io, &none);
	if (injected) {
		errno = injected;
		return KOBO_EUNKNOWN;
	}
	return fdatasync(fd) == 0 ? KOBO_OK : KOBO_EUNKNOWN;
}

/* Creates tmp (a name in DIR/journal) at the configured size, written full
 * of zeros and fsynced. Returns its fd in *fd_out. */
static int create_zeroed(kobo_journal *j, const char *tmp, int *fd_out)
{
	size_t none = 0;
	int injected = fault(j, KOBO_JOURNAL_IO_CREATE, &none);
	if (injected) {
		errno = injected;
		return KOBO_EUNKNOWN;
	}
	unlinkat(j->dir_fd, tmp, 0);
	int fd = openat(j->dir_fd, tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return KOBO_EUNKNOWN;
	int err = posix_fallocate(fd, 0, (off_t)j->config.segment_bytes);
	if (err) {
		errno = err;
		goto fail;
	}
	for (uint64_t off = 0; off < j->config.segment_bytes; off += ZERO_CHUNK_BYTES) {
		uint64_t n = j->config.segment_bytes - off;
		struct iovec v = {j->zeros, n < ZERO_CHUNK_BYTES ? (size_t)n : ZERO_CHUNK_BYTES};
		if (write_all(j, fd, &v, 1, off, KOBO_JOURNAL_IO_CREATE) != KOBO_OK)
			goto fail;
	}
	if (fsync(fd) != 0)
		goto fail;
	*fd_out = fd;
	return KOBO_OK;
fail:
	err = errno;
	close(fd);
	unlinkat(j->dir_fd, tmp, 0);
	errno = err;
	return KOBO_EUNKNOWN;
}

/* Creates segment first_batch: the spare if the spare thread has one ready
 * (renamed: no zeroing in the append path), else a temporary file made now;
 * renamed, the directory fsynced (an existing empty segment of that name is
 * replaced). Returns its fd. */
static int segment_create(kobo_journal *j, uint64_t first_batch, int *fd_out)
{
	char tmp[SEGMENT_NAME_DIGITS + 9], name[SEGMENT_NAME_DIGITS + 9];
	segment_name(tmp, first_batch, true);
	segment_name(name, first_batch, false);
	int fd = -1;
	if (j->spare_started) {
		/* Renamed under spare_lock: the spare thread only makes the next
		 * spare (same file name) once it is gone. */
		pthread_mutex_lock(&j->spare_lock);
		if (j->spare_fd >= 0) {
			if (renameat(j->dir_fd, SPARE_NAME, j->dir_fd, name) == 0) {
				fd = j->spare_fd;
				j->spares_used++;
			} else {
				close(j->spare_fd);
			}
			j->spare_fd = -1;
			pthread_cond_signal(&j->spare_wake);
		}
		pthread_mutex_unlock(&j->spare_lock);
	}
	if (fd < 0) {
		int status = create_zeroed(j, tmp, &fd);
		if (status != KOBO_OK)
			return status;
		if (renameat(j->dir_fd, tmp, j->dir_fd, name) != 0)
			goto fail;
	}
	if (fsync(j->dir_fd) != 0)
		goto fail;
	*fd_out = fd;
	return KOBO_OK;
fail:;
	int err = errno;
	close(fd);
	errno = err;
	return KOBO_EUNKNOWN;
}

/* The spare thread: keeps one zeroed segment ready under SPARE_NAME so that
 * a roll-over only renames it. A failure stops it for good (rolls then
 * create their segment themselves, and report their own errors). */
static void *spare_main(void *arg)
{
	kobo_journal *j = arg;
	pthread_mutex_lock(&j->spare_lock);
	for (;;) {
		while (!j->spare_stop && (j->spare_fd >= 0 || j->spare_failed))
			pthread_cond_wait(&j->spare_wake, &j->spare_lock);
		if (j->spare_stop)
			break;
		pthread_mutex_unlock(&j->spare_lock);
		int fd;
		int status = create_zeroed(j, SPARE_NAME, &fd);
		pthread_mutex_lock(&j->spare_lock);
		if (status == KOBO_OK)
			j->spare_fd = fd;
		else
			j->spare_failed = true;
	}
	pthread_mutex_unlock(&j->spare_lock);
	return NULL;
}

/* ---- Open and recover. ---- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int recover_fail(kobo_journal_recovery *r, bool corrupt, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->message, sizeof r->message, fmt, ap);
	va_end(ap);
	r->corrupt = corrupt;
	return KOBO_ESTORE;
}

/* Lists the segment numbers in DIR/journal (sorted) and removes leftover
 * temporary files of a creation a crash interrupted. */
static int list_segments(kobo_journal *j, kobo_journal_recovery *r, uint64_t **out,
                         uint32_t *count)
{
	int fd = dup(j->dir_fd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return recover_fail(r, false, "%s: cannot list: %s", j->path, strerror(errno));
	}
	uint64_t *numbers = NULL;
	uint32_t n = 0, cap = 0;
	struct dirent *e;
	int status = KOBO_OK;
	while ((e = readdir(d)) != NULL) {
		uint64_t first;
		if (is_tmp_name(e->d_name)) {
			unlinkat(j->dir_fd, e->d_name, 0);
			continue;
		}
		if (!parse_segment_name(e->d_name, &first))
			continue;
		if (n >= KOBO_JOURNAL_SEGMENTS_MAX) {
			status = recover_fail(r, false, "%s: more than %u segment files", j->path,
			                      KOBO_JOURNAL_SEGMENTS_MAX);
			break;
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			uint64_t *grown = realloc(numbers, cap * sizeof *numbers);
			if (!grown) {
				status = KOBO_ENOMEM;
				break;
			}
			numbers = grown;
		}
		numbers[n++] = first;
	}
	closedir(d);
	if (status != KOBO_OK) {
		free(numbers);
		return status;
	}
	if (n)
		qsort(numbers, n, sizeof *numbers, cmp_u64);
	*out = numbers;
	*count = n;
	return KOBO_OK;
}

/* Writes zeros over [from, to) of fd and fdatasyncs it (nothing when
 * empty). Returns 0 or an errno value. */
static int zero_synced(kobo_journal *j, int fd, uint64_t from, uint64_t to)
{
	for (uint64_t at = from; at < to;) {
		size_t chunk = to - at < ZERO_CHUNK_BYTES ? (size_t)(to - at) : ZERO_CHUNK_BYTES;
		ssize_t w = pwrite(fd, j->zeros, chunk, (off_t)at);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? errno : EIO;
		at += (uint64_t)w;
	}
	if (from < to && fdatasync(fd) != 0)
		return errno;
	return 0;
}

/* Scans segment i (first batch `first`), appending it to the table. */
static int recover_segment(kobo_journal *j, kobo_journal_recovery *r, uint64_t first,
                           bool is_last)
{
	char name[SEGMENT_NAME_DIGITS + 9];
	segment_name(name, first, false);
	uint64_t expected = j->last_batch + 1;
	if (j->seg_count > 0 && first != expected)
		return recover_fail(r, true, "%s/%s: segment starts at batch %" PRIu64
		                    " but the previous segment ends at batch %" PRIu64,
		                    j->path, name, first, j->last_batch);
	if (first == 0)
		return recover_fail(r, true, "%s/%s: batch numbers start at 1", j->path, name);
	int fd = openat(j->dir_fd, name, O_RDWR | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0) {
		int err = errno;
		if (fd >= 0)
			close(fd);
		return recover_fail(r, false, "%s/%s: %s", j->path, name, strerror(err));
	}
	uint64_t size = (uint64_t)st.st_size;
	if (size > KOBO_JOURNAL_SEGMENT_BYTES_MAX) {
		close(fd);
		return recover_fail(r, true, "%s/%s: %" PRIu64 " bytes, more than a segment holds",
		                    j->path, name, size);
	}
	const uint8_t *map = NULL;
	if (size > 0) {
		map = mmap(NULL, size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
		if (map == MAP_FAILED) {
			int err = errno;
			close(fd);
			return recover_fail(r, false, "%s/%s: mmap: %s", j->path, name, strerror(err));
		}
	}
	kobo_journal_scan scan;
	/* Frames are accepted up to the largest payload any config allows: a
	 * smaller payload_bytes_max today must not turn old frames corrupt. */
	int status = kobo__journal_scan(map, size, first, j->seg_count ? j->last_checksum : NULL,
	                                KOBO_JOURNAL_PAYLOAD_BYTES_MAX, NULL, NULL, &scan);
	if (map)
		munmap((void *)map, size);
	if (status != KOBO_OK) {
		close(fd);
		return recover_fail(r, true, "%s/%s: corrupt: %s", j->path, name, scan.message);
	}
	if (scan.torn_end > scan.end) {
		if (!is_last) {
			close(fd);
			return recover_fail(r, true, "%s/%s: corrupt: bad frame at offset %" PRIu64
			                    " in a segment that is not the last", j->path, name,
			                    scan.end);
		}
		/* The torn last frame was never acknowledged: zero it, in two
		 * synced steps — the bytes after its header's first HDR bytes,
		 * then those. A power cut inside either step still leaves a
		 * tail the next open cuts: while the header is intact its
		 * extent covers every non-zero byte, and once the rest is
		 * durably zero the non-zero bytes all lie within HDR of the
		 * bad frame. Zeroed in one write, a disk could keep the first
		 * zeros and not the rest: a zeroed header followed by non-zero
		 * bytes, refused as corruption (tests/powerloss found it). */
		uint64_t n = scan.torn_end - scan.end;
		uint64_t split = n > HDR ? scan.end + HDR : scan.end;
		int err = zero_synced(j, fd, split, scan.torn_end);
		if (err == 0)
			err = zero_synced(j, fd, scan.end, split);
		if (err) {
			close(fd);
			return recover_fail(r, false, "%s/%s: zeroing the torn tail: %s", j->path,
			                    name, strerror(err));
		}
		r->torn_bytes = n;
		r->torn_offset = scan.end;
	}
	j->segs[j->seg_count++] = (segment){first, scan.last_batch, size};
	j->last_batch = scan.last_batch;
	memcpy(j->last_checksum, scan.last_checksum, SUM);
	r->frames += scan.frames;
	if (is_last) {
		j->fd = fd;
		j->write_offset = scan.end;
	} else {
		close(fd);
	}
	return KOBO_OK;
}

static bool config_valid(const kobo_journal_config *c)
{
	return c->segment_bytes >= KOBO_JOURNAL_SEGMENT_BYTES_MIN &&
	       c->segment_bytes <= KOBO_JOURNAL_SEGMENT_BYTES_MAX &&
	       c->payload_bytes_max <= KOBO_JOURNAL_PAYLOAD_BYTES_MAX &&
	       (uint64_t)c->payload_bytes_max + KOBO_JOURNAL_FRAME_OVERHEAD <= c->segment_bytes &&
	       c->segments_max >= 2 && c->segments_max <= KOBO_JOURNAL_SEGMENTS_MAX;
}

int kobo_journal_open(const char *dir, const kobo_journal_config *config,
                      kobo_journal_recovery *recovery, kobo_journal **out)
{
	kobo_journal_recovery scratch;
	kobo_journal_recovery *r = recovery ? recovery : &scratch;
	memset(r, 0, sizeof *r);
	kobo_journal_config defaults;
	kobo_journal_config_default(&defaults);
	if (!config)
		config = &defaults;
	if (!dir || !out || !config_valid(config)) {
		snprintf(r->message, sizeof r->message, "invalid journal arguments or config");
		return KOBO_EINVAL;
	}
	kobo_journal *j = calloc(1, sizeof *j);
	if (!j)
		return KOBO_ENOMEM;
	j->config = *config;
	j->dir_fd = -1;
	j->fd = -1;
	j->spare_fd = -1;
	pthread_mutex_init(&j->lock, NULL);
	pthread_mutex_init(&j->spare_lock, NULL);
	pthread_cond_init(&j->spare_wake, NULL);
	int status = KOBO_ENOMEM;
	j->headers = malloc((size_t)KOBO_JOURNAL_APPEND_FRAMES_MAX * (HDR + SUM));
	j->iov = malloc(IOV_MAX * sizeof *j->iov);
	j->zeros = calloc(1, ZERO_CHUNK_BYTES);
	if (!j->headers || !j->iov || !j->zeros)
		goto fail;

	if ((size_t)snprintf(j->path, sizeof j->path, "%s/journal", dir) >= sizeof j->path) {
		status = recover_fail(r, false, "%s: path too long", dir);
		goto fail;
	}
	if (mkdir(j->path, 0700) == 0) {
		int parent = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (parent < 0 || fsync(parent) != 0) {
			if (parent >= 0)
				close(parent);
			status = recover_fail(r, false, "%s: fsync: %s", dir, strerror(errno));
			goto fail;
		}
		close(parent);
	} else if (errno != EEXIST) {
		status = recover_fail(r, false, "%s: mkdir: %s", j->path, strerror(errno));
		goto fail;
	}
	j->dir_fd = open(j->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (j->dir_fd < 0) {
		status = recover_fail(r, false, "%s: %s", j->path, strerror(errno));
		goto fail;
	}
	if (flock(j->dir_fd, LOCK_EX | LOCK_NB) != 0) {
		status = recover_fail(r, false, "%s: in use by another journal (%s)", j->path,
		                      strerror(errno));
		goto fail;
	}

	uint64_t *numbers = NULL;
	uint32_t n = 0;
	status = list_segments(j, r, &numbers, &n);
	if (status != KOBO_OK)
		goto fail;
	j->seg_capacity = (n > config->segments_max ? n : config->segments_max) + 1;
	j->segs = calloc(j->seg_capacity, sizeof *j->segs);
	if (!j->segs) {
		free(numbers);
		status = KOBO_ENOMEM;
		goto fail;
	}
	for (uint32_t i = 0; i < n; i++) {
		status = recover_segment(j, r, numbers[i], i + 1 == n);
		if (status != KOBO_OK) {
			free(numbers);
			goto fail;
		}
	}
	free(numbers);
	r->segments = j->seg_count;
	r->last_batch = j->last_batch;
	r->first_batch = j->seg_count ? j->segs[0].first_batch : j->last_batch + 1;
	/* Without the thread (it could not start) rolls create segments
	 * themselves: slower, not wrong. */
	if (config->spare_segment)
		j->spare_started = pthread_create(&j->spare_thread, NULL, spare_main, j) == 0;
	*out = j;
	return KOBO_OK;
fail:
	kobo_journal_close(j);
	return status;
}

void kobo_journal_close(kobo_journal *j)
{
	if (!j)
		return;
	if (j->spare_started) {
		pthread_mutex_lock(&j->spare_lock);
		j->spare_stop = true;
		pthread_cond_signal(&j->spare_wake);
		pthread_mutex_unlock(&j->spare_lock);
		pthread_join(j->spare_thread, NULL);
		if (j->spare_fd >= 0) {
			close(j->spare_fd);
			unlinkat(j->dir_fd, SPARE_NAME, 0);
		}
	}
	pthread_cond_destroy(&j->spare_wake);
	pthread_mutex_destroy(&j->spare_lock);
	if (j->fd >= 0)
		close(j->fd);
	if (j->dir_fd >= 0)
		close(j->dir_fd); /* releases the flock */
	pthread_mutex_destroy(&j->lock);
	free(j->segs);
	free(j->headers);
	free(j->iov);
	free(j->zeros);
	free(j);
}

/* ---- Append. ---- */

/* Starts a new segment at batch j->last_batch + 1 and makes it current. */
static int roll(kobo_journal *j)
{
	uint64_t first = j->last_batch + 1;
	int fd;
	int status = segment_create(j, first, &fd);
	if (status != KOBO_OK)
		return status;
	pthread_mutex_lock(&j->lock);
	segment *cur = j->seg_count ? &j->segs[j->seg_count - 1] : NULL;
	if (cur && cur->last_batch + 1 == cur->first_batch) {
		/* The current segment is empty and had this same name: replaced. */
		kobo_assert(cur->first_batch == first);
		*cur = (segment){first, first - 1, j->config.segment_bytes};
	} else {
		kobo_assert(j->seg_count < j->seg_capacity);
		j->segs[j->seg_count++] = (segment){first, first - 1, j->config.segment_bytes};
	}
	pthread_mutex_unlock(&j->lock);
	if (j->fd >= 0)
		close(j->fd);
	j->fd = fd;
	j->write_offset = 0;
	return KOBO_OK;
}

/* Writes the queued iovecs, then clears the queue. */
static int flush_iov(kobo_journal *j, int *queued, uint64_t *at)
{
	if (*queued == 0)
		return KOBO_OK;
	int status = write_all(j, j->fd, j->iov, *queued, *at, KOBO_JOURNAL_IO_WRITE);
	*queued = 0;
	return status;
}

int kobo_journal_append(kobo_journal *j, const kobo_journal_payload *payloads,
                        size_t count, uint64_t *first_batch)
{
	if (!j || !payloads || count == 0 || count > KOBO_JOURNAL_APPEND_FRAMES_MAX)
		return KOBO_EINVAL;
	if (kobo_journal_failed(j))
		return KOBO_EFAILED;

	/* Plan: how many new segments the frames need, before writing any. A
	 * current segment still empty is replaced by the first roll, not kept. */
	uint64_t cap = j->seg_count ? j->segs[j->seg_count - 1].size : 0;
	bool free_roll = j->seg_count && j->segs[j->seg_count - 1].last_batch + 1 ==
	                                 j->segs[j->seg_count - 1].first_batch;
	uint64_t off = j->fd >= 0 ? j->write_offset : cap;
	uint32_t rolls = 0;
	for (size_t i = 0; i < count; i++) {
		if ((!payloads[i].bytes && payloads[i].len) ||
		    payloads[i].len > j->config.payload_bytes_max)
			return KOBO_EINVAL;
		uint64_t fb = KOBO_JOURNAL_FRAME_OVERHEAD + payloads[i].len;
		if (off + fb > cap) {
			if (!(free_roll && off == 0))
				rolls++;
			cap = j->config.segment_bytes;
			off = 0;
		}
		off += fb;
	}
	if (j->seg_count + rolls > j->config.segments_max ||
	    j->last_batch + count > KOBO_JOURNAL_BATCH_MAX)
		return KOBO_EFULL;

	uint64_t first = j->last_batch + 1;
	uint64_t batch = j->last_batch;
	uint8_t prev[SUM];
	memcpy(prev, j->last_checksum, SUM);
	int queued = 0;
	bool wrote_current = false; /* frames of this call in the current segment */
	uint64_t at = j->write_offset;
	int status = KOBO_OK;
	for (size_t i = 0; i < count; i++) {
		size_t len = payloads[i].len;
		uint64_t fb = KOBO_JOURNAL_FRAME_OVERHEAD + len;
		cap = j->seg_count ? j->segs[j->seg_count - 1].size : 0;
		if (j->fd < 0 || j->write_offset + fb > cap) {
			/* Roll over: the frames this call wrote into the segment it
			 * leaves are synced and published first. */
			if ((status = flush_iov(j, &queued, &at)) != KOBO_OK)
				goto failed;
			if (wrote_current) {
				if ((status = sync_fd(j, j->fd, KOBO_JOURNAL_IO_FDATASYNC)) != KOBO_OK)
					goto failed;
				memcpy(j->last_checksum, prev, SUM);
				pthread_mutex_lock(&j->lock);
				j->segs[j->seg_count - 1].last_batch = batch;
				j->last_batch = batch;
				pthread_mutex_unlock(&j->lock);
			}
			if ((status = roll(j)) != KOBO_OK)
				goto failed;
			wrote_current = false;
		}
		if (queued + 3 > IOV_MAX && (status = flush_iov(j, &queued, &at)) != KOBO_OK)
			goto failed;
		if (queued == 0)
			at = j->write_offset;
		uint8_t *h = j->headers + i * (HDR + SUM);
		uint8_t *sum = h + HDR;
		batch++;
		encode_header(h, batch, (uint32_t)len, prev);
		checksum_parts(h, payloads[i].bytes, len, sum);
		memcpy(prev, sum, SUM);
		j->iov[queued++] = (struct iovec){h, HDR};
		if (len)
			j->iov[queued++] = (struct iovec){(void *)payloads[i].bytes, len};
		j->iov[queued++] = (struct iovec){sum, SUM};
		j->write_offset += fb;
		wrote_current = true;
	}
	if ((status = flush_iov(j, &queued, &at)) != KOBO_OK ||
	    (status = sync_fd(j, j->fd, KOBO_JOURNAL_IO_FDATASYNC)) != KOBO_OK)
		goto failed;
	memcpy(j->last_checksum, prev, SUM);
	pthread_mutex_lock(&j->lock);
	j->segs[j->seg_count - 1].last_batch = batch;
	j->last_batch = batch;
	pthread_mutex_unlock(&j->lock);
	if (first_batch)
		*first_batch = first;
	return KOBO_OK;
failed:
	journal_fail(j);
	return KOBO_EUNKNOWN;
}

/* ---- Release. ---- */

int kobo_journal_release(kobo_journal *j, uint64_t upto_batch, uint32_t *released)
{
	if (released)
		*released = 0;
	if (!j)
		return KOBO_EINVAL;
	if (kobo_journal_failed(j))
		return KOBO_EFAILED;
	if (upto_batch > j->last_batch)
		return KOBO_EINVAL;
	for (;;) {
		pthread_mutex_lock(&j->lock);
		bool go = j->seg_count > 1 && j->segs[1].first_batch - 1 <= upto_batch;
		uint64_t first = j->segs[0].first_batch;
		if (go) {
			memmove(j->segs, j->segs + 1, (j->seg_count - 1) * sizeof *j->segs);
			j->seg_count--;
		}
		pthread_mutex_unlock(&j->lock);
		if (!go)
			return KOBO_OK;
		char name[SEGMENT_NAME_DIGITS + 9];
		segment_name(name, first, false);
		if (unlinkat(j->dir_fd, name, 0) != 0 || fsync(j->dir_fd) != 0) {
			journal_fail(j);
			return KOBO_EUNKNOWN;
		}
		if (released)
			(*released)++;
	}
}

/* ---- Accessors. ---- */

uint64_t kobo_journal_last_batch(kobo_journal *j)
{
	pthread_mutex_lock(&j->lock);
	uint64_t v = j->last_batch;
	pthread_mutex_unlock(&j->lock);
	return v;
}

uint64_t kobo_journal_first_batch(kobo_journal *j)
{
	pthread_mutex_lock(&j->lock);
	uint64_t v = j->seg_count ? j->segs[0].first_batch : j->last_batch + 1;
	pthread_mutex_unlock(&j->lock);
	return v;
}

uint32_t kobo_journal_segments(kobo_journal *j)
{
	pthread_mutex_lock(&j->lock);
	uint32_t v = j->seg_count;
	pthread_mutex_unlock(&j->lock);
	return v;
}

uint64_t kobo_journal_spares_used(kobo_journal *j)
{
	pthread_mutex_lock(&j->spare_lock);
	uint64_t v = j->spares_used;
	pthread_mutex_unlock(&j->spare_lock);
	return v;
}

bool kobo_journal_failed(kobo_journal *j)
{
	pthread_mutex_lock(&j->lock);
	bool v = j->failed;
	pthread_mutex_unlock(&j->lock);
	return v;
}

/* ---- Readers. ---- */

struct kobo_journal_reader {
	kobo_journal *journal;
	int fd;                 /* the segment being read, or -1 */
	uint64_t seg_first;     /* its first batch */
	uint64_t offset;        /* next frame's offset in it */
	uint64_t next_batch;
	uint8_t prev[SUM];
	bool have_prev;
	uint8_t *buf;           /* header + payload + checksum of the last frame */
	size_t buf_size;
	char message[KOBO_JOURNAL_MESSAGE_BYTES];
};

static int reader_fail(kobo_journal_reader *rd, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(rd->message, sizeof rd->message, fmt, ap);
	va_end(ap);
	return KOBO_ESTORE;
}

static int read_exact(int fd, void *buf, size_t n, uint64_t offset)
{
	size_t done = 0;
	while (done < n) {
		ssize_t r = pread(fd, (uint8_t *)buf + done, n - done, (off_t)(offset + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r == 0 ? EIO : errno;
		done += (size_t)r;
	}
	return 0;
}

/* Opens the segment whose first batch is first. */
static int reader_open_segment(kobo_journal_reader *rd, uint64_t first)
{
	char name[SEGMENT_NAME_DIGITS + 9];
	segment_name(name, first, false);
	if (rd->fd >= 0)
		close(rd->fd);
	rd->fd = openat(rd->journal->dir_fd, name, O_RDONLY | O_CLOEXEC);
	if (rd->fd < 0)
		return reader_fail(rd, "%s/%s: %s", rd->journal->path, name, strerror(errno));
	rd->seg_first = first;
	rd->offset = 0;
	return KOBO_OK;
}

/* Reads and verifies the frame at the reader's position (batch expected). */
static int reader_read_frame(kobo_journal_reader *rd, uint64_t *len_out)
{
	char name[SEGMENT_NAME_DIGITS + 9];
	segment_name(name, rd->seg_first, false);
	int err = read_exact(rd->fd, rd->buf, HDR, rd->offset);
	if (err)
		return reader_fail(rd, "%s/%s: read at offset %" PRIu64 ": %s", rd->journal->path,
		                   name, rd->offset, strerror(err));
	if (!header_plausible(rd->buf, KOBO_JOURNAL_PAYLOAD_BYTES_MAX) ||
	    get_u64(rd->buf + 8) != rd->next_batch)
		return reader_fail(rd, "%s/%s: corrupt frame header at offset %" PRIu64
		                   " (batch %" PRIu64 " expected)", rd->journal->path, name,
		                   rd->offset, rd->next_batch);
	uint64_t len = get_u32(rd->buf + 16);
	if (HDR + len + SUM > rd->buf_size) {
		uint8_t *grown = realloc(rd->buf, HDR + len + SUM);
		if (!grown)
			return KOBO_ENOMEM;
		rd->buf = grown;
		rd->buf_size = HDR + len + SUM;
	}
	err = read_exact(rd->fd, rd->buf + HDR, len + SUM, rd->offset + HDR);
	if (err)
		return reader_fail(rd, "%s/%s: read at offset %" PRIu64 ": %s", rd->journal->path,
		                   name, rd->offset, strerror(err));
	uint8_t sum[SUM];
	kobo__journal_checksum(rd->buf, len, sum);
	if (memcmp(sum, rd->buf + HDR + len, SUM) != 0 ||
	    (rd->have_prev && memcmp(rd->buf + 24, rd->prev, SUM) != 0))
		return reader_fail(rd, "%s/%s: corrupt frame at offset %" PRIu64 " (batch %" PRIu64
		                   ")", rd->journal->path, name, rd->offset, rd->next_batch);
	memcpy(rd->prev, sum, SUM);
	rd->have_prev = true;
	rd->offset += HDR + len + SUM;
	rd->next_batch++;
	*len_out = len;
	return KOBO_OK;
}

/* The first batch of the live segment holding batch, 0 if none. */
static uint64_t segment_holding(kobo_journal *j, uint64_t batch)
{
	uint64_t found = 0;
	pthread_mutex_lock(&j->lock);
	for (uint32_t i = 0; i < j->seg_count; i++)
		if (j->segs[i].first_batch <= batch && batch <= j->segs[i].last_batch)
			found = j->segs[i].first_batch;
	pthread_mutex_unlock(&j->lock);
	return found;
}

int kobo_journal_reader_open(kobo_journal *j, uint64_t from_batch, kobo_journal_reader **out)
{
	if (!j || !out)
		return KOBO_EINVAL;
	uint64_t first = kobo_journal_first_batch(j), last = kobo_journal_last_batch(j);
	if (from_batch < first || from_batch > last + 1 || from_batch == 0)
		return KOBO_EINVAL;
	kobo_journal_reader *rd = calloc(1, sizeof *rd);
	if (!rd)
		return KOBO_ENOMEM;
	rd->journal = j;
	rd->fd = -1;
	rd->buf_size = HDR + SUM + 4096;
	rd->buf = malloc(rd->buf_size);
	if (!rd->buf) {
		free(rd);
		return KOBO_ENOMEM;
	}
	/* Position on from_batch: walk the frames before it in its segment. */
	uint64_t seg = segment_holding(j, from_batch > last ? last : from_batch);
	if (seg) {
		int status = reader_open_segment(rd, seg);
		rd->next_batch = seg;
		while (status == KOBO_OK && rd->next_batch < from_batch) {
			uint64_t len;
			status = reader_read_frame(rd, &len);
		}
		if (status != KOBO_OK) {
			kobo_journal_reader_close(rd);
			return status;
		}
	}
	rd->next_batch = from_batch;
	*out = rd;
	return KOBO_OK;
}

int kobo_journal_reader_next(kobo_journal_reader *rd, uint64_t *batch, const void **payload,
                             size_t *len)
{
	rd->message[0] = '\0';
	if (rd->next_batch > kobo_journal_last_batch(rd->journal))
		return KOBO_ENOTFOUND;
	if (rd->fd < 0 || segment_holding(rd->journal, rd->next_batch) != rd->seg_first) {
		uint64_t seg = segment_holding(rd->journal, rd->next_batch);
		if (seg != rd->next_batch)
			return reader_fail(rd, "batch %" PRIu64 " is in no live segment, or not at"
			                   " its start (released under the reader?)", rd->next_batch);
		int status = reader_open_segment(rd, seg);
		if (status != KOBO_OK)
			return status;
	}
	uint64_t n;
	uint64_t this_batch = rd->next_batch;
	int status = reader_read_frame(rd, &n);
	if (status != KOBO_OK)
		return status;
	*batch = this_batch;
	*payload = rd->buf + HDR;
	*len = (size_t)n;
	return KOBO_OK;
}

const char *kobo_journal_reader_message(const kobo_journal_reader *rd)
{
	return rd->message;
}

void kobo_journal_reader_close(kobo_journal_reader *rd)
{
	if (!rd)
		return;
	if (rd->fd >= 0)
		close(rd->fd);
	free(rd->buf);
	free(rd);
}
