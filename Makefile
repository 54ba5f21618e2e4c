# Kobo — GNU make build.
#
#   make            release build: build/kobod, build/kobo, build/kobo-bench
#   make run        install build deps if missing, build, start kobod on :8080
#   make test       install test deps, ASan+UBSan build, unit + system tests,
#                   the journal under simulated power loss (test-powerloss-smoke),
#                   the alert rules' tests (test-rules), a short fuzz run
#   make fuzz       longer fuzz run (FUZZ_SECONDS, default 300)
#   make bench      standard benchmark set; appends results to docs/benchmarks.md
#   make bench-shards  shards 1/2/4 × 0/10/100 % cross-shard, backlog after kill -9
#   make bench-compare Kobo vs the Redis + Lua and naive PostgreSQL peers, ratios
#   make bench-otlp    cost of events and of OTLP tracing, same run: no events /
#                      events / every request traced / 1 % traced, single + batch
#
# Sources are found by folder, so a new .c file needs no Makefile change:
#   src/{core,limit,ledger,store,auth,shard,saga,http,obs}/*.c  the core library (libkobo),
#   and src/store/<backend>/*.c
#   src/kobod/*.c, src/cli/*.c, src/bench/*.c  the three programs
#   tests/unit/test_*.c                      one cmocka binary per file
#   tests/fuzz/fuzz_*.c                      one libFuzzer binary per file

CC      ?= cc
PKGS    := libmicrohttpd jansson sqlite3 libcurl libpq libsodium libxxhash
CSTD    := -std=c11 -D_GNU_SOURCE
WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wvla
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lhttp_parser -lpthread -lm
CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)

RELEASE_FLAGS := -O2 -g
SAN_FLAGS     := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all \
                 -fno-omit-frame-pointer

CORE_SRC  := $(wildcard src/core/*.c src/limit/*.c src/ledger/*.c src/store/*.c src/store/*/*.c \
                       src/auth/*.c src/shard/*.c src/saga/*.c src/http/*.c src/obs/*.c)
KOBOD_SRC := $(wildcard src/kobod/*.c)
CLI_SRC   := $(wildcard src/cli/*.c)
BENCH_SRC := $(wildcard src/bench/*.c)
UNIT_SRC  := $(wildcard tests/unit/test_*.c)
FUZZ_SRC  := $(wildcard tests/fuzz/fuzz_*.c)

# $(call objs,BUILD_DIR,SOURCES)
objs = $(patsubst %.c,$(1)/obj/%.o,$(2))

REL := build
SAN := build/asan

.PHONY: all run test unit system fuzz fuzz-smoke bench bench-shards bench-compare bench-auth bench-otlp bench-postgres deps test-deps measure-libs clean
all: $(REL)/kobod $(REL)/kobo $(REL)/kobo-bench

# ---- Compilation (one pattern per build flavour). ----

$(REL)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(RELEASE_FLAGS) $(PKG_CFLAGS) -MMD -MP -c $< -o $@

$(SAN)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(SAN_FLAGS) $(PKG_CFLAGS) -MMD -MP -c $< -o $@

-include $(shell find $(REL) $(SAN) -name '*.d' 2>/dev/null)

# ---- Programs. ----

define programs
$(1)/kobod: $(call objs,$(1),$(KOBOD_SRC) $(CORE_SRC))
	$$(CC) $(2) $$^ -o $$@ $$(PKG_LIBS)
$(1)/kobo: $(call objs,$(1),$(CLI_SRC) $(CORE_SRC))
	$$(CC) $(2) $$^ -o $$@ $$(PKG_LIBS)
$(1)/kobo-bench: $(call objs,$(1),$(BENCH_SRC) $(CORE_SRC))
	$$(CC) $(2) $$^ -o $$@ $$(PKG_LIBS)
endef
$(eval $(call programs,$(REL),$(RELEASE_FLAGS)))
$(eval $(call programs,$(SAN),$(SAN_FLAGS)))

# A unit test links only the layers its subject needs, named by its prefix
# (test_ledger* links src/ledger only), so layers build and test alone.
test_layers = $(strip \
  $(if $(filter test_journal%,$(1)),core store/journal, \
  $(if $(filter test_limit%,$(1)),core limit, \
  $(if $(filter test_ledger%,$(1)),core ledger, \
  $(if $(filter test_obs%,$(1)),core ledger obs, \
  $(if $(filter test_store%,$(1)),core ledger obs store, \
  $(if $(filter test_auth%,$(1)),core ledger obs store auth, \
  $(if $(filter test_shard%,$(1)),core ledger obs store shard, \
  $(if $(filter test_saga%,$(1)),core ledger obs store shard saga, \
  core limit ledger obs store auth shard saga http)))))))))
layer_src = $(foreach l,$(1),$(wildcard src/$(l)/*.c src/$(l)/*/*.c))

