"""
kobotest.py — helpers for Kobo's system tests: start real kobod processes,
speak HTTP/JSON to them, run the kobo CLI and audit, and check results with
failure messages that say what was expected and what was seen.

The contract these tests hold the server to is ../../../shared/API.md (and the
process contract in the test brief): nothing here knows the server's code.
Python 3 standard library only, plus pytest.
"""
import http.client
import itertools
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import threading
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

READY_TIMEOUT_S = 30.0      # ASan builds start slowly on shared cores
STOP_TIMEOUT_S = 30.0       # SIGTERM drain must finish within this
REQUEST_TIMEOUT_S = 20.0    # one HTTP request, worst case under ASan
CLI_TIMEOUT_S = 60.0

INT64_MAX = 2**63 - 1
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error")

# Servers alive in the current test, so a failing test's report can show the
# tail of their logs (see conftest.py).
ACTIVE = []


def binary(name):
    """Path of kobod / kobo / kobo-bench: $KOBOD, $KOBO, $KOBO_BENCH, or the
    ASan build in build/asan/."""
    env = {"kobod": "KOBOD", "kobo": "KOBO", "kobo-bench": "KOBO_BENCH"}[name]
    path = os.environ.get(env) or os.path.join(ROOT, "build", "asan", name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} binary not found or not executable at {path} "
                    f"(set ${env} or run `make build/asan/{name}`)")
    return path


def child_env():
    """The environment for kobod and kobo: ours without KOBO* variables,
    since every kobod flag has a KOBO_* equivalent and $KOBO/$KOBOD/$KOBO_BENCH
    (the binary paths) must not be read as configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOBO")}
    # Small journal segments (the default 64 MiB, pre-written with zeros,
    # would write gigabytes over the suite's hundreds of kobod starts); 8 MiB
    # still takes the largest batch the suite sends (8,190 transfers).
    env["KOBO_JOURNAL_SEGMENT_MB"] = os.environ.get("KOBO_TEST_JOURNAL_SEGMENT_MB", "8")
    return env


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_ids = itertools.count(1)
_run_tag = "%04x" % random.getrandbits(16)


def uid(prefix="t"):
    """A fresh identifier in the API's alphabet (A-Z a-z 0-9 . _ : @ -)."""
    return f"{prefix}:{_run_tag}.{next(_ids)}"


# ---------------------------------------------------------------- HTTP ----

class Resp:
    """One HTTP answer: status, headers (lower-case names), raw body bytes and
    the parsed JSON body (None when the body is not JSON)."""

    def __init__(self, status, headers, raw):
        self.status = status
        self.headers = {}
        for k, v in headers:
            self.headers[k.lower()] = v
        self.raw = raw
        try:
            self.body = json.loads(raw.decode("utf-8")) if raw else None
        except (ValueError, UnicodeDecodeError):
            self.body = None

    def header(self, name):
        return self.headers.get(name.lower())

    @property
    def replayed(self):
        return (self.header("Idempotent-Replayed") or "").lower() == "true"

    def __repr__(self):
        text = self.raw[:600].decode("utf-8", "replace")
        return f"HTTP {self.status} {text}"


def encode_body(body):
    if body is None:
        return None
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body).encode("utf-8")


class Client:
    """A small JSON HTTP client: one keep-alive http.client connection per
    thread, reconnecting after the server restarts."""

    def __init__(self, server):
        self.server = server
        self.local = threading.local()

    def reset(self):
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
        self.local.conn = None

    def _conn(self, timeout):
        conn = getattr(self.local, "conn", None)
        if conn is not None and self.local.key != (self.server.port, self.server.generation):
            self.reset()
            conn = None
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=timeout)
            self.local.conn = conn
            self.local.key = (self.server.port, self.server.generation)
            self.local.used = False
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def request(self, method, path, body=None, headers=None, timeout=REQUEST_TIMEOUT_S,
                retry=True):
        """Sends one request and returns a Resp. retry: resend once when a
        reused keep-alive connection turns out to be closed (safe: every
        write carries an id). Raises OSError / http.client errors otherwise."""
        data = encode_body(body)
        hdrs = {}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        for attempt in (0, 1):
            conn = self._conn(timeout)
            reused = self.local.used
            try:
                conn.request(method, path, body=data, headers=hdrs)
                r = conn.getresponse()
                raw = r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    ConnectionAbortedError):
                self.reset()
                if attempt == 0 and reused and retry:
                    continue
                raise
            except Exception:
                self.reset()
                raise
            self.local.used = True
            resp = Resp(r.status, r.getheaders(), raw)
            if r.will_close:
                self.reset()
            return resp
        raise AssertionError("unreachable")

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)


