/*
 * trace.c — `kobo trace ID [--logs DIR]`: the journey of a payment in one
 * timeline (API.md "The journey of a payment").
 *
 * ID is a transfer id or a request id; both are tried: the transfer's
 * events (GET /v1/transfers/{id}/events) when a transfer has that id, else
 * the events of every transfer the request created (GET
 * /v1/transfers?request_id=, every page). Printed oldest first: time,
 * +duration since the previous line, shard, node, event, transfer, request
 * id; consecutive replays of one transfer (client retries of its create)
 * print as one line, "replayed xN", with the time of the first and the
 * last; then each transfer's final state (GET /v1/transfers/{id}). --logs
 * DIR adds the JSON log lines of the files in DIR (several nodes) that
 * name one of those request ids, transfer ids or trace ids, merged in time
 * order. --json prints one object: {"id", "found_as", "events",
 * "transfers", "logs", "truncated"}, every event listed. Exit 1 when
 * nothing is found.
 *
 * A transfer's events come in pages ("next", TRACE_EVENTS_PAGE a page);
 * trace follows them to the end, within its bounds.
 *
 * Bounds: at most TRACE_TRANSFERS_MAX transfers of one request,
 * TRACE_EVENTS_MAX events (then it stops, says so on stderr and sets
 * "truncated": the timeline is never cut silently), TRACE_LOG_LINES_MAX
 * log lines (the oldest kept), each line at most TRACE_LOG_LINE_MAX bytes
 * (longer ones are skipped).
 */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define TRACE_TRANSFERS_MAX 1000
#define TRACE_EVENTS_PAGE 1000 /* the endpoint's largest page */
#define TRACE_EVENTS_MAX 100000
#define TRACE_LOG_LINES_MAX 100000
#define TRACE_LOG_LINE_MAX 65536

static void oom(void)
{
	fprintf(stderr, "kobo: out of memory\n");
	exit(KOBO_CLI_EXIT_FAILED);
}

/* GET path; *out the parsed body on 200, NULL on 404/400 (not found or not
 * an id); -1 when the server could not be asked or refused otherwise. */
static int get_json(kobo_cli *cli, const char *path, json_t **out)
{
	kobo_cli_response response;
	*out = NULL;
	if (kobo_cli_http_request(cli->http, "GET", path, NULL, &response) != 0)
		return -1;
	if (response.status == 404 || response.status == 400)
		return 0;
	if (response.status != 200) {
		kobo_cli_print_error(cli, &response);
		return -1;
	}
	*out = kobo_cli_parse_body(&response);
	return *out == NULL ? -1 : 0;
}

static char *escaped_path(kobo_cli *cli, const char *format, const char *value)
{
	char *escaped = kobo_cli_http_escape(cli->http, value);
	char *path = NULL;
	if (escaped == NULL || asprintf(&path, format, escaped) < 0)
		oom();
	free(escaped);
	return path;
}

/* Appends the events of transfer id to events, every page while fewer
 * than TRACE_EVENTS_MAX are held (then *truncated, and a line on stderr
 * naming where the rest starts); -1 on a failed request. */
static int add_events(kobo_cli *cli, const char *id, json_t *events, bool *found,
                      bool *truncated)
{
	char *cursor = NULL;
	for (;;) {
		char *base = escaped_path(cli, "/v1/transfers/%s/events", id);
		char *path = NULL;
		if (asprintf(&path, "%s?limit=%d%s%s", base, TRACE_EVENTS_PAGE,
		             cursor ? "&after=" : "", cursor ? cursor : "") < 0)
			oom();
		free(base);
		free(cursor);
		cursor = NULL;
		json_t *body;
		int rc = get_json(cli, path, &body);
		free(path);
		if (rc != 0 || body == NULL)
			return rc;
		json_t *data = json_object_get(body, "data");
		if (json_is_array(data)) {
			json_array_extend(events, data);
			*found = true;
		}
		const json_t *next = json_object_get(body, "next");
		if (json_is_string(next) && json_array_size(data) > 0) {
			if (json_array_size(events) < TRACE_EVENTS_MAX) {
				cursor = kobo_cli_http_escape(cli->http, json_string_value(next));
				if (cursor == NULL)
					oom();
			} else {
				*truncated = true;
				fprintf(stderr, "kobo: trace: stopped at %d events; the rest of %s's "
				        "start at GET /v1/transfers/%s/events?after=%s\n",
				        TRACE_EVENTS_MAX, id, id, json_string_value(next));
			}
		}
		json_decref(body);
		if (cursor == NULL)
			return 0;
	}
}

