/*
 * powerloss_shim.c — an LD_PRELOAD library that records, for every file
 * under one directory, each write and each sync point, so that a replayer
 * (tests/powerloss/powerloss.py) can rebuild the directory as a disk would
 * hold it after a power cut at any point of the run (issue 12: power loss,
 * not only kill -9, which keeps the page cache). Never linked into kobod.
 *
 * Environment
 *   KOBO_POWERLOSS_DIR  the directory whose files are recorded (and
 *                       everything below it). Unset: the shim only forwards.
 *   KOBO_POWERLOSS_LOG  the log file, appended to (O_APPEND, one writer
 *                       lock per process), outside KOBO_POWERLOSS_DIR.
 *
 * What it records (each AFTER the real call succeeded, so the log order is
 * the order in which the calls took effect; a failed call records nothing):
 *   open/openat/creat (…64, __open_2 …)  OPEN: path, inode, created or not
 *   write/writev/pwrite/pwritev/pwritev2  WRITE: inode, offset, the bytes
 *                                         really written (all-zero bytes as
 *                                         a flag, not data)
 *   ftruncate/truncate, (posix_)fallocate TRUNCATE / FALLOCATE
 *   fsync/fdatasync (a file or a dir)     FSYNC (file: its data is durable;
 *                                         dir: its entries are durable)
 *   sync_file_range                       SYNC_FILE_RANGE (durable: NO, it
 *                                         flushes no disk cache, no metadata)
 *   sync/syncfs                           SYNC_ALL
 *   rename/renameat/renameat2, unlink/unlinkat/rmdir, mkdir/mkdirat
 *   mmap(PROT_WRITE, MAP_SHARED) of a recorded file: UNSUPPORTED (stores
 *   through such a map are invisible here; the replayer refuses the log)
 * Descriptors are followed through dup/dup2/dup3/fcntl(F_DUPFD) and close;
 * an entry whose descriptor number was reused by a call the shim does not
 * see (socket, pipe, fopen, opendir) is dropped by checking the inode at
 * each use. Files written with O_SYNC/O_DSYNC (or RWF_(D)SYNC) are flagged.
 *
 * Record (little-endian, 56-byte header, then path, path2, data):
 *   u32 total bytes | u16 type | u16 flags | u64 inode | u64 device |
 *   u64 offset | u64 length | u32 path bytes | u32 path2 bytes | u32 mode |
 *   u32 thread id
 * Paths are relative to KOBO_POWERLOSS_DIR ("" for the directory itself).
 * A reader knows how far the run had got at a moment by the log's size
 * then: every record of a call that returned before it lies below it.
 *
 * Not seen (documented in README "Durability"): stdio (fopen/fwrite use
 * libc-internal calls), copy_file_range/sendfile into a recorded file,
 * link/symlink, writes through a shared mmap (flagged, see above), and
 * direct syscalls. A log shared by several processes is untested, and a
 * fork while another thread holds the log lock would deadlock the child.
 *
 * Built twice (Makefile): plain, for programs without ASan (an ASan
 * library would have to come first in the preload list), and with
 * ASan+UBSan for ASan programs such as build/asan/kobod — whose libasan
 * then loads after the shim: run them with
 * ASAN_OPTIONS=verify_asan_link_order=0.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

enum {
	REC_OPEN = 1,
	REC_WRITE = 2,
	REC_TRUNCATE = 3,
	REC_FALLOCATE = 4,
	REC_FSYNC = 5,
	REC_SYNC_FILE_RANGE = 6,
	REC_RENAME = 7,
	REC_UNLINK = 8,
	REC_MKDIR = 9,
	REC_RMDIR = 10,
	REC_SYNC_ALL = 11,
	REC_UNSUPPORTED = 12,
};
enum {
	FLAG_CREATED = 1,   /* OPEN: the call created the file */
	FLAG_DIR = 2,       /* OPEN/FSYNC: a directory */
	FLAG_SYNC = 4,      /* WRITE: durable on return (O_SYNC, O_DSYNC, RWF_*SYNC) */
	FLAG_ZERO = 8,      /* WRITE: the bytes were all zero (no data follows) */
	FLAG_DATAONLY = 16, /* FSYNC: fdatasync */
	FLAG_TRUNCATED = 32,/* OPEN: O_TRUNC emptied an existing file */
};
#define HEADER_BYTES 56
#define FDS_MAX 65536 /* descriptors followed; a higher one is UNSUPPORTED */

