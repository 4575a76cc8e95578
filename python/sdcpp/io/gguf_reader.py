"""GGUF files (v2/v3), parsed and validated here.

Why not ggml's own `gguf_init_from_file`: the stock libggml build rejects tensor names of 64+ characters
(GGML_MAX_NAME), and Stable Diffusion names are longer (stable-diffusion.cpp and ComfyUI-GGUF raise the
limit to 128 in their own ggml builds). Why not `gguf.GGUFReader`: on a bad tensor type it fails without
naming the tensor. The format is small; the type table still comes from the `gguf` package."""

from __future__ import annotations

import mmap
import os
import struct

from .. import ggml_types
from ..errors import ModelFormatError
from .raw import RawSource, RawTensor, check_no_overlap

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_STRING = 1 << 24  # 16 MiB per string is far beyond any real key or name
# ggml types that exist only as the second operand of a matrix product: no writer stores them, ggml has no
# dequantization for them (and the gguf package's q8_1 block size disagrees with ggml's).
COMPUTE_ONLY_TYPES = {"q8_1", "q8_K"}

# GGUF value types -> struct format (scalars)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    def __init__(self, path, buf, size):
        self.path, self.buf, self.size, self.pos = path, buf, size, 0

    def take(self, n, what):
        if n < 0 or self.pos + n > self.size:
            raise ModelFormatError(self.path, f"truncated while reading {what} at byte {self.pos}", rule="truncated")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt, what):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what):
        n = self.unpack("<Q", what)
        if n > MAX_STRING:
            raise ModelFormatError(self.path, f"{what}: string length {n} is implausible", rule="string")
        try:
            return bytes(self.take(n, what)).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelFormatError(self.path, f"{what}: not UTF-8", rule="string") from e

    def value(self, vtype, what, depth=0):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY and depth == 0:
            itype = self.unpack("<I", what)
            count = self.unpack("<Q", what)
            if count > self.size - self.pos:  # every element takes at least one byte
                raise ModelFormatError(self.path, f"{what}: array of {count} elements cannot fit", rule="array")
            if itype in _SCALARS and itype != 7:
                fmt = _SCALARS[itype]
                raw = self.take(struct.calcsize(fmt) * count, what)
                return list(struct.unpack("<" + fmt[1] * count, raw))
            return [self.value(itype, what, depth + 1) for _ in range(count)]
        raise ModelFormatError(self.path, f"{what}: unknown value type {vtype}", rule="kv-type")


def read_gguf(path) -> RawSource:
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise ModelFormatError(path, f"file is {size} bytes, too short for a GGUF header", rule="truncated")
            mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ModelFormatError(path, f"cannot read file: {e}") from e
    try:
        return _parse(path, memoryview(mm), size)
    finally:
        try:
            mm.close()
        except BufferError:
            pass


def _parse(path, buf, size) -> RawSource:
    c = _Cursor(path, buf, size)
    if bytes(c.take(4, "magic")) != MAGIC:
        raise ModelFormatError(path, "not a GGUF file (bad magic)", rule="magic")
    version = c.unpack("<I", "version")
    if version not in (2, 3):
        raise ModelFormatError(path, f"GGUF version {version} is not supported (2 and 3 are)", rule="version")
    n_tensors = c.unpack("<Q", "tensor count")
    n_kv = c.unpack("<Q", "key/value count")
    # Each tensor info and each key/value takes well over 8 bytes: a cheap bound against absurd counts.
    if n_tensors > size // 8 or n_kv > size // 8:
        raise ModelFormatError(path, f"counts ({n_tensors} tensors, {n_kv} keys) cannot fit in {size} bytes",
                               rule="counts")
    kv = {}
    for i in range(n_kv):
        key = c.string(f"key #{i}")
        vtype = c.unpack("<I", f"type of key '{key}'")
        if key in kv:
            raise ModelFormatError(path, f"duplicate key '{key}'", rule="duplicate")
        kv[key] = c.value(vtype, f"value of key '{key}'")

    alignment = kv.get("general.alignment", DEFAULT_ALIGNMENT)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):  # bool is no alignment
        raise ModelFormatError(path, f"general.alignment {alignment!r} is not a power of two", rule="alignment")

    infos = []
    names = set()
    for i in range(n_tensors):
        name = c.string(f"name of tensor #{i}")
        if name in names:
            raise ModelFormatError(path, "duplicate tensor name", tensor=name, rule="duplicate")
        names.add(name)
        n_dims = c.unpack("<I", f"dims of '{name}'")
        if not 1 <= n_dims <= MAX_DIMS:
            raise ModelFormatError(path, f"{n_dims} dimensions (1..{MAX_DIMS} allowed)", tensor=name, rule="dims")
        ne = [c.unpack("<Q", f"shape of '{name}'") for _ in range(n_dims)]
        type_id = c.unpack("<I", f"type of '{name}'")
        offset = c.unpack("<Q", f"offset of '{name}'")
        infos.append((name, ne, type_id, offset))

    data_start = -(-c.pos // alignment) * alignment
    tensors = [_tensor(path, name, ne, type_id, offset, alignment, data_start, size)
               for name, ne, type_id, offset in infos]
    check_no_overlap(path, tensors)
    kv["__version__"] = version
    return RawSource(path=path, format="gguf", tensors=tensors, metadata=kv)


def _tensor(path, name, ne, type_id, offset, alignment, data_start, size) -> RawTensor:
    t = ggml_types.BY_ID.get(type_id)
    if t is None:
        raise ModelFormatError(path, f"unknown ggml type id {type_id}", tensor=name, rule="type")
    if t.name in COMPUTE_ONLY_TYPES:
        raise ModelFormatError(path, f"type {t.name} is a ggml compute-only type that cannot be read back",
                               tensor=name, rule="type")
    numel = 1
    for d in ne:
        numel *= d
    if numel > (1 << 48):
        raise ModelFormatError(path, f"shape {ne} is implausibly large", tensor=name, rule="shape")
    if ne[0] % t.blck_size:
        raise ModelFormatError(path, f"row length {ne[0]} is not a multiple of {t.name}'s block size "
                               f"{t.blck_size}", tensor=name, rule="block")
    if offset % alignment:
        raise ModelFormatError(path, f"offset {offset} is not aligned to {alignment}", tensor=name, rule="alignment")
    nbytes = t.nbytes(numel)
    if data_start + offset + nbytes > size:
        raise ModelFormatError(path, f"data [{offset}, {offset + nbytes}) runs past the end of the file",
                               tensor=name, rule="offsets")
    return RawTensor(name, t.name, tuple(reversed(ne)), path, data_start + offset, nbytes)
