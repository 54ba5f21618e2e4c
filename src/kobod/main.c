/*
 * kobod — the Kobo server. Only wiring: flags and environment, the data
 * directory, its lock and its shard map (or, with --postgres, one
 * PostgreSQL URL per shard and the fixed map for their count: map_file.c),
 * one store and one shard writer per shard, the saga runner (more than one shard), the key ring
 * (with --auth required: shard 0's live API keys), the HTTP server, and a
 * graceful drain on SIGTERM/SIGINT:
 *
 *   1. stop accepting connections, refuse new writes (kobo_http_server_drain)
 *   2. stop the saga runner: waiting requests answer 202, steps out return
 *   3. stop every shard: it commits and answers everything queued
 *   4. let the answers reach their clients (bounded wait), stop HTTP
 *   5. close the stores, exit 0
 *
 * Signals are taken with signalfd on the main thread (blocked everywhere
 * else before any thread starts), so no code runs in a signal handler.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../auth/keyring.h"
#include "../http/server.h"
#include "../limit/gcra.h"
#include "../obs/obs.h"
#include "../obs/otlp.h"
#include "../saga/saga.h"
#include "../shard/shard.h"
#include "../store/layout.h"
#include "../store/hot/store_hot.h"
#include "../store/store.h"

#define DRAIN_WAIT_MS 5000 /* answers already computed get this long to leave */

typedef struct kobod_config {
	char host[256];
	uint16_t port;
	const char *data_dir;
	bool data_given;         /* --data or KOBO_DATA */
	unsigned long shards;
	bool shards_given;       /* --shards or KOBO_SHARDS */
	/* --postgres URL, one per shard in shard order (or KOBO_POSTGRES); the
	 * pointers borrow argv or postgres_env. */
	const char *postgres[KOBO_SHARDS_MAX];
	size_t postgres_count;
	bool postgres_from_flags;
	bool postgres_too_many;
	char *postgres_env;      /* KOBO_POSTGRES, split in place; freed at exit */
	/* --postgres-read URL, read replicas, one per shard or none (or
	 * KOBO_POSTGRES_READ): as the --postgres list. */
	const char *postgres_read[KOBO_SHARDS_MAX];
	size_t postgres_read_count;
	bool postgres_read_from_flags;
	bool postgres_read_too_many;
	char *postgres_read_env;
	const char *log_level;
	unsigned long connection_timeout_s;
	unsigned long connections_max;
	unsigned long http_threads;
	unsigned long queue_ops;
	unsigned long batch_ops;
	unsigned long saga_wait_ms;
	unsigned long saga_deadline_ms;
	unsigned long saga_stuck_ms;
	kobo_store_concurrency concurrency; /* --concurrency, PostgreSQL only */
	/* --ip-rate-limit R (0: off), --ip-rate-burst B (0: not given: R
	 * rounded up), --trusted-proxy CIDR (repeatable; KOBO_TRUSTED_PROXY
	 * whitespace separated, replaced as a whole by the flags). */
	double ip_rate;
	unsigned long ip_burst;
	kobo_http_cidr trusted[KOBO_HTTP_TRUSTED_PROXIES_MAX];
	size_t trusted_count;
	bool trusted_from_flags;
	bool trusted_too_many;
	/* --auth required|off (AUTH_DEFAULT: not given: required unless
	 * --listen is a loopback address), --insecure-no-auth,
	 * --metrics-auth required|off, --rate-limit R / --rate-burst B (per
	 * API key; 0: off / not given: R rounded up). */
	int auth;
	bool insecure_no_auth;
	bool metrics_auth;
	double key_rate;
	unsigned long key_burst;
	/* --node-name (KOBO_NODE_NAME): this kobod's name on the events it
	 * writes and its saga claims; "" until given: HOST:PORT of --listen. */
	char node_name[KOBO_EVENT_NODE_LEN_MAX + 1];
	/* --journal on|off (JOURNAL_DEFAULT: not given), --max-accounts N,
	 * --max-transfers N: the journaled embedded store (src/store/hot) and
	 * the size of its in-memory tables per shard. */
	int journal;
	unsigned long max_accounts;
	unsigned long long max_transfers;
	unsigned long journal_segment_mb;
} kobod_config;

enum { JOURNAL_DEFAULT = 0, JOURNAL_ON, JOURNAL_OFF };

enum { AUTH_DEFAULT = 0, AUTH_REQUIRED, AUTH_OFF };

