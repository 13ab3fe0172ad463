"""EnCodec-style neural audio codec in plain PyTorch: waveform ⇄ discrete codes for the LM."""

from mgen.codec.discriminator import MultiScaleSTFTDiscriminator, STFTDiscriminator
from mgen.codec.losses import (
    LossBalancer,
    MultiScaleMelLoss,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    l1_waveform_loss,
    si_snr,
)
from mgen.codec.model import Codec, CodecConfig, CodecOutput, deinterleave_channels, interleave_channels
from mgen.codec.quantizer import ResidualVectorQuantizer, RVQConfig
from mgen.codec.seanet import SEANetConfig, SEANetDecoder, SEANetEncoder

__all__ = [
    "Codec",
    "CodecConfig",
    "CodecOutput",
    "SEANetConfig",
    "SEANetEncoder",
    "SEANetDecoder",
    "RVQConfig",
    "ResidualVectorQuantizer",
    "MultiScaleSTFTDiscriminator",
    "STFTDiscriminator",
    "LossBalancer",
    "MultiScaleMelLoss",
    "l1_waveform_loss",
    "hinge_generator_loss",
    "hinge_discriminator_loss",
    "feature_matching_loss",
    "si_snr",
    "interleave_channels",
    "deinterleave_channels",
]
