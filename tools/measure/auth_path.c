/*
 * auth_path.c — what authenticating one request costs kobod, measured
 * alone: kobo_keyring_authenticate (parse the bearer token, find its id in
 * the key ring under its lock, keyed BLAKE2b of the secret, constant-time
 * compare) over a ring of KEYS live keys on the mem store, THREADS threads
 * at once (kobod's HTTP threads), the keys used in turn. Prints ns per
 * check. A machine shared with other work inflates it; it never shrinks.
 *
 *   tools/measure/auth-path.sh [KEYS [CHECKS [THREADS]]]   (builds and runs this)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../src/auth/key.h"
#include "../../src/auth/keyring.h"
#include "../../src/store/store.h"

typedef struct worker {
	kobo_keyring *ring;
	char (*texts)[KOBO_KEY_TEXT_LEN + 1];
	size_t keys;
	size_t checks;
	size_t failures;
	size_t first;
} worker;

static void *run(void *arg)
{
	worker *w = arg;
	kobo_api_key rec;
	for (size_t i = 0; i < w->checks; i++) {
		const char *text = w->texts[(w->first + i) % w->keys];
		if (kobo_keyring_authenticate(w->ring, text, KOBO_KEY_TEXT_LEN, &rec) != KOBO_KEYRING_OK)
			w->failures++;
	}
	return NULL;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	size_t keys = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000;
	size_t checks = argc > 2 ? strtoul(argv[2], NULL, 10) : 1000000;
	size_t threads = argc > 3 ? strtoul(argv[3], NULL, 10) : 1;
	if (keys < 1 || keys > KOBO_KEYS_MAX || checks < 1 || threads < 1 || threads > 64) {
		fprintf(stderr, "usage: auth_path [KEYS 1..%d [CHECKS [THREADS 1..64]]]\n", KOBO_KEYS_MAX);
		return 2;
	}
	kobo_store *store = NULL;
	if (kobo_auth_init() != KOBO_OK || kobo_store_open("mem:", 0, false, &store) != KOBO_OK) {
		fprintf(stderr, "auth_path: cannot initialize libsodium or the mem store\n");
		return 1;
	}
	char (*texts)[KOBO_KEY_TEXT_LEN + 1] = calloc(keys, sizeof *texts);
	if (texts == NULL)
		return 1;
	for (size_t i = 0; i < keys; i++) {
		kobo_api_key rec;
		memset(&rec, 0, sizeof rec);
		snprintf(rec.name, sizeof rec.name, "k%zu", i);
		rec.scopes = KOBO_SCOPE_ADMIN;
		rec.created_at_ms = 1;
		kobo_key_generate(&rec, texts[i]);
		if (kobo_store_key_insert(store, &rec) != KOBO_OK) {
			fprintf(stderr, "auth_path: key_insert failed\n");
			return 1;
		}
	}
	kobo_keyring *ring = NULL;
	if (kobo_keyring_start(store, 0, &ring) != KOBO_OK) {
		fprintf(stderr, "auth_path: kobo_keyring_start failed\n");
		return 1;
	}
	worker *ws = calloc(threads, sizeof *ws);
	pthread_t *tids = calloc(threads, sizeof *tids);
	if (ws == NULL || tids == NULL)
		return 1;
	double t0 = now_s();
	for (size_t t = 0; t < threads; t++) {
		ws[t] = (worker){.ring = ring, .texts = texts, .keys = keys, .checks = checks,
		                 .first = t * 7919};
		pthread_create(&tids[t], NULL, run, &ws[t]);
	}
	size_t failures = 0;
	for (size_t t = 0; t < threads; t++) {
		pthread_join(tids[t], NULL);
		failures += ws[t].failures;
	}
	double elapsed = now_s() - t0;
	kobo_keyring_stop(ring);
	kobo_store_close(store);
	double total = (double)checks * (double)threads;
	printf("{\"keys\":%zu,\"threads\":%zu,\"checks\":%.0f,\"failures\":%zu,\"elapsed_s\":%.3f,"
	       "\"ns_per_check\":%.0f,\"checks_per_s\":%.0f}\n", keys, threads, total, failures,
	       elapsed, elapsed / total * 1e9 * (double)threads, total / elapsed);
	free(ws);
	free(tids);
	free(texts);
	return failures == 0 ? 0 : 1;
}
