#!/usr/bin/env bash
# fleet.sh — the whole Kobo fleet on this one machine, in network namespaces.
#
#   fleet.sh up [--nodes N] [--shards S]   start it (N kobod 1–9, default 2;
#                                          S shards 1–8, default 1); prints
#                                          `url: http://VIP:PORT` when ready,
#                                          then `tls-url: https://VIP:TLS_PORT`
#                                          and `key: KEY` (an API key with
#                                          every scope; kobod --auth required)
#   fleet.sh exec CMD…                     run CMD in the client namespace
#   fleet.sh status                        one JSON object: every component
#   fleet.sh kill C | start C              C: lb-active lb-standby lb-1 lb-2
#   fleet.sh partition C | heal C             kobod-I pg-primary pg-standby
#                                             (shard 0; pg-primary-S for
#                                             shard S) pg-S-a pg-S-b
#                                             pg-S-monitor prometheus
#   fleet.sh down                          remove everything it made
#
# The contract is ../shared/API.md "The local fleet"; README "Operations:
# running a fleet" has the picture. Needs root (namespaces; PostgreSQL runs
# as the postgres user).
#
# TOPOLOGY. One namespace holds a bridge (the "switch"); every component
# has a namespace of its own with one veth (eth0) plugged into it, in
# 10.77.0.0/24. Nothing is routed off the bridge: no traffic leaves it.
#
#   .2  client      (exec)            .5  prometheus + postgres-exporter
#   .10 VIP (keepalived)              .11 lb-1   .12 lb-2  (HAProxy+keepalived)
#   .2I kobod-I                       .1S0 pg-S-monitor  .1S1 pg-S-a  .1S2 pg-S-b
#
# Per shard a pg_auto_failover formation: a monitor, two nodes (one primary,
# one synchronous standby). kobod gets `pg_autoctl show uri`'s multi-host
# URI (target_session_attrs=read-write) with TCP keepalives and
# tcp_user_timeout, so a connection to a primary that vanished from the
# network breaks within seconds instead of hanging.
#
# STATE. $FLEET_DIR (default /tmp/kobo-fleet): fleet.env (sizes), per
# component a directory with its logs, data and pid files (NAME.pid, the
# pid of a process started with setsid, so it leads its process group).
# Every wait is bounded; a failing `up` tears everything down, as does an
# interrupt.
#
# TLS. HAProxy terminates HTTPS on VIP:$TLS_PORT with a self-signed ECDSA
# certificate that `up` generates ($FLEET_DIR/tls/cert.pem, the one file a
# client needs: `curl --cacert`); `down` removes it with the rest. kobod
# stays plain HTTP behind the load balancers.
#
# FAULTS. kill = kill -9 of the component's process groups (pg nodes: the
# pg_autoctl keeper AND the postmaster, so it fails over instead of being
# restarted in place; a load balancer: HAProxy and keepalived, and its VIP
# goes with it as it would with a dead host). partition = its eth0 link down
# (tc netem is not available on this kind of machine); heal = link up.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FLEET_DIR=${FLEET_DIR:-/tmp/kobo-fleet}
NSP=${FLEET_NS_PREFIX:-kf}          # namespace names: $NSP-hub, $NSP-lb-1, …
NET=10.77.0
VIP=$NET.10
PORT=8080
TLS_PORT=8443
PGBIN=/usr/lib/postgresql/15/bin
KOBOD=${FLEET_KOBOD:-$ROOT/build/kobod}
KOBO_CLI=${FLEET_KOBO:-$ROOT/build/kobo}
PACKAGES=(haproxy keepalived postgresql-15 postgresql-15-auto-failover pg-auto-failover-cli
          prometheus prometheus-postgres-exporter iproute2 curl openssl)

log() { printf 'fleet: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# ---- Sizes and names. ----

NODES=2
SHARDS=1
load_env() { [ -r "$FLEET_DIR/fleet.env" ] && . "$FLEET_DIR/fleet.env"; return 0; }

lb_ip()      { echo "$NET.1$1"; }                   # lb_ip 1 → .11
kobod_ip()   { echo "$NET.2$1"; }                   # kobod_ip 1 → .21
pg_ip()      { # pg_ip SHARD monitor|a|b
	local base=$((100 + 10 * $1))
	case $2 in monitor) echo "$NET.$base" ;; a) echo "$NET.$((base + 1))" ;; b) echo "$NET.$((base + 2))" ;; esac
}
# Every PostgreSQL listens on a port of its own, 5000 + its address's last
# byte (pg-0-a: 10.77.0.101:5101): the namespaces share the file system, so
# same-port instances would collide on /var/run/postgresql/.s.PGSQL.PORT.
pg_port() { local ip; ip=$(pg_ip "$1" "$2"); echo $((5000 + ${ip##*.})); }
pg_addr() { echo "$(pg_ip "$1" "$2"):$(pg_port "$1" "$2")"; }
CLIENT_IP=$NET.2
PROM_IP=$NET.5

# Every component that has a namespace, in start order.
components() {
	local s i
	echo client
	for ((s = 0; s < SHARDS; s++)); do echo "pg-$s-monitor" "pg-$s-a" "pg-$s-b"; done
	for ((i = 1; i <= NODES; i++)); do echo "kobod-$i"; done
	echo lb-1 lb-2 prometheus
}
comp_ip() {
	case $1 in
	client) echo "$CLIENT_IP" ;;
	prometheus) echo "$PROM_IP" ;;
	lb-[12]) lb_ip "${1#lb-}" ;;
	kobod-*) kobod_ip "${1#kobod-}" ;;
	pg-*-monitor) local s=${1#pg-}; pg_ip "${s%-monitor}" monitor ;;
	pg-*-[ab]) local s=${1#pg-}; pg_ip "${s%-*}" "${1##*-}" ;;
	*) return 1 ;;
	esac
}
ns() { echo "$NSP-$1"; }
dir() { echo "$FLEET_DIR/$1"; }
in_ns() { local c=$1; shift; ip netns exec "$(ns "$c")" "$@"; }
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

