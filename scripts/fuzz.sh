#!/usr/bin/env bash
# Runs each fuzzer for SECONDS on its corpus (tests/fuzz/corpus/NAME, seeds
# committed; new finds go to build/fuzz/corpus/NAME). Fails on any crash.
set -euo pipefail
seconds=$1; shift
for f in "$@"; do
	name=$(basename "$f")
	seeds=tests/fuzz/corpus/$name
	work=build/fuzz/corpus/$name
	mkdir -p "$work" "$seeds"
	echo "== fuzzing $name for ${seconds}s"
	"$f" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
		-artifact_prefix=build/fuzz/ -print_final_stats=1 "$work" "$seeds" 2>build/fuzz/$name.log \
		|| { tail -50 build/fuzz/$name.log; echo "fuzz: 0 passed, 1 failed"; exit 1; }
	grep -E 'stat::number_of_executed_units|Done' build/fuzz/$name.log | tail -2
done
