"""`mgen generate`: music from text prompts (and a melody, or audio to continue) with an exported model."""

from __future__ import annotations

import argparse
from pathlib import Path

import soundfile as sf
import torch


def _read_audio(path: str, what: str) -> tuple[torch.Tensor, int]:
    """[1, C, L] float audio and its rate; a clear error naming the file when it is not audio."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises its own error types for non-audio input
        raise ValueError(f"{path}: cannot be read as audio for the {what} ({err})") from err
    if audio.shape[0] == 0:
        raise ValueError(f"{path}: the {what} audio is empty")
    return torch.from_numpy(audio.T.copy())[None], int(rate)


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.text or [])
    if args.text_file:
        lines = Path(args.text_file).read_text().splitlines()
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError("give at least one prompt with --text or --text-file")
    return prompts


def _outputs(out: str, count: int) -> list[Path]:
    path = Path(out)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i:03d}{path.suffix}") for i in range(count)]


def run(args: argparse.Namespace) -> int:
    from mgen.musicgen import MusicGen  # noqa: PLC0415 - heavy imports only when the command runs
    from mgen.train.media import write_wav  # noqa: PLC0415

    prompts = _prompts(args)
    if args.duration <= 0:
        raise ValueError(f"--duration must be > 0 seconds, got {args.duration}")
    model = MusicGen.load(args.ckpt, device=args.device)
    melody = melody_rate = prompt_audio = None
    if args.melody:
        melody, melody_rate = _read_audio(args.melody, "melody")
        melody = melody.expand(len(prompts), -1, -1)
    if args.continue_from:
        audio, rate = _read_audio(args.continue_from, "continuation")
        if rate != model.codec.sample_rate:
            from data_prep.audio_io import resample  # noqa: PLC0415

            audio = torch.from_numpy(resample(audio[0].numpy().T, rate, model.codec.sample_rate).T.copy())[None]
        if audio.shape[1] != model.codec.channels:
            audio = audio.mean(1, keepdim=True).expand(-1, model.codec.channels, -1)
        prompt_audio = audio.expand(len(prompts), -1, -1)
    audio = model.generate(prompts, duration=args.duration, melody=melody, melody_sample_rate=melody_rate,
                           prompt_audio=prompt_audio, cfg_coef=args.cfg, top_k=args.top_k, top_p=args.top_p,
                           temperature=args.temperature, seed=args.seed)
    for path, clip in zip(_outputs(args.out, len(prompts)), audio):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, clip, model.codec.sample_rate)
        print(f"[mgen generate] wrote {path} ({clip.shape[-1] / model.codec.sample_rate:.1f} s, "
              f"{clip.shape[0]} channel(s))")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate music with an exported model (mgen fit writes RUN/export)")
    p.add_argument("--ckpt", required=True, help="export directory of an LM run (RUN/export)")
    p.add_argument("--text", action="append", help="a prompt (repeatable)")
    p.add_argument("--text-file", help="a file with one prompt per line")
    p.add_argument("--melody", help="reference audio whose melody to follow (melody models)")
    p.add_argument("--continue-from", help="audio to continue")
    p.add_argument("--duration", type=float, default=10.0, help="seconds (longer than the training window slides)")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance coefficient")
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="generated.wav", help="WAV path; several prompts get _000, _001, ... suffixes")
    p.set_defaults(func=run)
