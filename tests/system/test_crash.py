"""
test_crash.py — kill -9 under load, restart on the same data dir, repeated
(invariants 2, 3, 1 and 6): every acknowledged transfer survives, money is
conserved, `kobo audit` passes, and retrying every unacknowledged id applies
it at most once.
"""
import random
import time
from collections import Counter

from kobotest import (Load, conservation, expect_audit_ok, expect_status, fund, get_transfer,
                      id_on_shard, make_account, wait_until)

ROUNDS = 5
PAYEES = [f"w{i}" for i in range(8)]
START = 3000


def check_survivors(srv, load, rnd):
    """Every acknowledged transfer is stored as answered; every 422 is stored
    as rejected with the same code."""
    lost, wrong = [], []
    for tid, answer in load.acked.items():
        r = get_transfer(srv, tid)
        if r.status != 200:
            lost.append((tid, r.status))
            continue
        sent = load.params[tid]
        seen = {k: r.body.get(k) for k in ("from", "to", "amount", "currency", "status")}
        want = dict(sent, status="posted")
        want.pop("id")
        if seen != want:
            wrong.append((tid, want, seen))
    assert not lost, (f"round {rnd}: {len(lost)} of {len(load.acked)} acknowledged transfers lost "
                      f"after kill -9 (expected GET 200), e.g. {lost[:5]}")
    assert not wrong, f"round {rnd}: acknowledged transfers changed (id, expected, seen): {wrong[:5]}"
    for tid, code in load.rejected.items():
        r = get_transfer(srv, tid)
        assert r.status == 200 and r.body.get("status") == "rejected" and \
            (r.body.get("error") or {}).get("code") == code, (
                f"round {rnd}: transfer {tid} was answered 422 {code}: expected it stored as "
                f"rejected with that code, saw {r!r}")


def retry_unacked(srv, load, rnd):
    """Retries each unacknowledged id twice with the same parameters: the
    first retry applies or replays, the second must replay."""
    for tid, body in load.unacked.items():
        r1 = srv.post("/v1/transfers", body)
        assert r1.status in (200, 201, 422), f"round {rnd}: retry of unacked {tid}: expected 200/201/422, saw {r1!r}"
        r2 = srv.post("/v1/transfers", body)
        want = 422 if r1.status == 422 else 200
        assert r2.status == want and r2.replayed, (
            f"round {rnd}: second retry of {tid}: expected {want} with Idempotent-Replayed, saw "
            f"{r2!r} {r2.headers}")


def test_kill9_under_load_repeatedly(server):
    make_account(server, "cash", allow_negative=True)
    for w in PAYEES:
        make_account(server, w)
        fund(server, "cash", w, START)
    expected = Counter({w: START for w in PAYEES})
    expected["cash"] = -START * len(PAYEES)
    rng = random.Random(7)
    totals = Counter()

    for rnd in range(ROUNDS):
        load = Load(server, ["cash"] + PAYEES, PAYEES, prefix=f"k{rnd}", threads=8, seed=rnd + 1)
        load.start()
        got = wait_until(lambda: len(load.acked) >= 30, 20)
        time.sleep(rng.uniform(0.1, 0.8))
        server.kill9()
        load.stop()
        assert got, f"round {rnd}: expected at least 30 acknowledged transfers before the kill, saw {len(load.acked)}"
        assert not load.problems, f"round {rnd}: unexpected answers under load: {load.problems[:5]}"
        totals.update(acked=len(load.acked), rejected=len(load.rejected), unacked=len(load.unacked))

        server.start(port=server.port)
        check_survivors(server, load, rnd)
        for tid in list(load.acked)[:10]:
            r = server.post("/v1/transfers", load.params[tid])
            assert r.status == 200 and r.replayed, (
                f"round {rnd}: retry of acknowledged {tid}: expected 200 replayed, saw {r!r}")
        retry_unacked(server, load, rnd)

        # Every id sent this round now exists; its stored outcome decides the balances.
        for tid, body in load.params.items():
            r = get_transfer(server, tid)
            expect_status(r, 200, f"round {rnd}: transfer {tid} after retries")
            status = r.body["status"]
            assert status in ("posted", "rejected"), f"round {rnd}: {tid}: unexpected status {r.body}"
            if status == "posted":
                expected[body["from"]] -= r.body["posted_amount"]
                expected[body["to"]] += r.body["posted_amount"]

        total, bals = conservation(server, ["cash"] + PAYEES)
        assert total == 0, f"round {rnd}: conservation: expected sum of posted 0, saw {total} ({bals})"
        seen = {a: b["posted"] for a, b in bals.items()}
        assert seen == dict(expected), (f"round {rnd}: balances after kill -9 and retries: expected "
                                        f"{dict(expected)} (from stored transfers), saw {seen}")
        negative = {a: b for a, b in bals.items() if a != "cash" and b["available"] < 0}
        assert not negative, f"round {rnd}: non-negative accounts went below 0: {negative}"
        expect_audit_ok(server, f"round {rnd}: audit after kill -9")
    print(f"kill -9 rounds: {dict(totals)}")


