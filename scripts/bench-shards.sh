#!/usr/bin/env bash
# `make bench-shards`: throughput and latency over shards × cross-shard share,
# then how long the saga runner takes to settle its backlog after kill -9.
#
# For each (shards, cross-shard %) it starts release build/kobod --shards N on
# a fresh data directory and a free port, runs kobo-bench for DURATION
# seconds over ACCOUNTS accounts (kobo-bench verifies every acknowledged
# transfer afterwards), and stops kobod with SIGTERM. Then, with 4 shards and
# 100 % cross-shard load, it kills kobod with SIGKILL mid-load, restarts it and
# times the backlog from "ready" until no saga is active (metrics). Prints a
# table and appends a dated section to docs/benchmarks.md.
#
#   DURATION=10 ACCOUNTS=100000 CONNECTIONS=64 scripts/bench-shards.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ACCOUNTS=${ACCOUNTS:-100000}
CONNECTIONS=${CONNECTIONS:-64}
OUT=${BENCH_OUT:-docs/benchmarks.md}

make --no-print-directory -j2 all

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kobo-bench-shards.XXXXXX")
kobod_pid=""
# shellcheck disable=SC2317 # called by traps and below
stop_kobod() {
	local signal=${1:-TERM}
	if [[ -n "$kobod_pid" ]] && kill -0 "$kobod_pid" 2>/dev/null; then
		kill "-$signal" "$kobod_pid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$kobod_pid" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$kobod_pid" 2>/dev/null; then kill -KILL "$kobod_pid" 2>/dev/null || true; fi
		wait "$kobod_pid" 2>/dev/null || true
	fi
	kobod_pid=""
}
trap 'stop_kobod; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"

# start_kobod SHARDS DATA_DIR: starts kobod and waits until it is ready.
start_kobod() {
	: >"$tmp/kobod.out"
	build/kobod --listen "127.0.0.1:$port" --data "$2" --shards "$1" --log-level warn \
		>"$tmp/kobod.out" 2>>"$tmp/kobod.log" &
	kobod_pid=$!
	for _ in $(seq 3000); do
		grep -q "kobod ready" "$tmp/kobod.out" 2>/dev/null && return 0
		kill -0 "$kobod_pid" 2>/dev/null || { echo "bench-shards: kobod exited:" >&2; tail "$tmp/kobod.log" >&2; exit 3; }
		sleep 0.01
	done
	echo "bench-shards: kobod not ready after 30 s" >&2
	exit 3
}

configs=("1 0" "2 0" "2 10" "2 100" "4 0" "4 10" "4 100")
rows=()
status=0
for config in "${configs[@]}"; do
	read -r shards cross <<<"$config"
	start_kobod "$shards" "$tmp/data-$shards-$cross"
	cross_args=""
	if [[ $shards -gt 1 ]]; then cross_args="--cross-shard $cross"; fi
	cmd="build/kobo-bench --url $url --json --duration $DURATION --accounts $ACCOUNTS --connections $CONNECTIONS --shards $shards $cross_args"
	echo "bench-shards: $cmd" >&2
	rc=0
	# shellcheck disable=SC2086 # the options are words on purpose
	$cmd >"$tmp/run.json" || rc=$?
	if [[ $rc -ne 0 ]]; then status=$rc; fi
	stop_kobod
	rows+=("$(python3 - "$tmp/run.json" "$shards" "$cross" "$rc" <<'PY'
import json, sys
path, shards, cross, rc = sys.argv[1:5]
try:
    r = json.load(open(path))
except Exception:
    print(f"| {shards} | {cross} % | failed (exit {rc}) | | | | | |")
    sys.exit(0)
lat = r["latency_us"]
local = r.get("latency_local_us", {})
crossl = r.get("latency_cross_us", {})
def ms(us):
    return f"{us / 1000:.1f}"
def cls(c):
    return f"{ms(c['p50'])} / {ms(c['p99'])}" if c.get("requests") else "–"
verified = "ok" if r.get("verify", {}).get("ok") else "FAILED"
print(f"| {shards} | {cross} % | {r['transfers_per_s']:,.0f} | {ms(lat['p50'])} | {ms(lat['p99'])} "
      f"| {cls(local)} | {cls(crossl)} | {verified} |")
PY
)")
done

