"""`MusicGen`: a trained model for users — load an export, generate audio from text and melody.

An export directory (written by `mgen fit` at the end of an LM run, or by `mgen export`) holds `config.json`
(LM, conditioning, training settings), `model.safetensors` (LM + condition projections), `codec/` (the codec
export) and, unless the text encoder is the packaged MiniLM, `text_encoder/` (its weights and tokenizer, so the
export loads on a machine without the original encoder folder). It loads with plain torch and safetensors: no
Lightning, no pickle. A relative `conditioning.text_encoder` path is resolved against the export directory
when it exists there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file
from torch import Tensor

from mgen.codec.checkpoint import load_codec
from mgen.codec.model import Codec
from mgen.export_dir import WEIGHTS_NAME, read_export_config
from mgen.conditioning import ConditionProvider
from mgen.conditioning.provider import MELODY, ConditioningConfig, build_condition_provider
from mgen.lm.generate import ProgressFn, SamplingParams, generate
from mgen.lm.model import LM, Conditioning, LMConfig

EXPORT_KIND = "mgen-lm"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MAX_PROMPT_CHARS = 2000


class MusicGen:
    """LM + conditioner + codec, ready to generate."""

    def __init__(self, lm: LM, conditioner: ConditionProvider, codec: Codec, max_window_seconds: float = 30.0):
        self.lm = lm.eval()
        self.conditioner = conditioner.eval()
        self.codec = codec.eval()
        self.max_window_seconds = max_window_seconds
        if lm.cfg.n_q != codec.n_q or lm.cfg.card != codec.card:
            raise ValueError(f"the LM models {lm.cfg.n_q} x {lm.cfg.card} codes, the codec makes "
                             f"{codec.n_q} x {codec.card}")

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", codec: str | Path | None = None,
             dtype: str = "fp32") -> "MusicGen":
        """The model of an export directory; `codec` (an export or a CodecModule .ckpt) replaces `path/codec`.
        `dtype` (fp32 | bf16 | fp16): the LM's weights and activations; the codec, the conditioners, the CFG mix
        and sampling stay in fp32."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        path = Path(path)
        config, kind = read_export_config(path)
        if kind != EXPORT_KIND:
            raise ValueError(f"{path}: holds a {kind!r} model, not an mgen LM export")
        conditioning = dict(config.get("conditioning") or {})
        encoder = conditioning.get("text_encoder")
        if encoder and not Path(encoder).is_absolute() and (path / encoder).is_dir():
            conditioning["text_encoder"] = str(path / encoder)  # bundled with the export
        try:
            state = load_file(str(path / WEIGHTS_NAME))
        except Exception as err:  # missing, truncated or not a safetensors file
            raise ValueError(f"{path}: cannot read {WEIGHTS_NAME} ({str(err).strip()[:300]})") from err
        model_codec = load_codec(codec if codec is not None else path / "codec")
        model = cls.from_config({**config, "conditioning": conditioning}, state, model_codec, where=path).to(device)
        model.lm.to(DTYPES[dtype])
        return model

    @classmethod
    def from_config(cls, config: Mapping[str, Any], state: Mapping[str, Tensor], codec: Codec,
                    where: str | Path = "model") -> "MusicGen":
        """Build from an export config (`lm`, `conditioning`, `train_segment_seconds`) and the `lm.*` /
        `conditioner.*` weights: what an export and an LM training checkpoint both hold. `where` names the
        source in errors."""
        try:
            lm = LM(LMConfig.from_dict(dict(config["lm"])))
            cond_cfg = ConditioningConfig(**(config.get("conditioning") or {}))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: bad model config: {err}") from err
        try:
            conditioner = build_condition_provider(cond_cfg, lm.cfg.dim)
        except OSError as err:  # the text encoder is not available locally
            raise FileNotFoundError(f"{where}: {err}") from err
        try:
            lm.load_state_dict({k[3:]: v for k, v in state.items() if k.startswith("lm.")})
            conditioner.load_state_dict({k[12:]: v for k, v in state.items() if k.startswith("conditioner.")})
        except RuntimeError as err:
            detail = " ".join(str(err).split())[:400]
            raise ValueError(f"{where}: weights do not match the model config: {detail}") from err
        window = float(config.get("train_segment_seconds") or 30.0)
        return cls(lm, conditioner, codec, window)

    def _generators(self, seed: int | Sequence[int] | None,
                    batch: int) -> torch.Generator | list[torch.Generator] | None:
        if seed is None:
            return None
        if isinstance(seed, int):
            return torch.Generator(device=self.device).manual_seed(seed)
        seeds = [int(s) for s in seed]
        if len(seeds) != batch:
            raise ValueError(f"{len(seeds)} seeds for {batch} prompts: give one seed, or one per prompt")
        return [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

    def _melody_frames(self, melody: Tensor | None, sample_rate: int | None) -> int | None:
        """The melody prefix length the LM was trained with (its training window's chroma frames): a melody's
        chroma is looped or cut to it, as in training and in audiocraft, so that a melody shorter than the window
        does not give the LM a prefix of a length it never saw (its frames would no longer line up with the
        audio's)."""
        conditioner = self.conditioner.conditioners[MELODY] if MELODY in self.conditioner.conditioners else None
        if melody is None or conditioner is None or not sample_rate:
            return None
        return conditioner.frames_for(round(self.max_window_seconds * sample_rate), sample_rate)

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
                 seed: int | Sequence[int] | None = None, progress: ProgressFn | None = None) -> Tensor:
        """Audio [B, C, duration · sample_rate] for each text prompt.

        melody: [B, C, L] reference audio (melody models); prompt_audio: [B, C, L] at the codec's rate to
        continue. Longer than the training window, generation slides (window - 40% context).
        seed: one seed for the batch, or one per prompt: then each clip is drawn from its own generator, so a clip
        depends on its prompt and seed only, not on which other prompts share the batch (up to floating-point
        differences between batch shapes).
        """
        if isinstance(texts, str) or not texts:
            raise ValueError("texts must be a non-empty list of prompts")
        for text in texts:
            if not text or not text.strip():
                raise ValueError("empty text prompt")
            if len(text) > MAX_PROMPT_CHARS:
                raise ValueError(f"text prompt of {len(text)} characters is longer than {MAX_PROMPT_CHARS}")
        if not math.isfinite(duration) or duration <= 0:
            raise ValueError(f"duration must be > 0 seconds (and finite), got {duration}")
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, cfg_coef=cfg_coef)
        frames = max(1, round(duration * self.codec.frame_rate))
        conditioning = self.conditioner(texts=list(texts), melody_wavs=melody, sample_rate=melody_sample_rate,
                                        melody_frames=self._melody_frames(melody, melody_sample_rate))
        prompt = None
        if prompt_audio is not None:
            prompt = self.codec.encode(prompt_audio.to(self.device), sample_rate=self.codec.sample_rate)
            if prompt.shape[-1] >= frames:
                raise ValueError(f"the prompt audio ({prompt.shape[-1] / self.codec.frame_rate:.1f} s) is not shorter "
                                 f"than the requested duration ({duration} s)")
        conditioning = _cast(conditioning, next(self.lm.parameters()).dtype)
        generator = self._generators(seed, len(texts))
        window = max(1, round(self.max_window_seconds * self.codec.frame_rate))
        codes = generate(self.lm, frames, conditioning, prompt=prompt, params=params, batch_size=len(texts),
                         max_window=window, generator=generator, progress=progress)
        return self.codec.decode(codes, length=round(duration * self.codec.sample_rate))


def _cast(conditioning: Conditioning, dtype: torch.dtype) -> Conditioning:
    """The condition tensors in the LM's dtype (a bf16 / fp16 LM takes its cross-attention memory and prefix in its
    own dtype; the conditioners that made them run in fp32). Masks stay boolean."""
    def cast(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(dtype)

    return dataclasses.replace(conditioning, cross=cast(conditioning.cross), prefix=cast(conditioning.prefix))
