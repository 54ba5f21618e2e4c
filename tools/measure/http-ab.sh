#!/usr/bin/env bash
# A/B of two kobod builds' HTTP front end on this machine, alternating
# old/new (then new/old) ROUNDS times, same workload, one after the other:
#   OLD=/path/to/old/build NEW=build tools/measure/http-ab.sh [kobo-bench options...]
# (build OLD from another commit: git archive REV | tar -x -C DIR; make -C DIR all)
# Each run: a fresh kobod (KOBOD_ARGS added; OLD_ARGS / NEW_ARGS to one side
# only, e.g. OLD=build NEW=build NEW_ARGS="--http-threads 2"), kobo-bench from NEW for
# DURATION s over ACCOUNTS accounts, 64 connections unless given, verify on.
# Per run it prints transfers/s, p99, and the CPU the kobod threads used per
# request over the load window (from /proc/PID/task/*/stat, sampled when
# setup ends and DURATION s later): the libmicrohttpd threads (MHD-*) apart
# from the rest (writer, checkpointer). On a shared machine the CPU per
# request is the steadier number; throughput is bound by the writer.
# Every kobod and kobo-bench started here is stopped by pid on exit.
set -euo pipefail
OLD=${OLD:?directory of the old build}; NEW=${NEW:-build}
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-8}; ACCOUNTS=${ACCOUNTS:-10000}
KOBOD_ARGS=${KOBOD_ARGS:-}; OLD_ARGS=${OLD_ARGS:-}; NEW_ARGS=${NEW_ARGS:-}
bench_args=("$@")
[[ ${#bench_args[@]} -gt 0 ]] || bench_args=(--connections 64)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kobo-http-ab.XXXXXX")
pids=()
stop() {
	local p=$1
	if kill -0 "$p" 2>/dev/null; then
		kill -TERM "$p" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
	fi
	wait "$p" 2>/dev/null || true
}
cleanup() { local p; for p in "${pids[@]}"; do stop "$p"; done; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
tck=$(getconf CLK_TCK)

# "MHD_ticks other_ticks" of pid's threads
ticks() {
	local mhd=0 other=0 f line comm rest
	for f in /proc/"$1"/task/*/stat; do
		line=$(cat "$f" 2>/dev/null) || continue
		comm=${line#*(}; comm=${comm%%)*}
		rest=${line##*) }
		# fields after ")": state(3) ... utime(14) stime(15) -> index 11, 12
		read -r -a a <<<"$rest"
		if [[ $comm == MHD* ]]; then mhd=$((mhd + a[11] + a[12])); else other=$((other + a[11] + a[12])); fi
	done
	echo "$mhd $other"
}

run() { # label dir extra-kobod-args
	local label=$1 dir=$2 extra=$3 d; d=$(mktemp -d "$tmp/run.XXXX")
	local port=$((20000 + RANDOM % 20000))
	# shellcheck disable=SC2086 # KOBOD_ARGS are words on purpose
	"$dir/kobod" --listen 127.0.0.1:$port --data "$d/data" --log-level warn $KOBOD_ARGS $extra >"$d/out" 2>"$d/err" &
	local kp=$!; pids+=("$kp")
	for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
	timeout -k 5 $((DURATION + 300)) "$NEW/kobo-bench" --url "http://127.0.0.1:$port" --duration "$DURATION" \
		--accounts "$ACCOUNTS" --json "${bench_args[@]}" >"$d/bench.json" 2>"$d/bench.err" &
	local bp=$!; pids+=("$bp")
	for _ in $(seq 3000); do grep -q 'setup done' "$d/bench.err" 2>/dev/null && break; kill -0 "$bp" 2>/dev/null || break; sleep 0.1; done
	local t0 t1; t0=$(ticks "$kp"); sleep "$DURATION"; t1=$(ticks "$kp")
	local rc=0; wait "$bp" || rc=$?
	stop "$kp"
	/usr/bin/python3 - "$d/bench.json" "$label" "$rc" "$t0" "$t1" "$tck" <<'PY'
import json, sys
path, label, rc, t0, t1, tck = sys.argv[1:7]
m0, o0 = map(int, t0.split()); m1, o1 = map(int, t1.split()); tck = int(tck)
try:
    r = json.load(open(path))
except Exception:
    print(f"{label}: failed (exit {rc})"); sys.exit(0)
req = r["requests"] or 1
v = r.get("verify") or {}
us = lambda t: (t / tck) * 1e6 / req
print(f"{label}: {r['transfers_per_s']:8.0f} transfers/s  {r['requests_per_s']:8.0f} req/s  "
      f"p99 {r['latency_us']['p99'] / 1000:7.2f} ms  HTTP thread {us(m1 - m0):6.1f} µs/req "
      f"({(m1 - m0) / tck / r['duration_s'] * 100:4.0f} % core)  other {us(o1 - o0):6.1f} µs/req  "
      f"verify {'ok' if v.get('ok') else v or 'skipped'}")
PY
}
echo "http-ab: OLD=$OLD NEW=$NEW rounds=$ROUNDS duration=$DURATION accounts=$ACCOUNTS kobod=[$KOBOD_ARGS] old+[$OLD_ARGS] new+[$NEW_ARGS] bench=[${bench_args[*]}]"
echo "load: $(uptime)"
for r in $(seq "$ROUNDS"); do
	if (( r % 2 )); then run old "$OLD" "$OLD_ARGS"; run new "$NEW" "$NEW_ARGS"
	else run new "$NEW" "$NEW_ARGS"; run old "$OLD" "$OLD_ARGS"; fi
done
echo "load: $(uptime)"
