"""
test_audit.py — `kobo audit` across shards with sagas in flight (issue 7
item 5, "kobo audit goes blind").

The audit compares each cross-shard transfer's debit leg (payer's shard)
with its credit leg (payee's shard) and each pair of clearing accounts with
the sagas in flight between them. A saga caught between two steps is
sound; a loss beside it is still found. While kobod runs the shards are
not one cut: the audit re-reads, and answers "unknown" (exit 3) rather
than "sound" when a discrepancy stays.

Exit statuses: 0 sound, 1 unsound, 2 bad usage or a shard could not be
read, 3 unknown (the clearing pairs could not be settled while kobod
writes).
"""
import json
import os
import random
import sqlite3
import subprocess
import time

import pytest

from kobotest import Load, audit, binary, child_env, cli, wait_until

EXIT_UNSOUND = 1
EXIT_UNKNOWN = 3


def run_ok(srv, *args):
    p = cli(srv, *args)
    assert p.returncode == 0, (f"`kobo {' '.join(map(str, args))}`: expected exit 0, saw {p.returncode}\n"
                               f"stdout: {p.stdout[-1500:]}\nstderr: {p.stderr[-1500:]}")
    return p


def shard_of(account_id, shards):
    h = 0xcbf29ce484222325
    for byte in account_id.encode():
        h = ((h ^ byte) * 0x100000001b3) % 2**64
    return (h % 4096) % shards


def ids_on_shards(prefix, shards, want, per_shard=1):
    """per_shard account ids on each shard in want: {shard: [ids]}."""
    found = {s: [] for s in want}
    n = 0
    while any(len(v) < per_shard for v in found.values()):
        name = f"{prefix}:{n}"
        s = shard_of(name, shards)
        if s in found and len(found[s]) < per_shard:
            found[s].append(name)
        n += 1
    return found


def audit_json(srv):
    """`kobo --json audit` of srv's store (--data or --postgres)."""
    args = [binary("kobo"), "--json", "audit", *srv.store_args()]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120, env=child_env())
    try:
        return p, json.loads(p.stdout)
    except ValueError:
        raise AssertionError(f"`{' '.join(args[1:])}`: expected JSON on stdout, "
                             f"saw {p.stdout[-1500:]!r}, stderr {p.stderr[-1500:]!r}")


def show(p):
    return f"exit {p.returncode}\nstdout: {p.stdout[-2500:]}\nstderr: {p.stderr[-1500:]}"


def expect_in(p, text, what):
    assert text in p.stdout, f"{what}: expected {text!r} in the audit output, saw {show(p)}"


def tamper(data_dir, shard, *statements):
    """Runs (sql, params, rows_expected) on shard-<shard>.db in one transaction."""
    db = os.path.join(data_dir, f"shard-{shard}.db")
    con = sqlite3.connect(db)
    try:
        for sql, params, want in statements:
            n = con.execute(sql, params).rowcount
            assert n == want, f"tamper of {db}: `{sql}` {params} changed {n} rows, expected {want}"
        con.commit()
    finally:
        con.close()


def two_shard_book(make_server, prefix):
    """kobod --shards 2 with a funded payer on shard 0, a payee on shard 1, a
    posted cross-shard transfer <prefix>:x of 300 and a cross-shard hold
    <prefix>:h of 120."""
    srv = make_server("--shards", "2")
    ids = ids_on_shards(prefix, 2, {0, 1})
    payer, payee, cash = ids[0][0], ids[1][0], f"{prefix}:cash"
    run_ok(srv, "account", "create", cash, "--currency", "NGN", "--allow-negative")
    run_ok(srv, "account", "create", payer, "--currency", "NGN")
    run_ok(srv, "account", "create", payee, "--currency", "NGN")
    run_ok(srv, "transfer", "--id", f"{prefix}:fund", "--from", cash, "--to", payer,
           "--amount", 1000, "--currency", "NGN")
    run_ok(srv, "transfer", "--id", f"{prefix}:x", "--from", payer, "--to", payee,
           "--amount", 300, "--currency", "NGN")
    run_ok(srv, "transfer", "--id", f"{prefix}:h", "--from", payer, "--to", payee,
           "--amount", 120, "--currency", "NGN", "--pending")
    return srv, payer, payee


