"""
test_api.py — every endpoint and every status / error code of API.md, against
a real kobod. Tests share one server per module and name their own accounts
with uid(), so they do not see each other's money.
"""
import os
import re
import socket
import time

import pytest

from kobotest import (INT64_MAX, REQUEST_ID_RE, TIME_RE, account, balance, create_account,
                      expect_balance, expect_error, expect_not_replayed, expect_replayed,
                      expect_status, fund, get_transfer, id_on_shard, make_account, read_response,
                      transfer, transfer_body, uid, wait_readable, wait_until)

TRANSFER_FIELDS = {"id", "from", "to", "amount", "currency", "status", "posted_amount",
                   "void_reason", "timeout_seconds", "metadata", "request_id", "created_at",
                   "updated_at", "created_by"}


@pytest.fixture
def srv(shared_server):
    return shared_server


@pytest.fixture
def cash(srv):
    """An allow_negative NGN system account to fund wallets from."""
    cid = uid("cash")
    make_account(srv, cid, "NGN", allow_negative=True)
    return cid


def wallet(srv, cash=None, amount=0, currency="NGN", **kw):
    wid = uid("wallet")
    make_account(srv, wid, currency, **kw)
    if amount:
        fund(srv, cash, wid, amount, currency)
    return wid


# ------------------------------------------------------------ process ----

def test_ready_line_printed_on_stdout(srv):
    want = f"kobod ready on http://127.0.0.1:{srv.port}"
    seen = wait_until(lambda: want in srv.stdout_text(), 5)
    assert seen, (f"expected stdout to contain {want!r} once ready (flushed), "
                  f"saw {srv.stdout_text()[-500:]!r}")


@pytest.mark.embedded_only("checks the SQLite file in the --data dir")
def test_data_dir_holds_shard_0_db(srv):
    path = os.path.join(srv.data, "shard-0.db")
    assert os.path.isfile(path), (f"expected the SQLite store at {path}, saw directory "
                                  f"{sorted(os.listdir(srv.data)) if os.path.isdir(srv.data) else 'missing'}")


def test_healthz_and_readyz_answer_200(srv):
    expect_status(srv.get("/healthz"), 200, "GET /healthz")
    expect_status(srv.get("/readyz"), 200, "GET /readyz")


def test_metrics_exposes_request_counter(srv):
    srv.get("/healthz")
    r = expect_status(srv.get("/metrics"), 200, "GET /metrics")
    text = r.raw.decode("utf-8", "replace")
    assert "kobo_http_requests_total" in text, (
        f"expected kobo_http_requests_total in /metrics, saw {text[:1500]!r}")
    assert re.search(r"^kobo_http_requests_total(\{[^}]*\})? \d+", text, re.M), (
        f"expected a sample line 'kobo_http_requests_total{{...}} N', saw {text[:1500]!r}")


# ----------------------------------------------------------- accounts ----

def test_account_create_201_then_replay_200(srv):
    aid = uid("acct")
    r = create_account(srv, aid, "NGN", metadata={"owner": "ada"})
    expect_status(r, 201, "first create")
    expect_not_replayed(r, "first create")
    b = r.body
    assert b["id"] == aid and b["currency"] == "NGN", f"expected id/currency echoed, saw {b}"
    assert b["allow_negative"] is False, f"allow_negative must default to false, saw {b}"
    assert b["metadata"] == {"owner": "ada"}, f"expected metadata as sent, saw {b}"
    assert b["balance"] == {"posted": 0, "pending_out": 0, "pending_in": 0, "available": 0}, (
        f"expected a zero balance, saw {b.get('balance')}")
    assert TIME_RE.match(b.get("created_at") or ""), f"created_at must be RFC 3339 ms UTC, saw {b}"
    # The shared server listens on loopback with auth off: no key made it.
    assert "created_by" in b and b["created_by"] is None, f"expected created_by null, saw {b}"

    again = create_account(srv, aid, "NGN", metadata={"owner": "ada"})
    expect_replayed(again, 200, "replayed create")
    assert again.body["id"] == aid and again.body["created_at"] == b["created_at"], (
        f"replay must return the original account, expected {b}, saw {again.body}")


