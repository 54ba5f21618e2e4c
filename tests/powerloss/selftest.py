#!/usr/bin/python3
"""selftest.py — the power-loss layer checked on itself: a script of file
operations with a known durable outcome runs under the shim
(powerloss_shim.c), and the replayer (powerloss.py) must rebuild exactly
that outcome under each policy. Python's os.* calls go through the libc
symbols the shim wraps (open64, pwrite64, fcntl(F_DUPFD_CLOEXEC) for
os.dup, mmap64, …), so this also checks those aliases.

    selftest.py --shim LIB     exit 0 when every check passes
"""
import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import powerloss  # noqa: E402

# The script run under the shim, in DIR (argv[1]). Each step's comment says
# what is durable after it.
SCRIPT = r'''
import mmap, os, sys
d = sys.argv[1]
def p(n): return os.path.join(d, n)
dirfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
# a: created, 3 bytes synced, the name synced; 3 more bytes never synced.
a = os.open(p("a"), os.O_CREAT | os.O_RDWR, 0o600)
os.write(a, b"aaa"); os.fsync(a); os.fsync(dirfd)
os.pwrite(a, b"bbb", 3)
# c: the write-then-rename pattern, directory synced: durable as "c".
c = os.open(p("c.tmp"), os.O_CREAT | os.O_RDWR, 0o600)
os.write(c, b"cccc"); os.fsync(c); os.rename(p("c.tmp"), p("c")); os.fsync(dirfd)
# e: O_DSYNC writes are durable by themselves.
e = os.open(p("e"), os.O_CREAT | os.O_RDWR | os.O_DSYNC, 0o600)
os.fsync(dirfd)
os.write(e, b"eeeee")
# f: fsync through a dup'ed descriptor counts; sync_file_range is not durable.
f = os.open(p("f"), os.O_CREAT | os.O_RDWR, 0o600)
os.fsync(dirfd)
os.write(f, b"ffff")
f2 = os.dup(f); os.close(f); os.fsync(f2)
os.pwrite(f2, b"FFFF", 4)
os.sync_file_range(f2, 0, 0, os.SYNC_FILE_RANGE_WRITE) if hasattr(os, "sync_file_range") else None
# s: 1,536 unsynced bytes over three sectors of a synced file of zeros.
s = os.open(p("s"), os.O_CREAT | os.O_RDWR, 0o600)
os.ftruncate(s, 1536); os.fsync(s); os.fsync(dirfd)
os.pwrite(s, b"\x01" * 512 + b"\x02" * 512 + b"\x03" * 512, 0)
# sub/g: a directory and a file in it, both names synced.
os.mkdir(p("sub")); os.fsync(dirfd)
subfd = os.open(p("sub"), os.O_RDONLY | os.O_DIRECTORY)
g = os.open(p("sub/g"), os.O_CREAT | os.O_RDWR, 0o600)
os.write(g, b"g"); os.fsync(g); os.fsync(subfd)
# sub/r: "new" renamed over a durable sub/r without a fsync of sub: after
# a cut the old sub/r (its own inode and bytes) is still there.
r = os.open(p("sub/r"), os.O_CREAT | os.O_RDWR, 0o600)
os.write(r, b"old"); os.fsync(r); os.fsync(subfd)
n = os.open(p("sub/r.new"), os.O_CREAT | os.O_RDWR, 0o600)
os.write(n, b"new"); os.fsync(n); os.rename(p("sub/r.new"), p("sub/r"))
# d: durable, then unlinked without a directory fsync: still there after a cut.
dd = os.open(p("d"), os.O_CREAT | os.O_RDWR, 0o600)
os.write(dd, b"dd"); os.fsync(dd); os.fsync(dirfd); os.close(dd); os.unlink(p("d"))
# b: bytes synced but its name never (no fsync of the root after it): lost.
b = os.open(p("b"), os.O_CREAT | os.O_RDWR, 0o600)
os.write(b, b"bbbb"); os.fdatasync(b)
print("done", flush=True)
if len(sys.argv) > 2:
    # A shared writable map of a recorded file: the replayer must refuse.
    m = mmap.mmap(a, 6)
    m[0:1] = b"A"
    m.close()
'''

failures = []


def check(what, got, want):
    if got != want:
        failures.append("%s: got %r, want %r" % (what, got, want))


def read_tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, root)] = f.read()
    return out


