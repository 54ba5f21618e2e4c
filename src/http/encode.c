/*
 * encode.c — responses as JSON text, written with snprintf-style appends.
 *
 * The objects are exactly those of ../shared/API.md: account, transfer,
 * error, batch results. Money is printed as int64 with PRId64; metadata is
 * stored as compact JSON text and copied through unchanged. The mapping from
 * ledger results to HTTP statuses lives here, once (kobo_http_result_status).
 */
#include "codec.h"

#include <inttypes.h>
#include <string.h>

#include "../obs/obs.h"

void kobo_http_reply_init(kobo_http_reply *reply)
{
	memset(reply, 0, sizeof(*reply));
	kobo_http_buf_init(&reply->body);
}

void kobo_http_reply_free(kobo_http_reply *reply)
{
	kobo_http_buf_free(&reply->body);
	kobo_http_reply_init(reply);
}

static void json_str(kobo_http_buf *buf, const char *text)
{
	kobo_http_buf_json_string(buf, text, strlen(text));
}

void kobo_http_reply_error(kobo_http_reply *reply, int status, const char *code,
                           const char *message, const char *request_id)
{
	kobo_http_buf *buf = &reply->body;
	reply->status = status;
	buf->len = 0;
	buf->failed = false;
	kobo_http_buf_puts(buf, "{\"error\":{\"code\":");
	json_str(buf, code);
	kobo_http_buf_puts(buf, ",\"message\":");
	json_str(buf, message ? message : kobo_http_error_message(code));
	kobo_http_buf_puts(buf, ",\"request_id\":");
	json_str(buf, request_id ? request_id : "");
	kobo_http_buf_puts(buf, "}}");
}

static void metadata(kobo_http_buf *buf, const char *text, uint32_t len)
{
	if (text && len)
		kobo_http_buf_append(buf, text, len);
	else
		kobo_http_buf_puts(buf, "{}");
}

/* ,"created_by": the key id, or null when no key made the record (auth
 * off, Kobo's own clearing accounts, records older than keys). */
static void created_by(kobo_http_buf *buf, const char *key_id)
{
	kobo_http_buf_puts(buf, ",\"created_by\":");
	if (key_id[0] == '\0')
		kobo_http_buf_puts(buf, "null");
	else
		json_str(buf, key_id);
}

static void time_field(kobo_http_buf *buf, const char *name, int64_t epoch_ms)
{
	char text[32];
	kobo_format_time_ms(text, epoch_ms);
	kobo_http_buf_printf(buf, ",\"%s\":\"%s\"", name, text);
}

void kobo_http_encode_account(kobo_http_buf *buf, const kobo_account *account)
{
	kobo_http_buf_puts(buf, "{\"id\":");
	json_str(buf, account->id);
	kobo_http_buf_puts(buf, ",\"currency\":");
	json_str(buf, account->currency);
	kobo_http_buf_printf(buf, ",\"allow_negative\":%s,\"metadata\":",
	                     account->allow_negative ? "true" : "false");
	metadata(buf, account->metadata, account->metadata_len);
	kobo_http_buf_printf(buf,
	                     ",\"balance\":{\"posted\":%" PRId64 ",\"pending_out\":%" PRId64
	                     ",\"pending_in\":%" PRId64 ",\"available\":%" PRId64 "}",
	                     account->posted, account->pending_out, account->pending_in,
	                     kobo_account_available(account));
	time_field(buf, "created_at", account->created_at_ms);
	created_by(buf, account->created_by);
	kobo_http_buf_puts(buf, "}");
}

void kobo_http_encode_transfer(kobo_http_buf *buf, const kobo_transfer *transfer)
{
	kobo_http_buf_puts(buf, "{\"id\":");
	json_str(buf, transfer->id);
	kobo_http_buf_puts(buf, ",\"from\":");
	json_str(buf, transfer->from);
	kobo_http_buf_puts(buf, ",\"to\":");
	json_str(buf, transfer->to);
	kobo_http_buf_printf(buf, ",\"amount\":%" PRId64 ",\"currency\":", transfer->amount);
	json_str(buf, transfer->currency);
	const char *status = kobo_transfer_status_name(transfer->status);
	kobo_http_buf_printf(buf, ",\"status\":\"%s\",\"posted_amount\":%" PRId64
	                     ",\"void_reason\":",
	                     status ? status : "processing", transfer->posted_amount);
	const char *reason = transfer->status == KOBO_STATUS_VOIDED
	                     ? kobo_void_reason_name(transfer->void_reason) : NULL;
	if (reason)
		kobo_http_buf_printf(buf, "\"%s\"", reason);
	else
		kobo_http_buf_puts(buf, "null");
	kobo_http_buf_printf(buf, ",\"timeout_seconds\":%" PRIu32 ",\"metadata\":",
	                     transfer->timeout_seconds);
	metadata(buf, transfer->metadata, transfer->metadata_len);
	kobo_http_buf_puts(buf, ",\"request_id\":");
	json_str(buf, transfer->request_id);
	time_field(buf, "created_at", transfer->created_at_ms);
	time_field(buf, "updated_at", transfer->updated_at_ms);
	created_by(buf, transfer->created_by);
	if (transfer->status == KOBO_STATUS_REJECTED ||
	    (transfer->status == KOBO_STATUS_VOIDED &&
	     transfer->void_reason == KOBO_VOID_COMPENSATED &&
	     transfer->error_code != KOBO_RESULT_CREATED)) {
		kobo_http_buf_puts(buf, ",\"error\":{\"code\":");
		json_str(buf, kobo_result_code_name(transfer->error_code));
		kobo_http_buf_puts(buf, "}");
	}
	kobo_http_buf_puts(buf, "}");
}

