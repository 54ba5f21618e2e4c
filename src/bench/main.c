/*
 * main.c — kobo-bench: options, then the phases, then the summary.
 *
 *   probe (GET /healthz) → setup (accounts, funding) → workload (live line
 *   every second) → summary → verify (unless --no-verify)
 *
 * Exit codes: 0 ok, 1 an invariant was violated, 2 usage, 3 the server could
 * not be reached, setup failed, or the balances could not all be read back.
 * Design notes: bench.h; what is verified: verify.c.
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../obs/obs.h"
#include "bench.h"

static void usage(FILE *out)
{
	fputs("usage: kobo-bench [options]\n"
	      "Drives transfers at a running kobod, prints live throughput and latency, then\n"
	      "verifies the ledger invariants against what the server acknowledged.\n"
	      "\n"
	      "  --url URL             server (default http://127.0.0.1:8080)\n"
	      "  --connections N       keep-alive connections, one request in flight each (64)\n"
	      "  --threads N           worker threads sharing the connections (1)\n"
	      "  --duration S          seconds of load (10)\n"
	      "  --rate R              open loop at R transfers/s; latency counts from the\n"
	      "                        scheduled send time (default: closed loop, flat out)\n"
	      "  --accounts N          accounts, picked uniformly (10000)\n"
	      "  --hot K               every transfer pays or is paid by one of K hot accounts\n"
	      "  --merchant            every transfer credits one merchant account\n"
	      "  --batch N             POST /v1/transfers/batch with N transfers per request\n"
	      "  --setup-batch N       funding transfers per batch request in setup (1000; 0 = single)\n"
	      "  --seed S              workload seed (default random; printed)\n"
	      "  --prefix P            account and transfer id prefix (default a random run id)\n"
	      "  --json                final summary as one JSON object on stdout\n"
	      "  --no-verify           skip verification\n"
	      "  --verify-timeout S    bound on verification (60)\n"
	      "  --setup-only          create and fund the accounts, then exit\n"
	      "  --self-test           check the histogram, scanners and model; no server\n"
	      "  --help\n"
	      "\n"
	      "Exit: 0 ok, 1 invariant violated, 2 usage, 3 server unreachable or setup failed.\n",
	      out);
}

static bool parse_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long value = strtoull(text, &end, 10);
	if (errno || end == text || *end || text[0] == '-' || value < min || value > max)
		return false;
	*out = value;
	return true;
}

static bool parse_seconds(const char *text, double min, double max, double *out)
{
	char *end;
	errno = 0;
	double value = strtod(text, &end);
	if (errno || end == text || *end || !(value >= min) || !(value <= max))
		return false;
	*out = value;
	return true;
}

static bool id_chars_ok(const char *s)
{
	for (; *s; s++)
		if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@-", *s))
			return false;
	return true;
}

/* http://host[:port][/] → addr and Host header. */
static bool parse_url(bench_config *config, const char *url)
{
	if (strncmp(url, "http://", 7) != 0 || strlen(url) >= sizeof(config->url)) {
		fprintf(stderr, "kobo-bench: --url must be http://HOST[:PORT] (no TLS)\n");
		return false;
	}
	snprintf(config->url, sizeof(config->url), "%s", url);
	char host[256];
	snprintf(host, sizeof(host), "%s", url + 7);
	char *slash = strchr(host, '/');
	if (slash) {
		if (slash[1] != '\0') {
			fprintf(stderr, "kobo-bench: --url takes no path\n");
			return false;
		}
		*slash = '\0';
	}
	snprintf(config->host_header, sizeof(config->host_header), "%s", host);
	const char *port = "80";
	char *name = host;
	if (host[0] == '[') { /* [IPv6]:port */
		char *close = strchr(host, ']');
		if (!close)
			return false;
		*close = '\0';
		name = host + 1;
		if (close[1] == ':')
			port = close + 2;
	} else {
		char *colon = strrchr(host, ':');
		if (colon) {
			*colon = '\0';
			port = colon + 1;
		}
	}
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	struct addrinfo *found = NULL;
	int rc = getaddrinfo(name, port, &hints, &found);
	if (rc != 0 || !found) {
		fprintf(stderr, "kobo-bench: cannot resolve %s: %s\n", url, gai_strerror(rc));
		return false;
	}
	memcpy(&config->addr, found->ai_addr, found->ai_addrlen);
	config->addr_len = found->ai_addrlen;
	freeaddrinfo(found);
	return true;
}

