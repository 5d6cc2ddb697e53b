# The two commands of the README's quick start, on a machine with Python >= 3.10 and pip:
#   make demo   set up .venv and run the whole default workflow (the embedded demo)
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: setup demo test lint bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" snakemake --cores $(CORES)

test: setup
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest -q

lint: setup
	PATH="$(abspath $(BIN)):$$PATH" snakemake --lint

clean:
	rm -rf results logs benchmarks .snakemake
