"""
test_drain.py — SIGTERM while under load: kobod drains (in-flight batches
commit and are answered) and exits 0; every acknowledged transfer is there
after a restart and the store audits clean.
"""
import threading
import time
from collections import Counter

import pytest

from kobotest import (Load, Resp, balance, conservation, expect_audit_ok, fund, get_transfer,
                      id_on_shard, make_account, sagas_active, transfer_body,
                      unbalanced_clearing_pairs, wait_until)

START = 3000
SETTLE_S = 120.0  # sagas left between steps by a drain settle after the restart
XBATCH = 4000     # cross-shard transfers in the batch SIGTERM interrupts


def test_sigterm_under_load_drains_and_keeps_acknowledged(server):
    # Every account on shard 0: the drain of local batches is the subject
    # (with --postgres and 2 shards too; test_shards drains sagas).
    cash = id_on_shard("cash", 0, server.shards)
    payees = [id_on_shard(f"w{i}", 0, server.shards) for i in range(8)]
    make_account(server, cash, allow_negative=True)
    for w in payees:
        make_account(server, w)
        fund(server, cash, w, START)
    load = Load(server, [cash] + payees, payees, prefix="d", threads=8, seed=11).start()
    got = wait_until(lambda: len(load.acked) >= 30, 20)
    time.sleep(0.3)
    try:
        server.sigterm()   # asserts exit status 0 within 30 s
    finally:
        load.stop()
    assert got, f"expected at least 30 acknowledged transfers before SIGTERM, saw {len(load.acked)}"
    assert not load.problems, f"unexpected answers under load: {load.problems[:5]}"
    expect_audit_ok(server, "audit of the drained store")

    server.start(port=server.port)
    lost = [t for t in load.acked if get_transfer(server, t).status != 200]
    assert not lost, (f"{len(lost)} of {len(load.acked)} acknowledged transfers missing after the "
                      f"SIGTERM drain and restart, e.g. {lost[:5]}")
    for tid, code in load.rejected.items():
        r = get_transfer(server, tid)
        assert r.status == 200 and r.body["status"] == "rejected", (
            f"{tid} answered 422 {code}: expected it stored as rejected, saw {r!r}")

    expected = Counter({w: START for w in payees})
    expected[cash] = -START * len(payees)
    for tid, body in load.params.items():
        r = get_transfer(server, tid)
        assert r.status in (200, 404), f"{tid}: expected 200 or 404, saw {r!r}"
        if r.status == 200 and r.body["status"] == "posted":
            expected[body["from"]] -= r.body["posted_amount"]
            expected[body["to"]] += r.body["posted_amount"]
    total, bals = conservation(server, [cash] + payees)
    assert total == 0, f"conservation: expected sum of posted 0, saw {total}"
    seen = {a: b["posted"] for a, b in bals.items()}
    assert seen == dict(expected), f"balances: expected {dict(expected)} (from stored transfers), saw {seen}"
    expect_audit_ok(server, "audit after restart")


def test_sigterm_answers_an_in_flight_batch(server):
    src, dst = id_on_shard("src", 0, server.shards), id_on_shard("dst", 0, server.shards)
    make_account(server, src, allow_negative=True)
    make_account(server, dst)
    ids = [f"bt.{i}" for i in range(4000)]
    body = {"transfers": [transfer_body(t, src, dst, 1) for t in ids]}
    answer = {}

    def send():
        try:
            answer["resp"] = server.post("/v1/transfers/batch", body, timeout=60, retry=False)
        except Exception as e:
            answer["error"] = e

    t = threading.Thread(target=send)
    t.start()
    time.sleep(0.15)
    server.sigterm()
    t.join(60)
    assert not t.is_alive(), "batch request still waiting after kobod exited"
    resp = answer.get("resp")
    server.start(port=server.port)
    if isinstance(resp, Resp) and resp.status == 200:
        statuses = Counter(x["status"] for x in resp.body["results"])
        assert statuses == Counter({201: len(ids)}), f"expected every result 201, saw {dict(statuses)}"
        bal = balance(server, dst)
        assert bal["posted"] == len(ids), (
            f"an answered batch must be durable: expected dst posted {len(ids)} after restart, saw {bal}")
    else:
        # Not answered (refused while draining): then it must not be half there.
        bal = balance(server, dst)
        assert bal["posted"] in (0, len(ids)), (
            f"unanswered batch ({answer}): expected all or nothing stored, saw posted {bal['posted']}")
    expect_audit_ok(server)


@pytest.mark.own_shards
def test_sigterm_answers_an_in_flight_cross_shard_batch(make_server):
    """SIGTERM while a batch of 4,000 cross-shard transfers is in flight:
    kobod exits 0 with no sanitizer report (it read a freed shard here,
    answering items the shard writer completed while stopping: --postgres,
    2 shards), every item answered 2xx is there after the restart and the
    books balance once the sagas settle."""
    server = make_server("--shards", "2")
    src, dst = id_on_shard("xsrc", 0, 2), id_on_shard("xdst", 1, 2)
    make_account(server, src, allow_negative=True)
    make_account(server, dst)
    ids = [f"xbt.{i}" for i in range(XBATCH)]
    body = {"transfers": [transfer_body(t, src, dst, 1) for t in ids]}
    answer = {}

    def send():
        try:
            answer["resp"] = server.post("/v1/transfers/batch", body, timeout=60, retry=False)
        except Exception as e:
            answer["error"] = e

    t = threading.Thread(target=send)
    t.start()
    time.sleep(0.15)
    server.sigterm()   # asserts exit 0; teardown checks the log for sanitizer reports
    t.join(60)
    assert not t.is_alive(), "batch request still waiting after kobod exited"
    server.start(port=server.port)
    resp = answer.get("resp")
    acked = []
    if isinstance(resp, Resp) and resp.status == 200:
        acked = [x["id"] for x in resp.body["results"] if x["status"] in (200, 201, 202)]
    missing = [tid for tid in acked if get_transfer(server, tid).status != 200]
    assert not missing, (f"{len(missing)} of {len(acked)} items answered 2xx are missing after the "
                         f"restart, e.g. {missing[:5]}")

    # The sagas the drain left between steps are resumed (on PostgreSQL once
    # the stopped node's claims lapse): then the books balance.
    def books():
        total = balance(server, src)["posted"] + balance(server, dst)["posted"]
        off = unbalanced_clearing_pairs(server, 2)
        return (total == 0 and not off and sagas_active(server) == 0), total, off
    settled = wait_until(lambda: books()[0], SETTLE_S, interval=0.2)
    _, total, off = books()
    assert settled, (f"books {SETTLE_S:.0f} s after the restart: src + dst posted {total} (expected "
                     f"0, the clearing pairs netting to zero), pairs off: {off}, sagas active "
                     f"{sagas_active(server)}")
    server.sigterm()
    expect_audit_ok(server, "audit after the cross-shard drain")
