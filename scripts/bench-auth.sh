#!/usr/bin/env bash
# `make bench-auth`: what API keys and rate limits cost kobod.
#
# The same kobo-bench workload against three configurations of build/kobod,
# one after the other, ROUNDS times in turn (off, key, key+ip, off, key, …)
# so that a drift of the machine hits each alike:
#
#   off      --auth off (no Authorization header sent)
#   key      --auth required, kobo-bench --key with an admin key, and a
#            per-key limit (--rate-limit/--rate-burst RATE) far above what
#            the run reaches, so every request pays the GCRA check and none
#            is refused
#   key+ip   the same plus --ip-rate-limit/--ip-rate-burst RATE
#
# Each run gets a fresh data directory and a fresh kobod on a free loopback
# port (the key is made with `kobo key create --data DIR` while kobod runs,
# and used once kobod's keyring has it). Prints each run, the mean per
# configuration, the spread between rounds of one configuration (the
# machine's noise) and the ratios key/off and key+ip/off, for throughput and
# for kobod's CPU time per HTTP request (utime + stime from /proc over the
# whole kobo-bench run, setup included, divided by every request it sent:
# far less sensitive than throughput to other work on a shared machine, as
# time spent waiting for a core is not counted); appends a dated
# section to docs/benchmarks.md (BENCH_OUT). kobod is stopped by pid on
# exit, whatever happens.
#
#   DURATION=10 ROUNDS=2 CONNECTIONS=64 ACCOUNTS=10000 RATE=1000000 scripts/bench-auth.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CONNECTIONS=${CONNECTIONS:-64}
ACCOUNTS=${ACCOUNTS:-10000}
RATE=${RATE:-1000000}
OUT=${BENCH_OUT:-docs/benchmarks.md}

