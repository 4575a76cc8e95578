"""UNet names: LDM/SGM `input_blocks/middle_block/output_blocks` -> diffusers `down/mid/up_blocks`.

The LDM numbering is flat; diffusers' is (block, layer). With L resnets per down block, every down
level takes L+1 input_blocks (the last one the downsampler) and every up level L+1 output_blocks."""

from __future__ import annotations

import re

from .tables import UNET_FIXED, UNET_MIDDLE, UNET_RESNET_LEAVES
from .target import Target

_INPUT = re.compile(r"^input_blocks\.(\d+)\.(\d+)\.(.+)$")
_OUTPUT = re.compile(r"^output_blocks\.(\d+)\.(\d+)\.(.+)$")
_MIDDLE = re.compile(r"^middle_block\.(\d+)\.(.+)$")
_OP = re.compile(r"^input_blocks\.(\d+)\.0\.op\.")
_LDM_HEADS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.")


def is_ldm(names) -> bool:
    return any(n.startswith(_LDM_HEADS) for n in names)


def layers_per_block(names) -> int:
    """L from the first downsampler's position (input_blocks.{L+1}.0.op); one level: the last index."""
    ops = [int(m.group(1)) for n in names if (m := _OP.match(n))]
    if ops:
        return min(ops) - 1
    inputs = [int(m.group(1)) for n in names if (m := _INPUT.match(n))]
    return max(inputs) if inputs else 1


def _resnet(prefix, rest):
    for leaf, new in UNET_RESNET_LEAVES.items():
        if rest.startswith(leaf + "."):
            return f"{prefix}.{new}{rest[len(leaf):]}"
    return None


def _one(name, L):
    module, _, param = name.rpartition(".")
    if module in UNET_FIXED:
        return UNET_FIXED[module] + "." + param
    if m := _INPUT.match(name):
        n, sub, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        if n == 0:
            return None
        block, layer = divmod(n - 1, L + 1)
        if layer == L:
            return f"down_blocks.{block}.downsamplers.0.conv.{rest[3:]}" if sub == 0 and rest.startswith(
                "op.") else None
        if sub == 0:
            return _resnet(f"down_blocks.{block}.resnets.{layer}", rest)
        return f"down_blocks.{block}.attentions.{layer}.{rest}" if sub == 1 else None
    if m := _MIDDLE.match(name):
        base = UNET_MIDDLE.get(m.group(1))
        if base is None:
            return None
        return f"{base}.{m.group(2)}" if "attentions" in base else _resnet(base, m.group(2))
    if m := _OUTPUT.match(name):
        n, sub, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        block, layer = divmod(n, L + 1)
        if sub == 0:
            return _resnet(f"up_blocks.{block}.resnets.{layer}", rest)
        if rest.startswith("conv."):  # the upsampler follows the resnet (sub 1) or the attention (sub 2)
            return f"up_blocks.{block}.upsamplers.0.conv.{rest[5:]}"
        return f"up_blocks.{block}.attentions.{layer}.{rest}" if sub == 1 else None
    return None


def translate(names) -> dict:
    """Raw names (prefix removed) -> Target, or None when the name is not a UNet tensor we know."""
    if not is_ldm(names):
        return {n: Target(n) for n in names}  # already diffusers layout
    L = layers_per_block(names)
    out = {}
    for n in names:
        new = _one(n, L)
        out[n] = Target(new) if new else None
    return out