def test_account_replay_with_explicit_default_allow_negative(srv):
    aid = uid("acct")
    expect_status(create_account(srv, aid, "NGN"), 201)
    expect_replayed(create_account(srv, aid, "NGN", allow_negative=False), 200,
                    "same account with allow_negative spelled out as its default")


@pytest.mark.parametrize("change", [
    {"currency": "USD"},
    {"allow_negative": True},
    {"metadata": {"owner": "someone else"}},
])
def test_account_id_conflict_409(srv, change):
    aid = uid("acct")
    expect_status(create_account(srv, aid, "NGN", allow_negative=False, metadata={"owner": "ada"}),
                  201)
    body = {"id": aid, "currency": "NGN", "allow_negative": False, "metadata": {"owner": "ada"}}
    body.update(change)
    r = srv.post("/v1/accounts", body)
    expect_error(r, 409, "id_conflict", f"same id, changed {change}")
    a = account(srv, aid)
    assert a["currency"] == "NGN" and a["allow_negative"] is False, (
        f"the conflicting create must not change the account, saw {a}")


def test_get_account_returns_metadata_as_stored(srv):
    aid = uid("acct")
    meta = {"owner": "Adaọ̀ 🥘", "tier": 3, "kyc": True, "note": None,
            "tags": ["a", "b", {"c": [1, 2]}], "esc": "quote\" back\\ nl\n tab\t",
            "nested": {"x": {"y": {"z": -9007199254740993}}}}
    make_account(srv, aid, "USD", allow_negative=True, metadata=meta)
    a = account(srv, aid)
    assert a["id"] == aid and a["currency"] == "USD" and a["allow_negative"] is True, a
    assert a["metadata"] == meta, f"expected metadata {meta}, saw {a['metadata']}"
    assert set(a["balance"]) >= {"posted", "pending_out", "pending_in", "available"}, a


def test_get_unknown_account_404(srv):
    expect_error(srv.get(f"/v1/accounts/{uid('nobody')}"), 404, "account_not_found")


def test_balance_fields_posted_pending_available(srv, cash):
    a = wallet(srv, cash, 5000)
    b = wallet(srv)
    expect_status(transfer(srv, uid("tx"), a, b, 1200, pending=True), 201)
    got = balance(srv, a)
    assert got == {"posted": 5000, "pending_out": 1200, "pending_in": 0, "available": 3800}, (
        f"payer after a 1200 hold on 5000: expected posted 5000 pending_out 1200 available 3800, saw {got}")
    got = balance(srv, b)
    assert got == {"posted": 0, "pending_out": 0, "pending_in": 1200, "available": 0}, (
        f"payee of a 1200 hold: expected pending_in 1200, saw {got}")


# ---------------------------------------------------------- transfers ----

def test_transfer_201_posted_with_all_fields(srv, cash):
    a = wallet(srv, cash, 10000)
    b = wallet(srv)
    tid = uid("tx")
    r = transfer(srv, tid, a, b, 2500, metadata={"order": "o-1"})
    expect_status(r, 201, "transfer")
    expect_not_replayed(r, "transfer")
    t = r.body
    missing = TRANSFER_FIELDS - set(t)
    assert not missing, f"transfer object lacks fields {sorted(missing)}: {t}"
    want = {"id": tid, "from": a, "to": b, "amount": 2500, "currency": "NGN", "status": "posted",
            "posted_amount": 2500, "void_reason": None, "timeout_seconds": 0,
            "metadata": {"order": "o-1"}}
    seen = {k: t[k] for k in want}
    assert seen == want, f"expected {want}, saw {seen}"
    assert TIME_RE.match(t["created_at"]) and TIME_RE.match(t["updated_at"]), t
    assert REQUEST_ID_RE.match(t["request_id"]), f"request_id must be set, saw {t['request_id']!r}"
    # Auth off (loopback): no key made it.
    assert t["created_by"] is None, f"expected created_by null, saw {t['created_by']!r}"
    assert t["request_id"] == r.header("X-Request-Id"), (
        f"stored request_id must equal the response's X-Request-Id {r.header('X-Request-Id')!r}, "
        f"saw {t['request_id']!r}")
    expect_balance(srv, a, "payer", posted=7500, available=7500)
    expect_balance(srv, b, "payee", posted=2500, available=2500)

    g = expect_status(get_transfer(srv, tid), 200, "GET transfer")
    assert g.body == t, f"GET /v1/transfers/{tid}: expected the created transfer {t}, saw {g.body}"