# ---- Processes: started with setsid (each leads its process group), pids in files. ----

pid_of() { [ -r "$(dir "$1")/$2.pid" ] && cat "$(dir "$1")/$2.pid" || true; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# spawn COMPONENT PROC [env NAME=VALUE…] CMD… — runs CMD in COMPONENT's
# namespace, detached, logging to $(dir C)/PROC.log, pid in PROC.pid.
spawn() {
	local c=$1 p=$2
	shift 2
	ip netns exec "$(ns "$c")" setsid "$@" >>"$(dir "$c")/$p.log" 2>&1 </dev/null &
	echo $! >"$(dir "$c")/$p.pid"
}
spawn_pg() { # spawn_pg COMPONENT PROC CMD… as the postgres user with the node's XDG dirs
	local c=$1 p=$2 d
	d=$(dir "$1")
	shift 2
	spawn "$c" "$p" setpriv --reuid=postgres --regid=postgres --init-groups \
		env HOME="$d" XDG_CONFIG_HOME="$d/xdg/config" XDG_DATA_HOME="$d/xdg/data" \
		XDG_RUNTIME_DIR="$d/xdg/run" PATH="$PGBIN:/usr/sbin:/usr/bin:/sbin:/bin" "$@"
}
pg_do() { # pg_do COMPONENT CMD… — pg_autoctl (or psql) as postgres in COMPONENT's namespace, foreground
	local c=$1 d
	d=$(dir "$1")
	shift
	in_ns "$c" setpriv --reuid=postgres --regid=postgres --init-groups \
		env HOME="$d" XDG_CONFIG_HOME="$d/xdg/config" XDG_DATA_HOME="$d/xdg/data" \
		XDG_RUNTIME_DIR="$d/xdg/run" PATH="$PGBIN:/usr/sbin:/usr/bin:/sbin:/bin" "$@"
}

# kill_group PID SIGNAL — the process group PID leads, and PID itself.
kill_group() {
	[ -n "$1" ] || return 0
	kill "-$2" -- "-$1" 2>/dev/null || true
	kill "-$2" "$1" 2>/dev/null || true
}

# The processes of a component (pid-file names).
procs_of() {
	case $1 in
	lb-*) echo haproxy keepalived ;;
	kobod-*) echo kobod ;;
	pg-*) echo keeper ;;
	prometheus)
		local s x
		echo prometheus
		for ((s = 0; s < SHARDS; s++)); do for x in a b; do echo "exporter-pg-$s-$x"; done; done ;;
	*) ;;
	esac
}
postmaster_of() { [ -r "$(dir "$1")/data/postmaster.pid" ] && head -1 "$(dir "$1")/data/postmaster.pid" || true; }

# wait_for SECONDS WHAT CMD… — polls CMD every 0.2 s; fails after SECONDS.
wait_for() {
	local limit=$1 what=$2 t0=$SECONDS
	shift 2
	until "$@" >/dev/null 2>&1; do
		((SECONDS - t0 < limit)) || { log "timed out after ${limit}s waiting for $what"; return 1; }
		sleep 0.2
	done
}

http_code() { # http_code URL — from the client namespace
	in_ns client curl -s -o /dev/null -m 1 -w '%{http_code}' "$1" 2>/dev/null || true
}
http_ok() { [ "$(http_code "$1")" = 200 ]; }

# ---- Installation. ----

ensure_packages() {
	local missing=() p
	for p in "${PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing: ${missing[*]}"
	# Debian would start each package's own service (haproxy on :80, …) in
	# the host's namespace: a policy-rc.d that forbids it, only if none exists.
	local policy_made=
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		policy_made=1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
	local rc=$?
	[ -n "$policy_made" ] && rm -f /usr/sbin/policy-rc.d
	return $rc
}

