# The README's two commands: `make run` (install, then transcribe the bundled samples) and
# `make test` (install, then lint, type-check and test). Everything Python installs into .venv;
# Debian packages install through apt-get when run as root (CI, the dev machines).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Everything Python installs from this lock of exactly what was tested (Python 3.11, Linux x86-64);
# pyproject.toml keeps the ranges the project supports. Regenerate it with `make lock`.
LOCK := requirements.lock
# The installers are pinned too: an upgrade of either can change what a lock means.
PIP_VERSION := 26.0.1
PIP_TOOLS_VERSION := 7.6.2

# Debian packages needed at run or test time: the TTS engines that voice the training corpus,
# chromium for the demo page's browser tests, and PostgreSQL and nginx for several replicas (the
# tests start their own PostgreSQL server in a temporary folder).
SYSTEM_PACKAGES := python3-venv espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts chromium prometheus postgresql nginx

.PHONY: install system-deps lock doctor run serve serve-cluster test lint typecheck bench bench-api bench-spotting bench-edge eval clean

install: system-deps $(STAMP)

system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "please install these Debian packages: $$missing"; exit 1; fi

# A fresh venv each time the lock or pyproject changes, so nothing outside the lock survives;
# the project itself goes in without dependencies (the lock has them all, hashes checked), and
# `voice-search doctor` proves the result before anything uses it.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet pip==$(PIP_VERSION)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/voice-search doctor
	touch $@

# Re-run after changing a dependency in pyproject.toml (then `make install`, `make test`, and
# commit both files). The lock records exactly what the resolver picked for Python 3.11 on
# Linux x86-64; `voice-search doctor` and the tests fail while the two files disagree.
lock:
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet pip==$(PIP_VERSION) pip-tools==$(PIP_TOOLS_VERSION)
	$(BIN)/pip-compile --quiet --extra dev --extra peers --extra cluster --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links --output-file $(LOCK) pyproject.toml

# Check an existing install: lock vs pyproject, installed versions, imports, native libraries.
doctor: install
	$(BIN)/voice-search doctor

run: install
	$(BIN)/voice-search transcribe data/samples --format table --quiet
	@echo "(as JSONL with word timings and input statistics: $(BIN)/voice-search transcribe data/samples --format jsonl)"

# The voice-search API and demo page on http://127.0.0.1:8000 (VOICE_SEARCH_* settings apply).
serve: install
	$(BIN)/voice-search serve

# REPLICAS replicas on one PostgreSQL event store (a local server in var/cluster/postgres) behind
# nginx on http://127.0.0.1:8000; Ctrl-C stops them all.
REPLICAS ?= 2
serve-cluster: install
	$(BIN)/voice-search cluster --replicas $(REPLICAS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy

# Two workers, each test file on one (tests/conftest.py schedules them). Every worker, and every
# server or command a test starts, uses one torch thread: two processes at torch's default of a
# thread per core spin against each other on 2 cores, which slowed the replay test's requests
# past its latency alarm.
test: install lint typecheck
	OMP_NUM_THREADS=1 $(BIN)/pytest -n 2

bench: install
	$(BIN)/python scripts/bench_pipeline.py

# The API under load on localhost (search success, latency, throughput, overload); needs corpus/.
bench-api: install
	$(BIN)/python scripts/bench_api.py --json .cache/bench_api.json

# Voice search by spotted catalog names vs by the transcript, on the test split; needs corpus/.
bench-spotting: install
	$(BIN)/python scripts/bench_spotting.py --split test --json .cache/bench_spotting.json

# Edge (int8, 1 and 2 threads) vs cloud (the server through wifi/4G/3G profiles): table and plots
# in .cache/edge-cloud/ (corpus/ test clips when built, else the bundled samples).
bench-edge: install
	$(BIN)/python scripts/bench_edge_cloud.py --out .cache/edge-cloud

# The model against offline peers (pocketsphinx, Whisper tiny.en); needs a built corpus/.
eval: install
	$(BIN)/python scripts/evaluate_models.py --limit 100 --json .cache/evaluation.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .cache
