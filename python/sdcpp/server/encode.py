"""Images over JSON: base64 PNGs out (with A1111's "parameters" text), base64 images in (checked, bounded)."""

from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image, PngImagePlugin

# Formats accepted from clients: PIL can open many more (some through external programs); these are what
# image tools send.
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,")


def png_b64(image: Image.Image, parameters: str | None = None) -> str:
    info = None
    if parameters:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(text: str, what: str, max_pixels: int) -> Image.Image:
    """A base64 image (raw or a data: URL) -> a loaded PIL image; ValueError naming `what` otherwise."""
    raw = _DATA_URL.sub("", text.strip(), count=1)
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{what}: not base64 ({e})") from None
    unreadable = f"{what}: not a readable {'/'.join(INPUT_FORMATS)} image"
    try:
        img = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except Image.DecompressionBombError:  # PIL's own bound (far above ours) is checked on opening
        raise ValueError(f"{what}: more pixels than the server's limit of {max_pixels}") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ... on bad data
        raise ValueError(f"{unreadable} ({type(e).__name__})") from None
    w, h = img.size
    if w * h > max_pixels:  # before decoding: the header alone says how big the pixels would be
        raise ValueError(f"{what}: {w}x{h} pixels, more than the server's limit of {max_pixels}")
    try:
        img.load()
    except Exception as e:
        raise ValueError(f"{unreadable} ({type(e).__name__})") from None
    return img