typedef struct tracked {
	uint64_t ino, dev;
	uint8_t kind;  /* 0 none, 1 file, 2 directory */
	bool sync;     /* opened O_SYNC / O_DSYNC */
	char *rel;     /* directories: path relative to the root */
} tracked;

static tracked fds[FDS_MAX];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* fds and the log */
static char root[PATH_MAX];
static size_t root_len;
static int log_fd = -1;
static bool active;

/* ---- The real functions. ---- */

#define REAL(name) static __typeof__(name) *real_##name
REAL(open); REAL(openat); REAL(creat); REAL(close);
REAL(write); REAL(writev); REAL(pwrite); REAL(pwritev); REAL(pwritev2);
REAL(ftruncate); REAL(truncate); REAL(fallocate); REAL(posix_fallocate);
REAL(fsync); REAL(fdatasync); REAL(sync_file_range); REAL(sync); REAL(syncfs);
REAL(rename); REAL(renameat); REAL(renameat2); REAL(unlink); REAL(unlinkat);
REAL(rmdir); REAL(mkdir); REAL(mkdirat); REAL(dup); REAL(dup2); REAL(dup3);
REAL(fcntl); REAL(mmap);
static int (*real___open_2)(const char *, int);
static int (*real___openat_2)(int, const char *, int);

static void *must_sym(const char *name)
{
	void *p = dlsym(RTLD_NEXT, name);
	if (!p) {
		fprintf(stderr, "powerloss shim: no symbol %s\n", name);
		abort();
	}
	return p;
}

static void die(const char *what)
{
	char msg[256];
	int n = snprintf(msg, sizeof msg, "powerloss shim: %s: %s\n", what, strerror(errno));
	if (n > 0)
		(void)!syscall(SYS_write, 2, msg, (size_t)n);
	abort();
}

static void shim_load(void)
{
#define LOAD(name) real_##name = must_sym(#name)
	LOAD(open); LOAD(openat); LOAD(creat); LOAD(close);
	LOAD(write); LOAD(writev); LOAD(pwrite); LOAD(pwritev); LOAD(pwritev2);
	LOAD(ftruncate); LOAD(truncate); LOAD(fallocate); LOAD(posix_fallocate);
	LOAD(fsync); LOAD(fdatasync); LOAD(sync_file_range); LOAD(sync); LOAD(syncfs);
	LOAD(rename); LOAD(renameat); LOAD(renameat2); LOAD(unlink); LOAD(unlinkat);
	LOAD(rmdir); LOAD(mkdir); LOAD(mkdirat); LOAD(dup); LOAD(dup2); LOAD(dup3);
	LOAD(fcntl); LOAD(mmap);
	real___open_2 = must_sym("__open_2");
	real___openat_2 = must_sym("__openat_2");
#undef LOAD
}

/* Every wrapper first makes sure the real functions are known: ASan's
 * start-up (a preinit function) already calls some. The environment is read
 * in the constructor: before libc's own initialisation getenv sees nothing;
 * until then the wrappers only forward. */
static pthread_once_t once = PTHREAD_ONCE_INIT;
#define INIT() pthread_once(&once, shim_load)

__attribute__((constructor)) static void shim_init(void)
{
	INIT();
	const char *dir = getenv("KOBO_POWERLOSS_DIR");
	const char *log = getenv("KOBO_POWERLOSS_LOG");
	if (!dir || !*dir || !log || !*log)
		return;
	if (!realpath(dir, root))
		die("KOBO_POWERLOSS_DIR");
	root_len = strlen(root);
	log_fd = (int)syscall(SYS_openat, AT_FDCWD, log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
	                      0600);
	if (log_fd < 0)
		die("KOBO_POWERLOSS_LOG");
	active = true;
}

