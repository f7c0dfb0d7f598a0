# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-sqlite test-postgres install browser postgres demo bench profile clean cluster compose-check test-failover

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Start the hub: embedded nats-server (JetStream), SQLite under ./var, demo directory.
run: $(STAMP)
	$(BIN)/hub run

## Against a running hub (`make run` in another terminal).
demo: $(STAMP)
	$(BIN)/hub demo

## Debian's Chromium for the console's browser tests (Playwright drives it; nothing is downloaded by Playwright).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if command -v apt-get >/dev/null 2>&1; then DEBIAN_FRONTEND=noninteractive apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	  else echo "no /usr/bin/chromium and no apt-get: the console's browser tests will be skipped"; fi; \
	fi

## Debian's PostgreSQL server binaries (initdb, pg_ctl): the tests start throwaway clusters with them.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then DEBIAN_FRONTEND=noninteractive apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; \
	  else echo "no PostgreSQL and no apt-get: install PostgreSQL's server binaries"; exit 1; fi; \
	fi

## The whole suite on a real nats-server and SQLite, then every database-touching test again on PostgreSQL.
test: test-sqlite test-postgres compose-check

test-sqlite: $(STAMP) browser postgres
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-postgres: $(STAMP) postgres
	HUB_TEST_DB=postgres $(BIN)/python -m pytest -m db -p no:cacheprovider $(PYTEST_ARGS)

## Benchmarks (never part of `make test`): floor vs hub, latency at offered loads, memory, storage, cold start.
## Prints a table and writes bench/results.json. BENCH_ARGS="--events 8000" etc.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## Where the hub's time goes on a backlog: py-spy on `hub run` (bench/profile.txt).
profile: $(STAMP)
	$(BIN)/python -m pip install --quiet py-spy
	$(BIN)/python -m bench.profile $(PROFILE_EVENTS)

clean:
	rm -rf $(VENV) var .pytest_cache

## The production shape without Docker: 3 clustered nats-server nodes, PostgreSQL, 2 workers and the API
## on loopback (deploy/cluster.py; data in var/cluster). Ctrl-C stops it all.
cluster: $(STAMP) postgres
	$(BIN)/python -m deploy.cluster $(CLUSTER_ARGS)

## Validate docker-compose.yml with no engine (Debian's docker-compose; installed if missing).
compose-check:
	@if ! command -v docker-compose >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then DEBIAN_FRONTEND=noninteractive apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-compose; \
	  else echo "no docker-compose and no apt-get: cannot validate docker-compose.yml"; exit 1; fi; \
	fi
	docker-compose -f docker-compose.yml config -q
	@echo "docker-compose.yml is valid"

## The failover test alone (kill -9 of a NATS node and a worker on the local cluster).
test-failover: $(STAMP) postgres
	$(BIN)/python -m pytest -m cluster tests/test_failover.py $(PYTEST_ARGS)
