"""
Fixtures for Kobo's system tests (helpers live in kobotest.py).

  server        a fresh kobod on a free port with an empty data dir, for one test
  make_server   factory: make_server("--connection-timeout", "2") -> Server;
                every server it made is stopped and checked at teardown
  shared_server one kobod per test module, for tests that only need their own
                uniquely named accounts (saves ASan start-ups)
  shared_sharded_server
                the same with `kobod --shards 4` (kobotest.SHARDS_DEFAULT):
                place accounts with kobotest.id_on_shard()

Teardown stops each server with SIGTERM, asserts it exits 0 and that its
stderr holds no AddressSanitizer / LeakSanitizer / UBSan "runtime error" line.
A failing test's report carries the tail of each live server's stderr.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import kobotest  # noqa: E402


def _finish(servers):
    problems = []
    for s in servers:
        problems += s.finish()
        if s in kobotest.ACTIVE:
            kobotest.ACTIVE.remove(s)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def make_server(tmp_path):
    servers = []

    def make(*extra_args, start=True):
        workdir = tmp_path / f"kobod{len(servers)}"
        workdir.mkdir()
        srv = kobotest.Server(workdir, extra_args)
        servers.append(srv)
        kobotest.ACTIVE.append(srv)
        if start:
            srv.start()
        return srv

    yield make
    _finish(servers)


@pytest.fixture
def server(make_server):
    return make_server()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("kobod-shared")
    srv = kobotest.Server(workdir)
    kobotest.ACTIVE.append(srv)
    srv.start()
    yield srv
    _finish([srv])


@pytest.fixture(scope="module")
def shared_sharded_server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("kobod-sharded")
    srv = kobotest.Server(workdir, ["--shards", str(kobotest.SHARDS_DEFAULT)])
    kobotest.ACTIVE.append(srv)
    srv.start()
    yield srv
    _finish([srv])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for srv in list(kobotest.ACTIVE):
            report.sections.append((f"kobod stderr tail ({srv.log_path})", srv.tail(40)))
