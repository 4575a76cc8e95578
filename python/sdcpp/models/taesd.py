"""TAESD (diffusers AutoencoderTiny, madebyollin's tiny autoencoder) on ggml: latents <-> images, numpy NCHW
float32 in and out, with the interface of `sdcpp.models.vae.VAE`."""

from __future__ import annotations

from .. import checks
from .._native import core
from ._graph import GraphModel
from .vae import _f32


class TinyVAE(GraphModel):
    """The TAESD of loaded `Weights` (a TAESD file or folder: diffusers' AutoencoderTiny names, the original
    taesd_encoder / taesd_decoder files, or ComfyUI's combined file). It decodes the UNet's latents as they are:
    `scaling_factor` is 1 (its config's; diffusers' pipelines divide by it, as for any VAE), and `encode` gives the
    latents themselves, deterministic (no posterior to sample: `noise` must be None).

    `n_threads`: 0 = one per physical core. `max_im2col_mib`, `f32_matmul_min_cols`, `precision`: see `VAE`.
    `flash_attn` is accepted for the VAE interface; TAESD has no attention."""

    tiny = True

    def __init__(self, weights, n_threads: int = 0, flash_attn: bool | None = None, max_im2col_mib: float = 32,
                 f32_matmul_min_cols: int = -1, precision: str = "f32"):
        config = weights.config.component("vae")
        if not config.tiny:
            raise ValueError("TinyVAE runs a TAESD (AutoencoderTiny); this VAE is an AutoencoderKL: use VAE")
        checks.optional_bool("flash_attn", flash_attn)
        self.weights = weights
        self.config = config
        self.flash_attn = False
        self.scaling_factor = config.scaling_factor
        arch = config.arch
        self._graph = core().TinyVAE(weights._store, encoder_layers=arch.encoder_layers,
                                     decoder_layers=arch.decoder_layers, upscale=arch.upscale,
                                     max_im2col_mib=max_im2col_mib, f32_matmul_min_cols=f32_matmul_min_cols,
                                     precision=checks.precision(precision),
                                     n_threads=checks.threads(n_threads))

    @property
    def latent_channels(self) -> int:
        return self._graph.latent_channels

    @property
    def has_encoder(self) -> bool:
        return self._graph.has_encoder

    def decode(self, latents):
        """latents [B, 4, h, w] (the UNet's, unscaled) -> images [B, 3, f*h, f*w] (roughly in [-1, 1])."""
        return self._graph.decode(_f32(latents, "latents"))

    def encode(self, images, noise=None):
        """images [B, 3, H, W] in [-1, 1] -> latents [B, 4, H/f, W/f]."""
        if noise is not None:
            raise ValueError("TAESD's encoder is deterministic: it takes no noise (there is no posterior to sample)")
        return self._graph.encode(_f32(images, "images"))
