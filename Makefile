# The README's two commands: `make run` (install, then transcribe the bundled samples) and
# `make test` (install, then lint, type-check and test). Everything Python installs into .venv;
# Debian packages install through apt-get when run as root (CI, the dev machines).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Debian packages needed at run or test time: the TTS engines that voice the training corpus, and
# chromium for the demo page's browser tests.
SYSTEM_PACKAGES := python3-venv espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts chromium prometheus

.PHONY: install system-deps run serve test lint typecheck bench bench-api bench-edge eval clean

install: system-deps $(STAMP)

system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "please install these Debian packages: $$missing"; exit 1; fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

run: install
	$(BIN)/voice-search transcribe data/samples --format jsonl

# The voice-search API and demo page on http://127.0.0.1:8000 (VOICE_SEARCH_* settings apply).
serve: install
	$(BIN)/voice-search serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: install lint typecheck
	$(BIN)/pytest

bench: install
	$(BIN)/python scripts/bench_pipeline.py

# The API under load on localhost (search success, latency, throughput, overload); needs corpus/.
bench-api: install
	$(BIN)/python scripts/bench_api.py --json .cache/bench_api.json

# Edge (int8, 1 and 2 threads) vs cloud (the server through wifi/4G/3G profiles): table and plots
# in .cache/edge-cloud/ (corpus/ test clips when built, else the bundled samples).
bench-edge: install
	$(BIN)/python scripts/bench_edge_cloud.py --out .cache/edge-cloud

# The model against offline peers (pocketsphinx, Whisper tiny.en); needs a built corpus/.
eval: install
	$(BIN)/pip install --quiet -e ".[dev,peers]"
	$(BIN)/python scripts/evaluate_models.py --limit 100 --json .cache/evaluation.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .cache
