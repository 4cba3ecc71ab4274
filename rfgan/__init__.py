"""rfgan: reconstruct seen images from electrode responses through their receptive fields, with a GAN on Ray."""

__version__ = "0.1.0"
