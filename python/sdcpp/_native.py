"""Loader for the compiled extension ``sdcpp._core`` and the ggml it ships with.

The wheel carries ggml in ``sdcpp/lib/``: ``libggml`` and ``libggml-base`` (found through ``_core``'s RUNPATH)
and one CPU backend module per instruction-set level (``libggml-cpu-haswell.so``, ``-skylakex``,
``-sapphirerapids``, ...). Nothing runs until ``core()`` registers the modules: ggml scores each against the
running CPU and keeps the best, so one wheel is fast on AMX and safe on a CPU without AVX-512
(cmake/bundled_ggml.cmake). A GPU module put in the same folder (``sdcpp build-ggml --cuda``) is registered too.
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
    "Reinstall sdcpp so the extension and its ggml are rebuilt, e.g. "
    "`pip install --force-reinstall --no-deps <path to the sdcpp source tree>` (needs a C/C++ compiler and CMake)."
)


def _try_load(path: str) -> bool:
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True


def _preload_cuda_runtime() -> None:
    """libggml-cuda needs cudart/cuBLAS, whose RUNPATH does not reach pip's nvidia-* packages: load them first
    (the dynamic loader then matches them by soname)."""
    for site in sys.path:
        nvidia = os.path.join(site, "nvidia")
        if not os.path.isdir(nvidia):
            continue
        # Dependency order: cublas needs cublasLt, both need cudart.
        for name in ("libcudart.so.*", "libcublasLt.so.*", "libcublas.so.*"):
            for path in sorted(glob.glob(os.path.join(nvidia, "*", "lib", name))):
                _try_load(path)


def _load_backends(module: ModuleType) -> None:
    """Register ggml's backend modules from SDCPP_GGML_BACKEND_DIR, else from the folder libggml came from."""
    folder = os.environ.get("SDCPP_GGML_BACKEND_DIR") or module.ggml_library_dir()
    if sys.platform.startswith("linux") and glob.glob(os.path.join(folder, "libggml-cuda*")):
        _preload_cuda_runtime()
    try:
        module.load_backends(folder)
    except RuntimeError as e:
        raise ImportError(f"sdcpp could not load ggml's backends: {e}. {_REBUILD_HINT}") from e


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
    _load_backends(module)
    _load_blas(module)
    return module


def _load_core() -> ModuleType:
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
