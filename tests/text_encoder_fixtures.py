"""A random-init T5 encoder with a real sentencepiece tokenizer (trained here on captions), saved like a hub folder.

Shared by the text-conditioner and export tests; no network, a few seconds on a CPU.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import torch

from mgen.conditioning.text import packaged_minilm_path

MOODS = ["calm", "energetic", "dark", "happy", "sad", "dreamy", "aggressive", "relaxed"]
INSTRUMENTS = ["piano", "guitar", "violin", "drums", "synthesizer", "cello", "flute", "trumpet", "organ", "bass"]
GENRES = ["jazz", "rock", "classical", "techno", "ambient", "folk", "blues", "reggae", "funk", "pop"]
SPM_VOCAB = 60
T5_EXTRA_IDS = 100  # T5Tokenizer adds <extra_id_0..99> on top of the sentencepiece pieces


def build_t5_encoder(out: Path, d_model: int = 32, seed: int = 0) -> Path:
    """Write a T5EncoderModel (2 layers, `d_model` wide) and its T5Tokenizer to `out`; returns `out`."""
    import sentencepiece as spm
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    out.mkdir(parents=True, exist_ok=True)
    captions = [f"a {m} {g} track with {a} and {b}"
                for m, g, a, b in itertools.product(MOODS, GENRES, INSTRUMENTS, INSTRUMENTS[::-1])]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(captions), model_writer=model, vocab_size=SPM_VOCAB,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram", minloglevel=2)
    (out / "spiece.model").write_bytes(model.getvalue())
    tokenizer = T5Tokenizer.from_pretrained(out)
    assert len(tokenizer) == SPM_VOCAB + T5_EXTRA_IDS
    reference = spm.SentencePieceProcessor(model_proto=model.getvalue())
    assert tokenizer("a calm piano")["input_ids"] == reference.encode("a calm piano") + [1]  # + </s>
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5EncoderModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_custom_code_folder(folder: Path, marker: Path, config_file: str = "config.json") -> Path:
    """A model folder whose `config_file` maps the Auto classes to its own Python file; importing that file would
    write `marker` (transformers copies it to its modules cache, so the marker path is absolute)."""
    import json
    import shutil

    shutil.copytree(packaged_minilm_path(), folder)  # a real, loadable encoder...
    config = json.loads((folder / config_file).read_text()) if (folder / config_file).is_file() else {}
    config["auto_map"] = {"AutoConfig": "evil_code.EvilConfig", "AutoModel": "evil_code.EvilModel",
                          "AutoTokenizer": ["evil_code.EvilTokenizer", None]}
    if config_file == "config.json":
        config["model_type"] = "evil-bert"  # ...of a type transformers does not know: only its code could load it
    (folder / config_file).write_text(json.dumps(config))
    (folder / "evil_code.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    return folder