/* ---- Paths. ---- */

/* Removes "." and ".." and doubled slashes from an absolute path in place. */
static void normalize(char *p)
{
	char out[PATH_MAX];
	size_t n = 0;
	const char *s = p;
	while (*s) {
		while (*s == '/')
			s++;
		const char *e = s;
		while (*e && *e != '/')
			e++;
		size_t len = (size_t)(e - s);
		if (len == 0 || (len == 1 && s[0] == '.')) {
		} else if (len == 2 && s[0] == '.' && s[1] == '.') {
			while (n > 0 && out[n - 1] != '/')
				n--;
			if (n > 0)
				n--;
		} else if (n + 1 + len < sizeof out) {
			out[n++] = '/';
			memcpy(out + n, s, len);
			n += len;
		}
		s = e;
	}
	if (n == 0)
		out[n++] = '/';
	out[n] = '\0';
	memcpy(p, out, n + 1);
}

/* The path of name (relative to dirfd) relative to the root, in rel;
 * false when it is not under the root. The parent directory is resolved
 * with realpath (symlinks), the last component is kept as named. */
static bool resolve(int dirfd, const char *name, char rel[PATH_MAX])
{
	if (!active || !name)
		return false;
	char abs[PATH_MAX * 2];
	if (name[0] == '/') {
		snprintf(abs, sizeof abs, "%s", name);
	} else {
		char base[PATH_MAX];
		if (dirfd == AT_FDCWD) {
			if (!getcwd(base, sizeof base))
				return false;
		} else {
			char link[64];
			snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
			ssize_t n = readlink(link, base, sizeof base - 1);
			if (n < 0)
				return false;
			base[n] = '\0';
		}
		snprintf(abs, sizeof abs, "%s/%s", base, name);
	}
	if (strlen(abs) >= PATH_MAX)
		return false;
	normalize(abs);
	char *slash = strrchr(abs, '/');
	char parent[PATH_MAX], real_parent[PATH_MAX];
	size_t plen = (size_t)(slash - abs);
	memcpy(parent, abs, plen);
	parent[plen] = '\0';
	if (plen == 0)
		strcpy(parent, "/");
	if (!realpath(parent, real_parent))
		snprintf(real_parent, sizeof real_parent, "%s", parent);
	char full[PATH_MAX * 2];
	if (strcmp(real_parent, "/") == 0)
		snprintf(full, sizeof full, "/%s", slash + 1);
	else
		snprintf(full, sizeof full, "%s/%s", real_parent, slash + 1);
	if (strcmp(full, root) == 0) {
		rel[0] = '\0';
		return true;
	}
	if (strncmp(full, root, root_len) != 0 || full[root_len] != '/' ||
	    strlen(full + root_len + 1) >= PATH_MAX)
		return false;
	strcpy(rel, full + root_len + 1);
	return true;
}

/* ---- The log. ---- */

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> 8 * i); }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> 8 * i); }

typedef struct record {
	uint16_t type, flags;
	uint64_t ino, dev, offset, length;
	const char *path, *path2;
	uint32_t mode;
	const struct iovec *data; /* WRITE: the iovecs written, first `length` bytes */
	int data_count;
} record;

static bool iov_all_zero(const struct iovec *iov, int n, uint64_t bytes)
{
	for (int i = 0; i < n && bytes > 0; i++) {
		const uint8_t *p = iov[i].iov_base;
		uint64_t len = iov[i].iov_len < bytes ? iov[i].iov_len : bytes;
		for (uint64_t k = 0; k < len; k++)
			if (p[k])
				return false;
		bytes -= len;
	}
	return true;
}

