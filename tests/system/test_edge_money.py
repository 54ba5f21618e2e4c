"""
test_edge_money.py — the HTTP edge's part of the money path (issue 7,
"money-path defects"), on real kobod processes:

  - post/void of an id that no shard holds answers 404 transfer_not_found
    at the edge, before any shard is asked; a cross-shard hold posted right
    after it was created is posted on the payer's shard (balances of payer
    and payee, `kobo audit`);
  - post/void of a cross-shard hold while a step of its saga is under way
    answers 409 transfer_in_progress with Retry-After, changes nothing, is
    not counted as a business rejection, and a retry once the saga settled
    gets the final answer;
  - a batch that spans shards may not name one id twice (400, nothing
    applied); a batch on one shard keeps replaying a repeat;
  - a batch's per-item state (ops, results, the per-shard split, the
    encoded reply) counts against the request-memory budget
    (KOBO_HTTP_BODIES_BYTES_MAX, 128 MiB): past it, 503 overloaded with
    Retry-After and nothing applied;
  - an oversized body with Content-Length is read (and dropped) before its
    413 is sent, so a client that writes the whole body reads the 413
    instead of a reset.
"""
import pytest
import http.client
import json
import socket
import threading
import time

from kobotest import (expect_audit_ok, expect_balance, expect_error, expect_status, get_transfer,
                      id_on_shard, make_account, metrics, read_response, shard_of, transfer,
                      transfer_body, uid, wait_until)

SHARDS = 2
BODIES_BYTES_MAX = 128 << 20
BATCH_BODY_MAX = 8 << 20
BATCH_OPS_MAX = 8190


def place(srv, prefix, shard, allow_negative=False):
    acct = id_on_shard(prefix, shard, SHARDS)
    make_account(srv, acct, "NGN", allow_negative=allow_negative)
    return acct


def funded_pair(srv, payer_shard, payee_shard, amount=10_000):
    """A cash account, a funded payer on payer_shard and an empty payee on
    payee_shard; returns (payer, payee)."""
    cash = place(srv, "cash", payer_shard, allow_negative=True)
    payer = place(srv, "payer", payer_shard)
    payee = place(srv, "payee", payee_shard)
    expect_status(transfer(srv, uid("fund"), cash, payer, amount), 201, "fund the payer")
    return payer, payee


def batches_committed(srv):
    """{shard: batches committed} from kobo_batch_ops_count."""
    m = metrics(srv)
    return {s: m.get(f'kobo_batch_ops_count{{shard="{s}"}}', 0.0) for s in range(SHARDS)}


# ---------------------------------------------- 1. routing of post/void ----

@pytest.mark.own_shards
def test_post_and_void_of_an_unknown_id_answer_404_at_the_edge(make_server):
    srv = make_server("--shards", str(SHARDS))
    payer, payee = funded_pair(srv, 0, 1)
    before_payer, before_payee = (expect_balance(srv, payer), expect_balance(srv, payee))
    # Let the writers go idle, then count their batches.
    time.sleep(0.3)
    committed = batches_committed(srv)
    for shard in range(SHARDS):
        ghost = id_on_shard("ghost", shard, SHARDS)
        expect_error(srv.post(f"/v1/transfers/{ghost}/post", {"amount": 1}), 404,
                     "transfer_not_found", f"post of unknown {ghost}")
        expect_error(srv.post(f"/v1/transfers/{ghost}/void"), 404, "transfer_not_found",
                     f"void of unknown {ghost}")
        expect_error(get_transfer(srv, ghost), 404, "transfer_not_found", f"GET {ghost}")
    assert batches_committed(srv) == committed, (
        f"post/void of ids no shard holds must be answered at the edge without a shard "
        f"commit: batches committed per shard before {committed}, after {batches_committed(srv)}")
    expect_balance(srv, payer, "payer after unknown post/void", **before_payer)
    expect_balance(srv, payee, "payee after unknown post/void", **before_payee)


