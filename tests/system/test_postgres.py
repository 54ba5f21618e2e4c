"""
test_postgres.py — kobod with its shards in PostgreSQL (`--postgres URL …`),
against real clusters started by pgcluster.py (module-scoped; every
postmaster and kobod is stopped by pid, on failure too).

  - one shard (one database) and two shards (two databases): accounts,
    transfers, holds posted and voided, replays and id conflicts,
    insufficient funds, a cross-shard transfer that settles; everything is
    there after a restart, and `kobo audit --postgres …` exits 0;
  - the URL list is checked against what the databases record: another
    order or another length is refused (exit 2, a sentence naming what was
    found), as are --data with --postgres and a --shards that disagrees;
  - kill -9 of kobod under load: every acknowledged transfer is there after
    the restart and the audit is sound;
  - kill -9 of PostgreSQL under kobod: /readyz 503 within a few seconds,
    writes 503 at once, and after PostgreSQL restarts /readyz 200 and
    writes succeed again without restarting kobod.
"""
import os
import re
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import kobotest  # noqa: E402
import pgcluster  # noqa: E402
from kobotest import (expect_error, expect_replayed, expect_status, fund,  # noqa: E402
                      get_transfer, id_on_shard, make_account, transfer, uid)

READY_FLIP_S = 5.0    # /readyz 503 after PostgreSQL dies, and 200 after it returns
REFUSE_TIMEOUT_S = 30.0


class PgServer(kobotest.Server):
    """kobod with --postgres URL … instead of --data."""

    def __init__(self, workdir, urls, extra_args=()):
        super().__init__(workdir, extra_args)
        self.urls = list(urls)
        self.env_extra = {}

    def _spawn(self, port):
        self.port = port
        self.generation += 1
        self.stopped_by_us = False
        args = [kobotest.binary("kobod"), "--listen", f"127.0.0.1:{port}"]
        for u in self.urls:
            args += ["--postgres", u]
        args += self.extra_args
        with open(self.log_path, "ab") as err, open(self.out_path, "ab") as out:
            err.write(f"### test harness: starting {' '.join(args)}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=dict(kobotest.child_env(), **self.env_extra))


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    if not pgcluster.available():
        pytest.fail("PostgreSQL server binaries not found: `make test-deps` installs "
                    "the postgresql package", pytrace=False)
    with pgcluster.Cluster(tmp_path_factory.mktemp("pg"), "pg") as c:
        c.start()
        yield c


def new_db(cluster):
    """A fresh role owning a fresh database (no superuser); its URI."""
    name = "kobo_" + re.sub(r"[^a-z0-9]", "_", uid("db").lower())
    return cluster.create_role_and_db(name[:60])


@pytest.fixture
def make_pg_server(tmp_path):
    servers = []

    def make(urls, *extra_args, start=True):
        workdir = tmp_path / f"kobod{len(servers)}"
        workdir.mkdir()
        srv = PgServer(workdir, urls, extra_args)
        servers.append(srv)
        kobotest.ACTIVE.append(srv)
        if start:
            srv.start()
        return srv

    yield make
    kobotest.finish_servers(servers)


def kobod_refused(args, timeout=REFUSE_TIMEOUT_S):
    """Runs kobod with args (on a free port) expecting it to exit at once."""
    cmd = [kobotest.binary("kobod"), "--listen", f"127.0.0.1:{kobotest.free_port()}"] + args
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=kobotest.child_env())
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"kobod {' '.join(args)}: expected it to refuse and exit, it kept "
                    f"running\nstderr:\n{err[-2000:]}")
    return p.returncode, err


def pg_args(urls):
    out = []
    for u in urls:
        out += ["--postgres", u]
    return out


def audit_pg(urls, *extra):
    return subprocess.run([kobotest.binary("kobo"), "audit", *pg_args(urls), *extra],
                          capture_output=True, text=True, timeout=kobotest.CLI_TIMEOUT_S,
                          env=kobotest.child_env())


def expect_audit_pg_ok(urls, what=""):
    p = audit_pg(urls)
    assert p.returncode == 0, (f"{what + ': ' if what else ''}`kobo audit --postgres` "
                               f"({len(urls)} shards): expected exit 0, saw {p.returncode}\n"
                               f"stdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}")
    return p


