"""PasstKLD: audiocraft's KL (reference ‖ generated, 1e-6 on the generated side) on hand-made distributions, and
its window rules (non-overlapping, no padding, ≤ 0.15 s dropped, one distribution per window, 20 s windows) with a
small real classifier module (eval notes §1 KLD, §7 (f))."""

from __future__ import annotations

import math

import pytest
import torch

from metric_fixtures import ToyClassifier, sine
from mgen.metrics import PasstKLD, kl_divergence

SR = 32_000


def test_kl_divergence_by_hand_including_zero_reference_mass() -> None:
    generated = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    reference = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    pq = kl_divergence(generated, reference)  # KL(reference ‖ generated): 0 log 0 = 0 where the reference has none
    assert pq[0] == pytest.approx(-math.log(0.5 + 1e-6), rel=1e-12)
    assert pq[1] == pytest.approx(sum(q * (math.log(q) - math.log(q + 1e-6)) for q in (0.2, 0.3, 0.5)), abs=1e-15)
    qp = kl_divergence(reference, generated)  # the reverse: eps now on the reference side
    assert qp[0] == pytest.approx(0.5 * (math.log(0.5) - math.log(1 + 1e-6)) + 0.5 * (math.log(0.5) - math.log(1e-6)),
                                  rel=1e-12)
    assert torch.isfinite(qp).all()


@torch.no_grad()
def manual_kld(classifier: ToyClassifier, pairs: list[tuple[torch.Tensor, torch.Tensor]], window: int) -> dict:
    """The protocol written out plainly: one window at a time."""
    pq, qp, count = 0.0, 0.0, 0
    for gen, ref in pairs:
        gen = gen[: ref.shape[-1]]
        for g, r in zip(torch.split(gen, window), torch.split(ref, window)):
            if g.shape[-1] <= 4800:
                continue
            p = torch.softmax(classifier.logits(g[None]), -1).double()
            q = torch.softmax(classifier.logits(r[None]), -1).double()
            pq += float(torch.nn.functional.kl_div((p + 1e-6).log(), q, reduction="sum"))
            qp += float(torch.nn.functional.kl_div((q + 1e-6).log(), p, reduction="sum"))
            count += 1
    return {"kld": pq / count, "kld_qp": qp / count, "kld_both": (pq + qp) / count, "count": count}


def test_windows_pairs_and_values_follow_the_protocol() -> None:
    classifier = ToyClassifier(window_seconds=1.0)
    gens = [sine(440, 2.5, SR) + 0.05 * sine(1200, 2.5, SR), sine(300, 2.3, SR), sine(500, 1.2, SR)]
    refs = [sine(445, 2.1, SR), sine(350, 2.2, SR), sine(800, 1.151, SR)]
    metric = PasstKLD(classifier)
    metric.update([g[None] for g in gens], [r[None] for r in refs], SR)
    # 2.1 s -> 1 s + 1 s + 0.1 s (dropped); 2.2 s -> 1 s + 1 s + 0.2 s; 1.151 s -> 1 s + 0.151 s (4832 > 4800)
    assert int(metric.segments) == 2 + 3 + 2 and int(metric.pairs) == 3
    seen_lengths = sorted({shape[-1] for shape in classifier.seen})
    assert seen_lengths == [4832, 6400, SR]  # no padding, windows ≤ 0.15 s never reach the model
    result = metric.compute()
    expected = manual_kld(classifier, list(zip(gens, refs)), SR)
    for key in ("kld", "kld_qp", "kld_both"):
        assert float(result[key]) == pytest.approx(expected[key], rel=1e-5)
    assert float(result["kld"]) > 0.01
    described = metric.describe()
    assert described["protocol"] == "audiocraft-passt-kld-v2" and described["windows"] == 7
    assert described["classifier"]["id"] == "toy-passt" and described["window_seconds"] == 1.0


