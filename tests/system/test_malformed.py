"""
test_malformed.py — a catalog of malformed requests. Each must be answered
with a 4xx JSON error (400 invalid_request, naming the field where there is
one) and must change nothing: the balances of every account the test uses, the
hold it uses and the existence of every id the request names are snapshotted
before and after and compared.

The auth cases (AUTH_CASES) run against a kobod with --auth required: a
malformed Authorization header on an otherwise valid request is 401
unauthenticated (WWW-Authenticate: Bearer … error="invalid_token") and
changes nothing either.
"""
import json

import pytest

import kobotest
from kobotest import (bearer, create_key, expect_error, expect_status, fund, make_account,
                      transfer, wait_until)

A, B, CASH, HOLD = "m:a", "m:b", "m:cash", "m:hold"
NEW_ACCOUNT = "m:newacct"


def tx(tid, **change):
    """A valid transfer body for id tid with fields changed; a value of
    DROP removes the field."""
    body = {"id": tid, "from": A, "to": B, "amount": 100, "currency": "NGN"}
    for k, v in change.items():
        if v is DROP:
            body.pop(k, None)
        else:
            body[k] = v
    return body


DROP = object()


def js(obj):
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def valid_tx_bytes(tid):
    return js(tx(tid))


TRANSFERS = "/v1/transfers"
ACCOUNTS = "/v1/accounts"
BATCH = "/v1/transfers/batch"
POST_HOLD = f"/v1/transfers/{HOLD}/post"

