"""Text conditioner: the packaged MiniLM encoder and a T5 encoder built here, frozen, masked, projected."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from text_encoder_fixtures import build_t5_encoder, write_custom_code_folder

from mgen.conditioning.text import TextConditioner, load_text_encoder, packaged_minilm_path, word_dropout

DIM = 24


@pytest.fixture(scope="module")
def minilm() -> TextConditioner:
    torch.manual_seed(0)
    return TextConditioner(DIM).eval()


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init T5 encoder with a real (trained here) sentencepiece tokenizer, saved like a hub folder."""
    return build_t5_encoder(tmp_path_factory.mktemp("t5"))


def test_packaged_minilm_is_a_real_sentence_encoder(minilm: TextConditioner) -> None:
    assert packaged_minilm_path().is_dir()
    assert len(minilm.tokenizer) == 30522 and minilm.proj.in_features == 384
    assert type(minilm.encoder).__name__ == "BertModel"
    assert minilm.max_length == 512


def test_minilm_token_states_are_those_of_all_minilm_l6_v2(minilm: TextConditioner) -> None:
    """Mean-pooled token states reproduce the sentence-transformers embedding of the same packaged model."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = ["a calm piano melody with soft strings", "rock"]
    tokens, _ = minilm.tokenize(texts)
    with torch.no_grad():
        states = minilm.encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    mask = tokens["attention_mask"][..., None].float()
    pooled = torch.nn.functional.normalize((states.last_hidden_state * mask).sum(1) / mask.sum(1), dim=-1)
    st = sentence_transformers.SentenceTransformer(str(packaged_minilm_path()), device="cpu")
    expected = st.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-4)


def test_shapes_masks_and_zeroed_padding(minilm: TextConditioner) -> None:
    texts = ["a calm piano melody with soft strings and a slow beat", "rock", None, ""]
    out = minilm(texts)
    tokens, _ = minilm.tokenize(texts)
    b, s = tokens["input_ids"].shape
    assert out.embedding.shape == (b, s, DIM) and out.mask.shape == (b, s) and out.mask.dtype == torch.bool
    assert out.mask[0].all() and out.mask[1].sum() == 3  # [CLS] rock [SEP]
    assert not out.mask[2].any() and not out.mask[3].any()  # None and "" are fully masked
    assert (out.embedding[~out.mask] == 0).all()
    assert (out.embedding[out.mask].abs().sum(-1) > 0).all()
    # padding does not change the real tokens: the short prompt alone gives the same states
    alone = minilm(["rock"])
    torch.testing.assert_close(alone.embedding[0, :3], out.embedding[1, :3], atol=1e-5, rtol=1e-4)


def test_frozen_encoder_outside_state_dict_and_without_grads(minilm: TextConditioner) -> None:
    assert set(minilm.state_dict()) == {"proj.weight", "proj.bias"}
    assert {n for n, _ in minilm.named_parameters()} == {"proj.weight", "proj.bias"}
    minilm.zero_grad()
    minilm(["a happy tune", "sad strings"]).embedding.sum().backward()
    assert minilm.proj.weight.grad is not None and minilm.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in minilm.encoder.parameters())
    minilm.train()
    try:
        minilm(["x"])
        assert not minilm.encoder.training  # the encoder stays in eval mode (no dropout) while training
    finally:
        minilm.eval()


def test_checkpoint_round_trip_carries_only_the_projection(t5_dir: Path) -> None:
    a = TextConditioner(DIM, encoder=t5_dir).eval()
    b = TextConditioner(DIM, encoder=t5_dir).eval()
    b.load_state_dict(a.state_dict())  # strict: nothing missing, nothing extra
    torch.testing.assert_close(a(["a jazz track"]).embedding, b(["a jazz track"]).embedding)


def test_to_moves_the_unregistered_encoder(t5_dir: Path) -> None:
    cond = TextConditioner(DIM, encoder=t5_dir).eval().to(torch.float64)
    assert next(cond.encoder.parameters()).dtype == torch.float64
    assert cond(["a dark techno track"]).embedding.dtype == torch.float64


def test_t5_encoder_path(t5_dir: Path) -> None:
    cond = TextConditioner(DIM, encoder=t5_dir).eval()
    assert type(cond.encoder).__name__ == "T5EncoderModel" and cond.proj.in_features == 32
    out = cond(["a calm piano", "a happy jazz track with flute and organ", None])
    lengths = [len(cond.tokenizer(t)["input_ids"]) for t in ("a calm piano", "a happy jazz track with flute and organ")]
    assert out.embedding.shape == (3, max(lengths), DIM)
    assert out.mask.sum(1).tolist() == [*lengths, 0]
    assert (out.embedding[~out.mask] == 0).all()


def test_word_dropout_only_in_training(t5_dir: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    cond = TextConditioner(DIM, encoder=t5_dir, word_dropout=0.3, generator=gen)
    prompt = " ".join(["a calm jazz track with piano and cello"] * 4)  # 32 words
    cond.eval()
    full = cond([prompt])
    assert torch.equal(full.embedding, cond([prompt]).embedding)  # eval: deterministic, nothing dropped
    cond.train()
    kept = [int(cond([prompt]).mask.sum()) for _ in range(20)]
    assert max(kept) < int(full.mask.sum())
    assert len(set(kept)) > 1


def test_word_dropout_rate() -> None:
    gen = torch.Generator().manual_seed(1)
    words = 20_000
    kept = len(word_dropout(" ".join(["w"] * words), 0.3, gen).split())
    assert abs(1 - kept / words - 0.3) < 0.015
    assert word_dropout("only", 0.0, gen) == "only"


def test_dropping_every_word_masks_the_sample(t5_dir: Path) -> None:
    cond = TextConditioner(DIM, encoder=t5_dir, word_dropout=0.999).train()
    out = cond(["calm piano", "dark drums"])
    assert not out.mask.any() and (out.embedding == 0).all()


def test_too_long_prompts_are_truncated_with_a_warning_or_rejected(t5_dir: Path) -> None:
    prompt = "a calm piano track with violin and flute"
    cond = TextConditioner(DIM, encoder=t5_dir, max_length=5).eval()
    with pytest.warns(UserWarning, match="exceed max_length=5"):
        out = cond([prompt, "jazz"])
    assert out.embedding.shape[1] == 5 and out.mask[0].all()
    strict = TextConditioner(DIM, encoder=t5_dir, max_length=5, too_long="error").eval()
    with pytest.raises(ValueError, match="exceed max_length=5"):
        strict([prompt])


def test_bad_inputs_raise_clear_errors(minilm: TextConditioner, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        minilm([])
    with pytest.raises(TypeError, match="list of str"):
        minilm("a single string")
    with pytest.raises(TypeError, match="str or None"):
        minilm(["ok", 3])
    with pytest.raises(OSError, match="not available locally"):
        load_text_encoder(tmp_path / "nothing-here")
    with pytest.raises(OSError, match="not available locally"):
        load_text_encoder("google/flan-t5-not-in-any-cache")
    with pytest.raises(ValueError, match="too_long"):
        TextConditioner(DIM, too_long="ignore")


def test_tokenizer_without_its_vocabulary_is_refused(t5_dir: Path, tmp_path: Path) -> None:
    """transformers 5: T5Tokenizer(vocab_file=...) builds a tokenizer holding only special tokens, silently."""
    from transformers import T5EncoderModel, T5Tokenizer

    broken = T5Tokenizer(vocab_file=str(t5_dir / "spiece.model"))
    broken.save_pretrained(tmp_path)
    T5EncoderModel.from_pretrained(t5_dir).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="ordinary tokens"):
        TextConditioner(DIM, encoder=tmp_path)


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_encoder_folder_with_custom_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    config_file: str) -> None:
    """An `auto_map` makes transformers offer to run the folder's Python (it asks on stdin); mgen refuses first."""
    import io
    import sys

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))  # a user who would answer yes
    marker = tmp_path / "MARKER"
    folder = write_custom_code_folder(tmp_path / "encoder", marker, config_file)
    with pytest.raises(ValueError, match=rf"{config_file} has an 'auto_map'.*never runs code from a model folder"):
        load_text_encoder(folder)
    with pytest.raises(ValueError, match="auto_map"):
        TextConditioner(DIM, str(folder))
    assert not marker.exists()


def test_transformers_is_always_told_not_to_trust_remote_code(t5_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `from_pretrained` mgen makes, for MiniLM (AutoModel) and T5 (T5EncoderModel), passes
    trust_remote_code=False and local_files_only=True."""
    import transformers

    calls: list[tuple[str, dict]] = []
    for name in ("AutoConfig", "AutoTokenizer", "AutoModel", "T5EncoderModel"):
        cls = getattr(transformers, name)
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _name=name, _original=original, **kwargs):
            calls.append((_name, kwargs))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    load_text_encoder(None)
    load_text_encoder(t5_dir)
    assert {name for name, _ in calls} == {"AutoConfig", "AutoTokenizer", "AutoModel", "T5EncoderModel"}
    for name, kwargs in calls:
        assert kwargs.get("trust_remote_code") is False and kwargs.get("local_files_only") is True, (name, kwargs)
