"""
test_pg_nodes.py — two kobod on the same PostgreSQL databases (issue 9,
"two kobod on the same databases"; API.md, "PostgreSQL mode and several
nodes": any number of kobod may serve the same `--postgres` list at once,
every invariant holds across them, a request may go to any node).

One real PostgreSQL cluster per module (pgcluster.py), a fresh database per
shard per test, owned by a non-superuser role. Each test starts two kobod
with the same `--postgres` list (1 shard, or 2 for the cross-shard tests)
and checks from the outside:

  1. 64 withdrawals of an account's last 100, alternating between the two
     nodes: exactly one succeeds, 63 x 422 insufficient_funds, balance 0
     (1 shard, and 2 shards with the payee on the other shard); this and
     test 2 run with both nodes --concurrency pessimistic and optimistic;
  2. the same id sent 64 times, alternating between the nodes: applied
     once, every answer the same transfer (one 201, the rest 200 with
     Idempotent-Replayed: true; 202 processing allowed across shards);
  3. cross-shard load through both nodes (10 s, 8 threads): every saga
     settles, stored state agrees with every answer, money is conserved per
     currency, both nodes see the same balances, and `kobo audit --postgres
     …` passes with both kobod stopped;
  4. kill -9 of one node under load while the other serves: every
     acknowledged transfer is there, the killed node's sagas are finished by
     the other node within TAKEOVER_S, and retrying every unanswered id
     applies it at most once (balances checked against the stored
     transfers, which must agree with every answer).

The ledger checks reuse test_shards.py's (CrossLoad, Book, retry_lost,
verify_ledger), run with its SHARDS set to this test's shard count.

Every process is stopped by pid (kobod by its Popen, PostgreSQL by
pgcluster), also on failure; every loop is bounded in time; loopback only.
"""
import datetime
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import kobotest  # noqa: E402
import pgcluster  # noqa: E402
import test_shards  # noqa: E402
from kobotest import (CLI_TIMEOUT_S, REQUEST_TIMEOUT_S, Resp, balance, binary, transfer,  # noqa: E402
                      child_env, expect_balance, expect_status, fund, get_transfer, id_on_shard,
                      make_account, parallel_map, sagas_active, shard_of, transfer_body, uid,
                      unbalanced_clearing_pairs, wait_until)
from test_postgres import PgServer  # noqa: E402 — kobod --postgres, written once
from test_shards import Book, CrossLoad, retry_lost, verify_ledger  # noqa: E402

RACERS = 64
ROUNDS = 2
SETTLE_TIMEOUT_S = 30.0     # every saga settled after the load stops
TAKEOVER_S = 30.0           # the survivor finishes the killed node's sagas
LOAD_S = 10.0               # test 3: seconds of load
LOAD_THREADS = 4            # per node (8 in all)
STEP_LOAD_S = 4.0           # test of one driver per saga step: seconds of load
ORPHANS = 6                 # test 4: transfers 0 -> 1 sent to the node to kill while shard 1 stalls


# ------------------------------------------------------------ harness ----

