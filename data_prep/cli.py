"""`mgen prep ...`: data preparation commands (real-music corpus, WebDataset shards, token shards).

All of `mgen prep`'s argument parsing lives here. Registered by mgen/commands/prep.py through
``register(subparsers)``; every subcommand sets ``func(args) -> exit code``. The work modules (shards, tokenize,
synth_corpus: numpy, soundfile, torch) load inside the run functions, so `mgen prep ... --help` stays light.
"""

from __future__ import annotations

import argparse
import sys

from mgen.commands.flags import add_codec, add_output
from mgen.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    prep = subparsers.add_parser("prep", help="prepare datasets: real-music corpus, WebDataset shards, token shards")
    sub = prep.add_subparsers(dest="prep_command", metavar="PREP_COMMAND")
    prep.set_defaults(func=lambda args: (prep.print_help(), 2)[1])
    _add_shards(sub)
    _add_synth_corpus(sub)
    _add_tokenize(sub)


def _add_shards(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shards", help="write audio + captions into WebDataset tar shards with a shards.json index",
        description="Inputs: folders of audio with .json/.txt caption sidecars, CSV/JSONL manifests "
                    "(path, caption, ...), audiocraft data.jsonl manifests, or the MusicCaps CSV (ytid, start_s, "
                    "end_s, caption) with --audio-dir holding your downloads of its clips. Resumable: re-run the "
                    "same command to finish an interrupted run. Job array: --task-index/--num-tasks (default from "
                    "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT), then --merge.")
    p.add_argument("inputs", nargs="*", help="folders or manifests (.csv, .jsonl, .jsonl.gz)")
    add_output(p, "output folder for shards, shards.json and report.jsonl")
    p.add_argument("--audio-dir", default=None,
                   help="the clips of a MusicCaps CSV, named <ytid>.<ext> or [<ytid>]-[<start>-<end>].<ext>: the "
                        "10 s clips or whole recordings (cut at start_s); default: the CSV's folder")
    p.add_argument("--sample-rate", type=int, default=32000)
    p.add_argument("--channels", type=int, default=1, choices=(1, 2))
    p.add_argument("--segment-seconds", type=float, default=None, help="cut files into pieces of this length")
    p.add_argument("--min-segment-seconds", type=float, default=None,
                   help="drop shorter tails (default: half a segment; 0 without segmenting)")
    p.add_argument("--shard-max-mb", type=float, default=500.0, help="planned against 16-bit PCM size")
    p.add_argument("--shard-max-samples", type=int, default=10_000)
    p.add_argument("--valid-fraction", type=float, default=None,
                   help="fraction of source files in 'valid' (default 0.05; MusicCaps clips all go to 'valid' "
                        "unless this is given)")
    p.add_argument("--loudness-db", type=float, default=-20.0, help="RMS dBFS target per sample")
    p.add_argument("--no-loudness", action="store_true", help="keep input levels")
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    p.add_argument("--require-caption", action="store_true", help="fail if any input has no caption")
    p.add_argument("--task-index", type=int, default=None, help="job-array task (default $SLURM_ARRAY_TASK_ID)")
    p.add_argument("--num-tasks", type=int, default=None, help="job-array size (default $SLURM_ARRAY_TASK_COUNT)")
    p.add_argument("--merge", action="store_true", help="merge the tasks' partial indexes into shards.json")
    p.add_argument("--verify", action="store_true", help="re-hash finished shards before skipping them")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_shards)


def _add_synth_corpus(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth-corpus", help="render a captioned corpus of real music (music21 scores, MMA grooves) offline",
        description="Needs fluidsynth, a General MIDI soundfont and mma (bash data_prep/install_system_deps.sh). "
                    "Resumable: clips already written are skipped.")
    add_output(p, "output folder (audio/<id>.flac|json|mid, manifest.jsonl)", was_positional=True)
    p.add_argument("--minutes", type=float, default=2.0, help="target minutes of audio")
    p.add_argument("--clips", type=int, default=None, help="number of clips (overrides --minutes)")
    p.add_argument("--clip-seconds", type=float, default=10.0)
    p.add_argument("--sample-rate", type=int, default=32000)
    p.add_argument("--stereo", action="store_true", help="keep FluidSynth's stereo output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mma-fraction", type=float, default=0.25, help="share of clips from MMA grooves")
    p.add_argument("--soundfont", default=None, help="a .sf2 file (default: $MGEN_SOUNDFONT or FluidR3_GM)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_synth_corpus)


def _add_tokenize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenize", help="encode audio shards with a trained codec into token shards (codes .npy + json)",
        description="Writes token shards with the same names and splits as the audio shards, and a shards.json "
                    "with kind 'tokens'. Resumable: re-run the same command to finish an interrupted run.")
    p.add_argument("audio_shards", help="folder with audio shards and their shards.json")
    add_codec(p, "exported codec folder or CodecModule .ckpt")
    add_output(p, "output folder for the token shards")
    p.add_argument("--chroma", action="store_true", help="also store a 12-bin chromagram per codec frame")
    p.add_argument("--device", default="cpu", help="torch device for the codec, e.g. cuda")
    p.add_argument("--batch-size", type=int, default=16, help="samples of equal length encoded together")
    p.add_argument("--verify", action="store_true", help="re-hash finished shards before skipping them")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_tokenize)


