"""PyTorch checkpoints (`torch.save` since torch 1.6: `.ckpt`, `.pt`, `.pth`, `.bin`), read without torch.

The file is a zip archive: `<archive>/data.pkl` (the pickled state dict, storages replaced by persistent
ids), `<archive>/data/<key>` (one uncompressed entry per storage), `<archive>/byteorder`, `<archive>/version`.
The pickle is read by `restricted_unpickler` (nothing from the file is ever imported or called); each
tensor then becomes a `RawTensor` pointing at its bytes inside the zip file itself, so weights are memory-
mapped exactly like safetensors data. Every number is checked against the archive before it is used."""

from __future__ import annotations

import os
import re
import struct
import zipfile

from ..errors import ModelFormatError
from .raw import RawSource, RawTensor
from .restricted_unpickler import TensorRef, load_restricted

MAX_PICKLE_BYTES = 256 * 1024 * 1024  # a state dict's pickle is ~150 bytes per tensor
MAX_SMALL_RECORD = 64  # byteorder, version
MAX_NUMEL = 1 << 48

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # signature ... file name length, extra field length
_LOCAL_SIGNATURE = 0x04034B50
_ARCHIVE_PKL = re.compile(r"([^/]+)/data\.pkl")
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error, IndexError,
               KeyError, OverflowError, NotImplementedError)


class _Archive:
    """The zip's central directory, and the byte range of each stored entry (validated on first use)."""

    def __init__(self, path, f, size):
        self.path, self.f, self.size = path, f, size
        try:
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
        except _ZIP_ERRORS as e:
            raise ModelFormatError(path, f"not a readable zip archive: {type(e).__name__}: {e}", rule="zip") from e
        self.entries: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.orig_filename in self.entries:
                raise ModelFormatError(path, f"zip entry '{info.orig_filename:.200}' appears twice", rule="zip")
            self.entries[info.orig_filename] = info
        self._spans: dict[str, tuple[int, int]] = {}

    def span(self, name) -> tuple[int, int]:
        """(absolute offset of the entry's data, its size), for an uncompressed, unencrypted entry."""
        if name in self._spans:
            return self._spans[name]
        info = self.entries.get(name)
        if info is None:
            raise ModelFormatError(self.path, f"zip entry '{name:.200}' is missing", rule="zip")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise ModelFormatError(self.path, f"zip entry '{name:.200}' is compressed; torch.save stores entries "
                                   "uncompressed (re-save with torch.save or convert to .safetensors)", rule="zip")
        if info.flag_bits & 0x1:
            raise ModelFormatError(self.path, f"zip entry '{name:.200}' is encrypted", rule="zip")
        head = self.read(info.header_offset, _LOCAL_HEADER.size, f"local header of '{name:.200}'")
        sig, _, _, method, _, _, _, _, _, name_len, extra_len = _LOCAL_HEADER.unpack(head)
        if sig != _LOCAL_SIGNATURE or method != zipfile.ZIP_STORED:
            raise ModelFormatError(self.path, f"zip entry '{name:.200}': bad local header", rule="zip")
        local_name = self.read(info.header_offset + _LOCAL_HEADER.size, name_len, f"name of '{name:.200}'")
        if local_name != _name_bytes(info):
            raise ModelFormatError(self.path, f"zip entry '{name:.200}': local and central names differ", rule="zip")
        begin = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if begin + info.file_size > self.size:
            raise ModelFormatError(self.path, f"zip entry '{name:.200}' runs past the end of the file",
                                   rule="truncated")
        self._spans[name] = (begin, info.file_size)
        return begin, info.file_size

    def read(self, offset, n, what) -> bytes:
        if offset < 0 or offset + n > self.size:
            raise ModelFormatError(self.path, f"{what} runs past the end of the file", rule="truncated")
        try:
            data = os.pread(self.f.fileno(), n, offset) if n else b""
        except OSError as e:
            raise ModelFormatError(self.path, f"cannot read {what}: {e}") from e
        if len(data) != n:
            raise ModelFormatError(self.path, f"{what}: short read", rule="truncated")
        return data

    def record(self, name, limit) -> bytes:
        begin, n = self.span(name)
        if n > limit:
            raise ModelFormatError(self.path, f"zip entry '{name:.200}' is {n} bytes, over the {limit} byte limit",
                                   rule="zip")
        return self.read(begin, n, f"zip entry '{name:.200}'")