static void log_all(const void *buf, size_t n)
{
	const uint8_t *p = buf;
	while (n > 0) {
		ssize_t w = syscall(SYS_write, log_fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die("writing the log");
		p += w;
		n -= (size_t)w;
	}
}

/* Appends one record. Called with `lock` held, so records never interleave. */
static void emit(record *r)
{
	uint64_t data_bytes = 0;
	if (r->type == REC_WRITE) {
		if (iov_all_zero(r->data, r->data_count, r->length))
			r->flags |= FLAG_ZERO;
		else
			data_bytes = r->length;
	}
	uint32_t p1 = r->path ? (uint32_t)strlen(r->path) : 0;
	uint32_t p2 = r->path2 ? (uint32_t)strlen(r->path2) : 0;
	uint64_t total = HEADER_BYTES + p1 + p2 + data_bytes;
	if (total > UINT32_MAX) {
		errno = EFBIG;
		die("a record over 4 GiB");
	}
	uint8_t h[HEADER_BYTES];
	put32(h, (uint32_t)total);
	put16(h + 4, r->type);
	put16(h + 6, r->flags);
	put64(h + 8, r->ino);
	put64(h + 16, r->dev);
	put64(h + 24, r->offset);
	put64(h + 32, r->length);
	put32(h + 40, p1);
	put32(h + 44, p2);
	put32(h + 48, r->mode);
	put32(h + 52, (uint32_t)syscall(SYS_gettid));
	/* One write when the record fits the buffer (the log then never holds
	 * half a record of a process killed mid-call), else header and pieces. */
	static uint8_t buf[1 << 20];
	if (total <= sizeof buf) {
		size_t n = 0;
		memcpy(buf, h, HEADER_BYTES);
		n += HEADER_BYTES;
		memcpy(buf + n, r->path ? r->path : "", p1);
		n += p1;
		memcpy(buf + n, r->path2 ? r->path2 : "", p2);
		n += p2;
		uint64_t left = data_bytes;
		for (int i = 0; i < r->data_count && left > 0; i++) {
			size_t k = r->data[i].iov_len < left ? r->data[i].iov_len : (size_t)left;
			memcpy(buf + n, r->data[i].iov_base, k);
			n += k;
			left -= k;
		}
		log_all(buf, n);
		return;
	}
	log_all(h, HEADER_BYTES);
	if (p1)
		log_all(r->path, p1);
	if (p2)
		log_all(r->path2, p2);
	uint64_t left = data_bytes;
	for (int i = 0; i < r->data_count && left > 0; i++) {
		size_t n = r->data[i].iov_len < left ? r->data[i].iov_len : (size_t)left;
		log_all(r->data[i].iov_base, n);
		left -= n;
	}
}

/* ---- Descriptors. ---- */

/* The entry of fd if it still names the file it was recorded for (lock held). */
static tracked *lookup(int fd)
{
	if (!active || fd < 0 || fd >= FDS_MAX || fds[fd].kind == 0)
		return NULL;
	struct stat st;
	if (fstat(fd, &st) != 0 || (uint64_t)st.st_ino != fds[fd].ino ||
	    (uint64_t)st.st_dev != fds[fd].dev) {
		free(fds[fd].rel);
		memset(&fds[fd], 0, sizeof fds[fd]);
		return NULL;
	}
	return &fds[fd];
}

static void forget(int fd)
{
	if (fd >= 0 && fd < FDS_MAX && fds[fd].kind) {
		free(fds[fd].rel);
		memset(&fds[fd], 0, sizeof fds[fd]);
	}
}

/* After a successful open of rel (existed: whether it did before). */
static void opened(int fd, const char *rel, int flags, bool existed)
{
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0)
		return;
	pthread_mutex_lock(&lock);
	forget(fd);
	if (fd >= FDS_MAX) {
		record u = {.type = REC_UNSUPPORTED, .path = rel};
		emit(&u);
		pthread_mutex_unlock(&lock);
		return;
	}
	bool dir = S_ISDIR(st.st_mode);
	fds[fd] = (tracked){(uint64_t)st.st_ino, (uint64_t)st.st_dev, dir ? 2 : 1,
	                    (flags & (O_SYNC | O_DSYNC)) != 0, dir ? strdup(rel) : NULL};
	uint16_t f = (uint16_t)((existed ? 0 : FLAG_CREATED) | (dir ? FLAG_DIR : 0));
	if (existed && !dir && (flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY)
		f |= FLAG_TRUNCATED;
	record r = {.type = REC_OPEN, .flags = f, .ino = fds[fd].ino, .dev = fds[fd].dev,
	            .path = rel, .mode = (uint32_t)flags};
	emit(&r);
	pthread_mutex_unlock(&lock);
}

static void duped(int from, int to)
{
	if (to < 0)
		return;
	pthread_mutex_lock(&lock);
	forget(to);
	tracked *t = lookup(from);
	if (t && to < FDS_MAX) {
		fds[to] = *t;
		fds[to].rel = t->rel ? strdup(t->rel) : NULL;
	}
	pthread_mutex_unlock(&lock);
}

/* ---- open. ---- */

static int do_openat(int dirfd, const char *path, int flags, mode_t mode, bool two)
{
	char rel[PATH_MAX];
	if (!resolve(dirfd, path, rel)) {
		if (two)
			return dirfd == AT_FDCWD ? real___open_2(path, flags)
			                         : real___openat_2(dirfd, path, flags);
		return real_openat(dirfd, path, flags, mode);
	}
	struct stat st;
	bool existed = fstatat(dirfd, path, &st, 0) == 0;
	int fd = two ? (dirfd == AT_FDCWD ? real___open_2(path, flags)
	                                  : real___openat_2(dirfd, path, flags))
	             : real_openat(dirfd, path, flags, mode);
	if (fd >= 0) {
		int saved = errno;
		opened(fd, rel, flags, existed);
		errno = saved;
	}
	return fd;
}

static mode_t mode_arg(int flags, va_list ap)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

EXPORT int open(const char *path, int flags, ...)
{
	INIT();
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_arg(flags, ap);
	va_end(ap);
	return do_openat(AT_FDCWD, path, flags, mode, false);
}
EXPORT int open64(const char *path, int flags, ...)
{
	INIT();
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_arg(flags, ap);
	va_end(ap);
	return do_openat(AT_FDCWD, path, flags, mode, false);
}
EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
	INIT();
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_arg(flags, ap);
	va_end(ap);
	return do_openat(dirfd, path, flags, mode, false);
}
EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
	INIT();
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_arg(flags, ap);
	va_end(ap);
	return do_openat(dirfd, path, flags, mode, false);
}
EXPORT int __open_2(const char *path, int flags) { INIT(); return do_openat(AT_FDCWD, path, flags, 0, true); }
EXPORT int __open64_2(const char *path, int flags) { INIT(); return do_openat(AT_FDCWD, path, flags, 0, true); }
EXPORT int __openat_2(int dirfd, const char *path, int flags) { INIT(); return do_openat(dirfd, path, flags, 0, true); }
EXPORT int __openat64_2(int dirfd, const char *path, int flags) { INIT(); return do_openat(dirfd, path, flags, 0, true); }
EXPORT int creat(const char *path, mode_t mode)
{
	INIT();
	return do_openat(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, false);
}
EXPORT int creat64(const char *path, mode_t mode) { INIT(); return creat(path, mode); }

