#!/usr/bin/env bash
# `make bench-postgres`: Kobo over PostgreSQL against the naive PostgreSQL
# wallet (../shared/peers/naive_pg.sh), same machine, same server settings,
# one after the other in this one script.
#
#  1. naive_pg.sh uniform / hot10 / merchant, DURATION s each, its default
#     clients and accounts (run as is; it starts and stops its own cluster).
#  2. A fresh PostgreSQL cluster of our own (initdb in a temp dir, free
#     loopback port, the naive wallet's settings: fsync on,
#     synchronous_commit on, shared_buffers 1GB, max_wal_size 8GB), a fresh
#     database per row, owned by a non-superuser role:
#       - 1 release kobod --postgres URL, kobo-bench uniform / --hot 10 /
#         --merchant, CONNECTIONS connections;
#       - 2 kobod on the same database, one kobo-bench per node with half the
#         connections each, run at once (kobo-bench takes one --url);
#       - 2 shards (two databases), uniform, local-only and shard-blind;
#       - the 1- and 2-kobod rows again with --concurrency optimistic;
#       - 1 kobod, uniform, with a synchronous standby (pg_basebackup -R of
#         this cluster, synchronous_standby_names = '*' while the row runs):
#         what waiting for the standby's flush costs.
#  For every row, over the middle of the load (DURATION-2 s): CPU used by
#  kobod, by the PostgreSQL server and by the load generator (from
#  /proc/PID/stat), write transactions (xids consumed), xact_commit
#  (pg_stat_database) and WAL fsyncs (pg_stat_wal) per transfer, and for
#  kobod its mean batch size and batch commit time (/metrics). The 1-kobod
#  rows are profiled with `perf record -a -g` (cpu-clock) when perf works.
#  Prints a table and appends a dated section to docs/benchmarks.md.
#
#   DURATION=10 ACCOUNTS=100000 CONNECTIONS=64 PERF=1 scripts/bench-postgres.sh
#
# ROWS=REGEX runs only the Kobo rows whose name matches (a quick check; the
# naive rows still run first, see NAIVE_PATTERNS).
#
# Everything started here (PostgreSQL, kobod, kobo-bench, perf) is stopped by
# pid on exit, failure or interrupt; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ACCOUNTS=${ACCOUNTS:-100000}
CONNECTIONS=${CONNECTIONS:-64}
PERF=${PERF:-1}
OUT=${BENCH_OUT:-docs/benchmarks.md}
NAIVE=${NAIVE:-../shared/peers/naive_pg.sh}
NAIVE_PATTERNS=${NAIVE_PATTERNS-uniform hot10 merchant}   # for a quick check only
SETUP_TIMEOUT=${SETUP_TIMEOUT:-300}   # bound on kobo-bench account setup
OVERLAP=${OVERLAP:-15}                # extra load time of each bench in the 2-kobod rows
# Funding 100,000 accounts over 2 shards is ~50,000 cross-shard sagas; at the
# rate sagas run on PostgreSQL today that setup takes > 60 s and its batches
# failed in a first run (2026-12-02), so the 2-shard rows use fewer accounts.
SHARD_ACCOUNTS=${SHARD_ACCOUNTS:-10000}
ROWS=${ROWS:-.}                       # a regex on the Kobo rows' names
[[ $DURATION -ge 5 ]] || { echo "bench-postgres: DURATION must be >= 5" >&2; exit 2; }
[[ -f $NAIVE ]] || { echo "bench-postgres: $NAIVE not found" >&2; exit 2; }

make --no-print-directory -j2 all
# The system interpreter: a version manager's shim (a shell script) in front
# of python3 costs ~0.3 s of CPU per call, inside the measured windows.
PY=/usr/bin/python3
[[ -x $PY ]] || PY=$(command -v python3)

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [[ -z $pgbin ]]; then
	apt-get install -y -q postgresql >/dev/null
	pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
have_perf=0
if [[ $PERF == 1 ]] && command -v perf >/dev/null &&
	timeout 20 perf record -q -e cpu-clock -g -o /dev/null -- true >/dev/null 2>&1; then
	have_perf=1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kobo-bench-pg.XXXXXX")
