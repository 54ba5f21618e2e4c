/*
 * http_mhd.c — a minimal libmicrohttpd server that parses a JSON POST body
 * with jansson and answers 201, to compare MHD's poll and epoll modes under
 * wrk. Not part of the product: `make measure-libs` runs it.
 *   http_mhd poll|epoll PORT
 */
#include <jansson.h>
#include <microhttpd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct body {
	size_t len;
	char buf[4096];
} body;

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version,
                              const char *data, size_t *size, void **ctx)
{
	(void)cls; (void)url; (void)method; (void)version;
	body *b = *ctx;
	if (!b) {
		*ctx = calloc(1, sizeof(body));
		return MHD_YES;
	}
	if (*size) {
		size_t n = *size < sizeof(b->buf) - b->len ? *size : sizeof(b->buf) - b->len;
		memcpy(b->buf + b->len, data, n);
		b->len += n;
		*size = 0;
		return MHD_YES;
	}
	json_t *o = json_loadb(b->buf, b->len, JSON_REJECT_DUPLICATES, NULL);
	static const char ok[] = "{\"status\":\"posted\"}";
	struct MHD_Response *r = MHD_create_response_from_buffer(
		sizeof(ok) - 1, (void *)ok, MHD_RESPMEM_PERSISTENT);
	enum MHD_Result ret = MHD_queue_response(c, o ? 201 : 400, r);
	MHD_destroy_response(r);
	json_decref(o);
	return ret;
}

static void done(void *cls, struct MHD_Connection *c, void **ctx,
                 enum MHD_RequestTerminationCode code)
{
	(void)cls; (void)c; (void)code;
	free(*ctx);
	*ctx = NULL;
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	unsigned flags = strcmp(argv[1], "epoll") == 0 ? MHD_USE_EPOLL_INTERNAL_THREAD
	                                               : MHD_USE_POLL_INTERNAL_THREAD;
	struct MHD_Daemon *d = MHD_start_daemon(
		flags, (uint16_t)atoi(argv[2]), NULL, NULL, handle, NULL,
		MHD_OPTION_NOTIFY_COMPLETED, done, NULL,
		MHD_OPTION_CONNECTION_TIMEOUT, 30u,
		MHD_OPTION_CONNECTION_LIMIT, 2048u, MHD_OPTION_END);
	if (!d)
		return 1;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	int sig;
	sigwait(&set, &sig);
	MHD_stop_daemon(d);
	return 0;
}
