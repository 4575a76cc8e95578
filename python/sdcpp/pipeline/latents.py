"""Noise and image latents: per-image seeded noise, init images, inpainting masks."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .. import checks
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


def _open_image(name: str, value) -> Image.Image:
    try:
        with Image.open(value) as img:
            img.load()
            return img.copy()
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise type(e)(f"{name} {os.fspath(value)}: {e}") from e


def _image(name: str, value) -> Image.Image | np.ndarray:
    """A path becomes a PIL image; images must not be empty."""
    if isinstance(value, (str, os.PathLike)):
        value = _open_image(name, value)
    if isinstance(value, Image.Image) and 0 in value.size:
        raise ValueError(f"{name} is {value.width}x{value.height}: an empty image")
    return value


def start_noise(latents, shape) -> np.ndarray:
    """The caller's start noise: finite, [B, 4, h, w] of the generation (or [4, h, w] for one image)."""
    noise = checks.finite_array("latents", latents)
    if noise.ndim == 3:
        noise = noise[None]
    if noise.shape != tuple(shape):
        raise ValueError(f"latents must be unit-variance noise of shape {tuple(shape)}, got {noise.shape}")
    return noise


def init_input(image, latent_shape, width: int, height: int) -> np.ndarray | None:
    """init_image as given (PIL image, path, [1, 3, H, W] array in [-1, 1], or VAE-scaled latents
    [1 or B, 4, h, w], diffusers' rule) -> a checked float32 [1, 3, H, W] image or [B, 4, h, w] latents."""
    if image is None:
        return None
    image = _image("init_image", image)
    if isinstance(image, Image.Image):
        return from_pil(image, width, height)
    a = checks.finite_array("init_image", image)
    B, C, h, w = latent_shape
    if a.ndim == 4 and a.shape[1] == C:  # latents already
        if a.shape[0] not in (1, B) or a.shape[2:] != (h, w):
            raise ValueError(f"init_image latents must be [1 or {B}, {C}, {h}, {w}], got {list(a.shape)}")
        return np.repeat(a, B // a.shape[0], axis=0)
    if a.ndim == 3:
        a = a[None]
    if a.shape != (1, 3, height, width):
        raise ValueError(f"init_image array must be [1, 3, {height}, {width}] in [-1, 1] (or latents "
                         f"[1 or {B}, {C}, {h}, {w}]), got {list(a.shape)}")
    return a


def mask_input(mask) -> Image.Image | None:
    """mask_image as a PIL image, whatever it came as, so every form is resized and thresholded alike: PIL or
    path (white = repaint), bool array (True = repaint), integer array in [0, 255] or float array in [0, 1]
    (white = 255 / 1.0), shaped [H, W], [1, H, W] or [1, 1, H, W]."""
    if mask is None:
        return None
    mask = _image("mask_image", mask)
    if isinstance(mask, Image.Image):
        return mask
    m = np.asarray(mask)
    if m.ndim not in (2, 3, 4) or m.shape[:-2] not in ((), (1,), (1, 1)) or 0 in m.shape:
        raise ValueError(f"mask_image array must be [H, W] (or [1, H, W], [1, 1, H, W]), got {list(m.shape)}")
    m = m.reshape(m.shape[-2:])
    if m.dtype == np.bool_:
        m = m.astype(np.uint8) * 255
    elif np.issubdtype(m.dtype, np.integer):
        if m.min() < 0 or m.max() > 255:
            raise ValueError(f"integer mask_image values must be in [0, 255], got [{m.min()}, {m.max()}]")
    elif np.issubdtype(m.dtype, np.floating):
        m = checks.finite_array("mask_image", m)
        if m.min() < 0 or m.max() > 1:
            raise ValueError(f"float mask_image values must be in [0, 1], got [{m.min():g}, {m.max():g}]")
        m = np.rint(m * 255)
    else:
        raise TypeError(f"mask_image array must hold bools, integers or floats, got {m.dtype}")
    return Image.fromarray(m.astype(np.uint8), "L")


def mask_array(mask: Image.Image, width: int, height: int) -> np.ndarray:
    """A mask image (see mask_input) -> [1, 1, H, W] in {0, 1}."""
    return mask_from_pil(mask, width, height)


def latent_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """Pixel mask -> latent resolution by nearest sampling, as diffusers' F.interpolate(mode="nearest")."""
    return np.ascontiguousarray(mask[:, :, ::factor, ::factor])