static uint64_t random_u64(void)
{
	uint64_t value = 0;
	FILE *f = fopen("/dev/urandom", "rb");
	if (!f || fread(&value, sizeof(value), 1, f) != 1)
		value = (uint64_t)kobo_now_ms() * 6364136223846793005ull ^ (uint64_t)getpid();
	if (f)
		fclose(f);
	return value;
}

enum {
	OPT_URL = 256, OPT_CONNECTIONS, OPT_THREADS, OPT_DURATION, OPT_RATE, OPT_ACCOUNTS, OPT_HOT,
	OPT_MERCHANT, OPT_BATCH, OPT_SETUP_BATCH, OPT_SEED, OPT_PREFIX, OPT_JSON, OPT_NO_VERIFY,
	OPT_VERIFY_TIMEOUT, OPT_SETUP_ONLY, OPT_SELF_TEST, OPT_HELP,
};

/* Returns -1 to go on, or an exit code. */
static int parse_options(bench_config *config, int argc, char **argv, bool *self_test)
{
	static const struct option options[] = {
		{"url", required_argument, NULL, OPT_URL},
		{"connections", required_argument, NULL, OPT_CONNECTIONS},
		{"threads", required_argument, NULL, OPT_THREADS},
		{"duration", required_argument, NULL, OPT_DURATION},
		{"rate", required_argument, NULL, OPT_RATE},
		{"accounts", required_argument, NULL, OPT_ACCOUNTS},
		{"hot", required_argument, NULL, OPT_HOT},
		{"merchant", no_argument, NULL, OPT_MERCHANT},
		{"batch", required_argument, NULL, OPT_BATCH},
		{"setup-batch", required_argument, NULL, OPT_SETUP_BATCH},
		{"seed", required_argument, NULL, OPT_SEED},
		{"prefix", required_argument, NULL, OPT_PREFIX},
		{"json", no_argument, NULL, OPT_JSON},
		{"no-verify", no_argument, NULL, OPT_NO_VERIFY},
		{"verify-timeout", required_argument, NULL, OPT_VERIFY_TIMEOUT},
		{"setup-only", no_argument, NULL, OPT_SETUP_ONLY},
		{"self-test", no_argument, NULL, OPT_SELF_TEST},
		{"help", no_argument, NULL, OPT_HELP},
		{NULL, 0, NULL, 0},
	};
	const char *url = "http://127.0.0.1:8080";
	bool seed_given = false, prefix_given = false, merchant_given = false;
	uint64_t value;
	int opt;
	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		bool ok = true;
		switch (opt) {
		case OPT_URL: url = optarg; break;
		case OPT_CONNECTIONS:
			ok = parse_u64(optarg, 1, BENCH_CONNECTIONS_MAX, &value);
			config->connections = (uint32_t)value;
			break;
		case OPT_THREADS:
			ok = parse_u64(optarg, 1, BENCH_THREADS_MAX, &value);
			config->threads = (uint32_t)value;
			break;
		case OPT_DURATION: ok = parse_seconds(optarg, 0.1, 86400, &config->duration_s); break;
		case OPT_RATE: ok = parse_u64(optarg, 1, 100000000, &config->rate_per_s); break;
		case OPT_ACCOUNTS:
			ok = parse_u64(optarg, 2, BENCH_ACCOUNTS_MAX, &value);
			config->accounts = (uint32_t)value;
			break;
		case OPT_HOT:
			ok = parse_u64(optarg, 1, BENCH_ACCOUNTS_MAX, &value);
			config->hot = (uint32_t)value;
			config->mode = BENCH_MODE_HOT;
			break;
		case OPT_MERCHANT:
			config->mode = BENCH_MODE_MERCHANT;
			merchant_given = true;
			break;
		case OPT_BATCH:
			ok = parse_u64(optarg, 1, BENCH_BATCH_MAX, &value);
			config->batch = (uint32_t)value;
			break;
		case OPT_SETUP_BATCH:
			ok = parse_u64(optarg, 0, BENCH_BATCH_MAX, &value);
			config->setup_batch = (uint32_t)value;
			break;
		case OPT_SEED:
			ok = parse_u64(optarg, 0, UINT64_MAX, &config->seed);
			seed_given = true;
			break;
		case OPT_PREFIX:
			ok = strlen(optarg) >= 1 && strlen(optarg) <= BENCH_PREFIX_LEN_MAX && id_chars_ok(optarg);
			if (ok)
				snprintf(config->prefix, sizeof(config->prefix), "%s", optarg);
			prefix_given = true;
			break;
		case OPT_JSON: config->json = true; break;
		case OPT_NO_VERIFY: config->verify = false; break;
		case OPT_VERIFY_TIMEOUT: ok = parse_seconds(optarg, 1, 86400, &config->verify_timeout_s); break;
		case OPT_SETUP_ONLY: config->setup_only = true; break;
		case OPT_SELF_TEST: *self_test = true; break;
		case OPT_HELP: usage(stdout); return BENCH_EXIT_OK;
		default: usage(stderr); return BENCH_EXIT_USAGE;
		}
		if (!ok) {
			fprintf(stderr, "kobo-bench: bad value for --%s: %s\n", options[opt - OPT_URL].name, optarg);
			return BENCH_EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "kobo-bench: unexpected argument %s\n", argv[optind]);
		return BENCH_EXIT_USAGE;
	}
	if (config->mode == BENCH_MODE_HOT && config->hot >= config->accounts) {
		fprintf(stderr, "kobo-bench: --hot must be below --accounts\n");
		return BENCH_EXIT_USAGE;
	}
	if (merchant_given && config->hot > 0) {
		fprintf(stderr, "kobo-bench: choose one of --hot and --merchant\n");
		return BENCH_EXIT_USAGE;
	}
	if (config->threads > config->connections) {
		fprintf(stderr, "kobo-bench: --threads cannot exceed --connections\n");
		return BENCH_EXIT_USAGE;
	}
	if (*self_test)
		return -1;
	if (!parse_url(config, url))
		return BENCH_EXIT_USAGE;
	if (!seed_given)
		config->seed = random_u64();
	if (!prefix_given)
		snprintf(config->prefix, sizeof(config->prefix), "bench-%08x:",
		         (unsigned)(random_u64() & 0xffffffffu));
	return -1;
}

