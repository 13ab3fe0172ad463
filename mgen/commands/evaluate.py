"""`mgen evaluate`: FAD, KAD, KL, CLAP score and chroma of a model, of any folder of audio, and reference
statistics computed once. The work is `mgen.evaluation`; this module is the command line."""

from __future__ import annotations

import argparse
import json

from mgen.errors import UsageError

USAGE = """
  mgen evaluate --model EXPORT --data SHARDS [--split valid] [--num-samples N] -o OUT_DIR
  mgen evaluate --gen DIR [--ref DIR|SHARDS|STATS.npz ...] -o OUT_DIR
  mgen evaluate --ref DIR|SHARDS -o STATS.npz [--embedder NAME[=WEIGHTS]]
"""


def _options(args: argparse.Namespace):
    from mgen.evaluation import EvalOptions  # heavy imports only when the command runs
    from mgen.evaluation.runner import default_device

    return EvalOptions(metrics=args.metrics, embedders=args.embedder or ["vggish"], passt_weights=args.passt_weights,
                       clap_weights=args.clap_weights, device=args.device or default_device(), silence=args.silence,
                       resample=args.resample, reference_source=args.reference_source,
                       bootstrap=not args.no_bootstrap, seed=args.seed, progress=not args.no_progress)


def _summary(report: dict) -> None:
    for key, record in report["metrics"].items():
        ci = record.get("ci")
        interval = f"  [{ci['low']:.4g}, {ci['high']:.4g}]" if ci else ""
        print(f"{record.get('name', key):<28} {record['value']:.4g}{interval}")
    if report.get("random_weights"):
        print(f"random-weights: {', '.join(report['random_weights'])} (these numbers mean nothing)")


def run(args: argparse.Namespace) -> int:
    from mgen.evaluation import (GenerationSettings, evaluate_folders, evaluate_model,
                                 reference_statistics)

    modes = [name for name, given in (("--model", args.model), ("--gen", args.gen)) if given]
    if len(modes) > 1:
        raise UsageError("give --model (generate and score) or --gen (score a folder), not both")
    if args.model:
        if not args.data:
            raise UsageError("--model needs --data: the audio shards whose captions it generates from and whose real "
                             "audio is the reference")
        if args.ref:
            raise UsageError("--model is scored against --data's real audio; --ref is for --gen or for statistics")
        settings = GenerationSettings(top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                                      cfg_coef=args.cfg, seed=args.seed, max_duration=args.max_duration,
                                      batch_size=args.batch_size)
        report = evaluate_model(args.model, args.data, args.out, args.split, args.num_samples, settings,
                                _options(args))
        _summary(report)
        return 0
    if args.data:
        raise UsageError("--data goes with --model; to score a folder against shards use --gen DIR --ref SHARDS")
    if args.gen:
        report = evaluate_folders(args.gen, args.ref, args.out, args.split, _options(args))
        _summary(report)
        return 0
    if args.ref:
        if len(args.ref) != 1:
            raise UsageError("reference statistics are made from one folder (--ref DIR|SHARDS)")
        stats = reference_statistics(args.ref[0], args.out, args.split, args.num_samples, _options(args))
        print(json.dumps({"statistics": args.out, "embedder": stats.embedder.id, "frames": stats.stats.n,
                          "clips": stats.clips, "label": stats.embedder.weights_label}))
        return 0
    raise UsageError("nothing to evaluate: give --model with --data, or --gen, or --ref with -o STATS.npz "
                     "(see mgen evaluate --help)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="FAD / KAD / KL / CLAP / chroma of a model or a folder of audio",
                              usage=USAGE, description=__doc__)
    what = p.add_argument_group("what to evaluate")
    what.add_argument("--model", help="an LM export (RUN/export, or an imported model)")
    what.add_argument("--data", help="audio shards (mgen prep shards) whose split gives captions, melodies and the "
                                     "real reference audio (token shards are refused)")
    what.add_argument("--split", default="valid", help="shard split (default: valid)")
    what.add_argument("--num-samples", type=int, help="the split's first N samples (default: all)")
    what.add_argument("--gen", help="a folder of audio to score (captions for CLAP in its captions.jsonl)")
    what.add_argument("--ref", nargs="+", action="extend",
                      help="reference: an audio folder, a shard folder (--split), or statistics .npz files")
    what.add_argument("-o", "--out", required=True,
                      help="output folder (report.json, report.md, generated/), or STATS.npz with --ref alone")
    how = p.add_argument_group("metrics and their models")
    how.add_argument("--metrics", help="comma-separated, of fad,kad,kl,clap,chroma (default: fad,kl,clap as the "
                                       "paper, + chroma for melody models)")
    how.add_argument("--embedder", action="append", metavar="NAME[=WEIGHTS]",
                     help="FAD/KAD embedder, repeatable: vggish (default), passt, passt-10s|20s|30s, clap, codec "
                          "(the model's own codec encoder; codec=EXPORT for another), module:pkg.mod:Class=WEIGHTS; "
                          "without =WEIGHTS the published file in $TORCH_HOME/hub/checkpoints")
    how.add_argument("--passt-weights", help="PaSST for KL (default: the published 20 s file in the torch hub cache)")
    how.add_argument("--clap-weights", help="CLAP checkpoint for the CLAP score (default: "
                                            "music_audioset_epoch_15_esc_90.14.pt in the torch hub cache)")
    how.add_argument("--silence", choices=("error", "keep", "skip"), default="error",
                     help="a silent generated clip: refuse (default), score it as it is, or leave it out")
    how.add_argument("--resample", action="store_true",
                     help="accept generated and reference audio of different rates / channel counts")
    how.add_argument("--reference-source", choices=("real", "reconstructed"), default="real",
                     help="what a reference folder holds (shards are real audio); recorded in reports")
    how.add_argument("--no-bootstrap", action="store_true", help="skip the confidence intervals")
    gen = p.add_argument_group("generation (--model)")
    gen.add_argument("--top-k", type=int, default=250)
    gen.add_argument("--top-p", type=float, default=0.0)
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance coefficient")
    gen.add_argument("--seed", type=int, default=0, help="seeds every clip (from its name) and the bootstraps")
    gen.add_argument("--max-duration", type=float,
                     help="seconds; each clip is as long as its reference, at most this (default: the model's window)")
    gen.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