def raw_exchange(port, data, read_timeout=10.0):
    """Sends raw bytes on a fresh connection and returns (status, headers,
    body bytes) of the first answer, or (None, {}, b'') if none came."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(data)
        return read_response(s, read_timeout)


def read_response(sock, timeout):
    """Reads one HTTP/1.1 response from sock (Content-Length framed, or up to
    EOF). Returns (status, headers, body) or (None, {}, b'') on EOF/reset."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\r\n\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, {}, buf
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return None, {}, buf
        if not chunk:
            return None, {}, buf
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(body) < length:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        body += chunk
    return status, headers, body


# -------------------------------------------------------------- server ----

def shards_in_args(args, default=1):
    """The value of `--shards N` in a kobod argument list, else default."""
    args = list(args)
    for i, a in enumerate(args):
        if a == "--shards" and i + 1 < len(args):
            return int(args[i + 1])
        if a.startswith("--shards="):
            return int(a.split("=", 1)[1])
    return default


class Server:
    """One kobod process on a free port with its own store: a data directory
    (`--data`, the embedded SQLite store) or, with postgres=[URI, ...], one
    PostgreSQL database per shard (`--postgres URI` each, in shard order).
    A restart reuses the same store.

    url, port, data (the data dir; None on PostgreSQL), postgres (the URIs;
    None on SQLite), shards, log_path (stderr, JSON lines), client (a
    Client), store_args() (what `kobo audit` needs to find the store), and
    start(), restart(), kill9(), sigterm(), stop()."""

    def __init__(self, workdir, extra_args=(), postgres=None):
        self.workdir = str(workdir)
        self.postgres = list(postgres) if postgres else None
        self.data = None if self.postgres else os.path.join(self.workdir, "data")
        self.log_path = os.path.join(self.workdir, "kobod.stderr.log")
        self.out_path = os.path.join(self.workdir, "kobod.stdout.log")
        self.extra_args = list(extra_args)
        self.proc = None
        self.port = None
        self.generation = 0
        self.client = Client(self)
        self.exit_codes = []
        self.stopped_by_us = False
        self.shards = len(self.postgres) if self.postgres else shards_in_args(self.extra_args)

    def store_args(self):
        """The store flags of kobod and `kobo audit`: --data DIR, or
        --postgres URI once per shard."""
        if self.postgres:
            out = []
            for uri in self.postgres:
                out += ["--postgres", uri]
            return out
        return ["--data", self.data]

    # -- lifecycle --

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, port):
        self.port = port
        self.generation += 1
        self.stopped_by_us = False
        args = [binary("kobod"), "--listen", f"127.0.0.1:{port}"] + self.store_args()
        args += self.extra_args
        with open(self.log_path, "ab") as err, open(self.out_path, "ab") as out:
            err.write(f"### test harness: starting {' '.join(args)}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=child_env())

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/readyz")
                r = conn.getresponse()
                r.read()
                conn.close()
                if r.status == 200:
                    return True
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        return None

    def start(self, port=None, timeout=READY_TIMEOUT_S):
        """Starts kobod and waits until GET /readyz answers 200. If the
        process exits at once (e.g. the port was taken meanwhile), retries on
        another port."""
        for attempt in range(3):
            self._spawn(port or free_port())
            ok = self._wait_ready(timeout)
            if ok:
                return self
            if ok is None:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"kobod not ready (GET /readyz != 200) within {timeout:.0f} s\n"
                            f"stderr tail:\n{self.tail()}")
            self.exit_codes.append(self.proc.returncode)
            port = None
        pytest.fail(f"kobod exited during start-up with status {self.proc.returncode} "
                    f"(3 attempts)\nstderr tail:\n{self.tail()}")

    def sigterm(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM, wait for the drain, assert exit status 0."""
        assert self.proc is not None, "sigterm(): server never started"
        if self.proc.poll() is None:
            self.stopped_by_us = True
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.exit_codes.append("hung")
                pytest.fail(f"kobod did not exit within {timeout:.0f} s of SIGTERM "
                            f"(killed)\nstderr tail:\n{self.tail()}")
        rc = self.proc.returncode
        self.exit_codes.append(rc)
        self.client.reset()
        assert rc == 0, (f"kobod after SIGTERM: expected exit status 0, saw {rc}\n"
                         f"stderr tail:\n{self.tail()}")

    stop = sigterm

    def kill9(self):
        assert self.running, f"kill9(): kobod is not running (exit {self.proc.returncode})"
        self.stopped_by_us = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.exit_codes.append("killed")
        self.client.reset()

    def restart(self, timeout=READY_TIMEOUT_S):
        """Stops (SIGTERM, exit 0) if running, then starts on the same data
        directory, preferably on the same port."""
        if self.running:
            self.sigterm()
        return self.start(port=self.port, timeout=timeout)

    # -- logs --

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stdout_text(self):
        try:
            with open(self.out_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines=40):
        text = self.log_text().splitlines()
        return "\n".join(text[-lines:])

    def sanitizer_lines(self):
        return [l for l in self.log_text().splitlines()
                if any(m in l for m in SANITIZER_MARKERS)]

    def finish(self):
        """Teardown: stop with SIGTERM (exit 0 expected) and check the log has
        no sanitizer report. Returns a list of problems (empty when fine)."""
        problems = []
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.sigterm()
            except (AssertionError, pytest.fail.Exception) as e:
                problems.append(str(e))
        elif self.proc is not None and not self.stopped_by_us:
            problems.append(f"kobod had exited on its own with status {self.proc.returncode} "
                            f"(expected it to run until stopped)\n" + self.tail())
        bad = self.sanitizer_lines()
        if bad:
            problems.append("sanitizer report in kobod stderr (expected none):\n" +
                            "\n".join(bad[:20]) + "\n--- tail ---\n" + self.tail(80))
        return problems

    # -- HTTP shortcuts --

    def request(self, method, path, body=None, **kw):
        return self.client.request(method, path, body=body, **kw)

    def get(self, path, **kw):
        return self.client.get(path, **kw)

    def post(self, path, body=None, **kw):
        return self.client.post(path, body, **kw)


# ------------------------------------------------------------- asserts ----

def finish_servers(servers):
    """Teardown of the kobod a test or fixture started: each stopped by pid
    (Server.finish: SIGTERM, exit 0 expected, no sanitizer report; SIGKILL
    if it is still running after that, also when finish raised), taken off
    ACTIVE; the test fails with every problem found."""
    problems = []
    for srv in servers:
        try:
            problems += srv.finish()
        finally:
            if srv.proc is not None and srv.proc.poll() is None:   # belt and braces
                srv.proc.kill()
                srv.proc.wait(10)
            if srv in ACTIVE:
                ACTIVE.remove(srv)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def expect_status(resp, status, what=""):
    statuses = status if isinstance(status, (tuple, list, set)) else (status,)
    assert resp.status in statuses, (
        f"{what + ': ' if what else ''}expected HTTP {status}, saw {resp!r}")
    return resp


def expect_error(resp, status, code=None, what="", field=None):
    """Asserts an error answer: the status, a JSON body of the shape
    {"error": {"code", "message", "request_id"}}, the code, and (field) that
    the message names the offending field."""
    pre = what + ": " if what else ""
    expect_status(resp, status, what)
    assert isinstance(resp.body, dict) and isinstance(resp.body.get("error"), dict), (
        f"{pre}expected a JSON error body {{\"error\": {{...}}}}, saw {resp!r}")
    err = resp.body["error"]
    for key in ("code", "message", "request_id"):
        assert isinstance(err.get(key), str) and err.get(key), (
            f"{pre}expected error.{key} to be a non-empty string, saw {resp!r}")
    if code is not None:
        assert err["code"] == code, f"{pre}expected error.code {code!r}, saw {err['code']!r} ({resp!r})"
    rid = resp.header("X-Request-Id")
    assert rid, f"{pre}expected an X-Request-Id response header, saw headers {resp.headers}"
    assert err["request_id"] == rid, (
        f"{pre}expected error.request_id == X-Request-Id header {rid!r}, saw {err['request_id']!r}")
    if field is not None:
        assert field in err["message"], (
            f"{pre}expected the error message to name the field {field!r}, saw {err['message']!r}")
    return err


def expect_replayed(resp, status, what=""):
    expect_status(resp, status, what)
    assert resp.replayed, (f"{what + ': ' if what else ''}expected header "
                           f"Idempotent-Replayed: true, saw headers {resp.headers}")
    return resp


def expect_not_replayed(resp, what=""):
    assert not resp.replayed, (f"{what + ': ' if what else ''}a first answer must not carry "
                               f"Idempotent-Replayed: true, saw headers {resp.headers}")


# -------------------------------------------------------- domain calls ----

def create_account(srv, acct_id, currency="NGN", allow_negative=None, metadata=None):
    body = {"id": acct_id, "currency": currency}
    if allow_negative is not None:
        body["allow_negative"] = allow_negative
    if metadata is not None:
        body["metadata"] = metadata
    return srv.post("/v1/accounts", body)


def make_account(srv, acct_id, currency="NGN", allow_negative=False, metadata=None):
    r = create_account(srv, acct_id, currency, allow_negative, metadata)
    expect_status(r, 201, f"create account {acct_id}")
    return r.body


def transfer_body(tid, src, dst, amount, currency="NGN", **extra):
    body = {"id": tid, "from": src, "to": dst, "amount": amount, "currency": currency}
    body.update(extra)
    return body


def transfer(srv, tid, src, dst, amount, currency="NGN", headers=None, **extra):
    return srv.post("/v1/transfers", transfer_body(tid, src, dst, amount, currency, **extra),
                    headers=headers)


def fund(srv, cash, acct_id, amount, currency="NGN"):
    """Moves amount from the allow_negative account cash into acct_id."""
    r = transfer(srv, uid("fund"), cash, acct_id, amount, currency)
    expect_status(r, 201, f"fund {acct_id} with {amount}")
    return r.body


def account(srv, acct_id):
    r = srv.get(f"/v1/accounts/{acct_id}")
    expect_status(r, 200, f"GET account {acct_id}")
    return r.body


def balance(srv, acct_id):
    return account(srv, acct_id)["balance"]


def get_transfer(srv, tid):
    return srv.get(f"/v1/transfers/{tid}")


def expect_balance(srv, acct_id, what="", **want):
    bal = balance(srv, acct_id)
    seen = {k: bal.get(k) for k in want}
    assert seen == want, f"{what + ': ' if what else ''}balance of {acct_id}: expected {want}, saw {bal}"
    return bal


def _store_args(store):
    """store: a Server (its --data or --postgres flags) or a data dir path."""
    if isinstance(store, Server):
        return store.store_args()
    return ["--data", str(store)]


def audit(store, *extra, timeout=CLI_TIMEOUT_S):
    """`kobo audit` of a Server's store (SQLite or PostgreSQL) or of a data
    dir given by path."""
    return subprocess.run([binary("kobo"), "audit", *_store_args(store), *extra],
                          capture_output=True, text=True, timeout=timeout, env=child_env())


def expect_audit_ok(store, what=""):
    p = audit(store)
    assert p.returncode == 0, (f"{what + ': ' if what else ''}`kobo audit "
                               f"{' '.join(_store_args(store))}`: "
                               f"expected exit 0, saw {p.returncode}\nstdout:\n{p.stdout[-3000:]}"
                               f"\nstderr:\n{p.stderr[-3000:]}")
    return p


def cli(srv, *args, json_out=False, timeout=CLI_TIMEOUT_S):
    cmd = [binary("kobo"), "--server", srv.url]
    if json_out:
        cmd.append("--json")
    cmd += [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env())


def conservation(srv, account_ids):
    """Returns (sum of posted, {id: balance}) over the given accounts."""
    balances = {a: balance(srv, a) for a in account_ids}
    return sum(b["posted"] for b in balances.values()), balances


def wait_until(predicate, timeout, interval=0.05):
    """Polls predicate() until it returns a truthy value or timeout passes;
    returns the last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


# ------------------------------------------------------------ API keys ----

def create_key(store, scopes, name=None):
    """`kobo key create --json` on a Server's store (or a data dir): returns
    the created key's object ({"id", "key", "name", "scopes", …})."""
    name = name or uid("key")
    p = subprocess.run([binary("kobo"), "key", "create", "--name", name, "--scopes", scopes,
                        "--json", *_store_args(store)],
                       capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=child_env())
    assert p.returncode == 0, (f"kobo key create --scopes {scopes}: exit {p.returncode}\n"
                               f"stdout:\n{p.stdout[-2000:]}\nstderr:\n{p.stderr[-2000:]}")
    key = json.loads(p.stdout)
    assert key["key"].startswith("kobo_" + key["id"] + "_"), key
    return key


def revoke_key(store, key_id):
    """`kobo key revoke ID` on a Server's store (or a data dir)."""
    p = subprocess.run([binary("kobo"), "key", "revoke", key_id, "--json", *_store_args(store)],
                       capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=child_env())
    assert p.returncode == 0, (f"kobo key revoke {key_id}: exit {p.returncode}\n"
                               f"stdout:\n{p.stdout[-2000:]}\nstderr:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout)


def bearer(key):
    """The Authorization header of a key object or key text."""
    text = key["key"] if isinstance(key, dict) else key
    return {"Authorization": f"Bearer {text}"}


def wait_readable(sock, timeout):
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)


# ---------------------------------------------------------------- load ----

class Load:
    """Background transfer load for fault tests. Each thread has its own
    connection and never retries: it records every transfer it sent as
    acked (2xx, with the answer), rejected (422, with the code) or unacked
    (no answer: connection error, timeout, 5xx). params[id] is the body sent."""

    def __init__(self, srv, payers, payees, prefix, threads=8, max_amount=1500, seed=1):
        self.srv = srv
        self.payers, self.payees = list(payers), list(payees)
        self.prefix = prefix
        self.n_threads = threads
        self.max_amount = max_amount
        self.seed = seed
        self.lock = threading.Lock()
        self.params, self.acked, self.rejected, self.unacked = {}, {}, {}, {}
        self.problems = []
        self.stopping = threading.Event()
        self.threads = []

    def _run(self, n):
        rng = random.Random(self.seed * 1000 + n)
        conn = None
        seq = 0
        while not self.stopping.is_set():
            seq += 1
            src = rng.choice(self.payers)
            dst = rng.choice([p for p in self.payees if p != src])
            tid = f"{self.prefix}.{n}.{seq}"
            body = transfer_body(tid, src, dst, rng.randint(1, self.max_amount))
            with self.lock:
                self.params[tid] = body
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=15)
                conn.request("POST", "/v1/transfers", body=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                resp = Resp(r.status, r.getheaders(), r.read())
                if r.will_close:
                    conn.close()
                    conn = None
            except Exception:
                with self.lock:
                    self.unacked[tid] = body
                if conn is not None:
                    conn.close()
                    conn = None
                time.sleep(0.02)
                continue
            with self.lock:
                if resp.status in (200, 201):
                    self.acked[tid] = resp.body
                elif resp.status == 422:
                    self.rejected[tid] = resp.body["error"]["code"]
                elif resp.status >= 500:
                    self.unacked[tid] = body
                else:
                    self.problems.append(f"{tid}: unexpected {resp!r}")
        if conn is not None:
            conn.close()

    def start(self):
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                        for n in range(self.n_threads)]
        for t in self.threads:
            t.start()
        return self

    def stop(self, timeout=30):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "load threads did not stop"


