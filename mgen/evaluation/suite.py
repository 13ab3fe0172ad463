"""The metrics of one evaluation, fed clip by clip, and their results with confidence intervals.

`MetricSuite` holds one torchmetrics Metric per (metric, embedder): FAD and KAD per FAD embedder (the clip is
embedded once and both get the frames), PaSST KL and chroma cosine on (generated, reference) pairs, the CLAP score
on (generated, caption) pairs. Reference frames come from reference audio or from statistics files.

Checks that make a number meaningless an error, not a footnote:
- a FAD needs a full-rank covariance: more frames than the embedding has dimensions, on each side (the error
  says how many there are and how many are needed); KAD needs 2 frames;
- NaN or infinite samples are always an error; a silent *reference* clip is an error; a silent *generated* clip
  follows the `silence` policy ("error" by default; "keep" scores it, "skip" leaves it out; both count it).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from mgen.metrics import (FAD_PROTOCOL, KLD_PROTOCOL, ChromaCosine, ClapScore, FrechetAudioDistance,
                          KernelAudioDistance, PasstKLD, ReferenceStats)
from mgen.metrics.clips import check_policy, is_silent, silence_error
from mgen.metrics.embedders.base import AudioEmbedder, embed_audio
from mgen.metrics.fad import FAD_INF_MIN_N
from mgen.metrics.reference import same_embedder
from mgen.metrics.states import cat_state, synced

METRICS = ("fad", "kad", "kl", "clap", "chroma")
PAPER_METRICS = ("fad", "kl", "clap")      # + chroma for melody models
NEEDS_REFERENCE = ("fad", "kad")           # a reference set: audio or statistics
NEEDS_PAIRS = ("kl", "chroma")             # each generated clip with its own reference clip
FAD_INF_MIN_FRAMES = 2 * FAD_INF_MIN_N     # FAD∞ is reported from here on (fadtk's n range, 500..N)


def parse_metrics(value: str | Sequence[str]) -> list[str]:
    """``"fad,kl"`` or a list -> metric names in `METRICS` order; unknown names are an error naming them."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; known: {', '.join(METRICS)}")
    if not names:
        raise ValueError(f"no metric asked for; known: {', '.join(METRICS)}")
    return [m for m in METRICS if m in names]


@dataclass
class GeneratedItem:
    """One generated clip with what its metrics pair it with."""

    name: str
    audio: Tensor               # [C, L]
    sample_rate: int
    caption: str = ""
    reference: Tensor | None = None  # [C, L], for KL / chroma
    reference_rate: int = 0