@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    if not pgcluster.available():
        pytest.fail("PostgreSQL server binaries not found: `make test-deps` installs "
                    "the postgresql package", pytrace=False)
    cluster = pgcluster.Cluster(tmp_path_factory.mktemp("pg-nodes"), "nodes")
    try:
        cluster.start()
        cluster.psql('CREATE ROLE "kobo" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
        cluster.psql('GRANT pg_monitor TO "kobo"')
        yield cluster
    finally:
        cluster.cleanup()


_db_seq = iter(range(1, 1_000_000))


def new_databases(cluster, shards):
    """`shards` fresh databases owned by the non-superuser role kobo; their
    URIs in shard order."""
    uris = []
    for s in range(shards):
        name = f"kobo_{kobotest._run_tag}_{next(_db_seq)}_s{s}"
        cluster.psql(f'CREATE DATABASE "{name}" OWNER "kobo"')
        uris.append(cluster.uri(name, "kobo"))
    return uris


@pytest.fixture
def make_nodes(pg, tmp_path):
    """make_nodes(shards, count=2) -> (uris, [PgServer]): fresh databases and
    `count` kobod serving them, started at the same time (schema creation
    under the advisory lock races). Teardown stops each by pid (SIGTERM,
    exit 0 expected; SIGKILL if it hangs) and checks for sanitizer reports."""
    servers = []

    def make(shards, count=2, concurrency="pessimistic"):
        uris = new_databases(pg, shards)
        nodes = []
        for _ in range(count):
            workdir = tmp_path / f"kobod{len(servers)}"
            workdir.mkdir()
            srv = PgServer(workdir, uris, ("--concurrency", concurrency))
            servers.append(srv)
            kobotest.ACTIVE.append(srv)
            nodes.append(srv)
        errors = []

        def start(srv):
            try:
                srv.start()
            except BaseException as e:  # pytest.fail is a BaseException
                errors.append(f"{srv.log_path}: {e}")

        threads = [threading.Thread(target=start, args=(n,), daemon=True) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(kobotest.READY_TIMEOUT_S * 4)
        if errors or any(t.is_alive() for t in threads):
            pytest.fail(f"{count} kobod --postgres {' '.join(uris)} started together: not all "
                        f"became ready:\n" + "\n".join(errors), pytrace=False)
        return uris, nodes

    yield make
    kobotest.finish_servers(servers)


@pytest.fixture
def shards_of(monkeypatch):
    """Sets test_shards.SHARDS (its ledger checks' shard count) for one test."""
    def set_shards(n):
        monkeypatch.setattr(test_shards, "SHARDS", n)
        return n
    return set_shards


def pg_audit(uris):
    cmd = [binary("kobo"), "audit"]
    for u in uris:
        cmd += ["--postgres", u]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=child_env())


def expect_pg_audit_ok(uris, what):
    p = pg_audit(uris)
    cmd = "kobo audit " + " ".join(f"--postgres {u}" for u in uris)
    assert p.returncode == 0, (f"{what}: `{cmd}`: expected exit 0, saw {p.returncode}\n"
                               f"stdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}")
    for line in p.stdout.splitlines():
        if line.startswith("sagas in flight:"):
            assert line.strip() == "sagas in flight: 0", (
                f"{what}: `{cmd}` with every kobod stopped: expected no saga in flight, saw\n{p.stdout}")
    return p


def race_nodes(nodes, bodies):
    """Sends bodies[i] from thread i to nodes[i % len(nodes)], each on its own
    already-open connection, all released together by a barrier. Returns the
    Resp per body, in order (every request must be answered)."""
    results = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def run(i):
        conn = http.client.HTTPConnection("127.0.0.1", nodes[i % len(nodes)].port,
                                          timeout=REQUEST_TIMEOUT_S * 2)
        try:
            conn.connect()
            data = json.dumps(bodies[i]).encode()
            barrier.wait(30)
            conn.request("POST", "/v1/transfers", body=data, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            results[i] = Resp(r.status, r.getheaders(), r.read())
        except Exception as e:  # recorded and reported below
            results[i] = e
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "racing requests did not finish within 90 s"
    errors = [(i % len(nodes), r) for i, r in enumerate(results) if not isinstance(r, Resp)]
    assert not errors, f"expected every racing request to be answered, saw (node, error) {errors[:5]}"
    return results


def summary(results):
    return Counter((r.status, (r.body or {}).get("error", {}).get("code") if r.status >= 400 else None,
                    r.replayed) for r in results)


def by_node(results, nodes):
    """{node index: Counter of (status, code, replayed)}: which node answered what."""
    out = {}
    for i, r in enumerate(results):
        out.setdefault(i % len(nodes), Counter())[(r.status, (r.body or {}).get("error", {}).get("code")
                                                   if r.status >= 400 else None, r.replayed)] += 1
    return {k: dict(v) for k, v in out.items()}


def settle(nodes, ids, timeout=SETTLE_TIMEOUT_S):
    """Polls until GET of every id (through nodes[0]) answers something other
    than "processing" and every node's kobo_sagas_active gauges read 0.
    Returns (settled, seconds, ids still processing at the first look)."""
    started = time.monotonic()
    ok, _, first = test_shards.wait_no_saga(nodes[0], ids, timeout)
    if not ok:
        return False, time.monotonic() - started, first
    left = max(0.1, timeout - (time.monotonic() - started))
    ok = wait_until(lambda: all(sagas_active(n) == 0 for n in nodes), left, 0.05)
    return bool(ok), time.monotonic() - started, first


def place(srv, prefix, shard, shards, currency="NGN", allow_negative=False):
    acct = id_on_shard(prefix, shard, shards)
    make_account(srv, acct, currency, allow_negative=allow_negative)
    return acct


# ------------------------------------------------- 1. the double spend ----

@pytest.mark.parametrize("concurrency", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("shards", [1, 2])
def test_last_100_raced_by_64_withdrawals_across_two_nodes(make_nodes, shards, concurrency):
    _, (a, b) = make_nodes(shards, concurrency=concurrency)
    nodes = (a, b)
    cash = place(a, "cash", 0, shards, allow_negative=True)
    shop = place(b, "shop", shards - 1, shards)       # on the other shard when there are two
    for rnd in range(ROUNDS):
        w = place(a if rnd % 2 else b, f"wallet{rnd}", 0, shards)
        fund(a, cash, w, 100)
        expect_balance(b, w, f"round {rnd}: the other node sees the funding", posted=100, available=100)
        ids = [uid(f"grab{rnd}") for _ in range(RACERS)]
        results = race_nodes(nodes, [transfer_body(t, w, shop, 100) for t in ids])
        seen = summary(results)
        ok = [r for r in results if r.status in (201, 202)]
        refused = seen[(422, "insufficient_funds", False)]
        assert len(ok) == 1 and refused == RACERS - 1 and not ok[0].replayed, (
            f"round {rnd} ({shards} shard(s)): 64 withdrawals of the last 100 alternating between two "
            f"nodes: expected one 201 and 63 x 422 insufficient_funds, saw {dict(seen)}; "
            f"per node {by_node(results, nodes)}")
        winner = ids[results.index(ok[0])]
        settled, secs, _ = settle(nodes, ids)
        assert settled, f"round {rnd}: sagas of the race did not settle within {SETTLE_TIMEOUT_S} s"
        for n, srv in enumerate(nodes):
            bal = balance(srv, w)
            assert (bal["posted"], bal["available"], bal["pending_out"]) == (0, 0, 0), (
                f"round {rnd}: wallet after the race, read through node {n}: expected posted 0, "
                f"available 0, nothing held, saw {bal}")
        got = parallel_map(lambda it: get_transfer(nodes[it[0] % 2], it[1]), list(enumerate(ids)))
        statuses = Counter(g.body["status"] if isinstance(g, Resp) and g.status == 200 else repr(g)
                           for g in got)
        assert statuses == Counter({"posted": 1, "rejected": RACERS - 1}), (
            f"round {rnd}: stored statuses: expected 1 posted and 63 rejected, saw {dict(statuses)} "
            f"(winner {winner})")
    for n, srv in enumerate(nodes):
        expect_balance(srv, shop, f"shop through node {n}", posted=100 * ROUNDS, pending_in=0)
    if shards > 1:
        bad = unbalanced_clearing_pairs(a, shards)
        assert not bad, f"clearing pairs must net to zero once settled, saw {bad}"


# ------------------------------------------ hold expiry, one clock ----

HOLD_EXPIRY_BOUND_S = 10.0  # a 1 s hold is voided within this, seen from the other node


def test_hold_made_on_one_node_expires_by_the_databases_clock(pg, make_nodes):
    """Holds expire by the database's clock (store.h, now): a hold created
    through node a with a 1 s timeout is voided as expired, and the other
    node sees it so; it expired no earlier than its timeout on the clock
    that stamped it (the database's, which also stamped the void), and the
    payer's money is back."""
    _, (a, b) = make_nodes(1)
    cash = make_account(a, uid("cash"), allow_negative=True)["id"]
    payer = make_account(b, uid("payer"))["id"]
    payee = make_account(a, uid("payee"))["id"]
    fund(a, cash, payer, 1000)
    hid = uid("hold")
    r = transfer(a, hid, payer, payee, 400, pending=True, timeout_seconds=1)
    expect_status(r, 201, "a 1 s hold through node a")
    assert r.body["status"] == "pending", f"expected a pending hold, saw {r.body}"
    expect_balance(b, payer, "the hold, seen from node b", posted=1000, available=600,
                   pending_out=400)

    def expired():
        g = get_transfer(b, hid)
        return g.body if g.status == 200 and g.body["status"] == "voided" else None
    held = wait_until(expired, HOLD_EXPIRY_BOUND_S)
    assert held, (f"a 1 s hold created through node a was not voided within "
                  f"{HOLD_EXPIRY_BOUND_S} s (seen from node b: {get_transfer(b, hid).body})")
    assert held["void_reason"] == "expired", f"expected void_reason expired, saw {held}"
    stamp = lambda t: datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))
    lived = (stamp(held["updated_at"]) - stamp(held["created_at"])).total_seconds()
    assert 1.0 <= lived <= HOLD_EXPIRY_BOUND_S, (
        f"the hold lived {lived} s by its own stamps (created {held['created_at']}, voided "
        f"{held['updated_at']}): expected at least its 1 s timeout and at most "
        f"{HOLD_EXPIRY_BOUND_S} s")
    # Both stamps are the database's clock: within a few seconds of its now().
    db_now = stamp(pg.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                           "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')").strip())
    age = (db_now - stamp(held["updated_at"])).total_seconds()
    assert -1.0 <= age <= HOLD_EXPIRY_BOUND_S + 5, (
        f"the void was stamped {held['updated_at']}, the database's clock says {db_now}")
    for n, srv in enumerate((a, b)):
        expect_balance(srv, payer, f"after expiry, node {n}", posted=1000, available=1000,
                       pending_out=0)
        expect_balance(srv, payee, f"after expiry, node {n}", posted=0, pending_in=0)


