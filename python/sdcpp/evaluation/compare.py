"""`sdcpp.evaluate`: what each weight type does to one model — bytes, speed, memory, and error against a reference
run with the same seeds and start noise, per component, end to end, and attributed to the component it comes from."""

from __future__ import annotations

import os
import statistics
import time

from tqdm.auto import tqdm

from .. import checks
from ..errors import Cancelled
from ..ggml_types import normalize_request_type
from ..index import model_paths
from ..request import QuantRequest
from . import metrics
from .report import EvaluationReport, Row
from .run import Job, run_isolated, run_job

REFERENCES = {"f32": {"type": "f32"}, "source": {}}
# Which request field quantizes which part, for `components=` and the attribution runs.
PARTS = {"unet": "unet_type", "text encoders": "te_type", "vae": "vae_type"}
_PART_NAMES = {"unet": "unet", "text_encoders": "text encoders", "text encoders": "text encoders",
               "te": "text encoders", "vae": "vae"}


def _parts(components) -> list[str]:
    if components == "all":
        return list(PARTS)
    items = [components] if isinstance(components, str) else list(components)
    parts = []
    for c in items:
        if c not in _PART_NAMES:
            raise ValueError(f"unknown component {c!r}; use 'all' or some of 'unet', 'text_encoders', 'vae'")
        parts.append(_PART_NAMES[c])
    return list(dict.fromkeys(parts))


def _request(qtype: str, parts: list[str], reference: dict) -> dict:
    """The request that quantizes `parts` to `qtype` and leaves the rest as the reference stores it."""
    if parts == list(PARTS):
        return {"type": qtype}
    return dict(reference, **{PARTS[p]: qtype for p in parts})


