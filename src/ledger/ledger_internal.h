/*
 * ledger_internal.h — private to src/ledger: the always-on assertion.
 *
 * A broken invariant in money code is a programmer error, and continuing
 * would persist a wrong balance. So unlike <assert.h> this check stays on in
 * release builds (Redis serverAssert, TIGER_STYLE): it prints what broke and
 * where, then aborts.
 */
#ifndef KOBO_LEDGER_INTERNAL_H
#define KOBO_LEDGER_INTERNAL_H

/* Prints "ledger assertion failed: <what> (<file>:<line>)" and aborts. */
_Noreturn void kobo__ledger_assert_fail(const char *what, const char *file,
                                        int line);

#define KOBO__LEDGER_ASSERT(condition)                                   \
	do {                                                             \
		if (!(condition))                                        \
			kobo__ledger_assert_fail(#condition, __FILE__,   \
			                         __LINE__);              \
	} while (0)

#endif /* KOBO_LEDGER_INTERNAL_H */
