"""
test_bench.py — kobo-bench drives a short run against a real kobod and
verifies the invariants itself; then `kobo audit` agrees.
"""
import re
import subprocess

from kobotest import binary, child_env, expect_audit_ok


def test_bench_short_run_verifies(server):
    cmd = [binary("kobo-bench"), "--url", server.url, "--duration", "2", "--accounts", "100",
           "--connections", "8"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=child_env())
    out = p.stdout + p.stderr
    assert p.returncode == 0, (f"`{' '.join(cmd)}`: expected exit 0, saw {p.returncode}\n"
                               f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}")
    assert re.search(r"verif\w*\W.*\bok\b", out, re.I | re.M), (
        f"expected a 'verify ... ok' line from kobo-bench, saw:\n{out[-2000:]}")
    expect_audit_ok(server.data, "audit after kobo-bench")
