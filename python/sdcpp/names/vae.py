"""VAE names: LDM `encoder.down.N.block.M` / `decoder.up.N` -> diffusers `down_blocks` / `up_blocks`.
LDM numbers decoder levels from the lowest resolution up; diffusers from the latent side, so the
decoder index is reversed. Mid-block attention 1x1 convs become linear weights (squeeze). AutoencoderTiny's
`encoder.layers.N` / `decoder.layers.N` are kept as they are (their original numbering: names/taesd.py)."""

from __future__ import annotations

import re

from .tables import TAESD_DIFFUSERS, VAE_ATTN_LEAVES, VAE_FIXED, VAE_RESNET_LEAVES
from .target import Target

_DOWN = re.compile(r"^encoder\.down\.(\d+)\.(block\.(\d+)|downsample)\.(.+)$")
_UP = re.compile(r"^decoder\.up\.(\d+)\.(block\.(\d+)|upsample)\.(.+)$")
_ATTN = re.compile(r"^(encoder|decoder)\.mid(?:\.attn_1|_block\.attentions\.0)\.(.+)\.(weight|bias)$")
_DIFFUSERS_RESNET = re.compile(r"^(.+\.resnets\.\d+)\.(.+)$")


def _resnet_leaf(rest):
    leaf, _, param = rest.rpartition(".")
    new = VAE_RESNET_LEAVES.get(leaf)
    return f"{new}.{param}" if new else None


def _one(name, n_up):
    if TAESD_DIFFUSERS.match(name):  # AutoencoderTiny (TAESD): diffusers' names are canonical
        return Target(name)
    if m := _ATTN.match(name):
        leaf = VAE_ATTN_LEAVES.get(m.group(2))
        if leaf is None:
            return None
        return Target(f"{m.group(1)}.mid_block.attentions.0.{leaf}.{m.group(3)}", squeeze=True)
    for old, new in VAE_FIXED.items():
        if name.startswith(old + "."):
            rest = name[len(old) + 1:]
            if ".resnets." in new:
                leaf = _resnet_leaf(rest)
                return Target(f"{new}.{leaf}") if leaf else None
            return Target(f"{new}.{rest}") if rest in ("weight", "bias") else None
    module = name.rpartition(".")[0]
    if m := _DOWN.match(name):
        level, rest = m.group(1), m.group(4)
        if m.group(3) is None:
            return Target(f"encoder.down_blocks.{level}.downsamplers.0.{rest}") if rest.startswith("conv.") else None
        leaf = _resnet_leaf(rest)
        return Target(f"encoder.down_blocks.{level}.resnets.{m.group(3)}.{leaf}") if leaf else None
    if m := _UP.match(name):
        level, rest = n_up - 1 - int(m.group(1)), m.group(4)
        if m.group(3) is None:
            return Target(f"decoder.up_blocks.{level}.upsamplers.0.{rest}") if rest.startswith("conv.") else None
        leaf = _resnet_leaf(rest)
        return Target(f"decoder.up_blocks.{level}.resnets.{m.group(3)}.{leaf}") if leaf else None
    if m := _DIFFUSERS_RESNET.match(name):  # diffusers layout; old files call the shortcut nin_shortcut
        leaf = _resnet_leaf(m.group(2))
        return Target(f"{m.group(1)}.{leaf}") if leaf else None
    if module.rpartition(".")[2] in ("conv_in", "conv_out", "conv_norm_out", "conv", "quant_conv",
                                     "post_quant_conv"):
        return Target(name)
    return None


def translate(names) -> dict:
    ups = [int(m.group(1)) for n in names if (m := _UP.match(n))]
    n_up = max(ups) + 1 if ups else 0
    return {n: _one(n, n_up) for n in names}
