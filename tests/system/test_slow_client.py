"""
test_slow_client.py — slow and idle clients must not stop kobod serving
others (kobod --connection-timeout 2): a stalled half-sent request is cut off
after the timeout, a body trickling in byte by byte blocks no one, and many
idle connections leave room for a new client.
"""
import json
import socket
import threading
import time

import pytest

from kobotest import expect_status, read_response

TIMEOUT_S = 2
PROMPT_S = 1.5   # "promptly" under ASan on shared cores


@pytest.fixture
def srv(make_server):
    return make_server("--connection-timeout", str(TIMEOUT_S))


def probe_while(srv, seconds, what):
    """GET /healthz on fresh connections for `seconds`; asserts each answers
    200 within PROMPT_S. Returns the number of probes."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status, _, _ = read_response(s, 5)
        took = time.monotonic() - t0
        assert status == 200 and took < PROMPT_S, (
            f"{what}: expected another client's GET /healthz answered 200 within {PROMPT_S} s, "
            f"saw {status} after {took:.2f} s")
        n += 1
        time.sleep(0.2)
    return n


def closed_within(sock, seconds):
    """Waits for the peer to close (EOF or reset, possibly after a 408
    answer). Returns the monotonic time it closed, or None if still open."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except socket.timeout:
            return None
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic()
        if not data:
            return time.monotonic()
    return None


def assert_not_early(closed_at, last_activity, what):
    idle = closed_at - last_activity
    assert idle >= TIMEOUT_S - 0.6, (
        f"{what}: expected kobod to wait about the {TIMEOUT_S} s connection timeout before "
        f"closing, saw it close after {idle:.2f} s idle")


def test_half_headers_stall_is_disconnected(srv):
    stalled, sent_at = [], []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        s.sendall(b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-")
        stalled.append(s)
        sent_at.append(time.monotonic())
    t0 = time.monotonic()
    probe_errors = []

    def probe():
        try:
            probe_while(srv, TIMEOUT_S + 0.5, "while 4 clients stall mid-headers")
        except AssertionError as e:
            probe_errors.append(e)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for i, s in enumerate(stalled):
            left = TIMEOUT_S + 4.0 - (time.monotonic() - t0)
            closed_at = closed_within(s, max(left, 0.1))
            assert closed_at is not None, (
                f"stalled client {i}: expected kobod to close it about {TIMEOUT_S} s after its last "
                f"byte, still open after {time.monotonic() - t0:.1f} s")
            assert_not_early(closed_at, sent_at[i], f"stalled client {i}")
    finally:
        prober.join(30)
        for s in stalled:
            s.close()
    assert not probe_errors, str(probe_errors[0])
    expect_status(srv.get("/healthz"), 200)


def test_body_one_byte_per_half_second_blocks_no_one(srv):
    body = json.dumps({"id": "slowpoke", "currency": "NGN"}).encode()
    trickle_bytes = 8
    slow = []
    for i in range(8):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        b = body.replace(b"slowpoke", f"slowpoke{i}".encode())
        s.sendall((f"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(b)}\r\n\r\n").encode())
        slow.append((s, b))
    errors = []

    def trickle():
        try:
            for k in range(trickle_bytes):
                for s, b in slow:
                    s.sendall(b[k:k + 1])
                time.sleep(0.5)
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=trickle)
    t.start()
    try:
        n = probe_while(srv, trickle_bytes * 0.5, "while 8 clients trickle a body")
        t.join(30)
        assert n >= 5
        # The slow requests themselves: either completed once the rest arrives
        # (201) or cut off by the server; never a hang.
        for i, (s, b) in enumerate(slow):
            try:
                s.sendall(b[trickle_bytes:])
            except OSError:
                continue
            status, _, rbody = read_response(s, 10)
            assert status in (201, None, 408), f"slow client {i}: expected 201 or a cut-off, saw {status} {rbody[:200]!r}"
            if status == 201:
                expect_status(srv.get(f"/v1/accounts/slowpoke{i}"), 200, "account made by the slow client")
    finally:
        t.join(30)
        for s, _ in slow:
            s.close()


def test_many_idle_connections_do_not_stop_new_clients(srv):
    idle, last = [], []
    try:
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            if i % 2:
                # A finished keep-alive exchange, then silence.
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                status, _, _ = read_response(s, 10)
                assert status == 200, f"idle connection {i}: expected 200, saw {status}"
            idle.append(s)
            last.append(time.monotonic())
        probe_while(srv, 1.0, "with 200 idle connections open")
        t0 = time.monotonic()
        for i in (0, 1, 100, 199):
            left = TIMEOUT_S + 5.0 - (time.monotonic() - t0)
            closed_at = closed_within(idle[i], max(left, 0.1))
            assert closed_at is not None, (f"idle connection {i}: expected kobod to close it after the "
                                           f"{TIMEOUT_S} s connection timeout, still open")
            assert_not_early(closed_at, last[i], f"idle connection {i}")
        probe_while(srv, 0.5, "after idle connections timed out")
        # One more, watched from its last byte: closed after the timeout, not at once.
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        idle.append(s)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = read_response(s, 10)
        assert status == 200, f"keep-alive probe: expected 200, saw {status}"
        answered = time.monotonic()
        closed_at = closed_within(s, TIMEOUT_S + 5.0)
        assert closed_at is not None, f"an idle keep-alive connection must be closed after {TIMEOUT_S} s"
        assert_not_early(closed_at, answered, "idle keep-alive connection")
    finally:
        for s in idle:
            s.close()
