"""
test_monitoring.py — the monitoring in deploy/ against the real programs.

1. Every PromQL expression of the rules (deploy/prometheus/rules/) and of the
   dashboard (deploy/grafana/kobo.json) parses: they are written into a
   temporary rules file as recording rules and `promtool check rules` reads it.
2. Every metric name they use exists: kobo_* names in the /metrics of a real
   kobod (build/asan/kobod, 2 shards, after a few requests including a
   cross-shard transfer; and a kobod on PostgreSQL with --postgres-read, for
   the replica metrics) or in the file `kobo audit --metrics-file` writes
   on its data, haproxy_* names in a real HAProxy's exporter (loopback, in
   front of that kobod), pg_* names in postgres-exporter with
   deploy/prometheus/postgres-exporter-queries.yml on a throw-away primary
   and its streaming standby (pg_replication_is_replica 0 and 1); recorded
   names (level:metric:op) are defined by a recording rule. No allow-list:
   every name is seen exported.
3. Every alert has severity, summary and a runbook of at most two lines, and
   deploy/prometheus/tests/ has a case where it fires and one where it is
   silent (the unit tests themselves run in `make test-rules`).

Every process started here is stopped by pid, also on failure.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "system"))
import kobotest  # noqa: E402
import pgcluster  # noqa: E402

PROM = os.path.join(ROOT, "deploy", "prometheus")
RULE_FILES = [os.path.join(PROM, "rules", f) for f in sorted(os.listdir(os.path.join(PROM, "rules")))
              if f.endswith(".yml")]
TEST_FILES = [os.path.join(PROM, "tests", f) for f in sorted(os.listdir(os.path.join(PROM, "tests")))
              if f.endswith(".test.yml")]
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "kobo.json")
EXPORTER_QUERIES = os.path.join(PROM, "postgres-exporter-queries.yml")


TIMEOUT_S = 30.0


# ---------------------------------------------------------------- sources --

def rules():
    """(file, rule) for every rule of every group."""
    out = []
    for path in RULE_FILES:
        with open(path) as f:
            doc = yaml.safe_load(f)
        for group in doc["groups"]:
            for rule in group["rules"]:
                out.append((os.path.basename(path), rule))
    return out


def dashboard_exprs():
    """(where, expr) for every target and annotation query of the dashboard."""
    with open(DASHBOARD) as f:
        dash = json.load(f)
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((f"panel {p['title']!r} {t['refId']}", t["expr"]))
            walk(p.get("panels", []))
    walk(dash["panels"])
    for a in dash.get("annotations", {}).get("list", []):
        if "expr" in a:
            out.append((f"annotation {a['name']!r}", a["expr"]))
    return out


def all_exprs():
    return ([(f"{file}: {r.get('record') or r.get('alert')}", r["expr"]) for file, r in rules()] +
            dashboard_exprs())


STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
NAME_RE = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr):
    """The metric names an expression reads: identifiers outside strings that
    look like our sources' metrics or recorded series (a ':' in the name).
    Label names (route, shard, le, ...) and functions never match."""
    names = set()
    for token in NAME_RE.findall(STRING_RE.sub('""', expr)):
        if token.startswith(("kobo_", "haproxy_", "pg_")) or ":" in token:
            names.add(token)
    return names


# ---------------------------------------------------------------- 1. parse --

def test_every_expression_parses(tmp_path):
    exprs = all_exprs()
    assert len(exprs) > 30, f"expected the rules and the dashboard's expressions, found {len(exprs)}"
    for where, expr in exprs:
        assert "$" not in expr, f"{where}: a Grafana variable in PromQL cannot be checked: {expr}"
    doc = {"groups": [{"name": "check", "rules": [
        {"record": f"check:expr_{i}", "expr": expr} for i, (_, expr) in enumerate(exprs)]}]}
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(doc))
    r = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True,
                       timeout=TIMEOUT_S)
    assert r.returncode == 0, (
        "promtool check rules on every expression: expected success, saw\n" + r.stdout + r.stderr +
        "\nexpressions:\n" + "\n".join(f"  {i}: {w}: {e}" for i, (w, e) in enumerate(exprs)))
    bad = subprocess.run(["promtool", "check", "rules", "/dev/stdin"], input=yaml.safe_dump(
        {"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(kobo_x[1m])"}]}]}),
        capture_output=True, text=True, timeout=TIMEOUT_S)
    assert bad.returncode != 0, "promtool accepted an unbalanced expression: this check checks nothing"


# ---------------------------------------------------------------- 2. names --

def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200, f"GET {url}: expected 200, saw {r.status}"
        text = r.read().decode()
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    return names, text


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_scrape(url, proc, what):
    deadline = time.monotonic() + TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited with status {proc.returncode}"
        try:
            return scrape(url)
        except OSError as e:
            last = e
        time.sleep(0.2)
    pytest.fail(f"{what}: {url} did not answer within {TIMEOUT_S:.0f} s ({last})")


def kobod_names(tmp_path):
    (tmp_path / "kobod").mkdir()
    srv = kobotest.Server(tmp_path / "kobod", ["--shards", "2"])
    kobotest.ACTIVE.append(srv)
    try:
        srv.start()
        c = srv.client
        accounts = [kobotest.uid("acc") for _ in range(8)]
        for a in accounts:
            kobotest.expect_status(c.post("/v1/accounts", {"id": a, "currency": "NGN",
                                                          "allow_negative": True}), 201)
        for a in accounts[1:]:
            kobotest.expect_status(c.post("/v1/transfers", {
                "id": kobotest.uid("tx"), "from": accounts[0], "to": a, "amount": 5,
                "currency": "NGN"}), (201, 202))
        kobotest.expect_status(c.post("/v1/transfers", {
            "id": kobotest.uid("hold"), "from": accounts[0], "to": accounts[1], "amount": 5,
            "currency": "NGN", "pending": True, "timeout_seconds": 1}), 201)
        kobotest.expect_status(c.get("/v1/accounts/" + kobotest.uid("none")), 404)
        names, text = scrape(srv.url + "/metrics")
        m = re.search(r'^kobo_sagas_finished_total\{outcome="posted"\} (\d+)$', text, re.M)
        assert m and int(m.group(1)) >= 1, (
            "expected at least one cross-shard transfer (a posted saga) among 7 transfers "
            "from one account to 7 others on 2 shards; /metrics says:\n" + (m.group(0) if m else "none"))
        haproxy = haproxy_names(tmp_path, srv.port)
    finally:
        kobotest.finish_servers([srv])
    # kobo audit's verdict for Prometheus (alerts KoboAudit*).
    prom = tmp_path / "kobo-audit.prom"
    p = subprocess.run([kobotest.binary("kobo"), "audit", *srv.store_args(), "--metrics-file", str(prom)],
                       capture_output=True, text=True, timeout=120, env=kobotest.child_env())
    assert p.returncode == 0, f"kobo audit --metrics-file: expected exit 0, saw {p.returncode}\n{p.stdout}{p.stderr}"
    for line in prom.read_text().splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    return names, haproxy


HAPROXY_CFG = """
global
    pidfile {dir}/haproxy.pid
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend kobo
    bind 127.0.0.1:{front}
    default_backend kobod
