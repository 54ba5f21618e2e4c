"""
test_concurrency.py — races for the same money and the same id (invariants 3
and 4: exactly once, no double spend) and conservation under many clients
(invariant 1), each on a fresh kobod.
"""
import http.client
import json
import random
import threading
import time
from collections import Counter

from kobotest import (REQUEST_TIMEOUT_S, Resp, balance, conservation, expect_audit_ok,
                      expect_balance, expect_status, fund, get_transfer, make_account,
                      transfer_body, uid)

RACERS = 64


def race(port, bodies, path="/v1/transfers"):
    """Sends bodies[i] from thread i, each on its own already-open connection,
    all released together by a barrier. Returns the Resp (or exception) per
    body, in order."""
    results = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def run(i):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S * 2)
        try:
            conn.connect()
            data = json.dumps(bodies[i]).encode()
            barrier.wait(30)
            conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            results[i] = Resp(r.status, r.getheaders(), r.read())
        except Exception as e:  # recorded and reported by the caller
            results[i] = e
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "racing requests did not finish within 90 s"
    errors = [r for r in results if not isinstance(r, Resp)]
    assert not errors, f"expected every racing request to be answered, saw errors {errors[:5]}"
    return results


def summary(results):
    return Counter((r.status, (r.body or {}).get("error", {}).get("code") if r.status >= 400 else None,
                    r.replayed) for r in results)


def test_last_100_raced_by_64_withdrawals(server):
    make_account(server, "cash", allow_negative=True)
    make_account(server, "shop")
    for round_no in range(3):
        w = f"wallet{round_no}"
        make_account(server, w)
        fund(server, "cash", w, 100)
        ids = [f"grab{round_no}.{i}" for i in range(RACERS)]
        results = race(server.port, [transfer_body(t, w, "shop", 100) for t in ids])
        seen = summary(results)
        want = Counter({(201, None, False): 1, (422, "insufficient_funds", False): RACERS - 1})
        assert seen == want, (f"round {round_no}: 64 withdrawals of the last 100: expected one 201 and "
                              f"63 x 422 insufficient_funds, saw {dict(seen)}")
        expect_balance(server, w, f"round {round_no}: wallet after the race", posted=0, available=0,
                       pending_out=0)
        winner = [t for t, r in zip(ids, results) if r.status == 201]
        statuses = Counter(get_transfer(server, t).body["status"] for t in ids)
        assert statuses == Counter({"posted": 1, "rejected": RACERS - 1}), (
            f"round {round_no}: stored statuses: expected 1 posted, 63 rejected, saw {dict(statuses)} "
            f"(winner {winner})")
    expect_balance(server, "shop", posted=300)
    expect_audit_ok(server)


def test_hold_race_for_the_last_100(server):
    make_account(server, "cash", allow_negative=True)
    make_account(server, "shop")
    make_account(server, "w")
    fund(server, "cash", "w", 100)
    bodies = [transfer_body(f"h{i}", "w", "shop", 100, pending=True) for i in range(RACERS)]
    seen = summary(race(server.port, bodies))
    want = Counter({(201, None, False): 1, (422, "insufficient_funds", False): RACERS - 1})
    assert seen == want, f"64 holds on the last 100: expected one 201 and 63 x 422, saw {dict(seen)}"
    expect_balance(server, "w", posted=100, pending_out=100, available=0)


def test_same_id_sent_64_times_applies_once(server):
    make_account(server, "cash", allow_negative=True)
    make_account(server, "a")
    make_account(server, "b")
    fund(server, "cash", "a", 10_000)
    body = transfer_body("dup:1", "a", "b", 2500)
    results = race(server.port, [body] * RACERS)
    seen = summary(results)
    want = Counter({(201, None, False): 1, (200, None, True): RACERS - 1})
    assert seen == want, (f"64 concurrent sends of one id: expected one 201 and 63 x 200 with "
                          f"Idempotent-Replayed: true, saw {dict(seen)}")
    first = next(r for r in results if r.status == 201).body
    for r in results:
        assert r.body == first, f"every answer must be the original transfer, expected {first}, saw {r.body}"
    expect_balance(server, "a", "money moved once", posted=7500)
    expect_balance(server, "b", posted=2500)


def test_random_transfers_conserve_money(server):
    n_accounts, n_threads, duration = 50, 32, 2.0
    accts = [f"acc{i}" for i in range(n_accounts)]
    make_account(server, "cash", allow_negative=True)
    start = 10_000
    for a in accts:
        make_account(server, a)
        fund(server, "cash", a, start)

    lock = threading.Lock()
    moved = Counter()        # expected posted delta per account, from acknowledged answers
    problems = []
    counts = Counter()
    deadline = time.monotonic() + duration

    def worker(seed):
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            src, dst = rng.sample(accts, 2)
            amount = rng.randint(1, 3000)
            tid = uid(f"r{seed}")
            is_hold = rng.random() < 0.2
            try:
                r = server.post("/v1/transfers", transfer_body(tid, src, dst, amount, pending=is_hold))
                if r.status == 201 and is_hold:
                    if rng.random() < 0.5:
                        part = rng.randint(1, amount)
                        r2 = server.post(f"/v1/transfers/{tid}/post", {"amount": part})
                        ok, delta = r2.status == 200, part
                    else:
                        r2 = server.post(f"/v1/transfers/{tid}/void")
                        ok, delta = r2.status == 200, 0
                    if not ok:
                        with lock:
                            problems.append(f"post/void of {tid}: {r2!r}")
                        continue
                    r = r2
                elif r.status == 201:
                    delta = amount
                elif r.status == 422 and r.body["error"]["code"] == "insufficient_funds":
                    delta = 0
                else:
                    with lock:
                        problems.append(f"transfer {tid}: unexpected {r!r}")
                    continue
            except Exception as e:
                with lock:
                    problems.append(f"transfer {tid}: {type(e).__name__}: {e}")
                continue
            with lock:
                counts[r.status] += 1
                moved[src] -= delta
                moved[dst] += delta

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "load threads did not stop"
    assert not problems, f"expected only 201/200/422 insufficient_funds answers, saw {problems[:10]}"
    assert counts[201] + counts[200] > 50, f"expected real load, saw only {dict(counts)}"

    total, bals = conservation(server, accts + ["cash"])
    assert total == 0, f"conservation: expected the sum of posted over all accounts to be 0, saw {total}"
    wrong = {a: (start + moved[a], bals[a]["posted"]) for a in accts
             if bals[a]["posted"] != start + moved[a]}
    assert not wrong, f"posted balances (expected from acknowledged answers, seen): {wrong}"
    negative = {a: b for a, b in bals.items() if a != "cash" and b["available"] < 0}
    assert not negative, f"no non-negative account may go below 0, saw {negative}"
    held = {a: b for a, b in bals.items() if b["pending_out"] or b["pending_in"]}
    assert not held, f"every hold was posted or voided, expected no pending amounts, saw {held}"
    expect_audit_ok(server, "audit after random load")
