#!/usr/bin/python3
"""loadgen.py — steady writes at a fixed rate, each retried with its own id
until acknowledged, then a verification of everything acknowledged.

kobo-bench drives load too, but it does not retry a failed transfer (a 503
or a cut connection is recorded as not applied / unknown and resolved by its
verify), so it cannot show how long clients could not write. This client
does what API.md asks of a client: on a transport error, a timeout, a 5xx or
a 429 it sends the same request (same transfer id) again until it gets a
2xx or a 4xx refusal, so the run measures the write-unavailability window:
from the first attempt that failed to the first write that succeeded after
it.

  loadgen.py --url http://VIP:PORT --rate 100 --duration 40 --out result.json

With --key KEY (default $KOBO_API_KEY) every request carries
`Authorization: Bearer KEY`; the key needs accounts and transfers read and
write (scripts/fleet.sh up prints one with every scope).

Phases: setup (accounts, funding; retried like writes), load (every
1/rate s a new transfer id is due; a worker picks it up, retrying it until
acknowledged or --give-up seconds), verify (GET every acknowledged transfer:
it exists with its amount; GET every account: each balance equals what the
acknowledged transfers say, nothing applied twice, and the balances sum to
zero). Exit 0 when verification holds, 1 when it does not, 2 usage. The
JSON result: counts, the window, errors seen (by kind), verification.
Bounded everywhere: each request 3 s, each transfer --give-up s, the whole
run duration + give-up + verify timeout.
"""
import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.parse

FUNDING = 10**12


