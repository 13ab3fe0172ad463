"""Shared fixture of the codec tests: a record of the dtypes every `torch.stft` call gets."""

import pytest
import torch


@pytest.fixture
def stft_calls(monkeypatch) -> list[tuple[torch.dtype, torch.dtype, bool]]:
    """(input dtype, window dtype, CPU autocast on) of every torch.stft call made during the test."""
    calls, real = [], torch.stft

    def stft(x, *args, window=None, **kwargs):
        calls.append((x.dtype, window.dtype, torch.is_autocast_enabled("cpu")))
        return real(x, *args, window=window, **kwargs)

    monkeypatch.setattr(torch, "stft", stft)
    return calls
