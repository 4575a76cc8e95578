"""ClipTokenizer vs transformers' CLIPTokenizer built from the same packaged vocabulary (no downloads)."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from importlib import resources

import numpy as np
import pytest

from sdcpp.text.tokenizer import BOS_ID, EOS_ID, OPEN_CLIP_PAD_ID, VOCAB_SIZE, ClipTokenizer, load_vocab

_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"  # open_clip_torch 3.3.0


def _vocab_bytes() -> bytes:
    return resources.files("sdcpp").joinpath("data", "bpe_simple_vocab_16e6.txt.gz").read_bytes()


def _reference_vocab() -> tuple[list[str], list[str]]:
    """Vocab list and merge lines, rebuilt here independently of sdcpp (open_clip's recipe)."""
    lines = gzip.decompress(_vocab_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    alphabet = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
    return vocab + ["<|startoftext|>", "<|endoftext|>"], merges


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    vocab, merges = _reference_vocab()
    d = tmp_path_factory.mktemp("clip_tok")
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def hf_tok(hf_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPTokenizer.from_pretrained(str(hf_dir))


@pytest.fixture(scope="module")
def hf_tok_zero_pad(hf_dir):
    """Like diffusers' SD2 tokenizer / SDXL tokenizer_2, whose config sets pad_token "!" (id 0)."""
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPTokenizer.from_pretrained(str(hf_dir), pad_token="!")


_WORDS = (
    "a photo of an astronaut riding horse on mars cat dog masterpiece best quality highly detailed portrait "
    "landscape 8k uhd octane render trending artstation by greg rutkowski cinematic lighting sunset over "
    "mountains lake reflection cyberpunk city neon rain night girl boy smiling wearing red dress hat"
).split()
_UPPER = ["HELLO", "NASA", "McDonald", "iPhone", "DSLR", "UHD", "BREAK", "Break", "ThisIsCamelCase"]
_UNICODE = [
    "café", "naïve", "Ångström", "façade", "Straße", "ÉCOLE", "e\u0301te\u0301",  # combining accent: NFC matters
    "İstanbul", "ǅungla", "ﬁnal", "Ⅻ", "東京タワー", "北京", "한국어", "русский", "ελληνικά", "עברית", "العربية",
    "हिन्दी", "ไทย", "🐱", "👍🏽", "👨\u200d👩\u200d👧", "🇯🇵", "✨✨", "☕️", "½", "²³", "①", "٣", "𝔘𝔫𝔦",
    "zero\u200bwidth", "\ufeffbom",
]
_SYNTAX = ["(", ")", "[", "]", ":", "\\", "(word:1.3)", "((x))", "[y]", "\\(", "\\)", "(:1.3)", "{a|b}", "<lora:x:1>"]
_NUMBERS = ["1", "42", "2024", "3.14", "1,000,000", "-5", "1e10", "0x1F", "007", "12:30", "50%"]
_PUNCT = ["!!!", "...", "?!", "--", "—", "…", ";;", "~~", "***", "#$%&", "@@", "«»", "“quoted”", "'single'", "`"]
_APOS = ["it's", "we'll", "they're", "I've", "I'm", "he'd", "don't", "O'Neil", "cat's'", "IT'S", "’s", "rock'n'roll"]
_SPACES = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", " \t\n "]
_SPECIAL = ["<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>", "<|endoftext", "x<|endoftext|>y", "&amp;", "&lt;b&gt;"]


def _prompts() -> list[str]:
    """>= 200 seeded prompts, each mixing words with the awkward categories above."""
    rng = random.Random(1234)
    pools = [_WORDS] * 4 + [_UPPER, _UNICODE, _UNICODE, _SYNTAX, _NUMBERS, _PUNCT, _APOS, _SPECIAL]
    out = ["", " ", "a", "A", "\n\t", "😀", "東京", "it's", "(((", "\\\\"]
    for i in range(260):
        n = rng.randint(1, 12) if i % 5 else rng.randint(60, 140)  # every 5th is well past 77 tokens
        parts = []
        for _ in range(n):
            parts.append(rng.choice(rng.choice(pools)))
            parts.append(rng.choice(_SPACES) if rng.random() < 0.2 else rng.choice([" ", "", ", "]))
        out.append("".join(parts))
    return out


PROMPTS = _prompts()


def test_vocab_file_is_open_clip_s():
    assert hashlib.sha256(_vocab_bytes()).hexdigest() == _VOCAB_SHA256
    vocab, merges = load_vocab()
    ref_vocab, ref_merges = _reference_vocab()
    assert len(vocab) == VOCAB_SIZE == len(ref_vocab)
    assert vocab == {t: i for i, t in enumerate(ref_vocab)}
    assert [" ".join(m) for m in merges] == ref_merges
    assert vocab["<|startoftext|>"] == BOS_ID and vocab["<|endoftext|>"] == EOS_ID
    assert vocab["a</w>"] == 320 and vocab[",</w>"] == 267  # well-known SD ids


def test_prompt_set_is_demanding():
    assert len(PROMPTS) >= 200
    tok = ClipTokenizer()
    assert sum(len(tok.encode(p)) > 77 for p in PROMPTS) >= 40


def test_encode_matches_transformers(hf_tok):
    tok = ClipTokenizer()
    bad = [p for p in PROMPTS if tok.encode(p) != hf_tok(p, add_special_tokens=False)["input_ids"]]
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:3]!r}"


def _hf_call(ref_tok, texts):
    return ref_tok(texts, max_length=77, truncation=True, padding="max_length", return_tensors="np")["input_ids"]


def _mismatches(ids, ref) -> list[str]:
    return [p for p, a, b in zip(PROMPTS, ids, ref, strict=True) if not np.array_equal(a, b)]


def test_call_matches_transformers_truncated_and_padded(hf_tok):
    ids, eos = ClipTokenizer()(PROMPTS)
    ref = _hf_call(hf_tok, PROMPTS)
    assert ids.dtype == np.int32 and ids.shape == (len(PROMPTS), 77)
    bad = _mismatches(ids, ref)
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:3]!r}"
    # eos = the token CLIP pools: HF takes the first EOS
    assert np.array_equal(eos, (ref == EOS_ID).argmax(axis=1))


