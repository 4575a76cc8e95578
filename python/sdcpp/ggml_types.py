"""The ggml type table, from the `gguf` package's constants so that headers can be inspected without the
native extension. Names follow ggml's `ggml_type_name` spelling ("q4_K", "f16", "bf16")."""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import QuantRequestError


def _ggml_name(t: GGMLQuantizationType) -> str:
    name = t.name.lower()
    return name[:-2] + "_K" if name.endswith("_k") else name


@dataclass(frozen=True)
class GgmlType:
    name: str
    id: int
    blck_size: int
    type_size: int

    @property
    def is_quantized(self) -> bool:
        return self.blck_size > 1

    def row_bytes(self, n_per_row: int) -> int:
        return (n_per_row // self.blck_size) * self.type_size

    def nbytes(self, numel: int) -> int:
        return (numel // self.blck_size) * self.type_size


BY_NAME: dict[str, GgmlType] = {}
BY_ID: dict[int, GgmlType] = {}
for _t in GGMLQuantizationType:
    _b, _s = GGML_QUANT_SIZES[_t]
    _gt = GgmlType(_ggml_name(_t), int(_t), _b, _s)
    BY_NAME[_gt.name] = _gt
    BY_ID[_gt.id] = _gt

# Floating types a weight may be stored in at the source (f64 is widened to f32 when read).
FLOAT_TYPES = ("f32", "f16", "bf16")
# Types the plan may choose (the list); all are produced by ggml_quantize_chunk without an imatrix.
PLAN_TYPES = (
    "f32", "f16", "bf16", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K",
)


def get(name: str) -> GgmlType:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown ggml type '{name}'") from None


def normalize_request_type(name: str) -> str:
    """Accept user spellings ("Q4_K", "q4_k", "F16") and return ggml's name, or raise."""
    if not isinstance(name, str):
        raise QuantRequestError(f"type must be a string, got {name!r}")
    lowered = name.strip().lower()
    for t in PLAN_TYPES:
        if t.lower() == lowered:
            return t
    raise QuantRequestError(f"unknown weight type '{name}'; choose one of: {', '.join(PLAN_TYPES)}")