# ---------------------------------------------------- 2. retry storm ----

@pytest.mark.parametrize("concurrency", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("shards", [1, 2])
def test_same_id_sent_64_times_across_two_nodes_applies_once(make_nodes, shards, concurrency):
    _, (a, b) = make_nodes(shards, concurrency=concurrency)
    nodes = (a, b)
    cash = place(a, "cash", 0, shards, allow_negative=True)
    payer = place(a, "payer", 0, shards)
    payee = place(b, "payee", shards - 1, shards)
    fund(a, cash, payer, 10_000)
    tid = uid("dup")
    results = race_nodes(nodes, [transfer_body(tid, payer, payee, 2500)] * RACERS)
    seen = summary(results)
    per_node = by_node(results, nodes)
    created = [r for r in results if r.status == 201 and not r.replayed]
    replays = [r for r in results if r.status == 200 and r.replayed]
    processing = [r for r in results if r.status == 202]
    if shards == 1:
        assert seen == Counter({(201, None, False): 1, (200, None, True): RACERS - 1}), (
            f"64 sends of one id alternating between two nodes: expected one 201 and 63 x 200 with "
            f"Idempotent-Replayed: true, saw {dict(seen)}; per node {per_node}")
    else:
        # A cross-shard transfer answers 202 processing while its saga runs
        # past the request's wait; the first answer is then that 202.
        assert len(created) <= 1 and len(created) + len(replays) + len(processing) == RACERS, (
            f"64 sends of one cross-shard id alternating between two nodes: expected at most one 201, "
            f"every other answer 200 with Idempotent-Replayed: true or 202 processing, saw {dict(seen)}; "
            f"per node {per_node}")
    settled, _, _ = settle(nodes, [tid])
    assert settled, f"the saga of {tid} did not settle within {SETTLE_TIMEOUT_S} s"
    final = expect_status(get_transfer(b, tid), 200, f"GET {tid} through node 1").body
    assert (final["status"], final["posted_amount"]) == ("posted", 2500), f"{tid} stored as {final}"
    keys = ("id", "from", "to", "amount", "currency", "request_id", "created_at")
    first = (created[0].body if created else final)
    for r in created + replays:
        if shards == 1:
            assert r.body == first, (f"every answer must be the original transfer, expected {first}, "
                                     f"saw {r.body}")
        else:
            assert {k: r.body.get(k) for k in keys} == {k: first.get(k) for k in keys} and \
                r.body["status"] in ("posted", "processing"), (
                    f"every answer must be the original transfer, expected {first}, saw {r.body}")
    for n, srv in enumerate(nodes):
        expect_balance(srv, payer, f"money moved once (node {n})", posted=7500, available=7500, pending_out=0)
        expect_balance(srv, payee, f"money moved once (node {n})", posted=2500, pending_in=0)
        h = expect_status(srv.get(f"/v1/accounts/{payer}/transfers?limit=1000"), 200, "history").body
        n_tid = sum(1 for t in h["data"] if t["id"] == tid)
        assert n_tid == 1, f"history of {payer} through node {n}: expected {tid} once, saw {n_tid} times"
    if shards > 1:
        bad = unbalanced_clearing_pairs(a, shards)
        assert not bad, f"clearing pairs must net to zero once settled, saw {bad}"


# -------------------------------------------- 3. cross-shard load, audit ----

def test_cross_shard_load_through_two_nodes_conserves_money(make_nodes, shards_of, capsys):
    shards = shards_of(2)
    uris, (a, b) = make_nodes(shards)
    nodes = (a, b)
    book = Book(a, {"NGN": 60, "USD": 20}, 5000)
    loads = [CrossLoad(srv, book.groups(), uid(f"cl{n}"), threads=LOAD_THREADS, seed=40 + n,
                       max_amount=2000, duration=LOAD_S) for n, srv in enumerate(nodes)]
    for load in loads:
        load.start()
    for load in loads:
        load.join(LOAD_S + 60)
    problems = [p for load in loads for p in load.problems]
    assert not problems, f"unexpected answers under load: {problems[:10]}"
    lost = {}
    for n, load in enumerate(loads):
        lost.update({t: (n, a_) for t, a_ in load.answers.items() if a_[0] not in ("ack", "rej")})
        lost.update({t: (n, act[:2], act[2]) for t, act in load.actions.items() if act[2][0] != "ack"})
    acked = [load.acked() for load in loads]
    params = {t: bd for load in loads for t, bd in load.params.items()}
    cross = sum(1 for bd in params.values() if shard_of(bd["from"], shards) != shard_of(bd["to"], shards))
    assert min(acked) > 50 and cross > len(params) // 3, (
        f"expected real cross-shard load through both nodes: acknowledged per node {acked}, "
        f"{cross} of {len(params)} cross-shard")

    in_flight = set().union(*(load.maybe_in_flight() for load in loads))
    ok, secs, first = settle(nodes, in_flight)
    assert ok, (f"sagas still in flight {SETTLE_TIMEOUT_S} s after the load ({first} processing at the "
                f"first look)")
    # Requests without an answer (5xx: overloaded, storage) are retried, so the
    # ledger is checked whatever happened; that there were any fails below.
    for n, load in enumerate(loads):
        retry_lost(nodes[n], load, f"retry on node {n}")
    ok, _, _ = settle(nodes, set().union(*(load.maybe_in_flight() for load in loads)))
    assert ok, "sagas of retried ids did not settle"
    verify_ledger(b, loads, book, "after cross-shard load through two nodes (read through node 1)")
    everyone = sorted(book.accounts) + sorted(book.cash)
    seen_a = dict(zip(everyone, parallel_map(lambda x: balance(a, x), everyone)))
    seen_b = dict(zip(everyone, parallel_map(lambda x: balance(b, x), everyone)))
    differ = {x: (seen_a[x], seen_b[x]) for x in everyone if seen_a[x] != seen_b[x]}
    assert not differ, f"both nodes must show the same balances, saw (node 0, node 1) {list(differ.items())[:5]}"

    with capsys.disabled():
        print(f"\ntwo nodes, {shards} PostgreSQL shards: {len(params)} transfers in {LOAD_S:.0f} s by "
              f"{2 * LOAD_THREADS} threads ({cross} cross-shard), acknowledged per node {acked}, answers "
              f"{[dict(load.counts) for load in loads]}; settled {secs:.2f} s after the load "
              f"({first} processing at the first look)")
    for srv in nodes:
        srv.sigterm()
    expect_pg_audit_ok(uris, "audit after cross-shard load through two nodes")
    assert not lost, (f"with no fault every request must be answered (2xx or 422); {len(lost)} were not "
                      f"(node, answer): {list(lost.items())[:8]}")


