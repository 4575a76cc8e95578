"""Tiny random-weight checkpoints with the real single-file tensor layout, for demos and smoke tests
without torch. The layouts in data/ are the headers of the test fixtures (tests/fixtures/build.py,
which builds them from diffusers/transformers models); `python tests/fixtures/export_layouts.py`
regenerates them."""

from __future__ import annotations

import json
import os
from importlib import resources

import numpy as np

FAMILIES = ("sd1", "sd2", "sdxl")


def layout(family: str) -> dict[str, dict]:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    text = resources.files("sdcpp").joinpath("data", f"tiny_{family}.json").read_text()
    return json.loads(text)


def write_tiny_model(path, family: str = "sdxl", seed: int = 0):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for name, info in layout(family).items():
        shape = tuple(info["shape"])
        if info["dtype"] == "F32":
            # Norm scales near 1 keep activations in range, as in a trained model.
            base = 1.0 if len(shape) == 1 and "norm" in name and name.endswith("weight") else 0.0
            tensors[name] = np.asarray(base + 0.1 * rng.standard_normal(shape), dtype=np.float32)
        else:
            tensors[name] = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    tmp = f"{os.fspath(path)}.partial"
    save_file(tensors, tmp, metadata={"sdcpp.tiny_model": family})
    os.replace(tmp, path)
