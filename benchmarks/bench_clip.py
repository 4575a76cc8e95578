"""Text-encoder speed per product path: stored-type products against f32 products, on CLIP-L and OpenCLIP-bigG.

    python benchmarks/bench_clip.py [--types f16 q8_0] [--batches 1 2 4] [--cols 0 1] [--rounds 3] [--threads 2]
                                    [--layers-g 32]

Builds random-weight text encoders with the released shapes (CLIP-L: 768 wide, 12 layers, quick_gelu;
OpenCLIP-bigG: 1280 wide, 32 layers, gelu, projection), saves them once as an f16 diffusers folder (reused from
--dir), loads them at each --types and times one encode of --batches rows of 77 tokens for each
f32_matmul_min_cols in --cols (0: every product on the stored type; 1: every weight converted to f32 first, then
f32 sgemm, OpenBLAS when loaded). A product's columns are batch x 77, so the two columns of the table tell at which
batch the f32 path starts to pay: the threshold the CPU default (256 columns) should be compared with. Rounds
interleave the settings so a noisy neighbour hurts them alike; the table shows the median round.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ENCODERS = {
    "text_encoder": ("CLIP-L", dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                    num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768)),
    "text_encoder_2": ("bigG", dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                    num_attention_heads=20, hidden_act="gelu", projection_dim=1280)),
}


def build_folder(folder: Path, layers_g: int) -> None:
    import torch
    import transformers

    for component, (_, cfg) in ENCODERS.items():
        out = folder / component
        if (out / "config.json").exists():
            continue
        print(f"building a random {component} in {out} ...", flush=True)
        torch.manual_seed(0)
        cfg = dict(cfg, vocab_size=49408, max_position_embeddings=77)
        if component == "text_encoder_2":
            cfg["num_hidden_layers"] = layers_g
        config = transformers.CLIPTextConfig(**cfg)
        cls = transformers.CLIPTextModelWithProjection if component == "text_encoder_2" \
            else transformers.CLIPTextModel
        cls(config).to(torch.float16).save_pretrained(out, safe_serialization=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", nargs="+", default=["f16", "q8_0"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--cols", type=int, nargs="+", default=[0, 1],
                    help="f32_matmul_min_cols values (0: stored types only, 1: f32 always, -1: the CPU default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers-g", type=int, default=32, help="bigG layers (fewer: a faster build, same per layer)")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "sdcpp-bench-clip")
    args = ap.parse_args()

    import sdcpp
    from sdcpp._native import core
    from sdcpp.models.clip import TextEncoder

    build_folder(args.dir, args.layers_g)
    runs = {}  # (encoder, type, cols) -> TextEncoder
    for t in args.types:
        weights = sdcpp.load_weights(args.dir, te_type=t, n_threads=args.threads, progress=False)
        for component, (name, _) in ENCODERS.items():
            for cols in args.cols:
                runs[(name, t, cols)] = TextEncoder(weights, component, f32_matmul_min_cols=cols,
                                                    n_threads=args.threads)
    ids = {b: np.random.default_rng(b).integers(0, 49407, (b, 77)).astype(np.int32) for b in args.batches}
    for te in runs.values():  # warm-up: allocations, first touch
        for b in args.batches:
            te.encode(ids[b])
    times = defaultdict(list)
    for r in range(args.rounds):
        for b in args.batches:
            for key, te in runs.items():
                t0 = time.perf_counter()
                te.encode(ids[b])
                times[key + (b,)].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    print(f"\n{args.threads} threads; OpenBLAS: {core().blas_library() or 'none'}; median seconds per encode of "
          f"batch x 77 tokens (columns per product = batch x 77)")
    head = "".join(f"{f'cols={c}':>10}" for c in args.cols)
    print(f"{'encoder':<8}{'type':<6}{'batch':>6}{'columns':>8}{head}{'f32 speed-up':>14}")
    for name in (n for n, _ in ENCODERS.values()):
        for t in args.types:
            for b in args.batches:
                med = [statistics.median(times[(name, t, c, b)]) for c in args.cols]
                ratio = f"{med[0] / med[-1]:>13.2f}x" if len(med) > 1 else ""
                print(f"{name:<8}{t:<6}{b:>6}{b * 77:>8}" + "".join(f"{m:>10.3f}" for m in med) + ratio)


if __name__ == "__main__":
    main()
