#!/usr/bin/env bash
# Drives the bench/http edge servers with the same wrk load, alternating
# their order round by round (`make bench-http` builds them and runs this):
#   bench/http/run.sh BUILD_DIR
# Environment: ROUNDS (2), DURATION (15 s), CONNECTIONS (64), WRK_THREADS (1),
# COMMIT_US (0: the worker's sleep per batch, standing for an fdatasync),
# SERVERS (all five: mhd-poll mhd-poll-pool2 mhd-epoll-pool2 h2o uv), PERF (1 when perf
# is installed: count the server's system calls and context switches).
# Before its first load each server must pass a short check (201 with the
# transfer echoed, 400 on duplicate keys, 413 past 1 MiB, 404 elsewhere).
# Per run: requests/s, p50/p99 (wrk), errors, and CPU per request from
# /proc/PID/task/*/stat (utime+stime) over the wrk window: the server's
# event loop thread(s) apart from its worker, wrk's own CPU, and what the
# rest of the machine used meanwhile (other work shares these 2 cores).
# Every server and wrk started here is stopped by pid, also on failure.
set -euo pipefail
BUILD=${1:?usage: run.sh BUILD_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
ROUNDS=${ROUNDS:-2}; DURATION=${DURATION:-15}; CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-1}; COMMIT_US=${COMMIT_US:-0}
PERF=${PERF:-$(command -v perf >/dev/null && echo 1 || echo 0)}
SERVERS=${SERVERS:-mhd-poll mhd-poll-pool2 mhd-epoll-pool2 h2o uv}
command -v wrk >/dev/null || { echo "wrk missing: scripts/install-deps.sh bench-http" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kobo-bench-http.XXXXXX")
pids=()
stop() {
	local p=$1
	if kill -0 "$p" 2>/dev/null; then
		kill -TERM "$p" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
	fi
	wait "$p" 2>/dev/null || true
}
cleanup() { local p; for p in "${pids[@]}"; do stop "$p"; done; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

command_of() {
	case $1 in
	mhd-poll) echo "$BUILD/edge-mhd poll" ;;
	mhd-poll-pool2) echo "$BUILD/edge-mhd poll-pool2" ;;
	mhd-epoll-pool2) echo "$BUILD/edge-mhd epoll-pool2" ;;
	h2o) echo "$BUILD/edge-h2o" ;;
	uv) echo "$BUILD/edge-uv" ;;
	*) echo "unknown server $1" >&2; return 1 ;;
	esac
}

