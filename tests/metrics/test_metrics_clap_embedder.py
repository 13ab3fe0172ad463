"""mgen's CLAP embedder in the main environment (transformers' `ClapModel`, no laion-clap): loading a laion-layout
checkpoint and a transformers folder written here with random HTSAT-base weights, the mel frontend against
transformers' `ClapFeatureExtractor`, the crop policies, the int16 option, fadtk's frames, and bad input.

Agreement with laion-clap itself is tested in the CLAP environment (tests/metrics/test_metrics_clap_laion.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from clap_fixtures import COMMIT, fill_roberta_cache, use_hub_cache
from mgen.metrics.embedders import embed_audio, file_sha256
from mgen.metrics.embedders.base import PUBLISHED, RANDOM_WEIGHTS, UNVERIFIED
from mgen.metrics.embedders.clap import (PROTOCOL, PUBLISHED_FILE, WINDOW, ClapEmbedder, ClapMelFrontend,
                                         embedder_info, htsat_base_config, int16_round_trip, load_clap_embedder,
                                         load_roberta_tokenizer, transformers_to_laion, window_starts)

SR = 48_000
TEXTS = ["a calm jazz song with piano", "a dark techno song with drums"]


def tone(freq: float, seconds: float, amplitude: float = 0.3) -> Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


@pytest.fixture(scope="module")
def snapshot(hf_cache: Path) -> Path:
    return hf_cache / "hub" / "models--roberta-base" / "snapshots" / COMMIT


@pytest.fixture(scope="module")
def reference_model(snapshot: Path) -> torch.nn.Module:
    """A random-init transformers CLAP of laion's HTSAT-base with the stand-in roberta-base text tower."""
    from transformers import ClapModel, RobertaConfig

    roberta = RobertaConfig.from_pretrained(snapshot)
    text = {k: getattr(roberta, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                             "intermediate_size", "max_position_embeddings", "type_vocab_size",
                                             "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id")}
    torch.manual_seed(0)
    return ClapModel(htsat_base_config(text)).eval()


