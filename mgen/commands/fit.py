"""`mgen fit RECIPE -o RUN`: train what a recipe describes (`task: codec` or `task: lm`)."""

from __future__ import annotations

import argparse
import json

from mgen.commands.flags import add_output
from mgen.paths import check_output_dir


def run(args: argparse.Namespace) -> int:
    from mgen.train.fit import fit  # Lightning is heavy: only when a run starts

    check_output_dir(args.out, "-o/--out")
    devices: int | str = int(args.devices) if args.devices.isdigit() else args.devices
    summary = fit(args.recipe, args.out, data=args.data, overrides=args.set, devices=devices,
                  num_nodes=args.num_nodes, accelerator=args.accelerator, wandb=args.wandb,
                  resume=not args.no_resume)
    print(json.dumps(summary))
    print(f"[mgen fit] run directory: {summary['run_dir']}; exported model: {summary['export']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fit", help="train from a recipe (resumes from the most advanced checkpoint of RUN)")
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/codec/tiny.yaml (every key: docs/recipes.md)")
    p.add_argument("--data", help="shards directory (overrides data.shards)")
    add_output(p, "run directory (checkpoints, logs, export); an existing one is resumed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set trainer.max_steps=50 (repeatable)")
    p.add_argument("--devices", default="auto")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--wandb", action="store_true", help="also log to W&B (WANDB_MODE=offline works without network)")
    p.add_argument("--no-resume", action="store_true", help="start from step 0 even if RUN has checkpoints")
    p.set_defaults(func=run)
