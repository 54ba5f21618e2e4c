"""
test_cli.py — the kobo command-line client end to end against a real kobod
(human and --json output, exit codes, error codes on stderr), and `kobo audit`
on a sound and on a tampered store.
"""
import pytest
import json
import os
import sqlite3
import subprocess

from kobotest import audit, balance, binary, child_env, cli, expect_audit_ok


def run_ok(srv, *args, json_out=False):
    p = cli(srv, *args, json_out=json_out)
    assert p.returncode == 0, (f"`kobo {' '.join(map(str, args))}`{' --json' if json_out else ''}: "
                               f"expected exit 0, saw {p.returncode}\nstdout: {p.stdout[-1500:]}\n"
                               f"stderr: {p.stderr[-1500:]}")
    return p


def run_json(srv, *args):
    p = run_ok(srv, *args, json_out=True)
    try:
        return json.loads(p.stdout)
    except ValueError:
        raise AssertionError(f"`kobo --json {' '.join(map(str, args))}`: expected JSON on stdout, "
                             f"saw {p.stdout[:1500]!r}")


def run_fail(srv, *args, code=None, json_out=False):
    p = cli(srv, *args, json_out=json_out)
    assert p.returncode != 0, (f"`kobo {' '.join(map(str, args))}`: expected a non-zero exit, saw 0\n"
                               f"stdout: {p.stdout[-1500:]}")
    if code:
        assert code in p.stderr, (f"`kobo {' '.join(map(str, args))}`: expected the error code "
                                  f"{code!r} on stderr, saw stderr {p.stderr[-1500:]!r} "
                                  f"(stdout {p.stdout[-500:]!r})")
    return p


def ids_in(obj):
    """Every "id" value anywhere in a JSON document."""
    found = []
    if isinstance(obj, dict):
        if isinstance(obj.get("id"), str):
            found.append(obj["id"])
        for v in obj.values():
            found += ids_in(v)
    elif isinstance(obj, list):
        for v in obj:
            found += ids_in(v)
    return found


def test_cli_accounts_transfers_holds_history(server):
    p = run_ok(server, "account", "create", "cli:cash", "--currency", "NGN", "--allow-negative")
    assert "cli:cash" in p.stdout, f"human output of account create should name the account, saw {p.stdout!r}"
    a = run_json(server, "account", "create", "cli:ada", "--currency", "NGN")
    assert a["id"] == "cli:ada" and a["currency"] == "NGN" and a["allow_negative"] is False, (
        f"--json account create: expected the account object, saw {a}")
    run_ok(server, "account", "create", "cli:bola", "--currency", "NGN")
    acct = server.get("/v1/accounts/cli:cash").body
    assert acct["allow_negative"] is True, f"--allow-negative: expected allow_negative true, saw {acct}"

    t = run_json(server, "transfer", "--id", "cli:t1", "--from", "cli:cash", "--to", "cli:ada",
                 "--amount", 5000, "--currency", "NGN")
    assert t["id"] == "cli:t1" and t["status"] == "posted" and t["amount"] == 5000, (
        f"--json transfer: expected posted transfer of 5000, saw {t}")
    p = run_ok(server, "transfer", "--id", "cli:t2", "--from", "cli:ada", "--to", "cli:bola",
               "--amount", 1000, "--currency", "NGN")
    assert "cli:t2" in p.stdout or "posted" in p.stdout, f"human transfer output, saw {p.stdout!r}"
    assert balance(server, "cli:bola")["posted"] == 1000

    g = run_json(server, "account", "get", "cli:ada")
    assert g["balance"]["posted"] == 4000 and g["balance"]["available"] == 4000, (
        f"--json account get: expected posted/available 4000, saw {g}")
    p = run_ok(server, "account", "get", "cli:ada")
    assert "4000" in p.stdout.replace(",", "").replace("_", ""), (
        f"human account get should show the balance 4000, saw {p.stdout!r}")

    h = run_json(server, "transfer", "--id", "cli:h1", "--from", "cli:ada", "--to", "cli:bola",
                 "--amount", 700, "--currency", "NGN", "--pending", "--timeout", 60)
    assert h["status"] == "pending" and h["timeout_seconds"] == 60, f"--pending --timeout 60: saw {h}"
    assert balance(server, "cli:ada")["pending_out"] == 700
    posted = run_json(server, "post", "cli:h1", "--amount", 200)
    assert posted["status"] == "posted" and posted["posted_amount"] == 200, f"post --amount 200: saw {posted}"
    run_ok(server, "transfer", "--id", "cli:h2", "--from", "cli:ada", "--to", "cli:bola",
           "--amount", 100, "--currency", "NGN", "--pending")
    voided = run_json(server, "void", "cli:h2")
    assert voided["status"] == "voided" and voided["void_reason"] == "voided", f"void: saw {voided}"
    got = run_json(server, "transfer", "get", "cli:h1")
    assert got["id"] == "cli:h1" and got["posted_amount"] == 200, f"transfer get: saw {got}"
    p = run_ok(server, "transfer", "get", "cli:h1")
    assert "cli:h1" in p.stdout, f"human transfer get should name the transfer, saw {p.stdout!r}"
    assert balance(server, "cli:ada") == {"posted": 3800, "pending_out": 0, "pending_in": 0,
                                          "available": 3800}

    hist = run_json(server, "history", "cli:ada")
    ids = [i for i in ids_in(hist) if i.startswith("cli:t") or i.startswith("cli:h")]
    assert ids == ["cli:t1", "cli:t2", "cli:h1", "cli:h2"] or ids == ["cli:t1", "cli:t2", "cli:h1"], (
        f"--json history cli:ada: expected cli:t1, cli:t2, cli:h1 (, cli:h2) oldest first, saw {ids}")
    p = run_ok(server, "history", "cli:ada")
    for tid in ("cli:t1", "cli:t2", "cli:h1"):
        assert tid in p.stdout, f"human history should list {tid}, saw {p.stdout!r}"


