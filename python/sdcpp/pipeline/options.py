"""Options of one generation call, checked before any work starts."""

from __future__ import annotations

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
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5
    progress: object = True
    extra: dict = field(default_factory=dict)  # more A1111 "parameters" fields

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def resolved(self, size: int, vae_factor: int, max_clip_skip: int) -> Options:
        """Defaults filled in and every value checked, before any work: `size` is the model's default width and
        height, `vae_factor` pixels per latent, `max_clip_skip` the depth of its shallowest text encoder.
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
        for name in ("original_size", "target_size"):
            if getattr(o, name) is not None:
                setattr(o, name, checks.size_pair(name, getattr(o, name)))
        o.crops_coords_top_left = checks.size_pair("crops_coords_top_left", o.crops_coords_top_left)
        if not (isinstance(o.progress, bool) or callable(o.progress)):
            raise TypeError(f"progress must be True, False or a callable, got {o.progress!r:.40}")
        if not isinstance(o.extra, dict):
            raise TypeError(f"extra must be a dict of PNG parameter fields, got {type(o.extra).__name__}")
        latent_shape = (o.num_images, 4, o.height // vae_factor, o.width // vae_factor)
        if o.latents is not None:
            o.latents = start_noise(o.latents, latent_shape)
        if o.mask_image is not None and o.init_image is None:
            raise ValueError("mask_image needs init_image")
        o.init_image = init_input(o.init_image, latent_shape, o.width, o.height)
        o.mask_image = mask_input(o.mask_image)
        return o
