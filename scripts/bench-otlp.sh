#!/usr/bin/env bash
# `make bench-otlp`: what events and tracing cost kobod, in one run.
#
# The same kobo-bench workload against four kobods, in turn within each
# round (the starting configuration rotates from round to round), so that a
# drift of the machine hits all alike:
#
#   noevents   build/bench-noevents/kobod (-DKOBO_BENCH_NO_EVENTS: batches
#              commit with no event rows), no OTEL_*: the floor
#   off        build/kobod, events on, no OTEL_* (no exporter thread, no span)
#   otlp       build/kobod, OTEL_EXPORTER_OTLP_ENDPOINT=<sink>, the default
#              sampler (every request a sampled root span),
#              OTEL_BSP_SCHEDULE_DELAY=1000
#   otlp-1pct  as otlp, OTEL_TRACES_SAMPLER=traceidratio
#              OTEL_TRACES_SAMPLER_ARG=0.01
#
# The collector is tests/system/otlp_receiver.py --sink: it answers 200 and
# counts spans without parsing, so the numbers are kobod's, not a Python
# validator's on the same cores.
#
# Workloads (MODES): single (one transfer per request, CONNECTIONS
# connections) and batch (POST /v1/transfers/batch, BATCH transfers per
# request, BATCH_CONNECTIONS connections); uniform accounts, closed loop,
# verified. Each run gets a fresh data directory (the journaled store) and a
# fresh kobod on a free loopback port.
#
# Prints per mode the runs, mean, spread, p50/p99, errors and verify per
# configuration, the ratios off/noevents (events), otlp/off (tracing),
# otlp/noevents (both) and otlp-1pct/off, whether issue 13's target (within
# 10 % of throughput) is met, the spans the sink got and the spans kobod
# dropped; appends a dated section to docs/benchmarks.md (BENCH_OUT).
#
# PERF=1: one extra otlp single run after round 1 with `perf record -g` on
# kobod during the load (not counted in the means: perf takes CPU from the
# same cores), and the top of `perf report --no-children --sort
# comm,dso,symbol` in the output and the section.
#
# kobod, kobo-bench, perf and the sink are stopped by pid on exit; every
# wait is bounded.
#
#   DURATION=10 ROUNDS=3 CONNECTIONS=64 ACCOUNTS=100000 MODES="single batch" \
#   BATCH=100 BATCH_CONNECTIONS=64 PERF=0 scripts/bench-otlp.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
ACCOUNTS=${ACCOUNTS:-100000}
MODES=${MODES:-single batch}
BATCH=${BATCH:-100}
BATCH_CONNECTIONS=${BATCH_CONNECTIONS:-$CONNECTIONS}
PERF=${PERF:-0}
OUT=${BENCH_OUT:-docs/benchmarks.md}
# The system interpreter: a version manager's shim costs CPU in the windows.
PY=/usr/bin/python3
[[ -x $PY ]] || PY=$(command -v python3)
NOEVENTS_KOBOD=build/bench-noevents/kobod

for m in $MODES; do
	[[ $m == single || $m == batch ]] || { echo "bench-otlp: MODES: single and/or batch, not '$m'" >&2; exit 2; }
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $DURATION =~ ^[1-9][0-9]*$ ]] ||
	{ echo "bench-otlp: ROUNDS and DURATION are positive integers" >&2; exit 2; }

make --no-print-directory -j2 all "$NOEVENTS_KOBOD"
if [[ $PERF == 1 ]] && ! command -v perf >/dev/null; then
	apt-get install -y linux-perf >&2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kobo-bench-otlp.XXXXXX")
