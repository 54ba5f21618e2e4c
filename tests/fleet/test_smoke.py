"""test_smoke.py — a short sample of the fleet for `make test`
(`make test-fleet-smoke`): `scripts/fleet.sh up`, writes through the VIP,
`kill pg-primary` while they run, writes continue on the promoted standby,
every acknowledged write verified and `kobo audit --postgres` sound, `down`
removes every namespace and process. API keys: kobod run --auth required,
`up` prints a key of every scope that works through the VIP (none or a
wrong one: 401), Prometheus still scrapes /metrics. HTTPS through the VIP: the load
balancers terminate TLS (1.2+) with the certificate `up` generated, and the
request reaches kobod. The five scenarios are test_fleet.py.
"""
import json
import os
import re
import subprocess
import time

import pytest

from test_fleet import FLEET, KOBO, LOADGEN, fleet, primary, status, up_lines, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fleet needs root (network namespaces)")


def namespaces():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    prefix = os.environ.get("FLEET_NS_PREFIX", "kf") + "-"
    return [l.split()[0] for l in out.splitlines() if l.startswith(prefix)]


def client(*cmd, timeout=30):
    return subprocess.run([FLEET, "exec", *cmd], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def fingerprint(pem_text):
    r = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"], input=pem_text,
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def check_keys(urls):
    """The fleet's kobod require an API key: none or a wrong one is a 401
    through the VIP, the key `up` printed works, /readyz needs none, and
    Prometheus still scrapes every kobod's /metrics."""
    key = urls.get("key", "")
    assert re.match(r"^kobo_[0-9a-f]{16}_[0-9a-f]{64}$", key), urls
    probe = urls["url"] + "/v1/accounts/smoke:nobody"
    for header in ([], ["-H", "Authorization: Bearer kobo_0000000000000000_" + "0" * 64]):
        r = client("curl", "-sS", "-m", "10", "-D", "-", "-o", "/dev/null", *header, probe)
        assert r.stdout.startswith("HTTP/1.1 401"), r.stdout + r.stderr
        assert "www-authenticate: bearer" in r.stdout.lower(), r.stdout
    r = client("curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
               "-H", "Authorization: Bearer " + key, probe)
    assert r.stdout == "404", r.stdout + r.stderr      # authenticated: the account is unknown
    r = client("curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", urls["url"] + "/readyz")
    assert r.stdout == "200", r.stdout

    def kobod_targets_up():
        r = client("curl", "-sS", "-m", "5", "http://10.77.0.5:9090/api/v1/targets")
        if r.returncode != 0:
            return False
        targets = [t for t in json.loads(r.stdout)["data"]["activeTargets"]
                   if t["labels"].get("job") == "kobod"]
        return len(targets) == 2 and all(t["health"] == "up" for t in targets)
    deadline = time.monotonic() + 60
    while not kobod_targets_up():
        assert time.monotonic() < deadline, "Prometheus does not scrape both kobod's /metrics"
        time.sleep(1)


def check_https(urls, cert):
    """HTTPS through the VIP reaches kobod, with the generated certificate,
    TLS 1.2 or later only; the same frontend as plain HTTP."""
    tls = urls["tls-url"]
    auth = ["-H", "Authorization: Bearer " + urls["key"]]
    assert tls == "https://10.77.0.10:8443", urls
    assert os.path.exists(cert), cert
    # An account written over HTTPS is read back over plain HTTP: the
    # request went through HAProxy to kobod and its store.
    acct = "tls:%d" % os.getpid()
    body = json.dumps({"id": acct, "currency": "NGN", "allow_negative": True})
    r = client("curl", "-sS", "-m", "10", "--cacert", cert, *auth, "-H", "Content-Type: application/json",
               "-d", body, "-w", "\n%{http_code} %{http_version} %{ssl_verify_result}", tls + "/v1/accounts")
    assert r.returncode == 0, r.stderr
    answer, status_line = r.stdout.rsplit("\n", 1)
    assert status_line.split() == ["201", "1.1", "0"], r.stdout
    assert json.loads(answer)["id"] == acct
    r = client("curl", "-sS", "-m", "10", *auth, "-w", "\n%{http_code}", urls["url"] + "/v1/accounts/" + acct)
    assert r.returncode == 0 and r.stdout.rsplit("\n", 1)[1] == "200", r.stdout + r.stderr
    # Without the certificate as trust anchor curl refuses: it is not some
    # certificate the system trusts, it is ours.
    r = client("curl", "-sS", "-m", "10", "-o", "/dev/null", tls + "/readyz")
    assert r.returncode == 60, (r.returncode, r.stderr)
    # The certificate the load balancer presents is the generated one.
    r = client("openssl", "s_client", "-connect", "10.77.0.10:8443", "-servername", "10.77.0.10",
               "-CAfile", cert, "-verify_return_error", "-brief", timeout=30)
    shown = client("sh", "-c", "openssl s_client -connect 10.77.0.10:8443 </dev/null 2>/dev/null"
                   " | openssl x509", timeout=30)
    with open(cert) as f:
        assert fingerprint(shown.stdout) == fingerprint(f.read())
    assert r.returncode == 0 and "Verification: OK" in r.stderr, r.stderr
    assert "Protocol version: TLSv1.3" in r.stderr or "Protocol version: TLSv1.2" in r.stderr, r.stderr
    # TLS 1.1 and older: the server answers with a protocol_version alert.
    r = client("openssl", "s_client", "-connect", "10.77.0.10:8443", "-tls1_1", timeout=30)
    assert r.returncode != 0 and "alert protocol version" in r.stderr, r.stdout + r.stderr


def test_up_write_failover_down(tmp_path):
    fleet("down", timeout=120, check=False)
    pids = {}
    try:
        r = fleet("up", timeout=900)
        urls = up_lines(r.stdout)
        assert urls.get("url") == "http://10.77.0.10:8080", r.stdout
        url = urls["url"]
        again = fleet("up", timeout=120)  # idempotent: same lines, nothing restarted
        assert up_lines(again.stdout) == urls
        st = status()
        assert st["tls_url"] == urls["tls-url"], st
        check_keys(urls)
        check_https(urls, st["tls_cert"])
        old = primary(st)
        assert old and st["vip_holder"] in ("lb-1", "lb-2"), st
        pids = {c["name"]: c["pid"] for c in st["components"]}

        out = tmp_path / "loadgen.json"
        lg = subprocess.Popen([FLEET, "exec", "/usr/bin/python3", LOADGEN, "--url", url, "--rate", "50",
                               "--duration", "30", "--give-up", "90", "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, KOBO_API_KEY=urls["key"]))
        try:
            time.sleep(6)
            fleet("kill", "pg-primary")
            wait_until("the standby promoted", lambda s: primary(s) not in (None, old), 90)
            _, err = lg.communicate(timeout=300)
        finally:
            if lg.poll() is None:
                lg.kill()
                lg.wait()
        res = json.loads(out.read_text())
        assert res["problem_count"] == 0, res["problems"]
        assert res["gave_up"] == 0 and res["acknowledged"] == res["issued"], res
        assert res["failed_attempts"] > 0, "the failover was not seen by any write"
        # Writes continued after the failover: the last acknowledgement came
        # after the window closed.
        assert res["windows"] and res["windows"][-1][1] is not None, res
        audit = fleet("exec", KOBO, "audit", "--postgres", fleet("uri", "0").stdout.strip(), timeout=120,
                      check=False)
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert all(pids[n] for n in pids if n.startswith(("kobod", "lb")))
    finally:
        fleet("down", timeout=120, check=False)
    assert namespaces() == []
    assert not os.path.exists(os.environ.get("FLEET_DIR", "/tmp/kobo-fleet"))
    for name, pid in pids.items():
        if pid:
            assert not os.path.exists(f"/proc/{pid}"), f"{name} (pid {pid}) survived down"
