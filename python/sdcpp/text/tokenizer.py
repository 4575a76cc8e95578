"""CLIP BPE tokenizer (SD1, SD2, SDXL), id-for-id identical to transformers' `CLIPTokenizer`.

The vocabulary is open_clip's `bpe_simple_vocab_16e6.txt.gz` (shipped in `sdcpp/data`); vocab and merges are
rebuilt from it the way open_clip's `SimpleTokenizer` does. The pipeline itself runs on the `tokenizers` library,
configured as transformers 5 configures `CLIPTokenizer` (normalizer NFC -> `\\s+`->" " -> lowercase; CLIP's split
regex; byte-level mapping; BPE with a `</w>` end-of-word suffix). That is transformers' only CLIP tokenizer now,
and what diffusers pipelines use, so matching it by construction beats a hand-written BPE that could drift.
Differences from open_clip's own tokenizer (checked on the test prompts, ftfy stubbed by NFC): open_clip also
runs ftfy and `html.unescape` ("&amp;" -> "&"), and names its specials `<start_of_text>` / `<end_of_text>`, so a
literal "<|endoftext|>" in a prompt is plain text there. Everything else gives the same ids.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources

import numpy as np

BOS_ID = 49406  # <|startoftext|>
EOS_ID = 49407  # <|endoftext|>; also the pad id of SD1 and SDXL's first encoder
VOCAB_SIZE = 49408
MAX_LENGTH = 77
# SD2 and SDXL's second encoder (OpenCLIP ViT-H/G) pad with 0: open_clip's tokenize() fills with zeros, and
# diffusers' tokenizer_2 / SD2 tokenizer configs set pad_token "!" (id 0).
OPEN_CLIP_PAD_ID = 0

_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_N_MERGES = 49152 - 256 - 2  # open_clip keeps merge lines [1 : 49152-256-2+1] (line 0 is a "#version" header)
# CLIP's pre-tokenization regex (OpenAI CLIP's SimpleTokenizer.pat; transformers writes it the same way).
_SPLIT_REGEX = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-char table (the alphabet the BPE merges are written in).

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100 onwards, in byte order.
    Insertion order (printable bytes first, then the rest) is the order of the first 256 vocab ids.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def load_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges) built from the packaged BPE file, exactly as open_clip builds them."""
    data = resources.files("sdcpp").joinpath("data", _VOCAB_FILE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + list(_SPECIALS)
    if len(tokens) != VOCAB_SIZE:
        raise RuntimeError(f"{_VOCAB_FILE}: built {len(tokens)} tokens, expected {VOCAB_SIZE}")
    return {tok: i for i, tok in enumerate(tokens)}, merges


@lru_cache(maxsize=2)
def _backend(split_bang: bool = False):
    """The shared `tokenizers.Tokenizer` (building 49k merges costs ~0.1 s, so once per process)."""
    from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    vocab, merges = load_vocab()
    tok = Tokenizer(
        BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
            unk_token=_SPECIALS[1], fuse_unk=False, dropout=None)
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    # ByteLevel keeps its default use_regex=True: transformers does, and a second (GPT-2) split can in principle
    # change a piece boundary, so dropping it would risk an id mismatch.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_REGEX), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    # A literal "<|endoftext|>" in a prompt becomes the special id (matched on the raw text, before
    # lower-casing), as in transformers and OpenAI's CLIP tokenizer.
    specials = [*_SPECIALS, "!"] if split_bang else list(_SPECIALS)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


class ClipTokenizer:
    """`encode(text)` -> raw ids; `tok(texts)` -> ([B, 77] int32 ids with BOS/EOS/padding, [B] EOS positions)."""

    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self, pad_id: int = EOS_ID, *, split_bang: bool = False):
        """pad_id: EOS_ID for SD1 / SDXL encoder 1, OPEN_CLIP_PAD_ID (0) for SD2 / SDXL encoder 2.

        split_bang=True reproduces diffusers' SD2 / SDXL tokenizer_2, whose pad token "!" is registered as a
        special token, so every "!" in a prompt becomes its own id 0 ("!!!" -> 0 0 0 instead of "!!!</w>").
        open_clip, Stability's reference code and A1111 do not do that (huggingface/diffusers#4153), hence off.
        """
        self.pad_id = int(pad_id)
        self._tok = _backend(bool(split_bang))

    @property
    def vocab(self) -> dict[str, int]:
        return load_vocab()[0]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`: no BOS/EOS, no truncation."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def __call__(self, texts: str | list[str], max_length: int = MAX_LENGTH) -> tuple[np.ndarray, np.ndarray]:
        """Truncate each text to max_length-2 tokens, wrap in BOS/EOS, pad with pad_id.

        Returns (ids int32 [B, max_length], eos int64 [B]): eos is the first EOS position, i.e. the
        token CLIP pools (HF and open_clip both take the first 49407 / the argmax id).
        """
        if isinstance(texts, str):
            texts = [texts]
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        ids = np.full((len(texts), max_length), self.pad_id, dtype=np.int32)
        eos = np.zeros(len(texts), dtype=np.int64)
        for row, body in enumerate(self.encode_batch(texts)):
            seq = [BOS_ID, *body[: max_length - 2], EOS_ID]
            ids[row, : len(seq)] = seq
            eos[row] = seq.index(EOS_ID)
        return ids, eos
