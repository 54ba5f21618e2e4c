#!/usr/bin/env bash
# `make bench-compare`: Kobo against the peers a user would pick instead
# (../shared/peers: a durable Redis + Lua wallet and a hand-written
# PostgreSQL wallet), one after the other in this one script run, and the
# ratios against issue 12's targets.
#
# Release build, then for each PATTERN in uniform, hot10, merchant:
#   single  Kobo: build/kobod on a fresh temporary --data, kobo-bench
#           CONNECTIONS (64) connections, one request in flight each
#           (hot10: --hot 10, merchant: --merchant), verification on;
#           redis_lua.sh PATTERN DURATION 64 1 ACCOUNTS;
#           naive_pg.sh PATTERN DURATION 32 ACCOUNTS;
#   batch   Kobo --batch 1000 (16 connections) and --batch 8000 (8
#           connections), as scripts/bench.sh, each on a fresh kobod;
#           redis_lua.sh PATTERN DURATION 64 16 ACCOUNTS (pipelined).
# Every Kobo row gets its own fresh kobod (a data directory grown by earlier
# rows makes later rows slower). Prints the tables with the ratios Kobo/Redis
# and Kobo/naive against the targets (single >= 2x Redis; batch >= 300,000/s
# and >= 4x Redis pipelined) and appends a dated section to
# docs/benchmarks.md (BENCH_OUT).
#
#   DURATION=10 ACCOUNTS=100000 CONNECTIONS=64 scripts/bench-compare.sh
#   QUICK=1 scripts/bench-compare.sh     # 3 s per row, to try it
#   PATTERNS="uniform" scripts/bench-compare.sh
#   KOBOD_ARGS="--journal off" scripts/bench-compare.sh   # the SQLite-only path
#
# Pattern differences: the peers' hot10 draws payer AND payee among 10 hot
# accounts; kobo-bench --hot 10 puts one of 10 hot accounts on one side of
# each transfer, the other side uniform. uniform and merchant are the same
# shape on both sides.
#
# Every process started here (kobod, kobo-bench, the peer scripts) is stopped
# by pid on exit, failure or interrupt; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${QUICK:-0} == 1 ]]; then DURATION=${DURATION:-3}; fi
DURATION=${DURATION:-10}
ACCOUNTS=${ACCOUNTS:-100000}
CONNECTIONS=${CONNECTIONS:-64}
PATTERNS=${PATTERNS:-uniform hot10 merchant}
OUT=${BENCH_OUT:-docs/benchmarks.md}
PEERS=${PEERS:-../shared/peers}
NAIVE_CLIENTS=${NAIVE_CLIENTS:-32}
# The system interpreter: a version manager's shim costs CPU in the windows.
PY=/usr/bin/python3
[[ -x $PY ]] || PY=$(command -v python3)

make --no-print-directory -j2 all

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kobo-bench-compare.XXXXXX")
pids=()
# shellcheck disable=SC2317 # called by the EXIT trap
stop_pid() {
	local pid=$1
	[[ -n $pid ]] || return 0
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
	fi
	wait "$pid" 2>/dev/null || true
}
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	local p
	for p in "${pids[@]}"; do stop_pid "$p"; done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

kobod_pid=""
start_kobod() { # dir -> sets kobod_pid, url
	local dir=$1
	mkdir -p "$dir"
	local port
	port=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	url="http://127.0.0.1:$port"
	# shellcheck disable=SC2086 # KOBOD_ARGS is a list of flags
	build/kobod --listen "127.0.0.1:$port" --data "$dir/data" --log-level warn ${KOBOD_ARGS:-} \
		>"$dir/kobod.out" 2>"$dir/kobod.log" &
	kobod_pid=$!
	pids+=("$kobod_pid")
	for _ in $(seq 300); do
		grep -q "kobod ready" "$dir/kobod.out" "$dir/kobod.log" 2>/dev/null && return 0
		kill -0 "$kobod_pid" 2>/dev/null || { echo "bench-compare: kobod exited at start:" >&2; cat "$dir/kobod.log" >&2; return 3; }
		sleep 0.1
	done
	echo "bench-compare: kobod not ready after 30 s" >&2
	return 3
}

results=$tmp/results.tsv   # pattern, side, label, tps, p50 ms, p99 ms, verify, command
: >"$results"
status=0

