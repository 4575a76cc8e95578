"""Public entry points. Each one runs the same path: open -> canonical index -> detect -> plan."""

from __future__ import annotations

import json
import logging
import os

from . import checks
from .config.model_config import model_config
from .config.shapes import Shapes
from .destination import check_destination
from .detect import detect
from .errors import QuantRequestError
from .index import TensorIndex, model_paths, open_model
from .plan import LAYOUTS, QuantPlan, make_plan
from .report import Inspection
from .request import QuantRequest

log = logging.getLogger("sdcpp")


def _source_paths(model, *components) -> list:
    return model_paths(model) + [c for c in components if c is not None]


def _prepare(model, unet=None, vae=None, text_encoder=None, text_encoder_2=None, prediction=None, strict=False,
             layout="sdcpp", loras=None, lora_mode="auto", **request) -> tuple[TensorIndex, QuantPlan]:
    """strict: refuse (before any weight is read) components whose shapes contradict each other. loras: read and
    resolved on the model's canonical names (sdcpp.lora); merged ones become `index.merges`."""
    from .lora import attach_loras, check_mode, parse_loras

    req = QuantRequest.make(**request)  # validate the request before touching any file
    lora_list, lora_mode = parse_loras(loras), check_mode(lora_mode)
    if layout not in LAYOUTS:
        raise QuantRequestError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    index = open_model(model, unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2)
    try:
        spec = detect(index, prediction)
        plan = make_plan(index, model_config(Shapes.of_index(index), index.configs, spec), req, layout)
        if strict:
            plan.config.check()
        if lora_list:
            index.loras = attach_loras({t.name: t.shape for t in index}, spec.family,
                                       {e.name: e.type for e in plan}, lora_list, lora_mode)
            index.merges = index.loras.merges()
    except BaseException:
        index.close()
        raise
    for path, name in index.notes.unknown:
        log.warning("%s: unknown tensor '%s' is not loaded", path, name)
    return index, plan


def inspect(model, *, unet=None, vae=None, text_encoder=None, text_encoder_2=None, prediction=None,
            type=None, unet_type=None, te_type=None, vae_type=None, rules=None, layout="sdcpp", loras=None,
            lora_mode="auto") -> Inspection:
    """Read headers only (no tensor data) and report the detected model and what a request would store.

    `model`: a .safetensors / .gguf file, a diffusers folder, or a list of them (later ones replace the
    components they hold); `vae=` etc.: single-component files. `type`, `unet_type`, `te_type`,
    `vae_type`: f32, f16, bf16, q8_0, q5_0, q5_1, q4_0, q4_1, q2_K..q6_K; `rules`: "regex=type" items on
    canonical names, first match wins. `layout`: what `quantize(layout=...)` would store ("stable-diffusion.cpp"
    adds that layout's fallbacks, each with its reason). `loras`: LoRA files (or (path, strength) pairs) whose
    layers, modes and unmatched keys the report lists (`Inspection.loras`)."""
    index, plan = _prepare(model, unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                           prediction=prediction, type=type, unet_type=unet_type, te_type=te_type, vae_type=vae_type,
                           rules=rules, layout=layout, loras=loras, lora_mode=lora_mode)
    index.close()
    return Inspection.build(index, plan)


