"""What every sdcpp fuzz harness does with one input: write it to a file, read it with one reader, make the
names canonical, then check that every tensor the reader returned lies inside the file and has the byte
size its dtype and shape imply. ModelFormatError / UnsupportedModelError are the expected answers to bad
input; any other exception (or a failed check) propagates, and atheris reports it as a finding."""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

_HERE = os.path.dirname(os.path.abspath(__file__))
_PYTHON = os.path.join(os.path.dirname(_HERE), "python")
if os.path.isdir(os.path.join(_PYTHON, "sdcpp")) and _PYTHON not in sys.path:
    sys.path.insert(0, _PYTHON)  # run from a source checkout without installing

with atheris.instrument_imports(include=["sdcpp"]):
    from sdcpp import ggml_types
    from sdcpp.errors import ModelFormatError, UnsupportedModelError
    from sdcpp.io.raw import NON_FLOAT_ITEMSIZE, MappedFiles
    from sdcpp.names.canonicalize import canonicalize

TYPED = (ModelFormatError, UnsupportedModelError)


def _expected_nbytes(t) -> int:
    if t.dtype in NON_FLOAT_ITEMSIZE:
        return t.numel * NON_FLOAT_ITEMSIZE[t.dtype]
    return ggml_types.get(t.dtype).nbytes(t.numel)


def check_file(reader, path: str, size: int):
    try:
        source = reader(path)
        canonicalize(source)
    except TYPED:
        return
    files = MappedFiles()
    try:
        for t in source.tensors:
            assert 0 <= t.offset and t.offset + t.nbytes <= size, (t, size)
            assert t.nbytes == _expected_nbytes(t), t
            view = files.view(t)
            assert view.nbytes == t.nbytes, t
            del view
    finally:
        files.close()


def scratch_path(suffix: str) -> str:
    """One file per process, rewritten for every input (in RAM where /dev/shm exists)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return os.path.join(base, f"sdcpp-fuzz-{os.getpid()}{suffix}")


def main(test_one):
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


def file_harness(reader, suffix: str):
    """A test_one(bytes) that feeds the whole input to `reader` as a file."""
    path = scratch_path(suffix)

    def test_one(data: bytes):
        with open(path, "wb") as f:
            f.write(data)
        check_file(reader, path, len(data))

    return test_one
