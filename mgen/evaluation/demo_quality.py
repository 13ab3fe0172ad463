"""The demo's quality check: is the trained model measurably better than an untrained one, and does the melody
steer it?

Held-out audio (the `valid` split of the demo's audio shards) is cut into windows of `seconds`; each window gives a
caption (its clip's) and a reference melody. With fixed per-clip seeds the check generates, for every window:
- a text-only clip from the trained model,
- a text-only clip from an *untrained* model (the same codec, conditioner and LM architecture, LM weights at their
  seeded initialisation): the floor any training must clear,
- a melody-conditioned clip from the trained model (caption + the window as melody).

It reports FAD and KAD on mgen's codec-encoder embedder (labelled `mgen-codec`: never comparable to published
VGGish FADs) of the trained and the untrained text clips against all held-out audio, and the chroma cosine of the
melody clips against their windows next to that of the text-only clips against the same windows, with a paired
bootstrap interval of the difference. `checks` says whether the trained model beats the untrained one on both
distances and whether the melody raises the chroma cosine by at least `MIN_CHROMA_GAIN` or by an interval that
excludes 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mgen.evaluation.generation import GenerationSettings, clip_seed
from mgen.evaluation.sources import shard_clips
from mgen.evaluation.suite import GeneratedItem, MetricSuite
from mgen.lm.model import LM
from mgen.metrics import ChromaCosine
from mgen.metrics.bootstrap import bootstrap_ratio
from mgen.metrics.embedders.codec import load_codec_embedder
from mgen.metrics.states import cat_state
from mgen.musicgen import MusicGen

MIN_CHROMA_GAIN = 0.1
EMBEDDER = "mgen-codec"


@dataclass(frozen=True)
class QualitySettings:
    clips: int = 16           # generated clips per condition (windows of held-out audio)
    seconds: float = 3.0      # length of each window and generated clip
    sampling: GenerationSettings = GenerationSettings()  # the paper's: top-k 250, CFG 3; its seed seeds every clip


@dataclass(frozen=True)
class Window:
    name: str
    caption: str
    audio: Tensor     # [C, L]
    sample_rate: int


def held_out_windows(shards: str | Path, count: int, seconds: float) -> tuple[list[Window], list[Window]]:
    """(the first `count` windows of `seconds`, taken round-robin over the held-out clips so that every clip
    contributes; every held-out clip whole, as the reference set). An error when the split holds too little."""
    clips = shard_clips(shards, "valid")
    if not clips:
        raise ValueError(f"{shards}: no held-out (valid) clips to measure the demo against")
    whole = [Window(c.name, c.caption, c.load(), c.sample_rate) for c in clips]
    per_clip = [[Window(f"{w.name}@{i}", w.caption, w.audio[:, i * size:(i + 1) * size], w.sample_rate)
                 for i in range(w.audio.shape[-1] // size)]
                for w in whole for size in [round(seconds * w.sample_rate)]]
    windows = [clip[i] for i in range(max(map(len, per_clip))) for clip in per_clip if i < len(clip)]
    if len(windows) < count:
        raise ValueError(f"{shards}: the held-out split gives {len(windows)} windows of {seconds} s, "
                         f"{count} needed: render more or longer clips, or ask for fewer")
    return windows[:count], whole


def untrained_like(model: MusicGen, seed: int) -> MusicGen:
    """The same model with its LM at the seeded initialisation (conditioner and codec shared)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = LM(model.lm.cfg)
    return MusicGen(lm.to(model.device), model.conditioner, model.codec, model.max_window_seconds)


def _generate(model: MusicGen, windows: list[Window], settings: QualitySettings, melody: bool) -> list[Tensor]:
    """One clip [C, L] per window: caption, its own seed, and the window as melody when asked."""
    out: list[Tensor] = []
    sampling = settings.sampling
    for start in range(0, len(windows), sampling.batch_size):
        batch = windows[start:start + sampling.batch_size]
        rates = {w.sample_rate for w in batch}
        wavs = torch.stack([w.audio for w in batch]).to(model.device) if melody else None
        audio = model.generate([w.caption for w in batch], duration=settings.seconds, melody=wavs,
                               melody_sample_rate=rates.pop() if melody else None, cfg_coef=sampling.cfg_coef,
                               top_k=sampling.top_k, top_p=sampling.top_p, temperature=sampling.temperature,
                               seed=[clip_seed(sampling.seed, w.name) for w in batch])
        out.extend(a.float().cpu() for a in audio)
    return out


