"""The UNet as the sampling code's model callable, and the inpainting blend for ordinary (4-channel) UNets."""

from __future__ import annotations

import numpy as np


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
