"""Canonical names -> the ORIGINAL single-file names (CompVis LDM for SD1/SD2, Stability SGM for SDXL, OpenCLIP
text towers): the reverse of the translators next to this file, for writers of files in that layout (the GGUF
stable-diffusion.cpp's `--mode convert` writes). The tables are the forward ones (tables.py), inverted here.

What the reverse does besides renaming: OpenCLIP's q/k/v projections are fused back into one `attn.in_proj_*`
(q, k, v rows in that order), the pooled `text_projection` is transposed back (OpenCLIP applies x @ P), and the
VAE mid-block attention's linear weights become 1x1 conv kernels [C, C, 1, 1] again."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UnsupportedModelError
from .tables import (
    OPENCLIP_FIXED,
    OPENCLIP_LAYER_LEAVES,
    OPENCLIP_QKV,
    UNET_FIXED,
    UNET_MIDDLE,
    UNET_RESNET_LEAVES,
    VAE_FIXED,
)

# Component -> prefix in the original single file. Text encoders depend on the family (the refiner holds bigG
# alone, as embedder 0) and on whether CLIP-L is there.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {  # (family, component, CLIP-L present) -> (prefix, layout)
    ("sd1", "text_encoder", True): ("cond_stage_model.transformer.", "hf_clip"),
    ("sd2", "text_encoder", True): ("cond_stage_model.model.", "openclip"),
    ("sdxl", "text_encoder", True): ("conditioner.embedders.0.transformer.", "hf_clip"),
    ("sdxl", "text_encoder_2", True): ("conditioner.embedders.1.model.", "openclip"),
    ("sdxl_refiner", "text_encoder_2", False): ("conditioner.embedders.0.model.", "openclip"),
}

_UNET_FIXED_BACK = {v: k for k, v in UNET_FIXED.items()}
_UNET_LEAVES_BACK = {v: k for k, v in UNET_RESNET_LEAVES.items()}
_UNET_MIDDLE_BACK = {v: k for k, v in UNET_MIDDLE.items()}
# LDM writes the VAE's diffusers-only names back in their original spellings (norm_out, mid.block_N).
_VAE_FIXED_BACK = {v: k for k, v in VAE_FIXED.items()}
_VAE_RESNET_BACK = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN_BACK = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPENCLIP_FIXED_BACK = {v: k for k, v in OPENCLIP_FIXED.items()}
_OPENCLIP_LEAVES_BACK = {v: k for k, v in OPENCLIP_LAYER_LEAVES.items()}

_DOWN = re.compile(r"^down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)$")
_UP = re.compile(r"^up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)$")
_MID = re.compile(r"^(mid_block\.(?:resnets|attentions)\.\d+)\.(.+)$")
_VAE_BLOCK = re.compile(r"^(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0|upsamplers\.0)"
                        r"\.(.+)$")
_VAE_MID_ATTN = re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)"
                           r"\.(weight|bias)$")
_CLIP_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


@dataclass(frozen=True)
class OriginalTensor:
    """One tensor of the original file, made of canonical tensors."""

    name: str
    parts: tuple[str, ...]  # canonical names, concatenated along dim 0 (three for OpenCLIP's fused in_proj)
    shape: tuple[int, ...]  # torch order, as the original file stores it
    transpose: bool = False  # the canonical (single) part is stored transposed

    @property
    def is_kernel(self) -> bool:
        """A conv kernel in this layout (4-D): its rows are the kernel width, 1 or 3 elements."""
        return len(self.shape) > 2


def _resnet_leaf(rest: str, leaves: dict) -> str:
    leaf, _, param = rest.rpartition(".")
    return f"{leaves.get(leaf, leaf)}.{param}" if leaf else rest


def _unet_layout(names) -> tuple[int, set[int]]:
    """(resnets per down level, up levels with attentions): what fixes LDM's flat block numbering."""
    resnets = [int(m.group(3)) for n in names if (m := _DOWN.match(n)) and m.group(2) == "resnets"]
    if not resnets:
        raise UnsupportedModelError("a UNet without down-block resnets has no LDM layout")
    attn_up = {int(m.group(1)) for n in names if (m := _UP.match(n)) and m.group(2) == "attentions"}
    return max(resnets) + 1, attn_up


def unet_name(name: str, L: int, attn_up: set[int]) -> str | None:
    """A canonical UNet name (no `unet.`) -> its LDM name (no `model.diffusion_model.`)."""
    module, _, param = name.rpartition(".")
    if module in _UNET_FIXED_BACK:
        return f"{_UNET_FIXED_BACK[module]}.{param}"
    if m := _DOWN.match(name):
        block, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        base = 1 + block * (L + 1)
        if kind == "resnets":
            return f"input_blocks.{base + j}.0.{_resnet_leaf(rest, _UNET_LEAVES_BACK)}"
        if kind == "attentions":
            return f"input_blocks.{base + j}.1.{rest}"
        return f"input_blocks.{base + L}.0.op.{rest[len('conv.'):]}" if rest.startswith("conv.") else None
    if m := _UP.match(name):
        block, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        base = block * (L + 1)
        if kind == "resnets":
            return f"output_blocks.{base + j}.0.{_resnet_leaf(rest, _UNET_LEAVES_BACK)}"
        if kind == "attentions":
            return f"output_blocks.{base + j}.1.{rest}"
        slot = 2 if block in attn_up else 1  # the upsampler follows the attention where the level has one
        return f"output_blocks.{base + L}.{slot}.{rest}" if rest.startswith("conv.") else None
    if m := _MID.match(name):
        middle = _UNET_MIDDLE_BACK.get(m.group(1))
        if middle is None:
            return None
        rest = m.group(2) if "attentions" in m.group(1) else _resnet_leaf(m.group(2), _UNET_LEAVES_BACK)
        return f"middle_block.{middle}.{rest}"
    return None


