"""Fixtures of the evaluation tests: random-weight embedder files (written once per session), audio shards of the
small real-music corpus, a tiny codec and a tiny text + melody LM export built on it, and folders of audio.

CI has no published weights: VGGish / PaSST files with random values in the published layouts come from
`write_random_weights` (reports label them ``random-weights``), and the codec-encoder embedder needs none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from data_fixtures import tone

_cache: dict[str, Any] = {}


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{'vggish': file, 'passt': file (10 s variant)} with random values (a few seconds to write, so once)."""
    if "weights" not in _cache:
        from mgen.metrics.embedders import write_random_weights

        root = tmp_path_factory.mktemp("eval_weights")
        _cache["weights"] = {"vggish": write_random_weights("vggish", root / "vggish-random.pth", seed=0),
                             "passt": write_random_weights("passt-10s", root / "passt10-random.pt", seed=1)}
    return _cache["weights"]


@pytest.fixture(scope="session")
def eval_setup(synth_corpus, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Audio shards (1 s segments, 32 kHz mono) of the corpus, a tiny codec export, and a tiny untrained text +
    melody LM export using it (generation and scoring mechanics do not need a trained model)."""
    if "setup" not in _cache:
        from data_prep.shards import ShardConfig, write_shards
        from mgen.codec.checkpoint import save_codec
        from mgen.codec.model import Codec
        from mgen.conditioning.provider import ConditioningConfig
        from mgen.lm.model import LMConfig
        from mgen.train.lm_export import write_lm_export
        from mgen.train.lm_module import LMModule

        root = tmp_path_factory.mktemp("eval_setup")
        write_shards(synth_corpus["dir"] / "audio", root / "shards",
                     ShardConfig(sample_rate=32000, channels=1, segment_seconds=1.0, shard_max_samples=4,
                                 valid_fraction=0.34), workers=1, progress=False)
        torch.manual_seed(0)
        codec = Codec.from_preset("tiny").eval()
        save_codec(codec, root / "codec")
        module = LMModule(LMConfig.preset("tiny", n_q=4, card=256), ConditioningConfig(text=True, melody=True))
        module.hparams["train_segment_seconds"] = 1.0
        write_lm_export(root / "lm", dict(module.hparams), module.lm, module.conditioner, codec)
        _cache["setup"] = {"shards": root / "shards", "codec": root / "codec", "lm": root / "lm"}
    return _cache["setup"]


def write_folder(folder: Path, freqs: list[float], seconds: float = 1.5, rate: int = 32000, channels: int = 1,
                 captions: bool = True, prefix: str = "clip") -> Path:
    """Tones named <prefix>0.. (with a captions.jsonl naming their pitch)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, freq in enumerate(freqs):
        sf.write(folder / f"{prefix}{i}.wav", tone(seconds, rate, channels, freq), rate, subtype="FLOAT")
    if captions:
        (folder / "captions.jsonl").write_text(
            "".join(json.dumps({"stem": f"{prefix}{i}", "text": f"a tone at {f:.0f} Hz"}) + "\n"
                    for i, f in enumerate(freqs)))
    return folder


def without_run(report: dict[str, Any]) -> dict[str, Any]:
    """A report without what differs between two runs of one evaluation (wall time, cache reuse)."""
    return {k: v for k, v in report.items() if k != "run"}


def nan_wav(path: Path, seconds: float = 1.0, rate: int = 32000) -> Path:
    audio = tone(seconds, rate, 1, 330.0)
    audio[100] = np.nan
    sf.write(path, audio, rate, subtype="FLOAT")
    return path
