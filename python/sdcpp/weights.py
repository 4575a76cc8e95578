"""Loading with the plan: quantize-on-load into one ggml backend buffer, one tensor at a time, so peak
memory is the final weight bytes plus one tensor in flight."""

from __future__ import annotations

import logging

import numpy as np

from . import ggml_types
from ._native import core
from .config.model_config import ModelConfig
from .detect import ModelSpec
from .plan import PlanEntry, QuantPlan
from .progress import track
from .quant.materialize import stream_planned

log = logging.getLogger("sdcpp")


def stored_ne(entry: PlanEntry) -> list[int]:
    """ggml dims of the stored tensor: matrices (conv kernels flattened to rows) are [n_per_row, rows]."""
    rows, n = entry.rows
    return [n] if len(entry.shape) <= 1 else [n, rows]


class Weights:
    """Weights of one model in a ggml backend buffer, under canonical names."""

    def __init__(self, store, plan: QuantPlan, configs: dict | None = None):
        self._store = store  # sdcpp._core.WeightStore; model graphs read it directly
        self.plan = plan
        self.configs = configs or {}  # component -> architecture config, where a source declared one
        self.loras = None  # sdcpp.lora.LoraSet of the load (merged and runtime modules), or None

    @property
    def spec(self) -> ModelSpec:
        return self.plan.spec

    @property
    def config(self) -> ModelConfig:
        """The model's architecture and family facts, computed once at load (sdcpp.config)."""
        return self.plan.config

    @property
    def device(self) -> str:
        return self._store.device()

    @property
    def nbytes(self) -> int:
        return self._store.buffer_size()

    def names(self) -> list[str]:
        return list(self.plan.entries)

    def __contains__(self, name):
        return name in self.plan.entries

    def info(self, name: str) -> dict:
        e = self.plan[name]
        return dict(type=self._store.type(name), shape=e.shape, ne=self._store.ne(name),
                    nbytes=self._store.nbytes(name), reason=e.reason)

    def bytes(self, name: str) -> np.ndarray:
        """The stored bytes (uint8), exactly as the graphs will read them."""
        return self._store.get(name)

    def numpy(self, name: str) -> np.ndarray:
        """A dequantized float32 copy in the canonical shape."""
        e = self.plan[name]
        data = self.bytes(name)
        if e.type == "f32":
            return data.view(np.float32).reshape(e.shape).copy()
        n = int(np.prod(e.shape, dtype=np.int64)) if e.shape else 1
        assert ggml_types.get(e.type).nbytes(n) == data.nbytes
        return core().dequantize(data, e.type, n).reshape(e.shape)


def load_planned(index, plan: QuantPlan, device: str = "cpu", n_threads: int = 0, progress=True) -> Weights:
    store = core().WeightStore(device, n_threads)
    for e in plan:
        store.add(e.name, e.type, stored_ne(e))
    store.allocate()
    log.info("allocated %.1f MiB of weights on %s", store.buffer_size() / 2**20, store.device())
    for e, data in track(stream_planned(index, plan, n_threads), len(plan), "loading weights", progress):
        store.set(e.name, data)  # copies: the source pages of `data` may be released after this
    return Weights(store, plan, index.configs)
