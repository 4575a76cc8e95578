"""What the routes share: the one loaded model, its worker, the limits and the A1111-style settings."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

from ..errors import SdcppError
from .guard import Limits
from .worker import Worker

# Errors a request can cause (its values or what they need, e.g. memory): answered with 422, never 500.
REQUEST_ERRORS = (ValueError, TypeError, SdcppError, MemoryError)


@dataclass
class ServerState:
    model: object  # sdcpp.Model
    worker: Worker
    limits: Limits
    path: str
    rng: str = "philox"  # A1111's default noise (randn_source "GPU": CUDA's philox), also stable-diffusion.cpp's
    settings: dict = field(default_factory=lambda: {"CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 0,
                                                    "samples_format": "png"})

    @property
    def title(self) -> str:
        """The model's name as A1111 lists checkpoints (the file name; no hash is computed)."""
        return os.path.basename(os.path.normpath(self.path))

    def is_this_model(self, name: str) -> bool:
        return name in (self.title, self.model.name, os.path.splitext(self.title)[0])

    def check_text(self, what: str, text: str):
        if len(text) > self.limits.max_prompt:
            raise ValueError(f"{what}: {len(text)} characters, more than the server's limit of "
                             f"{self.limits.max_prompt}")

    def check_size(self, width: int, height: int):
        m = self.limits.max_size
        for name, v in (("width", width), ("height", height)):
            if not 8 <= v <= m:
                raise ValueError(f"{name} must be between 8 and {m} (the server's limit), got {v}")

    def check_steps(self, steps: int):
        if not 1 <= steps <= self.limits.max_steps:
            raise ValueError(f"steps must be between 1 and {self.limits.max_steps} (the server's limit), got {steps}")

    def check_images(self, n: int, what: str):
        if not 1 <= n <= self.limits.max_images:
            raise ValueError(f"{what}: {n} images, the server makes 1 to {self.limits.max_images} per request")

    @staticmethod
    def seed(seed: int) -> int:
        if seed == -1:
            return secrets.randbelow(2**32)
        if seed < 0:
            raise ValueError(f"seed must be -1 (random) or >= 0, got {seed}")
        return seed
