"""Evaluation of music models and of folders of audio: FAD, KAD, KL, CLAP score and melody chroma against real
audio, with reports (`mgen evaluate`). Plain torch, no Lightning; the metrics are `mgen.metrics`.

- `evaluate_model`: generate from a shard split's captions (and melodies), cached and resumable, and score;
- `evaluate_folders`: score any folder of audio against a reference folder, shard split or statistics;
- `reference_statistics`: a reference's statistics (.npz) once, for later runs and for training.
"""

from mgen.evaluation.generation import GenerationSettings, clip_seed
from mgen.evaluation.models import EmbedderSpec, embedder_label
from mgen.evaluation.runner import EvalOptions, evaluate_folders, evaluate_model, reference_statistics
from mgen.evaluation.suite import METRICS, MetricSuite, flat_values, parse_metrics

__all__ = ["METRICS", "EmbedderSpec", "EvalOptions", "GenerationSettings", "MetricSuite", "clip_seed",
           "embedder_label", "evaluate_folders", "evaluate_model", "flat_values", "parse_metrics",
           "reference_statistics"]