# (name, path, body builder taking the case's transfer id -> bytes, field the
#  message must name or None, extra headers)
CASES = [
    ("not_json", TRANSFERS, lambda t: b"hello", None),
    ("top_level_array", TRANSFERS, lambda t: b'[{"id":"x"}]', None),
    ("top_level_string", TRANSFERS, lambda t: b'"transfer"', None),
    ("top_level_number", TRANSFERS, lambda t: b"42", None),
    ("top_level_null", TRANSFERS, lambda t: b"null", None),
    ("empty_body_transfer", TRANSFERS, lambda t: b"", None),
    ("empty_body_account", ACCOUNTS, lambda t: b"", None),
    ("whitespace_body", TRANSFERS, lambda t: b"  \n ", None),
    ("unknown_field", TRANSFERS, lambda t: js(tx(t, colour="red")), "colour"),
    ("duplicate_key", TRANSFERS,
     lambda t: valid_tx_bytes(t)[:-1] + b', "amount": 200}', "amount"),
    ("duplicate_id_key", TRANSFERS,
     lambda t: b'{"id":"' + t.encode() + b'","id":"' + t.encode() + b'x","from":"m:a","to":"m:b",'
               b'"amount":100,"currency":"NGN"}', "id"),
    ("amount_float_1_0", TRANSFERS, lambda t: valid_tx_bytes(t).replace(b'"amount": 100', b'"amount": 1.0'), "amount"),
    ("amount_float_half", TRANSFERS, lambda t: js(tx(t, amount=100.5)), "amount"),
    ("amount_string", TRANSFERS, lambda t: js(tx(t, amount="100")), "amount"),
    ("amount_zero", TRANSFERS, lambda t: js(tx(t, amount=0)), "amount"),
    ("amount_negative_zero", TRANSFERS,
     lambda t: valid_tx_bytes(t).replace(b'"amount": 100', b'"amount": -0'), "amount"),
    ("amount_negative", TRANSFERS, lambda t: js(tx(t, amount=-5)), "amount"),
    ("amount_2_pow_63", TRANSFERS, lambda t: js(tx(t, amount=2**63)), "amount"),
    ("amount_2_pow_64_plus", TRANSFERS, lambda t: js(tx(t, amount=2**64 + 100)), "amount"),
    ("amount_huge_digits", TRANSFERS, lambda t: js(tx(t, amount=10**40)), "amount"),
    ("amount_exponent", TRANSFERS,
     lambda t: valid_tx_bytes(t).replace(b'"amount": 100', b'"amount": 1e3'), "amount"),
    ("amount_leading_zero", TRANSFERS,
     lambda t: valid_tx_bytes(t).replace(b'"amount": 100', b'"amount": 0100'), None),
    ("amount_true", TRANSFERS, lambda t: js(tx(t, amount=True)), "amount"),
    ("amount_null", TRANSFERS, lambda t: js(tx(t, amount=None)), "amount"),
    ("amount_object", TRANSFERS, lambda t: js(tx(t, amount={"value": 100})), "amount"),
    ("missing_id", TRANSFERS, lambda t: js(tx(t, id=DROP)), "id"),
    ("missing_from", TRANSFERS, lambda t: js(tx(t, **{"from": DROP})), "from"),
    ("missing_to", TRANSFERS, lambda t: js(tx(t, to=DROP)), "to"),
    ("missing_amount", TRANSFERS, lambda t: js(tx(t, amount=DROP)), "amount"),
    ("missing_currency", TRANSFERS, lambda t: js(tx(t, currency=DROP)), "currency"),
    ("id_65_chars", TRANSFERS, lambda t: js(tx("i" * 65)), "id"),
    ("id_empty", TRANSFERS, lambda t: js(tx("")), "id"),
    ("id_with_space", TRANSFERS, lambda t: js(tx(t + " x")), "id"),
    ("id_with_slash", TRANSFERS, lambda t: js(tx(t + "/x")), "id"),
    ("id_unicode", TRANSFERS, lambda t: js(tx(t + "é")), "id"),
    ("id_number", TRANSFERS, lambda t: js(tx(12345)), "id"),
    ("from_bad_char", TRANSFERS, lambda t: js(tx(t, **{"from": "m:a!"})), "from"),
    ("to_null", TRANSFERS, lambda t: js(tx(t, to=None)), "to"),
    ("to_65_chars", TRANSFERS, lambda t: js(tx(t, to="b" * 65)), "to"),
    ("currency_lowercase", TRANSFERS, lambda t: js(tx(t, currency="ngn")), "currency"),
    ("currency_2_chars", TRANSFERS, lambda t: js(tx(t, currency="NG")), "currency"),
    ("currency_9_chars", TRANSFERS, lambda t: js(tx(t, currency="NGNNGNNGN")), "currency"),
    ("currency_leading_digit", TRANSFERS, lambda t: js(tx(t, currency="1NG")), "currency"),
    ("currency_number", TRANSFERS, lambda t: js(tx(t, currency=566)), "currency"),
    ("pending_yes", TRANSFERS, lambda t: js(tx(t, pending="yes")), "pending"),
    ("pending_1", TRANSFERS, lambda t: js(tx(t, pending=1)), "pending"),
    ("timeout_negative", TRANSFERS, lambda t: js(tx(t, pending=True, timeout_seconds=-1)), "timeout_seconds"),
    ("timeout_float", TRANSFERS, lambda t: js(tx(t, pending=True, timeout_seconds=1.5)), "timeout_seconds"),
    ("timeout_string", TRANSFERS, lambda t: js(tx(t, pending=True, timeout_seconds="5")), "timeout_seconds"),
    ("timeout_2_pow_64", TRANSFERS, lambda t: js(tx(t, pending=True, timeout_seconds=2**64)), "timeout_seconds"),
    ("metadata_array", TRANSFERS, lambda t: js(tx(t, metadata=[1, 2])), "metadata"),
    ("metadata_string", TRANSFERS, lambda t: js(tx(t, metadata="note")), "metadata"),
    ("metadata_over_4_kib", TRANSFERS, lambda t: js(tx(t, metadata={"note": "x" * 5000})), "metadata"),
    ("metadata_deeply_nested", TRANSFERS,
     lambda t: valid_tx_bytes(t)[:-1] + b', "metadata": ' + b'{"a":' * 50000 + b'1' + b'}' * 50000 + b'}',
     None),
    ("metadata_deep_arrays_unclosed", TRANSFERS,
     lambda t: valid_tx_bytes(t)[:-1] + b', "metadata": {"a":' + b'[' * 200000, None),
    ("invalid_utf8_in_string", TRANSFERS,
     lambda t: valid_tx_bytes(t)[:-1] + b', "metadata": {"n": "\xc3\x28 \xff"}}', None),
    ("invalid_utf8_overlong", TRANSFERS,
     lambda t: valid_tx_bytes(t)[:-1] + b', "metadata": {"n": "\xc0\xaf"}}', None),
    ("lone_surrogate_escape", TRANSFERS,
     lambda t: valid_tx_bytes(t)[:-1] + b', "metadata": {"n": "\\ud800"}}', None),
    ("nul_escape_in_id", TRANSFERS,
     lambda t: b'{"id":"' + t.encode() + b'\\u0000x","from":"m:a","to":"m:b","amount":100,"currency":"NGN"}',
     None),
    ("raw_nul_byte", TRANSFERS, lambda t: valid_tx_bytes(t)[:-1] + b'\x00}', None),
    ("raw_control_char_in_string", TRANSFERS,
     lambda t: valid_tx_bytes(t)[:-1] + b', "metadata": {"n": "a\x01b"}}', None),
    ("utf8_bom", TRANSFERS, lambda t: b"\xef\xbb\xbf" + valid_tx_bytes(t), None),
    ("truncated_json", TRANSFERS, lambda t: valid_tx_bytes(t)[:25], None),
    ("trailing_garbage", TRANSFERS, lambda t: valid_tx_bytes(t) + b"xyz", None),
    ("trailing_second_object", TRANSFERS, lambda t: valid_tx_bytes(t) + b"{}", None),
    ("single_quotes", TRANSFERS, lambda t: valid_tx_bytes(t).replace(b'"', b"'"), None),
    ("trailing_comma", TRANSFERS, lambda t: valid_tx_bytes(t)[:-1] + b",}", None),
    ("account_unknown_field_balance", ACCOUNTS,
     lambda t: js({"id": NEW_ACCOUNT, "currency": "NGN", "balance": 1000000}), "balance"),
    ("account_allow_negative_string", ACCOUNTS,
     lambda t: js({"id": NEW_ACCOUNT, "currency": "NGN", "allow_negative": "true"}), "allow_negative"),
    ("account_missing_id", ACCOUNTS, lambda t: js({"currency": "NGN"}), "id"),
    ("account_missing_currency", ACCOUNTS, lambda t: js({"id": NEW_ACCOUNT}), "currency"),
    ("account_currency_lowercase", ACCOUNTS, lambda t: js({"id": NEW_ACCOUNT, "currency": "usd"}), "currency"),
    ("account_id_with_slash", ACCOUNTS, lambda t: js({"id": NEW_ACCOUNT + "/x", "currency": "NGN"}), "id"),
    ("account_metadata_array", ACCOUNTS,
     lambda t: js({"id": NEW_ACCOUNT, "currency": "NGN", "metadata": ["x"]}), "metadata"),
    ("batch_transfers_not_array", BATCH, lambda t: js({"transfers": tx(t)}), "transfers"),
    ("batch_transfers_empty", BATCH, lambda t: js({"transfers": []}), "transfers"),
    ("batch_transfers_missing", BATCH, lambda t: js({"atomic": False}), "transfers"),
    ("batch_element_invalid", BATCH,
     lambda t: js({"transfers": [tx(t), tx(t + ".2", amount="5")]}), "amount"),
    ("batch_element_not_object", BATCH, lambda t: js({"transfers": [tx(t), 7]}), None),
    ("batch_atomic_string", BATCH, lambda t: js({"atomic": "true", "transfers": [tx(t)]}), "atomic"),
    ("batch_unknown_field", BATCH, lambda t: js({"transfers": [tx(t)], "dry_run": True}), "dry_run"),
    ("batch_top_level_array", BATCH, lambda t: js([tx(t)]), None),
    ("post_amount_zero", POST_HOLD, lambda t: js({"amount": 0}), "amount"),
    ("post_amount_negative", POST_HOLD, lambda t: js({"amount": -1}), "amount"),
    ("post_amount_string", POST_HOLD, lambda t: js({"amount": "50"}), "amount"),
    ("post_amount_float", POST_HOLD, lambda t: b'{"amount": 50.0}', "amount"),
    ("post_unknown_field", POST_HOLD, lambda t: js({"amt": 50}), "amt"),
    ("post_body_array", POST_HOLD, lambda t: b"[50]", None),
    ("post_not_json", POST_HOLD, lambda t: b"amount=50", None),
]
assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def world(shared_server):
    srv = shared_server
    make_account(srv, CASH, allow_negative=True)
    make_account(srv, A)
    make_account(srv, B)
    fund(srv, CASH, A, 1_000_000)
    r = transfer(srv, HOLD, A, B, 500, pending=True)
    expect_status(r, 201, "place the hold used by post cases")
    return srv