/* ---- Probe: can we talk to the server at all? ---- */

typedef struct probe_ctx {
	bool sent;
	int status;
} probe_ctx;

static int probe_next(bench_job *job, bench_worker *worker, bench_conn *conn, int64_t now_us,
                      int64_t *wake_us)
{
	(void)worker;
	(void)now_us;
	(void)wake_us;
	probe_ctx *ctx = job->ctx;
	if (ctx->sent)
		return BENCH_JOB_DONE;
	ctx->sent = true;
	return bench_conn_request(conn, "GET", "/healthz", NULL, 0) == KOBO_OK ? BENCH_JOB_SENT
	                                                                      : BENCH_JOB_DONE;
}

static void probe_finish(bench_job *job, bench_worker *worker, bench_conn *conn, int status,
                         const char *body, size_t body_len, int64_t now_us)
{
	(void)worker;
	(void)conn;
	(void)body;
	(void)body_len;
	(void)now_us;
	probe_ctx *ctx = job->ctx;
	ctx->status = status;
}

static int probe(bench_run *run)
{
	probe_ctx ctx = {0};
	int64_t now_us = kobo_monotonic_us();
	bench_job job = {
		.next = probe_next,
		.finish = probe_finish,
		.stop_sending_us = now_us + 5000000,
		.abandon_us = now_us + 5000000,
		.ctx = &ctx,
	};
	bench_worker_run(&run->workers[0], &job);
	if (ctx.status != 200) {
		fprintf(stderr, "kobo-bench: %s is not serving (GET /healthz: %s %d)\n", run->config->url,
		        ctx.status ? "HTTP" : "no answer", ctx.status);
		return BENCH_EXIT_UNREACHABLE;
	}
	return BENCH_EXIT_OK;
}

/* ---- Summary. ---- */

static const char *mode_name(const bench_config *config)
{
	switch (config->mode) {
	case BENCH_MODE_HOT: return "hot";
	case BENCH_MODE_MERCHANT: return "merchant";
	default: return "uniform";
	}
}

