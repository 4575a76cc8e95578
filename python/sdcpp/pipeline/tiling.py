"""Tiled VAE decode and encode: bounded memory for large images, seams blended as diffusers' AutoencoderKL does.

diffusers' `enable_tiling()` rules (models/autoencoders/autoencoder_kl.py, tiled_decode / _tiled_encode), followed
exactly so that results match it: tiles of `tile_size` pixels (tile_size / f latents) start every
(1 - 1/4) tile; each tile is blended linearly into the one above and the one to its left over 1/4 of a tile, then
cropped to 3/4 of a tile. Encoding blends the posterior's mean and log-variance (diffusers' "moments") before
sampling. A tile's graph needs the compute buffer of one tile-sized decode, whatever the image size.

TAESD (AutoencoderTiny) tiles by its own diffusers rules (autoencoder_tiny.py, _tiled_decode / _tiled_encode):
tiles start every 7/8 tile; each is written over what is there with a mask ramping from 0 to 1 across the first
1/8 tile (1 everywhere in the first row / column); nothing is cropped.
"""

from __future__ import annotations

import numpy as np

from .memory import available_bytes, vae_bound

OVERLAP = 0.25  # diffusers' tile_overlap_factor
DEFAULT_TILE = 512  # pixels (diffusers: the VAE config's sample_size, 512 for SD1.x)
_STD_PROBE = np.float32(1024)  # encode(x, noise = 1024) - mean = 1024 * std, exactly scaled (a power of two)


def _blend_v(a: np.ndarray, b: np.ndarray, extent: int) -> np.ndarray:
    extent = min(a.shape[2], b.shape[2], extent)
    w = (np.arange(extent, dtype=np.float32) / np.float32(extent))[:, None]
    b[:, :, :extent, :] = a[:, :, a.shape[2] - extent:, :] * (1 - w) + b[:, :, :extent, :] * w
    return b


def _blend_h(a: np.ndarray, b: np.ndarray, extent: int) -> np.ndarray:
    extent = min(a.shape[3], b.shape[3], extent)
    w = np.arange(extent, dtype=np.float32) / np.float32(extent)
    b[:, :, :, :extent] = a[:, :, :, a.shape[3] - extent:] * (1 - w) + b[:, :, :, :extent] * w
    return b


def _tiled(x: np.ndarray, tile_in: int, tile_out: int, run) -> np.ndarray:
    """diffusers' tiling loop: tiles of tile_in input pixels every int(tile_in * 3/4), each mapped by `run` to
    tile_out-scaled output, blended over int(tile_out / 4) and cropped to tile_out - that."""
    stride = int(tile_in * (1 - OVERLAP))
    extent = int(tile_out * OVERLAP)
    limit = tile_out - extent
    rows = [[run(np.ascontiguousarray(x[:, :, i:i + tile_in, j:j + tile_in])) for j in range(0, x.shape[3], stride)]
            for i in range(0, x.shape[2], stride)]
    out_rows = []
    for i, row in enumerate(rows):
        parts = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = _blend_v(rows[i - 1][j], tile, extent)
            if j > 0:
                tile = _blend_h(row[j - 1], tile, extent)
            parts.append(tile[:, :, :limit, :limit])
        out_rows.append(np.concatenate(parts, axis=3))
    return np.concatenate(out_rows, axis=2)


def _factor(vae) -> int:
    return vae.weights.config.vae_factor


TINY_OVERLAP = 0.125  # AutoencoderTiny's tile_overlap_factor