def run_shards(args: argparse.Namespace) -> int:
    from data_prep.shards import ShardConfig, merge_indexes, write_shards

    if args.merge:
        index = merge_indexes(args.out)
        totals = index["totals"]
        print(f"merged {totals['shards']} shards, {totals['samples']} samples, {totals['seconds'] / 3600:.2f} h "
              f"into {args.out}/shards.json (problems: {args.out}/report.jsonl)")
        return 0
    if not args.inputs:
        raise UsageError("give at least one input folder or manifest (or --merge)")
    config = ShardConfig(
        sample_rate=args.sample_rate, channels=args.channels, segment_seconds=args.segment_seconds,
        min_segment_seconds=args.min_segment_seconds, shard_max_mb=args.shard_max_mb,
        shard_max_samples=args.shard_max_samples, valid_fraction=args.valid_fraction,
        loudness_db=None if args.no_loudness else args.loudness_db)
    summary = write_shards(
        args.inputs, args.out, config, workers=args.workers, require_caption=args.require_caption,
        task_index=args.task_index, num_tasks=args.num_tasks, verify=args.verify, progress=not args.no_progress,
        audio_dir=args.audio_dir)
    print(f"task {summary['task_index']}/{summary['num_tasks']}: {summary['shards_written']} shards written, "
          f"{summary['shards_resumed']} already done, {summary['samples']} samples, "
          f"{summary['seconds'] / 60:.1f} min of audio in {summary['wall_seconds']:.1f} s")
    if summary["problems"] or summary["skipped_samples"]:
        where = (f"{args.out}/report.jsonl" if summary["num_tasks"] == 1
                 else "the partial index (report.jsonl after --merge)")
        print(f"skipped {summary['problems']} inputs and {summary['skipped_samples']} samples: see {where}")
    if summary["missing_audio"]:
        print(f"{summary['missing_audio']} MusicCaps clips have no audio file in {args.audio_dir or 'the CSV folder'}"
              " (listed in report.jsonl)", file=sys.stderr)
    if summary["missing_captions"]:
        print(f"warning: {summary['missing_captions']} inputs have no caption", file=sys.stderr)
    if summary["num_tasks"] == 1:
        print(f"shards and index: {summary['index']}")
    else:
        print(f"partial index: {summary['partial_index']}; when all tasks are done run: "
              f"mgen prep shards --merge --out {args.out}")
    return 0


def run_synth_corpus(args: argparse.Namespace) -> int:
    from data_prep.render import RenderUnavailable
    from data_prep.synth_corpus import build_synth_corpus

    try:
        summary = build_synth_corpus(
            args.out, minutes=args.minutes, n_clips=args.clips, clip_seconds=args.clip_seconds,
            sample_rate=args.sample_rate, seed=args.seed, workers=args.workers, channels=2 if args.stereo else 1,
            mma_fraction=args.mma_fraction, soundfont=args.soundfont, progress=not args.no_progress)
    except RenderUnavailable as err:
        print(f"mgen prep synth-corpus: error: {err}", file=sys.stderr)
        return 2
    print(f"{summary['built']} clips built, {summary['skipped']} already there, {summary['failed']} failed; "
          f"{summary['minutes']:.1f} min of audio in {summary['wall_seconds']:.1f} s")
    for failure in summary["failures"][:5]:
        print(f"  failed {failure['id']}: {failure['reasons'][-1] if failure['reasons'] else '?'}", file=sys.stderr)
    print(f"corpus: {args.out}/audio, manifest: {args.out}/manifest.jsonl")
    return 0 if summary["failed"] == 0 else 1


def run_tokenize(args: argparse.Namespace) -> int:
    from data_prep.tokenize import tokenize_shards

    summary = tokenize_shards(args.audio_shards, args.out, args.codec, batch_size=args.batch_size,
                              device=args.device, chroma=args.chroma, progress=not args.no_progress,
                              verify=args.verify)
    print(f"{summary['shards_written']} token shards written, {summary['shards_resumed']} already done: "
          f"{summary['samples']} samples, {summary['seconds'] / 60:.1f} min of audio in "
          f"{summary['wall_seconds']:.1f} s (codec {summary['codec']})")
    if summary["skipped_samples"]:
        print(f"skipped {summary['skipped_samples']} samples: see {summary['report']}")
    print(f"token shards and index: {summary['index']}")
    if summary["damaged_shards"]:
        names = ", ".join(summary["damaged_shards"][:5]) + (" ..." if len(summary["damaged_shards"]) > 5 else "")
        print(f"mgen prep tokenize: error: {len(summary['damaged_shards'])} audio shard(s) are damaged or missing "
              f"(their sha256 differs from {args.audio_shards}/shards.json): {names}; their "
              f"{summary['lost_samples']} samples were not tokenized and are listed by key in {summary['report']}. "
              f"Rebuild them with the same `mgen prep shards ... --verify` command, then re-run this one (finished "
              f"shards are kept)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m data_prep.cli prep ...`` is the same as ``mgen prep ...``."""
    from mgen.cli import main as mgen_main  # here, not at the top: mgen.cli imports this module

    return mgen_main(argv)


if __name__ == "__main__":
    sys.exit(main())
