/*
 * output.c — how the CLI reads its arguments and prints answers: strict
 * option and integer parsing, one-line JSON for --json, the error line, and
 * aligned tables for people. Contract in cli.h.
 *
 * Amounts come out of jansson as json_int_t (long long) and are printed
 * with %lld: integers in minor units, never floating point.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* ---- Arguments. ---- */

/* Matches argument "--name" or "--name=value"; *inline_value gets the text
 * after '=' (or NULL). */
static bool option_matches(const char *arg, const char *name, const char **inline_value)
{
	size_t n = strlen(name);
	if (strncmp(arg + 2, name, n) != 0)
		return false;
	if (arg[2 + n] == '\0') {
		*inline_value = NULL;
		return true;
	}
	if (arg[2 + n] == '=') {
		*inline_value = arg + 2 + n + 1;
		return true;
	}
	return false;
}

int kobo_cli_parse_args(kobo_cli *cli, int argc, char **argv, int first,
                        kobo_cli_option *options, size_t count,
                        const char **positional, size_t positional_max,
                        size_t *positional_count)
{
	*positional_count = 0;
	bool options_ended = false;
	for (int i = first; i < argc; i++) {
		const char *arg = argv[i];
		if (options_ended || strncmp(arg, "--", 2) != 0) {
			if (*positional_count >= positional_max) {
				fprintf(stderr, "kobo: unexpected argument: %s\n", arg);
				return KOBO_CLI_EXIT_USAGE;
			}
			positional[(*positional_count)++] = arg;
			continue;
		}
		if (arg[2] == '\0') {
			options_ended = true;
			continue;
		}
		const char *inline_value;
		if (option_matches(arg, "json", &inline_value) && inline_value == NULL) {
			cli->json = true;
			continue;
		}
		/* Global options with a value, accepted after the command too. */
		const char **global = NULL;
		if (option_matches(arg, "server", &inline_value))
			global = &cli->server_url;
		else if (option_matches(arg, "request-id", &inline_value))
			global = &cli->request_id;
		else if (option_matches(arg, "key", &inline_value))
			global = &cli->api_key;
		if (global != NULL) {
			if (inline_value == NULL) {
				if (i + 1 >= argc) {
					fprintf(stderr, "kobo: %s needs a value\n", arg);
					return KOBO_CLI_EXIT_USAGE;
				}
				inline_value = argv[++i];
			}
			if (global != &cli->server_url && !kobo_cli_header_safe(inline_value)) {
				fprintf(stderr, "kobo: %s: control characters are not allowed\n",
				        global == &cli->api_key ? "--key" : "--request-id");
				return KOBO_CLI_EXIT_USAGE;
			}
			*global = inline_value;
			continue;
		}
		kobo_cli_option *option = NULL;
		for (size_t k = 0; k < count; k++) {
			if (option_matches(arg, options[k].name, &inline_value)) {
				option = &options[k];
				break;
			}
		}
		if (option == NULL) {
			fprintf(stderr, "kobo: unknown option: %s\n", arg);
			return KOBO_CLI_EXIT_USAGE;
		}
		if (option->present) {
			fprintf(stderr, "kobo: --%s given twice\n", option->name);
			return KOBO_CLI_EXIT_USAGE;
		}
		option->present = true;
		if (!option->takes_value) {
			if (inline_value != NULL) {
				fprintf(stderr, "kobo: --%s takes no value\n", option->name);
				return KOBO_CLI_EXIT_USAGE;
			}
			continue;
		}
		if (inline_value == NULL) {
			if (i + 1 >= argc) {
				fprintf(stderr, "kobo: --%s needs a value\n", option->name);
				return KOBO_CLI_EXIT_USAGE;
			}
			inline_value = argv[++i];
		}
		option->value = inline_value;
	}
	return 0;
}

bool kobo_cli_header_safe(const char *text)
{
	for (const unsigned char *p = (const unsigned char *)text; *p != '\0'; p++)
		if (*p < 0x20 || *p == 0x7f)
			return false;
	return true;
}

int kobo_cli_parse_int64(const char *what, const char *text, int64_t *out)
{
	/* strtoll alone would accept leading spaces, '+', and "12abc" up to
	 * the letters; demand exactly [-]digits. */
	const char *digits = text[0] == '-' ? text + 1 : text;
	bool ok = digits[0] >= '0' && digits[0] <= '9';
	if (ok) {
		errno = 0;
		char *end = NULL;
		long long value = strtoll(text, &end, 10);
		ok = errno == 0 && end != text && *end == '\0';
		if (ok)
			*out = (int64_t)value;
	}
	if (!ok) {
		fprintf(stderr, "kobo: %s: not an integer in the int64 range: %s\n", what, text);
		return -1;
	}
	return 0;
}