# -------------------------------------------------------------- shards ----
#
# Twins of src/shard/shard_map.c, so tests can place accounts on the shard
# they want: an account id hashes (FNV-1a 64 of its bytes) into one of 4096
# partitions, partition p lives on shard p % N; a clearing account
# "kobo:clearing:<a>:<b>:<CUR>" lives on shard a.

PARTITIONS = 4096
SHARDS_DEFAULT = 4   # shared_sharded_server (conftest.py) runs kobod --shards 4
CLEARING_RE = re.compile(r"^kobo:clearing:(0|[1-9][0-9]*):(0|[1-9][0-9]*):([A-Z][A-Z0-9]{2,7})$")


def partition_of(account_id):
    """kobo_partition_of(): FNV-1a 64 of the id's UTF-8 bytes, mod 4096."""
    h = 0xcbf29ce484222325
    for byte in account_id.encode("utf-8"):
        h ^= byte
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h % PARTITIONS


def shard_of(account_id, shards):
    """The shard of an account with the default map of `shards` shards."""
    m = CLEARING_RE.match(account_id)
    if m and int(m.group(1)) < shards:
        return int(m.group(1))
    return partition_of(account_id) % shards


def clearing_id(a, b, currency="NGN"):
    """Shard a's clearing account for money moving to or from shard b."""
    return f"kobo:clearing:{a}:{b}:{currency}"


