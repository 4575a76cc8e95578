"""Noise and image latents: per-image seeded noise, init images, inpainting masks."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..sampling import make_rng
from .images import from_pil, mask_from_pil


class BatchRNG:
    """One generator per image, seeded seed + i (A1111): image i's noise does not depend on the batch size.
    randn((B, ...)) stacks one draw of (1, ...) from each generator."""

    def __init__(self, name: str, seeds: list[int]):
        self.rngs = [make_rng(name, s) for s in seeds]

    def randn(self, shape) -> np.ndarray:
        shape = tuple(int(s) for s in shape)
        if shape[0] != len(self.rngs):
            raise ValueError(f"noise for {shape[0]} rows asked of {len(self.rngs)} generators")
        return np.concatenate([r.randn((1, *shape[1:])) for r in self.rngs], axis=0)


def vae_scale_factor(weights) -> int:
    """Pixels per latent: 2 to the number of decoder upsamplers (8 for every released VAE)."""
    n = 0
    while f"vae.decoder.up_blocks.{n}.resnets.0.conv1.weight" in weights:
        n += 1
    ups = sum(f"vae.decoder.up_blocks.{i}.upsamplers.0.conv.weight" in weights for i in range(n))
    return 2**ups


def image_array(image, width: int, height: int) -> np.ndarray:
    """A PIL image or a float array [1, 3, H, W] in [-1, 1] -> [1, 3, H, W] float32."""
    if isinstance(image, Image.Image):
        return from_pil(image, width, height)
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3:
        a = a[None]
    if a.shape[1:] != (3, height, width):
        raise ValueError(f"init image array must be [1, 3, {height}, {width}] in [-1, 1], got {a.shape}")
    return a


def mask_array(mask, width: int, height: int) -> np.ndarray:
    """A PIL mask (white = repaint) or an array [H, W] / [1, 1, H, W] -> [1, 1, H, W] in {0, 1}."""
    if isinstance(mask, Image.Image):
        return mask_from_pil(mask, width, height)
    m = np.asarray(mask, dtype=np.float32)
    m = m.reshape(1, 1, *m.shape[-2:])
    if m.shape[-2:] != (height, width):
        raise ValueError(f"mask must be {height}x{width}, got {m.shape[-2:]}")
    return (m >= 0.5).astype(np.float32)


def latent_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """Pixel mask -> latent resolution by nearest sampling, as diffusers' F.interpolate(mode="nearest")."""
    return np.ascontiguousarray(mask[:, :, ::factor, ::factor])