ensure_kobod() {
	[ -x "$KOBOD" ] && [ -x "$ROOT/build/kobo" ] && return 0
	log "building kobod (make all)"
	"$ROOT/scripts/install-deps.sh" build >&2
	make -C "$ROOT" -j2 all >&2
}

# ---- Network. ----

net_up() {
	ip netns add "$(ns hub)"
	ip -n "$(ns hub)" link set lo up
	ip -n "$(ns hub)" link add br0 type bridge
	ip -n "$(ns hub)" link set br0 up
	local c
	for c in $(components); do
		local n v
		n=$(ns "$c")
		v="v-$c"
		ip netns add "$n"
		ip -n "$n" link set lo up
		ip -n "$(ns hub)" link add "$v" type veth peer name eth0 netns "$n"
		ip -n "$(ns hub)" link set "$v" master br0 up
		ip -n "$n" addr add "$(comp_ip "$c")/24" dev eth0
		ip -n "$n" link set eth0 up
		mkdir -p "$(dir "$c")"
	done
}

# ---- PostgreSQL: one pg_auto_failover formation per shard. ----

monitor_uri() { echo "postgres://autoctl_node@$(pg_addr "$1" monitor)/pg_auto_failover?sslmode=disable"; }

pg_monitor_start() {
	local s=$1 c="pg-$1-monitor" d
	d=$(dir "$c")
	if [ ! -e "$d/data/PG_VERSION" ]; then
		mkdir -p "$d/xdg/run"
		chown -R postgres: "$d"
		pg_do "$c" timeout 60 pg_autoctl create monitor --pgdata "$d/data" --pgport "$(pg_port "$s" monitor)" \
			--hostname "$(pg_ip "$s" monitor)" --auth trust --no-ssl >>"$d/create.log" 2>&1 ||
			{ tail -5 "$d/create.log" >&2; return 1; }
		# Fast failure detection (deploy/postgres/monitor.conf: defaults are
		# tens of seconds). Read at the monitor's start.
		cat "$ROOT/deploy/postgres/monitor.conf" >>"$d/data/postgresql.auto.conf"
	fi
	spawn_pg "$c" keeper pg_autoctl run --pgdata "$d/data"
}

pg_node_create() { # pg_node_create SHARD a|b
	local s=$1 x=$2 c="pg-$1-$2" d
	d=$(dir "$c")
	[ -e "$d/data/PG_VERSION" ] && [ -e "$d/created" ] && return 0
	mkdir -p "$d/xdg/run"
	chown -R postgres: "$d"
	pg_do "$c" timeout 100 pg_autoctl create postgres --pgdata "$d/data" --pgport "$(pg_port "$s" "$x")" \
		--hostname "$(pg_ip "$s" "$x")" --name "$c" --monitor "$(monitor_uri "$s")" \
		--dbname kobo --auth trust --no-ssl --pg-hba-lan >>"$d/create.log" 2>&1 ||
		{ tail -5 "$d/create.log" >&2; return 1; }
	# The keeper's own timeouts (deploy/postgres/README.md): a primary that
	# can reach neither the monitor nor its standby demotes itself after 5 s.
	local k v
	while read -r k v; do
		pg_do "$c" timeout 20 pg_autoctl config set --pgdata "$d/data" "$k" "$v" >/dev/null
	done < <(grep -v '^#' "$ROOT/deploy/postgres/keeper.conf" | grep .)
	# Replication links to a peer that vanished are noticed in 5 s (default
	# 60 s), so a partitioned primary sees it has lost its standby.
	cat "$ROOT/deploy/postgres/node.conf" >>"$d/data/postgresql.auto.conf"
	# kobod (and the exporter, kobo audit) log in as kobo from the fleet's
	# subnet; pg_autoctl's --pg-hba-lan only admits its own user. Trust:
	# nothing outside the fleet's namespaces can reach it (production:
	# scram-sha-256, deploy/postgres/README.md).
	echo "host kobo kobo $NET.0/24 trust # scripts/fleet.sh" >>"$d/data/pg_hba.conf"
	touch "$d/created"
}
pg_node_start() { spawn_pg "pg-$1-$2" keeper pg_autoctl run --pgdata "$(dir "pg-$1-$2")/data"; }

# pg_states SHARD — "name reported assigned" per node, from the monitor.
pg_states() {
	local s=$1
	in_ns client timeout 10 env PGCONNECT_TIMEOUT=2 "$PGBIN/psql" -X -qAt -F' ' -v ON_ERROR_STOP=1 \
		"$(monitor_uri "$s")" \
		-c "select nodename, reportedstate, goalstate from pgautofailover.node order by nodeid" 2>/dev/null
}
pg_single() { pg_states "$1" | grep -q ' single single$'; }
pg_formation_ready() { # primary + secondary, both reported as assigned
	local st
	st=$(pg_states "$1") || return 1
	echo "$st" | grep -q ' primary primary$' && echo "$st" | grep -q ' secondary secondary$'
}
pg_node_with_role() { # pg_node_with_role SHARD primary|standby → component name (or nothing)
	local st
	st=$(pg_states "$1") || return 0
	if [ "$2" = primary ]; then
		echo "$st" | awk '$3 ~ /^(primary|wait_primary|single|join_primary|apply_settings)$/ {print $1; exit}'
	else
		echo "$st" | awk '$3 ~ /^(secondary|catchingup|wait_standby|report_lsn|prepare_promotion|stop_replication)$/ {print $1; exit}'
	fi
}

