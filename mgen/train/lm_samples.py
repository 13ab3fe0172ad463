"""Validation samples: what the LM generates for validation prompts, as audio and spectrograms.

Losses say little about how a music model sounds, so every few validations the callback takes the first
validation batch, generates a short clip for each of its first prompts (text, and melody when the model has
a melody conditioner) with classifier-free guidance, decodes it with the run's codec and logs it next to the
reference (the decoded ground-truth tokens) through `mgen.train.media`. Every rank generates (a sharded
model needs all ranks in each forward); rank 0 logs. With `EMAWeightAveraging` the samples come from the
averaged weights, which the callback swaps in for validation.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch

from mgen.lm.generate import SamplingParams, generate
from mgen.train.media import log_audio_examples


def first_samples(batch: dict[str, Any], count: int) -> dict[str, Any]:
    """The first `count` samples of a collated batch (tensors and lists alike)."""
    def head(value: Any) -> Any:
        batched = isinstance(value, (list, tuple)) or (isinstance(value, torch.Tensor) and value.dim() > 0)
        return value[:count] if batched else value

    return {k: head(v) for k, v in batch.items()}


class ValidationSamples(L.Callback):
    """Generate `count` clips of `seconds` from the first validation batch every `every_n_validations`."""

    def __init__(self, count: int = 2, seconds: float = 5.0, every_n_validations: int = 1, cfg_coef: float = 3.0,
                 top_k: int = 250, temperature: float = 1.0, seed: int = 0):
        if count < 1 or seconds <= 0 or every_n_validations < 1:
            raise ValueError(f"samples need count >= 1, seconds > 0 and every_n_validations >= 1, got {count}, "
                             f"{seconds}, {every_n_validations}")
        self.count = count
        self.seconds = seconds
        self.every = every_n_validations
        self.params = SamplingParams(temperature=temperature, top_k=top_k, cfg_coef=cfg_coef)
        self.seed = seed
        self.validations = 0
        self.written: list = []  # files of the latest samples (WAV + PNG), for reports and tests

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validations += 1

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}  # a resumed run keeps the every_n_validations rhythm

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))

    def _due(self, trainer: L.Trainer, batch_idx: int, dataloader_idx: int) -> bool:
        return (batch_idx == 0 and dataloader_idx == 0 and not trainer.sanity_checking
                and (self.validations - 1) % self.every == 0)

    @torch.no_grad()
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._due(trainer, batch_idx, dataloader_idx):
            return
        if not pl_module.codec_path:
            if self.validations == 1:
                warnings.warn("validation samples need the run's codec (recipe `codec:` or token shards that name "
                              "it): no samples are generated", stacklevel=1)
            return
        batch = first_samples(batch, self.count)
        codes, padding = pl_module.tokens_of(batch)
        size = codes.shape[0]
        codec = pl_module.codec()
        frames = max(1, round(self.seconds * codec.frame_rate))
        conditioning = pl_module.conditioning_of(batch, size)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        generated = generate(pl_module.lm, frames, conditioning, params=self.params, batch_size=size,
                             generator=generator)
        wavs = codec.decode(generated)
        reference_frames = min(frames, int(padding.sum(dim=1).min()))
        references = codec.decode(codes[..., :reference_frames]) if reference_frames > 0 else None
        if not trainer.is_global_zero:
            return
        texts = batch.get("text") or [None] * size
        captions = [t if t else "(no text)" for t in texts]
        step = trainer.global_step
        self.written = log_audio_examples(trainer.loggers, "val/samples", list(wavs), codec.sample_rate, step,
                                          captions=captions)
        if references is not None:
            self.written += log_audio_examples(trainer.loggers, "val/samples_reference", list(references),
                                               codec.sample_rate, step, captions=captions)