def test_zero_pad_matches_open_clip_layout(hf_tok):
    """SD2 / SDXL encoder 2: same ids as SD1 up to the first EOS, zeros after it (open_clip's tokenize())."""
    ids, eos = ClipTokenizer(pad_id=OPEN_CLIP_PAD_ID)(PROMPTS)
    ref = _hf_call(hf_tok, PROMPTS)
    # zeros after the appended EOS only: a literal "<|endoftext|>" inside the prompt stays as it is
    seq_len = np.array([min(len(hf_tok(p, add_special_tokens=False)["input_ids"]), 75) + 2 for p in PROMPTS])
    ref[np.arange(ref.shape[1]) >= seq_len[:, None]] = OPEN_CLIP_PAD_ID
    first_eos = (ref == EOS_ID).argmax(axis=1)
    bad = _mismatches(ids, ref)
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:3]!r}"
    assert np.array_equal(eos, first_eos)
    assert np.array_equal(eos, ids.argmax(axis=1))  # open_clip pools at argmax(ids)


def test_split_bang_matches_diffusers_tokenizer_2(hf_tok_zero_pad):
    """split_bang=True equals a CLIPTokenizer with pad_token "!" (diffusers' SD2 / SDXL tokenizer_2)."""
    ids, _ = ClipTokenizer(pad_id=OPEN_CLIP_PAD_ID, split_bang=True)(PROMPTS)
    bad = _mismatches(ids, _hf_call(hf_tok_zero_pad, PROMPTS))
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:3]!r}"
    assert sum("!" in p for p in PROMPTS) >= 20  # the quirk was exercised
    # the example of huggingface/diffusers#4153: open_clip gives 256 748 995, diffusers' tokenizer_2 six zeros
    assert ClipTokenizer(pad_id=0).encode("! !! !!!") == [256, 748, 995]
    assert ClipTokenizer(pad_id=0, split_bang=True).encode("! !! !!!") == [0] * 6


def test_zero_padding_layout():
    ids, eos = ClipTokenizer(pad_id=0)("a cat")
    assert ids[0, :4].tolist() == [BOS_ID, 320, 2368, EOS_ID] and eos.tolist() == [3]
    assert not ids[0, 4:].any()
    ids, _ = ClipTokenizer()("a cat")
    assert (ids[0, 3:] == EOS_ID).all()


def test_truncation_keeps_eos_and_other_lengths():
    tok = ClipTokenizer()
    long = "cat " * 100
    ids, eos = tok([long, "dog"])
    assert ids[0, 0] == BOS_ID and ids[0, -1] == EOS_ID and (ids[0, 1:76] == tok.encode("cat")[0]).all()
    assert eos.tolist() == [76, 2]
    short, _ = tok("cat " * 100, max_length=10)
    assert short.shape == (1, 10) and short[0, -1] == EOS_ID
    with pytest.raises(ValueError):
        tok("x", max_length=1)