kobo_uri() { # kobo_uri SHARD — what kobod and `kobo audit` get for a shard
	local s=$1
	echo "postgresql://kobo@$(pg_addr "$s" a),$(pg_addr "$s" b)/kobo?target_session_attrs=read-write&sslmode=disable&connect_timeout=2&keepalives=1&keepalives_idle=2&keepalives_interval=1&keepalives_count=2&tcp_user_timeout=4000"
}

pg_role_setup() { # the login role kobod uses (deploy/postgres/kobo-role.sql), on the primary
	local s=$1 p
	p=$(pg_node_with_role "$s" primary)
	[ -n "$p" ] || return 1
	in_ns client timeout 20 env PGCONNECT_TIMEOUT=3 "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 \
		"postgresql://postgres@$(comp_ip "$p"):$((5000 + $(comp_ip "$p" | sed 's/.*\.//')))/kobo?sslmode=disable" \
		-f "$ROOT/deploy/postgres/kobo-role.sql" >/dev/null
}

# ---- TLS: a self-signed certificate for the VIP, new on every `up`. ----

# tls_cert — $FLEET_DIR/tls/cert.pem (the certificate, what clients trust),
# key.pem (its P-256 private key, 0600) and haproxy.pem (both, as HAProxy's
# `crt` wants them). Valid 30 days, for the VIP's address.
tls_cert() {
	local d=$FLEET_DIR/tls
	mkdir -p "$d"
	chmod 0755 "$d"
	(umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-days 30 -subj "/O=Kobo local fleet/CN=$VIP" \
		-addext "subjectAltName=IP:$VIP" -addext "extendedKeyUsage=serverAuth" \
		-keyout "$d/key.pem" -out "$d/cert.pem" 2>"$d/openssl.log" &&
		cat "$d/cert.pem" "$d/key.pem" >"$d/haproxy.pem") || { cat "$d/openssl.log" >&2; return 1; }
	chmod 0644 "$d/cert.pem"
}

# ---- Load balancers, kobod, Prometheus. ----

lb_start() {
	local i=$1 c="lb-$1" d j
	d=$(dir "$c")
	j=$((3 - i))
	mkdir -p "$d/run" "$d/errors"
	cp "$ROOT/deploy/haproxy/errors/"*.http "$d/errors/"
	local servers="" k
	for ((k = 1; k <= NODES; k++)); do servers+="    server kobod-$k $(kobod_ip "$k"):$PORT\n"; done
	awk -v servers="$servers" '
		/# @servers-begin/ { print; printf "%s", servers; skip = 1; next }
		/# @servers-end/ { skip = 0 }
		!skip' "$ROOT/deploy/haproxy/haproxy.cfg" | sed 's/\\n/\n/g' >"$d/haproxy.cfg"
	sed -e "s|^\$STATE=.*|\$STATE=$([ "$i" = 1 ] && echo MASTER || echo BACKUP)|" \
		-e "s|^\$PRIORITY=.*|\$PRIORITY=$([ "$i" = 1 ] && echo 150 || echo 100)|" \
		-e "s|^\$SELF_IP=.*|\$SELF_IP=$(lb_ip "$i")|" \
		-e "s|^\$PEER_IP=.*|\$PEER_IP=$(lb_ip "$j")|" \
		-e "s|^\$VIP=.*|\$VIP=$VIP/24|" \
		-e "s|^\$ROUTER_ID=.*|\$ROUTER_ID=$c|" \
		-e "s|^\$CHECK=.*|\$CHECK=$d/check_haproxy.sh $d/run/haproxy.pid http://$(lb_ip "$i"):8404/alive|" \
		"$ROOT/deploy/keepalived/keepalived.conf" >"$d/keepalived.conf"
	install -m 0755 "$ROOT/deploy/keepalived/check_haproxy.sh" "$d/check_haproxy.sh"
	# HAProxy binds the VIP on both hosts, also where keepalived has not put it.
	in_ns "$c" sysctl -qw net.ipv4.ip_nonlocal_bind=1
	spawn "$c" haproxy env LB_NAME="$c" LB_ADDR="$(lb_ip "$i")" LB1_ADDR="$(lb_ip 1)" LB2_ADDR="$(lb_ip 2)" \
		KOBO_VIP="$VIP" KOBO_PORT="$PORT" KOBO_TLS_PORT="$TLS_PORT" LB_TLS_CERT="$FLEET_DIR/tls/haproxy.pem" \
		LB_RUN_DIR="$d/run" LB_ERRORS_DIR="$d/errors" \
		haproxy -db -f "$d/haproxy.cfg"
	cp "$d/haproxy.pid" "$d/run/haproxy.pid"
	spawn "$c" keepalived keepalived --dont-fork --log-console --vrrp -f "$d/keepalived.conf" \
		-p "$d/run/keepalived.pid" -r "$d/run/vrrp.pid" -c "$d/run/checkers.pid"
}

