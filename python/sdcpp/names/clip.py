"""Text encoders. transformers' CLIP layout is canonical; OpenCLIP's (SD2's ViT-H, SDXL's bigG) is
renamed, its fused attention in_proj split into q/k/v rows, and its text_projection transposed."""

from __future__ import annotations

import re

from .tables import OPENCLIP_FIXED, OPENCLIP_LAYER_LEAVES, OPENCLIP_QKV
from .target import Ignore, Target

_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
_IN_PROJ = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
_HF = re.compile(r"^(text_model\.|text_projection\.weight$)")
# transformers 5 saves CLIPTextModel without its `text_model.` level (CLIPTextModelWithProjection keeps it), and
# very old transformers did too: those names get the level back.
_HF_UNNESTED = re.compile(r"^(embeddings|encoder|final_layer_norm)\.")


def translate_hf(names) -> dict:
    out = {}
    for n in names:
        if _HF.match(n):
            out[n] = Target(n)
        elif _HF_UNNESTED.match(n):
            out[n] = Target(f"text_model.{n}")
        else:
            out[n] = None
    return out


def translate_openclip(names, *, has_projection: bool, sd2: bool) -> dict:
    """`has_projection`: the encoder's pooled projection is used (SDXL's bigG); SD2 has none.
    `sd2`: drop resblocks.23 as diffusers does: SD2 conditions on the penultimate layer."""
    out = {}
    for n in names:
        if n in OPENCLIP_FIXED:
            out[n] = [Target(OPENCLIP_FIXED[n])]
        elif n == "text_projection":
            out[n] = [Target("text_projection.weight", transpose=True)] if has_projection else Ignore(
                "SD2 text projection (unused; diffusers' CLIPTextModel has none)")
        elif sd2 and n.startswith("transformer.resblocks.23."):
            out[n] = Ignore("SD2 layer 23 (SD2 conditions on the penultimate layer; diffusers drops it too)")
        elif m := _IN_PROJ.match(n):
            layer, param = m.groups()
            out[n] = [Target(f"text_model.encoder.layers.{layer}.self_attn.{qkv}.{param}", split=(i, 3))
                      for i, qkv in enumerate(OPENCLIP_QKV)]
        elif (m := _LAYER.match(n)) and m.group(2) in OPENCLIP_LAYER_LEAVES:
            layer, leaf, param = m.groups()
            out[n] = [Target(f"text_model.encoder.layers.{layer}.{OPENCLIP_LAYER_LEAVES[leaf]}.{param}")]
        else:
            out[n] = None
    return out
