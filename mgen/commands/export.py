"""`mgen export`: a trained LM (run directory, `.ckpt` or export) as an mgen export or a transformers model.

    mgen export RUN -o OUT                                RUN/checkpoints/last.ckpt -> OUT (what `mgen fit` writes)
    mgen export RUN/checkpoints/step=5000.ckpt -o OUT     a periodic checkpoint
    mgen export RUN/export -o OUT --format transformers   MusicgenForConditionalGeneration.from_pretrained(OUT)

Bad input is a UsageError / ValueError / FileNotFoundError naming the file (exit code 2). OUT is written to a temporary
sibling and renamed when complete, so a failed run leaves nothing at OUT; an existing OUT is only replaced when it
is an export itself (it has a config.json), never an unrelated folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mgen.commands.flags import add_codec, add_output
from mgen.errors import UsageError

FORMATS = ("mgen", "transformers")


def _check_target(source: Path, out: Path) -> None:
    """Refuse an OUT whose replacement would destroy something that is not an export (the run itself, a home)."""
    if out.is_file():
        raise UsageError(f"{out}: exists and is a file; OUT must be a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise UsageError(f"{out}: exists and is not an export (no config.json); choose a new directory")
    src, dst = source.resolve(), out.resolve()
    if src != dst and dst in src.parents:
        raise UsageError(f"{out}: contains the input {source}; choose a directory outside it")


def run(args: argparse.Namespace) -> int:
    from mgen.train.lm_export import load_trained_lm, write_lm_export

    source, out = Path(args.source), Path(args.out)
    _check_target(source, out)
    model, config = load_trained_lm(source, args.ckpt_name, args.codec)
    if args.format == "transformers":
        from mgen.interop.transformers_musicgen import save_transformers

        save_transformers(model, out)
    else:
        write_lm_export(out, config, model.lm, model.conditioner, model.codec)
    print(f"[mgen export] wrote {out} ({args.format} format, {model.lm.num_parameters() / 1e6:.1f}M LM parameters, "
          f"{model.codec.n_q} x {model.codec.card} codes)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a trained LM (run, .ckpt or export) for mgen or transformers")
    p.add_argument("source", metavar="RUN_OR_CKPT",
                   help="an LM run directory, an LMModule .ckpt, or an mgen export directory")
    add_output(p, "output directory (written atomically)", was_positional=True)
    p.add_argument("--format", choices=FORMATS, default="mgen",
                   help="mgen: the export MusicGen.load reads; transformers: MusicgenForConditionalGeneration")
    p.add_argument("--ckpt-name", default="last.ckpt", help="checkpoint of a run directory to export")
    add_codec(p, "codec export or CodecModule .ckpt, replacing the one the checkpoint records", required=False)
    p.set_defaults(func=run)