def test_twenty_second_windows_and_exact_cutoff() -> None:
    classifier = ToyClassifier(window_seconds=20.0)
    metric = PasstKLD(classifier)
    assert metric.window == 20 * SR and metric.min_samples == 4800
    clip = sine(220, 45.0, SR)[None]
    metric.update([clip], [clip * 0.9], SR)
    assert int(metric.segments) == 3  # 20 s + 20 s + 5 s
    assert [shape for shape in classifier.seen] == [(2, 20 * SR), (1, 5 * SR)] * 2
    exact = PasstKLD(ToyClassifier(), window_seconds=1.0)
    exact.update([sine(220, 1.0, SR + 4800)[None]], [sine(330, 1.0, SR + 4800)[None]], SR)  # last window 4800
    assert int(exact.segments) == 1


def test_generated_cut_to_reference_length_and_resampled_reference() -> None:
    classifier = ToyClassifier(window_seconds=1.0)
    long_gen, ref = sine(440, 3.0, SR), sine(440, 1.6, SR) * 0.5
    cut = PasstKLD(classifier)
    cut.update([long_gen[None]], [ref[None]], SR)
    same = PasstKLD(classifier)
    same.update([long_gen[None, :ref.shape[-1]]], [ref[None]], SR)
    assert torch.equal(cut.pq_sum, same.pq_sum) and int(cut.segments) == 2
    with pytest.warns(RuntimeWarning, match="generated clip 'a' is shorter than its reference .* cut to the common"):
        short = PasstKLD(classifier)
        short.update([ref[None]], [long_gen[None]], SR, names=["a"])
    assert int(short.segments) == 2
    # a reference at 16 kHz is brought to the classifier's 32 kHz first
    resampled = PasstKLD(classifier)
    resampled.update([long_gen[None]], [sine(440, 1.6, 16_000)[None]], SR, reference_sample_rate=16_000)
    assert int(resampled.segments) == 2 and float(resampled.compute()["kld"]) < 0.05


def test_bad_input_and_bootstrap() -> None:
    classifier = ToyClassifier(window_seconds=1.0)
    metric = PasstKLD(classifier)
    tone = sine(440, 1.0, SR)[None]
    with pytest.raises(ValueError, match="2 generated clips but 1 reference clips"):
        metric.update([tone, tone], [tone], SR)
    with pytest.raises(ValueError, match="reference clip 0 of the batch is silent .*remove it from the reference"):
        metric.update([tone], [torch.zeros(1, SR)], SR)
    with pytest.raises(ValueError, match="generated clip 'x' is silent"):
        metric.update([torch.zeros(1, SR)], [tone], SR, names=["x"])
    nan = tone.clone()
    nan[0, 5] = float("nan")
    with pytest.raises(ValueError, match="generated clip 0 of the batch contains NaN"):
        metric.update([nan], [tone], SR)
    with pytest.raises(ValueError, match="KLD has no window to score: 0 pair"):
        metric.compute()
    metric.update([tone[:, :4000]], [tone[:, :4000]], SR)  # 0.125 s: nothing to score
    with pytest.raises(ValueError, match="none longer than 0.15 s"):
        metric.compute()
    keep = PasstKLD(classifier, silence="keep")
    keep.update([torch.zeros(1, SR), tone], [tone, tone * 0.5], SR)
    assert int(keep.silent_clips) == 1 and int(keep.segments) == 2
    for i in range(6):
        keep.update([sine(300 + 50 * i, 1.0, SR)[None]], [sine(320 + 40 * i, 1.0, SR)[None]], SR)
    interval = keep.bootstrap(n_boot=200, seed=0)
    assert interval == keep.bootstrap(n_boot=200, seed=0) and interval.low <= interval.value <= interval.high
    assert interval.value == pytest.approx(float(keep.compute()["kld"]), rel=1e-6)
    assert keep.bootstrap("kld_both").value == pytest.approx(float(keep.compute()["kld_both"]), rel=1e-6)
    with pytest.raises(TypeError, match="classifier must have"):
        PasstKLD(object())
