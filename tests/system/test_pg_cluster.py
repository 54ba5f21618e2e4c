"""
test_pg_cluster.py — the PostgreSQL harness (pgcluster.py) itself works:
a primary and a synchronous streaming standby start, a committed row reaches
the standby and its replay position reaches the primary's, the primary
survives kill -9 and restarts with its data, and stop leaves no process.

The PostgreSQL tests of kobod build on this; if it fails, they cannot mean
anything.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import pgcluster  # noqa: E402


@pytest.fixture
def clusters(tmp_path):
    if not pgcluster.available():
        pytest.fail("PostgreSQL server binaries not found: `make test-deps` installs "
                    "the postgresql package", pytrace=False)
    made = []

    def make(name):
        c = pgcluster.Cluster(tmp_path, name)
        made.append(c)
        return c

    yield make
    for c in made:
        c.cleanup()


def _postgres_processes_of(cluster_pid):
    return [p for p in pgcluster._children(cluster_pid)] if cluster_pid else []


def test_primary_sync_standby_kill9_restart(clusters):
    primary = clusters("primary").start()
    uri = primary.create_role_and_db("kobo")
    assert uri == f"postgresql://kobo@127.0.0.1:{primary.port}/kobo"

    # The role owns its database but is no superuser, and may read replica
    # positions (pg_monitor), as kobod will.
    assert primary.psql("SELECT rolsuper FROM pg_roles WHERE rolname = 'kobo'") == "f"
    assert primary.psql("SELECT pg_has_role('kobo', 'pg_monitor', 'MEMBER')") == "t"
    assert primary.psql("SELECT pg_get_userbyid(datdba) FROM pg_database "
                        "WHERE datname = 'kobo'") == "kobo"
    for setting, want in (("fsync", "on"), ("synchronous_commit", "on"),
                          ("listen_addresses", "127.0.0.1")):
        got = primary.psql(f"SHOW {setting}")
        assert got == want, f"primary {setting}: expected {want!r}, saw {got!r}"

    standby = clusters("standby").replica(primary, sync=True)
    state = primary.psql("SELECT state || ' ' || sync_state FROM pg_stat_replication "
                         f"WHERE application_name = '{standby.app_name}'")
    assert state == "streaming sync", f"expected a streaming sync standby, saw {state!r}"
    assert standby.psql("SELECT pg_is_in_recovery()") == "t"

    # A row committed on the primary is on the standby once it replayed the
    # primary's position; with a sync standby the commit already waited for
    # the standby's flush.
    primary.psql("CREATE TABLE t (id text PRIMARY KEY, amount bigint NOT NULL); "
                 "INSERT INTO t VALUES ('a', 5000)", dbname="kobo", user="kobo")
    lsn = primary.current_lsn()
    standby.wait_replayed(lsn, timeout=30)
    assert standby.psql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") == "t"
    assert standby.psql("SELECT amount FROM t WHERE id = 'a'", dbname="kobo") == "5000"
    flushed = primary.psql("SELECT flush_lsn >= '%s'::pg_lsn FROM pg_stat_replication "
                           "WHERE application_name = '%s'" % (lsn, standby.app_name))
    assert flushed == "t", "the standby's flush position should have reached the commit"

    # kill -9 of the primary: the committed row survives crash recovery, the
    # port stays the same and the standby streams again.
    old_pid = primary.pid
    primary.kill9()
    assert not primary.running()
    assert not pgcluster._alive(old_pid)
    with pytest.raises(pgcluster.PgError):
        primary.psql("SELECT 1", timeout=10)
    primary.start()
    assert primary.pid != old_pid
    assert primary.psql("SELECT amount FROM t WHERE id = 'a'", dbname="kobo") == "5000"
    primary.psql("INSERT INTO t VALUES ('b', 1)", dbname="kobo", user="kobo")
    standby.wait_replayed(primary.current_lsn(), timeout=30)
    assert standby.psql("SELECT count(*) FROM t", dbname="kobo") == "2"
    pgcluster.wait_for(lambda: primary.psql(
        "SELECT sync_state FROM pg_stat_replication "
        f"WHERE application_name = '{standby.app_name}'") == "sync", 30,
        "the standby to be synchronous again after the primary's restart")

    # stop: every process of both servers gone.
    pids = [primary.pid, standby.pid]
    children = _postgres_processes_of(primary.pid) + _postgres_processes_of(standby.pid)
    assert children, "a running postmaster should have children"
    standby.stop()
    primary.stop()
    for pid in pids + children:
        assert not pgcluster._alive(pid), f"process {pid} still alive after stop()"
    assert not primary.running() and not standby.running()


def test_async_replica_and_restart(clusters):
    primary = clusters("primary").start()
    standby = clusters("replica").replica(primary, sync=False)
    assert primary.psql("SHOW synchronous_standby_names") == ""
    assert primary.psql("SELECT sync_state FROM pg_stat_replication "
                        f"WHERE application_name = '{standby.app_name}'") == "async"
    primary.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (7)")
    standby.wait_replayed(primary.current_lsn(), timeout=30)
    assert standby.psql("SELECT x FROM t") == "7"
    # A clean restart keeps data and port.
    port = primary.port
    primary.restart()
    assert primary.port == port
    assert primary.psql("SELECT x FROM t") == "7"
