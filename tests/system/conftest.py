"""
Fixtures for Kobo's system tests (helpers live in kobotest.py).

  server        a fresh kobod on a free port with an empty store, for one test
  make_server   factory: make_server("--connection-timeout", "2") -> Server;
                every server it made is stopped and checked at teardown
  shared_server one kobod per test module, for tests that only need their own
                uniquely named accounts (saves ASan start-ups)
  shared_sharded_server
                the same with `kobod --shards 4` (kobotest.SHARDS_DEFAULT):
                place accounts with kobotest.id_on_shard()

Backends. Every test that uses one of these fixtures runs once per backend
(the test id ends in [sqlite], [pg1], [pg2] or [pg]):

  sqlite  kobod --data DIR (the embedded store)
  pg1     kobod --postgres URI: one fresh database per server, on a
          session-wide PostgreSQL cluster, owned by a non-superuser role
  pg2     the same with two databases, i.e. two shards; a test written for
          one shard must still hold (place ids with kobotest.id_on_shard()
          and srv.shards where it depends on the shard an id lands on)
  pg      for tests that choose the shard count themselves (they use
          shared_sharded_server or are marked own_shards and pass
          --shards N): N databases. pg1 and pg2 would run them alike, so
          they run once on PostgreSQL, as [pg].

A restart (Server.restart, kill9 then start) reuses the same databases;
`kobotest.audit(srv)` / `expect_audit_ok(srv)` audit whichever store srv has.

Selection: `pytest --backends sqlite,pg1` or env KOBO_TEST_BACKENDS (the
option wins); default all three. Markers:

  embedded_only("why")  the test's subject is the embedded store itself
                        (SQLite files, the --data dir, kobo audit --data):
                        it runs on sqlite only
  own_shards            the test passes --shards N to make_server itself

Teardown stops each server with SIGTERM, asserts it exits 0 and that its
stderr holds no AddressSanitizer / LeakSanitizer / UBSan "runtime error" line.
A failing test's report carries the tail of each live server's stderr.
"""
import itertools
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import kobotest  # noqa: E402
import pgcluster  # noqa: E402

BACKENDS = ("sqlite", "pg1", "pg2")
PG_BACKENDS = ("pg1", "pg2")
UNSELECTED = "unselected"   # a test none of the selected backends runs: deselected
SERVER_FIXTURES = {"server", "make_server", "shared_server", "shared_sharded_server"}


def pytest_addoption(parser):
    parser.addoption("--backends", default=None,
                     help="comma-separated store backends of the system tests: "
                          "sqlite,pg1,pg2 (default $KOBO_TEST_BACKENDS, else all three)")


def pytest_configure(config):
    config.addinivalue_line("markers", "embedded_only(reason): the test is about the embedded "
                                       "SQLite store itself; it runs on the sqlite backend only")
    config.addinivalue_line("markers", "own_shards: the test passes --shards N to make_server "
                                       "itself; it runs on sqlite and once on PostgreSQL ([pg])")


def selected_backends(config):
    text = config.getoption("--backends") or os.environ.get("KOBO_TEST_BACKENDS") or ",".join(BACKENDS)
    names = [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in names if b not in BACKENDS]
    if bad or not names:
        raise pytest.UsageError(f"--backends / KOBO_TEST_BACKENDS: expected a comma-separated "
                                f"subset of {','.join(BACKENDS)}, saw {text!r}")
    return [b for b in BACKENDS if b in names]


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    selected = selected_backends(metafunc.config)
    node = metafunc.definition
    if node.get_closest_marker("embedded_only"):
        params = [b for b in selected if b == "sqlite"]
    elif node.get_closest_marker("own_shards") or "shared_sharded_server" in metafunc.fixturenames:
        params = [b for b in selected if b == "sqlite"]
        if any(b in PG_BACKENDS for b in selected):
            params.append("pg")
    else:
        params = selected
    metafunc.parametrize("backend", params or [UNSELECTED], indirect=True, scope="module")


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("embedded_only")
        if marker is not None and not (marker.args and str(marker.args[0]).strip()):
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.embedded_only needs its "
                                    f"reason (one line)")
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend") == UNSELECTED:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# ----------------------------------------------------------- PostgreSQL ----

class PgDatabases:
    """The session's PostgreSQL cluster and the databases made on it: one
    login role per server (not superuser, no other rights), owning one
    database per shard."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.counter = itertools.count(1)

    def create(self, shards):
        name = f"kobo_{os.getpid()}_{next(self.counter)}"
        self.cluster.psql(f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
        uris = []
        for s in range(shards):
            db = f"{name}_s{s}"
            self.cluster.psql(f'CREATE DATABASE "{db}" OWNER "{name}"')
            uris.append(self.cluster.uri(db, name))
        return uris


@pytest.fixture(scope="session")
def pg_databases(tmp_path_factory):
    if not pgcluster.available():
        pytest.fail("PostgreSQL server binaries not found: `make test-deps` installs the "
                    "postgresql package (or run with --backends sqlite)", pytrace=False)
    with pgcluster.Cluster(tmp_path_factory.mktemp("pg-suite"), "suite") as cluster:
        cluster.start()
        yield PgDatabases(cluster)


class Backend:
    """Makes kobotest.Server objects on one backend."""

    def __init__(self, name, databases=None):
        self.name = name
        self.databases = databases   # PgDatabases on a PostgreSQL backend

    @property
    def is_pg(self):
        return self.name != "sqlite"

    def server(self, workdir, extra_args=()):
        extra_args = list(extra_args)
        if not self.is_pg:
            return kobotest.Server(workdir, extra_args)
        asked = kobotest.shards_in_args(extra_args, default=None)
        if self.name == "pg":
            shards = asked or 1
        else:
            if asked is not None:
                pytest.fail(f"a test on backend {self.name} passes --shards {asked}: mark it "
                            f"@pytest.mark.own_shards", pytrace=False)
            shards = 1 if self.name == "pg1" else 2
        return kobotest.Server(workdir, extra_args, postgres=self.databases.create(shards))


@pytest.fixture(scope="module")
def backend(request):
    if request.param == "sqlite":
        return Backend("sqlite")
    return Backend(request.param, request.getfixturevalue("pg_databases"))


# ------------------------------------------------------------- servers ----

@pytest.fixture
def make_server(tmp_path, backend):
    servers = []

    def make(*extra_args, start=True):
        workdir = tmp_path / f"kobod{len(servers)}"
        workdir.mkdir()
        srv = backend.server(workdir, extra_args)
        servers.append(srv)
        kobotest.ACTIVE.append(srv)
        if start:
            srv.start()
        return srv

    yield make
    kobotest.finish_servers(servers)


@pytest.fixture
def server(make_server):
    return make_server()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory, backend):
    workdir = tmp_path_factory.mktemp("kobod-shared")
    srv = backend.server(workdir)
    kobotest.ACTIVE.append(srv)
    srv.start()
    yield srv
    kobotest.finish_servers([srv])


@pytest.fixture(scope="module")
def shared_sharded_server(tmp_path_factory, backend):
    workdir = tmp_path_factory.mktemp("kobod-sharded")
    srv = backend.server(workdir, ["--shards", str(kobotest.SHARDS_DEFAULT)])
    kobotest.ACTIVE.append(srv)
    srv.start()
    yield srv
    kobotest.finish_servers([srv])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for srv in list(kobotest.ACTIVE):
            report.sections.append((f"kobod stderr tail ({srv.log_path})", srv.tail(40)))
