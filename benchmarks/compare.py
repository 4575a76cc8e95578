"""sdcpp next to diffusers (f32, bf16) and OpenVINO (f32, bf16) on the same random-weight SD1.5 UNet and SD VAE.

    python benchmarks/compare.py [--sizes 32 64] [--vae 64] [--rounds 3] [--threads 2]
                                 [--runtimes sdcpp:f16 sdcpp:q8_0 diffusers:f32 diffusers:bf16 openvino:bf16 ...]

Each runtime runs in its own worker process (so peak RSS is its own) that loads the model once and then waits for
commands on stdin; the driver sends one evaluation at a time, round after round, to every worker in turn, so a noisy
neighbour slows them alike. One evaluation is one UNet call at batch 2 (what classifier-free guidance evaluates per
step) at timestep 500, or one VAE decode of a batch-1 latent (--vae 64: a 512x512 image). Every output is compared
with diffusers f32's (rel-L2 = |out - ref| / |ref|).

Runtimes are `name:type[:key=value,...]`:
  sdcpp:f16, sdcpp:q8_0, sdcpp:q4_K ...     weight type; options are keyword arguments of sdcpp.models.unet.UNet
                                            and .vae.VAE (e.g. sdcpp:f16:flash_attn=0)
  diffusers:f32, diffusers:bf16             diffusers' models, bf16 loaded with torch_dtype=torch.bfloat16
  openvino:f32, openvino:bf16               `openvino.convert_model` of the same diffusers models at a static shape
                                            (IR cached under --dir; INFERENCE_PRECISION_HINT, PERFORMANCE_HINT=LATENCY)
An sdcpp runtime's `core=PATH` option runs it with that build of the extension (SDCPP_CORE_PATH), e.g. an installed
wheel's site-packages/sdcpp/_core*.so next to a source build's build/_core*.so; the table names it by its folder.
OpenVINO is optional (`pip install openvino`); a conversion takes minutes and several GB once per shape.
With every runtime alive at once the workers hold ~15-20 GB; --respawn starts each worker afresh per round instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_unet import build_folder as build_unet  # noqa: E402
from bench_vae import build_folder as build_vae  # noqa: E402

DEFAULT_RUNTIMES = ["sdcpp:f16", "sdcpp:q8_0", "diffusers:f32", "diffusers:bf16", "openvino:f32", "openvino:bf16"]
BATCH = 2
TIMESTEP = 500.0


def unet_inputs(size: int) -> dict:
    return dict(
        latents=np.random.default_rng(0).standard_normal((BATCH, 4, size, size)).astype(np.float32),
        timesteps=np.full(BATCH, TIMESTEP, np.float32),
        context=np.random.default_rng(1).standard_normal((BATCH, 77, 768)).astype(np.float32),
    )


def vae_input(size: int) -> np.ndarray:
    return np.random.default_rng(2).standard_normal((1, 4, size, size)).astype(np.float32)


def parse_runtime(spec: str) -> tuple[str, str, dict]:
    parts = spec.split(":")
    if len(parts) < 2 or parts[0] not in ("sdcpp", "diffusers", "openvino"):
        raise SystemExit(f"bad runtime {spec!r}: expected sdcpp:TYPE, diffusers:f32|bf16 or openvino:f32|bf16")
    options = {}
    for kv in filter(None, (parts[2] if len(parts) > 2 else "").split(",")):
        k, v = kv.split("=", 1)
        options[k] = json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
    return parts[0], parts[1], options


def peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


# ---- workers: each returns run(kind, size) -> np.ndarray -------------------------------------------------------


def sdcpp_worker(folder: Path, dtype: str, options: dict, threads: int):
    import sdcpp
    from sdcpp.models.unet import UNet
    from sdcpp.models.vae import VAE

    options = {k: v for k, v in options.items() if k != "core"}  # the build: set by the driver (Worker)
    weights = sdcpp.load_weights(folder, unet_type=dtype, vae_type=dtype, n_threads=threads, progress=False)
    unet = UNet(weights, n_threads=threads, **options)
    vae = VAE(weights, n_threads=threads, **options)

    def run(kind, size):
        return unet.predict(**unet_inputs(size)) if kind == "unet" else vae.decode(vae_input(size))

    return run


def diffusers_models(folder: Path, dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype).eval()
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype).eval()
    return unet, vae


def diffusers_worker(folder: Path, dtype: str, options: dict, threads: int):
    import torch

    torch.set_num_threads(threads)
    tdtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    unet, vae = diffusers_models(folder, tdtype)

    @torch.no_grad()
    def run(kind, size):
        if kind == "unet":
            x = unet_inputs(size)
            out = unet(torch.from_numpy(x["latents"]).to(tdtype), torch.from_numpy(x["timesteps"]),
                       torch.from_numpy(x["context"]).to(tdtype)).sample
        else:
            out = vae.decode(torch.from_numpy(vae_input(size)).to(tdtype)).sample
        return out.float().numpy()

    return run


def openvino_ir(folder: Path, kind: str, size: int) -> Path:
    """Converts (once, in a child process: conversion peaks at several GB) and returns the cached IR."""
    path = folder / "openvino" / f"{kind}-{size}.xml"
    if not path.exists():
        print(f"converting the {kind} at {size}x{size} to OpenVINO IR (minutes, once) ...", flush=True)
        subprocess.run([sys.executable, __file__, "--dir", str(folder), "--convert", kind, str(size)], check=True)
    return path


def convert(folder: Path, kind: str, size: int) -> None:
    import openvino as ov
    import torch

    unet, vae = diffusers_models(folder, torch.float32)
    if kind == "unet":
        x = unet_inputs(size)
        example = (torch.from_numpy(x["latents"]), torch.from_numpy(x["timesteps"]).long(),
                   torch.from_numpy(x["context"]))
        model = unet
    else:

        class Decoder(torch.nn.Module):  # the VAE as a submodule: its weights become IR constants, not inputs
            def __init__(self):
                super().__init__()
                self.vae = vae

            def forward(self, z):
                return self.vae.decode(z).sample

        example, model = (torch.from_numpy(vae_input(size)),), Decoder().requires_grad_(False)
    with torch.no_grad():
        ir = ov.convert_model(model, example_input=example)
    path = folder / "openvino" / f"{kind}-{size}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.xml")
    ov.save_model(ir, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
    os.replace(tmp, path)


def openvino_worker(folder: Path, dtype: str, options: dict, threads: int, shapes):
    import openvino as ov

    core = ov.Core()
    # CACHE_DIR: compiling the bf16 models takes minutes and >10 GB; later workers load the compiled blobs.
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": dtype, "PERFORMANCE_HINT": "LATENCY",
              "CACHE_DIR": str(folder / "openvino" / f"cache-{dtype}"), **options}
    compiled = {(k, s): core.compile_model(str(openvino_ir(folder, k, s)), "CPU", config) for k, s in shapes}

    def run(kind, size):
        if kind == "unet":
            x = unet_inputs(size)
            feed = [x["latents"], x["timesteps"].astype(np.int64), x["context"]]
        else:
            feed = [vae_input(size)]
        return np.asarray(compiled[(kind, size)](feed)[0], dtype=np.float32)

    return run


def worker(folder: Path, spec: str, threads: int, shapes) -> None:
    """Loads one runtime, then answers `KIND SIZE` lines on stdin with `seconds` lines; `quit` -> peak RSS."""
    name, dtype, options = parse_runtime(spec)
    t0 = time.perf_counter()
    if name == "sdcpp":
        run = sdcpp_worker(folder, dtype, options, threads)
    elif name == "diffusers":
        run = diffusers_worker(folder, dtype, options, threads)
    else:
        run = openvino_worker(folder, dtype, options, threads, shapes)
    print(f"ready {time.perf_counter() - t0:.1f}", flush=True)
    out_dir = folder / "outputs"
    out_dir.mkdir(exist_ok=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        kind, size = line.split()
        t0 = time.perf_counter()
        out = run(kind, int(size))
        seconds = time.perf_counter() - t0
        np.save(out_dir / f"{output_key(spec)}-{kind}{size}.npy", out)
        print(f"{seconds:.4f}", flush=True)
    print(f"rss {peak_rss_gib():.2f}", flush=True)


# ---- driver --------------------------------------------------------------------------------------------------


class WorkerFailed(RuntimeError):
    pass


class Worker:
    def __init__(self, folder: Path, spec: str, threads: int, shapes):
        cmd = [sys.executable, __file__, "--dir", str(folder), "--threads", str(threads), "--worker", spec,
               "--shapes", json.dumps(shapes)]
        env = dict(os.environ)
        core = parse_runtime(spec)[2].get("core")
        if core:
            env["SDCPP_CORE_PATH"] = core
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise WorkerFailed(f"{spec}: worker failed to start (exit {self.proc.wait()})")
        self.load_s = float(line.split()[1])

    def time(self, kind: str, size: int) -> float:
        self.proc.stdin.write(f"{kind} {size}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerFailed(f"worker died on {kind} {size} (exit {self.proc.wait()})")
        return float(line)

    def close(self) -> float:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        rss = float(self.proc.stdout.readline().split()[1])
        self.proc.wait()
        return rss


def output_key(spec: str) -> str:
    """A file name for a runtime's outputs (a core=PATH option holds slashes)."""
    return re.sub(r"[^\w.=-]", "_", spec)


