#!/usr/bin/python3
"""run_journal.py — the journal under simulated power loss (make
test-powerloss; README "Durability").

For each scenario: journal_writer appends numbered frames of random sizes
under the shim (powerloss_shim.c), small segments so that it rolls over
many times (through the spare segment's rename + directory fsync, or
creating each segment itself), releasing old segments in one scenario.
Then, at sampled crash points (seeded; every point just before and after a
rename, unlink or directory fsync is a candidate, the rest uniform), the
replayer (powerloss.py) rebuilds the directory with each policy (none,
prefix, sectors, all) and `journal_writer verify` opens it: every
acknowledged batch there with its exact bytes, numbers contiguous, nothing
beyond what was written, the journal goes on; a refusal to open only in the
cases journal.h documents and only where the policy can put an unsynced
append's sectors out of order, with every acknowledged frame still intact
before the refused one.

The first scenario then runs a second round: crash inside an append (a
prefix-torn tail, the spare's temporary file left over), reopen that image
under the shim — recovery's own zeroing, fdatasync and unlink are cut by
power too — append more, and check crash points of that run against the
image as its base (powerloss.py --base).

    run_journal.py --shim LIB --writer BIN [--points N] [--seed S] [--keep] [--workdir DIR]

Exit 0 when every crash point passes; 1 with the failures (each with the
command that rebuilds its image) otherwise.
"""
import argparse
import collections
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import powerloss  # noqa: E402

SCENARIOS = [
    # name, appends, segment bytes, payload max, spare, release every
    dict(name="spare+release", appends=150, segment=16384, payload_max=3000, spare=1,
         release_every=20, second_round_appends=60),
    dict(name="no-spare", appends=120, segment=8192, payload_max=1500, spare=0,
         release_every=0),
    # Frames of up to 40 sectors: one torn frame can lose any of them.
    dict(name="big-frames", appends=60, segment=65536, payload_max=20000, spare=1,
         release_every=0),
]
WRITER_TIMEOUT_S = 120
VERIFY_TIMEOUT_S = 30
FAILURES_SHOWN_MAX = 10
BASE_TRIES_MAX = 20  # crash points tried for a round-2 base with a torn tail


