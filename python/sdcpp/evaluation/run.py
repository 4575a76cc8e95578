"""One measured configuration (a weight-type request): load, time and probe a model, in a process of its own.

The parent (compare.py) runs the reference first; its conditioning and final latents become the inputs of
every other run's component probes, so each component's error is measured on identical inputs:
    text encoders  the conditioning of each prompt (context, and the pooled vector on SDXL)
    UNet           one prediction at a few sigmas, on the reference's conditioning and start noise
    VAE            the decode of the reference's final latents
End to end, every (prompt, seed) is generated with the same seed and start noise as the reference."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Job:
    model: object  # a path or a list of paths, as for sdcpp.Model
    request: dict  # type / unet_type / te_type / vae_type / rules
    load: dict = field(default_factory=dict)  # unet=, vae=, text_encoder=, text_encoder_2=, prediction=
    prompts: tuple[str, ...] = ("a photograph of a cat",)
    negative_prompt: str = ""
    seeds: tuple[int, ...] = (0,)
    generate: dict = field(default_factory=dict)  # steps, width, height, sampler, schedule, guidance_scale
    n_threads: int = 0
    probe_sigmas: tuple[float, ...] = ()
    reference: dict | None = None  # the reference run's "inputs" (None: this is the reference)
    end_to_end: bool = True


def unet_predictions(model, cond: dict, sigmas, seed: int, width: int, height: int) -> np.ndarray:
    """The UNet's raw predictions [len(sigmas), 4, h, w] on start noise of `seed` at each sigma, in one batch, with
    `cond` (a Conditioning.as_dict(1)); inpainting UNets get a whole-image mask and an empty masked image."""
    from ..pipeline.denoise import UNetModel
    from ..sampling import Denoiser, NumpyRNG

    f, n = model.vae_factor, len(sigmas)
    noise = NumpyRNG(seed).randn((1, 4, height // f, width // f))
    x = np.concatenate([noise * np.float32(s) for s in sigmas])
    cond = {k: np.repeat(v, n, axis=0) for k, v in cond.items()}
    if model.unet.in_channels == 9:
        cond["concat"] = np.concatenate([np.ones((n, 1, *x.shape[2:]), np.float32), np.zeros_like(x)], axis=1)
    denoiser = Denoiser(UNetModel(model.unet), model.train, model.spec.prediction)
    t = np.array([denoiser.timestep(s) for s in sigmas], np.float32)
    c_in = np.array([denoiser.scalings(s)[2] for s in sigmas], np.float32)[:, None, None, None]
    return denoiser.model(x * c_in, t, cond)


def decode_image(model, latents: np.ndarray) -> np.ndarray:
    """VAE-scaled latents [4, h, w] -> image [H, W, 3] in [0, 1]."""
    decoded = model.vae.decode(latents[None] / np.float32(model.vae.scaling_factor))
    return np.clip(decoded[0] / 2 + 0.5, 0.0, 1.0).transpose(1, 2, 0)


def run_job(job: Job) -> dict:
    from ..pipeline import Model
    from ..pipeline.conditioning import build_conditioning
    from ..pipeline.report import peak_rss, weight_bytes

    start = time.perf_counter()
    model = Model(job.model, n_threads=job.n_threads, progress=False, **job.load,
                  **{k: v for k, v in job.request.items() if v is not None})
    out: dict = dict(load_s=time.perf_counter() - start, bytes=weight_bytes(model.weights.plan), text_encode_s=[],
                     decode_s=[], step_times=[], te={}, images={})
    g = dict(job.generate)
    width, height = g.get("width") or model.default_size, g.get("height") or model.default_size
    g.update(width=width, height=height)
    conds = {}
    for i, prompt in enumerate(job.prompts):
        t0 = time.perf_counter()
        cond, _ = build_conditioning(model.prompt_encoder, prompt, job.negative_prompt, height=height, width=width)
        conds[i] = cond.as_dict(1)
        out["te"][i] = dict(context=cond.context, pooled=cond.text_embeds)
        out["text_encode_s"].append(time.perf_counter() - t0)
    ref = job.reference or dict(conditioning=conds)
    out["unet"] = unet_predictions(model, ref["conditioning"][0], job.probe_sigmas, job.seeds[0], width, height)
    if job.end_to_end:
        for i, prompt in enumerate(job.prompts):
            for seed in job.seeds:
                images = model.generate(prompt, job.negative_prompt, seed=seed, progress=False, **g)
                out["images"][i, seed] = dict(latents=images.latents[0], image=images.arrays[0])
                out["step_times"] += images.report.step_times
                out["decode_s"].append(images.report.timings.get("decode", 0.0))
    latents = ref.get("latents")
    if latents is None and out["images"]:
        latents = out["images"][0, job.seeds[0]]["latents"]
    if latents is not None:
        out["vae"] = decode_image(model, latents)
    out["inputs"] = dict(conditioning=conds, latents=latents)
    out["peak_rss"] = peak_rss()
    return out


def run_isolated(job: Job) -> dict:
    """run_job in a fresh Python process, so each configuration's peak memory is its own. A Ctrl-C in the parent
    reaches the child (same process group) and is re-raised here once the child is gone."""
    with tempfile.TemporaryDirectory(prefix="sdcpp-eval-") as tmp:
        job_path, out_path = os.path.join(tmp, "job.pkl"), os.path.join(tmp, "out.pkl")
        with open(job_path, "wb") as f:
            pickle.dump(job, f)
        proc = subprocess.Popen([sys.executable, "-m", "sdcpp.evaluation._child", job_path, out_path])
        try:
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code != 0 or not os.path.exists(out_path):
            raise RuntimeError(f"the evaluation of {job.request} failed in its child process (exit code {code})")
        with open(out_path, "rb") as f:
            result = pickle.load(f)
    if isinstance(result, BaseException):
        raise result
    return result
