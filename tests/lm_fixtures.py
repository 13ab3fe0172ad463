"""LM test helpers shared by the lm, train and integration tests: the session's token shards (with the codec that
made them), a small LM recipe over them, and a random-init tiny LM with its conditioning."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import soundfile as sf
import torch

if TYPE_CHECKING:  # mgen loads lazily: the conftest imports this module in the CLAP environment too
    from mgen.lm.model import LM, Conditioning

@pytest.fixture(scope="session")
def token_shards(synth_corpus, tmp_path_factory) -> Path:
    """Token shards of the session's corpus (8 train / 4 valid samples, 3 per shard) and their codec (beside them,
    `../codec`); built once per session, read only."""
    from data_prep.shards import ShardConfig, write_shards
    from data_prep.tokenize import tokenize_shards
    from mgen.codec.checkpoint import save_codec
    from mgen.codec.model import Codec

    root = tmp_path_factory.mktemp("lm_tokens")
    write_shards(synth_corpus["dir"] / "audio", root / "audio",
                 ShardConfig(sample_rate=32000, channels=1, segment_seconds=2.5, shard_max_samples=3,
                             valid_fraction=0.34), workers=1, progress=False)
    torch.manual_seed(0)
    codec = Codec.from_preset("tiny")
    clips = [sf.read(p, dtype="float32")[0][:32000] for p in sorted((synth_corpus["dir"] / "audio").glob("*.flac"))]
    codec.train()(torch.tensor(np.stack(clips))[:, None])  # k-means initialises the codebooks on real music
    save_codec(codec.eval(), root / "codec")
    tokenize_shards(root / "audio", root / "tokens", root / "codec", progress=False)
    return root / "tokens"


def recipe(shards: Path, steps: int) -> dict:
    return {
        "task": "lm", "seed": 0,
        "model": {"preset": "tiny", "n_q": 4, "card": 256},
        "conditioning": {"text": True, "word_dropout": 0.3},
        "optim": {"lr": 3e-3, "warmup_steps": 20, "max_grad_norm": 1.0},
        "data": {"shards": str(shards), "segment_seconds": 1.0, "global_batch_size": 8, "num_workers": 0,
                 "resampled": True, "epoch_length": 80},
        "trainer": {"max_steps": steps, "val_every_n_steps": 50, "limit_val_batches": 4,
                    "checkpoint_every_n_steps": 50, "progress_bar": False, "log_every_n_steps": 5},
    }


def tiny(**overrides) -> LM:
    from mgen.lm.model import LM, LMConfig

    torch.manual_seed(0)
    return LM(LMConfig.preset("tiny", card=32, **overrides)).eval()


def cond(batch: int = 2, seed: int = 1) -> Conditioning:
    from mgen.lm.model import Conditioning

    g = torch.Generator().manual_seed(seed)
    return Conditioning(cross=torch.randn(batch, 3, 64, generator=g))