kobo_row() { # pattern side label options...
	local pattern=$1 side=$2 label=$3; shift 3
	local dir=$tmp/$pattern-$label
	start_kobod "$dir" || { status=3; printf '%s\t%s\t%s\t\t\t\tkobod failed\t\n' "$pattern" "$side" "$label" >>"$results"; return 0; }
	local shown="build/kobo-bench --duration $DURATION --accounts $ACCOUNTS $*"
	echo "bench-compare: $pattern $label: $shown" >&2
	local rc=0
	# Bounded: setup (<= 300 s here), the load, verification (--verify-timeout).
	timeout -k 10 $((DURATION + 420)) build/kobo-bench --url "$url" --json --duration "$DURATION" \
		--accounts "$ACCOUNTS" --verify-timeout 120 "$@" >"$dir/bench.json" 2>"$dir/bench.err" &
	local bp=$!
	pids+=("$bp")
	wait "$bp" || rc=$?
	stop_pid "$kobod_pid"
	[[ $rc -eq 0 ]] || status=$rc
	$PY - "$dir/bench.json" "$pattern" "$side" "$label" "$shown" "$rc" >>"$results" <<'PY'
import json, sys
path, pattern, side, label, cmd, rc = sys.argv[1:7]
try:
    r = json.load(open(path))
except Exception:
    print(f"{pattern}\t{side}\t{label}\t\t\t\tfailed (exit {rc})\t{cmd}")
    sys.exit(0)
lat = r["latency_us"]
v = r.get("verify")
verdict = "skipped" if v is None else ("ok" if v["ok"] and v["complete"] else
          ("ok (partial)" if v["ok"] else f"FAILED ({v['violations']})"))
errors = r["errors"]["http"] + r["errors"]["transport"]
if errors:
    # Status 0: no answer (closed, or kobo-bench's 30 s request timeout).
    other = {("none" if k == "0" else k): v for k, v in r.get("status", {}).items()
             if k not in ("200", "201", "202")}
    verdict += (f", {errors} failed requests (transfers by status {other}, "
                f"max latency {lat['max'] / 1e6:.1f} s)")
print(f"{pattern}\t{side}\t{label}\t{r['transfers_per_s']:.0f}\t{lat['p50'] / 1000:.2f}\t"
      f"{lat['p99'] / 1000:.2f}\t{verdict}\t{cmd}")
PY
	tail -1 "$results" >&2
}

peer_row() { # pattern side label script args...
	local pattern=$1 side=$2 label=$3 script=$4; shift 4
	local shown="$PEERS/$script $*"
	echo "bench-compare: $pattern $label: $shown" >&2
	local rc=0 out=$tmp/$pattern-$label.out
	timeout -k 20 $((DURATION + 300)) bash "$PEERS/$script" "$@" >"$out" 2>"$out.err" &
	local p=$!
	pids+=("$p")
	wait "$p" || rc=$?
	$PY - "$out" "$pattern" "$side" "$label" "$shown" "$rc" >>"$results" <<'PY'
import re, sys
path, pattern, side, label, cmd, rc = sys.argv[1:7]
kv = {}
for line in open(path):
    kv.update(re.findall(r"(\w+)=([0-9.]+)", line))
if "tps" not in kv or float(kv["tps"]) == 0:
    print(f"{pattern}\t{side}\t{label}\t\t\t\tfailed (exit {rc})\t{cmd}")
    sys.exit(0)
p50 = kv.get("p50_ms", kv.get("avg_ms", ""))
p50 = p50 + " (avg)" if "p50_ms" not in kv and p50 else p50
print(f"{pattern}\t{side}\t{label}\t{float(kv['tps']):.0f}\t{p50}\t{kv.get('p99_ms', '')}\t"
      f"{'errors ' + kv['errors'] if kv.get('errors', '0') != '0' else ''}\t{cmd}")
PY
	if [[ $rc -ne 0 ]]; then
		echo "bench-compare: $script exited $rc:" >&2
		tail -5 "$out.err" >&2
	fi
	tail -1 "$results" >&2
}