# Backlog after kill -9: 4 shards, all transfers cross-shard, at full load.
recovery=()
data="$tmp/data-kill"
start_kobod 4 "$data"
for round in 1 2 3; do
	# Each run creates and funds its accounts first (~10 s for 100,000),
	# then loads: the kill lands 5 s into the load.
	build/kobo-bench --url "$url" --accounts "$ACCOUNTS" --shards 4 --cross-shard 100 \
		--connections "$CONNECTIONS" --duration 30 --no-verify >"$tmp/load.out" 2>&1 &
	load=$!
	for _ in $(seq 600); do grep -q "setup done" "$tmp/load.out" && break; sleep 0.1; done
	sleep 5
	stop_kobod KILL
	kill "$load" 2>/dev/null || true
	wait "$load" 2>/dev/null || true
	in_flight=$(build/kobo audit --data "$data" 2>/dev/null | sed -n 's/^sagas in flight: \([0-9]*\).*/\1/p' | head -1)
	started=$(date +%s%N)
	start_kobod 4 "$data"
	ready=$(date +%s%N)
	settled=""
	for _ in $(seq 3000); do
		active=$(curl -s "$url/metrics" | awk '/^kobo_sagas_active\{/ { n += $2 } END { print n + 0 }')
		finished=$(curl -s "$url/metrics" | awk '/^kobo_sagas_finished_total\{/ { n += $2 } END { print n + 0 }')
		if [[ "$active" == "0" && ( "${in_flight:-0}" == "0" || "$finished" -ge "${in_flight:-0}" ) ]]; then
			settled=$(date +%s%N)
			break
		fi
		sleep 0.01
	done
	row=$(python3 - "$round" "${in_flight:-?}" "$started" "$ready" "${settled:-0}" <<'PY'
import sys
round_, n, started, ready, settled = sys.argv[1:6]
started, ready, settled = int(started), int(ready), int(settled)
after = f"{(settled - ready) / 1e6:.0f} ms" if settled else "not settled in 30 s"
print(f"| {round_} | {n} | {(ready - started) / 1e6:.0f} ms | {after} |")
PY
)
	recovery+=("$row")
done
stop_kobod
if ! build/kobo audit --data "$data" >"$tmp/audit.txt" 2>&1; then
	status=1
	cat "$tmp/audit.txt" >&2
fi
audit=$(tail -1 "$tmp/audit.txt")

machine="$(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr)"
{
	echo
	echo "### make bench-shards — $(date -u +%Y-%m-%d) (commit $(git rev-parse --short HEAD))"
	echo
	echo "Machine: $machine; kobo-bench on the same machine. Each row: a fresh"
	echo "\`build/kobod --shards N\`, then \`build/kobo-bench --duration $DURATION --accounts $ACCOUNTS"
	echo "--connections $CONNECTIONS --shards N --cross-shard P\` (verified after the run)."
	echo
	echo "| shards | cross-shard | transfers/s | p50 ms | p99 ms | local p50 / p99 ms | cross p50 / p99 ms | verify |"
	echo "|---|---|---|---|---|---|---|---|"
	printf '%s\n' "${rows[@]}"
	echo
	echo "Backlog after \`kill -9\` (4 shards, 100 % cross-shard load, $CONNECTIONS connections,"
	echo "killed 5 s into each run, restarted at once; sagas in flight counted by"
	echo "\`kobo audit\` on the stopped data; settled = \`kobo_sagas_active\` back to 0):"
	echo
	echo "| round | sagas in flight at the kill | restart to ready | ready to settled |"
	echo "|---|---|---|---|"
	printf '%s\n' "${recovery[@]}"
	echo
	echo "Audit after the three kills: \`$audit\`"
} | tee -a "$OUT"
exit "$status"
