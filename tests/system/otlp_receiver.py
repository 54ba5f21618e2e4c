"""
otlp_receiver.py — a small OTLP/HTTP trace receiver for the system tests
(Debian has no OpenTelemetry collector). Listens on 127.0.0.1, takes
POST /v1/traces with the JSON encoding (Content-Type: application/json) and
checks each body against the OTLP specification (opentelemetry-proto,
trace/v1 and its JSON mapping):

  ExportTraceServiceRequest {resourceSpans: [ResourceSpans]}
  ResourceSpans {resource: {attributes: [KeyValue]}, scopeSpans: [ScopeSpans]}
  ScopeSpans {scope: {name}, spans: [Span]}
  Span: traceId 32 hex (16 bytes, not all zero), spanId 16 hex (8 bytes, not
        all zero), parentSpanId absent/"" or 16 hex, name non-empty, kind
        0..5, startTimeUnixNano <= endTimeUnixNano (uint64 as decimal strings
        or numbers), attributes [KeyValue], status.code 0..2, links
        [{traceId 32 hex, spanId 16 hex, attributes}], droppedLinksCount
        uint32
  KeyValue {key, value: {stringValue|intValue|boolValue|doubleValue}}

A body that breaks a rule is answered 400 and the reason kept in .errors
(tests assert it stays empty). Accepted spans are kept flattened with their
resource attributes in .spans. Knobs: .status (answer code, default 200),
.delay_s (sleep before answering: a slow collector), .sink (below).

Sink mode (.sink = True, `otlp_receiver.py --sink`; scripts/bench-otlp.sh):
reads the whole body, answers 200, counts the spans cheaply (occurrences of
"startTimeUnixNano": only spans carry it) and checks nothing, so that a
benchmark measures kobod rather than this receiver's parsing (~36 us a span
in the default mode, on the same cores).
Python 3 standard library only.
"""
import http.server
import json
import re
import threading
import time

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
UINT = re.compile(r"^[0-9]{1,20}$")
VALUE_KINDS = ("stringValue", "intValue", "boolValue", "doubleValue", "arrayValue",
               "kvlistValue", "bytesValue")


class SpecError(Exception):
    pass


def _need(cond, what):
    if not cond:
        raise SpecError(what)


def _uint64(v, what):
    if isinstance(v, int):
        _need(0 <= v < 2**64, f"{what}: out of uint64 range")
        return v
    _need(isinstance(v, str) and UINT.match(v), f"{what}: not a uint64 ({v!r})")
    n = int(v)
    _need(n < 2**64, f"{what}: out of uint64 range")
    return n


def attributes(lst, what):
    """[KeyValue] → {key: python value}."""
    _need(isinstance(lst, list), f"{what}: attributes not a list")
    out = {}
    for kv in lst:
        _need(isinstance(kv, dict) and isinstance(kv.get("key"), str) and kv["key"],
              f"{what}: attribute without a key: {kv!r}")
        v = kv.get("value")
        _need(isinstance(v, dict) and len(v) == 1 and next(iter(v)) in VALUE_KINDS,
              f"{what}: attribute {kv['key']}: bad AnyValue {v!r}")
        kind, val = next(iter(v.items()))
        if kind == "intValue":
            _need(isinstance(val, int) or (isinstance(val, str) and re.match(r"^-?[0-9]+$", val)),
                  f"{what}: attribute {kv['key']}: intValue {val!r}")
            val = int(val)
        elif kind == "stringValue":
            _need(isinstance(val, str), f"{what}: attribute {kv['key']}: stringValue {val!r}")
        _need(kv["key"] not in out, f"{what}: attribute {kv['key']} twice")
        out[kv["key"]] = val
    return out


def check_request(doc):
    """Validates an ExportTraceServiceRequest; returns flattened spans."""
    spans = []
    _need(isinstance(doc, dict), "body: not a JSON object")
    rs_list = doc.get("resourceSpans")
    _need(isinstance(rs_list, list), "resourceSpans: missing or not a list")
    for rs in rs_list:
        _need(isinstance(rs, dict), "resourceSpans[]: not an object")
        res = attributes((rs.get("resource") or {}).get("attributes", []), "resource")
        _need(isinstance(res.get("service.name"), str) and res["service.name"],
              "resource: no service.name")
        ss_list = rs.get("scopeSpans")
        _need(isinstance(ss_list, list), "scopeSpans: missing or not a list")
        for ss in ss_list:
            _need(isinstance(ss, dict), "scopeSpans[]: not an object")
            scope = ss.get("scope", {})
            _need(isinstance(scope, dict), "scope: not an object")
            _need(isinstance(ss.get("spans"), list), "spans: missing or not a list")
            for sp in ss["spans"]:
                spans.append(check_span(sp, res, scope.get("name", "")))
    return spans