UNIT_BINS := $(patsubst tests/unit/%.c,$(SAN)/tests/%,$(UNIT_SRC))
define unit_test
$(SAN)/tests/$(1): $(SAN)/obj/tests/unit/$(1).o $(call objs,$(SAN),$(call layer_src,$(call test_layers,$(1))))
	@mkdir -p $$(@D)
	$$(CC) $(SAN_FLAGS) $$^ -o $$@ $$(PKG_LIBS) $$(CMOCKA_LIBS)
endef
$(foreach t,$(patsubst tests/unit/%.c,%,$(UNIT_SRC)),$(eval $(call unit_test,$(t))))

# ---- Dependencies (Debian packages; see README "Dependencies"). ----

deps:
	@scripts/install-deps.sh build
test-deps:
	@scripts/install-deps.sh test

# ---- Running. ----

run: deps
	@$(MAKE) --no-print-directory all
	@scripts/run.sh

# ---- Tests. ----

test: test-deps
	@$(MAKE) --no-print-directory unit system test-rules test-powerloss-smoke fuzz-smoke test-fleet-smoke

# The unit tests run with a throw-away PostgreSQL cluster (scripts/pg-cluster.sh
# sets KOBO_TEST_POSTGRES), so the store contract suite runs on PostgreSQL too.
unit: $(UNIT_BINS)
	@scripts/pg-cluster.sh scripts/run-unit-tests.sh $(UNIT_BINS)

# The system suite runs once per store backend (tests/system/conftest.py):
# sqlite (--data), pg1 and pg2 (--postgres, 1 and 2 databases on a throw-away
# PostgreSQL cluster). KOBO_TEST_BACKENDS=sqlite make system runs one.
KOBO_TEST_BACKENDS ?= sqlite,pg1,pg2
system: $(SAN)/kobod $(SAN)/kobo $(SAN)/kobo-bench
	$(SAN)/kobo-bench --self-test
	KOBOD=$(CURDIR)/$(SAN)/kobod KOBO=$(CURDIR)/$(SAN)/kobo \
	KOBO_BENCH=$(CURDIR)/$(SAN)/kobo-bench KOBO_TEST_BACKENDS=$(KOBO_TEST_BACKENDS) \
	/usr/bin/python3 -m pytest -q tests/system

# The monitoring: promtool checks prometheus.yml and the rules and runs the
# alert unit tests (deploy/prometheus/tests); tests/deploy checks that every
# PromQL expression of the rules and of deploy/grafana/kobo.json parses and
# names metrics a real kobod (and HAProxy) exports.
.PHONY: test-rules
test-rules: $(SAN)/kobod $(SAN)/kobo
	promtool check config deploy/prometheus/prometheus.yml
	cd deploy/prometheus/tests && promtool test rules *.test.yml
	KOBOD=$(CURDIR)/$(SAN)/kobod KOBO=$(CURDIR)/$(SAN)/kobo \
	/usr/bin/python3 -m pytest -q tests/deploy

