"""`mgen bench ...`: benchmarks that print one machine-readable JSON line each. Each benchmark takes only the flags
it acts on (the pipeline benchmarks run on the CPU and have no reference implementation)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable


def _lm_train(args: argparse.Namespace) -> dict:
    from mgen.bench.lm_train import run_lm_train_bench

    return run_lm_train_bench(vs_transformers=args.vs == "transformers", smoke=args.smoke,
                              repeats=args.repeats, device=args.device, precision=args.precision)


def _generate(args: argparse.Namespace) -> dict:
    from mgen.bench.generation import run_generate_bench

    return run_generate_bench(vs_transformers=args.vs == "transformers", smoke=args.smoke,
                              repeats=args.repeats, device=args.device)


def _codec(args: argparse.Namespace) -> dict:
    from mgen.bench.codec import run_codec_bench

    return run_codec_bench("tiny" if args.smoke else "paper-32khz", repeats=args.repeats,
                           vs_transformers=args.vs == "transformers", smoke=args.smoke, device=args.device)


def _shards(args: argparse.Namespace) -> dict:
    from data_prep.bench import run_shard_bench

    return run_shard_bench(minutes=0.5 if args.smoke else 5)


def _read(args: argparse.Namespace) -> dict:
    from data_prep.read_bench import run_read_bench

    return run_read_bench(smoke=args.smoke)


MODEL_FLAGS = ("--vs", "--smoke", "--repeats", "--device")
PRECISIONS = ("32-true", "bf16-mixed")  # mgen.bench.lm_train.PRECISIONS (not imported: it imports torch)

# name -> (help, run, the flags it acts on)
BENCHES: dict[str, tuple[str, Callable[[argparse.Namespace], dict], tuple[str, ...]]] = {
    "lm-train": ("LM training step (forward, loss, backward, AdamW) in tokens/s", _lm_train,
                 MODEL_FLAGS + ("--precision",)),
    "generate": ("guided LM generation (CFG 3, top-k 250) in frames/s", _generate, MODEL_FLAGS),
    "codec": ("codec encode/decode real-time factor (paper-32khz)", _codec, MODEL_FLAGS),
    "shards": ("shard-writing throughput in audio-minutes per second", _shards, ("--smoke",)),
    "read": ("training-input read throughput (AudioDataModule, 0/1/2 workers) in samples/s", _read, ("--smoke",)),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="run a benchmark and print one JSON line")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (help_text, fn, flags) in BENCHES.items():
        p = kinds.add_parser(name, help=help_text)
        if "--vs" in flags:
            p.add_argument("--vs", choices=["transformers"], help="also run the reference implementation, alternating")
        if "--smoke" in flags:
            p.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
        if "--repeats" in flags:
            p.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (median reported)")
        if "--device" in flags:
            p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
        if "--precision" in flags:
            p.add_argument("--precision", choices=PRECISIONS, default="32-true",
                           help="32-true: fp32; bf16-mixed: forward and loss under torch.autocast(bfloat16), "
                                "both implementations")
        p.set_defaults(func=lambda args, fn=fn: _run(fn, args))


def _run(fn: Callable[[argparse.Namespace], dict], args: argparse.Namespace) -> int:
    """Print the CPU flags line on stderr and the benchmark's JSON line on stdout."""
    from mgen.bench.cpu import cpu_flags_line

    print(cpu_flags_line(), file=sys.stderr)
    print(json.dumps(fn(args)))
    return 0
