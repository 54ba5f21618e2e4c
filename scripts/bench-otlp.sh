#!/usr/bin/env bash
# `make bench-otlp`: what exporting traces costs kobod.
#
# The same kobo-bench workload (single transfers, closed loop) against
# build/kobod without tracing and with OTLP export to a receiver on this
# machine (tests/system/otlp_receiver.py: it parses and checks every body),
# ROUNDS times in turn (off, otlp, off, otlp, …) so that a drift of the
# machine hits both alike:
#
#   off   no OTEL_* environment: no exporter thread, no span
#   otlp  OTEL_EXPORTER_OTLP_ENDPOINT=<receiver>, the default sampler
#         (every request is a sampled root span), OTEL_BSP_SCHEDULE_DELAY=1000
#
# Each run gets a fresh data directory and a fresh kobod on a free loopback
# port. Prints each run, the mean per configuration, the spread between
# rounds and the ratio otlp/off, the spans the receiver accepted and the
# spans kobod dropped; appends a dated section to docs/benchmarks.md
# (BENCH_OUT). kobod and the receiver are stopped by pid on exit.
#
#   DURATION=10 ROUNDS=3 CONNECTIONS=64 ACCOUNTS=10000 scripts/bench-otlp.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
ACCOUNTS=${ACCOUNTS:-10000}
OUT=${BENCH_OUT:-docs/benchmarks.md}
PY=/usr/bin/python3