static void print_summary(const bench_run *run, const bench_verify_report *verify)
{
	const bench_config *config = run->config;
	static bench_histogram latency;
	static bench_counts counts;
	bench_hist_reset(&latency);
	memset(&counts, 0, sizeof(counts));
	uint64_t missed = 0;
	for (uint32_t w = 0; w < run->worker_count; w++) {
		const bench_worker *worker = &run->workers[w];
		bench_hist_merge(&latency, &worker->latency);
		counts.requests += worker->counts.requests;
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
		if (verify)
			printf(",\"verify\":{\"ok\":%s,\"violations\":%llu,\"complete\":%s,"
			       "\"transfers_checked\":%llu,\"transfers_to_check\":%llu,\"unknown\":%llu,"
			       "\"unresolved\":%llu,\"verify_s\":%.3f}",
			       verify->violations ? "false" : "true", (unsigned long long)verify->violations,
			       verify->complete ? "true" : "false", (unsigned long long)verify->transfers_checked,
			       (unsigned long long)verify->transfers_to_check, (unsigned long long)verify->unknown,
			       (unsigned long long)verify->unresolved, verify->verify_s);
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
	fflush(stdout);
}

/* ---- Self-test: the pure parts, without a server. ---- */

static int self_test(bench_config *config)
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
#undef CHECK
	fprintf(stderr, "self-test: %s\n", failures ? "FAILED" : "ok");
	return failures ? BENCH_EXIT_VIOLATION : BENCH_EXIT_OK;
}

/* ---- Wiring. ---- */

static void on_sigint(int sig)
{
	(void)sig;
	if (atomic_exchange(&bench_stop_requested, true)) {
		static const char msg[] = "\nkobo-bench: interrupted twice, exiting\n";
		ssize_t ignored = write(2, msg, sizeof(msg) - 1);
		(void)ignored;
		_exit(130);
	}
}

int main(int argc, char **argv)
{
	static bench_config config = {
		.connections = 64,
		.threads = 1,
		.duration_s = 10,
		.accounts = 10000,
		.setup_batch = BENCH_SETUP_BATCH_DEFAULT,
		.verify = true,
		.verify_timeout_s = 60,
		.fund_amount_minor = BENCH_FUND_AMOUNT_MINOR,
		.amount_max_minor = BENCH_AMOUNT_MAX_MINOR,
	};
	bool want_self_test = false;
	int rc = parse_options(&config, argc, argv, &want_self_test);
	if (rc >= 0)
		return rc;
	if (want_self_test)
		return self_test(&config);

	signal(SIGPIPE, SIG_IGN);
	struct sigaction action = {.sa_handler = on_sigint};
	sigaction(SIGINT, &action, NULL);
	sigaction(SIGTERM, &action, NULL);

	static bench_run run;
	run.config = &config;
	run.worker_count = config.threads;
	run.workers = calloc(config.threads, sizeof(*run.workers));
	run.outcomes = mmap(NULL, BENCH_TRANSFERS_MAX, PROT_READ | PROT_WRITE,
	                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (!run.workers || run.outcomes == MAP_FAILED) {
		fprintf(stderr, "kobo-bench: out of memory\n");
		return BENCH_EXIT_UNREACHABLE;
	}
	for (uint32_t i = 0; i < config.threads; i++) {
		uint32_t share = config.connections / config.threads + (i < config.connections % config.threads);
		if (bench_worker_init(&run.workers[i], i, &config, share) != KOBO_OK) {
			fprintf(stderr, "kobo-bench: cannot create worker %u\n", i);
			return BENCH_EXIT_UNREACHABLE;
		}
	}

	rc = probe(&run);
	if (rc == BENCH_EXIT_OK) {
		fprintf(stderr, "kobo-bench: %s, prefix %s, seed %llu; creating %u accounts + cash\n", config.url,
		        config.prefix, (unsigned long long)config.seed, config.accounts);
		rc = bench_setup(&run);
	}
	if (rc == BENCH_EXIT_OK && config.setup_only) {
		fprintf(stderr, "kobo-bench: setup done in %.1f s (accounts %sa0..%sa%u, cash %scash)\n",
		        run.setup_s, config.prefix, config.prefix, config.accounts - 1, config.prefix);
	} else if (rc == BENCH_EXIT_OK) {
		fprintf(stderr, "kobo-bench: setup done in %.1f s; running %.0f s\n", run.setup_s,
		        config.duration_s);
		bench_workload(&run);
		bench_verify_report report;
		if (config.verify) {
			atomic_store(&bench_stop_requested, false); /* an interrupted run is still verified */
			if (!config.json)
				print_summary(&run, NULL);
			bench_verify(&run, &report);
			if (config.json)
				print_summary(&run, &report);
			if (report.violations > 0)
				rc = BENCH_EXIT_VIOLATION;
			else if (!report.balances_complete)
				rc = BENCH_EXIT_UNREACHABLE;
		} else {
			print_summary(&run, NULL);
		}
	}
	for (uint32_t i = 0; i < config.threads; i++)
		bench_worker_close(&run.workers[i]);
	free(run.workers);
	munmap(run.outcomes, BENCH_TRANSFERS_MAX);
	return rc;
}
