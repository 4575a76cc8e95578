"""Shared pytest fixtures: the tiny model files every test reads.

    def test_something(fixtures_dir, reference_state_dicts):
        single = fixtures_dir / "sdxl" / "single.safetensors"  # also sdcpp_convert.gguf, diffusers/, ...
        ref = reference_state_dicts("sdxl")  # {"unet": {name: np.ndarray}, "vae": ..., "text_encoder_2": ...}
        ref["text_encoder_2"]["text_projection.weight"]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:  # `fixtures` stays importable even if tests/ becomes a package
    sys.path.insert(0, str(_TESTS))

from parity import single_threaded_torch  # noqa: E402, F401  (a shared fixture, registered here)


@pytest.fixture(scope="session")
def fixture_files(request, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """{family: {"dir", "diffusers", "single", "gguf", ...: Path}}.

    Families: sd1, sd2, sdxl, sd1_inpaint, sdxl_refiner (sdxl adds comfy_gguf, vae_override[_ldm]).

    Built once per source version into the pytest cache (reused across runs, ~5 s when cold).
    """
    from fixtures.stamp import prune_old_builds, read_manifest, source_hash  # light: no torch import

    stamp = source_hash()
    cache = getattr(request.config, "cache", None)  # None with `-p no:cacheprovider`
    base = cache.mkdir("sdcpp-fixtures") if cache is not None else tmp_path_factory.mktemp("sdcpp-fixtures")
    out = Path(base) / stamp
    files = read_manifest(out, stamp)
    if files is None:  # cold cache: only now pay for importing torch/diffusers
        from fixtures.build import build_all

        files = build_all(out)
        prune_old_builds(base, keep=stamp)  # each build is ~160 MB
    return files


@pytest.fixture(scope="session")
def fixtures_dir(fixture_files) -> Path:
    """Root holding one directory per family (`fixtures_dir / "sd1" / "single.safetensors"`)."""
    return next(iter(fixture_files.values()))["dir"].parent


@pytest.fixture(scope="session")
def reference_state_dicts(fixtures_dir):
    """family -> {"unet", "vae", "text_encoder"[, "text_encoder_2"]: {name: np.ndarray}} (diffusers names).

    Loaded fresh on each call, so a test may modify what it gets.
    """
    from fixtures.reference import load_reference

    return lambda family: load_reference(fixtures_dir / family)


@pytest.fixture(autouse=True, scope="session")
def test_device():
    """SDCPP_TEST_DEVICE=auto (scripts/gpu_check.sh): every model a test loads for the CPU goes to that device instead,
    so the parity tests check a GPU build against the same references. Unset: the CPU, as always."""
    chosen = os.environ.get("SDCPP_TEST_DEVICE")
    if not chosen:
        yield "cpu"
        return
    import sdcpp.weights as weights

    original = weights.load_planned

    def on_test_device(index, plan, device="cpu", **kwargs):
        return original(index, plan, device=chosen if device == "cpu" else device, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(weights, "load_planned", on_test_device)
        yield chosen

