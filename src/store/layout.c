/*
 * layout.c — the data directory's file names (layout.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layout.h"

#define SHARD_PREFIX "shard-"
#define SHARD_SUFFIX ".db"
#define SHARD_DIGITS_MAX 9

static bool fits(int n, size_t out_len)
{
	return n >= 0 && (size_t)n < out_len;
}

bool kobo_layout_shard_path(char *out, size_t out_len, const char *dir,
                            uint32_t shard)
{
	return fits(snprintf(out, out_len, "%s/" SHARD_PREFIX "%u" SHARD_SUFFIX,
	                     dir, shard), out_len);
}

bool kobo_layout_journal_dir(char *out, size_t out_len, const char *dir,
                             uint32_t shard)
{
	return fits(snprintf(out, out_len, "%s/" SHARD_PREFIX "%u.journal", dir, shard),
	            out_len);
}

bool kobo_layout_map_path(char *out, size_t out_len, const char *dir)
{
	return fits(snprintf(out, out_len, "%s/" KOBO_LAYOUT_MAP_FILE, dir), out_len);
}

bool kobo_layout_lock_path(char *out, size_t out_len, const char *dir)
{
	return fits(snprintf(out, out_len, "%s/" KOBO_LAYOUT_LOCK_FILE, dir), out_len);
}

bool kobo_layout_shard_file(const char *name, long *shard)
{
	size_t prefix_len = strlen(SHARD_PREFIX);
	if (strncmp(name, SHARD_PREFIX, prefix_len) != 0)
		return false;
	const char *digits = name + prefix_len;
	size_t n = strspn(digits, "0123456789");
	if (n == 0 || n > SHARD_DIGITS_MAX || strcmp(digits + n, SHARD_SUFFIX) != 0)
		return false;
	if (digits[0] == '0' && n > 1)
		return false;
	*shard = strtol(digits, NULL, 10);
	return true;
}
