"""The LM size presets, apart from the model so that `mgen info --help` can list them without importing torch."""

from __future__ import annotations

# name -> (dim, num_heads, num_layers); ffn is 4*dim. The paper's "300M / 1.5B / 3.3B".
SIZE_PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 2),
    "bench-small": (512, 8, 8),
    "small": (1024, 16, 24),
    "medium": (1536, 24, 48),
    "large": (2048, 32, 48),
}