def test_holds_and_batches_survive_kill9(server):
    """Open holds, a posted hold, a voided hold and an acknowledged batch all
    come back after kill -9; an expiring hold still expires after restart.
    Every account on shard 0: local holds and batches are the subject
    (test_shards kills kobod under sagas)."""
    cash, a, b = (id_on_shard(name, 0, server.shards) for name in ("cash", "a", "b"))
    make_account(server, cash, allow_negative=True)
    make_account(server, a)
    make_account(server, b)
    fund(server, cash, a, 10_000)
    for tid, amount, extra in (("open", 1000, {}), ("topost", 2000, {}), ("tovoid", 3000, {}),
                               ("expiring", 500, {"timeout_seconds": 2})):
        r = server.post("/v1/transfers", {"id": tid, "from": a, "to": b, "amount": amount,
                                          "currency": "NGN", "pending": True, **extra})
        expect_status(r, 201, f"hold {tid}")
    expect_status(server.post("/v1/transfers/topost/post", {"amount": 1500}), 200)
    expect_status(server.post("/v1/transfers/tovoid/void"), 200)
    batch = {"transfers": [{"id": f"kb.{i}", "from": cash, "to": b, "amount": 1,
                            "currency": "NGN"} for i in range(500)]}
    r = expect_status(server.post("/v1/transfers/batch", batch), 200, "batch")
    assert all(x["status"] == 201 for x in r.body["results"]), "every batch transfer applied"
    server.kill9()
    server.start(port=server.port)

    want = {"open": ("pending", 0), "topost": ("posted", 1500), "tovoid": ("voided", 0)}
    for tid, (status, posted) in want.items():
        t = get_transfer(server, tid).body
        assert (t["status"], t["posted_amount"]) == (status, posted), (
            f"{tid} after kill -9: expected status {status} posted_amount {posted}, saw {t}")
    bal_a = server.get(f"/v1/accounts/{a}").body["balance"]
    bal_b = server.get(f"/v1/accounts/{b}").body["balance"]
    # a: 10000 - 1500 posted; holds open: open 1000 (+ expiring 500 unless it already expired).
    assert bal_a["posted"] == 8500 and bal_a["pending_out"] in (1500, 1000), f"a after kill -9: {bal_a}"
    assert bal_b["posted"] == 1500 + 500, f"b after kill -9: expected posted 2000 (hold + batch), saw {bal_b}"

    def expired():
        return get_transfer(server, "expiring").body["status"] == "voided"
    assert wait_until(expired, 5, 0.1), (
        f"a hold with timeout_seconds 2 must still expire after a restart, saw "
        f"{get_transfer(server, 'expiring').body}")
    assert get_transfer(server, "expiring").body["void_reason"] == "expired"
    bal_a = server.get(f"/v1/accounts/{a}").body["balance"]
    assert bal_a == {"posted": 8500, "pending_out": 1000, "pending_in": 0, "available": 7500}, (
        f"a after expiry: expected posted 8500 pending_out 1000 available 7500, saw {bal_a}")
    expect_status(server.post("/v1/transfers/open/post"), 200, "post a hold made before the crash")
    total, _ = conservation(server, [cash, a, b])
    assert total == 0, f"conservation: expected 0, saw {total}"
    expect_audit_ok(server)
