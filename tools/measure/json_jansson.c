/*
 * json_jansson.c — parse + extract of one transfer body with jansson, and how it treats
 * money-relevant input. Not part of the product: `make measure-libs` runs it
 * (docs/benchmarks.md). One file per library: jansson and json-c headers collide.
 */
#include <jansson.h>

#include "json_harness.h"

static void bench_jansson(void)
{
	double t0 = now_s();
	for (int i = 0; i < ROUNDS; i++) {
		json_t *o = json_loadb(body, sizeof(body) - 1, JSON_REJECT_DUPLICATES, NULL);
		sink += strlen(json_string_value(json_object_get(o, "id")));
		sink += strlen(json_string_value(json_object_get(o, "from")));
		sink += strlen(json_string_value(json_object_get(o, "to")));
		sink += json_integer_value(json_object_get(o, "amount"));
		sink += strlen(json_string_value(json_object_get(o, "currency")));
		sink += json_is_true(json_object_get(o, "pending"));
		json_decref(o);
	}
	printf("| jansson %s | %.2f |", JANSSON_VERSION, (now_s() - t0) / ROUNDS * 1e6);
	json_t *o = json_loads("{\"a\":9007199254740993}", 0, NULL);
	printf(" 2^53+1 → %lld;", (long long)json_integer_value(json_object_get(o, "a")));
	json_decref(o);
	json_error_t e;
	o = json_loads("{\"a\":18446744073709551617}", 0, &e);
	printf(" 2^64+1 → %s;", o ? "accepted" : "rejected");
	json_decref(o);
	o = json_loads("{\"a\":1,\"a\":2}", JSON_REJECT_DUPLICATES, &e);
	printf(" duplicate keys → %s;", o ? "accepted" : "rejected");
	json_decref(o);
	o = json_loads("{\"a\":\"\xff\"}", 0, &e);
	printf(" invalid UTF-8 → %s |\n", o ? "accepted" : "rejected");
	json_decref(o);
}

int main(void)
{
	bench_jansson();
	return sink == 42;
}
