/*
 * log.c — structured logs: one JSON object per line on stderr.
 * Contract in obs.h.
 *
 * Each line is built in a stack buffer of KOBO_LOG_LINE_MAX bytes and handed
 * to the kernel with one write(2); lines up to PIPE_BUF (4096) bytes written
 * that way never interleave with other threads' lines, and no lock is taken.
 *
 * Truncation keeps the line valid JSON: the caller's fields are cut after
 * the last complete top-level member that fits (found by a small scanner
 * that tracks strings and nesting), and "truncated":true closes the object.
 * That relies on the caller's fields being valid JSON members, which obs.h
 * already demands.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "obs.h"

static atomic_int log_level_min = KOBO_LOG_INFO;

static const char *const level_names[] = {
	[KOBO_LOG_DEBUG] = "debug",
	[KOBO_LOG_INFO] = "info",
	[KOBO_LOG_WARN] = "warn",
	[KOBO_LOG_ERROR] = "error",
};

#define LEVEL_COUNT (sizeof level_names / sizeof level_names[0])
/* Escaped event names longer than this are cut; events are constants. */
#define EVENT_ESCAPED_MAX 256

static const char TRUNCATED_SUFFIX[] = ",\"truncated\":true}\n";

_Static_assert(KOBO_LOG_LINE_MAX >= 64 + EVENT_ESCAPED_MAX + sizeof TRUNCATED_SUFFIX,
               "a log line must hold ts, level, a full event and the truncation mark");

int kobo_log_set_level_name(const char *name)
{
	if (name == NULL)
		return KOBO_EINVAL;
	for (size_t i = 0; i < LEVEL_COUNT; i++) {
		if (strcmp(name, level_names[i]) == 0) {
			kobo_log_set_level((kobo_log_level)i);
			return KOBO_OK;
		}
	}
	return KOBO_EINVAL;
}

void kobo_log_set_level(kobo_log_level level)
{
	if ((int)level < KOBO_LOG_DEBUG)
		level = KOBO_LOG_DEBUG;
	if ((int)level > KOBO_LOG_ERROR)
		level = KOBO_LOG_ERROR;
	atomic_store_explicit(&log_level_min, (int)level, memory_order_relaxed);
}

bool kobo_log_enabled(kobo_log_level level)
{
	return (int)level >= atomic_load_explicit(&log_level_min, memory_order_relaxed);
}

/* Length of the valid UTF-8 sequence starting at s (1..4), or 0 if s does
 * not start one. Rejects overlong forms, surrogates and code points past
 * U+10FFFF, so whatever passes is valid JSON text. */
static size_t utf8_sequence_length(const unsigned char *s)
{
	unsigned char c = s[0];
	if (c < 0x80)
		return 1;
	size_t n;
	unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the 2nd byte */
	if (c >= 0xC2 && c <= 0xDF) {
		n = 2;
	} else if (c >= 0xE0 && c <= 0xEF) {
		n = 3;
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		n = 4;
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
	} else {
		return 0;
	}
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xBF)
			return 0;
	return n;
}

