"""LoRA and LyCORIS adapters (files.py: reading and naming; deltas.py: the formulas; runtime.py: in the graph).

Two modes, chosen per adapted layer:
  merge   - dW is added in float32 to the source weight at ingest, before the plan's type conversion, so the stored
            bytes are those of quantizing a pre-merged checkpoint. Free at run time; the strength is fixed at load.
  runtime - the layer keeps its stored bytes and the graph adds scale * up (down x) (LoCon: convs; LoHa / LoKr /
            DoRA: a dense float32 dW), so strengths change per call and a quantized weight is not requantized
            (merging into q4_0 would round dW away into the 4-bit blocks: the "LoRA has no effect" failure).
  auto    - (default) runtime for a LoRA that adapts any layer the plan stores quantized, merge for one that adapts
            float layers only (exact up to the stored type's rounding, and free). Decided per file, not per layer:
            a LoRA half merged could not change its strength per call."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import ggml_types
from .files import LoraFile, LoraMismatchError, LoraModule, read_lora

__all__ = ["LoraFile", "LoraMismatchError", "LoraModule", "LoadedLora", "LoraSet", "MODES", "attach_loras",
           "parse_loras", "read_lora"]

MODES = ("auto", "merge", "runtime")


def _strength(value, what) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what}: a LoRA strength must be a finite number, got {value!r:.60}")
    return float(value)


def parse_loras(loras) -> list[tuple[str, float]]:
    """`loras`: None, a path, a list of paths or (path, strength) pairs, or {path: strength} -> [(path, strength)].
    Checked before any work (no file is opened)."""
    if loras is None:
        return []
    if isinstance(loras, (str, os.PathLike)):
        loras = [loras]
    if isinstance(loras, dict):
        loras = list(loras.items())
    if not isinstance(loras, (list, tuple)):
        raise TypeError(f"loras must be a list of (path, strength) pairs or a dict, got {type(loras).__name__}")
    out = []
    for item in loras:
        if isinstance(item, (str, os.PathLike)):
            path, strength = item, 1.0
        elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], (str, os.PathLike)):
            path, strength = item
        else:
            raise TypeError(f"loras: each item is a path or a (path, strength) pair, got {item!r:.80}")
        out.append((os.fspath(path), _strength(strength, os.fspath(path))))
    return out


def check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"lora_mode must be one of {', '.join(MODES)}, got {mode!r:.40}")
    return mode


@dataclass
class LoadedLora:
    file: LoraFile
    strength: float
    merged: list[LoraModule] = field(default_factory=list)
    runtime: list[LoraModule] = field(default_factory=list)

    def summary(self) -> dict:
        f = self.file
        return dict(path=f.path, name=f.name, strength=self.strength, hash=f.short_hash,
                    merged=len(self.merged), runtime=len(self.runtime),
                    kinds=sorted({m.kind + ("+dora" if m.dora else "") for m in f.modules}),
                    layers=f.targets(), unmatched=list(f.unmatched))


@dataclass
class LoraSet:
    """The LoRAs of one load: which modules were merged at ingest and which run in the graph."""

    items: list[LoadedLora] = field(default_factory=list)

    def __bool__(self):
        return bool(self.items)

    def merges(self) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        """canonical name -> f(float32 source weight) -> merged weight, applying every merged module in order."""
        from .deltas import apply

        steps: dict[str, list[tuple[LoraFile, LoraModule, float]]] = {}
        for item in self.items:
            for m in item.merged:
                steps.setdefault(m.target, []).append((item.file, m, item.strength))

        def make(todo):
            def merge(w: np.ndarray) -> np.ndarray:
                for lora, m, strength in todo:
                    w = apply(lora, m, w, strength)
                return w
            return merge

        return {name: make(todo) for name, todo in steps.items()}

    def close(self):
        for item in self.items:
            item.file.close()


def mode_of(mode: str, stored_types) -> str:
    """The mode of a LoRA whose layers the plan stores in `stored_types`."""
    if mode == "auto":
        return "runtime" if any(ggml_types.get(t).is_quantized for t in stored_types) else "merge"
    return mode


def attach_loras(shapes: dict[str, tuple[int, ...]], family: str | None, types: dict[str, str],
                 loras: list[tuple[str, float]], mode: str) -> LoraSet:
    """Read each LoRA for the model of canonical {name: shape} and split its modules by mode (`types`: the plan's
    stored type per canonical name)."""
    out = LoraSet()
    try:
        for path, strength in loras:
            f = read_lora(path, shapes, family)
            item = LoadedLora(f, strength)
            if mode_of(mode, {types[m.target] for m in f.modules}) == "merge":
                item.merged = list(f.modules)
            else:
                item.runtime = list(f.modules)
            out.items.append(item)
    except BaseException:
        out.close()
        raise
    return out
