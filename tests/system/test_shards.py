"""
test_shards.py — transfers between shards on real `kobod --shards 4`
(DESIGN.md §1: invariant 5 "nothing in limbo", and invariants 1-4 and 6 when
payer and payee live on different shards).

A transfer between shards runs as a saga: a hold payer → the payer shard's
clearing account, a posted transfer from the payee shard's clearing account
to the payee, then the hold is posted; a payee the other shard refuses ends
with the payer refunded (voided, "compensated"). These tests place accounts
on the shards they want with kobotest.id_on_shard() (the client's twin of the
server's FNV-1a partition → shard mapping) and check, from the outside:

  - sagas that post, hold, post partially, void and expire, on both sides,
    with both clearing accounts of a pair netting to zero once settled;
  - refusals on the payee's shard: 422, the payer made whole, replays;
  - reserved "kobo:" ids; atomic batches that may not span shards; mixed
    non-atomic batches; a data directory that refuses another --shards;
  - races for the last 100 and retry storms of one id across shards;
  - concurrent cross-shard load, and kill -9 under it (3 rounds), after
    which the runner settles every saga (the time it takes is printed: the
    benchmark doc quotes it), money is conserved per currency, every hold
    is accounted for and `kobo audit` passes with kobod stopped.

Tests on shared_sharded_server name their own accounts; tests that stop,
kill or audit a server start their own.
"""
import http.client
import json
import os
import random
import subprocess
import threading
import time
from collections import Counter, defaultdict

import pytest

from kobotest import (SHARDS_DEFAULT, Resp, audit, balance, binary, child_env, clearing_balances,
                      clearing_id, create_account, expect_audit_ok, expect_balance, expect_error,
                      expect_not_replayed, expect_replayed, expect_status, free_port, fund,
                      get_transfer, id_on_shard, make_account, parallel_map, sagas_active,
                      shard_of, transfer, transfer_body, uid, unbalanced_clearing_pairs,
                      wait_until)
from test_concurrency import RACERS, race, summary

SHARDS = SHARDS_DEFAULT
SETTLE_TIMEOUT_S = 30.0


def place(srv, prefix, shard, currency="NGN", allow_negative=False):
    """Creates an account named uid(prefix)-like on `shard`; returns its id."""
    acct = id_on_shard(prefix, shard, SHARDS)
    make_account(srv, acct, currency, allow_negative=allow_negative)
    return acct


def history_ids(srv, acct):
    r = expect_status(srv.get(f"/v1/accounts/{acct}/transfers?limit=1000"), 200, f"history of {acct}")
    return [t["id"] for t in r.body["data"]], {t["id"]: t for t in r.body["data"]}


def pair_delta(before, after, a, b):
    """Change of (posted, pending_in, pending_out) of clearing a:b and b:a."""
    def d(x, y):
        return {k: after[(x, y)][k] - before[(x, y)][k] for k in ("posted", "pending_in", "pending_out")}
    return d(a, b), d(b, a)


def expect_pairs_net_zero(srv, what, currencies=("NGN",)):
    for cur in currencies:
        bad = unbalanced_clearing_pairs(srv, SHARDS, cur)
        assert not bad, (f"{what}: with no saga in flight every clearing pair must net to zero "
                         f"(posted a:b + posted b:a == 0), saw {cur} pairs {bad}")


def wait_no_saga(srv, ids=(), timeout=SETTLE_TIMEOUT_S):
    """Polls until GET of every id answers something other than "processing"
    (404: the request never arrived) and the kobo_sagas_active gauges are 0.
    Returns (settled, seconds, ids processing at the first look)."""
    started = time.monotonic()
    deadline = started + timeout
    left = sorted(set(ids))
    first = None
    while True:
        answers = parallel_map(lambda t: get_transfer(srv, t), left) if left else []
        still = []
        for tid, r in zip(left, answers):
            if not isinstance(r, Resp) or r.status not in (200, 404) or \
                    (r.status == 200 and r.body.get("status") == "processing"):
                still.append(tid)
        if first is None:
            first = len(still)
        left = still
        if not left and sagas_active(srv) == 0:
            return True, time.monotonic() - started, first
        if time.monotonic() > deadline:
            return False, time.monotonic() - started, first
        time.sleep(0.02)



@pytest.fixture
def srv(shared_sharded_server):
    return shared_sharded_server


# ------------------------------------------------------- one transfer ----

