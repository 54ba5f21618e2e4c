/*
 * test_shard_map.c — where accounts live: the default map keeps the
 * single-shard routing, the partition hash stays the frozen FNV-1a 64,
 * clearing ids are built and parsed strictly and route to the shard they
 * name, and DIR/shard-map.json is created once, reopened, and refused when
 * it does not match the shard count, the shard files, or its own format.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../src/shard/shard.h"

/* ---- A scratch data directory per test. ---- */

typedef struct fixture {
	char dir[64];
	char error[512];
	kobo_shard_map map;
} fixture;

static int setup(void **state)
{
	fixture *f = calloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/kobo-test-shard-map-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fixture *f = *state;
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

static void path_in(const fixture *f, const char *name, char *out, size_t len)
{
	snprintf(out, len, "%s/%s", f->dir, name);
}

static void touch(const fixture *f, const char *name)
{
	char path[128];
	path_in(f, name, path, sizeof(path));
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	close(fd);
}

static bool exists(const fixture *f, const char *name)
{
	char path[128];
	struct stat st;
	path_in(f, name, path, sizeof(path));
	return stat(path, &st) == 0;
}

static void write_text(const fixture *f, const char *name, const char *text)
{
	char path[128];
	path_in(f, name, path, sizeof(path));
	FILE *file = fopen(path, "w");
	assert_non_null(file);
	assert_int_equal(fputs(text, file) >= 0, 1);
	assert_int_equal(fclose(file), 0);
}

/* Asserts that the error names what it should, printing both when not. */
static void assert_error_contains(const char *error, const char *expected)
{
	if (strstr(error, expected) == NULL)
		fail_msg("expected the error to contain \"%s\", saw \"%s\"", expected, error);
}

static void assert_default_map(const kobo_shard_map *map, uint32_t shard_count)
{
	assert_int_equal(map->shard_count, shard_count);
	for (uint32_t p = 0; p < KOBO_PARTITIONS; p++) {
		if (map->shard_of[p] != p % shard_count)
			fail_msg("partition %u: expected shard %u, saw %u", p, p % shard_count,
			         map->shard_of[p]);
	}
}

/* ---- The default map and routing. ---- */

static void default_map_is_partition_modulo_shards(void **state)
{
	(void)state;
	static kobo_shard_map map;
	const uint32_t counts[] = {1, 2, 3, 4, 7, KOBO_SHARDS_MAX};
	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
		kobo_shard_map_default(&map, counts[i]);
		assert_default_map(&map, counts[i]);
		for (uint32_t p = 0; p < KOBO_PARTITIONS; p++)
			assert_int_equal(map.shard_of[p], kobo_shard_of_partition(p, counts[i]));
	}
	/* Data written by the single-shard version stays where it is. */
	kobo_shard_map_default(&map, 1);
	assert_int_equal(kobo_shard_map_account(&map, "wallet:42"), 0);
	assert_int_equal(kobo_shard_map_account(&map, "cash:NGN"), 0);
	/* Known partitions (test_shard.c freezes the hash) land by modulo. */
	kobo_shard_map_default(&map, 4);
	assert_int_equal(kobo_shard_map_account(&map, "wallet:42"), 3376 % 4);
	assert_int_equal(kobo_shard_map_account(&map, "wallet:77"), 392 % 4);
	assert_int_equal(kobo_shard_map_account(&map, "cash:NGN"), 2051 % 4);
	kobo_shard_map_default(&map, 3);
	assert_int_equal(kobo_shard_map_account(&map, "a"), 3212 % 3);
}

/* The partition hash as it was frozen, written out here as an independent
 * oracle: FNV-1a 64 from its published basis and prime, mod the partition
 * count. kobo_partition_of now reaches it through core.h's kobo_hash_id;
 * any change there that moves one account fails here. */
static uint32_t frozen_partition_of(const char *id)
{
	uint64_t hash = 0xcbf29ce484222325ull;
	for (const unsigned char *p = (const unsigned char *)id; *p; p++) {
		hash ^= *p;
		hash *= 0x100000001b3ull;
	}
	return (uint32_t)(hash % 4096);
}

