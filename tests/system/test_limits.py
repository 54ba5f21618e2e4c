"""
test_limits.py — memory held by request bodies is bounded server-wide:
connections that announce large bodies are charged at once, the request past
KOBO_HTTP_BODIES_BYTES_MAX (128 MiB, src/http/server.h) gets 503 overloaded
with Retry-After, nothing is applied, and the budget comes back when those
connections go away.
"""
import json
import socket
import time

from kobotest import (balance, expect_error, expect_status, make_account, read_response,
                      transfer_body, uid)

BODIES_BYTES_MAX = 128 << 20
BATCH_BODY_MAX = 8 << 20
# API.md: headers up to 16 KiB are read. libmicrohttpd keeps the request line
# and headers in each connection's memory pool (KOBO_HTTP_CONNECTION_MEMORY_
# DEFAULT, src/http/server.h), which also holds the read buffer for the body.
HEADERS_READ = 16 << 10


def announce_batch(port):
    """Opens a connection and sends only the headers of an 8 MiB batch."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /v1/transfers/batch HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % BATCH_BODY_MAX)
    return s


def test_request_bodies_share_a_bounded_budget(server):
    fits = BODIES_BYTES_MAX // BATCH_BODY_MAX
    held = [announce_batch(server.port) for _ in range(fits)]
    try:
        # Let the server read every header block (it answers none of them).
        time.sleep(1.0)
        extra = announce_batch(server.port)
        status, headers, body = read_response(extra, 10)
        extra.close()
        assert status == 503, f"expected 503 past the body budget, saw {status} {body!r}"
        error = json.loads(body)["error"]
        assert error["code"] == "overloaded", error
        assert headers.get("retry-after") == "1", headers
        for s in held:
            s.settimeout(0.2)
            try:
                assert s.recv(1) == b"", "a held upload was answered early"
            except socket.timeout:
                pass
    finally:
        for s in held:
            s.close()

    # The budget returns once the held connections are gone.
    deadline = time.monotonic() + 10
    acct = uid("lim")
    while True:
        resp = server.post("/v1/accounts", {"id": acct, "currency": "NGN"})
        if resp.status != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    expect_status(resp, 201, "account after the held bodies were released")


def padding_headers(total):
    """Extra headers adding up to about total bytes (name, value, CRLF)."""
    headers, left, i = {}, total, 0
    while left > 64:
        value = "p" * min(4000, left - 20)
        headers[f"X-Pad-{i}"] = value
        left -= len(value) + len(f"X-Pad-{i}: \r\n")
        i += 1
    return headers


def test_headers_up_to_16_kib_are_read_and_a_large_body_still_streams(server):
    """A request whose headers total 16 KiB is answered as usual, also when a
    300 KB batch body follows them through what is left of the connection's
    memory pool, and on a keep-alive connection reused after it."""
    pad = padding_headers(HEADERS_READ - 200)  # the client adds Host, Content-Length, ...
    assert sum(len(k) + len(v) + 4 for k, v in pad.items()) >= HEADERS_READ - 260
    cash, payee = uid("hcash"), uid("hpay")
    for acct, negative in ((cash, True), (payee, False)):
        r = server.post("/v1/accounts", {"id": acct, "currency": "NGN",
                                         "allow_negative": negative}, headers=pad)
        expect_status(r, 201, f"account {acct} with 16 KiB of headers")
    count = 2000
    body = {"transfers": [transfer_body(uid("hb"), cash, payee, 3) for _ in range(count)]}
    assert len(json.dumps(body)) > 200_000
    r = expect_status(server.post("/v1/transfers/batch", body, headers=pad), 200,
                      "batch with 16 KiB of headers")
    statuses = [x["status"] for x in r.body["results"]]
    assert statuses == [201] * count, f"every transfer posted, saw {set(statuses)}"
    bal = balance(server, payee)
    assert bal["posted"] == 3 * count, bal
    make_account(server, uid("hafter"))  # the connection still serves small requests
