#!/usr/bin/python3
"""record.py RESULTS.json [--append docs/benchmarks.md] — the fleet section
of docs/benchmarks.md from what tests/fleet/test_fleet.py measured: a dated
heading, the machine, the command, the commit, one row per scenario.
Prints it; with --append also appends it to the file."""
import argparse
import datetime
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WHAT = {
    "kill-pg-primary": "kill -9 primary postmaster + keeper",
    "kill-lb-active": "kill -9 active HAProxy + keepalived",
    "kill-kobod-1": "kill -9 kobod-1",
    "kill-pg-standby": "kill -9 standby (start again later)",
    "partition-pg-primary": "primary's link down",
}


def machine():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem_kb = 0
    return f"{os.cpu_count()} vCPU ({model}), {mem_kb // 1024 // 1024} GiB RAM, shared with other work"


def extra(r):
    keys = [("new_primary", "promoted: {}"), ("vip_to", "VIP to {}"),
            ("primary_state_while_standby_down", "primary {} (asynchronous) while the standby was down")]
    notes = [f.format(r[k]) for k, f in keys if k in r]
    if r.get("kobod_start_restarts"):
        notes.append(f"`start kobod-1`: kobod exited while starting {r['kobod_start_restarts']}× and was "
                     "started again (see below)")
    return "; ".join(notes)


def merged(windows):
    """Overlapping windows (several attempts failing at once) as one."""
    out = []
    for s, e in sorted(windows, key=lambda w: w[0]):
        if out and out[-1][1] is not None and s <= out[-1][1]:
            out[-1][1] = None if e is None else max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def section(results):
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rate = next(iter(results.values()), {}).get("rate", "?")
    brate = next(iter(results.values()), {}).get("bench_rate", "?")
    lines = [
        f"## Fleet failover ({now})",
        "",
        f"Machine: {machine()}. Commit {commit}. Command: `make test-fleet` "
        "(tests/fleet/test_fleet.py on `scripts/fleet.sh up`: 2 HAProxy + keepalived, 2 kobod, "
        "1 shard on pg_auto_failover — monitor, primary, synchronous standby).",
        f"Load through the VIP from the client namespace: tests/fleet/loadgen.py at {rate} writes/s "
        f"(every write retried with its id until acknowledged) plus kobo-bench `--rate {brate}`; the fault "
        "10 s in. Window = first failed attempt to the first acknowledged write after it (longest such "
        "window). Verified after each: every acknowledged transfer present, balances equal the "
        "acknowledged transfers and sum to zero (loadgen), kobo-bench's verify, `kobo audit --postgres`.",
        "",
        "| scenario | fault | write-unavailability window | errors clients saw (attempts) | acknowledged / lost | checks | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        errs = ", ".join(f"{k} ×{v}" for k, v in sorted(r["errors"].items())) or "none"
        spans = [f"{e - s:.1f} s" if e is not None else "never closed" for s, e in merged(r["windows"])]
        win = "0 (no failed write)" if not spans else spans[0] if len(spans) == 1 else \
            f"{r['unavailable_s']:.1f} s (windows: {', '.join(spans)})"
        lost = "0" if r["verify_problems"] == 0 else f"{r['verify_problems']} problems"
        checks = "ok" if (r["verify_problems"] == 0 and r["bench_exit"] == 0 and r["audit_exit"] == 0) else \
            f"loadgen problems {r['verify_problems']}, audit exit {r['audit_exit']}, kobo-bench exit {r['bench_exit']}"
        lines.append(f"| {name} | {WHAT.get(name, name)} | {win} | {errs} | {r['acknowledged']} / {lost} "
                     f"| {checks} | {extra(r)} |")
    lines += [
        "",
        "A second window in a row is the repair: `start lb-active` (the old MASTER takes the VIP back) or "
        "`start pg-standby` (the primary waits for the returning standby as it turns replication "
        "synchronous again). Errors are what the retrying client saw per attempt; every write was "
        "eventually acknowledged and verified.",
    ]
    if any(r.get("kobod_start_restarts") for r in results.values()):
        lines += [
            "",
            "A kobod exited while starting and fleet.sh started it again, as systemd's "
            "`Restart=on-failure` would: see its log. (Its open used to deadlock (40P01) with a "
            "serving node's batch; since a66ca20 an open of a current schema only reads.)",
        ]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("--append")
    a = p.parse_args()
    text = section(json.loads(Path(a.results).read_text()))
    print(text)
    if a.append:
        with open(a.append, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