def test_transfer_replay_200_and_conflict_409(srv, cash):
    a = wallet(srv, cash, 1000)
    b = wallet(srv)
    tid = uid("tx")
    first = expect_status(transfer(srv, tid, a, b, 300), 201)
    again = transfer(srv, tid, a, b, 300)
    expect_replayed(again, 200, "same transfer again")
    assert again.body == first.body, f"replay must return the original, expected {first.body}, saw {again.body}"
    expect_error(transfer(srv, tid, a, b, 301), 409, "id_conflict", "same id, other amount")
    c = wallet(srv)
    expect_error(transfer(srv, tid, a, c, 300), 409, "id_conflict", "same id, other payee")
    expect_balance(srv, a, "money moved once", posted=700)
    expect_balance(srv, b, posted=300)
    expect_balance(srv, c, posted=0)


def test_get_unknown_transfer_404(srv):
    expect_error(get_transfer(srv, uid("nope")), 404, "transfer_not_found")


def test_422_account_not_found(srv, cash):
    a = wallet(srv, cash, 100)
    expect_error(transfer(srv, uid("tx"), a, uid("ghost"), 10), 422, "account_not_found", "payee missing")
    expect_error(transfer(srv, uid("tx"), uid("ghost"), a, 10), 422, "account_not_found", "payer missing")
    expect_balance(srv, a, posted=100)


def test_422_insufficient_funds(srv, cash):
    a = wallet(srv, cash, 100)
    b = wallet(srv)
    expect_error(transfer(srv, uid("tx"), a, b, 101), 422, "insufficient_funds")
    expect_balance(srv, a, posted=100, available=100)
    expect_balance(srv, b, posted=0)
    expect_status(transfer(srv, uid("tx"), a, b, 100), 201, "spending exactly the balance")
    expect_balance(srv, a, posted=0, available=0)


def test_422_currency_mismatch(srv, cash):
    a = wallet(srv, cash, 100)
    usd = wallet(srv, currency="USD")
    expect_error(transfer(srv, uid("tx"), a, usd, 10, "NGN"), 422, "currency_mismatch",
                 "payee in USD, transfer in NGN")
    b = wallet(srv)
    expect_error(transfer(srv, uid("tx"), a, b, 10, "USD"), 422, "currency_mismatch",
                 "both NGN accounts, transfer in USD")
    expect_balance(srv, a, posted=100)


def test_422_same_account(srv, cash):
    a = wallet(srv, cash, 100)
    expect_error(transfer(srv, uid("tx"), a, a, 10), 422, "same_account")
    expect_balance(srv, a, posted=100, pending_out=0)


def test_422_amount_overflow(srv):
    mk = lambda: wallet(srv, currency="USD", allow_negative=True)  # noqa: E731
    a, b = mk(), mk()
    expect_status(transfer(srv, uid("tx"), a, b, INT64_MAX, "USD"), 201, "transfer of 2^63-1")
    expect_balance(srv, b, posted=INT64_MAX)
    # b's posted would pass 2^63-1.
    expect_error(transfer(srv, uid("tx"), a, b, 1, "USD"), 422, "amount_overflow", "credit overflow")
    # a's posted (-(2^63-1)) would go below -2^63.
    c = mk()
    expect_error(transfer(srv, uid("tx"), a, c, 2, "USD"), 422, "amount_overflow", "debit overflow")
    expect_balance(srv, a, posted=-INT64_MAX)
    expect_balance(srv, b, posted=INT64_MAX)
    expect_balance(srv, c, posted=0)
    # pending_in of d would pass 2^63-1.
    d, e, f = mk(), mk(), mk()
    expect_status(transfer(srv, uid("tx"), e, d, INT64_MAX, "USD", pending=True), 201)
    expect_error(transfer(srv, uid("tx"), f, d, 1, "USD", pending=True), 422, "amount_overflow",
                 "pending_in overflow")
    expect_balance(srv, d, pending_in=INT64_MAX)
    expect_balance(srv, f, pending_out=0, posted=0)


