/*
 * commands.c — the CLI commands that speak to kobod: account create/get,
 * transfer create/get, post, void, history. Each builds its request from
 * the arguments, sends it, and prints the answer (a table, or with --json the
 * body as-is). Contract in cli.h; the API in ../shared/API.md.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "cli.h"

/* Sends and prints: on 2xx prints the body (--json) or print(object) and
 * returns 0; otherwise prints the error line and returns 1. */
static int send_and_print(kobo_cli *cli, const char *method, const char *path,
                          const char *body, void (*print)(const json_t *))
{
	kobo_cli_http *http = kobo_cli_connect(cli);
	if (http == NULL)
		return KOBO_CLI_EXIT_FAILED;
	kobo_cli_response response;
	if (kobo_cli_http_request(http, method, path, body, &response) != 0)
		return KOBO_CLI_EXIT_FAILED;
	if (response.status < 200 || response.status > 299) {
		kobo_cli_print_error(cli, &response);
		return KOBO_CLI_EXIT_FAILED;
	}
	if (cli->json) {
		kobo_cli_print_body(response.body, response.body_len);
		return KOBO_CLI_EXIT_OK;
	}
	if (response.replayed)
		fprintf(stderr, "kobo: note: replayed; this is the original answer "
		                "(request_id %s)\n",
		        response.request_id[0] != '\0' ? response.request_id : "-");
	json_t *root = kobo_cli_parse_body(&response);
	if (root == NULL)
		return KOBO_CLI_EXIT_OK; /* the server said yes; the raw body is shown */
	print(root);
	json_decref(root);
	return KOBO_CLI_EXIT_OK;
}

/* "/prefix/<escaped id>suffix" into a malloc'd string; NULL when out of
 * memory or the connection cannot be set up (both reported). */
static char *path_with_id(kobo_cli *cli, const char *prefix, const char *id,
                          const char *suffix)
{
	kobo_cli_http *http = kobo_cli_connect(cli);
	if (http == NULL)
		return NULL;
	char *escaped = kobo_cli_http_escape(http, id);
	char *path = NULL;
	if (escaped == NULL || asprintf(&path, "%s%s%s", prefix, escaped, suffix) < 0) {
		fprintf(stderr, "kobo: out of memory\n");
		path = NULL;
	}
	free(escaped);
	return path;
}

/* Serializes body compactly, splicing in raw_metadata (JSON text already
 * checked to parse) verbatim as "metadata", so the server stores exactly
 * what the user typed (jansson would re-print numbers its own way). */
static char *encode_body(json_t *body, const char *raw_metadata)
{
	char *text = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (text == NULL || raw_metadata == NULL)
		return text;
	size_t len = strlen(text); /* ends with '}' */
	char *spliced = NULL;
	if (asprintf(&spliced, "%.*s%s\"metadata\":%s}", (int)(len - 1), text,
	             len > 2 ? "," : "", raw_metadata) < 0)
		spliced = NULL;
	free(text);
	return spliced;
}

/* Checks that --metadata parses as JSON (its shape is the server's call). */
static int check_metadata(const char *raw)
{
	json_error_t error;
	json_t *parsed = json_loads(raw, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &error);
	if (parsed == NULL) {
		fprintf(stderr, "kobo: --metadata: not valid JSON: %s\n", error.text);
		return -1;
	}
	json_decref(parsed);
	return 0;
}

static void oom(void)
{
	fprintf(stderr, "kobo: out of memory\n");
	exit(KOBO_CLI_EXIT_FAILED);
}

static void set(json_t *object, const char *key, json_t *value)
{
	if (value == NULL || json_object_set_new(object, key, value) != 0)
		oom();
}

/* ---- account ---- */

