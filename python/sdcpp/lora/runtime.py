"""Runtime LoRAs: adapter tensors in their own backend buffer, added by the graphs (ops::linear / ops::conv2d) as
y += scale * up (down x), so a layer keeps its stored bytes, whatever their type, and strengths change per call.

Plain LoRA / LoCon modules keep their two low-rank factors (float32). LoCon's CP form, LoHa, LoKr and full diffs
are not two matrices; they become one dense float32 dW (at strength 1; the graph scales it). DoRA is not linear
in the strength: its dense term is the adapted weight minus the stored one (dequantized) at the strength asked,
recomputed when the strength changes."""

from __future__ import annotations

import numpy as np

from .._native import core
from .deltas import apply, delta
from .files import LoraFile, LoraModule


def _mat(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.reshape(a.shape[0], -1), dtype=np.float32)


class RuntimeLora:
    """One LoRA file's runtime modules in one WeightStore on the model's device."""

    def __init__(self, weights, lora: LoraFile, modules: list[LoraModule], strength: float, n_threads: int = 0):
        self.lora, self.weights = lora, weights
        self.default_strength = strength
        self.store = core().WeightStore(weights.device, n_threads)
        self.terms: list[tuple[str, str, str, float]] = []  # (layer prefix, down, up or "", scale at strength 1)
        self.dora: list[tuple[LoraModule, str]] = []  # DoRA modules: recomputed per strength
        self._dora_strength = None
        data = {}
        for i, m in enumerate(modules):
            shape = weights.plan[m.target].shape
            prefix = m.target[:-len(".weight")]
            if m.kind == "lora" and "mid" not in m.parts and m.dora is None:
                down, up = _mat(lora.array(m, "down")), _mat(lora.array(m, "up"))
                r = down.shape[0]
                alpha = float(lora.array(m, "alpha").reshape(())) if "alpha" in m.parts else r
                data[f"{i}.down"], data[f"{i}.up"] = down, up
                self.terms.append((prefix, f"{i}.down", f"{i}.up", alpha / r))
                continue
            name = f"{i}.dense"
            data[name] = None if m.dora else _mat(delta(lora, m, shape))
            if m.dora:
                self.dora.append((m, name))
            self.terms.append((prefix, name, "", 1.0))
        for name, arr in data.items():
            rows, n = (arr.shape if arr is not None else (shape_of(weights, modules, name)))
            self.store.add(name, "f32", [n, rows])
        self.store.allocate()
        for name, arr in data.items():
            if arr is not None:
                self.store.set(name, arr)
        self._modules = modules
        if self.dora:
            self._set_dora(strength)
        lora.close()  # the store holds what the graphs read; DoRA re-reads (the maps reopen on use)

    def _set_dora(self, strength: float):
        if strength == self._dora_strength:
            return
        for m, name in self.dora:
            w = self.weights.numpy(m.target)
            self.store.set(name, _mat(apply(self.lora, m, w, strength) - w))
        self._dora_strength = strength
        self.lora.close()

    def graph_terms(self, strength: float) -> list:
        """set_lora() terms at `strength` (DoRA's dense terms are recomputed for it; their scale stays 1)."""
        if self.dora:
            self._set_dora(strength)
        dora_names = {name for _, name in self.dora}
        return [(prefix, self.store, down, up, scale if down in dora_names else scale * strength)
                for prefix, down, up, scale in self.terms]


def shape_of(weights, modules, name) -> tuple[int, int]:
    m = modules[int(name.split(".")[0])]
    shape = weights.plan[m.target].shape
    return shape[0], int(np.prod(shape[1:]))
