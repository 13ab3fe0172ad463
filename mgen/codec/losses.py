"""Codec training losses: reconstruction, adversarial, feature matching, the gradient balancer, and SI-SNR.

Everything here is a plain function or `nn.Module` over waveforms ``[B, C, L]`` (or discriminator outputs), so the
Lightning module in `mgen.train` only has to pick weights. The mel filterbank is `mgen.dsp.mel_filterbank_htk`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from mgen.codec.distributed import is_distributed
from mgen.dsp import mel_filterbank_htk, power_spectrogram

# ---- reconstruction ------------------------------------------------------------------------------------------


def l1_waveform_loss(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean absolute sample error."""
    return F.l1_loss(estimate, reference)


class MelSpectrogram(nn.Module):
    """Power mel spectrogram (optionally ``log10(floor + mel)``) of ``[..., L]`` → ``[..., n_mels, frames]``.

    The signal is reflect-padded by ``(n_fft - hop) / 2`` on both sides and framed without centring, so frames
    cover the whole signal symmetrically.
    """

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
        log: bool = False,
        floor_level: float = 1e-5,
    ) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.log = log
        self.floor_level = floor_level
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank_htk(sample_rate, n_fft, n_mels, f_min, f_max),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 whatever the input and autocast (bf16-mixed training): no bf16 FFT on CUDA, and a bf16 filterbank
        product would round the loss."""
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1]).float()
        with torch.autocast(x.device.type, enabled=False):
            pad = (self.n_fft - self.hop_length) // 2
            x = F.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
            power = power_spectrogram(x, self.n_fft, self.hop_length, self.window, center=False)  # [N, F, T]
            mel = torch.einsum("nft,fm->nmt", power, self.filters.to(power.dtype))
            if self.log:
                mel = torch.log10(self.floor_level + mel)
        return mel.reshape(*lead, *mel.shape[-2:])


class MultiScaleMelLoss(nn.Module):
    """Σ over windows 2^6…2^10 (hop win/4) of L1(mel) + sqrt(win−1)·MSE(log mel), averaged over the terms.

    Small windows resolve transients, large ones pitch; the log term weights quiet bands, the linear one loud ones.
    """

    def __init__(
        self,
        sample_rate: int,
        range_start: int = 6,
        range_end: int = 11,
        n_mels: int = 64,
        f_min: float = 64.0,
        f_max: float | None = None,
        normalized: bool = True,
        alphas: bool = True,
        floor_level: float = 1e-5,
    ) -> None:
        super().__init__()
        self.linear = nn.ModuleList()
        self.logs = nn.ModuleList()
        self.alphas: list[float] = []
        for i in range(range_start, range_end):
            win = 2**i
            kw = dict(sample_rate=sample_rate, n_fft=win, hop_length=win // 4, n_mels=n_mels, f_min=f_min, f_max=f_max)
            self.linear.append(MelSpectrogram(**kw, log=False, floor_level=floor_level))
            self.logs.append(MelSpectrogram(**kw, log=True, floor_level=floor_level))
            self.alphas.append(math.sqrt(win - 1) if alphas else 1.0)
        self.normalized = normalized

    def forward(self, estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if estimate.shape != reference.shape:
            raise ValueError(f"mel loss needs equal shapes, got {tuple(estimate.shape)} and {tuple(reference.shape)}")
        loss = estimate.new_zeros((), dtype=torch.float32)  # the mels are float32 whatever the input
        for lin, log, alpha in zip(self.linear, self.logs, self.alphas):
            loss = loss + F.l1_loss(lin(estimate), lin(reference))
            loss = loss + alpha * F.mse_loss(log(estimate), log(reference))
        return loss / (2 * len(self.alphas)) if self.normalized else loss


# ---- adversarial -------------------------------------------------------------------------------------------


def hinge_generator_loss(logits_fake: Sequence[torch.Tensor]) -> torch.Tensor:
    """Generator side of the hinge GAN: ``mean_d(-mean(D_d(fake)))``; lower when the critic scores fakes higher."""
    return torch.stack([-lf.mean() for lf in logits_fake]).mean()


def hinge_discriminator_loss(
    logits_real: Sequence[torch.Tensor], logits_fake: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``mean_d(mean(relu(1 − D(real))) + mean(relu(1 + D(fake))))``; zero once real ≥ 1 and fake ≤ −1."""
    if len(logits_real) != len(logits_fake):
        raise ValueError("real and fake logits must come from the same sub-discriminators")
    terms = [F.relu(1 - lr).mean() + F.relu(1 + lf).mean() for lr, lf in zip(logits_real, logits_fake)]
    return torch.stack(terms).mean()