def test_cross_shard_transfer_posts_on_both_shards(srv):
    cash = place(srv, "cash", 0, allow_negative=True)
    payer = place(srv, "payer", 0)
    payee = place(srv, "payee", 1)
    fund(srv, cash, payer, 10_000)
    before = clearing_balances(srv, SHARDS)

    tid = uid("x")
    r = expect_status(transfer(srv, tid, payer, payee, 2500), 201, "cross-shard transfer 0 -> 1")
    expect_not_replayed(r, "cross-shard transfer")
    got = {k: r.body.get(k) for k in ("id", "from", "to", "amount", "currency", "status", "posted_amount")}
    want = {"id": tid, "from": payer, "to": payee, "amount": 2500, "currency": "NGN",
            "status": "posted", "posted_amount": 2500}
    assert got == want, f"201 body of a cross-shard transfer: expected {want}, saw {r.body}"

    expect_balance(srv, payer, "payer (shard 0)", posted=7500, pending_out=0, pending_in=0, available=7500)
    expect_balance(srv, payee, "payee (shard 1)", posted=2500, pending_out=0, pending_in=0, available=2500)
    stored = expect_status(get_transfer(srv, tid), 200, f"GET {tid}").body
    assert (stored["status"], stored["posted_amount"], stored["from"], stored["to"]) == \
        ("posted", 2500, payer, payee), f"GET {tid}: expected posted 2500 {payer} -> {payee}, saw {stored}"
    for acct in (payer, payee):
        ids, by_id = history_ids(srv, acct)
        assert tid in ids, f"history of {acct}: expected it to list {tid}, saw {ids}"
        h = by_id[tid]
        assert (h["from"], h["to"], h["amount"], h["status"]) == (payer, payee, 2500, "posted"), (
            f"history of {acct}: expected {tid} as posted {payer} -> {payee} 2500 (the client's "
            f"accounts, not clearing ones), saw {h}")

    after = clearing_balances(srv, SHARDS)
    d01, d10 = pair_delta(before, after, 0, 1)
    assert (d01["posted"], d10["posted"]) == (2500, -2500), (
        f"clearing pair 0/1 after 2500 moved 0 -> 1: expected {clearing_id(0, 1)} +2500 and "
        f"{clearing_id(1, 0)} -2500 posted, saw {d01} and {d10}")
    assert d01["pending_in"] == d01["pending_out"] == 0, f"no hold may be left on {clearing_id(0, 1)}: {d01}"
    assert d10["pending_in"] == d10["pending_out"] == 0, f"no hold may be left on {clearing_id(1, 0)}: {d10}"
    assert after[(0, 1)]["posted"] + after[(1, 0)]["posted"] == 0, (
        f"clearing pair 0/1 must net to zero, saw {after[(0, 1)]} and {after[(1, 0)]}")

    again = expect_replayed(transfer(srv, tid, payer, payee, 2500), 200, "replay of a cross-shard transfer")
    assert again.body == r.body, f"replay: expected the original answer {r.body}, saw {again.body}"
    back = uid("x")
    expect_status(transfer(srv, back, payee, payer, 500), 201, "cross-shard transfer back 1 -> 0")
    expect_balance(srv, payer, "payer after 500 back", posted=8000, available=8000)
    expect_balance(srv, payee, "payee after 500 back", posted=2000, available=2000)
    expect_pairs_net_zero(srv, "after transfers both ways")


# -------------------------------------------------------------- holds ----

def hold(srv, src, dst, amount, **extra):
    tid = uid("h")
    r = expect_status(transfer(srv, tid, src, dst, amount, pending=True, **extra), 201,
                      f"cross-shard hold {src} -> {dst}")
    assert r.body["status"] == "pending" and r.body["posted_amount"] == 0, (
        f"a cross-shard hold answers 201 status pending, saw {r.body}")
    return tid


def test_cross_shard_holds_post_void_and_expire(srv):
    cash = place(srv, "cash", 2, allow_negative=True)
    payer = place(srv, "payer", 2)
    payee = place(srv, "payee", 3)
    fund(srv, cash, payer, 10_000)
    before = clearing_balances(srv, SHARDS)

    h1 = hold(srv, payer, payee, 4000)
    expect_balance(srv, payer, "payer with a 4000 hold", posted=10_000, pending_out=4000, available=6000)
    expect_balance(srv, payee, "payee of a 4000 hold", posted=0, pending_in=4000, available=0)
    d23, d32 = pair_delta(before, clearing_balances(srv, SHARDS), 2, 3)
    assert (d23["pending_in"], d32["pending_out"], d23["posted"], d32["posted"]) == (4000, 4000, 0, 0), (
        f"an open 4000 hold 2 -> 3: expected {clearing_id(2, 3)} pending_in +4000 and "
        f"{clearing_id(3, 2)} pending_out +4000, nothing posted; saw {d23} and {d32}")

    r = expect_status(srv.post(f"/v1/transfers/{h1}/post", {"amount": 2500}), 200, "partial post across shards")
    assert (r.body["status"], r.body["posted_amount"]) == ("posted", 2500), f"post 2500 of 4000: {r.body}"
    expect_balance(srv, payer, "payer after posting 2500", posted=7500, pending_out=0, available=7500)
    expect_balance(srv, payee, "payee after posting 2500", posted=2500, pending_in=0, available=2500)
    expect_replayed(srv.post(f"/v1/transfers/{h1}/post", {"amount": 2500}), 200, "posting a posted hold again")
    expect_error(srv.post(f"/v1/transfers/{h1}/void"), 422, "not_pending", "voiding a posted hold")

    h2 = hold(srv, payer, payee, 1000)
    expect_balance(srv, payer, "payer with a 1000 hold", pending_out=1000, available=6500)
    r = expect_status(srv.post(f"/v1/transfers/{h2}/void"), 200, "void across shards")
    assert (r.body["status"], r.body["void_reason"]) == ("voided", "voided"), f"void: {r.body}"
    expect_balance(srv, payer, "payer after void", posted=7500, pending_out=0, available=7500)
    expect_balance(srv, payee, "payee after void", posted=2500, pending_in=0, available=2500)
    expect_error(srv.post(f"/v1/transfers/{h2}/post"), 422, "not_pending", "posting a voided hold")

    h3 = hold(srv, payer, payee, 700, timeout_seconds=1)
    expect_balance(srv, payer, "payer with an expiring hold", pending_out=700, available=6800)
    expect_balance(srv, payee, "payee of an expiring hold", pending_in=700)

    def expired_both_sides():
        t = get_transfer(srv, h3).body
        return (t["status"] == "voided" and balance(srv, payer)["pending_out"] == 0 and
                balance(srv, payee)["pending_in"] == 0) and t
    t = wait_until(expired_both_sides, 10, 0.1)
    assert t, (f"a cross-shard hold with timeout_seconds 1 must expire on both shards within 10 s, saw "
               f"{get_transfer(srv, h3).body}, payer {balance(srv, payer)}, payee {balance(srv, payee)}")
    assert (t["void_reason"], t["posted_amount"]) == ("expired", 0), f"expired hold: {t}"
    expect_error(srv.post(f"/v1/transfers/{h3}/post"), 422, "not_pending", "posting an expired hold")
    expect_balance(srv, payer, "payer at the end", posted=7500, pending_out=0, pending_in=0, available=7500)
    expect_balance(srv, payee, "payee at the end", posted=2500, pending_out=0, pending_in=0, available=2500)

    d23, d32 = pair_delta(before, clearing_balances(srv, SHARDS), 2, 3)
    assert d23 == {"posted": 2500, "pending_in": 0, "pending_out": 0} and \
        d32 == {"posted": -2500, "pending_in": 0, "pending_out": 0}, (
            f"clearing pair 2/3 after 2500 posted and the other holds released: expected +2500 / -2500 "
            f"posted and no hold left, saw {d23} / {d32}")
    expect_pairs_net_zero(srv, "after holds")


