"""Encode audio shards once with a trained codec into token shards (``mgen prep tokenize``).

LM training then reads codes instead of running the codec every step (audiocraft's token cache, MusicGen paper
section 1.5). Output shards keep the audio shards' names and splits; each sample holds ``<key>.codes.npy``
(``[K, T]``, int16 when the cardinality fits, else int32), ``<key>.json`` (the audio sample's metadata plus
``frame_rate``, ``num_codebooks``, ``cardinality``, ``frames`` and the codec's identity) and, with ``--chroma``,
``<key>.chroma.npy`` (``[12, T]`` float16, one chroma frame per codec frame, see ``mgen.data.chroma``). The index
``shards.json`` has ``kind: "tokens"`` and the codec's description, so training can check it.

Resumable and idempotent like ``mgen prep shards``: every output shard is written to a temporary name and renamed
when complete, then a done marker records its hash and the hash of its inputs (the audio shard's sha256, the
codec's weights and config, the chroma flag). A re-run skips shards whose marker matches; a killed run leaves only
temporaries, which the next run deletes. Samples that cannot be encoded are skipped and listed in ``report.jsonl``.

Every input shard is checked against its audio index first (sha256, sample count). A shard whose bytes changed
since ``mgen prep shards`` wrote it (a bad disk, an interrupted copy) is not tokenized at all, since a damaged
member can still decode, as noise; each of its samples is reported lost by key (the keys come from the shard's done
marker, or, for older shard folders, from the tar headers that survive) and no done marker is written, so after
rebuilding it (``mgen prep shards ... --verify`` rewrites exactly the shards whose hash changed) a re-run
tokenizes just that shard. ``mgen prep tokenize`` finishes every other shard and writes the index and the report,
then exits with code 1 so that a pipeline does not train on a silently smaller dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf

if TYPE_CHECKING:  # torch is imported where it is used, so `mgen --help` and `mgen prep shards` stay fast
    import torch

from data_prep.atomic import remove_stale_tmp, write_atomic, write_bytes_atomic, write_json_atomic
from data_prep.shards import DONE_DIR, INDEX_NAME, REPORT_NAME, SPLITS, load_index, shard_keys
from mgen.checksum import file_sha256
from mgen.paths import check_output_dir

TOKEN_INDEX_VERSION = 1
KIND = "tokens"
CHROMA_DTYPE = np.float16


# ------------------------------------------------------------------------------------------------------ the codec

def state_sha256(module: torch.nn.Module) -> str:
    """Hash of a module's weights (names, shapes, dtypes, bytes): the codec's identity wherever its file lives."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def codec_identity(codec: Any, path: str | Path | None) -> dict[str, Any]:
    """What token shards record about the codec that made them."""
    return {"sha256": state_sha256(codec), "path": str(path) if path is not None else None,
            "config": codec.config.to_dict(), "sample_rate": int(codec.sample_rate), "channels": int(codec.channels),
            "frame_rate": float(codec.frame_rate), "hop_length": int(codec.hop_length),
            "num_codebooks": int(codec.num_codebooks), "cardinality": int(codec.cardinality)}


def _channels_word(channels: int) -> str:
    return {1: "mono", 2: "stereo"}.get(int(channels), f"{channels}-channel")


def check_codec_matches(codec: Any, audio_config: dict[str, Any], codec_name: str, shards_name: str) -> None:
    """Raise ValueError naming both sides when the codec cannot encode these shards as they are."""
    rate, channels = int(audio_config["sample_rate"]), int(audio_config["channels"])
    if rate != codec.sample_rate or channels != codec.channels:
        raise ValueError(
            f"codec {codec_name} expects {codec.sample_rate} Hz {_channels_word(codec.channels)} audio, but the "
            f"shards in {shards_name} are {rate} Hz {_channels_word(channels)}; re-shard with `mgen prep shards "
            f"--sample-rate {codec.sample_rate} --channels {codec.channels}` or use a codec trained for "
            f"{rate} Hz {_channels_word(channels)}")


# --------------------------------------------------------------------------------------------------- one shard

