"""LMModule: pattern-based cross-entropy training of the music LM with Lightning.

A batch is either codec tokens (token shards) or audio (audio shards, encoded here by a frozen codec).
Conditions come from a `ConditionProvider` (text by cross-attention, melody as a prefix) with the
published training-time dropout. The loss is the cross-entropy per codebook over the positions the
pattern makes valid and the padding mask marks as real, averaged over codebooks.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch

from mgen.codec.checkpoint import load_codec
from mgen.conditioning import MELODY, MelodyConditioner
from mgen.conditioning.provider import ConditioningConfig, build_condition_provider
from mgen.lm.model import LM, Conditioning, LMConfig, count_parameters, cross_entropy_per_codebook, cross_entropy_sums
from mgen.train.parallel import (FSDPPlan, average_replicated_gradients, clip_grad_norm_, gather_full_lm, is_sharded,
                                 parallelize_lm)
from mgen.train.validation import Totals, real_samples


@dataclass
class LMTrainConfig:
    """Optimisation; defaults are the published MusicGen ones (AdamW, cosine with linear warm-up)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    eps: float = 1e-8
    warmup_steps: int = 4000
    lr_min_ratio: float = 0.0
    max_grad_norm: float = 1.0  # applied by the Trainer (gradient_clip_val)
    optimizer: str = "adamw"
    schedule: str = "cosine"
    peak_flops: float | None = None  # per device, for model FLOPs utilisation; None: not logged

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError(f"optim.lr must be > 0 and optim.warmup_steps >= 0, got {self.lr}, {self.warmup_steps}")
        if self.optimizer != "adamw" or self.schedule != "cosine":
            raise ValueError(f"mgen trains the LM with adamw + cosine, got {self.optimizer} + {self.schedule}")


def lm_flops_per_token(cfg: LMConfig, seq_len: int) -> float:
    """Training FLOPs per sequence position: 6 x parameters + causal attention (12 L D S / 2)."""
    return 6 * count_parameters(cfg) + 6 * cfg.num_layers * cfg.dim * seq_len


