"""Options of one generation call, checked before any work starts."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, fields, replace

from .schedule import check

# Native resolution of each family when width/height are not given (SD2 512-base is epsilon, 768-v is v).
DEFAULT_SIZE = {"sd1": 512, "sd2": 768, "sdxl": 1024, "sdxl_refiner": 1024}


def default_size(spec, unet_config: dict, vae_factor: int) -> int:
    """diffusers' rule where the UNet config has a sample_size (sample_size * VAE factor), else the family's."""
    if unet_config.get("sample_size"):
        size = unet_config["sample_size"]
        return int(size[0] if isinstance(size, (list, tuple)) else size) * vae_factor
    if spec.family == "sd2" and spec.prediction == "epsilon":
        return 512
    return DEFAULT_SIZE.get(spec.family, 512)


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

    def resolved(self, size: int, vae_factor: int) -> Options:
        """Defaults filled in (`size`: the model's default width and height), values checked."""
        o = replace(self, width=int(self.width or size), height=int(self.height or size))
        for name in ("width", "height"):
            v = getattr(o, name)
            if v <= 0 or v % vae_factor:
                raise ValueError(f"{name} must be a positive multiple of {vae_factor}, got {v}")
        if o.steps < 1:
            raise ValueError(f"steps must be >= 1, got {o.steps}")
        if o.num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {o.num_images}")
        check(o.sampler, o.schedule)
        if o.seed is None:
            o.seed = secrets.randbelow(2**32)  # reported, so a run can be repeated
        o.seed = int(o.seed)
        if o.mask_image is not None and o.init_image is None:
            raise ValueError("mask_image needs init_image")
        return o
