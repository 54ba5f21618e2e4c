"""
test_key_cli.py — `kobo key create|list|revoke` on each store backend while
kobod runs (keys live in shard 0's store, written without the server), the
refusals (bad names, scopes and ids; a directory or database kobod never
created) that write nothing, KOBO_DATA / KOBO_POSTGRES, and the API key
that `kobo --key` / `kobo-bench --key` (or KOBO_API_KEY) send as
`Authorization: Bearer`.
"""
import http.server
import json
import os
import re
import subprocess
import threading
from urllib.parse import urlparse

import pytest

from kobotest import CLI_TIMEOUT_S, TIME_RE, binary, child_env

KEY_RE = re.compile(r"^kobo_([0-9a-f]{16})_[0-9a-f]{64}$")
ID_RE = re.compile(r"^[0-9a-f]{16}$")
SCOPE_ORDER = ["accounts:read", "accounts:write", "transfers:read", "transfers:write", "admin"]


def key_cmd(store_args, *args, json_out=True, env=None):
    cmd = [binary("kobo"), "key", *args, *store_args]
    if json_out:
        cmd.append("--json")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                          env=env if env is not None else child_env())


def ok_json(p, what):
    assert p.returncode == 0, f"{what}: exit {p.returncode}\nstdout {p.stdout}\nstderr {p.stderr}"
    assert len(p.stdout.splitlines()) == 1, f"{what}: --json prints one line, saw {p.stdout!r}"
    return json.loads(p.stdout)


def refused(p, what, status, code):
    assert p.returncode == status, (f"{what}: expected exit {status}, saw {p.returncode}\n"
                                    f"stdout {p.stdout}\nstderr {p.stderr}")
    assert p.stderr.startswith("kobo: key: ") or "kobo: " in p.stderr, p.stderr
    err = json.loads(p.stdout)["error"]
    assert err["code"] == code and err["message"], (what, err)
    return err


def listed(store_args, *extra):
    return ok_json(key_cmd(store_args, "list", *extra), "key list")["keys"]


def test_key_create_list_revoke(server):
    """The whole life of two keys on the server's own store, kobod running."""
    store = server.store_args()
    assert listed(store, "--all") == []

    a = ok_json(key_cmd(store, "create", "--name", "ops team", "--scopes",
                        "transfers:write,accounts:read"), "create a")
    assert set(a) == {"id", "key", "name", "scopes", "created_at"}, a
    m = KEY_RE.match(a["key"])
    assert m and m.group(1) == a["id"], a
    assert a["name"] == "ops team"
    assert a["scopes"] == ["accounts:read", "transfers:write"], a   # canonical order
    assert TIME_RE.match(a["created_at"]), a

    # Text output: the key and its id, once; the warning on stderr.
    p = key_cmd(store, "create", "--name", "admin", "--scopes", "admin", json_out=False)
    assert p.returncode == 0, p.stderr
    lines = dict(line.split(":", 1) for line in p.stdout.splitlines())
    b_key, b_id = lines["key"].strip(), lines["id"].strip()
    assert KEY_RE.match(b_key).group(1) == b_id
    assert "only this once" in p.stderr
    assert b_key not in p.stderr

    keys = listed(store)
    assert [k["id"] for k in keys] == sorted([a["id"], b_id]), keys
    for k in keys:
        assert set(k) == {"id", "name", "scopes", "created_at", "revoked_at"}, k
        assert k["revoked_at"] is None
    text = key_cmd(store, "list", json_out=False)
    assert text.returncode == 0 and a["id"] in text.stdout and b_id in text.stdout
    assert a["key"] not in text.stdout and b_key not in text.stdout   # never the secret

    r = ok_json(key_cmd(store, "revoke", a["id"]), "revoke a")
    assert r["id"] == a["id"] and r["name"] == "ops team" and TIME_RE.match(r["revoked_at"]), r
    # A second revoke keeps the first time.
    again = ok_json(key_cmd(store, "revoke", a["id"]), "revoke a again")
    assert again["revoked_at"] == r["revoked_at"], (r, again)

    assert [k["id"] for k in listed(store)] == [b_id]          # live only
    every = {k["id"]: k for k in listed(store, "--all")}
    assert every[a["id"]]["revoked_at"] == r["revoked_at"] and every[b_id]["revoked_at"] is None

    # Unknown id: exit 1, key_not_found, nothing changes.
    unknown = "0123456789abcdef" if a["id"] != "0123456789abcdef" else "fedcba9876543210"
    refused(key_cmd(store, "revoke", unknown), "revoke unknown", 1, "key_not_found")
    assert {k["id"]: k for k in listed(store, "--all")} == every

    # kobod still serves after keys were written beside it.
    assert server.client.get("/readyz").status == 200


