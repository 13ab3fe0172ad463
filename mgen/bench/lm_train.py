"""`mgen bench lm-train`: one LM training step (forward, masked CE, backward, AdamW) in tokens per second.

Default workload (issue 2): preset bench-small, batch 8 x 500 frames, delay pattern, cross-attention to 64
condition tokens of width 512, fp32. With vs_transformers, transformers' MusicgenForCausalLM of the same
size (same weights, same batch) runs its own training path alternating with ours: `model(labels=...,
encoder_hidden_states=...)`, labels [B, T, K] laid out by its `build_delay_pattern_mask` with -100 where no
code is, and the per-codebook cross-entropy transformers computes itself (as its MusicGen fine-tuning recipes use
it). Each side also reports its peak memory (measured in a child process of its own), its model FLOPs per
step and its model FLOPs utilisation against the matmul peak measured in the same run.

precision "bf16-mixed" runs both sides' forward and loss under `torch.autocast(device, dtype=torch.bfloat16)`
(fp32 weights and optimiser, as Lightning's bf16-mixed); "32-true" runs fp32 throughout.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mgen.bench.cpu import cpu_flags
from mgen.bench.timing import alternate, machine_info, median, sync
from mgen.lm.model import LM, Conditioning, LMConfig, cross_entropy_per_codebook

PRECISIONS = ("32-true", "bf16-mixed")
MGEN_LOSS = "mgen: LM.compute_predictions + cross_entropy_per_codebook (pattern-valid positions)"
TRANSFORMERS_LOSS = ("native: MusicgenForCausalLM(labels=[B, T, K] from build_delay_pattern_mask, -100 ignored, "
                     "encoder_hidden_states=...).loss, its own per-codebook cross-entropy")


def _workload(smoke: bool) -> dict:
    if smoke:
        return {"preset": "tiny", "batch": 2, "frames": 50, "cond_tokens": 8}
    return {"preset": "bench-small", "batch": 8, "frames": 500, "cond_tokens": 64}


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Side:
    """One contender: `step()` runs forward, loss, backward and AdamW; the first loss (before any update, on
    the shared initial weights) is kept to check both sides compute the same thing."""

    def __init__(self, forward_loss: Callable[[], torch.Tensor], params, device: torch.device, precision: str,
                 seq_len: int, loss_targets: int, loss_path: str) -> None:
        self.forward_loss, self.device, self.precision = forward_loss, device, precision
        self.opt = torch.optim.AdamW(params, lr=1e-4)
        self.seq_len, self.loss_targets, self.loss_path = seq_len, loss_targets, loss_path
        self.first_loss: float | None = None

    def step(self) -> None:
        with _autocast(self.device, self.precision):
            loss = self.forward_loss()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.first_loss is None:
            self.first_loss = float(loss.detach())
        sync(self.device)


def _ours_side(lm: LM, codes: torch.Tensor, memory: torch.Tensor, precision: str) -> _Side:
    cond = Conditioning(cross=memory)
    pattern = lm.pattern_provider.get_pattern(codes.shape[-1])
    sequence, _ = pattern.build_sequence(codes, lm.special_token, keep_only_valid_steps=True)
    _, mask = pattern.revert_logits(torch.zeros(1, codes.shape[1], sequence.shape[-1], 1, device=codes.device),
                                    keep_only_valid_steps=True)

    def forward_loss() -> torch.Tensor:
        logits, valid = lm.compute_predictions(codes, cond)
        return cross_entropy_per_codebook(logits, codes, valid)[0]

    targets = int(mask.sum())
    return _Side(forward_loss, lm.parameters(), codes.device, precision, sequence.shape[-1], targets, MGEN_LOSS)


def transformers_labels(model, codes: torch.Tensor) -> torch.Tensor:
    """Labels [B, T + K - 1, K] for MusicgenForCausalLM from codes [B, K, T], as its fine-tuning recipes build
    them: prepend BOS, delay with `build_delay_pattern_mask`, drop the all-BOS first step, -100 where the delay
    pattern has no code. The model shifts them right (BOS first) to make its input ids."""
    b, k, t = codes.shape
    pad, bos = model.config.pad_token_id, model.config.bos_token_id
    with_bos = torch.cat([codes.new_full((b, k, 1), bos), codes], dim=-1).reshape(b * k, t + 1)
    _, delayed = model.build_delay_pattern_mask(with_bos, pad_token_id=pad, max_length=t + k)
    labels = delayed.reshape(b, k, t + k)[..., 1:]
    labels = labels.masked_fill((labels == pad) | (labels < 0), -100)
    return labels.transpose(1, 2).contiguous()


def _transformers_side(lm: LM, codes: torch.Tensor, memory: torch.Tensor, precision: str) -> _Side:
    from mgen.interop.hf import lm_to_transformers  # transformers is heavy

    model = lm_to_transformers(lm).to(codes.device).train()
    labels = transformers_labels(model, codes)

    def forward_loss() -> torch.Tensor:
        return model(labels=labels, encoder_hidden_states=memory).loss

    targets = int((labels[0] != -100).sum())
    return _Side(forward_loss, model.parameters(), codes.device, precision, labels.shape[1], targets,
                 TRANSFORMERS_LOSS)


SIDES = {"mgen": _ours_side, "transformers": _transformers_side}


def _setup(work: dict, device: str, seed: int) -> tuple[LMConfig, LM, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    dev = torch.device(device)
    cfg = LMConfig.preset(work["preset"])
    lm = LM(cfg).to(dev).train()
    codes = torch.randint(0, cfg.card, (work["batch"], cfg.n_q, work["frames"]), device=dev)
    memory = torch.randn(work["batch"], work["cond_tokens"], cfg.dim, device=dev)
    return cfg, lm, codes, memory


def model_flops_per_step(cfg: LMConfig, batch: int, seq_len: int, cond_tokens: int) -> float:
    """Matmul FLOPs of one training step (3 x forward: forward + backward), counted from the architecture.

    Per sequence position and layer: self-attention q/k/v and output projections 8 D^2, cross-attention query and
    output 4 D^2, feed-forward 4 D F, causal attention scores + values 2 S D (half of 4 S D), cross-attention scores
    + values 4 C D; the K heads 2 D card K; the cross-attention keys/values 4 D^2 per condition token and layer.
    Embedding look-ups, norms and softmax are not counted (the usual MFU convention)."""
    d, f, n_layers = cfg.dim, cfg.ffn_dim, cfg.num_layers
    per_position = (n_layers * (12 * d * d + 4 * d * f + 2 * seq_len * d + 4 * cond_tokens * d)
                    + 2 * d * cfg.card * cfg.n_q)
    forward = batch * (seq_len * per_position + cond_tokens * n_layers * 4 * d * d)
    return 3.0 * forward


def matmul_gflops(n: int, dtype: torch.dtype, device: torch.device, iters: int = 5) -> float:
    """GFLOP/s of an n x n @ n x n matmul in `dtype` (median of `iters` after one warm-up)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / median(times) / 1e9