/* ---- Bodies and errors. ---- */

void kobo_cli_print_body(const char *body, size_t len)
{
	while (len > 0 && (body[len - 1] == '\n' || body[len - 1] == '\r' ||
	                   body[len - 1] == ' ' || body[len - 1] == '\t'))
		len--;
	if (memchr(body, '\n', len) == NULL && memchr(body, '\r', len) == NULL) {
		fwrite(body, 1, len, stdout);
		fputc('\n', stdout);
		return;
	}
	json_t *root = json_loadb(body, len, JSON_DECODE_ANY, NULL);
	char *compact = root != NULL
		? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY)
		: NULL;
	if (compact != NULL) {
		puts(compact);
	} else {
		/* Not JSON: print it with its line breaks turned into spaces. */
		for (size_t i = 0; i < len; i++)
			fputc(body[i] == '\n' || body[i] == '\r' ? ' ' : body[i], stdout);
		fputc('\n', stdout);
	}
	free(compact);
	json_decref(root);
}

void kobo_cli_print_error(const kobo_cli *cli, const kobo_cli_response *response)
{
	if (cli->json && response->body_len > 0)
		kobo_cli_print_body(response->body, response->body_len);
	json_t *root = json_loadb(response->body, response->body_len, 0, NULL);
	json_t *error = json_object_get(root, "error");
	const char *code = json_string_value(json_object_get(error, "code"));
	const char *message = json_string_value(json_object_get(error, "message"));
	const char *request_id = json_string_value(json_object_get(error, "request_id"));
	if (request_id == NULL || request_id[0] == '\0')
		request_id = response->request_id[0] != '\0' ? response->request_id : "-";
	if (code != NULL) {
		fprintf(stderr, "kobo: %s: %s (request_id %s, HTTP %ld)\n", code,
		        message != NULL ? message : "", request_id, response->status);
	} else {
		/* Not Kobo's error shape (a proxy in between?): show the start
		 * of whatever came back. */
		int shown = response->body_len > 200 ? 200 : (int)response->body_len;
		fprintf(stderr, "kobo: http_error: %.*s (request_id %s, HTTP %ld)\n", shown,
		        response->body, request_id, response->status);
	}
	json_decref(root);
}

json_t *kobo_cli_parse_body(const kobo_cli_response *response)
{
	json_error_t error;
	json_t *root = json_loadb(response->body, response->body_len, 0, &error);
	if (root != NULL && json_is_object(root))
		return root;
	json_decref(root);
	fprintf(stderr, "kobo: warning: the answer is not a JSON object (%s); raw body:\n",
	        error.text);
	kobo_cli_print_body(response->body, response->body_len);
	return NULL;
}

/* ---- Tables. ---- */

#define TABLE_COLUMNS_MAX 8

typedef struct table {
	size_t columns;
	const char *headers[TABLE_COLUMNS_MAX];
	bool right_align[TABLE_COLUMNS_MAX];
	char **cells; /* rows * columns, malloc'd strings */
	size_t rows;
	size_t rows_cap;
} table;

static char *xstrdup(const char *text)
{
	char *copy = strdup(text);
	if (copy == NULL) {
		fprintf(stderr, "kobo: out of memory\n");
		exit(KOBO_CLI_EXIT_FAILED);
	}
	return copy;
}

/* Adds a row of table->columns cells (copied). */
static void table_add(table *t, const char *const *cells)
{
	if (t->rows == t->rows_cap) {
		size_t cap = t->rows_cap ? t->rows_cap * 2 : 16;
		char **grown = realloc(t->cells, cap * t->columns * sizeof *grown);
		if (grown == NULL) {
			fprintf(stderr, "kobo: out of memory\n");
			exit(KOBO_CLI_EXIT_FAILED);
		}
		t->cells = grown;
		t->rows_cap = cap;
	}
	for (size_t c = 0; c < t->columns; c++)
		t->cells[t->rows * t->columns + c] = xstrdup(cells[c]);
	t->rows++;
}