def short_name(spec: str) -> str:
    """The table's name of a runtime: a core=PATH option shows as the folder holding that build."""
    head, _, opts = spec.partition(":")
    kind, _, opts = opts.partition(":")
    shown = [f"core={Path(o[5:]).parent.name}" if o.startswith("core=") else o for o in opts.split(",") if o]
    return ":".join([head, kind, ",".join(shown)] if shown else [head, kind])


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[32, 64], help="UNet latent sizes (batch 2)")
    ap.add_argument("--vae", type=int, nargs="*", default=[64], help="VAE decode latent sizes (64: 512x512 image)")
    ap.add_argument("--runtimes", nargs="+", default=DEFAULT_RUNTIMES)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--respawn", action="store_true", help="one worker at a time, started afresh each round")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "sdcpp-compare")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--shapes", help=argparse.SUPPRESS)
    ap.add_argument("--convert", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.convert:
        return convert(a.dir, a.convert[0], int(a.convert[1]))
    if a.worker:
        return worker(a.dir, a.worker, a.threads, [tuple(s) for s in json.loads(a.shapes)])

    for spec in a.runtimes:
        parse_runtime(spec)
    if "diffusers:f32" not in a.runtimes:
        a.runtimes.insert(0, "diffusers:f32")  # the reference every rel-L2 is measured against
    build_unet(a.dir)
    build_vae(a.dir)
    shapes = [("unet", s) for s in a.sizes] + [("vae", s) for s in a.vae]
    if any(r.startswith("openvino") for r in a.runtimes):
        for kind, size in shapes:  # convert before anything is timed
            openvino_ir(a.dir, kind, size)
    times = {(r, s): [] for r in a.runtimes for s in shapes}
    load, rss = {}, {r: 0.0 for r in a.runtimes}

    def one_round(w, r):
        for s in shapes:
            times[(r, s)].append(w.time(*s))

    if a.respawn:
        for i in range(a.rounds):
            for r in a.runtimes:
                try:  # a runtime that crashes loses its round, not the whole table
                    w = Worker(a.dir, r, a.threads, shapes)
                    load.setdefault(r, w.load_s)
                    for s in shapes:  # warm-up: first-call allocations and kernel selection are not timed
                        w.time(*s)
                    one_round(w, r)
                    rss[r] = max(rss[r], w.close())
                except WorkerFailed as e:
                    print(f"{r}: {e}", flush=True)
            print(f"round {i + 1}/{a.rounds} done", flush=True)
    else:
        workers = {}
        for r in a.runtimes:
            workers[r] = Worker(a.dir, r, a.threads, shapes)
            load[r] = workers[r].load_s
            print(f"{r}: loaded in {load[r]:.1f} s", flush=True)
            for s in shapes:
                workers[r].time(*s)  # warm-up
        for i in range(a.rounds):
            for r in a.runtimes:
                one_round(workers[r], r)
            print(f"round {i + 1}/{a.rounds} done", flush=True)
        for r, w in workers.items():
            rss[r] = w.close()

    out = a.dir / "outputs"
    ref = {s: np.load(out / f"diffusers_f32-{s[0]}{s[1]}.npy") for s in shapes}
    cols = [f"UNet {s}x{s}" for s in a.sizes] + [f"VAE {8 * s}²" for s in a.vae]
    print(f"\nmedian seconds of {a.rounds} rounds (best in brackets), {a.threads} threads; UNet batch {BATCH}, "
          f"t={TIMESTEP:.0f}; rel-L2 vs diffusers f32")
    print(f"{'runtime':<26}" + "".join(f"{c:>18}" for c in cols) + "".join(f"{'err ' + c:>18}" for c in cols)
          + f"{'load s':>8}{'peak GiB':>9}")
    for r in a.runtimes:
        row = f"{short_name(r):<26}"
        for s in shapes:
            t = times[(r, s)]
            row += f"{statistics.median(t):>10.3f} ({min(t):.3f})" if t else f"{'failed':>18}"
        for s in shapes:
            path = out / f"{output_key(r)}-{s[0]}{s[1]}.npy"
            row += f"{rel_l2(np.load(path), ref[s]):>18.1e}" if path.exists() else f"{'-':>18}"
        print(row + f"{load.get(r, float('nan')):>8.1f}{rss[r]:>9.2f}")


if __name__ == "__main__":
    main()
