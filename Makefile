# One command each for the things people do with this repo. The venv is made on first use, so a fresh
# clone needs nothing but python3 (>= 3.11).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install test lint format demo tools bench bench-smoke bench-chunk clean

# Plain `make`: sift, sift-tui and the test tools in .venv.
install: $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install when the project metadata changes; the stamp keeps `make test` fast afterwards.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint nix-tools bytecode
	$(BIN)/python -m pytest
	$(MAKE) bench-smoke

# Compiled bytecode for the packages, as an installed package has: the tests, the demo and the
# benchmark start many daemons, and each would otherwise compile every module again when
# PYTHONDONTWRITEBYTECODE is set (compileall only redoes changed files).
.PHONY: bytecode
bytecode: $(VENV)/.installed
	$(BIN)/python -m compileall -q sift sift_tui

# nix-instantiate, for tests/test_nix_files.py (Debian's nix-bin; as root only, else those skip).
.PHONY: nix-tools
nix-tools:
	@command -v nix-instantiate >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && apt-get install -y -qq nix-bin >/dev/null)

# A master and two peers on 127.0.0.1 over a generated sample dataset, with the console attached
# (q quits and stops them; DEMO_ARGS=--headless for a plain status line).
demo: $(VENV)/.installed bytecode
	$(BIN)/sift demo $(DEMO_ARGS)

# The competitors the benchmark runs sift against (Debian packages).
tools:
	command -v rsync >/dev/null && command -v syncthing >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq rsync syncthing)

# The full suite (about 15 minutes): sift, rsync and Syncthing on the same data; BENCH_ARGS
# passes options, e.g. BENCH_ARGS="--scenarios ac --repeat 5".
bench: $(VENV)/.installed tools
	$(BIN)/python -m bench $(BENCH_ARGS)

# Every scenario once at a tiny size: fails when a tool does not converge or bytes differ.
bench-smoke: $(VENV)/.installed tools
	$(BIN)/python -m bench --smoke --json bench/results/smoke.json

bench-chunk: $(VENV)/.installed
	$(BIN)/python -m bench.chunk

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
