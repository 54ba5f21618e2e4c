#!/usr/bin/env bash
# Runs one command against a throw-away PostgreSQL cluster: initdb in a temp
# dir (as the postgres user when root), a role owning database "kobo", the
# command run with KOBO_TEST_POSTGRES=<its URI>, then the cluster stopped and
# removed. Exits with the command's status. See tests/system/pgcluster.py.
#
#   scripts/pg-cluster.sh build/asan/tests/test_store_contract
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
exec /usr/bin/python3 "$(dirname "$0")/../tests/system/pgcluster.py" run -- "$@"
