"""One generation: conditioning -> start latent (txt2img / img2img / inpaint) -> sampling -> decode -> images."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from tqdm.auto import tqdm

from ..errors import Cancelled
from ..lora.session import hashes_field, strip_tags
from ..sampling import Denoiser, diffusers_init_noise_sigma, get_sampler, sample
from ..text.embeddings import load_embeddings
from .conditioning import build_schedules
from .denoise import MaskedDenoiser, ScheduledCFG, UNetModel
from .images import a1111_parameters, from_pil, to_pil
from .latents import BatchRNG, latent_mask, mask_array
from .memory import check_fits
from .options import Options
from .report import GenerationReport, Images, peak_rss, weight_bytes
from .schedule import img2img_start, make_table
from .tiling import check_tiny_tile, decode_latents, encode_image, resolve_tiling

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


def _posterior_noise(vae, rng: BatchRNG, shape):
    """The noise of a VAE posterior sample, drawn where diffusers draws it; TAESD's encoder is deterministic and
    diffusers' retrieve_latents takes its latents as they are, drawing nothing."""
    return None if vae.tiny else rng.randn(shape)


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
                    init = encode_image(vae, np.repeat(image, B, axis=0), _posterior_noise(vae, rng, shape),
                                        o.vae_tiling, o.tile_size) * np.float32(vae.scaling_factor)
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
            masked_latents = encode_image(vae, np.repeat(masked, B, axis=0), _posterior_noise(vae, rng, shape),
                                          o.vae_tiling, o.tile_size) * np.float32(vae.scaling_factor)
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

    def __init__(self, progress, total: int, report: GenerationReport, cancel, guided=None, preview=None):
        self.progress, self.total, self.report, self.cancel = progress, total, report, cancel
        self.guided = guided  # its `step` follows the sampler (prompt editing)
        self.preview = preview  # denoised latents -> images for info["preview"], or None
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
        info = dict(step_time=self.report.step_times[-1], latents=x, denoised=denoised)
        if self.preview is not None:
            with self.report.timed("preview"):
                info["preview"] = self.preview(denoised)
        return self.user(step, info)

    def first(self, x):
        """Step 0, before any step: lets a callback cancel before the first UNet pass."""
        info = dict(step_time=0.0, latents=x, denoised=None)
        if self.preview is not None:
            info["preview"] = None
        return self.user(0, info)

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


def _conditioning(model, prompt, negative_prompt, o: Options, *, width, height, hires_steps=None):
    return build_schedules(
        model.prompt_encoder, prompt, negative_prompt, height=height, width=width, steps=o.steps,
        hires_steps=hires_steps, clip_skip=o.clip_skip, original_size=o.original_size,
        crops_coords_top_left=o.crops_coords_top_left, target_size=o.target_size,
        aesthetic_score=o.aesthetic_score, negative_aesthetic_score=o.negative_aesthetic_score,
        negative_original_size=o.negative_original_size,
        negative_crops_coords_top_left=o.negative_crops_coords_top_left,
        negative_target_size=o.negative_target_size, prompt_embeds=_embeds(o))


def _denoise(model, o: Options, cond, uncond, table, rounding, sigmas, x, rng, report, *, concat=None, blend=None,
             stage="sampling"):
    """One sampling pass over `sigmas` from x; returns the final latent (blended for 4-channel inpainting)."""
    spec = model.weights.spec
    denoiser = Denoiser(UNetModel(model.unet), model.train, spec.prediction, timestep_rounding=rounding, table=table)
    guided = ScheduledCFG(denoiser, cond, uncond if o.guidance_scale != 1.0 else None, o.guidance_scale,
                          len(x), None if concat is None else {"concat": concat})
    scheduled = guided
    if blend is not None:
        guided = MaskedDenoiser(guided, *blend)
    steps = _Steps(o.progress, len(sigmas) - 1, report, model.cancel_token, scheduled, o.preview or None)
    try:
        steps.first(x)
        if len(sigmas) > 1:
            with report.timed(stage):
                x = sample(o.sampler, guided, x, sigmas, rng=rng, eta=o.eta, callback=steps).x
    finally:
        steps.close()
    return guided.blend(x) if blend is not None else x


