"""One generation: conditioning -> start latent (txt2img / img2img / inpaint) -> sampling -> decode -> images."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from tqdm.auto import tqdm

from ..errors import Cancelled
from ..sampling import Denoiser, diffusers_init_noise_sigma, get_sampler, sample
from ..text.embeddings import load_embeddings
from .conditioning import build_conditioning
from .denoise import MaskedDenoiser, ScheduledCFG, UNetModel
from .images import a1111_parameters, to_pil
from .latents import BatchRNG, latent_mask, mask_array
from .memory import check_fits
from .options import Options
from .report import GenerationReport, Images, peak_rss, weight_bytes
from .schedule import img2img_start, make_table

log = logging.getLogger("sdcpp")


def _noise(o: Options, rng: BatchRNG, shape) -> np.ndarray:
    return rng.randn(shape) if o.latents is None else o.latents  # checked by Options.resolved


def start_sigma(o: Options, sigmas: np.ndarray) -> float:
    """What txt2img multiplies its unit noise by. "sdcpp" (k-diffusion, A1111, stable-diffusion.cpp): the first
    sigma. "diffusers": what diffusers' pipeline ends up with in our (VE) frame: its Euler-family schedulers scale
    by init_noise_sigma (sqrt(sigma_0^2 + 1) for "leading" spacing, sigma_0 otherwise); the others (DPM-Solver,
    UniPC, DDIM, LCM) start from unit noise on the VP latent, which is noise * sqrt(sigma_0^2 + 1) here. With
    rng="cpu" and the same seed that reproduces a diffusers txt2img run on the CPU."""
    sigma0 = float(sigmas[0])
    if o.start_noise == "sdcpp":
        return sigma0
    if get_sampler(o.sampler).diffusers_vp:
        return math.sqrt(sigma0 * sigma0 + 1.0)
    return diffusers_init_noise_sigma(sigmas, o.timestep_spacing)


def _start(model, o: Options, rng: BatchRNG, sigmas: np.ndarray, report: GenerationReport):
    """(x at sigmas[0], unet concat channels or None, (init latent, latent mask) for 4-channel inpainting or
    None). Noise is drawn in diffusers' order: init-image sample, start noise, masked-image sample."""
    f, vae = model.vae_factor, model.vae
    B, h, w = o.num_images, o.height // f, o.width // f
    shape = (B, 4, h, w)
    inpaint_unet = model.unet.in_channels == 9
    init = None
    image = None
    pure_noise = o.init_image is None or (inpaint_unet and o.mask_image is not None and o.strength >= 1.0)
    if o.init_image is not None:  # Options.resolved made it [B, 4, h, w] latents or a [1, 3, H, W] image
        if o.init_image.shape[1] == 4:
            init = o.init_image
        else:
            image = o.init_image
            if not pure_noise:
                with report.timed("encode_image"):
                    init = vae.encode(np.repeat(image, B, axis=0), rng.randn(shape)) * np.float32(vae.scaling_factor)
    noise = _noise(o, rng, shape)
    if init is None or pure_noise:
        x = noise * np.float32(start_sigma(o, sigmas))
    else:
        x = init + noise * np.float32(sigmas[0])  # diffusers' add_noise too, in every scheduler

    pixel_mask = mask = None
    if o.mask_image is not None:
        pixel_mask = mask_array(o.mask_image, o.width, o.height)
        mask = latent_mask(pixel_mask, f)
    if inpaint_unet:
        # No mask: repaint everything (mask 1, masked image 0), as A1111 does for txt2img on inpainting models.
        if mask is None:
            pixel_mask = np.ones((1, 1, o.height, o.width), np.float32)
            mask = latent_mask(pixel_mask, f)
        if image is None:
            image = np.zeros((1, 3, o.height, o.width), np.float32)
        masked = image * (pixel_mask < 0.5)
        with report.timed("encode_image"):
            masked_latents = vae.encode(np.repeat(masked, B, axis=0), rng.randn(shape)) * np.float32(
                vae.scaling_factor)
        concat = np.concatenate([np.repeat(mask, B, axis=0), masked_latents], axis=1)
        return x, concat, None
    if mask is not None:
        if init is None:
            raise ValueError("inpainting with a 4-channel UNet needs an init image (not latents)")
        return x, None, (init, mask)
    return x, None, None


class _Steps:
    """The sampler callback: per-step timing, tqdm bar or the user's callback(step, total, info). A callback
    returning False cancels through the model's token, the one mechanism `Model.cancel()` also uses: the token
    stops the pass running on it (sdcpp.Cancelled from the graph) or, between passes, the next step here."""

    def __init__(self, progress, total: int, report: GenerationReport, cancel, guided=None):
        self.progress, self.total, self.report, self.cancel = progress, total, report, cancel
        self.guided = guided  # its `step` follows the sampler (prompt editing)
        self.bar = None if callable(progress) else tqdm(total=total, desc="sampling", unit="step",
                                                        disable=None if progress else True, leave=False)
        self.last = time.perf_counter()

    def user(self, step: int, info: dict) -> bool:
        if callable(self.progress) and self.progress(step, self.total, info) is False:
            self.cancel.cancel()
        if self.cancel.cancelled:
            raise Cancelled(f"generation cancelled after {step} of {self.total} steps")
        return True

    def __call__(self, step, total, x, denoised):
        if self.guided is not None:
            self.guided.step = step
        now = time.perf_counter()
        self.report.step_times.append(now - self.last)
        self.last = now
        if self.bar is not None:
            self.bar.update(1)
        return self.user(step, dict(step_time=self.report.step_times[-1], latents=x, denoised=denoised))

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _blocked_attention(model) -> bool:
    """OpenBLAS attention (CPU) never holds a whole score matrix either (csrc/runtime/blas.hpp)."""
    from .._native import core

    return model.weights.device.upper() == "CPU" and core().blas_enabled()


