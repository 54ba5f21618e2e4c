/*
 * key.c — `kobo key create|list|revoke`: the API keys of a deployment,
 * written straight into shard 0's store (src/core/apikey.h: keys live
 * there, every kobod reads them), so they work whether or not kobod runs.
 * A running kobod sees a new or revoked key within its keyring's refresh
 * (README "API keys"); nothing here talks to it.
 *
 *   kobo key create --name NAME --scopes S1,S2 [--data DIR | --postgres URL …]
 *       A new key: its whole text is printed once, here, and never again
 *       (the store keeps only a salted keyed hash: src/auth/key.h).
 *   kobo key list [--all]            live keys (--all: revoked ones too)
 *   kobo key revoke ID               a live key stops working; revoking a
 *                                    revoked key keeps its first time
 *
 * Every argument is checked before the store is opened, so a refused
 * command writes nothing. The store is found by target.c (--data DIR,
 * --postgres URL … in shard order, KOBO_DATA / KOBO_POSTGRES, ./var) and
 * never created.
 *
 * Output: text for people, or with --json one object on one line:
 *   create → {"id","key","name","scopes":[…],"created_at"}
 *   list   → {"keys":[{"id","name","scopes":[…],"created_at","revoked_at"}]}
 *            (revoked_at null while live; never the hash or the salt)
 *   revoke → {"id","name","scopes":[…],"created_at","revoked_at"}
 * A refusal prints "kobo: key: …" on stderr and, with --json,
 * {"error":{"code","message"}} on stdout. Exit: 0 done; 1 the store
 * refused or could not be reached (key_not_found, keys_full,
 * store_unavailable); 2 bad usage (invalid_request: name, scopes, id).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "../auth/key.h"
#include "../obs/obs.h"
#include "../shard/shard.h"
#include "../store/store.h"
#include "cli.h"

/* A key id drawn twice (2^-64 per pair): draw again, this many times. */
#define KEY_CREATE_ATTEMPTS 3
/* kobo_format_time_ms's output, with its NUL. */
#define KEY_TIME_LEN 25

static void key_usage(FILE *out)
{
	fputs("usage: kobo key create --name NAME --scopes S1,S2 [STORE] [--json]\n"
	      "       kobo key list [--all] [STORE] [--json]\n"
	      "       kobo key revoke ID [STORE] [--json]\n"
	      "STORE: --data DIR | --postgres URL [--postgres URL ...] (every shard's URL,\n"
	      "       in shard order, as kobod takes them); else KOBO_POSTGRES, KOBO_DATA,\n"
	      "       ./var. Scopes: accounts:read, accounts:write, transfers:read,\n"
	      "       transfers:write, admin (all of them), comma-separated.\n",
	      out);
}

/* Prints a refusal: the line on stderr, and with --json the error object
 * on stdout. Returns status. */
static int refuse(const kobo_cli *cli, int status, const char *code, const char *message)
{
	fprintf(stderr, "kobo: key: %s\n", message);
	if (cli->json) {
		json_t *root = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message",
		                         message);
		char *text = root != NULL ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER)
		                          : NULL;
		if (text != NULL)
			puts(text);
		free(text);
		json_decref(root);
	}
	return status;
}

static json_t *scopes_json(uint32_t scopes)
{
	json_t *list = json_array();
	for (uint32_t bit = 1; bit <= KOBO_SCOPES_ALL; bit <<= 1) {
		if ((scopes & bit) != 0)
			json_array_append_new(list, json_string(kobo_scope_name(bit)));
	}
	return list;
}

static char *time_text(char buf[KEY_TIME_LEN], int64_t ms)
{
	return kobo_format_time_ms(buf, ms);
}

/* The public view of a record: never the hash or the salt. */
static json_t *key_json(const kobo_api_key *key)
{
	char created[KEY_TIME_LEN], revoked[KEY_TIME_LEN];
	json_t *obj = json_pack("{s:s,s:s,s:o,s:s}", "id", key->id, "name", key->name,
	                        "scopes", scopes_json(key->scopes), "created_at",
	                        time_text(created, key->created_at_ms));
	if (obj != NULL)
		json_object_set_new(obj, "revoked_at", key->revoked_at_ms != 0
		                    ? json_string(time_text(revoked, key->revoked_at_ms))
		                    : json_null());
	return obj;
}

static void print_json(json_t *root)
{
	char *text = root != NULL ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	if (text != NULL)
		puts(text);
	else
		fprintf(stderr, "kobo: key: cannot encode the answer\n");
	free(text);
}

