"""CLIP text encoders (transformers' CLIPTextModel / CLIPTextModelWithProjection) on ggml.

    te = TextEncoder(weights)                           # SD1/SDXL CLIP-L, SD2 OpenCLIP-H
    te2 = TextEncoder(weights, "text_encoder_2")        # SDXL / refiner OpenCLIP-bigG (with text_projection)
    out = te.encode(tokens, layer=-2, final_norm=False)  # tokens: int [B, T]
    out["hidden"], out["pooled"], out.get("text_embeds")

The architecture comes from the stored shapes (hidden size, layers, vocabulary, positions, projection); what
shapes cannot tell (heads, activation, LayerNorm eps) from the component's config where the source had one
(diffusers folder, sdcpp GGUF), else from the family table (sdcpp.config.families): 64-wide heads, quick_gelu
for OpenAI's CLIP-L, exact (erf) gelu for OpenCLIP (SD2's encoder and every text_encoder_2), eps 1e-5.
"""

from __future__ import annotations

import numpy as np

from .. import checks
from .._native import core
from ..config.model_config import ACTIVATIONS, TEXT_ENCODERS
from ..errors import UnsupportedModelError
from ._graph import GraphModel

# softmax(QK^T)V and ggml_flash_attn_ext were within noise of each other on this CPU at 77 tokens (attention is
# ~2% of the FLOPs there); the plain path also runs with f32 K/V on every ggml backend.
DEFAULT_FLASH_ATTN = False
# -1: the backend's threshold, as for the UNet and VAE (256 columns on the CPU), so the pipeline's call (prompt and
# negative: 2 x 77 = 154 columns) keeps stored-type products, bit for bit as before CLIP ran on the shared ops, and
# 4 rows and more take f32 products. benchmarks/bench_clip.py (CLIP-L, bigG; f16, q8_0; shared 2-core AVX-512
# machine, medians): f32 products were faster at 308 columns (1.63-1.78x at 1 thread, 1.29-1.42x at 2) and at 154
# (1.35-1.57x, 1.08-1.37x), mixed at 77 (1.05-1.45x, 0.75-1.19x). Lowering the threshold to 154 would change the
# pipeline's conditioning (no more activation rounding) to save 0.1-0.25 s (CLIP-L) or 1.1-2.2 s (bigG) of a
# generation whose UNet steps take minutes: left to the kernels' own tuning, with the UNet's threshold.
DEFAULT_F32_MATMUL_MIN_COLS = -1