static void partition_hash_matches_the_frozen_fnv1a64(void **state)
{
	(void)state;
	assert_int_equal(KOBO_PARTITIONS, 4096);
	assert_int_equal(kobo_partition_of("wallet:42"), 3376);
	assert_int_equal(kobo_partition_of("wallet:77"), 392);
	assert_int_equal(kobo_partition_of("a"), 3212);
	assert_int_equal(kobo_partition_of("cash:NGN"), 2051);
	char id[KOBO_ID_LEN_MAX + 1];
	for (uint32_t i = 0; i < 20000; i++) {
		/* Short and long ids, and bytes above 0x7f. */
		int n = snprintf(id, sizeof(id), "acct:%u:\xc3\xa9:%0*u", i,
		                 (int)(i % 40), i);
		assert_true(n > 0 && n <= KOBO_ID_LEN_MAX);
		uint32_t expected = frozen_partition_of(id);
		if (kobo_partition_of(id) != expected)
			fail_msg("partition of %s: expected %u, saw %u", id, expected,
			         kobo_partition_of(id));
	}
	assert_int_equal(kobo_partition_of(""), frozen_partition_of(""));
}

static void account_routing_follows_the_map(void **state)
{
	(void)state;
	static kobo_shard_map map;
	kobo_shard_map_default(&map, 4);
	/* A map that moved partition 3376 (wallet:42's) to shard 2. */
	map.shard_of[3376] = 2;
	assert_int_equal(kobo_shard_map_account(&map, "wallet:42"), 2);
	assert_int_equal(kobo_shard_map_account(&map, "wallet:77"), 392 % 4);
}

static void clearing_accounts_live_on_the_shard_they_name(void **state)
{
	(void)state;
	static kobo_shard_map map;
	char id[KOBO_ID_LEN_MAX + 1];
	kobo_shard_map_default(&map, 4);
	for (uint32_t a = 0; a < 4; a++) {
		for (uint32_t b = 0; b < 4; b++) {
			if (a == b)
				continue;
			kobo_clearing_id(id, a, b, "NGN");
			assert_int_equal(kobo_shard_map_account(&map, id), a);
			kobo_clearing_id(id, a, b, "USDC2");
			assert_int_equal(kobo_shard_map_account(&map, id), a);
		}
	}
	/* Even when the map sends their partition elsewhere. */
	kobo_clearing_id(id, 1, 3, "NGN");
	for (uint32_t p = 0; p < KOBO_PARTITIONS; p++)
		map.shard_of[p] = 0;
	assert_int_equal(kobo_shard_map_account(&map, id), 1);
	/* A clearing id naming a shard the map lacks is hashed like any id. */
	kobo_shard_map_default(&map, 2);
	assert_int_equal(kobo_shard_map_account(&map, "kobo:clearing:5:0:NGN"),
	                 kobo_partition_of("kobo:clearing:5:0:NGN") % 2);
	/* Malformed clearing ids are ordinary ids. */
	assert_int_equal(kobo_shard_map_account(&map, "kobo:clearing:01:0:NGN"),
	                 kobo_partition_of("kobo:clearing:01:0:NGN") % 2);
}

/* ---- Clearing ids. ---- */