class MetricSuite:
    def __init__(self, metrics: Sequence[str], embedders: dict[str, AudioEmbedder] | None = None, *,
                 kl_classifier: Any = None, clap: Any = None, silence: str = "error") -> None:
        self.metrics = list(metrics)
        self.embedders = dict(embedders or {})
        self.silence = check_policy(silence)
        if any(m in self.metrics for m in NEEDS_REFERENCE) and not self.embedders:
            raise ValueError("FAD / KAD need at least one embedder")
        self.fad = {label: FrechetAudioDistance(e.info, keep_frames=True) for label, e in self.embedders.items()
                    if "fad" in self.metrics}
        self.kad = {label: KernelAudioDistance(e.info) for label, e in self.embedders.items()
                    if "kad" in self.metrics}
        self.kld = PasstKLD(kl_classifier, silence=silence) if "kl" in self.metrics else None
        self.clap = ClapScore(clap, silence=silence) if "clap" in self.metrics else None
        self.chroma = ChromaCosine(silence=silence) if "chroma" in self.metrics else None
        for name, model in (("kl", kl_classifier), ("clap", clap)):
            if name in self.metrics and model is None:
                raise ValueError(f"the {name} metric needs its model")
        self.reference_source: dict[str, str] = {}
        self.loaded: set[str] = set()  # labels whose reference came from statistics
        self.silent_generated = 0
        self.generated_clips = 0
        self.reference_clips = 0

    # ------------------------------------------------------------------------------------------- reference
    @property
    def frame_metrics(self) -> dict[str, list[Any]]:
        """Embedder label -> the metrics fed with its frames."""
        out: dict[str, list[Any]] = {}
        for group in (self.fad, self.kad):
            for label, metric in group.items():
                out.setdefault(label, []).append(metric)
        return out

    def load_references(self, references: Sequence[ReferenceStats]) -> None:
        """Reference statistics for every FAD / KAD embedder, matched by embedder; one without statistics, or
        statistics no embedder uses, are errors."""
        used: set[int] = set()
        for label, embedder in self.embedders.items():
            info = embedder.info
            matches = [i for i, ref in enumerate(references) if same_embedder(ref.embedder, info)]
            if not matches:
                if len(references) == 1:
                    references[0].check_compatible(info)  # raises, naming both sides
                held = ", ".join(f"{r.origin or 'statistics'} ({r.embedder.id})" for r in references)
                raise ValueError(f"no reference statistics for the {label} embedder ({info.id}) among {held}")
            ref = references[matches[0]]
            used.add(matches[0])
            for metric in self.frame_metrics.get(label, []):
                metric.load_reference(ref)  # checks the protocol version; KAD checks that frames are there
            self._check_frames(label, "reference", ref.stats.n, ref.clips)
            self.reference_source[label] = ref.source
            self.loaded.add(label)
        unused = [references[i].origin or "statistics" for i in range(len(references)) if i not in used]
        if unused:
            raise ValueError(f"reference statistics {', '.join(unused)} match none of the embedders "
                             f"({', '.join(e.info.id for e in self.embedders.values())})")

    def add_reference(self, audio: Tensor, sample_rate: int, name: str) -> None:
        """One reference clip ``[C, L]`` for FAD / KAD (a silent or NaN reference is an error)."""
        if is_silent(audio, f"reference clip {name!r}"):  # raises on NaN
            raise silence_error(f"reference clip {name!r}")
        self.reference_clips += 1
        for label, metrics in self.frame_metrics.items():
            frames = embed_audio(self.embedders[label], audio, sample_rate)
            for metric in metrics:
                metric.update_embeddings([frames], names=[name], reference=True)
            self.reference_source[label] = "real"

    def check_reference(self) -> None:
        """Enough reference frames for every FAD (call after the last `add_reference`)."""
        for label, metric in self.fad.items():
            if label not in self.loaded:
                self._check_frames(label, "reference", int(metric.ref_n), int(metric.ref_clips))
        for label, metric in self.kad.items():
            if label not in self.loaded:
                frames = sum(int(f.numel()) for f in metric.ref_frames) // metric.info.dim
                self._check_frames(label, "reference", frames, int(metric.ref_clips), kad=True)

    def _check_frames(self, label: str, side: str, frames: int, clips: int, kad: bool = False) -> None:
        dim = self.embedders[label].info.dim
        need = 2 if kad or "fad" not in self.metrics else dim + 1
        if frames < need:
            what = "KAD" if need == 2 else f"a {dim}-d FAD (a full-rank covariance)"
            raise ValueError(f"{label}: {frames} {side} embedding frames from {clips} clip(s), but {what} needs at "
                             f"least {need}: use more or longer clips (--num-samples)")

    # ------------------------------------------------------------------------------------------- generated
    def add_generated(self, items: Sequence[GeneratedItem]) -> None:
        """Generated clips, with their captions (CLAP) and reference clips (KL, chroma)."""
        for item in items:
            self.generated_clips += 1
            name = f"generated clip {item.name!r}"
            silent = is_silent(item.audio, name)  # raises on NaN
            if silent:
                self.silent_generated += 1
                if self.silence == "error":
                    raise silence_error(name)
            if silent and self.silence == "skip":
                continue
            for label, metrics in self.frame_metrics.items():
                frames = embed_audio(self.embedders[label], item.audio, item.sample_rate)
                for metric in metrics:
                    metric.update_embeddings([frames], names=[item.name])
        for rate, group in _by_rate(items):
            names = [i.name for i in group]
            if self.clap is not None:
                self.clap.update([i.audio for i in group], [i.caption for i in group], rate, names=names)
            for metric in (self.kld, self.chroma):
                if metric is None:
                    continue
                for ref_rate, pairs in _by_rate(group, reference=True):
                    metric.update([i.audio for i in pairs], [i.reference for i in pairs], rate,
                                  reference_sample_rate=ref_rate, names=[i.name for i in pairs])

    # --------------------------------------------------------------------------------------------- results
    def results(self, bootstrap: bool = True, seed: int = 0, fad_inf: bool = True) -> tuple[dict[str, Any], list[str]]:
        """(metric key -> its record, warnings raised while computing them). Under torch.distributed every rank
        must call it: the states of all ranks are gathered."""
        out: dict[str, Any] = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for label, metric in self.fad.items():
                with metric.synced():
                    frames, clips = int(metric.gen_n), int(metric.gen_clips)
                self._check_frames(label, "generated", frames, clips)
                ref = metric.reference_stats()
                record: dict[str, Any] = {
                    "value": float(metric.compute()), "embedder": label, "protocol": FAD_PROTOCOL,
                    "frames": {"generated": frames, "reference": ref.stats.n},
                    "clips": {"generated": clips, "reference": ref.clips},
                    "reference_source": self.reference_source.get(label, ref.source)}
                if bootstrap:
                    record["ci"] = metric.bootstrap(seed=seed).to_dict()
                if fad_inf and frames >= FAD_INF_MIN_FRAMES:
                    record["fad_inf"] = metric.compute_inf(seed=seed).to_dict()
                out[f"fad_{label}"] = record
            for label, metric in self.kad.items():
                with metric.synced():
                    frames, clips = cat_state(metric.gen_frames).numel() // metric.info.dim, int(metric.gen_clips)
                self._check_frames(label, "generated", frames, clips, kad=True)
                ref = metric.reference_stats()
                out[f"kad_{label}"] = {
                    "value": float(metric.compute()), "embedder": label, "bandwidth": metric.bandwidth,
                    "kernel": metric.kernel, "frames": {"generated": frames, "reference": ref.stats.n},
                    "reference_source": self.reference_source.get(label, ref.source)}
            if self.kld is not None:
                values = self.kld.compute()
                with synced(self.kld):
                    pairs, segments = int(self.kld.pairs), int(self.kld.segments)
                record = {"value": float(values["kld"]), "kld_qp": float(values["kld_qp"]),
                          "kld_both": float(values["kld_both"]), "protocol": KLD_PROTOCOL,
                          "classifier": self.kld.info.id, "window_seconds": self.kld.window_seconds,
                          "pairs": pairs, "segments": segments}
                if bootstrap:
                    record["ci"] = self.kld.bootstrap("kld", seed=seed).to_dict()
                out["kld"] = record
            if self.clap is not None:
                value = float(self.clap.compute())
                with synced(self.clap):
                    clips = int(self.clap.clips)
                record = {"value": value, "name": self.clap.name, "clips": clips}
                if bootstrap:
                    record["ci"] = self.clap.bootstrap(seed=seed).to_dict()
                out["clap_score"] = record
            if self.chroma is not None:
                value = float(self.chroma.compute())
                with synced(self.chroma):
                    frames = int(self.chroma.frames)
                record = {"value": value, "chroma_frames": frames}
                if bootstrap:
                    record["ci"] = self.chroma.bootstrap(seed=seed).to_dict()
                out["chroma_cosine"] = record
        messages = list(dict.fromkeys(str(w.message) for w in caught))
        return out, messages

    def reset(self) -> None:
        """Forget the generated side (references are kept): the next round of clips starts from zero."""
        for metric in [*self.fad.values(), *self.kad.values(), self.kld, self.clap, self.chroma]:
            if metric is not None:
                metric.reset()
        self.silent_generated = self.generated_clips = 0

    def to(self, device: Any) -> MetricSuite:
        """Move the metric states (sums, frames) to `device` (the embedders stay where they are)."""
        for metric in [*self.fad.values(), *self.kad.values(), self.kld, self.clap, self.chroma]:
            if metric is not None:
                metric.to(device)
        return self


def _by_rate(items: Sequence[GeneratedItem], reference: bool = False) -> list[tuple[int, list[GeneratedItem]]]:
    groups: dict[int, list[GeneratedItem]] = {}
    for item in items:
        if reference and item.reference is None:
            raise ValueError(f"generated clip {item.name!r} has no reference clip to pair with")
        groups.setdefault(item.reference_rate if reference else item.sample_rate, []).append(item)
    return list(groups.items())


def flat_values(results: dict[str, Any]) -> dict[str, float]:
    """Metric key -> value, for loggers: ``fad_<label>``, ``kad_<label>``, ``kld``, ``kld_qp``, ``kld_both``,
    ``clap_score[<checkpoint>:<hash>]`` (CLAP scores differ by checkpoint), ``chroma_cosine``."""
    out: dict[str, float] = {}
    for key, record in results.items():
        if key == "kld":
            out.update(kld=record["value"], kld_qp=record["kld_qp"], kld_both=record["kld_both"])
        elif key == "clap_score":
            out[record["name"]] = record["value"]
        else:
            out[key] = record["value"]
    return out