int kobo_http_result_status(const kobo_result *result, const char **code)
{
	*code = NULL;
	switch (result->code) {
	case KOBO_RESULT_CREATED:
		return 201;
	case KOBO_RESULT_REPLAYED:
		/* A refusal is recorded so that a retry replays the refusal. */
		if (result->has_transfer &&
		    result->transfer.status == KOBO_STATUS_REJECTED) {
			*code = kobo_result_code_name(result->transfer.error_code);
			return 422;
		}
		return 200;
	case KOBO_RESULT_UPDATED:
		return 200;
	case KOBO_RESULT_ID_CONFLICT:
		*code = "id_conflict";
		return 409;
	case KOBO_RESULT_TRANSFER_NOT_FOUND:
		*code = "transfer_not_found";
		return 404;
	case KOBO_RESULT_TRANSFER_IN_PROGRESS:
		/* Not a refusal: a saga step holds the record for a moment. */
		*code = "transfer_in_progress";
		return 409;
	default:
		*code = kobo_result_code_name(result->code);
		if (!*code)
			*code = "internal_error";
		return 422;
	}
}

const char *kobo_http_error_message(const char *code)
{
	static const struct {
		const char *code;
		const char *message;
	} messages[] = {
		{ "account_not_found", "account not found" },
		{ "transfer_not_found", "transfer not found" },
		{ "insufficient_funds", "the payer's available balance is below the amount" },
		{ "currency_mismatch", "the accounts and the transfer do not share one currency" },
		{ "same_account", "from and to are the same account" },
		{ "amount_overflow", "the transfer would overflow a balance" },
		{ "not_applied", "another transfer of the atomic batch failed" },
		{ "not_pending", "the transfer is not a pending hold" },
		{ "transfer_in_progress", "a cross-shard step of this transfer is under way; retry the same request" },
		{ "amount_exceeds_pending", "the amount exceeds the held amount" },
		{ "id_conflict", "this id was used with other parameters" },
		{ "atomic_cross_shard", "an atomic batch must stay on one shard" },
		{ "overloaded", "the server is overloaded; retry later" },
		{ "capacity_exhausted", "the shard holds as many accounts or transfers as it is configured for; nothing was stored (README: Capacity)" },
		{ "storage_unavailable", "storage failed; the write may or may not be durable: retry with the same id, it applies at most once" },
		{ "shutting_down", "the server is shutting down; retry with the same id" },
		{ "internal_error", "an internal error refused the batch; nothing was applied" },
		{ "not_found", "no such path" },
		{ "method_not_allowed", "method not allowed on this path" },
		{ "payload_too_large", "request body too large" },
	};
	for (size_t i = 0; i < sizeof(messages) / sizeof(messages[0]); i++)
		if (strcmp(messages[i].code, code) == 0)
			return messages[i].message;
	return code;
}

/* kobo_rejections_total counts business refusals once: not their replays
 * (counted the first time), not a step in progress (nothing was decided). */
static bool counts_as_rejection(kobo_result_code code)
{
	return code != KOBO_RESULT_REPLAYED && code != KOBO_RESULT_TRANSFER_IN_PROGRESS;
}

void kobo_http_reply_result(kobo_http_reply *reply, const kobo_result *result,
                            const char *request_id)
{
	const char *code;
	int status = kobo_http_result_status(result, &code);
	reply->replayed = result->code == KOBO_RESULT_REPLAYED;
	if (code) {
		if (counts_as_rejection(result->code))
			kobo_metrics_rejected(result->code);
		kobo_http_reply_error(reply, status, code, NULL, request_id);
		if (result->code == KOBO_RESULT_TRANSFER_IN_PROGRESS)
			reply->retry_after_s = 1; /* the same request, shortly */
		return;
	}
	reply->status = status;
	reply->body.len = 0;
	if (result->has_account)
		kobo_http_encode_account(&reply->body, &result->account);
	else
		kobo_http_encode_transfer(&reply->body, &result->transfer);
}

