/*
 * clock.c — wall and monotonic clocks, and the one timestamp format Kobo
 * writes (RFC 3339, UTC, milliseconds). Contract in obs.h.
 *
 * The formatter converts days to a civil date itself (Howard Hinnant's
 * days_from_civil inverse) instead of calling gmtime_r: it is pure, needs no
 * time-zone state, and works for any int64_t input, which is clamped to the
 * years 0000..9999 so the output is always exactly 24 characters.
 *
 * Two clocks, two jobs. The wall clock (CLOCK_REALTIME) may be stepped
 * backwards or forwards by an administrator or NTP: it is only for
 * timestamps that are stored or shown, and for comparing them (a hold's
 * expires_at). Every wait, timer, retry and age Kobo measures runs on the
 * monotonic clock, which never jumps: a timer on the wall clock stalls for
 * as long as the clock was stepped back.
 */
#include <pthread.h>
#include <time.h>

#include "obs.h"

/* 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z in epoch ms. */
#define EPOCH_MS_MIN (-62167219200000LL)
#define EPOCH_MS_MAX (253402300799999LL)

/* Writes value (0 <= value < 10^width) as exactly width decimal digits. */
static void put_digits(char *dst, int64_t value, int width)
{
	for (int i = width - 1; i >= 0; i--) {
		dst[i] = (char)('0' + value % 10);
		value /= 10;
	}
}

char *kobo_format_time_ms(char *dst, int64_t epoch_ms)
{
	if (epoch_ms < EPOCH_MS_MIN)
		epoch_ms = EPOCH_MS_MIN;
	if (epoch_ms > EPOCH_MS_MAX)
		epoch_ms = EPOCH_MS_MAX;

	/* Floor division, so times before 1970 split correctly. */
	int64_t ms_per_day = 86400000;
	int64_t days = epoch_ms / ms_per_day;
	int64_t ms_of_day = epoch_ms % ms_per_day;
	if (ms_of_day < 0) {
		ms_of_day += ms_per_day;
		days -= 1;
	}

	/* civil_from_days: eras of 400 years starting on 0000-03-01. */
	int64_t z = days + 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	int64_t doe = z - era * 146097;                                 /* [0, 146096] */
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* [0, 399] */
	int64_t year = yoe + era * 400;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);          /* [0, 365] */
	int64_t mp = (5 * doy + 2) / 153;                               /* [0, 11] */
	int64_t day = doy - (153 * mp + 2) / 5 + 1;                     /* [1, 31] */
	int64_t month = mp < 10 ? mp + 3 : mp - 9;                      /* [1, 12] */
	if (month <= 2)
		year += 1;

	int64_t fields[] = {year, month, day, ms_of_day / 3600000, ms_of_day / 60000 % 60,
	                    ms_of_day / 1000 % 60, ms_of_day % 1000};
	static const int widths[] = {4, 2, 2, 2, 2, 2, 3};
	static const char separators[] = "--T::.Z"; /* after each field */
	char *p = dst;
	for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++) {
		put_digits(p, fields[i], widths[i]);
		p += widths[i];
		*p++ = separators[i];
	}
	*p = '\0';
	return dst;
}

int64_t kobo_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t kobo_monotonic_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

struct timespec kobo_deadline_after_ms(int64_t wait_ms)
{
	struct timespec deadline;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += wait_ms / 1000;
	deadline.tv_nsec += (wait_ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	return deadline;
}

int kobo_cond_init_monotonic(pthread_cond_t *cond)
{
	pthread_condattr_t attr;
	int rc = pthread_condattr_init(&attr);
	if (rc != 0)
		return rc;
	rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	if (rc == 0)
		rc = pthread_cond_init(cond, &attr);
	pthread_condattr_destroy(&attr);
	return rc;
}
