"""
test_money_path.py — the money-path defects of issue 7 that live in the
ledger's rules, tried from the outside over real kobod as a new user would:

  - item 2: sagas near the clearing limit. Several sagas in flight that each
    fit Kobo's clearing account but not together used to leave the last one
    `processing` for ever (the payee paid, the payer never debited) with the
    runner spinning; now every saga settles and `kobo audit` passes.
  - item 4: Kobo's clearing accounts are not a shared limit. One client's
    INT64_MAX hold on the pair used to make every other client's transfer on
    that pair a recorded 422 amount_overflow; now theirs go through.
  - item 6: a retried atomic batch that names one id twice answers exactly
    what the first attempt answered.
"""
import pytest

from kobotest import (balance, expect_audit_ok, expect_status, fund, get_transfer, id_on_shard,
                      make_account, transfer, transfer_body, uid, wait_until)

INT64_MAX = 2**63 - 1
SHARDS = 2
SETTLE_TIMEOUT_S = 20.0


def place(srv, prefix, shard, allow_negative=False):
    acct = id_on_shard(prefix, shard, SHARDS)
    make_account(srv, acct, allow_negative=allow_negative)
    return acct


def settled(srv, tid):
    """Waits until transfer tid is no longer processing; returns it."""
    seen = {}

    def done():
        r = get_transfer(srv, tid)
        seen["t"] = r
        return r.status == 200 and r.body["status"] != "processing"

    assert wait_until(done, SETTLE_TIMEOUT_S), f"transfer {tid} never settled: {seen.get('t')!r}"
    return seen["t"].body


def stop_and_audit(srv):
    srv.sigterm()
    expect_audit_ok(srv, "kobo audit after the test")


@pytest.mark.own_shards
def test_sagas_near_the_clearing_limit_all_settle(make_server):
    srv = make_server("--shards", str(SHARDS))
    cash = place(srv, "cash", 0, allow_negative=True)
    w1, w2, w3 = (place(srv, p, 1) for p in ("w1", "w2", "w3"))
    big = uid("big")
    expect_status(transfer(srv, big, cash, w1, INT64_MAX - 1), 201, "the near-limit transfer")
    assert settled(srv, big)["status"] == "posted"
    items = [transfer_body(uid("s"), cash, w, 1) for w in (w2, w3)]
    r = expect_status(srv.post("/v1/transfers/batch", {"transfers": items}), 200, "two 1-unit transfers")
    assert [x["status"] for x in r.body["results"]] in ([201, 201], [202, 202], [201, 202], [202, 201]), r.body
    for item in items:
        t = settled(srv, item["id"])
        assert t["status"] == "posted", f"{item['id']} ended {t}"
    assert balance(srv, w2)["posted"] == 1 and balance(srv, w3)["posted"] == 1
    assert balance(srv, cash)["posted"] == -(INT64_MAX - 1) - 2
    stop_and_audit(srv)


@pytest.mark.own_shards
def test_one_clients_huge_hold_does_not_block_others(make_server):
    srv = make_server("--shards", str(SHARDS))
    bank = place(srv, "bank", 0, allow_negative=True)
    cash = place(srv, "cash", 0, allow_negative=True)
    whale = place(srv, "whale", 1)
    payer, payee = place(srv, "payer", 0), place(srv, "payee", 1)
    fund(srv, cash, payer, 1000)
    hog = uid("hog")
    r = transfer(srv, hog, bank, whale, INT64_MAX, pending=True)
    assert r.status in (201, 202), r
    assert settled(srv, hog)["status"] == "pending"

    mine = uid("mine")
    r = transfer(srv, mine, payer, payee, 10)
    assert r.status in (201, 202), f"another client's transfer was refused: {r!r}"
    assert settled(srv, mine)["status"] == "posted"
    again = transfer(srv, mine, payer, payee, 10)
    assert again.status in (200, 201) and again.body["status"] == "posted", f"replay: {again!r}"
    assert balance(srv, payer)["posted"] == 990 and balance(srv, payee)["posted"] == 10

    expect_status(srv.post(f"/v1/transfers/{hog}/void", {}), 200, "void the huge hold")
    assert settled(srv, hog)["status"] == "voided"
    stop_and_audit(srv)


def test_retried_atomic_batch_with_a_repeated_id_answers_the_same(server):
    srv = server
    cash = make_account(srv, uid("cash"), allow_negative=True)["id"]
    a, b = make_account(srv, uid("a"))["id"], make_account(srv, uid("b"))["id"]
    fund(srv, cash, a, 10)
    x = transfer_body(uid("x"), a, b, 50)
    batch = {"atomic": True, "transfers": [x, dict(x)]}

    def answers(resp):
        expect_status(resp, 200, "atomic batch")
        return [(i["status"], (i.get("error") or {}).get("code")) for i in resp.body["results"]]

    first = answers(srv.post("/v1/transfers/batch", batch))
    assert first[0] == (422, "insufficient_funds"), first
    for attempt in range(3):
        assert answers(srv.post("/v1/transfers/batch", batch)) == first, f"retry {attempt}"
    assert balance(srv, a)["posted"] == 10
