"""The quantization plan: a pure function of (canonical index, model spec, request). It is the only
place that decides a tensor's stored type, and it reads headers only."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from . import ggml_types
from .config.model_config import ModelConfig
from .detect import ModelSpec
from .errors import QuantRequestError
from .index import TensorIndex
from .names.canonicalize import CanonicalTensor
from .names.original import original_layout
from .request import QuantRequest

POLICY_VERSION = 1

# Tensors below this many elements stay f32: quantizing them saves nothing and costs accuracy.
SMALL_TENSOR = 1024
# Layers every pixel or token passes through once and that set the scale of everything after them; kept
# f16 under quantized requests (stable-diffusion.cpp and ComfyUI-GGUF keep them unquantized too).
SENSITIVE = re.compile(r"^unet\.(conv_in|conv_out|time_embedding|add_embedding)\.|"
                       r"^text_encoder(_2)?\.text_model\.embeddings\.position_embedding\.")
SENSITIVE_REASON = "precision-sensitive layer (input/output conv, timestep or position embedding) kept f16"
# Rows that don't fit a K-quant's 256-element block fall back to the 32-block type of nearest bits.
K_FALLBACK = {"q2_K": "q4_0", "q3_K": "q4_0", "q4_K": "q4_0", "q5_K": "q5_0", "q6_K": "q8_0"}

# File layouts: "sdcpp" (canonical names, conv kernels as rows of in*kh*kw) and "stable-diffusion.cpp" (the
# original single-file names and shapes that stable-diffusion.cpp reads, as its `--mode convert` writes them).
LAYOUTS = ("sdcpp", "stable-diffusion.cpp")
SD_CPP = "stable-diffusion.cpp"
SD_CPP_KERNEL_REASON = ("stable-diffusion.cpp layout: conv kernels are 4-D [out, in, kh, kw], rows of kw = 1 or 3 "
                        "elements fit no quantization block (stable-diffusion.cpp computes convs in f16)")
SD_CPP_TRANSPOSED_REASON = ("stable-diffusion.cpp layout: OpenCLIP's text_projection is stored transposed "
                            "(it computes it in f32)")
SD_CPP_FUSED_REASON = "stable-diffusion.cpp layout: fused with its k/v into OpenCLIP's attn.in_proj (one type)"
# ggml's get_rows (the token-embedding lookup) reads these types; stable-diffusion.cpp widens others to f32 at load.
SD_CPP_GET_ROWS = ("f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
SD_CPP_EMBEDDING_REASON = ("stable-diffusion.cpp layout: token embeddings are gathered from f16/q8_0/q5_x/q4_x "
                           "only (it widens other types to f32 at load)")


@dataclass(frozen=True)
class PlanEntry:
    name: str
    component: str
    shape: tuple[int, ...]
    rows: tuple[int, int]  # (rows, elements per row) as stored
    source_type: str
    requested: str | None  # what the request asked for this tensor (None: keep the stored type)
    type: str  # what the plan chose
    reason: str | None  # why `type` differs from `requested`; None when it doesn't
    bytes_before: int
    bytes_after: int

    def key(self):
        """What must be identical for the same model in any format."""
        return (self.name, self.shape, self.requested, self.type, self.reason)


@dataclass(frozen=True)
class QuantPlan:
    entries: dict[str, PlanEntry]
    config: ModelConfig
    request: QuantRequest
    policy_version: int = POLICY_VERSION
    layout: str = "sdcpp"  # LAYOUTS: how a GGUF written from this plan names and shapes its tensors

    @property
    def spec(self) -> ModelSpec:
        return self.config.spec

    def __iter__(self):
        return iter(self.entries.values())

    def __getitem__(self, name) -> PlanEntry:
        return self.entries[name]

    def __len__(self):
        return len(self.entries)

    def fallbacks(self) -> list[PlanEntry]:
        return [e for e in self if e.reason is not None]

    def key(self):
        return tuple(e.key() for e in self)

    def summary(self) -> dict:
        """component -> type -> {count, bytes_before, bytes_after}"""
        out: dict = defaultdict(lambda: defaultdict(lambda: dict(count=0, bytes_before=0, bytes_after=0)))
        for e in self:
            s = out[e.component][e.type]
            s["count"] += 1
            s["bytes_before"] += e.bytes_before
            s["bytes_after"] += e.bytes_after
        return {c: dict(v) for c, v in out.items()}


def _source_float(dtype: str) -> str:
    return "f32" if dtype == "f64" else dtype


def _fit_blocks(t: CanonicalTensor, wanted: str) -> tuple[str, str | None]:
    n = t.rows[1]
    chosen, reasons = wanted, []
    while ggml_types.get(chosen).is_quantized and n % ggml_types.get(chosen).blck_size:
        nxt = K_FALLBACK.get(chosen, "f16")
        reasons.append(f"row length {n} is not a multiple of {chosen}'s block "
                       f"{ggml_types.get(chosen).blck_size}: {chosen} -> {nxt}")
        chosen = nxt
    return chosen, "; ".join(reasons) or None


def decide(t: CanonicalTensor, config: ModelConfig, request: QuantRequest) -> tuple[str | None, str, str | None]:
    """(requested, chosen, reason) for one tensor; reason is None exactly when chosen is what was asked
    (or, with no request, the stored type)."""
    rule = request.rule_for(t.name)
    requested, origin = (rule.type, "rule") if rule else request.for_component(t.component)
    keep = _source_float(t.dtype)
    asked = requested or keep

    def fixed(chosen, why):
        return requested, chosen, None if chosen == asked else why

    if len(t.shape) <= 1:
        return fixed("f32", "1-D tensor (bias, norm or scalar) kept f32")
    # A plain `type=` leaves the SDXL VAE f32, and so does loading an f16 one with no request; a VAE stored
    # quantized on purpose (a GGUF written with vae_type=) keeps its type when loaded back.
    overflow_risk = origin == "type" or (origin is None and t.dtype == "f16")
    if t.component == "vae" and config.family and config.family.vae_keeps_f32 and overflow_risk:
        return fixed("f32", "SDXL VAE kept f32 (its decoder activations overflow f16); set vae_type to change")
    if requested is None or requested == keep or not ggml_types.get(requested).is_quantized:
        return requested, asked, None
    if t.numel < SMALL_TENSOR:
        return requested, "f32", f"small tensor ({t.numel} elements) kept f32"
    if SENSITIVE.search(t.name) and origin != "rule":
        return requested, "f16", SENSITIVE_REASON
    chosen, why = _fit_blocks(t, requested)
    return requested, chosen, why


def _bytes_per_element(type_name: str) -> float:
    t = ggml_types.get(type_name)
    return t.type_size / t.blck_size


def _with(decision, chosen: str, why: str):
    """The decision with another type; its reason explains the final type (an earlier fallback is superseded)."""
    return decision[0], chosen, why


def _for_sd_cpp(index: TensorIndex, family: str | None, decisions: dict) -> dict:
    """What stable-diffusion.cpp's layout cannot hold, changed with a reason: quantized 4-D conv kernels (also the
    VAE attention's, 1x1 kernels there) and transposed tensors become f16, fused q/k/v share the widest of their
    types, token embeddings keep a type ggml can gather rows from."""
    out = dict(decisions)
    for o in original_layout({t.name: t.shape for t in index}, family).values():
        for p in o.parts:
            chosen = out[p][1]
            if (o.is_kernel or o.transpose) and ggml_types.get(chosen).is_quantized:
                out[p] = _with(out[p], "f16", SD_CPP_KERNEL_REASON if o.is_kernel else SD_CPP_TRANSPOSED_REASON)
            elif p.endswith(".embeddings.token_embedding.weight") and ggml_types.get(chosen).is_quantized \
                    and chosen not in SD_CPP_GET_ROWS:
                fallback, why = _fit_blocks(index[p], K_FALLBACK.get(chosen, "q8_0"))
                out[p] = _with(out[p], fallback, SD_CPP_EMBEDDING_REASON + (f"; {why}" if why else ""))
        types = {out[p][1] for p in o.parts}
        if len(types) > 1:
            widest = max(types, key=_bytes_per_element)
            for p in o.parts:
                if out[p][1] != widest:
                    out[p] = _with(out[p], widest, SD_CPP_FUSED_REASON)
    return out


def make_plan(index: TensorIndex, config: ModelConfig, request: QuantRequest, layout: str = "sdcpp") -> QuantPlan:
    """`layout`: LAYOUTS; "stable-diffusion.cpp" adds what that file layout cannot hold (_for_sd_cpp)."""
    if layout not in LAYOUTS:
        raise QuantRequestError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    tensors = sorted(index, key=lambda t: t.name)
    decisions = {t.name: decide(t, config, request) for t in tensors}
    if layout == SD_CPP:
        decisions = _for_sd_cpp(index, config.spec.family, decisions)
    entries = {}
    for t in tensors:
        requested, chosen, reason = decisions[t.name]
        rows, n = t.rows
        before = t.numel * 8 if t.dtype == "f64" else ggml_types.get(t.dtype).nbytes(t.numel)
        entries[t.name] = PlanEntry(t.name, t.component, t.shape, (rows, n), t.dtype, requested, chosen,
                                    reason, before, rows * ggml_types.get(chosen).row_bytes(n))
    return QuantPlan(entries, config, request, layout=layout)
