"""
pgcluster.py — real PostgreSQL clusters for Kobo's tests.

A Cluster is one postmaster with its own data directory in a fresh temp dir,
listening on 127.0.0.1 on a free port (its unix socket inside the temp dir,
so it never touches /var/run/postgresql). Tests run as root and PostgreSQL
refuses to, so every server-side binary runs as the `postgres` OS user
(`runuser -u postgres --`); when the tests run as another user the binaries
run as that user. Clients (psql) run as whoever we are.

    with Cluster(tmp_path, "primary") as primary:
        primary.start()
        uri = primary.create_role_and_db("kobo")   # owner of its database
        standby = Cluster(tmp_path, "standby").replica(primary, sync=True)
        primary.psql("create table t(x int)", dbname="kobo")
        primary.kill9(); primary.start()           # crash and restart
    # both stopped here, and at interpreter exit whatever is still running

Durability settings are the production ones (fsync on, synchronous_commit
on, full_page_writes on); only initdb skips its own fsync (a lost initdb is a
failed test, not lost money). Authentication is `trust` on loopback: the
roles matter for privileges (kobod needs no superuser), not for passwords.

Everything is bounded in time: every subprocess has a timeout, start waits
at most START_TIMEOUT_S, stop escalates to SIGKILL after STOP_TIMEOUT_S.
Every cluster started is stopped on failure too (context manager, and an
atexit hook for the ones a test forgot).

Run as a script it starts a throw-away cluster, creates a role and database
and runs a command with KOBO_TEST_POSTGRES set to its URI:

    python3 tests/system/pgcluster.py run -- build/asan/tests/test_store_contract
"""
import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

START_TIMEOUT_S = 60.0      # pg_ctl -w start (crash recovery included)
STOP_TIMEOUT_S = 30.0       # fast shutdown before SIGKILL
CMD_TIMEOUT_S = 120.0       # initdb, pg_basebackup, one psql call
REPLICA_TIMEOUT_S = 60.0    # a standby reaching streaming / sync state
PG_USER = "postgres"        # OS user that owns the data directory
TMP_ROOT = os.environ.get("KOBO_PG_TMPDIR", tempfile.gettempdir())

_LIVE = set()               # clusters with a temp dir (a postmaster may run)
_LIVE_LOCK = threading.Lock()


class PgError(Exception):
    """A cluster operation failed; the message carries the command's output
    and the tail of the server log."""


# ------------------------------------------------------------ binaries ----

def bindir():
    """PostgreSQL's server binaries: $PG_BINDIR, `pg_config --bindir`
    (when it has initdb: Debian's /usr/bin/pg_config names /usr/bin, which
    holds only client wrappers), else the newest /usr/lib/postgresql/*/bin."""
    env = os.environ.get("PG_BINDIR")
    if env:
        return env
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        if os.access(os.path.join(out, "initdb"), os.X_OK):
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    dirs = [d for d in glob.glob("/usr/lib/postgresql/*/bin")
            if os.access(os.path.join(d, "initdb"), os.X_OK)]
    if not dirs:
        raise PgError("PostgreSQL server binaries not found (no initdb via pg_config "
                      "--bindir or /usr/lib/postgresql/*/bin): apt-get install postgresql")
    dirs.sort(key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0)
    return dirs[-1]


def available():
    """True when initdb can be found (tests skip, not fail, without it)."""
    try:
        bindir()
        return True
    except PgError:
        return False


def _bin(name):
    return os.path.join(bindir(), name)


def _as_pg(cmd):
    """cmd run as the postgres OS user when we are root (PostgreSQL refuses
    to run as root), else as ourselves."""
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--"] + cmd
    return cmd


