"""Test-wide settings: never touch a model hub, never sync W&B, keep CPU threads predictable; the shared fixtures.

The tests mirror the package (tests/codec, tests/lm, tests/train, ...; end-to-end and Slurm runs in
tests/integration). This folder is on sys.path (pytest puts a rootdir-less conftest's folder there), so the helper
modules beside this file import by name from any test folder."""

import os

import pytest
import torch

# Fixtures shared across the test folders (the helper modules in tests/ also hold plain functions, imported by name)
from clap_fixtures import hf_cache  # noqa: F401
from data_fixtures import synth_corpus  # noqa: F401
from eval_fixtures import eval_setup, random_weights  # noqa: F401
from lm_fixtures import token_shards  # noqa: F401
from slurm_fixtures import slurm_cluster  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module: on a shared 2-core machine, two threads make every new shape slow."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
