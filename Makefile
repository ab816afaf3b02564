# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The reference stack: the newest DGL whose compiled parts load on Linux from PyPI.
REFERENCE_STACK := torch==2.2.1 dgl==2.1.0 "numpy<2" torchdata==0.7.1 pandas pydantic pyyaml numba psutil pytest tqdm matplotlib

.PHONY: demo test venv clean
venv: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(REFERENCE_STACK)
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/diskgnn run --scale s --workdir .demo --epochs 5

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) .venv-core .demo build *.egg-info
