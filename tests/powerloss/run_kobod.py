#!/usr/bin/python3
"""run_kobod.py — kobod itself (the SQLite store, WAL, synchronous=FULL)
under simulated power loss (make test-powerloss-kobod; README "Durability
under power loss").

kobod runs under the shim (powerloss_shim.c) on 127.0.0.1; this script
creates three accounts and sends transfers one at a time, noting after each
2xx answer the size of the shim's log (so a crash at a later log offset
must keep it). kobod is then killed. At sampled crash points × the four
policies the replayer rebuilds the data directory (SQLite's -shm wal-index
left out: SQLite rebuilds it from the WAL) and the image must hold every
acknowledged transfer and account, nothing never sent, and `kobo audit
--data` must call it sound (balances equal their transfers, sums zero,
cross-shard legs matched). With --shards 2 many transfers are sagas; with
--restart-every N every Nth image is also started by a kobod (no shim),
which must finish every saga the cut left half-way (nothing 'processing'),
and then audit sound again.

    run_kobod.py --shim LIB --kobod BIN --kobo BIN [--transfers N] [--shards N]
                 [--restart-every N] [--points N] [--seed S] [--keep]
"""
import argparse
import collections
import http.client
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import powerloss  # noqa: E402

START_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 10
AUDIT_TIMEOUT_S = 60
DRAIN_TIMEOUT_S = 60
FAILURES_SHOWN_MAX = 10
WALLETS = 6
DEPOSIT = 1000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def run_kobod(args, work, rng):
    """Runs kobod under the shim, sends the requests, kills it. Returns the
    log path and [(kind, id, begin_pos, ack_pos or None)]."""
    data, log = os.path.join(work, "data"), os.path.join(work, "log")
    os.makedirs(data)
    env = dict(os.environ, LD_PRELOAD=os.path.abspath(args.shim), KOBO_POWERLOSS_DIR=data,
               KOBO_POWERLOSS_LOG=log,
               ASAN_OPTIONS="verify_asan_link_order=0:" + os.environ.get("ASAN_OPTIONS", ""))
    proc, port = start_kobod(args, data, env, os.path.join(work, "kobod.err"))
    steps = []
    try:
        def send(kind, ident, path, body):
            begin = os.path.getsize(log)
            status, reply = post(port, path, body)
            if status not in (200, 201, 202):
                raise SystemExit("%s %s: %d %s" % (path, ident, status, reply[:300]))
            steps.append((kind, ident, begin, os.path.getsize(log)))

        send("account", "cash:NGN", "/v1/accounts",
             {"id": "cash:NGN", "currency": "NGN", "allow_negative": True})
        for w in range(WALLETS):
            send("account", "wallet:%d" % w, "/v1/accounts",
                 {"id": "wallet:%d" % w, "currency": "NGN"})
            send("transfer", "d:%d" % w, "/v1/transfers",
                 {"id": "d:%d" % w, "from": "cash:NGN", "to": "wallet:%d" % w,
                  "amount": DEPOSIT, "currency": "NGN"})
        for i in range(args.transfers):
            # Between wallets (with --shards 2 many cross shards: sagas),
            # never more than a wallet holds.
            a, b = rng.sample(range(WALLETS), 2)
            body = {"id": "t:%d" % i, "from": "wallet:%d" % a, "to": "wallet:%d" % b,
                    "amount": rng.randint(1, 10), "currency": "NGN"}
            send("transfer", body["id"], "/v1/transfers", body)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return log, steps