def quantize(src, dst, *, unet=None, vae=None, text_encoder=None, text_encoder_2=None, prediction=None,
             type=None, unet_type=None, te_type=None, vae_type=None, rules=None, n_threads: int = 0,
             progress=True, budget=None, max_error=None, budget_types=None, budget_prompts=None,
             layout="sdcpp", loras=None) -> Inspection:
    """Write a GGUF holding every tensor in its planned type, with sdcpp metadata (family, prediction,
    request, policy version, original shapes of flattened kernels). Written to a temporary file and
    renamed into place; on any error or Ctrl-C nothing is left at `dst`.

    layout: "sdcpp" (canonical names, conv kernels as rows) or "stable-diffusion.cpp": the original single-file
    names and shapes that stable-diffusion.cpp loads (as its `--mode convert` writes them: OpenCLIP q/k/v fused,
    4-D conv kernels), where conv kernels cannot be quantized (kept f16, reasons in the returned report).

    budget ("1.2GB", "900MiB", bytes) or max_error (relative L2 at the components' outputs): choose a type per
    tensor group from measured sensitivity (sdcpp.evaluation.sensitivity, over `budget_types`, default f16, q8_0,
    q5_K, q4_K) to minimise the error within the budget, or the size within the error. The choice becomes rules
    (after yours); the rules, predicted and measured errors go into the GGUF (`sdcpp.budget`) and inspect().

    loras: LoRA files or (path, strength) pairs baked in: merged in float32 into the source weights before the
    conversion to the planned types (sdcpp.lora), their names and hashes recorded as `sdcpp.loras`."""
    from .quant.gguf_out import write_gguf

    n_threads = checks.threads(n_threads)
    check_destination(dst, _source_paths(src, unet, vae, text_encoder, text_encoder_2))
    extra = {}
    if budget is not None or max_error is not None:
        if layout != "sdcpp":
            raise QuantRequestError("budget/max_error are measured on sdcpp's own layout; "
                                    f"they cannot choose types for layout={layout!r}")
        if any(t is not None for t in (type, unet_type, te_type, vae_type)):
            raise QuantRequestError("budget/max_error choose the types; give rules= to pin tensors, not type=")
        QuantRequest.make(rules=rules)  # a bad rule fails before the measurement
        from .evaluation.budget import budget_rules

        chosen, meta = budget_rules(src, budget=budget, max_error=max_error, types=budget_types,
                                    prompts=budget_prompts, n_threads=n_threads, progress=progress,
                                    prediction=prediction, **{k: v for k, v in dict(
                                        unet=unet, vae=vae, text_encoder=text_encoder,
                                        text_encoder_2=text_encoder_2).items() if v is not None})
        rules = [*QuantRequest.make(rules=rules).rules_text(), *chosen]
        type, extra = "f32", {"sdcpp.budget": json.dumps(meta)}
    index, plan = _prepare(src, unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                           prediction=prediction, strict=True, type=type, unet_type=unet_type, te_type=te_type,
                           vae_type=vae_type, rules=rules, layout=layout, loras=loras, lora_mode="merge")
    if index.loras:
        extra["sdcpp.loras"] = json.dumps([dict(name=i.file.name, hash=i.file.short_hash, strength=i.strength)
                                           for i in index.loras.items])
    try:
        write_gguf(dst, index, plan, n_threads=n_threads, progress=progress, extra_metadata=extra)
    finally:
        index.close()
    log.info("wrote %s (%d tensors)", os.fspath(dst), len(plan))
    return Inspection.build(index, plan, json.loads(extra["sdcpp.budget"]) if "sdcpp.budget" in extra else None)


def load_weights(model, *, device: str = "cpu", n_threads: int = 0, progress=True, unet=None, vae=None,
                 text_encoder=None, text_encoder_2=None, prediction=None, type=None, unet_type=None,
                 te_type=None, vae_type=None, rules=None, strict: bool = False, loras=None, lora_mode="auto"):
    """Load every tensor in its planned type into one ggml backend buffer (quantize-on-load).

    strict: refuse a model whose tensors contradict each other (ModelFormatError naming the tensor and both
    shapes) before reading any weight, as sdcpp.Model does; otherwise such a component loads but cannot run.
    loras / lora_mode: LoRA files merged at ingest or kept for the graphs (`Weights.loras`), see sdcpp.lora."""
    from .weights import load_planned

    n_threads = checks.threads(n_threads)
    index, plan = _prepare(model, unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                           prediction=prediction, strict=strict, type=type, unet_type=unet_type, te_type=te_type,
                           vae_type=vae_type, rules=rules, loras=loras, lora_mode=lora_mode)
    try:
        weights = load_planned(index, plan, device=device, n_threads=n_threads, progress=progress)
        weights.loras = index.loras
        return weights
    finally:
        index.close()