# The journal's bit-flip test at every byte and bit of the earlier frames
# (make unit samples every 5th byte), and more kill -9 rounds.
.PHONY: test-journal-exhaustive
test-journal-exhaustive: $(SAN)/tests/test_journal
	KOBO_JOURNAL_EXHAUSTIVE=1 KOBO_JOURNAL_KILL_ROUNDS=30 $(SAN)/tests/test_journal

# Power loss (tests/powerloss; README "Durability"): an LD_PRELOAD shim
# records every write and sync of the files under a directory; the replayer
# rebuilds the directory as a disk would hold it after a power cut at sampled
# points (only synced bytes, or a prefix / random sectors of the rest), and
# the journal must recover every acknowledged batch (selftest.py first checks
# the shim and the replayer on a script of known outcome). The shim is built
# twice: plain for programs without ASan (the Python self-test), with
# ASan+UBSan for the ASan programs (their libasan then comes after the shim
# in the load order: ASAN_OPTIONS=verify_asan_link_order=0). Never linked
# into kobod. POWERLOSS_POINTS crash points per scenario;
# `make test` runs test-powerloss-smoke (fewer points, ~30 s).
POWERLOSS_SHIM := $(REL)/powerloss/libkobo-powerloss.so
POWERLOSS_SHIM_SAN := $(SAN)/powerloss/libkobo-powerloss.so
POWERLOSS_WRITER := $(SAN)/powerloss/journal_writer
POWERLOSS_POINTS ?= 300
.PHONY: test-powerloss test-powerloss-smoke test-powerloss-kobod
$(POWERLOSS_SHIM): tests/powerloss/powerloss_shim.c
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(RELEASE_FLAGS) -fPIC -shared -fvisibility=hidden $< -o $@ -ldl -lpthread
$(POWERLOSS_SHIM_SAN): tests/powerloss/powerloss_shim.c
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(SAN_FLAGS) -fPIC -shared -fvisibility=hidden $< -o $@ -ldl -lpthread
$(POWERLOSS_WRITER): $(call objs,$(SAN),tests/powerloss/journal_writer.c $(call layer_src,core store/journal))
	@mkdir -p $(@D)
	$(CC) $(SAN_FLAGS) $^ -o $@ -lxxhash -lpthread
test-powerloss: $(POWERLOSS_SHIM) $(POWERLOSS_SHIM_SAN) $(POWERLOSS_WRITER)
	/usr/bin/python3 tests/powerloss/selftest.py --shim $(POWERLOSS_SHIM)
	/usr/bin/python3 tests/powerloss/run_journal.py --shim $(POWERLOSS_SHIM_SAN) \
	  --writer $(POWERLOSS_WRITER) --points $(POWERLOSS_POINTS)
# kobod itself on SQLite (WAL, synchronous=FULL, 2 shards: sagas) under the
# shim: every acknowledged account and transfer in every crash image, kobo
# audit sound; every 4th image restarted until no saga is left half-way.
POWERLOSS_KOBOD_POINTS ?= 100
test-powerloss-kobod: $(POWERLOSS_SHIM_SAN) $(SAN)/kobod $(SAN)/kobo
	/usr/bin/python3 tests/powerloss/run_kobod.py --shim $(POWERLOSS_SHIM_SAN) \
	  --kobod $(SAN)/kobod --kobo $(SAN)/kobo --shards 2 --restart-every 4 \
	  --points $(POWERLOSS_KOBOD_POINTS)
test-powerloss-smoke: $(POWERLOSS_SHIM) $(POWERLOSS_SHIM_SAN) $(POWERLOSS_WRITER) \
                      $(SAN)/kobod $(SAN)/kobo
	/usr/bin/python3 tests/powerloss/selftest.py --shim $(POWERLOSS_SHIM)
	/usr/bin/python3 tests/powerloss/run_journal.py --shim $(POWERLOSS_SHIM_SAN) \
	  --writer $(POWERLOSS_WRITER) --points 40
	/usr/bin/python3 tests/powerloss/run_kobod.py --shim $(POWERLOSS_SHIM_SAN) \
	  --kobod $(SAN)/kobod --kobo $(SAN)/kobo --shards 2 --restart-every 8 \
	  --points 12 --transfers 20