# ------------------------------------------------------ compensation ----

def test_payee_missing_on_other_shard_refunds_the_payer(srv):
    cash = place(srv, "cash", 1, allow_negative=True)
    payer = place(srv, "payer", 1)
    fund(srv, cash, payer, 5000)
    ghost = id_on_shard("ghost", 2, SHARDS)
    usd = place(srv, "usd", 3, currency="USD")
    before = clearing_balances(srv, SHARDS)

    cases = [(uid("miss"), ghost, "account_not_found"), (uid("cur"), usd, "currency_mismatch")]
    for tid, payee, code in cases:
        what = f"{payer} (shard 1) -> {payee} (shard {shard_of(payee, SHARDS)}), {code}"
        expect_error(transfer(srv, tid, payer, payee, 1200), 422, code, what)
        expect_balance(srv, payer, f"payer made whole after {code}", posted=5000, pending_out=0,
                       available=5000)
        t = expect_status(get_transfer(srv, tid), 200, f"GET {tid}").body
        seen = (t["status"], t["void_reason"], t["posted_amount"], (t.get("error") or {}).get("code"))
        assert seen == ("voided", "compensated", 0, code), (
            f"{what}: expected the transfer stored voided / compensated with error.code {code}, saw {t}")

    after = clearing_balances(srv, SHARDS)
    for b in (2, 3):
        d1b, db1 = pair_delta(before, after, 1, b)
        assert not any(d1b.values()) and not any(db1.values()), (
            f"a compensated saga leaves no money on clearing pair 1/{b}, saw changes {d1b} / {db1}")
    expect_pairs_net_zero(srv, "after compensations", ("NGN", "USD"))

    # A refusal replays as the same refusal, even once the payee exists.
    make_account(srv, ghost)
    for tid, payee, code in cases:
        expect_error(transfer(srv, tid, payer, payee, 1200), 422, code, f"retry of the refused (compensated) {tid}")
    expect_balance(srv, payer, "payer after the retries", posted=5000, available=5000)
    expect_balance(srv, ghost, "a payee created after the refusal gets nothing from a retry", posted=0)


def test_compensated_refusal_replays_like_a_local_one(srv):
    """A retry of a refused transfer answers the same 422 with
    Idempotent-Replayed: true (API.md, exactly once) whether the refusal was
    local (rejected) or came from the payee's shard (compensated)."""
    cash = place(srv, "cash", 0, allow_negative=True)
    payer = place(srv, "payer", 0)
    fund(srv, cash, payer, 1000)
    ghosts = ((id_on_shard("ghost", 0, SHARDS), "local"), (id_on_shard("ghost", 1, SHARDS), "cross-shard"))
    for ghost, kind in ghosts:
        tid = uid("rep")
        first = transfer(srv, tid, payer, ghost, 10)
        expect_error(first, 422, "account_not_found", f"{kind} transfer to a missing payee")
        expect_not_replayed(first, f"{kind} refusal")
        again = transfer(srv, tid, payer, ghost, 10)
        expect_error(again, 422, "account_not_found", f"retry of the {kind} refusal")
        assert again.replayed, (f"retry of the {kind} refusal {tid}: expected 422 with Idempotent-Replayed: "
                                f"true, saw headers {again.headers}")


# ------------------------------------------------------ reserved ids ----

def test_kobo_ids_are_reserved(srv):
    cash = place(srv, "cash", 0, allow_negative=True)
    payer = place(srv, "payer", 0)
    fund(srv, cash, payer, 1000)
    for acct in ("kobo:x", clearing_id(0, 1), clearing_id(1, 0, "USD")):
        expect_error(create_account(srv, acct), 400, "invalid_request", f"creating {acct}", field="id")
    for src, dst, field in ((payer, clearing_id(0, 1), "to"), (clearing_id(0, 1), payer, "from"),
                            (payer, clearing_id(1, 0), "to"), (payer, "kobo:x", "to")):
        tid = uid("res")
        expect_error(transfer(srv, tid, src, dst, 10), 400, "invalid_request",
                     f"transfer {src} -> {dst}", field=field)
        expect_status(get_transfer(srv, tid), 404, f"a 400 transfer {tid} is not recorded")
    batch = {"transfers": [transfer_body(uid("res"), payer, clearing_id(0, 2), 10)]}
    expect_error(srv.post("/v1/transfers/batch", batch), 400, "invalid_request", "batch naming a clearing account")
    expect_status(srv.post(f"/v1/transfers/{uid('res')}/post"), 404, "post of an unknown id")
    expect_balance(srv, payer, "nothing moved", posted=1000, available=1000)
    r = expect_status(srv.get(f"/v1/accounts/{clearing_id(0, 1)}"), 200, "clearing accounts are readable")
    assert r.body["allow_negative"] is True, f"a clearing account allows negative, saw {r.body}"


# ------------------------------------------------------------ batches ----

