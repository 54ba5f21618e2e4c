/*
 * shard_map.c — where an account lives.
 *
 * An account id hashes (FNV-1a, 64 bit) into one of KOBO_PARTITIONS fixed
 * partitions; partitions map to shards. The hash and the partition count are
 * part of the on-disk format: changing either would silently move accounts,
 * so both are frozen (the hash is core.h's kobo_hash_id) and checked by
 * tests/unit/test_shard.c against known partitions and tests/unit/test_core.c
 * against the published FNV-1a test vectors.
 *
 * Clearing accounts ("kobo:clearing:<a>:<b>:<CUR>", shard a's account for
 * money moving to or from shard b) are the exception: they live on the shard
 * their id names, so each shard's side of a pair is local to it. The map's
 * file format and the rules for opening it are in map_file.c.
 */
#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "shard.h"

_Static_assert((KOBO_PARTITIONS & (KOBO_PARTITIONS - 1)) == 0,
               "partition count is a power of two");
_Static_assert(KOBO_SHARDS_MAX <= KOBO_PARTITIONS,
               "every shard owns at least one partition");

/* kobo_hash_id is plain FNV-1a 64 (core.h), the hash this map was frozen
 * with; the partition is its value mod the partition count. */
uint32_t kobo_partition_of(const char *account_id)
{
	return (uint32_t)(kobo_hash_id(account_id) % KOBO_PARTITIONS);
}

uint32_t kobo_shard_of_partition(uint32_t partition, uint32_t shard_count)
{
	if (shard_count == 0)
		return 0;
	return partition % shard_count;
}

void kobo_shard_map_default(kobo_shard_map *map, uint32_t shard_count)
{
	assert(shard_count >= 1 && shard_count <= KOBO_SHARDS_MAX);
	map->shard_count = shard_count;
	for (uint32_t p = 0; p < KOBO_PARTITIONS; p++)
		map->shard_of[p] = (uint16_t)kobo_shard_of_partition(p, shard_count);
}

uint32_t kobo_shard_map_account(const kobo_shard_map *map, const char *account_id)
{
	uint32_t a, b;
	char currency[KOBO_CURRENCY_LEN_MAX + 1];

	/* A clearing id naming a shard this map does not have is routed like any
	 * other id: the edge refuses "kobo:" ids from clients, so only a bug can
	 * produce one, and hashing keeps routing total instead of indexing out of
	 * range. */
	if (kobo_clearing_parse(account_id, &a, &b, currency, NULL) &&
	    a < map->shard_count)
		return a;
	return map->shard_of[kobo_partition_of(account_id)];
}

/* ---- Clearing accounts. ---- */

#define CLEARING_PREFIX KOBO_SYSTEM_ID_PREFIX "clearing:"

void kobo_clearing_id(char *out, uint32_t a, uint32_t b, const char *currency)
{
	assert(a < KOBO_SHARDS_MAX && b < KOBO_SHARDS_MAX && a != b);
	assert(strlen(currency) <= KOBO_CURRENCY_LEN_MAX);
	int n = snprintf(out, KOBO_ID_LEN_MAX + 1, CLEARING_PREFIX "%u:%u:%s", a, b,
	                 currency);
	assert(n > 0 && n <= KOBO_ID_LEN_MAX);
	(void)n;
}

/* Parses a shard number at *p up to the next ':': decimal digits, no sign,
 * no leading zero unless it is "0", below KOBO_SHARDS_MAX. Advances *p past
 * the ':'. */
static bool parse_shard_number(const char **p, uint32_t *out)
{
	const char *s = *p;
	uint32_t value = 0;
	size_t digits = 0;

	for (; *s >= '0' && *s <= '9'; s++, digits++) {
		if (digits == 3) /* KOBO_SHARDS_MAX has 3 digits; stops overflow */
			return false;
		value = value * 10 + (uint32_t)(*s - '0');
	}
	if (digits == 0 || *s != ':' || (digits > 1 && **p == '0'))
		return false;
	if (value >= KOBO_SHARDS_MAX)
		return false;
	*out = value;
	*p = s + 1;
	return true;
}

/* ^[A-Z][A-Z0-9]{2,7}$, as the edge validates currencies. */
static bool currency_valid(const char *s)
{
	size_t n = 0;

	if (!(s[0] >= 'A' && s[0] <= 'Z'))
		return false;
	for (; s[n]; n++) {
		if (!((s[n] >= 'A' && s[n] <= 'Z') || (s[n] >= '0' && s[n] <= '9')))
			return false;
	}
	return n >= 3 && n <= KOBO_CURRENCY_LEN_MAX;
}

_Static_assert(KOBO_SHARDS_MAX <= 1000, "parse_shard_number reads 3 digits at most");

/* ":" and KOBO_CLEARING_LANE_HEX lowercase hex digits (ledger.h). */
static bool lane_valid(const char *s)
{
	if (s[0] != ':')
		return false;
	size_t n = 0;
	for (s++; s[n]; n++) {
		if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
			return false;
	}
	return n == KOBO_CLEARING_LANE_HEX;
}

bool kobo_clearing_parse(const char *id, uint32_t *a, uint32_t *b, char *currency,
                         char *lane)
{
	const size_t prefix_len = sizeof(CLEARING_PREFIX) - 1;
	uint32_t x, y;
	char code[KOBO_CURRENCY_LEN_MAX + 1];

	if (strncmp(id, CLEARING_PREFIX, prefix_len) != 0)
		return false;
	const char *p = id + prefix_len;
	if (!parse_shard_number(&p, &x) || !parse_shard_number(&p, &y) || x == y)
		return false;
	const char *suffix = strchr(p, ':');
	size_t code_len = suffix ? (size_t)(suffix - p) : strlen(p);
	if (code_len > KOBO_CURRENCY_LEN_MAX)
		return false;
	memcpy(code, p, code_len);
	code[code_len] = '\0';
	if (!currency_valid(code) || (suffix && !lane_valid(suffix)))
		return false;
	*a = x;
	*b = y;
	strcpy(currency, code); /* fits: checked above */
	if (lane)
		strcpy(lane, suffix ? suffix : ""); /* fits: lane_valid */
	return true;
}