# ------------------------------- one driver per saga step (issue 9) ----

def saga_steps(srv):
    """{(transfer_id, step): count} of this node's saga_step log lines."""
    out = Counter()
    for line in srv.log_text().splitlines():
        if '"saga_step"' not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "saga_step":
            out[(rec.get("transfer_id"), rec.get("step"))] += 1
    return out


def test_one_node_drives_each_saga_step(make_nodes, shards_of):
    """Issue 9, "Many nodes": exactly one node drives a given saga step at a
    time. With no fault and steps that take milliseconds, no step of a saga
    may be logged (saga_step) by both nodes."""
    shards = shards_of(2)
    _, (a, b) = make_nodes(shards)
    book = Book(a, {"NGN": 40}, 5000)
    loads = [CrossLoad(srv, book.groups(), uid(f"one{n}"), threads=LOAD_THREADS, seed=60 + n,
                       hold_share=0.0, duration=STEP_LOAD_S) for n, srv in enumerate((a, b))]
    for load in loads:
        load.start()
    for load in loads:
        load.join(STEP_LOAD_S + 60)
    ok, _, _ = settle([a, b], set().union(*(ld.maybe_in_flight() for ld in loads)))
    assert ok, "sagas did not settle"
    s0, s1 = saga_steps(a), saga_steps(b)
    both = sorted(k for k in s0 if k in s1)
    sagas = {k[0] for k in s0} | {k[0] for k in s1}
    assert len(sagas) > 50, f"expected real cross-shard load, saw {len(sagas)} sagas"
    assert not both, (f"exactly one node drives a given saga step: of {len(sagas)} sagas, "
                      f"{len({k[0] for k in both})} had a step logged (saga_step) by both nodes, e.g. "
                      f"{both[:5]}")