def test_cli_errors_exit_nonzero_with_code(server):
    run_ok(server, "account", "create", "cli:poor", "--currency", "NGN")
    run_ok(server, "account", "create", "cli:rich", "--currency", "NGN")
    run_fail(server, "transfer", "--id", "cli:x1", "--from", "cli:poor", "--to", "cli:rich",
             "--amount", 10, "--currency", "NGN", code="insufficient_funds")
    run_fail(server, "transfer", "--id", "cli:x1", "--from", "cli:poor", "--to", "cli:rich",
             "--amount", 10, "--currency", "NGN", code="insufficient_funds", json_out=True)
    run_fail(server, "account", "get", "cli:ghost", code="account_not_found")
    run_fail(server, "transfer", "get", "cli:ghost", code="transfer_not_found")
    run_fail(server, "void", "cli:ghost", code="transfer_not_found")
    run_fail(server, "account", "create", "cli:poor", "--currency", "USD", code="id_conflict")
    run_fail(server, "account", "create", "bad id", "--currency", "NGN", code="invalid_request")
    assert balance(server, "cli:rich")["posted"] == 0


def test_cli_unreachable_server_fails(server):
    url = server.url
    server.sigterm()
    p = cli(server, "account", "get", "x")
    assert p.returncode != 0, f"kobo against a stopped server ({url}): expected non-zero exit, saw 0"


@pytest.mark.embedded_only("tampers the SQLite shard file that kobo audit --data reads")
def test_audit_sound_then_tampered(server):
    run_ok(server, "account", "create", "aud:cash", "--currency", "NGN", "--allow-negative")
    run_ok(server, "account", "create", "aud:ada", "--currency", "NGN")
    run_ok(server, "account", "create", "aud:bola", "--currency", "NGN")
    run_ok(server, "transfer", "--id", "aud:1", "--from", "aud:cash", "--to", "aud:ada",
           "--amount", 900, "--currency", "NGN")
    run_ok(server, "transfer", "--id", "aud:2", "--from", "aud:ada", "--to", "aud:bola",
           "--amount", 300, "--currency", "NGN", "--pending")
    expect_audit_ok(server, "audit of a sound store while kobod runs")
    server.sigterm()
    expect_audit_ok(server, "audit of a sound stopped store")

    db = os.path.join(server.data, "shard-0.db")
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert "accounts" in tables, f"expected an accounts table in {db}, saw tables {tables}"
        n = con.execute("UPDATE accounts SET posted = posted + 1 WHERE id = ?", ("aud:bola",)).rowcount
        con.commit()
    finally:
        con.close()
    assert n == 1, f"tamper: expected to update 1 row of accounts for aud:bola, updated {n}"
    p = audit(server)
    assert p.returncode == 1, (f"`kobo audit` on a tampered store: expected exit 1, saw {p.returncode}\n"
                               f"stdout: {p.stdout[-1500:]}\nstderr: {p.stderr[-1500:]}")
    assert "aud:bola" in p.stdout + p.stderr, (
        f"`kobo audit` should name the tampered account aud:bola, saw stdout {p.stdout[-1500:]!r} "
        f"stderr {p.stderr[-1500:]!r}")


