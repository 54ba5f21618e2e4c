#!/usr/bin/env bash
# `make bench`: the standard benchmark set.
#
# Builds the release binaries, starts build/kobod on a fresh temporary data
# directory and a free port, runs each workload of the set for DURATION
# seconds (default 10) with kobo-bench (which verifies the invariants after
# each run), prints a table and appends a dated section with the machine, the
# commands and the table to docs/benchmarks.md. kobod is stopped with SIGTERM
# on exit, whatever happens.
#
#   DURATION=10 ACCOUNTS=100000 CONNECTIONS=64 scripts/bench.sh
#
# Batch runs use fewer connections: 64 batches of 8,000 in flight only queue
# half a million transfers at the server and add latency, not throughput.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ACCOUNTS=${ACCOUNTS:-100000}
CONNECTIONS=${CONNECTIONS:-64}
OUT=${BENCH_OUT:-docs/benchmarks.md}

# shellcheck disable=SC2086 # a list of targets
make --no-print-directory -j2 ${BENCH_MAKE_TARGETS:-all}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kobo-bench.XXXXXX")
kobod_pid=""
# shellcheck disable=SC2317 # called by the EXIT trap
stop_kobod() {
	if [[ -n "$kobod_pid" ]] && kill -0 "$kobod_pid" 2>/dev/null; then
		kill -TERM "$kobod_pid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$kobod_pid" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$kobod_pid" 2>/dev/null; then kill -KILL "$kobod_pid" 2>/dev/null || true; fi
		wait "$kobod_pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap stop_kobod EXIT
trap 'exit 130' INT TERM

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
build/kobod --listen "127.0.0.1:$port" --data "$tmp/data" --log-level warn >"$tmp/kobod.out" 2>"$tmp/kobod.log" &
kobod_pid=$!
for _ in $(seq 300); do
	grep -q "kobod ready" "$tmp/kobod.out" "$tmp/kobod.log" 2>/dev/null && break
	kill -0 "$kobod_pid" 2>/dev/null || { echo "bench: kobod exited at start:" >&2; cat "$tmp/kobod.log" >&2; exit 3; }
	sleep 0.1
done
grep -q "kobod ready" "$tmp/kobod.out" "$tmp/kobod.log" 2>/dev/null || { echo "bench: kobod not ready after 30 s" >&2; exit 3; }
echo "bench: kobod (pid $kobod_pid) ready on $url" >&2

names=(uniform batch-1000 batch-8000 hot-10 merchant rate-10000)
args=("--connections $CONNECTIONS"
	"--connections 16 --batch 1000"
	"--connections 8 --batch 8000"
	"--connections $CONNECTIONS --hot 10"
	"--connections $CONNECTIONS --merchant"
	"--connections $CONNECTIONS --rate 10000")

rows=()
commands=()
status=0
for i in "${!names[@]}"; do
	shown="build/kobo-bench --duration $DURATION --accounts $ACCOUNTS ${args[$i]}"
	cmd="build/kobo-bench --url $url --json --duration $DURATION --accounts $ACCOUNTS ${args[$i]}"
	echo "bench: ${names[$i]}: $cmd" >&2
	rc=0
	# shellcheck disable=SC2086 # the options are words on purpose
	$cmd >"$tmp/${names[$i]}.json" || rc=$?
	if [[ $rc -ne 0 ]]; then status=$rc; fi
	row=$(python3 - "$tmp/${names[$i]}.json" "${names[$i]}" "$shown" "$rc" <<'PY'
import json, sys
path, name, cmd, rc = sys.argv[1:5]
try:
    r = json.load(open(path))
except Exception:
    print(f"| {name} | `{cmd}` | failed (exit {rc}) | | | | | |")
    sys.exit(0)
lat = r["latency_us"]
ms = lambda us: f"{us / 1000:.2f}"
errors = r["errors"]["http"] + r["errors"]["transport"]
rejected = sum(r["rejected"].values())
v = r.get("verify")
verdict = "skipped" if v is None else ("ok" if v["ok"] and v["complete"] else
          ("ok (partial)" if v["ok"] else f"FAILED ({v['violations']})"))
per = " per request" if r["batch"] else ""
print(f"| {name} | `{cmd}` | {r['transfers_per_s']:.0f} | {ms(lat['p50'])} | {ms(lat['p99'])} | "
      f"{ms(lat['p999'])} | {errors} / {rejected} | {verdict} |")
PY
)
	rows+=("$row")
	commands+=("$shown")
	echo "$row" >&2
done

header="| workload | command | transfers/s | p50 ms | p99 ms | p99.9 ms | errors / 422s | verify |
|---|---|---:|---:|---:|---:|---:|---|"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
	echo
	echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
	echo
	echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r). kobod: embedded SQLite store,"
	echo "default shards, fresh data directory, log level warn, on the same machine as the load."
	echo "Each run: $DURATION s over $ACCOUNTS fresh accounts (setup not timed), keep-alive"
	echo "connections as in the command, then full verification. Latency is per HTTP request (a whole batch for --batch);"
	echo "with --rate it counts from the scheduled send time."
	echo
	echo '```'
	printf '%s\n' "${commands[@]}"
	echo '```'
	echo
	echo "$header"
	printf '%s\n' "${rows[@]}"
} >>"$OUT"
echo >&2
echo "$header"
printf '%s\n' "${rows[@]}"
echo "bench: appended to $OUT" >&2
exit "$status"