/* The ids of the transfers request_id created, every page, into ids. */
static int request_transfers(kobo_cli *cli, const char *request_id, json_t *ids)
{
	char *cursor = NULL;
	for (;;) {
		char *base = escaped_path(cli, "/v1/transfers?request_id=%s&limit=1000", request_id);
		char *path = NULL;
		if (asprintf(&path, "%s%s%s", base, cursor ? "&after=" : "", cursor ? cursor : "") < 0)
			oom();
		free(base);
		json_t *page;
		int rc = get_json(cli, path, &page);
		free(path);
		free(cursor);
		cursor = NULL;
		if (rc != 0 || page == NULL)
			return rc;
		json_t *data = json_object_get(page, "data");
		size_t i;
		json_t *t;
		json_array_foreach(data, i, t) {
			if (json_array_size(ids) < TRACE_TRANSFERS_MAX)
				json_array_append(ids, json_object_get(t, "id"));
		}
		const json_t *next = json_object_get(page, "next");
		if (json_is_string(next) && json_array_size(data) > 0 &&
		    json_array_size(ids) < TRACE_TRANSFERS_MAX)
			cursor = kobo_cli_http_escape(cli->http, json_string_value(next));
		json_decref(page);
		if (cursor == NULL)
			return 0;
	}
}

static const char *str(const json_t *object, const char *key)
{
	const char *s = json_string_value(json_object_get(object, key));
	return s ? s : "";
}

typedef struct timed {
	const char *at;
	size_t index;
	json_t *item;
} timed;

static int by_time_then_index(const void *a, const void *b)
{
	const timed *x = a, *y = b;
	int order = strcmp(x->at, y->at);
	return order ? order : (x->index > y->index) - (x->index < y->index);
}

/* Oldest first by key (ISO 8601 UTC with ms: sorts as text), stable:
 * O(n log n), as up to TRACE_EVENTS_MAX events or TRACE_LOG_LINES_MAX
 * lines may be sorted. */
static void sort_by_time(json_t *array, const char *key)
{
	size_t n = json_array_size(array);
	if (n < 2)
		return;
	timed *items = malloc(n * sizeof *items);
	if (items == NULL)
		oom();
	for (size_t i = 0; i < n; i++) {
		json_t *item = json_incref(json_array_get(array, i));
		items[i] = (timed){ .at = str(item, key), .index = i, .item = item };
	}
	qsort(items, n, sizeof *items, by_time_then_index);
	json_array_clear(array);
	for (size_t i = 0; i < n; i++)
		if (json_array_append_new(array, items[i].item) != 0)
			oom();
	free(items);
}

/* A set of strings: a JSON object's keys (hashed), so that gathering
 * every request id of a long journey stays linear. */
static bool in_set(const json_t *set, const char *value)
{
	return value[0] != '\0' && json_object_get(set, value) != NULL;
}

static void add_unique(json_t *set, const char *value)
{
	if (value[0] != '\0' && json_object_set_new(set, value, json_true()) != 0)
		oom();
}