char *kobo_json_escape(char *dst, size_t dst_size, const char *src)
{
	if (dst_size == 0)
		return dst;
	size_t len = 0;
	const unsigned char *s = (const unsigned char *)(src != NULL ? src : "");
	while (*s != '\0') {
		char piece[8];
		size_t piece_len;
		size_t consumed = 1;
		unsigned char c = *s;
		switch (c) {
		case '"': memcpy(piece, "\\\"", 2); piece_len = 2; break;
		case '\\': memcpy(piece, "\\\\", 2); piece_len = 2; break;
		case '\b': memcpy(piece, "\\b", 2); piece_len = 2; break;
		case '\f': memcpy(piece, "\\f", 2); piece_len = 2; break;
		case '\n': memcpy(piece, "\\n", 2); piece_len = 2; break;
		case '\r': memcpy(piece, "\\r", 2); piece_len = 2; break;
		case '\t': memcpy(piece, "\\t", 2); piece_len = 2; break;
		default:
			if (c < 0x20) {
				snprintf(piece, sizeof piece, "\\u%04x", c);
				piece_len = 6;
			} else {
				size_t n = utf8_sequence_length(s);
				if (n == 0) {
					/* Invalid UTF-8 would make the whole line
					 * unparsable: replace the byte with U+FFFD. */
					memcpy(piece, "\\ufffd", 6);
					piece_len = 6;
				} else {
					memcpy(piece, s, n);
					piece_len = n;
					consumed = n;
				}
			}
			break;
		}
		/* Never split an escape or a multi-byte character. */
		if (len + piece_len >= dst_size)
			break;
		memcpy(dst + len, piece, piece_len);
		len += piece_len;
		s += consumed;
	}
	dst[len] = '\0';
	return dst;
}

/* Returns the length of the longest prefix of fields[0..len) that consists
 * of complete top-level members, i.e. the offset of the last top-level comma
 * in it, or len itself when complete is true (the text was not cut). */
static size_t complete_members_prefix(const char *fields, size_t len, bool complete)
{
	if (complete)
		return len;
	size_t cut = 0;
	int depth = 0;
	bool in_string = false;
	for (size_t i = 0; i < len; i++) {
		char c = fields[i];
		if (in_string) {
			if (c == '\\')
				i++; /* skip the escaped character */
			else if (c == '"')
				in_string = false;
			continue;
		}
		if (c == '"')
			in_string = true;
		else if (c == '{' || c == '[')
			depth++;
		else if (c == '}' || c == ']')
			depth--;
		else if (c == ',' && depth == 0)
			cut = i;
	}
	return cut;
}

static void write_line(const char *line, size_t len)
{
	while (len > 0) {
		ssize_t n = write(STDERR_FILENO, line, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return; /* nowhere left to report a logging failure */
		}
		line += n;
		len -= (size_t)n;
	}
}

void kobo_log(kobo_log_level level, const char *event, const char *fields_fmt, ...)
{
	if (!kobo_log_enabled(level))
		return;
	if ((int)level < 0 || (size_t)level >= LEVEL_COUNT)
		level = KOBO_LOG_ERROR;

	char ts[25];
	kobo_format_time_ms(ts, kobo_now_ms());
	char event_escaped[EVENT_ESCAPED_MAX];
	kobo_json_escape(event_escaped, sizeof event_escaped, event);

	char line[KOBO_LOG_LINE_MAX];
	int prefix = snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"event\":\"%s\"",
	                      ts, level_names[level], event_escaped);
	size_t len = (size_t)prefix; /* fits: see the _Static_assert above */

	bool truncated = false;
	if (fields_fmt != NULL && fields_fmt[0] != '\0') {
		/* Room for the fields: the line minus prefix, the comma before
		 * them and the longest possible ending. */
		size_t room = sizeof line - len - 1 - (sizeof TRUNCATED_SUFFIX - 1);
		char fields[KOBO_LOG_LINE_MAX];
		va_list args;
		va_start(args, fields_fmt);
		int needed = vsnprintf(fields, room + 1, fields_fmt, args);
		va_end(args);
		if (needed > 0) {
			size_t have = (size_t)needed <= room ? (size_t)needed : room;
			truncated = (size_t)needed > room;
			size_t keep = complete_members_prefix(fields, have, !truncated);
			if (keep > 0) {
				line[len++] = ',';
				memcpy(line + len, fields, keep);
				len += keep;
			}
		}
	}
	if (truncated) {
		memcpy(line + len, TRUNCATED_SUFFIX, sizeof TRUNCATED_SUFFIX - 1);
		len += sizeof TRUNCATED_SUFFIX - 1;
	} else {
		line[len++] = '}';
		line[len++] = '\n';
	}
	write_line(line, len);
}
