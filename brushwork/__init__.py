"""brushwork: an open-source AI painting studio for Stable-Diffusion-family models."""

__version__ = "0.1.0"