@pytest.mark.own_shards
def test_cross_shard_hold_posted_right_after_creation_is_posted_on_the_payer_shard(make_server):
    srv = make_server("--shards", str(SHARDS))
    payer, payee = funded_pair(srv, 0, 1, amount=100_000)
    for round_ in range(8):
        # The transfer id hashes to the payee's shard: a guessed route would
        # land on the CREDIT leg there.
        hold = id_on_shard("hold", 1, SHARDS)
        answers = []

        def poster():
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                r = srv.post(f"/v1/transfers/{hold}/post")
                answers.append(r)
                if r.status != 404:
                    return

        t = threading.Thread(target=poster)
        t.start()
        r = transfer(srv, hold, payer, payee, 1000, pending=True)
        t.join(30)
        expect_status(r, (201, 200, 202), f"round {round_}: create cross-shard hold {hold}")
        last = answers[-1]
        for a in answers[:-1]:
            expect_error(a, 404, "transfer_not_found", f"round {round_}: post before the hold exists")
        if last.status == 409:
            expect_error(last, 409, "transfer_in_progress", f"round {round_}: early post")
            assert wait_until(lambda: srv.post(f"/v1/transfers/{hold}/post").status == 200, 20), (
                f"round {round_}: the post retried after the saga must answer 200")
        else:
            expect_status(last, (200, 202), f"round {round_}: post right after creation")
        assert wait_until(lambda: get_transfer(srv, hold).body.get("status") == "posted", 20), (
            f"round {round_}: expected {hold} posted, saw {get_transfer(srv, hold)!r}")
    assert wait_until(lambda: expect_balance(srv, payee).get("pending_in") == 0, 20)
    expect_balance(srv, payer, "payer after 8 posted holds of 1000", posted=100_000 - 8000,
                   pending_out=0, available=100_000 - 8000)
    expect_balance(srv, payee, "payee after 8 posted holds of 1000", posted=8000, pending_in=0,
                   pending_out=0)
    srv.sigterm()
    expect_audit_ok(srv, "after holds posted right after creation")


# ------------------------------------------- 2. 409 transfer_in_progress ----

def rejections(srv, code):
    return metrics(srv).get(f'kobo_rejections_total{{code="{code}"}}', 0.0)


@pytest.mark.own_shards
def test_post_or_void_during_a_saga_step_is_409_transfer_in_progress(make_server):
    srv = make_server("--shards", str(SHARDS))
    payer, payee = funded_pair(srv, 0, 1, amount=1_000_000)
    in_progress = 0
    outcomes = {}
    for round_ in range(30):
        hold = uid("race")
        expect_status(transfer(srv, hold, payer, payee, 100, pending=True), 201,
                      f"round {round_}: create cross-shard hold")
        post_answer = []
        t = threading.Thread(target=lambda: post_answer.append(
            srv.post(f"/v1/transfers/{hold}/post")))
        t.start()
        # Void only once the post's step shows (the record is processing),
        # so the void does not simply win the race to the payer's writer.
        voids = []
        while t.is_alive() and len(voids) < 200:
            if get_transfer(srv, hold).body.get("status") == "processing":
                voids.append(srv.post(f"/v1/transfers/{hold}/void"))
        t.join(30)
        post = post_answer[0]
        for r in voids + [post]:
            if r.status == 409:
                in_progress += 1
                expect_error(r, 409, "transfer_in_progress", f"round {round_}")
                assert r.header("Retry-After") == "1", (
                    f"round {round_}: a 409 transfer_in_progress must carry Retry-After: 1, "
                    f"saw headers {r.headers}")
                assert "retry" in r.body["error"]["message"], r.body
            else:
                expect_status(r, (200, 202, 422), f"round {round_}: post/void race")
                if r.status == 422:
                    expect_error(r, 422, "not_pending", f"round {round_}")
        # Once the saga settled, the same requests get their final answer.
        assert wait_until(lambda: get_transfer(srv, hold).body["status"] in ("posted", "voided"),
                          20), f"round {round_}: {get_transfer(srv, hold)!r}"
        final = get_transfer(srv, hold).body["status"]
        outcomes[final] = outcomes.get(final, 0) + 1
        retry_void = srv.post(f"/v1/transfers/{hold}/void")
        retry_post = srv.post(f"/v1/transfers/{hold}/post")
        if final == "posted":
            expect_status(retry_post, 200, f"round {round_}: post retried after the saga")
            expect_error(retry_void, 422, "not_pending", f"round {round_}: void after posted")
        else:
            expect_status(retry_void, 200, f"round {round_}: void retried after the saga")
            expect_error(retry_post, 422, "not_pending", f"round {round_}: post after voided")
        if in_progress >= 3 and round_ >= 5:
            break
    assert in_progress > 0, (
        f"expected at least one 409 transfer_in_progress from a void racing a cross-shard "
        f"post; saw none in {round_ + 1} rounds (final states {outcomes})")
    assert rejections(srv, "transfer_in_progress") == 0, (
        "409 transfer_in_progress is not a business rejection: kobo_rejections_total"
        f"{{code=\"transfer_in_progress\"}} must stay 0, saw {rejections(srv, 'transfer_in_progress')}")
    posted = outcomes.get("posted", 0)
    spent = posted * 100
    assert wait_until(lambda: expect_balance(srv, payer).get("pending_out") == 0, 20)
    expect_balance(srv, payer, "payer after the races", posted=1_000_000 - spent, pending_out=0)
    expect_balance(srv, payee, "payee after the races", posted=spent, pending_in=0)
    srv.sigterm()
    expect_audit_ok(srv, "after post/void races")


