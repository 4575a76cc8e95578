"""The A1111 (stable-diffusion-webui) API subset: /sdapi/v1/txt2img, img2img, progress, interrupt and the lists a
client reads (sd-models, samplers, schedulers, options, scripts)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Body, HTTPException, Request
from PIL import Image, ImageFilter, ImageOps
from starlette.concurrency import run_in_threadpool

from .. import __version__, checks
from ..pipeline.options import Options
from ..sampling import SAMPLERS
from .a1111_models import OVERRIDES, RANDN_SOURCES, Img2Img, Txt2Img, unsupported
from .encode import decode_image
from .names import resolve, sampler_list, scheduler_list
from .state import REQUEST_ERRORS, ServerState
from .worker import Call, Job, QueueFull

router = APIRouter(prefix="/sdapi/v1")


def _state(request: Request) -> ServerState:
    return request.app.state.sdcpp


def _settings(s: ServerState, overrides: dict) -> dict:
    """Server settings with a request's override_settings applied, each value checked."""
    merged = {**s.settings, **(overrides or {})}
    name = merged.get("sd_model_checkpoint")
    if name is not None and not (isinstance(name, str) and s.is_this_model(name)):
        raise ValueError(f"sd_model_checkpoint {name!r}: this server serves {s.title!r} only")
    merged["CLIP_stop_at_last_layers"] = checks.integer("CLIP_stop_at_last_layers",
                                                        merged["CLIP_stop_at_last_layers"], minimum=1)
    if merged.get("randn_source", "GPU") not in RANDN_SOURCES:
        raise ValueError(f"randn_source must be one of {list(RANDN_SOURCES)}, got {merged['randn_source']!r}")
    if merged["eta_noise_seed_delta"] != 0:
        raise ValueError("eta_noise_seed_delta other than 0 is not supported")
    if merged["samples_format"] != "png":
        raise ValueError(f"samples_format {merged['samples_format']!r}: the server returns PNGs")
    return merged


def _mask(r: Img2Img, s: ServerState, size: tuple[int, int]) -> Image.Image:
    mask = decode_image(r.mask, "mask", s.limits.max_input_pixels).convert("L")
    if r.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    bx = r.mask_blur if r.mask_blur is not None else r.mask_blur_x
    by = r.mask_blur if r.mask_blur is not None else r.mask_blur_y
    if bx < 0 or by < 0 or max(bx, by) > 256:
        raise ValueError(f"mask_blur must be 0 to 256 pixels, got {bx}, {by}")
    if bx or by:
        mask = mask.filter(ImageFilter.GaussianBlur((bx, by)))
    return ImageOps.fit(mask, size, Image.NEAREST) if r.resize_mode == 1 else mask


def build(r: Txt2Img, s: ServerState) -> tuple[Job, dict]:
    """The job a request stands for, every value checked first (ValueError/TypeError: 422). Runs in a thread: it
    decodes images."""
    problems = unsupported(r)
    if problems:
        raise ValueError("not supported: " + "; ".join(problems))
    s.check_text("prompt", r.prompt)
    s.check_text("negative_prompt", r.negative_prompt)
    s.check_size(r.width, r.height)
    s.check_steps(r.steps)
    if r.batch_size < 1 or r.n_iter < 1:
        raise ValueError(f"batch_size and n_iter must be >= 1, got {r.batch_size} and {r.n_iter}")
    s.check_images(r.batch_size * r.n_iter, "batch_size x n_iter")
    sampler, schedule = resolve(r.sampler_name or r.sampler_index, r.scheduler)
    settings = _settings(s, r.override_settings)
    seed = s.seed(r.seed)
    skip = settings["CLIP_stop_at_last_layers"]
    options: dict[str, Any] = dict(
        width=r.width, height=r.height, steps=r.steps, guidance_scale=r.cfg_scale, sampler=sampler,
        schedule=schedule, seed=seed, num_images=r.batch_size, clip_skip=skip if skip > 1 else None, eta=r.eta,
        rng=RANDN_SOURCES[settings["randn_source"]] if "randn_source" in settings else s.rng)
    kind = "txt2img"
    if isinstance(r, Img2Img):
        kind = "img2img"
        if not r.init_images:
            raise ValueError("init_images: img2img needs one image")
        if r.denoising_strength is None or not 0.0 <= r.denoising_strength <= 1.0:
            raise ValueError(f"denoising_strength must be in [0, 1], got {r.denoising_strength}")
        init = decode_image(r.init_images[0], "init_images[0]", s.limits.max_input_pixels).convert("RGB")
        size = (r.width, r.height)
        options.update(init_image=ImageOps.fit(init, size, Image.LANCZOS) if r.resize_mode == 1 else init,
                       strength=r.denoising_strength)
        if r.mask:
            options["mask_image"] = _mask(r, s, size)
    model = s.model
    Options(**options).resolved(model.default_size, model.vae_factor, model.prompt_encoder.max_clip_skip)
    calls = [Call(r.prompt, r.negative_prompt, {**options, "seed": seed + j * r.batch_size})
             for j in range(r.n_iter)]
    return Job(kind, calls), dict(sampler=sampler, schedule=schedule, seed=seed, clip_skip=skip)