def decode_preview(decoder, latents: np.ndarray) -> np.ndarray:
    """UNet-space latents [B, 4, h, w] -> images [B, 3, H, W] with a preview decoder (a TinyVAE: the whole batch in
    one pass; an AutoencoderKL: one image at a time, tiled when the image would not fit)."""
    x = np.asarray(latents, np.float32) / np.float32(decoder.scaling_factor)
    if decoder.tiny:
        return decoder.decode(x)
    f = decoder.weights.config.vae_factor
    tiling = resolve_tiling(decoder.weights.config, None, width=x.shape[3] * f, height=x.shape[2] * f)
    return np.concatenate([decode_latents(decoder, x[i:i + 1], tiling, None) for i in range(len(x))])


def _decode(model, x: np.ndarray, o: Options) -> np.ndarray:
    """Scaled latents [B, 4, h, w] -> images [B, 3, H, W], one image at a time (tiled when asked or needed)."""
    vae, scale = model.vae, np.float32(model.vae.scaling_factor)
    return np.concatenate([decode_latents(vae, x[i:i + 1] / scale, o.vae_tiling, o.tile_size)
                           for i in range(len(x))])


def upscale_latents(x: np.ndarray, height: int, width: int, mode: str = "bilinear") -> np.ndarray:
    """torch.nn.functional.interpolate(x, size=(height, width), mode=mode) for "bilinear" (align_corners=False,
    no antialias: A1111's "Latent" upscaler) and "nearest" ("Latent (nearest)"), in numpy."""
    B, C, h, w = x.shape
    if mode == "nearest":
        rows = np.floor(np.arange(height) * (h / height)).astype(np.int64)
        cols = np.floor(np.arange(width) * (w / width)).astype(np.int64)
        return np.ascontiguousarray(x[:, :, rows][:, :, :, cols])

    def taps(n_out, n_in):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = (src - lo).astype(np.float32)
        return lo, hi, frac

    r0, r1, fr = taps(height, h)
    c0, c1, fc = taps(width, w)
    rows = x[:, :, r0] * (1 - fr)[:, None] + x[:, :, r1] * fr[:, None]
    return np.ascontiguousarray(rows[..., c0] * (1 - fc) + rows[..., c1] * fc).astype(np.float32)


HIRES_UPSCALERS = {"latent": "Latent", "latent_nearest": "Latent (nearest)", "lanczos": "Lanczos"}