static int account_create(kobo_cli *cli, int argc, char **argv)
{
	kobo_cli_option options[] = {
		{.name = "currency", .takes_value = true},
		{.name = "allow-negative"},
		{.name = "metadata", .takes_value = true},
	};
	const char *positional[1];
	size_t positional_count;
	int rc = kobo_cli_parse_args(cli, argc, argv, 2, options, 3, positional, 1,
	                             &positional_count);
	if (rc != 0)
		return rc;
	if (positional_count != 1 || !options[0].present) {
		fprintf(stderr, "kobo: usage: kobo account create ID --currency CUR "
		                "[--allow-negative] [--metadata JSON]\n");
		return KOBO_CLI_EXIT_USAGE;
	}
	if (options[2].present && check_metadata(options[2].value) != 0)
		return KOBO_CLI_EXIT_USAGE;

	json_t *body = json_object();
	if (body == NULL)
		oom();
	set(body, "id", json_string(positional[0]));
	set(body, "currency", json_string(options[0].value));
	set(body, "allow_negative", json_boolean(options[1].present));
	char *text = encode_body(body, options[2].present ? options[2].value : NULL);
	json_decref(body);
	if (text == NULL) {
		fprintf(stderr, "kobo: arguments are not valid UTF-8, or out of memory\n");
		return KOBO_CLI_EXIT_USAGE;
	}
	rc = send_and_print(cli, "POST", "/v1/accounts", text, kobo_cli_print_account);
	free(text);
	return rc;
}

/* `kobo account get ID` and `kobo transfer get ID`: one positional id,
 * GET prefix/ID, printed by print. */
static int get_by_id(kobo_cli *cli, int argc, char **argv, const char *usage,
                     const char *prefix, void (*print)(const json_t *))
{
	const char *positional[1];
	size_t positional_count;
	int rc = kobo_cli_parse_args(cli, argc, argv, 2, NULL, 0, positional, 1,
	                             &positional_count);
	if (rc != 0)
		return rc;
	if (positional_count != 1) {
		fprintf(stderr, "kobo: usage: %s\n", usage);
		return KOBO_CLI_EXIT_USAGE;
	}
	char *path = path_with_id(cli, prefix, positional[0], "");
	if (path == NULL)
		return KOBO_CLI_EXIT_FAILED;
	rc = send_and_print(cli, "GET", path, NULL, print);
	free(path);
	return rc;
}

int kobo_cli_cmd_account(kobo_cli *cli, int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "create") == 0)
		return account_create(cli, argc, argv);
	if (argc >= 2 && strcmp(argv[1], "get") == 0)
		return get_by_id(cli, argc, argv, "kobo account get ID", "/v1/accounts/",
		                 kobo_cli_print_account);
	fprintf(stderr, "kobo: usage: kobo account create|get ID …\n");
	return KOBO_CLI_EXIT_USAGE;
}

/* ---- transfer ---- */

/* "cli:" + 32 random hex digits into id (at least 37 bytes). */
static int random_transfer_id(char *id, size_t size)
{
	unsigned char bytes[16];
	size_t have = 0;
	while (have < sizeof bytes) {
		ssize_t n = getrandom(bytes + have, sizeof bytes - have, 0);
		if (n <= 0)
			break;
		have += (size_t)n;
	}
	if (have < sizeof bytes) {
		int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
		if (fd < 0 || read(fd, bytes, sizeof bytes) != (ssize_t)sizeof bytes) {
			if (fd >= 0)
				close(fd);
			fprintf(stderr, "kobo: no randomness for a transfer id; pass --id\n");
			return -1;
		}
		close(fd);
	}
	int len = snprintf(id, size, "cli:");
	for (size_t i = 0; i < sizeof bytes; i++)
		len += snprintf(id + len, size - (size_t)len, "%02x", bytes[i]);
	return 0;
}

