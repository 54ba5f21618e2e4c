"""
test_events.py — the journey of a payment (API.md "The journey of a
payment"): GET /v1/transfers/{id}/events and GET /v1/transfers?request_id=,
on a real `kobod --shards 2 --node-name …` (SQLite and PostgreSQL).

Driven with a chosen X-Request-Id and traceparent: a local transfer, a hold
that is posted, a hold that expires, a cross-shard transfer and a
cross-shard hold that is posted; each shows every step in order with its
shard, node, request id and trace id; a retry shows `replayed`; a saga
held mid-way and kobod killed -9 finishes after the restart in the
original trace; an unknown id is 404; the transfers a request created are
listed, paged, on every shard; `kobo trace` shows a transfer or a request (text and --json, with
--logs), exit 1 when nothing is found. A hold retried 300 times (one `replayed` each) and
then posted shows every event to the post, in one default page or in pages of any size
(`limit`, `after` = the `next` cursor; local and cross-shard), and `kobo trace` follows the
pages (the replays folded into one line of text); against a stand-in server whose journey
never ends it stops at its bound (100,000 events) and says so.
"""
import contextlib
import http.server
import json
import os
import sqlite3
import subprocess
import threading
import time
import urllib.parse

import pytest

import pgcluster
from kobotest import (binary, child_env, cli, expect_error, expect_status, id_on_shard,
                      make_account, parallel_map, uid,
                      wait_until)

SHARDS = 2
NODE = "node-events-1"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def rid(prefix):
    """A fresh request id (X-Request-Id's alphabet has no ':')."""
    return uid(prefix).replace(":", "-")


