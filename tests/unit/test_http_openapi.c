/*
 * test_http_openapi.c — docs/openapi.yaml says the same as the route table:
 * every route in src/http/routes.c appears under `paths:` with its method,
 * and every operation documented there is served.
 *
 * Runs from the repository root (as `make unit` does). The YAML is read
 * line by line: paths are the two-space-indented keys under `paths:`,
 * methods the four-space-indented keys under a path.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/http/routes.h"

#define OPERATIONS_MAX 64

typedef struct operation {
	char method[16]; /* upper case */
	char path[128];
} operation;

static size_t read_operations(operation *ops)
{
	FILE *file = fopen("docs/openapi.yaml", "r");
	if (!file)
		fail_msg("cannot open docs/openapi.yaml (run from the repository root)");
	char line[1024], path[128] = "";
	bool in_paths = false;
	size_t count = 0;
	while (fgets(line, sizeof(line), file)) {
		line[strcspn(line, "\r\n")] = '\0';
		if (line[0] && line[0] != ' ' && line[0] != '#') {
			in_paths = strcmp(line, "paths:") == 0;
			continue;
		}
		if (!in_paths)
			continue;
		if (strncmp(line, "  /", 3) == 0) {
			size_t len = strcspn(line + 2, ":");
			assert_true(len < sizeof(path));
			memcpy(path, line + 2, len);
			path[len] = '\0';
		} else if (strncmp(line, "    ", 4) == 0 && isalpha((unsigned char)line[4]) &&
		           path[0]) {
			static const char *const methods[] = { "get", "post", "put", "patch",
			                                       "delete", "head", "options" };
			size_t len = strcspn(line + 4, ":");
			for (size_t m = 0; m < sizeof(methods) / sizeof(methods[0]); m++) {
				if (len != strlen(methods[m]) || strncmp(line + 4, methods[m], len))
					continue;
				assert_true(count < OPERATIONS_MAX);
				for (size_t i = 0; i <= len; i++)
					ops[count].method[i] = (char)toupper((unsigned char)methods[m][i]);
				snprintf(ops[count].path, sizeof(ops[count].path), "%s", path);
				count++;
			}
		}
	}
	fclose(file);
	return count;
}

static void every_route_is_documented(void **state)
{
	(void)state;
	operation ops[OPERATIONS_MAX];
	size_t count = read_operations(ops);
	assert_true(count > 0);
	for (size_t r = 0; r < kobo_http_route_count; r++) {
		const kobo_http_route *route = &kobo_http_routes[r];
		bool found = false;
		for (size_t i = 0; i < count && !found; i++)
			found = strcmp(ops[i].method, route->method) == 0 &&
			        strcmp(ops[i].path, route->pattern) == 0;
		if (!found)
			fail_msg("route %s %s is not in docs/openapi.yaml", route->method,
			         route->pattern);
	}
}

static void every_documented_operation_is_served(void **state)
{
	(void)state;
	operation ops[OPERATIONS_MAX];
	size_t count = read_operations(ops);
	for (size_t i = 0; i < count; i++) {
		bool found = false;
		for (size_t r = 0; r < kobo_http_route_count && !found; r++)
			found = strcmp(ops[i].method, kobo_http_routes[r].method) == 0 &&
			        strcmp(ops[i].path, kobo_http_routes[r].pattern) == 0;
		if (!found)
			fail_msg("docs/openapi.yaml documents %s %s, which no route serves",
			         ops[i].method, ops[i].path);
	}
	assert_int_equal(count, kobo_http_route_count);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(every_route_is_documented),
		cmocka_unit_test(every_documented_operation_is_served),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