EXPORT int close(int fd)
{
	INIT();
	if (active) {
		pthread_mutex_lock(&lock);
		forget(fd);
		pthread_mutex_unlock(&lock);
	}
	return real_close(fd);
}

EXPORT int dup(int fd)
{
	INIT();
	int to = real_dup(fd);
	int saved = errno;
	if (active)
		duped(fd, to);
	errno = saved;
	return to;
}
EXPORT int dup2(int fd, int to)
{
	INIT();
	int r = real_dup2(fd, to);
	int saved = errno;
	if (active && r >= 0 && fd != to)
		duped(fd, r);
	errno = saved;
	return r;
}
EXPORT int dup3(int fd, int to, int flags)
{
	INIT();
	int r = real_dup3(fd, to, flags);
	int saved = errno;
	if (active)
		duped(fd, r);
	errno = saved;
	return r;
}
/* fcntl's third argument is an int or a pointer; both travel as one
 * pointer-sized slot (as in glibc's own wrapper). */
EXPORT int fcntl(int fd, int cmd, ...)
{
	INIT();
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	int r = real_fcntl(fd, cmd, arg);
	int saved = errno;
	if (active && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC))
		duped(fd, r);
	errno = saved;
	return r;
}
EXPORT int fcntl64(int fd, int cmd, ...)
{
	INIT();
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return fcntl(fd, cmd, arg);
}