# "loop_utime loop_stime worker_ticks" of pid's threads (the loop: all but edge-worker)
server_ticks() {
	local user=0 sys=0 worker=0 f line comm rest
	for f in /proc/"$1"/task/*/stat; do
		line=$(cat "$f" 2>/dev/null) || continue
		comm=${line#*(}; comm=${comm%%)*}
		rest=${line##*) }
		read -r -a a <<<"$rest" # after ")": state is 0, utime 11, stime 12
		if [[ $comm == edge-worker ]]; then worker=$((worker + a[11] + a[12]));
		else user=$((user + a[11])); sys=$((sys + a[12])); fi
	done
	echo "$user $sys $worker"
}
# "busy total" jiffies of the whole machine
machine_ticks() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }

body=$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$HERE/post.lua")
check() { # port: the same answers from every server
	local url="http://127.0.0.1:$1/v1/transfers" out code
	out=$(curl -s -m 5 -w ' %{http_code}' -H 'Content-Type: application/json' -d "$body" "$url") || return 1
	[[ $out == *'"id":"tx:000123456"'*'"status":"posted"'*' 201' ]] || { echo "valid POST: $out"; return 1; }
	code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' -d '{"id":"a","id":"b"}' "$url")
	[[ $code == 400 ]] || { echo "duplicate keys: $code"; return 1; }
	code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' -H 'Content-Length: 2000000' -d 'x' "$url")
	[[ $code == 413 ]] || { echo "2 MB body: $code"; return 1; }
	code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/nowhere")
	[[ $code == 404 ]] || { echo "unknown path: $code"; return 1; }
}

run() { # name round
	local name=$1 round=$2 d="$tmp/$1.$2" port=$((20000 + RANDOM % 20000)) cmd
	mkdir -p "$d"
	cmd=$(command_of "$name")
	# shellcheck disable=SC2086 # cmd is "program [mode]"
	EDGE_STATS="$d/stats" EDGE_COMMIT_US=$COMMIT_US $cmd "$port" >"$d/server.out" 2>&1 &
	local sp=$!; pids+=("$sp")
	for _ in $(seq 50); do curl -s -m 1 -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
	if [[ $round == 1 ]] && ! check "$port" >"$d/check" 2>&1; then
		echo "$name: check FAILED: $(cat "$d/check")"; stop "$sp"; return
	fi
	local s0 s1 m0 m1 pp=
	# System calls and context switches of the server over the same window
	# (counting a tracepoint costs well under 0.1 µs a call).
	if [[ $PERF == 1 ]]; then
		perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$sp" -o "$d/perf" &
		pp=$!; pids+=("$pp"); sleep 0.2
	fi
	s0=$(server_ticks "$sp"); m0=$(machine_ticks)
	/usr/bin/time -f '%U %S' -o "$d/wrk.time" timeout -k 5 $((DURATION + 30)) \
		wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$HERE/post.lua" \
		"http://127.0.0.1:$port" >"$d/wrk.out" 2>&1 &
	local wp=$!; pids+=("$wp")
	wait "$wp" || true
	s1=$(server_ticks "$sp"); m1=$(machine_ticks)
	[[ -z $pp ]] || { kill -INT "$pp" 2>/dev/null; wait "$pp" 2>/dev/null || true; }
	kill -0 "$sp" 2>/dev/null || echo "$name: server died"
	stop "$sp"
	# A server prints nothing unless something went wrong (or a sanitizer spoke).
	[[ ! -s $d/server.out ]] || { echo "$name: server output:"; head -30 "$d/server.out"; }
	/usr/bin/python3 - "$name" "$round" "$d" "$s0" "$s1" "$m0" "$m1" "$(getconf CLK_TCK)" \
		"$tmp/results" <<'PY'
import json, re, sys
name, rnd, d, s0, s1, m0, m1, tck, results = sys.argv[1:10]
tck = int(tck)
text = open(f"{d}/wrk.out").read()
def unit(v):  # wrk latency "1.23ms" / "456.00us" / "1.02s" -> ms
    n, u = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v).groups()
    return float(n) * {"us": 1e-3, "ms": 1, "s": 1e3, "m": 6e4}[u]
m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
requests, seconds = (int(m.group(1)), float(m.group(2)) * (60 if m.group(3) == "m" else 1)) if m else (0, 0.0)
lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", text, re.M))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors = re.search(r"Socket errors: (.*)", text)
u0, k0, w0 = map(int, s0.split()); u1, k1, w1 = map(int, s1.split())
l0, l1 = u0 + k0, u1 + k1
perf = {}
try:
    for row in open(f"{d}/perf"):
        f = row.strip().split(",")
        if len(f) > 2 and f[0].isdigit():
            perf[f[2]] = int(f[0])
except OSError:
    pass
b0, t0 = map(int, m0.split()); b1, t1 = map(int, m1.split())
try:
    wu, ws = map(float, open(f"{d}/wrk.time").read().split()[-2:])
except Exception:
    wu = ws = 0.0
try:
    batches, handled = map(int, open(f"{d}/stats").read().split())
except (OSError, ValueError):
    batches = handled = 0
per = lambda ticks: ticks / tck * 1e6 / requests if requests else 0.0
window = (t1 - t0) / 2 or 1  # jiffies of one core over the window (2 cores)
busy_cores = (b1 - b0) / window
server_cores = ((l1 - l0) + (w1 - w0)) / window
wrk_cores = (wu + ws) * tck / window
r = {
    "server": name, "round": int(rnd), "requests": requests,
    "rps": requests / seconds if seconds else 0.0,
    "p50_ms": unit(lat["50"]) if "50" in lat else None,
    "p99_ms": unit(lat["99"]) if "99" in lat else None,
    "non2xx": int(non2xx.group(1)) if non2xx else 0,
    "socket_errors": errors.group(1) if errors else "",
    "loop_us": per(l1 - l0), "loop_user_us": per(u1 - u0), "loop_sys_us": per(k1 - k0),
    "worker_us": per(w1 - w0),
    "server_us": per((l1 - l0) + (w1 - w0)),
    "syscalls_per_req": perf.get("raw_syscalls:sys_enter", 0) / requests if requests else 0.0,
    "switches_per_req": perf.get("context-switches", 0) / requests if requests else 0.0,
    "batch_mean": handled / batches if batches else 0.0,
    "wrk_us": (wu + ws) * 1e6 / requests if requests else 0.0,
    "server_cores": server_cores, "wrk_cores": wrk_cores,
    "other_cores": max(0.0, busy_cores - server_cores - wrk_cores),
}
with open(results, "a") as f:
    f.write(json.dumps(r) + "\n")
p = lambda v: f"{v:.2f}" if v is not None else "n/a"
line = (f"{name:>16} round {rnd}: {r['rps']:8.0f} req/s  p50 {p(r['p50_ms'])} ms  "
        f"p99 {p(r['p99_ms'])} ms  CPU/req: server {r['server_us']:.1f} µs (loop {r['loop_us']:.1f} = "
        f"user {r['loop_user_us']:.1f} + sys {r['loop_sys_us']:.1f}, worker {r['worker_us']:.1f}), "
        f"wrk {r['wrk_us']:.1f}; batch {r['batch_mean']:.1f}; {r['syscalls_per_req']:.2f} syscalls, {r['switches_per_req']:.2f} switches/req; "
        f"cores: server {server_cores:.2f} wrk {wrk_cores:.2f} other {r['other_cores']:.2f}")
if r["non2xx"]:
    line += f"; non-2xx {r['non2xx']}"
if r["socket_errors"]:
    line += f"; socket errors {r['socket_errors']}"
print(line)
PY
}

echo "bench-http: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$HERE" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s, $ROUNDS rounds, worker sleep ${COMMIT_US} µs per batch"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
read -r -a order <<<"$SERVERS"
for round in $(seq "$ROUNDS"); do
	if (( round % 2 )); then list=("${order[@]}"); else
		list=(); for ((i = ${#order[@]} - 1; i >= 0; i--)); do list+=("${order[i]}"); done
	fi
	for name in "${list[@]}"; do run "$name" "$round"; done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
# One markdown row per server: each round's figures, then the mean.
/usr/bin/python3 - "$tmp/results" "$SERVERS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| server | req/s (per round) | p50 ms | p99 ms | server CPU µs/req: loop (user+sys) + worker | mean batch | syscalls/req | switches/req | wrk CPU µs/req | other load (cores) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name in sys.argv[2].split():
    rs = [r for r in rows if r["server"] == name]
    if not rs:
        print(f"| {name} | failed | | | | | | | | |"); continue
    j = lambda f, k="{:.2f}": " / ".join(k.format(r[f]) if r[f] is not None else "n/a" for r in rs)
    mean = sum(r["rps"] for r in rs) / len(rs)
    cpu = " / ".join(f"{r['server_us']:.1f}: {r['loop_us']:.1f} ({r['loop_user_us']:.1f}+{r['loop_sys_us']:.1f}) + {r['worker_us']:.1f}" for r in rs)
    bad = sum(r["non2xx"] for r in rs)
    print(f"| {name} | {j('rps', '{:,.0f}')} (mean {mean:,.0f}){' — non-2xx: %d' % bad if bad else ''} | "
          f"{j('p50_ms')} | {j('p99_ms')} | {cpu} | {j('batch_mean', '{:.1f}')} | {j('syscalls_per_req', '{:.1f}')} | {j('switches_per_req')} | {j('wrk_us', '{:.1f}')} | {j('other_cores')} |")
PY
