"""Fuser, CFG / attribute dropout statistics, and the ConditionProvider feeding a real (tiny) LM."""

from __future__ import annotations

import math

import pytest
import torch

from mgen.conditioning import (MELODY, TEXT, AttributeDropout, ClassifierFreeGuidanceDropout, ConditionFuser,
                               ConditionProvider, ConditionTensors, MelodyConditioner, TextConditioner)
from mgen.lm.generate import SamplingParams, generate
from mgen.lm.model import LM, LMConfig

SR = 32_000


def cond(batch: int, tokens: int, dim: int = 8, fill: float = 1.0) -> ConditionTensors:
    return ConditionTensors(torch.full((batch, tokens, dim), fill), torch.ones(batch, tokens, dtype=torch.bool))


def sine(freq: float, seconds: float) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return 0.5 * torch.sin(2 * math.pi * freq * t)


# ------------------------------------------------------------------------------------------------------- fuser
def test_fuser_concatenates_cross_and_prefix_in_map_order() -> None:
    fuser = ConditionFuser({"description": "cross", "clap": "cross", "self_wav": "prefix"})
    conditions = {"self_wav": cond(2, 5, fill=3.0), "description": cond(2, 4, fill=1.0), "clap": cond(2, 1, fill=2.0)}
    conditions["description"].mask[1, 2:] = False
    out = fuser(conditions)
    assert out.cross.shape == (2, 5, 8) and out.cross_mask.shape == (2, 5)
    assert out.cross[:, :4].eq(1).all() and out.cross[:, 4].eq(2).all()  # description first, then clap
    assert out.cross_mask[1].tolist() == [True, True, False, False, True]
    assert out.prefix.shape == (2, 5, 8) and out.prefix_mask.all()
    only_cross = ConditionFuser({"description": "cross"})({"description": cond(2, 4)})
    assert only_cross.prefix is None and only_cross.prefix_mask is None


