"""Evaluation metrics during training: the recipes' `eval:` section.

LM runs (`LMEvalMetrics`): every `every_n_validations` validations, clips of `seconds` are generated from
validation prompts (text, and melody for melody models) and scored with `mgen.evaluation.MetricSuite`:
FAD / KAD against a reference `.npz` made from the *real* validation audio by
``mgen evaluate --ref SHARDS --split valid --embedder NAME -o REF.npz`` (one file per embedder), the CLAP score
against the prompts, KL and chroma against each prompt's own validation clip. They are logged as ``val/fad_<label>``,
``val/kad_<label>``, ``val/kld``..., ``val/clap_score[...]``, ``val/chroma_cosine`` to every logger, and as a
table (one row per evaluation) to W&B. Token shards hold no audio: there KL and chroma compare with the codec's
reconstruction of the validation clip, and their keys end in ``_recon`` so nobody reads them as the paper's.

Every rank generates its share (`num_samples` / world size, from the validation batches it sees) and the metric
states are gathered across ranks when computed. Generation is lock-step, as a sharded (FSDP) LM needs: the ranks
agree (all-reduce min) on how many clips each generates and all make the same number of equally long calls.
The callback generates in `on_validation_epoch_end`, so with `ema:` it must run before the EMA callback swaps the
live weights back (`lm_callbacks` registers it first; `setup` checks).

Codec runs (`CodecEvalMetrics`): FAD / KAD of the validation reconstructions against the real validation audio
(the same clips, or a reference `.npz`), with a fixed embedder (a codec export, VGGish, ...).

Keys (both): metrics, embedders, reference, every_n_validations, silence; LM only: num_samples, seconds,
batch_size, cfg_coef, top_k, temperature, passt_weights, clap_weights.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from mgen.conditioning import MELODY
from mgen.evaluation.models import EmbedderSpec, load_clap, load_embedders, load_kl_classifier
from mgen.evaluation.suite import NEEDS_PAIRS, NEEDS_REFERENCE, GeneratedItem, MetricSuite, flat_values, parse_metrics
from mgen.lm.generate import SamplingParams, generate
from mgen.metrics import ReferenceStats
from mgen.metrics.clips import check_policy, is_silent
from mgen.metrics.embedders.base import embed_audio
from mgen.train.lm_samples import first_samples

LM_EVAL_KEYS = {"metrics", "embedders", "reference", "every_n_validations", "silence", "num_samples", "seconds",
                "batch_size", "cfg_coef", "top_k", "temperature", "passt_weights", "clap_weights"}
CODEC_EVAL_KEYS = {"metrics", "embedders", "reference", "every_n_validations", "silence"}
TABLE_KEY = "val/eval_table"
RECON_SUFFIX = "_recon"


@dataclass
class EvalConfig:
    """Metrics computed during training at validation (fad, kad, kl, clap, chroma; a codec run: fad, kad), as
    `mgen evaluate` computes them; see README "Evaluating"."""

    metrics: list[str]
    embedders: list[EmbedderSpec] = field(default_factory=list)
    reference: list[str] = field(default_factory=list)
    every_n_validations: int = 1
    silence: str = "keep"  # a silent clip early in training is the model's failure, scored, not a crash
    num_samples: int = 32
    seconds: float = 5.0
    batch_size: int = 8
    cfg_coef: float = 3.0
    top_k: int = 250
    temperature: float = 1.0
    passt_weights: str | None = None
    clap_weights: str | None = None

    @staticmethod
    def from_section(section: dict[str, Any], kind: str) -> EvalConfig:
        """The recipe's `eval:` mapping, checked (`kind`: "LM" or "codec"; a codec run scores fad and kad)."""
        section = dict(section)
        known = LM_EVAL_KEYS if kind == "LM" else CODEC_EVAL_KEYS
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown} in eval; known: {sorted(known)}")
        if "metrics" not in section:
            raise ValueError("eval needs metrics (of fad, kad, kl, clap, chroma)")
        metrics = parse_metrics(section.pop("metrics"))
        allowed = ("fad", "kad") if kind == "codec" else metrics
        if any(m not in allowed for m in metrics):
            raise ValueError(f"eval.metrics {metrics}: a codec run scores fad and kad only")
        embedders = section.pop("embedders", None) or []
        reference = section.pop("reference", None) or []
        cfg = EvalConfig(metrics, [EmbedderSpec.parse(e) for e in (embedders if isinstance(embedders, list)
                                                                   else [embedders])],
                         [str(r) for r in (reference if isinstance(reference, list) else [reference])], **section)
        cfg.check(kind)
        return cfg

    def check(self, kind: str) -> None:
        check_policy(self.silence)
        if self.every_n_validations < 1 or self.num_samples < 1 or self.seconds <= 0 or self.batch_size < 1:
            raise ValueError("eval: every_n_validations, num_samples and batch_size must be "
                             ">= 1 and seconds > 0")
        if any(m in self.metrics for m in NEEDS_REFERENCE) and not self.embedders:
            raise ValueError("eval: fad / kad need embedders (e.g. [codec] or "
                             "[vggish=PATH])")
        if kind == "LM" and any(m in self.metrics for m in NEEDS_REFERENCE) and not self.reference:
            raise ValueError("eval: fad / kad need reference statistics of the real validation "
                             "audio: make them with `mgen evaluate --ref SHARDS --split valid --embedder NAME -o "
                             "REF.npz` and set eval.reference")


