/*
 * http_client.c — the CLI's HTTP transport: one libcurl easy handle reused
 * for every request of a run (so `history --all` keeps one connection
 * alive), the API key as Authorization: Bearer on every request when one
 * is given, a bounded growable response buffer, and the two response headers
 * the CLI reads (X-Request-Id, Idempotent-Replayed). Contract in cli.h.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "cli.h"

struct kobo_cli_http {
	CURL *curl;
	struct curl_slist *headers;
	char base_url[KOBO_CLI_URL_MAX];
	char *body;      /* response body, NUL-terminated */
	size_t body_len;
	size_t body_cap;
	bool body_too_large;
	kobo_cli_response *current; /* the response being filled */
};

kobo_cli_http *kobo_cli_http_open(const char *base_url, const char *request_id,
                                  const char *api_key)
{
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return NULL;
	kobo_cli_http *http = calloc(1, sizeof *http);
	if (http == NULL)
		return NULL;
	size_t len = strlen(base_url);
	while (len > 0 && base_url[len - 1] == '/')
		len--;
	if (len >= sizeof http->base_url)
		len = sizeof http->base_url - 1;
	memcpy(http->base_url, base_url, len);
	http->base_url[len] = '\0';

	http->curl = curl_easy_init();
	if (http->curl == NULL)
		goto fail;
	http->headers = curl_slist_append(NULL, "Accept: application/json");
	/* No "Expect: 100-continue" round trip before bodies. */
	if (http->headers != NULL)
		http->headers = curl_slist_append(http->headers, "Expect:");
	if (http->headers != NULL && request_id != NULL) {
		/* Sent as given, whatever its length: the server judges it. */
		char *header = NULL;
		if (asprintf(&header, "X-Request-Id: %s", request_id) < 0)
			goto fail;
		struct curl_slist *appended = curl_slist_append(http->headers, header);
		free(header);
		if (appended == NULL)
			goto fail;
		http->headers = appended;
	}
	if (http->headers != NULL && api_key != NULL) {
		char *header = NULL;
		if (asprintf(&header, "Authorization: Bearer %s", api_key) < 0)
			goto fail;
		struct curl_slist *appended = curl_slist_append(http->headers, header);
		/* The key is a secret: no copy left behind in freed memory. */
		memset(header, 0, strlen(header));
		free(header);
		if (appended == NULL)
			goto fail;
		http->headers = appended;
	}
	if (http->headers == NULL)
		goto fail;
	return http;
fail:
	kobo_cli_http_close(http);
	return NULL;
}

void kobo_cli_http_close(kobo_cli_http *http)
{
	if (http == NULL)
		return;
	curl_slist_free_all(http->headers);
	if (http->curl != NULL)
		curl_easy_cleanup(http->curl);
	free(http->body);
	free(http);
	curl_global_cleanup();
}

static size_t on_body(char *data, size_t size, size_t count, void *ctx)
{
	kobo_cli_http *http = ctx;
	size_t n = size * count;
	if (http->body_len + n > KOBO_CLI_RESPONSE_MAX) {
		http->body_too_large = true;
		return 0; /* makes curl fail with CURLE_WRITE_ERROR */
	}
	if (http->body_len + n + 1 > http->body_cap) {
		size_t cap = http->body_cap ? http->body_cap : 4096;
		while (cap < http->body_len + n + 1)
			cap *= 2;
		char *grown = realloc(http->body, cap);
		if (grown == NULL)
			return 0;
		http->body = grown;
		http->body_cap = cap;
	}
	memcpy(http->body + http->body_len, data, n);
	http->body_len += n;
	http->body[http->body_len] = '\0';
	return n;
}

/* Header "Name: value\r\n" → true with value[0..*value_len) when name
 * matches (case-insensitive). */
