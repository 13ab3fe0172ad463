"""`MusicGen`: a trained model for users — load an export, generate audio from text and melody.

An export directory (written by `mgen fit` at the end of an LM run) holds `config.json` (LM, conditioning,
training settings), `model.safetensors` (LM + condition projections) and `codec/` (the codec export). It
loads with plain torch and safetensors: no Lightning, no pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file
from torch import Tensor

from mgen.codec.checkpoint import load_codec
from mgen.codec.model import Codec
from mgen.conditioning import ConditionProvider
from mgen.lm.generate import ProgressFn, SamplingParams, generate
from mgen.lm.model import LM, LMConfig

EXPORT_KIND = "mgen-lm"
MAX_PROMPT_CHARS = 2000


class MusicGen:
    """LM + conditioner + codec, ready to generate."""

    def __init__(self, lm: LM, conditioner: ConditionProvider, codec: Codec, max_window_seconds: float = 30.0):
        self.lm = lm.eval()
        self.conditioner = conditioner.eval()
        self.codec = codec.eval()
        self.max_window_seconds = max_window_seconds
        if lm.cfg.n_q != codec.num_codebooks or lm.cfg.card != codec.cardinality:
            raise ValueError(f"the LM models {lm.cfg.n_q} x {lm.cfg.card} codes, the codec makes "
                             f"{codec.num_codebooks} x {codec.cardinality}")

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "MusicGen":
        from mgen.train.lm_module import ConditioningConfig, build_condition_provider  # noqa: PLC0415

        path = Path(path)
        config_path = path / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{path}: not an mgen export (no config.json)")
        config = json.loads(config_path.read_text())
        if config.get("kind") != EXPORT_KIND:
            raise ValueError(f"{path}: holds a {config.get('kind', 'unknown')!r} model, not an mgen LM export")
        lm = LM(LMConfig.from_dict(config["lm"]))
        conditioner = build_condition_provider(ConditioningConfig(**config["conditioning"]), lm.cfg.dim)
        state = load_file(str(path / "model.safetensors"))
        lm.load_state_dict({k[3:]: v for k, v in state.items() if k.startswith("lm.")})
        conditioner.load_state_dict({k[12:]: v for k, v in state.items() if k.startswith("conditioner.")})
        codec = load_codec(path / "codec")
        window = float(config.get("train_segment_seconds") or 30.0)
        return cls(lm, conditioner, codec, window).to(device)

    def to(self, device: str | torch.device) -> "MusicGen":
        self.lm.to(device)
        self.conditioner.to(device)
        self.codec.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @torch.no_grad()
    def generate(self, texts: Sequence[str], duration: float, melody: Tensor | None = None,
                 melody_sample_rate: int | None = None, prompt_audio: Tensor | None = None,
                 cfg_coef: float = 3.0, top_k: int = 250, top_p: float = 0.0, temperature: float = 1.0,
                 seed: int | None = None, progress: ProgressFn | None = None) -> Tensor:
        """Audio [B, C, duration · sample_rate] for each text prompt.

        melody: [B, C, L] reference audio (melody models); prompt_audio: [B, C, L] at the codec's rate to
        continue. Longer than the training window, generation slides (window - 40% context).
        """
        if isinstance(texts, str) or not texts:
            raise ValueError("texts must be a non-empty list of prompts")
        for text in texts:
            if not text or not text.strip():
                raise ValueError("empty text prompt")
            if len(text) > MAX_PROMPT_CHARS:
                raise ValueError(f"text prompt of {len(text)} characters is longer than {MAX_PROMPT_CHARS}")
        if duration <= 0:
            raise ValueError(f"duration must be > 0 seconds, got {duration}")
        frames = max(1, round(duration * self.codec.frame_rate))
        conditioning = self.conditioner(texts=list(texts), melody_wavs=melody, sample_rate=melody_sample_rate)
        prompt = None
        if prompt_audio is not None:
            prompt = self.codec.encode(prompt_audio.to(self.device), sample_rate=self.codec.sample_rate)
            if prompt.shape[-1] >= frames:
                raise ValueError(f"the prompt audio ({prompt.shape[-1] / self.codec.frame_rate:.1f} s) is not shorter "
                                 f"than the requested duration ({duration} s)")
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, cfg_coef=cfg_coef)
        window = max(1, round(self.max_window_seconds * self.codec.frame_rate))
        codes = generate(self.lm, frames, conditioning, prompt=prompt, params=params, batch_size=len(texts),
                         max_window=window, generator=generator, progress=progress)
        return self.codec.decode(codes, length=round(duration * self.codec.sample_rate))