int kobo_cli_cmd_transfer(kobo_cli *cli, int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "get") == 0)
		return get_by_id(cli, argc, argv, "kobo transfer get ID", "/v1/transfers/",
		                 kobo_cli_print_transfer);

	enum { FROM, TO, AMOUNT, CURRENCY, ID, PENDING, TIMEOUT, METADATA, OPTION_COUNT };
	kobo_cli_option options[OPTION_COUNT] = {
		[FROM] = {.name = "from", .takes_value = true},
		[TO] = {.name = "to", .takes_value = true},
		[AMOUNT] = {.name = "amount", .takes_value = true},
		[CURRENCY] = {.name = "currency", .takes_value = true},
		[ID] = {.name = "id", .takes_value = true},
		[PENDING] = {.name = "pending"},
		[TIMEOUT] = {.name = "timeout", .takes_value = true},
		[METADATA] = {.name = "metadata", .takes_value = true},
	};
	const char *positional[1];
	size_t positional_count;
	int rc = kobo_cli_parse_args(cli, argc, argv, 1, options, OPTION_COUNT, positional, 0,
	                             &positional_count);
	if (rc != 0)
		return rc;
	if (!options[FROM].present || !options[TO].present || !options[AMOUNT].present ||
	    !options[CURRENCY].present) {
		fprintf(stderr, "kobo: usage: kobo transfer --from A --to B --amount N "
		                "--currency CUR [--id ID] [--pending] [--timeout SECONDS] "
		                "[--metadata JSON]\n");
		return KOBO_CLI_EXIT_USAGE;
	}
	int64_t amount, timeout_seconds = 0;
	if (kobo_cli_parse_int64("--amount", options[AMOUNT].value, &amount) != 0)
		return KOBO_CLI_EXIT_USAGE;
	if (options[TIMEOUT].present &&
	    kobo_cli_parse_int64("--timeout", options[TIMEOUT].value, &timeout_seconds) != 0)
		return KOBO_CLI_EXIT_USAGE;
	if (options[METADATA].present && check_metadata(options[METADATA].value) != 0)
		return KOBO_CLI_EXIT_USAGE;

	char generated_id[64];
	const char *id = options[ID].value;
	if (!options[ID].present) {
		if (random_transfer_id(generated_id, sizeof generated_id) != 0)
			return KOBO_CLI_EXIT_FAILED;
		id = generated_id;
		/* Before sending: if the answer is lost, this is the id to
		 * retry with (a retry with the same id applies at most once). */
		fprintf(stderr, "kobo: transfer id %s (retry with --id %s)\n", id, id);
	}

	json_t *body = json_object();
	if (body == NULL)
		oom();
	set(body, "id", json_string(id));
	set(body, "from", json_string(options[FROM].value));
	set(body, "to", json_string(options[TO].value));
	set(body, "amount", json_integer((json_int_t)amount));
	set(body, "currency", json_string(options[CURRENCY].value));
	set(body, "pending", json_boolean(options[PENDING].present));
	if (options[TIMEOUT].present)
		set(body, "timeout_seconds", json_integer((json_int_t)timeout_seconds));
	char *text = encode_body(body, options[METADATA].present ? options[METADATA].value : NULL);
	json_decref(body);
	if (text == NULL) {
		fprintf(stderr, "kobo: arguments are not valid UTF-8, or out of memory\n");
		return KOBO_CLI_EXIT_USAGE;
	}
	rc = send_and_print(cli, "POST", "/v1/transfers", text, kobo_cli_print_transfer);
	free(text);
	return rc;
}

/* ---- post, void ---- */

int kobo_cli_cmd_post(kobo_cli *cli, int argc, char **argv)
{
	kobo_cli_option options[] = {{.name = "amount", .takes_value = true}};
	const char *positional[1];
	size_t positional_count;
	int rc = kobo_cli_parse_args(cli, argc, argv, 1, options, 1, positional, 1,
	                             &positional_count);
	if (rc != 0)
		return rc;
	if (positional_count != 1) {
		fprintf(stderr, "kobo: usage: kobo post ID [--amount N]\n");
		return KOBO_CLI_EXIT_USAGE;
	}
	char body[64] = "{}";
	if (options[0].present) {
		int64_t amount;
		if (kobo_cli_parse_int64("--amount", options[0].value, &amount) != 0)
			return KOBO_CLI_EXIT_USAGE;
		snprintf(body, sizeof body, "{\"amount\":%lld}", (long long)amount);
	}
	char *path = path_with_id(cli, "/v1/transfers/", positional[0], "/post");
	if (path == NULL)
		return KOBO_CLI_EXIT_FAILED;
	rc = send_and_print(cli, "POST", path, body, kobo_cli_print_transfer);
	free(path);
	return rc;
}

int kobo_cli_cmd_void(kobo_cli *cli, int argc, char **argv)
{
	const char *positional[1];
	size_t positional_count;
	int rc = kobo_cli_parse_args(cli, argc, argv, 1, NULL, 0, positional, 1,
	                             &positional_count);
	if (rc != 0)
		return rc;
	if (positional_count != 1) {
		fprintf(stderr, "kobo: usage: kobo void ID\n");
		return KOBO_CLI_EXIT_USAGE;
	}
	char *path = path_with_id(cli, "/v1/transfers/", positional[0], "/void");
	if (path == NULL)
		return KOBO_CLI_EXIT_FAILED;
	rc = send_and_print(cli, "POST", path, "{}", kobo_cli_print_transfer);
	free(path);
	return rc;
}

/* ---- history ---- */

/* Default page size for --all without --limit: the API's maximum, so the
 * walk takes as few round trips as it can. */
#define HISTORY_ALL_PAGE 1000