class TextEncoder(GraphModel):
    """One text encoder of a loaded model (`sdcpp.load_weights`), numpy in and out.

    `n_heads`, `hidden_act`, `layer_norm_eps` override the config/family defaults (needed for non-standard
    models loaded from a source without config, e.g. the tiny test models whose heads are 32 wide).
    `flash_attn`: use ggml_flash_attn_ext for attention.
    `f32_matmul_min_cols`, `precision`: see `sdcpp.models.unet.UNet`.
    `n_threads`: 0 = one per physical core."""

    def __init__(self, weights, component: str = "text_encoder", *, n_heads: int | None = None,
                 hidden_act: str | None = None, layer_norm_eps: float | None = None,
                 flash_attn: bool = DEFAULT_FLASH_ATTN, f32_matmul_min_cols: int = DEFAULT_F32_MATMUL_MIN_COLS,
                 n_threads: int = 0, precision: str = "f32"):
        if component not in TEXT_ENCODERS:
            raise ValueError(f"component must be one of {TEXT_ENCODERS}, got {component!r}")
        try:
            config = weights.config.component(component)  # shapes, heads, activation, eps: sdcpp.config
        except ValueError as e:
            raise UnsupportedModelError(str(e)) from None
        prefix = component + "."
        self.weights = weights
        self.component = component
        self.config = config
        self._names = frozenset(n for n in weights.names() if n.startswith(prefix))
        arch = config.arch
        self.vocab_size, self.hidden_size, self.max_positions = arch.vocab_size, arch.hidden_size, arch.max_positions
        self.n_layers, self.projection_dim = arch.n_layers, arch.projection_dim
        self.n_heads = int(n_heads or config.heads)
        self.hidden_act = hidden_act or config.activation
        if self.hidden_act not in ACTIVATIONS:
            raise UnsupportedModelError(f"{component}: activation {self.hidden_act!r} is not one of {ACTIVATIONS}")
        self.layer_norm_eps = float(layer_norm_eps or config.layer_norm_eps)
        if self.hidden_size % self.n_heads:
            raise UnsupportedModelError(f"{component}: {self.n_heads} heads do not divide the hidden size "
                                        f"{self.hidden_size}")
        self.flash_attn = checks.optional_bool("flash_attn", flash_attn) or False
        n_threads = checks.threads(n_threads)
        self._graph = core().ClipTextModel(
            weights._store, prefix, n_layers=self.n_layers, n_heads=self.n_heads, hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps, flash_attn=self.flash_attn, f32_matmul_min_cols=f32_matmul_min_cols,
            precision=checks.precision(precision), n_threads=n_threads)

    def __repr__(self):
        return (f"TextEncoder({self.component}: {self.n_layers} layers, hidden {self.hidden_size}, "
                f"{self.n_heads} heads, {self.hidden_act}, vocab {self.vocab_size}, {self.max_positions} positions, "
                f"projection {self.projection_dim or 'none'})")

    def encode(self, tokens, *, eos=None, layer: int = -1, final_norm: bool = True, pooled: bool = True) -> dict:
        """tokens: integer ids [B, T] (or [T], taken as B=1), T <= max_positions.

        Returns {"hidden": float32 [B, T, C], "pooled": [B, C], "text_embeds": [B, P]}:
        - hidden: transformers' `hidden_states[layer]` (0 = embeddings, -1 = last layer, -2 = penultimate, i.e.
          clip skip 2), with final_layer_norm applied when `final_norm` (layer=-1, final_norm=True is
          `last_hidden_state`; SDXL conditions on layer=-2, final_norm=False).
        - pooled (when `pooled`): the final-LayerNorm'd last-layer state at each row's EOS position, independent
          of `layer`; text_embeds: pooled times text_projection, for encoders that have one.
        `eos`: EOS position per row; default: the position of the row's largest id (first one if repeated),
        which is where the CLIP tokenizer puts its end token (the highest id of the vocabulary) and what
        transformers pools on for the SD configs (eos_token_id == 2)."""
        ids = np.asarray(tokens)
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
            raise ValueError(f"tokens must have shape [batch, n_tokens], got {np.shape(tokens)}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"tokens must be integers, got {ids.dtype}")
        if ids.shape[1] > self.max_positions:
            raise ValueError(f"{ids.shape[1]} tokens exceed the {self.max_positions} positions of {self.component}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got [{ids.min()}, {ids.max()}]")
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        B, T = ids.shape

        if eos is None:
            eos_pos = ids.argmax(axis=1)
        else:
            eos_pos = np.asarray(eos).reshape(-1)
            if eos_pos.shape[0] != B or not np.issubdtype(eos_pos.dtype, np.integer):
                raise ValueError(f"eos must hold one integer position per row ({B}), got {np.shape(eos)}")
            if eos_pos.min() < 0 or eos_pos.max() >= T:
                raise ValueError(f"eos positions must be in [0, {T}), got {eos_pos.tolist()}")
        eos_pos = np.ascontiguousarray(eos_pos, dtype=np.int32)

        n = self.n_layers
        if not -(n + 1) <= layer <= n:
            raise ValueError(f"layer must be in [{-(n + 1)}, {n}] ({n} layers), got {layer}")
        out_layer = layer % (n + 1)
        return dict(self._graph.compute(ids, eos_pos, out_layer, bool(final_norm), bool(pooled)))

    def weight_names(self) -> set[str]:
        """Every stored weight of this component."""
        return set(self._names)
