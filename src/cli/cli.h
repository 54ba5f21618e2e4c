/*
 * cli.h — internal contract of the `kobo` command-line client.
 *
 *   main.c         global options, dispatch to a command
 *   commands.c     account, transfer, post, void, history: build a request,
 *                  send it, print the answer
 *   key.c          `kobo key create|list|revoke`: API keys in shard 0's
 *                  store, written directly (no server needed)
 *   target.c       which store a local command works on (--data DIR,
 *                  --postgres URL …, KOBO_DATA / KOBO_POSTGRES), opening
 *                  shard 0 without ever creating a store
 *   audit.c        `kobo audit`: reads the shard map, opens every
 *                  DIR/shard-N.db (or, with --postgres URL …, every
 *                  PostgreSQL shard, the map fixed by their count)
 *                  read-only and runs the store's audit,
 *                  lists sagas in flight, and checks each cross-shard
 *                  transfer's two legs and each pair of clearing accounts
 *                  with the sagas in flight accounted for (no server
 *                  needed; definite with DIR/kobod.lock held, re-read
 *                  while kobod runs)
 *   trace.c        `kobo trace ID`: a transfer's or a request's events on
 *                  every shard in one timeline, with matching log lines
 *   http_client.c  one libcurl easy handle, reused for every request
 *   output.c       tables, key/value listings, error lines, argument parsing
 *
 * The server is the authority on every rule: the client checks arguments only
 * as far as it must to build a request (integers are integers, --metadata is
 * JSON), and prints what the server answers. Amounts are int64 minor units
 * end to end; nothing here ever converts them to floating point.
 *
 * Exit statuses: 0 success, 1 the server refused or could not be reached (or
 * an audit found a problem), 2 bad usage or an audit that could not run,
 * 3 an audit that could not settle the clearing pairs while kobod writes.
 */
#ifndef KOBO_CLI_H
#define KOBO_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "../ledger/ledger.h" /* KOBO_REQUEST_ID_LEN_MAX */

enum {
	KOBO_CLI_EXIT_OK = 0,
	KOBO_CLI_EXIT_FAILED = 1,
	KOBO_CLI_EXIT_USAGE = 2,
	KOBO_CLI_EXIT_UNKNOWN = 3, /* audit: the clearing pairs could not be settled */
};

/* Largest response body the client accepts (a history page of 1,000
 * transfers with 4 KiB metadata each is ~5 MiB). */
#define KOBO_CLI_RESPONSE_MAX (64u << 20)
/* Whole-request timeout and connect timeout. */
#define KOBO_CLI_TIMEOUT_MS 60000L
#define KOBO_CLI_CONNECT_TIMEOUT_MS 10000L
#define KOBO_CLI_DEFAULT_URL "http://127.0.0.1:8080"
/* kobod's default data directory (its KOBO_DATA default). */
#define KOBO_CLI_DEFAULT_DATA "./var"
#define KOBO_CLI_URL_MAX 2048

/* ---- HTTP (http_client.c). ---- */

typedef struct kobo_cli_http kobo_cli_http;

/* One answer. body is NUL-terminated and owned by the client: valid until
 * the next request or close. */
typedef struct kobo_cli_response {
	long status;                 /* HTTP status, e.g. 201 */
	const char *body;            /* "" when the server sent no body */
	size_t body_len;
	char request_id[KOBO_REQUEST_ID_LEN_MAX + 1]; /* X-Request-Id, "" if none */
	bool replayed;               /* Idempotent-Replayed: true */
} kobo_cli_response;

/* Creates a client for base_url ("http://host:port", trailing '/' ignored).
 * request_id, when not NULL, is sent as X-Request-Id on every request;
 * api_key, when not NULL, as "Authorization: Bearer KEY"; neither may hold
 * control characters. Returns NULL when libcurl cannot be initialized or
 * memory runs out. Owned by the caller; kobo_cli_http_close. */
kobo_cli_http *kobo_cli_http_open(const char *base_url, const char *request_id,
                                  const char *api_key);
void kobo_cli_http_close(kobo_cli_http *http);

/* Sends method ("GET" or "POST") to base_url + path (path starts with '/',
 * already percent-encoded). body (JSON text) is sent with Content-Type
 * application/json when not NULL. Returns 0 with *out filled when any HTTP
 * answer arrived, whatever its status; -1 when none did (connection refused,
 * timeout, response too large), after printing
 * "kobo: cannot reach URL: reason" to stderr. */
int kobo_cli_http_request(kobo_cli_http *http, const char *method,
                          const char *path, const char *body,
                          kobo_cli_response *out);

/* Percent-encodes text for one path segment or query value. Returns a
 * malloc'd string (free with free()), or NULL when out of memory. */
char *kobo_cli_http_escape(kobo_cli_http *http, const char *text);

/* ---- Command context (main.c). ---- */

typedef struct kobo_cli {
	const char *server_url; /* --server, $KOBO_URL or the default */
	const char *request_id; /* --request-id, or NULL */
	const char *api_key;    /* --key, else $KOBO_API_KEY, or NULL */
	bool json;              /* --json: print the server's body as-is */
	kobo_cli_http *http;    /* opened on first use by kobo_cli_connect */
} kobo_cli;

/* Returns cli->http, opening it on first use; NULL (after printing why)
 * when it cannot be opened. */
kobo_cli_http *kobo_cli_connect(kobo_cli *cli);

/* Prints the usage text to stream. */
void kobo_cli_usage(FILE *stream);

/* ---- Commands (commands.c, audit.c). argv[0] is the command name. Each
 * returns an exit status. ---- */

