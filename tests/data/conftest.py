"""The shard fixtures of the data reader and data-preparation tests (token_shards here: the 3-per-shard token
shards of the reader tests, not the LM's)."""

from data_module_fixtures import corrupt_shards, music_shards, tiny_codec_dir, token_shards, tone_shards  # noqa: F401
