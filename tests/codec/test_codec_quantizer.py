"""Residual VQ: k-means init, EMA updates, dead-code replacement, straight-through, commitment, dropout, DDP sync."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mgen.codec.quantizer as quantizer_module
from mgen.codec.quantizer import EuclideanCodebook, ResidualVectorQuantizer, RVQConfig, kmeans
from rank_launch import free_port

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("single_thread")


def _latent(seed: int = 0, b: int = 4, d: int = 8, t: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, t, generator=g)


def test_reconstruction_improves_with_more_codebooks():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(8, RVQConfig(n_q=4, card=32, kmeans_iters=10))
    x = _latent()
    rvq.train()
    rvq(x)  # k-means init of every level on its own residual
    rvq.eval()
    errors = [F.mse_loss(rvq.decode(rvq.encode(x, n_q=n)), x).item() for n in (1, 2, 4)]
    assert errors[0] < F.mse_loss(torch.zeros_like(x), x).item()
    assert errors[0] > errors[1] > errors[2], errors


def test_kmeans_init_runs_exactly_once_and_survives_checkpoints(monkeypatch):
    calls = []
    real_kmeans = quantizer_module.kmeans

    def counting_kmeans(*args, **kwargs):
        calls.append(1)
        return real_kmeans(*args, **kwargs)

    monkeypatch.setattr(quantizer_module, "kmeans", counting_kmeans)
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(8, RVQConfig(n_q=3, card=16, kmeans_iters=5)).train()
    assert all(layer.inited.item() == 0 for layer in rvq.layers)
    rvq.eval()
    rvq(_latent(0))  # eval: no init
    assert calls == []
    rvq.train()
    rvq(_latent(1))
    assert len(calls) == 3  # once per codebook
    assert all(layer.inited.item() == 1 for layer in rvq.layers)
    first = rvq.layers[0].embed.clone()
    rvq(_latent(2) * 10 + 5)  # a very different batch must not re-initialise
    assert len(calls) == 3
    # EMA blend, not a fresh k-means: codewords that the new batch did not reach stay put
    assert torch.isclose(rvq.layers[0].embed, first, atol=1e-3).all(dim=1).any()

    restored = ResidualVectorQuantizer(8, RVQConfig(n_q=3, card=16, kmeans_iters=5))
    restored.load_state_dict(rvq.state_dict())
    restored.train()(_latent(3))
    assert len(calls) == 3


def test_kmeans_lowers_distortion_and_counts_every_sample():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    g = torch.Generator().manual_seed(0)
    data = torch.cat([c + 0.5 * torch.randn(100, 2, generator=g) for c in centres])

    def distortion(means):
        return torch.cdist(data, means).min(dim=1).values.pow(2).mean().item()

    for seed in range(3):
        torch.manual_seed(seed)
        start, _ = kmeans(data, 8, num_iters=0)  # random samples
        torch.manual_seed(seed)
        means, counts = kmeans(data, 8, num_iters=20)
        assert counts.sum().item() == 400
        assert distortion(means) <= distortion(start)
        assert distortion(means) < 0.5  # every true cluster got at least one centroid


def test_ema_update_moves_codeword_towards_assigned_data():
    cb = EuclideanCodebook(4, 8, decay=0.99, epsilon=1e-5, kmeans_init=False, threshold_ema_dead_code=2.0)
    embed = 10.0 * torch.eye(8, 4) + torch.arange(8.0)[:, None] * 0.01
    embed[4:] = -10.0 * torch.eye(4) - 5
    cb.set_codebook(embed, cluster_size=10.0)
    target = embed[1] + torch.tensor([1.0, -1.0, 0.5, 0.0])
    x = target + 0.01 * torch.randn(50, 4)
    cb.train()
    codes, q = cb(x)
    assert (codes == 1).all()
    assert torch.equal(q, embed[1].expand(50, 4))  # output uses the codebook from before the update
    # expected EMA step with Laplace smoothing
    cluster = torch.full((8,), 10.0) * 0.99
    cluster[1] += 0.01 * 50
    avg = embed * 10.0 * 0.99
    avg[1] += 0.01 * x.sum(0)
    n = cluster.sum()
    smoothed = (cluster + 1e-5) / (n + 8 * 1e-5) * n
    expected = avg / smoothed[:, None]
    assert torch.allclose(cb.embed, expected, atol=1e-5)
    assert (cb.embed[1] - x.mean(0)).norm() < (embed[1] - x.mean(0)).norm()
    assert torch.allclose(cb.embed[0], embed[0], atol=1e-4)  # unassigned codes barely move


def test_dead_codes_are_replaced_by_batch_vectors():
    torch.manual_seed(0)
    cb = EuclideanCodebook(4, 16, kmeans_init=False, threshold_ema_dead_code=2.0)
    embed = torch.full((16, 4), 100.0)  # far from the data: never chosen
    embed[0] = 0.0
    embed[1] = 0.5
    cluster_size = torch.zeros(16)
    cluster_size[:2] = 50.0
    cb.set_codebook(embed, cluster_size)
    x = torch.randn(256, 4)
    cb.train()
    cb(x)
    replaced = cb.embed[2:]
    assert (replaced.norm(dim=1) < 10).all()  # moved into the data
    # each replaced code is exactly one of the batch vectors, and its EMA state is consistent with it
    assert ((replaced[:, None] - x[None]).norm(dim=-1).min(dim=1).values < 1e-6).all()
    assert torch.allclose(cb.cluster_size[2:], torch.full((14,), 2.0))
    assert torch.allclose(cb.embed_avg[2:] / cb.cluster_size[2:, None], replaced, atol=1e-5)
    # live codes are not reset
    assert cb.embed[0].norm() < 1.0 and cb.cluster_size[0] > 2
    # the replacement survives the next EMA step (it is not overwritten by embed_avg / cluster_size)
    before = cb.embed[2:].clone()
    cb.eval()
    cb(x)
    assert torch.equal(cb.embed[2:], before)


def test_straight_through_gradient_and_commitment_loss():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(8, RVQConfig(n_q=3, card=16, kmeans_iters=3))
    rvq.train()(_latent(0))  # init
    rvq.eval()
    x = _latent(1).requires_grad_(True)
    out = rvq(x)
    # forward value is the quantized latent, gradient is the identity
    assert torch.allclose(out.quantized, rvq.decode(out.codes), atol=1e-5)
    out.quantized.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))

    # commitment: mean over levels of MSE(codeword.detach(), residual)
    with torch.no_grad():
        residual = x.detach().permute(0, 2, 1).reshape(-1, 8)
        losses = []
        for layer in rvq.layers:
            q = layer.decode(layer.quantize(residual))
            losses.append(F.mse_loss(q, residual))
            residual = residual - q
    assert torch.allclose(out.penalty, torch.stack(losses).mean(), rtol=1e-5)
    x.grad = None
    rvq(x).penalty.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_quantizer_dropout_varies_codebooks_in_training_only():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(8, RVQConfig(n_q=4, card=16, kmeans_iters=2, q_dropout=True)).train()
    used = {rvq(_latent(i)).n_q for i in range(20)}
    assert used <= {1, 2, 3, 4} and len(used) > 1
    rvq.eval()
    assert rvq(_latent(0)).codes.shape[1] == 4


def test_encode_decode_shapes_and_errors():
    rvq = ResidualVectorQuantizer(8, RVQConfig(n_q=4, card=16)).eval()
    codes = rvq.encode(_latent(0, b=2, t=5))
    assert codes.shape == (2, 4, 5) and codes.dtype == torch.int64
    assert rvq.decode(codes).shape == (2, 8, 5)
    with pytest.raises(ValueError, match="latent"):
        rvq.encode(torch.randn(2, 7, 5))
    with pytest.raises(ValueError, match="n_q"):
        rvq.encode(_latent(0), n_q=5)
    with pytest.raises(ValueError, match="codes"):
        rvq.decode(torch.zeros(2, 5, 3, dtype=torch.long))


_DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch, torch.distributed as dist
    import torch.multiprocessing as mp
    sys.path.insert(0, sys.argv[1])
    from mgen.codec.quantizer import ResidualVectorQuantizer, RVQConfig

    def worker(rank, port):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=2)
        torch.manual_seed(100 + rank)  # different data and RNG on each rank
        rvq = ResidualVectorQuantizer(8, RVQConfig(n_q=3, card=16, kmeans_iters=3, q_dropout=True)).train()
        for step in range(4):
            rvq(torch.randn(2, 8, 32) * (1 + rank))
        flat = torch.cat([b.flatten() for b in rvq.buffers()])
        gathered = [torch.zeros_like(flat) for _ in range(2)]
        dist.all_gather(gathered, flat)
        if rank == 0:
            assert torch.equal(gathered[0], gathered[1]), "codebooks differ across ranks"
            print("SYNC_OK")
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(worker, args=(int(sys.argv[2]),), nprocs=2)
    """
)


def test_codebooks_stay_identical_across_ranks(tmp_path):

    port = free_port()
    script = tmp_path / "ddp_rvq.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(REPO), str(port)], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SYNC_OK" in proc.stdout