# libFuzzer needs clang; the fuzzers compile the core sources themselves.
FUZZ_CC    := clang
FUZZ_FLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
FUZZ_BINS  := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(FUZZ_SRC))
build/fuzz/%: tests/fuzz/%.c $(CORE_SRC)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(CSTD) $(WARN) $(FUZZ_FLAGS) $(PKG_CFLAGS) $^ -o $@ $(PKG_LIBS)

FUZZ_SECONDS ?= 300
fuzz-smoke: $(FUZZ_BINS)
	@scripts/fuzz.sh 20 $(FUZZ_BINS)
fuzz: $(FUZZ_BINS)
	@scripts/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_BINS)

# ---- Benchmarks. ----

bench: deps all
	@scripts/bench.sh

bench-shards: deps all
	@scripts/bench-shards.sh

# Kobo against ../shared/peers (Redis + Lua, naive PostgreSQL) in one run, with
# the ratios against issue 12's targets; QUICK=1 for 3 s rows.
bench-compare: deps all
	@scripts/bench-compare.sh

# API keys and rate limits: kobod --auth off vs required (+ per-key, + per-IP
# limits that never trip), same workload, alternating (scripts/bench-auth.sh).
bench-auth: deps all
	@scripts/bench-auth.sh
# The key check alone (tools/measure/auth-path.sh runs it).
$(REL)/measure/auth-path: tools/measure/auth_path.c $(call objs,$(REL),$(CORE_SRC))
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(RELEASE_FLAGS) $(PKG_CFLAGS) $^ -o $@ $(PKG_LIBS)

# The journaled store's in-memory tables alone: RSS and ns per operation
# (tools/measure/hot_tables.c; numbers in docs/benchmarks.md).
$(REL)/measure/hot-tables: tools/measure/hot_tables.c $(call objs,$(REL),$(CORE_SRC))
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(RELEASE_FLAGS) $(PKG_CFLAGS) $^ -o $@ $(PKG_LIBS)

# The cost of events and tracing, same run (scripts/bench-otlp.sh): kobod
# without event rows (the floor), with events, with OTLP export of every
# request and of 1 % to a local sink, single and batched transfers.
# build/bench-noevents/kobod is the release build with -DKOBO_BENCH_NO_EVENTS
# (src/shard/writer.c commits batches with no event rows): only for this
# measurement, not part of all or test.
NOEV := build/bench-noevents
$(NOEV)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(RELEASE_FLAGS) -DKOBO_BENCH_NO_EVENTS $(PKG_CFLAGS) -MMD -MP -c $< -o $@
$(NOEV)/kobod: $(call objs,$(NOEV),$(KOBOD_SRC) $(CORE_SRC))
	$(CC) $(RELEASE_FLAGS) $^ -o $@ $(PKG_LIBS)
bench-otlp: deps all $(NOEV)/kobod
	@scripts/bench-otlp.sh

# Kobo over PostgreSQL (1 and 2 kobod, 2 shards) against ../shared/peers/naive_pg.sh.
bench-postgres: deps all
	@scripts/bench-postgres.sh