def _name_bytes(info: zipfile.ZipInfo) -> bytes:
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    try:
        return info.orig_filename.encode(encoding)
    except UnicodeEncodeError:
        return b""  # cannot match any local name: reported as a mismatch


def _archive_prefix(archive: _Archive) -> str:
    found = [m.group(1) for name in archive.entries if (m := _ARCHIVE_PKL.fullmatch(name))]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise ModelFormatError(archive.path, f"zip archive has {what} '<archive>/data.pkl' entries; a PyTorch "
                               "checkpoint has exactly one", rule="format")
    return found[0]


def _check_small_records(archive: _Archive, prefix: str):
    name = f"{prefix}/byteorder"
    if name in archive.entries:
        order = archive.record(name, MAX_SMALL_RECORD).strip()
        if order == b"big":
            raise ModelFormatError(archive.path, "big-endian checkpoint; sdcpp reads little-endian data only",
                                   rule="byteorder")
        if order != b"little":
            raise ModelFormatError(archive.path, f"unknown byteorder {order[:20]!r}", rule="byteorder")
    name = f"{prefix}/version"
    if name in archive.entries:
        version = archive.record(name, MAX_SMALL_RECORD).strip()
        if not version.isdigit() or int(version) < 1:
            raise ModelFormatError(archive.path, f"unreadable archive version {version[:20]!r}", rule="version")


def _state_dict(path, top) -> dict:
    if isinstance(top, dict) and "state_dict" in top:
        top = top["state_dict"]  # Lightning / A1111-era checkpoints: {"state_dict": ..., "global_step": ...}
        if not isinstance(top, dict):
            raise ModelFormatError(path, "'state_dict' is not a dict", rule="format")
    if not isinstance(top, dict):
        raise ModelFormatError(path, f"checkpoint holds a {type(top).__name__}, not a state dict", rule="format")
    return top


def _contiguous(shape, stride) -> bool:
    expected = 1
    for dim, step in zip(reversed(shape), reversed(stride), strict=True):
        if dim != 1 and step != expected:
            return False
        expected *= dim
    return True


def _tensor(archive: _Archive, prefix: str, name: str, ref: TensorRef) -> RawTensor:
    storage = ref.storage
    dtype, itemsize = storage.type.dtype, storage.type.itemsize
    numel = 1
    for d in ref.shape:
        numel *= d
    if numel > MAX_NUMEL:
        raise ModelFormatError(archive.path, f"shape {list(ref.shape)} is implausibly large", tensor=name,
                               rule="shape")
    if numel and not _contiguous(ref.shape, ref.stride):
        raise ModelFormatError(archive.path, f"non-contiguous tensor (shape {list(ref.shape)}, stride "
                               f"{list(ref.stride)}); sdcpp reads contiguous tensors only", tensor=name,
                               rule="strided")
    entry = f"{prefix}/data/{storage.key}"
    begin, size = archive.span(entry)
    if size != storage.numel * itemsize:
        raise ModelFormatError(archive.path, f"storage '{storage.key:.80}' should hold {storage.numel} × "
                               f"{itemsize} bytes but its zip entry has {size}", tensor=name, rule="size")
    if ref.offset + numel > storage.numel:
        raise ModelFormatError(archive.path, f"elements [{ref.offset}, {ref.offset + numel}) run past the "
                               f"{storage.numel} elements of storage '{storage.key:.80}'", tensor=name,
                               rule="offsets")
    return RawTensor(name, dtype, ref.shape, archive.path, begin + ref.offset * itemsize, numel * itemsize)


def read_ckpt(path) -> RawSource:
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ModelFormatError(path, f"cannot read file: {e}") from e
    with f:
        archive = _Archive(path, f, os.fstat(f.fileno()).st_size)
        prefix = _archive_prefix(archive)
        _check_small_records(archive, prefix)
        top = load_restricted(path, archive.record(f"{prefix}/data.pkl", MAX_PICKLE_BYTES))
        tensors = []
        for name, value in _state_dict(path, top).items():
            if type(name) is not str:
                raise ModelFormatError(path, f"state dict key {name!r:.80} is not a string", rule="format")
            if isinstance(value, TensorRef):
                tensors.append(_tensor(archive, prefix, name, value))
    if not tensors:
        raise ModelFormatError(path, "the state dict holds no tensors", rule="format")
    return RawSource(path=path, format="ckpt", tensors=tensors)