def _distances(suite: MetricSuite, clips: list[Tensor], windows: list[Window], rate: int,
               seed: int) -> dict[str, Any]:
    suite.reset()
    suite.add_generated([GeneratedItem(w.name, a, rate, w.caption) for a, w in zip(clips, windows)])
    results, _ = suite.results(bootstrap=True, seed=seed, fad_inf=False)
    return {"fad": results[f"fad_{EMBEDDER}"], "kad": results[f"kad_{EMBEDDER}"]}


def _chroma(clips: list[Tensor], windows: list[Window], rate: int) -> ChromaCosine:
    metric = ChromaCosine()
    metric.update(clips, [w.audio for w in windows], rate, reference_sample_rate=windows[0].sample_rate,
                  names=[w.name for w in windows])
    return metric


def _chroma_gain(melody: ChromaCosine, text: ChromaCosine, seed: int) -> dict[str, Any]:
    """Melody − text-only chroma cosine, frame-weighted like the metric, with a paired bootstrap over windows."""
    mel, txt = (cat_state(m.clip_values, torch.float64).view(-1, 2) for m in (melody, text))  # (sum, frames)
    if not torch.equal(mel[:, 1], txt[:, 1]):
        raise ValueError("melody and text-only clips were scored on different frames")
    interval = bootstrap_ratio(mel[:, 0] - txt[:, 0], mel[:, 1], n_boot=1000, seed=seed, unit="windows")
    return {"melody": float(melody.compute()), "text_only": float(text.compute()), "gain": interval.value,
            "gain_ci": interval.to_dict()}


def quality_report(model: MusicGen, shards: str | Path, codec: str | Path,
                   settings: QualitySettings = QualitySettings()) -> tuple[dict[str, Any], dict[str, list[Tensor]]]:
    """(the report described in the module docstring, JSON-ready; the clips [C, L] it scored by condition:
    `text`, `untrained`, `melody`, `reference` — the windows)."""
    windows, reference = held_out_windows(shards, settings.clips, settings.seconds)
    rate = model.codec.sample_rate
    suite = MetricSuite(["fad", "kad"], {EMBEDDER: load_codec_embedder(codec)})
    for clip in reference:
        suite.add_reference(clip.audio, clip.sample_rate, clip.name)
    suite.check_reference()
    text = _generate(model, windows, settings, melody=False)
    untrained = _generate(untrained_like(model, settings.sampling.seed), windows, settings, melody=False)
    melody = _generate(model, windows, settings, melody=True)
    trained_d = _distances(suite, text, windows, rate, settings.sampling.seed)
    untrained_d = _distances(suite, untrained, windows, rate, settings.sampling.seed)
    chroma = _chroma_gain(_chroma(melody, windows, rate), _chroma(text, windows, rate), settings.sampling.seed)
    checks = {
        "fad_trained_below_untrained": trained_d["fad"]["value"] < untrained_d["fad"]["value"],
        "kad_trained_below_untrained": trained_d["kad"]["value"] < untrained_d["kad"]["value"],
        "melody_raises_chroma": chroma["gain"] >= MIN_CHROMA_GAIN or chroma["gain_ci"]["low"] > 0,
    }
    return {
        "settings": asdict(settings), "embedder": EMBEDDER, "embedder_id": suite.embedders[EMBEDDER].info.id,
        "note": "FAD/KAD on mgen's codec-encoder latents: comparable within this demo only, not to published FADs",
        "held_out": {"clips": len(reference), "windows": [w.name for w in windows],
                     "seconds": round(sum(c.audio.shape[-1] / c.sample_rate for c in reference), 2)},
        "trained": trained_d, "untrained": untrained_d, "chroma_cosine": chroma, "checks": checks,
    }, {"text": text, "untrained": untrained, "melody": melody, "reference": [w.audio for w in windows]}
