"""Fuzz the PyTorch checkpoint reader (zip archive + restricted unpickler).

    python fuzz/fuzz_ckpt.py CORPUS_DIR fuzz/seeds/ckpt [libFuzzer flags]
    SDCPP_FUZZ_CKPT=pickle python fuzz/fuzz_ckpt.py CORPUS_DIR fuzz/seeds/ckpt_pickle [libFuzzer flags]

The first form mutates whole files (zip structure and all). The second takes the input as `data.pkl` and
wraps it in a well-formed archive whose storages match the seed model, so mutations reach the unpickler
and the tensor checks instead of dying in the zip layer."""

import os
import struct
import sys

from harness import check_file, file_harness, main, scratch_path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "malformed"))

with __import__("atheris").instrument_imports(include=["sdcpp"]):
    from sdcpp.io.ckpt_reader import read_ckpt

import make_corpus  # noqa: E402  (the torch-zip writer)
from make_seeds import SEED_WIDTH  # noqa: E402


def _stored_zip(entries) -> bytes:
    """A zip of uncompressed entries, CRCs left 0 (the reader never checks them): ~30x faster than zipfile."""
    local, central = b"", b""
    for name, data in entries:
        n = name.encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, 0, len(data), len(data),
                               len(n), 0, 0, 0, 0, 0, len(local)) + n
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, 0, len(data), len(data), len(n), 0) + n + data
    return local + central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central),
                                         len(local), 0)


def pickle_harness():
    path = scratch_path(".ckpt")
    _, storages = make_corpus.ckpt_parts(make_corpus.mini_model(0, width=SEED_WIDTH))
    # Views and reuse: a second storage key space the mutator can reach by editing digits.
    storages.update({f"{k}{k}": v for k, v in storages.items()})
    tail = [("archive/byteorder", b"little")] + [(f"archive/data/{k}", v) for k, v in storages.items()]

    def test_one(data: bytes):
        blob = _stored_zip([("archive/data.pkl", data)] + tail)
        with open(path, "wb") as f:
            f.write(blob)
        check_file(read_ckpt, path, len(blob))

    return test_one


if __name__ == "__main__":
    main(pickle_harness() if os.environ.get("SDCPP_FUZZ_CKPT") == "pickle" else file_harness(read_ckpt, ".ckpt"))
