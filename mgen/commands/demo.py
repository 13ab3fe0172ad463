"""`mgen demo`: the main job on a small default, end to end, on a CPU.

Stages (each one is skipped when its output already exists, so a re-run resumes where it stopped):
  1. corpus   real instrument music rendered from scores and grooves, with exact captions
  2. shards   WebDataset audio shards with a train/valid split
  3. codec    the tiny codec trained adversarially (recipes/codec/tiny.yaml)
  4. tokens   the shards encoded once into token shards with chroma
  5. lm       a tiny text + melody LM (recipes/quickstart/lm.yaml)
  6. generate one clip from a text prompt, one from a melody, as WAV + spectrogram PNG
  7. quality  the trained model against an untrained one and melody against text-only on held-out clips
              (`mgen.evaluation.demo_quality`): FAD / KAD on the codec-encoder embedder, chroma cosine
The report (`report.json`, written atomically) holds every stage's metrics and seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from mgen.commands.flags import add_output

if TYPE_CHECKING:  # torch loads when the demo runs, so that `mgen --help` does not pay for it
    import torch

    from mgen.evaluation.demo_quality import QualitySettings

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _stage(name: str, done: bool) -> bool:
    print(f"[demo] {name}: {'already done, reusing' if done else 'running'}", flush=True)
    return not done


@contextmanager
def _timed(report: dict[str, Any], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    report.setdefault("stage_seconds", {})[stage] = round(time.perf_counter() - start, 1)


def run_demo(out_dir: str | Path, clips: int = 48, clip_seconds: float = 10.0, codec_updates: int | None = None,
             lm_steps: int | None = None, duration: float = 8.0, seed: int = 0, valid_fraction: float = 0.25,
             quality: QualitySettings | None = None) -> dict[str, Any]:
    """Run (or resume) every stage in `out_dir` and return the report; `quality` None skips stage 7."""
    from data_prep.shards import ShardConfig, write_shards  # heavy imports only when the demo runs
    from data_prep.synth_corpus import build_synth_corpus
    from data_prep.tokenize import tokenize_shards
    from mgen.atomic import write_json_atomic
    from mgen.evaluation.demo_quality import quality_report
    from mgen.musicgen import MusicGen
    from mgen.train.recipe import read_yaml
    from mgen.train.fit import fit

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {"out_dir": str(out.resolve())}

    corpus = out / "corpus"
    if _stage("1/7 corpus", (corpus / "manifest.jsonl").is_file() and (corpus / "corpus.json").is_file()):
        with _timed(report, "corpus"):
            build_synth_corpus(corpus, n_clips=clips, clip_seconds=clip_seconds, seed=seed)
    shards = out / "shards"
    if _stage("2/7 shards", (shards / "shards.json").is_file()):
        with _timed(report, "shards"):
            write_shards(corpus / "audio", shards, ShardConfig(sample_rate=32000, channels=1,
                                                               valid_fraction=valid_fraction))

    codec_run = out / "codec"
    if _stage("3/7 codec", (codec_run / "export" / "config.json").is_file()):
        recipe = read_yaml(RECIPES / "codec" / "tiny.yaml")
        overrides = [f"trainer.max_steps={codec_updates}", f"trainer.val_every_n_steps={codec_updates}",
                     f"trainer.checkpoint_every_n_steps={codec_updates}"] if codec_updates else []
        with _timed(report, "codec"):
            report["codec"] = fit(recipe, codec_run, data=str(shards), overrides=overrides)["metrics"]

    tokens = out / "tokens"
    if _stage("4/7 tokens", (tokens / "shards.json").is_file()):
        with _timed(report, "tokens"):
            tokenize_shards(shards, tokens, codec_run / "export", chroma=True)

    lm_run = out / "lm"
    if _stage("5/7 lm", (lm_run / "export" / "config.json").is_file()):
        recipe = read_yaml(RECIPES / "quickstart" / "lm.yaml")
        overrides = [f"codec={codec_run / 'export'}"]
        if lm_steps:
            overrides += [f"trainer.max_steps={lm_steps}", f"optim.warmup_steps={max(1, lm_steps // 10)}",
                          f"trainer.val_every_n_steps={lm_steps}"]
        with _timed(report, "lm"):
            report["lm"] = fit(recipe, lm_run, data=str(tokens), overrides=overrides)["metrics"]

    print("[demo] 6/7 generate", flush=True)
    model = MusicGen.load(lm_run / "export")
    samples = out / "samples"
    with _timed(report, "generate"):
        report.update(_showcase(model, corpus, samples, duration, seed))

    if quality is not None:
        print(f"[demo] 7/7 quality: {quality.clips} held-out windows of {quality.seconds} s, each generated "
              f"text-only, untrained and with its melody", flush=True)
        with _timed(report, "quality"):
            report["quality"], clips_by_condition = quality_report(model, shards, codec_run / "export", quality)
        _write_quality_clips(samples / "quality", clips_by_condition, model.codec.sample_rate)
        _print_quality(report["quality"])
    report["seconds"] = round(time.perf_counter() - start)
    write_json_atomic(out / "report.json", report)
    return report


def _showcase(model: Any, corpus: Path, samples: Path, duration: float, seed: int) -> dict[str, Any]:
    """One clip from a text prompt and one from a corpus clip's melody, as WAV + spectrogram PNG."""
    from mgen.audio import read_audio
    from mgen.train.media import log_mel_image, write_png, write_wav

    import torch

    sr = model.codec.sample_rate
    samples.mkdir(parents=True, exist_ok=True)
    text = "a moderate, cheerful folk tune for solo accordion in G major, 6/8 time, 112 bpm"
    melody_file = sorted((corpus / "audio").glob("*.flac"))[-1]
    melody, melody_sr = read_audio(melody_file, where=str(melody_file))
    melody_wav = torch.from_numpy(melody.T[:, : int(duration * melody_sr)].copy())[None]
    outputs = {
        "text": model.generate([text], duration=duration, seed=seed),
        "melody": model.generate([json.loads(melody_file.with_suffix(".json").read_text())["description"]],
                                 duration=duration, melody=melody_wav, melody_sample_rate=melody_sr, seed=seed),
    }
    for name, audio in outputs.items():
        write_wav(samples / f"{name}.wav", audio[0], sr)
        write_png(samples / f"{name}.png", log_mel_image(audio[0].mean(0), sr))
    write_png(samples / "melody_reference.png", log_mel_image(melody_wav[0].mean(0), melody_sr))
    return {"text_prompt": text, "melody_reference": str(melody_file),
            "samples": sorted(str(p) for p in samples.iterdir() if p.is_file())}


