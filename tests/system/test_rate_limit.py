"""
Per-client-IP rate limits (GCRA) on a real kobod (embedded SQLite store):

- a flood from one client IP gets 429 rate_limited with Retry-After (whole
  seconds >= 1) and RateLimit-Limit / -Remaining / -Reset, allowed answers
  carry the RateLimit-* headers too, and a second client IP keeps its full
  burst meanwhile (two client IPs presented through X-Forwarded-For from a
  --trusted-proxy 127.0.0.1/32 peer);
- nothing over the limit reaches the ledger: exactly the transfers answered
  201 exist (history and balance), and a batch refused for its cost leaves
  none of its transfers;
- /healthz, /readyz, /metrics are not limited; kobo_rate_limited_total{by="ip"}
  counts the 429s;
- X-Forwarded-For is ignored when the peer is not a trusted proxy;
- bad flag and environment values make kobod exit 2 with a message.
"""
import os
import subprocess
import time

import pytest

from kobotest import (binary, child_env, expect_error, expect_status, free_port,
                      raw_exchange, transfer_body, uid)

# The limit acts at the HTTP edge, before any store is touched: one backend
# is enough (it passes on pg1 and pg2 too: KOBO_TEST_BACKENDS).
pytestmark = pytest.mark.embedded_only("the limit acts at the HTTP edge before any store; "
                                       "one backend is enough")

RATE = 2    # requests per second, sustained
BURST = 5


def xff(ip):
    return {"X-Forwarded-For": f"203.0.113.50, {ip}"}  # the last hop counts


def check_limit_headers(r, what):
    for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"):
        v = r.header(name)
        assert v is not None and v.isdigit(), f"{what}: {name} missing or not a number: {v!r}"
    assert int(r.header("RateLimit-Limit")) == BURST, f"{what}: RateLimit-Limit {r.header('RateLimit-Limit')}"


def metric(srv, series):
    r = srv.get("/metrics")
    expect_status(r, 200, "GET /metrics")
    for line in r.raw.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"/metrics has no {series} series")


def test_flood_from_one_ip_is_limited_and_nothing_over_it_is_recorded(make_server):
    srv = make_server("--ip-rate-limit", str(RATE), "--ip-rate-burst", str(BURST),
                      "--trusted-proxy", "127.0.0.1/32")
    setup = xff("10.0.0.99")
    cash, payee = uid("cash"), uid("payee")
    for acct, neg in ((cash, True), (payee, False)):
        r = srv.post("/v1/accounts", {"id": acct, "currency": "NGN", "allow_negative": neg},
                     headers=setup)
        expect_status(r, 201, f"create {acct}")
        check_limit_headers(r, "an allowed request")

    # The flood: 40 transfers from 10.0.0.1 as fast as one client goes.
    allowed, limited = [], []
    t0 = time.monotonic()
    for i in range(40):
        tid = uid("flood")
        r = srv.post("/v1/transfers", transfer_body(tid, cash, payee, 1), headers=xff("10.0.0.1"))
        if r.status == 201:
            check_limit_headers(r, f"flood transfer {i} (201)")
            allowed.append(tid)
        else:
            expect_error(r, 429, "rate_limited", f"flood transfer {i}")
            check_limit_headers(r, f"flood transfer {i} (429)")
            ra = r.header("Retry-After")
            assert ra is not None and ra.isdigit() and int(ra) >= 1, f"Retry-After {ra!r}"
            assert r.header("RateLimit-Remaining") == "0", r.header("RateLimit-Remaining")
            limited.append(tid)
    elapsed = time.monotonic() - t0
    assert limited, "40 transfers in a row from one IP at 2/s burst 5: expected some 429s"
    assert len(allowed) >= BURST, f"the first {BURST} (the burst) must pass, {len(allowed)} did"
    assert len(allowed) <= BURST + RATE * elapsed + 1, (
        f"{len(allowed)} admitted in {elapsed:.2f} s at {RATE}/s burst {BURST}")

    # Health, readiness and metrics from the flooded IP are not limited.
    for path in ("/healthz", "/readyz", "/metrics"):
        for _ in range(3):
            r = srv.get(path, headers=xff("10.0.0.1"))
            expect_status(r, 200, f"GET {path} from a limited IP")
            assert r.header("RateLimit-Limit") is None, f"{path} carries RateLimit headers"

    # A second client IP keeps its full burst meanwhile.
    second = []
    for i in range(BURST):
        tid = uid("second")
        r = srv.post("/v1/transfers", transfer_body(tid, cash, payee, 1), headers=xff("10.0.0.2"))
        expect_status(r, 201, f"second IP transfer {i} of its burst")
        assert r.header("RateLimit-Remaining") == str(BURST - 1 - i), r.header("RateLimit-Remaining")
        second.append(tid)

    # Only the admitted transfers exist: history and balance (read from a
    # third IP: two requests).
    reader = xff("10.0.0.3")
    r = srv.get(f"/v1/accounts/{payee}/transfers?limit=1000", headers=reader)
    expect_status(r, 200, "payee history")
    ids = sorted(t["id"] for t in r.body["data"])
    assert ids == sorted(allowed + second), (
        f"history holds {len(ids)} transfers, {len(allowed) + len(second)} were admitted; "
        f"limited ones present: {sorted(set(ids) & set(limited))[:5]}")
    r = srv.get(f"/v1/accounts/{payee}", headers=reader)
    expect_status(r, 200, "payee")
    assert r.body["balance"]["posted"] == len(allowed) + len(second), r.body["balance"]

    assert metric(srv, 'kobo_rate_limited_total{by="ip"}') == len(limited)


