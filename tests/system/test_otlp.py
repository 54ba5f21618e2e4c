"""
test_otlp.py — kobod's traces over OTLP/HTTP (API.md "The journey of a
payment": OTEL_EXPORTER_OTLP_ENDPOINT; a request's traceparent trace id is
the trace id of its spans), against our own spec-checking receiver
(otlp_receiver.py).

Tracing does not touch the store, so these run on the embedded store only.
"""
import json
import os
import re
import socket
import sqlite3
import statistics
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import kobotest  # noqa: E402
from kobotest import expect_status, metrics, uid, wait_until  # noqa: E402
from otlp_receiver import OtlpReceiver  # noqa: E402

pytestmark = pytest.mark.embedded_only("tracing is the HTTP edge's; the store plays no part")

TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$")
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def receiver():
    r = OtlpReceiver().start()
    yield r
    r.stop()
    assert not r.errors, f"the receiver saw payloads that break the OTLP spec: {r.errors}"


@pytest.fixture
def traced(monkeypatch, make_server):
    """make a kobod with the given OTEL_* environment."""
    def make(*args, **env):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        try:
            return make_server(*args)
        finally:
            for k in env:
                monkeypatch.delenv(k)
    return make


def answer_traceparent(resp):
    tp = resp.header("traceparent")
    assert tp, f"no traceparent in the answer: {resp!r}"
    m = TRACEPARENT_RE.match(tp)
    assert m, f"answer traceparent {tp!r} is not 00-<32 hex>-<16 hex>-<flags>"
    return m.group(1), m.group(2), m.group(3)


def wait_span(receiver, span_id, timeout=15):
    s = wait_until(lambda: receiver.span(span_id), timeout)
    assert s, (f"span {span_id} never reached the receiver in {timeout} s; "
               f"it has {len(receiver.snapshot())} spans, errors {receiver.errors}")
    return s


def dropped(srv, reason):
    return metrics(srv).get(f'kobo_otlp_spans_dropped_total{{reason="{reason}"}}', 0)