static void clearing_id_builds_and_parses_back(void **state)
{
	(void)state;
	char id[KOBO_ID_LEN_MAX + 1];
	char currency[KOBO_CURRENCY_LEN_MAX + 1];
	uint32_t a, b;

	kobo_clearing_id(id, 0, 1, "NGN");
	assert_string_equal(id, "kobo:clearing:0:1:NGN");
	assert_true(kobo_clearing_parse(id, &a, &b, currency, NULL));
	assert_int_equal(a, 0);
	assert_int_equal(b, 1);
	assert_string_equal(currency, "NGN");

	kobo_clearing_id(id, KOBO_SHARDS_MAX - 1, 10, "ABCDEFGH");
	assert_string_equal(id, "kobo:clearing:255:10:ABCDEFGH");
	assert_true(strncmp(id, KOBO_SYSTEM_ID_PREFIX, strlen(KOBO_SYSTEM_ID_PREFIX)) == 0);
	assert_true(kobo_clearing_parse(id, &a, &b, currency, NULL));
	assert_int_equal(a, 255);
	assert_int_equal(b, 10);
	assert_string_equal(currency, "ABCDEFGH");

	assert_true(kobo_clearing_parse("kobo:clearing:10:0:U5D", &a, &b, currency, NULL));
	assert_int_equal(a, 10);
	assert_int_equal(b, 0);
	assert_string_equal(currency, "U5D");
}

static void clearing_parse_refuses_malformed_ids(void **state)
{
	(void)state;
	static const char *const malformed[] = {
		"",
		"wallet:42",
		"kobo:",
		"kobo:clearing:",
		"kobo:clearing:1:2",
		"kobo:clearing:1:2:",
		"kobo:clearing::2:NGN",
		"kobo:clearing:1::NGN",
		"kobo:clearing:1:1:NGN",       /* a shard has no clearing account for itself */
		"kobo:clearing:01:2:NGN",      /* leading zero */
		"kobo:clearing:1:00:NGN",
		"kobo:clearing:+1:2:NGN",      /* sign */
		"kobo:clearing:-1:2:NGN",
		"kobo:clearing: 1:2:NGN",
		"kobo:clearing:1 :2:NGN",
		"kobo:clearing:0x1:2:NGN",
		"kobo:clearing:256:1:NGN",     /* >= KOBO_SHARDS_MAX */
		"kobo:clearing:1:256:NGN",
		"kobo:clearing:1000:1:NGN",
		"kobo:clearing:4294967297:1:NGN", /* wraps to 1 in 32 bits */
		"kobo:clearing:1:2:ngn",       /* currency syntax */
		"kobo:clearing:1:2:NG",
		"kobo:clearing:1:2:ABCDEFGHI",
		"kobo:clearing:1:2:1NG",
		"kobo:clearing:1:2:NG-N",
		"kobo:clearing:1:2:NGN:",      /* trailing */
		"kobo:clearing:1:2:NGN ",
		"kobo:clearing:1:2:NGN:X",
		"kobo:clearing:1:2:3:NGN",
		" kobo:clearing:1:2:NGN",
		"kobo:Clearing:1:2:NGN",
		"KOBO:clearing:1:2:NGN",
		"kobo:clearings:1:2:NGN",
	};
	for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
		uint32_t a = 777, b = 777;
		char currency[KOBO_CURRENCY_LEN_MAX + 1] = "same";
		if (kobo_clearing_parse(malformed[i], &a, &b, currency, NULL))
			fail_msg("\"%s\" parsed as a clearing id (%u, %u, %s)", malformed[i], a,
			         b, currency);
		/* Nothing is written on refusal. */
		assert_int_equal(a, 777);
		assert_int_equal(b, 777);
		assert_string_equal(currency, "same");
	}
}

/* ---- DIR/shard-map.json. ---- */

static void open_creates_the_map_and_reopens_it(void **state)
{
	fixture *f = *state;
	assert_int_equal(kobo_shard_map_read(f->dir, &f->map, f->error, sizeof(f->error)),
	                 KOBO_ENOTFOUND);

	assert_int_equal(kobo_shard_map_open(f->dir, 4, &f->map, f->error, sizeof(f->error)),
	                 KOBO_OK);
	assert_default_map(&f->map, 4);
	assert_true(exists(f, "shard-map.json"));
	assert_false(exists(f, "shard-map.json.tmp"));

	/* The shard files kobod then creates are explained by the map. */
	touch(f, "shard-0.db");
	touch(f, "shard-1.db");
	touch(f, "shard-2.db");
	touch(f, "shard-3.db");
	memset(&f->map, 0xff, sizeof(f->map));
	assert_int_equal(kobo_shard_map_open(f->dir, 4, &f->map, f->error, sizeof(f->error)),
	                 KOBO_OK);
	assert_default_map(&f->map, 4);

	memset(&f->map, 0xff, sizeof(f->map));
	assert_int_equal(kobo_shard_map_read(f->dir, &f->map, f->error, sizeof(f->error)),
	                 KOBO_OK);
	assert_default_map(&f->map, 4);
}

