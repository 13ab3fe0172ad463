"""Shared fixtures and helpers for the data_prep tests (import them explicitly from the test modules).

The real-music corpus is built once per session (6 clips x 5 s) and reused read-only by every test that shards it.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

CORPUS_CLIPS = 6
CORPUS_CLIP_SECONDS = 5.0
CORPUS_SEED = 0

_cache: dict[str, Any] = {}


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build the small corpus once (cached across modules); returns {'dir': Path, 'summary': dict}."""
    if "corpus" not in _cache:
        from data_prep.synth_corpus import build_synth_corpus

        out = tmp_path_factory.mktemp("synth_corpus")
        summary = build_synth_corpus(out, n_clips=CORPUS_CLIPS, clip_seconds=CORPUS_CLIP_SECONDS, seed=CORPUS_SEED,
                                     workers=2, progress=False)
        _cache["corpus"] = {"dir": out, "summary": summary}
    return _cache["corpus"]


def copy_corpus_audio(corpus_dir: Path, dest: Path) -> Path:
    """A writable copy of the corpus' audio folder (flac + json sidecars + mid)."""
    shutil.copytree(corpus_dir / "audio", dest)
    return dest


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    """A harmonic tone with a little vibrato: non-silent, known pitch, cheap to make."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * freq * t + 0.3 * np.sin(2 * np.pi * 5 * t)
    mono = amp * (np.sin(phase) + 0.3 * np.sin(2 * phase) + 0.1 * np.sin(3 * phase)) / 1.4
    return np.repeat(mono[:, None], channels, axis=1).astype(np.float32)


def write_tone(path: Path, seconds: float, rate: int = 44100, channels: int = 2, caption: str | None = "a test tone",
               freq: float = 440.0, subtype: str | None = None) -> Path:
    """Write a tone file and (optionally) a .txt caption sidecar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, rate, channels, freq), rate, subtype=subtype)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


def read_shard(path: Path) -> list[dict[str, Any]]:
    """Samples of a tar shard, in order, with FLAC decoded: [{'key', 'audio', 'rate', 'meta'}]."""
    samples: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            data = tar.extractfile(member).read()
            if key not in samples:
                samples[key] = {"key": key}
                order.append(key)
            if ext == "flac":
                audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
                samples[key].update(audio=audio, rate=rate)
            elif ext == "json":
                samples[key]["meta"] = json.loads(data)
    return [samples[k] for k in order]


def index_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "shards.json").read_text())


def report_of(out: Path) -> list[dict[str, Any]]:
    text = (out / "report.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
