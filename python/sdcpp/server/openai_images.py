"""OpenAI's images API: POST /v1/images/generations (b64_json responses) and GET /v1/models. Errors come in OpenAI's
shape ({"error": {"message", "type", "param", "code"}}, status 400) so that its clients raise BadRequestError.

Besides OpenAI's fields a request may carry sdcpp's (negative_prompt, seed, steps, cfg_scale, sampler_name,
scheduler: the A1111 names), e.g. through the openai client's `extra_body`."""

from __future__ import annotations

import asyncio
import re
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .fields import Bool, Float, Int, RequestBody, Str
from .names import resolve
from .state import REQUEST_ERRORS, ServerState
from .worker import Call, Job, QueueFull

router = APIRouter(prefix="/v1")
_SIZE = re.compile(r"^(\d{1,6})x(\d{1,6})$")


class ImageGeneration(RequestBody):
    prompt: Str
    model: Str | None = None
    n: Int | None = 1
    size: Str | None = None  # "WxH" or "auto" (the model's native size)
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp", "gif", "svg"] | None = None
    quality: Literal["auto", "standard", "hd", "low", "medium", "high", "xhigh", "max"] | None = None
    style: Literal["vivid", "natural"] | None = None
    background: Literal["auto", "opaque", "transparent"] | None = None
    moderation: Literal["auto", "low"] | None = None
    output_compression: Int | None = None
    partial_images: Int | None = None
    stream: Bool | None = None
    user: Str | None = None
    safety_identifier: Str | None = None
    # sdcpp's
    negative_prompt: Str = ""
    seed: Int = -1
    steps: Int = 20
    cfg_scale: Float = 7.0
    sampler_name: Str | None = None
    scheduler: Str | None = None


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                   "code": code}}, status)


class _Refused(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _job(r: ImageGeneration, s: ServerState) -> tuple[Job, int, int]:
    if r.model is not None and not s.is_this_model(r.model):
        raise _Refused(f"model {r.model!r} is not served here; this server serves {s.title!r}", "model")
    if r.response_format == "url":
        raise _Refused("response_format 'url' is not supported (the server keeps no files): use b64_json",
                       "response_format")
    if r.output_format not in (None, "png"):
        raise _Refused(f"output_format {r.output_format!r} is not supported: use png", "output_format")
    if r.background == "transparent":
        raise _Refused("transparent backgrounds are not supported", "background")
    if r.stream or r.partial_images:
        raise _Refused("streaming and partial images are not supported", "stream")
    s.check_text("prompt", r.prompt)
    s.check_text("negative_prompt", r.negative_prompt)
    n = 1 if r.n is None else r.n
    s.check_images(n, "n")
    if r.size in (None, "auto"):
        width = height = s.model.default_size
    elif m := _SIZE.match(r.size):
        width, height = int(m.group(1)), int(m.group(2))
    else:
        raise _Refused(f"size must be 'WIDTHxHEIGHT' or 'auto', got {r.size!r:.40}", "size")
    s.check_size(width, height)
    s.check_steps(r.steps)
    sampler, schedule = resolve(r.sampler_name, r.scheduler)
    options = dict(width=width, height=height, steps=r.steps, guidance_scale=r.cfg_scale, sampler=sampler,
                   schedule=schedule, seed=s.seed(r.seed), num_images=n, rng=s.rng)
    return Job("openai", [Call(r.prompt, r.negative_prompt, options)]), width, height


@router.post("/images/generations")
async def generations(r: ImageGeneration, request: Request):
    s: ServerState = request.app.state.sdcpp
    try:
        job, width, height = _job(r, s)
        future = s.worker.submit(job)
        result = await asyncio.wrap_future(future)
    except _Refused as e:
        return openai_error(400, str(e), e.param)
    except QueueFull as e:
        return openai_error(429, str(e), code="queue_full")
    except REQUEST_ERRORS as e:
        return openai_error(400, str(e))
    if result.interrupted and not result.images:
        return openai_error(409, "the generation was interrupted before its first step", code="interrupted")
    return dict(created=int(result.started), data=[dict(b64_json=b, revised_prompt=None) for b in result.images],
                background="opaque", output_format="png", size=f"{width}x{height}", quality=r.quality or "auto")


@router.get("/models")
async def models(request: Request):
    s: ServerState = request.app.state.sdcpp
    return dict(object="list", data=[dict(id=s.title, object="model", created=0, owned_by="sdcpp")])