pgbase=$(mktemp -d "${TMPDIR:-/tmp}/kobo-bench-pgdata.XXXXXX")
pids=()        # kobod, kobo-bench, perf, naive_pg.sh: stopped by pid
pg_pid=""
standby_pid=""
uptime_start=$(uptime)

# ---- helper: /proc CPU accounting, counters, metrics, rows ----
cat >"$tmp/h.py" <<'PY'
import json, os, subprocess, sys, time

HZ = os.sysconf("SC_CLK_TCK")

def stat(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read().decode("ascii", "replace")
    except OSError:
        return None
    f = s[s.rfind(")") + 2:].split()
    comm = s[s.find("(") + 1:s.rfind(")")]
    return {"comm": comm, "ppid": int(f[1]), "ut": int(f[11]), "st": int(f[12]),
            "cut": int(f[13]), "cst": int(f[14])}

def all_stats():
    out = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            s = stat(int(e))
            if s:
                out[int(e)] = s
    return out

def descendants(root, stats):
    kids = {}
    for p, s in stats.items():
        kids.setdefault(s["ppid"], []).append(p)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c); todo.append(c)
    return out

def tree_seconds(root, stats):
    """CPU seconds of root (its reaped children included) and its live descendants."""
    if root not in stats:
        return None
    s = stats[root]
    t = s["ut"] + s["st"] + s["cut"] + s["cst"]
    for d in descendants(root, stats):
        t += stats[d]["ut"] + stats[d]["st"]
    return t / HZ

def metrics(url):
    import urllib.request
    try:
        text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    except Exception:
        return None
    m = {"ok": 0, "bops_sum": 0, "bops_n": 0, "commit_sum": 0.0, "commit_n": 0}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, val = line.rsplit(" ", 1)
        v = float(val)
        if name.startswith("kobo_http_requests_total{") and "transfers" in name \
                and "batch" not in name and "{" in name and 'POST' in name \
                and ('status="201"' in name or 'status="200"' in name):
            m["ok"] += v
        elif name.startswith("kobo_batch_ops_sum"):
            m["bops_sum"] += v
        elif name.startswith("kobo_batch_ops_count"):
            m["bops_n"] += v
        elif name.startswith("kobo_batch_commit_duration_seconds_sum"):
            m["commit_sum"] += v
        elif name.startswith("kobo_batch_commit_duration_seconds_count"):
            m["commit_n"] += v
    return m

def snap(args):
    """snap PORT DBS ROLE=PID... [URL...]: one JSON snapshot on stdout."""
    port, dbs = args[0], args[1].split(",")
    roles = [a for a in args[2:] if "=" in a and not a.startswith("http")]
    urls = [a for a in args[2:] if a.startswith("http")]
    out = {"t": time.time(), "cpu": {}, "metrics": []}
    for u in urls:
        out["metrics"].append(metrics(u))
    out["t_m"] = time.time()
    stats = all_stats()
    out["t_cpu"] = time.time()
    for r in roles:
        name, pid = r.split("=")
        v = 0.0
        for p in pid.split(","):
            if p:
                x = tree_seconds(int(p), stats)
                v += x or 0.0
        out["cpu"][name] = out["cpu"].get(name, 0.0) + v
    q = ("select pg_snapshot_xmax(pg_current_snapshot())::text::bigint, "
         "(select sum(xact_commit) from pg_stat_database where datname = any(string_to_array('%s', ','))), "
         "(select wal_sync from pg_stat_wal)" % ",".join(dbs))
    r = subprocess.run(["psql", "-X", "-qAt", "-F", " ", "-h", "127.0.0.1", "-p", port,
                        "-U", "postgres", "-d", "postgres", "-c", q],
                       capture_output=True, text=True, timeout=20,
                       env=dict(os.environ, PGCONNECT_TIMEOUT="5"))
    out["t_pg"] = time.time()
    xid, commits, walsync = (r.stdout.split() + ["0", "0", "0"])[:3]
    out["xid"], out["commits"], out["wal_sync"] = int(xid), int(commits), int(walsync)
    out["t_end"] = time.time()
    print(json.dumps(out))

