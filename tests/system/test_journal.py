"""
test_journal.py — the journaled embedded store (kobod --data DIR --journal on,
src/store/hot): memory + checksummed journal + SQLite as a projection behind.

- the projection held back (another process holds the SQLite file's write
  lock): writes are still acknowledged from the journal, reads of a transfer
  and of a balance see them at once, scans wait for the projection;
- kill -9 while the projection lags, many rounds: every acknowledged transfer
  is there after the restart (replayed from the journal), balances equal the
  stored transfers, `kobo audit` is clean;
- a flipped byte in an older frame: kobod refuses to start and names the
  segment and offset; never silently fixed;
- --journal off on a journaled data directory: refused (exit 2);
- limits: --max-accounts / --max-transfers answer 503 capacity_exhausted and
  store nothing.
"""
import glob
import os
import random
import sqlite3
import subprocess
import threading
import time
from collections import Counter

import pytest

from kobotest import (Load, Server, binary, child_env, conservation, expect_audit_ok,
                      expect_error, expect_status, finish_servers, fund, get_transfer,
                      make_account, wait_until)

pytestmark = pytest.mark.embedded_only("the journal is the embedded store's")

KILL_ROUNDS = int(os.environ.get("KOBO_JOURNAL_KILL_ROUNDS", "20"))


@pytest.fixture
def journaled(tmp_path):
    servers = []

    def make(*extra, start=True):
        srv = Server(tmp_path / f"j{len(servers)}", ["--journal", "on", *extra])
        servers.append(srv)
        os.makedirs(srv.workdir, exist_ok=True)
        if start:
            srv.start()
        return srv

    yield make
    finish_servers(servers)


class WriteLock:
    """Holds the SQLite write lock of a shard file from this process (BEGIN
    IMMEDIATE), as a backup tool or `kobo key create` would: the projection
    cannot commit while it is held."""

    def __init__(self, path):
        self.db = sqlite3.connect(path, timeout=10, isolation_level=None)
        self.db.execute("BEGIN IMMEDIATE")

    def release(self):
        if self.db is not None:
            self.db.execute("ROLLBACK")
            self.db.close()
            self.db = None


def shard_file(srv, shard=0):
    return os.path.join(srv.data, f"shard-{shard}.db")


def metric(srv, name, **labels):
    r = srv.get("/metrics")
    expect_status(r, 200, "GET /metrics")
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in r.raw.decode().splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.split()[-1])
    return None


def test_projection_held_back_writes_acked_and_read(journaled):
    srv = journaled()
    make_account(srv, "cash", allow_negative=True)
    make_account(srv, "alice")
    wait_until(lambda: metric(srv, "kobo_journal_backlog_batches", shard=0) == 0, 10)
    lock = WriteLock(shard_file(srv))
    try:
        for i in range(20):
            expect_status(srv.post("/v1/transfers", {"id": f"held{i}", "from": "cash",
                                                     "to": "alice", "amount": 10,
                                                     "currency": "NGN"}), 201,
                          f"transfer {i} with the projection held back")
        # Served from memory: the projection holds none of them.
        r = get_transfer(srv, "held19")
        expect_status(r, 200, "GET of a transfer not projected yet")
        assert r.body["status"] == "posted" and r.body["amount"] == 10, r.body
        r = srv.get("/v1/accounts/alice")
        expect_status(r, 200, "GET of a balance not projected yet")
        assert r.body["balance"]["posted"] == 200, f"expected alice's posted 200 from memory, saw {r.body}"
        backlog = metric(srv, "kobo_journal_backlog_batches", shard=0)
        assert backlog and backlog >= 1, f"expected a projection backlog, saw {backlog}"
        with sqlite3.connect(f"file:{shard_file(srv)}?mode=ro", uri=True) as ro:
            n = ro.execute("SELECT count(*) FROM transfers WHERE id LIKE 'held%'").fetchone()[0]
        assert n == 0, f"expected the projection to hold none of the 20 yet, it holds {n}"
    finally:
        lock.release()
    # A scan waits for the projection, then sees every acknowledged write.
    r = srv.get("/v1/accounts/alice/transfers?limit=100")
    expect_status(r, 200, "history after the projection caught up")
    ids = {t["id"] for t in r.body["data"]}
    assert {f"held{i}" for i in range(20)} <= ids, f"history misses some: {sorted(ids)}"
    assert wait_until(lambda: metric(srv, "kobo_journal_backlog_batches", shard=0) == 0, 10)
    expect_audit_ok(srv, "after the projection caught up")


def check_round(srv, load, expected, rnd):
    lost = [t for t in load.acked if get_transfer(srv, t).status != 200]
    assert not lost, (f"round {rnd}: {len(lost)} of {len(load.acked)} acknowledged transfers "
                      f"lost after kill -9 with the projection held back: {lost[:5]}")
    for tid, body in load.unacked.items():
        r = srv.post("/v1/transfers", body)
        assert r.status in (200, 201, 422), f"round {rnd}: retry of {tid}: {r!r}"
    for tid, body in load.params.items():
        r = get_transfer(srv, tid)
        expect_status(r, 200, f"round {rnd}: {tid}")
        if r.body["status"] == "posted":
            expected[body["from"]] -= r.body["posted_amount"]
            expected[body["to"]] += r.body["posted_amount"]
    total, bals = conservation(srv, list(expected))
    assert total == 0, f"round {rnd}: posted balances sum to {total}"
    seen = {a: b["posted"] for a, b in bals.items()}
    assert seen == dict(expected), f"round {rnd}: balances {seen}, from stored transfers {dict(expected)}"