def shard_of(account_id, shards):
    """The default shard map: FNV-1a 64 of the id, mod 4096 partitions, mod shards."""
    h = 0xcbf29ce484222325
    for byte in account_id.encode():
        h = ((h ^ byte) * 0x100000001b3) % 2**64
    return (h % 4096) % shards


def ids_on_shards(prefix, shards, want):
    """One account id per shard in want, named prefix:<n>."""
    found = {}
    n = 0
    while len(found) < len(want):
        name = f"{prefix}:{n}"
        s = shard_of(name, shards)
        if s in want and s not in found:
            found[s] = name
        n += 1
    return found


def audit_json(srv):
    """`kobo --json audit` of srv's store (--data or --postgres)."""
    args = [binary("kobo"), "--json", "audit", *srv.store_args()]
    p = subprocess.run(args, capture_output=True, text=True, timeout=60, env=child_env())
    try:
        return p, json.loads(p.stdout)
    except ValueError:
        raise AssertionError(f"`{' '.join(args[1:])}`: expected JSON on stdout, "
                             f"saw {p.stdout[-1500:]!r}, stderr {p.stderr[-1500:]!r}")


def expect_in_audit(p, text, what):
    assert text in p.stdout, (f"{what}: expected {text!r} in the audit output\n"
                              f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-1500:]}")


@pytest.mark.embedded_only("tampers a SQLite shard file that kobo audit --data reads")
def test_audit_two_shards_checks_clearing_pairs_when_stopped(make_server):
    srv = make_server("--shards", "2")
    ids = ids_on_shards("aud2", 2, {0, 1})
    payer, payee, cash = ids[0], ids[1], "aud2:cash"
    run_ok(srv, "account", "create", cash, "--currency", "NGN", "--allow-negative")
    run_ok(srv, "account", "create", payer, "--currency", "NGN")
    run_ok(srv, "account", "create", payee, "--currency", "NGN")
    run_ok(srv, "transfer", "--id", "aud2:fund", "--from", cash, "--to", payer,
           "--amount", 1000, "--currency", "NGN")
    run_ok(srv, "transfer", "--id", "aud2:x", "--from", payer, "--to", payee,
           "--amount", 300, "--currency", "NGN")
    run_ok(srv, "transfer", "--id", "aud2:hold", "--from", payer, "--to", payee,
           "--amount", 120, "--currency", "NGN", "--pending")

    p = audit(srv)
    assert p.returncode == 0, (f"audit of a sound 2-shard store while kobod runs: expected exit 0, "
                               f"saw {p.returncode}\nstdout: {p.stdout[-1500:]}\nstderr: {p.stderr[-1500:]}")
    expect_in_audit(p, "clearing pairs: 1 checked", "kobod running: the pairs are read until they agree")
    expect_in_audit(p, "shard 1:", "both shards are audited")

    srv.sigterm()
    p = audit(srv)
    assert p.returncode == 0, (f"audit of a sound stopped 2-shard store: expected exit 0, saw "
                               f"{p.returncode}\nstdout: {p.stdout[-1500:]}\nstderr: {p.stderr[-1500:]}")
    expect_in_audit(p, "sagas in flight: 0", "stopped, nothing in flight")
    expect_in_audit(p, "clearing pairs: 1 checked (", "stopped: the pairs are checked")
    expect_in_audit(p, "in flight), 0 problems", "stopped: the pairs are sound")
    p, report = audit_json(srv)
    assert p.returncode == 0 and report["verdict"] == "sound", f"--json audit: expected sound, saw {report}"
    assert report["shard_map"]["shards"] == 2 and len(report["shards"]) == 2, (
        f"--json audit: expected 2 shards from the shard map, saw {report}")
    assert report["clearing_pairs"]["status"] == "checked" and report["clearing_pairs"]["pairs"] >= 1, (
        f"--json audit: expected the clearing pairs checked, saw {report['clearing_pairs']}")

    # Remove the credit leg of aud2:x from the payee's shard and undo its
    # effect there: shard 1 alone still adds up, but the pair no longer does.
    db = os.path.join(srv.data, "shard-1.db")
    con = sqlite3.connect(db)
    try:
        clearing = "kobo:clearing:1:0:NGN"
        n = con.execute("DELETE FROM transfers WHERE id = 'aud2:x' AND leg = 'credit'").rowcount
        con.execute("UPDATE accounts SET posted = posted - 300 WHERE id = ?", (payee,))
        con.execute("UPDATE accounts SET posted = posted + 300 WHERE id = ?", (clearing,))
        con.commit()
    finally:
        con.close()
    assert n == 1, f"tamper: expected to delete the credit leg of aud2:x on shard 1, deleted {n}"
    p = audit(srv)
    assert p.returncode == 1, (f"audit with a clearing pair off by 300: expected exit 1, saw {p.returncode}\n"
                               f"stdout: {p.stdout[-1500:]}\nstderr: {p.stderr[-1500:]}")
    expect_in_audit(p, "clearing pairs: problem:", "pair off by 300")
    expect_in_audit(p, clearing, "the problem names the clearing account")
    assert "shard 1: problem" not in p.stdout, (
        f"the tamper keeps shard 1 consistent on its own; saw {p.stdout[-1500:]}")