static void table_print_and_free(table *t)
{
	size_t width[TABLE_COLUMNS_MAX];
	for (size_t c = 0; c < t->columns; c++) {
		width[c] = strlen(t->headers[c]);
		for (size_t r = 0; r < t->rows; r++) {
			size_t w = strlen(t->cells[r * t->columns + c]);
			if (w > width[c])
				width[c] = w;
		}
	}
	for (size_t r = 0; r <= t->rows; r++) {
		for (size_t c = 0; c < t->columns; c++) {
			const char *cell = r == 0 ? t->headers[c] : t->cells[(r - 1) * t->columns + c];
			bool last = c + 1 == t->columns;
			if (t->right_align[c])
				printf("%*s", (int)width[c], cell);
			else if (last)
				printf("%s", cell);
			else
				printf("%-*s", (int)width[c], cell);
			if (!last)
				fputs("  ", stdout);
		}
		fputc('\n', stdout);
	}
	for (size_t i = 0; i < t->rows * t->columns; i++)
		free(t->cells[i]);
	free(t->cells);
}

/* ---- Fields. ---- */

/* The field as text: strings as-is, integers in decimal, null as "-",
 * anything else as compact JSON. Writes into buf and returns it. */
static const char *field_text(const json_t *object, const char *key, char *buf, size_t size)
{
	const json_t *value = json_object_get(object, key);
	if (value == NULL || json_is_null(value)) {
		snprintf(buf, size, "-");
	} else if (json_is_string(value)) {
		snprintf(buf, size, "%s", json_string_value(value));
	} else if (json_is_integer(value)) {
		snprintf(buf, size, "%lld", (long long)json_integer_value(value));
	} else if (json_is_true(value)) {
		snprintf(buf, size, "true");
	} else if (json_is_false(value)) {
		snprintf(buf, size, "false");
	} else {
		char *dumped = json_dumps(value, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
		snprintf(buf, size, "%s", dumped != NULL ? dumped : "?");
		free(dumped);
	}
	return buf;
}

#define FIELD_TEXT_MAX 8192 /* metadata is at most 4 KiB */

void kobo_cli_print_account(const json_t *account)
{
	const json_t *balance = json_object_get(account, "balance");
	table t = {
		.columns = 6,
		.headers = {"ID", "CURRENCY", "POSTED", "PENDING_OUT", "PENDING_IN", "AVAILABLE"},
		.right_align = {false, false, true, true, true, true},
	};
	static char cells_buf[6][FIELD_TEXT_MAX];
	const char *cells[6] = {
		field_text(account, "id", cells_buf[0], FIELD_TEXT_MAX),
		field_text(account, "currency", cells_buf[1], FIELD_TEXT_MAX),
		field_text(balance, "posted", cells_buf[2], FIELD_TEXT_MAX),
		field_text(balance, "pending_out", cells_buf[3], FIELD_TEXT_MAX),
		field_text(balance, "pending_in", cells_buf[4], FIELD_TEXT_MAX),
		field_text(balance, "available", cells_buf[5], FIELD_TEXT_MAX),
	};
	table_add(&t, cells);
	table_print_and_free(&t);

	char text[FIELD_TEXT_MAX];
	printf("allow_negative: %s", field_text(account, "allow_negative", text, sizeof text));
	printf("  created_at: %s", field_text(account, "created_at", text, sizeof text));
	printf("  created_by: %s", field_text(account, "created_by", text, sizeof text));
	printf("  metadata: %s\n", field_text(account, "metadata", text, sizeof text));
}

void kobo_cli_print_transfer(const json_t *transfer)
{
	static const char *const keys[] = {
		"id", "status", "from", "to", "amount", "posted_amount", "currency",
		"void_reason", "timeout_seconds", "request_id", "created_at", "updated_at",
		"created_by", "metadata",
	};
	char text[FIELD_TEXT_MAX];
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
		printf("%-16s %s\n", keys[i], field_text(transfer, keys[i], text, sizeof text));
	const json_t *error = json_object_get(transfer, "error");
	if (error != NULL && !json_is_null(error))
		printf("%-16s %s\n", "error", field_text(error, "code", text, sizeof text));
}

void kobo_cli_print_transfers(const json_t *transfers)
{
	table t = {
		.columns = 6,
		.headers = {"CREATED_AT", "ID", "FROM", "TO", "AMOUNT", "STATUS"},
		.right_align = {false, false, false, false, true, false},
	};
	static const char *const keys[6] = {"created_at", "id", "from", "to", "amount", "status"};
	static char cells_buf[6][FIELD_TEXT_MAX];
	size_t index;
	const json_t *transfer;
	json_array_foreach(transfers, index, transfer) {
		const char *cells[6];
		for (size_t c = 0; c < 6; c++)
			cells[c] = field_text(transfer, keys[c], cells_buf[c], FIELD_TEXT_MAX);
		table_add(&t, cells);
	}
	table_print_and_free(&t);
}
