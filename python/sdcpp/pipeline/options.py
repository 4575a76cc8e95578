"""Options of one generation call, checked before any work starts."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, fields, replace

from .. import checks
from ..sampling import SPACINGS, make_rng
from .latents import init_input, mask_input, start_noise
from .schedule import check

MAX_STEPS = 10_000  # beyond any schedule (the training schedule has 1000 timesteps)
MAX_IMAGES = 1_000  # per call; memory is checked separately
START_NOISE = ("sdcpp", "diffusers")  # how txt2img scales its start noise (generate._start_sigma)


@dataclass
class Options:
    """Everything `Model.generate` takes besides the prompts (see its docstring)."""

    width: int | None = None
    height: int | None = None
    steps: int = 20
    guidance_scale: float = 7.0
    sampler: str = "euler_a"
    schedule: str = "discrete"
    timestep_spacing: str = "leading"
    seed: int | None = None
    rng: str = "numpy"
    start_noise: str = "sdcpp"
    latents: object = None
    num_images: int = 1
    clip_skip: int | None = None
    eta: float | None = None
    init_image: object = None
    strength: float = 0.75
    mask_image: object = None
    original_size: tuple | None = None
    crops_coords_top_left: tuple = (0, 0)
    target_size: tuple | None = None
    negative_original_size: tuple | None = None
    negative_crops_coords_top_left: tuple | None = None
    negative_target_size: tuple | None = None
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5
    embeddings_dir: object = None
    prompt_embeds: object = None
    negative_prompt_embeds: object = None
    pooled_prompt_embeds: object = None
    negative_pooled_prompt_embeds: object = None
    hr_scale: float | None = None
    hr_upscaler: str = "latent"
    hr_denoising_strength: float = 0.7
    hr_steps: int | None = None
    refiner: object = None
    denoising_end: float | None = None
    denoising_start: float | None = None
    vae_tiling: bool | None = None
    tile_size: int | None = None
    progress: object = True
    preview: object = False  # per-step preview images for a progress callback: False, True or a TAESD file
    extra: dict = field(default_factory=dict)  # more A1111 "parameters" fields
    loras: object = None  # this call's runtime LoRAs: {name or path: strength} (sdcpp.lora.session)

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def resolved(self, size: int, vae_factor: int, max_clip_skip: int, *, context_dim: int | None = None,
                 pooled_dim: int | None = None) -> Options:
        """Defaults filled in and every value checked, before any work: `size` is the model's default width and
        height, `vae_factor` pixels per latent, `max_clip_skip` the depth of its shallowest text encoder,
        `context_dim` / `pooled_dim` what the UNet's cross-attention and (SDXL) added embedding take.
        Image arguments given as paths are opened here."""
        o = replace(self)
        for name in ("width", "height"):
            v = size if getattr(o, name) is None else checks.integer(name, getattr(o, name), minimum=1)
            if v % vae_factor:
                raise ValueError(f"{name} must be a positive multiple of {vae_factor}, got {v}")
            setattr(o, name, v)
        o.steps = checks.integer("steps", o.steps, minimum=1, maximum=MAX_STEPS)
        o.num_images = checks.integer("num_images", o.num_images, minimum=1, maximum=MAX_IMAGES)
        o.guidance_scale = checks.real("guidance_scale", o.guidance_scale)
        o.strength = checks.real("strength", o.strength, minimum=0.0, maximum=1.0)
        for name in ("sampler", "schedule", "timestep_spacing", "rng", "start_noise"):
            if not isinstance(getattr(o, name), str):
                raise TypeError(f"{name} must be a string, got {getattr(o, name)!r:.40}")
        check(o.sampler, o.schedule)
        if o.timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {o.timestep_spacing!r}")
        make_rng(o.rng, 0)  # names the RNG choices on a typo
        if o.start_noise not in START_NOISE:
            raise ValueError(f"start_noise must be one of {START_NOISE}, got {o.start_noise!r}")
        if o.seed is None or (not isinstance(o.seed, (bool, str)) and o.seed == -1):
            o.seed = secrets.randbelow(2**32)  # -1 is "random" in A1111 and stable-diffusion.cpp; reported
        o.seed = checks.integer("seed", o.seed, minimum=0, maximum=2**64 - o.num_images)
        if o.clip_skip is not None:
            o.clip_skip = checks.integer("clip_skip", o.clip_skip, minimum=1, maximum=max_clip_skip)
        if o.eta is not None:
            o.eta = checks.real("eta", o.eta, minimum=0.0)
        o.aesthetic_score = checks.real("aesthetic_score", o.aesthetic_score)
        o.negative_aesthetic_score = checks.real("negative_aesthetic_score", o.negative_aesthetic_score)
        for name in ("original_size", "target_size", "negative_original_size", "negative_crops_coords_top_left",
                     "negative_target_size"):
            if getattr(o, name) is not None:
                setattr(o, name, checks.size_pair(name, getattr(o, name)))
        o.crops_coords_top_left = checks.size_pair("crops_coords_top_left", o.crops_coords_top_left)
        if not (isinstance(o.progress, bool) or callable(o.progress)):
            raise TypeError(f"progress must be True, False or a callable, got {o.progress!r:.40}")
        _check_preview(o)
        _check_preview_target(o)
        if not isinstance(o.extra, dict):
            raise TypeError(f"extra must be a dict of PNG parameter fields, got {type(o.extra).__name__}")
        _check_embeds(o, context_dim, pooled_dim)
        _check_hires(o, vae_factor)
        for name in ("denoising_end", "denoising_start"):
            if getattr(o, name) is not None:
                setattr(o, name, checks.real(name, getattr(o, name), minimum=0.0, maximum=1.0))
                if not 0 < getattr(o, name) < 1:
                    raise ValueError(f"{name} must be strictly between 0 and 1, got {getattr(o, name)}")
        if o.refiner is not None and o.hr_scale is not None:
            raise ValueError("refiner and hr_scale together are not supported")
        if o.refiner is not None and o.init_image is not None:
            raise ValueError("refiner= runs a txt2img ensemble; for img2img call the refiner with denoising_start")
        o.vae_tiling = checks.optional_bool("vae_tiling", o.vae_tiling)
        if o.tile_size is not None:
            o.tile_size = checks.integer("tile_size", o.tile_size, minimum=4 * vae_factor, maximum=1 << 16)
            if o.tile_size % (4 * vae_factor):
                raise ValueError(f"tile_size must be a multiple of {4 * vae_factor} pixels, got {o.tile_size}")
        latent_shape = (o.num_images, 4, o.height // vae_factor, o.width // vae_factor)
        if o.latents is not None:
            o.latents = start_noise(o.latents, latent_shape)
        if o.mask_image is not None and o.init_image is None:
            raise ValueError("mask_image needs init_image")
        o.init_image = init_input(o.init_image, latent_shape, o.width, o.height)
        o.mask_image = mask_input(o.mask_image)
        if o.denoising_start is not None and (o.init_image is None or o.init_image.shape[1] != 4):
            raise ValueError("denoising_start continues a partly denoised latent: init_image must be latents "
                             "(a base model's Images.latents after denoising_end)")
        return o


def _check_embeds(o: Options, context_dim: int | None, pooled_dim: int | None) -> None:
    """prompt_embeds [1, T, context_dim] (and the negative, the same T unless both are whole 77-token chunks;
    SDXL: pooled [1, pooled_dim] with each), as diffusers takes them."""
    pairs = (("prompt_embeds", "pooled_prompt_embeds"), ("negative_prompt_embeds", "negative_pooled_prompt_embeds"))
    for name, pooled in pairs:
        value, pvalue = getattr(o, name), getattr(o, pooled)
        if value is None:
            if pvalue is not None:
                raise ValueError(f"{pooled} needs {name}")
            continue
        a = checks.finite_array(name, value)
        a = a[None] if a.ndim == 2 else a
        if a.ndim != 3 or a.shape[0] != 1 or a.shape[1] < 1 or (context_dim is not None and a.shape[2] != context_dim):
            raise ValueError(f"{name} must be [1, tokens, {context_dim}] (one prompt for every image), got "
                             f"{list(a.shape)}")
        setattr(o, name, a)
        if pooled_dim is None:
            if pvalue is not None:
                raise ValueError(f"{pooled}: this model takes no pooled embedding")
            continue
        if pvalue is None:
            raise ValueError(f"{name} on SDXL needs {pooled} [1, {pooled_dim}] too")
        p = checks.finite_array(pooled, pvalue)
        p = p[None] if p.ndim == 1 else p
        if p.ndim != 2 or p.shape != (a.shape[0], pooled_dim):
            raise ValueError(f"{pooled} must be [{a.shape[0]}, {pooled_dim}], got {list(p.shape)}")
        setattr(o, pooled, p)
    c, n = o.prompt_embeds, o.negative_prompt_embeds
    if c is not None and n is not None and c.shape[1] != n.shape[1] and (c.shape[1] % 77 or n.shape[1] % 77):
        raise ValueError(f"prompt_embeds ({c.shape[1]} tokens) and negative_prompt_embeds ({n.shape[1]}) must have "
                         "the same length (or both whole 77-token chunks, padded like prompts)")


def _check_preview(o: Options) -> None:
    """preview: None/False (none), True (the model's preview decoder: a TAESD it was given, else its VAE) or the
    path of a VAE file or folder (a TAESD, loaded once per Model)."""
    if o.preview is None:
        o.preview = False
    if isinstance(o.preview, bool):
        return
    if not isinstance(o.preview, (str, os.PathLike)):
        raise TypeError(f"preview must be True, False or the path of a TAESD file, got {o.preview!r:.60}")
    if not os.path.exists(o.preview):
        raise FileNotFoundError(f"preview: {os.fspath(o.preview)} does not exist")


def _check_preview_target(o: Options) -> None:
    if o.preview is not False and not callable(o.progress):
        raise ValueError("preview= hands each step's image to a progress callback: pass progress=callable")


HR_UPSCALERS = ("latent", "latent_nearest", "lanczos")


def _check_hires(o: Options, vae_factor: int) -> None:
    """hr_scale >= 1 (None: no hires fix), its size in whole latents; hr_upscaler, hr_denoising_strength in (0, 1],
    hr_steps >= 1 or None (the first pass's steps). Sets o.hr_width / o.hr_height (A1111: int(size * scale))."""
    o.hr_width = o.hr_height = None
    if o.hr_scale is None:
        return
    o.hr_scale = checks.real("hr_scale", o.hr_scale, minimum=1.0, maximum=16.0)
    if o.hr_upscaler not in HR_UPSCALERS:
        raise ValueError(f"hr_upscaler must be one of {HR_UPSCALERS}, got {o.hr_upscaler!r}")
    o.hr_denoising_strength = checks.real("hr_denoising_strength", o.hr_denoising_strength, minimum=0.0, maximum=1.0)
    if o.hr_denoising_strength == 0:
        raise ValueError("hr_denoising_strength must be > 0 (0 would leave the upscaled first pass as is)")
    if o.hr_steps is not None:
        o.hr_steps = checks.integer("hr_steps", o.hr_steps, minimum=1, maximum=MAX_STEPS)
    o.hr_width = int(o.width * o.hr_scale) // vae_factor * vae_factor
    o.hr_height = int(o.height * o.hr_scale) // vae_factor * vae_factor