def test_rejected_id_replays_422_even_after_funding(srv, cash):
    a = wallet(srv)
    b = wallet(srv)
    tid = uid("tx")
    first = transfer(srv, tid, a, b, 500)
    expect_error(first, 422, "insufficient_funds", "unfunded payer")
    fund(srv, cash, a, 1000)
    again = transfer(srv, tid, a, b, 500)
    expect_error(again, 422, "insufficient_funds", "retry of a rejected id after funding")
    expect_replayed(again, 422, "retry of a rejected id")
    expect_balance(srv, a, "a refusal never turns into a payment", posted=1000)
    expect_balance(srv, b, posted=0)
    g = expect_status(get_transfer(srv, tid), 200, "GET rejected transfer")
    assert g.body.get("status") == "rejected", f"expected status rejected, saw {g.body}"
    assert (g.body.get("error") or {}).get("code") == "insufficient_funds", (
        f"a rejected transfer carries error.code, expected insufficient_funds, saw {g.body}")
    assert g.body.get("posted_amount", 0) == 0, g.body


def test_rejected_account_not_found_replays_after_account_created(srv, cash):
    a = wallet(srv, cash, 1000)
    later = uid("later")
    tid = uid("tx")
    expect_error(transfer(srv, tid, a, later, 10), 422, "account_not_found")
    make_account(srv, later)
    again = transfer(srv, tid, a, later, 10)
    expect_error(again, 422, "account_not_found", "retry after the payee exists")
    expect_replayed(again, 422)
    expect_balance(srv, later, posted=0)
    expect_balance(srv, a, posted=1000)


# -------------------------------------------------------------- holds ----

def hold(srv, a, b, amount, **kw):
    tid = uid("hold")
    r = transfer(srv, tid, a, b, amount, pending=True, **kw)
    expect_status(r, 201, "place hold")
    assert r.body["status"] == "pending" and r.body["posted_amount"] == 0, (
        f"a hold: expected status pending, posted_amount 0, saw {r.body}")
    return tid


def test_hold_post_in_full(srv, cash):
    a, b = wallet(srv, cash, 1000), wallet(srv)
    tid = hold(srv, a, b, 600)
    expect_balance(srv, a, posted=1000, pending_out=600, available=400)
    expect_balance(srv, b, posted=0, pending_in=600)
    r = expect_status(srv.post(f"/v1/transfers/{tid}/post"), 200, "post hold")
    assert r.body["status"] == "posted" and r.body["posted_amount"] == 600, r.body
    expect_balance(srv, a, posted=400, pending_out=0, available=400)
    expect_balance(srv, b, posted=600, pending_in=0, available=600)
    again = srv.post(f"/v1/transfers/{tid}/post")
    expect_replayed(again, 200, "posting a posted hold")
    assert again.body["status"] == "posted", again.body
    expect_balance(srv, a, "second post moves nothing", posted=400, pending_out=0)
    expect_balance(srv, b, posted=600)
    expect_error(srv.post(f"/v1/transfers/{tid}/void"), 422, "not_pending", "void after post")
    expect_balance(srv, a, posted=400, pending_out=0)


def test_hold_partial_post_releases_rest(srv, cash):
    a, b = wallet(srv, cash, 1000), wallet(srv)
    tid = hold(srv, a, b, 1000)
    r = expect_status(srv.post(f"/v1/transfers/{tid}/post", {"amount": 300}), 200, "partial post")
    assert r.body["status"] == "posted" and r.body["posted_amount"] == 300 \
        and r.body["amount"] == 1000, f"expected posted_amount 300 of amount 1000, saw {r.body}"
    expect_balance(srv, a, posted=700, pending_out=0, available=700)
    expect_balance(srv, b, posted=300, pending_in=0)


def test_hold_post_more_than_held_is_422(srv, cash):
    a, b = wallet(srv, cash, 1000), wallet(srv)
    tid = hold(srv, a, b, 100)
    expect_error(srv.post(f"/v1/transfers/{tid}/post", {"amount": 101}), 422, None,
                 "post amount above the held amount")
    expect_balance(srv, a, posted=1000, pending_out=100)
    t = get_transfer(srv, tid).body
    assert t["status"] == "pending", f"the hold must still be pending, saw {t}"