static void usage(FILE *out)
{
	fprintf(out,
	        "usage: kobod [--listen HOST:PORT] [--data DIR | --postgres URL ...] [--shards N]\n"
	        "             [--postgres-read URL ...]\n"
	        "             [--log-level debug|info|warn|error]\n"
	        "             [--connection-timeout SECONDS] [--connections-max N]\n"
	        "             [--http-threads N] [--queue-ops N] [--batch-ops N]\n"
	        "             [--saga-wait-ms MS] [--saga-deadline-ms MS] [--saga-stuck-ms MS]\n"
	        "             [--concurrency pessimistic|optimistic]\n"
	        "             [--ip-rate-limit R [--ip-rate-burst B]] [--trusted-proxy CIDR ...]\n"
	        "             [--auth required|off] [--insecure-no-auth]\n"
	        "             [--metrics-auth required|off] [--rate-limit R [--rate-burst B]]\n"
	        "             [--node-name NAME]\n"
	        "             [--journal on|off] [--max-accounts N] [--max-transfers N]\n"
	        "             [--journal-segment-mb N]\n"
	        "\n"
	        "--journal on|off (KOBO_JOURNAL; with --data, default on): on, each shard's\n"
	        "  state lives in memory and in a checksummed journal (DIR/shard-N.journal/),\n"
	        "  with the SQLite file as a projection written behind it; off, every batch\n"
	        "  is a SQLite transaction. A data directory whose journal holds frames\n"
	        "  needs on (kobod refuses off, so nothing journaled is skipped).\n"
	        "--max-accounts N (default %u) and --max-transfers N (default %llu): the\n"
	        "  accounts and transfer ids one shard holds with --journal on; past them\n"
	        "  writes answer 503 capacity_exhausted (KOBO_MAX_ACCOUNTS,\n"
	        "  KOBO_MAX_TRANSFERS).\n"
	        "--journal-segment-mb N (KOBO_JOURNAL_SEGMENT_MB, %u..%u, default %u): the\n"
	        "  size of each journal segment file (pre-written with zeros); one batch's\n"
	        "  frame must fit in one (the largest batch needs about 43 MB).\n"
	        "\n"
	        "--node-name NAME (KOBO_NODE_NAME): this kobod's name, unique in the\n"
	        "  fleet, recorded on every event it writes (GET /v1/transfers/{id}/events)\n"
	        "  and on its saga claims; default HOST:PORT of --listen. 1..127 bytes.\n"
	        "--auth required|off (KOBO_AUTH): whether /v1 routes need an API key\n"
	        "  (Authorization: Bearer KEY; keys: `kobo key create`). Default: required,\n"
	        "  except off when --listen is a loopback address. --auth off on any other\n"
	        "  address also needs --insecure-no-auth (KOBO_INSECURE_NO_AUTH=1).\n"
	        "--metrics-auth required|off (KOBO_METRICS_AUTH): /metrics needs an admin\n"
	        "  key (default off: public). Needs --auth required.\n"
	        "--rate-limit R (requests/s, 0.001..1000000) and --rate-burst B (1..1000000,\n"
	        "  default R rounded up): a GCRA limit per API key (KOBO_RATE_LIMIT,\n"
	        "  KOBO_RATE_BURST); off unless given. Needs --auth required.\n"
	        "\n"
	        "--postgres URL (repeatable): shards live in PostgreSQL, one postgresql://\n"
	        "  URL per shard in shard order (their number is the shard count);\n"
	        "  not with --data. KOBO_POSTGRES: the URLs separated by whitespace.\n"
	        "--postgres-read URL (repeatable): read replicas (PostgreSQL standbys),\n"
	        "  one per shard in shard order, or none; GETs read them.\n"
	        "  KOBO_POSTGRES_READ: the URLs separated by whitespace.\n"
	        "--concurrency (with --postgres; KOBO_CONCURRENCY): how batches of several\n"
	        "  kobod on one database are kept apart. pessimistic (default): a batch\n"
	        "  locks the rows it reads. optimistic: no locks; a batch whose rows\n"
	        "  another node changed meanwhile is re-run (a few times, then 503\n"
	        "  overloaded). The embedded store has one writer per shard: pessimistic.\n"
	        "--ip-rate-limit R (requests/s, 0.001..1000000) and --ip-rate-burst B\n"
	        "  (1..1000000, default R rounded up): a GCRA limit per client IP; off\n"
	        "  unless given.\n"
	        "  Over it: 429 rate_limited with Retry-After and RateLimit-* headers.\n"
	        "--trusted-proxy CIDR (repeatable, at most %d; KOBO_TRUSTED_PROXY: whitespace\n"
	        "  separated): a peer in it is a proxy, and the client IP is the last\n"
	        "  X-Forwarded-For hop it sent.\n"
	        "\n"
	        "Every flag also comes from the environment (the flag wins):\n"
	        "  KOBO_LISTEN (127.0.0.1:8080)  KOBO_DATA (./var)  KOBO_SHARDS (1)\n"
	        "  KOBO_LOG_LEVEL (info)  KOBO_CONNECTION_TIMEOUT (%d)\n"
	        "  KOBO_CONNECTIONS_MAX (%d)  KOBO_HTTP_THREADS (%d)\n"
	        "  KOBO_QUEUE_OPS (%d)  KOBO_BATCH_OPS (%d)\n"
	        "  KOBO_SAGA_WAIT_MS (%d)  KOBO_SAGA_DEADLINE_MS (%d)  KOBO_SAGA_STUCK_MS (%d)\n"
	        "  KOBO_IP_RATE_LIMIT  KOBO_IP_RATE_BURST  KOBO_TRUSTED_PROXY\n"
	        "  KOBO_AUTH  KOBO_INSECURE_NO_AUTH  KOBO_METRICS_AUTH\n"
	        "  KOBO_RATE_LIMIT  KOBO_RATE_BURST  KOBO_NODE_NAME\n"
	        "  KOBO_JOURNAL  KOBO_MAX_ACCOUNTS  KOBO_MAX_TRANSFERS\n",
	        HOT_ACCOUNTS_MAX_DEFAULT, (unsigned long long)HOT_TRANSFERS_MAX_DEFAULT,
	        HOT_SEGMENT_MB_MIN, HOT_SEGMENT_MB_MAX, HOT_SEGMENT_MB_DEFAULT,
	        KOBO_HTTP_TRUSTED_PROXIES_MAX,
	        KOBO_HTTP_CONNECTION_TIMEOUT_S_DEFAULT, KOBO_HTTP_CONNECTIONS_MAX_DEFAULT,
	        KOBO_HTTP_THREADS_DEFAULT, KOBO_SHARD_QUEUE_OPS_DEFAULT,
	        KOBO_SHARD_BATCH_OPS_DEFAULT, KOBO_HTTP_SAGA_WAIT_MS_DEFAULT,
	        KOBO_SAGA_DEADLINE_MS_DEFAULT, KOBO_SAGA_STUCK_MS_DEFAULT);
}

static bool parse_count(const char *text, unsigned long min, unsigned long max,
                        unsigned long *out)
{
	if (!text || !*text || *text == '-' || *text == '+')
		return false;
	char *end;
	errno = 0;
	unsigned long n = strtoul(text, &end, 10);
	if (errno || *end || n < min || n > max)
		return false;
	*out = n;
	return true;
}

/* HOST:PORT, or [V6]:PORT. */
static bool parse_listen(const char *text, kobod_config *config)
{
	const char *colon = strrchr(text, ':');
	if (!colon || colon == text)
		return false;
	const char *host = text;
	size_t host_len = (size_t)(colon - text);
	if (host[0] == '[') {
		if (host_len < 3 || host[host_len - 1] != ']')
			return false;
		host++;
		host_len -= 2;
	}
	if (host_len >= sizeof(config->host))
		return false;
	unsigned long port;
	if (!parse_count(colon + 1, 0, 65535, &port))
		return false;
	memcpy(config->host, host, host_len);
	config->host[host_len] = '\0';
	config->port = (uint16_t)port;
	return true;
}