def test_atomic_batch_must_stay_on_one_shard(srv):
    cash0 = place(srv, "cash", 0, allow_negative=True)
    cash1 = place(srv, "cash", 1, allow_negative=True)
    a0, b0 = place(srv, "a", 0), place(srv, "b", 0)
    a1, b1 = place(srv, "a", 1), place(srv, "b", 1)
    for c, a in ((cash0, a0), (cash0, b0), (cash1, a1), (cash1, b1)):
        fund(srv, c, a, 1000)
    accts = (a0, b0, a1, b1)
    start = {a: balance(srv, a) for a in accts}

    spanning = [  # one transfer crossing shards; two local transfers on different shards
        [transfer_body(uid("ab"), a0, a1, 100)],
        [transfer_body(uid("ab"), a0, b0, 100), transfer_body(uid("ab"), a1, b1, 100)],
        [transfer_body(uid("ab"), a0, b0, 100), transfer_body(uid("ab"), b0, b1, 100)],
    ]
    for items in spanning:
        r = srv.post("/v1/transfers/batch", {"atomic": True, "transfers": items})
        expect_error(r, 422, "atomic_cross_shard", f"atomic batch {[(t['from'], t['to']) for t in items]}")
        for t in items:
            g = get_transfer(srv, t["id"])
            assert g.status == 404 or g.body.get("status") == "rejected", (
                f"an atomic batch refused whole must apply nothing: {t['id']} is {g!r}")
    seen = {a: balance(srv, a) for a in accts}
    assert seen == start, f"refused atomic batches changed balances: expected {start}, saw {seen}"

    local = [transfer_body(uid("ab"), a0, b0, 100), transfer_body(uid("ab"), b0, a0, 30)]
    r = expect_status(srv.post("/v1/transfers/batch", {"atomic": True, "transfers": local}), 200,
                      "an atomic batch on one shard")
    assert [x["status"] for x in r.body["results"]] == [201, 201], f"atomic local batch: {r.body}"

    ghost = id_on_shard("ghost", 3, SHARDS)
    mixed = [
        (transfer_body(uid("mx"), a1, b1, 100), 201, None),                     # local on 1
        (transfer_body(uid("mx"), a0, a1, 200), 201, None),                     # 0 -> 1
        (transfer_body(uid("mx"), b1, b0, 300), 201, None),                     # 1 -> 0
        (transfer_body(uid("mx"), a0, ghost, 50), 422, "account_not_found"),    # 0 -> 3, no payee
        (transfer_body(uid("mx"), b0, a1, 5000), 422, "insufficient_funds"),    # 0 -> 1, too much
        (transfer_body(uid("mx"), a1, a0, 10, pending=True), 201, None),        # 1 -> 0 hold
        (transfer_body(uid("mx"), b0, a0, 40), 201, None),                      # local on 0
    ]
    r = expect_status(srv.post("/v1/transfers/batch", {"atomic": False, "transfers": [m[0] for m in mixed]}),
                      200, "non-atomic batch mixing local and cross-shard transfers")
    results = r.body["results"]
    seen = [(x["id"], x["status"], (x.get("error") or {}).get("code")) for x in results]
    want = [(m[0]["id"], m[1], m[2]) for m in mixed]
    assert seen == want, f"per-item results in request order: expected {want}, saw {seen}"
    hold_item = results[5]["transfer"]
    assert hold_item["status"] == "pending", f"the cross-shard hold in the batch: {hold_item}"
    assert all(x["transfer"]["status"] == "posted" for i, x in enumerate(results) if x["status"] == 201 and i != 5)
    # a0: 1000 -100 +30 (atomic) -200 +40 = 770, holds in 10; b0: 1000 +100 -30 +300 -40 = 1330;
    # a1: 1000 -100 +200 = 1100, hold out 10; b1: 1000 +100 -300 = 800.
    expect_balance(srv, a0, "a0", posted=770, pending_in=10, pending_out=0)
    expect_balance(srv, b0, "b0", posted=1330, pending_in=0, pending_out=0)
    expect_balance(srv, a1, "a1", posted=1100, pending_out=10, available=1090)
    expect_balance(srv, b1, "b1", posted=800)
    expect_status(srv.post(f"/v1/transfers/{hold_item['id']}/void"), 200, "void the batch's hold")
    expect_pairs_net_zero(srv, "after batches")


# ----------------------------------------------------------- shard map ----

def data_snapshot(data_dir):
    """{file name: bytes} of the data directory, but the lock file."""
    out = {}
    for name in sorted(os.listdir(data_dir)):
        path = os.path.join(data_dir, name)
        if name == "kobod.lock" or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            out[name] = f.read()
    return out


@pytest.mark.embedded_only("a --data dir made with --shards 4 refuses another count (test_postgres covers the database list)")
def test_reopen_with_another_shard_count_is_refused(make_server):
    srv = make_server("--shards", "4")
    cash = place(srv, "cash", 0, allow_negative=True)
    payee = place(srv, "payee", 3)
    fund(srv, cash, payee, 700)
    srv.sigterm()
    files = data_snapshot(srv.data)
    assert {f"shard-{i}.db" for i in range(4)} | {"shard-map.json"} <= set(files), (
        f"a 4-shard data dir holds shard-0..3.db and shard-map.json, saw {sorted(files)}")

    for flags in (["--shards", "2"], [], ["--shards", "8"]):
        args = [binary("kobod"), "--listen", f"127.0.0.1:{free_port()}", "--data", srv.data] + flags
        try:
            p = subprocess.run(args, capture_output=True, text=True, timeout=30, env=child_env())
        except subprocess.TimeoutExpired:
            raise AssertionError(f"`{' '.join(args)}` on a 4-shard data dir: expected it to refuse and "
                                 f"exit, it was still running after 30 s")
        assert p.returncode != 0, (f"`{' '.join(args)}` on a 4-shard data dir: expected a non-zero "
                                   f"exit, saw 0\nstderr: {p.stderr[-1500:]}")
        assert "--shards 4" in p.stderr, (f"`{' '.join(args)}`: expected stderr to say the dir was made "
                                          f"with --shards 4, saw:\n{p.stderr[-1500:]}")
        assert data_snapshot(srv.data) == files, f"`{' '.join(args)}` changed the data directory"

    srv.start(port=srv.port)
    expect_balance(srv, payee, "after the refused starts, a restart with --shards 4", posted=700)
    srv.sigterm()
    expect_audit_ok(srv, "audit after the refused starts")


