# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUN    ?= runs/demo
STAMP  := $(VENV)/.ownllm-setup

.PHONY: setup test test-all demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

## Fast test suite (what CI runs).
test: setup
	$(PY) -m pytest -q -m "not slow and not gpu"

## Everything, slow tests included.
test-all: setup
	$(PY) -m pytest -q

## The main job on the bundled corpus: clean corpus, train the tokenizer, write token shards.
demo: setup
	$(VENV)/bin/ownllm data --run $(RUN)
	$(VENV)/bin/ownllm tokenizer --run $(RUN) --vocab-size 8192
	$(VENV)/bin/ownllm tokenizer --run $(RUN) --stats
	$(VENV)/bin/ownllm tokenize --run $(RUN)

## Benchmarks print measured figures (never part of the tests).
bench: setup
	EXTRAS=dev,bench bash scripts/setup.sh
	$(PY) bench/tokenizer.py
	$(PY) bench/corpus.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