def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """A member with fixed owner, mode and mtime: the same content always gives the same shard bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _member_key(member: tarfile.TarInfo) -> tuple[str, str] | None:
    """(key, extension) of a sample member, None for anything else (folders, files without an extension)."""
    base = member.name.rsplit("/", 1)[-1]
    if not member.isreg() or "." not in base:
        return None
    key, ext = base.split(".", 1)
    return key, ext.lower()


def read_audio_samples(path: Path, problems: list[dict[str, Any]]):
    """Yield ``(key, {ext: bytes})`` from an audio shard in order; a corrupt tar ends the shard with a problem
    naming the sample being read (None when not even its header was readable)."""
    current: tuple[str, dict[str, bytes]] | None = None
    reading: str | None = None
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                named = _member_key(member)
                if named is None:
                    continue
                key, ext = named
                if current is not None and current[0] != key:
                    yield current
                    current = None
                reading = key
                data = tar.extractfile(member).read()
                reading = None
                if current is None:
                    current = (key, {})
                current[1][ext] = data
    except (tarfile.TarError, OSError, EOFError) as err:
        if reading is not None and current is not None and current[0] == reading:
            current = None  # a member of this sample is cut: the sample is lost, not half-encoded
        problems.append({"shard": path.name, "key": reading, "reason": f"tar: {type(err).__name__}: {err}"[:300]})
    if current is not None:
        yield current


def scan_member_keys(path: Path) -> list[str]:
    """Sample keys whose tar headers are still readable anywhere in a damaged shard, in order: every 512-byte block
    is tried as a header (a header carries a checksum, random bytes almost never pass it), data is skipped."""
    keys: list[str] = []
    with open(path, "rb") as f:
        size, offset = path.stat().st_size, 0
        while offset + tarfile.BLOCKSIZE <= size:
            f.seek(offset)
            try:
                member = tarfile.TarInfo.frombuf(f.read(tarfile.BLOCKSIZE), tarfile.ENCODING, "surrogateescape")
            except tarfile.HeaderError:
                offset += tarfile.BLOCKSIZE
                continue
            named = _member_key(member)
            if named is not None and named[0] not in keys[-1:]:
                keys.append(named[0])
            offset += tarfile.BLOCKSIZE + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return keys


def decode_sample(members: dict[str, bytes], rate: int, channels: int) -> tuple[dict[str, Any], np.ndarray]:
    """Metadata and ``[C, L]`` float32 audio of one audio-shard sample; ValueError says why it is unusable."""
    if "json" not in members or "flac" not in members:
        raise ValueError(f"incomplete sample: members {sorted(members)}")
    try:
        meta = json.loads(members["json"])
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"invalid json: {err}") from err
    if not isinstance(meta, dict):
        raise ValueError("json is not an object")
    try:
        audio, got_rate = sf.read(io.BytesIO(members["flac"]), dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile raises several types for corrupt data
        raise ValueError(f"cannot decode audio: {type(err).__name__}: {str(err)[:200]}") from err
    if audio.shape[0] == 0:
        raise ValueError("empty audio")
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or Inf")
    if got_rate != rate or audio.shape[1] != channels:
        raise ValueError(f"sample is {got_rate} Hz x {audio.shape[1]} ch, the index says {rate} Hz x {channels} ch")
    return meta, np.ascontiguousarray(audio.T)


class _Encoder:
    """Encodes pending samples in equal-length batches and writes their members to the open tar."""

    def __init__(self, codec: Any, identity: dict[str, Any], tar: tarfile.TarFile, shard: str, batch_size: int,
                 device: torch.device, chroma: bool) -> None:
        self.codec, self.tar, self.shard, self.batch_size = codec, tar, shard, batch_size
        self.device, self.chroma = device, chroma
        self.code_dtype = np.int16 if codec.cardinality <= np.iinfo(np.int16).max else np.int32
        self.codec_ref = {"sha256": identity["sha256"], "path": identity["path"]}
        self.pending: dict[int, list[tuple[str, dict[str, Any], np.ndarray]]] = defaultdict(list)
        self.samples = 0
        self.frames = 0
        self.seconds = 0.0

    def add(self, key: str, meta: dict[str, Any], audio: np.ndarray) -> None:
        group = self.pending[audio.shape[1]]
        group.append((key, meta, audio))
        if len(group) >= self.batch_size:
            self.flush(audio.shape[1])

    def flush(self, length: int | None = None) -> None:
        for size in ([length] if length is not None else sorted(self.pending)):
            group = self.pending.pop(size, [])
            for start in range(0, len(group), self.batch_size):
                self._encode(group[start:start + self.batch_size])

    def _encode(self, items: list[tuple[str, dict[str, Any], np.ndarray]]) -> None:
        import torch

        wav = torch.from_numpy(np.stack([a for _, _, a in items])).to(self.device)
        with torch.inference_mode():
            codes = self.codec.encode(wav).cpu().numpy()
        from mgen.data.chroma import chromagram

        for (key, meta, audio), sample_codes in zip(items, codes):
            frames = int(sample_codes.shape[-1])
            record = {**meta, "frame_rate": float(self.codec.frame_rate), "num_codebooks": int(sample_codes.shape[0]),
                      "cardinality": int(self.codec.cardinality), "frames": frames, "codec": self.codec_ref,
                      "audio_shard": self.shard, "chroma": self.chroma}
            _add(self.tar, f"{key}.codes.npy", _npy(sample_codes.astype(self.code_dtype)))
            if self.chroma:
                chroma = chromagram(audio, self.codec.sample_rate, self.codec.hop_length, num_frames=frames)
                _add(self.tar, f"{key}.chroma.npy", _npy(chroma.numpy().astype(CHROMA_DTYPE)))
            _add(self.tar, f"{key}.json",
                 json.dumps(record, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
            self.samples += 1
            self.frames += frames
            self.seconds += audio.shape[1] / self.codec.sample_rate


def tokenize_one(task: dict[str, Any], codec: Any, identity: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Write one token shard (temp name -> rename), then its done marker; returns the index entry."""
    src, out, name = Path(task["src"]), Path(task["out_dir"]), task["name"]
    final, marker = out / name, out / DONE_DIR / f"{name}.json"
    remove_stale_tmp(final)
    remove_stale_tmp(marker)
    if not src.is_file() or (task.get("sha256") and file_sha256(src) != task["sha256"]):
        final.unlink(missing_ok=True)  # a token shard from an older plan: not this input's tokens
        return _damaged_entry(task, src)
    problems: list[dict[str, Any]] = []
    counts: dict[str, Any] = {}
    seen: list[str] = []

    def writer(f) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar:
            enc = _Encoder(codec, identity, tar, name, task["batch_size"], device, task["chroma"])
            for key, members in read_audio_samples(src, problems):
                seen.append(key)
                try:
                    meta, audio = decode_sample(members, task["sample_rate"], task["channels"])
                except ValueError as err:
                    problems.append({"shard": name, "key": key, "reason": str(err)[:300]})
                    continue
                enc.add(key, meta, audio)
            enc.flush()
            counts.update(samples=enc.samples, frames=enc.frames, seconds=round(enc.seconds, 6))

    write_atomic(final, writer)
    problems += _missing_samples(task, seen, problems)
    entry = {"name": name, "split": task["split"], **counts, "plan_hash": task["digest"], "skipped": problems}
    if counts["samples"]:
        entry["bytes"], entry["sha256"] = final.stat().st_size, file_sha256(final)
    else:
        final.unlink(missing_ok=True)
        entry["bytes"], entry["sha256"] = 0, None
    write_json_atomic(marker, entry)
    return entry


