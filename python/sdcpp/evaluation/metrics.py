"""Error measures between a run and its reference (numpy; SSIM from scikit-image, the optional `eval` extra).

Every function takes (value, reference) in that order, computes in float64, and is exactly 0 / inf / 1 when the
two are identical, so a reference compared with itself reports no error."""

from __future__ import annotations

import math

import numpy as np


def rel_l2(value, reference) -> float:
    """||value - reference|| / ||reference|| (0 when both are zero)."""
    a, b = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    num, den = float(np.linalg.norm(a - b)), float(np.linalg.norm(b))
    if num == 0.0:
        return 0.0
    return num / den if den else math.inf


def cosine(value, reference) -> float:
    """Cosine similarity of the two tensors flattened (1 = same direction)."""
    a, b = np.asarray(value, np.float64).ravel(), np.asarray(reference, np.float64).ravel()
    if np.array_equal(a, b):
        return 1.0
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den else 0.0


def psnr(value, reference, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, data_range] (inf when identical)."""
    a, b = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(value, reference, data_range: float = 1.0) -> float | None:
    """Mean structural similarity (Wang et al. 2004) of two [H, W, 3] images, as scikit-image computes it
    (7x7 uniform window, per channel); None when scikit-image is not installed (`pip install sdcpp[eval]`)."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return None
    a, b = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    if np.array_equal(a, b):
        return 1.0
    side = min(a.shape[0], a.shape[1])
    win = min(7, side if side % 2 else side - 1)  # scikit-image needs an odd window no larger than the image
    if win < 3:
        return None
    return float(structural_similarity(a, b, data_range=data_range, channel_axis=-1, win_size=win))


def mean(values) -> float | None:
    """Mean of the values that were measured (None where a measure was unavailable)."""
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None