def run_writer(args, sc, seed, workdir, base=None):
    """Runs the writer under the shim on an empty directory, or on a copy of
    base (a crash image: the open then recovers it, under the shim too)."""
    data, log = os.path.join(workdir, "data"), os.path.join(workdir, "log")
    if base:
        shutil.copytree(base, data)
    else:
        os.makedirs(data)
    env = dict(os.environ, LD_PRELOAD=os.path.abspath(args.shim), KOBO_POWERLOSS_DIR=data,
               KOBO_POWERLOSS_LOG=log,
               ASAN_OPTIONS="verify_asan_link_order=0:" + os.environ.get("ASAN_OPTIONS", ""))
    cmd = [args.writer, "write", data, str(seed), str(sc["appends"]), str(sc["segment"]),
           str(sc["payload_max"]), str(sc["spare"]), str(sc["release_every"])]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=WRITER_TIMEOUT_S)
    if p.returncode != 0:
        raise SystemExit("writer failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), p.stderr))
    steps = collections.defaultdict(list)
    for line in p.stdout.splitlines():
        word, *nums = line.split()
        steps[word].append([int(n) for n in nums])
    return log, steps


class Verifier:
    """One `journal_writer verify-batch` process answering a line per image;
    restarted after a failed check (which ends it)."""

    def __init__(self, writer, env):
        self.writer, self.env, self.proc = writer, env, None

    def check(self, vargs):
        if self.proc is None:
            self.proc = subprocess.Popen([self.writer, "verify-batch"], env=self.env, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE)
        self.proc.stdin.write(" ".join(vargs) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        if line.startswith("ok") or line.startswith("refused-later-"):
            return line, ""
        try:
            err = self.proc.communicate(timeout=VERIFY_TIMEOUT_S)[1]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            err = self.proc.communicate()[1]
        self.proc = None
        return line, err

    def close(self):
        """Ends the process; its leak check must pass (exit 0)."""
        if self.proc is None:
            return 0
        try:
            _, err = self.proc.communicate(timeout=VERIFY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        rc, self.proc = self.proc.returncode, None
        if rc != 0:
            print("verifier exited %d: %s" % (rc, err[-3000:]))
        return rc


def expectations(steps, crash_offset):
    """(acked, released, written) for a crash at this log offset. What the
    run's open found (batches FIRST..LAST of a base image) is durable from
    the start: the base is the disk."""
    base_first, base_last = steps["open"][0][:2]
    acked = max([last for first, last, pos in steps["ack"] if pos <= crash_offset] + [base_last])
    written = max([first + count - 1 for first, count, pos in steps["begin"]
                   if pos < crash_offset] + [base_last])
    released = max([upto for upto, pos in steps["release"] if pos < crash_offset] +
                   [base_first - 1])
    return acked, released, written


def torn_base_point(run, rng):
    """A crash point just before an append's fdatasync (its frames written,
    not synced): the prefix policy then tears them at a random byte."""
    syncs = [r.index for r in run.records if r.type == powerloss.FSYNC and
             r.flags & powerloss.F_DATAONLY]
    return rng.choice(syncs[len(syncs) // 3:])


def crash_points(run, n, rng):
    total = len(run.records)
    special = set()
    for r in run.records:
        if r.type in (powerloss.RENAME, powerloss.UNLINK) or \
                (r.type == powerloss.FSYNC and r.flags & powerloss.F_DIR):
            special.update((r.index, r.index + 1))
    special = sorted(special)
    chosen = set(rng.sample(special, min(len(special), n // 3)))
    everything = list(range(total + 1))
    while len(chosen) < min(n, total + 1):
        chosen.add(rng.choice(everything))
    return sorted(chosen)


def probe_torn(verifier, image, probe, seed, sc, expect):
    """The torn bytes an open of (a copy of) image cuts, 0 if none."""
    if os.path.exists(probe):
        shutil.rmtree(probe)
    shutil.copytree(image, probe)
    acked, released, written = expect
    line, _ = verifier.check([probe, str(seed), str(sc["segment"]), str(sc["payload_max"]),
                              str(acked), str(released), str(written), "0"])
    fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
    return int(fields.get("torn", 0)) if line.startswith("ok") else 0


def check_run(args, sc, note, seed, work, log, steps, run, verifier, failures, tally,
              coverage):
    """Checks the crash images of one writer run at sampled points."""
    offsets = run.offsets()
    renames = [r for r in run.records if r.type == powerloss.RENAME]
    coverage["records"] += len(run.records)
    coverage["rolls"] += len(renames)
    coverage["spare renames"] += sum(r.path.endswith("/0000000000000000.seg.tmp")
                                     for r in renames)
    coverage["unlinks"] += sum(r.type == powerloss.UNLINK for r in run.records)
    coverage["dir fsyncs"] += sum(len(v) for v in run.dir_syncs.values())
    coverage["acked appends"] += len(steps["ack"])
    points = crash_points(run, args.points, random.Random(seed))
    if note:
        # Round 2: every crash point inside the recovering open (until its
        # "open" line), where recovery zeroes the torn tail and syncs it.
        opened_at = steps["open"][0][2]
        points = sorted(set(points) | {k for k, off in enumerate(offsets) if off <= opened_at})
    coverage["crash points"] += len(points)
    image = os.path.join(work, "image")
    for k in points:
        acked, released, written = expectations(steps, offsets[k])
        for policy in powerloss.POLICIES:
            run.build(k, policy, seed, image)
            vargs = [image, str(seed), str(sc["segment"]), str(sc["payload_max"]),
                     str(acked), str(released), str(written),
                     "1" if policy == "sectors" else "0"]
            line, err = verifier.check(vargs)
            outcome = line.split()[0] if line else ""
            if outcome not in ("ok", "refused-later-frame", "refused-later-bytes"):
                failures.append("%s%s k=%d policy=%s: %s %s\n  rebuild: %s replay %s IMG"
                                " --at %d --policy %s --seed %d\n  check: %s verify %s" % (
                                    sc["name"], note, k, policy, line, err[-2000:],
                                    os.path.join(os.path.dirname(__file__), "powerloss.py"),
                                    log, k, policy, seed, args.writer, " ".join(vargs)))
                run.build(k, policy, seed, os.path.join(work, "fail-%d-%s" % (k, policy)))
                continue
            if outcome == "ok" and "torn=0" not in line:
                outcome = "ok-torn-tail-cut"
            tally[(policy, outcome)] += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shim", required=True)
    ap.add_argument("--writer", required=True)
    ap.add_argument("--points", type=int, default=300, help="crash points per scenario")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--workdir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where the run's files go (default /dev/shm: the simulation, not the"
                         " disk, decides what survives, so a real fsync only costs time)")
    args = ap.parse_args()
    started = time.monotonic()
    workroot = tempfile.mkdtemp(prefix="kobo-powerloss-", dir=args.workdir)
    failures, tally, coverage = [], collections.Counter(), collections.Counter()
    verify_env = {k: v for k, v in os.environ.items() if not k.startswith("KOBO_POWERLOSS")}
    verify_env.pop("LD_PRELOAD", None)
    verifier = Verifier(args.writer, verify_env)
    try:
        for si, sc in enumerate(SCENARIOS):
            seed = args.seed * 100 + si
            work = os.path.join(workroot, "s%d" % si)
            log, steps = run_writer(args, sc, seed, work)
            run = powerloss.Run(powerloss.parse_log(log))
            check_run(args, sc, "", seed, work, log, steps, run, verifier, failures, tally,
                      coverage)
            if not sc.get("second_round_appends"):
                continue
            # Crash, recover, crash again: round 1 cut inside an append (a
            # torn tail, a spare segment's temporary file left over), then
            # the writer reopens that image under the shim — recovery's own
            # zeroing, fdatasync and unlinks are power-cut too — and goes on.
            rng, base, torn = random.Random(seed), os.path.join(work, "base"), 0
            for _ in range(BASE_TRIES_MAX):
                k1 = torn_base_point(run, rng)
                run.build(k1, "prefix", seed, base)
                torn = probe_torn(verifier, base, os.path.join(work, "probe"), seed, sc,
                                  expectations(steps, run.offsets()[k1]))
                if torn:
                    break
            coverage["round-2 base torn bytes"] += torn
            work2 = os.path.join(workroot, "s%d-round2" % si)
            sc2 = dict(sc, appends=sc["second_round_appends"])
            log2, steps2 = run_writer(args, sc2, seed, work2, base=base)
            run2 = powerloss.Run(powerloss.parse_log(log2), base=base)
            check_run(args, sc2, " (round 2 from k=%d prefix, --base %s)" % (k1, base), seed,
                      work2, log2, steps2, run2, verifier, failures, tally, coverage)
        if verifier.close() != 0:
            failures.append("the verifier process did not exit cleanly (leak check?)")
    finally:
        if verifier.proc is not None:
            verifier.proc.kill()
            verifier.proc.wait()
        elapsed = time.monotonic() - started
        print("power loss, journal: %s" % ", ".join("%s %d" % kv for kv in coverage.items()))
        for policy in powerloss.POLICIES:
            row = {o: n for (p, o), n in tally.items() if p == policy}
            print("  %-8s %s" % (policy, ", ".join("%s %d" % kv for kv in sorted(row.items()))))
        print("  %d crash images checked in %.1f s" % (sum(tally.values()) + len(failures),
                                                       elapsed))
        if failures or args.keep:
            print("  work directory kept: %s" % workroot)
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    # The runs must really have exercised what they claim to.
    problems = list(failures[:FAILURES_SHOWN_MAX])
    if coverage["spare renames"] == 0 or coverage["rolls"] <= coverage["spare renames"]:
        problems.append("coverage: both roll-over paths (spare rename, inline creation) expected")
    if coverage["unlinks"] == 0:
        problems.append("coverage: no segment was released")
    if any(sc.get("second_round_appends") for sc in SCENARIOS) and \
            coverage["round-2 base torn bytes"] == 0:
        problems.append("coverage: no round-2 base with a torn tail for recovery to cut")
    if tally[("prefix", "ok-torn-tail-cut")] == 0:
        problems.append("coverage: no crash point left a torn last frame to cut")
    for p in problems:
        print("FAIL: " + p)
    if failures:
        print("%d failures" % len(failures))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