def sleep_until(args):
    """sleep_until EPOCH: sleeps until then (not at all if past)."""
    time.sleep(max(0.0, float(args[0]) - time.time()))

def now(args):
    print(f"{time.time():.3f}")

def find(args):
    """find ROOT COMM: first descendant of ROOT named COMM."""
    stats = all_stats()
    for d in descendants(int(args[0]), stats):
        if stats[d]["comm"] == args[1]:
            print(d); return

def pids(args):
    """pids ROOT: ROOT and its live descendants, comma-separated."""
    stats = all_stats()
    print(",".join(str(p) for p in [int(args[0])] + descendants(int(args[0]), stats)))

def row(args):
    """row NAME KIND SNAP0 SNAP1 [RESULT...]: one JSON row (KIND naive|kobo)."""
    name, kind, s0, s1 = args[0], args[1], json.loads(args[2]), json.loads(args[3])
    results = args[4:]
    dt = s1["t_pg"] - s0["t_pg"]            # for the PostgreSQL counters
    dtm = s1["t_m"] - s0["t_m"]             # for kobod's /metrics
    dtc = s1["t_cpu"] - s0["t_cpu"]         # for /proc
    r = {"name": name, "kind": kind, "window_s": round(dt, 2)}
    if kind == "naive":
        line = open(results[0]).read()
        kv = dict(w.split("=", 1) for w in line.split() if "=" in w)
        r["tps"] = float(kv.get("tps", 0) or 0)
        r["lat"] = f"avg {kv.get('avg_ms', '?')}"
        r["clients"] = kv.get("clients", "?")
        r["verify"] = "n/a"
    else:
        tps, p50, p99, verify, errs = 0.0, [], [], "ok", 0
        for path in results:
            try:
                j = json.load(open(path))
            except Exception:
                verify = "FAILED (no result)"; continue
            tps += j["transfers_per_s"]
            p50.append(j["latency_us"]["p50"] / 1000); p99.append(j["latency_us"]["p99"] / 1000)
            errs += j["errors"]["http"] + j["errors"]["transport"]
            v = j.get("verify")
            if not v or not v["ok"]:
                verify = "FAILED"
        r["tps"] = tps
        r["bench_sum"] = tps
        r["lat"] = "p50 " + "/".join(f"{x:.1f}" for x in p50) + ", p99 " + "/".join(f"{x:.1f}" for x in p99)
        r["verify"] = verify if errs == 0 else f"{verify}, {errs} errors"
        ok = sum((b or {}).get("ok", 0) - (a or {}).get("ok", 0)
                 for a, b in zip(s0["metrics"], s1["metrics"]))
        r["server_tps"] = ok / dtm if dtm > 0 else 0
        if len(results) > 1:     # several benches: only the common window counts
            r["tps"] = r["server_tps"]
        bops = sum((b or {}).get("bops_sum", 0) - (a or {}).get("bops_sum", 0) for a, b in zip(s0["metrics"], s1["metrics"]))
        bn = sum((b or {}).get("bops_n", 0) - (a or {}).get("bops_n", 0) for a, b in zip(s0["metrics"], s1["metrics"]))
        cs = sum((b or {}).get("commit_sum", 0) - (a or {}).get("commit_sum", 0) for a, b in zip(s0["metrics"], s1["metrics"]))
        cn = sum((b or {}).get("commit_n", 0) - (a or {}).get("commit_n", 0) for a, b in zip(s0["metrics"], s1["metrics"]))
        r["batch_ops"] = bops / bn if bn else 0
        r["batches_s"] = bn / dtm if dtm > 0 else 0
        r["commit_ms"] = 1000 * cs / cn if cn else 0
    # transfers in the window: the server's count for Kobo, tps × window for naive
    moved = r.get("server_tps", r["tps"]) * dt
    r["xid_per_t"] = (s1["xid"] - s0["xid"]) / moved if moved else 0
    r["commit_per_t"] = (s1["commits"] - s0["commits"]) / moved if moved else 0
    r["fsync_per_t"] = (s1["wal_sync"] - s0["wal_sync"]) / moved if moved else 0
    r["cpu"] = {k: (s1["cpu"].get(k, 0) - v) / dtc for k, v in s0["cpu"].items()}
    print(json.dumps(r))