# --------------------------------------------------------------- races ----

def test_last_100_raced_by_64_cross_shard_transfers(srv):
    cash = place(srv, "cash", 1, allow_negative=True)
    payer = place(srv, "payer", 1)
    fund(srv, cash, payer, 100)
    others = [s for s in range(SHARDS) if s != 1]
    payees = [place(srv, "p", others[i % len(others)]) for i in range(RACERS)]
    ids = [uid("grab") for _ in range(RACERS)]
    results = race(srv.port, [transfer_body(t, payer, p, 100) for t, p in zip(ids, payees)])
    seen = summary(results)
    want = Counter({(201, None, False): 1, (422, "insufficient_funds", False): RACERS - 1})
    assert seen == want, (f"64 cross-shard transfers of the payer's last 100: expected one 201 and 63 x 422 "
                          f"insufficient_funds, saw {dict(seen)}")
    expect_balance(srv, payer, "payer after the race", posted=0, pending_out=0, available=0)
    winner = payees[next(i for i, r in enumerate(results) if r.status == 201)]
    got = {p: b["posted"] for p in payees for b in [balance(srv, p)] if b["posted"] or b["pending_in"]}
    assert got == {winner: 100}, f"exactly the winner's payee gets 100, saw {got}"
    statuses = Counter(get_transfer(srv, t).body["status"] for t in ids)
    assert statuses == Counter({"posted": 1, "rejected": RACERS - 1}), f"stored statuses: {dict(statuses)}"
    expect_pairs_net_zero(srv, "after the race")


def test_same_cross_shard_id_sent_64_times_moves_money_once(srv):
    cash = place(srv, "cash", 3, allow_negative=True)
    payer = place(srv, "payer", 3)
    payee = place(srv, "payee", 0)
    fund(srv, cash, payer, 10_000)
    tid = uid("dup")
    results = race(srv.port, [transfer_body(tid, payer, payee, 2500)] * RACERS)
    seen = summary(results)
    created = [r for r in results if r.status == 201]
    assert len(created) == 1 and not created[0].replayed, (
        f"64 concurrent sends of one cross-shard id: expected exactly one 201 (not replayed), saw {dict(seen)}")
    odd = [r for r in results if r.status == 200 and not r.replayed or r.status not in (200, 201, 202)]
    assert not odd, f"the other sends: expected 200 with Idempotent-Replayed (or 202 processing), saw {odd[:3]}"
    first = created[0].body
    keys = ("id", "from", "to", "amount", "status", "posted_amount")
    for r in results:
        if r.status == 200:
            assert {k: r.body[k] for k in keys} == {k: first[k] for k in keys}, (
                f"a replay must carry the original transfer {first}, saw {r.body}")
    ok, _, _ = wait_no_saga(srv, [tid])
    assert ok, f"the saga of {tid} did not settle within {SETTLE_TIMEOUT_S} s"
    assert get_transfer(srv, tid).body["status"] == "posted"
    expect_balance(srv, payer, "money moved once", posted=7500, available=7500, pending_out=0)
    expect_balance(srv, payee, "money moved once", posted=2500, pending_in=0)
    expect_pairs_net_zero(srv, "after the retry storm")


# ---------------------------------------------------------------- logs ----

def test_saga_steps_log_the_original_request_id(srv):
    cash = place(srv, "cash", 0, allow_negative=True)
    payer = place(srv, "payer", 0)
    payee = place(srv, "payee", 2)
    fund(srv, cash, payer, 1000)
    cases = [(uid("log"), payee, 201), (uid("log"), id_on_shard("ghost", 3, SHARDS), 422)]
    for tid, dst, status in cases:
        rid = "rid-" + tid.replace(":", "-")
        r = expect_status(transfer(srv, tid, payer, dst, 100, headers={"X-Request-Id": rid}), status,
                          f"{payer} -> {dst}")
        assert r.header("X-Request-Id") == rid, f"expected X-Request-Id {rid} echoed, saw {r.headers}"
        stored = get_transfer(srv, tid).body
        assert stored["request_id"] == rid, f"stored request_id: expected {rid}, saw {stored}"
        payee_shard = shard_of(dst, SHARDS)

        def steps():
            found = []
            for line in srv.log_text().splitlines():
                if '"saga_step"' not in line or tid not in line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("event") == "saga_step" and rec.get("transfer_id") == tid:
                    found.append(rec)
            return found if {0, payee_shard} <= {rec.get("shard") for rec in found} else None
        found = wait_until(steps, 5, 0.1)
        assert found, (f"expected saga_step log lines for {tid} from shard 0 and shard {payee_shard}, saw "
                       f"{[l for l in srv.log_text().splitlines() if tid in l][:10]}")
        wrong = [rec for rec in found if rec.get("request_id") != rid]
        assert not wrong, f"every saga_step line of {tid} must carry request_id {rid}, saw {wrong}"


# ---------------------------------------------------------------- load ----