void kobo_http_encode_batch_item(kobo_http_buf *buf, const char *id,
                                 const kobo_result *result)
{
	const char *code;
	int status = kobo_http_result_status(result, &code);
	kobo_http_buf_puts(buf, "{\"id\":");
	json_str(buf, id);
	kobo_http_buf_printf(buf, ",\"status\":%d,", status);
	if (code) {
		if (counts_as_rejection(result->code))
			kobo_metrics_rejected(result->code);
		kobo_http_buf_puts(buf, "\"error\":{\"code\":");
		json_str(buf, code);
		kobo_http_buf_puts(buf, ",\"message\":");
		json_str(buf, kobo_http_error_message(code));
		kobo_http_buf_puts(buf, "}}");
	} else {
		kobo_http_buf_puts(buf, "\"transfer\":");
		kobo_http_encode_transfer(buf, &result->transfer);
		kobo_http_buf_puts(buf, "}");
	}
}

void kobo_http_encode_batch_accepted(kobo_http_buf *buf, const kobo_transfer *transfer)
{
	kobo_http_buf_puts(buf, "{\"id\":");
	json_str(buf, transfer->id);
	kobo_http_buf_puts(buf, ",\"status\":202,\"transfer\":");
	kobo_http_encode_transfer(buf, transfer);
	kobo_http_buf_puts(buf, "}");
}

void kobo_http_reply_batch(kobo_http_reply *reply, const kobo_op *ops,
                           const kobo_result *results, size_t count,
                           const char *request_id)
{
	(void)request_id;
	kobo_http_buf *buf = &reply->body;
	reply->status = 200;
	buf->len = 0;
	/* Most transfers encode in well under 512 bytes plus their metadata. */
	kobo_http_buf_reserve(buf, count * 512 + 32);
	kobo_http_buf_puts(buf, "{\"results\":[");
	for (size_t i = 0; i < count; i++) {
		if (i)
			kobo_http_buf_puts(buf, ",");
		kobo_http_encode_batch_item(buf, ops[i].u.transfer.id, &results[i]);
	}
	kobo_http_buf_puts(buf, "]}");
}

void kobo_http_reply_accepted(kobo_http_reply *reply, const kobo_transfer *transfer)
{
	reply->status = 202;
	reply->body.len = 0;
	kobo_http_encode_transfer(&reply->body, transfer);
}

void kobo_http_saga_outcome(const kobo_transfer *final, kobo_op_kind kind,
                            bool replayed, kobo_result *out)
{
	memset(out, 0, sizeof(*out));
	out->has_transfer = true;
	out->transfer = *final;
	bool refused_post = kind == KOBO_OP_POST && final->status == KOBO_STATUS_PENDING &&
	                    final->error_code != KOBO_RESULT_CREATED;
	bool compensated = final->status == KOBO_STATUS_VOIDED &&
	                   final->void_reason == KOBO_VOID_COMPENSATED &&
	                   final->error_code != KOBO_RESULT_CREATED;
	if ((kind == KOBO_OP_CREATE_TRANSFER && compensated) || refused_post) {
		/* B refused: the payer was made whole; answer like a refusal. */
		out->code = final->error_code;
		return;
	}
	if ((kind == KOBO_OP_POST || kind == KOBO_OP_VOID) &&
	    final->status == KOBO_STATUS_PROCESSING) {
		/* Another step of the saga began before this answer was read:
		 * the hold has not ended, so not_pending would be wrong. */
		out->code = KOBO_RESULT_TRANSFER_IN_PROGRESS;
		return;
	}
	if ((kind == KOBO_OP_POST && final->status != KOBO_STATUS_POSTED) ||
	    (kind == KOBO_OP_VOID && final->status != KOBO_STATUS_VOIDED)) {
		out->code = KOBO_RESULT_NOT_PENDING;
		return;
	}
	if (replayed)
		out->code = KOBO_RESULT_REPLAYED;
	else
		out->code = kind == KOBO_OP_CREATE_TRANSFER ? KOBO_RESULT_CREATED
		                                            : KOBO_RESULT_UPDATED;
}

void kobo_http_encode_event(kobo_http_buf *buf, const kobo_event *event)
{
	char text[32];
	kobo_format_time_ms(text, event->at_ms);
	kobo_http_buf_printf(buf, "{\"at\":\"%s\",\"at_ms\":%" PRId64 ",\"event\":\"%s\""
	                     ",\"transfer_id\":", text, event->at_ms,
	                     kobo_event_kind_name(event->kind));
	json_str(buf, event->transfer_id);
	kobo_http_buf_printf(buf, ",\"shard\":%" PRIu32 ",\"node\":", event->shard);
	json_str(buf, event->node);
	kobo_http_buf_puts(buf, ",\"request_id\":");
	json_str(buf, event->request_id);
	kobo_http_buf_puts(buf, ",\"trace_id\":");
	if (event->trace_id[0] == '\0')
		kobo_http_buf_puts(buf, "null");
	else
		json_str(buf, event->trace_id);
	kobo_http_buf_puts(buf, ",\"key_id\":");
	if (event->key_id[0] == '\0')
		kobo_http_buf_puts(buf, "null");
	else
		json_str(buf, event->key_id);
	kobo_http_buf_printf(buf, ",\"leg\":\"%s\",\"status\":\"%s\",\"amount\":%" PRId64
	                     ",\"seq\":%" PRId64 "}", kobo_leg_name(event->leg),
	                     kobo_transfer_status_name(event->status), event->amount,
	                     event->seq);
}