def test_hold_void(srv, cash):
    a, b = wallet(srv, cash, 1000), wallet(srv)
    tid = hold(srv, a, b, 400)
    r = expect_status(srv.post(f"/v1/transfers/{tid}/void"), 200, "void")
    assert r.body["status"] == "voided" and r.body["void_reason"] == "voided", (
        f"expected status voided, void_reason voided, saw {r.body}")
    expect_balance(srv, a, posted=1000, pending_out=0, available=1000)
    expect_balance(srv, b, posted=0, pending_in=0)
    expect_replayed(srv.post(f"/v1/transfers/{tid}/void"), 200, "voiding a voided hold")
    expect_balance(srv, a, posted=1000, pending_out=0, available=1000)
    expect_error(srv.post(f"/v1/transfers/{tid}/post"), 422, "not_pending", "post after void")
    expect_balance(srv, b, posted=0)


def test_post_or_void_a_plain_transfer_is_not_pending(srv, cash):
    a, b = wallet(srv, cash, 1000), wallet(srv)
    tid = uid("tx")
    expect_status(transfer(srv, tid, a, b, 10), 201)
    expect_error(srv.post(f"/v1/transfers/{tid}/void"), 422, "not_pending", "void a posted transfer")
    expect_balance(srv, a, posted=990)


def test_post_void_unknown_404(srv):
    expect_error(srv.post(f"/v1/transfers/{uid('nope')}/post"), 404, "transfer_not_found")
    expect_error(srv.post(f"/v1/transfers/{uid('nope')}/void"), 404, "transfer_not_found")


def test_holds_count_against_available(srv, cash):
    a, b = wallet(srv, cash, 1000), wallet(srv)
    hold(srv, a, b, 600)
    expect_error(transfer(srv, uid("tx"), a, b, 500), 422, "insufficient_funds",
                 "500 with 1000 posted and 600 held")
    expect_error(transfer(srv, uid("tx"), a, b, 401, pending=True), 422, "insufficient_funds",
                 "a second hold above available")
    expect_status(transfer(srv, uid("tx"), a, b, 400), 201, "spend exactly available")
    expect_balance(srv, a, posted=600, pending_out=600, available=0)


def test_hold_expires(srv, cash):
    a, b = wallet(srv, cash, 1000), wallet(srv)
    t0 = time.monotonic()
    tid = hold(srv, a, b, 700, timeout_seconds=1)
    assert get_transfer(srv, tid).body["timeout_seconds"] == 1
    seen = {}

    def expired():
        seen.update(get_transfer(srv, tid).body)
        return seen.get("status") == "voided"

    ok = wait_until(expired, 4.0, 0.1)
    took = time.monotonic() - t0
    assert ok, f"hold with timeout_seconds 1: expected status voided within ~2.5 s, saw {seen} after {took:.1f} s"
    assert seen["void_reason"] == "expired", f"expected void_reason expired, saw {seen}"
    assert took < 3.0, f"expiry took {took:.2f} s, expected at most ~2.5 s"
    expect_balance(srv, a, "expired hold released", posted=1000, pending_out=0, available=1000)
    expect_balance(srv, b, posted=0, pending_in=0)
    expect_error(srv.post(f"/v1/transfers/{tid}/post"), 422, "not_pending", "post after expiry")


def test_posted_hold_does_not_expire(srv, cash):
    a, b = wallet(srv, cash, 1000), wallet(srv)
    tid = hold(srv, a, b, 700, timeout_seconds=1)
    expect_status(srv.post(f"/v1/transfers/{tid}/post"), 200)
    time.sleep(1.6)
    t = get_transfer(srv, tid).body
    assert t["status"] == "posted" and t["posted_amount"] == 700, f"expected it to stay posted, saw {t}"
    expect_balance(srv, a, posted=300, pending_out=0)


# ------------------------------------------------------------ history ----

def history(srv, acct, limit=None, after=None):
    q = []
    if limit is not None:
        q.append(f"limit={limit}")
    if after is not None:
        q.append(f"after={after}")
    return srv.get(f"/v1/accounts/{acct}/transfers" + ("?" + "&".join(q) if q else ""))


