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


def test_bench_cross_shard_run_verifies(make_server):
    """kobo-bench --shards 2 --cross-shard 50 against kobod --shards 2: half
    the transfers cross shards, latency is reported per class, verify holds;
    then with --saga-wait-ms 1 most cross-shard answers are 202 processing
    and verify waits for those sagas before checking."""
    for extra in ([], ["--saga-wait-ms", "1"]):
        server = make_server("--shards", "2", *extra)
        cmd = [binary("kobo-bench"), "--url", server.url, "--duration", "2", "--accounts", "100",
               "--connections", "8", "--shards", "2", "--cross-shard", "50"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=child_env())
        out = p.stdout + p.stderr
        what = f"`{' '.join(cmd)}` against kobod --shards 2 {' '.join(extra)}"
        assert p.returncode == 0, (f"{what}: expected exit 0, saw {p.returncode}\n"
                                   f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}")
        assert re.search(r"^verify: ok \(", out, re.M) and "conservation holds" in out, (
            f"{what}: expected 'verify: ok (... conservation holds ...)', saw:\n{out[-2000:]}")
        local = re.search(r"^\s+local\s+(\d+) requests: p50 [\d.]+\s+p99 [\d.]+", out, re.M)
        cross = re.search(r"^\s+cross-shard\s+(\d+) requests: p50 [\d.]+\s+p99 [\d.]+", out, re.M)
        assert local and cross, f"{what}: expected local and cross-shard latency lines, saw:\n{out[-2000:]}"
        n_local, n_cross = int(local.group(1)), int(cross.group(1))
        assert n_local > 50 and n_cross > 50 and 0.3 < n_cross / (n_local + n_cross) < 0.7, (
            f"{what}: --cross-shard 50: expected about half the requests cross-shard, saw {n_local} local, "
            f"{n_cross} cross-shard")
        if extra:
            assert re.search(r"^verify: \d+ transfers were answered 202", out, re.M), (
                f"{what}: expected 202 answers for verify to wait on, saw:\n{out[-2000:]}")
        server.sigterm()
        expect_audit_ok(server.data, f"audit after {what}")