/* ---- Writes. ---- */

/* Records n bytes of iov written to fd at offset (-1: the file position,
 * read after the write). */
static void wrote(int fd, const struct iovec *iov, int count, ssize_t n, off_t offset,
                  bool sync_flag)
{
	if (!active || n <= 0)
		return;
	int saved = errno;
	pthread_mutex_lock(&lock);
	tracked *t = lookup(fd);
	if (t && t->kind == 1) {
		if (offset < 0)
			offset = lseek(fd, 0, SEEK_CUR) - n;
		record r = {.type = REC_WRITE, .ino = t->ino, .dev = t->dev, .offset = (uint64_t)offset,
		            .length = (uint64_t)n, .data = iov, .data_count = count,
		            .flags = (uint16_t)(t->sync || sync_flag ? FLAG_SYNC : 0)};
		emit(&r);
	}
	pthread_mutex_unlock(&lock);
	errno = saved;
}

EXPORT ssize_t write(int fd, const void *buf, size_t n)
{
	INIT();
	ssize_t r = real_write(fd, buf, n);
	struct iovec v = {(void *)buf, n};
	wrote(fd, &v, 1, r, -1, false);
	return r;
}
EXPORT ssize_t writev(int fd, const struct iovec *iov, int count)
{
	INIT();
	ssize_t r = real_writev(fd, iov, count);
	wrote(fd, iov, count, r, -1, false);
	return r;
}
EXPORT ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
	INIT();
	ssize_t r = real_pwrite(fd, buf, n, off);
	struct iovec v = {(void *)buf, n};
	wrote(fd, &v, 1, r, off, false);
	return r;
}
EXPORT ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) { INIT(); return pwrite(fd, buf, n, off); }
EXPORT ssize_t pwritev(int fd, const struct iovec *iov, int count, off_t off)
{
	INIT();
	ssize_t r = real_pwritev(fd, iov, count, off);
	wrote(fd, iov, count, r, off, false);
	return r;
}
EXPORT ssize_t pwritev64(int fd, const struct iovec *iov, int count, off_t off)
{
	INIT();
	return pwritev(fd, iov, count, off);
}
EXPORT ssize_t pwritev2(int fd, const struct iovec *iov, int count, off_t off, int flags)
{
	INIT();
	ssize_t r = real_pwritev2(fd, iov, count, off, flags);
	wrote(fd, iov, count, r, off, (flags & (RWF_DSYNC | RWF_SYNC)) != 0);
	return r;
}
EXPORT ssize_t pwritev64v2(int fd, const struct iovec *iov, int count, off_t off, int flags)
{
	INIT();
	return pwritev2(fd, iov, count, off, flags);
}

/* Records a size or sync operation on fd (a file, or for FSYNC a dir). */
static void fd_op(int fd, uint16_t type, uint16_t flags, uint64_t offset, uint64_t length,
                  uint32_t mode)
{
	if (!active)
		return;
	int saved = errno;
	pthread_mutex_lock(&lock);
	tracked *t = lookup(fd);
	if (t && (t->kind == 1 || type == REC_FSYNC)) {
		record r = {.type = type, .flags = flags, .ino = t->ino, .dev = t->dev,
		            .offset = offset, .length = length, .mode = mode};
		if (t->kind == 2) {
			r.flags |= FLAG_DIR;
			r.path = t->rel;
		}
		emit(&r);
	}
	pthread_mutex_unlock(&lock);
	errno = saved;
}

