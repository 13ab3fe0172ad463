"""Evaluation metrics (plain torch + torchmetrics, no Lightning): FAD, FAD-inf, per-song FAD, KAD, PaSST KL,
CLAP score, melody chroma cosine, and the audio embedders they run on (`mgen.metrics.embedders`).

Every metric is a `torchmetrics.Metric` whose states sync across ranks; the models they run (embedders, the PaSST
classifier, CLAP) are duck-typed, frozen and deliberately not submodules (see `embedding_metric`).
"""

from mgen.metrics.bootstrap import ConfidenceInterval, bootstrap_ratio
from mgen.metrics.chroma_cosine import ChromaCosine
from mgen.metrics.clap_score import ClapScore, checkpoint_label
from mgen.metrics.clips import SILENCE_PEAK
from mgen.metrics.fad import FadInf, FrechetAudioDistance, PerSongFad, fit_inverse_n
from mgen.metrics.frechet import FrechetReference, GaussianStats, frechet_distance
from mgen.metrics.kad import KernelAudioDistance, kernel_audio_distance, median_pairwise_distance
from mgen.metrics.kld import KLD_PROTOCOL, PasstKLD, kl_divergence
from mgen.metrics.reference import FAD_PROTOCOL, ReferenceStats

__all__ = [
    "FAD_PROTOCOL", "KLD_PROTOCOL", "SILENCE_PEAK", "ChromaCosine", "ClapScore", "ConfidenceInterval", "FadInf",
    "FrechetAudioDistance", "FrechetReference", "GaussianStats", "KernelAudioDistance", "PasstKLD", "PerSongFad",
    "ReferenceStats", "bootstrap_ratio", "checkpoint_label", "fit_inverse_n", "frechet_distance",
    "kernel_audio_distance", "kl_divergence", "median_pairwise_distance",
]