def _run(cmd, timeout=CMD_TIMEOUT_S, what=None, check=True, env=None):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired as e:
        raise PgError(f"{what or cmd[0]} did not finish within {timeout:.0f} s: "
                      f"{' '.join(cmd)}\n{e.stdout or ''}{e.stderr or ''}") from None
    if check and r.returncode != 0:
        raise PgError(f"{what or cmd[0]} failed with exit {r.returncode}: {' '.join(cmd)}\n"
                      f"{r.stdout}{r.stderr}")
    return r


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what, interval=0.05):
    """Polls predicate() until it is truthy (returned) or timeout seconds
    pass (PgError naming what was awaited)."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except PgError as e:
            last_error = e
        if time.monotonic() >= deadline:
            raise PgError(f"timed out after {timeout:.0f} s waiting for {what}"
                          + (f"; last error: {last_error}" if last_error else ""))
        time.sleep(interval)


def _children(pid):
    """Pids whose parent is pid (a postmaster's backends and helpers)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        # "pid (comm) state ppid …": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(entry))
    return out


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return b") Z" not in f.read()
    except OSError:
        return False


def _stop_all_at_exit():
    with _LIVE_LOCK:
        clusters = list(_LIVE)
    for c in clusters:
        try:
            c.stop() if os.environ.get("KOBO_PG_KEEP") else c.cleanup()
        except Exception as e:  # noqa: BLE001 — best effort at exit
            print(f"pgcluster: stopping {c.name} at exit: {e}", file=sys.stderr)


atexit.register(_stop_all_at_exit)


# ------------------------------------------------------------- cluster ----

class Cluster:
    """One PostgreSQL server. workdir is where the test keeps its files: a
    symlink <workdir>/pg-<name> points at the cluster's temp dir (which must
    live where the postgres user can reach it, so not under a root-only
    pytest tmp dir)."""

    def __init__(self, workdir=None, name="pg"):
        self.name = name
        self.workdir = str(workdir) if workdir is not None else None
        self.base = None          # temp dir: data/, sock/, server.log
        self.port = None
        self.pid = None           # postmaster pid while running
        self.primary = None       # the Cluster this one streams from
        self.standbys = []        # standbys named in synchronous_standby_names
        self.app_name = name.replace("-", "_")

    # -- paths --

    @property
    def data_dir(self):
        return os.path.join(self.base, "data")

    @property
    def socket_dir(self):
        return os.path.join(self.base, "sock")

    @property
    def log_path(self):
        return os.path.join(self.base, "server.log")

    def _make_base(self):
        if self.base is not None:
            return
        self.base = tempfile.mkdtemp(prefix=f"kobo-pg-{self.name}-", dir=TMP_ROOT)
        with _LIVE_LOCK:
            _LIVE.add(self)
        os.mkdir(self.socket_dir)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(PG_USER)
            for path in (self.base, self.socket_dir):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        os.chmod(self.base, 0o700)
        os.chmod(self.socket_dir, 0o700)
        if self.workdir:
            link = os.path.join(self.workdir, f"pg-{self.name}")
            try:
                os.symlink(self.base, link)
            except OSError:
                pass

    def log_tail(self, lines=30):
        try:
            r = _run(_as_pg(["tail", "-n", str(lines), self.log_path]), timeout=10,
                     check=False)
            return r.stdout
        except PgError:
            return ""

    # -- configuration --

    def _settings(self):
        """The settings every cluster runs with; appended to postgresql.conf
        (a later line wins, so a replica's copy of its primary's file gets
        its own port and socket after the primary's)."""
        return {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "wal_receiver_status_interval": "1s",
            "wal_retrieve_retry_interval": "200ms",
        }

    def _append_conf(self, settings, file="postgresql.conf"):
        text = "\n# kobo pgcluster.py\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
        # Written by us (root or the owner) directly, then given back.
        path = os.path.join(self.data_dir, file)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(PG_USER)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _write_hba(self):
        path = os.path.join(self.data_dir, "pg_hba.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write("# kobo pgcluster.py: trust on loopback and the private socket\n"
                    "local all all trust\n"
                    "local replication all trust\n"
                    "host all all 127.0.0.1/32 trust\n"
                    "host replication all 127.0.0.1/32 trust\n")
        if os.geteuid() == 0:
            pw = pwd.getpwnam(PG_USER)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _initialized(self):
        return self.base is not None and os.path.exists(os.path.join(self.data_dir, "PG_VERSION"))

    # -- lifecycle --

    def start(self, timeout=START_TIMEOUT_S):
        """initdb on first use, then starts the postmaster and waits until it
        accepts connections. A restart (after stop or kill9) keeps the data
        directory and the port. Returns self."""
        if self.running():
            return self
        self._make_base()
        if not self._initialized():
            self.port = free_port()
            _run(_as_pg([_bin("initdb"), "-D", self.data_dir, "-U", "postgres",
                         "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]),
                 what="initdb")
            self._append_conf(self._settings())
            self._write_hba()
        self._pg_ctl_start(timeout)
        return self

    def _pg_ctl_start(self, timeout):
        r = _run(_as_pg([_bin("pg_ctl"), "-D", self.data_dir, "-l", self.log_path,
                         "-w", "-t", str(int(timeout)), "start"]),
                 timeout=timeout + 15, what="pg_ctl start", check=False)
        self.pid = self._read_pid()
        if r.returncode != 0:
            tail = self.log_tail()
            self._kill_tree()
            raise PgError(f"{self.name}: pg_ctl start failed (exit {r.returncode}):\n"
                          f"{r.stdout}{r.stderr}\n--- server log ---\n{tail}")
        if self.pid is None:
            raise PgError(f"{self.name}: started but no postmaster.pid")

    def _read_pid(self):
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid"), encoding="ascii") as f:
                return int(f.readline().strip())
        except (OSError, ValueError):
            return None

    def running(self):
        return self.pid is not None and _alive(self.pid)

    def restart(self, timeout=START_TIMEOUT_S):
        """stop() then start() on the same data directory and port."""
        self.stop()
        return self.start(timeout)

    def stop(self, timeout=STOP_TIMEOUT_S):
        """Stops the postmaster by pid: SIGINT (PostgreSQL's "fast" shutdown:
        clients are disconnected, a checkpoint is written — SIGTERM would be
        "smart" shutdown, which waits for every client, kobod included, to
        leave), then SIGKILL of the postmaster and its children once timeout
        seconds pass. Safe to call when already stopped."""
        pid = self.pid or (self._read_pid() if self.base else None)
        if pid is not None and _alive(pid):
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                self._kill_tree(pid)
            else:
                self._await_reaped(pid)
        self.pid = None

    def kill9(self):
        """Crashes the server as a power loss would: SIGKILL to the
        postmaster and every child at once (no shutdown checkpoint; the next
        start() runs crash recovery). Harsher than `pg_ctl stop -m
        immediate`, which lets the postmaster tell its children to quit."""
        self._kill_tree(self.pid or self._read_pid())
        self.pid = None

    def _kill_tree(self, pid=None):
        pid = pid or self.pid or (self._read_pid() if self.base else None)
        if pid is None:
            return
        victims = [pid] + _children(pid)
        for p in victims:
            try:
                os.kill(p, signal.SIGSTOP)   # nothing restarts while we collect
            except ProcessLookupError:
                pass
        victims += [c for p in victims[1:] for c in _children(p)]
        for p in victims:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in victims) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._await_reaped(pid)

    def _await_reaped(self, pid, timeout=10.0):
        """Waits until pid is gone for good: the next postmaster refuses to
        start while kill(old_pid, 0) succeeds, which it does for a zombie
        that our PID 1 has not reaped yet. A dead postmaster's lock file is
        removed if its zombie outlives timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass
            time.sleep(0.02)
        if not _alive(pid) and self.base and self._read_pid() == pid:
            os.unlink(os.path.join(self.data_dir, "postmaster.pid"))

    def cleanup(self):
        """Stops the server and removes its temp dir."""
        self.stop()
        if self.base and os.path.isdir(self.base):
            shutil.rmtree(self.base, ignore_errors=True)
        self.base = None
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False

    # -- clients --

    def uri(self, dbname="postgres", user="postgres"):
        """A libpq URI for this server over TCP loopback."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def psql(self, sql, dbname="postgres", user="postgres", timeout=CMD_TIMEOUT_S):
        """Runs sql with psql (ON_ERROR_STOP, unaligned, tuples only) and
        returns its stdout without the trailing newline."""
        r = _run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                  "-d", self.uri(dbname, user), "-c", sql],
                 timeout=timeout, what=f"psql on {self.name}", check=False,
                 env=dict(os.environ, PGCONNECT_TIMEOUT="5"))
        if r.returncode != 0:
            raise PgError(f"psql on {self.name} failed (exit {r.returncode}): {sql}\n"
                          f"{r.stdout}{r.stderr}")
        return r.stdout.rstrip("\n")

    def create_role_and_db(self, name):
        """A login role that owns a database of the same name, not superuser,
        plus pg_monitor (to read replica positions). Returns its URI."""
        self.psql(f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
        self.psql(f'GRANT pg_monitor TO "{name}"')
        self.psql(f'CREATE DATABASE "{name}" OWNER "{name}"')
        return self.uri(name, name)

    # -- replication --

    def current_lsn(self):
        """The primary's current WAL insert position (pg_lsn text)."""
        return self.psql("SELECT pg_current_wal_lsn()")

    def replay_lsn(self):
        """A standby's last replayed position (pg_lsn text, '' if none)."""
        return self.psql("SELECT pg_last_wal_replay_lsn()")

    def wait_replayed(self, lsn, timeout=REPLICA_TIMEOUT_S):
        """Waits until this standby has replayed past lsn."""
        wait_for(lambda: self.psql(
            f"SELECT coalesce(pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn, false)") == "t",
            timeout, f"{self.name} to replay past {lsn}")

    def replica(self, primary, sync=True, timeout=REPLICA_TIMEOUT_S):
        """Makes this (not yet started) cluster a streaming standby of
        primary: pg_basebackup -R with a physical replication slot, its own
        port and socket, then starts it and waits until primary sees it
        streaming. With sync, primary lists it in synchronous_standby_names
        (ALTER SYSTEM, reloaded) and this waits for sync_state = 'sync': from
        then on a commit on primary returns only once this standby flushed
        it. Returns self."""
        if self._initialized():
            raise PgError(f"{self.name}: replica() needs a fresh cluster")
        if not primary.running():
            raise PgError(f"replica(): primary {primary.name} is not running")
        self._make_base()
        self.port = free_port()
        self.primary = primary
        _run(_as_pg([_bin("pg_basebackup"), "-D", self.data_dir, "-R", "-X", "stream",
                     "-c", "fast", "-C", "-S", self.app_name, "--no-sync",
                     "-d", f"host=127.0.0.1 port={primary.port} user=postgres "
                           f"application_name={self.app_name}"]),
             timeout=timeout * 2, what="pg_basebackup")
        self._append_conf(self._settings())
        # -R wrote primary_conninfo into postgresql.auto.conf; name this
        # standby there too (a later line wins) so sync replication finds it.
        self._append_conf({"primary_conninfo":
                           f"'host=127.0.0.1 port={primary.port} user=postgres "
                           f"application_name={self.app_name}'"},
                          file="postgresql.auto.conf")
        self._pg_ctl_start(START_TIMEOUT_S)
        wait_for(lambda: primary.psql(
            "SELECT state FROM pg_stat_replication "
            f"WHERE application_name = '{self.app_name}'") == "streaming",
            timeout, f"{self.name} to stream from {primary.name}")
        if sync:
            primary.standbys.append(self)
            primary.set_sync_standbys([s.app_name for s in primary.standbys])
            wait_for(lambda: primary.psql(
                "SELECT sync_state FROM pg_stat_replication "
                f"WHERE application_name = '{self.app_name}'") in ("sync", "quorum"),
                timeout, f"{self.name} to become a synchronous standby")
        return self

    def set_sync_standbys(self, names):
        """synchronous_standby_names = FIRST 1 (names) on this primary
        (empty: asynchronous replication), reloaded at once."""
        value = f"FIRST 1 ({', '.join(names)})" if names else ""
        self.psql(f"ALTER SYSTEM SET synchronous_standby_names = '{value}'")
        self.psql("SELECT pg_reload_conf()")

    def __repr__(self):
        return f"Cluster({self.name}, port={self.port}, pid={self.pid}, base={self.base})"


# ---------------------------------------------------------------- main ----

def main(argv):
    """pgcluster.py run [--name DB] -- CMD...: a throw-away cluster and role,
    CMD run with KOBO_TEST_POSTGRES=<uri>; exits with CMD's status."""
    if len(argv) < 2 or argv[1] != "run" or "--" not in argv:
        print(main.__doc__, file=sys.stderr)
        return 2
    split = argv.index("--")
    opts, cmd = argv[2:split], argv[split + 1:]
    dbname = opts[opts.index("--name") + 1] if "--name" in opts else "kobo"
    with Cluster(None, "run") as c:
        c.start()
        uri = c.create_role_and_db(dbname)
        print(f"pgcluster: {uri} (data {c.data_dir})", file=sys.stderr)
        env = dict(os.environ, KOBO_TEST_POSTGRES=uri)
        return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
