"""The CLAP score through `mgen evaluate`: captions from captions.jsonl, a CLAP folder with random weights and the
stand-in roberta-base tokenizer; the score is ClapScore's on the same clips and carries the checkpoint in its name."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import soundfile as sf
import torch
from clap_fixtures import COMMIT
from eval_fixtures import write_folder

from mgen.cli import main
from mgen.metrics import ClapScore
from mgen.metrics.embedders import load_embedder

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def clap_folder(hf_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers CLAP folder (laion's HTSAT-base, random init) with roberta-base's tokenizer files."""
    from transformers import ClapModel, RobertaConfig, RobertaTokenizer

    from mgen.metrics.embedders.clap import htsat_base_config

    snapshot = hf_cache / "hub" / "models--roberta-base" / "snapshots" / COMMIT
    roberta = RobertaConfig.from_pretrained(snapshot)
    text = {k: getattr(roberta, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                             "intermediate_size", "max_position_embeddings", "type_vocab_size",
                                             "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id")}
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clap") / "clap-random"
    ClapModel(htsat_base_config(text)).save_pretrained(folder)
    RobertaTokenizer.from_pretrained(snapshot).save_pretrained(folder)
    return folder


def test_clap_score_from_captions(clap_folder, tmp_path, capsys):
    gen = write_folder(tmp_path / "gen", [262.0, 330.0, 392.0], seconds=1.0)
    out = tmp_path / "out"
    assert main(["evaluate", "--gen", str(gen), "--metrics", "clap", "--clap-weights", str(clap_folder),
                 "--device", "cpu", "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    record = report["metrics"]["clap_score"]

    clap = load_embedder("clap", clap_folder)
    metric = ClapScore(clap)
    captions = [json.loads(line) for line in (gen / "captions.jsonl").read_text().splitlines()]
    audio = [torch.from_numpy(sf.read(gen / f"{c['stem']}.wav", dtype="float32")[0])[None] for c in captions]
    metric.update(audio, [c["text"] for c in captions], 32000)
    assert math.isclose(record["value"], float(metric.compute()), rel_tol=1e-6, abs_tol=1e-7)
    assert record["name"] == metric.name and record["name"].startswith("clap_score[")
    assert record["clips"] == 3 and record["ci"]["unit"] == "clips"
    assert report["models"]["clap"]["sha256"] == clap.info.weights_sha256
    assert report["reference"]["kind"] == "none" and report["metrics_asked"] == ["clap"]
    assert record["name"] in capsys.readouterr().out and record["name"] in (out / "report.md").read_text()