def _hires(model, prompt, negative_prompt, o: Options, x: np.ndarray, report):
    """A1111's hires fix second pass: upscale the first pass (latents, or pixels with Lanczos), then img2img at the
    hires size: hr_steps steps, the last ones of a table of int(hr_steps / hr_denoising_strength) steps (A1111's
    setup_img2img_steps for the hires pass), from fresh noise of the same seeds (A1111 draws it anew)."""
    f = model.vae_factor
    W2, H2 = o.hr_width, o.hr_height
    if o.hr_upscaler == "lanczos":
        with report.timed("decode"):
            pixels = _decode(model, x, o)
        images = to_pil(pixels)
        upscaled = np.concatenate([from_pil(img, W2, H2) for img in images])
        with report.timed("encode_image"):
            init = np.concatenate([encode_image(model.vae, upscaled[i:i + 1], None, o.vae_tiling, o.tile_size)
                                   for i in range(len(upscaled))]) * np.float32(model.vae.scaling_factor)
    else:
        init = upscale_latents(x, H2 // f, W2 // f, "bilinear" if o.hr_upscaler == "latent" else "nearest")
    steps = o.hr_steps or o.steps
    total = int(steps / min(o.hr_denoising_strength, 0.999))
    with report.timed("text_encode"):
        cond, uncond = _conditioning(model, prompt, negative_prompt, o, width=W2, height=H2, hires_steps=steps)
    table, rounding = make_table(model.train, total, o.sampler, o.schedule, model.weights.spec.family,
                                 o.timestep_spacing)
    sigmas = table.sigmas[total - steps:]
    rng = BatchRNG(o.rng, [o.seed + i for i in range(o.num_images)])
    x = init + rng.randn(init.shape) * np.float32(sigmas[0])
    return _denoise(model, o, cond, uncond, table, rounding, sigmas, x, rng, report, stage="hires")


def _cutoff(fraction: float, model) -> int:
    """diffusers' discrete_timestep_cutoff of denoising_end / denoising_start."""
    n = model.train.steps
    return int(round(n - fraction * n))


def _refiner_model(model, refiner):
    """refiner= as a loaded Model (a path is loaded here, with the base model's threads), checked to be an SDXL
    refiner-like model that takes the base's latents."""
    if refiner is None:
        return None
    from .model import Model

    if not isinstance(refiner, Model):
        refiner = Model(refiner, n_threads=model.n_threads, progress=False)
    if refiner.vae_factor != model.vae_factor or refiner.unet.in_channels != 4:
        raise ValueError(f"refiner {refiner.name}: its latents are not the base model's")
    return refiner


def _refine(refiner, prompt, negative_prompt, o: Options, x, start: int, rng, report):
    """diffusers' ensemble of experts: the refiner takes the base's latent at step `start` of the same table and
    runs the rest with its own UNet and text conditioning (denoising_start = the base's denoising_end)."""
    with refiner._lock:
        enc = refiner.prompt_encoder
        enc.set_embeddings(load_embeddings(o.embeddings_dir))
        with report.timed("text_encode"):
            cond, uncond = _conditioning(refiner, prompt, negative_prompt, o, width=o.width, height=o.height)
        table, rounding = make_table(refiner.train, o.steps, o.sampler, o.schedule, refiner.weights.spec.family,
                                     o.timestep_spacing)
        return _denoise(refiner, o, cond, uncond, table, rounding, table.sigmas[start:], x, rng, report,
                        stage="refiner")


def run(model, prompt: str, negative_prompt: str, o: Options) -> Images:
    enc = model.prompt_encoder
    pooled_dim = next((e.projection_dim for e in enc.encoders if e.component == enc.family.pooled_from), None)
    o = o.resolved(model.default_size, model.vae_factor, enc.max_clip_skip, context_dim=model.unet.context_dim,
                   pooled_dim=pooled_dim)
    if o.hr_scale is not None and (o.init_image is not None or model.unet.in_channels != 4):
        raise ValueError("hires fix (hr_scale) is a txt2img second pass: not with init_image or inpainting UNets")
    embeddings = load_embeddings(o.embeddings_dir)
    enc.set_embeddings(embeddings)  # this call's (none: none)
    # <lora:name:strength> tags leave the text before it is encoded (A1111); the PNG keeps the prompt as given.
    text_prompt, lora_tags = strip_tags(prompt)
    active_loras = model.loras.activate(model.lora_graphs(), o.loras, lora_tags)
    refiner = _refiner_model(model, o.refiner)
    out_w, out_h = (o.hr_width, o.hr_height) if o.hr_scale is not None else (o.width, o.height)
    encodes = ((o.init_image is not None and o.init_image.shape[1] == 3 and o.denoising_start is None)
               or model.unet.in_channels == 9 or (o.hr_scale is not None and o.hr_upscaler == "lanczos"))
    if encodes and not model.vae.has_encoder:
        raise ValueError(f"this call encodes an image, but {model.name}'s VAE has no encoder (a decoder-only file "
                         "such as taesd_decoder.safetensors; pass vae=[encoder, decoder] files)")
    check_tiny_tile(model.vae, o.tile_size)
    if refiner is not None:
        check_tiny_tile(refiner.vae, o.tile_size)
    o.vae_tiling = resolve_tiling(model.weights.config, o.vae_tiling, width=out_w, height=out_h)
    if o.preview is not False:  # from here on the callable that makes info["preview"]
        if o.preview is not True:
            model._load_preview(o.preview)
        o.preview = model.preview_images
    check_fits(model.weights.config, width=out_w, height=out_h, batch=o.num_images,
               cfg=o.guidance_scale != 1.0, flash_attn=model.flash_attn or _blocked_attention(model),
               vae_tiling=o.vae_tiling, tile_size=o.tile_size)
    spec = model.weights.spec
    report = GenerationReport(seed=o.seed, weights=weight_bytes(model.weights.plan))
    report.timings["load"] = model.load_seconds
    log.info("generating %d image(s) %dx%d, %s %s, %d steps, cfg %g, seed %d", o.num_images, o.width, o.height,
             o.sampler, o.schedule, o.steps, o.guidance_scale, o.seed)

    with report.timed("text_encode"):
        cond, uncond = _conditioning(model, text_prompt, negative_prompt, o, width=o.width, height=o.height)

    table, rounding = make_table(model.train, o.steps, o.sampler, o.schedule, spec.family, o.timestep_spacing)
    first, end = 0, o.steps  # the steps of the table this call runs
    if o.denoising_start is not None:
        first = int(np.sum(table.timesteps >= _cutoff(o.denoising_start, model)))
    elif o.init_image is not None:
        first = img2img_start(o.steps, o.strength)
    denoising_end = o.denoising_end if o.denoising_end is not None or refiner is None else 0.8
    if denoising_end is not None:
        end = max(first, int(np.sum(table.timesteps >= _cutoff(denoising_end, model))))
    sigmas = table.sigmas[first:end + 1]
    rng = BatchRNG(o.rng, [o.seed + i for i in range(o.num_images)])
    if o.denoising_start is not None:  # continue the given latent as it is (diffusers adds no noise)
        x, concat, blend = o.init_image.copy(), None, None
    else:
        x, concat, blend = _start(model, o, rng, sigmas, report)
    x = _denoise(model, o, cond, uncond, table, rounding, sigmas, x, rng, report, concat=concat, blend=blend)
    if o.hr_scale is not None:
        x = _hires(model, text_prompt, negative_prompt, o, x, report)
    decoder = model
    if refiner is not None:
        x = _refine(refiner, text_prompt, negative_prompt, o, x, end, rng, report)
        decoder = refiner

    with report.timed("decode"):
        decoded = _decode(decoder, x, o)
    arrays = np.clip(decoded / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)
    images = to_pil(decoded)
    report.peak_rss = peak_rss()

    infos = []
    extra = dict(o.extra)
    if o.init_image is not None:
        extra["Denoising strength"] = f"{o.strength:g}"
    if o.hr_scale is not None:  # A1111's names; Size stays the first pass's
        extra["Denoising strength"] = f"{o.hr_denoising_strength:g}"
        extra["Hires upscale"] = f"{o.hr_scale:g}"
        if o.hr_steps:
            extra["Hires steps"] = o.hr_steps
        extra["Hires upscaler"] = HIRES_UPSCALERS[o.hr_upscaler]
    if refiner is not None:  # A1111's fields
        extra["Refiner"] = refiner.name
        extra["Refiner switch at"] = f"{denoising_end:g}"
    if o.clip_skip and o.clip_skip > 1:
        extra["Clip skip"] = o.clip_skip
    extra["RNG"] = o.rng
    if active_loras:
        extra["Lora hashes"] = hashes_field(active_loras)
    for i, img in enumerate(images):
        text = a1111_parameters(prompt, negative_prompt, steps=o.steps, sampler=o.sampler, schedule=o.schedule,
                                guidance_scale=o.guidance_scale, seed=o.seed + i, width=o.width, height=o.height,
                                model=model.name, extra=extra)
        img.info["parameters"] = text
        infos.append(dict(seed=o.seed + i, parameters=text, width=img.width, height=img.height))
    log.info("done in %.2f s (sampling %.2f s)", sum(v for k, v in report.timings.items() if k != "load"),
             report.timings.get("sampling", 0.0))
    return Images(images, infos, arrays, x, report)
