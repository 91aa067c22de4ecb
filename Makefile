# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUN    ?= runs/demo
VOCAB  ?= 8192
STAMP  := $(VENV)/.ownllm-setup

.PHONY: setup lint test test-all demo bench gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

## Lint, formatting and types: ruff and mypy, configured in pyproject.toml (part of `make test`).
lint: setup
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts
	$(VENV)/bin/mypy

## Fast test suite (what CI runs), after the lint.
test: lint
	$(PY) -m pytest -q -m "not slow and not gpu"

## Everything, slow tests included.
test-all: setup
	$(PY) -m pytest -q

## The main job: the whole pipeline on the bundled corpus with the `cpu` preset (about 22-25 minutes on 2 quiet cores).
demo: setup
	@echo "ownllm demo: corpus -> tokenizer -> token shards -> 10 minutes of pretraining -> samples"
	@echo "            -> 2,500 steps of chat fine-tuning (about 9 minutes) -> a short conversation with the assistant"
	@echo "            -> the benchmark scores and chat skills of the chat model (ownllm eval, about 4 minutes) -> the report."
	@echo "This takes about 22-25 minutes on a quiet 2-core CPU, longer on a busy one. Artifacts go to $(RUN)/; Ctrl-C stops safely."
	$(VENV)/bin/ownllm data --run $(RUN)
	$(VENV)/bin/ownllm tokenizer --run $(RUN) --vocab-size $(VOCAB)
	$(VENV)/bin/ownllm tokenizer --run $(RUN) --stats
	$(VENV)/bin/ownllm tokenize --run $(RUN)
	$(VENV)/bin/ownllm pretrain --run $(RUN) --preset cpu --restart
	$(VENV)/bin/ownllm sample --run $(RUN) --prompt "Once upon a time" --max-tokens 120 --samples 3 --seed 1
	$(VENV)/bin/ownllm sft --run $(RUN) --preset cpu --restart
	$(VENV)/bin/ownllm chat --run $(RUN) --seed 1 -p "What is your name?"
	$(VENV)/bin/ownllm chat --run $(RUN) --seed 1 -p "What is 12 * 7?"
	$(VENV)/bin/ownllm chat --run $(RUN) --seed 1 -p "Tell me a story about a cat."
	$(VENV)/bin/ownllm eval --run $(RUN)
	$(VENV)/bin/ownllm report --run $(RUN)
	@[ -t 0 ] && echo "Now talk to it yourself (/help for commands, Ctrl-D to leave):" && $(VENV)/bin/ownllm chat --run $(RUN) || true

## Benchmarks print measured figures (never part of the tests).
bench: setup
	EXTRAS=dev,bench bash scripts/setup.sh
	$(PY) bench/tokenizer.py
	$(PY) bench/train_throughput.py
	$(PY) bench/corpus.py

## On a machine with an NVIDIA GPU and PyTorch (no network needed): the GPU tests and benchmarks, about
## 5 minutes; the training data is made first anywhere with `scripts/gpu_check.sh --prepare`.
gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