def test_batch_costs_its_size_and_a_refused_batch_records_nothing(make_server):
    # One request per 100 s: nothing refills while the batches run (ASan).
    srv = make_server("--ip-rate-limit", "0.01", "--ip-rate-burst", str(BURST),
                      "--trusted-proxy", "127.0.0.1/32")
    setup = xff("10.1.0.99")
    cash, payee = uid("cash"), uid("payee")
    for acct, neg in ((cash, True), (payee, False)):
        r = srv.post("/v1/accounts", {"id": acct, "currency": "NGN", "allow_negative": neg},
                     headers=setup)
        expect_status(r, 201, f"create {acct}")

    # 200 transfers cost 1 + 200/100 = 3 of the burst of 5: the first
    # passes, a second one does not (2 left).
    first = [uid("b1") for _ in range(200)]
    second = [uid("b2") for _ in range(200)]
    client = xff("10.1.0.1")
    r = srv.post("/v1/transfers/batch",
                 {"transfers": [transfer_body(t, cash, payee, 1) for t in first]}, headers=client)
    expect_status(r, 200, "first batch (cost 3 of 5)")
    assert r.header("RateLimit-Remaining") == "2", r.header("RateLimit-Remaining")
    r = srv.post("/v1/transfers/batch",
                 {"transfers": [transfer_body(t, cash, payee, 1) for t in second]}, headers=client)
    expect_error(r, 429, "rate_limited", "second batch right after")
    assert int(r.header("Retry-After")) >= 1

    r = srv.get(f"/v1/accounts/{payee}/transfers?limit=1000", headers=xff("10.1.0.3"))
    expect_status(r, 200, "history")
    ids = {t["id"] for t in r.body["data"]}
    assert ids == set(first), f"{len(ids & set(second))} transfers of the refused batch exist"


def test_forwarded_for_ignored_unless_the_peer_is_trusted(make_server):
    # The peer (127.0.0.1) is outside the trusted network: X-Forwarded-For
    # does not make new clients, every request counts for 127.0.0.1.
    srv = make_server("--ip-rate-limit", "0.5", "--ip-rate-burst", "3",
                      "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::1/128")
    statuses = []
    for i in range(6):
        r = srv.get("/v1/accounts/nobody", headers=xff(f"192.0.2.{i + 1}"))
        statuses.append(r.status)
    assert statuses[:3] == [404, 404, 404], statuses
    assert statuses[3:] == [429, 429, 429], (
        f"X-Forwarded-For from an untrusted peer must not pick the client: {statuses}")

    # Without any --trusted-proxy the same holds.
    srv2 = make_server("--ip-rate-limit", "0.5", "--ip-rate-burst", "2")
    statuses = [srv2.get("/v1/accounts/nobody", headers=xff(f"192.0.2.{i + 1}")).status
                for i in range(4)]
    assert statuses == [404, 404, 429, 429], statuses


def test_forwarded_ipv6_is_one_key_per_address_and_garbage_counts_as_the_proxy(make_server):
    srv = make_server("--ip-rate-limit", "0.01", "--ip-rate-burst", "2",
                      "--trusted-proxy", "127.0.0.0/8")

    def status(hop):
        return srv.get("/v1/accounts/nobody", headers={"X-Forwarded-For": hop}).status

    # Two spellings of one IPv6 address share a bucket; another address has its own.
    assert [status("2001:db8::1"), status("2001:DB8:0:0::1"), status("2001:db8::1")] == \
        [404, 404, 429]
    assert [status("2001:db8::2"), status("2001:db8::2")] == [404, 404]
    # An IPv4-mapped IPv6 hop is its IPv4 address.
    assert [status("192.0.2.7"), status("::ffff:192.0.2.7"), status("192.0.2.7")] == \
        [404, 404, 429]
    # A last hop that is not an address leaves the peer (127.0.0.1) as the client.
    assert [status("not-an-ip"), status("10.0.0.1:8080"), status("")] == [404, 404, 429]
    r = srv.get("/v1/accounts/nobody")  # no header: the peer too
    expect_error(r, 429, "rate_limited", "the peer's bucket is empty")


