/*
 * fuzz_events.c — libFuzzer target for the paging of a payment's journey
 * (GET /v1/transfers/{id}/events): the query validator with its cursor
 * parser, and the paged merge the cursor resumes (src/ledger/events.h).
 *
 * The first byte picks what runs, the rest is its input:
 *   even  "key=value&…" to kobo_http_events_query_arg. Whatever it accepts
 *         is within bounds, and an accepted cursor formats back to a text
 *         that parses to the same position.
 *   odd   two shards' events, 3 bytes each (bit 0 of the first: which
 *         shard, the rest: kind, time step and a tie-prone clock), and a
 *         page size: the pages laid end to end, each read as the endpoint
 *         reads (limit + 1 after the position), must be the whole merge.
 * Must never crash, leak or trip a sanitizer; a wrong answer aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/http/codec.h"

#define EVENTS_MAX 256

static void fuzz_query(char *text)
{
	kobo_http_history_query query;
	kobo_http_error err;
	kobo_http_history_query_init(&query);
	char *save = NULL;
	for (char *arg = strtok_r(text, "&", &save); arg; arg = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(arg, '=');
		if (eq)
			*eq = '\0';
		if (kobo_http_events_query_arg(&query, arg, eq ? eq + 1 : NULL, &err) != KOBO_OK) {
			if (err.status != 400 || strcmp(err.code, "invalid_request") != 0)
				abort();
			return;
		}
	}
	if (query.has_limit && (query.limit < 1 || query.limit > KOBO_HTTP_EVENTS_LIMIT_MAX))
		abort();
	if (!query.has_after)
		return;
	const kobo_events_position *pos = &query.events_after;
	if (pos->after_seq[0] < 0 || pos->after_seq[1] < 0)
		abort();
	char cursor[KOBO_HTTP_EVENTS_CURSOR_LEN_MAX + 1];
	size_t len = kobo_http_events_cursor_format(cursor, pos);
	if (len != strlen(cursor))
		abort();
	kobo_http_history_query again;
	kobo_http_history_query_init(&again);
	if (kobo_http_events_query_arg(&again, "after", cursor, &err) != KOBO_OK ||
	    again.events_after.after_seq[0] != pos->after_seq[0] ||
	    again.events_after.after_seq[1] != pos->after_seq[1] ||
	    again.events_after.after_ask != pos->after_ask)
		abort();
}

static size_t after_seq(const kobo_event *list, size_t len, int64_t after, size_t max,
                        const kobo_event **from)
{
	size_t i = 0;
	while (i < len && list[i].seq <= after)
		i++;
	*from = list + i;
	return len - i < max ? len - i : max;
}

static kobo_event lists_store[2][EVENTS_MAX];
static kobo_event whole[2 * EVENTS_MAX], paged[2 * EVENTS_MAX];

static void fuzz_merge(const uint8_t *data, size_t size)
{
	if (size < 1)
		return;
	size_t limit = 1 + data[0] % 16;
	data++;
	size--;
	size_t lens[2] = {0, 0};
	int64_t seq[2] = {0, 0};
	int64_t t = 0;
	for (size_t i = 0; i + 3 <= size; i += 3) {
		size_t shard = data[i] & 1;
		if (lens[shard] == EVENTS_MAX)
			continue;
		kobo_event *e = &lists_store[shard][lens[shard]];
		memset(e, 0, sizeof *e);
		e->kind = (kobo_event_kind)(data[i + 1] % KOBO_EVENT_KIND_COUNT);
		e->leg = shard == 0 ? ((data[i] & 2) ? KOBO_LEG_LOCAL : KOBO_LEG_DEBIT)
		                    : KOBO_LEG_CREDIT;
		t += data[i + 2] % 3; /* often 0: ties */
		e->at_ms = t;
		/* Rising, with gaps: other transfers' events between. */
		seq[shard] += 1 + (int64_t)(data[i] >> 4);
		e->seq = seq[shard];
		lens[shard]++;
	}
	const kobo_event *lists[2] = {lists_store[0], lists_store[1]};
	size_t total = kobo_events_merge(lists, lens, 2, whole);
	if (total != lens[0] + lens[1])
		abort();
	kobo_events_position pos;
	memset(&pos, 0, sizeof pos);
	size_t got = 0;
	bool more = true;
	while (more) {
		const kobo_event *from[2];
		size_t cut[2];
		cut[0] = after_seq(lists_store[0], lens[0], pos.after_seq[0], limit + 1, &from[0]);
		cut[1] = after_seq(lists_store[1], lens[1], pos.after_seq[1], limit + 1, &from[1]);
		size_t n = kobo_events_merge_page(from, cut, 2, limit, &pos, paged + got, &more);
		if (n > limit || (more && n != limit) || got + n > total)
			abort();
		got += n;
		if (n == 0 && more)
			abort(); /* no progress */
	}
	if (got != total)
		abort();
	for (size_t i = 0; i < total; i++)
		if (paged[i].seq != whole[i].seq || paged[i].leg != whole[i].leg ||
		    paged[i].kind != whole[i].kind)
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] & 1) {
		fuzz_merge(data + 1, size - 1);
		return 0;
	}
	char *input = malloc(size);
	if (!input)
		return 0;
	memcpy(input, data + 1, size - 1);
	input[size - 1] = '\0';
	fuzz_query(input);
	free(input);
	return 0;
}