@pytest.fixture(scope="module")
def laion_file(reference_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model written in laion-clap's training-checkpoint layout, with the parts embeddings never use."""
    state = {f"module.{k}": v for k, v in transformers_to_laion(reference_model.state_dict()).items()}
    state["module.text_branch.embeddings.position_ids"] = 0  # what fadtk's "unpatch" leaves in the file
    state["module.audio_branch.logmel_extractor.melW"] = torch.from_numpy(ClapMelFrontend().mel_bank).float()
    state["module.audio_branch.head.weight"] = torch.randn(527, 527)
    state["module.text_transform.sequential.0.weight"] = torch.randn(512, 512)
    path = tmp_path_factory.mktemp("laion") / "music_random.pt"
    torch.save({"epoch": 15, "best_metric": np.float64(0.9014), "state_dict": state}, path)  # a numpy scalar, too
    return path


@pytest.fixture(scope="module")
def embedder(laion_file: Path) -> ClapEmbedder:
    return load_clap_embedder(laion_file, weights_label=RANDOM_WEIGHTS)


class WindowSpy:
    """Stands in for the network: records the windows and 'embeds' each as its first 512 samples, normalised."""

    def __init__(self) -> None:
        self.windows: list[Tensor] = []

    def __call__(self, windows: Sequence[Tensor]) -> Tensor:
        batch = torch.stack(list(windows))
        assert batch.shape[1:] == (WINDOW,)
        self.windows.extend(batch)
        return torch.nn.functional.normalize(batch[:, :512].float() + 1e-3, dim=-1)


@pytest.fixture
def spy(embedder: ClapEmbedder, monkeypatch: pytest.MonkeyPatch) -> WindowSpy:
    spy = WindowSpy()
    monkeypatch.setattr(embedder, "window_embeddings", spy)
    return spy


OFFSET = 2_000_000  # clip i's samples start at i * OFFSET


def ramp(clips: int, seconds: float) -> Tensor:
    """[clips, L] whose (float32-exact integer) samples give away where a window starts: window[0] - i * OFFSET."""
    length = int(seconds * SR)
    return (torch.arange(length)[None] + torch.arange(clips)[:, None] * OFFSET).float()


def test_laion_checkpoint_loads_every_weight_by_the_mapping(embedder: ClapEmbedder, laion_file: Path,
                                                            reference_model: torch.nn.Module) -> None:
    ours = embedder.model.state_dict()
    theirs = reference_model.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    info = embedder.info
    assert info.id == "clap-music_random" and info.sample_rate == SR and info.dim == 512
    assert info.protocol == PROTOCOL and info.weights == str(laion_file)
    assert info.weights_sha256 == file_sha256(laion_file) and info.weights_label == RANDOM_WEIGHTS


def test_published_checksum_names_and_labels_the_weights(laion_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mgen.metrics.embedders.clap as clap

    assert embedder_info(laion_file, laion_file).weights_label == UNVERIFIED
    monkeypatch.setitem(clap.PUBLISHED_SHA256, file_sha256(laion_file), PUBLISHED_FILE)
    info = embedder_info(laion_file, laion_file)  # a renamed copy of the published file
    assert info.id == "clap-music_audioset_epoch_15_esc_90.14" and info.weights_label == PUBLISHED
    assert embedder_info(laion_file, laion_file, RANDOM_WEIGHTS).weights_label == RANDOM_WEIGHTS


def test_text_embeddings_are_unit_vectors_of_77_tokens(embedder: ClapEmbedder) -> None:
    emb = embedder.text_embeddings(TEXTS)
    assert emb.shape == (2, 512) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(emb[0], emb[1], atol=1e-3)
    long = embedder.text_embeddings([" ".join(TEXTS * 20), " ".join(TEXTS * 40)])  # both cut to the same 77 tokens
    torch.testing.assert_close(long[0], long[1])
    with pytest.raises(ValueError, match="non-empty list"):
        embedder.text_embeddings("a single string")


def test_audio_embeddings_run_the_network(embedder: ClapEmbedder) -> None:
    noise = 0.2 * torch.randn(int(2.5 * SR), generator=torch.Generator().manual_seed(0))
    clips = torch.stack([tone(440.0, 2.5), noise])
    emb = embedder.audio_embeddings(clips)
    assert emb.shape == (2, 512) and torch.isfinite(emb).all()
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(emb[0], emb[1], atol=1e-3)
    assert embedder.window_embeddings([]).shape == (0, 512)  # e.g. embed() of empty audio: no forward


def test_mel_frontend_equals_transformers_feature_extractor_set_like_laion() -> None:
    """ClapFeatureExtractor with laion's band (50-14000 Hz) and non-fusion truncation computes the same log-mel
    (its defaults do not: 0 Hz low edge, and an HTK filter bank without normalisation under truncation='fusion')."""
    from transformers import ClapFeatureExtractor

    wav = torch.stack([tone(440.0, 10.0), 0.2 * torch.randn(10 * SR, generator=torch.Generator().manual_seed(1))])
    extractor = ClapFeatureExtractor(frequency_min=50, frequency_max=14_000, truncation="rand_trunc")
    theirs = extractor(wav.numpy(), sampling_rate=SR, return_tensors="pt")["input_features"].float()
    ours = ClapMelFrontend()(wav)
    assert ours.shape == theirs.shape == (2, 1, 1001, 64)
    loud = theirs > -60.0
    assert (ours - theirs)[loud].abs().max().item() < 0.05  # measured 0.002-0.007 dB
    default = ClapFeatureExtractor()(wav.numpy(), sampling_rate=SR, return_tensors="pt")["input_features"]
    assert (default[:, :1].float() - ours).abs().max().item() > 1.0


def test_first_crop_is_deterministic_and_short_clips_repeat_pad(embedder: ClapEmbedder, spy: WindowSpy) -> None:
    wav = ramp(2, 12.5)
    first = embedder.audio_embeddings(wav)
    assert [w[0].item() for w in spy.windows] == [0, OFFSET]
    torch.testing.assert_close(spy.windows[0], wav[0, :WINDOW])
    torch.testing.assert_close(embedder.audio_embeddings(wav), first)
    spy.windows.clear()
    short = ramp(1, 3.3)
    embedder.audio_embeddings(short)
    window, length = spy.windows[0], short.shape[-1]
    torch.testing.assert_close(window[:3 * length], short[0].repeat(3))  # int(10 / 3.3) = 3 copies
    assert (window[3 * length:] == 0).all() and WINDOW - 3 * length == int(0.1 * SR)


def test_random_crop_is_seeded_like_laion(embedder: ClapEmbedder, spy: WindowSpy) -> None:
    wav = ramp(3, 14.0)
    overflow = wav.shape[-1] - WINDOW
    embedder.reseed(5)
    a = embedder.audio_embeddings(wav, crop="random")
    starts = [int(w[0].item()) - i * OFFSET for i, w in enumerate(spy.windows)]
    assert starts == np.random.RandomState(5).randint(0, overflow + 1, size=3).tolist()  # laion's draws
    for window, clip, start in zip(spy.windows, wav, starts):
        torch.testing.assert_close(window, clip[start:start + WINDOW])
    b = embedder.audio_embeddings(wav, crop="random")  # the stream goes on: other crops
    assert not torch.allclose(a, b)
    embedder.reseed(5)
    torch.testing.assert_close(embedder.audio_embeddings(wav, crop="random"), a)  # reproducible
    embedder.reseed(6)
    assert not torch.allclose(embedder.audio_embeddings(wav, crop="random"), a)
    embedder.reseed(0)


def test_mean_crop_averages_windows_covering_the_clip(embedder: ClapEmbedder, spy: WindowSpy) -> None:
    wav = ramp(2, 25.0)
    emb = embedder.audio_embeddings(wav, crop="mean")
    assert window_starts(wav.shape[-1]) == [0, WINDOW, 15 * SR]  # the tail gets a window aligned to the end
    assert len(spy.windows) == 6
    for i, (clip, start) in enumerate((c, s) for c in range(2) for s in window_starts(wav.shape[-1])):
        torch.testing.assert_close(spy.windows[i], wav[clip, start:start + WINDOW])
    per_window = spy(spy.windows[:6]).reshape(2, 3, 512)
    torch.testing.assert_close(emb, torch.nn.functional.normalize(per_window.mean(1), dim=-1))
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))