def _load_references(paths: list[str]) -> list[ReferenceStats]:
    return [ReferenceStats.load(p) for p in paths]


def _ema_before(callback: L.Callback, trainer: L.Trainer) -> bool:
    callbacks = list(trainer.callbacks)
    mine = callbacks.index(callback)
    return any(isinstance(c, WeightAveraging) for c in callbacks[:mine])


class _EvalCallback(L.Callback):
    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self.validations = 0
        self.rows: list[list[Any]] = []   # the W&B table: one row per evaluation (kept in checkpoints)
        self.columns: list[str] = []
        self.suite: MetricSuite | None = None
        self.latest: dict[str, float] = {}  # the latest values, for tests and summaries

    # checkpointed state: the table survives a resume
    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations, "rows": self.rows, "columns": self.columns}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.validations = int(state.get("validations", 0))
        self.rows = [list(r) for r in state.get("rows", [])]
        self.columns = list(state.get("columns", []))

    def _due(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and (self.validations - 1) % self.cfg.every_n_validations == 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validations += 1

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, values: dict[str, float]) -> None:
        """Every logger gets ``val/<key>`` (all ranks log the same gathered values); W&B also gets the table."""
        self.latest = values
        pl_module.log_dict({f"val/{k}": float(v) for k, v in values.items()}, on_step=False, on_epoch=True,
                           sync_dist=False, batch_size=1)
        if not self.columns:
            self.columns = ["step", *values]
        self.rows.append([trainer.global_step, *(values.get(k, float("nan")) for k in self.columns[1:])])
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_table(key=TABLE_KEY, columns=self.columns, data=self.rows, step=trainer.global_step)

    def _score(self, trainer: L.Trainer, pl_module: L.LightningModule, rename: dict[str, str] | None = None) -> None:
        assert self.suite is not None
        try:
            results, messages = self.suite.results(bootstrap=False, fad_inf=False)
        except ValueError as err:  # too few frames this time (ranks ran out of prompts): said, not fatal
            warnings.warn(f"eval metrics not logged at step {trainer.global_step}: {err}", stacklevel=1)
            return
        finally:
            self.suite.reset()
        for message in messages:
            warnings.warn(f"eval metrics: {message}", stacklevel=1)
        values = {(rename or {}).get(k, k): v for k, v in flat_values(results).items()}
        self._log(trainer, pl_module, values)