def headers(request_id):
    return {"X-Request-Id": request_id,
            "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}


def events(srv, tid):
    r = expect_status(srv.get(f"/v1/transfers/{tid}/events"), 200, f"events of {tid}")
    return r.body["data"]


def kinds(evs):
    return [(e["event"], e["shard"]) for e in evs]


def transfer(srv, tid, src, dst, amount, request_id, **extra):
    body = {"id": tid, "from": src, "to": dst, "amount": amount, "currency": "NGN", **extra}
    return srv.post("/v1/transfers", body, headers=headers(request_id))


@pytest.mark.own_shards
def test_every_step_of_a_payment_is_an_event(make_server):
    srv = make_server("--shards", str(SHARDS), "--node-name", NODE)
    a0 = id_on_shard("a", 0, SHARDS)
    b0 = id_on_shard("b", 0, SHARDS)
    c1 = id_on_shard("c", 1, SHARDS)
    for acct in (a0, b0, c1):
        make_account(srv, acct, allow_negative=True)
    req = rid("req")

    # A local transfer, and its retry.
    t_local = uid("tl")
    expect_status(transfer(srv, t_local, a0, b0, 100, req), 201)
    expect_status(transfer(srv, t_local, a0, b0, 100, rid("retry")), 200)
    evs = events(srv, t_local)
    assert kinds(evs) == [("created", 0), ("replayed", 0)], evs
    first = evs[0]
    assert first["node"] == NODE and first["request_id"] == req, first
    assert first["trace_id"] == TRACE and first["key_id"] is None, first
    assert first["leg"] == "local" and first["status"] == "posted" and first["amount"] == 100
    assert first["transfer_id"] == t_local and first["at"].endswith("Z")
    assert evs[1]["request_id"] != req and evs[1]["at_ms"] >= first["at_ms"]

    # A hold that is posted in part.
    t_hold = uid("th")
    expect_status(transfer(srv, t_hold, a0, b0, 300, req, pending=True), 201)
    expect_status(srv.post(f"/v1/transfers/{t_hold}/post", {"amount": 120},
                           headers=headers(rid("post"))), 200)
    evs = events(srv, t_hold)
    assert kinds(evs) == [("reserved", 0), ("posted", 0)], evs
    assert evs[0]["status"] == "pending" and evs[1]["amount"] == 120

    # A hold that expires (the expiry scan's request id is "expiry").
    t_exp = uid("tx")
    expect_status(transfer(srv, t_exp, a0, b0, 50, req, pending=True, timeout_seconds=1), 201)
    assert wait_until(lambda: len(events(srv, t_exp)) == 2, timeout=10), events(srv, t_exp)
    evs = events(srv, t_exp)
    assert kinds(evs) == [("reserved", 0), ("expired", 0)], evs
    assert evs[1]["request_id"] == "expiry" and evs[1]["status"] == "voided"

    # A cross-shard transfer: reserved on A, credited on B, settled on A.
    t_x = uid("tc")
    expect_status(transfer(srv, t_x, a0, c1, 70, req), 201)
    assert wait_until(lambda: len(events(srv, t_x)) == 3, timeout=10), events(srv, t_x)
    evs = events(srv, t_x)
    assert kinds(evs) == [("reserved", 0), ("credited", 1), ("settled", 0)], evs
    assert [e["leg"] for e in evs] == ["debit", "credit", "debit"]
    assert all(e["node"] == NODE and e["request_id"] == req for e in evs), evs
    # Every step, the runner's on B and on A included, in the request's trace.
    assert all(e["trace_id"] == TRACE for e in evs), evs
    assert evs[2]["status"] == "posted"
    # So are the runner's log lines of its steps.
    steps = [json.loads(line) for line in srv.log_text().splitlines()
             if '"saga_step"' in line and t_x in line]
    assert steps and all(rec["trace_id"] == TRACE and rec["request_id"] == req
                         for rec in steps), steps
    assert [e["at_ms"] for e in evs] == sorted(e["at_ms"] for e in evs)

    # A cross-shard hold that is posted: the post asks B, B posts, A settles.
    t_xh = uid("tch")
    expect_status(transfer(srv, t_xh, a0, c1, 90, req, pending=True), 201)
    assert wait_until(lambda: len(events(srv, t_xh)) == 3, timeout=10), events(srv, t_xh)
    r = srv.post(f"/v1/transfers/{t_xh}/post", None, headers=headers(rid("xpost")))
    assert r.status in (200, 202), r
    assert wait_until(lambda: len(events(srv, t_xh)) == 6, timeout=10), events(srv, t_xh)
    evs = events(srv, t_xh)
    assert kinds(evs) == [("reserved", 0), ("credited", 1), ("settled", 0),
                          ("post_asked", 0), ("posted", 1), ("settled", 0)], evs
    assert evs[1]["status"] == "pending" and evs[5]["status"] == "posted"
    assert all(e["trace_id"] == TRACE for e in evs), evs

    # Unknown: 404.
    expect_error(srv.get(f"/v1/transfers/{uid('nope')}/events"), 404, "transfer_not_found")

    # The transfers the request created, every shard, paged.
    seen = []
    after = None
    for _ in range(10):
        path = f"/v1/transfers?request_id={req}&limit=2" + (f"&after={after}" if after else "")
        page = expect_status(srv.get(path), 200, path).body
        assert len(page["data"]) <= 2
        seen += [t["id"] for t in page["data"]]
        after = page["next"]
        if after is None:
            break
    assert sorted(seen) == sorted([t_local, t_hold, t_exp, t_x, t_xh]), seen
    assert all(t["request_id"] == req
               for t in srv.get(f"/v1/transfers?request_id={req}").body["data"])
    empty = expect_status(srv.get(f"/v1/transfers?request_id={rid('none')}"), 200).body
    assert empty == {"data": [], "next": None}
    expect_error(srv.get("/v1/transfers"), 400, "invalid_request")
    expect_error(srv.get("/v1/transfers?request_id=a%20b"), 400, "invalid_request")
    expect_error(srv.get(f"/v1/transfers?request_id={req}&after=x"), 400, "invalid_request")


@pytest.mark.own_shards
def test_kobo_trace_shows_a_transfer_or_a_request(make_server, tmp_path):
    srv = make_server("--shards", str(SHARDS), "--node-name", NODE)
    a0 = id_on_shard("a", 0, SHARDS)
    c1 = id_on_shard("c", 1, SHARDS)
    for acct in (a0, c1):
        make_account(srv, acct, allow_negative=True)
    req = rid("req")
    t_x = uid("tc")
    t_l = uid("tl")
    expect_status(transfer(srv, t_x, a0, c1, 70, req), 201)
    expect_status(transfer(srv, t_l, c1, c1, 5, req), 422)  # recorded as rejected
    assert wait_until(lambda: len(events(srv, t_x)) == 3, timeout=10), events(srv, t_x)

    # By transfer id, as JSON: every event carries its shard.
    r = cli(srv, "trace", t_x, json_out=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["found_as"] == "transfer"
    assert [(e["event"], e["shard"]) for e in out["events"]] == \
        [("reserved", 0), ("credited", 1), ("settled", 0)], out
    assert out["transfers"][0]["status"] == "posted"

    # By request id, as text: both transfers, durations, the final states.
    r = cli(srv, "trace", req)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "request id" in lines[0], r.stdout
    body = "\n".join(lines)
    for word in ("reserved", "credited", "settled", "rejected", NODE, req, "+"):
        assert word in body, r.stdout
    assert f"final: {t_x} posted" in body and f"final: {t_l} rejected" in body, r.stdout

    # With --logs: the node's JSON log lines of that request, merged in.
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "node-1.log").write_text(srv.log_text())
    r = cli(srv, "trace", t_x, "--logs", str(logs), json_out=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["logs"], out
    assert all(req in (l.get("request_id"), l.get("transfer_id")) or
               l.get("transfer_id") == t_x for l in out["logs"]), out["logs"]
    assert any(l.get("event") == "http_request" for l in out["logs"]), out["logs"]
    assert [l["ts"] for l in out["logs"]] == sorted(l["ts"] for l in out["logs"])

    # Nothing found: exit 1.
    r = cli(srv, "trace", rid("nothing"))
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)


@contextlib.contextmanager
def payee_shard_held(srv):
    """Shard 1 cannot commit while this holds: its SQLite file's write lock,
    or (PostgreSQL) an EXCLUSIVE lock on its meta table, which every batch
    updates, held by a psql of ours for at most 12 s."""
    if srv.postgres:
        proc = subprocess.Popen(
            [pgcluster._bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", srv.postgres[1], "-c",
             "BEGIN; LOCK TABLE kobo_shard_1.meta IN EXCLUSIVE MODE; SELECT pg_sleep(12); COMMIT;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)  # the lock is taken
            yield
        finally:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return
    lock = sqlite3.connect(os.path.join(srv.data, "shard-1.db"), timeout=10, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        yield
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()


@pytest.mark.own_shards
def test_a_saga_resumed_after_kill9_keeps_its_trace(make_server):
    """A cross-shard transfer held mid-saga (the payee shard cannot commit),
    kobod killed -9: after the restart the saga finishes, the journey shows
    every step in order, and every event and saga_step line carries the
    request id and trace id of the request that created it."""
    # --journal off: the lever is the SQLite file's write lock, which only the
    # SQLite-only path takes per batch (the journaled store's saga steps are
    # held and resumed in test_journal.py and test_crash.py).
    srv = make_server("--shards", str(SHARDS), "--node-name", NODE, "--journal", "off")
    a0 = id_on_shard("a", 0, SHARDS)
    c1 = id_on_shard("c", 1, SHARDS)
    for acct in (a0, c1):
        make_account(srv, acct, allow_negative=True)
    req = rid("crash")
    tid = uid("tk")

    def step_lines():
        return [json.loads(line) for line in srv.log_text().splitlines()
                if '"saga_step"' in line and tid in line]
    with payee_shard_held(srv):
        expect_status(transfer(srv, tid, a0, c1, 40, req), 202)
        failed = wait_until(lambda: [x for x in step_lines() if x["outcome"] == "store_failed"], 15)
        assert failed, f"the CREDIT step of {tid} was never tried: {step_lines()}"
        assert [e["event"] for e in events(srv, tid)] == ["reserved"]
        srv.kill9()
    srv.start(port=srv.port)
    assert wait_until(lambda: len(events(srv, tid)) == 3, 20), events(srv, tid)
    evs = events(srv, tid)
    assert kinds(evs) == [("reserved", 0), ("credited", 1), ("settled", 0)], evs
    assert all(e["trace_id"] == TRACE and e["request_id"] == req for e in evs), evs
    assert [e["at_ms"] for e in evs] == sorted(e["at_ms"] for e in evs)
    lines = step_lines()
    assert any(x["outcome"] == "created" for x in lines), lines
    assert all(x["trace_id"] == TRACE and x["request_id"] == req for x in lines), lines


# ---- Many retries: the end of the journey is never left out (issue 13). ----

RETRIES = 300   # more than the 256 events a shard's read once stopped at
KINDS = {"created", "reserved", "rejected", "replayed", "credited", "credit_refused", "settled",
         "compensated", "post_asked", "void_asked", "posted", "voided", "expired"}


def retried_hold(srv, src, dst, amount, retries=RETRIES):
    """A hold, then the same create sent `retries` more times (4 at a time),
    each answered 200 replayed: one `replayed` event each."""
    tid = uid("tr")
    expect_status(transfer(srv, tid, src, dst, amount, rid("hold"), pending=True), 201)
    answers = parallel_map(
        lambda _: transfer(srv, tid, src, dst, amount, rid("again"), pending=True),
        range(retries), threads=4)
    bad = [a for a in answers if isinstance(a, Exception) or a.status != 200]
    assert not bad, f"{len(bad)} retries were not replayed, e.g. {bad[:3]}"
    return tid


def all_pages(srv, tid, limit):
    """Every event of tid, `limit` a page, following "next"; (events, pages)."""
    out, after, pages = [], None, 0
    while True:
        path = f"/v1/transfers/{tid}/events?limit={limit}" + (f"&after={after}" if after else "")
        page = expect_status(srv.get(path), 200, path).body
        pages += 1
        assert set(page) == {"data", "next"}, page
        assert 0 < len(page["data"]) <= limit or (pages == 1 and not page["data"]), \
            f"{path}: {len(page['data'])} events"
        out += page["data"]
        after = page["next"]
        if after is None:
            return out, pages
        assert pages < 1000, f"{path}: still a next page after 1000"


def summary(evs):
    """[(event, shard, count)] of runs: a readable failure message."""
    runs = []
    for e in evs:
        if runs and runs[-1][:2] == (e["event"], e["shard"]):
            runs[-1] = (e["event"], e["shard"], runs[-1][2] + 1)
        else:
            runs.append((e["event"], e["shard"], 1))
    return runs


def test_events_after_many_retries_end_with_the_post(make_server):
    """A hold retried 300 times, then posted: the events answer holds the
    reservation, every replay and the post at the end, in one default page
    or in pages of any size; `kobo trace` shows the post and the final
    state (text folds the replays)."""
    srv = make_server("--node-name", NODE)
    a = id_on_shard("a", 0, srv.shards)
    b = id_on_shard("b", 0, srv.shards)
    for acct in (a, b):
        make_account(srv, acct, allow_negative=True)
    tid = retried_hold(srv, a, b, 500)
    expect_status(srv.post(f"/v1/transfers/{tid}/post", {"amount": 200},
                           headers=headers(rid("post"))), 200)
    want = [("reserved", 0)] + [("replayed", 0)] * RETRIES + [("posted", 0)]

    body = expect_status(srv.get(f"/v1/transfers/{tid}/events"), 200).body
    evs = body["data"]
    assert kinds(evs) == want, summary(evs)
    assert body["next"] is None, body["next"]
    assert evs[-1]["status"] == "posted" and evs[-1]["amount"] == 200, evs[-1]
    assert [e["seq"] for e in evs] == sorted(e["seq"] for e in evs)

    # Pages of any size give the same events, each once, in the same order.
    for limit in (1, 7, 100, 1000):
        paged, pages = all_pages(srv, tid, limit)
        assert paged == evs, (limit, summary(paged))
        assert pages == -(-len(evs) // limit), (limit, pages)
    # A page that leaves events out says so.
    first = expect_status(srv.get(f"/v1/transfers/{tid}/events?limit=10"), 200).body
    assert len(first["data"]) == 10 and isinstance(first["next"], str), first

    # Bad paging: a clear 400 naming the parameter.
    base = f"/v1/transfers/{tid}/events"
    for query, field in (("limit=0", "limit"), ("limit=1001", "limit"), ("limit=x", "limit"),
                         ("limit=5&limit=5", "limit"), ("after=x", "after"),
                         ("after=1.2", "after"), ("after=1.2.3.4", "after"),
                         ("after=-1.0.0", "after"), ("after=1.0.2", "after"),
                         ("color=red", "color")):
        expect_error(srv.get(f"{base}?{query}"), 400, "invalid_request", what=query, field=field)
    # A local transfer keeps its events on one shard: a cursor naming a
    # position on a second one is not a cursor this endpoint gave.
    expect_error(srv.get(f"{base}?after=5.3.0"), 400, "invalid_request", field="after")

    # kobo trace follows the pages: the post and the final state.
    r = cli(srv, "trace", tid, json_out=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert kinds(out["events"]) == want, summary(out["events"])
    assert out["truncated"] is False, out["truncated"]
    assert out["transfers"][0]["status"] == "posted", out["transfers"]
    assert out["transfers"][0]["posted_amount"] == 200, out["transfers"]
    r = cli(srv, "trace", tid)
    assert r.returncode == 0, r.stderr
    assert f"final: {tid} posted posted_amount 200 of 500" in r.stdout, r.stdout
    lines = r.stdout.splitlines()
    assert f"{RETRIES + 2} events" in lines[0], lines[0]
    steps = [word for line in lines[2:] if not line.startswith("final:")
             for word in line.split() if word in KINDS]
    assert steps == ["reserved", "replayed", "posted"], r.stdout
    folded = [line for line in lines if " replayed " in line]
    assert len(folded) == 1 and f"x{RETRIES}" in folded[0], folded


@pytest.mark.own_shards
def test_events_of_a_retried_cross_shard_hold_page_across_both_shards(make_server):
    """A cross-shard hold retried 300 times, then posted: its events on the
    payer's shard (reserved, settled, the replays, post_asked, settled) and
    the payee's (credited, posted) merge into one journey, which pages of
    any size give whole: the cursor keeps a position on each shard."""
    srv = make_server("--shards", str(SHARDS), "--node-name", NODE)
    a0 = id_on_shard("a", 0, SHARDS)
    c1 = id_on_shard("c", 1, SHARDS)
    for acct in (a0, c1):
        make_account(srv, acct, allow_negative=True)
    tid = uid("tx")
    expect_status(transfer(srv, tid, a0, c1, 90, rid("hold"), pending=True), (201, 202))
    assert wait_until(lambda: len(events(srv, tid)) == 3, timeout=10), events(srv, tid)
    answers = parallel_map(
        lambda _: transfer(srv, tid, a0, c1, 90, rid("again"), pending=True),
        range(RETRIES), threads=4)
    bad = [x for x in answers if isinstance(x, Exception) or x.status != 200]
    assert not bad, f"{len(bad)} retries were not replayed, e.g. {bad[:3]}"
    r = srv.post(f"/v1/transfers/{tid}/post", None, headers=headers(rid("xpost")))
    assert r.status in (200, 202), r
    want = ([("reserved", 0), ("credited", 1), ("settled", 0)] + [("replayed", 0)] * RETRIES +
            [("post_asked", 0), ("posted", 1), ("settled", 0)])
    assert wait_until(lambda: len(events(srv, tid)) == len(want), timeout=10), \
        summary(events(srv, tid))
    evs = events(srv, tid)
    assert kinds(evs) == want, summary(evs)
    for limit in (1, 2, 3, 50):
        paged, _ = all_pages(srv, tid, limit)
        assert paged == evs, (limit, summary(paged))
    out = json.loads(cli(srv, "trace", tid, json_out=True).stdout)
    assert kinds(out["events"]) == want, summary(out["events"])
    assert out["transfers"][0]["status"] == "posted", out["transfers"]


class EndlessEvents(http.server.BaseHTTPRequestHandler):
    """A stand-in server whose transfer "tx:endless" has more events on
    every page: each page full (limit events) with a "next" cursor."""
    protocol_version = "HTTP/1.1"
    pages = 0

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        path = urllib.parse.unquote(url.path)
        if path == "/v1/transfers/tx:endless/events":
            type(self).pages += 1
            n = int(query.get("limit", ["1000"])[0])
            page = int(query.get("after", ["0.0.0"])[0].split(".")[0])
            body = {"data": [{"at": "2026-12-02T10:00:00.000Z", "at_ms": 0, "event": "replayed",
                              "shard": 0, "transfer_id": "tx:endless", "node": "n",
                              "request_id": f"r{page * n + i}"} for i in range(n)],
                    "next": f"{page + 1}.0.0"}
        elif path == "/v1/transfers/tx:endless":
            body = {"id": "tx:endless", "status": "pending", "amount": 5, "posted_amount": 0,
                    "currency": "NGN"}
        else:
            body = {"error": {"code": "not_found", "message": "no", "request_id": "x"}}
        data = json.dumps(body).encode()
        self.send_response(200 if "error" not in body else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_kobo_trace_stops_at_its_bound_and_says_so(tmp_path):
    """Against a server whose journey never ends, kobo trace follows pages
    up to its bound (100,000 events), then stops: it says so on stderr, in
    the text header, and with "truncated": true in --json."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EndlessEvents)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        r = subprocess.run([binary("kobo"), "--server", url, "--json", "trace", "tx:endless"],
                           capture_output=True, text=True, timeout=120, env=child_env())
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["truncated"] is True and len(out["events"]) == 100000, \
            (out["truncated"], len(out["events"]))
        assert EndlessEvents.pages == 100, EndlessEvents.pages
        assert "stopped at 100000 events" in r.stderr and "after=100.0.0" in r.stderr, r.stderr
        r = subprocess.run([binary("kobo"), "--server", url, "trace", "tx:endless"],
                           capture_output=True, text=True, timeout=120, env=child_env())
        assert r.returncode == 0, r.stderr
        assert "100000 events (stopped: more exist)" in r.stdout.splitlines()[0], r.stdout[:300]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
