"""Read what a W&B run logged, from its offline run files, so tests can check values instead of trusting calls.

W&B has no API to read an offline run back, and the installed wandb (0.31) no longer ships its Python reader
of the transaction log. The format is small and documented: `run-<id>.wandb` is a LevelDB-style log (a 7-byte
header ":W&B" + magic 0xBEE1 + version 0, then 32 KiB blocks of records `crc32 | length | type | data`, a
record split over blocks as FIRST/MIDDLE/LAST), each record a `wandb_internal_pb2.Record` protobuf — decoded
here with the protobuf classes that ship in the wandb package. Media and tables are files under `files/`,
referred to from the history rows.

    run = WandbRun.load(RUN / "logs")          # the single offline-run-* below it
    run.config["recipe"]                       # the run config, JSON values decoded
    run.series("train/ce")                     # [(trainer/global_step, value), ...]
    run.rows_with("val/samples")               # history rows holding that key
    run.audio("val/samples")                   # [(step, [(file, caption), ...]), ...]
    run.table("val/eval")                      # [(step, columns, rows), ...]
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

HEADER = struct.Struct("<4sHB")  # ident, magic, version
RECORD_HEADER = struct.Struct("<IHB")  # crc32 (of type byte + data), data length, record type
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
STEP_KEY = "trainer/global_step"  # Lightning's WandbLogger logs every row against it


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """All records of a `.wandb` file, in order; checksums verified (a mismatch raises ValueError)."""
    data = Path(path).read_bytes()
    if len(data) < HEADER.size or HEADER.unpack_from(data) != (IDENT, MAGIC, VERSION):
        raise ValueError(f"{path} is not a W&B transaction log (header {data[:HEADER.size]!r})")
    records: list[wandb_internal_pb2.Record] = []
    pending: bytes | None = None
    pos = HEADER.size
    while pos < len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD_HEADER.size:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        if pos + RECORD_HEADER.size > len(data):
            raise ValueError(f"{path}: truncated record header at byte {pos}")
        crc, length, kind = RECORD_HEADER.unpack_from(data, pos)
        pos += RECORD_HEADER.size
        chunk = data[pos:pos + length]
        pos += length
        if (crc, length, kind) == (0, 0, 0) and not any(data[pos:]):  # zero-filled tail: never written
            break
        if len(chunk) != length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: corrupt record (type {kind}) ending at byte {pos}")
        if kind == FULL:
            payload: bytes | None = chunk
        elif kind == FIRST:
            pending, payload = chunk, None
        elif kind in (MIDDLE, LAST) and pending is not None:
            pending += chunk
            payload, pending = (pending, None) if kind == LAST else (None, pending)
        else:
            raise ValueError(f"{path}: unexpected record type {kind} at byte {pos}")
        if payload is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            records.append(record)
    return records


def _put(target: dict[str, Any], item: Any) -> None:
    """One history/config/summary item (`key` or a `nested_key` path, JSON value) into a nested dict."""
    path = list(item.nested_key) or [item.key]
    for name in path[:-1]:
        target = target.setdefault(name, {})
    target[path[-1]] = json.loads(item.value_json)


@dataclass
class WandbRun:
    """One offline run: its folder (`offline-run-*`) and its decoded records."""

    folder: Path
    records: list[wandb_internal_pb2.Record]

    @classmethod
    def load(cls, logs_dir: Path) -> WandbRun:
        """The single offline run under `logs_dir` (e.g. `RUN/logs`, where mgen puts `wandb/`)."""
        folders = sorted(Path(logs_dir).glob("wandb/offline-run-*"))
        if len(folders) != 1:
            raise ValueError(f"expected one offline W&B run under {logs_dir}/wandb, found {len(folders)}")
        files = sorted(folders[0].glob("run-*.wandb"))
        if len(files) != 1:
            raise ValueError(f"expected one run-*.wandb in {folders[0]}, found {[f.name for f in files]}")
        run = cls(folders[0], read_records(files[0]))
        if not run.of_type("exit"):
            raise ValueError(f"{files[0]} has no exit record: the run is not finished (or W&B has not written it "
                             "yet: wandb.finish() returns before its service flushes, wandb.teardown() waits)")
        return run

    def of_type(self, name: str) -> list[Any]:
        """The payloads of one record type ('history', 'config', 'run', 'environment', 'files', ...)."""
        return [getattr(r, name) for r in self.records if r.WhichOneof("record_type") == name]

    @property
    def config(self) -> dict[str, Any]:
        """The run config: what `wandb.init(config=...)` set, updated by later config records (W&B's own
        `_wandb` bookkeeping left out)."""
        config: dict[str, Any] = {}
        for run in self.of_type("run"):
            for item in run.config.update:
                _put(config, item)
        for record in self.of_type("config"):
            for item in record.update:
                _put(config, item)
        config.pop("_wandb", None)
        return config

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every logged row as a nested dict (`row["val/samples"]["captions"]`), in logging order."""
        rows = []
        for record in self.of_type("history"):
            row: dict[str, Any] = {}
            for item in record.item:
                _put(row, item)
            rows.append(row)
        return rows

    def rows_with(self, key: str) -> list[dict[str, Any]]:
        return [row for row in self.history if key in row]

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of a scalar metric, against `trainer/global_step`."""
        return [(int(row[STEP_KEY]), float(row[key])) for row in self.rows_with(key)]

    def media_file(self, relative: str, sha256: str | None = None) -> Path:
        """A file a history row refers to (`media/...`), which must exist under the run's `files/` (with the
        sha256 the row records, when it records one)."""
        path = self.folder / "files" / relative
        if not path.is_file():
            raise FileNotFoundError(f"{relative} is referred to by the history but missing from {self.folder}")
        if sha256 is not None and hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
            raise ValueError(f"{path} does not have the sha256 its history row records")
        return path

    def audio(self, key: str) -> list[tuple[int, list[tuple[Path, str]]]]:
        """(step, [(WAV file, caption), ...]) of every `wandb.Audio` list logged under `key`."""
        out = []
        for row in self.rows_with(key):
            entry = row[key]
            if entry.get("_type") != "audio":
                raise ValueError(f"{key} at step {row[STEP_KEY]} is {entry.get('_type')!r}, not audio")
            clips = [(self.media_file(a["path"], a.get("sha256")), a.get("caption", "")) for a in entry["audio"]]
            out.append((int(row[STEP_KEY]), clips))
        return out

    def images(self, key: str) -> list[tuple[int, list[tuple[Path, str]]]]:
        """(step, [(image file, caption), ...]) of every `wandb.Image` list logged under `key`."""
        out = []
        for row in self.rows_with(key):
            entry = row[key]
            if entry.get("_type") != "images/separated":
                raise ValueError(f"{key} at step {row[STEP_KEY]} is {entry.get('_type')!r}, not a list of images")
            captions = entry.get("captions") or [""] * len(entry["filenames"])
            out.append((int(row[STEP_KEY]), [(self.media_file(f), c) for f, c in zip(entry["filenames"], captions)]))
        return out

    def table(self, key: str) -> list[tuple[int, list[str], list[list[Any]]]]:
        """(step, columns, rows) of every `wandb.Table` logged under `key`, read from its `.table.json`."""
        out = []
        for row in self.rows_with(key):
            entry = row[key]
            if entry.get("_type") != "table-file":
                raise ValueError(f"{key} at step {row[STEP_KEY]} is {entry.get('_type')!r}, not a table")
            table = json.loads(self.media_file(entry["path"], entry.get("sha256")).read_text())
            out.append((int(row[STEP_KEY]), table["columns"], table["data"]))
        return out