def _info(r: Txt2Img, s: ServerState, job: Job, meta: dict, result) -> str:
    seeds = result.seeds
    info = dict(
        prompt=r.prompt, all_prompts=[r.prompt] * len(seeds), negative_prompt=r.negative_prompt,
        all_negative_prompts=[r.negative_prompt] * len(seeds), seed=meta["seed"], all_seeds=seeds,
        subseed=-1, all_subseeds=[-1] * len(seeds), subseed_strength=0, width=r.width, height=r.height,
        sampler_name=SAMPLERS[meta["sampler"]].a1111, scheduler=meta["schedule"], cfg_scale=r.cfg_scale,
        steps=r.steps, batch_size=r.batch_size, restore_faces=False, face_restoration_model=None,
        sd_model_name=s.model.name, sd_model_hash=None, sd_vae_name=None, sd_vae_hash=None,
        seed_resize_from_w=-1, seed_resize_from_h=-1,
        denoising_strength=r.denoising_strength if isinstance(r, Img2Img) else None,
        extra_generation_params={}, index_of_first_image=0, infotexts=result.infotexts, styles=[],
        job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(result.started)), clip_skip=meta["clip_skip"],
        is_using_inpainting_conditioning=s.model.unet.in_channels == 9, version=f"sdcpp {__version__}",
        # sdcpp's own: which job this was, when it ran, whether /interrupt stopped it (and after how many steps)
        job_id=job.id, started=result.started, finished=result.finished, interrupted=result.interrupted,
        steps_done=result.steps_done)
    return json.dumps(info)


async def _generate(r: Txt2Img, request: Request) -> dict:
    s = _state(request)
    try:
        job, meta = await run_in_threadpool(build, r, s)
        future = s.worker.submit(job)
    except QueueFull as e:
        raise HTTPException(503, str(e), headers={"Retry-After": "5"}) from None
    except REQUEST_ERRORS as e:
        raise HTTPException(422, str(e)) from None
    try:
        result = await asyncio.wrap_future(future)
    except QueueFull as e:
        raise HTTPException(503, str(e)) from None
    except REQUEST_ERRORS as e:
        raise HTTPException(422, str(e)) from None
    params = r.model_dump()
    if isinstance(r, Img2Img) and not r.include_init_images:
        params.update(init_images=None, mask=None)  # as A1111: the images are not echoed back
    return dict(images=result.images if r.send_images else [], parameters=params, info=_info(r, s, job, meta, result))


@router.post("/txt2img")
async def txt2img(r: Txt2Img, request: Request):
    return await _generate(r, request)


@router.post("/img2img")
async def img2img(r: Img2Img, request: Request):
    return await _generate(r, request)


@router.get("/progress")
async def progress(request: Request, skip_current_image: bool = False):
    s = _state(request)
    p = s.worker.progress(want_image=not skip_current_image)
    job = p["job"]
    count = len(job.calls) if job else 0
    value = 0.0
    if count:
        value = p["call_no"] / count + (p["step"] / p["steps"] / count if p["steps"] else 0.0)
    value = min(value, 1.0)
    elapsed = time.time() - p["started"] if job else 0.0
    eta = elapsed / value - elapsed if value > 0 else 0.0
    state = dict(skipped=False, interrupted=bool(job and job.interrupted), stopping_generation=False,
                 job=f"job {job.id}" if job else "", job_count=count,
                 job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(p["started"])) if job else "0",
                 job_no=p["call_no"], sampling_step=p["step"], sampling_steps=p["steps"], queued=p["queued"])
    return dict(progress=value, eta_relative=eta, state=state, current_image=p["preview"], textinfo=None,
                current_task=f"job {job.id}" if job else None)


@router.post("/interrupt")
async def interrupt(request: Request):
    return {"interrupted": _state(request).worker.interrupt()}


@router.get("/sd-models")
async def sd_models(request: Request):
    s = _state(request)
    return [dict(title=s.title, model_name=s.model.name, hash=None, sha256=None, filename=s.path, config=None)]


@router.get("/samplers")
async def samplers():
    return sampler_list()


@router.get("/schedulers")
async def schedulers():
    return scheduler_list()


@router.get("/scripts")
async def scripts():
    return dict(txt2img=[], img2img=[])


@router.get("/options")
async def get_options(request: Request):
    s = _state(request)
    return dict(s.settings, sd_model_checkpoint=s.title, sd_checkpoint_hash=None,
                randn_source=s.settings.get("randn_source", "GPU" if s.rng == "philox" else "CPU"))


@router.post("/options")
async def set_options(request: Request, body: dict[str, Any] = Body(...)):  # noqa: B008 (FastAPI's idiom)
    s = _state(request)
    unknown = [k for k in body if k not in OVERRIDES]
    if unknown:
        raise HTTPException(422, f"options {unknown} are not supported (supported: {', '.join(OVERRIDES)})")
    try:
        settings = _settings(s, body)
    except REQUEST_ERRORS as e:
        raise HTTPException(422, str(e)) from None
    settings.pop("sd_model_checkpoint", None)
    s.settings = settings
    return None
