/*
 * main.c — `kobo`, the command-line client: reads the global options and
 * hands the rest to a command. The commands live in commands.c (HTTP),
 * audit.c and key.c (offline); the internal contract is cli.h.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

void kobo_cli_usage(FILE *stream)
{
	fputs("usage: kobo [--server URL] [--key KEY] [--json] [--request-id ID] COMMAND ...\n"
	      "\n"
	      "  kobo account create ID --currency CUR [--allow-negative] [--metadata JSON]\n"
	      "  kobo account get ID\n"
	      "  kobo transfer --from A --to B --amount N --currency CUR [--id ID] [--pending]\n"
	      "                [--timeout SECONDS] [--metadata JSON]\n"
	      "  kobo transfer get ID\n"
	      "  kobo post ID [--amount N]\n"
	      "  kobo void ID\n"
	      "  kobo history ACCOUNT [--limit N] [--all]\n"
	      "  kobo trace ID [--logs DIR]   (ID: a transfer id or a request id; exit 1 if\n"
	      "                                nothing is found)\n"
	      "  kobo audit --data DIR [--json] [--metrics-file FILE]\n"
	      "  kobo audit --postgres URL [--postgres URL ...] [--json] [--metrics-file FILE]\n"
	      "  kobo key create --name NAME --scopes S1,S2 [STORE]   (prints the key once)\n"
	      "  kobo key list [--all] [STORE]\n"
	      "  kobo key revoke ID [STORE]\n"
	      "    STORE: --data DIR | --postgres URL ... (shard order); else KOBO_POSTGRES,\n"
	      "    KOBO_DATA, ./var. Keys live in shard 0's store; no server needed.\n"
	      "\n"
	      "The server is $KOBO_URL, else " KOBO_CLI_DEFAULT_URL ". The API key (sent as\n"
	      "Authorization: Bearer) is --key, else $KOBO_API_KEY (preferred: a flag shows in ps).\n"
	      "Amounts are integers in minor units. --json prints the server's JSON answer\n"
	      "on one line.\n"
	      "A transfer without --id gets a random id \"cli:<32 hex>\", printed first,\n"
	      "so it can be retried safely with --id.\n"
	      "Exit status: 0 success, 1 refused / unreachable / audit problem, 2 usage,\n"
	      "3 audit unknown (clearing pairs unsettled while kobod writes).\n",
	      stream);
}

kobo_cli_http *kobo_cli_connect(kobo_cli *cli)
{
	if (cli->http != NULL)
		return cli->http;
	cli->http = kobo_cli_http_open(cli->server_url, cli->request_id, cli->api_key);
	if (cli->http == NULL)
		fprintf(stderr, "kobo: cannot set up an HTTP client (libcurl)\n");
	return cli->http;
}

typedef struct command {
	const char *name;
	int (*run)(kobo_cli *cli, int argc, char **argv);
} command;

static const command commands[] = {
	{"account", kobo_cli_cmd_account},
	{"transfer", kobo_cli_cmd_transfer},
	{"post", kobo_cli_cmd_post},
	{"void", kobo_cli_cmd_void},
	{"history", kobo_cli_cmd_history},
	{"trace", kobo_cli_cmd_trace},
	{"audit", kobo_cli_cmd_audit},
	{"key", kobo_cli_cmd_key},
};

/* Takes the value of a global option at argv[*i] ("--name V" or
 * "--name=V"); NULL (after printing why) when it is missing. */
static const char *global_value(int argc, char **argv, int *i, const char *name)
{
	size_t n = strlen(name);
	if (argv[*i][n] == '=')
		return argv[*i] + n + 1;
	if (*i + 1 >= argc) {
		fprintf(stderr, "kobo: %s needs a value\n", name);
		return NULL;
	}
	return argv[++*i];
}

static bool is_option(const char *arg, const char *name)
{
	size_t n = strlen(name);
	return strncmp(arg, name, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

int main(int argc, char **argv)
{
	kobo_cli cli = {0};
	const char *env_url = getenv("KOBO_URL");
	cli.server_url = env_url != NULL && env_url[0] != '\0' ? env_url : KOBO_CLI_DEFAULT_URL;

	int i = 1;
	for (; i < argc && strncmp(argv[i], "-", 1) == 0; i++) {
		const char *arg = argv[i];
		if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
			kobo_cli_usage(stdout);
			return KOBO_CLI_EXIT_USAGE;
		} else if (strcmp(arg, "--json") == 0) {
			cli.json = true;
		} else if (is_option(arg, "--server")) {
			if ((cli.server_url = global_value(argc, argv, &i, "--server")) == NULL)
				return KOBO_CLI_EXIT_USAGE;
		} else if (is_option(arg, "--key")) {
			if ((cli.api_key = global_value(argc, argv, &i, "--key")) == NULL)
				return KOBO_CLI_EXIT_USAGE;
			if (!kobo_cli_header_safe(cli.api_key)) {
				fprintf(stderr, "kobo: --key: control characters are not allowed\n");
				return KOBO_CLI_EXIT_USAGE;
			}
		} else if (is_option(arg, "--request-id")) {
			if ((cli.request_id = global_value(argc, argv, &i, "--request-id")) == NULL)
				return KOBO_CLI_EXIT_USAGE;
			if (!kobo_cli_header_safe(cli.request_id)) {
				fprintf(stderr, "kobo: --request-id: control characters are not allowed\n");
				return KOBO_CLI_EXIT_USAGE;
			}
		} else {
			fprintf(stderr, "kobo: unknown option: %s\n", arg);
			kobo_cli_usage(stderr);
			return KOBO_CLI_EXIT_USAGE;
		}
	}
	if (cli.api_key == NULL) {
		const char *env_key = getenv("KOBO_API_KEY");
		if (env_key != NULL && env_key[0] != '\0') {
			if (!kobo_cli_header_safe(env_key)) {
				fprintf(stderr, "kobo: KOBO_API_KEY: control characters are not allowed\n");
				return KOBO_CLI_EXIT_USAGE;
			}
			cli.api_key = env_key;
		}
	}
	if (i >= argc) {
		kobo_cli_usage(stderr);
		return KOBO_CLI_EXIT_USAGE;
	}
	if (strcmp(argv[i], "help") == 0) {
		kobo_cli_usage(stdout);
		return KOBO_CLI_EXIT_USAGE;
	}

	const command *chosen = NULL;
	for (size_t k = 0; k < sizeof commands / sizeof commands[0]; k++)
		if (strcmp(argv[i], commands[k].name) == 0)
			chosen = &commands[k];
	if (chosen == NULL) {
		fprintf(stderr, "kobo: unknown command: %s\n", argv[i]);
		kobo_cli_usage(stderr);
		return KOBO_CLI_EXIT_USAGE;
	}
	/* --help anywhere after the command also shows the usage. */
	for (int k = i + 1; k < argc && strcmp(argv[k], "--") != 0; k++) {
		if (strcmp(argv[k], "--help") == 0 || strcmp(argv[k], "-h") == 0) {
			kobo_cli_usage(stdout);
			return KOBO_CLI_EXIT_USAGE;
		}
	}

	int rc = chosen->run(&cli, argc - i, argv + i);
	if (cli.http != NULL)
		kobo_cli_http_close(cli.http);
	fflush(stdout);
	return rc;
}
