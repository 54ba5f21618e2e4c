/*
 * summary.c — the final summary of a run: human text, or with --json one
 * JSON object on stdout for scripts (scripts/bench.sh reads it).
 */
#include <stdio.h>
#include <string.h>

#include "bench.h"

static const char *mode_name(const bench_config *config)
{
	switch (config->mode) {
	case BENCH_MODE_HOT: return "hot";
	case BENCH_MODE_MERCHANT: return "merchant";
	default: return "uniform";
	}
}

void bench_print_summary(const bench_run *run, const bench_verify_report *verify)
{
	const bench_config *config = run->config;
	static bench_histogram latency;
	static bench_histogram latency_class[BENCH_CLASS_COUNT];
	static bench_counts counts;
	static const char *const class_names[BENCH_CLASS_COUNT] = {"local", "cross"};
	bench_hist_reset(&latency);
	for (int c = 0; c < BENCH_CLASS_COUNT; c++)
		bench_hist_reset(&latency_class[c]);
	memset(&counts, 0, sizeof(counts));
	uint64_t missed = 0;
	for (uint32_t w = 0; w < run->worker_count; w++) {
		const bench_worker *worker = &run->workers[w];
		bench_hist_merge(&latency, &worker->latency);
		for (int c = 0; c < BENCH_CLASS_COUNT; c++)
			bench_hist_merge(&latency_class[c], &worker->latency_class[c]);
		counts.requests += worker->counts.requests;
		counts.transfers_accepted += worker->counts.transfers_accepted;
		counts.transfers_cross += worker->counts.transfers_cross;
		counts.transfers_acked += worker->counts.transfers_acked;
		counts.transfers_unknown += worker->counts.transfers_unknown;
		counts.transfers_refused += worker->counts.transfers_refused;
		counts.errors_http += worker->counts.errors_http;
		counts.errors_transport += worker->counts.errors_transport;
		for (int i = 0; i < BENCH_REJECT_COUNT; i++)
			counts.rejected[i] += worker->counts.rejected[i];
		for (int i = 0; i < 600; i++)
			counts.status[i] += worker->counts.status[i];
		missed += worker->job_failed;
	}
	double elapsed_s = (double)(run->workload_end_us - run->workload_start_us) / 1e6;
	if (elapsed_s <= 0)
		elapsed_s = config->duration_s;
	uint64_t rejected = 0;
	for (int i = 0; i < BENCH_REJECT_COUNT; i++)
		rejected += counts.rejected[i];
	double tps = (double)counts.transfers_acked / elapsed_s;
	double rps = (double)counts.requests / elapsed_s;
	const double percentiles[] = {50, 90, 99, 99.9};
	uint64_t p[4];
	for (int i = 0; i < 4; i++)
		p[i] = bench_hist_percentile(&latency, percentiles[i]);
	double mean_us = latency.count ? (double)latency.sum_us / (double)latency.count : 0;

	if (config->json) {
		printf("{\"mode\":\"%s\",\"accounts\":%u,\"hot\":%u,\"batch\":%u,\"connections\":%u,"
		       "\"threads\":%u,\"rate\":%llu,\"duration_s\":%.3f,\"seed\":%llu,\"prefix\":\"%s\","
		       "\"setup_s\":%.3f,\"elapsed_s\":%.3f,\"requests\":%llu,\"requests_per_s\":%.1f,"
		       "\"transfers_acked\":%llu,\"transfers_per_s\":%.1f,\"rejected\":{",
		       mode_name(config), config->accounts, config->hot, config->batch, config->connections,
		       config->threads, (unsigned long long)config->rate_per_s, config->duration_s,
		       (unsigned long long)config->seed, config->prefix, run->setup_s, elapsed_s,
		       (unsigned long long)counts.requests, rps, (unsigned long long)counts.transfers_acked,
		       tps);
		bool first = true;
		for (int i = 0; i < BENCH_REJECT_COUNT; i++) {
			if (!counts.rejected[i])
				continue;
			printf("%s\"%s\":%llu", first ? "" : ",", bench_reject_names[i],
			       (unsigned long long)counts.rejected[i]);
			first = false;
		}
		printf("},\"errors\":{\"http\":%llu,\"transport\":%llu},\"unknown_outcome\":%llu,"
		       "\"refused\":%llu,\"open_loop_missed\":%llu,\"status\":{",
		       (unsigned long long)counts.errors_http, (unsigned long long)counts.errors_transport,
		       (unsigned long long)counts.transfers_unknown, (unsigned long long)counts.transfers_refused,
		       (unsigned long long)missed);
		first = true;
		for (int i = 0; i < 600; i++) {
			if (!counts.status[i])
				continue;
			printf("%s\"%d\":%llu", first ? "" : ",", i, (unsigned long long)counts.status[i]);
			first = false;
		}
		printf("},\"latency_us\":{\"p50\":%llu,\"p90\":%llu,\"p99\":%llu,\"p999\":%llu,\"max\":%llu,"
		       "\"mean\":%.1f}",
		       (unsigned long long)p[0], (unsigned long long)p[1], (unsigned long long)p[2],
		       (unsigned long long)p[3], (unsigned long long)latency.max_us, mean_us);
		printf(",\"shards\":%u,\"cross_shard_pct\":%d,\"transfers_cross\":%llu,\"accepted\":%llu",
		       config->shards, config->cross_shard_model ? (int)config->cross_shard_pct : -1,
		       (unsigned long long)counts.transfers_cross, (unsigned long long)counts.transfers_accepted);
		for (int c = 0; config->shards > 1 && c < BENCH_CLASS_COUNT; c++)
			printf(",\"latency_%s_us\":{\"requests\":%llu,\"p50\":%llu,\"p99\":%llu,\"max\":%llu}",
			       class_names[c], (unsigned long long)latency_class[c].count,
			       (unsigned long long)bench_hist_percentile(&latency_class[c], 50),
			       (unsigned long long)bench_hist_percentile(&latency_class[c], 99),
			       (unsigned long long)latency_class[c].max_us);
		if (verify)
			printf(",\"verify\":{\"ok\":%s,\"violations\":%llu,\"complete\":%s,"
			       "\"transfers_checked\":%llu,\"transfers_to_check\":%llu,\"unknown\":%llu,"
			       "\"unresolved\":%llu,\"accepted\":%llu,\"compensated\":%llu,\"unsettled\":%llu,"
			       "\"verify_s\":%.3f}",
			       verify->violations ? "false" : "true", (unsigned long long)verify->violations,
			       verify->complete ? "true" : "false", (unsigned long long)verify->transfers_checked,
			       (unsigned long long)verify->transfers_to_check, (unsigned long long)verify->unknown,
			       (unsigned long long)verify->unresolved, (unsigned long long)verify->accepted,
			       (unsigned long long)verify->compensated, (unsigned long long)verify->unsettled,
			       verify->verify_s);
		printf("}\n");
		fflush(stdout);
		return;
	}
	printf("kobo-bench: %s over %u accounts", mode_name(config), config->accounts);
	if (config->mode == BENCH_MODE_HOT)
		printf(" (%u hot)", config->hot);
	printf(", %u connections, %u thread%s, %s", config->connections, config->threads,
	       config->threads == 1 ? "" : "s", config->batch ? "batch" : "single transfers");
	if (config->batch)
		printf(" of %u", config->batch);
	if (config->rate_per_s)
		printf(", open loop at %llu transfers/s", (unsigned long long)config->rate_per_s);
	else
		printf(", closed loop");
	printf("\n  seed %llu, prefix %s, setup %.1f s\n", (unsigned long long)config->seed, config->prefix,
	       run->setup_s);
	printf("  transfers acknowledged (201): %llu in %.2f s = %.0f transfers/s\n",
	       (unsigned long long)counts.transfers_acked, elapsed_s, tps);
	printf("  requests answered: %llu = %.0f requests/s\n", (unsigned long long)counts.requests, rps);
	printf("  rejected (422): %llu", (unsigned long long)rejected);
	for (int i = 0; i < BENCH_REJECT_COUNT; i++)
		if (counts.rejected[i])
			printf("  %s %llu", bench_reject_names[i], (unsigned long long)counts.rejected[i]);
	printf("\n  errors: %llu http, %llu transport; %llu transfers of unknown outcome, %llu refused\n",
	       (unsigned long long)counts.errors_http, (unsigned long long)counts.errors_transport,
	       (unsigned long long)counts.transfers_unknown, (unsigned long long)counts.transfers_refused);
	if (config->shards > 1) {
		printf("  shards: %u", config->shards);
		if (config->cross_shard_model)
			printf(", --cross-shard %u%%", config->cross_shard_pct);
		printf("; %llu transfers answered were cross-shard, %llu answered 202 processing "
		       "(verify waits for them)\n", (unsigned long long)counts.transfers_cross,
		       (unsigned long long)counts.transfers_accepted);
	}
	if (config->rate_per_s)
		printf("  open loop: %llu requests came due but found no free connection before the end\n",
		       (unsigned long long)missed);
	printf("  statuses:");
	for (int i = 0; i < 600; i++)
		if (counts.status[i])
			printf("  %d x%llu", i, (unsigned long long)counts.status[i]);
	printf("\n  latency per request (ms): p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n",
	       (double)p[0] / 1000, (double)p[1] / 1000, (double)p[2] / 1000, (double)p[3] / 1000,
	       (double)latency.max_us / 1000, mean_us / 1000);
	for (int c = 0; config->shards > 1 && c < BENCH_CLASS_COUNT; c++)
		printf("    %-11s %9llu requests: p50 %.3f  p99 %.3f  max %.3f\n",
		       c == BENCH_CLASS_CROSS ? "cross-shard" : "local", (unsigned long long)latency_class[c].count,
		       (double)bench_hist_percentile(&latency_class[c], 50) / 1000,
		       (double)bench_hist_percentile(&latency_class[c], 99) / 1000,
		       (double)latency_class[c].max_us / 1000);
	fflush(stdout);
}

