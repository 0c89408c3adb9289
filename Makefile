# Two commands on a fresh clone: `make demo` (the main job) and `make test`.
# Each creates .venv and installs what it needs the first time.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# tiny Shakespeare is downloaded (and sha256-checked) unless LMLAB_SHAKESPEARE_FILE names a local copy
export LMLAB_SHAKESPEARE_FILE

.PHONY: setup demo test lint format bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU build of PyTorch first, so nothing pulls the multi-GB CUDA wheels
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/lmlab prepare shakespeare --tokenizer char --out data/shakespeare-char --overwrite
	$(BIN)/lmlab prepare shakespeare --tokenizer bpe --vocab-size 2048 --out data/shakespeare-bpe --overwrite
	rm -rf runs/demo-baby
	$(BIN)/lmlab train data/shakespeare-char baby --out runs/demo-baby
	$(BIN)/lmlab sample runs/demo-baby --prompt "ROMEO:" --max-new-tokens 400 --seed 1337

test: setup lint
	$(BIN)/python -m pytest -q -n 2

lint: setup
	$(BIN)/ruff check lmlab tests benchmarks
	$(BIN)/ruff format --check lmlab tests benchmarks

format: setup
	$(BIN)/ruff format lmlab tests benchmarks
	$(BIN)/ruff check --fix lmlab tests benchmarks

# every benchmark, one after the other (about 15 minutes on 2 cores); each rewrites its table in BENCHMARKS.md
bench: setup
	$(BIN)/python -m benchmarks.train_step
	$(BIN)/python -m benchmarks.generate
	$(BIN)/python -m benchmarks.profile
	$(BIN)/python -m benchmarks.train --rounds 5
	$(BIN)/python -m benchmarks.prepare

clean:
	rm -rf $(VENV) data runs .pytest_cache
