"""Encode audio shards once with a trained codec into token shards (``mgen prep tokenize``).

LM training then reads codes instead of running the codec every step (audiocraft's token cache, MusicGen paper
section 1.5). Output shards keep the audio shards' names and splits; each sample holds ``<key>.codes.npy``
(``[K, T]``, int16 when the codebook size fits, else int32), ``<key>.json`` (the audio sample's metadata plus
``frame_rate``, ``n_q``, ``card``, ``frames`` and the codec's identity) and, with ``--chroma``,
``<key>.chroma.npy`` (``[12, T]`` float16, one chroma frame per codec frame, see ``mgen.data.chroma``). The index
``shards.json`` has ``kind: "tokens"`` and the codec's description, so training can check it.

Written by the same engine as ``mgen prep shards`` (`data_prep.engine`), so resumable and idempotent the same way:
every output shard is written to a temporary name and renamed when complete, then a done marker records its hash
and the hash of its inputs (the audio shard's sha256, the codec's weights and config, the chroma flag). A re-run
skips shards whose marker matches; a killed run leaves only temporaries, which the next run deletes. Samples that
cannot be encoded are skipped and listed in ``report.jsonl``.

Every input shard is checked against its audio index first (sha256, sample count). A shard whose bytes changed
since ``mgen prep shards`` wrote it (a bad disk, an interrupted copy) is not tokenized at all, since a damaged
member can still decode, as noise; each of its samples is reported lost by key (the keys come from the shard's done
marker, or, for older shard folders, from the tar headers that survive) and no done marker is written, so after
rebuilding it (``mgen prep shards ... --verify`` rewrites exactly the shards whose hash changed) a re-run
tokenizes just that shard. ``mgen prep tokenize`` finishes every other shard and writes the index and the report,
then exits with code 1 so that a pipeline does not train on a silently smaller dataset.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used, so `mgen --help` and `mgen prep shards` stay fast
    import torch

from data_prep.engine import ShardContent, ShardJob, commit_shard, index_body, make_shards, pending, write_report
from mgen.atomic import write_json_atomic
from mgen.audio import read_audio
from mgen.checksum import file_sha256
from mgen.data.shard_index import (INDEX_NAME, INDEX_VERSION, KIND_AUDIO, KIND_TOKENS, REPORT_NAME, index_kind,
                                   load_index, shard_keys)
from mgen.paths import check_output_dir

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
            "n_q": int(codec.n_q), "card": int(codec.card)}


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

@dataclass(frozen=True)
class TokenShard(ShardJob):
    """One token shard to make: the audio shard it encodes, what the audio index says of that shard (its sha256,
    sample count and, from its done marker, its keys), and how to encode it."""

    src: str = ""
    sha256: str | None = None
    expected_samples: int = 0
    keys: tuple[str, ...] | None = None
    batch_size: int = 16
    chroma: bool = False
    sample_rate: int = 0
    channels: int = 0


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
    audio, got_rate = read_audio(io.BytesIO(members["flac"]), where="flac member")
    if got_rate != rate or audio.shape[1] != channels:
        raise ValueError(f"sample is {got_rate} Hz x {audio.shape[1]} ch, the index says {rate} Hz x {channels} ch")
    return meta, np.ascontiguousarray(audio.T)


class _Encoder:
    """Encodes pending samples in equal-length batches and adds their members to the shard's content."""

    def __init__(self, codec: Any, identity: dict[str, Any], content: ShardContent, shard: str, batch_size: int,
                 device: torch.device, chroma: bool) -> None:
        self.codec, self.content, self.shard, self.batch_size = codec, content, shard, batch_size
        self.device, self.chroma = device, chroma
        self.code_dtype = np.int16 if codec.card <= np.iinfo(np.int16).max else np.int32
        self.codec_ref = {"sha256": identity["sha256"], "path": identity["path"]}
        self.pending: dict[int, list[tuple[str, dict[str, Any], np.ndarray]]] = defaultdict(list)

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
            record = {**meta, "frame_rate": float(self.codec.frame_rate), "n_q": int(sample_codes.shape[0]),
                      "card": int(self.codec.card), "frames": frames, "codec": self.codec_ref,
                      "audio_shard": self.shard, "chroma": self.chroma}
            data = {"codes.npy": _npy(sample_codes.astype(self.code_dtype))}
            if self.chroma:
                chroma = chromagram(audio, self.codec.sample_rate, self.codec.hop_length, num_frames=frames)
                data["chroma.npy"] = _npy(chroma.numpy().astype(CHROMA_DTYPE))
            self.content.add(key, data, record, audio.shape[1] / self.codec.sample_rate, frames)


def tokenize_one(job: TokenShard, out: Path, codec: Any, identity: dict[str, Any], device: torch.device
                 ) -> dict[str, Any]:
    """Encode one audio shard and commit its token shard; returns the index entry."""
    src = Path(job.src)
    if not src.is_file() or (job.sha256 and file_sha256(src) != job.sha256):
        (out / job.name).unlink(missing_ok=True)  # a token shard from an older plan: not this input's tokens
        return _damaged_entry(job, src)
    content = ShardContent(frames=0)
    enc = _Encoder(codec, identity, content, job.name, job.batch_size, device, job.chroma)
    seen: list[str] = []
    for key, members in read_audio_samples(src, content.skipped):
        seen.append(key)
        try:
            meta, audio = decode_sample(members, job.sample_rate, job.channels)
        except ValueError as err:
            content.skipped.append({"shard": job.name, "key": key, "reason": str(err)[:300]})
            continue
        enc.add(key, meta, audio)
    enc.flush()
    content.skipped += _missing_samples(job, seen, content.skipped)
    return commit_shard(out, job, content)


