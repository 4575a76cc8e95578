"""The ggml sdcpp ships: CPU variant modules picked at import, the folder they come from, the pin they are built from.

Each case that loads backends runs in a subprocess: a process registers ggml's backends once."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sdcpp._native import core
from sdcpp.build_ggml import PIN, backend_args, install_modules, restore

ROOT = Path(__file__).resolve().parents[1]
REPORT = ("import json; from sdcpp._native import core; c = core(); i = c.system_info(); "
          "s = c.bench_mul_mat('f16', 64, 8, 64, 1, 1, repack=False); "
          "print(json.dumps(dict(variant=i['cpu_variant'], backend=i['cpu_backend'], seconds=s)))")


def variant_modules() -> list[Path]:
    return sorted(Path(core().ggml_library_dir()).glob("libggml-cpu-*.so"))


def run_report(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", REPORT], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)


def test_the_loaded_cpu_backend_is_named_by_its_variant():
    info = core().system_info()
    if not variant_modules():
        assert info["cpu_variant"] == "built-in"  # a ggml built without GGML_BACKEND_DL (sdcpp build-ggml)
        return
    assert info["cpu_variant"] not in ("", "built-in")
    assert Path(info["cpu_backend"]).name == f"libggml-cpu-{info['cpu_variant']}.so"
    assert Path(info["cpu_backend"]).parent == Path(core().ggml_library_dir())


def test_the_baseline_variant_alone_is_chosen_and_computes(tmp_path):
    """With only the lowest instruction-set level in the folder, ggml must load it (not fail, not crash) and the
    products run on it: what an old CPU gets from the same wheel."""
    modules = variant_modules()
    if not modules:
        pytest.skip("this ggml has its CPU backend built in: no variant modules to choose from")
    baseline = {"x86_64": "x64", "AMD64": "x64"}.get(platform.machine())
    chosen = next((m for m in modules if baseline and m.name == f"libggml-cpu-{baseline}.so"), modules[0])
    shutil.copy(chosen, tmp_path)
    proc = run_report({"SDCPP_GGML_BACKEND_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(report["backend"]) == tmp_path / chosen.name
    assert report["variant"] == chosen.name[len("libggml-cpu-"):-len(".so")]
    assert report["seconds"] > 0


def test_a_folder_without_cpu_backend_is_a_clear_import_error(tmp_path):
    if not variant_modules():
        pytest.skip("this ggml has its CPU backend built in: no folder is searched")
    proc = run_report({"SDCPP_GGML_BACKEND_DIR": str(tmp_path)})
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "no ggml CPU backend" in proc.stderr and str(tmp_path) in proc.stderr


def test_the_ggml_pin_is_one_fact_shared_by_cmake_and_python():
    cmake = (ROOT / "cmake" / "bundled_ggml.cmake").read_text()
    assert "ggml_pin.json" in cmake and "sha256" in cmake
    assert not re.search(r"[0-9a-f]{64}", cmake), "the sha256 belongs in python/sdcpp/ggml_pin.json only"
    assert "cmake_args" in cmake and "-DGGML_LLAMAFILE=ON" not in cmake, "ggml's options live in the pin file too"
    assert "-DGGML_BACKEND_DL=ON" in PIN["cmake_args"] and "-DGGML_LLAMAFILE=ON" in PIN["cmake_args"]
    assert re.fullmatch(r"[0-9a-f]{64}", PIN["sha256"])
    assert PIN["sdist"] == f"{PIN['package'].replace('-', '_')}-{PIN['version']}.tar.gz"
    assert core().ggml_commit().startswith(PIN["ggml_commit"])


def test_the_pinned_sdist_is_checked_by_sha256(tmp_path, monkeypatch):
    from sdcpp.build_ggml import BuildError, source_dir

    fake = tmp_path / PIN["sdist"]
    fake.write_bytes(b"not the ggml source")
    monkeypatch.setenv("SDCPP_GGML_SOURCE", str(fake))
    with pytest.raises(BuildError, match=hashlib.sha256(b"not the ggml source").hexdigest()):
        source_dir(tmp_path / "work")


def test_a_native_build_replaces_the_bundled_libraries_and_restore_puts_them_back(tmp_path):
    """build-ggml's file handling, without compiling: a whole ggml replaces libggml/libggml-base (kept aside),
    links are copied as the files they point at, and --restore returns the folder to what the wheel installed."""
    soname = "0.dylib" if sys.platform == "darwin" else "so.0"
    dest, built = tmp_path / "lib", tmp_path / "prefix"
    dest.mkdir()
    built.mkdir()
    for name in ("libggml", "libggml-base"):
        (dest / f"{name}.{soname}").write_bytes(b"bundled " + name.encode())
    (dest / "libggml-cpu-x64.so").write_bytes(b"variant")
    for name in ("libggml", "libggml-base", "libggml-cpu"):
        (built / f"{name}.{soname}.20.2").write_bytes(b"native " + name.encode())
        (built / f"{name}.{soname}").symlink_to(f"{name}.{soname}.20.2")
    args, pattern = backend_args(None, False)
    assert "-DGGML_NATIVE=ON" in args and "-DGGML_BACKEND_DL=OFF" in args  # ggml refuses NATIVE with BACKEND_DL
    installed = install_modules(built, pattern, dest)
    assert sorted(p.name for p in installed) == sorted(f"{n}.{soname}" for n in ("libggml", "libggml-base",
                                                                                  "libggml-cpu"))
    assert all(not p.is_symlink() and p.read_bytes().startswith(b"native") for p in installed)
    assert (dest / "bundled" / f"libggml.{soname}").read_bytes() == b"bundled libggml"
    assert restore(dest) == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted([f"libggml.{soname}", f"libggml-base.{soname}",
                                                             "libggml-cpu-x64.so"])
    assert (dest / f"libggml.{soname}").read_bytes() == b"bundled libggml"
    assert restore(dest) == 1  # nothing left to restore


def test_build_ggml_dry_run_prints_the_cuda_build(capsys, tmp_path):
    from sdcpp.cli import main

    assert main(["build-ggml", "--cuda", "89", "--dry-run", "--lib-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "-DGGML_CUDA=ON" in out and "-DCMAKE_CUDA_ARCHITECTURES=89" in out and "-DGGML_BACKEND_DL=ON" in out
    assert f"libggml-cuda.* into {tmp_path}" in out
    assert not list(tmp_path.iterdir())  # a dry run writes nothing