make --no-print-directory -j2 all

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kobo-bench-auth.XXXXXX")
kobod_pid=""
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
cleanup() { stop_kobod; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# kobod's CPU time so far, in clock ticks (utime + stime, /proc/PID/stat).
kobod_cpu_ticks() {
	awk '{ print $14 + $15 }' "/proc/$kobod_pid/stat"
}

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_kobod DIR PORT ARGS… — waits (30 s at most) for the ready line.
start_kobod() {
	local dir=$1 port=$2
	shift 2
	build/kobod --listen "127.0.0.1:$port" --data "$dir/data" --log-level warn "$@" \
		>"$dir/kobod.out" 2>"$dir/kobod.log" &
	kobod_pid=$!
	for _ in $(seq 300); do
		grep -q "kobod ready" "$dir/kobod.out" "$dir/kobod.log" 2>/dev/null && return 0
		kill -0 "$kobod_pid" 2>/dev/null || { echo "bench-auth: kobod exited at start:" >&2; cat "$dir/kobod.log" >&2; exit 3; }
		sleep 0.1
	done
	echo "bench-auth: kobod not ready after 30 s" >&2
	exit 3
}

# http_status URL [KEY] — the status of a GET, "000" when nothing answered.
http_status() {
	local auth=()
	[[ -n "${2:-}" ]] && auth=(-H "Authorization: Bearer $2")
	curl -s -o /dev/null -m 2 -w '%{http_code}' "${auth[@]}" "$1" 2>/dev/null || true
}

configs=(off key key+ip)
declare -A config_args=(
	[off]="--auth off"
	[key]="--auth required --rate-limit $RATE --rate-burst $RATE"
	[key+ip]="--auth required --rate-limit $RATE --rate-burst $RATE --ip-rate-limit $RATE --ip-rate-burst $RATE"
)
bench_args="--duration $DURATION --accounts $ACCOUNTS --connections $CONNECTIONS"

results=()   # "config round transfers_per_s p50_ms p99_ms verify"
for ((round = 1; round <= ROUNDS; round++)); do
	for c in "${configs[@]}"; do
		dir="$tmp/$c-$round"
		mkdir -p "$dir"
		port=$(free_port)
		url="http://127.0.0.1:$port"
		# shellcheck disable=SC2086 # the flags are words on purpose
		start_kobod "$dir" "$port" ${config_args[$c]}
		key=""
		if [[ $c != off ]]; then
			key=$(build/kobo key create --data "$dir/data" --name bench --scopes admin --json |
				python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
			# kobod's keyring takes a new key within its refresh (≤ 10 s).
			for _ in $(seq 120); do
				[[ $(http_status "$url/v1/accounts/bench-auth-probe" "$key") == 404 ]] && break
				sleep 0.1
			done
			[[ $(http_status "$url/v1/accounts/bench-auth-probe" "$key") == 404 ]] ||
				{ echo "bench-auth: kobod did not take the new key within 12 s" >&2; exit 3; }
			[[ $(http_status "$url/v1/accounts/bench-auth-probe") == 401 ]] ||
				{ echo "bench-auth: kobod --auth required answered without a key" >&2; exit 3; }
		fi
		echo "bench-auth: round $round, $c: kobod ${config_args[$c]}" >&2
		cpu0=$(kobod_cpu_ticks)
		rc=0
		# The key through the environment: not on a command line.
		# shellcheck disable=SC2086
		KOBO_API_KEY=$key build/kobo-bench --url "$url" --json $bench_args >"$dir/bench.json" 2>"$dir/bench.err" || rc=$?
		cpu1=$(kobod_cpu_ticks)
		stop_kobod
		if [[ $rc -ne 0 ]]; then
			echo "bench-auth: kobo-bench failed (exit $rc):" >&2
			tail -5 "$dir/bench.err" >&2
			exit "$rc"
		fi
		line=$(python3 - "$dir/bench.json" "$c" "$round" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" <<'PY'
import json, math, sys
r = json.load(open(sys.argv[1]))
v = r.get("verify") or {}
ok = "ok" if v.get("ok") and v.get("complete") else "FAILED"
errors = r["errors"]["http"] + r["errors"]["transport"]
# Every request of the run: setup (accounts + cash, funding batches), the
# load, and verify's reads (every acknowledged transfer, every account and
# the cash account).
accounts = r["accounts"]
setup = accounts + 1 + math.ceil(accounts / 1000)
requests = setup + r["requests"] + r["transfers_acked"] + accounts + 1
cpu_us = int(sys.argv[4]) / int(sys.argv[5]) * 1e6 / requests
print(sys.argv[2], sys.argv[3], f"{r['transfers_per_s']:.0f}", f"{r['latency_us']['p50'] / 1000:.2f}",
      f"{r['latency_us']['p99'] / 1000:.2f}", errors, ok, f"{cpu_us:.1f}")
PY
)
		echo "bench-auth:   $line" >&2
		results+=("$line")
		rm -rf "$dir/data"
	done
done

printf '%s\n' "${results[@]}" >"$tmp/results.txt"
table=$(python3 - "$tmp/results.txt" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = {}
for c, rnd, tps, p50, p99, errors, ok, cpu in rows:
    by.setdefault(c, []).append((float(tps), float(p50), float(p99), int(errors), ok, float(cpu)))
print("| configuration | transfers/s per round | mean | spread | p50 ms | p99 ms | kobod CPU µs/request per round | mean | errors | verify |")
print("|---|---|---:|---:|---:|---:|---|---:|---:|---|")
mean = {}
cpu_mean = {}
for c in ("off", "key", "key+ip"):
    runs = by[c]
    t = [r[0] for r in runs]
    mean[c] = sum(t) / len(t)
    spread = (max(t) - min(t)) / mean[c] * 100
    p50 = sum(r[1] for r in runs) / len(runs)
    p99 = sum(r[2] for r in runs) / len(runs)
    errs = sum(r[3] for r in runs)
    ok = "ok" if all(r[4] == "ok" for r in runs) else "FAILED"
    per_round = " / ".join(f"{x:,.0f}" for x in t)
    cpu = [r[5] for r in runs]
    cpu_mean[c] = sum(cpu) / len(cpu)
    cpu_rounds = " / ".join(f"{x:.1f}" for x in cpu)
    print(f"| {c} | {per_round} | {mean[c]:,.0f} | {spread:.1f} % | {p50:.2f} | {p99:.2f} | "
          f"{cpu_rounds} | {cpu_mean[c]:.1f} | {errs} | {ok} |")
print()
for c in ("key", "key+ip"):
    ratio = mean[c] / mean["off"]
    cpu_ratio = cpu_mean[c] / cpu_mean["off"]
    print(f"{c} / off: throughput {ratio:.3f} ({(ratio - 1) * 100:+.1f} %), "
          f"kobod CPU per request {cpu_ratio:.3f} ({(cpu_ratio - 1) * 100:+.1f} %)")
PY
)

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
	echo
	echo "## Auth cost: $(date -u '+%Y-%m-%d %H:%M UTC') — commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
	echo
	echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r), shared with other work."
	echo "Command: \`make bench-auth\` (DURATION=$DURATION ROUNDS=$ROUNDS): per run a fresh data directory"
	echo "and kobod (embedded SQLite, log level warn), then \`build/kobo-bench $bench_args\`"
	echo "(uniform transfers, closed loop, verified), the configurations in turn:"
	echo "off = \`--auth off\`; key = \`--auth required --rate-limit $RATE --rate-burst $RATE\` with an"
	echo "admin key (KOBO_API_KEY); key+ip = the same plus \`--ip-rate-limit $RATE --ip-rate-burst $RATE\`."
	echo "Spread: (max - min) / mean of one configuration's rounds, the machine's own noise."
	echo
	echo "$table"
} >>"$OUT"
echo >&2
echo "$table"
echo "bench-auth: appended to $OUT" >&2
