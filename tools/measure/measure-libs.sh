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
