"""CodecModule: adversarial training of the EnCodec-style codec with Lightning.

Each step: the generator (codec) reconstructs the batch; the MS-STFT discriminator is updated on the
detached reconstruction (hinge loss); then the generator is updated with L1 + multi-scale mel +
adversarial + feature-matching losses combined by the gradient balancer, plus the VQ commitment penalty,
which is added outside the balancer as published. Optimisation is manual (two optimisers).

The module keeps an exponential moving average of the codec (`codec_ema`, audiocraft's unbiased EMA):
validation, the exported codec and `load_codec(<.ckpt>)` all use it. It lives in the module rather than in
Lightning's `EMAWeightAveraging` callback because that callback counts optimiser steps (two per batch here,
one before the adversarial losses start), averages every buffer including integer counters, copies the
discriminator, and only hands its weights to the module at the end of `fit`.

A typed codec recipe (`mgen.train.recipe.CodecRecipe`) becomes a module, callbacks and Trainer arguments in
`mgen.train.codec_recipe`; `export_codec` writes the EMA codec.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mgen.codec.checkpoint import save_codec
from mgen.codec.discriminator import MultiScaleSTFTDiscriminator
from mgen.codec.losses import (LossBalancer, MultiScaleMelLoss, feature_matching_loss, hinge_discriminator_loss,
                               hinge_generator_loss, l1_waveform_loss, si_snr)
from mgen.codec.model import Codec, CodecConfig
from mgen.train.checkpoints import Retention, RunCheckpoint, check_interval
from mgen.train.ema import EMAConfig
from mgen.train.media import log_audio_examples
from mgen.train.validation import Totals, real_samples

KNOWN_LOSSES = ("adv", "feat", "l1", "msspec")
# Multi-device strategy for codec training: each step runs a discriminator backward that leaves the codec
# unused and a generator backward that leaves the discriminator unused (plain "ddp" raises on both).
DDP_STRATEGY = "ddp_find_unused_parameters_true"


@dataclass
class CodecTrainConfig:
    """Optimisation of the codec; defaults are the published EnCodec/MusicGen ones."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    loss_weights: dict[str, float] = field(default_factory=lambda: {"adv": 4.0, "feat": 4.0, "l1": 0.1,
                                                                   "msspec": 2.0})
    balance: bool = True
    commitment_weight: float = 1.0
    disc_every: int = 1
    adversarial_start: int = 0  # generator updates before the adversarial losses switch on
    disc_filters: int = 32
    disc_n_ffts: tuple[int, ...] = (1024, 2048, 512, 256, 128)
    max_grad_norm: float | None = None
    warmup_steps: int = 0
    cosine: bool = False  # cosine decay of the lr over trainer.max_steps generator updates
    num_audio_examples: int = 2

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.disc_n_ffts = tuple(int(n) for n in self.disc_n_ffts)
        self.loss_weights = {k: float(v) for k, v in self.loss_weights.items()}
        unknown = set(self.loss_weights) - set(KNOWN_LOSSES)
        if unknown:
            raise ValueError(f"unknown codec losses {sorted(unknown)}; known: {', '.join(KNOWN_LOSSES)}")
        if not any(self.loss_weights.get(k, 0) > 0 for k in ("l1", "msspec")):
            raise ValueError("codec training needs a reconstruction loss: give l1 or msspec a weight > 0")
        if any(w < 0 for w in self.loss_weights.values()):
            raise ValueError(f"loss weights must be >= 0, got {self.loss_weights}")
        if self.disc_every < 1:
            raise ValueError(f"disc_every must be >= 1, got {self.disc_every}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    @property
    def adversarial(self) -> bool:
        return self.loss_weights.get("adv", 0) > 0 or self.loss_weights.get("feat", 0) > 0


def code_counts(codes: torch.Tensor, card: int) -> torch.Tensor:
    """``[K, card]``: how often each code of each codebook occurs in codes ``[B, K, T]``."""
    return torch.stack([torch.bincount(codes[:, q].reshape(-1), minlength=card) for q in range(codes.shape[1])])


def statistics_of_counts(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per codebook, from code counts ``[K, card]``: perplexity (exp of the code entropy) and the fraction of codes
    used."""
    counts = counts.float()
    probs = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum(dim=1)
    return entropy.exp(), (counts > 0).float().mean(dim=1)


def codebook_statistics(codes: torch.Tensor, card: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per codebook: perplexity (exp of the code entropy) and the fraction of codes used. codes [B, K, T]."""
    return statistics_of_counts(code_counts(codes, card))


class CodecModule(L.LightningModule):
    """Trains a `Codec` against a multi-scale STFT discriminator, keeping an EMA copy for validation/export.

    `ema`: the average (`decay` None or 0: none, validation and export use the live weights); `max_steps`: generator
    updates, where the module stops the trainer (None: never)."""

    def __init__(self, codec: CodecConfig, optim: CodecTrainConfig | None = None, ema: EMAConfig | None = None,
                 max_steps: int | None = None):
        super().__init__()
        codec_cfg = codec
        self.train_cfg = optim or CodecTrainConfig()
        self.ema_cfg = ema if ema is not None else EMAConfig(decay=0.99)
        self.max_steps = max_steps
        self.save_hyperparameters({"codec": codec_cfg.to_dict(), "train": asdict(self.train_cfg),
                                   "ema": asdict(self.ema_cfg), "max_steps": max_steps})
        self.automatic_optimization = False
        self.codec = Codec(codec_cfg)
        self.codec_ema: Codec | None = None
        if self.ema_cfg.decay:
            # No gradients and never trained; train/eval mode does not matter (encode/decode never update codebooks).
            self.codec_ema = copy.deepcopy(self.codec).requires_grad_(False)
        self.discriminator = MultiScaleSTFTDiscriminator(filters=self.train_cfg.disc_filters,
                                                         in_channels=codec_cfg.channels,
                                                         n_ffts=list(self.train_cfg.disc_n_ffts))
        self.mel_loss = MultiScaleMelLoss(codec_cfg.sample_rate)
        self.balancer = LossBalancer(self.train_cfg.loss_weights, balance=self.train_cfg.balance)
        self.register_buffer("generator_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema_count", torch.zeros((), dtype=torch.float64))
        codebooks = codec_cfg.quantizer.n_q * codec_cfg.channels  # codes are [B, n_q x C, T]
        self.val_totals = Totals({"si_snr": (), "mel_distance": (), "samples": (),
                                  "codes": (codebooks, codec_cfg.quantizer.card)})

    # ----------------------------------------------------------------------------------------- utils
    @staticmethod
    def audio_of(batch: Any) -> torch.Tensor:
        return batch["audio"] if isinstance(batch, dict) else batch

    @property
    def eval_codec(self) -> Codec:
        """The codec validation and export use: the EMA copy when there is one."""
        return self.codec_ema if self.codec_ema is not None else self.codec

    def bitrate_kbps(self) -> float:
        q = self.codec.config.quantizer
        return q.n_q * self.codec.channels * math.log2(q.card) * self.codec.frame_rate / 1000

    def _schedule(self, step: int) -> float:
        cfg = self.train_cfg
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.cosine and self.max_steps:
            progress = min(1.0, (step - cfg.warmup_steps) / max(1, self.max_steps - cfg.warmup_steps))
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    def configure_optimizers(self):
        cfg = self.train_cfg
        opt_g = torch.optim.Adam(self.codec.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr, betas=cfg.betas,
                                 weight_decay=cfg.weight_decay)
        sch_g = torch.optim.lr_scheduler.LambdaLR(opt_g, self._schedule)
        sch_d = torch.optim.lr_scheduler.LambdaLR(opt_d, self._schedule)
        return [opt_g, opt_d], [sch_g, sch_d]

    def _clip(self, optimizer) -> None:
        if self.train_cfg.max_grad_norm:
            self.clip_gradients(optimizer, gradient_clip_val=self.train_cfg.max_grad_norm,
                                gradient_clip_algorithm="norm")

    @torch.no_grad()
    def update_ema(self) -> None:
        """Unbiased EMA (audiocraft's): weight ``1 / Σ decay^i``, so early updates are not pulled to the init."""
        if self.codec_ema is None:
            return
        self.ema_count.mul_(self.ema_cfg.decay).add_(1.0)
        w = float(1.0 / self.ema_count)
        live = self.codec.state_dict()
        for name, avg in self.codec_ema.state_dict().items():
            value = live[name]
            # Codebook `inited` flags are copied: averaging a 0 -> 1 flag is meaningless.
            if avg.is_floating_point() and not name.endswith("inited"):
                avg.lerp_(value.to(avg.dtype), w)
            else:
                avg.copy_(value)

    # -------------------------------------------------------------------------------------- training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        cfg = self.train_cfg
        wav = self.audio_of(batch)
        opt_g, opt_d = self.optimizers()
        sch_g, sch_d = self.lr_schedulers()
        updates = int(self.generator_updates)
        adversarial = cfg.adversarial and updates >= cfg.adversarial_start
        out = self.codec(wav)
        logs: dict[str, torch.Tensor] = {}

        if adversarial and updates % cfg.disc_every == 0:
            real_logits, _ = self.discriminator(wav)
            fake_logits, _ = self.discriminator(out.audio.detach())
            d_loss = hinge_discriminator_loss(real_logits, fake_logits)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            self._clip(opt_d)
            opt_d.step()
            sch_d.step()
            logs["train/d_loss"] = d_loss.detach()

        losses = {"l1": l1_waveform_loss(out.audio, wav), "msspec": self.mel_loss(out.audio, wav)}
        if adversarial:
            self.discriminator.requires_grad_(False)  # gradients flow through it to the audio, not into it
            try:
                fake_logits, fake_fmaps = self.discriminator(out.audio)
                with torch.no_grad():
                    _, real_fmaps = self.discriminator(wav)
            finally:
                self.discriminator.requires_grad_(True)
            losses["adv"] = hinge_generator_loss(fake_logits)
            losses["feat"] = feature_matching_loss(real_fmaps, fake_fmaps)
        losses = {k: v for k, v in losses.items() if cfg.loss_weights.get(k, 0) > 0}
        opt_g.zero_grad(set_to_none=True)
        balanced, effective = self.balancer.surrogate(losses, out.audio)
        # One backward for the balanced losses and the commitment penalty (which stays outside the balancer).
        self.manual_backward(balanced + cfg.commitment_weight * out.penalty)
        self._clip(opt_g)
        opt_g.step()
        sch_g.step()
        self.generator_updates += 1
        if int(self.generator_updates) % self.ema_cfg.every_n_steps == 0:
            self.update_ema()

        perplexity, usage = codebook_statistics(out.codes.detach(), self.codec.card)
        logs.update({f"train/{k}": v.detach() for k, v in losses.items()})
        logs.update({f"train/balanced_{k}": v for k, v in effective.items()})
        logs["train/commitment"] = out.penalty.detach()
        logs["train/perplexity_mean"] = perplexity.mean()
        for q in range(perplexity.shape[0]):
            logs[f"train/perplexity_q{q}"] = perplexity[q]
            logs[f"train/usage_q{q}"] = usage[q]
        logs["train/bitrate_kbps"] = torch.tensor(self.bitrate_kbps())
        logs["train/lr"] = torch.tensor(opt_g.param_groups[0]["lr"])
        logs["train/updates"] = self.generator_updates.detach().float()
        logs["train/adversarial"] = torch.tensor(float(adversarial))
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False, batch_size=wav.shape[0])
        main = losses["msspec"] if "msspec" in losses else losses["l1"]
        self.log("loss", main.detach(), prog_bar=True, on_step=True, batch_size=wav.shape[0])
        if self.max_steps and int(self.generator_updates) >= self.max_steps:
            self.trainer.should_stop = True

    # ------------------------------------------------------------------------------------ validation
    @torch.no_grad()
    def reconstruction_metrics(self, wav: torch.Tensor, codec: Codec | None = None) -> dict[str, torch.Tensor]:
        """SI-SNR (dB, higher is better) and multi-scale mel distance of encode -> decode (EMA codec by default)."""
        codec = codec if codec is not None else self.eval_codec
        codes = codec.encode(wav)
        recon = codec.decode(codes, length=wav.shape[-1])
        perplexity, usage = codebook_statistics(codes, codec.card)
        return {"si_snr": si_snr(recon, wav).mean(), "mel_distance": self.mel_loss(recon, wav),
                "perplexity_mean": perplexity.mean(), "usage_mean": usage.mean(), "recon": recon}

    def on_validation_epoch_start(self) -> None:
        self.val_totals.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Adds per-sample SI-SNR and mel distance and the code histogram of the real samples (padding samples
        add nothing); the metrics are computed over the whole validation set in ``on_validation_epoch_end``."""
        wav = self.audio_of(batch)
        real = real_samples(batch, wav.shape[0], wav.device)
        codec = self.eval_codec
        with torch.no_grad():
            codes = codec.encode(wav)
            recon = codec.decode(codes, length=wav.shape[-1])
            snr = si_snr(recon, wav).mean(dim=1)  # [B], mean over channels
            mel = torch.stack([self.mel_loss(recon[i:i + 1], wav[i:i + 1]) for i in range(wav.shape[0])])
        zero = snr.new_zeros(())
        self.val_totals.update(si_snr=torch.where(real, snr, zero).sum(),
                               mel_distance=torch.where(real, mel, zero).sum(), samples=real.sum(),
                               codes=code_counts(codes[real], codec.card))
        n = self.train_cfg.num_audio_examples
        if batch_idx == 0 and n > 0 and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            sr = self.codec.sample_rate
            log_audio_examples(self.loggers, "val/reconstruction", list(recon[real][:n]), sr, self.global_step)
            log_audio_examples(self.loggers, "val/reference", list(wav[real][:n]), sr, self.global_step)

    def on_validation_epoch_end(self) -> None:
        """Means over every validation sample of every rank (totals summed over ranks first); same on every rank."""
        totals = self.val_totals.compute()
        self.val_totals.reset()
        samples = float(totals["samples"])
        if samples == 0:
            return  # no validation sample reached this pass (e.g. limit_val_batches: 0)
        perplexity, usage = statistics_of_counts(totals["codes"])
        metrics = {"si_snr": totals["si_snr"] / samples, "mel_distance": totals["mel_distance"] / samples,
                   "perplexity_mean": perplexity.mean(), "usage_mean": usage.mean()}
        # identical on every rank: "max" keeps the value exact where a mean over ranks could round it
        self.log_dict({f"val/{k}": v.float() for k, v in metrics.items()}, sync_dist=True, reduce_fx="max")

    # ----------------------------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["loss_balancer"] = self.balancer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "loss_balancer" in checkpoint:
            self.balancer.load_state_dict(checkpoint["loss_balancer"])


class UpdateCheckpoint(RunCheckpoint):
    """The run's checkpoints (`RunCheckpoint`: last.ckpt, retention), counted in generator updates, not optimiser
    steps.

    With manual optimisation and two optimisers `trainer.global_step` advances by two per batch once the
    discriminator trains (one before), so `every_n_train_steps` would not mean "updates". This saves every
    `every_n_updates` generator updates and at `max_updates`; file names carry the update count.
    """

    def __init__(self, every_n_updates: int, dirpath: str | Path | None = None, retention: Retention | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("filename", "codec-{updates}")
        super().__init__(dirpath, retention or Retention(), every_n_train_steps=0, **kwargs)
        self.every_n_updates = check_interval("checkpoint_every_n_steps", every_n_updates)

    def _monitor_candidates(self, trainer: L.Trainer) -> dict[str, torch.Tensor]:
        candidates = super()._monitor_candidates(trainer)
        module = trainer.lightning_module
        if hasattr(module, "generator_updates"):
            candidates["updates"] = module.generator_updates.detach().clone()
        return candidates

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        updates = int(pl_module.generator_updates)
        max_updates = getattr(pl_module, "max_steps", None)
        due = updates % self.every_n_updates == 0 or (max_updates is not None and updates >= max_updates)
        if not due or self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)


def export_codec(module: CodecModule, out_dir: str | Path) -> Path:
    """Write the module's EMA codec (the live one when EMA is off) as an export directory (`save_codec`)."""
    return save_codec(module.eval_codec, out_dir)


__all__ = ["DDP_STRATEGY", "CodecModule", "CodecTrainConfig", "UpdateCheckpoint", "code_counts", "codebook_statistics",
           "export_codec", "statistics_of_counts"]