/* A key id as kobo_key_generate makes them: KOBO_KEY_ID_LEN lowercase hex. */
static bool id_valid(const char *id)
{
	return strlen(id) == KOBO_KEY_ID_LEN && strspn(id, "0123456789abcdef") == KOBO_KEY_ID_LEN;
}

/* The store options of every subcommand, then its own. */
typedef struct key_args {
	kobo_cli_target target;
	const char *urls[KOBO_SHARDS_MAX];
	kobo_cli_option options[3];
	const char *positional[1];
	size_t positional_count;
} key_args;

/* Parses argv (argv[0] the subcommand) with --data, --postgres … and the
 * subcommand's own options (extra[0..extra_count)), and resolves the
 * store. Returns 0 or an exit status (after printing why). */
static int parse(kobo_cli *cli, int argc_in, char **argv_in, key_args *args,
                 const kobo_cli_option *extra, size_t extra_count, size_t positional_max)
{
	char **argv = calloc((size_t)argc_in + 1, sizeof *argv);
	int argc = 0;
	if (argv == NULL) {
		fprintf(stderr, "kobo: out of memory\n");
		return KOBO_CLI_EXIT_USAGE;
	}
	long url_count = kobo_cli_take_postgres_urls("key", argc_in, argv_in, args->urls,
	                                             argv, &argc);
	args->options[0] = (kobo_cli_option){.name = "data", .takes_value = true};
	for (size_t i = 0; i < extra_count; i++)
		args->options[1 + i] = extra[i];
	int rc = url_count < 0 ? KOBO_CLI_EXIT_USAGE
		: kobo_cli_parse_args(cli, argc, argv, 1, args->options, 1 + extra_count,
		                      args->positional, positional_max, &args->positional_count);
	free(argv);
	if (rc != 0)
		return rc;
	return kobo_cli_target_resolve("key", args->options[0].present
	                               ? args->options[0].value : NULL,
	                               args->urls, url_count, &args->target);
}

/* ---- create ---- */

static int key_create(kobo_cli *cli, int argc, char **argv)
{
	static key_args args;
	const kobo_cli_option extra[] = {{.name = "name", .takes_value = true},
	                                 {.name = "scopes", .takes_value = true}};
	int rc = parse(cli, argc, argv, &args, extra, 2, 0);
	if (rc != 0) {
		kobo_cli_target_free(&args.target);
		return rc;
	}
	const kobo_cli_option *name = &args.options[1], *scopes_opt = &args.options[2];
	kobo_api_key rec;
	memset(&rec, 0, sizeof rec);
	char message[640];
	if (!name->present || !scopes_opt->present) {
		key_usage(stderr);
		rc = refuse(cli, KOBO_CLI_EXIT_USAGE, "invalid_request",
		            "create needs --name and --scopes");
	} else if (!kobo_key_name_valid(name->value)) {
		snprintf(message, sizeof message, "--name: 1 to %d printable ASCII characters",
		         KOBO_KEY_NAME_LEN_MAX);
		rc = refuse(cli, KOBO_CLI_EXIT_USAGE, "invalid_request", message);
	} else if (kobo_scopes_parse(scopes_opt->value, &rec.scopes) != KOBO_OK) {
		rc = refuse(cli, KOBO_CLI_EXIT_USAGE, "invalid_request",
		            "--scopes: a comma-separated list of accounts:read, accounts:write, "
		            "transfers:read, transfers:write, admin (each at most once, no "
		            "spaces)");
	}
	if (rc != 0) {
		kobo_cli_target_free(&args.target);
		return rc;
	}
	memcpy(rec.name, name->value, strlen(name->value) + 1);

	kobo_store *store = NULL;
	if (kobo_cli_target_open_shard0("key", &args.target, false, &store) != KOBO_OK) {
		kobo_cli_target_free(&args.target);
		return refuse(cli, KOBO_CLI_EXIT_FAILED, "store_unavailable",
		              "cannot open shard 0's store (see above)");
	}
	char text[KOBO_KEY_TEXT_LEN + 1];
	int store_rc = KOBO_ECONFLICT;
	for (int attempt = 0; attempt < KEY_CREATE_ATTEMPTS && store_rc == KOBO_ECONFLICT;
	     attempt++) {
		rec.created_at_ms = kobo_now_ms();
		kobo_key_generate(&rec, text);
		store_rc = kobo_store_key_insert(store, &rec);
	}
	kobo_store_close(store);
	if (store_rc == KOBO_EFULL) {
		snprintf(message, sizeof message, "%d live keys exist (the limit): revoke "
		         "unused ones first", KOBO_KEYS_MAX);
		rc = refuse(cli, KOBO_CLI_EXIT_FAILED, "keys_full", message);
	} else if (store_rc != KOBO_OK) {
		snprintf(message, sizeof message, "the %s could not store the key (error %d); "
		         "nothing was created", args.target.where, store_rc);
		rc = refuse(cli, KOBO_CLI_EXIT_FAILED, "store_unavailable", message);
	} else if (cli->json) {
		char created[KEY_TIME_LEN];
		json_t *root = json_pack("{s:s,s:s,s:s,s:o,s:s}", "id", rec.id, "key", text,
		                         "name", rec.name, "scopes", scopes_json(rec.scopes),
		                         "created_at", time_text(created, rec.created_at_ms));
		print_json(root);
		json_decref(root);
	} else {
		char scopes[KOBO_SCOPES_TEXT_LEN_MAX + 1], created[KEY_TIME_LEN];
		kobo_scopes_format(rec.scopes, scopes, sizeof scopes);
		printf("key:        %s\n", text);
		printf("id:         %s\n", rec.id);
		printf("name:       %s\n", rec.name);
		printf("scopes:     %s\n", scopes);
		printf("created_at: %s\n", time_text(created, rec.created_at_ms));
		fprintf(stderr, "kobo: key: store the key now: it is shown only this once "
		        "(send it as Authorization: Bearer KEY)\n");
	}
	/* The only copy of the secret, once printed. */
	memset(text, 0, sizeof text);
	kobo_cli_target_free(&args.target);
	return rc;
}

