"""SD-sized VAE decode/encode: sdcpp next to diffusers f32, with the compute buffer each im2col budget needs.

    python benchmarks/bench_vae.py [--latent 32] [--types f32 f16] [--budgets 256 0] [--threads 2]

Builds a random-weight AutoencoderKL with the SD1.5/SDXL VAE architecture (128/256/512/512 channels, two
resnets per level), saves it once as an f32 diffusers folder (~330 MB, reused from --dir), and decodes one
latent of --latent x --latent (an 8x larger image) and encodes the image back. Prints seconds, the compute
buffer, and the relative L2 error against diffusers on the same weights.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

SD_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)


def build_folder(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKL

    if (folder / "vae" / "diffusion_pytorch_model.safetensors").exists():
        return
    print(f"building a random SD VAE in {folder} ...", flush=True)
    torch.manual_seed(0)
    AutoencoderKL(**SD_VAE).save_pretrained(folder / "vae")


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--types", nargs="+", default=["f32", "f16"])
    ap.add_argument("--budgets", type=float, nargs="+", default=[32, 0], help="max_im2col_mib values (0: off)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flash-attn", type=int, nargs="+", default=[0, 1], choices=[0, 1])
    ap.add_argument("--f32-min-cols", type=int, nargs="+", default=[-1, 0],
                    help="f32_matmul_min_cols values (-1: default, 0: stored type)")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "sdcpp-bench-sd-vae")
    args = ap.parse_args()

    import torch
    from diffusers import AutoencoderKL

    import sdcpp
    from sdcpp.models.vae import VAE

    build_folder(args.dir)
    torch.set_num_threads(args.threads)
    ref = AutoencoderKL.from_pretrained(args.dir, subfolder="vae").eval()
    z = np.random.default_rng(0).standard_normal((1, 4, args.latent, args.latent)).astype(np.float32)
    t0 = time.perf_counter()
    with torch.no_grad():
        image = ref.decode(torch.from_numpy(z)).sample
        t_dec = time.perf_counter() - t0
        t0 = time.perf_counter()
        mean = ref.encode(image).latent_dist.mean
        t_enc = time.perf_counter() - t0
    image, mean = image.numpy(), mean.numpy()
    size = f"{args.latent}x{args.latent} latent"
    print(f"\n{'backend':<22}{'flash':>6}{'f32 cols':>9}{'budget MiB':>11}{'decode s':>10}{'encode s':>10}"
          f"{'buffer MiB':>12}"
          f"{'dec err':>10}{'enc err':>10}   ({size}, {args.threads} threads)")
    print(f"{'diffusers f32':<22}{'':>26}{t_dec:>10.2f}{t_enc:>10.2f}")
    for t in args.types:
        weights = sdcpp.load_weights(args.dir, vae_type=t, progress=False)
        for budget, flash, cols in itertools.product(args.budgets, args.flash_attn, args.f32_min_cols):
            vae = VAE(weights, n_threads=args.threads, max_im2col_mib=budget, flash_attn=bool(flash),
                      f32_matmul_min_cols=cols)
            t0 = time.perf_counter()
            out = vae.decode(z)
            td = time.perf_counter() - t0
            buf_dec = vae.compute_buffer_size()
            t0 = time.perf_counter()
            enc = vae.encode(image)
            te = time.perf_counter() - t0
            buf = max(buf_dec, vae.compute_buffer_size())
            print(f"{'sdcpp ' + t:<22}{flash:>6}{cols:>9}{budget:>11.0f}{td:>10.2f}{te:>10.2f}{buf / 2**20:>12.0f}"
                  f"{rel_l2(out, image):>10.1e}{rel_l2(enc, mean):>10.1e}")


if __name__ == "__main__":
    main()
