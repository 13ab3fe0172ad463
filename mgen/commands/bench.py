"""`mgen bench ...`: benchmarks that print one machine-readable JSON line each."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable


def _lm_train(args: argparse.Namespace) -> dict:
    from mgen.bench.lm_train import run_lm_train_bench  # noqa: PLC0415

    return run_lm_train_bench(vs_transformers=args.vs == "transformers", smoke=args.smoke,
                              repeats=args.repeats, device=args.device)


def _generate(args: argparse.Namespace) -> dict:
    from mgen.bench.generation import run_generate_bench  # noqa: PLC0415

    return run_generate_bench(vs_transformers=args.vs == "transformers", smoke=args.smoke,
                              repeats=args.repeats, device=args.device)


def _codec(args: argparse.Namespace) -> dict:
    from mgen.bench.codec import run_codec_bench  # noqa: PLC0415

    return run_codec_bench("tiny" if args.smoke else "paper-32khz", repeats=args.repeats,
                           vs_transformers=args.vs == "transformers", smoke=args.smoke, device=args.device)


def _shards(args: argparse.Namespace) -> dict:
    from data_prep.bench import run_shard_bench  # noqa: PLC0415

    return run_shard_bench(minutes=0.5 if args.smoke else 5)


def _read(args: argparse.Namespace) -> dict:
    from data_prep.read_bench import run_read_bench  # noqa: PLC0415

    return run_read_bench(smoke=args.smoke)


BENCHES: dict[str, tuple[str, Callable[[argparse.Namespace], dict]]] = {
    "lm-train": ("LM training step (forward, loss, backward, AdamW) in tokens/s", _lm_train),
    "generate": ("guided LM generation (CFG 3, top-k 250) in frames/s", _generate),
    "codec": ("codec encode/decode real-time factor (paper-32khz)", _codec),
    "shards": ("shard-writing throughput in audio-minutes per second", _shards),
    "read": ("training-input read throughput (AudioDataModule, 0/1/2 workers) in samples/s", _read),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="run a benchmark and print one JSON line")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (help_text, fn) in BENCHES.items():
        p = kinds.add_parser(name, help=help_text)
        p.add_argument("--vs", choices=["transformers"], help="also run the reference implementation, alternating")
        p.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--device", default="cpu")
        p.set_defaults(func=lambda args, fn=fn: print(json.dumps(fn(args))) or 0)
