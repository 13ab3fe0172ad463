"""How fast the training input pipeline reads audio shards (``mgen bench read``).

Measures an :class:`~mgen.data.AudioDataModule` in resampled mode (workers start once, as in training) with 0, 1,
2, ... DataLoader workers: samples/s and audio-seconds/s after the first batch (steady state), plus the time to the
first batch (worker start-up and shuffle-buffer fill). Decoding, cropping, resampling and batching are all
included; no model runs, so this is the ceiling the data pipeline puts on training speed. Without a shard folder
it renders a small real-music corpus and shards it first.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from data_prep.shards import ShardConfig, write_shards
from data_prep.synth_corpus import build_synth_corpus
from mgen.data.shard_index import load_index


def build_bench_shards(out_dir: str | Path, n_clips: int = 12, clip_seconds: float = 10.0,
                       sample_rate: int = 32000) -> Path:
    """Render ``n_clips`` real-music clips and shard them whole (4 per shard, no valid split) into ``out/shards``."""
    out = Path(out_dir)
    build_synth_corpus(out / "corpus", n_clips=n_clips, clip_seconds=clip_seconds, sample_rate=sample_rate,
                       workers=min(2, os.cpu_count() or 1), progress=False)
    write_shards(out / "corpus" / "audio", out / "shards",
                 ShardConfig(sample_rate=sample_rate, channels=1, shard_max_samples=4, valid_fraction=0.0), workers=1,
                 progress=False)
    return out / "shards"


def measure(shards_dir: Path, workers: int, segment_seconds: float, batch_size: int, samples: int,
            sample_rate: int | None, channels: int | None) -> dict[str, Any]:
    from mgen.data.datamodule import AudioDataModule

    dm = AudioDataModule(shards_dir, segment_seconds, sample_rate, channels, global_batch_size=batch_size,
                         num_workers=workers, resampled=True, epoch_length=samples, shuffle_buffer=16,
                         rank=0, world_size=1, verbose=False)
    dm.setup("fit")
    start = time.perf_counter()
    first = None
    count = after_first = 0
    for batch in dm.train_dataloader():
        n = int(batch["audio"].shape[0])
        count += n
        if first is None:
            first = time.perf_counter()
        else:
            after_first += n
    end = time.perf_counter()
    steady = max(end - (first or end), 1e-9)
    seconds_per_sample = dm.segment_samples / dm.sample_rate
    return {"workers": workers, "samples": count, "wall_s": round(end - start, 3),
            "first_batch_s": round((first or end) - start, 3),
            "samples_per_s": round(after_first / steady, 1),
            "audio_seconds_per_s": round(after_first * seconds_per_sample / steady, 1)}


def run_read_bench(shards_dir: str | Path | None = None, workers: tuple[int, ...] = (0, 1, 2),
                   segment_seconds: float = 10.0, batch_size: int = 8, samples: int = 400,
                   sample_rate: int | None = None, channels: int | None = None, smoke: bool = False) -> dict[str, Any]:
    """Read throughput of the AudioDataModule per worker count; builds a small corpus when ``shards_dir`` is None.

    ``samples`` per setting (rounded up to whole batches); ``sample_rate``/``channels`` default to the shards',
    so no resampling is measured unless asked for.
    """
    if smoke:
        samples, segment_seconds = min(samples, 64), min(segment_seconds, 2.0)
    with tempfile.TemporaryDirectory(prefix="mgen-read-bench-") as tmp:
        built = shards_dir is None
        if built:
            shards_dir = build_bench_shards(tmp, n_clips=4 if smoke else 12, clip_seconds=3.0 if smoke else 10.0)
        shards_dir = Path(shards_dir)
        index = load_index(shards_dir)
        results = [measure(shards_dir, w, segment_seconds, batch_size, samples, sample_rate, channels)
                   for w in workers]
    return {"bench": "read", "shards_dir": None if built else str(shards_dir),
            "shards": index["totals"]["shards"], "samples_in_shards": index["totals"]["samples"],
            "segment_seconds": segment_seconds, "sample_rate": sample_rate or index["config"]["sample_rate"],
            "channels": channels or index["config"]["channels"], "batch_size": batch_size,
            "samples_per_setting": samples, "cpu_count": os.cpu_count(), "results": results}
