"""Multi-device LM training: the Trainer strategy a recipe asks for, and FSDP2 sharding of the LM.

`trainer.strategy` in an LM recipe picks how several devices train one model:

- `ddp`: every rank holds the whole model, gradients are all-reduced (Lightning's DDP).
- `fsdp`: the LM's weights, gradients and optimiser state are sharded over the ranks with torch's FSDP2
  (`fully_shard`, parameters become `DTensor`s sharded on dim 0), through Lightning's `ModelParallelStrategy`
  (data-parallel size = world size, no tensor parallelism). This is what fits `medium` / `large` on 80 GB cards.
- `auto` (default): DDP when the world size is above 1, else Lightning's single-device default.

Sharding is applied from outside, the torchtitan way: `parallelize_lm(lm, mesh, plan)` takes the plain `LM` and
returns it sharded, `gather_full_lm(lm)` gives back a plain one; `LMModule` receives its `FSDPPlan` in the
constructor and calls them from `configure_model` / `on_fit_end`. Model code (`mgen.lm`) stays plain torch: each
transformer block is one FSDP unit (its all-gather / reduce-scatter overlap with the neighbours' compute), then
the root LM takes the rest (embeddings, final norm, heads). The conditioner's trainable projections are a few
thousand to a few million weights used through methods other than `forward` (e.g.
`MelodyConditioner.embed_chroma`), which FSDP's forward hooks would not see: they stay plain, replicated
tensors and their gradients are averaged over the ranks before each optimiser step, like DDP would.

Mixed precision under FSDP is FSDP's own `MixedPrecisionPolicy` (`trainer.fsdp.param_dtype`, default bf16 on
GPUs and fp32 on CPUs; gradients are reduced in `reduce_dtype`, default fp32), so `trainer.precision` must stay
`32-true`. Checkpoints are single files (`save_distributed_checkpoint=False`): the full state dict gathered on
rank 0, loadable with `torch.load(weights_only=True)`, resumable under FSDP, DDP or one device alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor, nn
from torch.distributed._composable import checkpoint
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from mgen.lm.model import LM

STRATEGIES = ("auto", "ddp", "fsdp")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class FSDPPlan:
    """How the LM is sharded (recipe `trainer.fsdp`).

    param_dtype: dtype of the all-gathered weights used in forward / backward (`bf16` | `fp32`; None: bf16
    on CUDA, fp32 elsewhere: CPUs here have no bf16 units). The sharded master weights and the optimiser
    state stay fp32. reduce_dtype: dtype of the gradient reduce-scatter. activation_checkpointing: recompute
    each block's activations in backward instead of keeping them (less memory, ~1/3 more compute).
    reshard_after_forward: free gathered weights after forward (None: torch's default, yes for blocks and
    no for the root, whose weights backward needs first)."""

    param_dtype: str | None = None
    reduce_dtype: str = "fp32"
    activation_checkpointing: bool = False
    reshard_after_forward: bool | None = None

    def __post_init__(self) -> None:
        for name in ("param_dtype", "reduce_dtype"):
            value = getattr(self, name)
            if value is not None and value not in DTYPES:
                raise ValueError(f"trainer.fsdp.{name} must be one of {sorted(DTYPES)}, got {value!r}")
        if not isinstance(self.activation_checkpointing, bool):
            raise ValueError(f"trainer.fsdp.activation_checkpointing must be true or false, got "
                             f"{self.activation_checkpointing!r}")
        if self.reshard_after_forward is not None and not isinstance(self.reshard_after_forward, bool):
            raise ValueError(f"trainer.fsdp.reshard_after_forward must be true, false or null, got "
                             f"{self.reshard_after_forward!r}")

    def mixed_precision(self, device_type: str) -> MixedPrecisionPolicy:
        """FSDP's MixedPrecisionPolicy for weights on `device_type`."""
        param = self.param_dtype or ("bf16" if device_type == "cuda" else "fp32")
        return MixedPrecisionPolicy(param_dtype=DTYPES[param], reduce_dtype=DTYPES[self.reduce_dtype])


def sharded_strategy(world_size: int) -> ModelParallelStrategy:
    """Lightning's `ModelParallelStrategy` as pure FSDP over all ranks, writing single-file checkpoints; it gives
    the module a device mesh, and `LMModule.configure_model` applies its plan."""
    return ModelParallelStrategy(data_parallel_size=world_size, tensor_parallel_size=1,
                                 save_distributed_checkpoint=False)


