"""CLIP text encoders (transformers' CLIPTextModel / CLIPTextModelWithProjection) on ggml.

    te = TextEncoder(weights)                           # SD1/SDXL CLIP-L, SD2 OpenCLIP-H
    te2 = TextEncoder(weights, "text_encoder_2")        # SDXL / refiner OpenCLIP-bigG (with text_projection)
    out = te.encode(tokens, layer=-2, final_norm=False)  # tokens: int [B, T]
    out["hidden"], out["pooled"], out.get("text_embeds")

The architecture comes from the stored shapes (hidden size, layers, vocabulary, positions, projection); what
shapes cannot tell (heads, activation, LayerNorm eps) from the component's config where the source had one
(diffusers folder, sdcpp GGUF), else from the family: 64-wide heads, quick_gelu for OpenAI's CLIP-L, exact
(erf) gelu for OpenCLIP (SD2's encoder and every text_encoder_2), eps 1e-5.
"""

from __future__ import annotations

import re

import numpy as np

from .. import checks
from .._native import core
from ..errors import UnsupportedModelError
from ._graph import GraphModel

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
ACTIVATIONS = ("quick_gelu", "gelu")
HEAD_DIM = 64  # every released CLIP/OpenCLIP text tower: 768/12, 1024/16, 1280/20
# softmax(QK^T)V and ggml_flash_attn_ext were within noise of each other on this CPU at 77 tokens (attention is
# ~2% of the FLOPs there); the plain path also runs with f32 K/V on every ggml backend.
DEFAULT_FLASH_ATTN = False

_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.")


def default_activation(component: str, family: str, hidden_size: int) -> str:
    """OpenAI CLIP-L uses quick_gelu; OpenCLIP towers (SD2's encoder, SDXL's bigG) use exact gelu."""
    if component == "text_encoder_2" or family == "sd2":
        return "gelu"
    if not family and hidden_size == 1024:  # a lone text encoder file: ViT-H is the only 1024-wide one
        return "gelu"
    return "quick_gelu"


class TextEncoder(GraphModel):
    """One text encoder of a loaded model (`sdcpp.load_weights`), numpy in and out.

    `n_heads`, `hidden_act`, `layer_norm_eps` override the config/family defaults (needed for non-standard
    models loaded from a source without config, e.g. the tiny test models whose heads are 32 wide).
    `flash_attn`: use ggml_flash_attn_ext for attention. `n_threads`: 0 = one per physical core."""

    def __init__(self, weights, component: str = "text_encoder", *, n_heads: int | None = None,
                 hidden_act: str | None = None, layer_norm_eps: float | None = None,
                 flash_attn: bool = DEFAULT_FLASH_ATTN, n_threads: int = 0):
        if component not in TEXT_ENCODERS:
            raise ValueError(f"component must be one of {TEXT_ENCODERS}, got {component!r}")
        prefix = component + "."
        names = [n for n in weights.names() if n.startswith(prefix)]
        if not names:
            raise UnsupportedModelError(f"the model holds no {component} (components: "
                                        f"{', '.join(weights.spec.components) or 'none'})")
        self.weights = weights
        self.component = component
        self._names = frozenset(names)

        def shape(leaf):
            name = prefix + leaf
            if name not in weights:
                raise UnsupportedModelError(f"{component}: weight '{name}' is missing")
            return tuple(weights.plan[name].shape)

        self.vocab_size, self.hidden_size = shape("text_model.embeddings.token_embedding.weight")
        self.max_positions = shape("text_model.embeddings.position_embedding.weight")[0]
        layers = {int(m.group(1)) for n in names if (m := _LAYER.match(n[len(prefix):]))}
        self.n_layers = max(layers) + 1 if layers else 0
        if layers != set(range(self.n_layers)) or not layers:
            raise UnsupportedModelError(f"{component}: encoder layers {sorted(layers)} are not 0..N-1")
        proj = prefix + "text_projection.weight"
        self.projection_dim = weights.plan[proj].shape[0] if proj in weights else 0

        cfg = weights.configs.get(component) or {}
        family = weights.spec.family
        self.n_heads = int(n_heads or cfg.get("num_attention_heads") or max(self.hidden_size // HEAD_DIM, 1))
        self.hidden_act = hidden_act or cfg.get("hidden_act") or default_activation(component, family,
                                                                                   self.hidden_size)
        if self.hidden_act not in ACTIVATIONS:
            raise UnsupportedModelError(f"{component}: activation {self.hidden_act!r} is not one of {ACTIVATIONS}")
        self.layer_norm_eps = float(layer_norm_eps or cfg.get("layer_norm_eps") or 1e-5)
        if self.hidden_size % self.n_heads:
            raise UnsupportedModelError(f"{component}: {self.n_heads} heads do not divide the hidden size "
                                        f"{self.hidden_size}")
        self.flash_attn = checks.optional_bool("flash_attn", flash_attn) or False
        n_threads = checks.threads(n_threads)
        self._graph = core().ClipTextModel(weights._store, prefix, self.n_layers, self.n_heads, self.hidden_act,
                                           self.layer_norm_eps, self.flash_attn, n_threads)

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
