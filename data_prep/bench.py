"""Shard-writing throughput on the real-music corpus, in audio-minutes written per wall-clock second."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from data_prep.shards import ShardConfig, write_shards
from data_prep.synth_corpus import build_synth_corpus


def run_shard_bench(minutes: float = 5.0, clip_seconds: float = 10.0, workers: int | None = None,
                    sample_rate: int = 32000, source_rate: int = 44100, segment_seconds: float | None = None,
                    corpus_dir: str | Path | None = None, shard_max_samples: int = 16,
                    keep: bool = False) -> dict[str, Any]:
    """Build (or reuse) a corpus at ``source_rate``, then time ``write_shards`` into a fresh folder.

    The corpus is rendered at 44.1 kHz by default so the measured path includes resampling to ``sample_rate``,
    as with real datasets. Corpus building is not part of the timing. ``corpus_dir`` reuses a corpus across runs.
    """
    workers = int(workers or os.cpu_count() or 1)
    scratch = Path(tempfile.mkdtemp(prefix="mgen-shard-bench-"))
    try:
        corpus = Path(corpus_dir) if corpus_dir else scratch / "corpus"
        corpus_summary = build_synth_corpus(corpus, minutes=minutes, clip_seconds=clip_seconds,
                                            sample_rate=source_rate, workers=workers, progress=False)
        out = scratch / "shards"
        start = time.perf_counter()
        config = ShardConfig(sample_rate=sample_rate, segment_seconds=segment_seconds, shard_max_mb=64.0,
                             shard_max_samples=shard_max_samples)
        summary = write_shards(corpus, out, config, workers=workers, progress=False)
        wall = time.perf_counter() - start
        audio_minutes = summary["seconds"] / 60.0
        return {
            "audio_minutes": audio_minutes, "wall_seconds": wall,
            "audio_minutes_per_second": audio_minutes / wall if wall > 0 else float("inf"),
            "realtime_factor": summary["seconds"] / wall if wall > 0 else float("inf"),
            "samples": summary["samples"], "shards": summary["shards_planned"], "workers": workers,
            "source_rate": source_rate, "sample_rate": sample_rate,
            "corpus_build_seconds": corpus_summary["wall_seconds"],
            "out_dir": str(out) if keep else None,
        }
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
