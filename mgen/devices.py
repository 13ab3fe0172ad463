"""A `--device` flag checked before any work: a typo or a GPU this machine does not have is a one-line error, not
a traceback from deep inside torch after the model has loaded."""

from __future__ import annotations

import torch

from mgen.errors import first_line


def parse_device(name: str, flag: str = "--device") -> torch.device:
    """The torch device `name` names, when this machine and this torch build have it; ValueError otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValueError(f"{flag} {name!r} is not a torch device ({first_line(err, 200)}); "
                         f"use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if device.type == "meta" or is_available is None or not is_available():
        build = " (this torch build has no CUDA)" if device.type == "cuda" and torch.version.cuda is None else ""
        raise ValueError(f"{flag} {name}: no {device.type} device is available on this machine{build}; use cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise ValueError(f"{flag} {name}: this machine has {count} {device.type} device(s), numbered from 0")
    return device
