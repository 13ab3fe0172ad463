"""`mgen generate`: music from text prompts (and a melody, or audio to continue) with an exported model."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from mgen.commands.flags import add_model, add_output
from mgen.errors import UsageError
from mgen.paths import check_output_file

if TYPE_CHECKING:  # torch loads in run(), so that `mgen --help` does not pay for it
    import torch

DEFAULT_MAX_DURATION = 300.0


def _read_audio(path: str, what: str) -> tuple[torch.Tensor, int]:
    """[1, C, L] float audio and its rate; a clear error naming the file (and what it was for) when it is not audio."""
    import torch

    from mgen.audio import read_audio

    audio, rate = read_audio(path, where=f"{path} (the {what})")
    return torch.from_numpy(audio.T.copy())[None], rate


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.text or [])
    if args.text_file:
        path = Path(args.text_file)
        if path.is_dir():
            raise UsageError(f"--text-file {path} is a folder; give a text file with one prompt per line")
        if not path.is_file():
            raise UsageError(f"--text-file {path} not found")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise UsageError(f"--text-file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UsageError("give at least one prompt with --text or --text-file")
    return prompts


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse impossible or runaway settings before the model loads."""
    if not (math.isfinite(args.max_duration) and args.max_duration > 0):
        raise UsageError(f"--max-duration must be a finite number of seconds > 0, got {args.max_duration}")
    if not (math.isfinite(args.duration) and args.duration > 0):
        raise UsageError(f"--duration must be a finite number of seconds > 0, got {args.duration}")
    if args.duration > args.max_duration:
        raise UsageError(f"--duration {args.duration:g} s is above --max-duration {args.max_duration:g} s; "
                         f"generation time grows with the length, so raise --max-duration to ask for it on purpose")
    if not (math.isfinite(args.cfg) and args.cfg >= 0):
        raise UsageError(f"--cfg must be a finite number >= 0 (1: no guidance), got {args.cfg}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UsageError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if not 0.0 <= args.top_p <= 1.0:
        raise UsageError(f"--top-p must be in [0, 1], got {args.top_p}")
    if args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0, got {args.top_k}")


def _outputs(out: str, count: int) -> list[Path]:
    path = Path(out)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i:03d}{path.suffix}") for i in range(count)]


def run(args: argparse.Namespace) -> int:
    import torch

    from mgen.audio import audio_format, resample, write_audio
    from mgen.devices import parse_device
    from mgen.musicgen import MusicGen

    prompts = _prompts(args)
    _check_numbers(args)
    outputs = _outputs(args.out, len(prompts))
    for path in outputs:
        check_output_file(path, "-o/--out")
        audio_format(path)
    device = parse_device(args.device)
    melody = melody_rate = prompt_audio = None
    if args.melody:
        melody, melody_rate = _read_audio(args.melody, "melody")
        melody = melody.expand(len(prompts), -1, -1)
    continuation = _read_audio(args.continue_from, "continuation") if args.continue_from else None
    model = MusicGen.load(args.model, device=device, dtype=args.dtype)
    if continuation is not None:
        audio, rate = continuation
        if rate != model.codec.sample_rate:
            audio = torch.from_numpy(resample(audio[0].numpy().T, rate, model.codec.sample_rate).T.copy())[None]
        if audio.shape[1] != model.codec.channels:
            audio = audio.mean(1, keepdim=True).expand(-1, model.codec.channels, -1)
        prompt_audio = audio.expand(len(prompts), -1, -1)
    audio = model.generate(prompts, duration=args.duration, melody=melody, melody_sample_rate=melody_rate,
                           prompt_audio=prompt_audio, cfg_coef=args.cfg, top_k=args.top_k, top_p=args.top_p,
                           temperature=args.temperature, seed=args.seed)
    for path, clip in zip(outputs, audio):
        write_audio(path, clip, model.codec.sample_rate)
        print(f"[mgen generate] wrote {path} ({clip.shape[-1] / model.codec.sample_rate:.1f} s, "
              f"{clip.shape[0]} channel(s))")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate music with an exported model (mgen fit writes RUN/export)")
    add_model(p, "export directory of an LM run (RUN/export)", was="--ckpt")
    p.add_argument("--text", action="append", help="a prompt (repeatable)")
    p.add_argument("--text-file", help="a file with one prompt per line")
    p.add_argument("--melody", help="reference audio whose melody to follow (melody models)")
    p.add_argument("--continue-from", help="audio to continue")
    p.add_argument("--duration", type=float, default=10.0, help="seconds (longer than the training window slides)")
    p.add_argument("--max-duration", type=float, default=DEFAULT_MAX_DURATION,
                   help="refuse a --duration above this many seconds (default %(default)g: about 5 minutes; "
                        "generation time grows with the length)")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance coefficient")
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="the LM's precision (bf16: about half the memory, faster on GPUs and CPUs with bf16 units); "
                        "the codec, the conditioners, the CFG mix and sampling stay fp32")
    add_output(p, "audio file (.wav or .flac, 16-bit), written atomically; several prompts get _000, _001, ... "
                  "suffixes (default: %(default)s)", default="generated.wav")
    p.set_defaults(func=run)
