"""
test_consistency_token.py — Kobo-Consistency-Token (API.md, "Consistency
token"), embedded store: every 2xx answer to a write carries the header,
covering every shard the write touched (a local transfer, a cross-shard
transfer, a batch over shards, a post of a cross-shard hold, a 202); it is
"kct1:" then "<shard>@<commit sequence>" per touched shard, and the sequence
never goes back. Refusals, reads and errors carry none; a GET that sends a
token back sees the write.
"""
import re

import pytest

from kobotest import (expect_status, fund, get_transfer, id_on_shard, make_account, shard_of,
                      transfer, transfer_body, uid)

SHARDS = 2
TOKEN = re.compile(r"^kct1:(\d+@\d+)(,\d+@\d+)*$")


def parse(token):
    assert token and TOKEN.match(token), f"malformed Kobo-Consistency-Token {token!r}"
    return {int(s): int(q) for s, q in (p.split("@") for p in token[5:].split(","))}


def token_of(resp, what):
    return parse(resp.header("Kobo-Consistency-Token")), what


def place(srv, prefix, shard, allow_negative=False):
    acct = id_on_shard(prefix, shard, SHARDS)
    make_account(srv, acct, allow_negative=allow_negative)
    return acct


@pytest.mark.own_shards
def test_writes_carry_a_token_covering_their_shards(make_server):
    srv = make_server("--shards", str(SHARDS))
    cash0 = place(srv, "cash", 0, allow_negative=True)
    a0, b0, a1 = place(srv, "a", 0), place(srv, "b", 0), place(srv, "a", 1)
    fund(srv, cash0, a0, 1000)

    local = expect_status(transfer(srv, uid("l"), a0, b0, 10), 201, "local transfer")
    seqs, _ = token_of(local, "local")
    assert set(seqs) == {0} and seqs[0] >= 1, seqs

    cross = transfer(srv, uid("x"), a0, a1, 10)
    assert cross.status in (201, 202), cross
    seqs2, _ = token_of(cross, "cross-shard")
    assert set(seqs2) == {0, 1}, seqs2
    assert seqs2[0] >= seqs[0], "a shard's sequence never goes back"

    hold = uid("h")
    r = transfer(srv, hold, a0, a1, 5, pending=True)
    assert r.status in (201, 202), r
    for _ in range(100):
        if get_transfer(srv, hold).body.get("status") == "pending":
            break
    posted = srv.post(f"/v1/transfers/{hold}/post", {})
    assert posted.status in (200, 202), posted
    assert set(token_of(posted, "post of a cross-shard hold")[0]) == {0, 1}

    items = [transfer_body(uid("bt"), a0, b0, 1), transfer_body(uid("bt"), a0, a1, 1)]
    batch = expect_status(srv.post("/v1/transfers/batch", {"transfers": items}), 200, "batch")
    assert set(token_of(batch, "batch over shards")[0]) == {0, 1}

    # With the token sent back, the write is seen.
    got = srv.get(f"/v1/transfers/{items[1]['id']}",
                  headers={"Kobo-Consistency-Token": batch.header("Kobo-Consistency-Token")})
    expect_status(got, 200, "read with the token")


def test_refusals_reads_and_errors_carry_none(server):
    srv = server
    a, b = make_account(srv, uid("a"))["id"], make_account(srv, uid("b"))["id"]
    refused = transfer(srv, uid("r"), a, b, 10)
    assert refused.status == 422, refused
    assert refused.header("Kobo-Consistency-Token") is None, "a refusal is not a 2xx"
    read = expect_status(srv.get(f"/v1/accounts/{a}"), 200, "read")
    assert read.header("Kobo-Consistency-Token") is None
    bad = srv.post("/v1/transfers", {"id": "x"})
    assert bad.status == 400 and bad.header("Kobo-Consistency-Token") is None
    cid = uid("c")
    created = expect_status(srv.post("/v1/accounts", {"id": cid, "currency": "NGN"}), 201,
                            "account create")
    assert set(parse(created.header("Kobo-Consistency-Token"))) == {shard_of(cid, srv.shards)}
