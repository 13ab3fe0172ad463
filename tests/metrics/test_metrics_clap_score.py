"""ClapScore: the mean text–audio cosine of a CLAP model (a small real module here), clips batched by length
without reordering, the checkpoint's name and hash in the logged name, and clear errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from metric_fixtures import ToyClap, sine
from mgen.metrics import ClapScore, checkpoint_label

SR = 48_000


@torch.no_grad()
def test_score_is_the_mean_cosine_in_input_order() -> None:
    clap = ToyClap()
    clips = [sine(220, 1.0, SR), sine(330, 0.7, SR), sine(440, 1.0, SR) + 0.1 * sine(880, 1.0, SR)]
    texts = ["a low hum", "a short beep", "a bright chord"]
    metric = ClapScore(clap)
    metric.update([c[None] for c in clips], texts[:2] + [texts[2]], SR)
    assert sorted(clap.audio_shapes) == [(1, int(0.7 * SR)), (2, SR)]  # equal lengths share one call
    audio = torch.cat([clap.audio_embeddings(c[None]) for c in clips])
    expected = F.cosine_similarity(audio.double(), clap.text_embeddings(texts).double(), dim=1, eps=1e-8)
    assert float(metric.compute()) == pytest.approx(float(expected.mean()), rel=1e-6)
    assert metric.compute().dtype == torch.float64
    # stereo at another rate: channel mean, then resampled to CLAP's 48 kHz
    other = ClapScore(clap)
    other.update([sine(220, 1.0, 32_000)[None].repeat(2, 1)], ["a low hum"], 32_000)
    assert clap.audio_shapes[-1] == (1, SR)
    interval = metric.bootstrap(n_boot=100, seed=0)
    assert interval.value == pytest.approx(float(metric.compute()), rel=1e-6) and interval.low <= interval.high


def test_logged_name_carries_checkpoint_and_hash() -> None:
    clap = ToyClap()
    assert ClapScore(clap).name == "clap_score[music_audioset_epoch_15_esc_90.14:1a2b3c4d]"
    assert ClapScore(clap).describe()["clap"]["weights_sha256"].startswith("1a2b3c4d")
    assert checkpoint_label(replace(clap.info, weights="/m/larger_clap_music", weights_sha256="")) == \
        "larger_clap_music:nohash"
    assert checkpoint_label(replace(clap.info, weights="", weights_sha256="")) == "clap-toy:nohash"


def test_bad_input() -> None:
    clap = ToyClap()
    metric = ClapScore(clap)
    tone = sine(220, 1.0, SR)[None]
    with pytest.raises(ValueError, match="2 clips but 1 captions"):
        metric.update([tone, tone], ["one"], SR)
    with pytest.raises(ValueError, match="generated clip 'b': empty caption"):
        metric.update([tone, tone], ["one", " "], SR, names=["a", "b"])
    with pytest.raises(ValueError, match="generated clip 0 of the batch is silent"):
        metric.update([torch.zeros(1, SR)], ["silence"], SR)
    with pytest.raises(ValueError, match="CLAP score has no clip to score"):
        metric.compute()
    skip = ClapScore(clap, silence="skip")
    skip.update([torch.zeros(1, SR), tone], ["silence", "a hum"], SR)
    assert int(skip.clips) == 1 and int(skip.silent_clips) == 1
    with pytest.raises(TypeError, match="clap must have"):
        ClapScore(object())
