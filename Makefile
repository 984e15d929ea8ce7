# dbops: `make demo` opens the console on a local sandbox of real servers; `make test` runs
# every test against real servers. Both install what they need on a fresh Debian machine.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DBOPS := $(VENV)/bin/dbops
# Debian packages the sandbox and the tests run: PostgreSQL 15 (with pg_stat_statements), PgBouncer, pgBackRest,
# Redis 7 (redis-tools: redis-cli and redis-check-rdb for RDB backups), openssl (the Redis TLS test's certificates),
# a JDK and Maven (the Kafka and Neo4j sandboxes run Maven Central's jars; the Neo4j launcher is compiled).
APT_PACKAGES := postgresql-15 postgresql-client-15 pgbouncer pgbackrest redis-server redis-tools openssl openjdk-17-jdk-headless maven tmux chromium prometheus prometheus-alertmanager prometheus-postgres-exporter prometheus-redis-exporter
# The demo's state (sandbox data, audit log) must be reachable by the postgres user, which a
# home directory of root's is not; override DEMO_STATE_DIR to keep it elsewhere.
DEMO_STATE_DIR ?= /var/tmp/dbops-demo

.PHONY: help deps venv test lint unit demo demo-down bench clean

help:
	@echo "make demo   - set up, start the sandbox (real PostgreSQL + PgBouncer, Redis Cluster + Sentinel, Kafka, Neo4j, S3 with moto RDS, a fake 3-node Qdrant) and open the console"
	@echo "make test   - set up, then check the import contracts, lint rules (ruff) and types (mypy), and run every test (unit, integration, UI)"
	@echo "make bench  - start-up, switchover write-unavailability, Redis slot-migration (vs redis-cli) and Kafka lag (vs kafka-consumer-groups) benchmarks"

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; done; \
	command -v $(PYTHON) >/dev/null 2>&1 || missing="$$missing python3 python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Debian's python3 needs python3-venv for `-m venv`; install it only when creating the venv fails.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV) >/dev/null 2>&1 || { \
	  echo "installing python3-venv"; rm -rf $(VENV); \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,sandbox]'
	@touch $@

venv: $(VENV)/.installed

# Import contracts (layers, no textual in the core, engines independent), lint rules, and types.
lint: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check dbops screens runbooks tests benchmarks
	$(VENV)/bin/mypy

# The pytest plugins, named: autoloading them makes pytest AST-rewrite every module of their
# distributions (all of hypothesis, anyio, syrupy, platformdirs) on each run, and CPython 3.11's
# AST constructor can fail on such a parse with "AST constructor recursion depth mismatch"
# (python/cpython#106905; seen once here at collection). Named, only the plugin modules are rewritten.
PYTEST := PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 $(PY) -m pytest -p pytest_asyncio.plugin -p pytest_timeout -p syrupy \
	-p pytest_textual_snapshot -p _hypothesis_pytestplugin

test: deps venv lint
	$(PYTEST) -q -p no:cacheprovider --durations=15

unit: venv
	$(PYTEST) -q tests/unit tests/ui

demo: deps venv
	DBOPS_STATE_DIR=$(DEMO_STATE_DIR) $(DBOPS) sandbox up --engines s3,postgres,redis,kafka,neo4j,qdrant,kubernetes,prometheus
	DBOPS_STATE_DIR=$(DEMO_STATE_DIR) $(DBOPS) --config "$$(DBOPS_STATE_DIR=$(DEMO_STATE_DIR) $(DBOPS) sandbox config)"

demo-down: venv
	DBOPS_STATE_DIR=$(DEMO_STATE_DIR) $(DBOPS) sandbox down

bench: deps venv
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) benchmarks/startup.py
	$(PY) benchmarks/switchover.py
	$(PY) benchmarks/redis_reshard.py
	$(PY) benchmarks/kafka_lag.py
	$(PY) benchmarks/pg_refresh_cost.py
	$(PY) benchmarks/fleet.py
	$(PY) benchmarks/recording_cost.py
	$(PY) benchmarks/overview_latency.py

clean:
	rm -rf $(VENV) build *.egg-info