def rewind_hold_to_reserved(data_dir, hold_id, payee):
    """The hold's saga caught after step 1: its debit leg PROCESSING/RESERVED
    (holding the same money, so shard 0 adds up) and no credit leg on shard
    1 yet (removed with its hold, so shard 1 adds up): a legitimate state
    after kill -9."""
    tamper(data_dir, 0,
           ("UPDATE transfers SET status = 'processing', saga = 'reserved' "
            "WHERE id = ? AND leg = 'debit'", (hold_id,), 1))
    tamper(data_dir, 1,
           ("DELETE FROM transfers WHERE id = ? AND leg = 'credit'", (hold_id,), 1),
           ("UPDATE accounts SET pending_in = pending_in - 120 WHERE id = ?", (payee,), 1),
           ("UPDATE accounts SET pending_out = pending_out - 120 WHERE id = ?",
            ("kobo:clearing:1:0:NGN",), 1))


@pytest.mark.embedded_only("rewinds a saga by editing the SQLite shard files")
def test_audit_checks_pairs_with_a_saga_in_flight(make_server):
    srv, payer, payee = two_shard_book(make_server, "ain")
    srv.sigterm()
    rewind_hold_to_reserved(srv.data, "ain:h", payee)

    p = audit(srv)
    assert p.returncode == 0, f"a saga caught after step 1 is sound: {show(p)}"
    expect_in(p, "sagas in flight: 1", "the saga is counted")
    expect_in(p, "clearing pairs: 1 checked", "the pairs are checked with the saga in flight")
    expect_in(p, "1 in flight", "the in-flight transfer is accounted for")
    p, report = audit_json(srv)
    assert p.returncode == 0 and report["verdict"] == "sound", f"--json: expected sound, saw {report}"
    pairs = report["clearing_pairs"]
    assert pairs["status"] == "checked" and pairs["in_flight"] == 1 and pairs["problems"] == [], (
        f"--json: expected the pairs checked with 1 saga in flight, saw {pairs}")

    # Shard 1 now credits 99 more than shard 0 debited for ain:x, and
    # still adds up on its own: only the pair can tell.
    tamper(srv.data, 1,
           ("UPDATE transfers SET amount = amount + 99, posted_amount = posted_amount + 99 "
            "WHERE id = 'ain:x' AND leg = 'credit'", (), 1),
           ("UPDATE accounts SET posted = posted + 99 WHERE id = ?", (payee,), 1),
           ("UPDATE accounts SET posted = posted - 99 WHERE id = ?", ("kobo:clearing:1:0:NGN",), 1))
    p = audit(srv)
    assert p.returncode == EXIT_UNSOUND, f"a pair off by 99 beside a saga in flight is unsound: {show(p)}"
    expect_in(p, "clearing pairs: problem:", "the pair problem is reported")
    expect_in(p, "ain:x", "the problem names the transfer")
    expect_in(p, "sum to -99", "the problem says by how much")
    assert "shard 1: problem" not in p.stdout, f"shard 1 adds up on its own: {show(p)}"
    expect_in(p, "unsound", "the verdict")