def _write_quality_clips(folder: Path, clips: dict[str, list[torch.Tensor]], sample_rate: int) -> None:
    from mgen.train.media import write_wav

    folder.mkdir(parents=True, exist_ok=True)
    for condition, audio in clips.items():
        for i, clip in enumerate(audio):
            write_wav(folder / f"{i:02d}_{condition}.wav", clip, sample_rate)


def _print_quality(quality: dict[str, Any]) -> None:
    trained, untrained, chroma = quality["trained"], quality["untrained"], quality["chroma_cosine"]
    print(f"[demo]   FAD ({quality['embedder']}) trained {trained['fad']['value']:.3f} vs untrained "
          f"{untrained['fad']['value']:.3f}; KAD {trained['kad']['value']:.3f} vs {untrained['kad']['value']:.3f}")
    print(f"[demo]   chroma cosine with melody {chroma['melody']:.3f} vs text-only {chroma['text_only']:.3f} "
          f"(gain {chroma['gain']:+.3f}, 95% CI {chroma['gain_ci']['low']:+.3f}..{chroma['gain_ci']['high']:+.3f})")
    failed = [name for name, ok in quality["checks"].items() if not ok]
    print(f"[demo]   checks: {'all passed' if not failed else 'FAILED: ' + ', '.join(failed)}", flush=True)


def run(args: argparse.Namespace) -> int:
    from mgen.evaluation.demo_quality import QualitySettings
    from mgen.evaluation.generation import GenerationSettings

    quality = None if args.no_quality else QualitySettings(args.quality_clips, args.quality_seconds,
                                                           GenerationSettings(seed=args.seed))
    report = run_demo(args.out, clips=args.clips, codec_updates=args.codec_updates, lm_steps=args.lm_steps,
                      duration=args.duration, seed=args.seed, quality=quality)
    print(f"[demo] done in {report['seconds']} s. Outputs in {report['out_dir']}:")
    print("[demo]   samples/text.wav, samples/melody.wav (+ spectrogram PNGs), samples/quality/ (the scored clips), "
          "report.json, codec/ and lm/ runs (metrics in */logs/metrics.csv)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the main job end to end on a small default (resumable)")
    add_output(p, "output folder (re-running with the same one resumes; default: %(default)s)", default="outputs/demo")
    p.add_argument("--clips", type=int, default=48, help="corpus clips of 10 s to render")
    p.add_argument("--codec-updates", type=int, default=600,
                   help="codec updates (the tiny recipe's 5000 take ~20 min on a laptop CPU)")
    p.add_argument("--lm-steps", type=int, help="override the quickstart LM recipe's steps")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of music to generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality-clips", type=int, default=16,
                   help="held-out windows generated per condition for the quality check")
    p.add_argument("--quality-seconds", type=float, default=3.0, help="length of each window")
    p.add_argument("--no-quality", action="store_true", help="skip stage 7 (the quality check)")
    p.set_defaults(func=run)
