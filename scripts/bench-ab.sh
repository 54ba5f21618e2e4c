#!/usr/bin/env bash
# A/B of two kobod builds on this machine, one after the other, same workload,
# then ../shared/peers/redis_lua.sh (uniform, 64 connections, 1 in flight):
# 1 shard, and 2 shards with 10 % cross-shard, kobo-bench flat out for 8 s.
#   OLD=/path/to/old/build NEW=build scripts/bench-ab.sh
# (build OLD from another commit with: git archive REV | tar -x -C DIR; make -C DIR all)
set -u
OLD=${OLD:?directory of the old build}; NEW=${NEW:-build}
run() { # label kobod bench shards extra...
	local label=$1 kobod=$2 bench=$3 shards=$4; shift 4
	local dir; dir=$(mktemp -d /tmp/ab.XXXX)
	local port=$((20000 + RANDOM % 20000))
	"$kobod" --listen 127.0.0.1:$port --data "$dir/data" --shards "$shards" --log-level warn >/dev/null 2>"$dir/err" &
	local pid=$!
	for _ in $(seq 100); do curl -sf http://127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
	local out; out=$("$bench" --url http://127.0.0.1:$port --duration 8 --shards "$shards" --json "$@" 2>/dev/null | tail -1)
	kill -TERM $pid; wait $pid 2>/dev/null
	rm -rf "$dir"
	echo "$label shards=$shards $* :: $(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print({k:d[k] for k in d if k in ("throughput","transfers_per_s","tps","p50_ms","p99_ms","verified","ok")} or list(d)[:12])' 2>&1)"
}
for side in old new; do
	if [ $side = old ]; then dir=$OLD; else dir=$NEW; fi
	K=$dir/kobod; B=$dir/kobo-bench
	run $side $K $B 1
	run $side $K $B 2 --cross-shard 10
done
# The peer a user would write instead, in the same run: ratios, not absolutes.
peers=$(cd "$(dirname "$0")/../../shared/peers" 2>/dev/null && pwd || true)
if [ -n "$peers" ] && [ -x "$peers/redis_lua.sh" ]; then
	"$peers/redis_lua.sh" uniform 8 64 1 10000 2>/dev/null | tail -1
fi