make --no-print-directory -j2 all

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kobo-bench-otlp.XXXXXX")
kobod_pid=""
receiver_pid=""
# shellcheck disable=SC2317 # called by the EXIT trap and between runs
stop_kobod() {
	if [[ -n "$kobod_pid" ]] && kill -0 "$kobod_pid" 2>/dev/null; then
		kill -TERM "$kobod_pid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$kobod_pid" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$kobod_pid" 2>/dev/null; then kill -KILL "$kobod_pid" 2>/dev/null || true; fi
		wait "$kobod_pid" 2>/dev/null || true
	fi
	kobod_pid=""
}
# shellcheck disable=SC2317
stop_receiver() {
	if [[ -n "$receiver_pid" ]] && kill -0 "$receiver_pid" 2>/dev/null; then
		kill -TERM "$receiver_pid" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$receiver_pid" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$receiver_pid" 2>/dev/null; then kill -KILL "$receiver_pid" 2>/dev/null || true; fi
		wait "$receiver_pid" 2>/dev/null || true
	fi
	receiver_pid=""
}
# shellcheck disable=SC2317
cleanup() { stop_kobod; stop_receiver; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
	$PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_kobod DIR PORT — waits (30 s at most) for the ready line; the
# environment passed in decides tracing.
start_kobod() {
	local dir=$1 port=$2
	build/kobod --listen "127.0.0.1:$port" --data "$dir/data" --log-level warn \
		>"$dir/kobod.out" 2>"$dir/kobod.log" &
	kobod_pid=$!
	for _ in $(seq 300); do
		grep -q "kobod ready" "$dir/kobod.out" "$dir/kobod.log" 2>/dev/null && return 0
		kill -0 "$kobod_pid" 2>/dev/null || { echo "bench-otlp: kobod exited at start:" >&2; cat "$dir/kobod.log" >&2; exit 3; }
		sleep 0.1
	done
	echo "bench-otlp: kobod not ready after 30 s" >&2
	exit 3
}

$PY tests/system/otlp_receiver.py >"$tmp/receiver.out" 2>"$tmp/receiver.err" &
receiver_pid=$!
for _ in $(seq 100); do grep -q '^url: ' "$tmp/receiver.out" && break; sleep 0.1; done
receiver_url=$(sed -n 's/^url: //p' "$tmp/receiver.out")
[[ -n "$receiver_url" ]] || { echo "bench-otlp: the receiver did not start" >&2; exit 3; }

configs=(off otlp)
bench_args="--duration $DURATION --accounts $ACCOUNTS --connections $CONNECTIONS"
dropped_total=0

results=()   # "config round transfers_per_s p50_ms p99_ms errors verify"
for ((round = 1; round <= ROUNDS; round++)); do
	for c in "${configs[@]}"; do
		dir="$tmp/$c-$round"
		mkdir -p "$dir"
		port=$(free_port)
		url="http://127.0.0.1:$port"
		if [[ $c == otlp ]]; then
			OTEL_EXPORTER_OTLP_ENDPOINT=$receiver_url OTEL_BSP_SCHEDULE_DELAY=1000 start_kobod "$dir" "$port"
		else
			start_kobod "$dir" "$port"
		fi
		echo "bench-otlp: round $round, $c" >&2
		rc=0
		# shellcheck disable=SC2086
		build/kobo-bench --url "$url" --json $bench_args >"$dir/bench.json" 2>"$dir/bench.err" || rc=$?
		if [[ $c == otlp ]]; then
			d=$(curl -s -m 5 "$url/metrics" | awk '/^kobo_otlp_spans_dropped_total/ {s += $2} END {print s + 0}')
			dropped_total=$((dropped_total + ${d%.*}))
		fi
		stop_kobod
		if [[ $rc -ne 0 ]]; then
			echo "bench-otlp: kobo-bench failed (exit $rc):" >&2
			tail -5 "$dir/bench.err" >&2
			exit "$rc"
		fi
		line=$($PY - "$dir/bench.json" "$c" "$round" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
v = r.get("verify") or {}
ok = "ok" if v.get("ok") and v.get("complete") else "FAILED"
errors = r["errors"]["http"] + r["errors"]["transport"]
print(sys.argv[2], sys.argv[3], f"{r['transfers_per_s']:.0f}", f"{r['latency_us']['p50'] / 1000:.2f}",
      f"{r['latency_us']['p99'] / 1000:.2f}", errors, ok)
PY
)
		echo "bench-otlp:   $line" >&2
		results+=("$line")
		rm -rf "$dir/data"
	done
done
stop_receiver
spans=$(sed -n 's/^spans: \([0-9]*\).*/\1/p' "$tmp/receiver.out")
receiver_errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$tmp/receiver.out")

printf '%s\n' "${results[@]}" >"$tmp/results.txt"
table=$($PY - "$tmp/results.txt" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = {}
for c, rnd, tps, p50, p99, errors, ok in rows:
    by.setdefault(c, []).append((float(tps), float(p50), float(p99), int(errors), ok))
print("| configuration | transfers/s per round | mean | spread | p50 ms | p99 ms | errors | verify |")
print("|---|---|---:|---:|---:|---:|---:|---|")
mean = {}
for c in ("off", "otlp"):
    runs = by[c]
    t = [r[0] for r in runs]
    mean[c] = sum(t) / len(t)
    spread = (max(t) - min(t)) / mean[c] * 100
    p50 = sum(r[1] for r in runs) / len(runs)
    p99 = sum(r[2] for r in runs) / len(runs)
    errs = sum(r[3] for r in runs)
    ok = "ok" if all(r[4] == "ok" for r in runs) else "FAILED"
    per_round = " / ".join(f"{x:,.0f}" for x in t)
    print(f"| {c} | {per_round} | {mean[c]:,.0f} | {spread:.1f} % | {p50:.2f} | {p99:.2f} | {errs} | {ok} |")
print()
ratio = mean["otlp"] / mean["off"]
print(f"otlp / off: {ratio:.3f} ({(ratio - 1) * 100:+.1f} %)")
PY
)

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
	echo
	echo "## Tracing cost (OTLP export): $(date -u '+%Y-%m-%d %H:%M UTC') — commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
	echo
	echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r), shared with other work."
	echo "Command: \`make bench-otlp\` (DURATION=$DURATION ROUNDS=$ROUNDS): per run a fresh data directory"
	echo "and kobod (embedded SQLite, log level warn), then \`build/kobo-bench $bench_args\`"
	echo "(uniform single transfers, closed loop, verified), off and otlp in turn. otlp ="
	echo "\`OTEL_EXPORTER_OTLP_ENDPOINT\` at tests/system/otlp_receiver.py on the same machine (it"
	echo "parses and checks every body: it takes CPU from the same 2 cores), every request sampled."
	echo "The receiver accepted ${spans:-?} spans (${receiver_errors:-?} bodies refused); kobod dropped $dropped_total."
	echo
	echo "$table"
} >>"$OUT"
echo >&2
echo "$table"
echo "bench-otlp: receiver accepted ${spans:-?} spans, kobod dropped $dropped_total; appended to $OUT" >&2
