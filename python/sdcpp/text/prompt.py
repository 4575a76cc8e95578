"""A1111 prompt syntax: emphasis weights, BREAK, and 75-token chunking for prompts longer than CLIP's 77.

Behaviour follows AUTOMATIC1111/stable-diffusion-webui: `modules/prompt_parser.py` (`parse_prompt_attention`),
`modules/sd_hijack_clip.py` (`tokenize_line`, `empty_chunk`, `process_tokens`) and `modules/sd_emphasis.py`
("Original" emphasis), with textual-inversion embeddings placed as its `tokenize_line` places them. Prompt editing
and alternation (`[a:b:0.5]`, `[a|b]`) come before this, in text/schedule.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .tokenizer import BOS_ID, EOS_ID, ClipTokenizer

CHUNK_TOKENS = 75  # prompt tokens per chunk
CHUNK_LENGTH = CHUNK_TOKENS + 2  # plus BOS and EOS: one CLIP forward pass
COMMA_BACKTRACK = 20  # A1111 option comma_padding_backtrack (default 20); 0 disables

_MAX_WEIGHT = float(np.finfo(np.float32).max)
_UP = 1.1  # "(x)"
_DOWN = 1 / 1.1  # "[x]"

# Token alternatives, tried in this order (same set and order as A1111's re_attention).
_RE_ATTENTION = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\       # escapes; a lone backslash escapes nothing and vanishes
    | \( | \[                                   # openers
    | :\s*([+-]?[.\d]+)\s*\)                    # ":1.3)" closes "(" with an explicit weight
    | \) | \]                                   # closers
    | [^\\()\[\]:]+                             # plain text
    | :                                         # a colon that is not a weight
    """,
    re.X,
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_BREAK = ("BREAK", -1.0)  # A1111's marker fragment: weight -1 tells it apart from the word "BREAK"


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) fragments, exactly like A1111's `parse_prompt_attention`.

    `(x)` x1.1, `[x]` /1.1, `(x:1.3)` x1.3, nesting multiplies, unclosed brackets still apply at the end,
    stray closers are literal text, `\\(` `\\)` `\\[` `\\]` `\\\\` are escapes, `BREAK` becomes ("BREAK", -1).
    Adjacent fragments with equal weight are merged (so two BREAKs in a row merge into "BREAKBREAK" text, as
    in A1111). A malformed weight such as `(x:1.2.3)` raises ValueError, as A1111's float() does.
    """
    res: list[list] = []
    open_round: list[int] = []  # index into res where each unclosed "(" / "[" began
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for frag in res[start:]:
            frag[1] *= factor

    for m in _RE_ATTENTION.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            res.append([tok[1:], 1.0])
        elif tok == "(":
            open_round.append(len(res))
        elif tok == "[":
            open_square.append(len(res))
        elif weight is not None and open_round:
            try:
                factor = float(weight)
            except ValueError:
                raise ValueError(f"bad emphasis weight {weight!r} in prompt {text!r}") from None
            scale_from(open_round.pop(), factor)
        elif tok == ")" and open_round:
            scale_from(open_round.pop(), _UP)
        elif tok == "]" and open_square:
            scale_from(open_square.pop(), _DOWN)
        else:  # plain text, or a closer / ":w)" with nothing open: literal
            for i, part in enumerate(_RE_BREAK.split(tok)):
                if i:
                    res.append(list(_BREAK))
                res.append([part, 1.0])

    for start in open_round:  # unbalanced openers act as if closed at the end
        scale_from(start, _UP)
    for start in open_square:
        scale_from(start, _DOWN)

    if not res:
        return [("", 1.0)]
    merged = [res[0]]
    for frag in res[1:]:
        if frag[1] == merged[-1][1]:
            merged[-1][0] += frag[0]
        else:
            merged.append(frag)
    return [(t, w) for t, w in merged]


EMBEDDING_SLOT = -1  # id of a token position an embedding vector fills (PromptTokens.embeddings says which)


@dataclass
class PromptTokens:
    """A prompt as n_chunks CLIP sequences of 77, concatenated along the sequence axis.

    ids: int32 [n_chunks * 77], each chunk BOS + 75 tokens + EOS, padding after the first EOS is the
    tokenizer's pad_id; weights: float32 [n_chunks * 77], 1.0 on BOS/EOS/padding; token_count: prompt tokens
    as A1111 counts them (the "n/75" shown in its UI). embeddings: (position in ids, Embedding) of each
    textual-inversion embedding used; its n_vectors positions from there hold EMBEDDING_SLOT.
    """

    ids: np.ndarray
    weights: np.ndarray
    token_count: int
    embeddings: tuple = ()

    @property
    def n_chunks(self) -> int:
        return len(self.ids) // CHUNK_LENGTH

    def chunks(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids [n_chunks, 77], weights [n_chunks, 77]): one row per text-encoder pass."""
        return self.ids.reshape(-1, CHUNK_LENGTH), self.weights.reshape(-1, CHUNK_LENGTH)


