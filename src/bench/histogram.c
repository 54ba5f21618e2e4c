/*
 * histogram.c — fixed-memory log-linear latency histogram, in µs.
 *
 * HdrHistogram-style: values below 128 µs each have their own bucket; above
 * that, every power of two [2^m, 2^(m+1)) is cut into 64 equal steps, so a
 * reported percentile is within 1/64 (< 1.6 %) of the true value. Values past
 * 2^41 µs (25 days) are clamped into the last bucket. 2,304 counters, 18 KiB,
 * whatever the run length.
 */
#include <string.h>

#include "bench.h"

#define HALF (BENCH_HIST_SUB_COUNT / 2)
#define VALUE_MAX ((1ull << (BENCH_HIST_MAGNITUDE_MAX + 1)) - 1)

uint32_t bench_hist_index(uint64_t value_us)
{
	if (value_us < BENCH_HIST_SUB_COUNT)
		return (uint32_t)value_us;
	if (value_us > VALUE_MAX)
		value_us = VALUE_MAX;
	uint32_t magnitude = 63u - (uint32_t)__builtin_clzll(value_us); /* >= SUB_BITS */
	uint32_t shift = magnitude - (BENCH_HIST_SUB_BITS - 1);
	uint32_t sub = (uint32_t)(value_us >> shift); /* HALF .. SUB_COUNT-1 */
	return BENCH_HIST_SUB_COUNT + (magnitude - BENCH_HIST_SUB_BITS) * HALF + (sub - HALF);
}

uint64_t bench_hist_bucket_high(uint32_t index)
{
	if (index < BENCH_HIST_SUB_COUNT)
		return index;
	uint32_t rel = index - BENCH_HIST_SUB_COUNT;
	uint32_t magnitude = rel / HALF + BENCH_HIST_SUB_BITS;
	uint64_t sub = rel % HALF + HALF;
	uint32_t shift = magnitude - (BENCH_HIST_SUB_BITS - 1);
	return ((sub + 1) << shift) - 1;
}

void bench_hist_reset(bench_histogram *hist)
{
	memset(hist, 0, sizeof(*hist));
	hist->min_us = UINT64_MAX;
}

void bench_hist_record(bench_histogram *hist, int64_t value_us)
{
	uint64_t value = value_us < 0 ? 0 : (uint64_t)value_us;
	hist->buckets[bench_hist_index(value)]++;
	hist->count++;
	hist->sum_us += value;
	if (value < hist->min_us)
		hist->min_us = value;
	if (value > hist->max_us)
		hist->max_us = value;
}

void bench_hist_merge(bench_histogram *into, const bench_histogram *from)
{
	if (from->count == 0)
		return;
	for (uint32_t i = 0; i < BENCH_HIST_BUCKETS; i++)
		into->buckets[i] += from->buckets[i];
	into->count += from->count;
	into->sum_us += from->sum_us;
	if (from->min_us < into->min_us)
		into->min_us = from->min_us;
	if (from->max_us > into->max_us)
		into->max_us = from->max_us;
}

uint64_t bench_hist_percentile(const bench_histogram *hist, double percentile)
{
	if (hist->count == 0)
		return 0;
	/* The rank of the value asked for, 1-based, rounded up: p100 is the max. */
	double wanted = percentile / 100.0 * (double)hist->count;
	uint64_t rank = (uint64_t)wanted;
	if ((double)rank < wanted)
		rank++;
	if (rank < 1)
		rank = 1;
	if (rank > hist->count)
		rank = hist->count;
	uint64_t seen = 0;
	for (uint32_t i = 0; i < BENCH_HIST_BUCKETS; i++) {
		seen += hist->buckets[i];
		if (seen >= rank) {
			uint64_t high = bench_hist_bucket_high(i);
			return high > hist->max_us ? hist->max_us : high;
		}
	}
	return hist->max_us;
}
