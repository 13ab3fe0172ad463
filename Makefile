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

CLAP_VENV := .venv-clap

.PHONY: install test test-clap clap-venv demo bench clean

install: $(STAMP)

# On machines without an NVIDIA GPU, install the CPU torch wheel first so that no multi-GB CUDA build is pulled.
$(STAMP): pyproject.toml data_prep/install_system_deps.sh scripts/fetch_reference_packages.sh
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
	PYTHON=$(PY) bash scripts/fetch_reference_packages.sh
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check mgen data_prep tests
	$(PY) -m pytest -q

# LAION-CLAP needs torch 2.14.1 + torchvision 0.29.1 and numpy<2: a separate env runs its tests for real.
clap-venv: $(CLAP_VENV)/.mgen-clap-installed

$(CLAP_VENV)/.mgen-clap-installed: scripts/make_clap_venv.sh
	bash scripts/make_clap_venv.sh --force

test-clap: $(CLAP_VENV)/.mgen-clap-installed
	MGEN_REQUIRE_CLAP=1 $(CLAP_VENV)/bin/python -m pytest -q tests/conditioning/test_conditioning_clap.py tests/conditioning/test_conditioning_melody.py \
		tests/metrics/test_metrics_clap_laion.py

demo: $(STAMP)
	$(PY) -m mgen.cli demo --out outputs/demo

bench: $(STAMP)
	$(PY) -m mgen.cli bench lm-train --vs transformers
	$(PY) -m mgen.cli bench generate --vs transformers
	$(PY) -m mgen.cli bench codec --vs transformers
	$(PY) -m mgen.cli bench shards
	$(PY) -m mgen.cli bench read

clean:
	rm -rf $(VENV) $(CLAP_VENV) outputs .pytest_cache