def _damaged_entry(job: TokenShard, src: Path) -> dict[str, Any]:
    """The index entry of an audio shard whose bytes are not the ones its index hashed: nothing is tokenized (a
    damaged member can still decode, as noise) and every sample it held is reported lost, by key. No done marker
    is written, so the next run tries the shard again once it is rebuilt (`mgen prep shards ... --verify`)."""
    damage = "its sha256 differs from shards.json" if src.is_file() else "the file is missing"
    reason = f"audio shard damaged ({damage}): not tokenized"
    keys = job.keys
    if keys is None:  # an index from before done markers listed keys: the headers that survive name the samples
        keys = tuple(scan_member_keys(src)) if src.is_file() else ()
        reason += "; key read from the damaged shard's surviving tar headers"
    lost = [{"shard": job.name, "key": key, "reason": reason} for key in keys]
    lost += [{"shard": job.name, "key": None, "reason": "audio shard damaged: a sample whose tar header is lost "
              "(keys are listed in done markers written by newer `mgen prep shards`)"}] * max(
        0, job.expected_samples - len(keys))
    return {"name": job.name, "split": job.split, "samples": 0, "frames": 0, "seconds": 0.0, "bytes": 0,
            "sha256": None, "plan_hash": job.digest, "skipped": lost, "damaged": True}


def _missing_samples(job: TokenShard, seen: list[str], problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Samples the audio index promises that the shard did not deliver (only a shard whose index has no sha256 or
    lies about its count gets here: a damaged one is caught by its hash)."""
    reason = "missing from the audio shard (its index lists it)"
    accounted = set(seen) | {p["key"] for p in problems if p["key"] is not None}
    if job.keys is not None:
        return [{"shard": job.name, "key": key, "reason": reason} for key in job.keys if key not in accounted]
    short = job.expected_samples - len(accounted) - sum(p["key"] is None for p in problems)
    return [{"shard": job.name, "key": None, "reason": reason + "; key unknown"}] * max(0, short)


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
    if index_kind(audio_index) != KIND_AUDIO:
        raise ValueError(f"{src} holds {audio_index['kind']} shards; tokenize needs audio shards")
    if out.resolve() == src.resolve():
        raise ValueError(f"the output folder must differ from the audio shards folder ({src}): names are kept")
    if (out / INDEX_NAME).is_file() and index_kind(load_index(out)) != KIND_TOKENS:
        raise ValueError(f"{out} already holds audio shards; choose another output folder")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from mgen.devices import parse_device

    torch_device = parse_device(device, "device")
    codec, codec_name = _load(codec_path, torch_device)
    check_codec_matches(codec, audio_index["config"], codec_name or "(in memory)", str(src))
    identity = codec_identity(codec, codec_name)
    codec_key = {k: identity[k] for k in ("sha256", "config")}
    audio_config = audio_index["config"]

    jobs = []
    for shard in audio_index["shards"]:
        digest = hashlib.sha256(json.dumps(
            {"version": INDEX_VERSION, "audio": shard["sha256"], "name": shard["name"], "codec": codec_key,
             "chroma": bool(chroma)}, sort_keys=True).encode()).hexdigest()
        keys = shard_keys(src, shard)
        jobs.append(TokenShard(shard["name"], shard["split"], digest, src=str(src / shard["name"]),
                               sha256=shard.get("sha256"), expected_samples=int(shard.get("samples") or 0),
                               keys=None if keys is None else tuple(keys), batch_size=int(batch_size),
                               chroma=bool(chroma), sample_rate=int(audio_config["sample_rate"]),
                               channels=int(audio_config["channels"])))
    entries, todo = pending(out, jobs, verify)
    resumed = len(entries)
    make_shards(out, todo, lambda job: tokenize_one(job, out, codec, identity, torch_device), entries, progress,
                "tokenize")

    ordered = [entries[job.name] for job in jobs]
    index = _write_index(out, ordered, identity, audio_index, src, bool(chroma))
    totals = index["totals"]
    damaged = [e["name"] for e in ordered if e.get("damaged")]
    return {"out_dir": str(out), "shards": len(ordered), "shards_written": len(todo) - len(damaged),
            "shards_resumed": resumed, "samples": totals["samples"], "frames": totals["frames"],
            "seconds": totals["seconds"], "skipped_samples": totals["skipped_samples"], "damaged_shards": damaged,
            "lost_samples": sum(len(e["skipped"]) for e in ordered if e.get("damaged")), "index": str(out / INDEX_NAME),
            "report": str(out / REPORT_NAME), "codec": identity["sha256"][:12],
            "wall_seconds": time.perf_counter() - start_time}


def _write_index(out: Path, shards: list[dict[str, Any]], identity: dict[str, Any], audio_index: dict[str, Any],
                 src: Path, chroma: bool) -> dict[str, Any]:
    config = {"version": INDEX_VERSION, "frame_rate": identity["frame_rate"],
              "n_q": identity["n_q"], "card": identity["card"],
              "hop_length": identity["hop_length"], "sample_rate": identity["sample_rate"],
              "channels": identity["channels"], "chroma": chroma,
              "codes_dtype": "int16" if identity["card"] <= np.iinfo(np.int16).max else "int32",
              "chroma_dtype": "float16" if chroma else None, "audio_config": audio_index.get("config", {})}
    report = [s for e in shards for s in e["skipped"]]
    index = {"version": INDEX_VERSION, "kind": KIND_TOKENS, "codec": identity, "config": config,
             "source": {"dir": str(src.resolve()), "plan_id": audio_index.get("plan_id")},
             **index_body(shards, ("samples", "frames", "seconds"))}
    index["totals"].update(skipped_samples=len(report), damaged_shards=sum(bool(e.get("damaged")) for e in shards))
    write_report(out, report)
    write_json_atomic(out / INDEX_NAME, index)
    return index