def test_fuser_rejects_mismatches() -> None:
    fuser = ConditionFuser({"description": "cross", "self_wav": "prefix"})
    with pytest.raises(ValueError, match="missing \\['self_wav'\\]"):
        fuser({"description": cond(2, 3)})
    with pytest.raises(ValueError, match="not configured \\['clap'\\]"):
        fuser({"description": cond(2, 3), "self_wav": cond(2, 3), "clap": cond(2, 1)})
    with pytest.raises(ValueError, match="batch, width"):
        fuser({"description": cond(2, 3), "self_wav": cond(3, 3)})
    with pytest.raises(ValueError, match="unknown fuse method"):
        ConditionFuser({"description": "sum"})
    with pytest.raises(ValueError, match="empty"):
        ConditionFuser({})
    with pytest.raises(ValueError, match="does not match"):
        ConditionTensors(torch.zeros(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------------- dropout
def nulled(c: ConditionTensors) -> torch.Tensor:
    """[B] bool: sample fully nulled (zeros, mask off)."""
    return ~c.mask.any(dim=1) & (c.embedding == 0).flatten(1).all(dim=1)


def test_cfg_dropout_per_batch_statistics() -> None:
    drop = ClassifierFreeGuidanceDropout(0.3, generator=torch.Generator().manual_seed(0)).train()
    draws, full = 2000, 0
    for _ in range(draws):
        out = drop({"description": cond(4, 3), "self_wav": cond(4, 2)})
        a, b = nulled(out["description"]), nulled(out["self_wav"])
        assert (a.all() and b.all()) or not (a.any() or b.any())  # all or nothing, across conditions too
        full += int(a.all())
    assert abs(full / draws - 0.3) < 0.03


def test_cfg_dropout_per_sample_statistics() -> None:
    drop = ClassifierFreeGuidanceDropout(0.3, per_sample=True, generator=torch.Generator().manual_seed(0)).train()
    dropped, mixed, draws, batch = 0, 0, 500, 8
    for _ in range(draws):
        out = drop({"description": cond(batch, 3), "self_wav": cond(batch, 2)})
        a = nulled(out["description"])
        assert torch.equal(a, nulled(out["self_wav"]))  # a sample loses all its conditions together
        dropped += int(a.sum())
        mixed += int(0 < a.sum() < batch)
    assert abs(dropped / (draws * batch) - 0.3) < 0.03
    assert mixed > draws // 2


def test_dropout_is_seeded_and_off_in_eval() -> None:
    def run(seed: int) -> list[bool]:
        drop = ClassifierFreeGuidanceDropout(0.5, seed=seed).train()
        return [bool(nulled(drop({"d": cond(2, 2)})["d"]).all()) for _ in range(50)]

    assert run(1234) == run(1234) and run(1234) != run(7)
    drop = ClassifierFreeGuidanceDropout(1.0).eval()
    assert not nulled(drop({"d": cond(2, 2)})["d"]).any()
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        ClassifierFreeGuidanceDropout(1.5)


def test_attribute_dropout_one_coin_per_attribute_per_batch() -> None:
    drop = AttributeDropout({"self_wav": 0.5}, generator=torch.Generator().manual_seed(0)).train()
    draws, gone = 2000, 0
    for _ in range(draws):
        out = drop({"description": cond(4, 3), "self_wav": cond(4, 2)})
        assert not nulled(out["description"]).any()
        wav = nulled(out["self_wav"])
        assert wav.all() or not wav.any()
        gone += int(wav.all())
    assert abs(gone / draws - 0.5) < 0.03
    assert not nulled(drop.eval()({"self_wav": cond(4, 2)})["self_wav"]).any()


# ---------------------------------------------------------------------------------------------------- provider
@pytest.fixture(scope="module")
def lm() -> LM:
    torch.manual_seed(0)
    return LM(LMConfig.preset("tiny", card=32))


@pytest.fixture(scope="module")
def provider(lm: LM) -> ConditionProvider:
    torch.manual_seed(0)
    dim = lm.cfg.dim
    return ConditionProvider(text=TextConditioner(dim), melody=MelodyConditioner(dim, frame_rate=50.0))


def test_provider_defaults_follow_the_published_recipes(provider: ConditionProvider) -> None:
    assert provider.fuser.fuse == {TEXT: "cross", MELODY: "prefix"}
    assert provider.cfg_dropout.p == 0.2 and provider.attribute_dropout.p == {MELODY: 0.5}
    assert not provider.cfg_dropout.per_sample
    text_only = ConditionProvider(text=provider.conditioners[TEXT])
    assert text_only.cfg_dropout.p == 0.3 and text_only.attribute_dropout.p == {}
    keys = set(provider.state_dict())
    assert keys == {"conditioners.description.proj.weight", "conditioners.description.proj.bias",
                    "conditioners.self_wav.proj.weight", "conditioners.self_wav.proj.bias"}


def test_provider_output_feeds_the_lm_and_trains_the_projections(provider: ConditionProvider, lm: LM) -> None:
    provider.eval()
    texts = ["a calm piano melody", None]
    wavs = torch.stack([sine(261.63, 2.0), sine(440.0, 2.0)])[:, None]
    conditioning = provider(texts, wavs, SR)
    assert conditioning.cross.shape[:2] == conditioning.cross_mask.shape and conditioning.cross.shape[-1] == 64
    assert not conditioning.cross_mask[1].any()  # the None caption is masked
    assert conditioning.prefix.shape == (2, provider.conditioners[MELODY].frames_for(2 * SR, SR), 64)
    assert conditioning.prefix_mask.all()
    codes = torch.randint(0, 32, (2, 4, 12))
    provider.zero_grad()
    logits, mask = lm.compute_predictions(codes, conditioning)
    assert logits.shape == (2, 4, 12, 32) and torch.isfinite(logits[:, mask]).all()
    logits[:, mask].sum().backward()
    for name, p in provider.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_provider_dropout_in_training_only(provider: ConditionProvider) -> None:
    texts = ["a dark techno track"] * 2
    wavs = sine(330.0, 1.0).expand(2, 1, -1)
    provider.train()
    provider.conditioners[TEXT].word_dropout = 0.0
    try:
        seen = set()
        for _ in range(24):
            c = provider(texts, wavs, SR)
            seen.add((bool(c.cross_mask.any()), bool(c.prefix_mask.any())))
        assert (False, False) in seen and (True, True) in seen and (True, False) in seen  # CFG, none, melody
    finally:
        provider.conditioners[TEXT].word_dropout = 0.3
        provider.eval()
    for _ in range(5):
        c = provider(texts, wavs, SR)
        assert c.cross_mask.any() and c.prefix_mask.all()


def test_null_conditioning_and_cfg_generation(provider: ConditionProvider, lm: LM) -> None:
    provider.eval()
    null = provider.null_conditioning(3, melody_frames=7)
    assert not null.cross_mask.any() and (null.cross == 0).all()
    assert null.prefix.shape == (3, 7, 64) and not null.prefix_mask.any()
    with torch.no_grad():
        logits = lm(torch.full((3, 4, 5), lm.special_token), null)
    assert torch.isfinite(logits).all()
    conditioning = provider(["a happy folk song"], sine(392.0, 1.0)[None, None], SR)
    codes = generate(lm, 6, conditioning, params=SamplingParams(top_k=8, cfg_coef=3.0),
                     generator=torch.Generator().manual_seed(0))
    assert codes.shape == (1, 4, 6)


def test_provider_errors(provider: ConditionProvider) -> None:
    with pytest.raises(ValueError, match="no attributes"):
        provider()
    with pytest.raises(ValueError, match="disagree on the batch size"):
        provider(["a", "b"], torch.zeros(3, 1, SR), SR)
    with pytest.raises(TypeError, match="single str"):
        provider("a caption")
    with pytest.raises(ValueError, match="empty"):
        provider([])
    with pytest.raises(ValueError, match="sample_rate is required"):
        provider(["a"], torch.zeros(1, 1, SR))
    with pytest.raises(ValueError, match=r"\[B, C, L\]"):
        provider(["a"], torch.zeros(1, SR), SR)
    with pytest.raises(ValueError, match="at least one conditioner"):
        ConditionProvider()
    with pytest.raises(ValueError, match="unknown condition"):
        ConditionProvider(melody=provider.conditioners[MELODY], attribute_dropout={"description": 0.5})
    with pytest.raises(ValueError, match="fuse map names"):
        ConditionProvider(melody=provider.conditioners[MELODY], fuse={"description": "cross"})


def test_missing_melody_is_nulled_not_an_error(provider: ConditionProvider) -> None:
    provider.eval()
    c = provider(["a calm piano melody"], melody_frames=4)
    assert c.prefix.shape == (1, 4, 64) and not c.prefix_mask.any() and c.cross_mask.any()
