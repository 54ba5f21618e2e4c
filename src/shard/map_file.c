/*
 * map_file.c — the shard map stored with the data: DIR/shard-map.json.
 *
 * The map decides which shard file an account's money is in, so data must
 * never be read through a map other than the one it was written with. The
 * map therefore lives in the data directory, is created once (atomically)
 * and is checked against the shard count kobod was started with and against
 * the shard files that are there. Format (all fields required, no others):
 *
 *   {"version":1,"partitions":4096,"hash":"fnv1a64","shards":N,
 *    "map":[s_0, s_1, …, s_4095]}
 *
 * where s_p is the shard owning partition p: every s_p < N and every shard
 * 0..N-1 owns at least one partition.
 *
 * Opening a directory (kobo_shard_map_open):
 *
 *   map file   shard-<i>.db files      outcome
 *   absent     none                    create the default map for N shards
 *   absent     only shard-0.db         data from before maps existed: a
 *                                      1-shard map when N == 1, else refuse
 *   absent     any other               refuse (the map is lost)
 *   present    any i >= map's shards   refuse (files the map does not explain)
 *   present    map's shards != N       refuse (resharding is not supported)
 *   present    otherwise               use it
 *
 * Missing shard files below the map's count are not refused: kobod creates
 * every shard file right after the map, so a crash between the two leaves
 * exactly that, and the shard starts empty. (`kobo audit` reports a missing
 * file as a problem.)
 *
 * Shards in PostgreSQL (kobo_shard_map_fixed) have no directory to keep a
 * file in. Their map is the default map for the shard count, fixed by rule
 * rather than stored, and the count is what is stored: every shard's meta
 * row records its index and the count (src/store/postgres/store_pg.c), and
 * a URL list of another length or order is refused when the stores open.
 * A map that is not the default (resharding) would need a table in shard
 * 0's database, written once under an advisory lock; nothing writes one
 * yet.
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "../store/layout.h"
#include "shard.h"

#define MAP_FILE KOBO_LAYOUT_MAP_FILE
#define MAP_VERSION 1
#define MAP_HASH "fnv1a64"
/* The written map is ~10 KiB; one re-indented by hand (jq) is ~30 KiB.
 * Bounded so it can be read into a stack buffer. */
#define MAP_FILE_BYTES_MAX (64u << 10)
#define MAP_ENTRIES_PER_LINE 32

static void set_error(char *error, size_t error_len, const char *format, ...)
	__attribute__((format(printf, 3, 4)));

static void set_error(char *error, size_t error_len, const char *format, ...)
{
	if (error == NULL || error_len == 0)
		return;
	va_list args;
	va_start(args, format);
	vsnprintf(error, error_len, format, args);
	va_end(args);
}

/* ---- Parsing. ---- */

/* Fills map from the JSON text, or says why it is not a valid map. */
static int parse_map(const char *text, size_t len, const char *path,
                     kobo_shard_map *map, char *error, size_t error_len)
{
	json_error_t json_error;
	json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &json_error);
	int rc = KOBO_EINVAL;

	if (root == NULL) {
		set_error(error, error_len, "%s is not valid JSON: %s (line %d)", path,
		          json_error.text, json_error.line);
		return KOBO_EINVAL;
	}
	if (!json_is_object(root)) {
		set_error(error, error_len, "%s: expected a JSON object", path);
		goto out;
	}
	static const char *const fields[] = {"version", "partitions", "hash", "shards",
	                                     "map"};
	const char *key;
	json_t *value;
	json_object_foreach(root, key, value) {
		bool known = false;
		for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
			known = known || strcmp(key, fields[i]) == 0;
		if (!known) {
			set_error(error, error_len, "%s: unknown field \"%s\"", path, key);
			goto out;
		}
	}
	json_t *version = json_object_get(root, "version");
	json_t *partitions = json_object_get(root, "partitions");
	json_t *hash = json_object_get(root, "hash");
	json_t *shards = json_object_get(root, "shards");
	json_t *entries = json_object_get(root, "map");
	if (!json_is_integer(version) || json_integer_value(version) != MAP_VERSION) {
		set_error(error, error_len, "%s: \"version\" must be the integer %d", path,
		          MAP_VERSION);
		goto out;
	}
	if (!json_is_integer(partitions) ||
	    json_integer_value(partitions) != KOBO_PARTITIONS) {
		set_error(error, error_len, "%s: \"partitions\" must be the integer %d",
		          path, KOBO_PARTITIONS);
		goto out;
	}
	if (!json_is_string(hash) || strcmp(json_string_value(hash), MAP_HASH) != 0) {
		set_error(error, error_len, "%s: \"hash\" must be \"%s\"", path, MAP_HASH);
		goto out;
	}
	if (!json_is_integer(shards) || json_integer_value(shards) < 1 ||
	    json_integer_value(shards) > KOBO_SHARDS_MAX) {
		set_error(error, error_len, "%s: \"shards\" must be an integer from 1 to %d",
		          path, KOBO_SHARDS_MAX);
		goto out;
	}
	uint32_t shard_count = (uint32_t)json_integer_value(shards);
	if (!json_is_array(entries) || json_array_size(entries) != KOBO_PARTITIONS) {
		set_error(error, error_len, "%s: \"map\" must be an array of %d shard numbers",
		          path, KOBO_PARTITIONS);
		goto out;
	}
	uint32_t owned[KOBO_SHARDS_MAX] = {0};
	for (size_t p = 0; p < KOBO_PARTITIONS; p++) {
		json_t *entry = json_array_get(entries, p);
		if (!json_is_integer(entry) || json_integer_value(entry) < 0 ||
		    json_integer_value(entry) >= (json_int_t)shard_count) {
			set_error(error, error_len,
			          "%s: \"map\"[%zu] must be a shard number from 0 to %u", path, p,
			          shard_count - 1);
			goto out;
		}
		map->shard_of[p] = (uint16_t)json_integer_value(entry);
		owned[map->shard_of[p]]++;
	}
	for (uint32_t s = 0; s < shard_count; s++) {
		if (owned[s] == 0) {
			set_error(error, error_len, "%s: shard %u owns no partition", path, s);
			goto out;
		}
	}
	map->shard_count = shard_count;
	rc = KOBO_OK;