# ------------------------------------------- 4. kill -9 one of two nodes ----

def db_name(uri):
    return uri.rsplit("/", 1)[1].split("?", 1)[0]


def sagas_in_db(pg, uris, like="%"):
    """{shard: [ids]} of the transfers whose saga step is still in flight
    (column saga <> 'none', schema kobo_shard_<N>; store_pg.c) with ids LIKE
    `like`, read straight from PostgreSQL (as its superuser): what is in
    limbo whichever node drives it."""
    out = {}
    for shard, uri in enumerate(uris):
        rows = pg.psql(f"SELECT id FROM kobo_shard_{shard}.transfers WHERE saga <> 'none' "
                       f"AND id LIKE '{like}' ORDER BY id", dbname=db_name(uri))
        out[shard] = [r for r in rows.splitlines() if r]
    return out


class ShardStall:
    """Holds shard `shard`'s meta row FOR UPDATE from a psql session: every
    writer batch of that shard bumps the row (store_pg.c), so each waits,
    whichever node runs it, until release(). Cross-shard sagas into that
    shard stop after their first step (the payer's hold, committed), so a
    node killed meanwhile leaves them in flight in the database."""

    def __init__(self, pg, uri, shard, timeout=20.0):
        self.proc = subprocess.Popen(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", pg.uri(db_name(uri))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0,
            env=dict(os.environ, PGCONNECT_TIMEOUT="5"))
        self.proc.stdin.write(f"BEGIN;\nSELECT 'stall-' || 'locked' FROM kobo_shard_{shard}.meta "
                              f"FOR UPDATE;\n".encode())
        deadline = time.monotonic() + timeout
        seen = b""
        while b"stall-locked" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not kobotest.wait_readable(self.proc.stdout, left):
                self.release()
                raise AssertionError(f"could not lock kobo_shard_{shard}.meta within {timeout:.0f} s: {seen!r}")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                self.release()
                raise AssertionError(f"psql locking kobo_shard_{shard}.meta exited: {seen!r}")
            seen += chunk

    def release(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"ROLLBACK;\n\\q\n")
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)