def lm_strategy_options(strategy: str, world_size: int) -> dict[str, Any]:
    """Trainer keyword arguments for a recipe's `trainer.strategy` (nothing for one device under `auto`); the
    recipe schema has checked that fsdp goes with 32-true precision and no EMA."""
    if strategy not in STRATEGIES:
        raise ValueError(f"trainer.strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "fsdp":
        return {"strategy": sharded_strategy(world_size)}
    if strategy == "ddp" or world_size > 1:
        return {"strategy": "ddp"}
    return {}


# ---------------------------------------------------------------------------------------------- sharding
def data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The 1-D data-parallel mesh of Lightning's (data_parallel, tensor_parallel) mesh; tensor parallelism is
    not supported for the LM."""
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() != 1:
        raise ValueError(f"the LM supports FSDP only: tensor_parallel_size must be 1, got "
                         f"{mesh['tensor_parallel'].size()}")
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def is_sharded(lm: nn.Module) -> bool:
    """True once `parallelize_lm` has been applied to `lm`."""
    return isinstance(lm, FSDPModule)


def parallelize_lm(lm: LM, mesh: DeviceMesh, plan: FSDPPlan | None = None) -> LM:
    """FSDP2 on a plain `LM`: every transformer block (optionally with activation checkpointing), then the root.
    Returns the same object, now sharded (`fully_shard` changes the module's class in place)."""
    plan = plan or FSDPPlan()
    dp_mesh = data_parallel_mesh(mesh)
    options: dict[str, Any] = {"mesh": dp_mesh, "mp_policy": plan.mixed_precision(dp_mesh.device_type)}
    if plan.reshard_after_forward is not None:
        options["reshard_after_forward"] = plan.reshard_after_forward
    for layer in lm.layers:
        if plan.activation_checkpointing:
            # The composable API keeps parameter names (a wrapper module would rename them and break
            # checkpoints); applied before fully_shard so that recomputation runs on gathered weights.
            checkpoint(layer)
        fully_shard(layer, **options)
    fully_shard(lm, **options)
    return lm


def replicated_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters FSDP does not manage (plain tensors, one full copy per rank)."""
    return [p for p in module.parameters() if p.requires_grad and not isinstance(p, DTensor)]


@torch.no_grad()
def average_replicated_gradients(module: nn.Module, mesh: DeviceMesh) -> None:
    """Average the gradients of the replicated parameters over the data-parallel ranks (one all-reduce).

    A parameter that had no gradient on some rank counts as zero there; one that had none on any rank keeps
    None, so the optimiser skips it as it would on one device."""
    params = replicated_parameters(module)
    if not params:
        return
    group = data_parallel_mesh(mesh).get_group()
    size = dist.get_world_size(group)
    if size == 1:
        return
    device = params[0].device
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    present = torch.tensor([float(p.grad is not None) for p in params], device=device)
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [present])
    dist.all_reduce(flat, group=group)
    present = flat[-len(params):].clone()
    flat.div_(size)
    offset = 0
    for p, g, seen in zip(params, grads, present.tolist()):
        n = g.numel()
        if seen > 0:
            averaged = flat[offset:offset + n].view_as(g)
            if p.grad is None:
                p.grad = averaged.to(g.dtype, copy=True)
            else:
                p.grad.copy_(averaged)
        offset += n


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """`torch.nn.utils.clip_grad_norm_` for a mix of sharded (DTensor) and replicated gradients: the total
    2-norm over the whole model (shards combined across ranks), then the same scaling on every gradient.
    Returns the norm before clipping."""
    params = [p for p in parameters if p.grad is not None]
    sharded = [p for p in params if isinstance(p.grad, DTensor)]
    local = [p for p in params if not isinstance(p.grad, DTensor)]
    squares = []
    for group in (sharded, local):
        if group:
            norm = torch.nn.utils.get_total_norm([p.grad for p in group], 2.0)
            if isinstance(norm, DTensor):
                norm = norm.full_tensor()  # partial norms of the shards -> the norm of the whole tensors
            squares.append(norm.float().square())
    if not squares:
        return torch.zeros(())
    total = torch.stack(squares).sum().sqrt()
    for group in (sharded, local):
        if group:  # takes parameters (it scales p.grad), never the gradients themselves
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total


@torch.no_grad()
def gather_full_lm(lm: LM) -> LM:
    """A plain `LM` holding the full weights (on the CPU) on rank 0, so that the export (written by rank 0 alone)
    and inference see ordinary tensors; the other ranks get `lm` back, still sharded, and never hold the full
    model. Collective: every rank must call it."""
    state = get_model_state_dict(lm, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return lm
    with torch.device("meta"):
        plain = LM(lm.cfg)
    plain.load_state_dict(state, assign=True)
    return plain.train(lm.training)


__all__ = ["DTYPES", "STRATEGIES", "FSDPPlan", "average_replicated_gradients", "clip_grad_norm_",
           "data_parallel_mesh", "gather_full_lm", "is_sharded", "lm_strategy_options", "parallelize_lm",
           "replicated_parameters", "sharded_strategy"]
