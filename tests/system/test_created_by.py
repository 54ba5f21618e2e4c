"""
test_created_by.py — every account and transfer names the API key that
created it (`created_by`), on a real `kobod --shards 2 --auth required`.

The keys are written straight into shard 0's store (SQLite file or
PostgreSQL schema), the way a store keeps them (src/auth/key.h: id, salt,
BLAKE2b-256 of the secret keyed with the salt), while kobod runs; kobod's
key ring picks them up within its refresh period. Checked: accounts and a
local transfer name their key; a cross-shard transfer names its key on the
payer's shard and on the payee's (the CREDIT leg the saga made, seen in the
payee's history); a replay by another key answers the first key; Kobo's
clearing accounts name none (null).
"""
import hashlib
import os
import secrets
import sqlite3
import subprocess
import time

import pytest

from kobotest import (clearing_id, expect_replayed, expect_status, id_on_shard, uid,
                      wait_until)

SHARDS = 2
KEYRING_WAIT_S = 10.0  # API.md: a new key works within 10 s
ALL_SCOPES = 0x1F      # apikey.h: KOBO_SCOPES_ALL


def new_key():
    """(key id, the client's key text, the row a store keeps)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_hex(32)
    salt = secrets.token_bytes(16)
    digest = hashlib.blake2b(secret.encode(), digest_size=32, key=salt).digest()
    return key_id, f"kobo_{key_id}_{secret}", (key_id, salt, digest)


def store_key(srv, row, name):
    """Inserts a live key into shard 0's api_keys, committed, beside the
    running kobod."""
    key_id, salt, digest = row
    now_ms = int(time.time() * 1000)
    if srv.postgres:
        sql = (f"INSERT INTO kobo_shard_0.api_keys (id, name, scopes, salt, hash, created_at_ms)"
               f" VALUES ('{key_id}', '{name}', {ALL_SCOPES}, '\\x{salt.hex()}',"
               f" '\\x{digest.hex()}', {now_ms})")
        r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", srv.postgres[0],
                            "-c", sql], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL, env=dict(os.environ, PGCONNECT_TIMEOUT="5"))
        assert r.returncode == 0, f"psql insert of key {key_id} failed: {r.stdout}{r.stderr}"
        return
    db = sqlite3.connect(os.path.join(srv.data, "shard-0.db"), timeout=10)
    try:
        with db:
            db.execute("INSERT INTO api_keys (id, name, scopes, salt, hash, created_at_ms)"
                       " VALUES (?, ?, ?, ?, ?, ?)", (key_id, name, ALL_SCOPES, salt, digest, now_ms))
    finally:
        db.close()


def bearer(key_text):
    return {"Authorization": f"Bearer {key_text}"}


def post(srv, path, body, key_text):
    return srv.post(path, body, headers=bearer(key_text))


def get(srv, path, key_text):
    return expect_status(srv.get(path, headers=bearer(key_text)), 200, f"GET {path}")


@pytest.mark.own_shards
def test_records_name_the_key_that_created_them(make_server):
    srv = make_server("--shards", str(SHARDS), "--auth", "required")
    id1, key1, row1 = new_key()
    id2, key2, row2 = new_key()
    store_key(srv, row1, "first")
    store_key(srv, row2, "second")
    probe = f"/v1/accounts/{uid('none')}"
    for text in (key1, key2):
        ready = wait_until(lambda: srv.get(probe, headers=bearer(text)).status == 404,
                           KEYRING_WAIT_S, interval=0.2)
        assert ready, f"a key stored in shard 0 was not accepted within {KEYRING_WAIT_S} s"

    cash = id_on_shard("cash", 0, SHARDS)
    payer = id_on_shard("payer", 0, SHARDS)
    payee = id_on_shard("payee", 1, SHARDS)
    r = expect_status(post(srv, "/v1/accounts", {"id": cash, "currency": "NGN",
                                                 "allow_negative": True}, key1), 201, "cash")
    assert r.body["created_by"] == id1, f"account made with key {id1}: saw {r.body}"
    expect_status(post(srv, "/v1/accounts", {"id": payer, "currency": "NGN"}, key1), 201)
    r = expect_status(post(srv, "/v1/accounts", {"id": payee, "currency": "NGN"}, key2), 201)
    assert r.body["created_by"] == id2, f"account made with key {id2}: saw {r.body}"
    assert get(srv, f"/v1/accounts/{payee}", key1).body["created_by"] == id2

    fund_id = uid("fund")
    r = expect_status(post(srv, "/v1/transfers", {"id": fund_id, "from": cash, "to": payer,
                                                  "amount": 5000, "currency": "NGN"}, key1),
                      201, "local transfer")
    assert r.body["created_by"] == id1, f"local transfer made with key {id1}: saw {r.body}"

    # Across shards: the DEBIT leg on shard 0 and the CREDIT leg on shard 1.
    tid = uid("x")
    body = {"id": tid, "from": payer, "to": payee, "amount": 1200, "currency": "NGN"}
    r = post(srv, "/v1/transfers", body, key2)
    assert r.status in (201, 202), f"cross-shard transfer: expected 201 or 202, saw {r.status} {r.body}"
    assert r.body["created_by"] == id2, f"cross-shard transfer made with key {id2}: saw {r.body}"

    def credited():
        page = get(srv, f"/v1/accounts/{payee}/transfers", key1).body["data"]
        return [t for t in page if t["id"] == tid and t["status"] == "posted"]
    legs = wait_until(credited, 30.0, interval=0.1)
    assert legs, f"the payee's history never listed {tid} as posted"
    assert legs[0]["created_by"] == id2, (
        f"the CREDIT leg on the payee's shard must name the DEBIT leg's key {id2}: saw {legs[0]}")
    a_side = get(srv, f"/v1/transfers/{tid}", key1).body
    assert a_side["created_by"] == id2, f"GET of {tid}: saw {a_side}"

    # A replay by another key answers the stored record: the first key.
    again = post(srv, "/v1/transfers", body, key1)
    expect_replayed(again, 200, "the same transfer by another key")
    assert again.body["created_by"] == id2, f"replay by {id1}: saw {again.body}"

    # Kobo's own clearing accounts name no key.
    for a, b in ((0, 1), (1, 0)):
        clearing = get(srv, f"/v1/accounts/{clearing_id(a, b)}", key1).body
        assert clearing["created_by"] is None, f"clearing account {a}:{b}: saw {clearing}"