/* ---- list ---- */

typedef struct key_list {
	json_t *keys;
	size_t count;
} key_list;

static int on_key(void *ctx, const kobo_api_key *key)
{
	key_list *list = ctx;
	json_t *obj = key_json(key);
	if (obj == NULL)
		return KOBO_ENOMEM;
	json_array_append_new(list->keys, obj);
	list->count++;
	return 0;
}

static void print_table(const json_t *keys)
{
	printf("%-16s  %-24s  %-24s  %-24s  %s\n", "ID", "CREATED_AT", "REVOKED_AT", "NAME",
	       "SCOPES");
	size_t i;
	json_t *key;
	json_array_foreach(keys, i, key) {
		char scopes[KOBO_SCOPES_TEXT_LEN_MAX + 1] = "";
		size_t k, used = 0;
		json_t *scope;
		json_array_foreach(json_object_get(key, "scopes"), k, scope) {
			int n = snprintf(scopes + used, sizeof scopes - used, "%s%s", k ? "," : "",
			                 json_string_value(scope));
			if (n > 0 && (size_t)n < sizeof scopes - used)
				used += (size_t)n;
		}
		const char *revoked = json_string_value(json_object_get(key, "revoked_at"));
		printf("%-16s  %-24s  %-24s  %-24s  %s\n",
		       json_string_value(json_object_get(key, "id")),
		       json_string_value(json_object_get(key, "created_at")),
		       revoked != NULL ? revoked : "-",
		       json_string_value(json_object_get(key, "name")), scopes);
	}
}

static int key_list_run(kobo_cli *cli, int argc, char **argv)
{
	static key_args args;
	const kobo_cli_option extra[] = {{.name = "all"}};
	int rc = parse(cli, argc, argv, &args, extra, 1, 0);
	if (rc != 0) {
		kobo_cli_target_free(&args.target);
		return rc;
	}
	bool all = args.options[1].present;
	kobo_store *store = NULL;
	if (kobo_cli_target_open_shard0("key", &args.target, true, &store) != KOBO_OK) {
		kobo_cli_target_free(&args.target);
		return refuse(cli, KOBO_CLI_EXIT_FAILED, "store_unavailable",
		              "cannot open shard 0's store (see above)");
	}
	key_list list = {.keys = json_array()};
	kobo_store_reader *reader = NULL;
	int store_rc = kobo_store_reader_open(store, &reader);
	if (store_rc == KOBO_OK) {
		store_rc = kobo_store_read_keys(reader, all, on_key, &list);
		kobo_store_reader_close(reader);
	}
	kobo_store_close(store);
	if (store_rc != KOBO_OK) {
		char message[640];
		snprintf(message, sizeof message, "cannot read the keys of the %s (error %d)",
		         args.target.where, store_rc);
		rc = refuse(cli, KOBO_CLI_EXIT_FAILED, "store_unavailable", message);
	} else if (cli->json) {
		json_t *root = json_pack("{s:O}", "keys", list.keys);
		print_json(root);
		json_decref(root);
	} else {
		print_table(list.keys);
		printf("%zu key%s%s\n", list.count, list.count == 1 ? "" : "s",
		       all ? "" : " (live; --all shows revoked ones too)");
	}
	json_decref(list.keys);
	kobo_cli_target_free(&args.target);
	return rc;
}

