"""Every file of the malformed corpus (tests/malformed/make_corpus.py, ~740 files and folders) gets a typed
answer.

`sdcpp.inspect` must raise ModelFormatError / UnsupportedModelError or succeed; a file that passes inspection
must then load with `load_weights` or be refused the same way. Any other exception is a bug; a crash would
stop the run (none is known, so everything runs in this process). Files marked "refuse" in the manifest
must not load. Takes ~2 s."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import sdcpp

sys.path.insert(0, str(Path(__file__).resolve().parent / "malformed"))
from make_corpus import generate  # noqa: E402

TYPED = (sdcpp.ModelFormatError, sdcpp.UnsupportedModelError)

# Findings past the readers, in code that interprets metadata: each of these files once got an untyped error
# from the function named (fixed there). They are checked on their own below: typed error, or loaded when the
# damaged metadata is an optional hint (configs).
DOWNSTREAM = {
    "st_orig_shape_": "names/canonicalize.py _with_orig_shape: int() of a non-list value (ValueError)",
    "gguf_meta_string.": "names/canonicalize.py _with_orig_shape: int() of a string value (ValueError)",
    "gguf_meta_int.": "names/canonicalize.py _with_orig_shape: iterating an int value (TypeError)",
    "st_prediction_": "detect.py normalize_prediction: plain ValueError for a file's sdcpp.prediction",
    "gguf_meta_prediction_": "detect.py normalize_prediction: plain ValueError for a file's sdcpp.prediction",
    "diffusers_scheduler_prediction_": "detect.py normalize_prediction: plain ValueError for prediction_type",
    "st_config_deep.": "index.py TensorIndex.configs: json.loads RecursionError on deeply nested JSON",
    "gguf_meta_config_deep.": "index.py TensorIndex.configs: json.loads RecursionError on deeply nested JSON",
}


# Pickles that crashed or exhausted a plain unpickler (C stack overflow hashing deep tuples: SIGSEGV; memo
# and length fields allocating GBs). They run in a child process with capped memory, so a regression fails
# this test with its signal instead of killing the whole run.
RISKY = ("ckpt_deep_tuple_", "ckpt_memo_bomb", "ckpt_binbytes8_huge", "ckpt_binunicode8_huge", "ckpt_frame_huge",
         "ckpt_long4_huge")
_CHILD = """
import sys, sdcpp
for path in sys.argv[1:]:
    try:
        sdcpp.inspect(path)
        print("loaded", path)
    except (sdcpp.ModelFormatError, sdcpp.UnsupportedModelError):
        print("refused", path)
"""


def _downstream(name):
    return next((why for prefix, why in DOWNSTREAM.items() if name.startswith(prefix)), None)


def _outcome(path) -> str:
    try:
        sdcpp.inspect(path, type="q8_0")
    except TYPED:
        return "refused"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # random f64 bytes overflow f32: fine
        try:
            sdcpp.load_weights(path, type="q8_0", progress=False, n_threads=1)
        except TYPED:
            return "refused at load"
    return "loaded"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("malformed")
    return out, generate(out, seed=0)


def test_corpus_is_large_and_deterministic(corpus, tmp_path):
    out, manifest = corpus
    assert len(manifest) >= 200
    assert generate(tmp_path, seed=0) == manifest
    for name in manifest:
        paths = sorted((out / name).rglob("*")) if (out / name).is_dir() else [out / name]
        for path in (p for p in paths if p.is_file()):
            assert (tmp_path / path.relative_to(out)).read_bytes() == path.read_bytes(), path


def test_every_file_gets_a_typed_answer(corpus):
    out, manifest = corpus
    untyped, accepted, outcomes = [], [], {}
    for name, expect in manifest.items():
        if _downstream(name) or name.startswith(RISKY):
            continue
        try:
            outcomes[name] = _outcome(out / name)
        except Exception as e:  # noqa: BLE001 - collect every finding, then fail once
            untyped.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")
            continue
        if expect == "refuse" and outcomes[name] == "loaded":
            accepted.append(name)
    assert not untyped, "untyped exceptions:\n" + "\n".join(untyped)
    assert not accepted, "malformed files accepted:\n" + "\n".join(accepted)
    # The valid base files load, so it is the damage in the others that gets them refused.
    for name in ("st_valid.safetensors", "gguf_valid.gguf", "ckpt_valid.ckpt", "ckpt_valid_unwrapped.ckpt",
                 "diffusers_valid"):
        assert outcomes[name] == "loaded", name
    refused = sum(o != "loaded" for o in outcomes.values())
    assert refused > len(outcomes) * 0.7, f"only {refused} of {len(outcomes)} refused"


@pytest.mark.parametrize("prefix", sorted(DOWNSTREAM))
def test_downstream_findings(corpus, prefix):
    out, manifest = corpus
    names = [n for n in manifest if n.startswith(prefix)]
    assert names
    for name in names:
        _outcome(out / name)  # typed or loaded once fixed


def _cap_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def test_risky_pickles_in_a_child_process(corpus):
    out, manifest = corpus
    paths = [str(out / n) for n in manifest if n.startswith(RISKY)]
    assert len(paths) >= 6
    proc = subprocess.run([sys.executable, "-c", _CHILD, *paths], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                          # ASan (fuzz/README.md) reserves terabytes of address space: no cap under it
                          preexec_fn=_cap_memory if sys.platform == "linux" and "asan" not in
                          os.environ.get("LD_PRELOAD", "") else None)
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-3000:]}"
    assert proc.stdout.split()[::2] == ["refused"] * len(paths), proc.stdout