def id_on_shard(prefix, shard, shards):
    """A fresh uid(prefix) whose account lives on `shard` of `shards`."""
    for _ in range(10000):
        candidate = uid(prefix)
        if shard_of(candidate, shards) == shard:
            return candidate
    raise AssertionError(f"no id with prefix {prefix!r} found on shard {shard} of {shards}")


def metrics(srv):
    """GET /metrics parsed into {"name{labels}": value} (samples only)."""
    r = srv.get("/metrics")
    expect_status(r, 200, "GET /metrics")
    out = {}
    for line in r.raw.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out


def sagas_active(srv):
    """The sum of the kobo_sagas_active{state} gauges: sagas being driven."""
    return sum(v for k, v in metrics(srv).items() if k.startswith("kobo_sagas_active"))


def clearing_balances(srv, shards, currency="NGN"):
    """{(a, b): balance} of every clearing account of `shards` shards in
    `currency` (a never-used one, 404, counts as all zero)."""
    out = {}
    for a in range(shards):
        for b in range(shards):
            if a == b:
                continue
            r = srv.get(f"/v1/accounts/{clearing_id(a, b, currency)}")
            if r.status == 404:
                out[(a, b)] = {"posted": 0, "pending_out": 0, "pending_in": 0, "available": 0}
                continue
            expect_status(r, 200, f"GET clearing account {clearing_id(a, b, currency)}")
            out[(a, b)] = r.body["balance"]
    return out


def unbalanced_clearing_pairs(srv, shards, currency="NGN"):
    """Clearing pairs whose posted balances do not net to zero (with no
    saga in flight, kobo:clearing:a:b + kobo:clearing:b:a == 0), as
    {(a, b): (posted a:b, posted b:a)}."""
    bals = clearing_balances(srv, shards, currency)
    return {(a, b): (bals[(a, b)]["posted"], bals[(b, a)]["posted"])
            for (a, b) in bals if a < b and bals[(a, b)]["posted"] + bals[(b, a)]["posted"] != 0}


def parallel_map(fn, items, threads=8, timeout=120):
    """[fn(x) for x in items] over `threads` threads (each with its own
    keep-alive connection through Client). Exceptions are returned in place."""
    items = list(items)
    results = [None] * len(items)
    counter = itertools.count()

    def run():
        while True:
            i = next(counter)
            if i >= len(items):
                return
            try:
                results[i] = fn(items[i])
            except Exception as e:  # reported by the caller
                results[i] = e

    pool = [threading.Thread(target=run, daemon=True) for _ in range(min(threads, max(1, len(items))))]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout)
    assert not any(t.is_alive() for t in pool), f"parallel_map did not finish within {timeout} s"
    return results