uptime_start=$(uptime)
for pattern in $PATTERNS; do
	case $pattern in
	uniform) opt=() ;;
	hot10) opt=(--hot 10) ;;
	merchant) opt=(--merchant) ;;
	*) echo "bench-compare: unknown pattern $pattern" >&2; exit 2 ;;
	esac
	kobo_row "$pattern" single kobo "${opt[@]}" --connections "$CONNECTIONS"
	peer_row "$pattern" single redis redis_lua.sh "$pattern" "$DURATION" 64 1 "$ACCOUNTS"
	peer_row "$pattern" single naive naive_pg.sh "$pattern" "$DURATION" "$NAIVE_CLIENTS" "$ACCOUNTS"
	kobo_row "$pattern" batch kobo-b1000 "${opt[@]}" --connections 16 --batch 1000
	kobo_row "$pattern" batch kobo-b8000 "${opt[@]}" --connections 8 --batch 8000
	peer_row "$pattern" batch redis-p16 redis_lua.sh "$pattern" "$DURATION" 64 16 "$ACCOUNTS"
done
uptime_end=$(uptime)

tables=$($PY - "$results" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = {}
for pattern, side, label, tps, p50, p99, verdict, cmd in rows:
    by[(pattern, label)] = (float(tps) if tps else None, p50, p99, verdict)
patterns = list(dict.fromkeys(r[0] for r in rows))
def n(x): return "failed" if x is None else f"{x:,.0f}"
def ratio(a, b): return None if a is None or not b else a / b
def r(x): return "–" if x is None else f"{x:.2f}×"
def met(x, t): return "–" if x is None else ("met" if x >= t else "NOT met")
out = []
out.append("Single transfers (one request in flight per connection):")
out.append("")
out.append("| pattern | Kobo /s (p99 ms) | Redis+Lua /s (p99 ms) | naive PG /s | Kobo/Redis | ≥ 2× Redis | Kobo/naive | Kobo verify |")
out.append("|---|---:|---:|---:|---:|---|---:|---|")
for p in patterns:
    k = by.get((p, "kobo"), (None, "", "", "missing"))
    rd = by.get((p, "redis"), (None, "", "", ""))
    nv = by.get((p, "naive"), (None, "", "", ""))
    kr = ratio(k[0], rd[0])
    out.append(f"| {p} | {n(k[0])} ({k[2]}) | {n(rd[0])} ({rd[2]}) | {n(nv[0])} | {r(kr)} | {met(kr, 2)} | "
               f"{r(ratio(k[0], nv[0]))} | {k[3]} |")
out.append("")
out.append("Batch endpoint vs Redis pipelined (64 connections × 16 in flight):")
out.append("")
out.append("| pattern | Kobo batch 1000 /s | Kobo batch 8000 /s | Redis p16 /s | best Kobo/Redis | ≥ 4× Redis | ≥ 300,000/s | Kobo verify |")
out.append("|---|---:|---:|---:|---:|---|---|---|")
for p in patterns:
    b1 = by.get((p, "kobo-b1000"), (None, "", "", "missing"))
    b8 = by.get((p, "kobo-b8000"), (None, "", "", "missing"))
    rd = by.get((p, "redis-p16"), (None, "", "", ""))
    best = max([x for x in (b1[0], b8[0]) if x is not None], default=None)
    kr = ratio(best, rd[0])
    out.append(f"| {p} | {n(b1[0])} | {n(b8[0])} | {n(rd[0])} | {r(kr)} | {met(kr, 4)} | "
               f"{met(best, 300000) if best is not None else '–'} | {b1[3]} / {b8[3]} |")
print("\n".join(out))
PY
)
commands=$(cut -f8 "$results")
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
	echo
	echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — bench-compare, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
	echo
	echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r), shared with other work"
	echo "(load before: ${uptime_start##*load average: }; after: ${uptime_end##*load average: })."
	echo "\`scripts/bench-compare.sh\` (DURATION=$DURATION, ACCOUNTS=$ACCOUNTS): one after the other in one run;"
	echo "each Kobo row on a fresh kobod (--data, default shards, release build, kobod flags: '${KOBOD_ARGS:-none: the journal on}'), verification on;"
	echo "the peers as shipped in ../shared/peers (durable: appendfsync always; fsync and synchronous_commit on)."
	echo "The peers' hot10 puts payer and payee among 10 accounts; kobo-bench --hot 10 puts one side there."
	echo
	echo '```'
	echo "$commands"
	echo '```'
	echo
	echo "$tables"
} >>"$OUT"
echo >&2
echo "$tables"
echo "bench-compare: appended to $OUT" >&2
exit "$status"
