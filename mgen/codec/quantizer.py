"""Residual vector quantizer (RVQ) with EMA codebooks, as in EnCodec / SoundStream.

Each of the K codebooks quantizes what the previous ones left over, so codebook 0 carries the coarse content and
later ones refine it. Codebooks are not trained by gradient: they are exponential moving averages of the vectors
assigned to them (k-means in online form), initialised by k-means on the first training batch, with unused
("dead") codewords re-seeded from the current batch. The encoder gets gradients through a straight-through
estimator plus a commitment loss that pulls its output towards the chosen codewords.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from mgen.codec.distributed import is_distributed


@dataclass
class RVQConfig:
    """Residual VQ settings; the defaults are the published EnCodec values except ``n_q``/``card``."""

    n_q: int = 4
    card: int = 2048
    decay: float = 0.99
    epsilon: float = 1e-5
    kmeans_init: bool = True
    kmeans_iters: int = 50
    threshold_ema_dead_code: float = 2.0
    q_dropout: bool = False

    def __post_init__(self) -> None:
        if self.n_q < 1 or self.card < 2:
            raise ValueError(f"RVQ needs n_q >= 1 and card >= 2, got n_q={self.n_q}, card={self.card}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"RVQ decay must be in [0, 1), got {self.decay}")

    def to_dict(self) -> dict:
        return asdict(self)


def squared_distances(x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """``||x_i - e_j||^2`` for ``x [M, D]`` and ``embed [N, D]`` → ``[M, N]``, via one matmul."""
    return x.pow(2).sum(1, keepdim=True) - 2 * x @ embed.t() + embed.pow(2).sum(1)[None, :]


def kmeans(samples: torch.Tensor, num_clusters: int, num_iters: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on ``samples [M, D]``; returns centroids ``[N, D]`` and cluster sizes ``[N]``.

    Centroids start at random samples (drawn with replacement when there are fewer samples than clusters);
    a cluster that loses all its members keeps its previous centroid.
    """
    m = samples.shape[0]
    if m >= num_clusters:
        idx = torch.randperm(m, device=samples.device)[:num_clusters]
    else:
        idx = torch.randint(0, m, (num_clusters,), device=samples.device)
    means = samples[idx].clone()
    for _ in range(num_iters):
        assign = squared_distances(samples, means).argmin(dim=-1)
        counts = torch.bincount(assign, minlength=num_clusters)
        sums = torch.zeros_like(means).index_add_(0, assign, samples)
        new_means = sums / counts.clamp(min=1).unsqueeze(1).to(samples.dtype)
        means = torch.where((counts == 0).unsqueeze(1), means, new_means)
    assign = squared_distances(samples, means).argmin(dim=-1)
    counts = torch.bincount(assign, minlength=num_clusters).to(samples.dtype)
    return means, counts