static void open_refuses_a_different_shard_count(void **state)
{
	fixture *f = *state;
	assert_int_equal(kobo_shard_map_open(f->dir, 4, &f->map, f->error, sizeof(f->error)),
	                 KOBO_OK);
	assert_int_equal(kobo_shard_map_open(f->dir, 2, &f->map, f->error, sizeof(f->error)),
	                 KOBO_EINVAL);
	char expected[256];
	snprintf(expected, sizeof(expected),
	         "%s was created with --shards 4; this kobod was started with --shards 2; "
	         "resharding is not supported yet — start with --shards 4", f->dir);
	assert_string_equal(f->error, expected);
	/* The map is left as it was. */
	assert_int_equal(kobo_shard_map_read(f->dir, &f->map, f->error, sizeof(f->error)),
	                 KOBO_OK);
	assert_default_map(&f->map, 4);
}

static void open_adopts_a_single_shard_directory_without_a_map(void **state)
{
	fixture *f = *state;
	touch(f, "shard-0.db");
	touch(f, "shard-0.db-wal");
	touch(f, "kobod.lock");

	assert_int_equal(kobo_shard_map_open(f->dir, 2, &f->map, f->error, sizeof(f->error)),
	                 KOBO_EINVAL);
	char expected[256];
	snprintf(expected, sizeof(expected),
	         "%s holds 1 shard of data without a shard map; start with --shards 1",
	         f->dir);
	assert_string_equal(f->error, expected);
	assert_false(exists(f, "shard-map.json"));

	assert_int_equal(kobo_shard_map_open(f->dir, 1, &f->map, f->error, sizeof(f->error)),
	                 KOBO_OK);
	assert_default_map(&f->map, 1);
	assert_true(exists(f, "shard-map.json"));

	/* From now on the map speaks for the directory. */
	assert_int_equal(kobo_shard_map_open(f->dir, 2, &f->map, f->error, sizeof(f->error)),
	                 KOBO_EINVAL);
	assert_error_contains(f->error, "was created with --shards 1");
}

static void open_refuses_shard_files_the_map_does_not_explain(void **state)
{
	fixture *f = *state;
	assert_int_equal(kobo_shard_map_open(f->dir, 2, &f->map, f->error, sizeof(f->error)),
	                 KOBO_OK);
	touch(f, "shard-0.db");
	touch(f, "shard-1.db");
	touch(f, "shard-2.db");
	assert_int_equal(kobo_shard_map_open(f->dir, 2, &f->map, f->error, sizeof(f->error)),
	                 KOBO_EINVAL);
	assert_error_contains(f->error, "shard-2.db");
	assert_error_contains(f->error, "2 shards");

	/* Names that are not shard files do not count. */
	char path[128];
	path_in(f, "shard-2.db", path, sizeof(path));
	assert_int_equal(unlink(path), 0);
	touch(f, "shard-02.db");
	touch(f, "shard-5.db.bak");
	touch(f, "shard-9.db-wal");
	assert_int_equal(kobo_shard_map_open(f->dir, 2, &f->map, f->error, sizeof(f->error)),
	                 KOBO_OK);
}

static void open_refuses_shard_files_without_a_map(void **state)
{
	fixture *f = *state;
	/* Only shard-0.db is the single-shard layout; anything else without
	 * a map means the map was lost. */
	touch(f, "shard-0.db");
	touch(f, "shard-1.db");
	assert_int_equal(kobo_shard_map_open(f->dir, 2, &f->map, f->error, sizeof(f->error)),
	                 KOBO_EINVAL);
	assert_error_contains(f->error, "no shard map");
	assert_int_equal(kobo_shard_map_open(f->dir, 1, &f->map, f->error, sizeof(f->error)),
	                 KOBO_EINVAL);
	assert_false(exists(f, "shard-map.json"));
}

