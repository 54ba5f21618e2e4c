"""
test_bench.py — kobo-bench drives a short run against a real kobod and
verifies the invariants itself; then `kobo audit` agrees.
"""
import json
import re
import socket
import subprocess
import threading
import time

import pytest

from kobotest import SANITIZER_MARKERS, binary, child_env, expect_audit_ok


def test_bench_short_run_verifies(server):
    cmd = [binary("kobo-bench"), "--url", server.url, "--duration", "2", "--accounts", "100",
           "--connections", "8", "--shards", str(server.shards)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=child_env())
    out = p.stdout + p.stderr
    assert p.returncode == 0, (f"`{' '.join(cmd)}`: expected exit 0, saw {p.returncode}\n"
                               f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}")
    assert re.search(r"verif\w*\W.*\bok\b", out, re.I | re.M), (
        f"expected a 'verify ... ok' line from kobo-bench, saw:\n{out[-2000:]}")
    expect_audit_ok(server, "audit after kobo-bench")


@pytest.mark.own_shards
def test_bench_cross_shard_run_verifies(make_server):
    """kobo-bench --shards 2 --cross-shard 50 against kobod --shards 2: half
    the transfers cross shards, latency is reported per class, verify holds;
    then with --saga-wait-ms 1 most cross-shard answers are 202 processing
    and verify waits for those sagas before checking."""
    for extra in ([], ["--saga-wait-ms", "1"]):
        server = make_server("--shards", "2", *extra)
        cmd = [binary("kobo-bench"), "--url", server.url, "--duration", "2", "--accounts", "100",
               "--connections", "8", "--shards", "2", "--cross-shard", "50"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=child_env())
        out = p.stdout + p.stderr
        what = f"`{' '.join(cmd)}` against kobod --shards 2 {' '.join(extra)}"
        assert p.returncode == 0, (f"{what}: expected exit 0, saw {p.returncode}\n"
                                   f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}")
        assert re.search(r"^verify: ok \(", out, re.M) and "conservation holds" in out, (
            f"{what}: expected 'verify: ok (... conservation holds ...)', saw:\n{out[-2000:]}")
        local = re.search(r"^\s+local\s+(\d+) requests: p50 [\d.]+\s+p99 [\d.]+", out, re.M)
        cross = re.search(r"^\s+cross-shard\s+(\d+) requests: p50 [\d.]+\s+p99 [\d.]+", out, re.M)
        assert local and cross, f"{what}: expected local and cross-shard latency lines, saw:\n{out[-2000:]}"
        n_local, n_cross = int(local.group(1)), int(cross.group(1))
        assert n_local > 50 and n_cross > 50 and 0.3 < n_cross / (n_local + n_cross) < 0.7, (
            f"{what}: --cross-shard 50: expected about half the requests cross-shard, saw {n_local} local, "
            f"{n_cross} cross-shard")
        if extra:
            assert re.search(r"^verify: \d+ transfers were answered 202", out, re.M), (
                f"{what}: expected 202 answers for verify to wait on, saw:\n{out[-2000:]}")
        server.sigterm()
        expect_audit_ok(server, f"audit after {what}")


class RefusingServer:
    """A stand-in for kobod on 127.0.0.1 that kobo-bench's setup can fail
    against: GET /healthz 200, POST /v1/accounts 201, and every POST
    /v1/transfers/batch answered `batch_status` (503 overloaded by default).
    A keep-alive connection idle for idle_close_s is closed by the server,
    as kobod's --connection-timeout does, so the bench's idle connections
    are closed and reopened again and again while it waits to retry.
    Threads only; stop() closes the socket and joins them (bounded)."""

    def __init__(self, batch_status=503, idle_close_s=0.01, vanish_on_batch=False):
        self.batch_status = batch_status
        self.vanish_on_batch = vanish_on_batch   # the first batch closes everything, unanswered
        self.vanished = False
        self.idle_close_s = idle_close_s
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.threads = []
        self.counts = {"accounts": 0, "batches": 0, "idle_closed": 0}
        self.lock = threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def stop(self):
        self.stopping.set()
        if not self.vanished:
            self.sock.close()
        for t in list(self.threads):
            t.join(10)
        assert not any(t.is_alive() for t in self.threads), "RefusingServer threads did not stop"

    def _accept(self):
        self.sock.settimeout(0.1)
        while not self.stopping.is_set():
            if self.vanished:
                time.sleep(0.05)
                continue
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _answer(self, conn, status, body):
        data = json.dumps(body).encode()
        reason = {200: "OK", 201: "Created", 503: "Service Unavailable"}.get(status, "X")
        conn.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)

    def _serve(self, conn):
        buf = b""
        with conn:
            while not self.stopping.is_set():
                conn.settimeout(self.idle_close_s)
                try:
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    method, path = lines[0].split()[:2]
                    length = 0
                    for line in lines[1:]:
                        k, _, v = line.partition(":")
                        if k.strip().lower() == "content-length":
                            length = int(v)
                    conn.settimeout(5.0)
                    while len(buf) < length:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    buf = buf[length:]
                except socket.timeout:
                    with self.lock:
                        self.counts["idle_closed"] += 1
                    return
                except OSError:
                    return
                if self.vanished:
                    return
                if path == "/healthz":
                    self._answer(conn, 200, {"status": "ok"})
                elif path == "/v1/accounts" and method == "POST":
                    with self.lock:
                        self.counts["accounts"] += 1
                    self._answer(conn, 201, {})
                elif path == "/v1/transfers/batch":
                    with self.lock:
                        self.counts["batches"] += 1
                        if self.vanish_on_batch and not self.vanished:
                            self.vanished = True
                            self.sock.close()
                    if self.vanished:
                        return
                    self._answer(conn, self.batch_status, {"error": {
                        "code": "overloaded", "message": "refused by the test",
                        "request_id": "r"}})
                else:
                    self._answer(conn, 404, {"error": {"code": "not_found", "message": path,
                                                       "request_id": "r"}})