def vae_name(name: str, n_levels: int) -> tuple[str, bool] | None:
    """A canonical VAE name (no `vae.`) -> (its LDM name, stored as a 1x1 conv kernel)."""
    if m := _VAE_MID_ATTN.match(name):
        part, leaf, param = m.groups()
        return f"{part}.mid.attn_1.{_VAE_ATTN_BACK[leaf]}.{param}", leaf != "group_norm" and param == "weight"
    for new, old in _VAE_FIXED_BACK.items():
        if name.startswith(new + "."):
            rest = name[len(new) + 1:]
            return f"{old}.{_resnet_leaf(rest, _VAE_RESNET_BACK)}", False
    if m := _VAE_BLOCK.match(name):
        part, direction, level, what, j, rest = m.groups()
        level = int(level) if direction == "down" else n_levels - 1 - int(level)  # LDM's decoder counts upwards
        if j is not None:
            return f"{part}.{direction}.{level}.block.{j}.{_resnet_leaf(rest, _VAE_RESNET_BACK)}", False
        sampler = "downsample" if direction == "down" else "upsample"
        return f"{part}.{direction}.{level}.{sampler}.{rest}", False
    head = name.split(".")[0]
    if head in ("quant_conv", "post_quant_conv") or re.match(r"^(encoder|decoder)\.conv_(in|out)\.", name):
        return name, False
    return None


def _openclip_names(names: list[str]) -> list[tuple[str, tuple[str, ...], bool]]:
    """(original name, canonical parts, transposed) for an OpenCLIP text tower's canonical names."""
    out, fused = [], {}
    for n in names:
        if n in _OPENCLIP_FIXED_BACK:
            out.append((_OPENCLIP_FIXED_BACK[n], (n,), False))
        elif n == "text_projection.weight":
            out.append(("text_projection", (n,), True))
        elif m := _CLIP_LAYER.match(n):
            layer, leaf, param = m.groups()
            if leaf in (f"self_attn.{p}" for p in OPENCLIP_QKV):
                fused.setdefault((layer, param), []).append(n)
            elif leaf in _OPENCLIP_LEAVES_BACK:
                out.append((f"transformer.resblocks.{layer}.{_OPENCLIP_LEAVES_BACK[leaf]}.{param}", (n,), False))
            else:
                out.append((None, (n,), False))
        else:
            out.append((None, (n,), False))
    for (layer, param), parts in fused.items():
        order = [f"text_model.encoder.layers.{layer}.self_attn.{p}.{param}" for p in OPENCLIP_QKV]
        if sorted(parts) != sorted(order):
            raise UnsupportedModelError(f"OpenCLIP layer {layer}: {param} of q/k/v incomplete ({sorted(parts)}); "
                                        "the fused in_proj needs all three")
        out.append((f"transformer.resblocks.{layer}.attn.in_proj_{param}", tuple(order), False))
    return out


def original_layout(shapes: dict[str, tuple[int, ...]], family: str | None) -> dict[str, OriginalTensor]:
    """Canonical {name: shape} of a model -> {original name: OriginalTensor}. Raises UnsupportedModelError for a
    tensor without an original name (the caller names the layout)."""
    by_comp: dict[str, list[str]] = {}
    for name in shapes:
        comp, _, inner = name.partition(".")
        by_comp.setdefault(comp, []).append(inner)
    out: dict[str, OriginalTensor] = {}

    def add(prefix, orig, parts, comp, transpose=False, kernel=False):
        if orig is None:
            raise UnsupportedModelError(f"'{comp}.{parts[0]}' has no name in the original single-file layout")
        full = tuple(f"{comp}.{p}" for p in parts)
        shape = shapes[full[0]]
        if len(full) > 1:
            shape = (sum(shapes[p][0] for p in full),) + tuple(shape[1:])
        if transpose:
            shape = tuple(reversed(shape))
        if kernel:
            shape = tuple(shape) + (1,) * (4 - len(shape))
        out[prefix + orig] = OriginalTensor(prefix + orig, full, tuple(shape), transpose)

    for comp, names in by_comp.items():
        if comp == "unet":
            prefix = UNET_PREFIX
            L, attn_up = _unet_layout(names)
            for n in names:
                add(prefix, unet_name(n, L, attn_up), (n,), comp)
        elif comp == "vae":
            prefix = VAE_PREFIX
            ups = [int(m.group(3)) for n in names if (m := _VAE_BLOCK.match(n)) and m.group(2) == "up"]
            n_levels = max(ups) + 1 if ups else 0
            for n in names:
                mapped = vae_name(n, n_levels)
                add(prefix, mapped and mapped[0], (n,), comp, kernel=bool(mapped and mapped[1]))
        else:
            key = (family, comp, "text_encoder" in by_comp)
            if key not in TEXT_PREFIXES:
                raise UnsupportedModelError(f"no original single-file name for the {comp} of a "
                                            f"{family or 'component-only'} model")
            prefix, layout = TEXT_PREFIXES[key]
            if layout == "hf_clip":
                for n in names:
                    add(prefix, n, (n,), comp)
            else:
                for orig, parts, transpose in _openclip_names(names):
                    add(prefix, orig, parts, comp, transpose=transpose)
    return out
