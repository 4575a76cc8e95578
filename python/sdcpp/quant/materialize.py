"""The bytes of one canonical tensor in the planned type.

Both the loader and `quantize()` call `planned_bytes`, so quantize-on-load and loading the written GGUF
give the same bytes by construction (the invariant is also tested). Both iterate `stream_planned`,
which also releases each source tensor's pages once it is consumed."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .. import ggml_types
from .._native import core
from ..io.raw import NUMPY_DTYPE, PageReleaser
from ..names.canonicalize import CanonicalTensor
from ..plan import PlanEntry

_FLOATS = ("f32", "f16", "bf16", "f64")


def _arrange(arr: np.ndarray, t: CanonicalTensor) -> np.ndarray:
    """Apply the canonical split/transpose to an array in the stored logical shape."""
    if t.split:
        part, parts = t.split
        k = arr.shape[0] // parts
        arr = arr[part * k:(part + 1) * k]
    if t.transpose:
        arr = arr.T
    return np.ascontiguousarray(arr)


def source_array(files, t: CanonicalTensor) -> tuple[np.ndarray, str]:
    """(contiguous data in canonical order, its ggml type). Float sources keep their type; quantized
    sources keep their bytes when rows stay whole, else are dequantized to f32."""
    raw = files.view(t.source)
    dtype = t.dtype
    if dtype in _FLOATS:
        arr = raw.view(NUMPY_DTYPE[dtype]).reshape(t.source.shape)
        if dtype == "f64":
            arr, dtype = arr.astype(np.float32), "f32"
        return _arrange(arr, t), dtype
    blck = ggml_types.get(dtype).blck_size
    stored_row = t.source.shape[-1] if t.source.shape else 1
    rows_whole = t.rows[1] % blck == 0 and (not t.split or stored_row % blck == 0)
    if rows_whole and not t.transpose:
        if t.split:
            part, parts = t.split
            n_rows = t.source.numel // stored_row
            row_bytes = t.source.nbytes // n_rows
            k = n_rows // parts
            raw = raw[part * k * row_bytes:(part + 1) * k * row_bytes]
        return raw, dtype
    f32 = core().dequantize(raw, dtype, t.source.numel).reshape(t.source.shape)
    return _arrange(f32, t), "f32"


def as_f32(data: np.ndarray, dtype: str, t: CanonicalTensor) -> np.ndarray:
    """`source_array`'s result as float32 in the canonical shape (a copy)."""
    if dtype == "bf16":
        f32 = (data.reshape(-1).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    elif dtype in _FLOATS:
        f32 = data.astype(np.float32)
    else:
        f32 = core().dequantize(data, dtype, t.numel)
    return f32.reshape(t.shape)


def planned_bytes(files, t: CanonicalTensor, entry: PlanEntry, n_threads: int = 0, merge=None) -> np.ndarray:
    """The tensor's bytes in `entry.type`, rows of `entry.rows[1]` elements (uint8 array). `merge`: a function of
    the float32 source weight (merged LoRAs, sdcpp.lora), applied before the conversion to the planned type."""
    data, dtype = source_array(files, t)
    if merge is not None:
        data, dtype = np.ascontiguousarray(merge(as_f32(data, dtype, t)), dtype=np.float32), "f32"
    rows, n = entry.rows
    if dtype == entry.type:
        return data.reshape(-1).view(np.uint8)
    return core().convert(data, dtype, rows, n, entry.type, n_threads)


def stream_planned(index, plan, n_threads: int = 0) -> Iterator[tuple[PlanEntry, np.ndarray]]:
    """(entry, `planned_bytes`) for every entry of `plan`, in order: the one loop that loading and
    `quantize()` share. The caller must be done with the bytes (copied or written them) before it asks
    for the next pair: their source pages are released then (`PageReleaser`), so the mapped source
    does not stay resident as a whole (2 GB more peak RSS for SD1.5). The caller's loop variable still
    holds the previous bytes then, a view of the map when the stored type is kept: harmless, see
    `MappedFiles.release`."""
    releaser = PageReleaser(index.files, [index[e.name].source for e in plan])
    for e in plan:
        t = index[e.name]
        yield e, planned_bytes(index.files, t, e, n_threads, index.merges.get(e.name))
        releaser.done(t.source)