def _finish_chunk(tokens: list[int], mults: list[float], pad_id: int) -> tuple[list[int], list[float]]:
    """BOS + tokens + EOS, padded to 77; after the first EOS everything becomes pad_id (A1111 process_tokens,
    which only matters when pad_id != EOS, i.e. SD2 / SDXL encoder 2)."""
    fill = CHUNK_TOKENS - len(tokens)
    ids = [BOS_ID, *tokens, *[EOS_ID] * fill, EOS_ID]
    end = ids.index(EOS_ID)
    ids[end + 1 :] = [pad_id] * (len(ids) - end - 1)
    return ids, [1.0, *mults, *[1.0] * fill, 1.0]


def embedding_index(embeddings: dict, tokenizer: ClipTokenizer) -> dict[int, list]:
    """{first token id: [(token ids of the name, Embedding), ...] longest first}, A1111's ids_lookup."""
    index: dict[int, list] = {}
    for name, emb in embeddings.items():
        ids = tuple(tokenizer.encode(name))
        if ids:
            index.setdefault(ids[0], []).append((ids, emb))
    for entries in index.values():
        entries.sort(key=lambda e: -len(e[0]))
    return index


def tokenize_prompt(
    prompt: str,
    tokenizer: ClipTokenizer,
    *,
    emphasis: bool = True,
    comma_backtrack: int = COMMA_BACKTRACK,
    embeddings: dict | None = None,
) -> PromptTokens:
    """A1111's `tokenize_line`: parse emphasis, tokenize each fragment on its own, fill 75-token chunks.

    When a chunk is full and a comma lies within the last `comma_backtrack` tokens, the tokens after that comma
    move to the next chunk (A1111's comma_padding_backtrack) so a phrase is not cut in half. BREAK closes the
    current chunk, even an empty one. emphasis=False treats the whole prompt as plain text, weight 1.
    `embeddings` (from `embedding_index`): where a fragment's tokens spell an embedding's name, its vectors take
    n_vectors positions with the fragment's weight; one that does not fit in the current chunk starts the next.
    """
    parsed = parse_prompt_attention(prompt) if emphasis else [(prompt, 1.0)]
    for text, weight in parsed:
        if text and not abs(weight) <= _MAX_WEIGHT:  # "(" * 5000 is 1.1**5000: inf, then NaN images
            raise ValueError(f"prompt emphasis weight {weight:g} of {text.strip()[:40]!r} is not a finite float32 "
                             "(too many nested brackets?)")
    comma = tokenizer.vocab[",</w>"]
    pad = tokenizer.pad_id
    encoded = tokenizer.encode_batch([text for text, _ in parsed])
    lookup = embeddings or {}

    ids: list[int] = []
    weights: list[float] = []
    used: list[tuple] = []
    n_chunks = 0
    token_count = 0
    chunk: list[int] = []
    mults: list[float] = []
    fixes: list[tuple] = []  # (offset in chunk, Embedding)
    last_comma = -1

    def close(is_last: bool = False) -> None:
        nonlocal chunk, mults, fixes, last_comma, n_chunks, token_count
        token_count += len(chunk) if is_last else CHUNK_TOKENS
        done_ids, done_w = _finish_chunk(chunk, mults, pad)
        used.extend((len(ids) + 1 + offset, emb) for offset, emb in fixes)
        ids.extend(done_ids)
        weights.extend(done_w)
        n_chunks += 1
        chunk, mults, fixes, last_comma = [], [], [], -1

    def find(toks, pos):
        for name_ids, emb in lookup.get(toks[pos], ()):
            if tuple(toks[pos : pos + len(name_ids)]) == name_ids:
                return emb, len(name_ids)
        return None, 1

    for toks, (text, weight) in zip(encoded, parsed, strict=True):
        if (text, weight) == _BREAK:
            close()
            continue
        pos = 0
        while pos < len(toks):
            tok = toks[pos]
            if tok == comma:
                last_comma = len(chunk)
            elif (
                comma_backtrack
                and len(chunk) == CHUNK_TOKENS
                and last_comma != -1
                and len(chunk) - last_comma <= comma_backtrack
            ):
                cut = last_comma + 1
                moved, moved_w = chunk[cut:], mults[cut:]
                moved_fixes = [(o - cut, e) for o, e in fixes if o >= cut]
                chunk, mults, fixes = chunk[:cut], mults[:cut], [(o, e) for o, e in fixes if o < cut]
                close()
                chunk, mults, fixes = moved, moved_w, moved_fixes
            if len(chunk) == CHUNK_TOKENS:
                close()
            emb, length = find(toks, pos)
            if emb is None:
                chunk.append(tok)
                mults.append(weight)
            else:
                if len(chunk) + emb.n_vectors > CHUNK_TOKENS:
                    close()
                fixes.append((len(chunk), emb))
                chunk.extend([EMBEDDING_SLOT] * emb.n_vectors)
                mults.extend([weight] * emb.n_vectors)
            pos += length

    if chunk or n_chunks == 0:
        close(is_last=True)
    return PromptTokens(np.asarray(ids, np.int32), np.asarray(weights, np.float32), token_count, tuple(used))


