/*
 * selftest.c — `kobo-bench --self-test`: checks the parts of the bench that
 * need no server (histogram buckets and percentiles, the batch and error
 * scanners, the transfer model with and without shards) and prints what it
 * expected and saw.
 */
#include <stdio.h>
#include <string.h>

#include "bench.h"

int bench_self_test(bench_config *config)
{
	int failures = 0;
#define CHECK(cond, ...)                                                    \
	do {                                                                    \
		if (!(cond)) {                                                      \
			failures++;                                                     \
			fprintf(stderr, "self-test: %s:%d: ", __FILE__, __LINE__);      \
			fprintf(stderr, __VA_ARGS__);                                   \
			fputc('\n', stderr);                                            \
		}                                                                   \
	} while (0)
	/* Histogram: every value lands in a bucket whose range holds it, within 1/64. */
	for (uint64_t v = 0; v < (1ull << 41); v = v < 1000 ? v + 1 : v + v / 7 + 1) {
		uint32_t i = bench_hist_index(v);
		uint64_t high = bench_hist_bucket_high(i);
		uint64_t low = i == 0 ? 0 : bench_hist_bucket_high(i - 1) + 1;
		CHECK(i < BENCH_HIST_BUCKETS, "index %u out of range for %llu", i, (unsigned long long)v);
		CHECK(low <= v && v <= high, "value %llu outside bucket %u [%llu, %llu]", (unsigned long long)v, i,
		      (unsigned long long)low, (unsigned long long)high);
		CHECK(high - low <= v / 64 + 1, "bucket %u too wide for %llu", i, (unsigned long long)v);
	}
	static bench_histogram hist;
	bench_hist_reset(&hist);
	for (int64_t v = 1; v <= 10000; v++)
		bench_hist_record(&hist, v);
	uint64_t p50 = bench_hist_percentile(&hist, 50), p99 = bench_hist_percentile(&hist, 99);
	CHECK(p50 >= 5000 && p50 <= 5000 + 5000 / 64 + 1, "p50 of 1..10000 is %llu", (unsigned long long)p50);
	CHECK(p99 >= 9900 && p99 <= 9900 + 9900 / 64 + 1, "p99 of 1..10000 is %llu", (unsigned long long)p99);
	CHECK(bench_hist_percentile(&hist, 100) == 10000, "p100 is not the max");

	/* Batch scanner: integer statuses only, codes of 422s. */
	const char *answer =
		"{\"results\":[{\"id\":\"t1\",\"status\":201,\"transfer\":{\"id\":\"t1\",\"status\":\"posted\"}},"
		"{\"id\":\"t2\",\"status\": 422,\"error\":{\"code\":\"insufficient_funds\",\"message\":\"a \\\"status\\\": 5\"}},"
		"{\"id\":\"t3\",\"status\":201,\"transfer\":{\"status\":\"posted\"}}]}";
	uint16_t statuses[4];
	uint8_t rejects[4];
	size_t n = bench_scan_batch(answer, strlen(answer), statuses, rejects, 4);
	CHECK(n == 3, "batch scan found %zu results, expected 3", n);
	if (n == 3) {
		CHECK(statuses[0] == 201 && statuses[1] == 422 && statuses[2] == 201, "batch statuses %u %u %u",
		      statuses[0], statuses[1], statuses[2]);
		CHECK(rejects[1] == BENCH_REJECT_INSUFFICIENT_FUNDS, "reject code %u", rejects[1]);
	}
	const char *single = "{\"error\":{\"code\":\"same_account\",\"message\":\"…\"}}";
	CHECK(bench_reject_in_body(single, strlen(single)) == BENCH_REJECT_SAME_ACCOUNT, "single reject code");
	/* Which 503 proves nothing moved: only kobod's "overloaded". */
	static const struct { const char *body; bool overloaded; } busy[] = {
		{"{\"error\":{\"code\":\"overloaded\",\"message\":\"retry\"}}", true},
		{"{\"error\": {\"code\" : \"overloaded\"}}", true},
		{"{\"error\":{\"code\":\"storage_unavailable\",\"message\":\"overloaded\"}}", false},
		{"{\"error\":{\"code\":\"overloadedx\"}}", false},
		{"{\"error\":{\"code\":\"overloaded", false},
		{"<html><body><h1>503 Service Unavailable</h1></body></html>", false},
		{"", false},
	};
	for (size_t i = 0; i < sizeof busy / sizeof busy[0]; i++)
		CHECK(bench_body_says_overloaded(busy[i].body, strlen(busy[i].body)) == busy[i].overloaded,
		      "503 body %zu: overloaded should be %d", i, busy[i].overloaded);

	/* Transfer model: valid, deterministic, shaped by the workload. */
	config->accounts = 1000;
	config->seed = 42;
	snprintf(config->prefix, sizeof(config->prefix), "p:");
	for (int mode = BENCH_MODE_UNIFORM; mode <= BENCH_MODE_MERCHANT; mode++) {
		config->mode = (bench_mode)mode;
		config->hot = 3;
		for (uint64_t k = 0; k < 100000; k++) {
			bench_transfer t = bench_transfer_make(config, k), again = bench_transfer_make(config, k);
			CHECK(t.from != t.to && t.from < 1000 && t.to < 1000, "mode %d transfer %llu: %u -> %u", mode,
			      (unsigned long long)k, t.from, t.to);
			CHECK(t.amount_minor >= 1 && t.amount_minor <= config->amount_max_minor, "amount %lld",
			      (long long)t.amount_minor);
			CHECK(memcmp(&t, &again, sizeof(t)) == 0, "transfer %llu not deterministic",
			      (unsigned long long)k);
			if (mode == BENCH_MODE_HOT)
				CHECK(t.from < 3 || t.to < 3, "hot transfer %llu touches no hot account",
				      (unsigned long long)k);
			if (mode == BENCH_MODE_MERCHANT)
				CHECK(t.to == 0, "merchant transfer %llu credits %u", (unsigned long long)k, t.to);
			if (failures > 10)
				break;
		}
	}
	bench_buf buf = {0};
	config->mode = BENCH_MODE_UNIFORM;
	bench_transfer_json(&buf, config, 7);
	bench_transfer t7 = bench_transfer_make(config, 7);
	char expect[256];
	snprintf(expect, sizeof(expect),
	         "{\"id\":\"p:t7\",\"from\":\"p:a%u\",\"to\":\"p:a%u\",\"amount\":%lld,\"currency\":\"NGN\"}",
	         t7.from, t7.to, (long long)t7.amount_minor);
	CHECK(strcmp(buf.data, expect) == 0, "transfer json %s, expected %s", buf.data, expect);
	bench_buf_free(&buf);

	/* Shards: the bench places accounts as kobod routes them (known values
	 * of FNV-1a 64 mod 4096, mod 4), and --cross-shard P makes P % of the
	 * transfers cross shards in every workload mode. */
	static const struct { const char *id; uint32_t shard; } placed[] = {
		{"a", 0}, {"b", 1}, {"c", 2}, {"d", 3}, {"cash", 2},
	};
	for (size_t i = 0; i < sizeof(placed) / sizeof(placed[0]); i++)
		CHECK(bench_shard_of_id(placed[i].id, 4) == placed[i].shard, "shard of %s: expected %u, saw %u",
		      placed[i].id, placed[i].shard, bench_shard_of_id(placed[i].id, 4));
	config->shards = 4;
	config->cross_shard_model = true;
	CHECK(bench_shards_init(config) == BENCH_EXIT_OK, "shard tables for 1000 accounts on 4 shards");
	char id[KOBO_ID_LEN_MAX + 1];
	for (uint32_t i = 0; config->account_shard && i < config->accounts; i += 97) {
		bench_account_id(config, i, id);
		CHECK(config->account_shard[i] == bench_shard_of_id(id, 4), "account %u's shard", i);
	}
	static const uint32_t shares[] = {0, 30, 100};
	for (size_t p = 0; config->account_shard && p < sizeof(shares) / sizeof(shares[0]); p++) {
		config->cross_shard_pct = shares[p];
		for (int mode = BENCH_MODE_UNIFORM; mode <= BENCH_MODE_MERCHANT; mode++) {
			config->mode = (bench_mode)mode;
			uint64_t cross = 0, total = 20000;
			for (uint64_t k = 0; k < total; k++) {
				bench_transfer t = bench_transfer_make(config, k), again = bench_transfer_make(config, k);
				CHECK(t.from != t.to && t.from < 1000 && t.to < 1000, "cross %u%% mode %d transfer %llu: "
				      "%u -> %u", shares[p], mode, (unsigned long long)k, t.from, t.to);
				CHECK(memcmp(&t, &again, sizeof(t)) == 0, "transfer %llu not deterministic",
				      (unsigned long long)k);
				if (mode == BENCH_MODE_HOT)
					CHECK(t.from < 3 || t.to < 3, "hot transfer %llu touches no hot account",
					      (unsigned long long)k);
				if (mode == BENCH_MODE_MERCHANT)
					CHECK(t.to == 0, "merchant transfer %llu credits %u", (unsigned long long)k, t.to);
				cross += bench_transfer_is_cross(config, t);
				if (failures > 10)
					break;
			}
			uint64_t want = total * shares[p] / 100, slack = total / 50;
			CHECK(cross + slack >= want && cross <= want + slack, "--cross-shard %u mode %d: %llu of %llu "
			      "transfers cross shards, expected about %llu", shares[p], mode, (unsigned long long)cross,
			      (unsigned long long)total, (unsigned long long)want);
		}
	}
	bench_shards_free(config);
	config->shards = 1;
	config->cross_shard_model = false;
#undef CHECK
	fprintf(stderr, "self-test: %s\n", failures ? "FAILED" : "ok");
	return failures ? BENCH_EXIT_VIOLATION : BENCH_EXIT_OK;
}