class EuclideanCodebook(nn.Module):
    """One codebook of ``card`` vectors of size ``dim``, updated by EMA in training mode.

    State is all buffers (``inited``, ``cluster_size``, ``embed``, ``embed_avg``) so it lives in checkpoints, and
    it is kept consistent: ``embed ≈ embed_avg / cluster_size`` at all times.
    """

    def __init__(
        self,
        dim: int,
        card: int,
        *,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iters: int = 50,
        threshold_ema_dead_code: float = 2.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.card = card
        self.decay = decay
        self.epsilon = epsilon
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.threshold_ema_dead_code = threshold_ema_dead_code
        # Random normal codewords so an untrained model still gives spread-out codes; k-means replaces them.
        self.register_buffer("inited", torch.tensor([0.0 if kmeans_init else 1.0]))
        self.register_buffer("cluster_size", torch.zeros(card))
        self.register_buffer("embed", torch.randn(card, dim))
        self.register_buffer("embed_avg", torch.zeros(card, dim))

    @torch.no_grad()
    def set_codebook(self, embed: torch.Tensor, cluster_size: torch.Tensor | float = 1.0) -> None:
        """Overwrite the codewords (and a matching EMA state) and mark the codebook as initialised."""
        self.embed.copy_(embed)
        self.cluster_size.copy_(torch.as_tensor(cluster_size, dtype=self.cluster_size.dtype).expand(self.card))
        self.embed_avg.copy_(self.embed * self.cluster_size.unsqueeze(1))
        self.inited.fill_(1.0)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codeword for each row of ``x [M, D]`` → ``[M]``."""
        return squared_distances(x.to(self.embed.dtype), self.embed).argmin(dim=-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.embed)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize ``x [M, D]`` → (codes ``[M]``, codewords ``[M, D]``); in training also update the codebook."""
        x = x.detach()
        if self.training and not bool(self.inited.item()):
            self._init_from_data(x)
        codes = self.quantize(x)
        quantized = self.decode(codes)
        if self.training:
            self._ema_update(x.to(self.embed.dtype), codes)
        return codes, quantized.to(x.dtype)

    @torch.no_grad()
    def _init_from_data(self, x: torch.Tensor) -> None:
        embed, counts = kmeans(x.to(self.embed.dtype), self.card, self.kmeans_iters)
        self.embed.copy_(embed)
        self.cluster_size.copy_(counts)
        self.embed_avg.copy_(embed * counts.unsqueeze(1))
        self.inited.fill_(1.0)
        if is_distributed():  # every rank must start from the same codebook: rank 0's
            for buf in (self.embed, self.cluster_size, self.embed_avg, self.inited):
                dist.broadcast(buf, src=0)

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        counts = torch.bincount(codes, minlength=self.card).to(self.embed.dtype)
        sums = torch.zeros_like(self.embed).index_add_(0, codes, x)
        if is_distributed():  # global statistics keep the codebooks identical on every rank
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        # Laplace smoothing: no division by zero for empty clusters, total mass preserved.
        smoothed = (self.cluster_size + self.epsilon) / (n + self.card * self.epsilon) * n
        self.embed.copy_(self.embed_avg / smoothed.unsqueeze(1))
        self._replace_dead_codes(x)

    @torch.no_grad()
    def _replace_dead_codes(self, x: torch.Tensor) -> None:
        if self.threshold_ema_dead_code <= 0:
            return
        dead = self.cluster_size < self.threshold_ema_dead_code
        if not bool(dead.any()):
            return  # cluster_size is synchronised, so every rank takes the same branch
        n_dead = int(dead.sum())
        samples = x[torch.randint(0, x.shape[0], (n_dead,), device=x.device)]
        # Reset the EMA state too (not only `embed`), otherwise the next EMA step would undo the replacement.
        self.embed[dead] = samples
        self.cluster_size[dead] = self.threshold_ema_dead_code
        self.embed_avg[dead] = samples * self.threshold_ema_dead_code
        if is_distributed():
            for buf in (self.embed, self.cluster_size, self.embed_avg):
                dist.broadcast(buf, src=0)


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # [B, D, T], straight-through when the input requires grad
    codes: torch.Tensor  # [B, n_q, T]
    penalty: torch.Tensor  # scalar commitment loss, mean over the codebooks used
    n_q: int


class ResidualVectorQuantizer(nn.Module):
    """K `EuclideanCodebook`s applied to successive residuals of a latent ``[B, D, T]``."""

    def __init__(self, dimension: int, cfg: RVQConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or RVQConfig()
        self.config = cfg
        self.dimension = dimension
        self.layers = nn.ModuleList(
            EuclideanCodebook(
                dimension,
                cfg.card,
                decay=cfg.decay,
                epsilon=cfg.epsilon,
                kmeans_init=cfg.kmeans_init,
                kmeans_iters=cfg.kmeans_iters,
                threshold_ema_dead_code=cfg.threshold_ema_dead_code,
            )
            for _ in range(cfg.n_q)
        )

    @property
    def n_q(self) -> int:
        return len(self.layers)

    @property
    def card(self) -> int:
        return self.config.card

    def _active_codebooks(self, n_q: int | None) -> int:
        if n_q is not None:
            if not 1 <= n_q <= self.n_q:
                raise ValueError(f"n_q must be in [1, {self.n_q}], got {n_q}")
            return n_q
        if self.training and self.config.q_dropout:
            # Quantizer dropout: a random bitrate per batch teaches the decoder to work with fewer codebooks.
            k = torch.randint(1, self.n_q + 1, (1,), device=self.layers[0].embed.device)
            if is_distributed():  # every rank must run the same codebooks, or the EMA all-reduces deadlock
                dist.broadcast(k, src=0)
            return int(k.item())
        return self.n_q

    def forward(self, x: torch.Tensor, n_q: int | None = None) -> QuantizerOutput:
        if x.dim() != 3 or x.shape[1] != self.dimension:
            raise ValueError(f"quantizer expects a latent [B, {self.dimension}, T], got {tuple(x.shape)}")
        n_q = self._active_codebooks(n_q)
        b, d, t = x.shape
        flat = x.permute(0, 2, 1).reshape(-1, d)
        residual = flat
        total = torch.zeros_like(flat)
        codes, losses = [], []
        for layer in self.layers[:n_q]:
            idx, q = layer(residual)
            losses.append(F.mse_loss(q.detach(), residual))  # commitment: encoder output → codeword
            residual = residual - q.detach()
            total = total + q
            codes.append(idx)
        # One straight-through estimator on the sum (per-layer STEs would scale the gradient by n_q).
        quantized = flat + (total - flat).detach() if flat.requires_grad else total
        return QuantizerOutput(
            quantized=quantized.reshape(b, t, d).permute(0, 2, 1),
            codes=torch.stack(codes, dim=1).reshape(b, t, n_q).permute(0, 2, 1),
            penalty=torch.stack(losses).mean(),
            n_q=n_q,
        )

    @torch.no_grad()
    def encode(self, x: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """Latent ``[B, D, T]`` → codes ``[B, n_q, T]`` (no codebook updates, whatever the mode)."""
        if x.dim() != 3 or x.shape[1] != self.dimension:
            raise ValueError(f"quantizer expects a latent [B, {self.dimension}, T], got {tuple(x.shape)}")
        n_q = self.n_q if n_q is None else n_q
        if not 1 <= n_q <= self.n_q:
            raise ValueError(f"n_q must be in [1, {self.n_q}], got {n_q}")
        b, d, t = x.shape
        residual = x.permute(0, 2, 1).reshape(-1, d)
        codes = []
        for layer in self.layers[:n_q]:
            idx = layer.quantize(residual)
            residual = residual - layer.decode(idx).to(residual.dtype)
            codes.append(idx)
        return torch.stack(codes, dim=1).reshape(b, t, n_q).permute(0, 2, 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, T]`` (K ≤ n_q, first K codebooks) → latent ``[B, D, T]``."""
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.n_q:
            raise ValueError(f"quantizer expects codes [B, K<={self.n_q}, T], got {tuple(codes.shape)}")
        out = 0
        for k in range(codes.shape[1]):
            out = out + self.layers[k].decode(codes[:, k])
        return out.permute(0, 2, 1)


__all__ = [
    "RVQConfig",
    "EuclideanCodebook",
    "ResidualVectorQuantizer",
    "QuantizerOutput",
    "kmeans",
    "squared_distances",
]
