#!/usr/bin/env bash
# restart-ids.sh — how long kobod (journal on) takes to start on a shard that
# holds N transfer ids (default 10,000,000), and its memory once started.
#
# Builds the shard with kobod (schema, shard map), stops it, inserts N
# transfer rows straight into shard-0.db with the sqlite3 module (one
# transaction; posted transfers between 1,000 accounts; balances are not
# made to agree: this measures the load, not the audit), then starts kobod
# and times it to /readyz, printing its journal_state_loaded line and RSS.
#
#   tools/measure/restart-ids.sh [N]     (release build: make all first)
#
# Every kobod started here is stopped by pid; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-10000000}
PY=/usr/bin/python3
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kobo-restart-ids.XXXXXX")
pid=""
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
port=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start() {
	build/kobod --listen "127.0.0.1:$port" --data "$tmp/data" --log-level info >"$tmp/out" 2>>"$tmp/err" &
	pid=$!
	for _ in $(seq 6000); do
		curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
		kill -0 "$pid" 2>/dev/null || { cat "$tmp/err" >&2; return 1; }
		sleep 0.05
	done
	return 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }
start
for i in $(seq 0 999); do
	curl -fs -X POST "http://127.0.0.1:$port/v1/accounts" -H 'Content-Type: application/json' \
		-d "{\"id\":\"acct$i\",\"currency\":\"NGN\",\"allow_negative\":true}" >/dev/null
done
stop
$PY - "$tmp/data/shard-0.db" "$N" <<'PY'
import sqlite3, sys, time
path, n = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(path, isolation_level=None)
db.execute("PRAGMA synchronous = OFF")
t = time.monotonic()
db.execute("BEGIN")
rows = ((f"t{i:012d}", f"acct{i % 1000}", f"acct{(i + 1) % 1000}", "NGN", 1, 1, 0, 0, 0,
         "posted", "{}", "", 1, 1) for i in range(n))
db.executemany("INSERT INTO transfers (id, from_id, to_id, currency, amount, posted_amount, "
               "pending, timeout_seconds, expires_at_ms, status, metadata, request_id, "
               "created_at_ms, updated_at_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
db.execute("COMMIT")
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
print(f"inserted {n} transfer rows in {time.monotonic() - t:.1f} s", file=sys.stderr)
PY
t0=$(date +%s%N)
start
t1=$(date +%s%N)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
echo "kobod ready on a shard of $N transfer ids in $(( (t1 - t0) / 1000000 )) ms; RSS $((rss / 1024)) MiB"
grep -h '"journal_recovered"\|"journal_state_loaded"' "$tmp/err" | tail -2
du -sh "$tmp/data/shard-0.db"
stop
