"""
test_pg_replica.py — read replicas (`kobod --postgres-read URL …`) and
read-your-writes with Kobo-Consistency-Token, against a real PostgreSQL
primary and a streaming standby (pg_basebackup -R, pgcluster.py), both
module-scoped and stopped by pid.

  - replay paused on the standby: a write's token sent back with a GET is
    answered with the write (the primary serves it after the bounded wait);
    without the token the stale answer (404, the old balance) is served by
    the replica, and kobo_replica_lag_seconds > 0; once replay resumes the
    token is served by the replica (kobo_replica_reads_total), and a GET
    without it sees the write;
  - bad tokens: 400 invalid_consistency_token, nothing changes;
  - the replica stopped: GETs still answer, from the primary; it is used
    again once it is back;
  - two shards, each with a replica: a cross-shard transfer's token names
    both shards and is honoured on both;
  - the replica list is checked: without --postgres, another count, or the
    replicas in the wrong order are refused (exit 2);
  - embedded (SQLite) mode validates the header and is always satisfied.
kobod's role here has no pg_monitor: replica positions need none.
"""
import os
import re
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import kobotest  # noqa: E402
import pgcluster  # noqa: E402
from kobotest import (expect_error, expect_status, fund, id_on_shard,  # noqa: E402
                      make_account, metrics, transfer, uid)
from test_postgres import PgServer, kobod_refused, new_db  # noqa: E402