def test_int16_round_trip_is_an_option(embedder: ClapEmbedder, spy: WindowSpy) -> None:
    wav = 1.2 * torch.sin(torch.linspace(0, 200, WINDOW))[None]  # clips beyond ±1
    embedder.audio_embeddings(wav)
    torch.testing.assert_close(spy.windows[-1], wav[0], rtol=0, atol=0)  # default: untouched (audiocraft)
    embedder.quantize_int16 = True
    try:
        embedder.audio_embeddings(wav)
    finally:
        embedder.quantize_int16 = False
    expected = torch.from_numpy((np.clip(wav[0].numpy(), -1, 1) * 32767.0).astype(np.int16) / np.float32(32767.0))
    torch.testing.assert_close(spy.windows[-1], expected.float(), rtol=0, atol=0)  # laion's numpy round trip
    assert spy.windows[-1].abs().max() == 1.0


def test_embed_gives_fadtks_one_second_chunks(embedder: ClapEmbedder, spy: WindowSpy) -> None:
    wav = 0.5 * torch.sin(torch.linspace(0, 500, int(2.5 * SR)))
    frames = embedder.embed(wav)
    assert frames.shape == (3, 512)  # chunks starting at 0, 1 and 2 s
    quantized = int16_round_trip(wav)
    assert not torch.equal(quantized, wav)
    for i, window in enumerate(spy.windows):
        part = quantized[i * SR:i * SR + WINDOW]
        torch.testing.assert_close(window[:part.shape[0]], part)
        assert (window[part.shape[0]:] == 0).all()
    assert embed_audio(embedder, wav[None].expand(2, -1), SR).shape == (3, 512)  # the base contract: [C, L]


