"""`mgen demo`: the main job on a small default.

Today it runs the LM path end to end: a tiny conditioned LM learns token sequences with known structure
(each condition selects a repeating motif per codebook), its cross-entropy is checked against the
unigram entropy, and it generates with CFG through the delay pattern. The audio stages (corpus, codec,
tokenization, decoding to WAV) join as their issues land.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from mgen.lm.generate import SamplingParams, generate
from mgen.lm.model import LM, Conditioning, LMConfig, cross_entropy_per_codebook


def motif_batch(num_styles: int, batch: int, frames: int, n_q: int, card: int, style_emb: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, Conditioning, torch.Tensor]:
    """Codes where style s repeats its own motif of period 4 in every codebook, from a random phase."""
    styles = torch.randint(0, num_styles, (batch,), generator=generator)
    motifs = (torch.arange(num_styles)[:, None, None] * 7 + torch.arange(n_q)[None, :, None] * 3
              + torch.arange(4)[None, None, :] * 5) % card  # [styles, K, 4]
    phase = torch.randint(0, 4, (batch,), generator=generator)
    t = (torch.arange(frames)[None] + phase[:, None]) % 4  # [B, T]
    codes = motifs[styles][:, :, :].gather(2, t[:, None, :].expand(batch, n_q, frames))
    return codes, Conditioning(cross=style_emb[styles][:, None, :]), styles


def run_demo(out_dir: str | Path, steps: int = 150, seed: int = 0) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    cfg = LMConfig.preset("tiny", card=64)
    lm = LM(cfg)
    num_styles, frames = 4, 24
    style_emb = torch.randn(num_styles, cfg.dim, generator=g)
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    start = time.perf_counter()
    losses = []
    for step in range(1, steps + 1):
        codes, cond, _ = motif_batch(num_styles, 16, frames, cfg.n_q, cfg.card, style_emb, g)
        logits, mask = lm.compute_predictions(codes, cond)
        loss, _ = cross_entropy_per_codebook(logits, codes, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == 1:
            print(f"[demo] step {step:4d}/{steps}  cross-entropy {loss.item():.3f}", flush=True)
    unigram = math.log(4)  # each style uses 4 tokens per codebook, uniformly
    lm.eval()
    codes, cond, styles = motif_batch(num_styles, 4, frames, cfg.n_q, cfg.card, style_emb, g)
    generated = generate(lm, 48, cond, params=SamplingParams(top_k=2, cfg_coef=3.0), max_window=frames,
                         stride=12, generator=g)
    motif_ok = [set(generated[i, 0].tolist()) <= set(codes[i, 0].tolist()) for i in range(len(styles))]
    report = {"steps": steps, "final_cross_entropy": sum(losses[-10:]) / 10, "unigram_entropy": unigram,
              "generated_frames": generated.shape[-1], "generated_follow_their_motif": sum(motif_ok),
              "seconds": round(time.perf_counter() - start, 1)}
    torch.save({"codes": generated, "styles": styles}, out / "generated_codes.pt")
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / "report.json")
    return report


def run(args: argparse.Namespace) -> int:
    report = run_demo(args.out, steps=args.steps, seed=args.seed)
    print(json.dumps(report))
    print(f"[demo] outputs in {Path(args.out).resolve()}: report.json, generated_codes.pt")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the main job end to end on a small default")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