def start_kobod(args, data, env, err_path):
    """Starts kobod on data (127.0.0.1, a free port); returns (proc, port)
    once /healthz answers."""
    port = free_port()
    # The journaled store (kobod's default) with 1 MiB segments: cheap to
    # pre-write and copy at every crash image, and roll-overs happen.
    with open(err_path, "w") as err:
        proc = subprocess.Popen([args.kobod, "--listen", "127.0.0.1:%d" % port, "--data", data,
                                 "--shards", str(args.shards), "--log-level", "warn",
                                 "--journal-segment-mb", "1"], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise SystemExit("kobod did not start (see %s)" % err_path)
        time.sleep(0.1)


def sagas_active(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("kobo_sagas_active{"))


def processing(data):
    """Transfers in state 'processing' in the shard files of data."""
    n = 0
    for name in os.listdir(data):
        if name.startswith("shard-") and name.endswith(".db"):
            c = sqlite3.connect("file:%s?mode=ro" % os.path.join(data, name), uri=True)
            try:
                n += c.execute("SELECT count(*) FROM transfers WHERE status = 'processing'"
                               ).fetchone()[0]
            finally:
                c.close()
    return n


def restart_check(args, image, work):
    """kobod restarted on (a copy of) the image finishes every saga the cut
    left half-way; then kobo audit is sound and nothing is 'processing'."""
    copy = os.path.join(work, "restart")
    if os.path.exists(copy):
        shutil.rmtree(copy)
    shutil.copytree(image, copy)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOBO_POWERLOSS")}
    env.pop("LD_PRELOAD", None)
    try:
        proc, port = start_kobod(args, copy, env, os.path.join(work, "restart.err"))
    except SystemExit as err:
        with open(os.path.join(work, "restart.err")) as f:
            return "%s: %s" % (err, f.read()[-600:])
    try:
        # Drained: no transfer left 'processing' (the runner's gauge alone
        # reads 0 before its first pass has found the sagas to resume).
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while processing(copy) or sagas_active(port) > 0:
            if time.monotonic() > deadline:
                return "%d transfers still processing %d s after the restart" % (
                    processing(copy), DRAIN_TIMEOUT_S)
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    p = subprocess.run([args.kobo, "audit", "--data", copy], capture_output=True, text=True,
                       timeout=AUDIT_TIMEOUT_S)
    if p.returncode != 0:
        return "after the restart, kobo audit exit %d: %s" % (p.returncode, p.stdout[-600:])
    left = processing(copy)
    if left:
        return "after the restart, %d transfers still processing" % left
    return ""


def check_image(args, image, steps, crash_offset):
    """'' when the image is right, else why not."""
    acked = {(k, i) for k, i, b, a in steps if a <= crash_offset}
    begun = {(k, i) for k, i, b, a in steps if b < crash_offset}
    dbs = sorted(os.path.join(image, n) for n in os.listdir(image)
                 if n.startswith("shard-") and n.endswith(".db"))
    if not dbs:
        return "the shard files lost with %d acknowledged writes" % len(acked) if acked else ""
    if not acked:
        # Cut while kobod created its files: nothing was promised; the
        # files need only be what a restart copes with (not checked here).
        return ""
    p = subprocess.run([args.kobo, "audit", "--data", image], capture_output=True, text=True,
                       timeout=AUDIT_TIMEOUT_S)
    if p.returncode != 0:
        return "kobo audit exit %d: %s %s" % (p.returncode, p.stdout[-600:], p.stderr[-600:])
    present = set()
    for db in dbs:
        c = sqlite3.connect(db)
        try:
            present |= {("transfer", r[0]) for r in c.execute("SELECT id FROM transfers")}
            present |= {("account", r[0]) for r in c.execute("SELECT id FROM accounts")}
        finally:
            c.close()
    lost = sorted(i for k, i in acked - present)
    # kobod's own clearing accounts (kobo:clearing:…, for sagas) are not sent.
    extra = sorted(i for k, i in present - begun if not i.startswith("kobo:"))
    if lost:
        return "acknowledged but lost: %s" % lost[:10]
    if extra:
        return "present but never sent before the cut: %s" % extra[:10]
    return ""


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shim", required=True)
    ap.add_argument("--kobod", required=True)
    ap.add_argument("--kobo", required=True)
    ap.add_argument("--transfers", type=int, default=60)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--restart-every", type=int, default=0, metavar="N",
                    help="also restart kobod on every Nth image (0: never)")
    ap.add_argument("--points", type=int, default=60)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--workdir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = ap.parse_args()
    started = time.monotonic()
    workroot = tempfile.mkdtemp(prefix="kobo-powerloss-kobod-", dir=args.workdir)
    rng = random.Random(args.seed)
    failures, tally = [], collections.Counter()
    steps, records, points = [], [], set()
    try:
        log, steps = run_kobod(args, workroot, rng)
        records = powerloss.parse_log(log)
        run = powerloss.Run(records, volatile=["*-shm"])
        offsets = run.offsets()
        fsyncs = [r.index for r in run.records if r.type == powerloss.FSYNC]
        points = set(rng.sample(fsyncs, min(len(fsyncs), args.points // 2)))
        while len(points) < min(args.points, len(offsets)):
            points.add(rng.randrange(len(offsets)))
        image = os.path.join(workroot, "image")
        for k in sorted(points):
            for policy in powerloss.POLICIES:
                run.build(k, policy, args.seed, image)
                why = check_image(args, image, steps, offsets[k])
                n_images = sum(v for key, v in tally.items() if key != "restarts")
                if not why and args.restart_every and n_images % args.restart_every == 0 and \
                        any(n.endswith(".db") for n in os.listdir(image)):
                    why = restart_check(args, image, workroot)
                    tally["restarts"] += 1
                if why:
                    failures.append("k=%d policy=%s: %s\n  rebuild: %s replay %s IMG --at %d"
                                    " --policy %s --seed %d --volatile '*-shm'" % (
                                        k, policy, why,
                                        os.path.join(os.path.dirname(__file__), "powerloss.py"),
                                        log, k, policy, args.seed))
                    run.build(k, policy, args.seed, os.path.join(workroot, "fail-%d-%s" %
                                                                 (k, policy)))
                tally[(policy, "fail" if why else "ok")] += 1
    finally:
        elapsed = time.monotonic() - started
        print("power loss, kobod (journal + SQLite, %d shards): %d acknowledged writes, %d records,"
              " %d crash points" % (args.shards, len(steps), len(records), len(points)))
        for policy in powerloss.POLICIES:
            print("  %-8s ok %d, failed %d" % (policy, tally[(policy, "ok")],
                                              tally[(policy, "fail")]))
        restarts = tally.pop("restarts", 0)
        print("  %d crash images checked in %.1f s (kobod restarted on %d, sagas drained)" % (
            sum(tally.values()), elapsed, restarts))
        if failures or args.keep:
            print("  work directory kept: %s" % workroot)
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    for f in failures[:FAILURES_SHOWN_MAX]:
        print("FAIL: " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