def test_limited_body_is_dropped_or_answered_at_once(make_server):
    srv = make_server("--ip-rate-limit", "0.01", "--ip-rate-burst", "1")
    r = srv.get("/v1/accounts/nobody")
    expect_status(r, 404, "the burst of 1")
    body = b'{"id":"x","currency":"NGN"}'
    head = (b"POST /v1/accounts HTTP/1.1\r\nHost: k\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n" % len(body))
    # A small body sent whole: read and dropped, then the 429.
    status, headers, _ = raw_exchange(srv.port, head + b"\r\n" + body)
    assert status == 429 and int(headers["retry-after"]) >= 1, (status, headers)
    # Expect: 100-continue, body not sent: the 429 comes at once (no 100).
    status, headers, _ = raw_exchange(srv.port, head + b"Expect: 100-continue\r\n\r\n",
                                      read_timeout=5)
    assert status == 429, f"expected 429 at once without the body, saw {status} {headers}"
    # A body announced far past the route's limit: answered at once too.
    big = (b"POST /v1/accounts HTTP/1.1\r\nHost: k\r\nContent-Length: %d\r\n\r\n"
           % (64 << 20))
    status, headers, _ = raw_exchange(srv.port, big, read_timeout=5)
    assert status == 429, f"expected 429 at once for a 64 MiB announced body, saw {status}"
    r = srv.get("/v1/accounts/x", headers={})
    assert r.status == 429


def test_limit_off_by_default_has_no_headers(make_server):
    srv = make_server()
    for _ in range(30):
        r = srv.get("/v1/accounts/nobody")
        expect_status(r, 404, "no limit configured")
        assert r.header("RateLimit-Limit") is None


BAD_FLAGS = [
    (["--ip-rate-limit", "0"], {}, "--ip-rate-limit"),
    (["--ip-rate-limit", "-1"], {}, "--ip-rate-limit"),
    (["--ip-rate-limit", "abc"], {}, "--ip-rate-limit"),
    (["--ip-rate-limit", "1e3"], {}, "--ip-rate-limit"),
    (["--ip-rate-limit", "inf"], {}, "--ip-rate-limit"),
    (["--ip-rate-limit", "2000000"], {}, "--ip-rate-limit"),
    (["--ip-rate-limit", ""], {}, "--ip-rate-limit"),
    (["--ip-rate-limit", "5", "--ip-rate-burst", "0"], {}, "--ip-rate-burst"),
    (["--ip-rate-limit", "5", "--ip-rate-burst", "2.5"], {}, "--ip-rate-burst"),
    (["--ip-rate-limit", "5", "--ip-rate-burst", "-3"], {}, "--ip-rate-burst"),
    (["--ip-rate-burst", "10"], {}, "--ip-rate-burst"),
    (["--trusted-proxy", "10.0.0.1/8"], {}, "--trusted-proxy"),
    (["--trusted-proxy", "10.0.0.0/33"], {}, "--trusted-proxy"),
    (["--trusted-proxy", "::/129"], {}, "--trusted-proxy"),
    (["--trusted-proxy", "example.com"], {}, "--trusted-proxy"),
    (["--trusted-proxy", "10.0.0.0/"], {}, "--trusted-proxy"),
    ([], {"KOBO_IP_RATE_LIMIT": "fast"}, "KOBO_IP_RATE_LIMIT"),
    ([], {"KOBO_IP_RATE_LIMIT": "5", "KOBO_IP_RATE_BURST": "0"}, "KOBO_IP_RATE_BURST"),
    ([], {"KOBO_TRUSTED_PROXY": "127.0.0.1/32 nonsense"}, "KOBO_TRUSTED_PROXY"),
]


def test_bad_limit_flags_exit_2(tmp_path):
    for args, env, named in BAD_FLAGS:
        cmd = [binary("kobod"), "--listen", f"127.0.0.1:{free_port()}",
               "--data", str(tmp_path / "data")] + args
        e = child_env()
        e.update(env)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=e)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{args} {env}: kobod still running after 30 s, expected exit 2")
        assert p.returncode == 2, f"{args} {env}: exit {p.returncode}, stderr {p.stderr[-800:]}"
        assert named in p.stderr, f"{args} {env}: stderr does not name {named}: {p.stderr[-800:]}"
    assert not os.path.exists(tmp_path / "data" / "shard-0.db"), "a refused start made a store"
