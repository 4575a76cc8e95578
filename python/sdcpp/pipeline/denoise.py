"""The UNet as the sampling code's model callable, and the inpainting blend for ordinary (4-channel) UNets."""

from __future__ import annotations

import numpy as np

from ..sampling import CFGDenoiser
from .conditioning import Schedule, pad_context


class UNetModel:
    """model(x_in, t, cond) -> prediction, cond a dict of batch-first arrays: context, and optionally
    text_embeds + time_ids (SDXL) and concat (inpainting UNets: mask + masked-image latents, appended to the
    scaled latent on channels, unscaled, as diffusers' StableDiffusionInpaintPipeline does)."""

    def __init__(self, unet):
        self.unet = unet

    def __call__(self, x, t, cond):
        if "concat" in cond:
            x = np.concatenate([x, cond["concat"]], axis=1)
        return self.unet.predict(x, t, cond["context"], cond.get("text_embeds"), cond.get("time_ids"))


class MaskedDenoiser:
    """Inpainting with a 4-channel UNet (A1111 / stable-diffusion.cpp): outside the mask the denoised estimate
    is replaced by the init latent at every step, so the sampler converges to the original there."""

    def __init__(self, denoiser, init: np.ndarray, mask: np.ndarray):
        self.denoiser = denoiser
        self.init = init
        self.mask = mask  # 1 = repaint, latent resolution, broadcast over channels

    def blend(self, x: np.ndarray) -> np.ndarray:
        return self.mask * x + (np.float32(1) - self.mask) * self.init

    def __call__(self, x: np.ndarray, sigma: float) -> np.ndarray:
        out = self.blend(self.denoiser(x, sigma))
        uncond = getattr(self.denoiser, "uncond_denoised", None)
        self.uncond_denoised = None if uncond is None else self.blend(uncond)
        return out


class ScheduledCFG(CFGDenoiser):
    """Classifier-free guidance whose cond and uncond follow Schedules (prompt editing / alternation): `step` is the
    sampler step about to run (the pipeline's step callback advances it). At each step the two contexts are padded
    to the same length with the empty chunk; `extra` (inpainting concat) goes to both."""

    def __init__(self, denoiser, cond: Schedule, uncond: Schedule | None, scale: float, batch: int, extra=None):
        super().__init__(denoiser, None, None, scale)
        self.cond_schedule, self.uncond_schedule = cond, uncond
        self.batch, self.extra = batch, extra or {}
        self.step = 0
        self._cache: dict = {}

    def conditioning(self):
        c = self.cond_schedule.at(self.step)
        u = None if self.uncond_schedule is None else self.uncond_schedule.at(self.step)
        key = (id(c), id(u))
        if key not in self._cache:
            cd = {**c.as_dict(self.batch), **self.extra}
            ud = None
            if u is not None:
                ud = {**u.as_dict(self.batch), **self.extra}
                tokens = max(cd["context"].shape[1], ud["context"].shape[1])
                empty = (self.cond_schedule.empty or self.uncond_schedule.empty)
                if cd["context"].shape[1] != ud["context"].shape[1]:
                    cd["context"] = pad_context(cd["context"], tokens, empty.context)
                    ud["context"] = pad_context(ud["context"], tokens, empty.context)
                if self.uncond_schedule.zeros:  # SDXL base, empty negative: zeros of the cond's shapes
                    ud["context"] = np.zeros_like(cd["context"])
                    ud["text_embeds"] = np.zeros_like(cd["text_embeds"])
            self._cache[key] = (cd, ud)
        return self._cache[key]
