"""The CPU's model name and the instruction-set flags that decide matmul speed (read from /proc/cpuinfo, no torch)."""

from __future__ import annotations

from pathlib import Path

FLAGS = ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> dict:
    """{"model_name", "avx512f", "avx512_bf16", "amx", "amx_bf16", "bf16_matmul_hardware"}; flags False (and
    model_name None) where /proc/cpuinfo is missing or silent, as on macOS."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model_name, flags = None, set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model_name is None:
            model_name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    info = {"model_name": model_name, **{flag: flag in flags for flag in FLAGS}}
    info["amx"] = info.pop("amx_tile")
    info["bf16_matmul_hardware"] = info["avx512_bf16"] or info["amx_bf16"]
    return info


def cpu_flags_line(info: dict | None = None) -> str:
    info = cpu_flags() if info is None else info
    yes = {True: "yes", False: "no"}
    return (f"cpu: {info['model_name'] or 'unknown'} | avx512f: {yes[info['avx512f']]} | "
            f"avx512_bf16: {yes[info['avx512_bf16']]} | amx: {yes[info['amx']]} | amx_bf16: {yes[info['amx_bf16']]}")
