"""Where evaluation audio comes from: a folder of audio files, or one split of audio shards.

Both give `Clip`s: a name that pairs clips across sets (file stem, shard key), a caption, the audio's rate, channels
and length, and a `load` that decodes it on demand (an evaluation of 5000 ten-second clips never holds them all).
Shards are read with the standard library's `tarfile` (no webdataset): each shard's members are listed once and
read by offset. Token shards are refused: evaluation compares against real audio, which they do not hold.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from mgen.atomic import TMP_MARK
from mgen.audio import read_audio
from mgen.data.captions import description_of
from mgen.data.shard_index import KIND_AUDIO, index_kind, is_shard_folder, load_index

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
CAPTIONS_NAME = "captions.jsonl"


@dataclass(frozen=True)
class Clip:
    """One clip of an evaluation set; `load` decodes it as float32 ``[C, L]``."""

    name: str
    where: str            # file path, or "shard.tar:key", for messages
    sample_rate: int
    channels: int
    frames: int
    caption: str = ""
    source: Any = field(default=None, compare=False, repr=False)  # what `load` reads from

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    def load(self, max_frames: int | None = None) -> Tensor:
        """The audio ``[C, L]`` (float32), cut to `max_frames` when given; NaN and empty audio are errors."""
        data = self.source() if callable(self.source) else self.source
        audio, _ = read_audio(data, where=self.where, frames=-1 if max_frames is None else max_frames)
        return torch.from_numpy(np.ascontiguousarray(audio.T))


def _probe(data: Any, where: str) -> sf._SoundFileInfo:
    try:
        info = sf.info(data)
    except Exception as err:
        raise ValueError(f"{where}: cannot be read as audio ({type(err).__name__}: {str(err)[:200]})") from err
    if info.frames <= 0:
        raise ValueError(f"{where}: the audio is empty")
    return info


# ------------------------------------------------------------------------------------------------------- folders
def read_captions(folder: Path) -> dict[str, str] | None:
    """``captions.jsonl`` of a folder (lines ``{"stem": ..., "text": ...}``) as stem -> text; None when absent."""
    path = folder / CAPTIONS_NAME
    if not path.is_file():
        return None
    captions: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err})") from err
        if not isinstance(row, dict) or not isinstance(row.get("stem"), str) or not isinstance(row.get("text"), str):
            raise ValueError(f"{path}:{number}: expected {{\"stem\": ..., \"text\": ...}}, got {line[:100]}")
        captions[row["stem"]] = row["text"]
    return captions


def folder_clips(folder: str | Path, what: str = "audio folder") -> list[Clip]:
    """The audio files directly in `folder` (sorted by name; hidden and temporary files ignored), with captions
    from its ``captions.jsonl`` when it has one. Two files with one stem, an unreadable file, or no audio at all
    are errors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                   and not p.name.startswith(".") and TMP_MARK not in p.name)
    if not files:
        raise ValueError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in the {what}")
    captions = read_captions(folder) or {}
    clips, seen = [], {}
    for path in files:
        if path.stem in seen:
            raise ValueError(f"{folder}: two files with the stem {path.stem!r} ({seen[path.stem]} and {path.name}); "
                             "clips are paired by stem")
        seen[path.stem] = path.name
        info = _probe(str(path), str(path))
        clips.append(Clip(path.stem, str(path), int(info.samplerate), int(info.channels), int(info.frames),
                          captions.get(path.stem, ""), str(path)))
    return clips


# -------------------------------------------------------------------------------------------------------- shards
class ShardReader:
    """Reads members of a split's tar shards by offset: each shard is listed once, then kept open."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[Any, dict[str, tarfile.TarInfo]]] = {}

    def members(self, shard: str) -> dict[str, tarfile.TarInfo]:
        if shard not in self._open:
            try:
                tar = tarfile.open(shard)
                members = {m.name: m for m in tar.getmembers() if m.isfile()}
            except (OSError, tarfile.TarError) as err:
                raise ValueError(f"{shard}: cannot read the shard ({err})") from err
            self._open[shard] = (tar, members)
        return self._open[shard][1]

    def read(self, shard: str, name: str) -> bytes:
        members = self.members(shard)
        tar = self._open[shard][0]
        return tar.extractfile(members[name]).read()

    def close(self) -> None:
        for tar, _ in self._open.values():
            tar.close()
        self._open.clear()


def _shard_samples(folder: Path, split: str, reader: ShardReader) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(shard path, key, meta) of every sample of `split`, in index order, members in tar order."""
    index = load_index(folder)
    kind = index_kind(index)
    if kind != KIND_AUDIO:
        raise ValueError(f"{folder} holds {kind} shards, not audio: evaluation compares against real audio; pass the "
                         "audio shards (the ones `mgen prep tokenize` read)")
    entries = [e for e in index["shards"] if e.get("split") == split and int(e.get("samples", 1)) > 0]
    if not entries:
        splits = sorted({str(e.get("split")) for e in index["shards"]})
        raise ValueError(f"{folder}: no {split!r} shards (splits: {', '.join(splits) or 'none'})")
    for entry in entries:
        shard = str(folder / entry["name"])
        members = reader.members(shard)
        for name in members:
            if not name.endswith(".flac"):
                continue
            key = name[: -len(".flac")]
            meta_name = f"{key}.json"
            meta = json.loads(reader.read(shard, meta_name)) if meta_name in members else {}
            yield shard, key, meta if isinstance(meta, dict) else {}


def shard_clips(folder: str | Path, split: str = "valid", limit: int | None = None,
                reader: ShardReader | None = None) -> list[Clip]:
    """The first `limit` samples (all when None) of one split of audio shards, in index order, with their
    captions (description). Rate and length come from the sample's json when it records them (shards from
    `mgen prep shards` do), else from the FLAC header."""
    folder = Path(folder)
    reader = reader or ShardReader()
    clips: list[Clip] = []
    for shard, key, meta in _shard_samples(folder, split, reader):
        if limit is not None and len(clips) >= limit:
            break
        where = f"{shard}:{key}"

        def source(shard: str = shard, key: str = key) -> io.BytesIO:
            return io.BytesIO(reader.read(shard, f"{key}.flac"))

        if all(isinstance(meta.get(k), (int, float)) for k in ("sample_rate", "channels", "duration")):
            rate, channels = int(meta["sample_rate"]), int(meta["channels"])
            frames = int(round(float(meta["duration"]) * rate))
        else:
            info = _probe(source(), where)
            rate, channels, frames = int(info.samplerate), int(info.channels), int(info.frames)
        if frames <= 0:
            raise ValueError(f"{where}: the audio is empty")
        clips.append(Clip(key, where, rate, channels, frames, description_of(meta), source))
    return clips


def reference_clips(path: str | Path, split: str = "valid", limit: int | None = None) -> tuple[list[Clip], str]:
    """Clips of a reference: a shard folder's split or an audio folder; and a description for reports."""
    path = Path(path)
    if is_shard_folder(path):
        clips = shard_clips(path, split, limit)
        return clips, f"shards {path} (split {split})"
    clips = folder_clips(path, "reference folder")
    return (clips[:limit] if limit is not None else clips), f"folder {path}"


def describe_formats(clips: list[Clip]) -> str:
    rates = sorted({c.sample_rate for c in clips})
    channels = sorted({c.channels for c in clips})
    return f"{'/'.join(map(str, rates))} Hz, {'/'.join(map(str, channels))} channel(s)"
