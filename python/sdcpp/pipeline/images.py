"""Images in and out: VAE range conversion, A1111-style "parameters" text, atomic PNG writes."""

from __future__ import annotations

import os
import secrets

import numpy as np
from PIL import Image, PngImagePlugin

from ..sampling import SAMPLERS

# A1111's names for schedule settings in its "parameters" text (what image browsers parse); samplers carry theirs.
A1111_SCHEDULE_NAMES = {"karras": "Karras", "exponential": "Exponential", "ays": "Align Your Steps", "beta": "Beta",
                        "sgm_uniform": "SGM Uniform", "simple": "Simple"}


def to_pil(decoded: np.ndarray) -> list[Image.Image]:
    """VAE output [B, 3, H, W] in [-1, 1] -> RGB images."""
    x = np.clip(decoded.astype(np.float32) / 2 + 0.5, 0.0, 1.0)
    x = np.rint(x * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return [Image.fromarray(np.ascontiguousarray(img), "RGB") for img in x]


def from_pil(image: Image.Image, width: int, height: int) -> np.ndarray:
    """An image -> [1, 3, H, W] in [-1, 1], resized (Lanczos) to the generation size."""
    img = image.convert("RGB")
    if img.size != (width, height):
        img = img.resize((width, height), Image.LANCZOS)
    x = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return x.transpose(2, 0, 1)[None].copy()


def mask_from_pil(mask: Image.Image, width: int, height: int) -> np.ndarray:
    """A mask image (white = repaint) -> [1, 1, H, W] in {0, 1}."""
    m = mask.convert("L")
    if m.size != (width, height):
        m = m.resize((width, height), Image.NEAREST)
    return (np.asarray(m, dtype=np.float32) >= 128).astype(np.float32)[None, None]


def a1111_parameters(prompt: str, negative_prompt: str, *, steps: int, sampler: str, schedule: str,
                     guidance_scale: float, seed: int, width: int, height: int, model: str,
                     extra: dict | None = None) -> str:
    """The "parameters" text A1111 stores in PNGs: prompt, negative line, then `key: value` pairs."""
    name = SAMPLERS[sampler].a1111 if sampler in SAMPLERS else sampler
    fields = {"Steps": steps, "Sampler": name}
    if schedule in A1111_SCHEDULE_NAMES:
        fields["Schedule type"] = A1111_SCHEDULE_NAMES[schedule]
    fields.update({"CFG scale": f"{guidance_scale:g}", "Seed": seed, "Size": f"{width}x{height}", "Model": model})
    fields.update(extra or {})
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items()))
    return "\n".join(lines)


def save_png(image: Image.Image, path, parameters: str | None = None):
    """Write a PNG through a temporary file in the same folder and rename it: no half-written images."""
    path = os.fspath(path)
    info = PngImagePlugin.PngInfo()
    text = parameters if parameters is not None else image.info.get("parameters")
    if text:
        info.add_text("parameters", text)
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    # os.open with 0o666 honours the umask (mkstemp would leave the image readable by its owner only)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