class CrossLoad:
    """Background transfers among accounts on every shard (so most cross
    shards), from `threads` threads, each with its own connection and never
    retrying. A share of them are holds; an acknowledged hold is then posted
    (partially) or voided at once, or left open.

    Per create id: params[id] (the body), and answers[id] one of
      ("ack", status, transfer)  201, or 202 processing
      ("rej", code)              422
      ("lost",)                  no answer (connection error, 5xx)
    For holds that were then posted or voided: actions[id] = [op, amount,
    answer] with the same answer shapes (200 / 202 acknowledged)."""

    def __init__(self, srv, groups, prefix, threads=8, seed=1, max_amount=1500, hold_share=0.25,
                 resolve_share=0.6, duration=None):
        self.srv = srv
        self.groups = [(cur, list(accts)) for cur, accts in groups]
        self.weights = [len(accts) for _, accts in self.groups]
        self.prefix, self.n_threads, self.seed = prefix, threads, seed
        self.max_amount, self.hold_share, self.resolve_share = max_amount, hold_share, resolve_share
        self.duration = duration
        self.lock = threading.Lock()
        self.params, self.answers, self.actions = {}, {}, {}
        self.problems = []
        self.stopping = threading.Event()
        self.threads = []
        self.counts = Counter()

    def _send(self, state, method, path, body):
        """One request on this thread's connection: Resp, or None (no answer)."""
        try:
            if state.get("conn") is None:
                state["conn"] = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=20)
            conn = state["conn"]
            conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            resp = Resp(r.status, r.getheaders(), r.read())
            if r.will_close:
                conn.close()
                state["conn"] = None
        except Exception:
            if state.get("conn") is not None:
                state["conn"].close()
                state["conn"] = None
            time.sleep(0.02)
            return None
        if resp.status >= 500:
            return None
        return resp

    def _answer(self, tid, resp, ok_statuses):
        if resp is None:
            return ("lost",)
        if resp.status in ok_statuses:
            return ("ack", resp.status, resp.body)
        if resp.status == 422:
            return ("rej", resp.body["error"]["code"])
        with self.lock:
            self.problems.append(f"{tid}: unexpected {resp!r}")
        return ("odd", resp.status)

    def _run(self, n):
        rng = random.Random(self.seed * 1000 + n)
        state = {}
        seq = 0
        end = time.monotonic() + self.duration if self.duration else None
        while not self.stopping.is_set() and (end is None or time.monotonic() < end):
            seq += 1
            cur, accts = rng.choices(self.groups, weights=self.weights)[0]
            src, dst = rng.sample(accts, 2)
            is_hold = rng.random() < self.hold_share
            tid = f"{self.prefix}.{n}.{seq}"
            body = transfer_body(tid, src, dst, rng.randint(1, self.max_amount), cur)
            if is_hold:
                body["pending"] = True
            with self.lock:
                self.params[tid] = body
            answer = self._answer(tid, self._send(state, "POST", "/v1/transfers", body), (201, 202))
            with self.lock:
                self.answers[tid] = answer
                self.counts[answer[0] if answer[0] != "ack" else answer[1]] += 1
            if not (is_hold and answer[0] == "ack" and answer[1] == 201 and rng.random() < self.resolve_share):
                continue
            if rng.random() < 0.5:
                op, amount = "post", rng.randint(1, body["amount"])
                payload = {"amount": amount}
            else:
                op, amount, payload = "void", 0, None
            action = [op, amount, ("lost",)]
            with self.lock:
                self.actions[tid] = action
            action[2] = self._answer(tid, self._send(state, "POST", f"/v1/transfers/{tid}/{op}", payload),
                                     (200, 202))
        if state.get("conn") is not None:
            state["conn"].close()

    def start(self):
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                        for n in range(self.n_threads)]
        for t in self.threads:
            t.start()
        return self

    def acked(self):
        with self.lock:
            return sum(1 for a in self.answers.values() if a[0] == "ack")

    def stop(self, timeout=60):
        self.stopping.set()
        self.join(timeout)

    def join(self, timeout=60):
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "load threads did not stop"

    def maybe_in_flight(self):
        """Ids whose saga may still run: no final answer to the create or to
        its post/void."""
        out = {t for t, a in self.answers.items() if a[0] in ("lost", "odd") or (a[0] == "ack" and a[1] == 202)}
        out |= {t for t, a in self.actions.items() if a[2][0] != "ack" or a[2][1] == 202}
        out |= set(self.params) - set(self.answers)
        return out


def retry_lost(srv, load, what):
    """Sends every unanswered create, and every unanswered post/void, again
    with the same id and parameters, twice: the first applies or replays,
    the second replays. Updates the load's record with the answers."""
    for tid, body in sorted(load.params.items()):
        if load.answers.get(tid, ("lost",))[0] == "ack":
            continue
        if load.answers.get(tid, ("lost",))[0] == "rej":
            continue
        r1 = srv.post("/v1/transfers", body)
        assert r1.status in (200, 201, 202, 422), (
            f"{what}: retry of unanswered {tid}: expected 200/201/202/422, saw {r1!r}")
        if r1.status == 202:
            ok, _, _ = wait_no_saga(srv, [tid])
            assert ok, f"{what}: retry of {tid} answered 202 and its saga did not settle"
        r2 = srv.post("/v1/transfers", body)
        want = 422 if r1.status == 422 else 200
        assert r2.status == want and r2.replayed, (
            f"{what}: second retry of {tid}: expected {want} with Idempotent-Replayed, saw {r2!r} {r2.headers}")
        load.answers[tid] = ("rej", r2.body["error"]["code"]) if want == 422 else ("ack", 200, r2.body)
    for tid, action in sorted(load.actions.items()):
        op, amount, answer = action
        if answer[0] == "ack" and answer[1] == 200:
            continue
        payload = {"amount": amount} if op == "post" else None
        r = srv.post(f"/v1/transfers/{tid}/{op}", payload)
        assert r.status == 200, (f"{what}: retry of {op} {tid} (its hold is ours and pending or already "
                                 f"{op}ed by the first try): expected 200, saw {r!r}")
        action[2] = ("ack", 200, r.body)


