"""An offline stand-in for 'roberta-base' in a temporary HF cache, for every CLAP test (either environment).

laion-clap builds its text branch with ``RobertaModel.from_pretrained('roberta-base')`` and its tokenizer with
``RobertaTokenizer.from_pretrained('roberta-base')``; mgen's transformers CLAP embedder needs the tokenizer. Here a
small random-init Roberta (roberta-base's width and layer-norm eps, one layer) is saved under that name with a
byte-level BPE tokenizer trained in-process on `CAPTIONS`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

BPE_VOCAB = 400
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
COMMIT = "0" * 40
CAPTIONS = [f"a {m} {g} song with {i}" for m, g, i in itertools.product(
    ["calm", "energetic", "dark", "happy", "sad", "dreamy"], ["jazz", "rock", "techno", "folk", "pop", "blues"],
    ["piano", "guitar", "violin", "drums", "cello", "flute", "synthesizer", "organ"])]


def fill_roberta_cache(hub: Path, with_tokenizer: bool = True) -> None:
    """hub/models--roberta-base as an offline HF cache: random-init small Roberta (+ a real BPE tokenizer)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    snapshot = hub / "models--roberta-base" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (hub / "models--roberta-base" / "refs").mkdir()
    (hub / "models--roberta-base" / "refs" / "main").write_text(COMMIT)
    vocab_size = 50
    if with_tokenizer:
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(CAPTIONS, vocab_size=BPE_VOCAB, min_frequency=1, special_tokens=ROBERTA_SPECIALS)
        bpe.save_model(str(snapshot))  # vocab.json + merges.txt, the files roberta-base ships
        learned = len(json.loads((snapshot / "vocab.json").read_text()))
        assert 256 < learned <= BPE_VOCAB  # the 256 byte symbols + merges (the corpus saturates below 400)
        tokenizer = RobertaTokenizer.from_pretrained(snapshot)
        assert len(tokenizer) == learned and tokenizer.pad_token_id == 1
        assert tokenizer.convert_ids_to_tokens(tokenizer("calm piano")["input_ids"])[0] == "<s>"
        tokenizer.save_pretrained(snapshot)
        vocab_size = len(tokenizer)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=vocab_size, hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                           intermediate_size=128, max_position_embeddings=130, type_vocab_size=1,
                           layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    RobertaModel(config).save_pretrained(snapshot)


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """HF_HOME with the stand-in roberta-base, for the whole test module."""
    import huggingface_hub.constants

    home = tmp_path_factory.mktemp("hf_home")
    fill_roberta_cache(home / "hub")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(home))
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
        yield home


def use_hub_cache(monkeypatch: pytest.MonkeyPatch, hub: Path) -> None:
    """Point huggingface_hub at `hub` for one test (e.g. a cache without roberta-base, or without its tokenizer)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
