"""Runtime LoRA overhead per UNet step: a random SD1.5-shaped UNet with and without a rank-32 runtime LoRA.

    python benchmarks/bench_lora.py [--types f16 q8_0 q4_0] [--rank 32] [--size 256] [--threads 1] [--rounds 3]
                                    [--conv]

The UNet is bench_unet.py's random SD1.5 UNet (an f16 diffusers folder, built once into --dir, ~1.7 GB). The LoRA is
written here in kohya's format with random factors on every layer kohya's default LoRA trains (attention q/k/v/out,
proj_in/proj_out, feed-forward: 192 layers); --conv adds LoCon on the resnets' 3x3 convs. One step is one UNet
evaluation of batch 2 (classifier-free guidance) at --size pixels (latents size / 8). Rounds interleave the runs
with and without the LoRA so a noisy neighbour hurts them alike; the table shows the best and median round.
Target (issue 13): under 10% at rank 32, 256x256.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

KOHYA_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")


def write_lora(weights, path: Path, rank: int, conv: bool) -> int:
    """A kohya-format random LoRA on the UNet's transformer layers (and 3x3 resnet convs with `conv`)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    state = {}
    for e in weights.plan:
        name = e.name
        if not name.startswith("unet.") or not name.endswith(".weight"):
            continue
        module = name[len("unet."):-len(".weight")]
        is_conv = conv and ".resnets." in module and module.endswith(("conv1", "conv2"))
        if not (module.endswith(KOHYA_LAYERS) or is_conv):
            continue
        out, fan = e.shape[0], e.shape[1:]
        key = "lora_unet_" + module.replace(".", "_")
        down = rng.standard_normal((rank, *fan)).astype(np.float16) * np.float16(0.01)
        up_shape = (out, rank, 1, 1) if len(fan) == 3 else (out, rank)  # conv kernels (1x1 or 3x3): a 1x1 up
        state[f"{key}.lora_down.weight"] = down
        state[f"{key}.lora_up.weight"] = rng.standard_normal(up_shape).astype(np.float16) * np.float16(0.01)
        state[f"{key}.alpha"] = np.array(rank, np.float16)
    save_file(state, str(path))
    return len(state) // 3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_0"])
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--size", type=int, default=256, help="image size in pixels (latents: size / 8)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--conv", action="store_true", help="also LoCon on the resnets' 3x3 convs")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "sdcpp-bench-sd15-unet")
    args = ap.parse_args()

    from bench_unet import build_folder, inputs

    import sdcpp
    from sdcpp.lora.files import read_lora
    from sdcpp.lora.runtime import RuntimeLora
    from sdcpp.models.unet import UNet

    build_folder(args.dir)
    lora_path = args.dir.parent / f"sdcpp-bench-lora-r{args.rank}{'-conv' if args.conv else ''}.safetensors"
    x = inputs(args.size // 8, args.batch)
    rows = []
    for t in args.types:
        weights = sdcpp.load_weights(args.dir, unet_type=t, n_threads=args.threads, progress=False)
        if not lora_path.exists():
            n = write_lora(weights, lora_path, args.rank, args.conv)
            print(f"wrote {lora_path}: {n} layers at rank {args.rank}", flush=True)
        f = read_lora(lora_path, {e.name: e.shape for e in weights.plan}, weights.spec.family)
        lora = RuntimeLora(weights, f, f.modules, 1.0, args.threads)
        unet = UNet(weights, n_threads=args.threads)
        times = {"base": [], "lora": []}
        unet.predict(**x)  # warm-up: compute buffer allocation
        for _ in range(args.rounds):
            for label in ("base", "lora"):
                unet._graph.set_lora(lora.graph_terms(0.8) if label == "lora" else [])
                t0 = time.perf_counter()
                unet.predict(**x)
                times[label].append(time.perf_counter() - t0)
        b, lo = min(times["base"]), min(times["lora"])
        rows.append((t, len(f.modules), b, statistics.median(times["base"]), lo, statistics.median(times["lora"]),
                     lora.store.buffer_size()))
        print(f"{t}: base {b:.3f} s, LoRA {lo:.3f} s ({100 * (lo / b - 1):+.1f}%)", flush=True)
        del unet, lora, weights

    print(f"\nruntime LoRA overhead per UNet step: rank {args.rank}, {args.size}x{args.size}, batch {args.batch}, "
          f"{args.threads} thread(s), best (median) of {args.rounds}")
    print(f"{'type':<7}{'layers':>7}{'base s':>16}{'LoRA s':>16}{'overhead':>10}{'LoRA MiB':>10}")
    for t, n, b, bm, lo, lm, nbytes in rows:
        print(f"{t:<7}{n:>7}{b:>8.3f} ({bm:.3f}){lo:>8.3f} ({lm:.3f}){100 * (lo / b - 1):>9.1f}%"
              f"{nbytes / 2**20:>10.1f}")


if __name__ == "__main__":
    main()