# --------------------------------------------- 3. duplicate ids in a batch ----

@pytest.mark.own_shards
def test_batch_spanning_shards_refuses_a_repeated_id(make_server):
    srv = make_server("--shards", str(SHARDS))
    payer0, payee0 = funded_pair(srv, 0, 0)
    payer1, payee1 = funded_pair(srv, 1, 1)
    bal = {a: expect_balance(srv, a) for a in (payer0, payee0, payer1, payee1)}
    dup = uid("dup")
    other = uid("other")
    body = {"transfers": [transfer_body(other, payer0, payee0, 5),
                          transfer_body(dup, payer0, payee0, 10),
                          transfer_body(dup, payer1, payee1, 10)]}
    r = srv.post("/v1/transfers/batch", body)
    err = expect_error(r, 400, "invalid_request", "batch naming one id on two payer shards",
                       field="transfers[2].id")
    assert dup in err["message"], f"the message must name the repeated id {dup!r}: {err}"
    for tid in (dup, other):
        expect_error(get_transfer(srv, tid), 404, "transfer_not_found",
                     f"{tid} after the refused batch")
    for a, b in bal.items():
        expect_balance(srv, a, f"{a} after the refused batch", **b)

    # The same repeat with a cross-shard transfer (one payer shard) is
    # refused too: the batch spans shards.
    body = {"transfers": [transfer_body(dup, payer0, payee1, 10),
                          transfer_body(dup, payer0, payee1, 10)]}
    expect_error(srv.post("/v1/transfers/batch", body), 400, "invalid_request",
                 "cross-shard batch naming one id twice", field="transfers[1].id")

    # A batch on one shard keeps today's answer: the repeat replays.
    same = uid("same")
    body = {"transfers": [transfer_body(same, payer0, payee0, 10),
                          transfer_body(same, payer0, payee0, 10)]}
    r = expect_status(srv.post("/v1/transfers/batch", body), 200, "one-shard batch with a repeat")
    assert [x["status"] for x in r.body["results"]] == [201, 200], r.body
    expect_balance(srv, payee0, "payee0 after the one-shard repeat", posted=10)


# ------------------------------------------------- 4. the memory budget ----

def announce_batch(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /v1/transfers/batch HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % BATCH_BODY_MAX)
    return s


def full_batch(tag):
    """A batch of BATCH_OPS_MAX transfers (small body, ~1 MB) between accounts
    that do not exist, payers spread over the shards by their hash."""
    items = []
    for i in range(BATCH_OPS_MAX):
        src = f"nobody:{tag}:{i % 16}"
        items.append(transfer_body(f"{tag}:{i}", src, f"nowhere:{tag}", 1))
    return {"transfers": items}