EXPORT int ftruncate(int fd, off_t size)
{
	INIT();
	int r = real_ftruncate(fd, size);
	if (r == 0)
		fd_op(fd, REC_TRUNCATE, 0, 0, (uint64_t)size, 0);
	return r;
}
EXPORT int ftruncate64(int fd, off_t size) { INIT(); return ftruncate(fd, size); }
EXPORT int truncate(const char *path, off_t size)
{
	INIT();
	int r = real_truncate(path, size);
	char rel[PATH_MAX];
	if (r == 0 && resolve(AT_FDCWD, path, rel)) {
		int saved = errno;
		struct stat st;
		if (stat(path, &st) == 0) {
			pthread_mutex_lock(&lock);
			record rec = {.type = REC_TRUNCATE, .ino = (uint64_t)st.st_ino,
			              .dev = (uint64_t)st.st_dev, .length = (uint64_t)size};
			emit(&rec);
			pthread_mutex_unlock(&lock);
		}
		errno = saved;
	}
	return r;
}
EXPORT int truncate64(const char *path, off_t size) { INIT(); return truncate(path, size); }
EXPORT int fallocate(int fd, int mode, off_t off, off_t len)
{
	INIT();
	int r = real_fallocate(fd, mode, off, len);
	if (r == 0)
		fd_op(fd, REC_FALLOCATE, 0, (uint64_t)off, (uint64_t)len, (uint32_t)mode);
	return r;
}
EXPORT int fallocate64(int fd, int mode, off_t off, off_t len) { INIT(); return fallocate(fd, mode, off, len); }
/* glibc's posix_fallocate calls the system call itself, not fallocate(). */
EXPORT int posix_fallocate(int fd, off_t off, off_t len)
{
	INIT();
	int r = real_posix_fallocate(fd, off, len);
	if (r == 0)
		fd_op(fd, REC_FALLOCATE, 0, (uint64_t)off, (uint64_t)len, 0);
	return r;
}
EXPORT int posix_fallocate64(int fd, off_t off, off_t len) { INIT(); return posix_fallocate(fd, off, len); }

EXPORT int fsync(int fd)
{
	INIT();
	int r = real_fsync(fd);
	if (r == 0)
		fd_op(fd, REC_FSYNC, 0, 0, 0, 0);
	return r;
}
EXPORT int fdatasync(int fd)
{
	INIT();
	int r = real_fdatasync(fd);
	if (r == 0)
		fd_op(fd, REC_FSYNC, FLAG_DATAONLY, 0, 0, 0);
	return r;
}
EXPORT int sync_file_range(int fd, off_t off, off_t n, unsigned int flags)
{
	INIT();
	int r = real_sync_file_range(fd, off, n, flags);
	if (r == 0)
		fd_op(fd, REC_SYNC_FILE_RANGE, 0, (uint64_t)off, (uint64_t)n, flags);
	return r;
}
static void synced_all(void)
{
	if (!active)
		return;
	int saved = errno;
	pthread_mutex_lock(&lock);
	record r = {.type = REC_SYNC_ALL};
	emit(&r);
	pthread_mutex_unlock(&lock);
	errno = saved;
}
EXPORT void sync(void)
{
	INIT();
	real_sync();
	synced_all();
}
EXPORT int syncfs(int fd)
{
	INIT();
	int r = real_syncfs(fd);
	if (r == 0)
		synced_all();
	return r;
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	INIT();
	void *p = real_mmap(addr, len, prot, flags, fd, off);
	if (p != MAP_FAILED && active && (prot & PROT_WRITE) && (flags & MAP_SHARED) && fd >= 0)
		fd_op(fd, REC_UNSUPPORTED, 0, (uint64_t)off, len, (uint32_t)prot);
	return p;
}
EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	INIT();
	return mmap(addr, len, prot, flags, fd, off);
}

/* ---- Names. ---- */

static void name_op(uint16_t type, const char *rel, const char *rel2)
{
	int saved = errno;
	pthread_mutex_lock(&lock);
	record r = {.type = type, .path = rel, .path2 = rel2};
	emit(&r);
	pthread_mutex_unlock(&lock);
	errno = saved;
}

/* A rename with one side outside the root is recorded as the unlink or
 * creation it is for the root's view. */
