"""What every reader produces: tensors as they are stored, before any renaming."""

from __future__ import annotations

import bisect
import mmap
import os
from collections import Counter
from collections.abc import Iterable
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

# None where the platform has no madvise (Windows) or no MADV_DONTNEED: releasing is then a no-op.
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None) if hasattr(mmap.mmap, "madvise") else None


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

    def release(self, path: str, begin: int, end: int):
        """Drop the pages lying wholly inside bytes [begin, end) of `path` from this process's resident
        set (rounded inward: a page shared with bytes outside the range stays).

        MADV_DONTNEED only unmaps: the pages stay in the kernel's page cache (reclaimable, not ours)
        and a later read faults them back in from it, so it is safe even while a numpy view of the
        range is alive. The map is ACCESS_READ, i.e. MAP_SHARED + PROT_READ: no private copy-on-write
        page exists whose content MADV_DONTNEED could discard. A hint only: no-op where unsupported."""
        mm = self._maps.get(path)
        if _DONTNEED is None or not isinstance(mm, mmap.mmap) or mm.closed:
            return
        page = mmap.PAGESIZE
        begin = max(0, -(-begin // page) * page)
        end = len(mm) if end >= len(mm) else end - end % page  # the file's last page is ours alone
        if end > begin:
            try:
                mm.madvise(_DONTNEED, begin, end - begin)
            except (OSError, ValueError):
                pass

    def close(self):
        for mm in self._maps.values():
            if isinstance(mm, mmap.mmap):
                try:
                    mm.close()
                except BufferError:
                    pass  # a numpy view is still alive; the map closes when it is collected
        self._maps.clear()


class PageReleaser:
    """Releases the source pages of raw tensors as they are consumed, so that a load peaks at the
    converted weights plus one tensor in flight instead of keeping the whole mapped source resident.

    A raw tensor is released once its last reader is done (OpenCLIP's fused in_proj feeds three
    canonical tensors). Reading a tensor also maps neighbouring pages: the kernel maps the cached pages
    around each fault (fault-around: 64 KiB by default, at most 2 MiB; a PMD-sized folio may be mapped
    whole), so releasing only the tensor's own bytes leaves those mapped (a tenth of a test fixture of
    small tensors stayed resident that way). The release therefore reaches MARGIN either side, over
    consumed and never-read bytes alike, but stops at the nearest tensor still to be read: nothing
    pending is ever dropped. Spans overlap only in .ckpt storage views; there a pending tensor may
    lose pages early, which only means a re-fault from the page cache."""

    MARGIN = 2 << 20

    def __init__(self, files: MappedFiles, readers: Iterable[RawTensor]):
        self._files = files
        self._left = Counter(readers)  # raw tensor -> readers still to come
        self._pending: dict[str, list[tuple[int, int]]] = {}  # path -> sorted spans with readers left
        for t in self._left:
            self._pending.setdefault(t.path, []).append((t.offset, t.offset + t.nbytes))
        for spans in self._pending.values():
            spans.sort()

    def done(self, t: RawTensor):
        """One reader of `t` has finished with its bytes (copied or written them)."""
        self._left[t] -= 1
        if self._left[t] > 0:
            return
        del self._left[t]
        spans = self._pending[t.path]
        span = (t.offset, t.offset + t.nbytes)
        i = bisect.bisect_left(spans, span)
        del spans[i]
        begin = max(span[0] - self.MARGIN, spans[i - 1][1] if i > 0 else 0)
        end = span[1] + self.MARGIN
        if i < len(spans):
            end = min(end, spans[i][0])
        self._files.release(t.path, begin, end)