def snapshot(srv, ids):
    """Full account bodies of the test's accounts, the hold, and for every
    other id whether it exists as an account or a transfer."""
    snap = {}
    for a in (A, B, CASH):
        r = srv.get(f"/v1/accounts/{a}")
        snap[f"account {a}"] = (r.status, r.body)
    r = srv.get(f"/v1/transfers/{HOLD}")
    snap[f"transfer {HOLD}"] = (r.status, r.body)
    for i in ids:
        snap[f"transfer {i}"] = srv.get(f"/v1/transfers/{i}").status
        snap[f"account {i}"] = srv.get(f"/v1/accounts/{i}").status
    return snap


@pytest.mark.parametrize("name,path,build,field", CASES, ids=[c[0] for c in CASES])
def test_malformed_request_rejected_without_effect(world, name, path, build, field):
    srv = world
    tid = f"m:{name}"
    ids = [tid, tid + ".2", tid + "x", NEW_ACCOUNT]
    before = snapshot(srv, ids)
    body = build(tid)
    r = srv.post(path, body)
    what = f"{name}: POST {path} {body[:120]!r}{'…' if len(body) > 120 else ''}"
    expect_error(r, 400, "invalid_request", what, field=field)
    after = snapshot(srv, ids)
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"{name}: a rejected request must change nothing; changed (before, after): {changed}"
    expect_status(srv.get("/healthz"), 200, f"server still serves after {name}")