static void open_refuses_bad_arguments_and_missing_directories(void **state)
{
	fixture *f = *state;
	assert_int_equal(kobo_shard_map_open(f->dir, 0, &f->map, f->error, sizeof(f->error)),
	                 KOBO_EINVAL);
	assert_int_equal(kobo_shard_map_open(f->dir, KOBO_SHARDS_MAX + 1, &f->map, f->error,
	                                     sizeof(f->error)),
	                 KOBO_EINVAL);
	assert_false(exists(f, "shard-map.json"));

	char missing[128];
	path_in(f, "no-such-dir", missing, sizeof(missing));
	assert_int_equal(kobo_shard_map_open(missing, 1, &f->map, f->error, sizeof(f->error)),
	                 KOBO_ESTORE);
	assert_error_contains(f->error, "no-such-dir");

	/* A tiny or absent error buffer is never overrun. */
	char tiny[8];
	memset(tiny, 'x', sizeof(tiny));
	assert_int_equal(kobo_shard_map_open(missing, 1, &f->map, tiny, sizeof(tiny)),
	                 KOBO_ESTORE);
	assert_int_equal(tiny[7], '\0');
	assert_int_equal(kobo_shard_map_open(missing, 1, &f->map, NULL, 0), KOBO_ESTORE);
}

/* Writes a map text: the given header fields, then `entries` shard numbers
 * from entry(p), then `tail` before the closing brace. */
static void write_map(const fixture *f, const char *head, size_t entries,
                      unsigned (*entry)(size_t p), const char *tail)
{
	static char text[65536];
	size_t n = (size_t)snprintf(text, sizeof(text), "{%s\"map\":[", head);
	for (size_t p = 0; p < entries; p++)
		n += (size_t)snprintf(text + n, sizeof(text) - n, "%s%u", p ? "," : "", entry(p));
	snprintf(text + n, sizeof(text) - n, "]%s}", tail);
	write_text(f, "shard-map.json", text);
}

static unsigned modulo_2(size_t p) { return (unsigned)(p % 2); }
static unsigned all_zero(size_t p) { (void)p; return 0; }
static unsigned upper_half_on_1(size_t p) { return p >= KOBO_PARTITIONS / 2; }
static unsigned one_too_high(size_t p) { return p == 17 ? 2 : (unsigned)(p % 2); }

#define HEAD_2 "\"version\":1,\"partitions\":4096,\"hash\":\"fnv1a64\",\"shards\":2,"

static void read_accepts_a_valid_map_that_is_not_the_default(void **state)
{
	fixture *f = *state;
	write_map(f, HEAD_2, KOBO_PARTITIONS, upper_half_on_1, "");
	assert_int_equal(kobo_shard_map_read(f->dir, &f->map, f->error, sizeof(f->error)),
	                 KOBO_OK);
	assert_int_equal(f->map.shard_count, 2);
	assert_int_equal(f->map.shard_of[0], 0);
	assert_int_equal(f->map.shard_of[KOBO_PARTITIONS / 2 - 1], 0);
	assert_int_equal(f->map.shard_of[KOBO_PARTITIONS / 2], 1);
	assert_int_equal(f->map.shard_of[KOBO_PARTITIONS - 1], 1);
	assert_int_equal(kobo_shard_map_open(f->dir, 2, &f->map, f->error, sizeof(f->error)),
	                 KOBO_OK);
	assert_int_equal(f->map.shard_of[KOBO_PARTITIONS - 1], 1);

	/* White space and field order are free. */
	write_map(f, " \"shards\" : 2 ,\n\"hash\":\"fnv1a64\",\t\"partitions\":4096,"
	          "\"version\":1,\n", KOBO_PARTITIONS, modulo_2, "\n");
	assert_int_equal(kobo_shard_map_read(f->dir, &f->map, f->error, sizeof(f->error)),
	                 KOBO_OK);
	assert_default_map(&f->map, 2);
}

