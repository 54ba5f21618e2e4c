/*
 * json_cjson.c — parse + extract of one transfer body with cJSON, and how it treats
 * money-relevant input. Not part of the product: `make measure-libs` runs it
 * (docs/benchmarks.md). One file per library: jansson and json-c headers collide.
 */
#include <cjson/cJSON.h>

#include "json_harness.h"

static void bench_cjson(void)
{
	double t0 = now_s();
	for (int i = 0; i < ROUNDS; i++) {
		cJSON *o = cJSON_ParseWithLength(body, sizeof(body) - 1);
		sink += strlen(cJSON_GetObjectItemCaseSensitive(o, "id")->valuestring);
		sink += strlen(cJSON_GetObjectItemCaseSensitive(o, "from")->valuestring);
		sink += strlen(cJSON_GetObjectItemCaseSensitive(o, "to")->valuestring);
		sink += (long long)cJSON_GetObjectItemCaseSensitive(o, "amount")->valuedouble;
		sink += strlen(cJSON_GetObjectItemCaseSensitive(o, "currency")->valuestring);
		sink += cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "pending"));
		cJSON_Delete(o);
	}
	printf("| cJSON %d.%d.%d | %.2f |", CJSON_VERSION_MAJOR, CJSON_VERSION_MINOR,
	       CJSON_VERSION_PATCH, (now_s() - t0) / ROUNDS * 1e6);
	cJSON *o = cJSON_Parse("{\"a\":9007199254740993}");
	printf(" 2^53+1 → %.0f (a double);", cJSON_GetObjectItem(o, "a")->valuedouble);
	cJSON_Delete(o);
	o = cJSON_Parse("{\"a\":1,\"a\":2}");
	printf(" duplicate keys → %s (a=%d);", o ? "accepted" : "rejected",
	       cJSON_GetObjectItem(o, "a")->valueint);
	cJSON_Delete(o);
	o = cJSON_Parse("{\"a\":\"\xff\"}");
	printf(" invalid UTF-8 → %s |\n", o ? "accepted" : "rejected");
	cJSON_Delete(o);
}

int main(void)
{
	bench_cjson();
	return sink == 42;
}