BAD_CREATES = [
    (["--name", "", "--scopes", "admin"], "empty name"),
    (["--name", "x" * 65, "--scopes", "admin"], "65-character name"),
    (["--name", "tab\there", "--scopes", "admin"], "control character in name"),
    (["--name", "caf\u00e9", "--scopes", "admin"], "non-ASCII name"),
    (["--name", "n", "--scopes", ""], "empty scopes"),
    (["--name", "n", "--scopes", "admin,"], "trailing comma"),
    (["--name", "n", "--scopes", "accounts:read,,admin"], "empty item"),
    (["--name", "n", "--scopes", "admin,admin"], "duplicate scope"),
    (["--name", "n", "--scopes", "read"], "unknown scope"),
    (["--name", "n", "--scopes", "Admin"], "uppercase scope"),
    (["--name", "n", "--scopes", "accounts:read, admin"], "space in scopes"),
    (["--name", "n"], "no --scopes"),
    (["--scopes", "admin"], "no --name"),
]

BAD_IDS = ["", "xyz", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0",
           "kobo_0123456789abcdef_" + "0" * 64, "0123456789abcdeg"]


def test_key_bad_input_writes_nothing(server):
    store = server.store_args()
    live = ok_json(key_cmd(store, "create", "--name", "keep", "--scopes", "accounts:read"), "create")
    before = listed(store, "--all")
    for args, what in BAD_CREATES:
        refused(key_cmd(store, "create", *args), what, 2, "invalid_request")
    for bad in BAD_IDS:
        refused(key_cmd(store, "revoke", bad), f"revoke {bad!r}", 2, "invalid_request")
    p = key_cmd(store, "revoke", json_out=False)
    assert p.returncode == 2, p
    p = key_cmd(store, "frobnicate", json_out=False)
    assert p.returncode == 2 and "unknown subcommand" in p.stderr, p
    p = key_cmd(store, "list", "--name", "x", json_out=False)
    assert p.returncode == 2 and "unknown option" in p.stderr, p
    assert listed(store, "--all") == before
    assert before[0]["id"] == live["id"] and len(before) == 1


def test_key_refuses_a_store_kobod_never_created(backend, tmp_path, request):
    """A directory or database kobod never used is refused, and left as it
    was: `kobo key` never creates a store."""
    if not backend.is_pg:
        empty = tmp_path / "empty"
        empty.mkdir()
        missing = tmp_path / "missing"
        afile = tmp_path / "afile"
        afile.write_text("not a directory\n")
        for target, why in ((empty, "no shard-0.db"), (missing, "No such file"),
                            (afile, "not a directory")):
            for args in (["create", "--name", "n", "--scopes", "admin"], ["list"],
                         ["revoke", "0123456789abcdef"]):
                p = key_cmd(["--data", str(target)], *args)
                refused(p, f"{args[0]} on {target.name}", 1, "store_unavailable")
                assert why in p.stderr, p.stderr
        assert list(empty.iterdir()) == [] and not missing.exists()
        assert afile.read_text() == "not a directory\n"
        return
    databases = request.getfixturevalue("pg_databases")
    uris = databases.create(1 if backend.name == "pg1" else 2)
    store = [a for u in uris for a in ("--postgres", u)]
    p = key_cmd(store, "create", "--name", "n", "--scopes", "admin")
    refused(p, "create on an empty database", 1, "store_unavailable")
    refused(key_cmd(store, "list"), "list on an empty database", 1, "store_unavailable")
    for uri in uris:
        db = urlparse(uri).path.lstrip("/")
        tables = databases.cluster.psql(
            "select count(*) from information_schema.tables where table_schema not in "
            "('pg_catalog', 'information_schema')", dbname=db)
        assert tables == "0", f"kobo key created tables in {db}"