static void read_refuses_malformed_maps(void **state)
{
	fixture *f = *state;
	static const struct {
		const char *what;
		const char *text; /* NULL: use the write_map fields below */
		const char *head;
		size_t entries;
		unsigned (*entry)(size_t p);
		const char *tail;
		const char *expected; /* in the error */
	} cases[] = {
		{"empty file", "", NULL, 0, NULL, NULL, "not valid JSON"},
		{"truncated", "{\"version\":1,", NULL, 0, NULL, NULL, "not valid JSON"},
		{"an array", "[1,2]", NULL, 0, NULL, NULL, "expected a JSON object"},
		{"trailing text", NULL, HEAD_2, KOBO_PARTITIONS, modulo_2, "} x", "not valid JSON"},
		{"duplicate field", NULL, HEAD_2 "\"shards\":2,", KOBO_PARTITIONS, modulo_2, "",
		 "not valid JSON"},
		{"unknown field", NULL, HEAD_2, KOBO_PARTITIONS, modulo_2, ",\"note\":\"x\"",
		 "unknown field \"note\""},
		{"no version", NULL, "\"partitions\":4096,\"hash\":\"fnv1a64\",\"shards\":2,",
		 KOBO_PARTITIONS, modulo_2, "", "\"version\""},
		{"version 2", NULL,
		 "\"version\":2,\"partitions\":4096,\"hash\":\"fnv1a64\",\"shards\":2,",
		 KOBO_PARTITIONS, modulo_2, "", "\"version\""},
		{"version as a string", NULL,
		 "\"version\":\"1\",\"partitions\":4096,\"hash\":\"fnv1a64\",\"shards\":2,",
		 KOBO_PARTITIONS, modulo_2, "", "\"version\""},
		{"other partition count", NULL,
		 "\"version\":1,\"partitions\":4095,\"hash\":\"fnv1a64\",\"shards\":2,",
		 4095, modulo_2, "", "\"partitions\""},
		{"other hash", NULL,
		 "\"version\":1,\"partitions\":4096,\"hash\":\"crc32\",\"shards\":2,",
		 KOBO_PARTITIONS, modulo_2, "", "\"hash\""},
		{"no shards", NULL, "\"version\":1,\"partitions\":4096,\"hash\":\"fnv1a64\",",
		 KOBO_PARTITIONS, all_zero, "", "\"shards\""},
		{"0 shards", NULL,
		 "\"version\":1,\"partitions\":4096,\"hash\":\"fnv1a64\",\"shards\":0,",
		 KOBO_PARTITIONS, all_zero, "", "\"shards\""},
		{"too many shards", NULL,
		 "\"version\":1,\"partitions\":4096,\"hash\":\"fnv1a64\",\"shards\":257,",
		 KOBO_PARTITIONS, all_zero, "", "\"shards\""},
		{"shards as a real", NULL,
		 "\"version\":1,\"partitions\":4096,\"hash\":\"fnv1a64\",\"shards\":2.0,",
		 KOBO_PARTITIONS, modulo_2, "", "\"shards\""},
		{"short map", NULL, HEAD_2, KOBO_PARTITIONS - 1, modulo_2, "", "\"map\""},
		{"long map", NULL, HEAD_2, KOBO_PARTITIONS + 1, modulo_2, "", "\"map\""},
		{"entry out of range", NULL, HEAD_2, KOBO_PARTITIONS, one_too_high, "",
		 "\"map\"[17]"},
		{"a shard owning nothing", NULL, HEAD_2, KOBO_PARTITIONS, all_zero, "",
		 "shard 1 owns no partition"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (cases[i].text != NULL)
			write_text(f, "shard-map.json", cases[i].text);
		else
			write_map(f, cases[i].head, cases[i].entries, cases[i].entry, cases[i].tail);
		f->error[0] = '\0';
		int rc = kobo_shard_map_read(f->dir, &f->map, f->error, sizeof(f->error));
		if (rc != KOBO_EINVAL)
			fail_msg("%s: expected KOBO_EINVAL, saw %d (%s)", cases[i].what, rc, f->error);
		if (strstr(f->error, cases[i].expected) == NULL)
			fail_msg("%s: expected the error to contain \"%s\", saw \"%s\"",
			         cases[i].what, cases[i].expected, f->error);
		/* open refuses it the same way and leaves it alone. */
		rc = kobo_shard_map_open(f->dir, 2, &f->map, f->error, sizeof(f->error));
		if (rc != KOBO_EINVAL)
			fail_msg("%s: open: expected KOBO_EINVAL, saw %d", cases[i].what, rc);
	}

	/* Special values in entries. */
	static const char *const bad_entries[] = {"-1", "1.0", "true", "null", "\"1\""};
	for (size_t i = 0; i < sizeof(bad_entries) / sizeof(bad_entries[0]); i++) {
		static char text[65536];
		size_t n = (size_t)snprintf(text, sizeof(text), "{" HEAD_2 "\"map\":[%s",
		                            bad_entries[i]);
		for (size_t p = 1; p < KOBO_PARTITIONS; p++)
			n += (size_t)snprintf(text + n, sizeof(text) - n, ",%zu", p % 2);
		snprintf(text + n, sizeof(text) - n, "]}");
		write_text(f, "shard-map.json", text);
		int rc = kobo_shard_map_read(f->dir, &f->map, f->error, sizeof(f->error));
		if (rc != KOBO_EINVAL)
			fail_msg("entry %s: expected KOBO_EINVAL, saw %d", bad_entries[i], rc);
		assert_error_contains(f->error, "\"map\"[0]");
	}
}

static void read_refuses_an_oversized_file(void **state)
{
	fixture *f = *state;
	static char text[200000];
	memset(text, ' ', sizeof(text) - 1);
	text[0] = '{';
	text[sizeof(text) - 2] = '}';
	write_text(f, "shard-map.json", text);
	assert_int_equal(kobo_shard_map_read(f->dir, &f->map, f->error, sizeof(f->error)),
	                 KOBO_EINVAL);
	assert_error_contains(f->error, "larger than");
}

static void written_map_is_what_read_accepts(void **state)
{
	fixture *f = *state;
	for (uint32_t n = 1; n <= KOBO_SHARDS_MAX; n = n * 2 + 1) {
		char path[128];
		path_in(f, "shard-map.json", path, sizeof(path));
		unlink(path);
		assert_int_equal(kobo_shard_map_open(f->dir, n, &f->map, f->error,
		                                     sizeof(f->error)),
		                 KOBO_OK);
		memset(&f->map, 0, sizeof(f->map));
		assert_int_equal(kobo_shard_map_read(f->dir, &f->map, f->error,
		                                     sizeof(f->error)),
		                 KOBO_OK);
		assert_default_map(&f->map, n);
	}
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(default_map_is_partition_modulo_shards),
		cmocka_unit_test(partition_hash_matches_the_frozen_fnv1a64),
		cmocka_unit_test(account_routing_follows_the_map),
		cmocka_unit_test(clearing_accounts_live_on_the_shard_they_name),
		cmocka_unit_test(clearing_id_builds_and_parses_back),
		cmocka_unit_test(clearing_parse_refuses_malformed_ids),
		T(open_creates_the_map_and_reopens_it),
		T(open_refuses_a_different_shard_count),
		T(open_adopts_a_single_shard_directory_without_a_map),
		T(open_refuses_shard_files_the_map_does_not_explain),
		T(open_refuses_shard_files_without_a_map),
		T(open_refuses_bad_arguments_and_missing_directories),
		T(read_accepts_a_valid_map_that_is_not_the_default),
		T(read_refuses_malformed_maps),
		T(read_refuses_an_oversized_file),
		T(written_map_is_what_read_accepts),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