def pad_chunks(tokens: PromptTokens, n_chunks: int, pad_id: int) -> PromptTokens:
    """Append empty chunks (the encoding of the prompt "") until there are n_chunks; pad_id as the tokenizer's."""
    missing = n_chunks - tokens.n_chunks
    if missing <= 0:
        return tokens
    empty_ids, empty_w = _finish_chunk([], [], pad_id)
    return PromptTokens(
        np.concatenate([tokens.ids, np.tile(np.asarray(empty_ids, np.int32), missing)]),
        np.concatenate([tokens.weights, np.tile(np.asarray(empty_w, np.float32), missing)]),
        tokens.token_count,
        tokens.embeddings,
    )


def tokenize_pair(
    prompt: str, negative: str, tokenizer: ClipTokenizer, **kwargs
) -> tuple[PromptTokens, PromptTokens]:
    """Prompt and negative prompt, the shorter padded with empty chunks so both have the same length.

    This is A1111 with "Pad prompt/negative prompt" (pad_cond_uncond) on, which pads with the empty prompt's
    conditioning; with it off A1111 runs cond and uncond separately at their own lengths instead.
    """
    pos = tokenize_prompt(prompt, tokenizer, **kwargs)
    neg = tokenize_prompt(negative, tokenizer, **kwargs)
    n = max(pos.n_chunks, neg.n_chunks)
    return pad_chunks(pos, n, tokenizer.pad_id), pad_chunks(neg, n, tokenizer.pad_id)


def apply_weights(hidden: np.ndarray, weights: np.ndarray, chunk_length: int | None = CHUNK_LENGTH) -> np.ndarray:
    """A1111 "Original" emphasis: scale each token's hidden state by its weight, then rescale so the mean of
    the tensor equals the mean before weighting.

    hidden [T, C], weights [T]. A1111 encodes (and so rescales) one 77-token chunk at a time, so by default
    the mean is restored per chunk of `chunk_length`; chunk_length=None uses the whole tensor. For SDXL apply
    it to each encoder's output separately, before concatenating them, as A1111 does.
    """
    h = np.asarray(hidden)
    w = np.asarray(weights, dtype=np.float32)
    if h.ndim != 2 or w.shape != (h.shape[0],):
        raise ValueError(f"apply_weights: hidden must be [T, C] and weights [T], got {h.shape} and {w.shape}")
    step = chunk_length or h.shape[0]
    if h.shape[0] % step:
        raise ValueError(f"apply_weights: {h.shape[0]} tokens is not a multiple of chunk_length {step}")
    work = np.result_type(h.dtype, np.float32)
    out = h.astype(work, copy=True)
    for s in range(0, h.shape[0], step):
        m = w[s : s + step]
        if np.all(m == 1.0):
            continue  # nothing to do; skipping avoids a (1 +- eps) rescale
        z = out[s : s + step]
        before = z.mean(dtype=np.float64)
        z *= m[:, None]
        after = z.mean(dtype=np.float64)
        if after != 0.0:  # A1111 would divide by zero here and produce NaNs
            z *= before / after
    return out.astype(h.dtype, copy=False)
