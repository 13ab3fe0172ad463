"""Evaluations end to end: a model against a split of audio shards, a folder of audio against a reference (a
folder, a shard split, or statistics), and reference statistics computed once.

Everything that can be checked before the long part runs first: metric names, weights files, captions, pairs,
formats, and the reference's frame count (a FAD needs more frames than dimensions). Then clips are generated
(cached, resumable), scored in chunks (no evaluation set is ever held in memory), and the report is written.

Formats: every metric mixes clips to mono and resamples them (libsoxr HQ) to its model's rate, so different
rates are *computable*; but generated and reference audio of different rates or channel counts usually means the
wrong folder, and compares different bandwidths. So they are refused unless ``resample=True``
(``--resample``), which proceeds and records a notice in the report.
"""

from __future__ import annotations

import fcntl
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mgen.evaluation.generation import ClipCache, GenerationSettings, Prompt
from mgen.evaluation.models import (DEFAULT_FAD_EMBEDDER, EmbedderSpec, describe, load_clap, load_embedders,
                                    load_kl_classifier)
from mgen.evaluation.report import random_weight_models, write_report
from mgen.checksum import files_sha256
from mgen.data.shard_index import is_shard_folder, load_index
from mgen.evaluation.sources import Clip, describe_formats, folder_clips, reference_clips, shard_clips
from mgen.evaluation.suite import NEEDS_PAIRS, NEEDS_REFERENCE, PAPER_METRICS, GeneratedItem, MetricSuite, parse_metrics
from mgen.metrics import FAD_PROTOCOL, KLD_PROTOCOL, ReferenceStats
from mgen.metrics.reference import check_source

LOCK_NAME = ".mgen-evaluate.lock"
GENERATED_DIR = "generated"


@dataclass
class EvalOptions:
    """How to score: metrics (None: the paper's, + chroma for melody models), the FAD/KAD embedders, the KL and
    CLAP models' weights (None: the published files in the torch hub cache), and the checks' policies."""

    metrics: Sequence[str] | str | None = None
    embedders: Sequence[EmbedderSpec | str] = (DEFAULT_FAD_EMBEDDER,)
    passt_weights: str | None = None
    clap_weights: str | None = None
    device: str = "cpu"
    silence: str = "error"
    resample: bool = False
    reference_source: str = "real"
    bootstrap: bool = True
    seed: int = 0
    chunk: int = 16          # clips per metric update
    progress: bool = True
    specs: list[EmbedderSpec] = field(init=False)

    def __post_init__(self) -> None:
        self.specs = [EmbedderSpec.parse(e) for e in self.embedders]
        if not self.specs:
            raise ValueError("give at least one embedder for FAD / KAD")
        check_source(self.reference_source)


def _log(message: str) -> None:
    print(f"[mgen evaluate] {message}", file=sys.stderr, flush=True)


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """One evaluation at a time in `folder` (a second one is refused, not interleaved)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise ValueError(f"{folder}: another mgen evaluate is writing there; wait for it or use another "
                             "output folder") from err
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_formats(generated: Sequence[Clip] | tuple[int, int], reference: Sequence[Clip], resample: bool) -> list[str]:
    """The rule of the module docstring; returns the notices to report."""
    gen = {generated} if isinstance(generated, tuple) else {(c.sample_rate, c.channels) for c in generated}
    ref = {(c.sample_rate, c.channels) for c in reference}
    if gen == ref and len(gen) == 1:
        return []
    gen_text = ("/".join(f"{r} Hz {c} ch" for r, c in sorted(gen)))
    message = f"generated audio is {gen_text}, the reference {describe_formats(list(reference))}"
    if not resample:
        raise ValueError(f"{message}: pass --resample to mix and resample every clip to each metric's rate "
                         "(libsoxr HQ), or convert the files so both sides match")
    return [f"{message}: every clip mixed to mono and resampled to each metric model's rate (--resample)"]


def _metrics(options: EvalOptions, melody: bool = False) -> list[str]:
    if options.metrics is None:
        return parse_metrics([*PAPER_METRICS, *(["chroma"] if melody else [])])
    return parse_metrics(options.metrics)


def _load_models(metrics: list[str], options: EvalOptions, model_export: Path | None) -> dict[str, Any]:
    """Every model the metrics need, loaded before anything long runs (a missing file fails fast)."""
    models: dict[str, Any] = {"embedders": {}, "kl": None, "clap": None}
    if any(m in metrics for m in NEEDS_REFERENCE):
        models["embedders"] = load_embedders(options.specs, options.device, model_export)
    if "kl" in metrics:
        models["kl"] = load_kl_classifier(options.passt_weights, options.device)
    if "clap" in metrics:
        models["clap"] = load_clap(options.clap_weights, options.device)
    return models


def _described(models: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {label: describe(e.info) for label, e in models["embedders"].items()}
    if models["kl"] is not None:
        out["kl"] = describe(models["kl"].info)
    if models["clap"] is not None:
        out["clap"] = describe(models["clap"].info)
    return out


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _durations(seconds: Sequence[float]) -> dict[str, float]:
    return {"clips": len(seconds), "seconds": round(sum(seconds), 3), "min_seconds": round(min(seconds), 3),
            "max_seconds": round(max(seconds), 3)}


def _frames(clip: Clip, seconds: float | None) -> int | None:
    return None if seconds is None else max(1, round(seconds * clip.sample_rate))


def _score(suite: MetricSuite, options: EvalOptions, generated: Sequence[Clip],
           pairs: dict[str, tuple[Clip, float | None]] | None) -> tuple[dict[str, Any], list[str]]:
    """Feed the generated clips (with their captions, and reference clips cut to `seconds`) in chunks; returns
    the results and every distinct warning raised on the way (they go into the report)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for chunk in _chunks(generated, options.chunk):
            items = []
            for clip in chunk:
                item = GeneratedItem(clip.name, clip.load(), clip.sample_rate, clip.caption)
                if pairs is not None:
                    ref, seconds = pairs[clip.name]
                    item.reference, item.reference_rate = ref.load(_frames(ref, seconds)), ref.sample_rate
                items.append(item)
            suite.add_generated(items)
    results, messages = suite.results(options.bootstrap, options.seed)
    found = list(dict.fromkeys([*(str(w.message) for w in caught), *messages]))
    for message in found:
        _log(f"warning: {message}")
    return results, found