enum {
	OPT_LISTEN = 'l', OPT_DATA = 'd', OPT_SHARDS = 's', OPT_HELP = 'h',
	OPT_LOG_LEVEL = 256, OPT_CONNECTION_TIMEOUT, OPT_CONNECTIONS_MAX,
	OPT_HTTP_THREADS, OPT_QUEUE_OPS, OPT_BATCH_OPS, OPT_SAGA_WAIT_MS,
	OPT_SAGA_DEADLINE_MS, OPT_SAGA_STUCK_MS, OPT_POSTGRES,
	OPT_POSTGRES_READ, OPT_CONCURRENCY, OPT_IP_RATE_LIMIT, OPT_IP_RATE_BURST,
	OPT_TRUSTED_PROXY, OPT_AUTH, OPT_INSECURE_NO_AUTH, OPT_METRICS_AUTH,
	OPT_RATE_LIMIT, OPT_RATE_BURST, OPT_NODE_NAME,
	OPT_JOURNAL, OPT_MAX_ACCOUNTS, OPT_MAX_TRANSFERS, OPT_JOURNAL_SEGMENT_MB,
};

/* A rate in requests per second: a plain decimal number in range. */
static bool parse_rate(const char *text, double *out)
{
	if (!text || !*text || strspn(text, "0123456789.") != strlen(text))
		return false;
	char *end;
	errno = 0;
	double r = strtod(text, &end);
	if (errno || *end || !isfinite(r) || r < KOBO_GCRA_RATE_MIN || r > KOBO_GCRA_RATE_MAX)
		return false;
	*out = r;
	return true;
}

/* One --trusted-proxy CIDR after the others; false when it is not one. */
static bool add_trusted(kobod_config *config, const char *value)
{
	kobo_http_cidr cidr;
	if (kobo_http_cidr_parse(value, &cidr) != KOBO_OK)
		return false;
	if (config->trusted_count == KOBO_HTTP_TRUSTED_PROXIES_MAX) {
		config->trusted_too_many = true;
		return true;
	}
	config->trusted[config->trusted_count++] = cidr;
	return true;
}

/* KOBO_TRUSTED_PROXY: CIDRs separated by whitespace (empty: none). */
static bool apply_trusted_env(kobod_config *config, const char *value)
{
	char *copy = strdup(value);
	if (!copy)
		return false;
	config->trusted_count = 0;
	bool ok = true;
	char *save = NULL;
	for (char *c = strtok_r(copy, " \t\r\n", &save); c != NULL && ok;
	     c = strtok_r(NULL, " \t\r\n", &save))
		ok = add_trusted(config, c);
	free(copy);
	return ok;
}

static bool postgres_url(const char *value)
{
	return strncmp(value, "postgresql://", 13) == 0 ||
	       strncmp(value, "postgres://", 11) == 0;
}

/* One --postgres URL after the others; false when it is not a URL. */
static bool add_postgres(kobod_config *config, const char *value)
{
	if (!postgres_url(value))
		return false;
	if (config->postgres_count == KOBO_SHARDS_MAX) {
		config->postgres_too_many = true;
		return true;
	}
	config->postgres[config->postgres_count++] = value;
	return true;
}

/* One --postgres-read URL after the others; false when it is not a URL. */
static bool add_postgres_read(kobod_config *config, const char *value)
{
	if (!postgres_url(value))
		return false;
	if (config->postgres_read_count == KOBO_SHARDS_MAX) {
		config->postgres_read_too_many = true;
		return true;
	}
	config->postgres_read[config->postgres_read_count++] = value;
	return true;
}

/* KOBO_POSTGRES_READ, as KOBO_POSTGRES. */
static bool apply_postgres_read_env(kobod_config *config, const char *value)
{
	free(config->postgres_read_env);
	config->postgres_read_env = strdup(value);
	config->postgres_read_count = 0;
	if (config->postgres_read_env == NULL)
		return false;
	char *save = NULL;
	for (char *url = strtok_r(config->postgres_read_env, " \t\r\n", &save); url != NULL;
	     url = strtok_r(NULL, " \t\r\n", &save)) {
		if (!add_postgres_read(config, url))
			return false;
	}
	return config->postgres_read_count > 0;
}

/* KOBO_POSTGRES: URLs separated by whitespace, kept in a copy split in
 * place. */
static bool apply_postgres_env(kobod_config *config, const char *value)
{
	free(config->postgres_env);
	config->postgres_env = strdup(value);
	config->postgres_count = 0;
	if (config->postgres_env == NULL)
		return false;
	char *save = NULL;
	for (char *url = strtok_r(config->postgres_env, " \t\r\n", &save); url != NULL;
	     url = strtok_r(NULL, " \t\r\n", &save)) {
		if (!add_postgres(config, url))
			return false;
	}
	return config->postgres_count > 0;
}