static bool header_value(const char *line, size_t len, const char *name,
                         const char **value, size_t *value_len)
{
	size_t name_len = strlen(name);
	if (len <= name_len || line[name_len] != ':' || strncasecmp(line, name, name_len) != 0)
		return false;
	const char *v = line + name_len + 1;
	const char *end = line + len;
	while (v < end && (*v == ' ' || *v == '\t'))
		v++;
	while (end > v && isspace((unsigned char)end[-1]))
		end--;
	*value = v;
	*value_len = (size_t)(end - v);
	return true;
}

static size_t on_header(char *data, size_t size, size_t count, void *ctx)
{
	kobo_cli_http *http = ctx;
	kobo_cli_response *r = http->current;
	size_t n = size * count;
	const char *value;
	size_t value_len;
	if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
		/* A new header block (after a 1xx): forget the previous one. */
		r->request_id[0] = '\0';
		r->replayed = false;
	} else if (header_value(data, n, "X-Request-Id", &value, &value_len)) {
		if (value_len >= sizeof r->request_id)
			value_len = sizeof r->request_id - 1;
		memcpy(r->request_id, value, value_len);
		r->request_id[value_len] = '\0';
	} else if (header_value(data, n, "Idempotent-Replayed", &value, &value_len)) {
		r->replayed = value_len == 4 && strncasecmp(value, "true", 4) == 0;
	}
	return n;
}

int kobo_cli_http_request(kobo_cli_http *http, const char *method,
                          const char *path, const char *body,
                          kobo_cli_response *out)
{
	char url[KOBO_CLI_URL_MAX * 2];
	int url_len = snprintf(url, sizeof url, "%s%s", http->base_url, path);
	if (url_len < 0 || (size_t)url_len >= sizeof url) {
		fprintf(stderr, "kobo: request URL too long: %s%s\n", http->base_url, path);
		return -1;
	}
	memset(out, 0, sizeof *out);
	http->current = out;
	http->body_len = 0;
	http->body_too_large = false;
	if (http->body != NULL)
		http->body[0] = '\0';

	struct curl_slist *headers = http->headers;
	struct curl_slist *with_type = NULL;
	CURL *c = http->curl;
	curl_easy_reset(c); /* keeps the connection cache, clears options */
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, KOBO_CLI_TIMEOUT_MS);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, KOBO_CLI_CONNECT_TIMEOUT_MS);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "kobo-cli/1");
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, http);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, http);
	if (strcmp(method, "GET") == 0) {
		curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
	} else {
		curl_easy_setopt(c, CURLOPT_POST, 1L);
		if (strcmp(method, "POST") != 0)
			curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body != NULL ? body : "");
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE,
		                 (curl_off_t)(body != NULL ? strlen(body) : 0));
	}
	if (body != NULL) {
		/* The shared list plus one header: copy rather than mutate it. */
		for (struct curl_slist *h = http->headers; h != NULL; h = h->next)
			with_type = curl_slist_append(with_type, h->data);
		with_type = curl_slist_append(with_type, "Content-Type: application/json");
		if (with_type == NULL) {
			fprintf(stderr, "kobo: out of memory\n");
			return -1;
		}
		headers = with_type;
	}
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);

	CURLcode rc = curl_easy_perform(c);
	curl_slist_free_all(with_type);
	http->current = NULL;
	if (rc != CURLE_OK) {
		if (http->body_too_large)
			fprintf(stderr, "kobo: response from %s larger than %u bytes\n", url,
			        KOBO_CLI_RESPONSE_MAX);
		else
			fprintf(stderr, "kobo: cannot reach %s: %s\n", url, curl_easy_strerror(rc));
		return -1;
	}
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
	out->body = http->body != NULL ? http->body : "";
	out->body_len = http->body_len;
	return 0;
}

char *kobo_cli_http_escape(kobo_cli_http *http, const char *text)
{
	char *escaped = curl_easy_escape(http->curl, text, (int)strlen(text));
	if (escaped == NULL)
		return NULL;
	char *copy = strdup(escaped);
	curl_free(escaped);
	return copy;
}
