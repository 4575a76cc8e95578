"""Refuse generations that cannot fit before starting them, instead of letting the OS kill the process.

The estimate is a lower bound: the few tensors that must exist at once at the largest resolution
(activations around the VAE's full-resolution convs, and attention score matrices when flash attention is
off). A request is refused only when that bound alone exceeds the memory available, so nothing that would
fit is refused; what it reports is "at least"."""

from __future__ import annotations

import os

F32 = 4


def available_bytes() -> int | None:
    """MemAvailable on Linux; None where unknown (no check then)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def vae_bound(config, *, width: int, height: int, flash_attn: bool) -> tuple[int, str]:
    """(bytes, what) of the largest unavoidable working set of one VAE decode of width x height pixels."""
    if config.vae is None:
        return 0, "nothing"
    h, w = height // config.vae_factor, width // config.vae_factor
    # decoding is one image at a time: input and output of the last conv coexist
    bounds = [(2 * config.vae.arch.decoder_out_channels * width * height * F32,
               "VAE decoder activations at full resolution")]
    if config.vae.arch.mid_attention and not flash_attn:
        bounds.append(((h * w) ** 2 * F32, "VAE mid-block attention scores"))
    return max(bounds)


def lower_bound(config, *, width: int, height: int, batch: int, cfg: bool, flash_attn: bool,
                vae_tile: int | None = None) -> tuple[int, str]:
    """(bytes, what) of the largest unavoidable working set of one generation (`config`: sdcpp ModelConfig);
    `vae_tile`: the VAE decodes tiles of that many pixels (pipeline/tiling.py) instead of the whole image."""
    h, w = height // config.vae_factor, width // config.vae_factor
    bounds = []
    if config.vae is not None:
        vw, vh = (min(width, vae_tile), min(height, vae_tile)) if vae_tile else (width, height)
        bounds.append(vae_bound(config, width=vw, height=vh, flash_attn=flash_attn))
    rows = batch * (2 if cfg else 1)
    if config.unet is not None:
        arch = config.unet.arch
        bounds.append((2 * rows * arch.base_channels * h * w * F32, "UNet activations at latent resolution"))
        if not flash_attn and True in arch.attention:  # one head's scores at a time is the least any schedule needs
            level = arch.attention.index(True)
            tokens = (h >> level) * (w >> level)
            bounds.append((rows * tokens * tokens * F32, f"UNet attention scores at level {level}"))
    return max(bounds, default=(0, "nothing"))


def check_fits(config, *, width: int, height: int, batch: int, cfg: bool, flash_attn: bool, vae_tiling: bool = False,
               tile_size: int | None = None):
    from ..errors import ResourceError
    from .tiling import DEFAULT_TILE

    need, what = lower_bound(config, width=width, height=height, batch=batch, cfg=cfg, flash_attn=flash_attn,
                             vae_tile=(tile_size or DEFAULT_TILE) if vae_tiling else None)
    avail = available_bytes()
    if avail is not None and need > avail and not os.environ.get("SDCPP_NO_MEMORY_CHECK"):
        raise ResourceError(
            f"{width}x{height} x{batch}: needs at least {need / 2**30:.1f} GiB ({what}), "
            f"{avail / 2**30:.1f} GiB available; use a smaller size or batch"
            + ("" if flash_attn else ", or flash_attn=True"))
