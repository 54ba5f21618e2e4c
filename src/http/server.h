/*
 * server.h — Kobo's HTTP server: libmicrohttpd in poll mode in front of the
 * shard writers.
 *
 * Lifecycle:
 *
 *   kobo_http_server_start()   listen and serve (reads on the HTTP threads,
 *                              writes through the shards' queues)
 *   kobo_http_server_drain()   stop accepting connections, answer new writes
 *                              503 and /readyz 503; after it returns no
 *                              thread is inside kobo_shard_submit, so the
 *                              caller may now kobo_shard_quiesce() every
 *                              shard (which answers everything queued)
 *   kobo_http_server_stop()    wait (bounded) until every answered request
 *                              has been sent, then close connections, read
 *                              connections and free the server
 *
 * The server borrows the shards and stores; they must outlive it (a shard
 * is freed, kobo_shard_stop, only after kobo_http_server_stop: the answers
 * the shards give while quiescing are sent by HTTP threads that read the
 * shard's commit token for their Kobo-Consistency-Token header).
 */
#ifndef KOBO_HTTP_SERVER_H
#define KOBO_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "../auth/keyring.h"
#include "../saga/saga.h"
#include "../shard/shard.h"
#include "../store/store.h"

#define KOBO_HTTP_CONNECTION_TIMEOUT_S_DEFAULT 30
#define KOBO_HTTP_CONNECTIONS_MAX_DEFAULT 1024
/* libmicrohttpd's per-connection pool: request line, headers (API.md: up to
 * 16 KiB are read; tests/system/test_limits.py) and the body's read buffer.
 * It zeroes the whole pool after every request (MHD_pool_reset), so its size
 * is paid per request: 64 KiB was 20 % of the HTTP thread's CPU
 * (docs/benchmarks.md, 2026-12-02 HTTP front end). */
#define KOBO_HTTP_CONNECTION_MEMORY_DEFAULT (32u * 1024)
#define KOBO_HTTP_THREADS_DEFAULT 1
#define KOBO_HTTP_THREADS_MAX 64
/* Request memory all connections may hold at once: bodies (announced by
 * Content-Length or received chunked) and, for batches, the per-transfer
 * state a body expands into (ops, results, the per-shard split copy and
 * the encoded reply: ~1.3 KB a transfer on one shard, ~3.5 KB split, so
 * a small 8,190-transfer body stands for 10-30 MB). Past it a request gets
 * 503 overloaded with Retry-After: 1,024 connections × 8 MiB batch bodies
 * would otherwise pin 8 GiB, and their per-transfer state ~3 GB more. */
#define KOBO_HTTP_BODIES_BYTES_MAX (128u << 20)
/* How long a write waits for its cross-shard saga before answering 202. */
#define KOBO_HTTP_SAGA_WAIT_MS_DEFAULT 5000

/* A trusted proxy's network (--trusted-proxy): IPv4 or IPv6 and a prefix
 * length. Parsed by kobo_http_cidr_parse (limits.c). */
#define KOBO_HTTP_TRUSTED_PROXIES_MAX 64
/* Keys the per-key limit tracks: a power of two above KOBO_KEYS_MAX. */
#define KOBO_HTTP_KEY_LIMIT_SLOTS 16384u
_Static_assert(KOBO_HTTP_KEY_LIMIT_SLOTS >= KOBO_KEYS_MAX,
               "the per-key limit has a slot for every live key");
typedef struct kobo_http_cidr {
	int family;        /* AF_INET or AF_INET6 */
	uint8_t addr[16];  /* network order; the first 4 bytes for IPv4 */
	unsigned prefix;   /* 0..32 or 0..128 */
} kobo_http_cidr;

/* "10.0.0.0/8", "::1/128", or an address alone (all its bits). Host bits
 * past the prefix must be zero. Returns KOBO_OK with *out, or KOBO_EINVAL. */
int kobo_http_cidr_parse(const char *text, kobo_http_cidr *out);

typedef struct kobo_http_server kobo_http_server;

