"""mgen: train MusicGen-style text/melody-to-music models with PyTorch Lightning."""

__version__ = "0.1.0"
