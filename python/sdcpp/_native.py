"""Loader for the compiled extension ``sdcpp._core``.

``_core`` links against the ggml shared libraries shipped by the ``libggml-python`` package. Its
RUNPATH already points at them, but we also preload them with ctypes: that covers builds where
the RUNPATH does not fit (in-place or ``--target`` installs, libggml in another site directory).
The dynamic loader matches already-loaded libraries by SONAME, so a preloaded ``libggml.so.0``
satisfies ``_core``'s dependency.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import importlib
import importlib.util
import os
import sys
from types import ModuleType

_REBUILD_HINT = (
    "Reinstall sdcpp so the extension is rebuilt against the installed ggml, e.g. "
    "`pip install --force-reinstall --no-deps <path to the sdcpp source tree>` "
    "(needs a C++17 compiler and CMake), and make sure `libggml-python==0.20.2.post1` is installed."
)


def _libggml_lib_dirs() -> list[str]:
    """Library folders of the installed libggml package (lib64: PyPI wheel, lib: local sdist build)."""
    spec = importlib.util.find_spec("libggml")  # locate without importing it
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs = []
    for root in spec.submodule_search_locations:
        for sub in ("lib64", "lib"):
            path = os.path.join(root, sub)
            if os.path.isdir(path):
                dirs.append(path)
    return dirs


def _try_load(path: str) -> bool:
    try:
        ctypes.CDLL(path)
    except OSError:
        return False
    return True


def _preload_cuda_runtime() -> None:
    """A CUDA build of libggml needs cudart/cuBLAS, whose RUNPATH does not reach pip's nvidia packages."""
    for site in sys.path:
        nvidia = os.path.join(site, "nvidia")
        if not os.path.isdir(nvidia):
            continue
        # Dependency order: cublas needs cublasLt, both need cudart.
        for name in ("libcudart.so.*", "libcublasLt.so.*", "libcublas.so.*"):
            for path in sorted(glob.glob(os.path.join(nvidia, "*", "lib", name))):
                _try_load(path)


def _preload_ggml() -> None:
    for lib_dir in _libggml_lib_dirs():
        ggml = os.path.join(lib_dir, "libggml.so.0")
        if not os.path.exists(ggml):
            continue
        if glob.glob(os.path.join(lib_dir, "libggml-cuda.so*")):
            _preload_cuda_runtime()
        # libggml's own RUNPATH ($ORIGIN) brings in ggml-base and the backends next to it.
        if _try_load(ggml):
            return


def _load_blas(module: ModuleType) -> None:
    """Hand the scipy-openblas32 library to the core for wide f32 products (csrc/runtime/blas.hpp). Optional:
    without it (or with SDCPP_NO_BLAS=1) every product stays on ggml's kernels."""
    if os.environ.get("SDCPP_NO_BLAS") or not hasattr(module, "blas_load"):
        return
    try:
        import scipy_openblas32
    except ImportError:
        return
    path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True))
    module.blas_load(path)


@functools.cache
def core() -> ModuleType:
    """Return the ``sdcpp._core`` extension module, loading ggml first."""
    module = _load_core()
    _load_blas(module)
    return module


def _load_core() -> ModuleType:
    if sys.platform.startswith("linux"):
        _preload_ggml()
    try:
        override = os.environ.get("SDCPP_CORE_PATH")
        if override:  # development: a `cmake --build` output used with the source tree on PYTHONPATH
            spec = importlib.util.spec_from_file_location("sdcpp._core", override)
            if spec is None or spec.loader is None:
                raise ImportError(f"SDCPP_CORE_PATH={override} is not an extension module")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules["sdcpp._core"] = module
            return module
        return importlib.import_module("sdcpp._core")
    except ImportError as exc:
        raise ImportError(
            f"sdcpp's native extension sdcpp._core could not be loaded: {exc}. {_REBUILD_HINT}"
        ) from exc