def _matmul_peaks(cfg: LMConfig, dtypes: list[torch.dtype], device: torch.device) -> dict:
    sizes = sorted({cfg.dim, cfg.ffn_dim})
    return {str(dtype).removeprefix("torch."): {str(n): round(matmul_gflops(n, dtype, device), 1) for n in sizes}
            for dtype in dtypes}


def _proc_status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_rss_high_water() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _memory_child(name: str, work: dict, precision: str, device: str, seed: int) -> dict:
    """Run in a fresh process: build one side, run 2 steps (the first allocates AdamW's state), report its peak."""
    _, lm, codes, memory = _setup(work, device, seed)
    side = SIDES[name](lm, codes, memory, precision)
    if name != "mgen":
        del lm  # the converted model holds its own copy of the weights
    gc.collect()
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev) / 2**20
        side.step()
        side.step()
        return {"kind": "torch.cuda.max_memory_allocated", "before_steps_mib": round(before, 1),
                "peak_mib": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)}
    before = _proc_status_mib("VmRSS")
    reset = _reset_rss_high_water()
    side.step()
    side.step()
    # VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so a spawned child reports at least the parent's
    # high-water mark at fork time. VmHWM belongs to the child's own address space.
    peak = _proc_status_mib("VmHWM")
    return {"kind": "process RSS high-water mark (VmHWM) of a child running only this side, incl. the Python/torch "
                    "runtime" + ("; reset after setup, so it covers the 2 steps" if reset else "; covers setup too"),
            "before_steps_mib": round(before, 1), "peak_mib": round(peak, 1),
            "step_peak_over_before_mib": round(peak - before, 1)}