# The journal alone: appends/s and MB/s with one fdatasync per append, against
# SQLite committing the same bytes (tools/journal-bench; docs/benchmarks.md).
JOURNAL_BENCH_DIR ?= build/journal-bench-data
.PHONY: bench-journal
$(REL)/journal-bench: $(call objs,$(REL),tools/journal-bench/journal_bench.c $(wildcard src/core/*.c src/store/journal/*.c))
	$(CC) $(RELEASE_FLAGS) $^ -o $@ $(PKG_LIBS)
bench-journal: deps $(REL)/journal-bench
	$(REL)/journal-bench $(JOURNAL_BENCH_DIR) 3

# API keys in the stores: key_insert latency, read_keys of a full key ring,
# the bound (tools/key-bench; docs/benchmarks.md), on SQLite and on a
# throw-away PostgreSQL cluster.
.PHONY: bench-keys
$(REL)/key-bench: $(call objs,$(REL),tools/key-bench/key_bench.c $(CORE_SRC))
	$(CC) $(RELEASE_FLAGS) $^ -o $@ $(PKG_LIBS)
bench-keys: deps $(REL)/key-bench
	@dir=$$(mktemp -d /tmp/kobo-key-bench-XXXXXX) && echo "SQLite:" && \
	  $(REL)/key-bench sqlite:$$dir; rc=$$?; rm -rf $$dir; [ $$rc -eq 0 ]
	@echo "PostgreSQL:" && scripts/pg-cluster.sh sh -c '$(REL)/key-bench "$$KOBO_TEST_POSTGRES"'

# Compares HTTP server libraries for kobod's edge, without the ledger
# (bench/http: libmicrohttpd poll and epoll pool, h2o evloop, libuv +
# http-parser; docs/benchmarks.md "HTTP libraries, edge only"): wrk load
# (run.sh, ~2.5 min), then instructions per request under callgrind
# (instructions.sh, ~2 min). Installs wrk, valgrind, libuv1-dev and
# libh2o-evloop-dev when missing; not built by all or test.
BENCH_HTTP := build/bench-http
BENCH_HTTP_SRC := bench/http/edge.c bench/http/edge.h
.PHONY: bench-http bench-http-build
$(BENCH_HTTP)/edge-mhd: bench/http/edge_mhd.c $(BENCH_HTTP_SRC)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(RELEASE_FLAGS) $(filter %.c,$^) -o $@ $$(pkg-config --cflags --libs libmicrohttpd jansson) -lpthread
$(BENCH_HTTP)/edge-h2o: bench/http/edge_h2o.c $(BENCH_HTTP_SRC)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(RELEASE_FLAGS) $(filter %.c,$^) -o $@ $$(pkg-config --cflags --libs libh2o-evloop jansson openssl) -lpthread
$(BENCH_HTTP)/edge-uv: bench/http/edge_uv.c $(BENCH_HTTP_SRC)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(RELEASE_FLAGS) $(filter %.c,$^) -o $@ $$(pkg-config --cflags --libs libuv jansson) -lhttp_parser -lpthread
bench-http-build: $(BENCH_HTTP)/edge-mhd $(BENCH_HTTP)/edge-h2o $(BENCH_HTTP)/edge-uv
bench-http:
	@scripts/install-deps.sh bench-http
	@$(MAKE) --no-print-directory bench-http-build
	@bench/http/run.sh $(BENCH_HTTP)
	@echo
	@bench/http/instructions.sh $(BENCH_HTTP)

# Compares the JSON library candidates on this machine (docs/benchmarks.md).
measure-libs:
	@scripts/install-deps.sh measure
	@tools/measure/measure-libs.sh

clean:
	rm -rf build

# ---- The local fleet: HAProxy ×2 + keepalived, N kobod, pg_auto_failover
# per shard, Prometheus, in network namespaces (scripts/fleet.sh; needs root;
# installs its Debian packages when missing). `scripts/fleet.sh down` ends it.
.PHONY: fleet
fleet:
	@scripts/fleet.sh up

# The five failure scenarios of issue 10 under load (tests/fleet/test_fleet.py,
# ~15 min, root); prints the docs/benchmarks.md section, and appends it there
# with FLEET_RECORD=1. test-fleet-smoke: the short sample `make test` runs.
.PHONY: test-fleet test-fleet-smoke
test-fleet: all
	@rm -f build/fleet-results.json
	/usr/bin/python3 -m pytest -q tests/fleet/test_fleet.py
	/usr/bin/python3 tests/fleet/record.py build/fleet-results.json $(if $(FLEET_RECORD),--append docs/benchmarks.md)
test-fleet-smoke: all
	/usr/bin/python3 -m pytest -q tests/fleet/test_smoke.py
