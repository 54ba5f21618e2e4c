/*
 * http_evhttp.c — the same JSON POST server on libevent's evhttp, one thread.
 * Not part of the product: `make measure-libs` runs it.   http_evhttp PORT
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <stdlib.h>

static void handle(struct evhttp_request *req, void *arg)
{
	(void)arg;
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	json_t *o = json_loadb((const char *)evbuffer_pullup(in, -1), len,
	                       JSON_REJECT_DUPLICATES, NULL);
	struct evbuffer *out = evbuffer_new();
	evbuffer_add(out, "{\"status\":\"posted\"}", 19);
	evhttp_send_reply(req, o ? 201 : 400, "Created", out);
	evbuffer_free(out);
	json_decref(o);
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	struct event_base *base = event_base_new();
	struct evhttp *http = evhttp_new(base);
	evhttp_set_gencb(http, handle, NULL);
	if (evhttp_bind_socket(http, "127.0.0.1", (unsigned short)atoi(argv[1])) != 0)
		return 1;
	event_base_dispatch(base);
	return 0;
}
