"""What makes a tiled VAE decode equal the untiled one (issue 15 item 2: max-abs <= 2e-2), measured in torch on a
diffusers AutoencoderKL with its GroupNorms patched; nothing of sdcpp runs here.

    python benchmarks/vae_tiling_stats.py MODEL_FOLDER [--core 12] [--halos 0 2 4 6 8 12] [--passes 6]

MODEL_FOLDER: a diffusers folder with vae/ (e.g. the tiny sd1 fixture: .pytest_cache/d/sdcpp-fixtures/*/sd1/diffusers).
Cases, each against the untiled decode of one 52 x 44 latent:
  diffusers' enable_tiling() rules (16-latent tiles, blended over 1/4): what sdcpp's tiling does now;
  the same with every GroupNorm given the whole image's statistics (exact, recorded from the untiled run);
  + conv_in and the mid block (its attention is global) run once on the whole latent, the up blocks tiled;
  + the up blocks on `--core`-latent tiles with a halo of context, cropped to the core instead of blended;
  + statistics not recorded but taken from the previous tiled pass (over the cores), pass after pass.
Measured on the tiny SD1 fixture VAE (one upsampler; 2 x 2 resnets in the up blocks), 12-latent cores:
  diffusers' rules 1.0 (mean 0.12); exact stats 0.92; + whole mid block 0.60 (blended, no halo);
  halo crop 0 / 2 / 4 / 6 / 8 / 12 latents: 2.5 / 0.61 / 0.12 / 7.5e-3 / 2.5e-4 / 2.2e-6;
  halo 8 with stats from the previous pass: 0.32, 0.43, 0.42, 0.32, 0.24, 0.17 after passes 1..6.
So shared statistics alone do not close the gap: it takes the whole-latent mid block, a halo of the up blocks'
receptive field, and each GroupNorm's exact statistics, i.e. all tiles run up to each GroupNorm before any
continues past it (the real SD VAE: 4 levels x 3 resnets, 25 GroupNorms, a deeper receptive field).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

_ORIG = torch.nn.GroupNorm.forward
STATE = dict(mode="plain", stats={}, acc={}, core=None)


def _group_norm(self, x):
    """plain: torch's; record: also keep this call's statistics; use: normalise with STATE["stats"] (and, with
    STATE["core"], accumulate the statistics of the tile's core for the next pass)."""
    n, groups = x.shape[0], self.num_groups
    xg = x.reshape(n, groups, -1)
    if STATE["mode"] == "record":
        STATE["stats"][id(self)] = (xg.mean(-1, keepdim=True), xg.var(-1, unbiased=False, keepdim=True))
    if STATE["mode"] != "use" or id(self) not in STATE["stats"]:
        return _ORIG(self, x)
    if STATE["core"] is not None and x.ndim == 4:
        top, left, ch, cw, in_w = STATE["core"]
        s = x.shape[-1] / in_w
        core = x[..., int(top * s):int((top + ch) * s), int(left * s):int((left + cw) * s)].reshape(n, groups, -1)
        a = STATE["acc"].setdefault(id(self), [0, 0, 0])
        a[0] = a[0] + core.double().sum(-1, keepdim=True)
        a[1] = a[1] + (core.double() ** 2).sum(-1, keepdim=True)
        a[2] += core.shape[-1]
    mean, var = STATE["stats"][id(self)]
    y = ((xg - mean) / torch.sqrt(var + self.eps)).reshape_as(x)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return y * self.weight.view(shape) + self.bias.view(shape)


def main():
    import diffusers

    from sdcpp.pipeline.tiling import _tiled

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--core", type=int, default=12)
    ap.add_argument("--halos", type=int, nargs="+", default=[0, 2, 4, 6, 8, 12])
    ap.add_argument("--passes", type=int, default=6)
    a = ap.parse_args()
    torch.nn.GroupNorm.forward = _group_norm
    vae = diffusers.AutoencoderKL.from_pretrained(a.model, subfolder="vae").eval()
    dec, f = vae.decoder, 2 ** (len(vae.config.block_out_channels) - 1)

    def head(z):
        return dec.mid_block(dec.conv_in(z), None)

    def tail(x):
        for up in dec.up_blocks:
            x = up(x, None)
        return dec.conv_out(dec.conv_act(dec.conv_norm_out(x)))

    def blended(run, x):
        return torch.from_numpy(_tiled(x.numpy(), 16, 16 * f, lambda t: run(torch.from_numpy(t)).numpy()))

    def cropped(x, core, halo):
        H, W = x.shape[-2:]
        out = torch.zeros(1, 3, H * f, W * f)
        for i in range(0, H, core):
            for j in range(0, W, core):
                t0, l0, t1, l1 = max(i - halo, 0), max(j - halo, 0), min(i + core + halo, H), min(j + core + halo, W)
                ch, cw = min(core, H - i), min(core, W - j)
                STATE["core"] = (i - t0, j - l0, ch, cw, l1 - l0)
                y = tail(x[..., t0:t1, l0:l1])
                out[..., i * f:(i + ch) * f, j * f:(j + cw) * f] = \
                    y[..., (i - t0) * f:(i - t0 + ch) * f, (j - l0) * f:(j - l0 + cw) * f]
        STATE["core"] = None
        return out

    def report(what, got):
        d = (got - full).abs()
        print(f"{what:58s} max {d.max():.2e}  mean {d.mean():.2e}")

    z = torch.from_numpy(np.random.default_rng(3).standard_normal((1, 4, 52, 44)).astype(np.float32))
    with torch.no_grad():
        zq = vae.post_quant_conv(z) if vae.post_quant_conv is not None else z
        STATE["mode"] = "record"
        full = tail(head(zq))
        exact = dict(STATE["stats"])
        STATE["mode"] = "plain"
        report("diffusers' tiling rules", blended(lambda t: tail(head(t)), zq))
        STATE["mode"] = "use"
        report("exact GroupNorm statistics", blended(lambda t: tail(head(t)), zq))
        mid = head(zq)
        report("+ whole-latent mid block", blended(tail, mid))
        for halo in a.halos:
            report(f"+ {a.core}-latent cores, halo {halo}, cropped", cropped(mid, a.core, halo))
        tail_norms = {id(m) for m in [*dec.up_blocks.modules(), dec.conv_norm_out] if isinstance(m, torch.nn.GroupNorm)}
        halo = max(h for h in a.halos if h <= 8)
        STATE["mode"] = "record"
        tail(mid[..., :a.core + halo, :a.core + halo])  # first guess: one tile's own statistics
        STATE["stats"] = {**STATE["stats"], **{k: v for k, v in exact.items() if k not in tail_norms}}
        STATE["mode"] = "use"
        for p in range(a.passes):
            STATE["acc"] = {}
            report(f"halo {halo}, statistics of the previous pass, pass {p + 1}", cropped(mid, a.core, halo))
            for k, (s1, s2, n) in STATE["acc"].items():
                if k in tail_norms:
                    m = s1 / n
                    STATE["stats"][k] = (m.float(), (s2 / n - m * m).float())


if __name__ == "__main__":
    main()
