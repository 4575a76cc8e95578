"""Prompt -> UNet conditioning for each family, with A1111 prompt syntax and 75-token chunks.

    SD1           CLIP-L hidden_states[-clip_skip] with the final LayerNorm            context [1, 77k, 768]
    SD2           OpenCLIP-H (23 layers as loaded) last layer with the final LayerNorm  context [1, 77k, 1024]
    SDXL          CLIP-L and OpenCLIP-bigG hidden_states[-2], no final LayerNorm, concatenated on features;
                  pooled = bigG text_embeds of the first chunk; time_ids = original + crop + target size
    SDXL refiner  bigG only; time_ids = original size + crop + aesthetic score

clip_skip follows A1111 (1 = last layer, 2 = penultimate); diffusers' clip_skip is ours minus one. For SDXL it
moves further back from the penultimate layer, as diffusers does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..models.clip import TextEncoder
from ..text import VOCAB_SIZE, ClipTokenizer, apply_weights, tokenize_pair
from ..text.tokenizer import BOS_ID, EOS_ID


def fold_token_ids(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Fit CLIP token ids into a smaller vocabulary (only the tiny test/demo models have one).

    BOS -> vocab-2, EOS -> vocab-1 (still the largest id, where CLIP pools), every other id modulo vocab-2.
    Real encoders (49408 ids) get their ids unchanged."""
    ids = np.asarray(ids)
    if vocab_size >= VOCAB_SIZE:
        return ids
    folded = np.where(ids == EOS_ID, vocab_size - 1, np.where(ids == BOS_ID, vocab_size - 2, ids % (vocab_size - 2)))
    return folded.astype(ids.dtype)


@dataclass
class Conditioning:
    """What the UNet is conditioned on for one prompt (batch 1): context [1, T, D]; SDXL also text_embeds
    (the pooled vector) [1, P] and time_ids [1, 6] (refiner: 5)."""

    context: np.ndarray
    text_embeds: np.ndarray | None = None
    time_ids: np.ndarray | None = None

    def as_dict(self, batch: int = 1) -> dict:
        """The UNet keyword arguments, repeated to `batch` rows."""
        out = {"context": np.repeat(self.context, batch, axis=0)}
        if self.text_embeds is not None:
            out["text_embeds"] = np.repeat(self.text_embeds, batch, axis=0)
            out["time_ids"] = np.repeat(self.time_ids, batch, axis=0)
        return out


class PromptEncoder:
    """The text encoders of a loaded model and the family's recipe for turning prompts into Conditioning."""

    def __init__(self, weights, n_threads: int = 0):
        self.family = weights.config.family  # which encoders, in which order, and how they condition the UNet
        self.encoders = [TextEncoder(weights, e.component, n_threads=n_threads) for e in self.family.encoders]
        self.tokenizers = [ClipTokenizer(e.config.pad_id) for e in self.encoders]

    @property
    def max_clip_skip(self) -> int:
        """The largest clip_skip that still runs one encoder layer (SDXL already starts from the penultimate)."""
        depth = min(enc.n_layers for enc in self.encoders)
        return max(1, depth - 1) if self.family.hidden_state == "penultimate" else depth

    def tokens(self, prompt: str, negative: str) -> list[tuple]:
        """Per encoder: (prompt ids [k, 77], prompt weights [k, 77], negative ids, negative weights), folded into
        the encoder's vocabulary."""
        out = []
        for enc, tok in zip(self.encoders, self.tokenizers, strict=True):
            pos, neg = tokenize_pair(prompt, negative, tok)
            (pi, pw), (ni, nw) = pos.chunks(), neg.chunks()
            out.append((fold_token_ids(pi, enc.vocab_size), pw, fold_token_ids(ni, enc.vocab_size), nw))
        return out

    def _layer(self, clip_skip: int | None) -> tuple[int, bool]:
        skip = clip_skip or 1  # checked against max_clip_skip by Options.resolved
        if self.family.hidden_state == "penultimate":
            return -1 - skip, False
        return -skip, True

    def encode(self, prompt: str, negative: str = "", *, clip_skip: int | None = None) -> tuple[dict, dict]:
        """(cond, uncond) dicts of arrays batched 1: "context", and for SDXL "pooled" (no time ids yet)."""
        layer, final_norm = self._layer(clip_skip)
        hidden = {"cond": [], "uncond": []}
        pooled = {}
        for enc, (pi, pw, ni, nw) in zip(self.encoders, self.tokens(prompt, negative), strict=True):
            k = len(pi)
            # One graph for every chunk of both prompts.
            out = enc.encode(np.concatenate([pi, ni]), layer=layer, final_norm=final_norm,
                             pooled=enc.component == self.family.pooled_from)
            for key, rows, w in (("cond", slice(0, k), pw), ("uncond", slice(k, 2 * k), nw)):
                h = out["hidden"][rows].reshape(-1, out["hidden"].shape[-1])
                hidden[key].append(apply_weights(h, w.reshape(-1)))
                if "text_embeds" in out:
                    pooled[key] = out["text_embeds"][rows][:1]  # the first chunk's, as A1111
        cond = {"context": np.concatenate(hidden["cond"], axis=-1)[None]}
        uncond = {"context": np.concatenate(hidden["uncond"], axis=-1)[None]}
        if self.family.pooled_from:
            cond["pooled"], uncond["pooled"] = pooled["cond"], pooled["uncond"]
        return cond, uncond


def sdxl_time_ids(kind: str, *, height: int, width: int, original_size=None, crops_coords_top_left=(0, 0),
                  target_size=None, aesthetic_score: float = 6.0, negative_aesthetic_score: float = 2.5):
    """(cond, uncond) time ids [1, n] as diffusers builds them (sizes are (height, width)); `kind` is the family's
    time_ids ("size": SDXL base, "aesthetic": refiner). As in diffusers' defaults, the base model's uncond ids
    equal the cond ids, while the refiner's uncond crop is (0, 0)."""
    original = tuple(original_size or (height, width))
    crops = tuple(crops_coords_top_left)
    if kind == "aesthetic":
        pos, neg = (*original, *crops, aesthetic_score), (*original, 0, 0, negative_aesthetic_score)
    else:
        pos = neg = (*original, *crops, *(target_size or (height, width)))
    return np.array([pos], np.float32), np.array([neg], np.float32)


def build_conditioning(encoder: PromptEncoder, prompt: str, negative: str, *, height: int, width: int,
                       clip_skip=None, original_size=None, crops_coords_top_left=(0, 0), target_size=None,
                       aesthetic_score=6.0, negative_aesthetic_score=2.5) -> tuple[Conditioning, Conditioning]:
    cond, uncond = encoder.encode(prompt, negative, clip_skip=clip_skip)
    family = encoder.family
    if not family.time_ids:
        return Conditioning(cond["context"]), Conditioning(uncond["context"])
    if family.zeros_for_empty_negative and not negative:
        # diffusers' force_zeros_for_empty_prompt (SDXL base): an empty negative is all zeros.
        uncond = {k: np.zeros_like(v) for k, v in uncond.items()}
    ids, neg_ids = sdxl_time_ids(family.time_ids, height=height, width=width, original_size=original_size,
                                 crops_coords_top_left=crops_coords_top_left, target_size=target_size,
                                 aesthetic_score=aesthetic_score, negative_aesthetic_score=negative_aesthetic_score)
    return (Conditioning(cond["context"], cond["pooled"], ids),
            Conditioning(uncond["context"], uncond["pooled"], neg_ids))