def test_history_oldest_first_paged_and_without_rejected(srv, cash):
    a, b = wallet(srv), wallet(srv)
    expected = [fund(srv, cash, a, 1000)["id"]]
    for i in range(7):
        tid = uid("h")
        if i == 2:
            expect_status(transfer(srv, tid, a, b, 10**6), 422)  # rejected: not listed
            continue
        if i == 4:
            expect_status(transfer(srv, tid, b, a, 5), 201)      # a is the payee
        elif i == 5:
            expect_status(transfer(srv, tid, a, b, 5, pending=True), 201)  # an open hold
        else:
            expect_status(transfer(srv, tid, a, b, 10 + i), 201)
        expected.append(tid)

    whole = expect_status(history(srv, a), 200, "history, default limit")
    ids = [t["id"] for t in whole.body["data"]]
    assert ids == expected, f"history oldest first: expected {expected}, saw {ids}"
    assert whole.body.get("next") is None, f"expected next null after the last page, saw {whole.body.get('next')!r}"

    paged, after, pages = [], None, 0
    while True:
        pages += 1
        assert pages <= 5, f"paging with limit 2 over {len(expected)} transfers did not end; so far {paged}"
        r = expect_status(history(srv, a, 2, after), 200, f"history page {pages}")
        data = r.body["data"]
        assert len(data) <= 2, f"limit 2: expected at most 2 transfers, saw {len(data)}"
        paged += [t["id"] for t in data]
        after = r.body["next"]
        if after is None:
            break
        assert isinstance(after, str) and after, f"next must be a cursor string or null, saw {after!r}"
    assert paged == expected, f"paged history: expected {expected}, saw {paged}"

    ids_b = [t["id"] for t in history(srv, b).body["data"]]
    assert ids_b == expected[1:], f"payee's history: expected {expected[1:]}, saw {ids_b}"


@pytest.mark.parametrize("limit", ["0", "1001", "abc", "-1", "1.5", ""])
def test_history_bad_limit_400(srv, cash, limit):
    a = wallet(srv)
    expect_error(srv.get(f"/v1/accounts/{a}/transfers?limit={limit}"), 400, "invalid_request",
                 f"limit={limit!r}")


def test_history_limit_bounds_accepted(srv, cash):
    a = wallet(srv, cash, 10)
    expect_status(history(srv, a, 1), 200, "limit=1")
    expect_status(history(srv, a, 1000), 200, "limit=1000")


# -------------------------------------------------------------- batch ----

def test_batch_non_atomic_mixed_results_in_order(srv, cash):
    a, b = wallet(srv, cash, 1000), wallet(srv)
    ids = [uid("b") for _ in range(5)]
    body = {"atomic": False, "transfers": [
        transfer_body(ids[0], a, b, 600),
        transfer_body(ids[1], a, b, 600),          # insufficient after the first
        transfer_body(ids[2], a, uid("ghost"), 1),  # payee missing
        transfer_body(ids[3], a, b, 400),          # exactly the rest
        transfer_body(ids[4], a, b, 50, pending=True),
    ]}
    r = expect_status(srv.post("/v1/transfers/batch", body), 200, "batch")
    res = r.body["results"]
    assert [x["id"] for x in res] == ids, f"results in request order: expected {ids}, saw {[x.get('id') for x in res]}"
    statuses = [x["status"] for x in res]
    assert statuses == [201, 422, 422, 201, 422], f"expected statuses [201,422,422,201,422], saw {res}"
    codes = [(x.get("error") or {}).get("code") for x in res]
    assert codes == [None, "insufficient_funds", "account_not_found", None, "insufficient_funds"], (
        f"expected error codes per result, saw {codes}")
    assert res[0]["transfer"]["status"] == "posted" and res[0]["transfer"]["amount"] == 600, res[0]
    expect_balance(srv, a, posted=0, pending_out=0)
    expect_balance(srv, b, posted=1000)
    expect_status(get_transfer(srv, ids[3]), 200)


def test_batch_atomic_all_or_nothing(srv, cash):
    a, b = wallet(srv, cash, 1000), wallet(srv)
    ids = [uid("ab") for _ in range(3)]
    body = {"atomic": True, "transfers": [transfer_body(i, a, b, 400) for i in ids]}
    r = expect_status(srv.post("/v1/transfers/batch", body), 200, "atomic batch with a failing transfer")
    res = r.body["results"]
    assert [x["id"] for x in res] == ids, res
    assert all(x["status"] != 201 for x in res), f"no result may be 201 in a failed atomic batch, saw {res}"
    codes = [(x.get("error") or {}).get("code") for x in res]
    assert codes == ["not_applied", "not_applied", "insufficient_funds"], (
        f"expected [not_applied, not_applied, insufficient_funds], saw {codes}")
    expect_balance(srv, a, "nothing moved", posted=1000, pending_out=0)
    expect_balance(srv, b, posted=0)

    ok_ids = [uid("ab") for _ in range(2)]
    body = {"atomic": True, "transfers": [transfer_body(i, a, b, 400) for i in ok_ids]}
    r = expect_status(srv.post("/v1/transfers/batch", body), 200, "atomic batch that fits")
    assert [x["status"] for x in r.body["results"]] == [201, 201], r.body
    expect_balance(srv, a, posted=200)
    expect_balance(srv, b, posted=800)


