/*
 * json_harness.h — what the JSON measurement programs (json_*.c) share: the
 * transfer body they parse, the round count and a clock. Each program
 * includes it once; not part of the product.
 */
#ifndef KOBO_MEASURE_JSON_HARNESS_H
#define KOBO_MEASURE_JSON_HARNESS_H

#include <stdio.h>
#include <string.h>
#include <time.h>

static const char body[] =
	"{\"id\":\"tx:000123456\",\"from\":\"wallet:42\",\"to\":\"wallet:77\","
	"\"amount\":2500,\"currency\":\"NGN\",\"pending\":false}";
enum { ROUNDS = 500000 };

/* Keeps the compiler from dropping the measured work. */
static long long sink;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

#endif
