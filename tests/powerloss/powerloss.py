#!/usr/bin/python3
"""powerloss.py — rebuild a directory as a disk would hold it after a power
cut, from the log the shim (powerloss_shim.c) recorded. README "Durability"
says what is simulated and what is not.

The model (one run's log, records in the order the calls took effect):
  * A file is an inode. Its bytes are durable up to its last fsync/fdatasync
    (a write with O_SYNC/O_DSYNC/RWF_*SYNC is durable by itself; sync/syncfs
    make everything durable). sync_file_range makes nothing durable.
  * A name (create, rename, unlink, mkdir, rmdir) is durable once the
    directory holding it was fsynced (for a rename: both directories).
    A file whose name is not durable is lost with its bytes.
  * A crash point k keeps records [0, k). What was not yet durable at k is
    kept according to a policy, seeded:
      none     nothing: only the durable state
      prefix   per file, a prefix of its unsynced writes cut at a uniform
               byte position of their bytes in write order (the write it
               falls in is torn there); names: a random prefix of the
               undurable name operations
      sectors  every unsynced write cut into 512-byte-aligned pieces, each
               kept or lost at random (a disk writing sectors in any order;
               a sector itself is atomic); names as for prefix
      all      everything (what kill -9 leaves: the page cache survives)

    python3 powerloss.py dump LOG
    python3 powerloss.py replay LOG OUT --at K --policy P [--seed S] [--base DIR]
                                [--volatile GLOB ...]

--base: the directory's content when logging started (taken as durable).
--volatile: paths whose content never matters after a crash (SQLite's
  '*-shm' wal-index): left out, and their shared writable maps accepted.
"""
import argparse
import fnmatch
import os
import random
import shutil
import struct
import sys

HEADER = struct.Struct("<IHHQQQQIIII")
assert HEADER.size == 56
(OPEN, WRITE, TRUNCATE, FALLOCATE, FSYNC, SYNC_FILE_RANGE, RENAME, UNLINK, MKDIR,
 RMDIR, SYNC_ALL, UNSUPPORTED) = range(1, 13)
TYPE_NAMES = {OPEN: "open", WRITE: "write", TRUNCATE: "truncate", FALLOCATE: "fallocate",
              FSYNC: "fsync", SYNC_FILE_RANGE: "sync_file_range", RENAME: "rename",
              UNLINK: "unlink", MKDIR: "mkdir", RMDIR: "rmdir", SYNC_ALL: "sync_all",
              UNSUPPORTED: "unsupported"}
F_CREATED, F_DIR, F_SYNC, F_ZERO, F_DATAONLY, F_TRUNCATED = 1, 2, 4, 8, 16, 32
FALLOC_FL_KEEP_SIZE = 1
SECTOR = 512
POLICIES = ("none", "prefix", "sectors", "all")


class Record:
    __slots__ = ("index", "start", "end", "type", "flags", "ino", "dev", "offset",
                 "length", "path", "path2", "mode", "tid", "data")


def parse_log(path):
    """The log's complete records, in order (a torn trailing record is dropped)."""
    with open(path, "rb") as f:
        raw = f.read()
    out, pos = [], 0
    while pos + HEADER.size <= len(raw):
        (total, typ, flags, ino, dev, offset, length, p1, p2, mode, tid) = \
            HEADER.unpack_from(raw, pos)
        if total < HEADER.size or pos + total > len(raw):
            break
        r = Record()
        r.index, r.start, r.end = len(out), pos, pos + total
        r.type, r.flags, r.ino, r.dev = typ, flags, ino, dev
        r.offset, r.length, r.mode, r.tid = offset, length, mode, tid
        q = pos + HEADER.size
        r.path = raw[q:q + p1].decode()
        r.path2 = raw[q + p1:q + p1 + p2].decode()
        q += p1 + p2
        r.data = None
        if typ == WRITE and not flags & F_ZERO:
            r.data = raw[q:q + length]
            if len(r.data) != length:
                raise ValueError("record %d: %d data bytes, %d expected" %
                                 (r.index, len(r.data), length))
        out.append(r)
        pos += total
    return out


def parent(path):
    return path.rsplit("/", 1)[0] if "/" in path else ""


class Inode:
    """One file's operations (in log order) and where its syncs fell."""
    def __init__(self, lid, base=b""):
        self.lid = lid
        self.base = base
        self.ops = []     # (record index, record)
        self.syncs = []   # record indexes of fsync / fdatasync