def measure_peak_memory(name: str, work: dict, precision: str, device: str, seed: int) -> dict:
    """Peak memory of one side, measured in a spawned child process so the sides do not share a high-water mark."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_memory_child, (name, work, precision, device, seed))


def run_lm_train_bench(vs_transformers: bool = False, smoke: bool = False, repeats: int = 3,
                       device: str = "cpu", seed: int = 0, precision: str = "32-true", memory: bool = True) -> dict:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    work = _workload(smoke)
    dev = torch.device(device)
    cpu = cpu_flags()
    bf16_hw = cpu["bf16_matmul_hardware"] if dev.type == "cpu" else None
    note = None
    if precision == "bf16-mixed" and dev.type == "cpu" and not bf16_hw:
        note = ("this CPU has no bf16 matmul hardware (no avx512_bf16 / amx_bf16): bf16 matmuls are emulated, "
                "bf16-mixed figures say nothing about bf16 hardware")
        print(f"note: {note}", file=sys.stderr)
    cfg, lm, codes, cond_memory = _setup(work, device, seed)
    names = ["mgen", "transformers"] if vs_transformers else ["mgen"]
    sides = {name: SIDES[name](lm, codes, cond_memory, precision) for name in names}
    dtypes = [torch.float32] + ([torch.bfloat16] if precision == "bf16-mixed" else [])
    peaks_before = _matmul_peaks(cfg, dtypes, dev)
    times = alternate({name: side.step for name, side in sides.items()}, repeats)
    peaks_after = _matmul_peaks(cfg, dtypes, dev)
    matmul = {dt: {n: max(v, peaks_after[dt][n]) for n, v in sizes.items()} for dt, sizes in peaks_before.items()}
    peak_dtype = "bfloat16" if precision == "bf16-mixed" else "float32"
    peak_gflops = max(matmul[peak_dtype].values())
    tokens = work["batch"] * work["frames"] * cfg.n_q
    result = {"bench": "lm-train", **work, "n_q": cfg.n_q, "precision": precision, "dtype": "float32",
              "autocast_dtype": "bfloat16" if precision == "bf16-mixed" else None, "device": device,
              "parameters": lm.num_parameters(), "repeats": repeats, "tokens_per_step": tokens,
              "bf16_matmul_hardware": bf16_hw, "matmul_gflops": matmul,
              "peak_gflops": {"dtype": peak_dtype, "gflops": peak_gflops,
                              "how": "max over square n x n matmuls at the model's dim sizes, before and after"}}
    if note:
        result["note"] = note
    for name, side in sides.items():
        step_s = median(times[name])
        flops = model_flops_per_step(cfg, work["batch"], side.seq_len, work["cond_tokens"])
        result[f"{name}_step_s"] = round(step_s, 4)
        result[f"{name}_tokens_per_s"] = round(tokens / step_s, 1)
        result[name] = {"loss_path": side.loss_path, "seq_len": side.seq_len,
                        "loss_targets_per_example": side.loss_targets, "first_loss": round(side.first_loss, 5),
                        "step_s": [round(t, 4) for t in times[name]], "model_gflop_per_step": round(flops / 1e9, 2),
                        "achieved_gflops": round(flops / step_s / 1e9, 2),
                        "mfu": round(flops / step_s / 1e9 / peak_gflops, 4)}
    if vs_transformers:
        result["speedup_vs_transformers"] = round(median(times["transformers"]) / median(times["mgen"]), 3)
        result["first_loss_abs_diff"] = round(abs(sides["mgen"].first_loss - sides["transformers"].first_loss), 5)
    del sides, lm
    gc.collect()
    if memory:
        for name in names:
            result[name]["peak_memory"] = measure_peak_memory(name, work, precision, device, seed)
    else:
        result["peak_memory"] = "not measured (memory=False)"
    result["machine"] = machine_info()
    return result