/* Applies one setting, from a flag or the environment. */
static bool apply(kobod_config *config, int option, const char *value)
{
	switch (option) {
	case OPT_LISTEN: return parse_listen(value, config);
	case OPT_DATA:
		config->data_dir = value;
		config->data_given = true;
		return *value != '\0';
	case OPT_SHARDS:
		config->shards_given = true;
		return parse_count(value, 1, KOBO_SHARDS_MAX, &config->shards);
	case OPT_POSTGRES:
		/* The flags replace KOBO_POSTGRES's list as a whole. */
		if (!config->postgres_from_flags) {
			config->postgres_from_flags = true;
			config->postgres_count = 0;
		}
		return add_postgres(config, value);
	case OPT_POSTGRES_READ:
		if (!config->postgres_read_from_flags) {
			config->postgres_read_from_flags = true;
			config->postgres_read_count = 0;
		}
		return add_postgres_read(config, value);
	case OPT_CONCURRENCY:
		if (strcmp(value, "pessimistic") == 0)
			config->concurrency = KOBO_STORE_PESSIMISTIC;
		else if (strcmp(value, "optimistic") == 0)
			config->concurrency = KOBO_STORE_OPTIMISTIC;
		else
			return false;
		return true;
	case OPT_LOG_LEVEL: config->log_level = value; return true;
	case OPT_CONNECTION_TIMEOUT:
		return parse_count(value, 1, 86400, &config->connection_timeout_s);
	case OPT_CONNECTIONS_MAX:
		return parse_count(value, 1, 1000000, &config->connections_max);
	case OPT_HTTP_THREADS:
		return parse_count(value, 1, KOBO_HTTP_THREADS_MAX, &config->http_threads);
	case OPT_QUEUE_OPS:
		return parse_count(value, KOBO_BATCH_OPS_MAX, 1ul << 30, &config->queue_ops);
	case OPT_BATCH_OPS:
		return parse_count(value, 1, KOBO_BATCH_OPS_MAX, &config->batch_ops);
	case OPT_SAGA_WAIT_MS:
		return parse_count(value, 1, 600000, &config->saga_wait_ms);
	case OPT_SAGA_DEADLINE_MS:
		return parse_count(value, 1, 86400000, &config->saga_deadline_ms);
	case OPT_SAGA_STUCK_MS:
		return parse_count(value, 1, 86400000, &config->saga_stuck_ms);
	case OPT_IP_RATE_LIMIT:
		return parse_rate(value, &config->ip_rate);
	case OPT_IP_RATE_BURST:
		return parse_count(value, 1, KOBO_GCRA_BURST_MAX, &config->ip_burst);
	case OPT_AUTH:
		if (strcmp(value, "required") == 0)
			config->auth = AUTH_REQUIRED;
		else if (strcmp(value, "off") == 0)
			config->auth = AUTH_OFF;
		else
			return false;
		return true;
	case OPT_INSECURE_NO_AUTH:
		/* The flag takes no value; the variable says 1/true or 0/false. */
		if (!value || strcmp(value, "1") == 0 || strcmp(value, "true") == 0)
			config->insecure_no_auth = true;
		else if (strcmp(value, "0") == 0 || strcmp(value, "false") == 0 || !*value)
			config->insecure_no_auth = false;
		else
			return false;
		return true;
	case OPT_METRICS_AUTH:
		if (strcmp(value, "required") == 0)
			config->metrics_auth = true;
		else if (strcmp(value, "off") == 0)
			config->metrics_auth = false;
		else
			return false;
		return true;
	case OPT_RATE_LIMIT:
		return parse_rate(value, &config->key_rate);
	case OPT_RATE_BURST:
		return parse_count(value, 1, KOBO_GCRA_BURST_MAX, &config->key_burst);
	case OPT_JOURNAL:
		if (strcmp(value, "on") == 0)
			config->journal = JOURNAL_ON;
		else if (strcmp(value, "off") == 0)
			config->journal = JOURNAL_OFF;
		else
			return false;
		return true;
	case OPT_MAX_ACCOUNTS:
		return parse_count(value, 1, HOT_ACCOUNTS_MAX_LIMIT, &config->max_accounts);
	case OPT_JOURNAL_SEGMENT_MB:
		return parse_count(value, HOT_SEGMENT_MB_MIN, HOT_SEGMENT_MB_MAX,
		                   &config->journal_segment_mb);
	case OPT_MAX_TRANSFERS: {
		unsigned long n;
		if (!parse_count(value, 1, ULONG_MAX, &n) || n > HOT_TRANSFERS_MAX_LIMIT)
			return false;
		config->max_transfers = n;
		return true;
	}
	case OPT_NODE_NAME: {
		size_t len = strlen(value);
		if (len == 0 || len > KOBO_EVENT_NODE_LEN_MAX)
			return false;
		for (size_t i = 0; i < len; i++)
			if ((unsigned char)value[i] < 0x21 || (unsigned char)value[i] > 0x7e ||
			    value[i] == '"' || value[i] == '\\')
				return false; /* printable ASCII: it goes into JSON and logs */
		memcpy(config->node_name, value, len + 1);
		return true;
	}
	case OPT_TRUSTED_PROXY:
		if (!config->trusted_from_flags) {
			config->trusted_from_flags = true;
			config->trusted_count = 0;
		}
		return add_trusted(config, value);
	}
	return false;
}

static const struct option long_options[] = {
	{ "listen", required_argument, NULL, OPT_LISTEN },
	{ "data", required_argument, NULL, OPT_DATA },
	{ "shards", required_argument, NULL, OPT_SHARDS },
	{ "log-level", required_argument, NULL, OPT_LOG_LEVEL },
	{ "connection-timeout", required_argument, NULL, OPT_CONNECTION_TIMEOUT },
	{ "connections-max", required_argument, NULL, OPT_CONNECTIONS_MAX },
	{ "http-threads", required_argument, NULL, OPT_HTTP_THREADS },
	{ "queue-ops", required_argument, NULL, OPT_QUEUE_OPS },
	{ "batch-ops", required_argument, NULL, OPT_BATCH_OPS },
	{ "saga-wait-ms", required_argument, NULL, OPT_SAGA_WAIT_MS },
	{ "saga-deadline-ms", required_argument, NULL, OPT_SAGA_DEADLINE_MS },
	{ "saga-stuck-ms", required_argument, NULL, OPT_SAGA_STUCK_MS },
	{ "postgres", required_argument, NULL, OPT_POSTGRES },
	{ "postgres-read", required_argument, NULL, OPT_POSTGRES_READ },
	{ "concurrency", required_argument, NULL, OPT_CONCURRENCY },
	{ "ip-rate-limit", required_argument, NULL, OPT_IP_RATE_LIMIT },
	{ "ip-rate-burst", required_argument, NULL, OPT_IP_RATE_BURST },
	{ "trusted-proxy", required_argument, NULL, OPT_TRUSTED_PROXY },
	{ "auth", required_argument, NULL, OPT_AUTH },
	{ "insecure-no-auth", no_argument, NULL, OPT_INSECURE_NO_AUTH },
	{ "metrics-auth", required_argument, NULL, OPT_METRICS_AUTH },
	{ "rate-limit", required_argument, NULL, OPT_RATE_LIMIT },
	{ "rate-burst", required_argument, NULL, OPT_RATE_BURST },
	{ "node-name", required_argument, NULL, OPT_NODE_NAME },
	{ "journal", required_argument, NULL, OPT_JOURNAL },
	{ "max-accounts", required_argument, NULL, OPT_MAX_ACCOUNTS },
	{ "max-transfers", required_argument, NULL, OPT_MAX_TRANSFERS },
	{ "journal-segment-mb", required_argument, NULL, OPT_JOURNAL_SEGMENT_MB },
	{ "help", no_argument, NULL, OPT_HELP },
	{ NULL, 0, NULL, 0 },
};

