/*
 * core.c — the status names and the assertion reporter of core.h.
 */
#include <stdio.h>
#include <stdlib.h>

#include "core.h"

const char *kobo_status_name(int status)
{
	switch (status) {
	case KOBO_OK: return "ok";
	case KOBO_ENOMEM: return "out_of_memory";
	case KOBO_EFULL: return "full";
	case KOBO_EINVAL: return "invalid";
	case KOBO_ESTORE: return "store_failed";
	case KOBO_EFAILED: return "store_sticky_failed";
	case KOBO_EOVERLOADED: return "overloaded";
	case KOBO_ENOTFOUND: return "not_found";
	case KOBO_ESHUTDOWN: return "shutting_down";
	case KOBO_ECONFLICT: return "conflict";
	case KOBO_ECONNLOST: return "connection_lost";
	case KOBO_EUNKNOWN: return "outcome_unknown";
	case KOBO_ECAPACITY: return "capacity_exhausted";
	}
	return "unknown_status";
}

void kobo__assert_fail(const char *what, const char *file, int line)
{
	fprintf(stderr, "assertion failed: %s (%s:%d)\n", what, file, line);
	fflush(stderr);
	abort();
}
