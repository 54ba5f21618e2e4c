#!/usr/bin/env bash
# User-space instructions per request of each bench/http edge server, under
# valgrind's callgrind: a count that, unlike CPU time, does not move with
# what else runs on the machine (`make bench-http` runs it after run.sh).
#   bench/http/instructions.sh BUILD_DIR
# Environment: DURATION (10 s of wrk per server), SERVERS (as run.sh).
# Per server: a baseline run (start, one request, stop) and a loaded run
# (wrk -t1 -c64 for DURATION s); instructions per request are
# (Ir loaded - Ir baseline) / (requests loaded - 1). Kernel work (system
# calls, wake-ups) is not in it: run.sh's sys time and syscalls/req are.
# valgrind runs one thread at a time, so the worker's batches differ from a
# native run; the event loop's share is what to compare.
# Every server and wrk started here is stopped by pid, also on failure.
set -euo pipefail
BUILD=${1:?usage: instructions.sh BUILD_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
DURATION=${DURATION:-10}
SERVERS=${SERVERS:-mhd-poll mhd-poll-pool2 mhd-epoll-pool2 h2o uv}
command -v valgrind >/dev/null || { echo "valgrind missing: skipping instruction counts"; exit 0; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kobo-bench-http-ir.XXXXXX")
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
body=$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$HERE/post.lua")

# "total memset jansson" instructions of a callgrind output file
buckets() {
	callgrind_annotate --auto=no --threshold=100 "$1" 2>/dev/null | sed -n '/file:function/,$p' |
	/usr/bin/python3 -c '
import re, sys
total = memset = jansson = 0
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+) \(.*\)\s+(.*)$", line)
    if not m:
        continue
    ir = int(m.group(1).replace(",", ""))
    total += ir
    if "memset" in m.group(2):
        memset += ir
    elif "libjansson" in m.group(2):
        jansson += ir
print(total, memset, jansson)'
}

# measure name seconds: prints "total memset jansson requests" (seconds 0: one request)
measure() {
	local name=$1 seconds=$2 port=$((20000 + RANDOM % 20000)) out cmd requests
	out=$(mktemp "$tmp/$name.XXXX")
	cmd=$(command_of "$name")
	# shellcheck disable=SC2086 # cmd is "program [mode]"
	valgrind --tool=callgrind --callgrind-out-file="$out.cg" $cmd "$port" 2>"$out" &
	local sp=$!; pids+=("$sp")
	for _ in $(seq 200); do curl -s -m 1 -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
	# Every run makes the same 404 probes above until the server is up,
	# then one transfer (baseline) or wrk's load.
	curl -s -m 10 -o /dev/null -d "$body" "http://127.0.0.1:$port/v1/transfers"
	requests=1
	if (( seconds > 0 )); then
		local wo; wo=$(timeout -k 5 $((seconds + 60)) wrk -t1 -c64 -d"${seconds}s" \
			-s "$HERE/post.lua" "http://127.0.0.1:$port" 2>&1 || true)
		requests=$((1 + $(awk '/requests in/ {print $1}' <<<"$wo")))
	fi
	stop "$sp"
	echo "$(buckets "$out.cg") $requests"
}

echo "instructions per request (callgrind, wrk -t1 -c64 -d${DURATION}s, minus a one-request baseline):"
echo "(memset: valgrind counts a \"rep stosb\" once per byte, so its figure is far above its native cost)"
echo "| server | instructions/request | of which memset | of which jansson | the rest (HTTP library, queue, replies, malloc) | requests under valgrind |"
echo "|---|---:|---:|---:|---:|---:|"
for name in $SERVERS; do
	read -r base_ir base_memset base_json base_n < <(measure "$name" 0)
	read -r load_ir load_memset load_json load_n < <(measure "$name" "$DURATION")
	n=$((load_n - base_n))
	if (( n > 0 && load_ir > base_ir )); then
		all=$(( (load_ir - base_ir) / n )) memset=$(( (load_memset - base_memset) / n ))
		json=$(( (load_json - base_json) / n ))
		echo "| $name | $all | $memset | $json | $((all - memset - json)) | $n |"
	else
		echo "| $name | failed (Ir $base_ir/$load_ir, requests $base_n/$load_n) | | | | |"
	fi
done