def verify_ledger(srv, loads, book, what):
    """After every saga settled: each create id's stored state agrees with
    what was answered; every account's posted / pending_out / pending_in is
    what the stored transfers say (so nothing applied twice and no hold was
    left behind); money is conserved per currency; no non-negative account
    went below zero; each clearing account carries exactly the open holds
    between its shards."""
    accounts, cash, start = book.accounts, book.cash, book.start
    params, answers, actions = {}, {}, {}
    for load in loads:
        params.update(load.params)
        answers.update(load.answers)
        actions.update(load.actions)
    ids = sorted(params)
    got = dict(zip(ids, parallel_map(lambda t: get_transfer(srv, t), ids)))
    problems = []
    expected = defaultdict(Counter)
    for acct, cur in accounts.items():
        expected[acct]["posted"] = start
    for acct, c in book.funded_by.items():
        expected[c]["posted"] -= start
    clearing_holds = Counter()
    for tid in ids:
        body, r, answer = params[tid], got[tid], answers.get(tid, ("lost",))
        if not isinstance(r, Resp) or r.status not in (200, 404):
            problems.append(f"GET {tid}: {r!r}")
            continue
        if r.status == 404:
            if answer[0] in ("ack", "rej"):
                problems.append(f"{tid} was answered {answer[:2]} but GET says 404 (lost)")
            continue
        t = r.body
        if t["status"] == "processing":
            problems.append(f"{tid} is still processing: {t}")
            continue
        if (t["from"], t["to"], t["amount"]) != (body["from"], body["to"], body["amount"]):
            problems.append(f"{tid} stored as {t}, sent {body}")
        action = actions.get(tid)
        if answer[0] == "ack":
            if body.get("pending") and action and action[2][0] == "ack":
                want = ("posted", action[1]) if action[0] == "post" else ("voided", 0)
            elif body.get("pending"):
                want = ("pending", 0)
            else:
                want = ("posted", body["amount"])
            # A 202 "processing" may still end compensated (a saga past its deadline).
            compensated = t["status"] == "voided" and t["void_reason"] == "compensated"
            if (t["status"], t["posted_amount"]) != want and not (answer[1] == 202 and compensated):
                problems.append(f"{tid} answered {answer[1]} ({'hold' if body.get('pending') else 'transfer'}"
                                f", action {action}): expected stored {want}, saw {t}")
        elif answer[0] == "rej":
            code = (t.get("error") or {}).get("code")
            if t["status"] not in ("rejected", "voided") or code != answer[1]:
                problems.append(f"{tid} answered 422 {answer[1]}: expected it stored rejected (or voided, "
                                f"compensated) with that code, saw {t}")
        if t["status"] == "posted":
            expected[t["from"]]["posted"] -= t["posted_amount"]
            expected[t["to"]]["posted"] += t["posted_amount"]
        elif t["status"] == "pending":
            expected[t["from"]]["pending_out"] += t["amount"]
            expected[t["to"]]["pending_in"] += t["amount"]
            a, b = shard_of(t["from"], SHARDS), shard_of(t["to"], SHARDS)
            if a != b:
                clearing_holds[(a, b, t["currency"])] += t["amount"]
    assert not problems, f"{what}: {len(problems)} stored transfers disagree, e.g.\n" + "\n".join(problems[:15])

    everyone = sorted(accounts) + sorted(cash)
    bals = dict(zip(everyone, parallel_map(lambda a: balance(srv, a), everyone)))
    wrong = {}
    for acct in everyone:
        b = bals[acct]
        want = {k: expected[acct][k] for k in ("posted", "pending_out", "pending_in")}
        if {k: b[k] for k in want} != want:
            wrong[acct] = (want, b)
    assert not wrong, (f"{what}: {len(wrong)} balances differ from what the stored transfers say "
                       f"(expected, seen), e.g. {dict(list(wrong.items())[:8])}")
    for cur in set(accounts.values()):
        users = sum(bals[a]["posted"] for a, c in accounts.items() if c == cur)
        deposited = start * sum(1 for c in accounts.values() if c == cur)
        assert users == deposited, (f"{what}: {cur}: the user accounts must hold what was deposited, "
                                    f"{deposited}, saw {users}")
        total = users + sum(bals[c]["posted"] for c, cc in cash.items() if cc == cur)
        assert total == 0, f"{what}: {cur}: conservation: expected users + cash == 0, saw {total}"
        expect_pairs_net_zero(srv, what, (cur,))
        clr = clearing_balances(srv, SHARDS, cur)
        bad = {(a, b): clr[(a, b)] for (a, b) in clr
               if clr[(a, b)]["pending_in"] != clearing_holds[(a, b, cur)] or
               clr[(b, a)]["pending_out"] != clearing_holds[(a, b, cur)]}
        assert not bad, (f"{what}: {cur}: clearing a:b must hold exactly the open holds from shard a to "
                         f"shard b ({dict(clearing_holds)}), saw {bad}")
    negative = {a: bals[a] for a in accounts if bals[a]["available"] < 0}
    assert not negative, f"{what}: non-negative accounts went below 0: {negative}"
    return got


class Book:
    """The accounts of a load test: accounts {id: currency} funded with
    `start` each from cash accounts (one per shard and currency, allow
    negative, on that shard, so funding is local): funded_by {id: cash id}."""

    def __init__(self, srv, per_currency, start):
        self.start = start
        self.cash, self.accounts, self.funded_by = {}, {}, {}
        cash_at = {}
        for cur in per_currency:
            for s in range(SHARDS):
                c = id_on_shard(f"cash{s}.{cur}", s, SHARDS)
                make_account(srv, c, cur, allow_negative=True)
                self.cash[c] = cur
                cash_at[(s, cur)] = c
        for cur, n in per_currency.items():
            for _ in range(n):
                a = uid(f"u{cur.lower()}")
                make_account(srv, a, cur)
                self.accounts[a] = cur
                self.funded_by[a] = cash_at[(shard_of(a, SHARDS), cur)]
        items = [transfer_body(uid("fund"), self.funded_by[a], a, start, cur) for a, cur in self.accounts.items()]
        r = expect_status(srv.post("/v1/transfers/batch", {"atomic": False, "transfers": items}), 200, "funding")
        bad = [x for x in r.body["results"] if x["status"] != 201]
        assert not bad, f"funding: expected every item 201, saw {bad[:5]}"
        on = Counter(shard_of(a, SHARDS) for a in self.accounts)
        assert len(on) == SHARDS, f"expected accounts on all {SHARDS} shards, saw {dict(on)}"

    def groups(self):
        by = defaultdict(list)
        for a, cur in self.accounts.items():
            by[cur].append(a)
        return sorted(by.items())


