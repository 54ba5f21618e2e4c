#!/usr/bin/env bash
# Builds tools/measure/auth_path.c against the release objects and runs it:
# the request-path cost of an API key check (parse, ring lookup, keyed
# BLAKE2b, constant-time compare), alone. docs/benchmarks.md "Auth cost".
#   tools/measure/auth-path.sh [KEYS [CHECKS [THREADS]]]
set -euo pipefail
cd "$(dirname "$0")/../.."
make --no-print-directory -j2 build/measure/auth-path >/dev/null
build/measure/auth-path "$@"