def test_transformers_folder_loads_and_refuses_remote_code(reference_model: torch.nn.Module, snapshot: Path,
                                                           embedder: ClapEmbedder, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import RobertaTokenizer

    folder = tmp_path / "larger_clap_music"
    reference_model.save_pretrained(folder)
    RobertaTokenizer.from_pretrained(snapshot).save_pretrained(folder)
    use_hub_cache(monkeypatch, tmp_path / "empty-hub")  # the tokenizer must come from the folder
    loaded = load_clap_embedder(folder)
    assert loaded.info.id == "clap-larger_clap_music" and loaded.info.weights_label == UNVERIFIED
    assert loaded.info.weights_sha256 == file_sha256(folder / "model.safetensors")
    torch.testing.assert_close(loaded.text_embeddings(TEXTS), embedder.text_embeddings(TEXTS))

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.ClapModel"}}))
    with pytest.raises(ValueError, match="remote code"):
        load_clap_embedder(folder)
    fused = {**config, "audio_config": {**config["audio_config"], "enable_fusion": True}}
    (folder / "config.json").write_text(json.dumps(fused))
    with pytest.raises(ValueError, match="fusion"):
        load_clap_embedder(folder)
    tiny = {**config, "audio_config": {**config["audio_config"], "patch_embeds_hidden_size": 96}}
    (folder / "config.json").write_text(json.dumps(tiny))
    with pytest.raises(ValueError, match="HTSAT-base"):
        load_clap_embedder(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_clap_embedder(folder)


def fake_laion_state(width: int = 128, stage3_blocks: int = 12, **extra: Tensor) -> dict[str, Tensor]:
    """Just the keys the architecture check reads: cheap stand-ins for other laion-clap variants."""
    state = {"module.audio_branch.patch_embed.proj.weight": torch.zeros(width, 1, 4, 4),
             "module.text_branch.embeddings.word_embeddings.weight": torch.zeros(8, 4),
             "module.text_branch.pooler.dense.weight": torch.zeros(4, 4)}
    for block in range(stage3_blocks):
        state[f"module.audio_branch.layers.2.blocks.{block}.norm1.weight"] = torch.zeros(width * 4)
    return {**state, **extra}


@pytest.mark.parametrize(("state", "message"), [
    (fake_laion_state(96, 6), "HTSAT-tiny"),
    (fake_laion_state(256), "HTSAT-large"),
    (fake_laion_state(**{"module.audio_branch.fusion_model.local_att.0.weight": torch.zeros(1)}), "fusion"),
    ({"module.audio_branch.conv_block1.conv1.weight": torch.zeros(1)}, "not a laion-clap HTSAT"),
    ({"module.text_branch.embeddings.position_ids": 0}, "not a CLAP checkpoint"),  # fadtk's "unpatched" int entry
])
def test_other_architectures_are_refused_by_name(state: dict, message: str, tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match=message):
        load_clap_embedder(path)


def test_missing_or_unreadable_weights(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.pt.*music_audioset_epoch_15_esc_90\.14\.pt.*laion_clap"):
        load_clap_embedder(tmp_path / "missing.pt")
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "extra": WindowSpy()}, pickled)  # needs unpickling code
    with pytest.raises(ValueError, match="weights_only"):
        load_clap_embedder(pickled)
    htsat_base_config({}).save_pretrained(tmp_path / "no-weights")  # config.json only
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_clap_embedder(tmp_path / "no-weights")


def test_missing_or_toy_roberta_tokenizer(embedder: ClapEmbedder, snapshot: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(load_roberta_tokenizer(snapshot, embedder.model)) > 256  # tokenizer=PATH works
    use_hub_cache(monkeypatch, tmp_path / "empty")  # transformers 5 may still build a 5-token tokenizer
    with pytest.raises((ValueError, FileNotFoundError), match="roberta-base.*vocab.json"):
        load_roberta_tokenizer("roberta-base", embedder.model)
    fill_roberta_cache(tmp_path / "weights-only", with_tokenizer=False)  # transformers builds a 5-token tokenizer
    use_hub_cache(monkeypatch, tmp_path / "weights-only")
    with pytest.raises((ValueError, FileNotFoundError), match="roberta-base.*vocab.json"):
        load_roberta_tokenizer("roberta-base", embedder.model)


def test_bad_audio_and_options(embedder: ClapEmbedder, laion_file: Path) -> None:
    assert embedder.embed(torch.zeros(0)).shape == (0, 512)  # no audio, no frames (no forward)
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        embedder.audio_embeddings(torch.zeros(SR))
    with pytest.raises(ValueError, match="NaN"):
        embedder.audio_embeddings(torch.full((1, SR), float("nan")))
    with pytest.raises(ValueError, match="crop"):
        embedder.audio_embeddings(torch.zeros(1, SR), crop="middle")
    with pytest.raises(ValueError, match=r"\[L\]"):
        embedder.embed(torch.zeros(1, SR))
    with pytest.raises(ValueError, match="crop"):
        load_clap_embedder(laion_file, crop="middle")