backend kobod
    option httpchk GET /readyz
    http-check expect status 200
    default-server check inter 200ms
    server kobod-1 127.0.0.1:{kobod}
frontend stats
    bind 127.0.0.1:{stats}
    http-request use-service prometheus-exporter if {{ path /metrics }}
"""


def haproxy_names(tmp_path, kobod_port):
    """The series names of a real HAProxy (the fleet's version, Debian's) with
    a backend "kobod" checking /readyz, as deploy/haproxy/haproxy.cfg has."""
    d = tmp_path / "haproxy"
    d.mkdir()
    stats = kobotest.free_port()
    (d / "haproxy.cfg").write_text(HAPROXY_CFG.format(
        dir=d, front=kobotest.free_port(), stats=stats, kobod=kobod_port))
    proc = subprocess.Popen([shutil.which("haproxy") or "/usr/sbin/haproxy", "-db",
                             "-f", str(d / "haproxy.cfg")],
                            stdout=subprocess.DEVNULL, stderr=open(d / "haproxy.log", "wb"))
    try:
        url = f"http://127.0.0.1:{stats}/metrics"
        wait_scrape(url, proc, "haproxy")
        deadline = time.monotonic() + TIMEOUT_S
        while True:  # the check marks kobod-1 UP after its first /readyz
            names, text = scrape(url)
            if re.search(r'^haproxy_backend_active_servers\{proxy="kobod"\} 1$', text, re.M):
                return names
            assert time.monotonic() < deadline, "haproxy never saw kobod-1 ready:\n" + text[:2000]
            time.sleep(0.2)
    finally:
        stop(proc)


def exporter_names(tmp_path, name, uri, is_replica):
    """The series names of prometheus-postgres-exporter (the fleet's) with our
    extra queries on one node; checks pg_replication_is_replica says what
    the node is."""
    port = kobotest.free_port()
    log = tmp_path / f"exporter-{name}.log"
    env = dict(os.environ, DATA_SOURCE_NAME=uri + ("&" if "?" in uri else "?") + "sslmode=disable")
    proc = subprocess.Popen(["prometheus-postgres-exporter",
                             f"--web.listen-address=127.0.0.1:{port}",
                             f"--extend.query-path={EXPORTER_QUERIES}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        names, text = wait_scrape(f"http://127.0.0.1:{port}/metrics", proc, "postgres-exporter")
        assert re.search(r"^pg_up 1$", text, re.M), \
            f"postgres-exporter cannot reach the {name}:\n" + log.read_text()[-2000:]
        assert re.search(r"^pg_replication_is_replica\{[^}]*\} %d$" % is_replica, text, re.M), (
            f"expected pg_replication_is_replica {is_replica} on the {name}; saw:\n" +
            "\n".join(l for l in text.splitlines() if "pg_replication" in l))
        return names
    finally:
        stop(proc)


def postgres_names(tmp_path):
    """A PostgreSQL primary and a streaming standby: the names of a kobod
    reading the standby (--postgres-read: the replica metrics) and of
    postgres-exporter on each node."""
    with pgcluster.Cluster(tmp_path, "primary") as primary, \
            pgcluster.Cluster(tmp_path, "standby") as standby:
        primary.start()
        uri = primary.create_role_and_db("kobo")
        standby.replica(primary, sync=False)
        standby.wait_replayed(primary.current_lsn(), timeout=TIMEOUT_S)
        replica_uri = uri.replace(f":{primary.port}/", f":{standby.port}/")
        (tmp_path / "kobod-pg").mkdir()
        srv = kobotest.Server(tmp_path / "kobod-pg", ["--postgres-read", replica_uri], postgres=[uri])
        kobotest.ACTIVE.append(srv)
        try:
            srv.start()
            kobotest.expect_status(srv.client.get("/v1/accounts/" + kobotest.uid("none")), 404)
            kobo, text = scrape(srv.url + "/metrics")
            assert re.search(r'^kobo_replica_reads_total\{shard="0",served="\w+"\} 1$', text, re.M), (
                "expected the GET counted as a read of shard 0, which has a replica; saw:\n" +
                "\n".join(l for l in text.splitlines() if "replica" in l))
        finally:
            kobotest.finish_servers([srv])
        pg = exporter_names(tmp_path, "primary", uri, 0) | exporter_names(tmp_path, "standby", replica_uri, 1)
    return kobo, pg


def test_every_metric_name_is_exported(tmp_path):
    used = {}
    for where, expr in all_exprs():
        for name in metric_names(expr):
            used.setdefault(name, []).append(where)
    assert any(n.startswith("kobo_") for n in used), "no kobo_* name found: the extraction is broken"

    recorded = {r["record"] for _, r in rules() if "record" in r}
    kobo, haproxy = kobod_names(tmp_path)
    kobo_pg, pg = postgres_names(tmp_path)
    kobo |= kobo_pg

    missing = []
    for name, where in sorted(used.items()):
        if ":" in name:
            ok = name in recorded
        elif name.startswith("kobo_"):
            ok = name in kobo
        elif name.startswith("haproxy_"):
            ok = name in haproxy
        else:
            ok = name in pg
        if not ok:
            missing.append(f"  {name} (used by {', '.join(where[:3])})")
    assert not missing, "metric names used but not exported (or not recorded):\n" + "\n".join(missing)


# ---------------------------------------------------------------- 3. alerts --

def test_every_alert_has_annotations_and_tests():
    alerts = [r for _, r in rules() if "alert" in r]
    assert len(alerts) >= 15, f"expected the alert set of deploy/README.md, found {len(alerts)}"
    fired, silent = set(), set()
    for path in TEST_FILES:
        with open(path) as f:
            doc = yaml.safe_load(f)
        for t in doc["tests"]:
            for case in t.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    problems = []
    for a in alerts:
        name = a["alert"]
        if a.get("labels", {}).get("severity") not in ("page", "ticket"):
            problems.append(f"{name}: severity must be page or ticket")
        ann = a.get("annotations", {})
        if not ann.get("summary"):
            problems.append(f"{name}: no summary")
        runbook = ann.get("runbook", "")
        if not runbook or len(runbook) > 320:
            problems.append(f"{name}: runbook missing or longer than two lines ({len(runbook)} chars)")
        if name not in fired:
            problems.append(f"{name}: no unit test where it fires")
        if name not in silent:
            problems.append(f"{name}: no unit test where it stays silent")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- 4. dashboard --

def test_dashboard_is_importable():
    """What Grafana needs to import kobo.json without questions: a uid and a
    title, the `datasource` variable every query names, unique panel ids and
    refIds, panels inside the 24-column grid and not on top of each other."""
    with open(DASHBOARD) as f:
        dash = json.load(f)
    assert dash.get("uid") and dash.get("title") and dash.get("schemaVersion"), dash.keys()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables.get("datasource", {}).get("type") == "datasource" and \
        variables["datasource"].get("query") == "prometheus", variables
    ids, cells, problems = set(), {}, []
    for p in dash["panels"]:
        if p["id"] in ids:
            problems.append(f"panel id {p['id']} twice")
        ids.add(p["id"])
        g = p["gridPos"]
        if g["x"] < 0 or g["w"] <= 0 or g["x"] + g["w"] > 24 or g["h"] <= 0:
            problems.append(f"{p['title']!r} outside the grid: {g}")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problems.append(f"{p['title']!r} overlaps {cells[(x, y)]!r}")
                    break
                cells[(x, y)] = p["title"]
            else:
                continue
            break
        if p["type"] == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{p['title']!r}: datasource is not the variable")
        refs = [t["refId"] for t in p.get("targets", [])]
        if not refs or len(refs) != len(set(refs)):
            problems.append(f"{p['title']!r}: no targets or a refId twice: {refs}")
    assert not problems, "\n".join(problems)
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for want in ("throughput", "latency", "batch sizes", "queue depth", "sagas by state",
                 "replica lag", "4xx / 5xx", "rate-limited", "commit latency"):
        assert want in titles, f"the dashboard has no {want!r} panel (issue 13)"