@pytest.mark.parametrize("header", ["bad id!", "x" * 129])
def test_invalid_request_id_with_valid_body_changes_nothing(world, header):
    srv = world
    tid = "m:reqid" + str(len(header))
    before = snapshot(srv, [tid])
    r = srv.post(TRANSFERS, tx(tid), headers={"X-Request-Id": header})
    expect_error(r, 400, "invalid_request", f"X-Request-Id {header!r}")
    after = snapshot(srv, [tid])
    assert before == after, f"expected no change, before {before}, after {after}"


# (name, Authorization value(s)): each a valid transfer otherwise.
AUTH_CASES = [
    ("two_tokens", lambda key: f"Bearer {key} {key}"),
    ("two_headers", lambda key: [f"Bearer {key}", f"Bearer {key}"]),
    ("empty_bearer", lambda key: "Bearer "),
    ("key_10kb", lambda key: "Bearer " + key + "a" * 10240),
    ("non_ascii", lambda key: ("Bearer " + key[:-1]).encode() + b"\xc3\xa9"),
]


@pytest.fixture(scope="module")
def auth_world(tmp_path_factory, backend):
    srv = backend.server(tmp_path_factory.mktemp("kobod-auth"), ["--auth", "required"])
    kobotest.ACTIVE.append(srv)
    srv.start()
    admin = create_key(srv, "admin")
    assert wait_until(lambda: srv.get(f"/v1/accounts/{A}", headers=bearer(admin)).status != 401,
                      10, 0.1), "the admin key was not honoured within 10 s"
    h = bearer(admin)
    for acct, neg in ((CASH, True), (A, False), (B, False)):
        r = srv.post(ACCOUNTS, {"id": acct, "currency": "NGN", "allow_negative": neg}, headers=h)
        expect_status(r, 201, f"create {acct}")
    expect_status(srv.post(TRANSFERS, {"id": "m:fund", "from": CASH, "to": A, "amount": 1000,
                                       "currency": "NGN"}, headers=h), 201, "fund")
    yield srv, admin
    kobotest.finish_servers([srv])


def raw_post(srv, path, body, authorization):
    """POST with the Authorization header(s) sent byte for byte."""
    values = authorization if isinstance(authorization, list) else [authorization]
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    data = head.encode()
    for v in values:
        data += b"Authorization: " + (v if isinstance(v, bytes) else v.encode()) + b"\r\n"
    return kobotest.raw_exchange(srv.port, data + b"\r\n" + body)


@pytest.mark.parametrize("name,value", AUTH_CASES, ids=[c[0] for c in AUTH_CASES])
def test_malformed_authorization_rejected_without_effect(auth_world, name, value):
    srv, admin = auth_world
    tid = f"m:auth:{name}"
    h = bearer(admin)

    def snap():
        out = {a: srv.get(f"/v1/accounts/{a}", headers=h).body for a in (CASH, A, B)}
        out[tid] = srv.get(f"/v1/transfers/{tid}", headers=h).status
        return out
    before = snap()
    status, headers, raw = raw_post(srv, TRANSFERS, valid_tx_bytes(tid), value(admin["key"]))
    assert status == 401, f"{name}: expected 401, saw {status} {raw[:300]!r}"
    body = json.loads(raw)
    assert body["error"]["code"] == "unauthenticated", body
    www = headers.get("www-authenticate", "")
    assert www.startswith('Bearer realm="kobo"') and 'error="invalid_token"' in www, headers
    after = snap()
    assert before == after, f"{name}: a refused request changed state: {before} -> {after}"
    assert after[tid] == 404, after
    expect_status(srv.get("/healthz"), 200, f"server still serves after {name}")