def _damaged_entry(task: dict[str, Any], src: Path) -> dict[str, Any]:
    """The index entry of an audio shard whose bytes are not the ones its index hashed: nothing is tokenized (a
    damaged member can still decode, as noise) and every sample it held is reported lost, by key. No done marker
    is written, so the next run tries the shard again once it is rebuilt (`mgen prep shards ... --verify`)."""
    name, expected = task["name"], int(task.get("samples") or 0)
    damage = "its sha256 differs from shards.json" if src.is_file() else "the file is missing"
    reason = f"audio shard damaged ({damage}): not tokenized"
    keys = task.get("keys")
    if keys is None:  # an index from before done markers listed keys: the headers that survive name the samples
        keys = scan_member_keys(src) if src.is_file() else []
        reason += "; key read from the damaged shard's surviving tar headers"
    lost = [{"shard": name, "key": key, "reason": reason} for key in keys]
    lost += [{"shard": name, "key": None, "reason": "audio shard damaged: a sample whose tar header is lost "
              "(keys are listed in done markers written by newer `mgen prep shards`)"}] * max(0, expected - len(keys))
    return {"name": name, "split": task["split"], "samples": 0, "frames": 0, "seconds": 0.0, "bytes": 0,
            "sha256": None, "plan_hash": task["digest"], "skipped": lost, "damaged": True}