class Client:
    """One keep-alive connection; reconnects after any error."""

    def __init__(self, url, timeout, key=None):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port or 80
        self.timeout = timeout
        self.auth = {"Authorization": f"Bearer {key}"} if key else {}
        self.conn = None

    def request(self, method, path, body=None):
        """(status, json-or-None, headers) or raises OSError/HTTPException."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        headers.update(self.auth)
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except Exception:
            self.close()
            raise
        if resp.getheader("Connection", "").lower() == "close":
            self.close()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        return resp.status, doc, resp

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def retryable(status):
    return status == 429 or status >= 500


class Run:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.attempts = []        # (t_start, t_end, ok, kind) for every transfer attempt
        self.errors = {}          # kind → count
        self.acked = {}           # id → (from, to, amount)
        self.refused = {}         # id → status (4xx business refusals: not applied)
        self.gave_up = []         # ids never answered within --give-up
        self.t0 = time.monotonic()
        self.t0_epoch = time.time()

    def note(self, t_start, ok, kind):
        t_end = time.monotonic() - self.t0
        with self.lock:
            self.attempts.append((t_start, t_end, ok, kind))
            if not ok:
                self.errors[kind] = self.errors.get(kind, 0) + 1


def send_until_answered(client, run, method, path, body, give_up_s, record):
    """Sends method/path/body (same body, so same id) until a non-retryable
    answer or give_up_s. Returns (status, doc) or (None, None)."""
    deadline = time.monotonic() + give_up_s
    delay = 0.05
    while True:
        t_start = time.monotonic() - run.t0
        try:
            status, doc, _ = client.request(method, path, body)
            kind = None if not retryable(status) else f"{status} {(doc or {}).get('error', {}).get('code', '')}".strip()
        except (OSError, http.client.HTTPException) as e:
            status, doc, kind = None, None, type(e).__name__
        if record:
            run.note(t_start, kind is None, kind)
        if kind is None:
            return status, doc
        if time.monotonic() + delay > deadline:
            return None, None
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def setup(run, client):
    a = run.args
    accounts = [{"id": f"{a.prefix}:cash", "currency": "NGN", "allow_negative": True}]
    accounts += [{"id": f"{a.prefix}:w:{i}", "currency": "NGN"} for i in range(a.accounts)]
    for acc in accounts:
        st, _ = send_until_answered(client, run, "POST", "/v1/accounts", acc, 60, False)
        if st not in (200, 201):
            raise SystemExit(f"setup: account {acc['id']}: {st}")
    for i in range(a.accounts):
        t = {"id": f"{a.prefix}:fund:{i}", "from": f"{a.prefix}:cash", "to": f"{a.prefix}:w:{i}",
             "amount": FUNDING, "currency": "NGN"}
        st, _ = send_until_answered(client, run, "POST", "/v1/transfers", t, 60, False)
        if st not in (200, 201):
            raise SystemExit(f"setup: funding {i}: {st}")
        run.acked[t["id"]] = (t["from"], t["to"], t["amount"])


def worker(run, queue, qlock):
    a = run.args
    client = Client(a.url, a.request_timeout, a.key)
    rng = random.Random()
    while True:
        with qlock:
            if not queue:
                if queue.closed:
                    break
                k = None
            else:
                k = queue.pop(0)
        if k is None:
            time.sleep(0.002)
            continue
        i, j = rng.sample(range(a.accounts), 2)
        t = {"id": f"{a.prefix}:t:{k}", "from": f"{a.prefix}:w:{i}", "to": f"{a.prefix}:w:{j}",
             "amount": rng.randint(1, 1000), "currency": "NGN"}
        st, doc = send_until_answered(client, run, "POST", "/v1/transfers", t, a.give_up, True)
        with run.lock:
            if st in (200, 201, 202):
                run.acked[t["id"]] = (t["from"], t["to"], t["amount"])
            elif st is None:
                run.gave_up.append(t["id"])
            else:
                run.refused[t["id"]] = st
    client.close()


class Queue(list):
    closed = False


def load(run):
    a = run.args
    queue, qlock = Queue(), threading.Lock()
    threads = [threading.Thread(target=worker, args=(run, queue, qlock)) for _ in range(a.workers)]
    for th in threads:
        th.start()
    start = time.monotonic()
    run.load_start = start - run.t0
    interval = 1.0 / a.rate
    k = 0
    while True:
        now = time.monotonic()
        if now - start >= a.duration:
            break
        due = start + k * interval
        if due > now:
            time.sleep(min(due - now, 0.05))
            continue
        with qlock:
            queue.append(k)
        k += 1
    with qlock:
        queue.closed = True
    for th in threads:
        th.join(a.give_up + a.request_timeout + 5)
    run.issued = k


def windows(attempts):
    """Write-unavailability windows: for every run of failed attempts between
    two acknowledged writes, from the start of its first failed attempt to
    the end of the first acknowledged write after it (seconds since t0)."""
    oks = sorted(t_end for _, t_end, ok, _ in attempts if ok)
    fails = sorted((t_start, t_end) for t_start, t_end, ok, _ in attempts if not ok)
    out = []
    i = 0
    for t_start, t_end in fails:
        # the first acknowledgement after this failure was answered
        while i < len(oks) and oks[i] < t_end:
            i += 1
        nxt = oks[i] if i < len(oks) else None
        if out and (out[-1][1] == nxt or (out[-1][1] is not None and t_start <= out[-1][1])):
            # the same outage (several attempts failing at once)
            out[-1][0] = min(out[-1][0], t_start)
            out[-1][1] = None if nxt is None or out[-1][1] is None else max(out[-1][1], nxt)
        else:
            out.append([t_start, nxt])
    return out


def verify(run, client):
    a = run.args
    problems = []
    expected = {}
    for tid, (src, dst, amount) in run.acked.items():
        expected[src] = expected.get(src, 0) - amount
        expected[dst] = expected.get(dst, 0) + amount
    deadline = time.monotonic() + a.verify_timeout
    # Every acknowledged transfer exists, with its amount.
    for tid, (src, dst, amount) in run.acked.items():
        st, doc = send_until_answered(client, run, "GET", "/v1/transfers/" + urllib.parse.quote(tid, safe=":"),
                                      None, max(1, deadline - time.monotonic()), False)
        if st != 200 or doc.get("amount") != amount or doc.get("from") != src or doc.get("to") != dst:
            problems.append(f"acknowledged transfer {tid}: {st} {doc}")
    # Transfers never acknowledged (gave up, refused) must not have moved
    # money unless they exist: count them where they exist.
    for tid in run.gave_up + list(run.refused):
        st, doc = send_until_answered(client, run, "GET", "/v1/transfers/" + urllib.parse.quote(tid, safe=":"),
                                      None, max(1, deadline - time.monotonic()), False)
        if st == 200 and doc.get("status") == "posted":
            expected[doc["from"]] = expected.get(doc["from"], 0) - doc["amount"]
            expected[doc["to"]] = expected.get(doc["to"], 0) + doc["amount"]
    total = 0
    ids = [f"{a.prefix}:cash"] + [f"{a.prefix}:w:{i}" for i in range(a.accounts)]
    for acc in ids:
        st, doc = send_until_answered(client, run, "GET", "/v1/accounts/" + acc, None,
                                      max(1, deadline - time.monotonic()), False)
        if st != 200:
            problems.append(f"account {acc}: {st}")
            continue
        posted = doc["balance"]["posted"]
        total += posted
        if posted != expected.get(acc, 0):
            problems.append(f"account {acc}: posted {posted}, acknowledged transfers say {expected.get(acc, 0)}"
                            " (lost or applied twice)")
    if total != 0:
        problems.append(f"balances sum to {total}, not 0")
    return problems


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, default=100)
    p.add_argument("--duration", type=float, default=30)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--accounts", type=int, default=20)
    p.add_argument("--prefix", default=f"lg{random.randrange(16**6):06x}")
    p.add_argument("--give-up", type=float, default=60, help="seconds a transfer is retried")
    p.add_argument("--request-timeout", type=float, default=3)
    p.add_argument("--verify-timeout", type=float, default=60)
    p.add_argument("--out", help="write the JSON result here (else stdout)")
    p.add_argument("--key", default=os.environ.get("KOBO_API_KEY") or None,
                   help="API key sent as Authorization: Bearer (default $KOBO_API_KEY)")
    a = p.parse_args()
    if a.rate <= 0 or a.duration <= 0 or a.workers < 1 or a.accounts < 2:
        p.error("rate, duration > 0; workers >= 1; accounts >= 2")
    run = Run(a)
    client = Client(a.url, a.request_timeout, a.key)
    setup(run, client)
    load(run)
    problems = verify(run, client)
    wins = windows(run.attempts)
    longest = max(((e if e is not None else float("inf")) - s for s, e in wins), default=0.0)
    oks = sorted(t_end for _, t_end, ok, _ in run.attempts if ok)
    gap = max((b - a2 for a2, b in zip(oks, oks[1:])), default=0.0)
    result = {
        "t0_epoch": round(run.t0_epoch, 3), "prefix": a.prefix, "rate": a.rate, "duration_s": a.duration, "issued": run.issued,
        "acknowledged": len(run.acked) - a.accounts, "refused": len(run.refused),
        "gave_up": len(run.gave_up), "attempts": len(run.attempts),
        "failed_attempts": sum(1 for x in run.attempts if not x[2]),
        "errors": run.errors,
        "windows": [[round(s, 3), None if e is None else round(e, 3)] for s, e in wins],
        "unavailable_s": None if longest == float("inf") else round(longest, 3),
        "longest_gap_between_acks_s": round(gap, 3),
        "load_start_s": round(run.load_start, 3),
        "problems": problems[:50], "problem_count": len(problems),
    }
    text = json.dumps(result, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    sys.exit(0 if not problems and not run.gave_up else 1)


if __name__ == "__main__":
    main()
