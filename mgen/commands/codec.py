"""`mgen codec encode | decode`: audio files <-> codec tokens with a trained codec.

    mgen codec encode IN.wav -o OUT.npy --codec CODEC     codes [K, T] (int16 when the codebooks fit, else int64)
    mgen codec decode IN.npy -o OUT.wav --codec CODEC     audio at the codec's sample rate

CODEC is an export directory (`save_codec` / `export_codec`) or a `CodecModule` `.ckpt` (its EMA weights). Bad
input is a `ValueError` naming the file, which `mgen` turns into a one-line error and exit code 2; outputs are
written to a temporary file and renamed, so a failed or interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from mgen.atomic import atomic_write
from mgen.commands.flags import add_codec, add_output
from mgen.errors import first_line
from mgen.paths import check_output_file

if TYPE_CHECKING:  # numpy and torch load when a file is encoded or decoded, not for `mgen --help`
    import numpy as np

DEFAULT_SUBTYPE = "PCM_16"


def read_audio(path: Path, sample_rate: int, channels: int, *, convert_channels: bool = False,
               allow_silence: bool = False, log=print) -> np.ndarray:
    """``[frames, channels]`` float32 ready for the codec: checked, resampled (said so), channel-matched on request."""
    import numpy as np

    from mgen.audio import read_audio as read_checked, resample, to_channels

    audio, rate = read_checked(path)
    if not allow_silence and not np.abs(audio).max() > 0:
        raise ValueError(f"{path}: is entirely silent (all samples are zero); pass --allow-silence to encode it anyway")
    have = audio.shape[1]
    if have != channels:
        if not convert_channels:
            raise ValueError(f"{path}: has {have} channel(s) but the codec expects {channels}; pass "
                             f"--convert-channels to {'mix it down' if channels < have else 'duplicate it'}")
        log(f"converting {path} from {have} to {channels} channel(s)")
        audio = to_channels(audio, channels)
    if rate != sample_rate:
        log(f"resampling {path} from {rate} Hz to {sample_rate} Hz")
        audio = resample(audio, rate, sample_rate)
    return np.ascontiguousarray(audio, dtype=np.float32)


def encode_file(codec, input_path: Path, output_path: Path, *, convert_channels: bool = False,
                allow_silence: bool = False, dtype: str | None = None, log=print) -> np.ndarray:
    """Encode one audio file to ``[K, T]`` codes saved as .npy; returns the codes."""
    import numpy as np
    import torch

    audio = read_audio(input_path, codec.sample_rate, codec.channels, convert_channels=convert_channels,
                       allow_silence=allow_silence, log=log)
    with torch.inference_mode(), warnings.catch_warnings():
        if allow_silence:  # asked for: the codec's "entirely silent" warning would only repeat the request
            warnings.filterwarnings("ignore", message="audio is entirely silent", category=RuntimeWarning)
        codes = codec.encode(torch.from_numpy(audio.T.copy())[None].to(next(codec.parameters()).device))[0]
    dtype = dtype or ("int16" if codec.card <= np.iinfo(np.int16).max + 1 else "int64")
    array = codes.cpu().numpy().astype(dtype)
    with atomic_write(output_path) as f:
        np.save(f, array)
    return array


def read_codes(path: Path, n_q: int, card: int) -> np.ndarray:
    """``[K, T]`` integer codes from a .npy file, checked against the codec."""
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"codes file not found: {path}")
    try:
        codes = np.load(path, allow_pickle=False)
    except Exception as err:  # pickled objects, truncated or non-npy files
        raise ValueError(f"{path}: not a .npy array of codes ({first_line(err, 200)})") from err
    if not isinstance(codes, np.ndarray) or codes.ndim != 2:
        raise ValueError(f"{path}: codes must have shape [K, T] (codebooks x frames), got {np.shape(codes)}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{path}: codes must be integers, got dtype {codes.dtype}")
    if codes.shape[0] != n_q:
        raise ValueError(f"{path}: has {codes.shape[0]} codebooks but the codec expects {n_q}")
    if codes.shape[1] == 0:
        raise ValueError(f"{path}: has no frames (shape {codes.shape})")
    lo, hi = int(codes.min()), int(codes.max())
    if lo < 0 or hi >= card:
        raise ValueError(f"{path}: code values must be in [0, {card}), got min {lo} and max {hi}")
    return codes.astype(np.int64)


def decode_file(codec, input_path: Path, output_path: Path, *, subtype: str = DEFAULT_SUBTYPE, log=print) -> np.ndarray:
    """Decode ``[K, T]`` codes from .npy to an audio file (format from the extension); returns ``[L, C]`` audio."""
    import numpy as np
    import torch

    from mgen.audio import audio_format, write_audio

    audio_format(output_path, subtype)  # refused before any work
    codes = read_codes(input_path, codec.n_q, codec.card)
    with torch.inference_mode():
        device = next(codec.parameters()).device
        wav = codec.decode(torch.from_numpy(codes)[None].to(device))[0]
    audio = wav.float().cpu().numpy().T
    if subtype != "FLOAT" and np.abs(audio).max() > 1.0:
        log(f"clipping the decoded audio to [-1, 1] for {subtype} (peak {np.abs(audio).max():.2f})")
        audio = np.clip(audio, -1.0, 1.0)
    write_audio(output_path, audio, codec.sample_rate, subtype)
    return audio


def _load(args: argparse.Namespace):
    from mgen.codec.checkpoint import load_codec
    from mgen.devices import parse_device

    return load_codec(args.codec, device=parse_device(args.device))


def _stderr(message: str) -> None:
    print(f"mgen codec: {message}", file=sys.stderr)


def run_encode(args: argparse.Namespace) -> int:
    out = check_output_file(args.out)
    codec = _load(args)
    codes = encode_file(codec, args.input, out, convert_channels=args.convert_channels,
                        allow_silence=args.allow_silence, dtype=args.dtype, log=_stderr)
    print(f"{out}: codes {list(codes.shape)} ({codes.dtype}), {codes.shape[1] / codec.frame_rate:.2f} s "
          f"at {codec.frame_rate:g} Hz")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from mgen.audio import audio_format

    out = check_output_file(args.out)
    audio_format(out, args.subtype)
    codec = _load(args)
    audio = decode_file(codec, args.input, out, subtype=args.subtype, log=_stderr)
    print(f"{out}: {audio.shape[0] / codec.sample_rate:.2f} s, {audio.shape[1]} channel(s), "
          f"{codec.sample_rate} Hz")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("codec", help="encode audio to codec tokens, decode tokens to audio")
    actions = p.add_subparsers(dest="codec_action", metavar="ACTION", required=True)

    enc = actions.add_parser("encode", help="audio file -> codes [K, T] .npy")
    enc.add_argument("input", type=Path, help="audio file (anything soundfile reads: wav, flac, ogg, ...)")
    add_output(enc, "output .npy (written atomically)", was_positional=True)
    add_codec(enc, was="--ckpt")
    enc.add_argument("--convert-channels", action="store_true",
                     help="mix down / duplicate channels when the file's channel count differs from the codec's")
    enc.add_argument("--allow-silence", action="store_true", help="encode an all-zero file instead of failing")
    enc.add_argument("--dtype", choices=["int16", "int64"], default=None,
                     help="dtype of the saved codes (default: int16 when the codebook size fits)")
    enc.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    enc.set_defaults(func=run_encode)

    dec = actions.add_parser("decode", help="codes [K, T] .npy -> audio file")
    dec.add_argument("input", type=Path, help="codes .npy, shape [K, T]")
    add_output(dec, "output audio file (.wav or .flac, written atomically)", was_positional=True)
    add_codec(dec, was="--ckpt")
    dec.add_argument("--subtype", default=DEFAULT_SUBTYPE, choices=["PCM_16", "PCM_24", "FLOAT"],
                     help="sample format of the output file")
    dec.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    dec.set_defaults(func=run_decode)