def send_orphans(srv, record, pairs):
    """Sends transfer_body(id, payer, payee, 1) for each (payer, payee) to
    srv, one thread each, recording params and answers in `record` (a
    CrossLoad that is not started: retry_lost and verify_ledger read it).
    Returns the threads (joined by the caller, bounded)."""
    threads = []
    for i, (src, dst) in enumerate(pairs):
        tid = f"{record.prefix}.{i}"
        body = transfer_body(tid, src, dst, 1)
        record.params[tid] = body

        def run(tid=tid, body=body):
            state = {}
            answer = record._answer(tid, record._send(state, "POST", "/v1/transfers", body), (201, 202))
            with record.lock:
                record.answers[tid] = answer
            if state.get("conn") is not None:
                state["conn"].close()
        t = threading.Thread(target=run, daemon=True)
        t.start()
        threads.append(t)
    return threads


def test_kill9_one_node_under_load_the_other_finishes_its_sagas(pg, make_nodes, shards_of, capsys):
    shards = shards_of(2)
    uris, (a, b) = make_nodes(shards)
    book = Book(a, {"NGN": 40}, 3000)
    la = CrossLoad(a, book.groups(), uid("ka"), threads=LOAD_THREADS, seed=51).start()
    lb = CrossLoad(b, book.groups(), uid("kb"), threads=LOAD_THREADS, seed=52).start()
    lo = CrossLoad(a, book.groups(), uid("ko"))   # a record only: the sagas node 0 leaves behind
    on0 = [x for x in book.accounts if shard_of(x, shards) == 0]
    on1 = [x for x in book.accounts if shard_of(x, shards) == 1]
    stall, orphan_threads = None, []
    a_sagas = lambda: [t for ids in sagas_in_db(pg, uris).values() for t in ids  # noqa: E731
                       if t.startswith((la.prefix + ".", lo.prefix + "."))]
    try:
        got = wait_until(lambda: la.acked() >= 30 and lb.acked() >= 10, 30)
        # Stall shard 1's writes, so sagas 0 -> 1 stop after their first step
        # (the payer's hold, committed on shard 0); send node 0 some, and kill
        # it with them in flight.
        stall = ShardStall(pg, uris[1], 1)
        orphan_threads = send_orphans(a, lo, list(zip(on0[:ORPHANS], on1[:ORPHANS])))
        piled = wait_until(lambda: len(a_sagas()) >= 2, 15, 0.1)
        la.stopping.set()        # its requests now in flight die with the node
        a.kill9()
        killed_at = time.monotonic()
        orphans = a_sagas()
        stall.release()
        b_at_kill = lb.acked()
        adopted_s = None         # when node 0's sagas were all finished
        while time.monotonic() < killed_at + 2.0:   # the survivor keeps serving its clients
            if adopted_s is None and not a_sagas():
                adopted_s = time.monotonic() - killed_at
            time.sleep(0.1)
        b_after = lb.acked()
    finally:
        if stall is not None:
            stall.release()
        la.stop()
        lb.stop()
        for t in orphan_threads:
            t.join(30)
    assert not any(t.is_alive() for t in orphan_threads), "requests to the killed node did not end"
    assert got, f"expected load on both nodes before the kill, acknowledged {la.acked()} / {lb.acked()}"
    assert piled and orphans, (f"with shard 1's writes stalled, expected node 0's sagas 0 -> 1 in flight "
                               f"in the database within 15 s, saw {sagas_in_db(pg, uris)}")
    assert not la.problems and not lb.problems and not lo.problems, (
        f"unexpected answers: {(la.problems + lb.problems + lo.problems)[:8]}")
    assert b_after > b_at_kill, (f"node 1 must keep serving after node 0 is killed: acknowledged "
                                 f"{b_at_kill} at the kill, {b_after} two seconds later")
    lost_b = [t for t, x in lb.answers.items() if x[0] == "lost"]
    lost_a = [t for ld in (la, lo) for t, x in ld.answers.items() if x[0] == "lost"]

    # Node 1 finishes node 0's sagas: nothing left in flight in the database,
    # GET of each answers a final state, node 1's gauges at 0.
    left = wait_until(lambda: not any(sagas_in_db(pg, uris).values()),
                      max(0.1, TAKEOVER_S - (time.monotonic() - killed_at)), 0.2)
    took = time.monotonic() - killed_at
    if not left:
        still = sagas_in_db(pg, uris)
        detail = {t: get_transfer(b, t).body for t in (still[0] + still[1])[:3]}
        raise AssertionError(
            f"node 1 must finish node 0's sagas within {TAKEOVER_S:.0f} s of the kill: {len(orphans)} of "
            f"node 0's were in flight at the kill ({orphans}); {took:.1f} s later still in flight in "
            f"the database: {still}; GET through node 1: {detail}; node 1's kobo_sagas_active "
            f"{sagas_active(b)}")
    loads = (la, lb, lo)
    in_flight = set(orphans).union(*(ld.maybe_in_flight() for ld in loads))
    ok, _, first = settle([b], in_flight, 10.0)
    assert ok, "every saga settled in the database, but GET still answers processing or the gauge is not 0"

    for ld, who in ((la, "node 0's"), (lo, "node 0's stalled"), (lb, "its own")):
        retry_lost(b, ld, f"retry through node 1 of {who} unanswered requests")
    ok, _, _ = settle([b], set().union(*(ld.maybe_in_flight() for ld in loads)))
    assert ok, "sagas of retried ids did not settle"
    verify_ledger(b, list(loads), book, "after kill -9 of node 0 under cross-shard load")
    with capsys.disabled():
        print(f"\nkill -9 of one of two nodes ({shards} PostgreSQL shards, {2 * LOAD_THREADS} threads): "
              f"{len(la.params) + len(lo.params)} + {len(lb.params)} transfers sent, unanswered "
              f"{len(lost_a)} (killed node) / {len(lost_b)} (survivor); {len(orphans)} of the killed node's "
              f"sagas in flight at the kill, finished by the other node "
              f"{'%.2f s' % adopted_s if adopted_s is not None else 'more than 2 s'} after the kill, "
              f"every saga settled {took:.2f} s after it")
    b.sigterm()
    expect_pg_audit_ok(uris, "audit after kill -9 of one node")


