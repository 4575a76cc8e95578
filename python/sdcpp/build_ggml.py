"""`sdcpp build-ggml`: rebuild the pinned libggml-python from source for this machine (or for CUDA).

The PyPI wheel of libggml-python is a portable AVX2 build without llamafile's sgemm; a native build with
GGML_LLAMAFILE is ~3.4x faster at f16 matmul on an AVX-512 CPU (see third_party/ggml/README.md). The sdcpp
extension links ggml by soname, so swapping the library needs no sdcpp rebuild."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

GGML_PACKAGE = "libggml-python==0.20.2.post1"
CUBLAS_PACKAGE = "nvidia-cublas"


def cpu_command() -> tuple[list[str], dict]:
    env = {"CMAKE_ARGS": "-DGGML_NATIVE=ON -DGGML_LLAMAFILE=ON"}
    return _pip_rebuild(), env


def cuda_command(archs: str) -> tuple[list[str], dict]:
    """CUDA needs cuBLAS headers and libraries; they come from the nvidia-cublas wheel when the system
    toolkit lacks them. GGML_CUDA_NO_VMM avoids linking libcuda, absent on machines without a driver."""
    roots = glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages", "nvidia", "cu*"))
    cmake = [f"-DCMAKE_CUDA_ARCHITECTURES={archs}", "-DGGML_CUDA_NO_VMM=ON", "-DGGML_NATIVE=ON",
             "-DGGML_LLAMAFILE=ON"]
    if roots:
        cb = roots[0]
        libs = {os.path.basename(p).split(".so")[0]: p for p in glob.glob(os.path.join(cb, "lib", "libcublas*.so.*"))}
        if "libcublas" in libs and "libcublasLt" in libs:
            cmake += [f"-DCUDA_cublas_LIBRARY={libs['libcublas']}", f"-DCUDA_cublasLt_LIBRARY={libs['libcublasLt']}",
                      f"-DCMAKE_CUDA_FLAGS=-I{cb}/include", f"-DCMAKE_CXX_FLAGS=-I{cb}/include"]
    return _pip_rebuild(), {"USE_CUDA": "1", "CMAKE_ARGS": " ".join(cmake)}


def _pip_rebuild() -> list[str]:
    # --no-cache-dir: pip's wheel cache keys on the sdist, not on CMAKE_ARGS, and would reuse an old build.
    return [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--force-reinstall", "--no-deps",
            "--no-binary", "libggml-python", GGML_PACKAGE]


def run(cuda: str | None = None, dry_run: bool = False) -> int:
    if cuda:
        if not dry_run:  # cuBLAS headers/libs for the build, when the CUDA toolkit lacks them
            subprocess.run([sys.executable, "-m", "pip", "install", CUBLAS_PACKAGE], check=False)
        cmd, env = cuda_command(cuda)
    else:
        cmd, env = cpu_command()
    print(" ".join(f"{k}={v!r}" for k, v in env.items()), " ".join(cmd))
    if dry_run:
        return 0
    return subprocess.run(cmd, env={**os.environ, **env}).returncode