def _embeds(o: Options) -> dict | None:
    pairs = {"context": o.prompt_embeds, "pooled": o.pooled_prompt_embeds, "negative_context": o.negative_prompt_embeds,
             "negative_pooled": o.negative_pooled_prompt_embeds}
    return {k: v for k, v in pairs.items() if v is not None} or None


def run(model, prompt: str, negative_prompt: str, o: Options) -> Images:
    enc = model.prompt_encoder
    pooled_dim = next((e.projection_dim for e in enc.encoders if e.component == enc.family.pooled_from), None)
    o = o.resolved(model.default_size, model.vae_factor, enc.max_clip_skip, context_dim=model.unet.context_dim,
                   pooled_dim=pooled_dim)
    enc.set_embeddings(load_embeddings(o.embeddings_dir))  # this call's (none: none)
    check_fits(model.weights.config, width=o.width, height=o.height, batch=o.num_images,
               cfg=o.guidance_scale != 1.0, flash_attn=model.flash_attn or _blocked_attention(model))
    spec = model.weights.spec
    report = GenerationReport(seed=o.seed, weights=weight_bytes(model.weights.plan))
    report.timings["load"] = model.load_seconds
    log.info("generating %d image(s) %dx%d, %s %s, %d steps, cfg %g, seed %d", o.num_images, o.width, o.height,
             o.sampler, o.schedule, o.steps, o.guidance_scale, o.seed)

    with report.timed("text_encode"):
        cond, uncond = build_conditioning(
            enc, prompt, negative_prompt, height=o.height, width=o.width, steps=o.steps, clip_skip=o.clip_skip,
            original_size=o.original_size, crops_coords_top_left=o.crops_coords_top_left, target_size=o.target_size,
            aesthetic_score=o.aesthetic_score, negative_aesthetic_score=o.negative_aesthetic_score,
            negative_original_size=o.negative_original_size,
            negative_crops_coords_top_left=o.negative_crops_coords_top_left,
            negative_target_size=o.negative_target_size, prompt_embeds=_embeds(o))

    table, rounding = make_table(model.train, o.steps, o.sampler, o.schedule, spec.family, o.timestep_spacing)
    sigmas = table.sigmas
    if o.init_image is not None:
        sigmas = sigmas[img2img_start(o.steps, o.strength):]
    rng = BatchRNG(o.rng, [o.seed + i for i in range(o.num_images)])
    x, concat, blend = _start(model, o, rng, sigmas, report)

    denoiser = Denoiser(UNetModel(model.unet), model.train, spec.prediction, timestep_rounding=rounding, table=table)
    guided = ScheduledCFG(denoiser, cond, uncond if o.guidance_scale != 1.0 else None, o.guidance_scale,
                          o.num_images, None if concat is None else {"concat": concat})
    scheduled = guided
    if blend is not None:
        guided = MaskedDenoiser(guided, *blend)

    steps = _Steps(o.progress, len(sigmas) - 1, report, model.cancel_token, scheduled)
    try:
        steps.user(0, dict(step_time=0.0, latents=x, denoised=None))  # lets a callback cancel before any step
        if len(sigmas) > 1:
            with report.timed("sampling"):
                result = sample(o.sampler, guided, x, sigmas, rng=rng, eta=o.eta, callback=steps)
            x = result.x
    finally:
        steps.close()
    if blend is not None:
        x = guided.blend(x)

    with report.timed("decode"):
        decoded = [model.vae.decode(x[i:i + 1] / np.float32(model.vae.scaling_factor)) for i in range(len(x))]
    arrays = np.clip(np.concatenate(decoded) / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)
    images = to_pil(np.concatenate(decoded))
    report.peak_rss = peak_rss()

    infos = []
    extra = dict(o.extra)
    if o.init_image is not None:
        extra["Denoising strength"] = f"{o.strength:g}"
    if o.clip_skip and o.clip_skip > 1:
        extra["Clip skip"] = o.clip_skip
    extra["RNG"] = o.rng
    for i, img in enumerate(images):
        text = a1111_parameters(prompt, negative_prompt, steps=o.steps, sampler=o.sampler, schedule=o.schedule,
                                guidance_scale=o.guidance_scale, seed=o.seed + i, width=o.width, height=o.height,
                                model=model.name, extra=extra)
        img.info["parameters"] = text
        infos.append(dict(seed=o.seed + i, parameters=text, width=o.width, height=o.height))
    log.info("done in %.2f s (sampling %.2f s)", sum(v for k, v in report.timings.items() if k != "load"),
             report.timings.get("sampling", 0.0))
    return Images(images, infos, arrays, x, report)