int kobo_cli_cmd_history(kobo_cli *cli, int argc, char **argv)
{
	kobo_cli_option options[] = {
		{.name = "limit", .takes_value = true},
		{.name = "all"},
	};
	const char *positional[1];
	size_t positional_count;
	int rc = kobo_cli_parse_args(cli, argc, argv, 1, options, 2, positional, 1,
	                             &positional_count);
	if (rc != 0)
		return rc;
	if (positional_count != 1) {
		fprintf(stderr, "kobo: usage: kobo history ACCOUNT [--limit N] [--all]\n");
		return KOBO_CLI_EXIT_USAGE;
	}
	int64_t limit = 0;
	bool has_limit = options[0].present;
	if (has_limit && kobo_cli_parse_int64("--limit", options[0].value, &limit) != 0)
		return KOBO_CLI_EXIT_USAGE;
	bool all = options[1].present;
	if (all && !has_limit) {
		limit = HISTORY_ALL_PAGE;
		has_limit = true;
	}

	char *base = path_with_id(cli, "/v1/accounts/", positional[0], "/transfers");
	if (base == NULL)
		return KOBO_CLI_EXIT_FAILED;
	kobo_cli_http *http = cli->http;
	json_t *transfers = json_array(); /* every page's data, in order */
	char *cursor = NULL;              /* escaped "after" of the next page */
	rc = KOBO_CLI_EXIT_OK;
	if (transfers == NULL)
		oom();
	for (;;) {
		char limit_arg[32] = "";
		if (has_limit)
			snprintf(limit_arg, sizeof limit_arg, "limit=%lld", (long long)limit);
		char *path = NULL;
		if (asprintf(&path, "%s%s%s%s%s%s", base, has_limit || cursor ? "?" : "", limit_arg,
		             has_limit && cursor ? "&" : "", cursor ? "after=" : "",
		             cursor ? cursor : "") < 0)
			oom();
		kobo_cli_response response;
		if (kobo_cli_http_request(http, "GET", path, NULL, &response) != 0) {
			free(path);
			rc = KOBO_CLI_EXIT_FAILED;
			break;
		}
		free(path);
		if (response.status != 200) {
			kobo_cli_print_error(cli, &response);
			rc = KOBO_CLI_EXIT_FAILED;
			break;
		}
		if (cli->json && !all) {
			kobo_cli_print_body(response.body, response.body_len);
			break;
		}
		json_t *page = kobo_cli_parse_body(&response);
		json_t *data = json_object_get(page, "data");
		if (page == NULL || !json_is_array(data)) {
			if (page != NULL)
				fprintf(stderr, "kobo: history answer has no \"data\" array\n");
			json_decref(page);
			rc = KOBO_CLI_EXIT_FAILED;
			break;
		}
		json_array_extend(transfers, data);
		const json_t *next = json_object_get(page, "next");
		char next_text[128];
		const char *next_value = NULL;
		if (json_is_string(next)) {
			next_value = json_string_value(next);
		} else if (json_is_integer(next)) {
			snprintf(next_text, sizeof next_text, "%lld", (long long)json_integer_value(next));
			next_value = next_text;
		}
		char *next_cursor = next_value != NULL ? kobo_cli_http_escape(http, next_value) : NULL;
		bool page_empty = json_array_size(data) == 0;
		json_decref(page);
		if (!all || next_cursor == NULL || page_empty ||
		    (cursor != NULL && strcmp(cursor, next_cursor) == 0)) {
			/* Done, or a server that repeats its cursor: stop rather
			 * than loop forever. */
			if (!all && next_cursor != NULL && !cli->json)
				fprintf(stderr, "kobo: more transfers follow; use --all "
				                "to list every one\n");
			free(next_cursor);
			break;
		}
		free(cursor);
		cursor = next_cursor;
	}
	if (rc == KOBO_CLI_EXIT_OK && !(cli->json && !all)) {
		if (cli->json) {
			/* --json --all: every page as one object, one line. */
			json_t *merged = json_pack("{s:O,s:n}", "data", transfers, "next");
			char *text = merged != NULL
				? json_dumps(merged, JSON_COMPACT | JSON_PRESERVE_ORDER)
				: NULL;
			if (text == NULL)
				oom();
			puts(text);
			free(text);
			json_decref(merged);
		} else {
			kobo_cli_print_transfers(transfers);
		}
	}
	free(cursor);
	free(base);
	json_decref(transfers);
	return rc;
}
