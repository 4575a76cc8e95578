"""AutoencoderKL (the SD/SDXL VAE) on ggml: latents <-> images, numpy NCHW float32 in and out."""

from __future__ import annotations

import numpy as np

from .. import checks
from .._native import core
from ._graph import GraphModel, resolve_flash_attn


def _f32(a, what: str) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim != 4:
        raise ValueError(f"{what} must be [B, C, H, W], got shape {a.shape}")
    return a


def vae_graph(weights, **options):
    """The model's VAE graph: `VAE` for an AutoencoderKL, `TinyVAE` for a TAESD (same interface)."""
    if weights.config.component("vae").tiny:
        from .taesd import TinyVAE

        return TinyVAE(weights, **options)
    return VAE(weights, **options)


class VAE(GraphModel):
    """The VAE of loaded `Weights` (`sdcpp.load_weights`). No scaling factor is applied inside: multiply
    encoder output by `scaling_factor` and divide latents by it before `decode`, as diffusers pipelines do.

    `n_threads`: 0 = one per physical core. `flash_attn`: ggml_flash_attn_ext for the mid-block attention
    (None: on for the CPU).
    `max_im2col_mib`: convs whose im2col matrix would be larger run in bands of output rows (0 = never);
    this bounds the compute buffer of large decodes (measured on an SD VAE decode at 256x256: bands of 8-32 MiB
    were 24% faster than whole convs, cache-sized columns, and cut the compute buffer by a third).
    `f32_matmul_min_cols`, `precision`: see `UNet`."""

    tiny = False  # TinyVAE: True

    def __init__(self, weights, n_threads: int = 0, flash_attn: bool | None = None, max_im2col_mib: float = 32,
                 f32_matmul_min_cols: int = -1, precision: str = "f32"):
        config = weights.config.component("vae")  # groups, eps, scaling factor: sdcpp.config
        if config.tiny:
            raise ValueError("this VAE is a TAESD (AutoencoderTiny): use sdcpp.models.taesd.TinyVAE (or vae_graph)")
        self.weights = weights
        self.config = config
        self.flash_attn = resolve_flash_attn(weights, flash_attn)
        n_threads = checks.threads(n_threads)
        self.scaling_factor = config.scaling_factor
        self._graph = core().VAE(weights._store, groups=config.groups, norm_eps=config.norm_eps,
                                 flash_attn=self.flash_attn, max_im2col_mib=max_im2col_mib,
                                 f32_matmul_min_cols=f32_matmul_min_cols,
                                 precision=checks.precision(precision), n_threads=n_threads)

    @property
    def latent_channels(self) -> int:
        return self._graph.latent_channels

    @property
    def has_encoder(self) -> bool:
        return self.config.arch.has_encoder

    def decode(self, latents) -> np.ndarray:
        """latents [B, 4, h, w] -> images [B, 3, 8h, 8w] (roughly in [-1, 1])."""
        return self._graph.decode(_f32(latents, "latents"))

    def encode(self, images, noise=None) -> np.ndarray:
        """images [B, 3, H, W] in [-1, 1] -> latent mean [B, 4, H/8, W/8], or a sample mean + std * noise."""
        eps = None if noise is None else _f32(noise, "noise")
        return self._graph.encode(_f32(images, "images"), eps)