def test_a_node_starts_while_another_writes(make_nodes, tmp_path):
    """A kobod joining a running deployment opens its shards while the
    running node commits batches. The open must not take locks a batch
    waits behind: it once ran the schema DDL (CREATE … IF NOT EXISTS) and
    `INSERT INTO meta … ON CONFLICT DO NOTHING` on every start, which
    deadlocked (40P01) with a batch's meta bump, and the new node exited
    "cannot open the store" (found by the fleet's kill/start kobod-1)."""
    uris, (a,) = make_nodes(1, count=1)
    cash = uid("cash")
    make_account(a, cash, allow_negative=True)
    payers = [uid("p") for _ in range(6)]
    for p in payers:
        make_account(a, p)
        fund(a, cash, p, 1_000_000)
    load = kobotest.Load(a, payers, payers, uid("join"), threads=6).start()
    made, joined = [], []
    try:
        time.sleep(0.5)
        for i in range(5):
            workdir = tmp_path / f"joiner{i}"
            workdir.mkdir()
            b = PgServer(workdir, uris, ("--concurrency", "pessimistic"))
            made.append(b)
            kobotest.ACTIVE.append(b)
            b.start()   # fails the test if b exits or never becomes ready
            joined.append(b)
            expect_status(b.get(f"/v1/accounts/{cash}"), 200, f"joiner {i} serves")
            b.sigterm()
    finally:
        load.stop()
        kobotest.finish_servers(made)   # each stopped by pid, sanitizer logs checked
    assert not load.problems, f"unexpected answers under load: {load.problems[:5]}"
    assert len(load.acked) > 0, "the running node kept acknowledging transfers"
    assert len(joined) == 5, f"only {len(joined)} of 5 joining nodes started"


