/*
 * main.c — kobo-bench: options, then the phases, then the summary.
 *
 *   probe (GET /healthz) → setup (accounts, funding) → workload (live line
 *   every second) → summary → verify (unless --no-verify)
 *
 * Exit codes: 0 ok, 1 an invariant was violated, 2 usage, 3 the server could
 * not be reached, setup failed, or the balances could not all be read back.
 * Design notes: bench.h; what is verified: verify.c; the summary: summary.c.
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
	      "  --key KEY             API key, sent as Authorization: Bearer KEY on every\n"
	      "                        request (default $KOBO_API_KEY; none: no header). The\n"
	      "                        run needs accounts:write, transfers:write and, to\n"
	      "                        verify, accounts:read and transfers:read (or admin)\n"
	      "  --connections N       keep-alive connections, one request in flight each (64)\n"
	      "  --threads N           worker threads sharing the connections (1)\n"
	      "  --duration S          seconds of load (10)\n"
	      "  --rate R              open loop at R transfers/s; latency counts from the\n"
	      "                        scheduled send time (default: closed loop, flat out)\n"
	      "  --accounts N          accounts, picked uniformly (10000)\n"
	      "  --hot K               every transfer pays or is paid by one of K hot accounts\n"
	      "  --merchant            every transfer credits one merchant account\n"
	      "  --batch N             POST /v1/transfers/batch with N transfers per request\n"
	      "  --shards N            the server's --shards (1); the bench places accounts on\n"
	      "                        shards as kobod does and reports local and cross-shard\n"
	      "                        latency apart\n"
	      "  --cross-shard P       P % of transfers pay an account on another shard than the\n"
	      "                        payer's, the rest one on the same shard (0..100; needs\n"
	      "                        --shards >= 2; without it accounts are picked regardless\n"
	      "                        of their shard)\n"
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
	OPT_VERIFY_TIMEOUT, OPT_SETUP_ONLY, OPT_SELF_TEST, OPT_HELP, OPT_SHARDS, OPT_CROSS_SHARD,
	OPT_KEY,
};

/* An API key as a header value: 1..BENCH_KEY_LEN_MAX visible ASCII
 * characters (no space, no control character: nothing can end the header
 * early). The server judges the rest. */
static bool set_key(bench_config *config, const char *key)
{
	size_t len = strlen(key);
	if (len == 0 || len > BENCH_KEY_LEN_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if (key[i] < 0x21 || key[i] > 0x7e)
			return false;
	snprintf(config->auth_header, sizeof(config->auth_header),
	         "Authorization: Bearer %s\r\n", key);
	return true;
}

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
		{"shards", required_argument, NULL, OPT_SHARDS},
		{"cross-shard", required_argument, NULL, OPT_CROSS_SHARD},
		{"key", required_argument, NULL, OPT_KEY},
		{NULL, 0, NULL, 0},
	};
	const char *url = "http://127.0.0.1:8080";
	const char *key = getenv("KOBO_API_KEY");
	bool seed_given = false, prefix_given = false, merchant_given = false, cross_given = false;
	uint64_t value;
	int opt;
	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		bool ok = true;
		switch (opt) {
		case OPT_URL: url = optarg; break;
		case OPT_KEY:
			key = optarg;
			if (key[0] == '\0') {
				fprintf(stderr, "kobo-bench: bad value for --key: empty\n");
				return BENCH_EXIT_USAGE;
			}
			break;
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
		case OPT_SHARDS:
			ok = parse_u64(optarg, 1, BENCH_SHARDS_MAX, &value);
			config->shards = (uint32_t)value;
			break;
		case OPT_CROSS_SHARD:
			ok = parse_u64(optarg, 0, 100, &value);
			config->cross_shard_pct = (uint32_t)value;
			cross_given = true;
			break;
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
	/* Not echoed: it is a secret. */
	if (key != NULL && key[0] != '\0' && !set_key(config, key)) {
		fprintf(stderr, "kobo-bench: bad API key (--key or KOBO_API_KEY): 1..%d visible "
		        "ASCII characters, no spaces\n", BENCH_KEY_LEN_MAX);
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
	if (cross_given && config->shards < 2) {
		fprintf(stderr, "kobo-bench: --cross-shard needs --shards N (N >= 2, as the server runs)\n");
		return BENCH_EXIT_USAGE;
	}
	config->cross_shard_model = cross_given;
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
		.shards = 1,
	};
	bool want_self_test = false;
	int rc = parse_options(&config, argc, argv, &want_self_test);
	if (rc >= 0)
		return rc;
	if (want_self_test)
		return bench_self_test(&config);
	rc = bench_shards_init(&config);
	if (rc != BENCH_EXIT_OK)
		return rc;

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
		if (config.shards > 1) {
			if (config.cross_shard_model)
				fprintf(stderr, "kobo-bench: %u shards, %u%% of transfers cross shards\n",
				        config.shards, config.cross_shard_pct);
			else
				fprintf(stderr, "kobo-bench: %u shards, accounts picked regardless of shard\n",
				        config.shards);
		}
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
				bench_print_summary(&run, NULL);
			bench_verify(&run, &report);
			if (config.json)
				bench_print_summary(&run, &report);
			if (report.violations > 0)
				rc = BENCH_EXIT_VIOLATION;
			else if (!report.balances_complete)
				rc = BENCH_EXIT_UNREACHABLE;
		} else {
			bench_print_summary(&run, NULL);
		}
	}
	for (uint32_t i = 0; i < config.threads; i++)
		bench_worker_close(&run.workers[i]);
	free(run.workers);
	munmap(run.outcomes, BENCH_TRANSFERS_MAX);
	bench_shards_free(&config);
	return rc;
}