out:
	json_decref(root);
	return rc;
}

/* Reads and parses path. KOBO_ENOTFOUND when it does not exist. The text is
 * read into a stack buffer: opening a map allocates nothing but jansson's
 * tree, so the only results are the documented ones. */
static int load_map(const char *path, kobo_shard_map *map, char *error,
                    size_t error_len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return KOBO_ENOTFOUND;
		set_error(error, error_len, "cannot open %s: %s", path, strerror(errno));
		return KOBO_ESTORE;
	}
	char text[MAP_FILE_BYTES_MAX + 1];
	size_t len = 0;
	for (;;) {
		ssize_t n = read(fd, text + len, sizeof(text) - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			set_error(error, error_len, "cannot read %s: %s", path, strerror(errno));
			close(fd);
			return KOBO_ESTORE;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > MAP_FILE_BYTES_MAX) {
			set_error(error, error_len, "%s is larger than %u bytes: not a shard map",
			          path, MAP_FILE_BYTES_MAX);
			close(fd);
			return KOBO_EINVAL;
		}
	}
	close(fd);
	return parse_map(text, len, path, map, error, error_len);
}

/* ---- Writing. ---- */

static int write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Each entry: up to 3 digits, ',' and a space or newline; plus the fields. */
#define MAP_TEXT_BYTES_MAX (256 + (size_t)KOBO_PARTITIONS * 6)

/* Formats map as the file's text into text[0..MAP_TEXT_BYTES_MAX); returns
 * its length. A few dozen entries per line keep the file readable with
 * ordinary tools. */
static size_t format_map(const kobo_shard_map *map, char *text)
{
	const size_t capacity = MAP_TEXT_BYTES_MAX;
	size_t n = (size_t)snprintf(text, capacity,
	        "{\"version\":%d,\"partitions\":%d,\"hash\":\"%s\",\"shards\":%u,\n"
	        "\"map\":[\n",
	        MAP_VERSION, KOBO_PARTITIONS, MAP_HASH, map->shard_count);
	for (size_t p = 0; p < KOBO_PARTITIONS; p++) {
		const char *separator = p + 1 == KOBO_PARTITIONS ? "\n"
			: (p + 1) % MAP_ENTRIES_PER_LINE == 0 ? ",\n" : ",";
		n += (size_t)snprintf(text + n, capacity - n, "%u%s",
		                      (unsigned)map->shard_of[p], separator);
	}
	n += (size_t)snprintf(text + n, capacity - n, "]}\n");
	assert(n < capacity);
	return n;
}

static int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int rc = fsync(fd);
	int saved = errno;
	close(fd);
	errno = saved;
	return rc;
}

/* Writes map to DIR/shard-map.json atomically: a reader (or a crash) sees
 * either no map or the whole map, never part of one. */
static int create_map(const char *dir, const kobo_shard_map *map, char *error,
                      size_t error_len)
{
	char path[PATH_MAX], tmp_path[PATH_MAX + 8];
	(void)kobo_layout_map_path(path, sizeof(path), dir);
	snprintf(tmp_path, sizeof(tmp_path), "%s.tmp", path);

	char text[MAP_TEXT_BYTES_MAX];
	size_t len = format_map(map, text);
	int fd = open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		set_error(error, error_len, "cannot create %s: %s", tmp_path, strerror(errno));
		return KOBO_ESTORE;
	}
	const char *step = NULL;
	if (write_all(fd, text, len) != 0)
		step = "write";
	else if (fsync(fd) != 0)
		step = "fsync";
	int saved = errno;
	if (close(fd) != 0 && step == NULL) {
		step = "close";
		saved = errno;
	}
	if (step != NULL) {
		set_error(error, error_len, "cannot %s %s: %s", step, tmp_path,
		          strerror(saved));
		unlink(tmp_path);
		return KOBO_ESTORE;
	}
	if (rename(tmp_path, path) != 0) {
		set_error(error, error_len, "cannot rename %s to %s: %s", tmp_path, path,
		          strerror(errno));
		unlink(tmp_path);
		return KOBO_ESTORE;
	}
	if (fsync_dir(dir) != 0) {
		set_error(error, error_len, "cannot fsync directory %s: %s", dir,
		          strerror(errno));
		return KOBO_ESTORE;
	}
	return KOBO_OK;
}