kobod_pid=""
bench_pid=""
perf_pid=""
receiver_pid=""
# stop_pid PID [SECONDS]: TERM, then KILL after SECONDS (10).
# shellcheck disable=SC2317 # called by the EXIT trap and between runs
stop_pid() {
	local pid=$1 tenths=$((${2:-10} * 10))
	[[ -n $pid ]] || return 0
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq "$tenths"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
	fi
	wait "$pid" 2>/dev/null || true
}
# shellcheck disable=SC2317
cleanup() {
	stop_pid "$perf_pid" 5
	stop_pid "$bench_pid" 5
	stop_pid "$kobod_pid"
	stop_pid "$receiver_pid" 5
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
	$PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

$PY tests/system/otlp_receiver.py --sink >"$tmp/receiver.out" 2>"$tmp/receiver.err" &
receiver_pid=$!
for _ in $(seq 100); do grep -q '^url: ' "$tmp/receiver.out" && break; sleep 0.1; done
receiver_url=$(sed -n 's/^url: //p' "$tmp/receiver.out")
[[ -n "$receiver_url" ]] || { echo "bench-otlp: the sink did not start" >&2; cat "$tmp/receiver.err" >&2; exit 3; }

# start_kobod CONFIG DIR PORT — the binary and environment CONFIG names;
# waits (30 s at most) for the ready line.
start_kobod() {
	local config=$1 dir=$2 port=$3 bin=build/kobod
	local -a vars=()
	case $config in
	noevents) bin=$NOEVENTS_KOBOD ;;
	off) ;;
	otlp) vars=(OTEL_EXPORTER_OTLP_ENDPOINT="$receiver_url" OTEL_BSP_SCHEDULE_DELAY=1000) ;;
	otlp-1pct)
		vars=(OTEL_EXPORTER_OTLP_ENDPOINT="$receiver_url" OTEL_BSP_SCHEDULE_DELAY=1000
		     OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.01) ;;
	esac
	env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
		-u OTEL_TRACES_SAMPLER -u OTEL_TRACES_SAMPLER_ARG -u OTEL_BSP_SCHEDULE_DELAY \
		-u OTEL_SDK_DISABLED "${vars[@]}" \
		"$bin" --listen "127.0.0.1:$port" --data "$dir/data" --log-level warn \
		>"$dir/kobod.out" 2>"$dir/kobod.log" &
	kobod_pid=$!
	for _ in $(seq 300); do
		grep -q "kobod ready" "$dir/kobod.out" "$dir/kobod.log" 2>/dev/null && return 0
		kill -0 "$kobod_pid" 2>/dev/null || { echo "bench-otlp: kobod ($config) exited at start:" >&2; cat "$dir/kobod.log" >&2; exit 3; }
		sleep 0.1
	done
	echo "bench-otlp: kobod ($config) not ready after 30 s" >&2
	exit 3
}

bench_args() { # MODE
	local a="--duration $DURATION --accounts $ACCOUNTS --json"
	if [[ $1 == batch ]]; then
		echo "$a --connections $BATCH_CONNECTIONS --batch $BATCH"
	else
		echo "$a --connections $CONNECTIONS"
	fi
}

# run MODE CONFIG ROUND [perf] — one fresh kobod, one kobo-bench; appends a
# JSON line to $tmp/results.jsonl (ROUND "perf": the run under perf).
run() {
	local mode=$1 config=$2 round=$3 under_perf=${4:-}
	local dir="$tmp/$mode-$config-$round" port url rc=0
	mkdir -p "$dir"
	port=$(free_port)
	url="http://127.0.0.1:$port"
	start_kobod "$config" "$dir" "$port"
	echo "bench-otlp: round $round, $mode, $config${under_perf:+ (under perf)}" >&2
	# shellcheck disable=SC2046 # bench_args is a list of flags
	build/kobo-bench --url "$url" $(bench_args "$mode") >"$dir/bench.json" 2>"$dir/bench.err" &
	bench_pid=$!
	if [[ -n $under_perf ]]; then
		# Samples the load only: from the end of kobo-bench's setup, DURATION s.
		local waited=0
		until grep -q "setup done" "$dir/bench.err" 2>/dev/null; do
			kill -0 "$bench_pid" 2>/dev/null || break
			((waited++ < 1200)) || { echo "bench-otlp: kobo-bench setup over 120 s" >&2; exit 3; }
			sleep 0.1
		done
		if kill -0 "$bench_pid" 2>/dev/null; then
			perf record -g -p "$kobod_pid" -o "$tmp/perf.data" -- sleep "$DURATION" \
				>"$tmp/perf.log" 2>&1 &
			perf_pid=$!
			wait "$perf_pid" || { echo "bench-otlp: perf record failed:" >&2; tail -5 "$tmp/perf.log" >&2; }
			perf_pid=""
		fi
	fi
	wait "$bench_pid" || rc=$?
	bench_pid=""
	local m
	m=$(curl -s -m 5 "$url/metrics" | grep '^kobo_otlp_spans_' || true)
	stop_kobod_now
	if [[ $rc -ne 0 ]]; then
		echo "bench-otlp: kobo-bench failed (exit $rc) in $mode $config round $round:" >&2
		tail -5 "$dir/bench.err" >&2
		exit "$rc"
	fi
	local line
	line=$($PY - "$dir/bench.json" "$mode" "$config" "$round" "$m" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
v = r.get("verify") or {}
exported, dropped = 0, {}
for ln in sys.argv[5].splitlines():
    name, val = ln.rsplit(" ", 1)
    if name == "kobo_otlp_spans_exported_total":
        exported = int(float(val))
    elif name.startswith("kobo_otlp_spans_dropped_total{reason=\""):
        dropped[name.split('"')[1]] = int(float(val))
print(json.dumps({
    "mode": sys.argv[2], "config": sys.argv[3], "round": sys.argv[4],
    "tps": r["transfers_per_s"], "rps": r["requests_per_s"],
    "p50_ms": r["latency_us"]["p50"] / 1000, "p99_ms": r["latency_us"]["p99"] / 1000,
    "errors": r["errors"]["http"] + r["errors"]["transport"],
    "verify": "ok" if v.get("ok") and v.get("complete") else "FAILED",
    "exported": exported, "dropped": dropped}))
PY
)
	echo "bench-otlp:   $line" >&2
	echo "$line" >>"$tmp/results.jsonl"
	rm -rf "$dir/data"
}
stop_kobod_now() { stop_pid "$kobod_pid"; kobod_pid=""; }