def test_key_store_from_environment(server):
    """KOBO_DATA / KOBO_POSTGRES name the store as they do for kobod; a flag
    wins; both variables at once are refused."""
    env = child_env()
    if server.postgres:
        env["KOBO_POSTGRES"] = " ".join(server.postgres)
    else:
        env["KOBO_DATA"] = server.data
    made = ok_json(key_cmd([], "create", "--name", "env", "--scopes", "admin", env=env), "create")
    assert [k["id"] for k in listed(server.store_args())] == [made["id"]]
    assert [k["id"] for k in ok_json(key_cmd([], "list", env=env), "list")["keys"]] == [made["id"]]
    both = dict(env, KOBO_DATA="/nonexistent", KOBO_POSTGRES="postgresql://x@127.0.0.1:1/x")
    p = key_cmd([], "list", env=both, json_out=False)
    assert p.returncode == 2 and "both set" in p.stderr, p
    # The flags win over the environment.
    assert [k["id"] for k in ok_json(key_cmd(server.store_args(), "list", env=both),
                                     "list")["keys"]] == [made["id"]]


# ---- The key on the wire: kobo and kobo-bench send Authorization. ----

class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers /healthz 200 and everything else 401 as kobod --auth required
    would, recording each request's Authorization header."""
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.seen.append((self.command, self.path, self.headers.get_all("Authorization")))
        if self.path == "/healthz":
            status, body = 200, b'{"status":"ok"}'
        else:
            status = 401
            body = b'{"error":{"code":"unauthenticated","message":"an API key is required"}}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="kobo"')
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    srv.daemon_threads = True
    srv.seen = []
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=10)


FAKE_KEY = "kobo_0123456789abcdef_" + "ab" * 32


def test_cli_sends_the_key(recorder):
    url = f"http://127.0.0.1:{recorder.server_address[1]}"
    base = [binary("kobo"), "--server", url]

    def run(args, env_extra=None):
        env = child_env()
        env.update(env_extra or {})
        recorder.seen.clear()
        p = subprocess.run(base + args, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                           env=env)
        return p, list(recorder.seen)

    p, seen = run(["--key", FAKE_KEY, "account", "get", "a1"])
    assert p.returncode == 1 and "unauthenticated" in p.stderr, p
    assert seen == [("GET", "/v1/accounts/a1", [f"Bearer {FAKE_KEY}"])], seen
    # After the command too, as the other global options.
    p, seen = run(["account", "get", "a1", "--key", FAKE_KEY])
    assert seen == [("GET", "/v1/accounts/a1", [f"Bearer {FAKE_KEY}"])], seen
    # From the environment; the flag wins over it.
    p, seen = run(["account", "get", "a1"], {"KOBO_API_KEY": FAKE_KEY})
    assert seen == [("GET", "/v1/accounts/a1", [f"Bearer {FAKE_KEY}"])], seen
    p, seen = run(["--key", "kobo_flag", "account", "get", "a1"], {"KOBO_API_KEY": FAKE_KEY})
    assert seen[0][2] == ["Bearer kobo_flag"], seen
    # None given: no header at all.
    p, seen = run(["account", "get", "a1"])
    assert seen == [("GET", "/v1/accounts/a1", None)], seen
    # A key that would end the header early is refused before anything is sent.
    p, seen = run(["--key", "kobo_x\r\nX-Evil: 1", "account", "get", "a1"])
    assert p.returncode == 2 and seen == [], (p, seen)
    p, seen = run(["account", "get", "a1"], {"KOBO_API_KEY": "kobo_x\nX-Evil: 1"})
    assert p.returncode == 2 and seen == [], (p, seen)


