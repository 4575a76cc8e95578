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

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .._native import core
from ..models.clip import TextEncoder
from ..text import VOCAB_SIZE, ClipTokenizer, apply_weights, tokenize_pair, tokenize_prompt
from ..text.embeddings import compatible
from ..text.prompt import EMBEDDING_SLOT, embedding_index
from ..text.schedule import prompt_schedule, text_at
from ..text.tokenizer import BOS_ID, EOS_ID

TOKEN_TABLE = "text_model.embeddings.token_embedding.weight"


def fold_token_ids(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Fit CLIP token ids into a smaller vocabulary (only the tiny test/demo models have one).

    BOS -> vocab-2, EOS -> vocab-1 (still the largest id, where CLIP pools), every other id modulo vocab-2.
    Real encoders (49408 ids) get their ids unchanged."""
    ids = np.asarray(ids)
    if vocab_size >= VOCAB_SIZE:
        return ids
    folded = np.where(ids == EOS_ID, vocab_size - 1, np.where(ids == BOS_ID, vocab_size - 2, ids % (vocab_size - 2)))
    return np.where(ids == EMBEDDING_SLOT, ids, folded).astype(ids.dtype)  # slots are filled later


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

    def __init__(self, weights, n_threads: int = 0, precision: str = "f32"):
        self.family = weights.config.family  # which encoders, in which order, and how they condition the UNet
        self.weights = weights
        self.encoders = [TextEncoder(weights, e.component, n_threads=n_threads, precision=precision)
                         for e in self.family.encoders]
        self.tokenizers = [ClipTokenizer(e.config.pad_id) for e in self.encoders]
        self.embeddings: dict = {}
        self._indexes = [{} for _ in self.encoders]

    def set_embeddings(self, embeddings: dict) -> dict:
        """Use these textual-inversion embeddings ({name: Embedding}) in prompts from now on; those that do not fit
        the encoders are skipped (A1111). Returns the ones in use."""
        self.embeddings = compatible(embeddings, {e.component: e.hidden_size for e in self.encoders})
        self._indexes = [embedding_index(self.embeddings, tok) for tok in self.tokenizers]
        return self.embeddings

    @property
    def max_clip_skip(self) -> int:
        """The largest clip_skip that still runs one encoder layer (SDXL already starts from the penultimate)."""
        depth = min(enc.n_layers for enc in self.encoders)
        return max(1, depth - 1) if self.family.hidden_state == "penultimate" else depth

    def tokens(self, prompt: str, negative: str) -> list[tuple]:
        """Per encoder: (prompt ids [k, 77], prompt weights [k, 77], negative ids, negative weights), folded into
        the encoder's vocabulary."""
        out = []
        for enc, tok, index in zip(self.encoders, self.tokenizers, self._indexes, strict=True):
            pos, neg = tokenize_pair(prompt, negative, tok, embeddings=index)
            (pi, pw), (ni, nw) = pos.chunks(), neg.chunks()
            out.append((fold_token_ids(pi, enc.vocab_size), pw, fold_token_ids(ni, enc.vocab_size), nw))
        return out

    def _layer(self, clip_skip: int | None) -> tuple[int, bool]:
        skip = clip_skip or 1  # checked against max_clip_skip by Options.resolved
        if self.family.hidden_state == "penultimate":
            return -1 - skip, False
        return -skip, True

    @contextmanager
    def _vectors_in_table(self, enc, ids: np.ndarray, embeddings):
        """Textual inversion: give each (position, Embedding) of `embeddings` (flat positions in `ids`) token ids no
        row of `ids` uses and write its vectors into those rows of the encoder's token table for the duration, so
        the encoder sees them exactly where A1111 splices them into the embedding output. Restored afterwards."""
        if not embeddings:
            yield ids
            return
        store, name = self.weights._store, f"{enc.component}.{TOKEN_TABLE}"
        ids = ids.copy()
        flat = ids.reshape(-1)
        taken = set(np.unique(flat).tolist())
        # below BOS and EOS (the two largest ids, also after folding) so pooling still finds the EOS as the largest
        free = (i for i in range(enc.vocab_size - 3, 0, -1) if i not in taken)
        rows: dict[int, np.ndarray] = {}
        assigned: dict[str, list[int]] = {}
        for pos, emb in embeddings:
            vec = emb.vectors[enc.component]
            if emb.name not in assigned:
                assigned[emb.name] = [next(free) for _ in range(len(vec))]
                rows.update(zip(assigned[emb.name], vec, strict=True))
            flat[pos:pos + len(vec)] = assigned[emb.name]
        table_type = store.type(name)
        original = store.get(name)
        patched = original.copy()
        row_bytes = len(original) // enc.vocab_size
        for i, v in rows.items():
            patched[i * row_bytes:(i + 1) * row_bytes] = core().convert(
                np.ascontiguousarray(v, np.float32), "f32", 1, enc.hidden_size, table_type)
        store.set(name, patched)
        try:
            yield ids
        finally:
            store.set(name, original)

    def encode_texts(self, texts: list[str], *, clip_skip: int | None = None) -> list[dict]:
        """Each text on its own (its own chunk count), every chunk of every text in one pass per encoder:
        [{"context": [1, 77k, D], "pooled": [1, P] (SDXL)}, ...]."""
        layer, final_norm = self._layer(clip_skip)
        hidden: list[list] = [[] for _ in texts]
        pooled: list = [None] * len(texts)
        for enc, tok, index in zip(self.encoders, self.tokenizers, self._indexes, strict=True):
            toks = [tokenize_prompt(t, tok, embeddings=index) for t in texts]
            ids = np.concatenate([fold_token_ids(t.chunks()[0], enc.vocab_size) for t in toks])
            starts = np.cumsum([0] + [t.n_chunks for t in toks])
            used = [(int(starts[k]) * ids.shape[1] + pos, emb) for k, t in enumerate(toks)
                    for pos, emb in t.embeddings]
            with self._vectors_in_table(enc, ids, used) as ids:
                out = enc.encode(ids, layer=layer, final_norm=final_norm,
                                 pooled=enc.component == self.family.pooled_from)
            for k, t in enumerate(toks):
                rows = slice(starts[k], starts[k + 1])
                h = out["hidden"][rows].reshape(-1, out["hidden"].shape[-1])
                hidden[k].append(apply_weights(h, t.weights))
                if "text_embeds" in out:
                    pooled[k] = out["text_embeds"][rows][:1]  # the first chunk's, as A1111
        result = []
        for k in range(len(texts)):
            d = {"context": np.concatenate(hidden[k], axis=-1)[None]}
            if self.family.pooled_from:
                d["pooled"] = pooled[k]
            result.append(d)
        return result

    def encode(self, prompt: str, negative: str = "", *, clip_skip: int | None = None) -> tuple[dict, dict]:
        """(cond, uncond) dicts of arrays batched 1: "context", and for SDXL "pooled" (no time ids yet)."""
        layer, final_norm = self._layer(clip_skip)
        hidden = {"cond": [], "uncond": []}
        pooled = {}
        for enc, (pi, pw, ni, nw), index, tok in zip(self.encoders, self.tokens(prompt, negative), self._indexes,
                                                     self.tokenizers, strict=True):
            k = len(pi)
            ids = np.concatenate([pi, ni])
            used = []
            if index:
                pos, neg = tokenize_pair(prompt, negative, tok, embeddings=index)
                used = list(pos.embeddings) + [(k * ids.shape[1] + p, e) for p, e in neg.embeddings]
            # One graph for every chunk of both prompts.
            with self._vectors_in_table(enc, ids, used) as ids:
                out = enc.encode(ids, layer=layer, final_norm=final_norm,
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
                  target_size=None, aesthetic_score: float = 6.0, negative_aesthetic_score: float = 2.5,
                  negative_original_size=None, negative_crops_coords_top_left=None, negative_target_size=None):
    """(cond, uncond) time ids [1, n] as diffusers builds them (sizes are (height, width)); `kind` is the family's
    time_ids ("size": SDXL base, "aesthetic": refiner). As in diffusers' defaults, the base model's uncond ids
    equal the cond ids unless negative_* sizes are given, while the refiner's uncond crop is (0, 0)."""
    original = tuple(original_size or (height, width))
    crops = tuple(crops_coords_top_left)
    if kind == "aesthetic":
        neg_original = tuple(negative_original_size or original)
        neg_crops = tuple(negative_crops_coords_top_left or (0, 0))
        pos, neg = (*original, *crops, aesthetic_score), (*neg_original, *neg_crops, negative_aesthetic_score)
    else:
        target = tuple(target_size or (height, width))
        pos = (*original, *crops, *target)
        neg = (*(negative_original_size or original), *(negative_crops_coords_top_left or crops),
               *(negative_target_size or target))
    return np.array([pos], np.float32), np.array([neg], np.float32)


@dataclass
class Schedule:
    """Conditioning that may change during sampling (A1111 prompt editing / alternation): entries [(end_step,
    Conditioning)], the k-th used while the sampling step (0-based) is <= its end_step; `empty` is the encoding
    of an empty chunk, appended to the shorter of cond and uncond at a step (A1111 pads with it too); `zeros`: the
    uncond is all zeros shaped like the cond (SDXL base, empty negative)."""

    entries: list
    empty: Conditioning | None = None
    zeros: bool = False

    @property
    def changes(self) -> bool:
        return len(self.entries) > 1

    def at(self, step: int) -> Conditioning:
        return self.entries[text_at([(end, None) for end, _ in self.entries], step)][1]


def pad_context(context: np.ndarray, tokens: int, empty: np.ndarray) -> np.ndarray:
    """context [B, T, D] extended to `tokens` with copies of the empty chunk [1, 77, D]."""
    missing = tokens - context.shape[1]
    if missing <= 0:
        return context
    reps = -(-missing // empty.shape[1])
    fill = np.repeat(np.tile(empty, (1, reps, 1))[:, :missing], context.shape[0], axis=0)
    return np.concatenate([context, fill], axis=1)


def build_conditioning(encoder: PromptEncoder, prompt: str, negative: str, *, height: int, width: int,
                       **options) -> tuple[Conditioning, Conditioning]:
    """(cond, uncond) of a prompt pair without prompt editing (its schedules at their first step); `options` as
    for build_schedules."""
    cond, uncond = build_schedules(encoder, prompt, negative, height=height, width=width,
                                   steps=options.pop("steps", 1), **options)
    return cond.entries[0][1], uncond.entries[0][1]


def build_schedules(encoder: PromptEncoder, prompt: str, negative: str, *, height: int, width: int, steps: int,
                       hires_steps: int | None = None, clip_skip=None, original_size=None,
                       crops_coords_top_left=(0, 0), target_size=None, aesthetic_score=6.0,
                       negative_aesthetic_score=2.5, negative_original_size=None,
                       negative_crops_coords_top_left=None, negative_target_size=None,
                       prompt_embeds=None) -> tuple[Schedule, Schedule]:
    """(cond, uncond) schedules for a run of `steps` (the hires pass of `hires_steps` after it: see
    text.schedule). `prompt_embeds`: a dict with "context" / "negative_context" (and SDXL "pooled" /
    "negative_pooled") given by the caller instead of the encoded prompt / negative (each optional)."""
    family = encoder.family
    embeds = prompt_embeds or {}
    ps = [(steps if hires_steps is None else hires_steps, prompt)] if "context" in embeds else \
        prompt_schedule(prompt, steps, hires_steps)
    ns = [(ps[-1][0], negative)] if "negative_context" in embeds else prompt_schedule(negative, steps, hires_steps)
    zeros = bool(family.zeros_for_empty_negative and not negative and "negative_context" not in embeds)
    if len(ps) == 1 and len(ns) == 1 and not embeds:
        cond, uncond = encoder.encode(ps[0][1], ns[0][1], clip_skip=clip_skip)
        conds, unconds, empty = [cond], [uncond], None
    else:
        texts = list(dict.fromkeys([""] + [t for _, t in ps] + [t for _, t in ns]))
        encoded = dict(zip(texts, encoder.encode_texts(texts, clip_skip=clip_skip), strict=True))
        conds, unconds = [encoded[t] for _, t in ps], [encoded[t] for _, t in ns]
        empty = encoded[""]
        if "context" in embeds:
            conds = [{"context": embeds["context"], "pooled": embeds.get("pooled")}]
        if "negative_context" in embeds:
            unconds = [{"context": embeds["negative_context"], "pooled": embeds.get("negative_pooled")}]
    if zeros:
        unconds = [{k: np.zeros_like(v) for k, v in unconds[0].items()}]  # reshaped to the cond's at each step
    ids = neg_ids = None
    if family.time_ids:
        ids, neg_ids = sdxl_time_ids(
            family.time_ids, height=height, width=width, original_size=original_size,
            crops_coords_top_left=crops_coords_top_left, target_size=target_size, aesthetic_score=aesthetic_score,
            negative_aesthetic_score=negative_aesthetic_score, negative_original_size=negative_original_size,
            negative_crops_coords_top_left=negative_crops_coords_top_left, negative_target_size=negative_target_size)

    def make(d, time_ids):
        return Conditioning(d["context"], d.get("pooled"), time_ids) if time_ids is not None else \
            Conditioning(d["context"])

    cond_entries = [(end, make(d, ids)) for (end, _), d in zip(ps, conds, strict=True)]
    uncond_entries = [(end, make(d, neg_ids)) for (end, _), d in zip(ns, unconds, strict=True)]
    empty_c = None if empty is None else make(empty, ids)
    return Schedule(cond_entries, empty_c), Schedule(uncond_entries, empty_c, zeros)