/* The log lines of every file in dir naming one of the ids. */
static int read_logs(const char *dir, const json_t *keys, json_t *logs)
{
	DIR *d = opendir(dir);
	if (d == NULL) {
		fprintf(stderr, "kobo: trace: cannot open --logs %s\n", dir);
		return -1;
	}
	struct dirent *entry;
	char *line = NULL;
	size_t cap = 0;
	while ((entry = readdir(d)) != NULL) {
		if (entry->d_name[0] == '.')
			continue;
		char *path = NULL;
		if (asprintf(&path, "%s/%s", dir, entry->d_name) < 0)
			oom();
		FILE *f = fopen(path, "r");
		if (f != NULL) {
			ssize_t len;
			while ((len = getline(&line, &cap, f)) > 0) {
				if (len > TRACE_LOG_LINE_MAX || json_array_size(logs) >= TRACE_LOG_LINES_MAX)
					continue;
				json_t *obj = json_loads(line, 0, NULL);
				if (!json_is_object(obj)) {
					json_decref(obj);
					continue;
				}
				if (in_set(keys, str(obj, "request_id")) ||
				    in_set(keys, str(obj, "transfer_id")) ||
				    in_set(keys, str(obj, "trace_id"))) {
					json_object_set_new(obj, "file", json_string(entry->d_name));
					json_array_append(logs, obj);
				}
				json_decref(obj);
			}
			fclose(f);
		}
		free(path);
	}
	free(line);
	closedir(d);
	sort_by_time(logs, "ts");
	return 0;
}

static long long ms_between(const json_t *a, const json_t *b)
{
	return (long long)(json_integer_value(json_object_get(b, "at_ms")) -
	                   json_integer_value(json_object_get(a, "at_ms")));
}

/* How many events from index i on are replays of one transfer on one
 * shard in a row (1 when events[i] is not a replay): printed as one line. */
static size_t replay_run(const json_t *events, size_t i)
{
	const json_t *first = json_array_get(events, i);
	size_t n = 1;
	if (strcmp(str(first, "event"), "replayed") != 0)
		return 1;
	for (const json_t *e; (e = json_array_get(events, i + n)) != NULL; n++) {
		if (strcmp(str(e, "event"), "replayed") != 0 ||
		    strcmp(str(e, "transfer_id"), str(first, "transfer_id")) != 0 ||
		    json_integer_value(json_object_get(e, "shard")) !=
		    json_integer_value(json_object_get(first, "shard")))
			break;
	}
	return n;
}

static void print_timeline(const json_t *events, const json_t *logs, const json_t *transfers)
{
	size_t e = 0, l = 0;
	size_t ne = json_array_size(events), nl = json_array_size(logs);
	const json_t *prev = NULL;
	printf("%-24s %8s %5s  %-22s %-15s %-24s %s\n", "TIME", "+MS", "SHARD", "NODE", "EVENT",
	       "TRANSFER", "REQUEST_ID");
	while (e < ne || l < nl) {
		const json_t *ev = e < ne ? json_array_get(events, e) : NULL;
		const json_t *lg = l < nl ? json_array_get(logs, l) : NULL;
		if (ev && (!lg || strcmp(str(ev, "at"), str(lg, "ts")) <= 0)) {
			char plus[32] = "";
			if (prev)
				snprintf(plus, sizeof plus, "+%lld", ms_between(prev, ev));
			size_t run = replay_run(events, e);
			const json_t *last = json_array_get(events, e + run - 1);
			if (run > 1) {
				printf("%-24s %8s %5lld  %-22s %-15s %-24s x%zu, last at %s (%s)\n",
				       str(ev, "at"), plus,
				       (long long)json_integer_value(json_object_get(ev, "shard")),
				       str(ev, "node"), str(ev, "event"), str(ev, "transfer_id"), run,
				       str(last, "at"), str(last, "request_id"));
			} else {
				printf("%-24s %8s %5lld  %-22s %-15s %-24s %s\n", str(ev, "at"), plus,
				       (long long)json_integer_value(json_object_get(ev, "shard")),
				       str(ev, "node"), str(ev, "event"), str(ev, "transfer_id"),
				       str(ev, "request_id"));
			}
			prev = last;
			e += run;
		} else {
			char *text = json_dumps(lg, JSON_COMPACT);
			printf("%-24s %8s  log %s: %s\n", str(lg, "ts"), "", str(lg, "file"),
			       text ? text : "");
			free(text);
			l++;
		}
	}
	size_t i;
	json_t *t;
	json_array_foreach(transfers, i, t) {
		printf("final: %s %s posted_amount %lld of %lld %s\n", str(t, "id"), str(t, "status"),
		       (long long)json_integer_value(json_object_get(t, "posted_amount")),
		       (long long)json_integer_value(json_object_get(t, "amount")),
		       str(t, "currency"));
	}
}