kobod_spawn() {
	local i=$1 c="kobod-$1" args=() s
	for ((s = 0; s < SHARDS; s++)); do args+=(--postgres "$(kobo_uri "$s")"); done
	# --auth required: the default on a non-loopback address, said anyway.
	# /readyz (HAProxy's check) and /metrics (Prometheus) need no key.
	spawn "$c" kobod "$KOBOD" --listen "$(kobod_ip "$i"):$PORT" --log-level warn --auth required \
		"${args[@]}"
}

# ---- The fleet's API key. ----

ALL_SCOPES=accounts:read,accounts:write,transfers:read,transfers:write,admin

# fleet_key — one key with every scope, made by `kobo key create` in shard
# 0's database (after the first kobod created the schema: the command never
# does), kept in $FLEET_DIR/key (0600) so `up` on a running fleet prints it
# again; `down` removes it with the rest.
fleet_key() {
	local args=() s out
	for ((s = 0; s < SHARDS; s++)); do args+=(--postgres "$(kobo_uri "$s")"); done
	out=$(in_ns client timeout 60 "$KOBO_CLI" key create --name fleet --scopes "$ALL_SCOPES" \
		"${args[@]}" --json 2>"$FLEET_DIR/key.log") || { cat "$FLEET_DIR/key.log" >&2; return 1; }
	(umask 077 && sed -n 's/.*"key":"\(kobo_[0-9a-f_]*\)".*/\1/p' <<<"$out" >"$FLEET_DIR/key")
	[ -s "$FLEET_DIR/key" ] || { log "kobo key create printed no key"; return 1; }
}
fleet_key_text() { [ -r "$FLEET_DIR/key" ] && cat "$FLEET_DIR/key" || true; }
# key_ok — the key works through the VIP (a GET of an unknown account is a
# 404, not a 401): every kobod's keyring has it.
key_ok() {
	local code
	code=$(in_ns client curl -s -o /dev/null -m 1 -w '%{http_code}' \
		-H "Authorization: Bearer $(fleet_key_text)" "http://$VIP:$PORT/v1/accounts/fleet:key-probe" 2>/dev/null || true)
	[ "$code" = 404 ]
}

# kobod_start I — starts kobod-I and waits (30 s at most) until it is ready.
# A kobod that exits while starting is started again, up to 5 times, as
# deploy/systemd/kobod.service's Restart=on-failure would; each restart is
# reported on stderr ("kobod-I exited while starting") and counted in
# $(dir kobod-I)/restarts.
kobod_start() {
	local i=$1 c="kobod-$1" attempt t0
	for ((attempt = 1; attempt <= 5; attempt++)); do
		kobod_spawn "$i"
		t0=$SECONDS
		while ((SECONDS - t0 < 30)); do
			http_ok "http://$(kobod_ip "$i"):$PORT/readyz" && return 0
			alive "$(pid_of "$c" kobod)" || break
			sleep 0.2
		done
		if alive "$(pid_of "$c" kobod)"; then
			log "timed out after 30s waiting for $c ready"
			return 1
		fi
		echo $attempt >>"$(dir "$c")/restarts"
		log "$c exited while starting (attempt $attempt/5): $(tail -n 2 "$(dir "$c")/kobod.log" | head -c 400)"
		sleep 1
	done
	return 1
}