def table(args):
    """table ROWS.jsonl: the markdown table and the ratio lines."""
    rows = [json.loads(l) for l in open(args[0]) if l.strip()]
    print("| system | pattern | transfers/s | latency ms | CPU cores: server / PostgreSQL / load | "
          "write xacts per transfer | xact_commit per transfer | WAL fsyncs per transfer | "
          "kobod batch: ops, commit ms | verify |")
    print("|---|---|---:|---|---|---:|---:|---:|---|---|")
    for r in rows:
        c = r["cpu"]
        cpu = f"{c.get('server', 0):.2f} / {c.get('postgres', 0):.2f} / {c.get('load', 0):.2f}"
        batch = f"{r['batch_ops']:.1f}, {r['commit_ms']:.2f}" if r["kind"] == "kobo" else "–"
        sysname, pattern = r["name"].split(":", 1)
        tps = f"{r['tps']:,.0f}"
        if r["kind"] == "kobo" and r.get("bench_sum") != r["tps"]:
            tps += f" (benches {r['bench_sum']:,.0f})"
        elif r["kind"] == "kobo" and r.get("server_tps"):
            tps += f" (server {r['server_tps']:,.0f})"
        print(f"| {sysname} | {pattern} | {tps} | {r['lat']} | {cpu} | {r['xid_per_t']:.3f} | "
              f"{r['commit_per_t']:.3f} | {r['fsync_per_t']:.4f} | {batch} | {r['verify']} |")
    naive = {r["name"].split(":", 1)[1]: r["tps"] for r in rows if r["kind"] == "naive"}
    targets = {"uniform": 10, "hot10": 20, "merchant": 20}
    print()
    for r in rows:
        if r["kind"] != "kobo":
            continue
        sysname, pattern = r["name"].split(":", 1)
        base = pattern.split(" ")[0]
        if base in naive and naive[base] > 0:
            ratio = r["tps"] / naive[base]
            verdict = "met" if ratio >= targets[base] else "NOT met"
            print(f"- {sysname}, {pattern}: {ratio:.1f}× naive {base} "
                  f"(target ≥ {targets[base]}×: {verdict})")

globals()[sys.argv[1]](sys.argv[2:])
PY
h() { "$PY" "$tmp/h.py" "$@"; }