int kobo_cli_cmd_trace(kobo_cli *cli, int argc, char **argv)
{
	kobo_cli_option options[] = {
		{.name = "logs", .takes_value = true},
	};
	const char *positional[1];
	size_t positional_count;
	int rc = kobo_cli_parse_args(cli, argc, argv, 1, options, 1, positional, 1,
	                             &positional_count);
	if (rc != 0)
		return rc;
	if (positional_count != 1 || positional[0][0] == '\0') {
		fprintf(stderr, "kobo: usage: kobo trace ID [--json] [--logs DIR]\n");
		return KOBO_CLI_EXIT_USAGE;
	}
	if (kobo_cli_connect(cli) == NULL)
		return KOBO_CLI_EXIT_FAILED;
	const char *id = positional[0];
	json_t *events = json_array();
	json_t *ids = json_array();
	json_t *transfers = json_array();
	json_t *logs = json_array();
	json_t *keys = json_object();
	if (!events || !ids || !transfers || !logs || !keys)
		oom();
	const char *found_as = "transfer";
	bool found = false;
	bool truncated = false;
	rc = add_events(cli, id, events, &found, &truncated);
	if (rc == 0 && found) {
		json_array_append_new(ids, json_string(id));
	} else if (rc == 0) {
		found_as = "request";
		rc = request_transfers(cli, id, ids);
		size_t i;
		json_t *v;
		json_array_foreach(ids, i, v) {
			if (rc == 0)
				rc = add_events(cli, json_string_value(v), events, &found,
				                &truncated);
		}
		/* Several transfers: one timeline (each one's order is kept). */
		sort_by_time(events, "at");
	}
	size_t i;
	json_t *v;
	json_array_foreach(ids, i, v) {
		json_t *t = NULL;
		char *path = escaped_path(cli, "/v1/transfers/%s", json_string_value(v));
		if (rc == 0)
			rc = get_json(cli, path, &t);
		free(path);
		if (t != NULL)
			json_array_append_new(transfers, t);
		add_unique(keys, json_string_value(v));
	}
	json_array_foreach(events, i, v) {
		add_unique(keys, str(v, "request_id"));
		add_unique(keys, str(v, "trace_id"));
	}
	if (rc == 0 && options[0].present)
		rc = read_logs(options[0].value, keys, logs);
	int status = KOBO_CLI_EXIT_OK;
	if (rc != 0) {
		status = KOBO_CLI_EXIT_FAILED;
	} else if (json_array_size(events) == 0 && json_array_size(transfers) == 0) {
		fprintf(stderr, "kobo: trace: no transfer and no request has the id %s\n", id);
		status = KOBO_CLI_EXIT_FAILED;
	} else if (cli->json) {
		json_t *out = json_pack("{s:s, s:s, s:O, s:O, s:O, s:b}", "id", id, "found_as",
		                        found_as, "events", events, "transfers", transfers, "logs",
		                        logs, "truncated", truncated);
		char *text = out ? json_dumps(out, JSON_COMPACT) : NULL;
		if (text == NULL)
			oom();
		puts(text);
		free(text);
		json_decref(out);
	} else {
		printf("trace %s (%s id): %zu events%s, %zu transfers\n", id, found_as,
		       json_array_size(events), truncated ? " (stopped: more exist)" : "",
		       json_array_size(transfers));
		print_timeline(events, logs, transfers);
	}
	json_decref(events);
	json_decref(ids);
	json_decref(transfers);
	json_decref(logs);
	json_decref(keys);
	return status;
}