def probe_sigmas(family: str, steps: int, sampler: str, schedule: str) -> tuple[float, ...]:
    """Where the UNet is probed: the first sigma of the generation's table, the middle one and the last non-zero."""
    from ..pipeline.schedule import make_table
    from ..sampling import TrainSchedule

    sigmas = [float(s) for s in make_table(TrainSchedule.sd(), steps, sampler, schedule, family)[0].sigmas if s > 0]
    picks = [sigmas[0], sigmas[len(sigmas) // 2], sigmas[-1]]
    return tuple(dict.fromkeys(picks))


def _row(label: str, request: dict, out: dict, ref: dict, sigmas) -> Row:
    per_image = []
    for key, got in out["images"].items():
        want = ref["images"][key]
        per_image.append(dict(prompt=key[0], seed=key[1],
                              latent_rel_l2=metrics.rel_l2(got["latents"], want["latents"]),
                              psnr=metrics.psnr(got["image"], want["image"]),
                              ssim=metrics.ssim(got["image"], want["image"])))
    te = [(metrics.rel_l2(out["te"][i]["context"], ref["te"][i]["context"]),
           metrics.cosine(out["te"][i]["context"], ref["te"][i]["context"]),
           None if ref["te"][i]["pooled"] is None else metrics.rel_l2(out["te"][i]["pooled"], ref["te"][i]["pooled"]))
          for i in ref["te"]]
    return Row(
        label=label, request=request,
        bytes={comp: sum(types.values()) for comp, types in out["bytes"].items()},
        load_s=out["load_s"], step_s=statistics.median(out["step_times"]) if out["step_times"] else None,
        text_encode_s=statistics.fmean(out["text_encode_s"]),
        decode_s=statistics.fmean(out["decode_s"]) if out["decode_s"] else None, peak_rss=out["peak_rss"],
        te_rel_l2=metrics.mean(t[0] for t in te), te_cosine=metrics.mean(t[1] for t in te),
        pooled_rel_l2=metrics.mean(t[2] for t in te),
        unet_rel_l2={f"{s:.4g}": metrics.rel_l2(got, want) for s, got, want in zip(sigmas, out["unet"], ref["unet"],
                                                                                     strict=True)},
        vae_psnr=metrics.psnr(out["vae"], ref["vae"]) if "vae" in out and "vae" in ref else None,
        latent_rel_l2=metrics.mean(p["latent_rel_l2"] for p in per_image),
        psnr=metrics.mean(p["psnr"] for p in per_image) if per_image else None,
        ssim=metrics.mean(p["ssim"] for p in per_image), per_image=per_image)


def evaluate(model, types=("f16", "q8_0", "q4_K"), prompts=("a photograph of a cat on a sofa, sharp focus",),
             seeds=(0,), *, steps: int = 8, width: int | None = None, height: int | None = None,
             sampler: str = "euler", schedule: str = "discrete", guidance_scale: float = 7.0,
             negative_prompt: str = "", reference: str = "f32", components="all", attribution: bool = True,
             n_threads: int = 0, isolate: bool = True, progress=True, unet=None, vae=None, text_encoder=None,
             text_encoder_2=None, prediction=None) -> EvaluationReport:
    """Measure each weight type on `model` against `reference` ("f32": every tensor f32; "source": the stored
    types), with the same prompts, seeds and start noise.

    Per type: bytes per component (as inspect() reports them), load time, median s/step, text-encode and decode
    time, peak RSS (each configuration runs in its own process when `isolate`, so peaks don't mix); errors of
    the text encoders' conditioning (rel-L2, cosine; pooled on SDXL), of one UNet prediction at three sigmas of
    the schedule (rel-L2), of the VAE decoding the reference's final latents (PSNR), and end to end (final
    latents rel-L2, image PSNR and SSIM). `components`: "all" or some of "unet", "text_encoders", "vae" (the
    others stay at the reference); `attribution` adds one run per type and component with only that component
    quantized, to show where the error comes from. `progress`: True (bar), False, or callback(done, total,
    label) -> False to cancel (sdcpp.Cancelled)."""
    types = [normalize_request_type(t) for t in types]
    if not types:
        raise ValueError("types must name at least one weight type")
    if reference not in REFERENCES:
        raise ValueError(f"reference must be 'f32' or 'source', got {reference!r}")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a non-empty list of strings")
    seeds = [checks.integer("seed", s, minimum=0, maximum=2**63) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    steps = checks.integer("steps", steps, minimum=1, maximum=1000)
    n_threads = checks.threads(n_threads)
    parts = _parts(components)
    load = {k: v for k, v in dict(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                  prediction=prediction).items() if v is not None}
    ref_request = REFERENCES[reference]
    QuantRequest.make(**ref_request)
    from ..api import inspect  # headers only: the family for the probe sigmas, and a bad path fails here

    spec = inspect(model, **{k: v for k, v in load.items() if k != "prediction"}, prediction=prediction).spec
    sigmas = probe_sigmas(spec.family, steps, sampler, schedule)
    gen = dict(steps=steps, width=width, height=height, sampler=sampler, schedule=schedule,
               guidance_scale=guidance_scale)

    jobs = [("reference", ref_request, None)]
    for t in types:
        jobs.append((t, _request(t, parts, ref_request), None))
        if attribution and len(parts) > 1:
            jobs += [(f"{t} {p} only", _request(t, [p], ref_request), t) for p in parts]
    run = run_isolated if isolate else run_job
    start = time.perf_counter()
    bar = None if callable(progress) else tqdm(total=len(jobs), desc="evaluating", unit="run",
                                               disable=None if progress else True)
    results: dict[str, dict] = {}
    try:
        for done, (label, request, _) in enumerate(jobs):
            if callable(progress) and progress(done, len(jobs), label) is False:
                raise Cancelled(f"evaluation cancelled after {done} of {len(jobs)} runs")
            ref_inputs = results["reference"]["inputs"] if results else None
            results[label] = run(Job(model, request, load, tuple(prompts), negative_prompt, tuple(seeds), gen,
                                     n_threads, sigmas, ref_inputs))
            if bar is not None:
                bar.set_postfix_str(label)
                bar.update(1)
        if callable(progress):
            progress(len(jobs), len(jobs), "done")
    finally:
        if bar is not None:
            bar.close()

    ref = results["reference"]
    rows = [_row(t, req, results[t], ref, sigmas) for t, req, owner in jobs if owner is None]
    attributed: dict[str, list[Row]] = {}
    for label, req, owner in jobs:
        if owner is not None:
            attributed.setdefault(owner, []).append(_row(label, req, results[label], ref, sigmas))
    any_image = next(iter(ref["images"].values()), None)
    h, w = any_image["image"].shape[:2] if any_image else (height, width)
    settings = dict(prompts=prompts, seeds=seeds, steps=steps, width=w, height=h, sampler=sampler,
                    schedule=schedule, guidance_scale=guidance_scale, negative_prompt=negative_prompt,
                    components=parts, probe_sigmas=list(sigmas), n_threads=n_threads, isolate=isolate)
    path = os.path.normpath(os.fspath(model_paths(model)[0]))
    name = os.path.basename(path)
    if os.path.isdir(path):  # diffusers folders are often named "diffusers" or by revision: keep the parent too
        name = os.path.join(os.path.basename(os.path.dirname(path)), name)
    images = {label: [v["image"] for v in out["images"].values()] for label, out in results.items()}
    return EvaluationReport(name, reference, settings, rows, attributed, time.perf_counter() - start, images)