@pytest.mark.embedded_only("edits the SQLite shard files to stage a saga state")
def test_audit_accepts_a_credit_leg_one_step_ahead(make_server):
    srv, payer, payee = two_shard_book(make_server, "aos")
    srv.sigterm()
    # aos:x credited on shard 1 but not yet settled on shard 0: its debit
    # leg back to a hold of 300 (payer and clearing move from posted to
    # pending, so shard 0 adds up).
    tamper(srv.data, 0,
           ("UPDATE transfers SET status = 'processing', saga = 'reserved', posted_amount = 0 "
            "WHERE id = 'aos:x' AND leg = 'debit'", (), 1),
           ("UPDATE accounts SET posted = posted + 300, pending_out = pending_out + 300 WHERE id = ?",
            (payer,), 1),
           ("UPDATE accounts SET posted = posted - 300, pending_in = pending_in + 300 WHERE id = ?",
            ("kobo:clearing:0:1:NGN",), 1))
    p = audit(srv)
    assert p.returncode == 0, f"a credit leg one step ahead of its reserved debit leg is sound: {show(p)}"
    expect_in(p, "clearing pairs: 1 checked", "pairs checked")

    # The credit leg may not be two steps ahead: voided while A reserved.
    tamper(srv.data, 1,
           ("UPDATE transfers SET status = 'voided', void_reason = 'voided' "
            "WHERE id = 'aos:h' AND leg = 'credit'", (), 1),
           ("UPDATE accounts SET pending_in = pending_in - 120 WHERE id = ?", (payee,), 1),
           ("UPDATE accounts SET pending_out = pending_out - 120 WHERE id = ?",
            ("kobo:clearing:1:0:NGN",), 1))
    tamper(srv.data, 0,
           ("UPDATE transfers SET status = 'processing', saga = 'reserved' "
            "WHERE id = 'aos:h' AND leg = 'debit'", (), 1))
    p = audit(srv)
    assert p.returncode == EXIT_UNSOUND, f"a credit leg voided under a reserved debit leg: {show(p)}"
    expect_in(p, "aos:h", "the problem names the transfer")


@pytest.mark.own_shards
def test_audit_checks_pairs_while_kobod_runs(make_server):
    srv, payer, payee = two_shard_book(make_server, "arn")
    p = audit(srv)
    assert p.returncode == 0, f"audit of a sound idle 2-shard kobod: {show(p)}"
    expect_in(p, "clearing pairs: 1 checked", "the pairs are checked while kobod runs")
    p, report = audit_json(srv)
    assert report["clearing_pairs"]["status"] == "checked", f"--json: {report['clearing_pairs']}"


@pytest.mark.embedded_only("removes a leg by editing a SQLite shard file")
def test_audit_answers_unknown_when_running_pairs_disagree(make_server):
    srv, payer, payee = two_shard_book(make_server, "aun")
    srv.sigterm()
    # A loss: the credit leg of aun:x gone from shard 1, shard 1 still
    # adding up. Stopped, that is definite; while kobod runs, the audit
    # cannot tell it from a saga progressing between its reads.
    tamper(srv.data, 1,
           ("DELETE FROM transfers WHERE id = 'aun:x' AND leg = 'credit'", (), 1),
           ("UPDATE accounts SET posted = posted - 300 WHERE id = ?", (payee,), 1),
           ("UPDATE accounts SET posted = posted + 300 WHERE id = ?", ("kobo:clearing:1:0:NGN",), 1))
    p = audit(srv)
    assert p.returncode == EXIT_UNSOUND, f"stopped: the loss is definite: {show(p)}"
    srv.start(port=srv.port)
    started = time.monotonic()
    p = audit(srv)
    took = time.monotonic() - started
    assert p.returncode == EXIT_UNKNOWN, f"running: a discrepancy that stays is unknown, not sound: {show(p)}"
    expect_in(p, "clearing pairs: unknown", "the pairs' verdict")
    expect_in(p, "aun:x", "the discrepancy seen is shown")
    expect_in(p, ": unknown", "the total's verdict")
    assert took < 30, f"the re-reads are bounded: the audit took {took:.1f} s"
    p, report = audit_json(srv)
    assert p.returncode == EXIT_UNKNOWN and report["verdict"] == "unknown", f"--json: {report}"
    assert report["clearing_pairs"]["status"] == "unknown" and report["clearing_pairs"]["attempts"] > 1, (
        f"--json: expected several attempts, saw {report['clearing_pairs']}")


