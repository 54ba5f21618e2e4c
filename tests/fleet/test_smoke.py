"""test_smoke.py — a short sample of the fleet for `make test`
(`make test-fleet-smoke`): `scripts/fleet.sh up`, writes through the VIP,
`kill pg-primary` while they run, writes continue on the promoted standby,
every acknowledged write verified and `kobo audit --postgres` sound, `down`
removes every namespace and process. The five scenarios are test_fleet.py.
"""
import json
import os
import subprocess
import time

import pytest

from test_fleet import FLEET, KOBO, LOADGEN, fleet, primary, status, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fleet needs root (network namespaces)")


def namespaces():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    prefix = os.environ.get("FLEET_NS_PREFIX", "kf") + "-"
    return [l.split()[0] for l in out.splitlines() if l.startswith(prefix)]


def test_up_write_failover_down(tmp_path):
    fleet("down", timeout=120, check=False)
    pids = {}
    try:
        r = fleet("up", timeout=900)
        url = r.stdout.strip().splitlines()[-1]
        assert url == "url: http://10.77.0.10:8080", r.stdout
        url = url[5:]
        again = fleet("up", timeout=120)  # idempotent: same line, nothing restarted
        assert again.stdout.strip().splitlines()[-1] == "url: " + url
        st = status()
        old = primary(st)
        assert old and st["vip_holder"] in ("lb-1", "lb-2"), st
        pids = {c["name"]: c["pid"] for c in st["components"]}

        out = tmp_path / "loadgen.json"
        lg = subprocess.Popen([FLEET, "exec", "/usr/bin/python3", LOADGEN, "--url", url, "--rate", "50",
                               "--duration", "30", "--give-up", "90", "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
