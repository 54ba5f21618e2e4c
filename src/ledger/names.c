/*
 * names.c — wire names of the ledger's enums (result codes, transfer
 * statuses, void reasons, legs, saga states).
 *
 * The names are the snake_case strings of API.md; the HTTP layer, the CLI and
 * the store all print and parse them through these functions, so each name
 * is spelled in exactly one place.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger.h"
#include "ledger_internal.h"

static const char *const result_code_names[KOBO_RESULT_CODE_COUNT] = {
	[KOBO_RESULT_CREATED] = "created",
	[KOBO_RESULT_REPLAYED] = "replayed",
	[KOBO_RESULT_UPDATED] = "updated",
	[KOBO_RESULT_ID_CONFLICT] = "id_conflict",
	[KOBO_RESULT_ACCOUNT_NOT_FOUND] = "account_not_found",
	[KOBO_RESULT_INSUFFICIENT_FUNDS] = "insufficient_funds",
	[KOBO_RESULT_CURRENCY_MISMATCH] = "currency_mismatch",
	[KOBO_RESULT_SAME_ACCOUNT] = "same_account",
	[KOBO_RESULT_AMOUNT_OVERFLOW] = "amount_overflow",
	[KOBO_RESULT_NOT_APPLIED] = "not_applied",
	[KOBO_RESULT_TRANSFER_NOT_FOUND] = "transfer_not_found",
	[KOBO_RESULT_NOT_PENDING] = "not_pending",
	[KOBO_RESULT_AMOUNT_EXCEEDS_PENDING] = "amount_exceeds_pending",
	[KOBO_RESULT_SAGA_TIMEOUT] = "saga_timeout",
	[KOBO_RESULT_TRANSFER_IN_PROGRESS] = "transfer_in_progress",
};

const char *kobo_result_code_name(kobo_result_code code)
{
	if ((unsigned)code >= KOBO_RESULT_CODE_COUNT)
		return "unknown";
	return result_code_names[code];
}

kobo_result_code kobo_result_code_parse(const char *name)
{
	if (name == NULL)
		return KOBO_RESULT_CODE_COUNT;
	for (int code = 0; code < KOBO_RESULT_CODE_COUNT; code++) {
		if (strcmp(name, result_code_names[code]) == 0)
			return (kobo_result_code)code;
	}
	return KOBO_RESULT_CODE_COUNT;
}

const char *kobo_transfer_status_name(kobo_transfer_status status)
{
	switch (status) {
	case KOBO_STATUS_PROCESSING: return "processing";
	case KOBO_STATUS_PENDING: return "pending";
	case KOBO_STATUS_POSTED: return "posted";
	case KOBO_STATUS_VOIDED: return "voided";
	case KOBO_STATUS_REJECTED: return "rejected";
	}
	return "unknown";
}

const char *kobo_void_reason_name(kobo_void_reason reason)
{
	switch (reason) {
	case KOBO_VOID_NONE: return NULL;
	case KOBO_VOID_VOIDED: return "voided";
	case KOBO_VOID_EXPIRED: return "expired";
	case KOBO_VOID_COMPENSATED: return "compensated";
	}
	return NULL;
}

const char *kobo_leg_name(kobo_leg leg)
{
	switch (leg) {
	case KOBO_LEG_LOCAL: return "local";
	case KOBO_LEG_DEBIT: return "debit";
	case KOBO_LEG_CREDIT: return "credit";
	}
	return "unknown";
}

const char *kobo_saga_state_name(kobo_saga_state state)
{
	switch (state) {
	case KOBO_SAGA_NONE: return "none";
	case KOBO_SAGA_RESERVED: return "reserved";
	case KOBO_SAGA_POSTING: return "posting";
	case KOBO_SAGA_VOIDING: return "voiding";
	}
	return "unknown";
}

/* Parsers of the names above: each returns true and sets *out when name is
 * one of them (a NULL void reason is NONE, as stored). */
bool kobo_transfer_status_parse(const char *name, kobo_transfer_status *out)
{
	for (int i = KOBO_STATUS_PROCESSING; i <= KOBO_STATUS_REJECTED; i++) {
		if (name != NULL &&
		    strcmp(name, kobo_transfer_status_name((kobo_transfer_status)i)) == 0) {
			*out = (kobo_transfer_status)i;
			return true;
		}
	}
	return false;
}

bool kobo_void_reason_parse(const char *name, kobo_void_reason *out)
{
	if (name == NULL) {
		*out = KOBO_VOID_NONE;
		return true;
	}
	for (int i = KOBO_VOID_VOIDED; i <= KOBO_VOID_COMPENSATED; i++) {
		if (strcmp(name, kobo_void_reason_name((kobo_void_reason)i)) == 0) {
			*out = (kobo_void_reason)i;
			return true;
		}
	}
	return false;
}

bool kobo_leg_parse(const char *name, kobo_leg *out)
{
	for (int i = KOBO_LEG_LOCAL; i <= KOBO_LEG_CREDIT; i++) {
		if (name != NULL && strcmp(name, kobo_leg_name((kobo_leg)i)) == 0) {
			*out = (kobo_leg)i;
			return true;
		}
	}
	return false;
}

bool kobo_saga_state_parse(const char *name, kobo_saga_state *out)
{
	for (int i = KOBO_SAGA_NONE; i <= KOBO_SAGA_VOIDING; i++) {
		if (name != NULL &&
		    strcmp(name, kobo_saga_state_name((kobo_saga_state)i)) == 0) {
			*out = (kobo_saga_state)i;
			return true;
		}
	}
	return false;
}