static void renamed(int r, bool in1, const char *rel1, bool in2, const char *rel2,
                    int newdir, const char *newpath)
{
	if (r != 0 || (!in1 && !in2))
		return;
	if (in1 && in2) {
		name_op(REC_RENAME, rel1, rel2);
	} else if (in1) {
		name_op(REC_UNLINK, rel1, NULL);
	} else {
		int saved = errno;
		int fd = real_openat(newdir, newpath, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			opened(fd, rel2, O_RDONLY, false);
			pthread_mutex_lock(&lock);
			forget(fd);
			pthread_mutex_unlock(&lock);
			real_close(fd);
		}
		errno = saved;
	}
}

EXPORT int renameat2(int olddir, const char *oldpath, int newdir, const char *newpath,
                     unsigned int flags)
{
	INIT();
	char rel1[PATH_MAX], rel2[PATH_MAX];
	bool in1 = resolve(olddir, oldpath, rel1), in2 = resolve(newdir, newpath, rel2);
	int r = real_renameat2(olddir, oldpath, newdir, newpath, flags);
	if (r == 0 && in1 && in2 && (flags & RENAME_EXCHANGE)) {
		int saved = errno;
		pthread_mutex_lock(&lock);
		record u = {.type = REC_UNSUPPORTED, .path = rel1, .path2 = rel2};
		emit(&u);
		pthread_mutex_unlock(&lock);
		errno = saved;
		return r;
	}
	renamed(r, in1, rel1, in2, rel2, newdir, newpath);
	return r;
}
EXPORT int renameat(int olddir, const char *oldpath, int newdir, const char *newpath)
{
	INIT();
	char rel1[PATH_MAX], rel2[PATH_MAX];
	bool in1 = resolve(olddir, oldpath, rel1), in2 = resolve(newdir, newpath, rel2);
	int r = real_renameat(olddir, oldpath, newdir, newpath);
	renamed(r, in1, rel1, in2, rel2, newdir, newpath);
	return r;
}
EXPORT int rename(const char *oldpath, const char *newpath)
{
	INIT();
	char rel1[PATH_MAX], rel2[PATH_MAX];
	bool in1 = resolve(AT_FDCWD, oldpath, rel1), in2 = resolve(AT_FDCWD, newpath, rel2);
	int r = real_rename(oldpath, newpath);
	renamed(r, in1, rel1, in2, rel2, AT_FDCWD, newpath);
	return r;
}

EXPORT int unlinkat(int dirfd, const char *path, int flags)
{
	INIT();
	char rel[PATH_MAX];
	bool in = resolve(dirfd, path, rel);
	int r = real_unlinkat(dirfd, path, flags);
	if (r == 0 && in)
		name_op(flags & AT_REMOVEDIR ? REC_RMDIR : REC_UNLINK, rel, NULL);
	return r;
}
EXPORT int unlink(const char *path)
{
	INIT();
	char rel[PATH_MAX];
	bool in = resolve(AT_FDCWD, path, rel);
	int r = real_unlink(path);
	if (r == 0 && in)
		name_op(REC_UNLINK, rel, NULL);
	return r;
}
EXPORT int rmdir(const char *path)
{
	INIT();
	char rel[PATH_MAX];
	bool in = resolve(AT_FDCWD, path, rel);
	int r = real_rmdir(path);
	if (r == 0 && in)
		name_op(REC_RMDIR, rel, NULL);
	return r;
}
EXPORT int mkdirat(int dirfd, const char *path, mode_t mode)
{
	INIT();
	char rel[PATH_MAX];
	bool in = resolve(dirfd, path, rel);
	int r = real_mkdirat(dirfd, path, mode);
	if (r == 0 && in)
		name_op(REC_MKDIR, rel, NULL);
	return r;
}
EXPORT int mkdir(const char *path, mode_t mode)
{
	INIT();
	char rel[PATH_MAX];
	bool in = resolve(AT_FDCWD, path, rel);
	int r = real_mkdir(path, mode);
	if (r == 0 && in)
		name_op(REC_MKDIR, rel, NULL);
	return r;
}
