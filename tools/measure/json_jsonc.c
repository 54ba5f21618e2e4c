/*
 * json_jsonc.c — parse + extract of one transfer body with json-c, and how it treats
 * money-relevant input. Not part of the product: `make measure-libs` runs it
 * (docs/benchmarks.md). One file per library: jansson and json-c headers collide.
 */
#include <json-c/json.h>

#include "json_harness.h"

static void bench_jsonc(void)
{
	double t0 = now_s();
	for (int i = 0; i < ROUNDS; i++) {
		json_object *o = json_tokener_parse(body), *v;
		json_object_object_get_ex(o, "id", &v); sink += strlen(json_object_get_string(v));
		json_object_object_get_ex(o, "from", &v); sink += strlen(json_object_get_string(v));
		json_object_object_get_ex(o, "to", &v); sink += strlen(json_object_get_string(v));
		json_object_object_get_ex(o, "amount", &v); sink += json_object_get_int64(v);
		json_object_object_get_ex(o, "currency", &v); sink += strlen(json_object_get_string(v));
		json_object_object_get_ex(o, "pending", &v); sink += json_object_get_boolean(v);
		json_object_put(o);
	}
	printf("| json-c %s | %.2f |", JSON_C_VERSION, (now_s() - t0) / ROUNDS * 1e6);
	json_object *o = json_tokener_parse("{\"a\":9007199254740993}"), *v;
	json_object_object_get_ex(o, "a", &v);
	printf(" 2^53+1 → %lld;", (long long)json_object_get_int64(v));
	json_object_put(o);
	o = json_tokener_parse("{\"a\":18446744073709551617}");
	json_object_object_get_ex(o, "a", &v);
	printf(" 2^64+1 → %s (int64 read %lld);", o ? "accepted" : "rejected",
	       o ? (long long)json_object_get_int64(v) : 0);
	json_object_put(o);
	o = json_tokener_parse("{\"a\":1,\"a\":2}");
	json_object_object_get_ex(o, "a", &v);
	printf(" duplicate keys → %s (a=%d);", o ? "accepted" : "rejected", json_object_get_int(v));
	json_object_put(o);
	o = json_tokener_parse("{\"a\":\"\xff\"}");
	printf(" invalid UTF-8 → %s |\n", o ? "accepted" : "rejected");
	json_object_put(o);
}

int main(void)
{
	bench_jsonc();
	return sink == 42;
}
