/*
 * gcra.c — the GCRA table of gcra.h: stripes of sets of KOBO_GCRA_WAYS
 * slots, one mutex per stripe.
 *
 * Invariants (under the stripe's mutex):
 *   1. A slot is empty (len 0) or holds one key, and a key is in at most
 *      one slot: the set its hash names.
 *   2. stripe->clock_us never decreases; decisions use max(now, clock_us).
 *   3. A refused take changes no TAT.
 */
#include "gcra.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct slot {
	int64_t tat_us;
	uint64_t hash;
	uint8_t len; /* 0: empty */
	char key[KOBO_GCRA_KEY_LEN_MAX];
} slot;

typedef struct stripe {
	pthread_mutex_t lock;
	int64_t clock_us; /* the latest now seen (invariant 2) */
	slot *slots;      /* sets_per_stripe × KOBO_GCRA_WAYS */
} stripe;

struct kobo_gcra {
	int64_t interval_us; /* T */
	int64_t tolerance_us; /* B·T */
	uint32_t burst;
	uint32_t stripe_count;    /* power of two */
	uint32_t sets_per_stripe; /* power of two */
	stripe *stripes;
	slot *slots;
};

int kobo_gcra_create(double rate, uint32_t burst, uint32_t capacity, kobo_gcra **out)
{
	if (!out || !(rate >= KOBO_GCRA_RATE_MIN && rate <= KOBO_GCRA_RATE_MAX) ||
	    burst < 1 || burst > KOBO_GCRA_BURST_MAX || capacity < KOBO_GCRA_WAYS ||
	    capacity > KOBO_GCRA_KEYS_MAX || (capacity & (capacity - 1)) != 0)
		return KOBO_EINVAL;
	kobo_gcra *g = calloc(1, sizeof(*g));
	if (!g)
		return KOBO_ENOMEM;
	g->interval_us = (int64_t)llround(1e6 / rate);
	if (g->interval_us < 1)
		g->interval_us = 1;
	g->burst = burst;
	g->tolerance_us = (int64_t)burst * g->interval_us; /* <= 1e6 × 1e9 */
	uint32_t sets = capacity / KOBO_GCRA_WAYS;
	g->stripe_count = sets < KOBO_GCRA_STRIPES ? sets : KOBO_GCRA_STRIPES;
	g->sets_per_stripe = sets / g->stripe_count;
	g->stripes = calloc(g->stripe_count, sizeof(*g->stripes));
	g->slots = calloc(capacity, sizeof(*g->slots));
	if (!g->stripes || !g->slots) {
		free(g->stripes);
		free(g->slots);
		free(g);
		return KOBO_ENOMEM;
	}
	for (uint32_t i = 0; i < g->stripe_count; i++) {
		g->stripes[i].slots = g->slots + (size_t)i * g->sets_per_stripe * KOBO_GCRA_WAYS;
		g->stripes[i].clock_us = INT64_MIN;
		pthread_mutex_init(&g->stripes[i].lock, NULL);
	}
	*out = g;
	return KOBO_OK;
}

void kobo_gcra_destroy(kobo_gcra *g)
{
	if (!g)
		return;
	for (uint32_t i = 0; i < g->stripe_count; i++)
		pthread_mutex_destroy(&g->stripes[i].lock);
	free(g->stripes);
	free(g->slots);
	free(g);
}

uint32_t kobo_gcra_burst(const kobo_gcra *g) { return g->burst; }
int64_t kobo_gcra_interval_us(const kobo_gcra *g) { return g->interval_us; }

/* The key's slot in set (found, or the one to take: empty, idle, else the
 * oldest TAT); *found says which. */
static slot *find_slot(slot *set, uint64_t hash, const char *key, size_t len,
                       int64_t now, bool *found)
{
	slot *victim = NULL;
	for (int i = 0; i < KOBO_GCRA_WAYS; i++) {
		slot *s = &set[i];
		if (s->len == len && s->hash == hash && memcmp(s->key, key, len) == 0) {
			*found = true;
			return s;
		}
		/* Preference: empty, then idle (TAT <= now), then oldest TAT. */
		if (!victim) {
			victim = s;
			continue;
		}
		bool s_free = s->len == 0 || s->tat_us <= now;
		bool v_free = victim->len == 0 || victim->tat_us <= now;
		if (s->len == 0 && victim->len != 0)
			victim = s;
		else if (s_free && !v_free)
			victim = s;
		else if (!s_free && !v_free && s->tat_us < victim->tat_us)
			victim = s;
	}
	*found = false;
	return victim;
}

int kobo_gcra_take(kobo_gcra *g, const char *key, size_t len, uint32_t cost,
                   int64_t now_us, kobo_gcra_decision *d)
{
	if (!key || len < 1 || len > KOBO_GCRA_KEY_LEN_MAX || cost < 1 || !d)
		return KOBO_EINVAL;
	if (cost > g->burst)
		cost = g->burst;
	uint64_t hash = kobo_hash_bytes(key, len, 0);
	stripe *st = &g->stripes[hash & (g->stripe_count - 1)];
	uint32_t set_index = (uint32_t)(hash >> 32) & (g->sets_per_stripe - 1);
	slot *set = st->slots + (size_t)set_index * KOBO_GCRA_WAYS;

	pthread_mutex_lock(&st->lock);
	if (now_us < st->clock_us)
		now_us = st->clock_us; /* backwards: not moving (invariant 2) */
	st->clock_us = now_us;
	bool found;
	slot *s = find_slot(set, hash, key, len, now_us, &found);
	int64_t tat = found && s->tat_us > now_us ? s->tat_us : now_us;
	int64_t new_tat = tat + (int64_t)cost * g->interval_us;
	int64_t allow_at = new_tat - g->tolerance_us; /* earliest now allowing it */
	d->limit = g->burst;
	if (allow_at <= now_us) {
		if (!found) {
			s->hash = hash;
			s->len = (uint8_t)len;
			memcpy(s->key, key, len);
		}
		s->tat_us = new_tat;
		d->allowed = true;
		d->retry_after_us = 0;
		tat = new_tat;
	} else {
		/* Invariant 3: nothing stored (a new key is not even added). */
		d->allowed = false;
		d->retry_after_us = allow_at - now_us;
	}
	d->remaining = (uint32_t)((now_us + g->tolerance_us - tat) / g->interval_us);
	d->reset_us = tat - now_us;
	pthread_mutex_unlock(&st->lock);
	return KOBO_OK;
}

uint32_t kobo_gcra_count(kobo_gcra *g)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < g->stripe_count; i++) {
		stripe *st = &g->stripes[i];
		pthread_mutex_lock(&st->lock);
		for (size_t j = 0; j < (size_t)g->sets_per_stripe * KOBO_GCRA_WAYS; j++)
			n += st->slots[j].len != 0;
		pthread_mutex_unlock(&st->lock);
	}
	return n;
}
