# citysense — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install citysense with its dev tools

services-up: $(STAMP) ## install (first time) and start Kafka, PostgreSQL and Mosquitto
	bash deploy/local/services.sh up

services-down: ## stop the local services
	bash deploy/local/services.sh down

services-status: ## show whether each local service is up
	bash deploy/local/services.sh status

test: $(STAMP) services-up browser ## run every test against the real local services
	$(BIN)/python -m pytest -rs

test-faults: $(STAMP) services-up ## only the fault suite (restarts the local services; sequential)
	$(BIN)/python -m pytest -rs tests/faults

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

demo: $(STAMP) ## the whole platform, embedded (no root, no services), county live until Ctrl-C
	$(BIN)/citysense up

demo-services: $(STAMP) ## the live pipeline over the local services (Kafka, PostgreSQL, Mosquitto)
	$(BIN)/citysense demo

browser: ## install Debian's chromium for the dashboard's browser test (idempotent)
	bash deploy/local/browser.sh

api: $(STAMP) ## serve the query API and dashboard (citysense api)
	$(BIN)/citysense api

.PHONY: browser api

clean-state: services-down ## stop services and delete .state (all local data)
	rm -rf .state

BENCH_ARGS ?=
bench: $(STAMP) services-up ## end-to-end benchmark: ramp of offered rates, table + JSON + PNG (loadtests/README.md)
	$(BIN)/python -m loadtests.e2e $(BENCH_ARGS)

.PHONY: bench help install services-up services-down services-status test test-faults lint demo demo-services clean-state browser api alerts-bench

alerts-bench: $(STAMP) ## alert engine: readings/s and CPU per reading (100,000 devices x 5 rules), then latency
	$(BIN)/python -m loadtests.alerts_bench
	$(BIN)/python -m loadtests.alerts_bench --live --rate 5000 --duration 10 --crossing-every 200
