"""`sdcpp build-ggml`: build ggml from the pinned source for this machine and put it where sdcpp loads ggml from.

The wheel already carries one CPU module per instruction-set level, picked at import (cmake/bundled_ggml.cmake).
This command builds ggml from the same pinned source (ggml_pin.json) with the wheel's options, so what it adds
matches the libggml in the package:

* ``--cuda ARCHS`` adds the backend module ``libggml-cuda.so``; ggml registers it next to the CPU, and
  ``device="auto"`` picks it.
* ``--metal`` adds ``libggml-metal`` (macOS).
* no flag: a whole ggml compiled for exactly this CPU (``GGML_NATIVE=ON``). ggml refuses GGML_NATIVE together
  with GGML_BACKEND_DL, so this ggml has its CPU backend built in: it replaces ``libggml`` and ``libggml-base``
  (the bundled ones are kept in ``bundled/``; ``--restore`` puts them back), and the CPU variant modules are then
  left unused (system-info: ``cpu_variant`` "built-in").
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

from .errors import SdcppError

PIN = json.loads((Path(__file__).with_name("ggml_pin.json")).read_text())
CUBLAS_PACKAGE = "nvidia-cublas"
BUNDLED_ASIDE = "bundled"
SONAME = "*.0.dylib" if sys.platform == "darwin" else "*.so.0"
# The bundled build's options (cmake/bundled_ggml.cmake reads the same list), so what is built here matches it.
COMMON_ARGS = [*PIN["cmake_args"], f"-DGGML_BUILD_COMMIT={PIN['ggml_commit']}"]


class BuildError(SdcppError):
    """The ggml source could not be fetched or built."""


def library_dir() -> Path:
    """The folder the loaded _core takes ggml from: site-packages/sdcpp/lib, or build/ggml/lib in development."""
    from ._native import core

    return Path(core().ggml_library_dir())


def cublas_wheel() -> tuple[str, dict[str, str]] | None:
    """(root, {"libcublas": path, "libcublasLt": path}) of an installed nvidia-cublas wheel (nvidia/cu13 or the older
    nvidia/cublas layout), or None."""
    site = sysconfig.get_paths()["purelib"]
    for root in sorted(glob.glob(os.path.join(site, "nvidia", "cu*"))) + [os.path.join(site, "nvidia", "cublas")]:
        libs = {os.path.basename(p).split(".so")[0]: p for p in glob.glob(os.path.join(root, "lib", "libcublas*.so.*"))}
        if "libcublas" in libs and "libcublasLt" in libs:
            return root, libs
    return None


def cuda_args(archs: str) -> list[str]:
    """CUDA needs cuBLAS headers and libraries; they come from the nvidia-cublas wheel when the system toolkit
    lacks them. GGML_CUDA_NO_VMM avoids linking libcuda, absent on machines without a driver. GGML_CPU=OFF: the
    CPU modules are the bundled ones."""
    args = ["-DGGML_CUDA=ON", "-DGGML_CPU=OFF", f"-DCMAKE_CUDA_ARCHITECTURES={archs}", "-DGGML_CUDA_NO_VMM=ON"]
    found = cublas_wheel()
    if found:
        root, libs = found
        args += [f"-DCUDA_cublas_LIBRARY={libs['libcublas']}", f"-DCUDA_cublasLt_LIBRARY={libs['libcublasLt']}",
                 f"-DCMAKE_CUDA_FLAGS=-I{root}/include", f"-DCMAKE_CXX_FLAGS=-I{root}/include"]
    return args


def backend_args(cuda: str | None, metal: bool) -> tuple[list[str], str]:
    """ggml options and the glob of the files the build yields that go into the library folder."""
    if cuda:
        return cuda_args(cuda), "libggml-cuda.*"
    if metal:
        return ["-DGGML_METAL=ON", "-DGGML_CPU=OFF", "-DGGML_METAL_EMBED_LIBRARY=ON"], "libggml-metal.*"
    return ["-DGGML_BACKEND_DL=OFF", "-DGGML_NATIVE=ON"], "libggml" + SONAME  # later -D options win


def source_dir(work: Path) -> Path:
    """ggml's source: $SDCPP_GGML_SOURCE (the pinned sdist or a folder), else the pinned sdist fetched with pip."""
    given = os.environ.get("SDCPP_GGML_SOURCE")
    if given and os.path.isdir(given):
        root = Path(given)
        return root / "ggml" if (root / "ggml" / "CMakeLists.txt").exists() else root
    archive = Path(given) if given else None
    if archive is None:
        dl = work / "sdist"
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
               "--no-binary", PIN["package"], "-d", str(dl), f"{PIN['package']}=={PIN['version']}"]
        print("+", " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise BuildError(f"could not fetch {PIN['sdist']} with pip; set SDCPP_GGML_SOURCE to a copy of it")
        archive = dl / PIN["sdist"]
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != PIN["sha256"]:
        raise BuildError(f"{archive}: sha256 {digest}, expected {PIN['sha256']} ({PIN['package']} {PIN['version']})")
    with tarfile.open(archive) as tar:
        # filter="data" refuses links and paths outside the folder (Python >= 3.10.12 has it).
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(work / "src", **kw)
    roots = glob.glob(str(work / "src" / "*" / "ggml"))
    if not roots:
        raise BuildError(f"{archive}: no ggml/ folder inside")
    return Path(roots[0])


def commands(src: Path, work: Path, args: list[str], jobs: int) -> list[list[str]]:
    build, prefix = work / "build", work / "prefix"
    return [["cmake", "-S", str(src), "-B", str(build), *COMMON_ARGS, *args, f"-DCMAKE_INSTALL_PREFIX={prefix}",
             "-DCMAKE_INSTALL_RPATH=$ORIGIN" if sys.platform != "darwin" else "-DCMAKE_INSTALL_RPATH=@loader_path"],
            ["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs)],
            ["cmake", "--install", str(build), "--config", "Release"]]


def install_modules(prefix_lib: Path, pattern: str, dest: Path) -> list[Path]:
    """Copies the built files into dest (each link's target under the link's name: wheels hold no links), each
    through a temporary name so a failed copy leaves no half-written library."""
    found = sorted(Path(p) for p in glob.glob(str(prefix_lib / pattern)))
    found = [p for p in found if pattern.endswith(SONAME) or not p.is_symlink()]
    if not found:
        raise BuildError(f"the build produced no {pattern} in {prefix_lib}")
    if pattern.endswith(SONAME):  # a whole ggml: keep the bundled libraries it replaces, once
        aside = dest / BUNDLED_ASIDE
        if not aside.exists():
            aside.mkdir()
            for lib in glob.glob(str(dest / ("libggml" + SONAME))):
                shutil.copy2(lib, aside / os.path.basename(lib))
    done = []
    for f in found:
        target = dest / f.name
        tmp = target.with_name(target.name + ".partial")
        shutil.copyfile(f.resolve(), tmp)
        os.replace(tmp, target)
        done.append(target)
    return done


def restore(dest: Path) -> int:
    """Undoes a native CPU build: the bundled libggml/libggml-base back, the built-in CPU library removed."""
    aside = dest / BUNDLED_ASIDE
    kept = glob.glob(str(aside / ("libggml" + SONAME)))
    if not kept:
        print(f"nothing to restore: no {aside}/libggml{SONAME}")
        return 1
    for local in glob.glob(str(dest / ("libggml" + SONAME))):
        os.remove(local)
    for lib in kept:
        os.replace(lib, dest / os.path.basename(lib))
    os.rmdir(aside)
    print(f"restored the bundled ggml in {dest}")
    return 0


def run(cuda: str | None = None, metal: bool = False, dry_run: bool = False, restore_variants: bool = False,
        lib_dir: str | None = None, jobs: int | None = None) -> int:
    dest = Path(lib_dir) if lib_dir else library_dir()
    if restore_variants:
        return restore(dest)
    if not dry_run and shutil.which("cmake") is None:
        raise BuildError("cmake is not on PATH (pip install cmake) and a C/C++ compiler is needed")
    if cuda and not dry_run and cublas_wheel() is None:
        # cuBLAS headers/libs for the build, when the CUDA toolkit lacks them.
        subprocess.run([sys.executable, "-m", "pip", "install", CUBLAS_PACKAGE], check=False)
    args, pattern = backend_args(cuda, metal)
    jobs = jobs or os.cpu_count() or 2
    if dry_run:
        for cmd in commands(Path("<ggml source>"), Path("<work>"), args, jobs):
            print(" ".join(cmd))
        print(f"then copy <work>/prefix/lib/{pattern} into {dest}")
        return 0
    with tempfile.TemporaryDirectory(prefix="sdcpp-ggml-") as tmp:
        work = Path(tmp)
        src = source_dir(work)
        for cmd in commands(src, work, args, jobs):
            print("+", " ".join(cmd), flush=True)
            if subprocess.run(cmd).returncode != 0:
                raise BuildError(f"ggml build step failed: {' '.join(cmd[:3])}")
        for m in install_modules(work / "prefix" / "lib", pattern, dest):
            print(f"installed {m}")
    return 0