class LMModule(L.LightningModule):
    """`max_steps`: the length of the cosine schedule (the recipe's `trainer.max_steps`). `fsdp_plan`: how
    `configure_model` shards the LM when the strategy gives the module a device mesh (`mgen.train.parallel`)."""

    def __init__(self, lm: LMConfig, conditioning: ConditioningConfig | None = None,
                 optim: LMTrainConfig | None = None, max_steps: int = 1_000_000, codec_path: str | None = None,
                 fsdp_plan: FSDPPlan | None = None):
        super().__init__()
        self.lm_cfg = lm
        self.cond_cfg = conditioning or ConditioningConfig()
        self.train_cfg = optim or LMTrainConfig()
        self.max_steps = max_steps
        self.fsdp_plan = fsdp_plan
        self.save_hyperparameters({"lm": self.lm_cfg.to_dict(), "conditioning": asdict(self.cond_cfg),
                                   "train": asdict(self.train_cfg), "max_steps": max_steps, "codec_path": codec_path})
        self.lm = LM(self.lm_cfg)
        self.conditioner = build_condition_provider(self.cond_cfg, self.lm_cfg.dim)
        self.codec_path = codec_path
        # The frozen codec (for audio batches and validation samples) loads on demand and is kept in __dict__,
        # not as a submodule: checkpoints, EMA copies and the optimiser never see it.
        self.__dict__["_codec"] = None
        self._last_time: float | None = None
        n_q = self.lm_cfg.n_q
        self.val_totals = Totals({"ce": (n_q,), "tokens": (n_q,)})

    @classmethod
    def from_hparams(cls, hparams: dict[str, Any]) -> "LMModule":
        """The module a training checkpoint's `hyper_parameters` describe (weights not loaded)."""
        return cls(LMConfig.from_dict(hparams["lm"]), ConditioningConfig(**hparams["conditioning"]),
                   LMTrainConfig(**hparams["train"]), max_steps=int(hparams.get("max_steps", 1_000_000)),
                   codec_path=hparams.get("codec_path"))

    # ---------------------------------------------------------------------------------------- inputs
    def codec(self):
        if self._codec is None:
            if not self.codec_path:
                raise ValueError("this batch holds audio: the LM needs codec_path to encode it (or use token "
                                 "shards from `mgen prep tokenize`)")
            self.__dict__["_codec"] = load_codec(self.codec_path, device=self.device).requires_grad_(False)
        return self._codec.to(self.device)

    def tokens_of(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes [B, K, T], frame padding mask [B, T]) from a token or an audio batch."""
        if "codes" in batch:
            return batch["codes"].long(), batch["padding_mask"].bool()
        codec = self.codec()
        # fp32 with autocast off: under bf16-mixed the RVQ nearest-codeword search would pick other codes
        with torch.autocast(self.device.type, enabled=False):
            codes = codec.encode(batch["audio"].to(self.device).float(), sample_rate=codec.sample_rate)
        hop = codec.hop_length
        mask = batch["padding_mask"].bool()
        frames = mask[:, ::hop][:, : codes.shape[-1]]
        return codes, frames

    def conditioning_of(self, batch: dict[str, Any], batch_size: int) -> Conditioning:
        texts = batch.get("text") if self.cond_cfg.text else None
        if not self.cond_cfg.melody:
            return self.conditioner(texts=texts)
        if "audio" in batch:
            sr = self.codec().sample_rate
            return self.conditioner(texts=texts, melody_wavs=batch["audio"], sample_rate=sr)
        if "chroma" not in batch:
            raise ValueError("a melody LM trained on token shards needs chroma: tokenize with --chroma and set "
                             "data.chroma: true")
        conds = self.conditioner.conditions(texts=texts if texts is not None else [None] * batch_size)
        melody: MelodyConditioner = self.conditioner.conditioners[MELODY]
        conds[MELODY] = melody.embed_chroma(batch["chroma"].transpose(1, 2), chroma_rate=self.frame_rate())
        conds = self.conditioner.cfg_dropout(self.conditioner.attribute_dropout(conds))
        return self.conditioner.fuser(conds)

    def frame_rate(self) -> float:
        dm = getattr(self.trainer, "datamodule", None)
        return float(getattr(dm, "frame_rate", 50.0))

    # -------------------------------------------------------------------------------------- training
    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, per-codebook loss [K], number of target tokens as a 0-d tensor), without waiting on the device."""
        codes, padding = self.tokens_of(batch)
        if codes.shape[1] != self.lm_cfg.n_q:
            raise ValueError(f"the data has {codes.shape[1]} codebooks, the LM models {self.lm_cfg.n_q}")
        cond = self.conditioning_of(batch, codes.shape[0])
        logits, mask = self.lm.compute_predictions(codes, cond)
        loss, per_codebook = cross_entropy_per_codebook(logits, codes, mask, padding)
        return loss, per_codebook, padding.sum() * codes.shape[1]

    def _check_finite(self, loss: torch.Tensor) -> None:
        """Stop on a non-finite loss. Reading the loss makes the host wait for the device, so it is checked on the
        steps the trainer logs only (every `log_every_n_steps`): a NaN spreads into the weights and stays, so it is
        still caught, at most that many steps later."""
        trainer = self._trainer
        every = getattr(trainer, "log_every_n_steps", 1) if trainer is not None else 1
        if self.global_step % max(1, every) == 0 and not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite LM loss {loss.item()} at step {self.global_step}")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, per_codebook, tokens = self._loss(batch)
        self._check_finite(loss)
        logs = {"train/ce": loss.detach(), "train/ppl": loss.detach().exp()}
        for q, ce in enumerate(per_codebook.detach()):
            logs[f"train/ce_q{q}"] = ce
            logs[f"train/ppl_q{q}"] = ce.exp()
        now = time.perf_counter()
        if self._last_time is not None:
            seconds = now - self._last_time
            logs["train/tokens_per_s"] = tokens / seconds
            if self.train_cfg.peak_flops:
                seq = batch["codes"].shape[-1] if "codes" in batch else 1
                flops = lm_flops_per_token(self.lm_cfg, seq) * tokens / self.lm_cfg.n_q
                logs["train/mfu"] = flops / seconds / self.train_cfg.peak_flops
        self._last_time = now
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=per_codebook.numel())
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, batch_size=1)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_totals.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Adds the batch's summed cross-entropy and token count per codebook (padding samples add nothing)."""
        codes, padding = self.tokens_of(batch)
        padding = padding & real_samples(batch, codes.shape[0], padding.device)[:, None]
        cond = self.conditioning_of(batch, codes.shape[0])
        logits, mask = self.lm.compute_predictions(codes, cond)
        sums, tokens = cross_entropy_sums(logits, codes, mask, padding)
        self.val_totals.update(ce=sums, tokens=tokens)

    def on_validation_epoch_end(self) -> None:
        """``val/ce``: the mean over codebooks of each codebook's cross-entropy over every validation token of every
        rank (the totals are summed over ranks first, see :mod:`mgen.train.validation`); same on every rank."""
        totals = self.val_totals.compute()
        self.val_totals.reset()
        scored = totals["tokens"] > 0  # a codebook can have no target at all in very short segments (delays)
        if not bool(scored.any()):
            return  # no validation token reached this pass (e.g. limit_val_batches: 0)
        per_codebook = (totals["ce"] / totals["tokens"].clamp(min=1)).float()
        # identical on every rank: "max" keeps the value exact where a mean over ranks could round it
        self.log("val/ce", per_codebook[scored].mean(), prog_bar=True, sync_dist=True, reduce_fx="max")
        for q in scored.nonzero().flatten().tolist():
            self.log(f"val/ce_q{q}", per_codebook[q], sync_dist=True, reduce_fx="max")

    # ----------------------------------------------------------------------------------- optimiser
    def _lr_lambda(self, step: int) -> float:
        cfg = self.train_cfg
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, self.max_steps - cfg.warmup_steps))
        return cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def configure_optimizers(self):
        cfg = self.train_cfg
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.dim() < 2 or "norm" in name else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --------------------------------------------------------------------- sharded training (FSDP2)
    # `trainer.strategy: fsdp` gives the module a device mesh (Lightning's ModelParallelStrategy); sharding is
    # applied to the plain LM from outside by `mgen.train.parallel`. Without a mesh (one device, DDP) these hooks
    # change nothing.
    def configure_model(self) -> None:
        """Shard the LM over the device mesh (blocks, then the root); a no-op without a mesh or once sharded."""
        if self.device_mesh is not None and not is_sharded(self.lm):
            self.lm = parallelize_lm(self.lm, self.device_mesh, self.fsdp_plan)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """FSDP reduces the LM's gradients; the replicated conditioner projections are averaged here."""
        if self.device_mesh is not None:
            average_replicated_gradients(self, self.device_mesh)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Lightning's clipping cannot mix sharded and plain gradients: under FSDP clip by the global norm here."""
        if self.device_mesh is None:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError(f"under FSDP the LM clips gradients by norm only, got {gradient_clip_algorithm!r}")
        if gradient_clip_val:
            clip_grad_norm_(self.parameters(), float(gradient_clip_val))

    def on_fit_end(self) -> None:
        """After sharded training rank 0 gathers the full LM, so that the export and inference see plain weights
        (the other ranks keep their shards)."""
        if self.device_mesh is not None and is_sharded(self.lm):
            self.lm = gather_full_lm(self.lm)