TOKEN = "Kobo-Consistency-Token"
LAG_TIMEOUT_S = 5.0      # the monitor samples every 250 ms
REPLAY_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A primary and an asynchronous streaming standby of it."""
    if not pgcluster.available():
        pytest.fail("PostgreSQL server binaries not found: `make test-deps` installs "
                    "the postgresql package", pytrace=False)
    work = tmp_path_factory.mktemp("pgrep")
    with pgcluster.Cluster(work, "primary") as primary, \
            pgcluster.Cluster(work, "standby") as standby:
        primary.start()
        standby.replica(primary, sync=False)
        yield primary, standby


def new_shard_db(primary, standby):
    """A fresh database (its role without pg_monitor) on the primary, and
    its URI on the standby once the standby has replayed its creation."""
    uri = new_db(primary)
    role = uri.rsplit("/", 1)[1]
    primary.psql(f'REVOKE pg_monitor FROM "{role}"')
    standby.wait_replayed(primary.current_lsn(), timeout=REPLAY_TIMEOUT_S)
    replica_uri = uri.replace(f":{primary.port}/", f":{standby.port}/")
    assert replica_uri != uri
    return uri, replica_uri


def caught_up(primary, standby):
    standby.wait_replayed(primary.current_lsn(), timeout=REPLAY_TIMEOUT_S)


@pytest.fixture
def make_pg_server(tmp_path):
    servers = []

    def make(urls, read_urls, *extra_args):
        workdir = tmp_path / f"kobod{len(servers)}"
        workdir.mkdir()
        args = []
        for u in read_urls:
            args += ["--postgres-read", u]
        srv = PgServer(workdir, urls, tuple(args) + extra_args)
        servers.append(srv)
        kobotest.ACTIVE.append(srv)
        srv.start()
        return srv

    yield make
    kobotest.finish_servers(servers)


def reads(srv, shard):
    m = metrics(srv)
    return (m.get(f'kobo_replica_reads_total{{shard="{shard}",served="replica"}}', 0.0),
            m.get(f'kobo_replica_reads_total{{shard="{shard}",served="primary"}}', 0.0))


def metric(srv, name):
    return metrics(srv).get(name)


def wait_metric(srv, name, predicate, what, timeout=LAG_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = metric(srv, name)
        if value is not None and predicate(value):
            return value
        time.sleep(0.1)
    pytest.fail(f"{what}: {name} stayed {value!r} for {timeout:.0f} s")


def wait_replica_up(srv, shard=0):
    wait_metric(srv, f'kobo_replica_up{{shard="{shard}"}}', lambda v: v == 1,
                f"replica of shard {shard} in use")


def get(srv, path, token=None):
    return srv.get(path, headers={TOKEN: token} if token else None)


def balance_of(resp):
    return resp.body["balance"]["posted"]


def test_read_your_writes_with_a_paused_replica(pair, make_pg_server):
    primary, standby = pair
    uri, replica_uri = new_shard_db(primary, standby)
    srv = make_pg_server([uri], [replica_uri])
    wait_replica_up(srv)

    cash, a, b = uid("cash"), uid("ada"), uid("bayo")
    make_account(srv, cash, allow_negative=True)
    make_account(srv, a)
    make_account(srv, b)
    fund(srv, cash, a, 5000)
    caught_up(primary, standby)

    # Caught up, no token: the replica serves it.
    before = reads(srv, 0)
    r = get(srv, f"/v1/accounts/{a}")
    expect_status(r, 200, "GET an account from a caught-up replica")
    assert balance_of(r) == 5000, r
    after = reads(srv, 0)
    assert after[0] == before[0] + 1 and after[1] == before[1], (
        f"a GET without token should be served by the replica: reads {before} -> {after}")

    standby.psql("SELECT pg_wal_replay_pause()")
    try:
        t1 = uid("t")
        w = transfer(srv, t1, a, b, 700)
        expect_status(w, 201, "a transfer while replay is paused")
        token = w.header(TOKEN)
        assert token and re.fullmatch(r"kct1:0@[1-9][0-9]*", token), (
            f"a write answers {TOKEN}: kct1:0@<seq>, saw {token!r}")

        # Without the token: the stale answer, from the replica.
        before = reads(srv, 0)
        stale = get(srv, f"/v1/transfers/{t1}")
        expect_error(stale, 404, "transfer_not_found",
                     "without a token a paused replica answers what it has replayed")
        r = get(srv, f"/v1/accounts/{a}")
        expect_status(r, 200)
        assert balance_of(r) == 5000, f"the replica's (stale) balance, saw {r.body}"
        after = reads(srv, 0)
        assert after[0] == before[0] + 2, f"served by the replica: reads {before} -> {after}"

        # The lag is visible while replay is paused.
        lag = wait_metric(srv, 'kobo_replica_lag_seconds{shard="0"}', lambda v: v > 0,
                          "a paused replica with WAL to replay lags")
        assert lag > 0

        # With the token: the write, served by the primary after the wait.
        before = reads(srv, 0)
        started = time.monotonic()
        r = get(srv, f"/v1/transfers/{t1}", token)
        waited = time.monotonic() - started
        expect_status(r, 200, "GET with the write's token sees the write")
        assert r.body["id"] == t1 and r.body["status"] == "posted", r.body
        r = get(srv, f"/v1/accounts/{a}", token)
        expect_status(r, 200)
        assert balance_of(r) == 4300, f"the token's balance, saw {r.body}"
        r = get(srv, f"/v1/accounts/{a}/transfers", token)
        expect_status(r, 200)
        assert t1 in [t["id"] for t in r.body["data"]], f"history with the token: {r.body}"
        after = reads(srv, 0)
        assert after[1] == before[1] + 3 and after[0] == before[0], (
            f"a paused replica cannot satisfy the token: the primary serves, "
            f"reads {before} -> {after}")
        assert waited >= 0.04, f"the bounded wait (50 ms) comes first, took {waited:.3f} s"
    finally:
        standby.psql("SELECT pg_wal_replay_resume()")

    caught_up(primary, standby)
    wait_metric(srv, 'kobo_replica_lag_seconds{shard="0"}', lambda v: v == 0,
                "a caught-up replica's lag returns to 0")
    before = reads(srv, 0)
    r = get(srv, f"/v1/transfers/{t1}", token)
    expect_status(r, 200, "the token once the replica replayed it")
    assert r.body["id"] == t1
    r = get(srv, f"/v1/accounts/{a}")
    expect_status(r, 200)
    assert balance_of(r) == 4300, f"without the token, the write eventually: {r.body}"
    after = reads(srv, 0)
    assert after[0] == before[0] + 2 and after[1] == before[1], (
        f"a replica that replayed the token serves it: reads {before} -> {after}")

    # Bad tokens: 400, nothing read, nothing changed.
    for bad, why in (("kct2:0@1", "unknown token version"),
                     ("kct1:1@1", "out of range"),
                     ("kct1:0@x", "malformed"),
                     ("kct1:0@1,0@2", "twice"),
                     ("opaque", "not a consistency token"),
                     ("kct1:0@" + "9" * 7000, "too long")):
        for path in (f"/v1/accounts/{a}", f"/v1/transfers/{t1}", f"/v1/accounts/{a}/transfers"):
            r = get(srv, path, bad)
            expect_error(r, 400, "invalid_consistency_token", f"GET {path} with {bad[:40]!r}")
            assert why in r.body["error"]["message"], r.body
    assert reads(srv, 0) == after, "a refused token reads nothing"
    r = get(srv, f"/v1/accounts/{a}", token)
    assert balance_of(r) == 4300 and balance_of(get(srv, f"/v1/accounts/{b}", token)) == 700


def test_replica_stopped_reads_fall_back_to_the_primary(pair, make_pg_server):
    primary, standby = pair
    uri, replica_uri = new_shard_db(primary, standby)
    srv = make_pg_server([uri], [replica_uri])
    wait_replica_up(srv)
    cash, a = uid("cash"), uid("ada")
    make_account(srv, cash, allow_negative=True)
    make_account(srv, a)
    caught_up(primary, standby)
    r = get(srv, f"/v1/accounts/{a}")
    expect_status(r, 200)

    standby.stop()
    try:
        w = transfer(srv, uid("t"), cash, a, 900)
        expect_status(w, 201, "writes do not need the replica")
        token = w.header(TOKEN)
        # At once (before the monitor notices) and after: every GET answers.
        for i in range(10):
            for tok in (None, token):
                r = get(srv, f"/v1/accounts/{a}", tok)
                expect_status(r, 200, f"GET #{i} with the replica down "
                              f"({'with' if tok else 'without'} token)")
                if tok:
                    assert balance_of(r) == 900, r.body
        wait_metric(srv, 'kobo_replica_up{shard="0"}', lambda v: v == 0,
                    "a stopped replica is marked down")
        before = reads(srv, 0)
        r = get(srv, f"/v1/accounts/{a}")
        expect_status(r, 200)
        assert balance_of(r) == 900, "the primary answers while the replica is down"
        after = reads(srv, 0)
        assert after[1] == before[1] + 1, f"served by the primary: {before} -> {after}"
        assert "replica_down" in srv.log_text(), "the fallback is logged"
    finally:
        standby.start()

    caught_up(primary, standby)
    wait_replica_up(srv)
    # Its HTTP thread's reader reconnects after a backoff of at most 2 s.
    deadline = time.monotonic() + 10
    while True:
        before = reads(srv, 0)
        expect_status(get(srv, f"/v1/accounts/{a}"), 200)
        after = reads(srv, 0)
        if after[0] == before[0] + 1:
            break
        assert time.monotonic() < deadline, "the replica is read again once it is back"
        time.sleep(0.2)


def _signal_tree(cluster, sig):
    pid = cluster.pid
    victims = [pid] + pgcluster._children(pid)
    for p in victims:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def test_frozen_replica_costs_at_most_a_bounded_wait(pair, make_pg_server):
    """A replica that stops answering (every process SIGSTOPped: a hung
    host) holds no GET for long: a read on it gives up after 1 s and is
    answered by the primary, and the next reads go to the primary at once."""
    primary, standby = pair
    uri, replica_uri = new_shard_db(primary, standby)
    srv = make_pg_server([uri], [replica_uri])
    wait_replica_up(srv)
    cash, a = uid("cash"), uid("ada")
    make_account(srv, cash, allow_negative=True)
    make_account(srv, a)
    caught_up(primary, standby)
    expect_status(get(srv, f"/v1/accounts/{a}"), 200)

    _signal_tree(standby, signal.SIGSTOP)
    try:
        w = transfer(srv, uid("t"), cash, a, 400)
        expect_status(w, 201)
        slowest = 0.0
        for i in range(20):
            tok = w.header(TOKEN) if i % 2 else None
            started = time.monotonic()
            r = get(srv, f"/v1/accounts/{a}", tok)
            slowest = max(slowest, time.monotonic() - started)
            expect_status(r, 200, f"GET #{i} while the replica is frozen")
        assert slowest < 3.0, f"a GET waited {slowest:.2f} s on a frozen replica"
        r = get(srv, f"/v1/accounts/{a}", w.header(TOKEN))
        assert balance_of(r) == 400, r.body
        expect_status(srv.get("/readyz"), 200, "a frozen replica does not make kobod unready")
    finally:
        _signal_tree(standby, signal.SIGCONT)
    caught_up(primary, standby)
    wait_replica_up(srv)


def test_two_shards_each_with_a_replica(pair, make_pg_server):
    primary, standby = pair
    try:
        two_shards(primary, standby, make_pg_server)
    finally:
        standby.psql("SELECT pg_wal_replay_resume()")


def two_shards(primary, standby, make_pg_server):
    dbs = [new_shard_db(primary, standby) for _ in range(2)]
    urls, replica_urls = [d[0] for d in dbs], [d[1] for d in dbs]
    srv = make_pg_server(urls, replica_urls)
    wait_replica_up(srv, 0)
    wait_replica_up(srv, 1)
    cash = id_on_shard("cash", 0, 2)
    a = id_on_shard("ada", 0, 2)
    b = id_on_shard("bayo", 1, 2)
    make_account(srv, cash, allow_negative=True)
    make_account(srv, a)
    make_account(srv, b)
    fund(srv, cash, a, 5000)
    caught_up(primary, standby)

    standby.psql("SELECT pg_wal_replay_pause()")
    t = uid("x")
    w = transfer(srv, t, a, b, 1200)
    expect_status(w, 201, "a cross-shard transfer")
    token = w.header(TOKEN)
    assert token and re.fullmatch(r"kct1:(0@\d+,1@\d+|1@\d+,0@\d+)", token), (
        f"a cross-shard write's token names both shards, saw {token!r}")

    expect_error(get(srv, f"/v1/transfers/{t}"), 404, "transfer_not_found",
                 "without a token the paused replicas are stale")
    b0, b1 = reads(srv, 0), reads(srv, 1)
    r = get(srv, f"/v1/transfers/{t}", token)
    expect_status(r, 200, "the cross-shard transfer with its token")
    assert r.body["id"] == t and r.body["from"] == a, r.body
    r = get(srv, f"/v1/accounts/{b}", token)
    assert balance_of(r) == 1200, f"the payee's shard honours the token: {r.body}"
    a0, a1 = reads(srv, 0), reads(srv, 1)
    assert a0[1] > b0[1] and a1[1] > b1[1], (
        f"both shards read from their primaries: shard 0 {b0}->{a0}, shard 1 {b1}->{a1}")

    standby.psql("SELECT pg_wal_replay_resume()")
    caught_up(primary, standby)
    b0, b1 = reads(srv, 0), reads(srv, 1)
    expect_status(get(srv, f"/v1/transfers/{t}", token), 200)
    r = get(srv, f"/v1/accounts/{b}", token)
    assert balance_of(r) == 1200
    a0, a1 = reads(srv, 0), reads(srv, 1)
    assert a0[0] > b0[0] and a1[0] > b1[0] and a0[1] == b0[1] and a1[1] == b1[1], (
        f"caught up: both replicas serve, shard 0 {b0}->{a0}, shard 1 {b1}->{a1}")

    # Post/void routing reads primaries: a hold written while replay is
    # paused is found and posted at once.
    standby.psql("SELECT pg_wal_replay_pause()")
    h = uid("h")
    expect_status(transfer(srv, h, a, b, 300, pending=True, timeout_seconds=600), 201)
    r = srv.post(f"/v1/transfers/{h}/post", {})
    for _ in range(50):
        if r.status != 409:
            break
        time.sleep(0.1)
        r = srv.post(f"/v1/transfers/{h}/post", {})
    expect_status(r, 200, "posting a hold the paused replicas have not seen")
    assert r.body["status"] == "posted", r.body


def test_a_replica_that_records_another_shard_is_not_used(pair, tmp_path):
    """Checked at every sample, not only at start: when the replica's meta
    row stops saying "shard 0 of 1" (here the primary's row is changed and
    replicated, standing for a URL that now reaches another database), GETs
    read the primary; once it matches again the replica serves again. The
    replica list comes from KOBO_POSTGRES_READ here."""
    primary, standby = pair
    uri, replica_uri = new_shard_db(primary, standby)
    srv = PgServer(tmp_path, [uri])
    srv.env_extra = {"KOBO_POSTGRES_READ": f"  {replica_uri}\n"}
    kobotest.ACTIVE.append(srv)
    try:
        srv.start()
        wait_replica_up(srv)
        cash, a = uid("cash"), uid("ada")
        make_account(srv, cash, allow_negative=True)
        make_account(srv, a)
        caught_up(primary, standby)
        db = uri.rsplit("/", 1)[1]
        primary.psql("UPDATE kobo_shard_0.meta SET shard_count = 7", dbname=db)
        caught_up(primary, standby)
        wait_metric(srv, 'kobo_replica_up{shard="0"}', lambda v: v == 0,
                    "a replica recording another shard count is dropped")
        assert "replica_wrong_shard" in srv.log_text()
        before = reads(srv, 0)
        expect_status(get(srv, f"/v1/accounts/{a}"), 200)
        after = reads(srv, 0)
        assert after[1] == before[1] + 1, f"the primary serves: {before} -> {after}"
        primary.psql("UPDATE kobo_shard_0.meta SET shard_count = 1", dbname=db)
        caught_up(primary, standby)
        wait_replica_up(srv)
        deadline = time.monotonic() + 10
        while True:
            before = reads(srv, 0)
            expect_status(get(srv, f"/v1/accounts/{a}"), 200)
            if reads(srv, 0)[0] == before[0] + 1:
                break
            assert time.monotonic() < deadline, "the replica serves again once it matches"
            time.sleep(0.2)
    finally:
        problems = srv.finish()
        kobotest.ACTIVE.remove(srv)
        assert not problems, problems


def test_replica_list_is_checked(pair, tmp_path):
    primary, standby = pair
    dbs = [new_shard_db(primary, standby) for _ in range(2)]
    urls, replica_urls = [d[0] for d in dbs], [d[1] for d in dbs]
    # Create both shards once (a kobod that starts and stops).
    srv = PgServer(tmp_path, urls)
    kobotest.ACTIVE.append(srv)
    try:
        srv.start()
        srv.sigterm()
    finally:
        kobotest.ACTIVE.remove(srv)
    caught_up(primary, standby)

    def pg(u):
        return [x for url in u for x in ("--postgres", url)]

    def rd(u):
        return [x for url in u for x in ("--postgres-read", url)]

    rc, err = kobod_refused(["--data", str(tmp_path / "d")] + rd(replica_urls[:1]))
    assert rc == 2 and "needs --postgres" in err, (rc, err)
    rc, err = kobod_refused(pg(urls) + rd(replica_urls[:1]))
    assert rc == 2 and "one read replica per shard" in err, (rc, err)
    rc, err = kobod_refused(pg(urls) + rd(replica_urls + replica_urls[:1]))
    assert rc == 2 and "one read replica per shard" in err, (rc, err)
    rc, err = kobod_refused(pg(urls) + rd(list(reversed(replica_urls))))
    assert rc == 2 and "not a replica of shard" in err, (rc, err)
    rc, err = kobod_refused(pg(urls) + ["--postgres-read", "mysql://x"])
    assert rc == 2 and "--postgres-read" in err, (rc, err)


def test_embedded_mode_validates_and_satisfies_the_token(tmp_path):
    srv = kobotest.Server(tmp_path)
    kobotest.ACTIVE.append(srv)
    try:
        srv.start()
        cash, a = uid("cash"), uid("ada")
        make_account(srv, cash, allow_negative=True)
        make_account(srv, a)
        w = transfer(srv, uid("t"), cash, a, 250)
        expect_status(w, 201)
        token = w.header(TOKEN)
        assert token and token.startswith("kct1:0@"), token
        r = get(srv, f"/v1/accounts/{a}", token)
        expect_status(r, 200, "embedded mode: the token is always satisfied")
        assert balance_of(r) == 250
        far = "kct1:0@999999999"  # beyond any commit: still satisfied, no wait
        started = time.monotonic()
        expect_status(get(srv, f"/v1/accounts/{a}", far), 200)
        assert time.monotonic() - started < 1.0
        expect_error(get(srv, f"/v1/accounts/{a}", "kct1:1@1"), 400,
                     "invalid_consistency_token", "embedded mode still validates")
        assert 'kobo_replica_reads_total' not in srv.get("/metrics").raw.decode()
    finally:
        problems = srv.finish()
        kobotest.ACTIVE.remove(srv)
        assert not problems, problems