def _tiny_tiled(x: np.ndarray, tile_in: int, scale: float, out_channels: int, run) -> np.ndarray:
    """AutoencoderTiny's tiling loop: tiles of tile_in input pixels every tile_in - int(tile_in / 8), each mapped
    by `run` to `scale` times its size and masked into the output (a linear ramp over the first int(tile_in / 8) *
    scale output pixels of every tile not in the first row / column)."""
    blend = int(tile_in * TINY_OVERLAP)
    stride = tile_in - blend
    size = int(tile_in * scale)
    ramp = np.clip(np.arange(size, dtype=np.float32) / np.float32(blend * scale - 1), 0, 1)
    ones = np.ones(size, np.float32)
    B, _, H, W = x.shape
    out = np.zeros((B, out_channels, int(H * scale), int(W * scale)), np.float32)
    for i in range(0, H, stride):
        for j in range(0, W, stride):
            tile = run(np.ascontiguousarray(x[:, :, i:i + tile_in, j:j + tile_in]))
            h, w = tile.shape[2], tile.shape[3]
            mask = ((ones if i == 0 else ramp)[:h, None] * (ones if j == 0 else ramp)[None, :w])
            oi, oj = int(i * scale), int(j * scale)
            region = out[:, :, oi:oi + h, oj:oj + w]
            out[:, :, oi:oi + h, oj:oj + w] = mask * tile + (1 - mask) * region
    return out


def check_tiny_tile(vae, tile_size: int | None) -> None:
    """AutoencoderTiny's tiles blend over 1/8 tile in whole latents, and its encoder's ramp needs at least two of
    them: tile_size must be a multiple of 8 x the VAE factor and at least 16 x (its default 512 is)."""
    f = _factor(vae)
    if getattr(vae, "tiny", False) and tile_size is not None and (tile_size % (8 * f) or tile_size < 16 * f):
        raise ValueError(f"tile_size must be a multiple of {8 * f} pixels and at least {16 * f} with a TAESD (it "
                         f"blends tiles over 1/8 of a tile in whole latents), got {tile_size}")


def decode_latents(vae, z: np.ndarray, tiling: bool | None, tile_size: int | None) -> np.ndarray:
    """VAE.decode, in tiles when `tiling` and the latents are larger than a tile (diffusers' condition)."""
    f = _factor(vae)
    tile = tile_size or DEFAULT_TILE
    if not tiling or (z.shape[2] * f <= tile and z.shape[3] * f <= tile):
        return vae.decode(z)
    if getattr(vae, "tiny", False):
        return _tiny_tiled(z, tile // f, f, 3, vae.decode)
    return _tiled(z, tile // f, tile, vae.decode)


def encode_image(vae, images: np.ndarray, noise: np.ndarray | None, tiling: bool | None,
                 tile_size: int | None) -> np.ndarray:
    """VAE.encode (the mean, or mean + std * noise), in tiles when `tiling` and the image is larger than a tile;
    tiles blend the mean and the log-variance, then the sample is drawn, as diffusers' tiled encode does."""
    f = _factor(vae)
    tile = tile_size or DEFAULT_TILE
    if not tiling or (images.shape[2] <= tile and images.shape[3] <= tile):
        return vae.encode(images, noise)
    if getattr(vae, "tiny", False):  # deterministic: no moments to blend
        return _tiny_tiled(images, tile, 1 / f, vae.latent_channels, lambda t: vae.encode(t, noise))

    def moments(x):
        n = len(x)
        h, w = x.shape[2] // f, x.shape[3] // f
        probe = np.concatenate([np.zeros((n, 4, h, w), np.float32), np.full((n, 4, h, w), _STD_PROBE)])
        both = vae.encode(np.concatenate([x, x]), probe)  # one graph: the mean and mean + 1024 std
        mean, shifted = both[:n], both[n:]
        std = np.maximum((shifted - mean) / _STD_PROBE, np.float32(1e-30))
        return np.concatenate([mean, 2 * np.log(std)], axis=1)

    m = _tiled(images, tile, tile // f, moments)
    mean, logvar = m[:, :4], m[:, 4:]
    if noise is None:
        return mean
    return mean + np.exp(np.float32(0.5) * logvar) * noise


def resolve_tiling(config, vae_tiling: bool | None, *, width: int, height: int) -> bool:
    """vae_tiling as asked; None: tile exactly when the whole-image VAE working set (memory.vae_bound) would not
    fit in the memory available now."""
    if vae_tiling is not None:
        return vae_tiling
    avail = available_bytes()
    need = vae_bound(config, width=width, height=height, flash_attn=True)[0]
    return avail is not None and need > avail
