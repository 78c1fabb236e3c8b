# The newcomer's path: `make run` serves the API and Swagger UI, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: install run test test-fast lint audit openapi bench bench-scale bench-shards soak clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

test: $(STAMP)
	$(BIN)/python -m pytest

# The fast core, the quick check while developing: no browser, topology, fault-injection or slow tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not browser and not topology and not faults and not slow" -n auto

# Service vs its ceiling on a private redis-server (needs wrk); see docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-scale: $(STAMP)
	$(BIN)/python -m bench.run --scale

# One store sharded by user: whole-store reads against S, and Redis CPU per master on a 3-master Cluster.
bench-shards: $(STAMP)
	$(BIN)/python -m bench.sharding
# Bounded (3 minutes): two gunicorn workers on a private AOF Redis that is killed and restarted once.
soak: $(STAMP)
	$(BIN)/python -m scripts.soak $(SOAK_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

# Security checks: bandit over the code (findings fixed, or justified in place with
# `# nosec <id> - reason`), pip-audit over requirements.txt (non-fatal when its
# vulnerability database cannot be reached; it says so).
audit: $(STAMP)
	$(BIN)/bandit -q -r sessionsvc tools wsgi.py gunicorn.conf.py
	$(BIN)/python tools/audit_dependencies.py requirements.txt

# The committed OpenAPI document (a test fails while it differs from what is served).
openapi: $(STAMP)
	env -u SESSIONSVC_API_KEYS -u SESSIONSVC_MAX_TTL_SECONDS $(BIN)/flask --app wsgi openapi write openapi.json

clean:
	rm -rf $(VENV) .pytest_cache instance