def readyz(srv):
    try:
        return srv.get("/readyz", timeout=5).status
    except Exception:
        srv.client.reset()
        return None


def money_path(srv, shards, tag):
    """Runs the money path on srv; returns {transfer id: expected status}
    and {account: expected posted balance} to find again after a restart."""
    cash = id_on_shard(f"cash-{tag}", 0, shards)
    a = id_on_shard(f"ada-{tag}", 0, shards)
    b = id_on_shard(f"bayo-{tag}", shards - 1, shards)
    make_account(srv, cash, allow_negative=True)
    make_account(srv, a)
    make_account(srv, b)
    expect_status(srv.post("/v1/accounts", {"id": a, "currency": "NGN"}), 200,
                  "creating an account again replays it")
    expect_error(srv.post("/v1/accounts", {"id": a, "currency": "USD"}), 409,
                 "id_conflict", "same account id, other currency")
    fund(srv, cash, a, 5000)

    seen = {}
    t1 = uid("t")
    r = transfer(srv, t1, a, b, 700)
    expect_status(r, 201, "a plain transfer" + (" across shards" if shards > 1 else ""))
    assert r.body["status"] == "posted", f"expected posted, saw {r.body}"
    seen[t1] = "posted"
    expect_replayed(transfer(srv, t1, a, b, 700), 200, "the same transfer again")
    expect_error(transfer(srv, t1, a, b, 701), 409, "id_conflict", "same id, other amount")

    poor = uid("t")
    expect_error(transfer(srv, poor, a, b, 1_000_000), 422, "insufficient_funds")
    expect_error(transfer(srv, poor, a, b, 1_000_000), 422, "insufficient_funds",
                 "a refusal replays as the refusal")
    seen[poor] = "rejected"

    # Holds: one posted in part, one voided. With two shards the payee is on
    # the other shard, so these are sagas (201 once settled).
    h1, h2 = uid("h"), uid("h")
    r = transfer(srv, h1, a, b, 1200, pending=True, timeout_seconds=600)
    expect_status(r, 201, "a hold")
    assert r.body["status"] == "pending", f"expected pending, saw {r.body}"
    r = srv.post(f"/v1/transfers/{h1}/post", {"amount": 1000})
    for _ in range(50):
        if r.status != 409:
            break
        time.sleep(0.1)
        r = srv.post(f"/v1/transfers/{h1}/post", {"amount": 1000})
    expect_status(r, 200, "post 1000 of a 1200 hold")
    assert r.body["status"] == "posted", f"expected posted, saw {r.body}"
    seen[h1] = "posted"
    expect_status(transfer(srv, h2, a, b, 300, pending=True, timeout_seconds=600), 201)
    r = srv.post(f"/v1/transfers/{h2}/void", {})
    for _ in range(50):
        if r.status != 409:
            break
        time.sleep(0.1)
        r = srv.post(f"/v1/transfers/{h2}/void", {})
    expect_status(r, 200, "void a hold")
    assert r.body["status"] == "voided", f"expected voided, saw {r.body}"
    seen[h2] = "voided"

    balances = {cash: -5000, a: 5000 - 700 - 1000, b: 700 + 1000}
    check_found(srv, seen, balances, "right after the writes")
    return seen, balances


def check_found(srv, seen, balances, what):
    for tid, status in seen.items():
        r = get_transfer(srv, tid)
        if status == "rejected":
            expect_status(r, (200, 404), f"{what}: GET refused transfer {tid}")
            continue
        expect_status(r, 200, f"{what}: GET transfer {tid}")
        assert r.body["status"] == status, f"{what}: {tid}: expected {status}, saw {r.body}"
    for acct, posted in balances.items():
        bal = kobotest.balance(srv, acct)
        assert bal["posted"] == posted and bal["pending_out"] == 0, (
            f"{what}: {acct}: expected posted {posted} and nothing pending, saw {bal}")


