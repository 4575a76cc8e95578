"""One SD1.5-sized UNet evaluation: sdcpp (f16, q8_0 weights) next to diffusers f32, on this machine.

    python benchmarks/bench_unet.py [--sizes 32 64] [--types f16 q8_0] [--batch 2] [--rounds 3] [--threads 2]
                                    [--flash-attn 1] [--f32-min-cols -1] [--profile]

Builds a random-weight UNet2DConditionModel with the SD1.5 architecture (320/640/1280/1280 channels,
cross-attention 768, 8 heads), saves it once as an f16 diffusers folder (~1.7 GB, reused from --dir), loads it
with sdcpp at each --types and times one evaluation per latent size. Both run --batch rows (default 2: what
classifier-free guidance evaluates per step); diffusers runs f32. Rounds interleave the backends so a noisy
neighbour hurts them alike; the table shows the best and median round and GFLOP/s from the best, counting
172 GFLOP (32x32) and 677 GFLOP (64x64) per image. --profile adds a per-op split of one run per sdcpp row.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

GFLOP = {32: 172.0, 64: 677.0}  # per batch-1 evaluation of the SD1.5 UNet
SD15 = dict(cross_attention_dim=768, attention_head_dim=8, sample_size=64)


def build_folder(folder: Path) -> None:
    import safetensors.torch
    import torch
    from diffusers import UNet2DConditionModel

    unet_dir = folder / "unet"
    if (unet_dir / "diffusion_pytorch_model.safetensors").exists():
        return
    print(f"building a random SD1.5 UNet in {folder} ...", flush=True)
    torch.manual_seed(0)
    model = UNet2DConditionModel(**SD15)
    unet_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    tmp = unet_dir / "diffusion_pytorch_model.safetensors.partial"
    safetensors.torch.save_file(state, str(tmp))
    (unet_dir / "config.json").write_text(json.dumps(dict(model.config)))
    os.replace(tmp, unet_dir / "diffusion_pytorch_model.safetensors")


def inputs(size: int, batch: int) -> dict:
    """Batch item 0 is the same for every batch size (one generator per input)."""
    return dict(
        latents=np.random.default_rng(0).standard_normal((batch, 4, size, size)).astype(np.float32),
        timesteps=np.full(batch, 500.0, np.float32),
        context=np.random.default_rng(1).standard_normal((batch, 77, 768)).astype(np.float32),
    )


def category(op: str, name: str) -> str:
    if name.startswith(("conv.", "attn.", "linear.", "norm.", "layout.", "ff.")):
        return name
    return f"other ({op})"


def print_profile(label: str, profile) -> None:
    by = defaultdict(lambda: [0, 0.0, 0.0])
    for op, name, seconds, flops in profile:
        c = by[category(op, name)]
        c[0] += 1
        c[1] += seconds
        c[2] += flops
    total = sum(v[1] for v in by.values())
    print(f"\nper-op split, {label} (node-by-node run: {total:.2f} s, {len(profile)} nodes)")
    print(f"{'part':<28}{'nodes':>7}{'seconds':>10}{'share':>8}{'GFLOP':>9}{'GFLOP/s':>9}")
    for key, (n, s, f) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        if s / total >= 0.002:
            rate = f"{f / s / 1e9:>9.0f}" if f else f"{'':>9}"
            print(f"{key:<28}{n:>7}{s:>10.3f}{100 * s / total:>7.1f}%{f / 1e9:>9.1f}{rate}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64], choices=sorted(GFLOP))
    ap.add_argument("--types", nargs="+", default=["f16", "q8_0"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "sdcpp-bench-sd15-unet")
    ap.add_argument("--no-torch", action="store_true", help="skip the diffusers f32 baseline")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--flash-attn", type=int, nargs="+", default=[1], choices=[0, 1],
                    help="sdcpp: ggml_flash_attn_ext attention (1, the CPU default) or mul_mat + soft_max (0)")
    ap.add_argument("--f32-min-cols", type=int, nargs="+", default=[-1],
                    help="sdcpp f32_matmul_min_cols values (-1: default, 0: stored types only)")
    ap.add_argument("--blas", type=int, nargs="+", default=[1], choices=[0, 1],
                    help="wide f32 products on OpenBLAS (1, when scipy-openblas32 is installed) or ggml (0)")
    ap.add_argument("--precision", nargs="+", default=["f32"], choices=["f32", "bf16", "f16"],
                    help="sdcpp product precision (bf16: AMX where the CPU has it)")
    ap.add_argument("--profile", action="store_true", help="per-op split of one sdcpp run per type")
    args = ap.parse_args()

    import sdcpp
    from sdcpp._native import core
    from sdcpp.models.unet import UNet

    build_folder(args.dir)
    runners = {}  # label -> (callable(size), batch)
    for t in args.types:
        t0 = time.perf_counter()
        weights = sdcpp.load_weights(args.dir, unet_type=t, n_threads=args.threads, progress=False)
        print(f"sdcpp {t}: loaded {weights.nbytes / 2**30:.2f} GiB in {time.perf_counter() - t0:.1f} s", flush=True)
        for flash, cols, blas, prec in itertools.product(args.flash_attn, args.f32_min_cols, args.blas,
                                                         args.precision):
            unet = UNet(weights, n_threads=args.threads, flash_attn=bool(flash), f32_matmul_min_cols=cols,
                        precision=prec)
            label = (f"sdcpp {t}" + ("" if flash else " noflash") + ("" if cols == -1 else f" cols{cols}")
                     + ("" if blas else " noblas") + ("" if prec == "f32" else f" {prec}"))

            def run(size, u=unet, blas=blas):
                core().set_blas_enabled(bool(blas))  # the graph is rebuilt per call, so this takes effect now
                return u.predict(**inputs(size, args.batch))

            runners[label] = (run, args.batch, unet)
    if not args.no_torch:
        import torch
        from diffusers import UNet2DConditionModel

        torch.set_num_threads(args.threads)
        ref = UNet2DConditionModel.from_pretrained(args.dir, subfolder="unet", torch_dtype=torch.float32).eval()

        def run_torch(size):
            t = {k: torch.from_numpy(v) for k, v in inputs(size, args.batch).items()}
            with torch.no_grad():
                return ref(t["latents"], t["timesteps"], t["context"]).sample

        runners["diffusers f32"] = (run_torch, args.batch, None)

    outputs = {}
    for label, (fn, _, _) in runners.items():  # warm-up: allocations, first-touch of buffers, torch init
        for size in args.sizes:
            outputs[(label, size)] = np.asarray(fn(size))[:1]
    if "diffusers f32" in runners:  # the same random model through both: a full-size parity check
        for size in args.sizes:
            expected = outputs[("diffusers f32", size)]
            for label in runners:
                if label.startswith("sdcpp"):
                    out = outputs[(label, size)]
                    err = np.linalg.norm(out - expected) / np.linalg.norm(expected)
                    print(f"{label} {size}x{size}: relative L2 error vs diffusers f32 (f16-rounded weights) {err:.2e}")
    times = defaultdict(list)
    for r in range(args.rounds):
        for size in args.sizes:
            for label, (fn, _, _) in runners.items():
                t0 = time.perf_counter()
                fn(size)
                times[(label, size)].append(time.perf_counter() - t0)
                time.sleep(0.2)  # let torch's OpenMP workers stop spinning before ggml's threads start
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    info = core().system_info()
    feats = ",".join(k for k, v in info["cpu_features"].items() if v == "1")
    blas = core().blas_library() or "none (install scipy-openblas32)"
    print(f"\nggml {core().ggml_version()} ({feats}); {args.threads} threads; OpenBLAS: {blas}")
    print(f"{'backend':<26}{'latent':>8}{'batch':>7}{'best s':>9}{'median s':>10}{'GFLOP/s':>9}{'s/image':>9}")
    for size in args.sizes:
        for label, (_, batch, _) in runners.items():
            ts = times[(label, size)]
            best = min(ts)
            print(f"{label:<26}{f'{size}x{size}':>8}{batch:>7}{best:>9.2f}{statistics.median(ts):>10.2f}"
                  f"{batch * GFLOP[size] / best:>9.0f}{best / batch:>9.2f}")

    if args.profile:
        for label, (fn, _, unet) in runners.items():
            if unet is None:
                continue
            size = min(args.sizes)
            unet.set_profiling(True)
            fn(size)
            unet.set_profiling(False)
            print_profile(f"{label} {size}x{size}", unet.last_profile())


if __name__ == "__main__":
    main()