def test_traceparent_continues_the_callers_trace(receiver, traced):
    srv = traced(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="100",
                 OTEL_SERVICE_NAME="kobo-test",
                 OTEL_RESOURCE_ATTRIBUTES="deployment.environment=ci,team=pay%20ments")
    acct = uid("otlp")
    before = time.time_ns()
    r = srv.post("/v1/accounts", {"id": acct, "currency": "NGN"},
                 headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
                          "X-Request-Id": "otlp-req-1"})
    after = time.time_ns()
    expect_status(r, 201, "create account with traceparent")
    trace, span_id, flags = answer_traceparent(r)
    assert trace == CALLER_TRACE, f"the answer left the caller's trace: {trace}"
    assert span_id != CALLER_SPAN, "the answer's traceparent must carry kobod's span id"
    assert flags == "01"

    s = wait_span(receiver, span_id)
    assert s["trace_id"] == CALLER_TRACE
    assert s["parent_id"] == CALLER_SPAN, f"parent is the caller's span: {s}"
    assert s["kind"] == 2, f"kind SERVER (2): {s}"
    assert s["name"] == "POST /v1/accounts"
    assert before - 1_000_000 <= s["start_ns"] <= s["end_ns"] <= after + 1_000_000, s
    assert s["status"] == 0
    a = s["attrs"]
    assert a["http.request.method"] == "POST"
    assert a["http.route"] == "/v1/accounts"
    assert a["http.response.status_code"] == 201
    assert a["url.path"] == "/v1/accounts"
    assert a["server.address"] == "127.0.0.1"
    assert a["server.port"] == srv.port
    assert a["client.address"] == "127.0.0.1"
    assert a["kobo.request_id"] == "otlp-req-1"
    assert s["resource"]["service.name"] == "kobo-test"
    assert s["resource"]["deployment.environment"] == "ci"
    assert s["resource"]["team"] == "pay ments"

    # A path with an id: the route is the pattern, url.path the real path;
    # a 404 is not an error, and the log line carries the trace id.
    r = srv.get(f"/v1/accounts/{acct}x",
                headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    expect_status(r, 404)
    _, span_id, _ = answer_traceparent(r)
    s = wait_span(receiver, span_id)
    assert s["name"] == "GET /v1/accounts/{id}"
    assert s["attrs"]["http.route"] == "/v1/accounts/{id}"
    assert s["attrs"]["url.path"] == f"/v1/accounts/{acct}x"
    assert s["attrs"]["http.response.status_code"] == 404
    assert s["status"] == 0
    assert CALLER_TRACE in srv.log_text()
    assert wait_until(lambda: metrics(srv).get("kobo_otlp_spans_exported_total", 0) >= 2, 10)


def test_a_write_has_a_shard_write_child_span(receiver, traced):
    srv = traced(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="100")
    a, b = uid("otlp"), uid("otlp")
    for acct in (a, b):
        expect_status(srv.post("/v1/accounts", {"id": acct, "currency": "NGN",
                                                "allow_negative": True}), 201)
    r = kobotest.transfer(srv, uid("tr"), a, b, 700,
                          headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    expect_status(r, 201)
    _, server_span, _ = answer_traceparent(r)
    parent = wait_span(receiver, server_span)
    assert parent["name"] == "POST /v1/transfers"
    child = wait_until(lambda: [s for s in receiver.snapshot()
                                if s["parent_id"] == server_span], 15)
    assert child and len(child) == 1, f"one shard write span under {server_span}: {child}"
    c = child[0]
    assert c["name"] == "shard write" and c["kind"] == 1, c
    assert c["trace_id"] == CALLER_TRACE
    assert parent["start_ns"] <= c["start_ns"] <= c["end_ns"] <= parent["end_ns"], (parent, c)
    assert c["attrs"]["kobo.shard"] == 0 and c["attrs"]["kobo.ops"] == 1, c
    assert c["status"] == 0

    # Under the shard write, its wait in the queue.
    waits = wait_until(lambda: [s for s in receiver.snapshot() if s["parent_id"] == c["span_id"]], 15)
    assert waits and len(waits) == 1 and waits[0]["name"] == "queue wait", waits
    w = waits[0]
    assert w["trace_id"] == CALLER_TRACE and w["kind"] == 1
    assert c["start_ns"] == w["start_ns"] <= w["end_ns"] <= c["end_ns"], (c, w)

    # The shard write links to the batch that committed it, a span of the
    # batch's own trace that links back; the batch's store commit is its child.
    assert len(c["links"]) == 1, c
    batch_trace, batch_span = c["links"][0]
    assert batch_trace != CALLER_TRACE
    b = wait_span(receiver, batch_span)
    assert b["name"] == "batch commit" and b["trace_id"] == batch_trace and b["parent_id"] == "", b
    assert (CALLER_TRACE, c["span_id"]) in b["links"], b
    assert b["attrs"]["kobo.shard"] == 0 and b["attrs"]["kobo.batch.requests"] >= 1, b
    assert b["attrs"]["kobo.batch.ops"] >= 1 and b["status"] == 0, b
    assert w["end_ns"] == b["start_ns"], ("the queue wait ends when the batch begins", w, b)
    commits = wait_until(lambda: [s for s in receiver.snapshot() if s["parent_id"] == batch_span], 15)
    assert commits and [x["name"] for x in commits] == ["store commit"], commits
    sc = commits[0]
    assert sc["trace_id"] == batch_trace
    assert b["start_ns"] <= sc["start_ns"] <= sc["end_ns"] == b["end_ns"], (b, sc)

    # A read has no shard write.
    r = srv.get(f"/v1/accounts/{a}")
    expect_status(r, 200)
    _, read_span, _ = answer_traceparent(r)
    wait_span(receiver, read_span)
    time.sleep(0.3)
    assert not [s for s in receiver.snapshot() if s["parent_id"] == read_span]


def test_without_traceparent_a_new_trace(receiver, traced):
    srv = traced(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url + "/", OTEL_BSP_SCHEDULE_DELAY="100")
    seen = set()
    for _ in range(3):
        r = srv.post("/v1/accounts", {"id": uid("otlp"), "currency": "NGN"})
        expect_status(r, 201)
        trace, span_id, flags = answer_traceparent(r)
        assert flags == "01"
        s = wait_span(receiver, span_id)
        assert s["trace_id"] == trace
        assert s["parent_id"] == "", f"a new trace's server span is a root: {s}"
        assert s["resource"]["service.name"] == "kobod"
        # The request's log line names the new trace.
        assert wait_until(lambda: trace in srv.log_text(), 5)
        seen.add(trace)
    assert len(seen) == 3, "every request without traceparent starts its own trace"

    # An unmatched route: the span is named by the method alone.
    r = srv.get("/nowhere")
    expect_status(r, 404)
    _, span_id, _ = answer_traceparent(r)
    s = wait_span(receiver, span_id)
    assert s["name"] == "GET" and "http.route" not in s["attrs"]


def test_samplers(receiver, traced):
    # always_off: nothing is exported, the answer says "not sampled".
    off = traced(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="50",
                 OTEL_TRACES_SAMPLER="always_off")
    for i in range(5):
        hdrs = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"} if i % 2 else {}
        r = off.post("/v1/accounts", {"id": uid("otlp"), "currency": "NGN"}, headers=hdrs)
        expect_status(r, 201)
        _, _, flags = answer_traceparent(r)
        assert flags == "00"
    off.sigterm()  # its exporter flushes at exit: still nothing
    assert receiver.snapshot() == [], "always_off exported spans"
    assert receiver.posts == 0

    # The default, parentbased_always_on: a caller's "not sampled" is obeyed,
    # "sampled" and no parent are sampled.
    pb = traced(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="50")
    r = pb.get("/healthz", headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"})
    expect_status(r, 200)
    trace, unsampled, flags = answer_traceparent(r)
    assert (trace, flags) == (CALLER_TRACE, "00")
    r = pb.get("/healthz", headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    _, sampled, flags = answer_traceparent(r)
    assert flags == "01"
    wait_span(receiver, sampled)
    time.sleep(0.3)
    assert receiver.span(unsampled) is None, "an unsampled parent's child was exported"

    # traceidratio 0: nothing, even with a sampled parent (not parent-based).
    ratio = traced(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="50",
                   OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="0")
    r = ratio.get("/healthz", headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    _, _, flags = answer_traceparent(r)
    assert flags == "00"


def test_bad_sampler_refuses_to_start(monkeypatch, make_server):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    srv = make_server(start=False)
    srv._spawn(kobotest.free_port())
    try:
        rc = srv.proc.wait(30)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
    srv.exit_codes.append(rc)
    srv.stopped_by_us = True
    assert rc != 0
    assert "OTEL_TRACES_SAMPLER" in srv.log_text()


def timed_create(srv):
    t0 = time.monotonic()
    r = srv.post("/v1/accounts", {"id": uid("otlp"), "currency": "NGN"})
    took = time.monotonic() - t0
    expect_status(r, 201)
    return took


def p50_latency(srv, n):
    times = [timed_create(srv) for _ in range(n)]
    return statistics.median(times), max(times)


def dead_port():
    """A port on 127.0.0.1 nobody listens on (bound, never listened)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def test_dead_collector_costs_requests_nothing(traced):
    N = 60
    plain = traced()
    holder, port = dead_port()
    try:
        dead = traced(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
                      OTEL_BSP_SCHEDULE_DELAY="20", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="8")
        # Alternating, so the shared machine's noise hits both alike.
        dead_times, plain_times = [], []
        for _ in range(N):
            dead_times.append(timed_create(dead))
            plain_times.append(timed_create(plain))
        p50_dead, p50_plain = statistics.median(dead_times), statistics.median(plain_times)
        assert p50_dead <= 2 * p50_plain + 0.030, (
            f"p50 with a dead collector {p50_dead * 1e3:.2f} ms vs without tracing "
            f"{p50_plain * 1e3:.2f} ms")
        # Every span is counted: export_failed after the bounded retries.
        assert wait_until(lambda: dropped(dead, "export_failed") > 0, 15), (
            "spans to a dead collector must be counted as dropped")
        m = metrics(dead)
        assert m.get("kobo_otlp_spans_exported_total", 0) == 0
    finally:
        holder.close()


def test_slow_collector_never_blocks_requests(receiver, traced):
    receiver.delay_s = 3.0
    srv = traced(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_EXPORTER_OTLP_TIMEOUT="1000",
                 OTEL_BSP_SCHEDULE_DELAY="10", OTEL_BSP_MAX_QUEUE_SIZE="8",
                 OTEL_BSP_MAX_EXPORT_BATCH_SIZE="4")
    p50, worst = p50_latency(srv, 60)
    assert worst < 1.0, f"a request waited {worst:.2f} s behind a slow collector"
    assert wait_until(lambda: dropped(srv, "queue_full") > 0, 10), (
        "a full ring must drop and count, not wait")
    receiver.delay_s = 0.0


def test_shutdown_flushes_queued_spans(receiver, traced):
    # A long batch delay: the spans are still queued when SIGTERM comes.
    srv = traced(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="60000")
    ids = []
    for _ in range(5):
        r = srv.post("/v1/accounts", {"id": uid("otlp"), "currency": "NGN"})
        expect_status(r, 201)
        ids.append(answer_traceparent(r)[1])
    time.sleep(0.2)
    assert receiver.snapshot() == []
    srv.sigterm()
    got = {s["span_id"] for s in receiver.snapshot()}
    assert set(ids) <= got, f"spans lost at shutdown: {set(ids) - got}"


def test_sink_counts_what_kobod_exports_and_checks_nothing(traced):
    """otlp_receiver.py --sink (scripts/bench-otlp.sh): its cheap count of
    "startTimeUnixNano" equals the spans kobod says it exported, and it
    answers 200 to a body the checking receiver would refuse."""
    import urllib.request
    sink = OtlpReceiver()
    sink.sink = True
    sink.start()
    try:
        srv = traced(OTEL_EXPORTER_OTLP_ENDPOINT=sink.url, OTEL_BSP_SCHEDULE_DELAY="50")
        for _ in range(10):
            expect_status(srv.post("/v1/accounts", {"id": uid("otlp"), "currency": "NGN"}), 201)

        def exported():
            return metrics(srv).get("kobo_otlp_spans_exported_total", 0)
        assert wait_until(lambda: exported() >= 10 and sink.count == exported(), 15), (
            f"sink counted {sink.count} spans, kobod exported {exported()}")
        assert sink.posts > 0 and not sink.errors and sink.spans == []

        bad = b'{"resourceSpans": [{"scopeSpans": [{"spans": [' \
              b'{"traceId": "zz", "startTimeUnixNano": "9"}, {"startTimeUnixNano": 1}]}]}]}'
        before = sink.count
        req = urllib.request.Request(f"{sink.url}/v1/traces", data=bad, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
        assert sink.count == before + 2 and not sink.errors
    finally:
        sink.stop()


def test_disabled_echoes_traceparent(server):
    tp = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    r = server.get("/healthz", headers={"traceparent": tp})
    assert r.header("traceparent") == tp, "without an endpoint the caller's header is echoed"
    r = server.get("/healthz")
    assert r.header("traceparent") is None


# ------------------------------------------------------- saga step spans ----

SAGA_TRACE = "0af7651916cd43dd8448eb211c80319c"
CRASH_TRACE = "5b8aa5a2d2c872e8321cf37308d69df2"


def saga_step_lines(srv, tid):
    out = []
    for line in srv.log_text().splitlines():
        if '"saga_step"' not in line or tid not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "saga_step" and rec.get("transfer_id") == tid:
            out.append(rec)
    return out


def step_spans(receiver, trace, tid):
    return [s for s in receiver.snapshot()
            if s["trace_id"] == trace and s["attrs"].get("kobo.transfer_id") == tid
            and s["name"].startswith("saga ")]


def journey(srv, tid):
    r = expect_status(srv.get(f"/v1/transfers/{tid}/events"), 200, f"events of {tid}")
    return r.body["data"]


@pytest.mark.own_shards
def test_saga_steps_join_the_request_trace_also_after_kill9(receiver, monkeypatch, make_server):
    """A cross-shard transfer with a chosen traceparent: every event on both
    shards, every saga_step log line and a "saga STEP" span per step carry
    its trace id. Then a saga held mid-way (the payee shard's file locked
    by this test, so its CREDIT step cannot commit) and kobod killed -9:
    after the restart the saga finishes, the journey shows every step in
    order, and the restarted runner's step spans are in the original
    trace (by trace id: no parent span is known after a restart)."""
    # Kept for the whole test: the restarted kobod must export too.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    # --journal off: the lever below is the SQLite file's write lock, which
    # only the SQLite-only path takes per batch.
    srv = make_server("--shards", "2", "--journal", "off")
    a0 = kobotest.id_on_shard("a", 0, 2)
    c1 = kobotest.id_on_shard("c", 1, 2)
    for acct in (a0, c1):
        kobotest.make_account(srv, acct, allow_negative=True)

    # 1. Straight through.
    tid = uid("st")
    r = kobotest.transfer(srv, tid, a0, c1, 70, headers={
        "traceparent": f"00-{SAGA_TRACE}-{CALLER_SPAN}-01", "X-Request-Id": "saga-trace-1"})
    expect_status(r, 201, "cross-shard transfer")
    assert wait_until(lambda: len(journey(srv, tid)) == 3, 10), journey(srv, tid)
    evs = journey(srv, tid)
    assert [(e["event"], e["shard"]) for e in evs] == [
        ("reserved", 0), ("credited", 1), ("settled", 0)], evs
    assert all(e["trace_id"] == SAGA_TRACE and e["request_id"] == "saga-trace-1"
               for e in evs), evs
    spans = wait_until(lambda: (lambda s: s if {x["name"] for x in s} >=
                                {"saga credit", "saga settle"} else None)(
        step_spans(receiver, SAGA_TRACE, tid)), 15)
    assert spans, f"no saga step spans in trace {SAGA_TRACE}: {receiver.snapshot()}"
    by_name = {s["name"]: s for s in spans}
    credit, settle = by_name["saga credit"], by_name["saga settle"]
    assert credit["attrs"]["kobo.shard"] == 1 and credit["attrs"]["kobo.step"] == "credit"
    assert settle["attrs"]["kobo.shard"] == 0 and settle["attrs"]["kobo.step"] == "settle"
    assert credit["kind"] == 1 and credit["status"] == 0, credit
    assert credit["span_id"] != settle["span_id"]
    server_spans = [s for s in receiver.snapshot()
                    if s["trace_id"] == SAGA_TRACE and s["name"] == "POST /v1/transfers"]
    assert server_spans and credit["span_id"] not in {s["span_id"] for s in server_spans}
    lines = wait_until(lambda: (lambda ls: ls if len(ls) >= 2 else None)(
        saga_step_lines(srv, tid)), 5)
    assert lines, f"no saga_step lines for {tid}"
    assert all(rec["trace_id"] == SAGA_TRACE and rec["request_id"] == "saga-trace-1"
               for rec in lines), lines

    # 2. Held mid-way, kill -9, restart.
    shard1 = os.path.join(srv.data, "shard-1.db")
    lock = sqlite3.connect(shard1, timeout=10, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        tid = uid("sk")
        r = kobotest.transfer(srv, tid, a0, c1, 40, headers={
            "traceparent": f"00-{CRASH_TRACE}-{CALLER_SPAN}-01", "X-Request-Id": "saga-trace-2"})
        expect_status(r, 202, "cross-shard transfer whose payee shard is locked")
        # The CREDIT step is tried (and fails: store busy) at least once.
        failed = wait_until(lambda: [x for x in saga_step_lines(srv, tid)
                                     if x["outcome"] == "store_failed"], 15)
        assert failed, f"the CREDIT step of {tid} was never tried: {saga_step_lines(srv, tid)}"
        assert all(x["trace_id"] == CRASH_TRACE for x in failed), failed
        assert [e["event"] for e in journey(srv, tid)] == ["reserved"]
        srv.kill9()
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    restarted_ns = time.time_ns()
    srv.start(port=srv.port)
    assert wait_until(lambda: len(journey(srv, tid)) == 3, 15), journey(srv, tid)
    evs = journey(srv, tid)
    assert [(e["event"], e["shard"]) for e in evs] == [
        ("reserved", 0), ("credited", 1), ("settled", 0)], evs
    assert all(e["trace_id"] == CRASH_TRACE and e["request_id"] == "saga-trace-2"
               for e in evs), evs
    assert [e["at_ms"] for e in evs] == sorted(e["at_ms"] for e in evs)
    assert kobotest.get_transfer(srv, tid).body["status"] == "posted"

    def after_restart():
        s = [x for x in step_spans(receiver, CRASH_TRACE, tid) if x["start_ns"] >= restarted_ns]
        return s if {x["name"] for x in s} >= {"saga credit", "saga settle"} else None
    spans = wait_until(after_restart, 15)
    assert spans, (f"the restarted runner's step spans never reached trace {CRASH_TRACE}: "
                   f"{step_spans(receiver, CRASH_TRACE, tid)}")
    ok_credit = [s for s in spans if s["name"] == "saga credit" and s["status"] == 0]
    assert ok_credit and ok_credit[0]["attrs"]["kobo.outcome"] == "created", spans
    # Their parent is the original request's "transfer" span: its id is
    # derived from the trace and transfer ids, so the restarted runner
    # finds it with nothing stored.
    created = [s for s in receiver.snapshot() if s["trace_id"] == CRASH_TRACE
               and s["name"] == "transfer" and s["attrs"].get("kobo.transfer_id") == tid]
    assert len(created) == 1, created
    assert all(s["parent_id"] == created[0]["span_id"] for s in spans), (created, spans)
    assert all(rec["trace_id"] == CRASH_TRACE for rec in saga_step_lines(srv, tid))


# --------------------------------------------------- one tree per trace ----

JOURNEY_TRACE = "7d3f0c2ab41e4f0a9c55e6b0d1a2b3c4"
HOLD_TRACE = "1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f"


def trace_tree(receiver, trace):
    """The spans of trace, checked to form one tree under the caller's span:
    every parent is the caller's span or a span of the trace, and every
    child starts no earlier than its parent. Returns {span_id: span}."""
    spans = {s["span_id"]: s for s in receiver.snapshot() if s["trace_id"] == trace}
    for s in spans.values():
        p = s["parent_id"]
        assert p == CALLER_SPAN or p in spans, (
            f"span {s['name']} {s['span_id']} has parent {p!r}, not in trace {trace}: "
            f"{sorted((x['name'], x['span_id'], x['parent_id']) for x in spans.values())}")
        if p in spans:
            assert spans[p]["start_ns"] <= s["start_ns"], (spans[p], s)
    return spans


def children(spans, parent, name=None):
    return [s for s in spans.values()
            if s["parent_id"] == parent and (name is None or s["name"] == name)]


@pytest.mark.own_shards
def test_a_cross_shard_transfer_and_an_expiring_hold_are_one_tree_each(receiver, traced):
    """Issue 13's journey, on the journaled store with two shards: a
    cross-shard transfer and a hold that expires, each sent with a chosen
    traceparent and X-Request-Id. Each trace is one tree under the caller's
    span: POST → shard write → queue wait; POST → transfer → the saga's
    steps on both shards, or → hold expired; every write links to its batch
    commit. kobo trace shows every step on both shards with the node and
    request id, and the expiry's event carries the hold's trace id."""
    srv = traced("--shards", "2", "--node-name", "trace-node-1",
                 OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="100")
    a0 = kobotest.id_on_shard("ja", 0, 2)
    b0 = kobotest.id_on_shard("jb", 0, 2)
    c1 = kobotest.id_on_shard("jc", 1, 2)
    for acct in (a0, b0, c1):
        kobotest.make_account(srv, acct, allow_negative=True)

    tid = uid("jx")
    r = kobotest.transfer(srv, tid, a0, c1, 70, headers={
        "traceparent": f"00-{JOURNEY_TRACE}-{CALLER_SPAN}-01", "X-Request-Id": "journey-1"})
    expect_status(r, 201, "cross-shard transfer")
    _, server_span, _ = answer_traceparent(r)

    hold = uid("jh")
    r = kobotest.transfer(srv, hold, a0, b0, 30, pending=True, timeout_seconds=1, headers={
        "traceparent": f"00-{HOLD_TRACE}-{CALLER_SPAN}-01", "X-Request-Id": "journey-2"})
    expect_status(r, 201, "hold that expires")
    _, hold_server_span, _ = answer_traceparent(r)

    def saga_done():
        s = trace_tree(receiver, JOURNEY_TRACE)
        names = sorted(x["name"] for x in s.values())
        return s if {"saga credit", "saga settle", "queue wait", "transfer"} <= set(names) else None
    spans = wait_until(saga_done, 20)
    assert spans, sorted((x["name"], x["parent_id"]) for x in receiver.snapshot()
                         if x["trace_id"] == JOURNEY_TRACE)
    server = spans[server_span]
    assert server["parent_id"] == CALLER_SPAN and server["name"] == "POST /v1/transfers"
    [write] = children(spans, server_span, "shard write")
    [transfer_span] = children(spans, server_span, "transfer")
    assert transfer_span["attrs"]["kobo.transfer_id"] == tid
    assert transfer_span["attrs"]["kobo.continues"] == "saga"
    assert [x["name"] for x in children(spans, write["span_id"])] == ["queue wait"]
    steps = children(spans, transfer_span["span_id"])
    assert {(x["name"], x["attrs"]["kobo.shard"]) for x in steps} >= {
        ("saga credit", 1), ("saga settle", 0)}, steps
    assert all(x["attrs"]["kobo.request_id"] == "journey-1" for x in steps), steps
    batch = wait_span(receiver, write["links"][0][1])
    assert batch["name"] == "batch commit" and (JOURNEY_TRACE, write["span_id"]) in batch["links"]

    def expired():
        s = trace_tree(receiver, HOLD_TRACE)
        return s if any(x["name"] == "hold expired" for x in s.values()) else None
    hs = wait_until(expired, 20)
    assert hs, sorted((x["name"], x["parent_id"]) for x in receiver.snapshot()
                      if x["trace_id"] == HOLD_TRACE)
    [hold_span] = children(hs, hold_server_span, "transfer")
    assert hold_span["attrs"]["kobo.continues"] == "hold"
    [exp] = children(hs, hold_span["span_id"], "hold expired")
    assert exp["attrs"]["kobo.transfer_id"] == hold and exp["attrs"]["kobo.shard"] == 0
    assert exp["start_ns"] >= hold_span["end_ns"], (hold_span, exp)

    # The stored journey agrees: every step, both shards, node and request id.
    evs = journey(srv, tid)
    assert [(e["event"], e["shard"]) for e in evs] == [
        ("reserved", 0), ("credited", 1), ("settled", 0)], evs
    assert all(e["node"] == "trace-node-1" and e["trace_id"] == JOURNEY_TRACE and
               e["request_id"] == "journey-1" for e in evs), evs
    hevs = journey(srv, hold)
    assert [e["event"] for e in hevs] == ["reserved", "expired"], hevs
    assert hevs[1]["request_id"] == "expiry" and hevs[1]["trace_id"] == HOLD_TRACE, hevs
    out = kobotest.cli(srv, "trace", tid)
    assert out.returncode == 0, out.stderr
    for step in ("reserved", "credited", "settled"):
        assert step in out.stdout, out.stdout
    assert "trace-node-1" in out.stdout and "journey-1" in out.stdout, out.stdout