def test_bench_setup_refused_exits_with_one_clear_message():
    """Funding batches refused (503) while the server keeps closing idle
    keep-alive connections: kobo-bench must exit 3 with one message saying
    setup failed, and no sanitizer report (it corrupted its heap here:
    issue 9, 2 PostgreSQL shards, 100,000 accounts)."""
    fake = RefusingServer().start()
    try:
        cmd = [binary("kobo-bench"), "--url", fake.url, "--accounts", "200", "--setup-batch", "10",
               "--connections", "32", "--duration", "1"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=child_env())
    finally:
        fake.stop()
    what = f"`{' '.join(cmd)}` against a server refusing every funding batch"
    bad = [ln for ln in p.stderr.splitlines() if any(m in ln for m in SANITIZER_MARKERS)]
    assert not bad and p.returncode >= 0, (f"{what}: crashed (exit {p.returncode}):\n"
                                           + "\n".join(bad[:10]) + f"\n{p.stderr[-3000:]}")
    assert fake.counts["batches"] >= 20, f"{what}: expected the batches sent and retried, saw {fake.counts}"
    assert fake.counts["idle_closed"] > 0, f"{what}: expected idle connections closed, saw {fake.counts}"
    assert p.returncode == 3, f"{what}: expected exit 3, saw {p.returncode}\nstderr:\n{p.stderr[-3000:]}"
    failed = [ln for ln in p.stderr.splitlines() if "fail" in ln.lower()]
    # The first failure it names is a 503, or a request the server's idle
    # close cut off as it arrived (a keep-alive race a client must expect).
    assert len(failed) == 1 and "setup failed" in failed[0] and (
        "HTTP 503" in failed[0] or "no answer" in failed[0]), (
        f"{what}: expected exactly one line saying setup failed (with what the server answered), "
        f"saw:\n{p.stderr[-3000:]}")
    assert "verify" not in p.stderr and "running" not in p.stderr, (
        f"{what}: nothing may be measured after a failed setup, saw:\n{p.stderr[-3000:]}")


def test_bench_setup_server_gone_exits_with_one_clear_message():
    """The server goes away at the first funding batch (kobod killed during
    setup: the request unanswered, every connect refused): kobo-bench gives
    up within seconds with one message, not after the 300 s setup limit."""
    fake = RefusingServer(vanish_on_batch=True, idle_close_s=5).start()
    started = time.monotonic()
    try:
        cmd = [binary("kobo-bench"), "--url", fake.url, "--accounts", "50", "--setup-batch", "10",
               "--connections", "4", "--duration", "1"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=child_env())
    finally:
        fake.stop()
    took = time.monotonic() - started
    what = f"`{' '.join(cmd)}` against a server gone at the first funding batch"
    bad = [ln for ln in p.stderr.splitlines() if any(m in ln for m in SANITIZER_MARKERS)]
    assert not bad and p.returncode >= 0, (f"{what}: crashed (exit {p.returncode}):\n"
                                           + "\n".join(bad[:10]) + f"\n{p.stderr[-3000:]}")
    assert p.returncode == 3, f"{what}: expected exit 3, saw {p.returncode}\nstderr:\n{p.stderr[-3000:]}"
    failed = [ln for ln in p.stderr.splitlines() if "fail" in ln.lower()]
    assert len(failed) == 1 and "setup failed" in failed[0] and "no connection" in failed[0], (
        f"{what}: expected exactly one line saying setup failed for want of a connection, "
        f"saw:\n{p.stderr[-3000:]}")
    assert took < 40, f"{what}: expected to give up within ~10 s of losing the server, took {took:.0f} s"
