/*
 * gcra.h — rate limits by the generic cell rate algorithm (GCRA): one
 * theoretical arrival time (TAT) per key, no timer thread, no I/O. The
 * caller passes the clock (monotonic microseconds), so the module is pure
 * apart from its mutexes and tests drive time by hand.
 *
 * The rule. A limit is a rate R (requests per second, sustained) and a
 * burst B (requests admitted at once from idle). Each request of cost c
 * (c >= 1) moves its key's TAT to max(TAT, now) + c·T, T = 1/R (the
 * emission interval, whole microseconds, >= 1). It is allowed when that
 * new TAT is at most now + B·T; a refused request changes nothing. So an
 * idle key admits B requests at once, then one every T; a key idle for
 * B·T or longer is back to a full burst.
 *
 * What a decision carries (for the RateLimit-* and Retry-After headers):
 *   limit        B
 *   remaining    requests of cost 1 still admitted right now (after this
 *                one when allowed): floor((now + B·T − TAT) / T)
 *   reset_us     until the key is idle again (full burst): TAT − now, >= 0
 *   retry_after  refused only: until this request would be allowed:
 *                new TAT − (now + B·T) > 0
 *
 * Cost. A request costs 1. A batch of n transfers costs 1 + n / 100
 * (kobo_gcra_batch_cost: 1 for up to 99, 82 for the largest, 8,190) — a
 * batch saves the per-request overhead, so it is cheaper than n requests
 * but not free. A cost above B is taken as B (a batch larger than the
 * burst is admitted once the key is idle, never refused forever).
 *
 * The clock. now is the caller's monotonic clock. A now earlier than the
 * latest one a stripe has seen is taken as that latest one (a clock that
 * goes backwards is treated as not moving), so a stepped clock can neither
 * refill a key nor lock it out.
 *
 * The table. A fixed capacity (a power of two, >= KOBO_GCRA_WAYS, at most
 * KOBO_GCRA_KEYS_MAX), set-associative: a key's hash (kobo_hash_bytes)
 * picks a stripe (one mutex each, up to KOBO_GCRA_STRIPES) and in it a set
 * of KOBO_GCRA_WAYS slots; lookup and insert scan that set only, so a
 * request costs O(KOBO_GCRA_WAYS) whatever the load. A key not in its set
 * takes, in order: an empty slot; a slot whose TAT is past (an idle key
 * carries no state: forgetting it changes no decision); else the slot with
 * the oldest TAT in the set (the live key closest to idle). That last
 * fallback is the only approximation: the evicted key starts again with a
 * full burst. Memory never grows after create. Keys are compared byte for
 * byte (at most KOBO_GCRA_KEY_LEN_MAX bytes), not by hash alone.
 *
 * Thread safety: kobo_gcra_take may be called from any number of threads;
 * create and destroy are not concurrent with anything.
 *
 * Lifecycle: create → take* → destroy.
 */
#ifndef KOBO_LIMIT_GCRA_H
#define KOBO_LIMIT_GCRA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"

#define KOBO_GCRA_KEYS_DEFAULT 65536u   /* keys tracked by one table */
#define KOBO_GCRA_KEYS_MAX (1u << 24)
#define KOBO_GCRA_KEY_LEN_MAX 64        /* an IPv6 address text is <= 45 */
#define KOBO_GCRA_WAYS 8                /* slots scanned per request */
#define KOBO_GCRA_STRIPES 64            /* mutexes */
#define KOBO_GCRA_RATE_MIN 0.001        /* requests/s: one per 1,000 s */
#define KOBO_GCRA_RATE_MAX 1000000.0
#define KOBO_GCRA_BURST_MAX 1000000u
#define KOBO_GCRA_BATCH_DIVISOR 100     /* a batch of n costs 1 + n / 100 */

typedef struct kobo_gcra kobo_gcra;

typedef struct kobo_gcra_decision {
	bool allowed;
	uint32_t limit;          /* B */
	uint32_t remaining;      /* see above */
	int64_t reset_us;        /* see above */
	int64_t retry_after_us;  /* 0 when allowed */
} kobo_gcra_decision;

/* Creates an empty table.
 *   rate      requests per second, KOBO_GCRA_RATE_MIN..KOBO_GCRA_RATE_MAX.
 *   burst     1..KOBO_GCRA_BURST_MAX.
 *   capacity  keys tracked: a power of two, KOBO_GCRA_WAYS..KOBO_GCRA_KEYS_MAX.
 * Returns KOBO_OK with *out, KOBO_EINVAL (out of range, NaN), KOBO_ENOMEM. */
int kobo_gcra_create(double rate, uint32_t burst, uint32_t capacity, kobo_gcra **out);

/* Frees the table (NULL is fine). */
void kobo_gcra_destroy(kobo_gcra *gcra);

/* Charges cost (>= 1; above the burst taken as the burst) to key (len
 * bytes, 1..KOBO_GCRA_KEY_LEN_MAX, need not end in NUL) at now_us and fills
 * *d. Returns KOBO_OK, or KOBO_EINVAL (bad key length or cost 0; *d
 * untouched, nothing changes). */
int kobo_gcra_take(kobo_gcra *gcra, const char *key, size_t len, uint32_t cost,
                   int64_t now_us, kobo_gcra_decision *d);

/* The cost of a batch of n transfers: 1 + n / KOBO_GCRA_BATCH_DIVISOR. */
static inline uint32_t kobo_gcra_batch_cost(size_t n)
{
	return 1u + (uint32_t)(n / KOBO_GCRA_BATCH_DIVISOR);
}

/* Microseconds rounded up to whole seconds (0 stays 0). */
static inline int64_t kobo_gcra_seconds_up(int64_t us)
{
	return us <= 0 ? 0 : (us + 999999) / 1000000;
}

/* The burst and emission interval (microseconds) the table enforces. */
uint32_t kobo_gcra_burst(const kobo_gcra *gcra);
int64_t kobo_gcra_interval_us(const kobo_gcra *gcra);

/* Keys held, live or idle (for tests and metrics; takes every stripe's
 * lock in turn). */
uint32_t kobo_gcra_count(kobo_gcra *gcra);

#endif /* KOBO_LIMIT_GCRA_H */