def test_kill9_with_projection_lagging(journaled):
    """kill -9 under load while another process holds the SQLite write lock
    (the projection cannot write: everything acknowledged lives only in the
    journal), KILL_ROUNDS rounds; the lock is released after the kill, the
    restart replays the journal."""
    payees = [f"p{i}" for i in range(6)]
    srv = journaled()
    make_account(srv, "cash", allow_negative=True)
    expected = Counter()
    for p in payees:
        make_account(srv, p)
        fund(srv, "cash", p, 5000)
        expected[p] += 5000
        expected["cash"] -= 5000
    rng = random.Random(11)
    acked_total = 0
    for rnd in range(KILL_ROUNDS):
        lock = WriteLock(shard_file(srv)) if rnd % 4 != 3 else None  # some rounds lag-free
        try:
            load = Load(srv, ["cash"] + payees, payees, prefix=f"j{rnd}", threads=6, seed=rnd)
            load.start()
            got = wait_until(lambda: len(load.acked) >= 20, 20)
            time.sleep(rng.uniform(0.05, 0.4))
            srv.kill9()
            load.stop()
        finally:
            if lock:
                lock.release()
        assert got, f"round {rnd}: expected 20 acknowledged transfers before the kill, saw {len(load.acked)}"
        assert not load.problems, f"round {rnd}: {load.problems[:5]}"
        acked_total += len(load.acked)
        srv.start(port=srv.port)
        check_round(srv, load, expected, rnd)
        expect_audit_ok(srv, f"round {rnd}")
    recovered = [l for l in open(srv.log_path, errors="replace") if "journal_recovered" in l]
    assert len(recovered) >= KILL_ROUNDS, f"expected a journal_recovered line per start, saw {len(recovered)}"
    print(f"kill -9 with the projection lagging: {KILL_ROUNDS} rounds, {acked_total} acknowledged, "
          f"none lost")


def segments(srv):
    return sorted(glob.glob(os.path.join(srv.data, "shard-0.journal", "journal", "*.seg")))


def test_corrupt_older_frame_refused(journaled):
    srv = journaled()
    make_account(srv, "cash", allow_negative=True)
    make_account(srv, "bob")
    lock = WriteLock(shard_file(srv))  # keep the frames unprojected
    try:
        for i in range(5):
            expect_status(srv.post("/v1/transfers", {"id": f"c{i}", "from": "cash", "to": "bob",
                                                     "amount": 1, "currency": "NGN"}), 201)
        srv.kill9()
    finally:
        lock.release()
    segs = segments(srv)
    assert segs, "expected journal segments"
    with open(segs[-1], "r+b") as f:
        data = f.read(1 << 20)
        # The second frame's payload: past the first frame (header 40 bytes).
        first_len = int.from_bytes(data[16:20], "little")
        second = 40 + first_len + 16
        assert data[second:second + 4] == b"KbJl", "expected a second frame"
        f.seek(second + 48)
        f.write(bytes([data[second + 48] ^ 0x01]))
    p = subprocess.run([binary("kobod"), "--listen", "127.0.0.1:0", "--data", srv.data,
                        "--journal", "on"], capture_output=True, text=True, timeout=30,
                       env=child_env())
    assert p.returncode != 0, "expected kobod to refuse a corrupt journal"
    assert os.path.basename(segs[-1]) in p.stderr and "offset" in p.stderr, (
        f"expected the refusal to name the segment and offset, saw:\n{p.stderr[-2000:]}")


def test_journal_off_refused_on_journaled_dir(journaled):
    srv = journaled()
    make_account(srv, "x1")
    srv.sigterm()
    p = subprocess.run([binary("kobod"), "--listen", "127.0.0.1:0", "--data", srv.data,
                        "--journal", "off"], capture_output=True, text=True, timeout=30,
                       env=child_env())
    assert p.returncode == 2, f"expected exit 2, saw {p.returncode}: {p.stderr[-1000:]}"
    assert "--journal on" in p.stderr, p.stderr[-1000:]


def test_capacity_limits(journaled):
    srv = journaled("--max-accounts", "3", "--max-transfers", "2")
    for a in ("cash", "a1", "a2"):
        make_account(srv, a, allow_negative=(a == "cash"))
    r = srv.post("/v1/accounts", {"id": "a3", "currency": "NGN"})
    expect_error(r, 503, "capacity_exhausted", "a 4th account past --max-accounts 3")
    expect_status(srv.get("/v1/accounts/a3"), 404, "the refused account is not stored")
    for i in range(2):
        expect_status(srv.post("/v1/transfers", {"id": f"cap{i}", "from": "cash", "to": "a1",
                                                 "amount": 5, "currency": "NGN"}), 201)
    r = srv.post("/v1/transfers", {"id": "cap2", "from": "cash", "to": "a1", "amount": 5,
                                   "currency": "NGN"})
    expect_error(r, 503, "capacity_exhausted", "a 3rd transfer past --max-transfers 2")
    expect_status(get_transfer(srv, "cap2"), 404, "the refused transfer is not stored")
    assert srv.get("/v1/accounts/a1").body["balance"]["posted"] == 10
    # A retry of a stored id still replays: it needs no room.
    r = srv.post("/v1/transfers", {"id": "cap1", "from": "cash", "to": "a1", "amount": 5,
                                   "currency": "NGN"})
    assert r.status == 200 and r.replayed, r
    assert metric(srv, "kobo_store_records", shard=0, kind="transfers") == 2
    assert metric(srv, "kobo_store_records_max", shard=0, kind="accounts") == 3