@pytest.mark.own_shards
def test_batch_items_count_against_the_request_memory_budget(make_server):
    for shards in (1, SHARDS):
        srv = make_server("--shards", str(shards))
        tag = uid("budget")
        body = json.dumps(full_batch(tag)).encode()
        assert len(body) < 2 << 20, len(body)
        # 15 announced 8 MiB bodies hold 120 MiB: the batch's body fits the
        # remaining 8 MiB, its ~8190 × 1.9 KB of ops, results and reply text
        # (handlers.c charges sizeof(kobo_op) + sizeof(kobo_result) + 512
        # bytes an item: ~15 MiB) do not.
        held = [announce_batch(srv.port) for _ in range(BODIES_BYTES_MAX // BATCH_BODY_MAX - 1)]
        try:
            time.sleep(1.0)
            r = srv.post("/v1/transfers/batch", body)
            expect_error(r, 503, "overloaded", f"--shards {shards}: a full batch past the budget")
            assert r.header("Retry-After") == "1", r.headers
        finally:
            for s in held:
                s.close()
        expect_error(get_transfer(srv, f"{tag}:0"), 404, "transfer_not_found",
                     "nothing of the refused batch is recorded")
        # With 13 bodies held (24 MiB left) the batch's own state (~16 MiB
        # with its body) fits on one shard; spread over two, its split copy
        # (ops, results, slots: ~16 MiB more) does not.
        held = [announce_batch(srv.port) for _ in range(BODIES_BYTES_MAX // BATCH_BODY_MAX - 3)]
        try:
            time.sleep(1.0)
            r = srv.post("/v1/transfers/batch", body)
            if shards == 1:
                expect_status(r, 200, "one shard: the batch's state fits beside 13 held bodies")
            else:
                expect_error(r, 503, "overloaded",
                             f"--shards {shards}: the split copy does not fit beside 13 held bodies")
                expect_error(get_transfer(srv, f"{tag}:0"), 404, "transfer_not_found",
                             "nothing of the refused split batch is recorded")
        finally:
            for s in held:
                s.close()
        # The budget comes back: the same batch now fits.
        deadline = time.monotonic() + 10
        while True:
            r = srv.post("/v1/transfers/batch", body)
            if r.status != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        expect_status(r, 200, f"--shards {shards}: the batch once the held bodies are gone")
        assert len(r.body["results"]) == BATCH_OPS_MAX
        # And the batch gave its share back: 16 bodies of 8 MiB fit again.
        held = [announce_batch(srv.port) for _ in range(BODIES_BYTES_MAX // BATCH_BODY_MAX)]
        try:
            time.sleep(1.0)
            for s in held:
                s.settimeout(0.05)
                try:
                    assert s.recv(1) == b"", "a held upload was answered: the budget leaked"
                except socket.timeout:
                    pass
        finally:
            for s in held:
                s.close()
        srv.sigterm()


# ------------------------------------------- 5. lingering close on a 413 ----

def test_oversized_body_with_content_length_reads_its_413(make_server):
    srv = make_server()
    body = b"x" * ((1 << 20) + 30)
    for attempt in range(6):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
        try:
            conn.request("POST", "/v1/transfers", body=body,
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            raw = r.read()
        except (BrokenPipeError, ConnectionResetError) as e:
            raise AssertionError(f"attempt {attempt}: expected to read a 413, the server reset "
                                 f"the connection instead ({e!r})")
        finally:
            conn.close()
        assert r.status == 413, f"attempt {attempt}: expected 413, saw {r.status} {raw[:300]!r}"
        err = json.loads(raw)["error"]
        assert err["code"] == "payload_too_large", err
        assert r.getheader("X-Request-Id"), r.getheaders()
    expect_status(srv.get("/healthz"), 200, "server still serves after the 413s")


def test_oversized_batch_body_reads_its_413(make_server):
    srv = make_server()
    body = b" " * (BATCH_BODY_MAX + 30)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
    try:
        conn.request("POST", "/v1/transfers/batch", body=body)
        r = conn.getresponse()
        raw = r.read()
    finally:
        conn.close()
    assert r.status == 413, f"expected 413, saw {r.status} {raw[:300]!r}"
    assert json.loads(raw)["error"]["code"] == "payload_too_large"
