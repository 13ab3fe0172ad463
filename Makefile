# mgen developer entry points. Every target installs what it needs when .venv is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mgen-installed
TORCH_CPU_VERSION ?= 2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo bench clean

install: $(STAMP)

# On machines without an NVIDIA GPU, install the CPU torch wheel first so that no multi-GB CUDA build is pulled.
$(STAMP): pyproject.toml data_prep/install_system_deps.sh
	bash data_prep/install_system_deps.sh
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA GPU found: installing the default (CUDA) torch build"; \
	else \
		echo "no CUDA GPU: installing the CPU wheel torch==$(TORCH_CPU_VERSION)"; \
		$(PY) -m pip install -q "torch==$(TORCH_CPU_VERSION)"; \
	fi
	$(PY) -m pip install -q -e ".[dev,xformers]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m mgen.cli demo --out outputs/demo

bench: $(STAMP)
	$(PY) -m mgen.cli bench lm-train --vs transformers
	$(PY) -m mgen.cli bench generate --vs transformers
	$(PY) -m mgen.cli bench codec --vs transformers
	$(PY) -m mgen.cli bench shards
	$(PY) -m mgen.cli bench read

clean:
	rm -rf $(VENV) outputs .pytest_cache