def test_bench_sends_the_key_and_reports_401(recorder):
    url = f"http://127.0.0.1:{recorder.server_address[1]}"
    base = [binary("kobo-bench"), "--url", url, "--accounts", "2", "--connections", "1",
            "--duration", "1"]

    def run(args, env_extra=None):
        env = child_env()
        env.update(env_extra or {})
        recorder.seen.clear()
        p = subprocess.run(base + args, capture_output=True, text=True, timeout=120, env=env)
        return p, list(recorder.seen)

    p, seen = run(["--key", FAKE_KEY])
    assert p.returncode == 3 and "HTTP 401" in p.stderr and "key was refused" in p.stderr, p.stderr
    writes = [s for s in seen if s[1] != "/healthz"]
    assert writes and all(s[2] == [f"Bearer {FAKE_KEY}"] for s in writes), seen
    p, seen = run([], {"KOBO_API_KEY": FAKE_KEY})
    assert all(s[2] == [f"Bearer {FAKE_KEY}"] for s in seen if s[1] != "/healthz"), seen
    p, seen = run([])
    assert p.returncode == 3 and "requires an API key" in p.stderr, p.stderr
    assert all(s[2] is None for s in seen), seen
    for bad in ("", "has space", "x" * 513, "kobo_\u00e9"):
        p, seen = run(["--key", bad])
        assert p.returncode == 2 and seen == [], (bad, p.stderr, seen)
        assert bad == "" or bad not in p.stderr     # a secret is not echoed


# ---- Against kobod --auth required. ----

def wait_status(url, key, want, timeout=12.0):
    """Polls `kobo account get` with key until its exit/answer says want
    ("ok": 404 account_not_found, i.e. authenticated; "401"); returns the
    seconds it took."""
    import time
    t0 = time.monotonic()
    while True:
        env = dict(child_env(), KOBO_API_KEY=key)
        p = subprocess.run([binary("kobo"), "--server", url, "account", "get", "probe:none"],
                           capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=env)
        seen = "401" if "HTTP 401" in p.stderr else "ok" if "account_not_found" in p.stderr else p.stderr
        if seen == want:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"key not {want} after {timeout}s: {seen}"
        time.sleep(0.2)


def test_keys_on_a_running_kobod_with_auth_required(make_server):
    """A key made by `kobo key create` beside a running kobod --auth
    required is honoured within 10 s; kobo-bench runs with it and reports
    the 401s without it; `kobo key revoke` stops it within 10 s."""
    srv = make_server("--auth", "required")
    store = srv.store_args()
    made = ok_json(key_cmd(store, "create", "--name", "bench", "--scopes",
                           "accounts:read,accounts:write,transfers:read,transfers:write"), "create")
    assert wait_status(srv.url, made["key"], "ok") < 10.5
    bench = [binary("kobo-bench"), "--url", srv.url, "--duration", "2", "--accounts", "50",
             "--connections", "4", "--json"]
    p = subprocess.run(bench + ["--key", made["key"]], capture_output=True, text=True, timeout=300,
                       env=child_env())
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["transfers_acked"] > 0 and summary["verify"]["ok"], summary
    assert not any(code in ("401", "403") for code in summary.get("status", {})), summary
    p = subprocess.run(bench, capture_output=True, text=True, timeout=300, env=child_env())
    assert p.returncode == 3 and "HTTP 401" in p.stderr and "requires an API key" in p.stderr, p.stderr
    # A key without the write scopes: 403, said so.
    ro = ok_json(key_cmd(store, "create", "--name", "ro", "--scopes", "accounts:read"), "create ro")
    wait_status(srv.url, ro["key"], "ok")
    p = subprocess.run(bench + ["--key", ro["key"]], capture_output=True, text=True, timeout=300,
                       env=child_env())
    assert p.returncode == 3 and "HTTP 403" in p.stderr and "lacks a scope" in p.stderr, p.stderr

    ok_json(key_cmd(store, "revoke", made["id"]), "revoke")
    assert wait_status(srv.url, made["key"], "401") < 10.5
    wait_status(srv.url, ro["key"], "ok")     # the other key still works