def check_span(sp, resource, scope):
    _need(isinstance(sp, dict), "span: not an object")
    tid, sid = sp.get("traceId"), sp.get("spanId")
    _need(isinstance(tid, str) and HEX32.match(tid) and tid != "0" * 32,
          f"span: traceId {tid!r} is not 16 bytes of hex (non-zero)")
    _need(isinstance(sid, str) and HEX16.match(sid) and sid != "0" * 16,
          f"span: spanId {sid!r} is not 8 bytes of hex (non-zero)")
    parent = sp.get("parentSpanId", "")
    _need(parent == "" or (isinstance(parent, str) and HEX16.match(parent) and
                           parent != "0" * 16),
          f"span {sid}: parentSpanId {parent!r} is not 8 bytes of hex")
    _need(isinstance(sp.get("name"), str) and sp["name"], f"span {sid}: no name")
    kind = sp.get("kind", 0)
    _need(isinstance(kind, int) and 0 <= kind <= 5, f"span {sid}: kind {kind!r}")
    start = _uint64(sp.get("startTimeUnixNano"), f"span {sid}: startTimeUnixNano")
    end = _uint64(sp.get("endTimeUnixNano"), f"span {sid}: endTimeUnixNano")
    _need(0 < start <= end, f"span {sid}: start {start} > end {end}")
    attrs = attributes(sp.get("attributes", []), f"span {sid}")
    status = sp.get("status", {})
    _need(isinstance(status, dict) and status.get("code", 0) in (0, 1, 2),
          f"span {sid}: status {status!r}")
    links = []
    _need(isinstance(sp.get("links", []), list), f"span {sid}: links not a list")
    for ln in sp.get("links", []):
        _need(isinstance(ln, dict), f"span {sid}: link not an object")
        lt, ls = ln.get("traceId"), ln.get("spanId")
        _need(isinstance(lt, str) and HEX32.match(lt) and lt != "0" * 32,
              f"span {sid}: link traceId {lt!r}")
        _need(isinstance(ls, str) and HEX16.match(ls) and ls != "0" * 16,
              f"span {sid}: link spanId {ls!r}")
        attributes(ln.get("attributes", []), f"span {sid} link")
        links.append((lt, ls))
    dropped_links = sp.get("droppedLinksCount", 0)
    _need(isinstance(dropped_links, int) and 0 <= dropped_links < 2**32,
          f"span {sid}: droppedLinksCount {dropped_links!r}")
    return {"trace_id": tid, "span_id": sid, "parent_id": parent, "name": sp["name"],
            "kind": kind, "start_ns": start, "end_ns": end, "attrs": attrs,
            "status": status.get("code", 0), "resource": resource, "scope": scope,
            "links": links, "dropped_links": dropped_links}


class OtlpReceiver:
    def __init__(self):
        self.lock = threading.Lock()
        self.spans = []
        self.count = 0          # spans accepted
        self.keep = True        # keep them in .spans (False: count only)
        self.errors = []
        self.posts = 0
        self.status = 200
        self.delay_s = 0.0
        self.sink = False       # answer 200 and count spans, check nothing
        self.httpd = None
        self.thread = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self):
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code, body):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the exporter gave up waiting (its timeout)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if receiver.sink:
                    spans = body.count(b'"startTimeUnixNano"')
                    with receiver.lock:
                        receiver.posts += 1
                        receiver.count += spans
                    self.reply(200, b"{}")
                    return
                with receiver.lock:
                    receiver.posts += 1
                    status, delay = receiver.status, receiver.delay_s
                if delay:
                    time.sleep(delay)
                code, reply = 200, b"{}"
                try:
                    _need(self.path == "/v1/traces", f"path {self.path!r} is not /v1/traces")
                    ctype = self.headers.get("Content-Type", "")
                    _need(ctype.split(";")[0].strip() == "application/json",
                          f"Content-Type {ctype!r}")
                    spans = check_request(json.loads(body))
                    if status == 200:
                        with receiver.lock:
                            receiver.count += len(spans)
                            if receiver.keep:
                                receiver.spans.extend(spans)
                    code = status
                except (SpecError, ValueError) as e:
                    with receiver.lock:
                        receiver.errors.append(str(e))
                    code, reply = 400, json.dumps({"error": str(e)}).encode()
                self.reply(code, reply)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(10)
            self.httpd = None

    def snapshot(self):
        with self.lock:
            return list(self.spans)

    def span(self, span_id):
        for s in self.snapshot():
            if s["span_id"] == span_id:
                return s
        return None


def main():
    """Standalone (scripts/bench-otlp.sh): serve on a free 127.0.0.1 port,
    print "url: URL", keep only counts; on SIGTERM print
    "spans: N posts: N errors: N" and exit. --sink: sink mode (no checks)."""
    import signal
    import sys
    args = sys.argv[1:]
    if args not in ([], ["--sink"]):
        print("usage: otlp_receiver.py [--sink]", file=sys.stderr)
        sys.exit(2)
    r = OtlpReceiver()
    r.keep = False
    r.sink = args == ["--sink"]
    r.start()
    print(f"url: {r.url}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    while not done.wait(0.2):
        pass
    r.stop()
    print(f"spans: {r.count} posts: {r.posts} errors: {len(r.errors)}", flush=True)
    for e in r.errors[:5]:
        print(f"error: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