def test_batch_8190_over_1_mib_accepted(srv):
    # Both on shard 0: 8190 local transfers, each answered 201 (on 2 shards,
    # 8190 sagas may outlast --saga-wait-ms and answer 202; test_shards).
    a = id_on_shard("wallet", 0, srv.shards)
    b = id_on_shard("wallet", 0, srv.shards)
    make_account(srv, a, allow_negative=True)
    make_account(srv, b)
    base = uid("big")
    note = "n" * 80
    body = {"transfers": [transfer_body(f"{base}.{i}", a, b, 1, metadata={"note": note})
                          for i in range(8190)]}
    r = expect_status(srv.post("/v1/transfers/batch", body, timeout=120), 200,
                      "batch of 8190 transfers (body > 1 MiB, < 8 MiB)")
    res = r.body["results"]
    assert len(res) == 8190 and all(x["status"] == 201 for x in res), (
        f"expected 8190 results all 201, saw {len(res)} with statuses "
        f"{sorted(set(x['status'] for x in res))}")
    expect_balance(srv, b, posted=8190)


def test_batch_over_8190_is_400(srv):
    a = wallet(srv, allow_negative=True)
    b = wallet(srv)
    base = uid("over")
    body = {"transfers": [transfer_body(f"{base}.{i}", a, b, 1) for i in range(8191)]}
    expect_error(srv.post("/v1/transfers/batch", body, timeout=60), 400, "invalid_request",
                 "8191 transfers", field="transfers")
    expect_balance(srv, b, posted=0)


# --------------------------------------------------------- request ids ----

def test_request_id_echoed_and_stored(srv, cash):
    a, b = wallet(srv, cash, 100), wallet(srv)
    rid = "req-Abc_1.2"
    tid = uid("tx")
    r = expect_status(transfer(srv, tid, a, b, 5, headers={"X-Request-Id": rid}), 201)
    assert r.header("X-Request-Id") == rid, f"expected X-Request-Id {rid!r} echoed, saw {r.header('X-Request-Id')!r}"
    assert r.body["request_id"] == rid, f"expected transfer.request_id {rid!r}, saw {r.body['request_id']!r}"
    g = get_transfer(srv, tid)
    assert g.body["request_id"] == rid, f"stored request_id: expected {rid!r}, saw {g.body['request_id']!r}"
    e = srv.get(f"/v1/accounts/{uid('nobody')}", headers={"X-Request-Id": "err.7"})
    err = expect_error(e, 404, "account_not_found")
    assert err["request_id"] == "err.7", f"error.request_id: expected 'err.7', saw {err['request_id']!r}"
    long_rid = "r" * 128
    r = srv.get("/healthz", headers={"X-Request-Id": long_rid})
    assert r.header("X-Request-Id") == long_rid, "a 128-character request id is valid and echoed"


def test_request_id_generated_when_absent(srv):
    seen = set()
    for _ in range(3):
        r = expect_status(srv.get("/healthz"), 200)
        rid = r.header("X-Request-Id")
        assert rid and REQUEST_ID_RE.match(rid), f"expected a generated X-Request-Id, saw {rid!r}"
        seen.add(rid)
    assert len(seen) == 3, f"generated request ids must differ per request, saw {seen}"


@pytest.mark.parametrize("bad", ["has space", "slash/no", "r" * 129, "semi;colon"])
def test_invalid_request_id_400(srv, cash, bad):
    a, b = wallet(srv, cash, 100), wallet(srv)
    tid = uid("tx")
    r = transfer(srv, tid, a, b, 5, headers={"X-Request-Id": bad})
    expect_error(r, 400, "invalid_request", f"X-Request-Id {bad!r}")
    assert r.header("X-Request-Id") != bad, "an invalid request id must not be echoed"
    expect_error(get_transfer(srv, tid), 404, "transfer_not_found", "nothing created")
    expect_balance(srv, a, posted=100)