class LMEvalMetrics(_EvalCallback):
    """See the module docstring."""

    def __init__(self, cfg: EvalConfig, seed: int = 0) -> None:
        super().__init__(cfg)
        self.seed = seed
        self.params = SamplingParams(temperature=cfg.temperature, top_k=cfg.top_k, cfg_coef=cfg.cfg_coef)
        self.collected: list[dict[str, Any]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.suite is not None:
            return
        if _ema_before(self, trainer):
            raise RuntimeError("LMEvalMetrics must come before the EMA callback (it generates at the end of "
                               "validation, while the averaged weights are in place)")
        cfg, metrics, device = self.cfg, self.cfg.metrics, pl_module.device
        if not pl_module.codec_path:
            raise ValueError("the eval section needs the run's codec (recipe `codec:` or token shards that name it)")
        melody = MELODY in pl_module.conditioner.conditioners
        if "chroma" in metrics and not melody:
            raise ValueError("eval.metrics: chroma scores melody adherence, and this LM has no melody conditioner")
        embedders = load_embedders(cfg.embedders, device, pl_module.codec_path) if any(
            m in metrics for m in NEEDS_REFERENCE) else {}
        kl = load_kl_classifier(cfg.passt_weights, device) if "kl" in metrics else None
        clap = load_clap(cfg.clap_weights, device) if "clap" in metrics else None
        suite = MetricSuite(metrics, embedders, kl_classifier=kl, clap=clap, silence=cfg.silence)
        if embedders:
            suite.load_references(_load_references(cfg.reference))
            codec = pl_module.codec()
            self._check_enough_frames(suite, codec.sample_rate, trainer.world_size)
        self.suite = suite.to(device)

    def _check_enough_frames(self, suite: MetricSuite, sample_rate: int, world_size: int) -> None:
        """num_samples clips of `seconds` must give a FAD enough frames: found before training starts."""
        probe = 0.1 * torch.randn(round(self.cfg.seconds * sample_rate), generator=torch.Generator().manual_seed(0))
        clips = math.ceil(self.cfg.num_samples / world_size) * world_size
        for label, embedder in suite.embedders.items():
            frames = embed_audio(embedder, probe, sample_rate).shape[0] * clips
            if "fad" in suite.metrics and frames <= embedder.info.dim:
                raise ValueError(f"eval: {clips} clips of {self.cfg.seconds} s give {frames} {label} frames, but a "
                                 f"{embedder.info.dim}-d FAD needs at least {embedder.info.dim + 1}: raise "
                                 "eval.num_samples or eval.seconds")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self.collected = []

    def _quota(self, trainer: L.Trainer) -> int:
        return math.ceil(self.cfg.num_samples / max(1, trainer.world_size))

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._due(trainer) or self.suite is None:
            return
        have = sum(len(b["text"]) for b in self.collected)
        need = self._quota(trainer) - have
        if need > 0:
            keep = {k: v.clone() if isinstance(v, Tensor) else v for k, v in first_samples(batch, need).items()
                    if k in ("text", "codes", "padding_mask", "chroma", "audio")}  # copies: the batch is freed
            keep["text"] = list(keep.get("text") or [None] * len(next(iter(keep.values()))))
            self.collected.append(keep)

    def _agreed_count(self, pl_module: L.LightningModule) -> int:
        count = torch.tensor(sum(len(b["text"]) for b in self.collected), device=pl_module.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count, op=dist.ReduceOp.MIN)
        return int(count)

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer) or self.suite is None:
            return
        count = self._agreed_count(pl_module)
        if count == 0:
            warnings.warn("eval metrics: no validation prompt on some rank; nothing generated", stacklevel=1)
            return
        prompts = _concat(self.collected)
        codec = pl_module.codec()
        frames = max(1, round(self.cfg.seconds * codec.frame_rate))
        length = round(self.cfg.seconds * codec.sample_rate)
        rank = trainer.global_rank
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed * 1000 + rank)
        reconstructed = "audio" not in prompts
        for start in range(0, count, self.cfg.batch_size):
            part = {k: v[start:min(start + self.cfg.batch_size, count)] for k, v in prompts.items()}
            size = len(part["text"])
            conditioning = pl_module.conditioning_of(part, size)
            codes = generate(pl_module.lm, frames, conditioning, params=self.params, batch_size=size,
                             generator=generator)
            wavs = codec.decode(codes, length=length)
            references = self._references(pl_module, part, codec, frames, length) if any(
                m in self.cfg.metrics for m in NEEDS_PAIRS) else [None] * size
            items = [GeneratedItem(f"rank{rank}-{start + i}", wav, codec.sample_rate, text or "",
                                   ref, codec.sample_rate) for i, (wav, text, ref) in
                     enumerate(zip(wavs, part["text"], references))]
            self.suite.add_generated(_without_silent_references(items, trainer.global_step))
        rename = {k: k + RECON_SUFFIX for k in ("kld", "kld_qp", "kld_both", "chroma_cosine")} if reconstructed else {}
        self._score(trainer, pl_module, rename)
        self.collected = []

    @staticmethod
    def _references(pl_module: L.LightningModule, part: dict[str, Any], codec: Any, frames: int,
                    length: int) -> list[Tensor]:
        """Each prompt's own validation clip: real audio from an audio batch, else the codec's reconstruction."""
        if "audio" in part:
            audio, mask = part["audio"].to(pl_module.device), part["padding_mask"].bool()
            return [clip[:, : min(length, int(m.sum()))] for clip, m in zip(audio, mask)]
        codes, padding = part["codes"].long().to(pl_module.device), part["padding_mask"].bool()
        decoded = codec.decode(codes[..., :frames], length=length)
        hop = codec.hop_length
        return [clip[:, : max(1, min(length, int(m[:frames].sum()) * hop))] for clip, m in zip(decoded, padding)]


