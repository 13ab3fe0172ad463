"""load_embedder: where weights come from, how they are labelled, the codec and user-named embedders."""

from __future__ import annotations

import json
import math
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from embedder_references import torchvggish

from mgen.codec.checkpoint import save_codec
from mgen.codec.model import Codec
from mgen.metrics.embedders import embed_audio, file_sha256, load_embedder, write_random_weights
from mgen.metrics.embedders import vggish as vggish_module
from mgen.metrics.embedders.weights import sidecar_path

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def vggish_weights(tmp_path_factory) -> Path:
    return write_random_weights("vggish", tmp_path_factory.mktemp("vggish") / "vggish-random.pth", seed=0)


@pytest.fixture()
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache (torch.hub.get_dir follows $TORCH_HOME)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_missing_weights_name_the_file_and_where_it_comes_from(torch_home, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_embedder("vggish")
    message = str(err.value)
    assert str(torch_home / "vggish-10086976.pth") in message
    assert "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth" in message
    assert "never downloads" in message and not torch_home.exists()
    with pytest.raises(FileNotFoundError, match="passt-s-f128-20sec-p16-s10-ap.474-swa.pt"):
        load_embedder("passt")
    with pytest.raises(FileNotFoundError, match="passt-s-f128-30sec-p16-s10-ap.473-swa.pt.*kkoutini/PaSST/releases"):
        load_embedder("passt-30s")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope.pth'}.*vggish-10086976.pth"):
        load_embedder("vggish", tmp_path / "nope.pth")


def test_random_weights_are_labelled_and_published_layout(vggish_weights, torch_home, capsys):
    sidecar = json.loads(sidecar_path(vggish_weights).read_text())
    assert sidecar["kind"] == "vggish" and sidecar["sha256"] == file_sha256(vggish_weights)
    # The file loads strictly into torchvggish's own network: it is the published layout.
    torchvggish()._vgg(postprocess=False).load_state_dict(torch.load(vggish_weights, weights_only=True), strict=True)

    # Found in the torch hub cache under the published name, with its sidecar: random-weights, sha256 printed.
    torch_home.mkdir(parents=True)
    cached = torch_home / "vggish-10086976.pth"
    shutil.copy(vggish_weights, cached)
    shutil.copy(sidecar_path(vggish_weights), sidecar_path(cached))
    embedder = load_embedder("vggish")
    info = embedder.info
    assert (info.id, info.sample_rate, info.dim, info.protocol) == ("vggish", 16000, 128, "google-fad-v1")
    assert info.weights == str(cached) and info.weights_sha256 == sidecar["sha256"]
    assert info.weights_label == "random-weights"
    assert f"sha256 {sidecar['sha256']} (random-weights)" in capsys.readouterr().err
    assert embed_audio(embedder, torch.randn(2, 48000), 22050).shape == (3, 128)  # 2.18 s: windows at 0, 0.5, 1 s

    # A sidecar that records another file's checksum does not count; no sidecar: unverified.
    sidecar_path(cached).write_text(json.dumps({**sidecar, "sha256": "0" * 64}))
    assert load_embedder("vggish").info.weights_label == "unverified"
    sidecar_path(cached).unlink()
    assert load_embedder("vggish", normalization="audiocraft").info.protocol == "google-fad-v1+audiocraft-pcm16"


def test_published_label_needs_the_published_checksum(vggish_weights, monkeypatch):
    """torch hub names carry a sha256 prefix (vggish-10086976.pth): a file whose sha256 starts with it is
    labelled published, whatever it is called (the check is the digest, not the name)."""
    sha = file_sha256(vggish_weights)
    assert not sha.startswith(vggish_module.PUBLISHED_SHA256_PREFIX)
    monkeypatch.setattr(vggish_module, "PUBLISHED_SHA256_PREFIX", sha[:8])
    assert load_embedder("vggish", vggish_weights).info.weights_label == "published"


def test_bad_weight_files_are_clear_errors(vggish_weights, tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(ValueError, match=f"{text}: cannot read VGGish weights with weights_only=True"):
        load_embedder("vggish", text)
    state = torch.load(vggish_weights, weights_only=True)
    small = {k: torch.zeros(v.shape[:1]) for k, v in state.items()}  # the right keys, cheap tensors
    torch.save({k: v for k, v in small.items() if k != "embeddings.4.bias"}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"missing \['embeddings.4.bias'\]"):
        load_embedder("vggish", tmp_path / "partial.pth")
    torch.save(small, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"features.0.weight has shape \(64,\), expected \(64, 1, 3, 3\)"):
        load_embedder("vggish", tmp_path / "shape.pth")
    # torchvggish's GitHub VGGish carries its PCA parameters in the state dict: they are not used, so ignored.
    torch.save(state | {"pproc.pca_eigen_vectors": torch.eye(128), "pproc.pca_means": torch.zeros(128, 1)},
               tmp_path / "with_pca.pth")
    assert load_embedder("vggish", tmp_path / "with_pca.pth").info.weights_label == "unverified"
    torch.save({"weights": {"a": 1}, "code": torch.nn.ReLU()}, tmp_path / "pickled.pth")  # needs unpickling code
    with pytest.raises(ValueError, match="weights_only=True"):
        load_embedder("vggish", tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="unknown option\\(s\\) \\['window'\\] for the vggish embedder"):
        load_embedder("vggish", vggish_weights, window=2.0)
    with pytest.raises(ValueError, match="is a directory; VGGish weights are one state dict file"):
        load_embedder("vggish", tmp_path)
    with pytest.raises(ValueError, match="unknown embedder 'mert'"):
        load_embedder("mert")
    with pytest.raises(ValueError, match="clap embedder needs weights"):
        load_embedder("clap")


# ---- codec encoder --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def codec_export(tmp_path_factory) -> tuple[Codec, Path]:
    torch.manual_seed(0)
    codec = Codec.from_preset("tiny").eval()
    return codec, save_codec(codec, tmp_path_factory.mktemp("codec") / "export")


def test_codec_encoder_frames_are_the_prequantisation_latent(codec_export, tmp_path):
    codec, export = codec_export
    embedder = load_embedder("codec", export)
    sha = file_sha256(export / "model.safetensors")
    info = embedder.info
    assert info.id == f"codec-encoder-{sha[:12]}" and info.weights_sha256 == sha
    assert info.weights_label == "mgen-codec" and info.protocol == "codec-latent-v1"
    assert info.sample_rate == 32000 and info.dim == codec.config.seanet.dimension == 32
    wav = 0.1 * torch.randn(32000 + 100)
    frames = embedder.embed(wav)
    assert frames.shape == (math.ceil(wav.shape[0] / codec.hop_length), 32)  # 50 Hz frames
    with torch.no_grad():
        assert torch.allclose(frames, codec.encoder(wav[None, None])[0].T, atol=1e-6)
    # An LM export's codec/ is found; another codec's weights give another id.
    lm_export = tmp_path / "lm"
    shutil.copytree(export, lm_export / "codec")
    (lm_export / "config.json").write_text(json.dumps({"kind": "mgen-lm"}))
    assert load_embedder("codec", lm_export).info.id == info.id
    torch.manual_seed(1)
    other = save_codec(Codec.from_preset("tiny"), tmp_path / "other")
    assert load_embedder("codec", other).info.id != info.id
    with pytest.raises(ValueError, match="codec embedder needs weights"):
        load_embedder("codec")
    with pytest.raises(FileNotFoundError, match="codec checkpoint not found"):
        load_embedder("codec", tmp_path / "missing")


# ---- user-named modules ---------------------------------------------------------------------------------------

USER_MODULE = '''
import torch
from torch import nn
from mgen.metrics.embedders.base import AudioEmbedder, EmbedderInfo


class FrameNet(nn.Module):
    """Not an AudioEmbedder: forward [B, L] -> [B, frames, dim], 100 frames/s at 8 kHz."""

    sample_rate = 8000

    def __init__(self, dim: int = 4):
        super().__init__()
        self.dim = dim
        self.conv = nn.Conv1d(1, dim, kernel_size=80, stride=80)

    def forward(self, wav):
        return self.conv(wav[:, None]).transpose(1, 2)


class Contract(AudioEmbedder):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(160, 3)
        self.info = EmbedderInfo(id="mine", sample_rate=16000, dim=3, protocol="mine-v2")

    def embed(self, wav):
        return self.proj(wav[: wav.shape[0] // 160 * 160].reshape(-1, 160))


class NoRate(nn.Module):
    def forward(self, wav):
        return wav[:, None, :2]
'''


@pytest.fixture()
def user_module(tmp_path, monkeypatch) -> str:
    """An importable module (what an installed package would be)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "my_embedders.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return "my_embedders"


def test_user_module_wrapped_with_weights_only_state_dicts(user_module, tmp_path):
    import my_embedders  # written by the fixture

    torch.manual_seed(0)
    net = my_embedders.FrameNet(dim=6)
    save_file(net.state_dict(), str(tmp_path / "net.safetensors"))
    name = f"module:{user_module}:FrameNet"
    embedder = load_embedder(name, tmp_path / "net.safetensors", kwargs={"dim": 6})
    info = embedder.info
    assert (info.id, info.sample_rate, info.dim) == (f"{name}(dim=6)", 8000, 6)
    assert info.weights_label == "unverified" and info.weights_sha256 == file_sha256(tmp_path / "net.safetensors")
    wav = torch.randn(8000)
    with torch.no_grad():
        assert torch.allclose(embedder.embed(wav), net(wav[None])[0])
    assert embedder.embed(wav).shape == (100, 6)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    assert torch.allclose(load_embedder(name, tmp_path / "net.pt", kwargs={"dim": 6}).embed(wav), net(wav[None])[0])
    with pytest.raises(ValueError, match="does not fit"):  # default dim=4 vs weights for 6
        load_embedder(name, tmp_path / "net.pt")


def test_user_module_following_the_contract_keeps_its_protocol(user_module, tmp_path):
    embedder = load_embedder(f"module:{user_module}:Contract")
    assert embedder.info.protocol == "mine-v2" and embedder.info.id == f"module:{user_module}:Contract"
    assert embedder.info.weights == "" and embedder.info.weights_label == "unverified"
    assert embedder.embed(torch.randn(1000)).shape == (6, 3)


def test_user_module_errors(user_module, tmp_path):
    with pytest.raises(ValueError, match="module:<python module>:<class>"):
        load_embedder("module:just_a_module")
    with pytest.raises(ValueError, match="cannot import 'not_installed_anywhere'"):
        load_embedder("module:not_installed_anywhere:Model")
    with pytest.raises(ValueError, match="my_embedders.torch is not an nn.Module class"):
        load_embedder(f"module:{user_module}:torch")
    with pytest.raises(ValueError, match="give sample_rate= and dim="):
        load_embedder(f"module:{user_module}:NoRate")
    assert load_embedder(f"module:{user_module}:NoRate", sample_rate=8000, dim=2).embed(torch.ones(5)).shape == (1, 2)
    with pytest.raises(FileNotFoundError, match="weights for module:my_embedders:FrameNet not found"):
        load_embedder(f"module:{user_module}:FrameNet", tmp_path / "missing.pt")


def test_model_folders_needing_remote_code_are_refused(user_module, tmp_path):
    folder = tmp_path / "MERT-v1-95M"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "modeling_MERT.MERTModel"}}))
    (folder / "modeling_MERT.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ValueError, match="auto_map.*trust_remote_code"):
        load_embedder(f"module:{user_module}:FrameNet", folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    with pytest.raises(ValueError, match="needs a class with from_pretrained"):
        load_embedder(f"module:{user_module}:FrameNet", folder)
