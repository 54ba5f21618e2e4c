/*
 * edge.c — correlation ids and the per-request log line.
 *
 * Every request has a request id: the client's X-Request-Id when valid, else
 * 32 random hex digits from a per-thread xoshiro256** generator seeded from
 * getrandom(2) (no lock, no syscall per request). It is echoed on every
 * response, stored with every transfer and written in the http_request line.
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static _Thread_local uint64_t prng_state[4];
static _Thread_local bool prng_seeded;

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t prng_next(void)
{
	uint64_t *s = prng_state;
	uint64_t result = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

static void prng_seed(void)
{
	size_t got = 0;
	while (got < sizeof(prng_state)) {
		ssize_t n = getrandom((char *)prng_state + got, sizeof(prng_state) - got, 0);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	if (got < sizeof(prng_state)) {
		/* getrandom cannot fail on Linux ≥ 3.17 once seeded; still, never
		 * run with an all-zero state (xoshiro would output only zeros). */
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		prng_state[0] ^= (uint64_t)now.tv_nsec * 0x9e3779b97f4a7c15u;
		prng_state[1] ^= (uint64_t)now.tv_sec;
		prng_state[2] ^= (uint64_t)(uintptr_t)&got;
		prng_state[3] ^= 0x2545f4914f6cdd1du;
	}
	prng_seeded = true;
}

void kobo__http_new_request_id(char *out)
{
	static const char hex[] = "0123456789abcdef";
	if (!prng_seeded)
		prng_seed();
	for (int word = 0; word < 2; word++) {
		uint64_t bits = prng_next();
		for (int i = 0; i < 16; i++, bits >>= 4)
			out[word * 16 + i] = hex[bits & 15];
	}
	out[32] = '\0';
}

void kobo__http_log_request(const kobo_http_exchange *x, int status)
{
	int64_t latency_us = kobo_monotonic_us() - x->start_us;
	kobo_metrics_request(x->route, status, latency_us);
	if (!kobo_log_enabled(KOBO_LOG_INFO))
		return;
	const char *route = x->route < kobo_http_route_count
	                    ? kobo_http_routes[x->route].name : "unmatched";
	char method[40];
	kobo_json_escape(method, sizeof(method), x->method ? x->method : "");
	/* key_id: the API key's id (validated hex) once authenticated. */
	char key_field[16 + KOBO_KEY_ID_LEN] = "";
	if (x->key_id[0])
		snprintf(key_field, sizeof(key_field), ",\"key_id\":\"%s\"", x->key_id);
	if (x->trace_id[0])
		kobo_log(KOBO_LOG_INFO, "http_request",
		         "\"request_id\":\"%s\",\"trace_id\":\"%s\",\"method\":\"%s\","
		         "\"route\":\"%s\",\"status\":%d,\"latency_us\":%lld%s",
		         x->request_id, x->trace_id, method, route, status,
		         (long long)latency_us, key_field);
	else
		kobo_log(KOBO_LOG_INFO, "http_request",
		         "\"request_id\":\"%s\",\"method\":\"%s\",\"route\":\"%s\","
		         "\"status\":%d,\"latency_us\":%lld%s",
		         x->request_id, method, route, status, (long long)latency_us, key_field);
}
