"""The weight change of one adapter module, in float32 numpy, from the published formulas:

- LoRA / LoCon (Hu et al. 2021; kohya's conv form): dW = (alpha / r) * up @ down, r = down's rows; LoCon's CP form
  (lora_mid) is dW[o, c, h, w] = (alpha / r) * sum_ij up[o, i] mid[i, j, h, w] down[j, c].
- LoHa (LyCORIS, Hyeon-Woo et al. 2022 "FedPara"): dW = (alpha / r) * (w1_a @ w1_b) * (w2_a @ w2_b) (elementwise).
- LoKr (LyCORIS, Kronecker product): dW = s * kron(w1, w2), each factor given whole or as _a @ _b; s = alpha / r
  with r the rank of a factorised factor (w2's when both are), 1 when both are whole or alpha is absent.
- full: dW = diff.
alpha absent: alpha = r (scale 1), as kohya and PEFT without lora_alpha.

DoRA (Liu et al. 2024) rescales the adapted weight W + dW to a learnt norm, so it is not a delta added to W:
- `dora_scale` (kohya / LyCORIS): W_d = dora_scale * (W + dW) / ||W + dW||, the norm per input column (taken over
  the outputs and kernel taps) when dora_scale is [1, in, ...], per output row when it is [out, 1, ...]; strength
  s blends: W' = W + s * (W_d - W) (ComfyUI's and LyCORIS's merge at strength s).
- PEFT `lora_magnitude_vector` [out]: W' = m * (W + s dW) / ||W + s dW|| per output row (diffusers' fuse_lora at
  lora_scale s)."""

from __future__ import annotations

import numpy as np

from .files import LoraFile, LoraModule


def _mat(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1)


def _alpha_scale(lora: LoraFile, m: LoraModule, r: int | None) -> float:
    if "alpha" not in m.parts or not r:
        return 1.0
    return float(lora.array(m, "alpha").reshape(())) / r


def delta(lora: LoraFile, m: LoraModule, shape: tuple[int, ...]) -> np.ndarray:
    """dW at strength 1 (alpha scale included), in the layer's canonical `shape`, float32."""
    a = lambda part: lora.array(m, part)  # noqa: E731
    if m.kind == "lora":
        down, up = a("down"), _mat(a("up"))
        r = down.shape[0]
        if "mid" in m.parts:
            d = np.einsum("oi,ijhw,jc->ochw", up, a("mid"), _mat(down), optimize=True).astype(np.float32)
        else:
            d = up @ _mat(down)
    elif m.kind == "loha":
        r = m.parts["hada_w1_b"].shape[0]
        d = (a("hada_w1_a") @ _mat(a("hada_w1_b"))) * (a("hada_w2_a") @ _mat(a("hada_w2_b")))
    elif m.kind == "lokr":
        r = None
        factors = []
        for i in ("1", "2"):
            if f"lokr_w{i}" in m.parts:
                factors.append(a(f"lokr_w{i}"))
            else:
                b = a(f"lokr_w{i}_b")
                r = b.shape[0]
                factors.append((a(f"lokr_w{i}_a") @ _mat(b)).reshape(m.parts[f"lokr_w{i}_a"].shape[0],
                                                                     *b.shape[1:]))
        w1, w2 = factors
        if w2.ndim > w1.ndim:
            w1 = w1.reshape(w1.shape + (1,) * (w2.ndim - w1.ndim))
        d = np.kron(w1, w2)
    else:
        r = None
        d = a("diff")
    d = (d * np.float32(_alpha_scale(lora, m, r))).astype(np.float32, copy=False)
    return d.reshape(shape)


def _column_norm(w: np.ndarray) -> np.ndarray:
    """||w|| per input column (over outputs and kernel taps), shaped to broadcast: [1, in, 1, ...]."""
    moved = np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
    return np.linalg.norm(moved, axis=1).reshape((1, w.shape[1]) + (1,) * (w.ndim - 2))


def _row_norm(w: np.ndarray) -> np.ndarray:
    return np.linalg.norm(w.reshape(w.shape[0], -1), axis=1).reshape((w.shape[0],) + (1,) * (w.ndim - 1))


def apply(lora: LoraFile, m: LoraModule, w: np.ndarray, strength: float) -> np.ndarray:
    """The weight `w` (float32, canonical shape) adapted by module `m` at `strength`."""
    d = delta(lora, m, w.shape)
    s = np.float32(strength)
    if m.dora is None:
        return w + s * d
    if m.dora == "peft":
        adapted = w + s * d
        mag = lora.array(m, "magnitude").reshape((w.shape[0],) + (1,) * (w.ndim - 1))
        return (mag / _row_norm(adapted) * adapted).astype(np.float32)
    adapted = w + d
    scale = lora.array(m, "dora_scale")
    per_row = scale.shape[0] == w.shape[0] and scale.size == w.shape[0] and w.shape[0] != 1
    norm = _row_norm(adapted) if per_row else _column_norm(adapted)
    decomposed = scale.reshape(norm.shape) / norm * adapted
    return (w + s * (decomposed - w)).astype(np.float32)
