"""The quantization plan: a pure function of (canonical index, model spec, request). It is the only
place that decides a tensor's stored type, and it reads headers only."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from . import ggml_types
from .config.model_config import ModelConfig
from .detect import ModelSpec
from .index import TensorIndex
from .names.canonicalize import CanonicalTensor
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
    if t.component == "vae" and config.family and config.family.vae_keeps_f32 and origin in (None, "type"):
        return fixed("f32", "SDXL VAE kept f32 (its decoder activations overflow f16); set vae_type to change")
    if requested is None or requested == keep or not ggml_types.get(requested).is_quantized:
        return requested, asked, None
    if t.numel < SMALL_TENSOR:
        return requested, "f32", f"small tensor ({t.numel} elements) kept f32"
    if SENSITIVE.search(t.name) and origin != "rule":
        return requested, "f16", SENSITIVE_REASON
    chosen, why = _fit_blocks(t, requested)
    return requested, chosen, why


def make_plan(index: TensorIndex, config: ModelConfig, request: QuantRequest) -> QuantPlan:
    entries = {}
    for t in sorted(index, key=lambda t: t.name):
        requested, chosen, reason = decide(t, config, request)
        rows, n = t.rows
        before = t.numel * 8 if t.dtype == "f64" else ggml_types.get(t.dtype).nbytes(t.numel)
        entries[t.name] = PlanEntry(t.name, t.component, t.shape, (rows, n), t.dtype, requested, chosen,
                                    reason, before, rows * ggml_types.get(chosen).row_bytes(n))
    return QuantPlan(entries, config, request)
