# knowngood: two commands on a fresh Debian machine, `make demo` and `make test`.
# Both create .venv/ here and install what they need (apt packages as root when missing).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTHON ?= python3
export KNOWNGOOD_LAB_DIR ?= /var/lib/knowngood-lab
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# Debian package for each command the lab runs.
SYSTEM_DEPS := nginx:nginx-light prometheus:prometheus promtool:prometheus sshd:openssh-server \
	ssh-keygen:openssh-client crontab:cron psql:postgresql-client-15 runuser:util-linux curl:curl git:git \
	/usr/lib/postgresql/15/bin/postgres:postgresql-15 pgbackrest:pgbackrest lz4:lz4 zstd:zstd \
	/usr/lib/python3/dist-packages/boto3:python3-boto3 /usr/lib/python3/dist-packages/lz4:python3-lz4 \
	/usr/lib/python3/dist-packages/zstandard:python3-zstandard \
	/usr/lib/python3/dist-packages/cryptography:python3-cryptography \
	/usr/lib/python3/dist-packages/psycopg:python3-psycopg chromium:chromium

.PHONY: help system-deps venv demo test test-extended unit integration lint lint-runbooks lint-drills sanity bench drill lab-up lab-down emergency-runbook collection clean

help:
	@echo "make demo   install, bring up the lab, run the main story"
	@echo "make test   install, lint, unit and integration tests on a lab of their own"
	@echo "make test-extended  the slower proofs make test leaves out (pgBackRest, SSH mode, ...)"
	@echo "make drill  rollback drills on the lab with measured RTO/RPO (DRILL=<scenario>)"
	@echo "make emergency-runbook  regenerate docs/emergency-runbook.md and .html from the runbooks"
	@echo "make bench  rollback, backup and PITR benchmarks beside their anchors (BENCH=rollback|backup|pitr)"

system-deps:
	@missing=""; \
	for pair in $(SYSTEM_DEPS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  if [ "$${cmd:0:1}" = "/" ]; then [ -e "$$cmd" ] || missing="$$missing $$pkg"; \
	  else command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; fi; \
	done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing packages:$$missing (run as root to install them)"; exit 1; fi; \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# --no-compile: the ansible package bundles tens of thousands of modules we never import;
	# byte-compiling them all was 3/4 of the install (80 s -> 23 s). Python compiles what is
	# imported, once, on first use.
	$(BIN)/pip install -q --no-compile -e '.[lab,dev]'
	touch $@

venv: $(VENV)/.installed

# STORIES=code,flag tells only those stories (and what they need); see knowngood.demo.STORIES.
demo: system-deps venv
	$(PY) -m knowngood.demo $(if $(STORIES),--stories $(STORIES))

lab-up: system-deps venv
	$(BIN)/knowngood lab up

lab-down: venv
	$(BIN)/knowngood lab down

ANSIBLE_LINT := $(BIN)/ansible-lint --profile production --offline -q

lint: lint-runbooks lint-drills

# ruff, and ansible-lint on everything but the drills.
lint-runbooks: venv
	$(BIN)/ruff check src plugins tests bench inventories
	$(BIN)/ruff format --check src plugins tests bench inventories
	$(ANSIBLE_LINT) --exclude molecule

# The drills' scenario playbooks import the runbooks: their syntax checks are most of
# ansible-lint's time, so they are a job of their own. The runbooks they import (playbooks/,
# roles/, through collections/) are lint-runbooks' part: linted here again they cost 25 s
# (96 s -> 71 s without them; a bad task in a scenario is still found).
lint-drills: venv
	$(ANSIBLE_LINT) molecule --exclude playbooks --exclude roles --exclude collections

sanity: venv
	bash .ci/sanity

unit: venv
	$(BIN)/pytest -q tests/unit

integration: system-deps venv
	$(BIN)/pytest -q tests/integration

# Lint, sanity and the unit tests are single-threaded and need no lab: on two cores they run
# two at a time, the longest first (unit 160 CPU-s, lint-drills 150, lint-runbooks 95, sanity
# 70: in this order they end together, about 250 s; lint first left unit alone at the end).
# All four at once was tried (2026-12-08): the unit tests wait a third of their time, but in a
# clean clone the four together took about 70 s longer (the unit tests 253 s instead of 153).
# Running them at nice 19 beside the integration tests instead was tried: the integration tests
# are CPU-bound enough that they took 19 % longer and a latency verdict flaked.
# The integration tests mostly wait on playbooks and services, so they run on TEST_WORKERS
# pytest-xdist workers, each with a lab of its own (tests/conftest.py), a file per worker
# (2026-12-08, quiet machine: 2 workers 543 s, 3 workers 432 s, 4 workers 430 s); then
# the tests that load every core (cpu_hogs) run alone. The slower proofs marked `extended`
# (tests/conftest.py) run with `make test-extended`.
TEST_WORKERS ?= 3
test: system-deps venv
	$(MAKE) --no-print-directory -j2 -O unit lint-drills lint-runbooks sanity
	$(BIN)/pytest -q --durations=25 -n $(TEST_WORKERS) --dist loadfile -m "not extended and not hogs" tests/integration
	$(BIN)/pytest -q --durations=10 -m "hogs and not extended" tests/integration

test-extended: system-deps venv
	$(BIN)/pytest -q --durations=25 -m extended

# BENCH=rollback, backup or pitr runs one of them; BENCH_ARGS go to it (e.g. BENCH_ARGS=--quick).
BENCH ?= all
bench: system-deps venv
ifeq ($(BENCH),all)
	$(PY) bench/bench_rollback.py && $(PY) bench/bench_backup.py && $(PY) bench/bench_pitr.py
else
	$(PY) bench/bench_$(BENCH).py $(BENCH_ARGS)
endif

# Drills against the lab (molecule scenarios; each a minute or more, so not in `make test`).
# DRILL=<scenario> runs one; the default runs every scenario and prints the history.
DRILL ?= all
drill: system-deps venv lab-up
ifeq ($(DRILL),all)
	rc=0; for d in $$($(BIN)/knowngood drill list); do $(BIN)/knowngood drill run $$d --quiet || rc=1; done; \
	$(BIN)/knowngood drill report --html drill-report.html; exit $$rc
else
	$(BIN)/knowngood drill run $(DRILL)
endif

# The emergency runbook (strategy Appendix), generated from the runbooks; a unit test fails when stale.
emergency-runbook: venv
	$(BIN)/knowngood emergency --format md -o docs/emergency-runbook.md
	$(BIN)/knowngood emergency --format html -o docs/emergency-runbook.html

collection: venv
	$(BIN)/ansible-galaxy collection build --force --output-path dist/

clean:
	rm -rf dist .pytest_cache .ruff_cache tests/output