/* ---- The shard files a directory holds. ---- */

typedef struct shard_files {
	size_t count;   /* shard-<i>.db files */
	bool has_zero;  /* shard-0.db among them */
	long index_max; /* highest i, -1 when none */
} shard_files;

static int scan_shard_files(const char *dir, shard_files *out, char *error,
                            size_t error_len)
{
	DIR *d = opendir(dir);
	if (d == NULL) {
		set_error(error, error_len, "cannot open data directory %s: %s", dir,
		          strerror(errno));
		return KOBO_ESTORE;
	}
	*out = (shard_files){.index_max = -1};
	struct dirent *entry;
	errno = 0;
	while ((entry = readdir(d)) != NULL) {
		long index;
		if (!kobo_layout_shard_file(entry->d_name, &index))
			continue;
		out->count++;
		out->has_zero = out->has_zero || index == 0;
		if (index > out->index_max)
			out->index_max = index;
	}
	int saved = errno;
	closedir(d);
	if (saved != 0) {
		set_error(error, error_len, "cannot list data directory %s: %s", dir,
		          strerror(saved));
		return KOBO_ESTORE;
	}
	return KOBO_OK;
}

/* ---- Public. ---- */

int kobo_shard_map_read(const char *dir, kobo_shard_map *map, char *error,
                        size_t error_len)
{
	char path[PATH_MAX];
	if (!kobo_layout_map_path(path, sizeof(path), dir)) {
		set_error(error, error_len, "data directory path is too long: %s", dir);
		return KOBO_EINVAL;
	}
	int rc = load_map(path, map, error, error_len);
	if (rc == KOBO_ENOTFOUND)
		set_error(error, error_len, "%s has no shard map (%s)", dir, MAP_FILE);
	return rc;
}

int kobo_shard_map_open(const char *dir, uint32_t shard_count,
                        kobo_shard_map *map, char *error, size_t error_len)
{
	if (shard_count < 1 || shard_count > KOBO_SHARDS_MAX) {
		set_error(error, error_len, "the shard count must be from 1 to %d, not %u",
		          KOBO_SHARDS_MAX, shard_count);
		return KOBO_EINVAL;
	}
	shard_files files;
	int rc = scan_shard_files(dir, &files, error, error_len);
	if (rc != KOBO_OK)
		return rc;

	kobo_shard_map found;
	rc = kobo_shard_map_read(dir, &found, error, error_len);
	if (rc == KOBO_ENOTFOUND) {
		set_error(error, error_len, "%s", ""); /* not an error here */
		if (files.count == 0) {
			kobo_shard_map_default(&found, shard_count);
		} else if (files.count == 1 && files.has_zero) {
			/* Written by the single-shard version, which had no map:
			 * every account is in shard-0.db. */
			if (shard_count != 1) {
				set_error(error, error_len,
				          "%s holds 1 shard of data without a shard map; start "
				          "with --shards 1", dir);
				return KOBO_EINVAL;
			}
			kobo_shard_map_default(&found, 1);
		} else {
			set_error(error, error_len,
			          "%s holds %zu shard files (up to shard-%ld.db) but no shard "
			          "map (%s); restore the map that was written with them",
			          dir, files.count, files.index_max, MAP_FILE);
			return KOBO_EINVAL;
		}
		rc = create_map(dir, &found, error, error_len);
		if (rc != KOBO_OK)
			return rc;
		*map = found;
		return KOBO_OK;
	}
	if (rc != KOBO_OK)
		return rc;
	if (found.shard_count != shard_count) {
		set_error(error, error_len,
		          "%s was created with --shards %u; this kobod was started with "
		          "--shards %u; resharding is not supported yet — start with "
		          "--shards %u", dir, found.shard_count, shard_count,
		          found.shard_count);
		return KOBO_EINVAL;
	}
	if (files.index_max >= (long)found.shard_count) {
		set_error(error, error_len,
		          "%s holds shard-%ld.db but its shard map has %u shards; that "
		          "file's accounts would be unreachable — move it away only if it "
		          "holds no data", dir, files.index_max, found.shard_count);
		return KOBO_EINVAL;
	}
	*map = found;
	return KOBO_OK;
}

int kobo_shard_map_fixed(uint32_t shard_count, kobo_shard_map *map, char *error,
                         size_t error_len)
{
	if (shard_count < 1 || shard_count > KOBO_SHARDS_MAX) {
		set_error(error, error_len, "the shard count must be from 1 to %d, not %u",
		          KOBO_SHARDS_MAX, shard_count);
		return KOBO_EINVAL;
	}
	kobo_shard_map_default(map, shard_count);
	return KOBO_OK;
}