@pytest.mark.parametrize("shards", [1, 2])
def test_money_path_restart_and_audit(pg, make_pg_server, shards):
    urls = [new_db(pg) for _ in range(shards)]
    srv = make_pg_server(urls)
    seen, balances = money_path(srv, shards, f"s{shards}")
    srv.restart()
    check_found(srv, seen, balances, "after a restart")
    # The same again: nothing moved twice after the restart.
    t = next(t for t, s in seen.items() if s == "posted")
    r = get_transfer(srv, t).body
    expect_replayed(transfer(srv, t, r["from"], r["to"], r["amount"]), 200,
                    "a replay after the restart")
    check_found(srv, seen, balances, "after a replay")
    p = expect_audit_pg_ok(urls, "after the restart")
    assert "sound" in p.stdout, f"expected the verdict 'sound', saw:\n{p.stdout}"
    srv.sigterm()
    expect_audit_pg_ok(urls, "with kobod stopped")


def test_two_shards_in_one_database(pg, make_pg_server):
    # The same URL twice: two shards in two schemas of one database.
    url = new_db(pg)
    srv = make_pg_server([url, url])
    money_path(srv, 2, "onedb")
    srv.sigterm()
    expect_audit_pg_ok([url, url], "two shards in one database")


def test_mismatched_lists_are_refused(pg, make_pg_server):
    a, b = new_db(pg), new_db(pg)
    srv = make_pg_server([a, b])
    cash = id_on_shard("cash-mm", 0, 2)
    make_account(srv, cash, allow_negative=True)
    srv.sigterm()

    rc, err = kobod_refused(pg_args([b, a]))
    assert rc == 2 and "shard 1 of 2" in err and "shard order" in err, (
        f"URLs in the wrong order: expected exit 2 naming shard 1 of 2, saw {rc}\n{err[-2000:]}")
    rc, err = kobod_refused(pg_args([a]))
    assert rc == 2 and "2 shards" in err and "1 URLs" in err, (
        f"one URL of a two-shard deployment: expected exit 2 and why, saw {rc}\n{err[-2000:]}")
    rc, err = kobod_refused(pg_args([a, b, new_db(pg)]))
    assert rc == 2 and "2 shards" in err, (
        f"three URLs for a two-shard deployment: expected exit 2, saw {rc}\n{err[-2000:]}")
    rc, err = kobod_refused(pg_args([a, a]))
    assert rc == 2 and "not shard 1" in err, (
        f"shard 0's URL given twice: expected exit 2, saw {rc}\n{err[-2000:]}")
    rc, err = kobod_refused(pg_args([a, b]) + ["--shards", "3"])
    assert rc == 2 and "--shards 3" in err, f"--shards disagreeing: saw {rc}\n{err[-2000:]}"
    rc, err = kobod_refused(pg_args([a]) + ["--data", str(srv.workdir)])
    assert rc == 2 and "--data" in err and "--postgres" in err, (
        f"--data with --postgres: expected exit 2 and why, saw {rc}\n{err[-2000:]}")
    env_rc = subprocess.run([kobotest.binary("kobod"), "--listen",
                             f"127.0.0.1:{kobotest.free_port()}"],
                            env=dict(kobotest.child_env(), KOBO_POSTGRES=f"{b} {a}"),
                            capture_output=True, text=True, timeout=REFUSE_TIMEOUT_S)
    assert env_rc.returncode == 2 and "shard order" in env_rc.stderr, (
        f"KOBO_POSTGRES in the wrong order: saw {env_rc.returncode}\n{env_rc.stderr[-2000:]}")

    # The audit checks the list the same way.
    p = audit_pg([b, a])
    assert p.returncode == 2, f"audit of a swapped list: expected exit 2, saw {p.returncode}\n" \
                              f"{p.stdout}\n{p.stderr}"
    expect_audit_pg_ok([a, b], "the right list")

    # KOBO_POSTGRES in the right order starts it.
    srv2 = make_pg_server([], start=False)
    srv2.env_extra = {"KOBO_POSTGRES": f"{a}\n {b}"}
    srv2.start()
    expect_status(srv2.get(f"/v1/accounts/{cash}"), 200, "KOBO_POSTGRES: the account is there")