configs=(noevents off otlp otlp-1pct)
: >"$tmp/results.jsonl"
for ((round = 1; round <= ROUNDS; round++)); do
	for mode in $MODES; do
		for ((i = 0; i < ${#configs[@]}; i++)); do
			run "$mode" "${configs[(i + round - 1) % ${#configs[@]}]}" "$round"
		done
		if [[ $PERF == 1 && $round == 1 && $mode == single ]]; then
			run single otlp perf under-perf
		fi
	done
done
stop_pid "$receiver_pid" 5
receiver_pid=""
sink_spans=$(sed -n 's/^spans: \([0-9]*\).*/\1/p' "$tmp/receiver.out")
sink_posts=$(sed -n 's/.*posts: \([0-9]*\).*/\1/p' "$tmp/receiver.out")

perf_top=""
if [[ $PERF == 1 && -s $tmp/perf.data ]]; then
	# awk reads all of perf's output (head would end the pipe early: SIGPIPE)
	# and drops the comment lines and the empty IPC columns.
	report() { # LINES SORT
		perf report -i "$tmp/perf.data" --no-children --sort "$2" --stdio -g none 2>/dev/null |
			awk -v max="$1" '!/^#/ && NF && n++ < max { sub(/( +-)* *$/, ""); print }'
	}
	perf_top=$({
		echo "perf record -g of kobod, otlp single, ${DURATION} s of load; cpu-clock samples, self time"
		echo "threads (--sort pid; kobod's own threads are all named kobod, MHD-* are the HTTP ones):"
		report 12 pid
		echo
		echo "top of perf report --no-children --sort comm,dso,symbol:"
		report 30 comm,dso,symbol
		echo
		echo "per thread, its top 5 user-space symbols (--sort pid,symbol; tells which thread is which):"
		report 100000 pid,symbol |
			awk '$3 != "[k]" && seen[$2]++ < 5 { split($2, t, ":"); print t[1] "\t" $0 }' |
			sort -s -n -k1,1 | cut -f2-
	} || true)
fi

table=$($PY - "$tmp/results.jsonl" "$MODES" "$sink_spans" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
modes = sys.argv[2].split()
configs = ["noevents", "off", "otlp", "otlp-1pct"]
TARGET = 0.90   # issue 13: the cost of events and tracing within 10 % of throughput
out = []
for mode in modes:
    out.append(f"### {mode}")
    out.append("")
    out.append("| configuration | transfers/s per round | mean | spread | p50 ms | p99 ms "
               "| errors | verify | spans exported | spans dropped |")
    out.append("|---|---|---:|---:|---:|---:|---:|---|---:|---|")
    mean, spread, rounds = {}, {}, {}
    for c in configs:
        runs = [r for r in rows if r["mode"] == mode and r["config"] == c and r["round"] != "perf"]
        if not runs:
            continue
        t = [r["tps"] for r in runs]
        rounds[c] = len(t)
        mean[c] = sum(t) / len(t)
        spread[c] = (max(t) - min(t)) / mean[c] * 100 if mean[c] else 0.0
        p50 = sum(r["p50_ms"] for r in runs) / len(runs)
        p99 = sum(r["p99_ms"] for r in runs) / len(runs)
        errs = sum(r["errors"] for r in runs)
        ok = "ok" if all(r["verify"] == "ok" for r in runs) else "FAILED"
        exported = sum(r["exported"] for r in runs)
        dropped = {}
        for r in runs:
            for k, v in r["dropped"].items():
                dropped[k] = dropped.get(k, 0) + v
        drops = ", ".join(f"{k} {v:,}" for k, v in sorted(dropped.items()) if v) or "0"
        per_round = " / ".join(f"{x:,.0f}" for x in t)
        traced = c.startswith("otlp")
        spread_s = f"{spread[c]:.1f} %" if len(t) > 1 else "–"
        out.append(f"| {c} | {per_round} | {mean[c]:,.0f} | {spread_s} | {p50:.2f} "
                   f"| {p99:.2f} | {errs} | {ok} | {f'{exported:,}' if traced else '–'} "
                   f"| {drops if traced else '–'} |")
    perf_runs = [r for r in rows if r["mode"] == mode and r["round"] == "perf"]
    for r in perf_runs:
        out.append(f"| otlp under perf (not in the means) | {r['tps']:,.0f} | | | {r['p50_ms']:.2f} "
                   f"| {r['p99_ms']:.2f} | {r['errors']} | {r['verify']} | {r['exported']:,} | "
                   f"{', '.join(f'{k} {v:,}' for k, v in sorted(r['dropped'].items()) if v) or '0'} |")
    out.append("")

    def ratio(a, b, what, target):
        if a not in mean or b not in mean or not mean[b]:
            return
        x = mean[a] / mean[b]
        noise = max(spread[a], spread[b])
        if min(rounds[a], rounds[b]) > 1:
            line = f"- {a} / {b} ({what}): {x:.3f} ({(x - 1) * 100:+.1f} %; spread up to {noise:.1f} %)"
        else:
            line = f"- {a} / {b} ({what}): {x:.3f} ({(x - 1) * 100:+.1f} %; one round: no spread)"
        if target:
            line += ": target met" if x >= TARGET else ": target NOT met"
            if min(rounds[a], rounds[b]) > 1 and abs(1 - x) * 100 < noise:
                line += " (the difference is within the rounds' spread)"
        out.append(line)
    ratio("off", "noevents", "cost of events", True)
    ratio("otlp", "off", "cost of tracing, every request sampled", True)
    ratio("otlp", "noevents", "events and tracing", True)
    ratio("otlp-1pct", "off", "cost of tracing, 1 % sampled", True)
    ratio("otlp-1pct", "noevents", "events and 1 % tracing", True)
    out.append("")
print("\n".join(out).rstrip())
PY
)

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
	echo
	echo "## Cost of events and tracing, same run: $(date -u '+%Y-%m-%d %H:%M UTC') — commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
	echo
	echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r)."
	echo "Command: \`make bench-otlp\` (DURATION=$DURATION ROUNDS=$ROUNDS CONNECTIONS=$CONNECTIONS"
	echo "ACCOUNTS=$ACCOUNTS MODES=\"$MODES\" BATCH=$BATCH BATCH_CONNECTIONS=$BATCH_CONNECTIONS PERF=$PERF): per run"
	echo "a fresh data directory (the journaled store) and kobod (log level warn), then"
	echo "\`build/kobo-bench $(bench_args single | sed 's/ --json//')\` (single) or"
	echo "\`... $(bench_args batch | sed 's/ --json//')\` (batch): uniform transfers, closed loop,"
	echo "verified. Configurations in turn each round, the first one rotating: noevents ="
	echo "build/bench-noevents/kobod (no event rows); off = build/kobod (events, no OTEL_*); otlp ="
	echo "OTEL_EXPORTER_OTLP_ENDPOINT at \`otlp_receiver.py --sink\` on this machine (no parsing),"
	echo "every request sampled, OTEL_BSP_SCHEDULE_DELAY=1000; otlp-1pct = otlp with traceidratio 0.01."
	echo "Target (issue 13): events and tracing cost at most 10 % of throughput (ratio >= 0.90)."
	echo "Spans exported/dropped: kobod's counters when kobo-bench has ended (so they include the spans"
	echo "of its setup and verify requests, not only the load's; the last batch is flushed at shutdown,"
	echo "after). The sink got ${sink_spans:-?} spans in ${sink_posts:-?} posts in all."
	echo
	echo "$table"
	if [[ -n $perf_top ]]; then
		echo
		echo '```'
		echo "$perf_top"
		echo '```'
	fi
} >>"$OUT"
echo >&2
echo "$table"
[[ -z $perf_top ]] || { echo; echo "$perf_top"; }
echo "bench-otlp: the sink got ${sink_spans:-?} spans in ${sink_posts:-?} posts; appended to $OUT" >&2