typedef struct kobo_http_config {
	const char *host;  /* numeric address or name to listen on; NULL: 127.0.0.1 */
	uint16_t port;     /* 0: any free port (see kobo_http_server_port) */
	/* shard_count shards and their stores, borrowed: shards[i] writes to
	 * stores[i]; reads open a connection on stores[i] per HTTP thread. */
	kobo_shard *const *shards;
	kobo_store *const *stores;
	uint32_t shard_count;                  /* 1..KOBO_SHARDS_MAX */
	const kobo_shard_map *map;             /* borrowed; shard_count shards */
	/* Read replicas (kobod --postgres-read): NULL, or shard_count URLs
	 * (an entry NULL: that shard has none). GETs read them (replicas.c);
	 * the server opens and closes them. */
	const char *const *replica_urls;
	/* Drives cross-shard sagas; borrowed. NULL: one shard, no sagas. */
	kobo_saga_runner *runner;
	unsigned saga_wait_ms;                 /* 0: default 5,000 */
	unsigned connection_timeout_s;         /* idle timeout; 0: default 30 */
	unsigned connections_max;              /* 0: default 1024 */
	size_t connection_memory_bytes;        /* 0: default 32 KiB */
	unsigned threads;                      /* 0: default 1 */
	/* Per-client-IP rate limit (limits.c): ip_rate requests/s sustained,
	 * ip_burst at once; ip_rate 0: off. The client IP is the peer, or the
	 * last X-Forwarded-For hop when the peer is in trusted_proxies. */
	double ip_rate;
	uint32_t ip_burst;
	const kobo_http_cidr *trusted_proxies; /* copied at start */
	size_t trusted_proxy_count;            /* <= KOBO_HTTP_TRUSTED_PROXIES_MAX */
	/* API keys (auth.c): the live keys to check requests against
	 * (borrowed; it must outlive the server). NULL: --auth off, no
	 * request needs a key, and the two fields below must be unset. */
	kobo_keyring *keyring;
	bool metrics_auth;      /* /metrics needs an admin key */
	/* Per-key rate limit: key_rate requests/s sustained, key_burst at
	 * once, keyed by the key id; key_rate 0: off. */
	double key_rate;
	uint32_t key_burst;
} kobo_http_config;

/* Reads an Authorization header's value: "Bearer" (any case), exactly one
 * space, then a token of 1 or more visible ASCII characters (0x21..0x7e),
 * nothing else, at most KOBO_HTTP_AUTHORIZATION_LEN_MAX bytes in all.
 * KOBO_OK with *token / *token_len locating the token inside value, or
 * KOBO_EINVAL (another scheme, no or two spaces, an empty token, two
 * tokens, a control or non-ASCII byte, too long). Pure (auth.c). */
#define KOBO_HTTP_AUTHORIZATION_LEN_MAX 1024
int kobo_http_bearer_parse(const char *value, size_t len, const char **token,
                           size_t *token_len);

/* Binds and starts serving. Returns KOBO_OK with *out (owned by the caller
 * until kobo_http_server_stop), KOBO_EINVAL for a bad config or an address
 * that does not resolve, KOBO_ENOMEM, or KOBO_ESTORE when the socket could
 * not be bound (logged with the reason). */
int kobo_http_server_start(const kobo_http_config *config, kobo_http_server **out);

/* The port actually bound (useful with port 0). */
uint16_t kobo_http_server_port(const kobo_http_server *server);

/* Begins a graceful shutdown (see the lifecycle above). Idempotent. */
void kobo_http_server_drain(kobo_http_server *server);

/* Number of requests received and not yet fully answered. Thread-safe. */
size_t kobo_http_server_in_flight(const kobo_http_server *server);

/* Waits up to wait_ms for in-flight requests to be answered, then stops
 * libmicrohttpd, closes the per-thread store readers and frees the server.
 * Every shard must have been stopped (or never fed) by then: a request
 * still suspended on a shard would never be resumed. */
void kobo_http_server_stop(kobo_http_server *server, unsigned wait_ms);

#endif /* KOBO_HTTP_SERVER_H */