int kobo_cli_cmd_account(kobo_cli *cli, int argc, char **argv);
int kobo_cli_cmd_transfer(kobo_cli *cli, int argc, char **argv);
int kobo_cli_cmd_post(kobo_cli *cli, int argc, char **argv);
int kobo_cli_cmd_void(kobo_cli *cli, int argc, char **argv);
int kobo_cli_cmd_history(kobo_cli *cli, int argc, char **argv);
int kobo_cli_cmd_audit(kobo_cli *cli, int argc, char **argv);
int kobo_cli_cmd_key(kobo_cli *cli, int argc, char **argv);
int kobo_cli_cmd_trace(kobo_cli *cli, int argc, char **argv);

/* ---- The store a local command works on (target.c). ---- */

struct kobo_store;

/* user:password@ → user:***@, and password=… → password=***, into out
 * (size bytes, cut to fit), so nothing printed shows a secret. */
void kobo_cli_redact_url(const char *url, char *out, size_t size);

/* Takes every --postgres URL (repeatable, so not kobo_cli_parse_args's)
 * out of argv[1..argc) into urls (room for KOBO_SHARDS_MAX) and the other
 * arguments, argv[0] first, into rest (room for argc). Returns the number
 * of URLs, or -1 after printing "kobo: CMD: …" (a missing value, a value
 * that is not a postgresql:// or postgres:// URL, too many). */
long kobo_cli_take_postgres_urls(const char *cmd, int argc, char **argv,
                                 const char **urls, char **rest, int *rest_count);

/* Where a local command's store is: a data directory, or PostgreSQL URLs
 * in shard order (the first is shard 0; their number, the shard count). */
typedef struct kobo_cli_target {
	const char *dir;        /* SQLite data directory, or NULL */
	const char **urls;      /* the caller's array (KOBO_SHARDS_MAX) */
	size_t url_count;       /* > 0 with PostgreSQL */
	char *env_copy;         /* KOBO_POSTGRES, split in place */
	char where[512];        /* for messages, any password redacted */
} kobo_cli_target;

/* Fills target from --data (data_flag, or NULL) and the --postgres URLs
 * (urls[0..url_count)), else from the environment as kobod reads it:
 * KOBO_POSTGRES (whitespace-separated URLs, put into urls), KOBO_DATA,
 * else KOBO_CLI_DEFAULT_DATA. Flags win over the environment. Returns 0,
 * or KOBO_CLI_EXIT_USAGE after printing why (both kinds given, a bad
 * URL). kobo_cli_target_free releases it either way. */
int kobo_cli_target_resolve(const char *cmd, const char *data_flag,
                            const char **urls, long url_count,
                            kobo_cli_target *target);
void kobo_cli_target_free(kobo_cli_target *target);

/* Opens shard 0's store of target (read_only or writable) into *out,
 * never creating one: a data directory must be one kobod created
 * (DIR/shard-0.db, a readable shard map if it has one), a PostgreSQL
 * database must hold Kobo's shard 0 of url_count shards. Returns KOBO_OK,
 * or a store error after printing "kobo: CMD: …" why. Close with
 * kobo_store_close. */
int kobo_cli_target_open_shard0(const char *cmd, const kobo_cli_target *target,
                                bool read_only, struct kobo_store **out);

/* ---- Argument parsing (output.c). ---- */

/* One option a command accepts: "--name VALUE" / "--name=VALUE" when
 * takes_value, else the flag "--name". Parsing fills present and value
 * (borrowed from argv). */
typedef struct kobo_cli_option {
	const char *name; /* without the leading "--" */
	bool takes_value;
	bool present;
	const char *value;
} kobo_cli_option;

/* Splits argv[first..argc) into options (from options[0..count)) and
 * positional arguments (into positional[0..*positional_count), at most
 * positional_max; borrowed from argv). The global options --json, --server,
 * --request-id and --key are accepted anywhere and applied to cli. "--" ends the
 * options. An unknown option, a --request-id or --key with control characters, a missing value, a repeated option or too many
 * positional arguments prints "kobo: …" to stderr and returns
 * KOBO_CLI_EXIT_USAGE; otherwise returns 0. */
int kobo_cli_parse_args(kobo_cli *cli, int argc, char **argv, int first,
                        kobo_cli_option *options, size_t count,
                        const char **positional, size_t positional_max,
                        size_t *positional_count);

/* true when text holds no control characters, so it can be sent as a
 * header value without smuggling in another header. */
bool kobo_cli_header_safe(const char *text);

/* Parses a whole decimal int64 (optional '-', digits only, no spaces, in
 * range). Returns 0 with *out set, or -1 (after printing
 * "kobo: what: not an integer: text") on anything else. */
int kobo_cli_parse_int64(const char *what, const char *text, int64_t *out);

/* ---- Output (output.c). ---- */

/* Prints body on one line to stdout: as-is when it holds no line break,
 * else re-encoded compactly. */
void kobo_cli_print_body(const char *body, size_t len);

/* Prints "kobo: code: message (request_id ID, HTTP STATUS)" to stderr for a
 * non-2xx answer, taking code/message/request_id from the error body when
 * it has one, else from the header and the raw body. With --json the body
 * is also printed to stdout. */
void kobo_cli_print_error(const kobo_cli *cli, const kobo_cli_response *response);

/* Parses a response body as a JSON object; NULL (after printing a
 * warning and the raw body) when it is not one. Caller owns the result. */
json_t *kobo_cli_parse_body(const kobo_cli_response *response);

/* Human-readable views of API.md objects, to stdout. */
void kobo_cli_print_account(const json_t *account);
void kobo_cli_print_transfer(const json_t *transfer);
/* A table of transfers: created_at, id, from, to, amount, status. */
void kobo_cli_print_transfers(const json_t *transfers);

#endif /* KOBO_CLI_H */