def test_kill9_under_load(pg, make_pg_server):
    urls = [new_db(pg), new_db(pg)]
    srv = make_pg_server(urls)
    cash = id_on_shard("cash-k9", 0, 2)
    make_account(srv, cash, allow_negative=True)
    payers = [id_on_shard(f"payer{i}", i % 2, 2) for i in range(6)]
    for p in payers:
        make_account(srv, p)
        fund(srv, cash, p, 50_000)
    load = kobotest.Load(srv, payers, payers, uid("k9"), threads=6).start()
    try:
        time.sleep(3.0)
        srv.kill9()
    finally:
        load.stop()
    assert not load.problems, f"unexpected answers under load: {load.problems[:5]}"
    assert len(load.acked) > 0, "expected some transfers acknowledged before the kill"
    srv.start()
    missing = []
    for tid in load.acked:
        r = get_transfer(srv, tid)
        if r.status != 200:
            missing.append((tid, r.status))
    assert not missing, (f"{len(missing)} of {len(load.acked)} acknowledged transfers "
                         f"missing after kill -9: {missing[:5]}")
    # Sagas the kill interrupted finish after the restart.
    kobotest.wait_until(lambda: kobotest.sagas_active(srv) == 0, 30)
    total = sum(kobotest.balance(srv, a)["posted"] for a in payers + [cash])
    assert total == 0, f"money not conserved: payers + cash sum to {total}, expected 0"
    srv.sigterm()
    expect_audit_pg_ok(urls, "after kill -9 under load")


def test_postgres_down_and_back(tmp_path, make_pg_server):
    # A cluster of its own: this test kills it.
    with pgcluster.Cluster(tmp_path, "pgdown") as c:
        c.start()
        urls = [c.create_role_and_db("kobo_down")]
        srv = make_pg_server(urls)
        cash, a = uid("cash"), uid("a")
        make_account(srv, cash, allow_negative=True)
        make_account(srv, a)
        fund(srv, cash, a, 1000)
        payers = [uid("p") for _ in range(4)]
        for p in payers:
            make_account(srv, p)
            fund(srv, cash, p, 100_000)

        # Under load: a COMMIT may be cut off (503, outcome unknown), which
        # must not leave kobod unready once PostgreSQL is back.
        load = kobotest.Load(srv, payers, payers, uid("down"), threads=4).start()
        try:
            time.sleep(1.0)
            c.kill9()
            down_at = time.monotonic()
            assert kobotest.wait_until(lambda: readyz(srv) == 503, READY_FLIP_S, 0.1), (
                f"/readyz: expected 503 within {READY_FLIP_S} s of PostgreSQL's death, "
                f"saw {readyz(srv)}")
            flipped = time.monotonic() - down_at
        finally:
            load.stop()
        assert not load.problems, f"unexpected answers under load: {load.problems[:5]}"
        started = time.monotonic()
        r = transfer(srv, uid("t"), cash, a, 10)
        took = time.monotonic() - started
        expect_error(r, 503, None, "a write while PostgreSQL is down")
        assert took < 2.0, f"a write while PostgreSQL is down should fail at once, took {took:.2f} s"
        assert srv.get("/healthz").status == 200, "/healthz answers while the process serves"

        c.start()
        up_at = time.monotonic()
        assert kobotest.wait_until(lambda: readyz(srv) == 200, READY_FLIP_S, 0.1), (
            f"/readyz: expected 200 within {READY_FLIP_S} s of PostgreSQL's return, "
            f"saw {readyz(srv)}")
        back = time.monotonic() - up_at
        t = uid("t")
        expect_status(transfer(srv, t, cash, a, 10), 201, "a write after PostgreSQL returned")
        expect_status(get_transfer(srv, t), 200, "and it reads back")
        assert kobotest.balance(srv, a)["posted"] == 1010
        missing = [t for t in load.acked if get_transfer(srv, t).status != 200]
        assert not missing, (f"{len(missing)} of {len(load.acked)} acknowledged transfers "
                             f"missing after PostgreSQL's kill -9: {missing[:5]}")
        total = sum(kobotest.balance(srv, x)["posted"] for x in payers + [cash, a])
        assert total == 0, f"money not conserved: {total}"
        print(f"readyz 503 after {flipped:.2f} s, 200 after {back:.2f} s")
        srv.sigterm()
        expect_audit_pg_ok(urls, "after PostgreSQL's restart")