def run_script(shim, work, extra):
    data, log = os.path.join(work, "data"), os.path.join(work, "log")
    os.makedirs(data)
    env = dict(os.environ, LD_PRELOAD=os.path.abspath(shim), KOBO_POWERLOSS_DIR=data,
               KOBO_POWERLOSS_LOG=log)
    p = subprocess.run(["/usr/bin/python3", "-c", SCRIPT, data] + extra, env=env,
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0 or "done" not in p.stdout:
        raise SystemExit("the script failed under the shim: %s" % p.stderr)
    return log


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shim", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kobo-powerloss-self-") as work:
        log = run_script(args.shim, os.path.join(work, "1"), [])
        run = powerloss.Run(powerloss.parse_log(log))
        end = len(run.records)
        out = os.path.join(work, "img")

        run.build(end, "none", 1, out)
        t = read_tree(out)
        check("none: names", sorted(t), ["a", "c", "d", "e", "f", "s", "sub/g", "sub/r"])
        check("none: sub/r (the rename over it not synced)", t.get("sub/r"), b"old")
        check("none: e (O_DSYNC write, no fsync)", t.get("e"), b"eeeee")
        check("none: a (3 synced bytes)", t.get("a"), b"aaa")
        check("none: c (renamed, dir synced)", t.get("c"), b"cccc")
        check("none: d (unlink not synced)", t.get("d"), b"dd")
        check("none: f (fsync through dup; 2nd write only sync_file_range'd)", t.get("f"),
              b"ffff")
        check("none: s (unsynced sectors dropped)", t.get("s"), bytes(1536))
        check("none: sub/g", t.get("sub/g"), b"g")

        run.build(end, "all", 1, out)
        t = read_tree(out)
        check("all: names", sorted(t), ["a", "b", "c", "e", "f", "s", "sub/g", "sub/r"])
        check("all: sub/r", t.get("sub/r"), b"new")
        check("all: a", t.get("a"), b"aaabbb")
        check("all: b", t.get("b"), b"bbbb")
        check("all: f", t.get("f"), b"ffffFFFF")

        check("O_DSYNC write flagged", sum(1 for r in run.records if r.type == powerloss.WRITE
                                           and r.flags & powerloss.F_SYNC), 1)

        prefixes, sectors = set(), set()
        for seed in range(200):
            run.build(end, "prefix", seed, out)
            t = read_tree(out)
            prefixes.add(t.get("a"))
            run.build(end, "sectors", seed, out)
            t = read_tree(out)
            got = t.get("s")
            sectors.add(tuple(got[i * 512] for i in range(3)))
            for i in range(3):
                check("sectors: sector %d whole" % i, len(set(got[i * 512:(i + 1) * 512])), 1)
        check("prefix: a is a prefix of aaabbb, at least the synced aaa",
              all(x in (b"aaa", b"aaab", b"aaabb", b"aaabbb") for x in prefixes), True)
        check("prefix: torn at every byte", len(prefixes), 4)
        check("sectors: every combination of 3 sectors", len(sectors), 8)

        # Crash points inside the run: just after a's first fsync and the
        # directory fsync, a holds aaa; just before its fsync, nothing durable.
        fsyncs = [r for r in run.records if r.type == powerloss.FSYNC]
        a_sync, dir_sync = fsyncs[0], fsyncs[1]
        run.build(dir_sync.index + 1, "none", 1, out)
        check("k after a's fsyncs", read_tree(out), {"a": b"aaa"})
        run.build(a_sync.index, "none", 1, out)
        check("k before a's fsync", read_tree(out), {})

        # A shared writable mmap is flagged and the replayer refuses the log.
        log2 = run_script(args.shim, os.path.join(work, "2"), ["mmap"])
        run2 = powerloss.Run(powerloss.parse_log(log2))
        try:
            run2.build(len(run2.records), "none", 1, out)
            failures.append("mmap: the replayer accepted a log with a shared writable map")
        except ValueError as err:
            check("mmap refused", "cannot follow" in str(err), True)
        # Unless the file is volatile (SQLite's -shm): then it is left out.
        run3 = powerloss.Run(powerloss.parse_log(log2), volatile=["a"])
        run3.build(len(run3.records), "none", 1, out)
        check("volatile: mapped file left out", sorted(read_tree(out)),
              ["c", "d", "e", "f", "s", "sub/g", "sub/r"])

    for f in failures:
        print("FAIL: " + f)
    print("power-loss self-test: %s" % ("%d failures" % len(failures) if failures else "ok"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
