"""`mgen demo`: the main job on a small default, end to end, on a CPU.

Stages (each one is skipped when its output already exists, so a re-run resumes where it stopped):
  1. corpus   real instrument music rendered from scores and grooves, with exact captions
  2. shards   WebDataset audio shards with a train/valid split
  3. codec    the tiny codec trained adversarially (recipes/codec/tiny.yaml)
  4. tokens   the shards encoded once into token shards with chroma
  5. lm       a tiny text + melody LM (recipes/quickstart/lm.yaml)
  6. generate one clip from a text prompt, one from a melody, as WAV + spectrogram PNG, and a report
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
from PIL import Image

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _stage(name: str, done: bool) -> bool:
    print(f"[demo] {name}: {'already done, reusing' if done else 'running'}", flush=True)
    return not done


def run_demo(out_dir: str | Path, clips: int = 24, clip_seconds: float = 10.0, codec_updates: int | None = None,
             lm_steps: int | None = None, duration: float = 8.0, seed: int = 0) -> dict[str, Any]:
    from data_prep.shards import write_shards  # noqa: PLC0415 - heavy imports only when the demo runs
    from data_prep.synth_corpus import build_synth_corpus  # noqa: PLC0415
    from data_prep.tokenize import tokenize_shards  # noqa: PLC0415
    from mgen.musicgen import MusicGen  # noqa: PLC0415
    from mgen.recipes import load_recipe  # noqa: PLC0415
    from mgen.train.fit import fit  # noqa: PLC0415
    from mgen.train.media import log_mel_image, write_wav  # noqa: PLC0415

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {"out_dir": str(out.resolve())}

    corpus = out / "corpus"
    if _stage("1/6 corpus", (corpus / "manifest.jsonl").is_file() and (corpus / "corpus.json").is_file()):
        build_synth_corpus(corpus, n_clips=clips, clip_seconds=clip_seconds, seed=seed)
    shards = out / "shards"
    if _stage("2/6 shards", (shards / "shards.json").is_file()):
        write_shards(corpus / "audio", shards, sample_rate=32000, channels=1, valid_fraction=0.1)

    codec_run = out / "codec"
    if _stage("3/6 codec", (codec_run / "export" / "config.json").is_file()):
        recipe = load_recipe(RECIPES / "codec" / "tiny.yaml")
        overrides = [f"trainer.max_updates={codec_updates}", f"trainer.val_every_n_updates={codec_updates}",
                     f"trainer.checkpoint_every_n_updates={codec_updates}"] if codec_updates else []
        summary = fit(recipe, codec_run, data=str(shards), overrides=overrides)
        report["codec"] = summary["metrics"]

    tokens = out / "tokens"
    if _stage("4/6 tokens", (tokens / "shards.json").is_file()):
        tokenize_shards(shards, tokens, codec_run / "export", chroma=True)

    lm_run = out / "lm"
    if _stage("5/6 lm", (lm_run / "export" / "config.json").is_file()):
        recipe = load_recipe(RECIPES / "quickstart" / "lm.yaml")
        overrides = [f"codec={codec_run / 'export'}"]
        if lm_steps:
            overrides += [f"trainer.max_steps={lm_steps}", f"optim.total_steps={lm_steps}",
                          f"optim.warmup_steps={max(1, lm_steps // 10)}", f"trainer.val_every_n_batches={lm_steps}"]
        summary = fit(recipe, lm_run, data=str(tokens), overrides=overrides)
        report["lm"] = summary["metrics"]

    print("[demo] 6/6 generate", flush=True)
    model = MusicGen.load(lm_run / "export")
    sr = model.codec.sample_rate
    samples = out / "samples"
    samples.mkdir(exist_ok=True)
    text = "a moderate, cheerful folk tune for solo accordion in G major, 6/8 time, 112 bpm"
    melody_file = sorted((corpus / "audio").glob("*.flac"))[-1]
    melody, melody_sr = sf.read(melody_file, dtype="float32", always_2d=True)
    melody_wav = torch.from_numpy(melody.T[:, : int(duration * melody_sr)])[None]
    outputs = {
        "text": model.generate([text], duration=duration, seed=seed),
        "melody": model.generate([json.loads(melody_file.with_suffix(".json").read_text())["description"]],
                                 duration=duration, melody=melody_wav, melody_sample_rate=melody_sr, seed=seed),
    }
    for name, audio in outputs.items():
        write_wav(samples / f"{name}.wav", audio[0], sr)
        Image.fromarray(log_mel_image(audio[0].mean(0), sr)).save(samples / f"{name}.png")
    Image.fromarray(log_mel_image(melody_wav[0].mean(0), melody_sr)).save(samples / "melody_reference.png")
    report.update({"text_prompt": text, "melody_reference": str(melody_file),
                   "samples": sorted(str(p) for p in samples.iterdir()), "seconds": round(time.perf_counter() - start)})
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / "report.json")
    return report


def run(args: argparse.Namespace) -> int:
    report = run_demo(args.out, clips=args.clips, codec_updates=args.codec_updates, lm_steps=args.lm_steps,
                      duration=args.duration, seed=args.seed)
    print(f"[demo] done in {report['seconds']} s. Outputs in {report['out_dir']}:")
    print("[demo]   samples/text.wav, samples/melody.wav (+ spectrogram PNGs), report.json, "
          "codec/ and lm/ runs (metrics in */logs/metrics.csv)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the main job end to end on a small default (resumable)")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--clips", type=int, default=24, help="corpus clips of 10 s to render")
    p.add_argument("--codec-updates", type=int, default=600,
                   help="codec updates (the tiny recipe's 5000 take ~20 min on a laptop CPU)")
    p.add_argument("--lm-steps", type=int, help="override the quickstart LM recipe's steps")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of music to generate")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