def _add_references(suite: MetricSuite, clips: Sequence[Clip], seconds: dict[str, float] | None = None) -> None:
    for clip in clips:
        suite.add_reference(clip.load(_frames(clip, (seconds or {}).get(clip.name))), clip.sample_rate, clip.name)
    suite.check_reference()


# ---------------------------------------------------------------------------------------------------- a model
def evaluate_model(model_path: str | Path, data: str | Path, out_dir: str | Path, split: str = "valid",
                   num_samples: int | None = None, settings: GenerationSettings | None = None,
                   options: EvalOptions | None = None,
                   on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Generate from the captions (and melodies) of the first `num_samples` clips of `split` of the audio shards
    `data`, each as long as its reference (capped), and score the clips against that real audio."""
    from mgen.conditioning import MELODY, TEXT
    from mgen.musicgen import MusicGen

    settings = settings or GenerationSettings()
    options = options or EvalOptions()
    out = Path(out_dir)
    started = time.perf_counter()
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {num_samples}")
    clips = shard_clips(data, split, num_samples)  # refuses token shards, names missing splits
    available = sum(int(e.get("samples", 0)) for e in load_index(data)["shards"] if e.get("split") == split)
    if num_samples is not None and len(clips) < num_samples:
        raise ValueError(f"{data}: the {split!r} split has {len(clips)} samples, --num-samples asks for {num_samples}")
    model_path = Path(model_path)
    with folder_lock(out):
        model = MusicGen.load(model_path, device=options.device)
        conditioners = model.conditioner.conditioners
        melody, text = MELODY in conditioners, TEXT in conditioners
        metrics = _metrics(options, melody)
        if "chroma" in metrics and not melody:
            raise ValueError(f"chroma scores melody adherence: {model_path} has no melody conditioner")
        if text or "clap" in metrics:
            missing = [c.name for c in clips if not c.caption.strip()]
            if missing:
                raise ValueError(f"{data}: {len(missing)} sample(s) of the {split!r} split have no caption (e.g. "
                                 f"{missing[0]}); text models and the CLAP score need one per sample")
        notices = check_formats((model.codec.sample_rate, model.codec.channels), clips, options.resample)
        max_duration = settings.max_duration or model.max_window_seconds
        prompts = [Prompt(c.name, c.caption or "(no caption)", min(c.seconds, max_duration), c if melody else None)
                   for c in clips]
        seconds = {p.name: p.seconds for p in prompts}
        models = _load_models(metrics, options, model_path)
        suite = MetricSuite(metrics, models["embedders"], kl_classifier=models["kl"], clap=models["clap"],
                            silence=options.silence)
        if any(m in metrics for m in NEEDS_REFERENCE):
            _log(f"embedding {len(clips)} reference clips")
            _add_references(suite, clips, seconds)
        weights = [model_path / "model.safetensors", *sorted((model_path / "codec").glob("*.safetensors"))]
        model_id = {"sha256": files_sha256(w for w in weights if w.is_file())}
        cache = ClipCache(out / GENERATED_DIR, model, model_id, settings)
        counts = cache.generate(prompts, options.progress, on_batch)
        del model
        _log(f"scoring {len(prompts)} generated clips ({counts['reused']} from the cache)")
        by_name = {c.name: c for c in clips}
        pairs = ({p.name: (by_name[p.name], p.seconds) for p in prompts} if any(m in metrics for m in NEEDS_PAIRS)
                 else None)
        results, messages = _score(suite, options, [cache.clip(p) for p in prompts], pairs)
        described = _described(models)
        report = {
            "subject": {"kind": "model", "path": str(model_path), "sha256": model_id["sha256"], "melody": melody,
                        "text": text, "sample_rate": cache.sample_rate, "channels": cache.channels,
                        "description": f"model {model_path} (sha256 {model_id['sha256'][:16]})"},
            "data": {"shards": str(data), "split": split, "available": available, "num_samples": len(clips),
                     "order": "the split's first samples in index order (shards by name, samples in tar order)"},
            "reference": {"kind": "shards", "source": "real", "description": f"shards {data} (split {split})",
                          **_durations([seconds[c.name] for c in clips])},
            "generated": {"folder": GENERATED_DIR, "silent": suite.silent_generated,  # relative to the report
                          **_durations([p.seconds for p in prompts])},
            "generation": {**asdict(settings), "max_duration": max_duration,
                           "seeding": "one generator per clip, seeded from sha256(f'{seed}/{name}')"},
            **_common(metrics, described, results, messages, notices, options),
            "run": {"reused": counts["reused"], "generated": counts["generated"], "device": str(options.device),
                    "seconds": round(time.perf_counter() - started, 1)},
        }
        write_report(out, report)
    _log(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return report


def _common(metrics: list[str], described: dict[str, dict[str, Any]], results: dict[str, Any],
            messages: list[str], notices: list[str], options: EvalOptions) -> dict[str, Any]:
    return {"metrics_asked": metrics, "models": described, "random_weights": random_weight_models(described),
            "protocols": {**({"fad": FAD_PROTOCOL} if any(m in metrics for m in NEEDS_REFERENCE) else {}),
                          **({"kld": KLD_PROTOCOL} if "kl" in metrics else {}),
                          **{name: info["protocol"] for name, info in described.items()}},
            "silence_policy": options.silence, "bootstrap_seed": options.seed, "metrics": results,
            "notices": notices, "warnings": messages}


# -------------------------------------------------------------------------------------------------- folders
def _reference(ref: Sequence[str | Path] | str | Path | None, split: str) -> tuple[list[Clip], list[ReferenceStats],
                                                                                  str]:
    """(reference clips, reference statistics, description) from --ref: one folder or shard folder, or .npz files."""
    refs = [] if ref is None else [ref] if isinstance(ref, (str, Path)) else list(ref)
    if not refs:
        return [], [], "none"
    stats_files = [Path(r) for r in refs if str(r).endswith(".npz")]
    if stats_files and len(stats_files) != len(refs):
        raise ValueError("--ref takes one audio folder (or shard folder), or statistics files (.npz), not both")
    if stats_files:
        return [], [ReferenceStats.load(p) for p in stats_files], "statistics " + ", ".join(map(str, stats_files))
    if len(refs) > 1:
        raise ValueError(f"--ref takes one audio folder, got {len(refs)}")
    clips, description = reference_clips(refs[0], split)
    return clips, [], description


def _check_pairs(metrics: list[str], generated: Sequence[Clip], reference: Sequence[Clip],
                 stats: Sequence[ReferenceStats]) -> None:
    for metric in metrics:
        if metric in NEEDS_REFERENCE and not reference and not stats:
            raise ValueError(f"{metric} needs a reference: --ref DIR (audio folder or shard folder) or STATS.npz")
        if metric in NEEDS_PAIRS:
            if not reference:
                raise ValueError(f"{metric} pairs each generated file with the reference file of the same stem: it "
                                 "needs a reference folder (--ref DIR), not statistics")
            names = {c.name for c in reference}
            missing = [c.name for c in generated if c.name not in names]
            if missing:
                raise ValueError(f"{metric} pairs generated and reference files by stem: {len(missing)} generated "
                                 f"file(s) have no reference of the same stem ({', '.join(missing[:5])}"
                                 f"{' ...' if len(missing) > 5 else ''})")


def evaluate_folders(gen_dir: str | Path, ref: Sequence[str | Path] | str | Path | None, out_dir: str | Path,
                     split: str = "valid", options: EvalOptions | None = None) -> dict[str, Any]:
    """Score the audio files of `gen_dir` (captions from its captions.jsonl) against a reference folder, a shard
    split, or reference statistics. KL and chroma pair files by stem; CLAP needs a caption per file."""
    options = options or EvalOptions()
    out = Path(out_dir)
    started = time.perf_counter()
    metrics = _metrics(options)
    generated = folder_clips(gen_dir, "generated folder")
    reference, stats, description = _reference(ref, split)
    _check_pairs(metrics, generated, reference, stats)
    if "clap" in metrics:
        missing = [c.name for c in generated if not c.caption.strip()]
        if missing:
            raise ValueError(f"clap needs a caption per generated file, from {Path(gen_dir) / 'captions.jsonl'} (lines "
                             f"{{\"stem\": ..., \"text\": ...}}): {len(missing)} file(s) have none "
                             f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})")
    notices = check_formats(generated, reference, options.resample) if reference else []
    if len({(c.sample_rate, c.channels) for c in generated}) > 1 and not reference and not options.resample:
        raise ValueError(f"{gen_dir}: the generated files mix formats ({describe_formats(generated)}); pass "
                         "--resample to mix and resample every clip to each metric's rate")
    with folder_lock(out):
        models = _load_models(metrics, options, None)
        suite = MetricSuite(metrics, models["embedders"], kl_classifier=models["kl"], clap=models["clap"],
                            silence=options.silence)
        if stats:
            suite.load_references(stats)
        elif reference and any(m in metrics for m in NEEDS_REFERENCE):
            _log(f"embedding {len(reference)} reference clips")
            _add_references(suite, reference)
        by_name = {c.name: c for c in reference}
        pairs = ({c.name: (by_name[c.name], None) for c in generated}
                 if any(m in metrics for m in NEEDS_PAIRS) else None)
        _log(f"scoring {len(generated)} generated clips")
        results, messages = _score(suite, options, generated, pairs)
        described = _described(models)
        if stats:
            reference_record = {"kind": "statistics", "source": stats[0].source, "description": description}
        elif reference:
            reference_record = {"kind": "audio", "source": options.reference_source, "description": description,
                                **_durations([c.seconds for c in reference])}
        else:
            reference_record = {"kind": "none", "source": None, "description": "none (the metrics asked need none)"}
        report = {
            "subject": {"kind": "folder", "path": str(gen_dir), "description": f"folder {gen_dir}"},
            "reference": reference_record,
            "generated": {"folder": str(gen_dir), "silent": suite.silent_generated,
                          **_durations([c.seconds for c in generated])},
            **_common(metrics, described, results, messages, notices, options),
            "run": {"device": str(options.device), "seconds": round(time.perf_counter() - started, 1)},
        }
        write_report(out, report)
    _log(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return report


# ------------------------------------------------------------------------------------------------ statistics
def reference_statistics(ref: str | Path, out_path: str | Path, split: str = "valid",
                         num_samples: int | None = None, options: EvalOptions | None = None) -> ReferenceStats:
    """Statistics (mean, covariance and frames, so that KAD can use them too) of the reference audio `ref` (an
    audio folder or a shard split) with one embedder, written atomically to `out_path` (.npz)."""
    options = options or EvalOptions()
    out_path = Path(out_path)
    if out_path.suffix != ".npz":
        raise ValueError(f"reference statistics are written to a .npz file, got -o {out_path}")
    if len(options.specs) != 1:
        raise ValueError(f"one embedder per statistics file, got {len(options.specs)}: run once per embedder")
    clips, description = reference_clips(ref, split, num_samples)
    if len({(c.sample_rate, c.channels) for c in clips}) > 1:
        _log(f"notice: {description} mixes formats ({describe_formats(clips)}); every clip is mixed to mono and "
             "resampled to the embedder's rate")
    source = "real" if is_shard_folder(ref) else options.reference_source
    embedders = load_embedders(options.specs, options.device)
    suite = MetricSuite(["fad"], embedders, silence=options.silence)
    (label, metric), = suite.fad.items()
    metric.reference_source = source
    _log(f"embedding {len(clips)} reference clips of {description} with {label}")
    _add_references(suite, clips)
    metric.save_reference(out_path)
    stats = metric.reference_stats()
    _log(f"wrote {out_path}: {stats.stats.n} frames of {stats.clips} clips ({label}, {source} audio, "
         f"weights {stats.embedder.weights_label})")
    return stats


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


__all__ = ["EvalOptions", "GenerationSettings", "check_formats", "default_device", "evaluate_folders",
           "evaluate_model", "reference_statistics", "folder_lock"]