# One postgres-exporter per PostgreSQL node (one exporter with several
# DSNs reports duplicate series), on the prometheus namespace's address,
# port 9100 + the node's last address byte (pg-0-a: 9201).
exporter_port() { local ip; ip=$(pg_ip "$1" "$2"); echo $((9100 + ${ip##*.})); }

prometheus_start() {
	local d s x t_k="" t_pg="" k
	d=$(dir prometheus)
	mkdir -p "$d/tsdb"
	chown -R prometheus: "$d/tsdb"
	mkdir -p "$d/rules"
	cp "$ROOT"/deploy/prometheus/rules/*.yml "$d/rules/"
	cp "$ROOT/deploy/prometheus/postgres-exporter-queries.yml" "$d/"
	for ((k = 1; k <= NODES; k++)); do t_k+="${t_k:+, }'$(kobod_ip "$k"):$PORT'"; done
	for ((s = 0; s < SHARDS; s++)); do
		for x in a b; do t_pg+="${t_pg:+, }'$PROM_IP:$(exporter_port "$s" "$x")'"; done
	done
	awk -v kobod="      - targets: [$t_k]" -v pg="      - targets: [$t_pg]" '
		/# @kobod-begin/ { print; print kobod; skip = 1; next }
		/# @postgres-begin/ { print; print pg; skip = 1; next }
		/# @(kobod|postgres)-end/ { skip = 0 }
		!skip' "$ROOT/deploy/prometheus/prometheus.yml" >"$d/prometheus.yml"
	sed -i "s|\['10.77.0.11:8404', '10.77.0.12:8404'\]|['$(lb_ip 1):8404', '$(lb_ip 2):8404']|" "$d/prometheus.yml"
	alive "$(pid_of prometheus prometheus)" ||
		spawn prometheus prometheus setpriv --reuid=prometheus --regid=prometheus --init-groups \
			prometheus --config.file="$d/prometheus.yml" --storage.tsdb.path="$d/tsdb" \
			--storage.tsdb.retention.time=1d --web.listen-address="$PROM_IP:9090"
	for ((s = 0; s < SHARDS; s++)); do
		for x in a b; do
			alive "$(pid_of prometheus "exporter-pg-$s-$x")" && continue
			spawn prometheus "exporter-pg-$s-$x" setpriv --reuid=prometheus --regid=prometheus --init-groups \
				env DATA_SOURCE_NAME="postgresql://kobo@$(pg_addr "$s" "$x")/kobo?sslmode=disable&connect_timeout=2" \
				prometheus-postgres-exporter --web.listen-address="$PROM_IP:$(exporter_port "$s" "$x")" \
				--extend.query-path="$d/postgres-exporter-queries.yml"
		done
	done
}

vip_holder() { # lb-1, lb-2 or nothing
	local i
	for i in 1 2; do
		ip -n "$(ns "lb-$i")" -4 addr show dev eth0 2>/dev/null | grep -q "inet $VIP/" && { echo "lb-$i"; return 0; }
	done
	return 0
}

print_lines() {
	echo "url: http://$VIP:$PORT"
	echo "tls-url: https://$VIP:$TLS_PORT"
	echo "key: $(fleet_key_text)"
}

# ---- up / down. ----

fleet_exists() { [ -e "$FLEET_DIR/fleet.env" ] && ip netns list | grep -q "^$(ns hub)\b"; }

comp_running() { # every process of the component alive
	local p
	for p in $(procs_of "$1"); do alive "$(pid_of "$1" "$p")" || return 1; done
}

cmd_up() {
	while [ $# -gt 0 ]; do
		case $1 in
		--nodes) NODES=${2:?}; shift 2 ;;
		--shards) SHARDS=${2:?}; shift 2 ;;
		*) die "up: unknown option $1 (usage: up [--nodes N] [--shards S])" ;;
		esac
	done
	[[ $NODES =~ ^[1-9]$ ]] || die "--nodes must be 1..9"
	[[ $SHARDS =~ ^[1-8]$ ]] || die "--shards must be 1..8"
	[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
	if fleet_exists; then
		local want_n=$NODES want_s=$SHARDS
		load_env
		[ "$want_n" = "$NODES" ] && [ "$want_s" = "$SHARDS" ] ||
			die "a fleet of $NODES kobod / $SHARDS shards is running ($FLEET_DIR): 'down' first"
		local c missing=0
		for c in $(components); do comp_running "$c" || missing=1; done
		if [ $missing = 0 ] && wait_for 10 "the VIP" http_ok "http://$VIP:$PORT/readyz"; then
			print_lines
			return 0
		fi
		die "the fleet in $FLEET_DIR is not whole: 'start' its parts, or 'down' and 'up'"
	fi
	ensure_packages
	ensure_kobod
	trap 'log "up failed: tearing down"; cmd_down >/dev/null 2>&1 || true; exit 1' ERR
	trap 'log "interrupted: tearing down"; cmd_down >/dev/null 2>&1 || true; exit 130' INT TERM
	rm -rf "$FLEET_DIR"
	mkdir -p "$FLEET_DIR"
	chmod 0755 "$FLEET_DIR"
	printf 'NODES=%s\nSHARDS=%s\n' "$NODES" "$SHARDS" >"$FLEET_DIR/fleet.env"
	net_up
	tls_cert
	local s i
	log "PostgreSQL: $SHARDS formation(s)"
	for ((s = 0; s < SHARDS; s++)); do pg_monitor_start "$s"; done
	for ((s = 0; s < SHARDS; s++)); do
		wait_for 30 "monitor $s" in_ns client env PGCONNECT_TIMEOUT=1 "$PGBIN/pg_isready" -q -h "$(pg_ip "$s" monitor)" -p "$(pg_port "$s" monitor)"
		pg_node_create "$s" a
		pg_node_start "$s" a
	done
	for ((s = 0; s < SHARDS; s++)); do
		wait_for 60 "pg-$s-a single" pg_single "$s"
		pg_node_create "$s" b
		pg_node_start "$s" b
	done
	for ((s = 0; s < SHARDS; s++)); do
		wait_for 90 "shard $s primary + secondary" pg_formation_ready "$s"
		pg_role_setup "$s"
	done
	log "kobod ×$NODES, load balancers, Prometheus"
	for ((i = 1; i <= NODES; i++)); do kobod_start "$i"; done
	fleet_key
	lb_start 1
	lb_start 2
	wait_for 20 "the VIP" http_ok "http://$VIP:$PORT/readyz"
	# Every kobod's keyring refreshes within seconds (README "API keys").
	wait_for 20 "the key accepted through the VIP" key_ok
	prometheus_start
	wait_for 30 "prometheus" http_ok "http://$PROM_IP:9090/-/ready"
	trap - ERR INT TERM
	print_lines
}

cmd_down() {
	set +e # tear down whatever is there, past any error
	load_env
	local c p pid
	# Processes first (TERM, then KILL after 5 s), by pid and process group.
	if [ -d "$FLEET_DIR" ]; then
		for c in $(components); do
			for p in $(procs_of "$c"); do kill_group "$(pid_of "$c" "$p")" TERM; done
		done
		local t0=$SECONDS
		while ((SECONDS - t0 < 5)); do
			local any=0
			for c in $(components); do
				for p in $(procs_of "$c"); do alive "$(pid_of "$c" "$p")" && any=1; done
			done
			[ $any = 0 ] && break
			sleep 0.2
		done
		for c in $(components); do
			for p in $(procs_of "$c"); do kill_group "$(pid_of "$c" "$p")" KILL; done
			case $c in pg-*) pid=$(postmaster_of "$c"); [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true ;; esac
		done
	fi
	# Anything still inside one of our namespaces (a postgres backend, a
	# check script) is ours: killed by pid before the namespace goes.
	local n
	for n in $(ip netns list | awk '{print $1}' | grep "^$NSP-" || true); do
		for pid in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
	done
	for n in $(ip netns list | awk '{print $1}' | grep "^$NSP-" || true); do
		ip netns del "$n" 2>/dev/null || true
	done
	# FLEET_KEEP_LOGS=1: keep the logs (and data) in $FLEET_DIR.last for a
	# post-mortem instead of removing them.
	if [ "${FLEET_KEEP_LOGS:-}" = 1 ] && [ -d "$FLEET_DIR" ]; then
		rm -rf "$FLEET_DIR.last"
		mv "$FLEET_DIR" "$FLEET_DIR.last"
	fi
	rm -rf "$FLEET_DIR"
}

# ---- Components by role. ----

resolve() { # alias → concrete component
	local a=$1 s
	case $a in
	lb-active | lb-standby)
		local h
		h=$(vip_holder)
		[ -n "$h" ] || { [ -r "$FLEET_DIR/last-$a" ] && cat "$FLEET_DIR/last-$a"; return 0; }
		if [ "$a" = lb-active ]; then echo "$h"; else [ "$h" = lb-1 ] && echo lb-2 || echo lb-1; fi ;;
	pg-primary | pg-primary-[0-9] | pg-standby | pg-standby-[0-9])
		s=0
		[[ $a =~ -([0-9])$ ]] && s=${BASH_REMATCH[1]}
		((s < SHARDS)) || die "no shard $s"
		local r=primary
		[[ $a == pg-standby* ]] && r=standby
		local n
		n=$(pg_node_with_role "$s" "$r")
		if [ -z "$n" ] && [ -r "$FLEET_DIR/last-$a" ]; then n=$(cat "$FLEET_DIR/last-$a"); fi
		echo "$n" ;;
	*)
		local c
		for c in $(components); do [ "$c" = "$a" ] && { echo "$c"; return 0; }; done ;;
	esac
}

need_fleet() { fleet_exists || die "no fleet in $FLEET_DIR (run: $0 up)"; load_env; }

cmd_kill() {
	need_fleet
	local c p
	c=$(resolve "${1:?kill COMPONENT}")
	[ -n "$c" ] && [ "$c" != client ] || die "kill: no component '$1' (now)"
	echo "$c" >"$FLEET_DIR/last-$1"
	local pm=
	case $c in pg-*) pm=$(postmaster_of "$c") ;; esac
	for p in $(procs_of "$c"); do kill_group "$(pid_of "$c" "$p")" KILL; done
	[ -n "$pm" ] && kill -KILL "$pm" 2>/dev/null || true
	# A dead load-balancer host takes its address with it; keepalived
	# killed with -9 leaves the VIP configured, so remove it as the host's
	# death would (else the kernel keeps answering ARP for it).
	case $c in lb-*) ip -n "$(ns "$c")" addr del "$VIP/24" dev eth0 2>/dev/null || true ;; esac
	log "killed $c"
}

cmd_start() {
	need_fleet
	local c
	c=$(resolve "${1:?start COMPONENT}")
	# After `kill pg-primary` no node is primary-and-dead: start what was killed.
	if [ -r "$FLEET_DIR/last-$1" ]; then
		local last
		last=$(cat "$FLEET_DIR/last-$1")
		comp_running "$last" || c=$last
	fi
	[ -n "$c" ] && [ "$c" != client ] || die "start: no component '$1'"
	if comp_running "$c"; then log "$c already running"; return 0; fi
	local p
	for p in $(procs_of "$c"); do kill_group "$(pid_of "$c" "$p")" KILL; done
	case $c in
	lb-*) lb_start "${c#lb-}" ;;
	kobod-*) kobod_start "${c#kobod-}" ;;
	pg-*-monitor) local s=${c#pg-}; pg_monitor_start "${s%-monitor}" ;;
	pg-*-[ab]) local s=${c#pg-}; pg_node_start "${s%-*}" "${c##*-}" ;;
	prometheus) prometheus_start ;;
	esac
	log "started $c"
}

cmd_partition() {
	need_fleet
	local c
	c=$(resolve "${1:?partition COMPONENT}")
	[ -n "$c" ] || die "partition: no component '$1'"
	echo "$c" >"$FLEET_DIR/last-$1"
	ip -n "$(ns "$c")" link set eth0 down
	log "partitioned $c (eth0 down)"
}

cmd_heal() {
	need_fleet
	local c
	if [ -r "$FLEET_DIR/last-$1" ]; then c=$(cat "$FLEET_DIR/last-$1"); else c=$(resolve "$1"); fi
	[ -n "$c" ] || die "heal: no component '$1'"
	ip -n "$(ns "$c")" link set eth0 up
	log "healed $c (eth0 up)"
}

# ---- status. ----

json_str() { printf '"%s"' "$1"; }

cmd_status() {
	need_fleet
	local c first=1 holder
	holder=$(vip_holder)
	local -A pgrole=() pgstate=()
	local s line
	for ((s = 0; s < SHARDS; s++)); do
		while read -r name reported assigned; do
			[ -n "$name" ] || continue
			case $assigned in
			primary | wait_primary | single | join_primary | apply_settings) pgrole[$name]=primary ;;
			secondary | catchingup | wait_standby | report_lsn) pgrole[$name]=standby ;;
			*) pgrole[$name]=$assigned ;;
			esac
			pgstate[$name]="$reported/$assigned"
		done < <(pg_states "$s" || true)
	done
	printf '{"url":"http://%s:%s","tls_url":"https://%s:%s","tls_cert":"%s","vip":"%s","vip_holder":%s,"nodes":%s,"shards":%s,"components":[' \
		"$VIP" "$PORT" "$VIP" "$TLS_PORT" "$FLEET_DIR/tls/cert.pem" "$VIP" \
		"$([ -n "$holder" ] && json_str "$holder" || echo null)" "$NODES" "$SHARDS"
	for c in $(components); do
		[ "$c" = client ] && continue
		local role state pid link extra=""
		pid=""
		for p in $(procs_of "$c"); do pid=${pid:-$(pid_of "$c" "$p")}; break; done
		link=$(ip -n "$(ns "$c")" -o link show eth0 2>/dev/null | grep -q 'state UP\|,UP' && echo up || echo down)
		if comp_running "$c"; then state=running; else state=down; fi
		case $c in
		lb-*)
			[ "$c" = "$holder" ] && role=active || role=standby
			local kp
			kp=$(pid_of "$c" keepalived)
			extra=",\"keepalived_pid\":${kp:-null}" ;;
		kobod-*)
			role=app
			if [ $state = running ]; then
				[ "$(http_code "http://$(comp_ip "$c"):$PORT/readyz")" = 200 ] && state=ready || state=not_ready
			fi ;;
		pg-*-monitor) role=monitor ;;
		pg-*)
			role=${pgrole[$c]:-unknown}
			extra=",\"pg_state\":$(json_str "${pgstate[$c]:-unknown}"),\"postmaster_pid\":$(postmaster_of "$c" | grep . || echo null)"
			[ $state = running ] && ! alive "$(postmaster_of "$c")" && state=postgres_down ;;
		prometheus) role=metrics ;;
		esac
		[ "$link" = down ] && state="partitioned"
		[ $first = 1 ] || printf ','
		first=0
		printf '{"name":"%s","role":"%s","state":"%s","pid":%s,"address":"%s"%s}' \
			"$c" "$role" "$state" "${pid:-null}" "$(comp_ip "$c")" "$extra"
	done
	printf ']}\n'
}

# ---- main. ----

case ${1:-} in
up) shift; cmd_up "$@" ;;
down) cmd_down ;;
status) cmd_status ;;
exec)
	shift
	need_fleet
	[ $# -gt 0 ] || die "exec CMD…"
	exec ip netns exec "$(ns client)" "$@" ;;
kill) cmd_kill "${2:-}" ;;
start) cmd_start "${2:-}" ;;
partition) cmd_partition "${2:-}" ;;
heal) cmd_heal "${2:-}" ;;
uri) need_fleet; kobo_uri "${2:-0}" ;;
*) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