def feature_matching_loss(
    fmaps_real: Sequence[Sequence[torch.Tensor]], fmaps_fake: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """L1 between discriminator features of real and fake audio, mean over layers, then over sub-discriminators."""
    if len(fmaps_real) != len(fmaps_fake):
        raise ValueError("real and fake feature maps must come from the same sub-discriminators")
    per_disc = []
    for real, fake in zip(fmaps_real, fmaps_fake):
        per_disc.append(torch.stack([F.l1_loss(f, r.detach()) for r, f in zip(real, fake)]).mean())
    return torch.stack(per_disc).mean()


# ---- metrics -----------------------------------------------------------------------------------------------


def si_snr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SNR in dB over the last axis (``[..., L]`` → ``[...]``); higher is better."""
    est = estimate - estimate.mean(dim=-1, keepdim=True)
    ref = reference - reference.mean(dim=-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    target = scale * ref
    noise = est - target
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


# ---- balancer ----------------------------------------------------------------------------------------------


class LossBalancer:
    """Backpropagates several losses through a shared ``output`` with weights that are *fractions of the gradient*.

    Each loss's gradient ``g_i`` w.r.t. ``output`` is rescaled by an EMA of its norm, so the gradient reaching the
    model is ``Σ_i (w_i / Σw) · total_norm · g_i / avg‖g_i‖``: loss ``i`` contributes ``w_i / Σw`` of it whatever the
    natural scale of the loss. This makes the weights portable between losses (mel vs adversarial) and datasets.
    With ``balance=False`` it is the plain weighted sum ``Σ w_i · g_i``.

    Losses must depend on the model only through ``output``; other terms (e.g. the VQ commitment penalty) are
    backpropagated separately by the caller, either before (``penalty.backward(retain_graph=True)``) or after
    (``balancer.backward(..., retain_graph=True)``), since both graphs share the encoder.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        *,
        balance: bool = True,
        total_norm: float = 1.0,
        ema_decay: float = 0.999,
        per_batch_item: bool = True,
        epsilon: float = 1e-12,
    ) -> None:
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"loss weights must be >= 0, got {dict(weights)}")
        self.weights = dict(weights)
        self.balance = balance
        self.total_norm = total_norm
        self.ema_decay = ema_decay
        self.per_batch_item = per_batch_item
        self.epsilon = epsilon
        self._ema_sum: dict[str, float] = {}
        self._ema_count: dict[str, float] = {}
        self.last_grad_norms: dict[str, float] = {}

    def _average(self, norms: dict[str, float]) -> dict[str, float]:
        """Bias-corrected EMA (the first value is returned as is, not shrunk toward zero)."""
        out = {}
        for name, value in norms.items():
            self._ema_sum[name] = self.ema_decay * self._ema_sum.get(name, 0.0) + value
            self._ema_count[name] = self.ema_decay * self._ema_count.get(name, 0.0) + 1.0
            out[name] = self._ema_sum[name] / self._ema_count[name]
        return out

    def _grad_norm(self, grad: torch.Tensor) -> torch.Tensor:
        if self.per_batch_item and grad.dim() > 1:
            return grad.flatten(1).norm(dim=1).mean()
        return grad.norm()

    def backward(
        self, losses: Mapping[str, torch.Tensor], output: torch.Tensor, *, retain_graph: bool = False
    ) -> dict[str, torch.Tensor]:
        """Backpropagate ``losses`` into ``output``'s graph; returns the effective (rescaled) loss values to log."""
        out_grad, effective = self.gradient(losses, output)
        output.backward(out_grad, retain_graph=retain_graph)
        return effective

    def surrogate(self, losses: Mapping[str, torch.Tensor], output: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """A scalar whose gradient w.r.t. the model equals the balanced gradient, plus the effective losses.

        ``(output * g).sum()`` with ``g`` the balanced output gradient (detached): adding other terms (the VQ
        penalty) and calling one ``backward`` on the sum gives one backward pass per step, which is what DDP
        and Lightning's precision plugins (``manual_backward``) expect.
        """
        out_grad, effective = self.gradient(losses, output)
        return (output * out_grad.detach()).sum(), effective

    def gradient(
        self, losses: Mapping[str, torch.Tensor], output: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The balanced gradient w.r.t. ``output`` (same shape) and the effective loss values; no backward."""
        unknown = set(losses) - set(self.weights)
        if unknown:
            raise ValueError(f"no weight for loss(es) {sorted(unknown)}; weights are {self.weights}")
        if not losses:
            raise ValueError("LossBalancer.backward needs at least one loss")
        if not self.balance:
            total = sum(self.weights[name] * loss for name, loss in losses.items())
            (grad,) = torch.autograd.grad(total, [output], retain_graph=True)
            return grad, {name: (self.weights[name] * loss).detach() for name, loss in losses.items()}

        grads: dict[str, torch.Tensor] = {}
        norms: dict[str, torch.Tensor] = {}
        for name, loss in losses.items():
            (grad,) = torch.autograd.grad(loss, [output], retain_graph=True, allow_unused=True)
            if grad is None:
                raise ValueError(f"loss {name!r} does not depend on the balanced output")
            grads[name] = grad
            norms[name] = self._grad_norm(grad).detach()
        names = list(norms)
        stacked = torch.stack([norms[n] for n in names])
        if is_distributed():  # average the statistics so every rank applies the same scales
            dist.all_reduce(stacked)
            stacked = stacked / dist.get_world_size()
        values = dict(zip(names, stacked.tolist()))
        self.last_grad_norms = values
        averaged = self._average(values)
        total_weight = sum(self.weights[n] for n in names)
        if total_weight <= 0:
            raise ValueError("the weights of the given losses sum to zero")
        out_grad = torch.zeros_like(output)
        effective: dict[str, torch.Tensor] = {}
        for name in names:
            scale = self.weights[name] / total_weight * self.total_norm / (self.epsilon + averaged[name])
            out_grad = out_grad + scale * grads[name]
            effective[name] = (scale * losses[name]).detach()
        return out_grad, effective

    def state_dict(self) -> dict:
        return {"ema_sum": dict(self._ema_sum), "ema_count": dict(self._ema_count)}

    def load_state_dict(self, state: Mapping) -> None:
        self._ema_sum = dict(state["ema_sum"])
        self._ema_count = dict(state["ema_count"])


__all__ = [
    "l1_waveform_loss",
    "MelSpectrogram",
    "MultiScaleMelLoss",
    "hinge_generator_loss",
    "hinge_discriminator_loss",
    "feature_matching_loss",
    "si_snr",
    "LossBalancer",
]
