"""What every reader produces: tensors as they are stored, before any renaming."""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelFormatError


@dataclass(frozen=True)
class RawTensor:
    name: str  # the name as stored in the file
    dtype: str  # ggml type name ("f32", "q4_K", ...) or an integer/bool dtype ("i64", "u8", "bool")
    shape: tuple[int, ...]  # numpy (row-major, torch) order
    path: str  # the file holding the bytes
    offset: int  # absolute byte offset of the data in `path`
    nbytes: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class RawSource:
    """One model source (a file, or a diffusers folder) read as raw tensors."""

    path: str
    format: str  # "safetensors" | "gguf" | "diffusers"
    tensors: list[RawTensor]
    metadata: dict = field(default_factory=dict)  # safetensors __metadata__ or GGUF key/values
    configs: dict = field(default_factory=dict)  # diffusers: component -> config.json dict
    # For diffusers folders the component of each tensor is known from its folder.
    component_of: dict[str, str] = field(default_factory=dict)


def check_no_overlap(path: str, tensors: list[RawTensor]):
    """Two tensors sharing bytes is never legitimate in a weights file; refuse it before any read."""
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors if t.nbytes)
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:], strict=False):
        if begin < end:
            raise ModelFormatError(path, f"data overlaps tensor '{first}'", tensor=second, rule="overlap")


# Integer and bool dtypes we recognise but never treat as weights.
NON_FLOAT_ITEMSIZE = {"i64": 8, "i32": 4, "i16": 2, "i8": 1, "u8": 1, "bool": 1}
NUMPY_DTYPE = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "bf16": np.uint16}


class MappedFiles:
    """Read-only memory maps, opened once per file and shared by every tensor of it."""

    def __init__(self):
        self._maps: dict[str, mmap.mmap] = {}

    def view(self, t: RawTensor) -> np.ndarray:
        mm = self._maps.get(t.path)
        if mm is None:
            with open(t.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else b""
            self._maps[t.path] = mm
        return np.frombuffer(mm, dtype=np.uint8, count=t.nbytes, offset=t.offset)

    def close(self):
        for mm in self._maps.values():
            if isinstance(mm, mmap.mmap):
                try:
                    mm.close()
                except BufferError:
                    pass  # a numpy view is still alive; the map closes when it is collected
        self._maps.clear()
