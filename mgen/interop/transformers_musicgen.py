"""A whole mgen model as transformers' `MusicgenForConditionalGeneration` (+ its `MusicgenProcessor`).

transformers' MusicGen runs: T5 encoder -> `enc_to_dec_proj` -> states zeroed where the attention mask is 0 ->
decoder cross-attention over the delay pattern -> EnCodec decode. mgen's `TextConditioner` is the same
computation (frozen encoder, a Linear with bias, masked positions zeroed), so its projection becomes
`enc_to_dec_proj`, the LM the decoder (`lm_to_transformers`) and the codec the audio encoder
(`codec_to_transformers`). What has no place in that model (another text encoder, melody or CLAP conditions,
other patterns, biases) is refused with the reason.

The generation config carries the MusicGen defaults mgen samples with too (top-k 250, guidance 3) and a
`max_length` covering the training window. transformers 5 quirk: without an `attention_mask`, `generate` infers
the text mask from the *audio* pad token (= codebook size) instead of T5's, so the padding of shorter prompts is
attended to: always pass the processor's `attention_mask`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mgen.atomic import atomic_directory
from mgen.conditioning import TEXT
from mgen.conditioning.text import T5_ENCODERS

if TYPE_CHECKING:
    from mgen.musicgen import MusicGen

T5_FAMILY = tuple(T5_ENCODERS)  # model types whose encoder loads as transformers' text_encoder


def _text_conditioner(model: "MusicGen") -> Any:
    """The text conditioner when `model` has exactly what transformers' MusicGen expresses, else ValueError."""
    conditioners = model.conditioner.conditioners
    problems = []
    other = sorted(set(conditioners) - {TEXT})
    if other:
        problems.append(f"its {', '.join(other)} condition(s) (melody chroma prefix / CLAP) have no counterpart in "
                        f"MusicgenForConditionalGeneration, which is conditioned on text only")
    text = conditioners[TEXT] if TEXT in conditioners else None
    if text is None:
        problems.append("it has no text conditioner")
    else:
        if model.conditioner.fuser.fuse.get(TEXT) != "cross":
            problems.append("its text condition is fused as a prefix; transformers' MusicGen uses cross-attention")
        model_type = text.encoder.config.model_type
        if model_type not in T5_FAMILY:
            problems.append(f"its text encoder is a {model_type!r} model ({text.encoder_name}); transformers' "
                            f"MusicGen pairs the decoder with a T5-family encoder and tokenizer")
        elif text.proj.in_features == model.lm.cfg.dim:
            problems.append(f"the T5 width equals the LM width ({model.lm.cfg.dim}): transformers then feeds the T5 "
                            f"states to the decoder unprojected (enc_to_dec_proj exists only when they differ), "
                            f"so mgen's text projection has no place")
    if model.lm.cfg.norm_eps != 1e-5:
        problems.append(f"its LayerNorm eps is {model.lm.cfg.norm_eps}; transformers' MusicGen uses 1e-5")
    if problems:
        raise ValueError("cannot export this model in transformers format: " + "; ".join(problems))
    return text


def to_transformers(model: "MusicGen") -> tuple[Any, Any]:
    """(MusicgenForConditionalGeneration in eval mode, MusicgenProcessor) with the weights of `model`."""
    from transformers import (  # heavy import
        EncodecFeatureExtractor, GenerationConfig, MusicgenConfig, MusicgenForConditionalGeneration,
        MusicgenProcessor)

    from mgen.interop.encodec import codec_to_transformers
    from mgen.interop.musicgen import lm_to_transformers

    text = _text_conditioner(model)
    decoder = lm_to_transformers(model.lm)
    stereo = decoder.config.audio_channels == 2
    if stereo != (model.codec.channels == 2):
        raise ValueError(f"cannot export this model in transformers format: the LM's codebook layout is "
                         f"{'stereo' if stereo else 'mono'} but the codec has {model.codec.channels} channel(s)")
    try:
        audio = codec_to_transformers(model.codec)
    except ValueError as err:
        raise ValueError(f"cannot export this model in transformers format: the codec does not convert to "
                         f"EncodecModel: {err}") from err
    card, n_q = model.lm.cfg.card, model.lm.cfg.n_q
    delays = list(model.lm.cfg.pattern_options.get("delays", range(n_q)))
    # transformers' output keeps max_length - 1 - max(delays) frames: cover the training window
    max_length = round(model.max_window_seconds * model.codec.frame_rate) + 1 + max(delays)
    decoder_config = decoder.config.to_dict()
    decoder_config.update(decoder_start_token_id=card,
                          max_position_embeddings=max(decoder.config.max_position_embeddings, max_length))
    text_config = {k: v for k, v in text.encoder.config.to_dict().items() if k != "_name_or_path"}  # a local path
    config = MusicgenConfig(text_encoder=text_config, audio_encoder=audio.config.to_dict(), decoder=decoder_config)
    hf = MusicgenForConditionalGeneration(config).eval()
    hf.text_encoder.load_state_dict(text.encoder.state_dict())
    hf.enc_to_dec_proj.load_state_dict(text.proj.state_dict())
    hf.decoder.load_state_dict(decoder.state_dict())
    hf.audio_encoder.load_state_dict(audio.state_dict())
    hf.generation_config = GenerationConfig(
        decoder_start_token_id=card, pad_token_id=card, bos_token_id=card, do_sample=True, top_k=250,
        guidance_scale=3.0, max_length=max_length)
    features = EncodecFeatureExtractor(feature_size=1, sampling_rate=model.codec.sample_rate, padding_value=0.0)
    return hf, MusicgenProcessor(feature_extractor=features, tokenizer=text.tokenizer)


def save_transformers(model: "MusicGen", target: str | Path) -> Path:
    """Write `target` atomically so that `MusicgenForConditionalGeneration.from_pretrained(target)` and
    `AutoProcessor.from_pretrained(target)` load it."""
    hf, processor = to_transformers(model)
    target = Path(target)
    with atomic_directory(target) as tmp:
        hf.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return target