static const struct {
	const char *name;
	int option;
} env_options[] = {
	{ "KOBO_LISTEN", OPT_LISTEN },
	{ "KOBO_DATA", OPT_DATA },
	{ "KOBO_SHARDS", OPT_SHARDS },
	{ "KOBO_LOG_LEVEL", OPT_LOG_LEVEL },
	{ "KOBO_CONNECTION_TIMEOUT", OPT_CONNECTION_TIMEOUT },
	{ "KOBO_CONNECTIONS_MAX", OPT_CONNECTIONS_MAX },
	{ "KOBO_HTTP_THREADS", OPT_HTTP_THREADS },
	{ "KOBO_QUEUE_OPS", OPT_QUEUE_OPS },
	{ "KOBO_BATCH_OPS", OPT_BATCH_OPS },
	{ "KOBO_SAGA_WAIT_MS", OPT_SAGA_WAIT_MS },
	{ "KOBO_SAGA_DEADLINE_MS", OPT_SAGA_DEADLINE_MS },
	{ "KOBO_SAGA_STUCK_MS", OPT_SAGA_STUCK_MS },
	{ "KOBO_POSTGRES", OPT_POSTGRES },
	{ "KOBO_POSTGRES_READ", OPT_POSTGRES_READ },
	{ "KOBO_CONCURRENCY", OPT_CONCURRENCY },
	{ "KOBO_IP_RATE_LIMIT", OPT_IP_RATE_LIMIT },
	{ "KOBO_IP_RATE_BURST", OPT_IP_RATE_BURST },
	{ "KOBO_TRUSTED_PROXY", OPT_TRUSTED_PROXY },
	{ "KOBO_AUTH", OPT_AUTH },
	{ "KOBO_INSECURE_NO_AUTH", OPT_INSECURE_NO_AUTH },
	{ "KOBO_METRICS_AUTH", OPT_METRICS_AUTH },
	{ "KOBO_RATE_LIMIT", OPT_RATE_LIMIT },
	{ "KOBO_RATE_BURST", OPT_RATE_BURST },
	{ "KOBO_NODE_NAME", OPT_NODE_NAME },
	{ "KOBO_JOURNAL", OPT_JOURNAL },
	{ "KOBO_MAX_ACCOUNTS", OPT_MAX_ACCOUNTS },
	{ "KOBO_MAX_TRANSFERS", OPT_MAX_TRANSFERS },
	{ "KOBO_JOURNAL_SEGMENT_MB", OPT_JOURNAL_SEGMENT_MB },
};

/* true when host (as given to --listen) can only be reached from this
 * machine: 127.0.0.0/8, ::1, an IPv4-mapped 127/8, or "localhost". A name
 * other than localhost, 0.0.0.0 and :: are not loopback. */
static bool loopback_host(const char *host)
{
	uint8_t addr[16];
	if (strcmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, addr) == 1)
		return addr[0] == 127;
	if (inet_pton(AF_INET6, host, addr) == 1) {
		static const uint8_t one[16] = { [15] = 1 };
		static const uint8_t mapped[12] = { [10] = 0xff, [11] = 0xff };
		return memcmp(addr, one, 16) == 0 ||
		       (memcmp(addr, mapped, 12) == 0 && addr[12] == 127);
	}
	return false;
}

/* The start-up rules of --auth (README "API keys"): fills config->auth,
 * says which mode and why on stderr (a JSON log line: stdout keeps only
 * the ready line). Returns 0, or 2 after saying why it refuses. */
static int resolve_auth(kobod_config *config)
{
	bool loopback = loopback_host(config->host);
	char host[300];
	kobo_json_escape(host, sizeof(host), config->host);
	if (config->auth == AUTH_OFF && !loopback && !config->insecure_no_auth) {
		fprintf(stderr, "kobod: --auth off on %s, which is not a loopback address, "
		        "would let anyone who reaches the port move money; add "
		        "--insecure-no-auth (KOBO_INSECURE_NO_AUTH=1) if that is really "
		        "meant, or use API keys (kobo key create)\n", config->host);
		return 2;
	}
	const char *why;
	if (config->auth == AUTH_DEFAULT) {
		config->auth = loopback ? AUTH_OFF : AUTH_REQUIRED;
		why = loopback ? "the default on a loopback address; --auth required to need keys"
		               : "the default on a non-loopback address";
	} else {
		why = config->auth == AUTH_REQUIRED ? "--auth required"
		    : loopback ? "--auth off on a loopback address"
		               : "--auth off --insecure-no-auth: anyone who reaches the port "
		                 "can move money";
	}
	if (config->auth == AUTH_OFF && (config->metrics_auth || config->key_rate > 0)) {
		fprintf(stderr, "kobod: %s needs API keys, but auth is off (%s): use --auth "
		        "required\n", config->metrics_auth ? "--metrics-auth required"
		                                         : "--rate-limit (per key)", why);
		return 2;
	}
	kobo_log(config->auth == AUTH_OFF ? KOBO_LOG_WARN : KOBO_LOG_INFO, "auth_mode",
	         "\"auth\":\"%s\",\"why\":\"%s\",\"listen\":\"%s\",\"metrics_auth\":%s",
	         config->auth == AUTH_OFF ? "off" : "required", why, host,
	         config->metrics_auth ? "true" : "false");
	return 0;
}