@pytest.mark.own_shards
def test_audit_after_kill9_mid_traffic_checks_pairs(make_server):
    srv = make_server("--shards", "2")
    ids = ids_on_shards("akl", 2, {0, 1}, per_shard=4)
    accounts = ids[0] + ids[1]
    run_ok(srv, "account", "create", "akl:cash", "--currency", "NGN", "--allow-negative")
    for n, a in enumerate(accounts):
        run_ok(srv, "account", "create", a, "--currency", "NGN")
        run_ok(srv, "transfer", "--id", f"akl:fund:{n}", "--from", "akl:cash", "--to", a,
               "--amount", 1_000_000, "--currency", "NGN")
    seen = []
    for rnd in range(3):
        load = Load(srv, accounts, accounts, f"akl{rnd}", threads=8, seed=rnd + 1).start()
        got = wait_until(lambda: len(load.acked) >= 40, 20)
        time.sleep(random.Random(rnd).uniform(0.05, 0.3))
        srv.kill9()
        load.stop()
        assert got, f"round {rnd}: expected 40 acknowledged transfers before the kill, saw {len(load.acked)}"
        p = audit(srv)
        assert p.returncode == 0, f"round {rnd}: audit right after kill -9 must be sound: {show(p)}"
        expect_in(p, "clearing pairs: ", "pairs line")
        assert "checked" in p.stdout and "not checked" not in p.stdout, f"round {rnd}: pairs checked: {show(p)}"
        seen.append(next((ln for ln in p.stdout.splitlines() if ln.startswith("sagas in flight:")), "?"))
        srv.start(port=srv.port)
    srv.sigterm()
    print(f"\nkill -9 rounds, sagas in flight on disk: {seen}")


def metrics_file_values(path):
    """The samples of a Prometheus text file: {series: value}."""
    values = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            series, value = line.rsplit(" ", 1)
            values[series] = float(value)
    return values


@pytest.mark.embedded_only("makes the shard unsound by editing the SQLite shard file")
def test_audit_metrics_file(make_server, tmp_path):
    """`kobo audit --metrics-file FILE` leaves the verdict for Prometheus
    (node_exporter's textfile collector; alerts KoboAudit*): one
    kobo_audit_verdict series per verdict (1 for the one reached), the
    problems found, the sagas in flight and when it ran. Bad usage writes
    nothing."""
    srv, payer, _ = two_shard_book(make_server, "amf")
    srv.sigterm()
    path = tmp_path / "kobo-audit.prom"
    before = time.time()
    p = audit(srv, "--metrics-file", str(path))
    assert p.returncode == 0, f"audit of a sound book: {show(p)}"
    v = metrics_file_values(path)
    assert v['kobo_audit_verdict{verdict="sound"}'] == 1, v
    for other in ("unsound", "unknown", "incomplete"):
        assert v[f'kobo_audit_verdict{{verdict="{other}"}}'] == 0, v
    assert v["kobo_audit_problems"] == 0, v
    assert v["kobo_audit_sagas_in_flight"] == 0, v
    assert before - 1 <= v["kobo_audit_last_run_timestamp_seconds"] <= time.time() + 1, v
    assert not [f for f in os.listdir(tmp_path) if f.startswith("kobo-audit.prom.")], \
        f"a temporary file was left beside the metrics file: {os.listdir(tmp_path)}"

    # A sound audit whose file cannot be written does not say sound (exit 2).
    p = audit(srv, "--metrics-file", str(tmp_path / "no-such-dir" / "x.prom"))
    assert p.returncode == 2 and "metrics-file" in p.stderr, \
        f"an unwritable metrics file: expected exit 2 and a message naming --metrics-file, saw {show(p)}"

    # Money from nowhere: the payer's balance no longer matches its history.
    tamper(srv.data, 0, ("UPDATE accounts SET posted = posted + 7 WHERE id = ?", (payer,), 1))
    p = audit(srv, "--metrics-file", str(path))
    assert p.returncode == EXIT_UNSOUND, f"audit of a tampered book: {show(p)}"
    v = metrics_file_values(path)
    assert v['kobo_audit_verdict{verdict="unsound"}'] == 1, v
    assert v['kobo_audit_verdict{verdict="sound"}'] == 0, v
    assert v["kobo_audit_problems"] >= 1, v

    # Bad usage: nothing is written (the file keeps the last real verdict).
    bad = tmp_path / "bad.prom"
    p = subprocess.run([binary("kobo"), "audit", "--metrics-file", str(bad)],
                       capture_output=True, text=True, timeout=60, env=child_env())
    assert p.returncode == 2, f"audit without a store: expected exit 2, saw {show(p)}"
    assert not bad.exists(), "bad usage wrote a metrics file"
