"""UNet2DConditionModel (SD1, SD2, SDXL base/refiner, inpainting) on ggml, numpy NCHW float32 in and out."""

from __future__ import annotations

import numpy as np

from .. import checks
from .._native import core
from ._graph import GraphModel, resolve_flash_attn


def _f32(a, ndim: int, what: str) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {a.shape}")
    return a


class UNet(GraphModel):
    """The UNet of loaded `Weights` (`sdcpp.load_weights`).

    `n_threads`: 0 = one per physical core. `flash_attn`: ggml_flash_attn_ext instead of mul_mat + soft_max
    (None: on for the CPU).
    `max_im2col_mib`: convs whose im2col matrix would be larger run in bands of output rows (0 = never).
    `f32_matmul_min_cols`: products with at least this many activation columns (tokens x batch) convert a
    non-f32 weight to f32 in the compute buffer and use f32 sgemm (faster on AVX-512 CPUs, and activations are
    not rounded to 8 bits as in ggml's quantized products); 0 = never, -1 = the backend's default (256 on the
    CPU, never on GPUs). `precision`: "f32", "bf16" or "f16" (`sdcpp.checks.precision`)."""

    def __init__(self, weights, n_threads: int = 0, flash_attn: bool | None = None, max_im2col_mib: float = 256,
                 f32_matmul_min_cols: int = -1, precision: str = "f32"):
        config = weights.config.component("unet")  # heads, groups, epsilons, time-id width: sdcpp.config
        self.weights = weights
        self.config = config
        self.heads = list(config.heads)
        self.flash_attn = resolve_flash_attn(weights, flash_attn)
        n_threads = checks.threads(n_threads)
        self._graph = core().UNet(
            weights._store, self.heads, groups=config.groups, norm_eps=config.norm_eps,
            transformer_group_norm_eps=config.transformer_group_norm_eps,
            transformer_layer_norm_eps=config.transformer_layer_norm_eps,
            addition_time_embed_dim=config.addition_time_embed_dim, flash_attn=self.flash_attn,
            max_im2col_mib=max_im2col_mib, f32_matmul_min_cols=f32_matmul_min_cols,
            precision=checks.precision(precision), n_threads=n_threads)

    @property
    def in_channels(self) -> int:
        return self._graph.in_channels

    @property
    def context_dim(self) -> int:
        return self._graph.context_dim

    @property
    def needs_added_cond(self) -> bool:
        """SDXL: predict() needs text_embeds and time_ids."""
        return self._graph.adm_in_channels > 0

    def predict(self, latents, timesteps, context, text_embeds=None, time_ids=None) -> np.ndarray:
        """latents [B, C, h, w], timesteps [B] (or a scalar), context [B, T, D]; SDXL also text_embeds [B, P]
        (pooled) and time_ids [B, 6] (refiner: 5) -> model output [B, 4, h, w]."""
        x = _f32(latents, 4, "latents")
        t = np.asarray(timesteps, dtype=np.float32).reshape(-1)
        if t.size == 1:
            t = np.full(x.shape[0], t[0], dtype=np.float32)
        if t.shape != (x.shape[0],):
            raise ValueError(f"timesteps must be a scalar or one per batch item ({x.shape[0]}), got {t.size}")
        ctx = _f32(context, 3, "context")
        te = None if text_embeds is None else _f32(text_embeds, 2, "text_embeds")
        ids = None if time_ids is None else _f32(time_ids, 2, "time_ids")
        return self._graph.predict(x, t, ctx, te, ids)
