"""UNet2DConditionModel (SD1, SD2, SDXL base/refiner, inpainting) on ggml, numpy NCHW float32 in and out."""

from __future__ import annotations

import numpy as np

from .. import checks
from .._native import core
from ._graph import GraphModel, resolve_flash_attn

# Heads when the weights carry no UNet config: SD1 uses 8 heads everywhere, SD2/SDXL 64-wide heads.
SD1_HEADS = 8
HEAD_DIM = 64
SDXL_TIME_EMBED_DIM = 256


def _down_channels(weights) -> list[int]:
    out = []
    while f"unet.down_blocks.{len(out)}.resnets.0.conv1.weight" in weights:
        out.append(weights.plan[f"unet.down_blocks.{len(out)}.resnets.0.conv1.weight"].shape[0])
    return out


def attention_heads(weights, config: dict) -> list[int]:
    """Heads per down block. diffusers configs of SD models store the head *count* in `attention_head_dim`
    (diffusers reads `num_attention_heads or attention_head_dim`)."""
    channels = _down_channels(weights)
    heads = config.get("num_attention_heads") or config.get("attention_head_dim")
    if heads is None:
        if weights.spec.family == "sd1":
            heads = SD1_HEADS
        else:
            heads = [max(1, c // HEAD_DIM) for c in channels]
    if isinstance(heads, int):
        heads = [heads] * len(channels)
    heads = [int(h) for h in heads]
    if len(heads) < len(channels):
        raise ValueError(f"UNet config gives heads for {len(heads)} blocks, the weights have {len(channels)}")
    return heads


def addition_time_embed_dim(weights, config: dict) -> int:
    """SDXL: sinusoidal width of each time id. A config says; single files don't, but add_embedding takes
    pooled (text_embeds) + n_ids * width inputs (6 ids base, 5 refiner), so the shapes tell when the
    pooled width is known from text_encoder_2's projection. 256 in the released models."""
    if config.get("addition_time_embed_dim"):
        return int(config["addition_time_embed_dim"])
    adm, proj = "unet.add_embedding.linear_1.weight", "text_encoder_2.text_projection.weight"
    if adm in weights and proj in weights:
        n_ids = 5 if weights.spec.family == "sdxl_refiner" else 6
        extra = weights.plan[adm].shape[1] - weights.plan[proj].shape[0]
        if extra > 0 and extra % n_ids == 0:
            return extra // n_ids
    return SDXL_TIME_EMBED_DIM


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
    CPU, never on GPUs)."""

    def __init__(self, weights, n_threads: int = 0, flash_attn: bool | None = None, max_im2col_mib: float = 256,
                 f32_matmul_min_cols: int = -1):
        if "unet.conv_in.weight" not in weights:
            raise ValueError("these weights hold no UNet")
        self.weights = weights
        cfg = weights.configs.get("unet") or {}
        self.config = cfg
        self.heads = attention_heads(weights, cfg)
        n_threads = checks.threads(n_threads)
        self.flash_attn = resolve_flash_attn(weights, flash_attn)
        self._graph = core().UNet(
            weights._store, self.heads, groups=int(cfg.get("norm_num_groups") or 32),
            norm_eps=float(cfg.get("norm_eps") or 1e-5),
            addition_time_embed_dim=addition_time_embed_dim(weights, cfg), flash_attn=self.flash_attn,
            max_im2col_mib=max_im2col_mib, f32_matmul_min_cols=f32_matmul_min_cols, n_threads=n_threads)

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
