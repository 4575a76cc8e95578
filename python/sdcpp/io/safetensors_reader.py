"""Single `.safetensors` files: the header is validated completely before any tensor is touched."""

from __future__ import annotations

import json
import os
import struct

from ..errors import ModelFormatError
from .raw import NON_FLOAT_ITEMSIZE, RawSource, RawTensor, check_no_overlap

# A real SDXL checkpoint header is ~200 KB; 100 MB leaves room for anything honest.
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_DIMS = 8

# safetensors dtype -> (our dtype name, bytes per element)
DTYPES = {
    "F64": ("f64", 8), "F32": ("f32", 4), "F16": ("f16", 2), "BF16": ("bf16", 2),
    "I64": ("i64", 8), "I32": ("i32", 4), "I16": ("i16", 2), "I8": ("i8", 1), "U8": ("u8", 1),
    "BOOL": ("bool", 1),
}
UNSUPPORTED_DTYPES = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "U16", "U32", "U64", "C64"}
assert set(NON_FLOAT_ITEMSIZE) <= {v[0] for v in DTYPES.values()}


def _reject_duplicates(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"duplicate key '{k}'")
        seen[k] = v
    return seen


def read_safetensors(path) -> RawSource:
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFormatError(path, f"file is {size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise ModelFormatError(path, f"header length {n} exceeds the {MAX_HEADER_BYTES} byte limit")
            if 8 + n > size:
                raise ModelFormatError(path, f"header length {n} runs past the end of the {size}-byte file")
            blob = f.read(n)
    except OSError as e:
        raise ModelFormatError(path, f"cannot read file: {e}") from e
    try:
        header = json.loads(blob.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelFormatError(path, f"header is not valid JSON: {e}", rule="json") from e
    except RecursionError as e:  # json's C scanner recurses once per nesting level: `[[[[...` 100k deep
        raise ModelFormatError(path, "header JSON nests too deeply", rule="json") from e
    if not isinstance(header, dict):
        raise ModelFormatError(path, "header is not a JSON object", rule="json")

    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFormatError(path, "__metadata__ must map strings to strings", rule="metadata")

    data_start = 8 + n
    data_size = size - data_start
    tensors = [_parse_entry(path, name, entry, data_start, data_size) for name, entry in header.items()]
    check_no_overlap(path, tensors)
    return RawSource(path=path, format="safetensors", tensors=tensors, metadata=metadata)


def _parse_entry(path, name, entry, data_start, data_size) -> RawTensor:
    if not isinstance(entry, dict):
        raise ModelFormatError(path, "entry is not an object", tensor=name, rule="json")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if dtype in UNSUPPORTED_DTYPES:
        raise ModelFormatError(path, f"dtype {dtype} is not supported yet", tensor=name, rule="dtype")
    if dtype not in DTYPES:
        raise ModelFormatError(path, f"unknown dtype {dtype!r}", tensor=name, rule="dtype")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ModelFormatError(path, f"invalid shape {shape!r}", tensor=name, rule="shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise ModelFormatError(path, f"invalid data_offsets {offsets!r}", tensor=name, rule="offsets")
    begin, end = offsets
    if begin < 0 or end < begin:
        raise ModelFormatError(path, f"data_offsets {offsets} are not an increasing pair", tensor=name,
                               rule="offsets")
    if end > data_size:
        raise ModelFormatError(path, f"data_offsets end {end} is past the end of the data ({data_size} bytes)",
                               tensor=name, rule="offsets")
    our_dtype, itemsize = DTYPES[dtype]
    numel = 1
    for d in shape:
        numel *= d  # Python ints: no overflow, and the byte-size check below bounds it
    if numel * itemsize != end - begin:
        raise ModelFormatError(path, f"shape {shape} × {dtype} is {numel * itemsize} bytes but data_offsets "
                               f"span {end - begin}", tensor=name, rule="size")
    return RawTensor(name, our_dtype, tuple(shape), path, data_start + begin, end - begin)