# ---- stopping things by pid ----
# shellcheck disable=SC2317 # called by traps and below
stop_pid() {
	local pid=$1 signal=${2:-TERM}
	[[ -n $pid ]] || return 0
	if kill -0 "$pid" 2>/dev/null; then
		kill "-$signal" "$pid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}
# shellcheck disable=SC2317
stop_pg() {
	[[ -n $pg_pid ]] || return 0
	if kill -0 "$pg_pid" 2>/dev/null; then
		kill -INT "$pg_pid" 2>/dev/null || true   # fast shutdown
		for _ in $(seq 300); do kill -0 "$pg_pid" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$pg_pid" 2>/dev/null; then
			for p in $(h pids "$pg_pid" | tr , ' '); do kill -KILL "$p" 2>/dev/null || true; done
		fi
	fi
	pg_pid=""
}
# shellcheck disable=SC2317
stop_standby() {
	[[ -n $standby_pid ]] || return 0
	if kill -0 "$standby_pid" 2>/dev/null; then
		kill -INT "$standby_pid" 2>/dev/null || true
		for _ in $(seq 300); do kill -0 "$standby_pid" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$standby_pid" 2>/dev/null; then
			for p in $(h pids "$standby_pid" | tr , ' '); do kill -KILL "$p" 2>/dev/null || true; done
		fi
	fi
	standby_pid=""
}
# shellcheck disable=SC2317
cleanup() {
	local i
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[$i]}"; done
	stop_standby
	stop_pg
	rm -rf "$tmp" "$pgbase"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rows="$tmp/rows.jsonl"
: >"$rows"
commands=()
perf_notes=()
failed=()
status=0

# ---- 1. the naive wallet ----
naive_tmp=${TMPDIR:-/tmp}/kobo-peer-pg
for pattern in ${NAIVE_PATTERNS-uniform hot10 merchant}; do
	echo "bench-postgres: naive_pg.sh $pattern $DURATION" >&2
	commands+=("bash $NAIVE $pattern $DURATION")
	timeout $((DURATION + 600)) bash "$NAIVE" "$pattern" "$DURATION" >"$tmp/naive-$pattern.out" 2>"$tmp/naive-$pattern.err" &
	npid=$!
	pids+=("$npid")
	pgb=""
	for _ in $(seq 6000); do   # ≤ 600 s for its cluster start and data load
		pgb=$(h find "$npid" pgbench)
		[[ -n $pgb ]] && break
		kill -0 "$npid" 2>/dev/null || break
		sleep 0.1
	done
	s0=""; s1=""
	if [[ -n $pgb ]]; then
		t_load=$(h now)
		npg=$(head -1 "$naive_tmp/data/postmaster.pid")
		sleep 1
		t0=$(h now)
		s0=$(h snap 55433 wallet "postgres=$npg" "load=$pgb")
		h sleep_until "$("$PY" -c "import time; print($t_load + $DURATION - 0.7 - (time.time() - $t0))")"
		s1=$(h snap 55433 wallet "postgres=$npg" "load=$pgb")
	fi
	rc=0; wait "$npid" || rc=$?
	if [[ $rc -ne 0 || -z $s0 ]]; then
		echo "bench-postgres: naive_pg.sh $pattern failed (exit $rc):" >&2
		cat "$tmp/naive-$pattern.err" >&2; status=1; continue
	fi
	cat "$tmp/naive-$pattern.out" >&2
	h row "naive_pg (32 clients):$pattern" naive "$s0" "$s1" "$tmp/naive-$pattern.out" >>"$rows"
done

# ---- 2. our cluster ----
pgport=$(free_port)
chown postgres:postgres "$pgbase"; chmod 700 "$pgbase"
runuser -u postgres -- mkdir -p "$pgbase/data" "$pgbase/sock"
runuser -u postgres -- timeout 120 "$pgbin/initdb" -D "$pgbase/data" -U postgres --auth=trust -E UTF8 \
	--locale=C.UTF-8 >/dev/null
cat >>"$pgbase/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pgport
unix_socket_directories = '$pgbase/sock'
max_connections = 200
fsync = on
synchronous_commit = on
shared_buffers = 1GB
max_wal_size = 8GB
CONF
runuser -u postgres -- timeout 90 "$pgbin/pg_ctl" -D "$pgbase/data" -l "$pgbase/pg.log" -w -t 60 start >/dev/null
pg_pid=$(head -1 "$pgbase/data/postmaster.pid")
export PGHOST=127.0.0.1 PGPORT=$pgport PGUSER=postgres PGCONNECT_TIMEOUT=5
psql -X -q -d postgres -c "CREATE ROLE kobo LOGIN" -c "GRANT pg_monitor TO kobo"
echo "bench-postgres: PostgreSQL (pid $pg_pid) on 127.0.0.1:$pgport" >&2

kobods=(); urls=()
kobod_args=()   # extra kobod flags of the current row
start_kobod() {   # start_kobod URL... : one more kobod on a free port
	local port args=() u
	port=$(free_port)
	for u in "$@"; do args+=(--postgres "$u"); done
	args+=("${kobod_args[@]}")
	local n=${#kobods[@]}
	build/kobod --listen "127.0.0.1:$port" "${args[@]}" --log-level warn \
		>"$tmp/kobod-$n.out" 2>>"$tmp/kobod-$n.log" &
	local pid=$!
	pids+=("$pid"); kobods+=("$pid"); urls+=("http://127.0.0.1:$port")
	for _ in $(seq 600); do
		grep -q "kobod ready" "$tmp/kobod-$n.out" 2>/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || { echo "bench-postgres: kobod exited:" >&2; tail "$tmp/kobod-$n.log" >&2; exit 3; }
		sleep 0.1
	done
	echo "bench-postgres: kobod not ready after 60 s" >&2; exit 3
}
stop_kobods() {
	local p
	for p in "${kobods[@]}"; do stop_pid "$p"; done
	kobods=(); urls=()
}

# kobo_row NAME DBS NODES SHARDS "BENCH ARGS" ["KOBOD ARGS"]
kobo_row() {
	local name=$1 dbs=$2 nodes=$3 shards=$4 extra=$5 db u
	local db_urls=()
	[[ $name =~ $ROWS ]] || return 0
	# shellcheck disable=SC2206
	kobod_args=(${6:-})
	for db in ${dbs//,/ }; do
		psql -X -q -d postgres -c "CREATE DATABASE $db OWNER kobo"
		db_urls+=("postgresql://kobo@127.0.0.1:$pgport/$db")
	done
	for _ in $(seq "$nodes"); do start_kobod "${db_urls[@]}"; done
	local conns=$((CONNECTIONS / nodes)) benches=() results=() i dur=$DURATION
	# Several benches finish their setups at different times: each runs
	# OVERLAP s longer, the window starts when the last one is loading, and the
	# row's throughput is the nodes' 2xx count over that window (/metrics).
	if [[ $nodes -gt 1 ]]; then dur=$((DURATION + OVERLAP)); fi
	local accounts=$ACCOUNTS
	if [[ $shards -gt 1 ]]; then accounts=$SHARD_ACCOUNTS; fi
	local shard_args="" shown="" u
	if [[ $shards -gt 1 ]]; then shard_args="--shards $shards"; fi
	for u in "${db_urls[@]}"; do shown+=" --postgres $u"; done
	shown="${nodes} × build/kobod --listen 127.0.0.1:PORT$shown ${kobod_args[*]} --log-level warn"
	for i in $(seq 0 $((nodes - 1))); do
		# shellcheck disable=SC2206
		local cmd=(build/kobo-bench --url "${urls[$i]}" --json --duration "$dur" --accounts "$accounts"
			--connections "$conns" $shard_args $extra)
		shown+="; ${cmd[*]}"
		"${cmd[@]}" >"$tmp/$db-$i.json" 2>"$tmp/$db-$i.err" &
		benches+=("$!"); pids+=("$!"); results+=("$tmp/$db-$i.json")
	done
	commands+=("$(sed 's#127.0.0.1:[0-9][0-9]*#127.0.0.1:PORT#g' <<<"$shown")")
	echo "bench-postgres: $name: $shown" >&2
	# the load starts when every bench has finished its setup
	local t=0 ready
	while :; do
		ready=0
		for i in $(seq 0 $((nodes - 1))); do
			if grep -q "setup done" "$tmp/$db-$i.err" 2>/dev/null; then ready=$((ready + 1)); fi
		done
		[[ $ready -eq $nodes ]] && break
		for b in "${benches[@]}"; do kill -0 "$b" 2>/dev/null || break 2; done
		t=$((t + 1)); if [[ $t -gt $((SETUP_TIMEOUT * 10)) ]]; then break; fi
		sleep 0.1
	done
	local s0="" s1="" perf_pid="" t0 t_load
	if [[ $ready -eq $nodes ]]; then
		local kp pgp bp
		kp=$(IFS=,; echo "${kobods[*]}"); bp=$(IFS=,; echo "${benches[*]}")
		t_load=$(h now)
		sleep 1
		t0=$(h now)
		s0=$(h snap "$pgport" "$dbs" "server=$kp" "postgres=$pg_pid" "load=$bp" "${urls[@]}")
		if [[ $have_perf == 1 && $nodes == 1 && $shards == 1 ]]; then
			pgp=$(h pids "$pg_pid")
			echo "$pgp" >"$tmp/perf-$db.pgpids"
			timeout $((DURATION + 30)) perf record -q -a -g -e cpu-clock -F 499 -o "$tmp/perf-$db.data" \
				-- sleep $((DURATION - 3)) >/dev/null 2>&1 &
			perf_pid=$!; pids+=("$perf_pid")
		fi
		h sleep_until "$("$PY" -c "import time; print($t_load + $DURATION - 0.7 - (time.time() - $t0))")"
		s1=$(h snap "$pgport" "$dbs" "server=$kp" "postgres=$pg_pid" "load=$bp" "${urls[@]}")
	fi
	local rc
	for b in "${benches[@]}"; do
		rc=0; wait "$b" || rc=$?
		if [[ $rc -ne 0 ]]; then
			status=$rc; echo "bench-postgres: kobo-bench exit $rc" >&2; tail -3 "$tmp/$db"-*.err >&2
		fi
	done
	if [[ -n $perf_pid ]]; then wait "$perf_pid" 2>/dev/null || true; fi
	if [[ -n $s0 ]]; then
		h row "$name" kobo "$s0" "$s1" "${results[@]}" | tee -a "$rows" >&2
	else
		failed+=("$name: kobo-bench setup failed: $(tail -q -n 2 "$tmp/$db"-*.err | tr '\n' ' ')")
	fi
	if [[ -n $perf_pid && -s $tmp/perf-$db.data ]]; then
		local kpid=${kobods[0]}
		(
			set +o pipefail
			echo "#### perf, $name: CPU samples by command (whole machine)"
			perf report -i "$tmp/perf-$db.data" --stdio --no-children --sort comm -g none 2>/dev/null |
				grep -E '^ +[0-9]' | head -8
			echo "#### perf, $name: kobod, by thread"
			perf report -i "$tmp/perf-$db.data" --stdio --no-children --pid "$kpid" --sort comm -g none 2>/dev/null |
				grep -E '^ +[0-9]' | head -6
			echo "#### perf, $name: kobod, top symbols"
			perf report -i "$tmp/perf-$db.data" --stdio --no-children --pid "$kpid" --sort dso,symbol -g none 2>/dev/null |
				grep -E '^ +[0-9]' | head -12
			echo "#### perf, $name: this PostgreSQL's processes, top symbols"
			perf report -i "$tmp/perf-$db.data" --stdio --no-children --pid "$(cat "$tmp/perf-$db.pgpids")" \
				--sort dso,symbol -g none 2>/dev/null | grep -E '^ +[0-9]' | head -12
		) >"$tmp/perf-$db.txt" || true
		perf_notes+=("$tmp/perf-$db.txt")
		cat "$tmp/perf-$db.txt" >&2
	fi
	stop_kobods
}

kobo_row "kobod ×1:uniform" k1u 1 1 ""
kobo_row "kobod ×1:hot10" k1h 1 1 "--hot 10"
kobo_row "kobod ×1:merchant" k1m 1 1 "--merchant"
kobo_row "kobod ×2, one db:uniform" k2u 2 1 ""
kobo_row "kobod ×2, one db:hot10" k2h 2 1 "--hot 10"
kobo_row "kobod ×2, one db:merchant" k2m 2 1 "--merchant"
kobo_row "kobod ×1, 2 shards:uniform (local only)" s2l0,s2l1 1 2 "--cross-shard 0"
kobo_row "kobod ×1, 2 shards:uniform (shard-blind)" s2b0,s2b1 1 2 ""
opt="--concurrency optimistic"
kobo_row "kobod ×1 optimistic:uniform" o1u 1 1 "" "$opt"
kobo_row "kobod ×1 optimistic:hot10" o1h 1 1 "--hot 10" "$opt"
kobo_row "kobod ×1 optimistic:merchant" o1m 1 1 "--merchant" "$opt"
kobo_row "kobod ×2 optimistic, one db:uniform" o2u 2 1 "" "$opt"
kobo_row "kobod ×2 optimistic, one db:hot10" o2h 2 1 "--hot 10" "$opt"
kobo_row "kobod ×2 optimistic, one db:merchant" o2m 2 1 "--merchant" "$opt"

# A synchronous standby: every COMMIT waits for its flush.
if [[ "kobod ×1, sync standby:uniform" =~ $ROWS ]]; then
	sbport=$(free_port)
	runuser -u postgres -- timeout 300 "$pgbin/pg_basebackup" -h 127.0.0.1 -p "$pgport" -U postgres \
		-D "$pgbase/standby" -R -X stream -c fast >/dev/null
	cat >>"$pgbase/standby/postgresql.conf" <<CONF
port = $sbport
unix_socket_directories = '$pgbase/sock'
CONF
	runuser -u postgres -- timeout 90 "$pgbin/pg_ctl" -D "$pgbase/standby" -l "$pgbase/standby.log" -w -t 60 start >/dev/null
	standby_pid=$(head -1 "$pgbase/standby/postmaster.pid")
	psql -X -q -d postgres -c "ALTER SYSTEM SET synchronous_standby_names = '*'" -c "SELECT pg_reload_conf()" >/dev/null
	for _ in $(seq 300); do   # ≤ 30 s for the standby to become synchronous
		[[ $(psql -X -qAt -d postgres -c "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") == 1 ]] && break
		sleep 0.1
	done
	echo "bench-postgres: synchronous standby (pid $standby_pid) on 127.0.0.1:$sbport: $(psql -X -qAt -d postgres -c "SELECT application_name, sync_state FROM pg_stat_replication")" >&2
	kobo_row "kobod ×1, sync standby:uniform" ssu 1 1 ""
	psql -X -q -d postgres -c "ALTER SYSTEM RESET synchronous_standby_names" -c "SELECT pg_reload_conf()" >/dev/null
	stop_standby
fi
stop_pg

# ---- report ----
table=$(h table "$rows")
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
pgver=$("$pgbin/postgres" --version)
{
	echo
	echo "## make bench-postgres — $(date -u '+%Y-%m-%d %H:%M UTC') (commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
	echo
	echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM,"
	echo "$(uname -sr), $pgver. Everything on this machine (load generators, kobod, PostgreSQL)."
	echo "Load at start: \`$uptime_start\`; at the end: \`$(uptime)\`."
	echo "Rows marked optimistic run kobod --concurrency optimistic; the sync standby row runs with a"
	echo "streaming standby of Kobo's cluster on this machine (pg_basebackup -R) as synchronous_standby_names = '*'."
	echo "Both PostgreSQL clusters: fresh initdb, fsync on, synchronous_commit on, shared_buffers 1GB,"
	echo "max_wal_size 8GB, max_connections 200 (naive_pg.sh's settings); Kobo: one fresh database per"
	echo "row, owned by a non-superuser role. $DURATION s per row; kobo-bench: $ACCOUNTS fresh accounts"
	echo "($SHARD_ACCOUNTS in the 2-shard rows), $CONNECTIONS connections in all, then full verification; with 2 kobod"
	echo "one kobo-bench per node ($((CONNECTIONS / 2)) connections, own accounts, run $OVERLAP s longer) and the"
	echo "throughput is both nodes' 2xx over the window in which both load; naive_pg.sh: its defaults (32 clients,"
	echo "100,000 accounts). CPU, transactions and fsyncs are measured over the middle ~$((DURATION - 2)) s of each"
	echo "load (from /proc and pg_stat_database / pg_stat_wal / the xid counter); \"server\" CPU is"
	echo "kobod (none for naive), \"load\" is kobo-bench or pgbench."
	echo
	echo '```'
	printf '%s\n' "${commands[@]}"
	echo '```'
	echo
	echo "$table"
	if [[ ${#failed[@]} -gt 0 ]]; then
		echo
		echo "Rows without a result:"
		printf -- '- %s\n' "${failed[@]}"
	fi
	if [[ ${#perf_notes[@]} -gt 0 ]]; then
		echo
		echo "<details><summary>perf record -a -g -e cpu-clock, $((DURATION - 3)) s of each 1-kobod row</summary>"
		echo
		echo '```'
		cat "${perf_notes[@]}"
		echo '```'
		echo "</details>"
	elif [[ $PERF == 1 ]]; then
		echo
		echo "perf was not usable on this machine: no profile."
	fi
} >"$tmp/section.md"
cat "$tmp/section.md" >>"$OUT"
echo
echo "$table"
echo "bench-postgres: appended to $OUT" >&2
exit "$status"
