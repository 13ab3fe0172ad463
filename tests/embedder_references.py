"""The reference implementations the embedder tests compare against, loaded by file path with small stubs.

- torchvggish 0.2: ``mel_features.py`` (numpy only) and ``torchvggish.py`` (torch only; ``_vgg`` builds the net
  with random weights and no download);
- hear21passt 0.0.26: ``models/passt.py`` with a stub ``timm`` (it imports ``download_cached_file`` only) and
  ``models/preprocess.py`` with a stub ``torchaudio`` whose ``compliance.kaldi`` is torchaudio 2.11.1's real
  ``kaldi.py`` and whose masks (train-time only) are identities.
"""

from __future__ import annotations

import functools
from types import ModuleType, SimpleNamespace

from torch import nn

from reference_packages import load_by_path, reference_file


@functools.cache
def mel_features() -> ModuleType:
    return load_by_path("ref_torchvggish_mel_features", reference_file("torchvggish", "torchvggish/mel_features.py"))


@functools.cache
def torchvggish() -> ModuleType:
    return load_by_path("ref_torchvggish", reference_file("torchvggish", "torchvggish/torchvggish.py"))


def _package(name: str) -> ModuleType:
    module = ModuleType(name)
    module.__path__ = []  # a package, so relative imports below it resolve from sys.modules
    return module


@functools.cache
def passt() -> ModuleType:
    """hear21passt's ``models/passt.py`` (``get_model``) with timm stubbed out."""

    def download_cached_file(*args, **kwargs):
        raise AssertionError("the PaSST reference must be built with pretrained=False")

    hub = ModuleType("timm.models._hub")
    hub.download_cached_file = download_cached_file
    timm_models = _package("timm.models")
    timm_models._hub = hub
    timm = _package("timm")
    timm.models = timm_models
    stubs = {"timm": timm, "timm.models": timm_models, "timm.models._hub": hub,
             "hear21passt": _package("hear21passt"), "hear21passt.models": _package("hear21passt.models"),
             "hear21passt.models.helpers": _package("hear21passt.models.helpers")}
    with_helpers = dict(stubs)
    helpers = load_by_path("hear21passt.models.helpers.vit_helpers",
                           reference_file("hear21passt", "hear21passt/models/helpers/vit_helpers.py"), stubs)
    with_helpers["hear21passt.models.helpers.vit_helpers"] = helpers
    return load_by_path("hear21passt.models.passt", reference_file("hear21passt", "hear21passt/models/passt.py"),
                        with_helpers)


class _Identity(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


@functools.cache
def passt_preprocess() -> ModuleType:
    """hear21passt's ``models/preprocess.py`` (``AugmentMelSTFT``) over torchaudio's real ``kaldi.py``."""
    torchaudio = _package("torchaudio")
    torchaudio.transforms = SimpleNamespace(FrequencyMasking=_Identity, TimeMasking=_Identity)
    kaldi = load_by_path("ref_torchaudio_kaldi", reference_file("torchaudio", "torchaudio/compliance/kaldi.py"),
                         {"torchaudio": torchaudio})
    torchaudio.compliance = SimpleNamespace(kaldi=kaldi)
    # preprocess.py binds the stub as its global `torchaudio` at import, so forward finds the real kaldi.py later.
    return load_by_path("ref_hear21passt_preprocess",
                        reference_file("hear21passt", "hear21passt/models/preprocess.py"), {"torchaudio": torchaudio})
