"""`mgen info`: size an LM before building it (parameters, training memory per precision)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from mgen.lm.presets import SIZE_PRESETS

if TYPE_CHECKING:  # the model imports torch: only when the command runs
    from mgen.lm.model import LMConfig

GIB = 1024**3


def memory_table(num_params: int) -> dict[str, dict[str, float]]:
    """GiB for weights, gradients and AdamW's two moments, in fp32 and in pure bf16.

    Activations are not included: they depend on batch, sequence length and checkpointing.
    """
    table = {}
    for name, nbytes in (("fp32", 4), ("bf16", 2)):
        weights = num_params * nbytes / GIB
        grads = num_params * nbytes / GIB
        adamw = 2 * num_params * nbytes / GIB
        table[name] = {"weights_gib": weights, "grads_gib": grads, "adamw_states_gib": adamw,
                       "total_gib": weights + grads + adamw}
    return table


def describe(cfg: LMConfig) -> dict:
    from mgen.lm.model import count_parameters

    n = count_parameters(cfg)
    return {"dim": cfg.dim, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "n_q": cfg.n_q,
            "card": cfg.card, "cross_attention": cfg.cross_attention, "parameters": n,
            "memory": memory_table(n)}


def run(args: argparse.Namespace) -> int:
    from mgen.lm.model import LMConfig

    cfg = LMConfig.preset(args.preset, n_q=args.n_q, card=args.card, cross_attention=not args.no_cross_attention)
    info = describe(cfg)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"LM preset {args.preset}: dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads, "
          f"{cfg.n_q} codebooks x {cfg.card}, cross-attention {'on' if cfg.cross_attention else 'off'}")
    print(f"parameters: {info['parameters']:,} ({info['parameters'] / 1e6:.1f}M)")
    print(f"{'precision':<10}{'weights':>10}{'grads':>10}{'AdamW':>10}{'total':>10}  (GiB, activations excluded)")
    for name, row in info["memory"].items():
        print(f"{name:<10}{row['weights_gib']:>10.2f}{row['grads_gib']:>10.2f}"
              f"{row['adamw_states_gib']:>10.2f}{row['total_gib']:>10.2f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="parameter count and training memory of an LM preset")
    p.add_argument("--preset", default="small", choices=sorted(SIZE_PRESETS))
    p.add_argument("--n-q", type=int, default=4, help="number of codebooks")
    p.add_argument("--card", type=int, default=2048, help="codebook size")
    p.add_argument("--no-cross-attention", action="store_true", help="prefix-only conditioning (melody models)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
