#!/bin/sh
# check_haproxy.sh PIDFILE URL — keepalived's vrrp_script: 0 when the HAProxy
# of this host runs (its pidfile names a live process) and answers URL (its
# monitor-uri) within 1 s. A pidfile, not `pidof haproxy`: several HAProxy may
# share one pid namespace (scripts/fleet.sh runs both on one machine).
pidfile=$1
url=$2
[ -r "$pidfile" ] || exit 1
pid=$(cat "$pidfile") || exit 1
kill -0 "$pid" 2>/dev/null || exit 1
exec curl -fsS -o /dev/null -m 1 "$url"
