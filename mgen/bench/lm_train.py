"""`mgen bench lm-train`: one LM training step (forward, masked CE, backward, AdamW) in tokens per second.

Default workload (issue 2): preset bench-small, batch 8 x 500 frames, delay pattern, cross-attention to 64
condition tokens of width 512, fp32. With vs_transformers, transformers' MusicgenForCausalLM of the same
size runs the same step on the same inputs, alternating with ours.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mgen.bench.timing import alternate, machine_info, median, sync
from mgen.lm.model import LM, Conditioning, LMConfig, cross_entropy_per_codebook


def _workload(smoke: bool) -> dict:
    if smoke:
        return {"preset": "tiny", "batch": 2, "frames": 50, "cond_tokens": 8}
    return {"preset": "bench-small", "batch": 8, "frames": 500, "cond_tokens": 64}


def _ours_step(lm: LM, codes: torch.Tensor, memory: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-4)
    cond = Conditioning(cross=memory)

    def step() -> None:
        logits, mask = lm.compute_predictions(codes, cond)
        loss, _ = cross_entropy_per_codebook(logits, codes, mask)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(codes.device)

    return step


def _transformers_step(lm: LM, codes: torch.Tensor, memory: torch.Tensor) -> Callable[[], None]:
    from mgen.interop.hf import lm_to_transformers  # transformers is heavy

    model = lm_to_transformers(lm).to(codes.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pattern = lm.pattern_provider.get_pattern(codes.shape[-1])
    sequence, _ = pattern.build_sequence(codes, lm.special_token, keep_only_valid_steps=True)
    b, k, s = sequence.shape
    input_ids = sequence.reshape(b * k, s)

    def step() -> None:
        logits = model(input_ids=input_ids, encoder_hidden_states=memory).logits.reshape(b, k, s, -1)
        reverted, mask = pattern.revert_logits(logits, keep_only_valid_steps=True)
        loss, _ = cross_entropy_per_codebook(reverted, codes, mask)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(codes.device)

    return step


def run_lm_train_bench(vs_transformers: bool = False, smoke: bool = False, repeats: int = 3,
                       device: str = "cpu", seed: int = 0) -> dict:
    work = _workload(smoke)
    torch.manual_seed(seed)
    dev = torch.device(device)
    cfg = LMConfig.preset(work["preset"])
    lm = LM(cfg).to(dev).train()
    codes = torch.randint(0, cfg.card, (work["batch"], cfg.n_q, work["frames"]), device=dev)
    memory = torch.randn(work["batch"], work["cond_tokens"], cfg.dim, device=dev)
    contenders = {"mgen": _ours_step(lm, codes, memory)}
    if vs_transformers:
        contenders["transformers"] = _transformers_step(lm, codes, memory)
    times = alternate(contenders, repeats)
    tokens = work["batch"] * work["frames"] * cfg.n_q
    result = {"bench": "lm-train", **work, "n_q": cfg.n_q, "dtype": "float32", "device": device,
              "parameters": lm.num_parameters(), "repeats": repeats}
    for name, values in times.items():
        result[f"{name}_step_s"] = round(median(values), 4)
        result[f"{name}_tokens_per_s"] = round(tokens / median(values), 1)
    if vs_transformers:
        result["speedup_vs_transformers"] = round(median(times["transformers"]) / median(times["mgen"]), 3)
    result["machine"] = machine_info()
    return result
