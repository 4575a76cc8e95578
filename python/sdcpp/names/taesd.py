"""TAESD names: the original files' bare layer indices -> diffusers AutoencoderTiny's `encoder.layers.N` /
`decoder.layers.N` (diffusers' scripts/convert_tiny_autoencoder_to_diffusers.py: the encoder's indices are kept,
the decoder's shift down by one). diffusers' own names pass through sdcpp.names.vae unchanged."""

from __future__ import annotations

from .tables import TAESD_DECODER_OFFSET, TAESD_LAYER
from .target import Target

LAYOUTS = ("taesd_encoder", "taesd_decoder", "taesd_bare")


def bare_half(names) -> str | None:
    """Which half a file of bare indices holds: the encoder starts with its input conv at 0; the decoder's 0 is the
    weightless clamp, so it starts at 1."""
    names = set(names)
    if "0.weight" in names:
        return "encoder"
    if "1.weight" in names:
        return "decoder"
    return None


def translate(names, layout: str) -> dict:
    """{raw name inside the layout: Target or None}; `layout` is one of LAYOUTS (taesd_bare: the half is read off
    the names, bare_half)."""
    half = bare_half(names) if layout == "taesd_bare" else layout.removeprefix("taesd_")
    out: dict = {}
    for n in names:
        m = TAESD_LAYER.match(n)
        if m is None or half is None:
            out[n] = None
            continue
        index = int(m.group(1)) - (TAESD_DECODER_OFFSET if half == "decoder" else 0)
        out[n] = Target(f"{half}.layers.{index}.{m.group(2)}") if index >= 0 else None
    return out