def _without_silent_references(items: list[GeneratedItem], step: int) -> list[GeneratedItem]:
    """Validation data may hold digital silence: such a clip has no meaningful reference, so its pair is left out
    (said, not fatal: training goes on)."""
    kept = [i for i in items if i.reference is None or not is_silent(i.reference, f"validation clip {i.name!r}")]
    if len(kept) < len(items):
        warnings.warn(f"eval metrics at step {step}: {len(items) - len(kept)} validation clip(s) are digital "
                      "silence and were left out with their generated clips", stacklevel=2)
    return kept


def _concat(batches: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in batches[0]:
        values = [b[key] for b in batches]
        out[key] = torch.cat(values) if isinstance(values[0], Tensor) else [x for v in values for x in v]
    return out


class CodecEvalMetrics(_EvalCallback):
    """FAD / KAD of the validation reconstructions (the EMA codec, as validation uses) against the real validation
    audio: a reference `.npz`, or else the very clips that were reconstructed."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.suite is not None:
            return
        if any(spec.name == "codec" and spec.weights is None for spec in self.cfg.embedders):
            raise ValueError("codec recipe section 'eval': the codec being trained changes at every update; embed "
                             "with a fixed one (codec=EXPORT) or another embedder")
        suite = MetricSuite(self.cfg.metrics, load_embedders(self.cfg.embedders, pl_module.device),
                            silence=self.cfg.silence)
        if self.cfg.reference:
            suite.load_references(_load_references(self.cfg.reference))
        self.suite = suite.to(pl_module.device)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        if self.suite is not None and not self.cfg.reference and self._due(trainer):
            self.suite = MetricSuite(self.cfg.metrics, self.suite.embedders, silence=self.cfg.silence).to(
                pl_module.device)  # this validation's real clips are the reference

    @torch.no_grad()
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._due(trainer) or self.suite is None:
            return
        wav = pl_module.audio_of(batch)
        mask = batch["padding_mask"].bool() if isinstance(batch, dict) and "padding_mask" in batch else None
        codec = pl_module.eval_codec
        recon = codec.decode(codec.encode(wav), length=wav.shape[-1])
        lengths = [int(m.sum()) for m in mask] if mask is not None else [wav.shape[-1]] * wav.shape[0]
        keys = batch.get("key") if isinstance(batch, dict) else None
        names = [str(k) for k in keys] if keys else [f"{trainer.global_rank}-{batch_idx}-{i}" for i in range(len(wav))]
        items = [GeneratedItem(name, clip[:, :n], codec.sample_rate, reference=real[:, :n],
                               reference_rate=codec.sample_rate)
                 for clip, real, n, name in zip(recon, wav, lengths, names)]
        items = _without_silent_references(items, trainer.global_step)
        if not self.cfg.reference:
            for item in items:
                self.suite.add_reference(item.reference, item.reference_rate, item.name)
        self.suite.add_generated(items)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._due(trainer) and self.suite is not None:
            self._score(trainer, pl_module)


def lm_eval_callbacks(cfg: EvalConfig | None, seed: int = 0) -> list[L.Callback]:
    return [LMEvalMetrics(cfg, seed=seed)] if cfg else []


def codec_eval_callbacks(cfg: EvalConfig | None) -> list[L.Callback]:
    return [CodecEvalMetrics(cfg)] if cfg else []