/* ---- revoke ---- */

typedef struct key_find {
	const char *id;
	kobo_api_key found;
	bool present;
} key_find;

static int on_key_find(void *ctx, const kobo_api_key *key)
{
	key_find *find = ctx;
	if (strcmp(key->id, find->id) != 0)
		return 0;
	find->found = *key;
	find->present = true;
	return 1; /* found: stop the scan */
}

static int key_revoke_run(kobo_cli *cli, int argc, char **argv)
{
	static key_args args;
	int rc = parse(cli, argc, argv, &args, NULL, 0, 1);
	if (rc != 0) {
		kobo_cli_target_free(&args.target);
		return rc;
	}
	if (args.positional_count != 1) {
		key_usage(stderr);
		kobo_cli_target_free(&args.target);
		return refuse(cli, KOBO_CLI_EXIT_USAGE, "invalid_request", "revoke needs a key ID");
	}
	const char *id = args.positional[0];
	if (!id_valid(id)) {
		kobo_cli_target_free(&args.target);
		return refuse(cli, KOBO_CLI_EXIT_USAGE, "invalid_request",
		              "ID: a key id is 16 lowercase hex digits (kobo key list shows "
		              "them; not the whole key)");
	}
	kobo_store *store = NULL;
	if (kobo_cli_target_open_shard0("key", &args.target, false, &store) != KOBO_OK) {
		kobo_cli_target_free(&args.target);
		return refuse(cli, KOBO_CLI_EXIT_FAILED, "store_unavailable",
		              "cannot open shard 0's store (see above)");
	}
	int store_rc = kobo_store_key_revoke(store, id, kobo_now_ms());
	/* Read it back: what is stored (a key revoked before keeps its time). */
	key_find find = {.id = id};
	if (store_rc == KOBO_OK) {
		kobo_store_reader *reader = NULL;
		store_rc = kobo_store_reader_open(store, &reader);
		if (store_rc == KOBO_OK) {
			int read_rc = kobo_store_read_keys(reader, true, on_key_find, &find);
			store_rc = find.present ? KOBO_OK : read_rc != KOBO_OK ? read_rc
			                                                       : KOBO_ENOTFOUND;
			kobo_store_reader_close(reader);
		}
	}
	kobo_store_close(store);
	char message[640];
	if (store_rc == KOBO_ENOTFOUND) {
		snprintf(message, sizeof message, "no key with id %s in the %s", id,
		         args.target.where);
		rc = refuse(cli, KOBO_CLI_EXIT_FAILED, "key_not_found", message);
	} else if (store_rc != KOBO_OK) {
		snprintf(message, sizeof message, "the %s could not revoke key %s (error %d)",
		         args.target.where, id, store_rc);
		rc = refuse(cli, KOBO_CLI_EXIT_FAILED, "store_unavailable", message);
	} else if (cli->json) {
		json_t *root = key_json(&find.found);
		print_json(root);
		json_decref(root);
	} else {
		char revoked[KEY_TIME_LEN];
		printf("revoked %s (%s) at %s\n", find.found.id, find.found.name,
		       time_text(revoked, find.found.revoked_at_ms));
	}
	kobo_cli_target_free(&args.target);
	return rc;
}

int kobo_cli_cmd_key(kobo_cli *cli, int argc, char **argv)
{
	if (argc < 2) {
		key_usage(stderr);
		return KOBO_CLI_EXIT_USAGE;
	}
	if (kobo_auth_init() != KOBO_OK) {
		fprintf(stderr, "kobo: key: libsodium cannot initialize (no randomness source)\n");
		return KOBO_CLI_EXIT_FAILED;
	}
	const char *sub = argv[1];
	if (strcmp(sub, "create") == 0)
		return key_create(cli, argc - 1, argv + 1);
	if (strcmp(sub, "list") == 0)
		return key_list_run(cli, argc - 1, argv + 1);
	if (strcmp(sub, "revoke") == 0)
		return key_revoke_run(cli, argc - 1, argv + 1);
	fprintf(stderr, "kobo: key: unknown subcommand: %s\n", sub);
	key_usage(stderr);
	return KOBO_CLI_EXIT_USAGE;
}