/* Environment first, then flags over it. Returns 0, or 2 after usage. */
static int configure(int argc, char **argv, kobod_config *config)
{
	*config = (kobod_config){ .data_dir = "var", .shards = 1,
	                          .max_accounts = HOT_ACCOUNTS_MAX_DEFAULT,
	                          .max_transfers = HOT_TRANSFERS_MAX_DEFAULT,
	                          .journal_segment_mb = HOT_SEGMENT_MB_DEFAULT };
	parse_listen("127.0.0.1:8080", config);
	for (size_t i = 0; i < sizeof(env_options) / sizeof(env_options[0]); i++) {
		const char *value = getenv(env_options[i].name);
		bool ok = value == NULL ? true
			: env_options[i].option == OPT_POSTGRES ? apply_postgres_env(config, value)
			: env_options[i].option == OPT_POSTGRES_READ
				? apply_postgres_read_env(config, value)
			: env_options[i].option == OPT_TRUSTED_PROXY
				? apply_trusted_env(config, value)
			: apply(config, env_options[i].option, value);
		if (!ok) {
			fprintf(stderr, "kobod: bad value for %s: '%s'\n", env_options[i].name, value);
			usage(stderr);
			return 2;
		}
	}
	int option;
	while ((option = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
		if (option == OPT_HELP) {
			usage(stdout);
			exit(0);
		}
		if (option == '?' || option == ':') {
			usage(stderr);
			return 2;
		}
		if (!apply(config, option, optarg)) {
			const char *name = "?";
			for (const struct option *o = long_options; o->name; o++)
				if (o->val == option)
					name = o->name;
			fprintf(stderr, "kobod: bad value for --%s: '%s'%s\n", name, optarg,
			        option == OPT_POSTGRES || option == OPT_POSTGRES_READ
			        ? " (expected a postgresql:// or "
			        "postgres:// URL)" : option == OPT_CONCURRENCY
			        ? " (expected pessimistic or optimistic)"
			        : option == OPT_IP_RATE_LIMIT || option == OPT_RATE_LIMIT
			        ? " (expected requests per second, a positive number from 0.001 "
			        "to 1000000)"
			        : option == OPT_AUTH || option == OPT_METRICS_AUTH
			        ? " (expected required or off)"
			        : option == OPT_IP_RATE_BURST || option == OPT_RATE_BURST
			        ? " (expected a whole number of requests from 1 to 1000000)"
			        : option == OPT_TRUSTED_PROXY
			        ? " (expected an IPv4 or IPv6 address or CIDR such as 10.0.0.0/8, "
			        "host bits zero)" : "");
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "kobod: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (config->log_level && kobo_log_set_level_name(config->log_level) != KOBO_OK) {
		fprintf(stderr, "kobod: bad log level '%s'\n", config->log_level);
		usage(stderr);
		return 2;
	}
	if (config->ip_burst && config->ip_rate == 0) {
		fprintf(stderr, "kobod: --ip-rate-burst (or KOBO_IP_RATE_BURST) needs "
		        "--ip-rate-limit R: the burst is the size of the per-IP limit's "
		        "bucket\n");
		return 2;
	}
	if (config->ip_rate > 0 && config->ip_burst == 0)
		config->ip_burst = (unsigned long)ceil(config->ip_rate);
	if (config->key_burst && config->key_rate == 0) {
		fprintf(stderr, "kobod: --rate-burst (or KOBO_RATE_BURST) needs --rate-limit R: "
		        "the burst is the size of the per-key limit's bucket\n");
		return 2;
	}
	if (config->key_rate > 0 && config->key_burst == 0)
		config->key_burst = (unsigned long)ceil(config->key_rate);
	if (config->trusted_too_many) {
		fprintf(stderr, "kobod: more than %d --trusted-proxy networks\n",
		        KOBO_HTTP_TRUSTED_PROXIES_MAX);
		return 2;
	}
	if (config->journal == JOURNAL_ON && config->postgres_count > 0) {
		fprintf(stderr, "kobod: --journal on is the embedded store's (--data); with "
		        "--postgres the database is the journal\n");
		usage(stderr);
		return 2;
	}
	if (config->concurrency == KOBO_STORE_OPTIMISTIC && config->postgres_count == 0) {
		fprintf(stderr, "kobod: --concurrency optimistic (or KOBO_CONCURRENCY) needs "
		        "--postgres: the embedded SQLite store has one writer per shard, so "
		        "there is no other node to be optimistic about; use pessimistic "
		        "(the default)\n");
		return 2;
	}
	if (config->postgres_count > 0) {
		if (config->data_given) {
			fprintf(stderr, "kobod: --data (or KOBO_DATA) and --postgres (or "
			        "KOBO_POSTGRES) cannot be used together: shards live either in "
			        "a data directory or in PostgreSQL\n");
			return 2;
		}
		if (config->postgres_too_many) {
			fprintf(stderr, "kobod: more than %d --postgres URLs (one per shard)\n",
			        KOBO_SHARDS_MAX);
			return 2;
		}
		if (config->shards_given && config->shards != config->postgres_count) {
			fprintf(stderr, "kobod: --shards %lu but %zu --postgres URL%s: give one "
			        "URL per shard, in shard order (--shards may be left out)\n",
			        config->shards, config->postgres_count,
			        config->postgres_count == 1 ? "" : "s");
			return 2;
		}
		config->shards = config->postgres_count;
	}
	if (config->postgres_read_count > 0) {
		if (config->postgres_count == 0) {
			fprintf(stderr, "kobod: --postgres-read (or KOBO_POSTGRES_READ) needs "
			        "--postgres: read replicas are standbys of PostgreSQL shards\n");
			return 2;
		}
		if (config->postgres_read_too_many ||
		    config->postgres_read_count != config->postgres_count) {
			fprintf(stderr, "kobod: %s%zu --postgres-read URL%s for %zu shard%s: give "
			        "one read replica per shard, in shard order, or none\n",
			        config->postgres_read_too_many ? "more than " : "",
			        config->postgres_read_count,
			        config->postgres_read_count == 1 ? "" : "s",
			        config->postgres_count, config->postgres_count == 1 ? "" : "s");
			return 2;
		}
	}
	return resolve_auth(config);
}

/* mkdir -p */
static int make_dirs(const char *path)
{
	char buf[PATH_MAX];
	size_t len = strlen(path);
	if (len == 0 || len >= sizeof(buf))
		return -1;
	memcpy(buf, path, len + 1);
	for (size_t i = 1; i <= len; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		char saved = buf[i];
		buf[i] = '\0';
		if (mkdir(buf, 0755) != 0 && errno != EEXIST)
			return -1;
		buf[i] = saved;
	}
	struct stat st;
	return stat(path, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

static void log_failure(const char *event, const char *what, const char *detail)
{
	char escaped_what[512], escaped_detail[512];
	kobo_json_escape(escaped_what, sizeof(escaped_what), what);
	kobo_json_escape(escaped_detail, sizeof(escaped_detail), detail ? detail : "");
	kobo_log(KOBO_LOG_ERROR, event, "\"what\":\"%s\",\"detail\":\"%s\"",
	         escaped_what, escaped_detail);
}

/* --journal off on a data directory whose journal holds frames would
 * serve the SQLite projection without the batches not projected yet:
 * refuse (exit 2) unless every shard's journal directory is absent or has
 * no segment. */
static int refuse_unreplayed_journal(const kobod_config *config, uint32_t shard_count)
{
	for (uint32_t i = 0; i < shard_count; i++) {
		if (store_hot_journal_present(config->data_dir, i)) {
			char dir[PATH_MAX];
			(void)kobo_layout_journal_dir(dir, sizeof dir, config->data_dir, i);
			fprintf(stderr, "kobod: shard %u has a journal (%s): start with --journal on "
			        "(it replays what the SQLite file does not hold yet)\n", i, dir);
			log_failure("startup_failed", dir, "--journal off on a journaled shard");
			return 2;
		}
	}
	return 0;
}

/* The data directory: created if missing, its lock taken (into *lock_fd)
 * and its shard map opened. 0, or the exit status after saying why. */
static int open_data_dir(const kobod_config *config, uint32_t shard_count,
                         kobo_shard_map *map, int *lock_fd)
{
	char path[PATH_MAX];
	if (make_dirs(config->data_dir) != 0) {
		log_failure("startup_failed", config->data_dir, strerror(errno));
		fprintf(stderr, "kobod: cannot create data directory %s: %s\n",
		        config->data_dir, strerror(errno));
		return 1;
	}
	if (!kobo_layout_lock_path(path, sizeof(path), config->data_dir)) {
		log_failure("startup_failed", config->data_dir, "path too long");
		fprintf(stderr, "kobod: data directory path is too long: %s\n",
		        config->data_dir);
		return 1;
	}
	*lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (*lock_fd < 0 || flock(*lock_fd, LOCK_EX | LOCK_NB) != 0) {
		bool busy = *lock_fd >= 0 && errno == EWOULDBLOCK;
		log_failure("startup_failed", path,
		            busy ? "another kobod is using this data directory" : strerror(errno));
		fprintf(stderr, "kobod: %s: %s\n", path,
		        busy ? "another kobod is using this data directory" : strerror(errno));
		return 1;
	}
	char map_error[512];
	int rc = kobo_shard_map_open(config->data_dir, shard_count, map, map_error,
	                             sizeof(map_error));
	if (rc != KOBO_OK) {
		log_failure("startup_failed", "shard map", map_error);
		fprintf(stderr, "kobod: %s\n", map_error);
		return rc == KOBO_EINVAL ? 2 : 1;
	}
	return 0;
}

static int run(kobod_config *config_in);

/* How long the exporter may take at exit to send the spans still queued. */
#define OTLP_STOP_MS 5000

int main(int argc, char **argv)
{
	kobod_config config;
	int rc = configure(argc, argv, &config);
	if (rc == 0 && config.node_name[0] == '\0')
		snprintf(config.node_name, sizeof config.node_name, "%.100s:%u",
		         config.host, (unsigned)config.port);
	if (rc == 0)
		rc = run(&config);
	free(config.postgres_env);
	free(config.postgres_read_env);
	return rc;
}

static int run(kobod_config *config_in)
{
	const kobod_config config = *config_in;
	int rc;

	/* Block the signals before any thread starts: every thread inherits
	 * the mask and only the signalfd below sees them. */
	sigset_t signals;
	sigemptyset(&signals);
	sigaddset(&signals, SIGTERM);
	sigaddset(&signals, SIGINT);
	pthread_sigmask(SIG_BLOCK, &signals, NULL);
	signal(SIGPIPE, SIG_IGN);
	int signal_fd = signalfd(-1, &signals, SFD_CLOEXEC);
	if (signal_fd < 0) {
		log_failure("startup_failed", "signalfd", strerror(errno));
		return 1;
	}

	/* With --postgres there is no data directory: each shard's store is
	 * its URL, and the map is fixed by the shard count, which every
	 * shard's database records (map_file.c). */
	bool postgres = config.postgres_count > 0;
	uint32_t shard_count = (uint32_t)config.shards;
	static kobo_shard_map map;
	char path[PATH_MAX];
	char store_url[PATH_MAX + 8] = "";
	int lock_fd = -1;
	if (postgres) {
		char map_error[512];
		if (kobo_shard_map_fixed(shard_count, &map, map_error,
		                         sizeof(map_error)) != KOBO_OK) {
			fprintf(stderr, "kobod: %s\n", map_error);
			close(signal_fd);
			return 2;
		}
	} else {
		bool journal = config.journal != JOURNAL_OFF;
		int n = journal
			? snprintf(store_url, sizeof(store_url),
			           "journal:%s?accounts=%lu&transfers=%llu&segment_mb=%lu",
			           config.data_dir, config.max_accounts, config.max_transfers,
			           config.journal_segment_mb)
			: snprintf(store_url, sizeof(store_url), "sqlite:%s", config.data_dir);
		if (n < 0 || (size_t)n >= sizeof(store_url)) {
			fprintf(stderr, "kobod: data directory path is too long: %s\n",
			        config.data_dir);
			close(signal_fd);
			return 1;
		}
		rc = open_data_dir(&config, shard_count, &map, &lock_fd);
		if (rc == 0 && !journal)
			rc = refuse_unreplayed_journal(&config, shard_count);
		if (rc != 0) {
			if (lock_fd >= 0)
				close(lock_fd);
			close(signal_fd);
			return rc;
		}
	}

	kobo_store *stores[KOBO_SHARDS_MAX] = { 0 };
	kobo_shard *shards[KOBO_SHARDS_MAX] = { 0 };
	kobo_saga_runner *runner = NULL;
	kobo_http_server *server = NULL;
	kobo_keyring *keyring = NULL;
	int exit_code = 1;
	if (shard_count > 1) {
		kobo_saga_config saga = {
			.shards = shards,
			.stores = stores,
			.shard_count = shard_count,
			.map = &map,
			.deadline_ms = (int64_t)config.saga_deadline_ms,
			.stuck_ms = (int64_t)config.saga_stuck_ms,
			.node = config.node_name,
		};
		if (kobo_saga_runner_create(&saga, &runner) != KOBO_OK) {
			log_failure("startup_failed", "saga runner", "out of memory");
			goto out;
		}
	}
	for (uint32_t i = 0; i < shard_count; i++) {
		if (postgres)
			snprintf(path, sizeof(path), "PostgreSQL shard %u", i);
		else
			(void)kobo_layout_shard_path(path, sizeof(path), config.data_dir, i);
		rc = kobo_store_open_sharded(postgres ? config.postgres[i] : store_url, i,
		                             shard_count, false, &stores[i]);
		if (rc != KOBO_OK) {
			/* A mismatched --postgres list was explained on stderr. */
			log_failure("startup_failed", path, rc == KOBO_EINVAL
			            ? "refused: not the shard this position names"
			            : "cannot open the store");
			if (rc != KOBO_EINVAL)
				fprintf(stderr, "kobod: cannot open %s (see the log above)\n", path);
			stores[i] = NULL;
			if (rc == KOBO_EINVAL)
				exit_code = 2;
			goto out;
		}
		rc = kobo_store_set_concurrency(stores[i], config.concurrency);
		if (rc != KOBO_OK) {
			/* configure() refused this already; a store that still
			 * refuses is a store without the choice. */
			log_failure("startup_failed", path, "refused --concurrency");
			exit_code = 2;
			goto out;
		}
		kobo_shard_config shard_config = {
			.index = i,
			.queue_ops_max = config.queue_ops,
			.batch_ops_max = config.batch_ops,
			.saga_started = runner ? kobo_saga_runner_notify : NULL,
			.saga_ctx = runner,
			.node = config.node_name,
		};
		if (kobo_shard_start(stores[i], &shard_config, &shards[i]) != KOBO_OK) {
			log_failure("startup_failed", path, "cannot start the shard writer");
			shards[i] = NULL;
			goto out;
		}
	}
	/* Read replicas: one that answers must hold the shard it is given
	 * for (refused like a --postgres list in the wrong order); one that
	 * does not answer yet is retried while kobod serves from the primary. */
	for (uint32_t i = 0; i < config.postgres_read_count; i++) {
		kobo_store *replica = NULL;
		rc = kobo_store_open_replica(config.postgres_read[i], i, shard_count, &replica);
		if (rc == KOBO_OK) {
			kobo_store_close(replica);
			continue;
		}
		snprintf(path, sizeof(path), "PostgreSQL read replica of shard %u", i);
		if (rc == KOBO_EINVAL) {
			log_failure("startup_failed", path, "refused: not the shard this position names");
			fprintf(stderr, "kobod: --postgres-read URL %u is not a replica of shard %u "
			        "(see above)\n", i + 1, i);
			exit_code = 2;
			goto out;
		}
		kobo_log(KOBO_LOG_WARN, "replica_unavailable",
		         "\"shard\":%u,\"message\":\"the read replica cannot be opened now: "
		         "GETs read the primary until it answers\"", i);
	}

	/* API keys live in shard 0's store; a node that cannot read them
	 * would refuse every request: better not to start. */
	if (config.auth == AUTH_REQUIRED) {
		rc = kobo_keyring_start(stores[0], 0, &keyring);
		if (rc != KOBO_OK) {
			log_failure("startup_failed", "API keys", kobo_status_name(rc));
			fprintf(stderr, "kobod: --auth required, but the API keys in shard 0's "
			        "store cannot be read (%s); not starting\n", kobo_status_name(rc));
			goto out;
		}
	}

	/* Traces (OTEL_* environment): the exporter thread starts before the
	 * first request and before the saga runner, whose first steps (the
	 * sagas a restart resumes) have spans too, and stops after the last
	 * answer (below). */
	char otlp_error[512];
	if (kobo_otlp_start(otlp_error, sizeof(otlp_error)) != 0) {
		log_failure("startup_failed", "otlp", otlp_error);
		fprintf(stderr, "kobod: %s\n", otlp_error);
		goto out;
	}

	if (runner && kobo_saga_runner_start(runner) != KOBO_OK) {
		log_failure("startup_failed", "saga runner", "cannot start the thread");
		goto out;
	}

	kobo_http_config http = {
		.host = config.host,
		.port = config.port,
		.shards = shards,
		.stores = stores,
		.shard_count = shard_count,
		.map = &map,
		.replica_urls = config.postgres_read_count ? config.postgres_read : NULL,
		.runner = runner,
		.saga_wait_ms = (unsigned)config.saga_wait_ms,
		.connection_timeout_s = (unsigned)config.connection_timeout_s,
		.connections_max = (unsigned)config.connections_max,
		.threads = (unsigned)config.http_threads,
		.ip_rate = config.ip_rate,
		.ip_burst = (uint32_t)config.ip_burst,
		.trusted_proxies = config.trusted,
		.trusted_proxy_count = config.trusted_count,
		.keyring = keyring,
		.metrics_auth = config.metrics_auth,
		.key_rate = config.key_rate,
		.key_burst = (uint32_t)config.key_burst,
	};
	if (kobo_http_server_start(&http, &server) != KOBO_OK) {
		log_failure("startup_failed", "http", "cannot listen on the address");
		fprintf(stderr, "kobod: cannot listen on %s:%u\n", config.host, config.port);
		goto out;
	}

	char host[600], data[600];
	bool ipv6 = strchr(config.host, ':') != NULL;
	snprintf(host, sizeof(host), ipv6 ? "[%s]" : "%s", config.host);
	kobo_json_escape(data, sizeof(data), postgres ? "(postgres)" : config.data_dir);
	char host_escaped[700];
	kobo_json_escape(host_escaped, sizeof(host_escaped), host);
	uint16_t port = kobo_http_server_port(server);
	kobo_log(KOBO_LOG_INFO, "ready",
	         "\"listen\":\"http://%s:%u\",\"data\":\"%s\",\"shards\":%u,\"pid\":%ld",
	         host_escaped, (unsigned)port, data, shard_count, (long)getpid());
	printf("kobod ready on http://%s:%u\n", host, (unsigned)port);
	fflush(stdout);

	struct signalfd_siginfo info;
	for (;;) {
		ssize_t n = read(signal_fd, &info, sizeof(info));
		if (n == (ssize_t)sizeof(info))
			break;
		if (n < 0 && errno != EINTR) {
			log_failure("signal_wait_failed", "signalfd", strerror(errno));
			break;
		}
	}
	kobo_log(KOBO_LOG_INFO, "draining", "\"signal\":%u,\"in_flight\":%zu",
	         info.ssi_signo, kobo_http_server_in_flight(server));
	exit_code = 0;

out:
	/* Order matters: no new writes; the runner answers its waiters and
	 * collects the steps it has out; the shards commit and answer what is
	 * queued (their doorbells are ignored now: the next start's scan
	 * resumes those sagas); then the connections (their answers read the
	 * shards' commit tokens, so the shards are freed only after), the
	 * runner, the shards, the stores. */
	if (server)
		kobo_http_server_drain(server);
	if (runner)
		kobo_saga_runner_stop(runner);
	for (uint32_t i = 0; i < shard_count; i++)
		if (shards[i])
			kobo_shard_quiesce(shards[i]);
	if (server)
		kobo_http_server_stop(server, DRAIN_WAIT_MS);
	kobo_otlp_stop(OTLP_STOP_MS); /* the spans of the last answers */
	if (runner)
		kobo_saga_runner_destroy(runner);
	kobo_keyring_stop(keyring); /* its reader before the store closes */
	for (uint32_t i = 0; i < shard_count; i++)
		if (shards[i])
			kobo_shard_stop(shards[i]);
	for (uint32_t i = 0; i < shard_count; i++)
		if (stores[i])
			kobo_store_close(stores[i]);
	if (exit_code == 0)
		kobo_log(KOBO_LOG_INFO, "stopped", NULL);
	if (lock_fd >= 0)
		close(lock_fd);
	close(signal_fd);
	return exit_code;
}