@pytest.mark.embedded_only("rewinds a saga by editing a SQLite shard file")
def test_audit_lists_sagas_in_flight_and_checks_pairs(make_server):
    srv = make_server("--shards", "2")
    ids = ids_on_shards("aud3", 2, {0, 1})
    payer, payee, cash = ids[0], ids[1], "aud3:cash"
    run_ok(srv, "account", "create", cash, "--currency", "NGN", "--allow-negative")
    run_ok(srv, "account", "create", payer, "--currency", "NGN")
    run_ok(srv, "account", "create", payee, "--currency", "NGN")
    run_ok(srv, "transfer", "--id", "aud3:fund", "--from", cash, "--to", payer,
           "--amount", 1000, "--currency", "NGN")
    run_ok(srv, "transfer", "--id", "aud3:hold", "--from", payer, "--to", payee,
           "--amount", 120, "--currency", "NGN", "--pending", "--request-id", "req-aud3-hold")
    srv.sigterm()

    # A saga caught between steps: the debit leg of the hold back to
    # PROCESSING/RESERVED (it holds the same money, so shard 0 still adds up).
    db = os.path.join(srv.data, "shard-0.db")
    con = sqlite3.connect(db)
    try:
        n = con.execute("UPDATE transfers SET status = 'processing', saga = 'reserved' "
                        "WHERE id = 'aud3:hold' AND leg = 'debit'").rowcount
        con.commit()
    finally:
        con.close()
    assert n == 1, f"tamper: expected to update the debit leg of aud3:hold on shard 0, updated {n}"
    p = audit(srv)
    assert p.returncode == 0, (f"audit with a saga in flight: expected exit 0 (not a problem), saw "
                               f"{p.returncode}\nstdout: {p.stdout[-1500:]}\nstderr: {p.stderr[-1500:]}")
    expect_in_audit(p, "sagas in flight: 1", "one saga in flight")
    expect_in_audit(p, "aud3:hold reserved (request_id req-aud3-hold)", "the saga is listed")
    expect_in_audit(p, " in flight), 0 problems",
                    "pairs checked with the saga in flight accounted for")
    p, report = audit_json(srv)
    assert report["sagas_in_flight"] == 1 and report["sagas"][0]["id"] == "aud3:hold", (
        f"--json audit: expected the saga listed, saw {report}")
    assert report["clearing_pairs"]["status"] == "checked" and report["clearing_pairs"]["in_flight"] == 1, (
        f"--json audit: expected the pairs checked with 1 in flight, saw {report['clearing_pairs']}")