def apply_op(buf, r, keep_bytes=None):
    """Applies a data/size operation to bytearray buf; keep_bytes: only those
    (offset, data) pieces of a write."""
    if r.type == WRITE:
        pieces = keep_bytes if keep_bytes is not None else \
            [(r.offset, r.data if r.data is not None else bytes(r.length))]
        for off, data in pieces:
            if len(buf) < off + len(data):
                buf.extend(bytes(off + len(data) - len(buf)))
            buf[off:off + len(data)] = data
    elif r.type == TRUNCATE:
        if r.length < len(buf):
            del buf[r.length:]
        else:
            buf.extend(bytes(r.length - len(buf)))
    elif r.type == FALLOCATE:
        if not r.mode & FALLOC_FL_KEEP_SIZE and r.offset + r.length > len(buf):
            buf.extend(bytes(r.offset + r.length - len(buf)))
        if r.mode & ~FALLOC_FL_KEEP_SIZE:
            raise ValueError("record %d: fallocate mode %#x not modelled" % (r.index, r.mode))


def write_bytes(r):
    return r.data if r.data is not None else bytes(r.length)


class Run:
    """A parsed log with the identities resolved: which inode each record
    touches, which name operations exist."""

    def __init__(self, records, base=None, volatile=()):
        """volatile: glob patterns of paths whose content never matters
        after a crash (SQLite's -shm wal-index, rebuilt from the WAL): they
        are left out of every image, and a shared writable map of them is
        accepted."""
        self.records = records
        self.volatile = tuple(volatile)
        self.inodes = {}        # logical id -> Inode
        self.base_names = {}    # path -> ("dir", None) | ("file", lid)
        self.name_ops = []      # (index, record, lid of a created file or None)
        self.dir_syncs = {}     # dir path -> [record indexes]
        self.sync_all = []      # record indexes
        self.unsupported = []
        next_lid = [0]

        def new_inode(content=b""):
            next_lid[0] += 1
            self.inodes[next_lid[0]] = Inode(next_lid[0], content)
            return next_lid[0]

        if base:
            for dirpath, dirnames, filenames in os.walk(base):
                rel = os.path.relpath(dirpath, base)
                rel = "" if rel == "." else rel
                for d in dirnames:
                    self.base_names[os.path.join(rel, d)] = ("dir", None)
                for fn in filenames:
                    with open(os.path.join(dirpath, fn), "rb") as f:
                        self.base_names[os.path.join(rel, fn)] = ("file", new_inode(f.read()))
        live = dict(self.base_names)   # the namespace as the program saw it
        by_ino = {}                    # (dev, ino) -> lid, the newest file of that number
        lid_path = {}                  # lid -> the path it was last opened by
        for r in records:
            key = (r.dev, r.ino)
            if r.type == OPEN:
                if r.flags & F_DIR:
                    continue
                if r.flags & F_CREATED:
                    lid = new_inode()
                    self.name_ops.append((r.index, r, lid))
                    live[r.path] = ("file", lid)
                else:
                    entry = live.get(r.path)
                    if entry is None or entry[0] != "file":
                        raise ValueError("record %d: %s opened, but it is not in the base"
                                         " and was not created in the log" % (r.index, r.path))
                    lid = entry[1]
                by_ino[key] = lid
                lid_path[lid] = r.path
                if r.flags & F_TRUNCATED:
                    t = Record()
                    t.index, t.type, t.length = r.index, TRUNCATE, 0
                    self.inodes[lid].ops.append((r.index, t))
            elif r.type in (WRITE, TRUNCATE, FALLOCATE, FSYNC, SYNC_FILE_RANGE):
                if r.type == FSYNC and r.flags & F_DIR:
                    self.dir_syncs.setdefault(r.path, []).append(r.index)
                    continue
                lid = by_ino.get(key)
                if lid is None:
                    raise ValueError("record %d: %s on inode %d never opened in the log" %
                                     (r.index, TYPE_NAMES[r.type], r.ino))
                if r.type == FSYNC:
                    self.inodes[lid].syncs.append(r.index)
                elif r.type != SYNC_FILE_RANGE:
                    self.inodes[lid].ops.append((r.index, r))
                    if r.type == WRITE and r.flags & F_SYNC:
                        self.inodes[lid].syncs.append(r.index)
            elif r.type in (RENAME, UNLINK, MKDIR, RMDIR):
                self.name_ops.append((r.index, r, None))
                if r.type == RENAME:
                    if r.path in live:
                        live[r.path2] = live.pop(r.path)
                elif r.type == MKDIR:
                    live[r.path] = ("dir", None)
                else:
                    live.pop(r.path, None)
            elif r.type == SYNC_ALL:
                self.sync_all.append(r.index)
            elif r.type == UNSUPPORTED:
                if not self.is_volatile(lid_path.get(by_ino.get(key), r.path)):
                    self.unsupported.append(r)

    def is_volatile(self, path):
        return any(fnmatch.fnmatch(path, p) for p in self.volatile)

    def offsets(self):
        """Byte offset in the log of each crash point 0..len(records)."""
        return [r.start for r in self.records] + \
            [self.records[-1].end if self.records else 0]

    # ---- the image at a crash point ----

    def _durable_at(self, index, syncs, k):
        """Whether an operation at index is covered by a sync in (index, k)."""
        return any(index < s < k for s in syncs) or any(index < s < k for s in self.sync_all)

    def file_content(self, inode, k, policy, rng):
        buf = bytearray(inode.base)
        last_sync = max([s for s in inode.syncs if s < k] +
                        [s for s in self.sync_all if s < k] + [-1])
        unsynced = []
        for index, r in inode.ops:
            if index >= k:
                break
            if index <= last_sync:
                apply_op(buf, r)
            else:
                unsynced.append(r)
        if policy == "none" or not unsynced:
            return bytes(buf)
        if policy == "all":
            for r in unsynced:
                apply_op(buf, r)
        elif policy == "prefix":
            # A cut at a uniform position in the unsynced bytes, in write
            # order (a size change counts as one byte): the write it falls
            # in is torn there.
            weights = [r.length if r.type == WRITE else 1 for r in unsynced]
            cut = rng.randrange(sum(weights) + 1)
            for r, w in zip(unsynced, weights):
                if cut >= w:
                    apply_op(buf, r)
                    cut -= w
                    continue
                if cut > 0 and r.type == WRITE:
                    apply_op(buf, r, [(r.offset, write_bytes(r)[:cut])])
                break
        elif policy == "sectors":
            for r in unsynced:
                if r.type != WRITE:
                    if rng.random() < 0.5:
                        apply_op(buf, r)
                    continue
                data, off, pieces = write_bytes(r), r.offset, []
                pos = off
                while pos < off + len(data):
                    end = min((pos // SECTOR + 1) * SECTOR, off + len(data))
                    if rng.random() < 0.5:
                        pieces.append((pos, data[pos - off:end - off]))
                    pos = end
                apply_op(buf, r, pieces)
        else:
            raise ValueError("unknown policy %r" % policy)
        return bytes(buf)

    def names_at(self, k, policy, rng):
        """path -> ("dir", None) | ("file", lid) as the disk holds it at k."""
        durable, undurable = [], []
        for index, r, lid in self.name_ops:
            if index >= k:
                break
            if r.type == RENAME:
                dirs = {parent(r.path), parent(r.path2)}
            else:
                dirs = {parent(r.path)}
            ok = all(self._durable_at(index, self.dir_syncs.get(d, []), k) for d in dirs)
            (durable if ok else undurable).append((index, r, lid))
        if policy == "none":
            kept = []
        elif policy == "all":
            kept = undurable
        else:
            kept = undurable[:rng.randrange(len(undurable) + 1)]
        names = dict(self.base_names)
        for index, r, lid in sorted(durable + kept, key=lambda t: t[0]):
            if r.type == OPEN:
                names[r.path] = ("file", lid)
            elif r.type == MKDIR:
                names[r.path] = ("dir", None)
            elif r.type == RENAME:
                if r.path in names:   # the source may be a lost creation
                    names[r.path2] = names.pop(r.path)
            else:
                names.pop(r.path, None)
        return names

    def build(self, k, policy, seed, out):
        """Writes the directory as it is after a power cut before record k."""
        if self.unsupported:
            r = self.unsupported[0]
            raise ValueError("record %d: an operation the shim cannot follow (%s %s)" %
                             (r.index, r.path, r.path2))
        rng = random.Random("%s/%d/%s" % (seed, k, policy))
        names = self.names_at(k, policy, rng)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.makedirs(out)
        for path in sorted(names):
            kind, lid = names[path]
            if self.is_volatile(path):
                continue
            full = os.path.join(out, path)
            os.makedirs(full if kind == "dir" else os.path.dirname(full), exist_ok=True)
            if kind == "file":
                with open(full, "wb") as f:
                    f.write(self.file_content(self.inodes[lid], k, policy, rng))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="print the records")
    d.add_argument("log")
    rp = sub.add_parser("replay", help="rebuild the directory at a crash point")
    rp.add_argument("log")
    rp.add_argument("out")
    rp.add_argument("--at", type=int, required=True, help="crash before this record")
    rp.add_argument("--policy", choices=POLICIES, default="none")
    rp.add_argument("--seed", default="1")
    rp.add_argument("--base")
    rp.add_argument("--volatile", action="append", default=[], metavar="GLOB",
                    help="paths left out of the image (e.g. '*-shm'); repeatable")
    a = ap.parse_args()
    records = parse_log(a.log)
    if a.cmd == "dump":
        for r in records:
            print("%6d @%-9d %-15s flags=%#04x ino=%d off=%d len=%d %s %s" % (
                r.index, r.start, TYPE_NAMES.get(r.type, r.type), r.flags, r.ino, r.offset,
                r.length, r.path, r.path2))
        return 0
    run = Run(records, a.base, a.volatile)
    if not 0 <= a.at <= len(records):
        print("--at must be 0..%d" % len(records), file=sys.stderr)
        return 2
    run.build(a.at, a.policy, a.seed, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