def _missing_samples(task: dict[str, Any], seen: list[str], problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Samples the audio index promises that the shard did not deliver (only a shard whose index has no sha256 or
    lies about its count gets here: a damaged one is caught by its hash)."""
    name, reason = task["name"], "missing from the audio shard (its index lists it)"
    accounted = set(seen) | {p["key"] for p in problems if p["key"] is not None}
    if task.get("keys") is not None:
        return [{"shard": name, "key": key, "reason": reason} for key in task["keys"] if key not in accounted]
    short = int(task.get("samples") or 0) - len(accounted) - sum(p["key"] is None for p in problems)
    return [{"shard": name, "key": None, "reason": reason + "; key unknown"}] * max(0, short)


def _finished(out: Path, name: str, digest: str, verify: bool) -> dict[str, Any] | None:
    """The done marker's entry when the shard is complete and was made from the same inputs, else None."""
    marker = out / DONE_DIR / f"{name}.json"
    try:
        entry = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if entry.get("plan_hash") != digest:
        return None
    if entry.get("samples", 0) == 0:
        return entry
    final = out / name
    if not final.is_file() or final.stat().st_size != entry.get("bytes"):
        return None
    if verify and file_sha256(final) != entry.get("sha256"):
        return None
    return entry


# ------------------------------------------------------------------------------------------------- entry point

def _load(codec_path: Any, device: torch.device) -> tuple[Any, str | None]:
    import torch

    from mgen.codec.checkpoint import load_codec

    if isinstance(codec_path, torch.nn.Module):  # an in-memory codec (tests, notebooks)
        return codec_path.to(device).eval(), None
    return load_codec(codec_path, device=device), str(Path(codec_path).resolve())


def tokenize_shards(audio_shards_dir: str | Path, out_dir: str | Path, codec_path: str | Path | Any,
                    batch_size: int = 16, device: str = "cpu", chroma: bool = False, progress: bool = True,
                    verify: bool = False) -> dict[str, Any]:
    """Encode every shard of ``audio_shards_dir`` into ``out_dir``; returns a summary (index: ``out/shards.json``).

    ``codec_path`` is an exported codec directory or a CodecModule ``.ckpt`` (or a ``Codec`` object). Raises
    ValueError when the codec's sample rate or channels differ from the shards', or ``out_dir`` is the input.
    Damaged input shards do not raise: the summary lists them (``damaged_shards``, ``lost_samples``).
    """
    start_time = time.perf_counter()
    src, out = Path(audio_shards_dir), check_output_dir(out_dir)
    audio_index = load_index(src)
    if audio_index.get("kind", "audio") != "audio":
        raise ValueError(f"{src} holds {audio_index['kind']} shards; tokenize needs audio shards")
    if out.resolve() == src.resolve():
        raise ValueError(f"the output folder must differ from the audio shards folder ({src}): names are kept")
    if (out / INDEX_NAME).is_file() and json.loads((out / INDEX_NAME).read_text()).get("kind") != KIND:
        raise ValueError(f"{out} already holds audio shards; choose another output folder")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from mgen.devices import parse_device

    torch_device = parse_device(device, "device")
    codec, codec_name = _load(codec_path, torch_device)
    check_codec_matches(codec, audio_index["config"], codec_name or "(in memory)", str(src))
    identity = codec_identity(codec, codec_name)
    codec_key = {k: identity[k] for k in ("sha256", "config")}
    (out / DONE_DIR).mkdir(parents=True, exist_ok=True)

    entries: dict[str, dict[str, Any]] = {}
    todo = []
    for shard in audio_index["shards"]:
        digest = hashlib.sha256(json.dumps(
            {"version": TOKEN_INDEX_VERSION, "audio": shard["sha256"], "name": shard["name"], "codec": codec_key,
             "chroma": bool(chroma)}, sort_keys=True).encode()).hexdigest()
        done = _finished(out, shard["name"], digest, verify)
        if done is not None:
            entries[shard["name"]] = done
            continue
        todo.append({"src": str(src / shard["name"]), "out_dir": str(out), "name": shard["name"],
                     "split": shard["split"], "sha256": shard.get("sha256"), "samples": shard.get("samples"),
                     "keys": shard_keys(src, shard), "digest": digest, "batch_size": int(batch_size),
                     "chroma": bool(chroma), "sample_rate": int(audio_index["config"]["sample_rate"]),
                     "channels": int(audio_index["config"]["channels"])})
    resumed = len(entries)
    _run(todo, codec, identity, torch_device, entries, progress)

    ordered = [entries[s["name"]] for s in audio_index["shards"]]
    index = _write_index(out, ordered, identity, audio_index, src, bool(chroma))
    totals = index["totals"]
    damaged = [e["name"] for e in ordered if e.get("damaged")]
    return {"out_dir": str(out), "shards": len(ordered), "shards_written": len(todo) - len(damaged),
            "shards_resumed": resumed, "samples": totals["samples"], "frames": totals["frames"],
            "seconds": totals["seconds"], "skipped_samples": totals["skipped_samples"], "damaged_shards": damaged,
            "lost_samples": sum(len(e["skipped"]) for e in ordered if e.get("damaged")), "index": str(out / INDEX_NAME),
            "report": str(out / REPORT_NAME), "codec": identity["sha256"][:12],
            "wall_seconds": time.perf_counter() - start_time}


def _run(todo: list[dict[str, Any]], codec: Any, identity: dict[str, Any], device: torch.device,
         entries: dict[str, dict[str, Any]], progress: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="shard", desc="tokenize", disable=not progress or not todo)
    minutes = 0.0
    try:
        for task in todo:
            entry = tokenize_one(task, codec, identity, device)
            entries[entry["name"]] = entry
            minutes += entry["seconds"] / 60.0
            bar.set_postfix(audio_min=f"{minutes:.1f}", skipped=sum(len(e["skipped"]) for e in entries.values()))
            bar.update()
    finally:
        bar.close()


def _write_index(out: Path, shards: list[dict[str, Any]], identity: dict[str, Any], audio_index: dict[str, Any],
                 src: Path, chroma: bool) -> dict[str, Any]:
    listed = [{k: e[k] for k in ("name", "split", "samples", "frames", "seconds", "bytes", "sha256")}
              for e in shards if e["samples"] > 0]
    splits = {}
    for split in SPLITS:
        chosen = [e for e in listed if e["split"] == split]
        splits[split] = {"shards": len(chosen), "samples": sum(e["samples"] for e in chosen),
                         "frames": sum(e["frames"] for e in chosen),
                         "seconds": round(sum(e["seconds"] for e in chosen), 6)}
    config = {"version": TOKEN_INDEX_VERSION, "frame_rate": identity["frame_rate"],
              "num_codebooks": identity["num_codebooks"], "cardinality": identity["cardinality"],
              "hop_length": identity["hop_length"], "sample_rate": identity["sample_rate"],
              "channels": identity["channels"], "chroma": chroma,
              "codes_dtype": "int16" if identity["cardinality"] <= np.iinfo(np.int16).max else "int32",
              "chroma_dtype": "float16" if chroma else None, "audio_config": audio_index.get("config", {})}
    report = [s for e in shards for s in e["skipped"]]
    index = {"version": TOKEN_INDEX_VERSION, "kind": KIND, "codec": identity, "config": config,
             "source": {"dir": str(src.resolve()), "plan_id": audio_index.get("plan_id")},
             "shards": listed, "splits": splits,
             "totals": {"shards": len(listed), "samples": sum(e["samples"] for e in listed),
                        "frames": sum(e["frames"] for e in listed),
                        "seconds": round(sum(e["seconds"] for e in listed), 6),
                        "bytes": sum(e["bytes"] for e in listed), "skipped_samples": len(report),
                        "damaged_shards": sum(bool(e.get("damaged")) for e in shards)}}
    lines = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in report)
    write_bytes_atomic(out / REPORT_NAME, lines.encode("utf-8"))
    write_json_atomic(out / INDEX_NAME, index)
    return index


# ------------------------------------------------------------------------------------------------------ the CLI

def register_tokenize(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tokenize`` to the ``mgen prep`` subcommands."""
    p = subparsers.add_parser(
        "tokenize", help="encode audio shards with a trained codec into token shards (codes .npy + json)",
        description="Writes token shards with the same names and splits as the audio shards, and a shards.json "
                    "with kind 'tokens'. Resumable: re-run the same command to finish an interrupted run.")
    p.add_argument("audio_shards", help="folder with audio shards and their shards.json")
    p.add_argument("--codec", required=True, help="exported codec folder or CodecModule .ckpt")
    p.add_argument("-o", "--out", required=True, help="output folder for the token shards")
    p.add_argument("--chroma", action="store_true", help="also store a 12-bin chromagram per codec frame")
    p.add_argument("--device", default="cpu", help="torch device for the codec, e.g. cuda")
    p.add_argument("--batch-size", type=int, default=16, help="samples of equal length encoded together")
    p.add_argument("--verify", action="store_true", help="re-hash finished shards before skipping them")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_tokenize)


def run_tokenize(args: argparse.Namespace) -> int:
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