def test_traceparent_accepted(srv, cash):
    a, b = wallet(srv, cash, 100), wallet(srv)
    r = transfer(srv, uid("tx"), a, b, 5,
                 headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    expect_status(r, 201, "transfer with a W3C traceparent")


# ---------------------------------------------------------- routing ----

@pytest.mark.parametrize("path", ["/v1/nope", "/", "/v2/accounts", "/v1/accounts/x/y",
                                  "/v1/transfers/x/rewind"])
def test_unknown_path_404_not_found(srv, path):
    expect_error(srv.get(path), 404, "not_found", f"GET {path}")
    expect_error(srv.post(path, {}), 404, "not_found", f"POST {path}")


@pytest.mark.parametrize("method,path,allowed", [
    ("DELETE", "/v1/accounts/someone", "GET"),
    ("GET", "/v1/accounts", "POST"),
    ("PUT", "/v1/transfers", "POST"),
    ("GET", "/v1/transfers/x/post", "POST"),
    ("GET", "/v1/transfers/x/void", "POST"),
    ("DELETE", "/v1/transfers/x", "GET"),
    ("POST", "/healthz", "GET"),
])
def test_wrong_method_405_with_allow(srv, method, path, allowed):
    r = srv.request(method, path)
    expect_error(r, 405, "method_not_allowed", f"{method} {path}")
    allow = r.header("Allow") or ""
    assert allowed in [m.strip() for m in allow.split(",")], (
        f"{method} {path}: expected Allow to list {allowed}, saw Allow: {allow!r}")


def send_big(port, path, length, body_byte=b" "):
    """POSTs a body of length bytes; reads the answer whether the server
    answers before or after the body (it may refuse on Content-Length)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {length}\r\n\r\n").encode())
        if not wait_readable(s, 1.0):
            chunk = body_byte * 65536
            sent = 0
            try:
                while sent < length:
                    n = min(len(chunk), length - sent)
                    s.sendall(chunk[:n])
                    sent += n
            except (BrokenPipeError, ConnectionResetError):
                pass
        return read_response(s, 30)


def test_body_over_1_mib_is_413(srv):
    status, headers, body = send_big(srv.port, "/v1/transfers", (1 << 20) + 1)
    assert status == 413, f"1 MiB + 1 body: expected 413, saw {status} {body[:300]!r}"
    import json
    err = json.loads(body)["error"]
    assert err["code"] == "payload_too_large", f"expected payload_too_large, saw {err}"
    expect_status(srv.get("/healthz"), 200, "server still serves after a 413")


def test_batch_body_over_8_mib_is_413(srv):
    status, headers, body = send_big(srv.port, "/v1/transfers/batch", (8 << 20) + 1)
    assert status == 413, f"8 MiB + 1 batch body: expected 413, saw {status} {body[:300]!r}"


def test_every_error_has_code_message_request_id(srv):
    # A sample of error answers from each layer: routing, validation, ledger.
    cases = [srv.get("/nope"), srv.request("DELETE", "/v1/accounts"),
             srv.post("/v1/accounts", b"{"), srv.get(f"/v1/accounts/{uid('x')}"),
             srv.post(f"/v1/transfers/{uid('x')}/void")]
    for r in cases:
        assert r.status >= 400
        expect_error(r, r.status)


def test_logs_are_json_lines_with_request_id(srv):
    rid = "log-check." + uid("r").replace(":", "-")
    srv.get("/healthz", headers={"X-Request-Id": rid})

    def logged():
        return rid in srv.log_text()
    assert wait_until(logged, 3), f"expected a log line with request_id {rid!r} in kobod stderr"
    import json
    bad, with_rid = [], []
    for line in srv.log_text().splitlines():
        if line.startswith("### test harness"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not (isinstance(obj, dict) and {"ts", "level", "event"} <= set(obj)):
            bad.append(line)
        elif obj.get("request_id") == rid:
            with_rid.append(obj)
    assert not bad, f"every stderr line must be a JSON object with ts, level, event; saw {bad[:5]}"
    assert with_rid, f"expected a log object with \"request_id\": {rid!r}"
