#!/usr/bin/env bash
# Measures the JSON library candidates (tools/measure/json_*.c) on this machine.
set -euo pipefail
cd "$(dirname "$0")"
out=$(mktemp -d)
echo "| library | parse + extract 6 fields (µs) | money-relevant behaviour |"
echo "|---|---:|---|"
for lib in cjson:libcjson jsonc:json-c jansson:jansson; do
	name=${lib%%:*} pc=${lib##*:}
	cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror "json_$name.c" -o "$out/$name" $(pkg-config --cflags --libs "$pc")
	"$out/$name"
done
rm -rf "$out"

# HTTP servers under wrk: 5 s per run, 64 and 256 connections, wrk -t1.
if ! command -v wrk >/dev/null; then echo "wrk missing: skipping HTTP servers"; exit 0; fi
out=$(mktemp -d)
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror http_mhd.c -o "$out/mhd" $(pkg-config --cflags --libs libmicrohttpd jansson)
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror http_evhttp.c -o "$out/evhttp" $(pkg-config --cflags --libs libevent jansson)
echo
echo "| server | 64 connections (req/s, p99) | 256 connections (req/s, p99) |"
echo "|---|---|---|"
port=18980
for server in "mhd poll" "mhd epoll" "evhttp"; do
	set -- $server
	port=$((port + 1))
	if [ "$1" = mhd ]; then "$out/mhd" "$2" "$port" & else "$out/evhttp" "$port" & fi
	pid=$!
	sleep 0.5
	row="| $server |"
	for conns in 64 256; do
		res=$(timeout 20 wrk -t1 -c"$conns" -d5s --latency -s post.lua "http://127.0.0.1:$port/" 2>&1 || true)
		rps=$(awk '/Requests\/sec/ {print int($2)}' <<<"$res")
		p99=$(awk '$1=="99%" {print $2}' <<<"$res")
		row="$row ${rps:-stalled (0)} req/s, p99 ${p99:-n/a} |"
	done
	echo "$row"
	kill "$pid"; wait "$pid" 2>/dev/null || true
done
rm -rf "$out"
