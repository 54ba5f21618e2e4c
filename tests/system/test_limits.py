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

from kobotest import expect_error, expect_status, read_response, uid

BODIES_BYTES_MAX = 128 << 20
BATCH_BODY_MAX = 8 << 20


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
