#!/usr/bin/env bash
# Installs the Debian packages Kobo needs, only those missing.
#   install-deps.sh build   libraries and tools to build and run
#   install-deps.sh test    plus what `make test` needs
#   install-deps.sh measure / bench-http   plus what the library comparisons need
# Why each one is there: README.md, "Dependencies".
set -euo pipefail

build_pkgs=(gcc make pkg-config
	libmicrohttpd-dev   # HTTP/1.1 server (poll mode, suspend/resume)
	libjansson-dev      # strict JSON parsing (rejects duplicates, big ints, bad UTF-8)
	libsqlite3-dev      # embedded store: one WAL file per shard
	libcurl4-openssl-dev # HTTP client in the kobo CLI
	libhttp-parser-dev  # response parsing in kobo-bench
	libpq-dev           # PostgreSQL store (client library only: `make run` needs no server)
	libsodium-dev       # API keys: random keys, keyed BLAKE2b hash, constant-time compare
	libxxhash-dev       # XXH3-128 frame checksums of the journal (src/store/journal)
)
test_pkgs=(
	libcmocka-dev       # unit tests
	clang libclang-rt-14-dev # libFuzzer + sanitizers for fuzz targets
	python3 python3-pytest   # system tests drive real kobod processes
	postgresql          # the server: tests start their own clusters (initdb, pg_basebackup)
	prometheus          # promtool: make test-rules checks the config and unit-tests the alerts
	python3-yaml        # tests/deploy reads the rules and the alert tests
	haproxy             # tests/deploy scrapes a real HAProxy's exporter for the names the alerts use
	prometheus-postgres-exporter # ... and postgres-exporter's, with deploy/prometheus's extra queries
)

measure_pkgs=(
	libcjson-dev libjson-c-dev libevent-dev wrk # only to compare libraries (make measure-libs)
)

bench_http_pkgs=(
	wrk valgrind libuv1-dev libh2o-evloop-dev libssl-dev # only to compare HTTP server libraries (make bench-http)
)

want=("${build_pkgs[@]}")
[ "${1:-build}" = test ] && want+=("${test_pkgs[@]}")
[ "${1:-build}" = measure ] && want+=("${measure_pkgs[@]}")
[ "${1:-build}" = bench-http ] && want+=("${bench_http_pkgs[@]}")

missing=()
for p in "${want[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}"
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
