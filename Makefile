# ainode: the two set-up commands of the README, plus helpers.
#   make run    install the node into .venv and serve config/node.yaml (SQLite, local spool)
#   make test   install everything the tests use (Debian peers + Python) and run the suite
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= config/node.yaml

.PHONY: run test test-slow install install-test lint bench image

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
	$(PY) -m pytest --durations=25 $(PYTEST_ARGS)

image: install
	$(PY) scripts/build-node-image.py --tag ainode:cpu

# the slow tests (100,000 fuzzed PDUs, retraining dx-chest, the large CT phantom, 20 kill -9
# cycles in every storage mode and of one receiver process, the ingest suite in the os modes)
# and 25 times the dataset-fuzz examples: ~27 min here
test-slow: install-test
	AINODE_SLOW=1 $(PY) -m pytest -m slow $(PYTEST_ARGS)
	AINODE_SLOW=1 $(PY) -m pytest tests/test_ingest_fuzz_dataset.py $(PYTEST_ARGS)

lint:
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench:
	$(PY) bench/ingest.py && $(PY) bench/inference.py && $(PY) bench/e2e.py
