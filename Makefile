# ainode: the two set-up commands of the README, plus helpers.
#   make run    install the node into .venv and serve config/node.yaml (SQLite, local spool)
#   make test   install everything the tests use (Debian peers + Python) and run the suite
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= config/node.yaml

.PHONY: run test install install-test lint bench image

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .

run: install
	$(VENV)/bin/ainode serve --config $(CONFIG)

install-test: $(PY)
	bash scripts/install-test-peers.sh
	bash scripts/fetch-ohif.sh
	bash scripts/install-triton.sh
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,scale]'
	$(PY) scripts/build-test-images.py

test: install-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

image: install
	$(PY) scripts/build-node-image.py --tag ainode:cpu

lint:
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench:
	$(PY) bench/ingest.py && $(PY) bench/inference.py && $(PY) bench/e2e.py
