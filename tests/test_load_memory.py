"""Loading and quantize() release the source pages of each tensor once it is converted, so a load does not
keep the whole memory-mapped source resident (peak ~ weights + one tensor; benchmarks/bench_load.py).

Measured exactly, not sampled: the Rss of the source's own mapping in /proc/self/smaps, read after the
load while the mapping is still open. The control runs the same load with releasing off (as on a
platform without madvise) and shows the measure would catch pages left mapped."""

from __future__ import annotations

import hashlib
import mmap
import sys

import numpy as np
import pytest

import sdcpp.io.raw as raw
from sdcpp.api import _prepare
from sdcpp.quant.gguf_out import write_gguf
from sdcpp.quant.materialize import stream_planned
from sdcpp.weights import load_planned

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or getattr(mmap, "MADV_DONTNEED", None) is None,
    reason="needs /proc/self/smaps and MADV_DONTNEED")


def _mapped_rss(mm: mmap.mmap) -> int:
    """Resident bytes of the mapping `mm`, from /proc/self/smaps (located by its address)."""
    addr = np.frombuffer(mm, dtype=np.uint8).ctypes.data  # the temporary view dies at once
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= addr < end
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("mapping not found in /proc/self/smaps")


def _run(path, tmp_path, qtype, how):
    """(resident bytes of the source mappings after the run, bytes the run read, digest of its output)."""
    index, plan = _prepare(path, type=qtype)
    try:
        if how == "quantize":
            out = tmp_path / "out.gguf"
            write_gguf(out, index, plan, n_threads=2, progress=False)
            digest = hashlib.sha256(out.read_bytes()).hexdigest()
        else:
            w = load_planned(index, plan, n_threads=2, progress=False)
            digest = hashlib.sha256(b"".join(w.bytes(n).tobytes() for n in w.names())).hexdigest()
        maps = [mm for mm in index.files._maps.values() if isinstance(mm, mmap.mmap)]
        assert maps
        read = sum({(t.source.path, t.source.offset): t.source.nbytes for t in index}.values())
        return sum(_mapped_rss(mm) for mm in maps), read, digest
    finally:
        index.close()


@linux_only
@pytest.mark.parametrize("family, form, qtype, how", [
    ("sd1", "single.safetensors", "q4_0", "load"),  # converted: a fresh array per tensor
    ("sd1", "single.safetensors", None, "load"),  # stored type kept: the store copies from the map itself
    ("sd2", "single.safetensors", "q8_0", "quantize"),  # quantize() path; OpenCLIP's fused in_proj
    ("sdxl", "sdcpp_convert.gguf", None, "load"),  # a GGUF source
])
def test_source_pages_are_released(fixtures_dir, tmp_path, monkeypatch, family, form, qtype, how):
    path = fixtures_dir / family / form
    resident, read, digest = _run(path, tmp_path, qtype, how)
    monkeypatch.setattr(raw, "_DONTNEED", None)  # the no-madvise platform path: a no-op release
    kept, _, same = _run(path, tmp_path, qtype, how)

    assert read > 4 * 2**20
    assert kept > read // 2  # without releasing, the pages read stay mapped: the measure sees them
    assert resident < read // 50  # with it, at most a few pages remain
    assert digest == same  # releasing changes no byte


def test_releases_follow_the_last_reader_and_spare_pending_tensors(fixtures_dir, monkeypatch):
    index, plan = _prepare(fixtures_dir / "sd2" / "single.safetensors")
    calls, step = [], [0]
    monkeypatch.setattr(index.files, "release", lambda path, begin, end: calls.append((step[0], begin, end)))
    try:
        last_reader = {}
        for step[0], (e, _) in enumerate(stream_planned(index, plan), start=1):
            last_reader[index[e.name].source] = step[0]
        split = [index[e.name].source for e in plan if index[e.name].split]
    finally:
        index.close()
    assert split and len(split) == 3 * len(set(split))  # fused in_proj: three readers each
    assert len(calls) == len(last_reader)  # one release per raw tensor
    for t, last in last_reader.items():
        released = [(b, e) for when, b, e in calls if when == last]
        assert any(b <= t.offset and t.offset + t.nbytes <= e for b, e in released), t.name
        # no release before its last reader is done (three readers for a fused in_proj) touches it
        early = [(b, e) for when, b, e in calls if when < last and b < t.offset + t.nbytes and t.offset < e]
        assert not early, t.name