LOAD_S = 10.0           # concurrent load: seconds of it
KILL_ROUNDS = 5
KILL_THREADS = 16


def sagas_in_flight_on_disk(srv):
    """`kobo audit` of a stopped kobod's store: its "sagas in flight: N"."""
    p = audit(srv)
    for line in p.stdout.splitlines():
        if line.startswith("sagas in flight:"):
            return int(line.split(":")[1])
    raise AssertionError(f"`kobo audit {' '.join(srv.store_args())}`: expected a 'sagas in flight: N' line, "
                         f"saw exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


@pytest.mark.own_shards
def test_concurrent_cross_shard_load_conserves_money(make_server):
    srv = make_server("--shards", str(SHARDS))
    book = Book(srv, {"NGN": 160, "USD": 40}, 5000)
    load = CrossLoad(srv, book.groups(), uid("cl"), threads=16, seed=11, max_amount=2000,
                     duration=LOAD_S).start()
    load.join(LOAD_S + 60)
    assert not load.problems, f"unexpected answers under load: {load.problems[:10]}"
    lost = {t: a for t, a in load.answers.items() if a[0] not in ("ack", "rej")}
    lost.update({t: a for t, a in load.actions.items() if a[2][0] != "ack"})
    assert not lost, f"with no fault every request must be answered (2xx or 422), saw {list(lost.items())[:5]}"
    cross = sum(1 for b in load.params.values() if shard_of(b["from"], SHARDS) != shard_of(b["to"], SHARDS))
    assert load.acked() > 200 and cross > len(load.params) // 2, (
        f"expected real cross-shard load: {load.acked()} acknowledged, {cross} of {len(load.params)} cross-shard")

    ok, secs, first = wait_no_saga(srv, load.maybe_in_flight())
    assert ok, f"sagas still in flight {SETTLE_TIMEOUT_S} s after the load (first look: {first})"
    verify_ledger(srv, [load], book, "after concurrent cross-shard load")
    srv.sigterm()
    p = expect_audit_ok(srv, "audit after concurrent cross-shard load")
    assert "sagas in flight: 0" in p.stdout and "clearing pairs: " in p.stdout and " 0 problems" in p.stdout, (
        f"audit with kobod stopped: expected no saga in flight and the clearing pairs checked, saw\n{p.stdout}")
    print(f"\ncross-shard load: {len(load.params)} transfers sent in {LOAD_S:.0f} s by 16 threads "
          f"({cross} cross-shard), answers {dict(load.counts)}, {len(load.actions)} holds posted/voided; "
          f"settled {secs:.2f} s after the load")


@pytest.mark.own_shards
def test_kill9_under_cross_shard_load_settles_every_saga(make_server, capsys):
    srv = make_server("--shards", str(SHARDS))
    book = Book(srv, {"NGN": 40}, 3000)
    rng = random.Random(7)
    loads, report = [], []
    for rnd in range(KILL_ROUNDS):
        load = CrossLoad(srv, book.groups(), uid(f"k{rnd}"), threads=KILL_THREADS, seed=rnd + 1).start()
        got = wait_until(lambda: load.acked() >= 30, 20)
        time.sleep(rng.uniform(0.1, 0.8))
        srv.kill9()
        load.stop()
        assert got, f"round {rnd}: expected at least 30 acknowledged transfers before the kill, saw {load.acked()}"
        assert not load.problems, f"round {rnd}: unexpected answers under load: {load.problems[:5]}"
        on_disk = sagas_in_flight_on_disk(srv)

        spawned = time.monotonic()
        srv.start(port=srv.port)   # returns once GET /readyz answers 200
        ready_s = time.monotonic() - spawned
        ok, secs, first = wait_no_saga(srv, load.maybe_in_flight())
        assert ok, (f"round {rnd}: sagas still in flight {SETTLE_TIMEOUT_S} s after the restart "
                    f"({on_disk} were in flight at the kill)")
        report.append((rnd, on_disk, first, ready_s, secs, len(load.params),
                       sum(1 for a in load.answers.values() if a[0] == "lost")))
        retry_lost(srv, load, f"round {rnd}")
        ok, _, _ = wait_no_saga(srv, load.maybe_in_flight())
        assert ok, f"round {rnd}: sagas of retried ids did not settle"
        loads.append(load)

    verify_ledger(srv, loads, book, f"after {KILL_ROUNDS} x kill -9 under cross-shard load")
    srv.sigterm()
    p = expect_audit_ok(srv, "audit after kill -9 rounds")
    assert "sagas in flight: 0" in p.stdout, f"audit: expected no saga in flight, saw\n{p.stdout}"
    # Shown even when pytest captures output: docs/benchmarks.md quotes it.
    with capsys.disabled():
        print(f"\nkill -9 under cross-shard load (kobod --shards {SHARDS}, {KILL_THREADS} client threads):")
        for rnd, on_disk, first, ready_s, secs, sent, lost in report:
            print(f"  round {rnd}: {sent} transfers sent, {lost} unanswered; {on_disk} sagas in flight at "
                  f"the kill ({first} still processing at the first look after ready); restart to ready "
                  f"{ready_s * 1000:.0f} ms, then backlog settled in {secs * 1000:.0f} ms")
