#!/usr/bin/env bash
# Runs every unit test binary; prints one closing summary line.
set -u
passed=0 failed=0
for t in "$@"; do
	echo "== $t"
	if "$t"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $t"; fi
done
echo "unit: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
