"""What a translator says about one raw tensor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str  # canonical name inside the component (diffusers / transformers state-dict key)
    split: tuple[int, int] | None = None  # (part, parts): take that slice of dim 0 (fused q/k/v)
    transpose: bool = False  # OpenCLIP text_projection is stored as x @ P; a Linear weight is P.T
    squeeze: bool = False  # 1x1 conv weight [C, C, 1, 1] used as a linear weight [C, C]


class Ignore(str):
    """A known tensor that no graph reads; the string is the reason."""