def test_a_node_opens_its_shards_beside_a_batch_in_flight(pg, make_nodes, tmp_path):
    """The deterministic form of the race above: another session holds what
    a batch holds between its meta bump and its COMMIT (the meta row's lock
    and ROW EXCLUSIVE on transfers). A kobod starting now must open its
    shard without waiting on that transaction: an open of an existing,
    current schema only reads (no DDL, no write to meta)."""
    uris, (a,) = make_nodes(1, count=1)
    make_account(a, uid("warm"))
    holder = subprocess.Popen(
        [pgcluster._bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", uris[0]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    b = None
    try:
        holder.stdin.write("BEGIN;\n"
                           "UPDATE kobo_shard_0.meta SET commit_seq = commit_seq WHERE id = 1;\n"
                           "LOCK TABLE kobo_shard_0.transfers IN ROW EXCLUSIVE MODE;\n"
                           "SELECT 'held';\n")
        holder.stdin.flush()
        line = holder.stdout.readline().strip()
        assert line == "held", f"psql did not take the locks: {line!r}"
        workdir = tmp_path / "joiner"
        workdir.mkdir()
        b = PgServer(workdir, uris, ("--concurrency", "pessimistic"))
        kobotest.ACTIVE.append(b)
        started = time.monotonic()
        b.start(timeout=15)   # fails the test if b never becomes ready
        took = time.monotonic() - started
        print(f"opened beside a batch in flight in {took:.2f} s")
    finally:
        try:
            holder.stdin.write("ROLLBACK;\n")
            holder.stdin.close()
            holder.wait(10)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait(10)
        if b is not None:
            kobotest.finish_servers([b])
    # Both nodes serve once the other transaction ended.
    cash, payee = uid("cash"), uid("payee")
    make_account(a, cash, allow_negative=True)
    make_account(a, payee)
    expect_status(transfer(a, uid("t"), cash, payee, 1), 201, "a write after the holder ended")
