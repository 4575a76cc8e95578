"""A1111 prompt syntax: parse_prompt_attention, 75-token chunking, BREAK, negative padding, apply_weights.

Expected values come from the docstring of A1111's modules/prompt_parser.py parse_prompt_attention and from the
behaviour of modules/sd_hijack_clip.py tokenize_line (AUTOMATIC1111/stable-diffusion-webui).
"""

from __future__ import annotations

import numpy as np
import pytest

from sdcpp.text import (
    BOS_ID,
    CHUNK_LENGTH,
    EOS_ID,
    ClipTokenizer,
    apply_weights,
    pad_chunks,
    parse_prompt_attention,
    tokenize_pair,
    tokenize_prompt,
)

COMMA = 267  # ",</w>"


@pytest.fixture(scope="module")
def tok():
    return ClipTokenizer()


@pytest.fixture(scope="module")
def tok0():
    return ClipTokenizer(pad_id=0)


# --- parse_prompt_attention ------------------------------------------------------------------------------------

# The examples of A1111's docstring, verbatim (float results included: same multiplication order).
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
            (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1),
        ],
    ),
]

MORE_CASES = [
    ("", [("", 1.0)]),
    ("(:1.3)", [("", 1.0)]),  # weight applies to nothing; nothing left
    ("[word]", [("word", 1 / 1.1)]),
    ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
    ("(word:1.3)", [("word", 1.3)]),
    ("(word: 1.3 )", [("word", 1.3)]),  # spaces around the weight are allowed
    ("(word:-1)", [("word", -1.0)]),
    ("((a:2) b)", [("a", 2.2), (" b", 1.1)]),
    ("[a (b) c]", [("a ", 1 / 1.1), ("b", 1.1 / 1.1), (" c", 1 / 1.1)]),
    ("word:1.3)", [("word:1.3)", 1.0)]),  # ":w)" with no "(" open is text
    ("a) b] c", [("a) b] c", 1.0)]),  # stray closers are text
    ("a:b", [("a:b", 1.0)]),
    ("(a:b)", [("a:b", 1.1)]),
    ("[unbalanced", [("unbalanced", 1 / 1.1)]),
    ("\\\\", [("\\", 1.0)]),
    ("a\\b", [("ab", 1.0)]),  # lone backslash vanishes
    ("\\(x\\) \\[y\\]", [("(x) [y]", 1.0)]),
    ("(\\(x\\))", [("(x)", 1.1)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("a\nBREAK\tb", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("aBREAKb break b", [("aBREAKb break b", 1.0)]),  # needs word boundaries, and upper case
    ("BREAK BREAK", [("", 1.0), ("BREAK", -1.0), ("", 1.0), ("BREAK", -1.0), ("", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),  # inside brackets it is no longer a BREAK
    ("(a)(b:1.1)", [("ab", 1.1)]),  # equal weights merge
]


@pytest.mark.parametrize(("text", "expected"), A1111_EXAMPLES + MORE_CASES)
def test_parse_prompt_attention(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


def test_documented_floats_are_exact():
    got = dict(parse_prompt_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."))
    assert got["house"] == 1.5730000000000004 and got["sky"] == 1.4641000000000006


def test_bad_weight_raises():
    with pytest.raises(ValueError):
        parse_prompt_attention("(word:1.2.3)")


# --- tokenize_prompt ---------------------------------------------------------------------------------------------


def test_short_prompt_is_one_plain_chunk(tok, tok0):
    text = "a photo of an astronaut riding a horse on mars"
    pt = tokenize_prompt(text, tok)
    assert pt.n_chunks == 1 and pt.ids.shape == (77,) and pt.ids.dtype == np.int32
    assert np.array_equal(pt.ids, tok(text)[0][0])
    assert (pt.weights == 1.0).all() and pt.weights.dtype == np.float32
    assert pt.token_count == len(tok.encode(text))
    assert np.array_equal(tokenize_prompt(text, tok0).ids, tok0(text)[0][0])  # SD2: zeros after EOS


def test_weights_align_with_tokens(tok):
    pt = tokenize_prompt("a (photorealistic:1.5) [cat]", tok)
    body = [tok.encode("a "), tok.encode("photorealistic"), tok.encode(" "), tok.encode("cat")]
    assert len(body[1]) > 1  # a multi-token word: every piece carries the weight
    n = sum(map(len, body))
    assert pt.ids[: n + 2].tolist() == [BOS_ID, *sum(body, []), EOS_ID]
    expect = [1.0] + [1.0] * len(body[0]) + [1.5] * len(body[1]) + [1.0] * len(body[2]) + [1 / 1.1] * len(body[3])
    assert pt.weights[: n + 1].tolist() == pytest.approx(expect)
    assert (pt.weights[n + 1 :] == 1.0).all()  # EOS and padding


def test_fragments_are_tokenized_separately(tok):
    # A1111 tokenizes each fragment on its own, so "(photo)graph" is not the word "photograph"
    pt = tokenize_prompt("(photo)graph", tok)
    assert pt.ids[1:-1][pt.ids[1:-1] != EOS_ID].tolist() == tok.encode("photo") + tok.encode("graph")
    assert tok.encode("photograph") != tok.encode("photo") + tok.encode("graph")


def test_emphasis_off(tok):
    pt = tokenize_prompt("a (cat:1.5)", tok, emphasis=False)
    assert (pt.weights == 1.0).all() and np.array_equal(pt.ids, tok("a (cat:1.5)")[0][0])


@pytest.mark.parametrize("pad", [EOS_ID, 0])
def test_long_prompt_makes_three_chunks(pad):
    tok = ClipTokenizer(pad_id=pad)
    word = tok.encode("cat")
    pt = tokenize_prompt("cat " * 160, tok)  # 160 tokens, no commas
    ids, w = pt.chunks()
    assert pt.n_chunks == 3 and ids.shape == (3, 77) and pt.ids.shape == (231,)
    assert pt.token_count == 160
    for row in ids[:2]:
        assert row[0] == BOS_ID and row[76] == EOS_ID and row[1:76].tolist() == word * 75
    assert ids[2, 0] == BOS_ID and ids[2, 1:11].tolist() == word * 10 and ids[2, 11] == EOS_ID
    assert (ids[2, 12:] == pad).all()
    assert (w == 1.0).all()


def test_weights_carry_across_chunks(tok):
    pt = tokenize_prompt("(" + "cat " * 100 + ":1.2)", tok)
    ids, w = pt.chunks()
    assert pt.n_chunks == 2
    is_text = ids == tok.encode("cat")[0]
    assert is_text.sum() == 100 and np.allclose(w[is_text], 1.2) and (w[~is_text] == 1.0).all()


def test_comma_backtrack(tok):
    # 70 words, a comma, 10 words: the chunk fills at 75 with the comma 5 tokens back, so those 4 words move on
    text = "cat " * 70 + ", " + "dog " * 10
    ids, _ = tokenize_prompt(text, tok).chunks()
    dog = tok.encode("dog")[0]
    assert ids.shape == (2, 77)
    assert ids[0, 71] == COMMA and ids[0, 72] == EOS_ID and (ids[0, 72:] == EOS_ID).all()
    assert ids[1, 1:11].tolist() == [dog] * 10 and ids[1, 11] == EOS_ID
    # without backtracking the chunk is simply cut at 75
    ids, _ = tokenize_prompt(text, tok, comma_backtrack=0).chunks()
    assert ids[0, 71] == COMMA and ids[0, 72:76].tolist() == [dog] * 4 and ids[1, 1:7].tolist() == [dog] * 6
    # a comma further back than 20 tokens does not count
    ids, _ = tokenize_prompt("cat " * 50 + ", " + "dog " * 30, tok).chunks()
    assert ids[0, 51] == COMMA and ids[0, 75] == dog


def test_break(tok0):
    pt = tokenize_prompt("a cat BREAK a dog", tok0)
    ids, w = pt.chunks()
    assert ids.shape == (2, 77) and (w == 1.0).all()
    assert ids[0, :4].tolist() == [BOS_ID, *tok0.encode("a cat"), EOS_ID] and not ids[0, 4:].any()
    assert ids[1, :4].tolist() == [BOS_ID, *tok0.encode("a dog"), EOS_ID] and not ids[1, 4:].any()
    assert pt.token_count == 75 + 2


def test_break_edge_cases(tok):
    empty = tokenize_prompt("", tok).ids
    assert empty.tolist() == [BOS_ID] + [EOS_ID] * 76
    lead = tokenize_prompt("BREAK a", tok).chunks()[0]
    assert lead.shape[0] == 2 and np.array_equal(lead[0], empty)  # an empty chunk first
    assert tokenize_prompt("a BREAK", tok).n_chunks == 1  # nothing after the last BREAK: no extra chunk
    assert tokenize_prompt("a BREAK BREAK b", tok).n_chunks == 3


def test_literal_eos_in_sd2_chunk(tok0):
    # A1111 process_tokens pads from the first EOS in the chunk, so text after a literal <|endoftext|> is lost
    ids = tokenize_prompt("a <|endoftext|> cat", tok0).ids
    assert ids[:3].tolist() == [BOS_ID, tok0.encode("a")[0], EOS_ID] and not ids[3:].any()


# --- negative prompt padding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pad", [EOS_ID, 0])
def test_negative_padded_to_positive(pad):
    tok = ClipTokenizer(pad_id=pad)
    pos, neg = tokenize_pair("cat " * 160, "blurry, lowres", tok)
    assert pos.n_chunks == neg.n_chunks == 3
    assert pos.ids.shape == neg.ids.shape == pos.weights.shape == neg.weights.shape == (231,)
    empty = tokenize_prompt("", tok)
    ids, w = neg.chunks()
    assert np.array_equal(ids[0], tokenize_prompt("blurry, lowres", tok).ids)
    for row in ids[1:]:
        assert np.array_equal(row, empty.ids)
    assert (w == 1.0).all()
    assert ids[1, :2].tolist() == [BOS_ID, EOS_ID] and (ids[1, 2:] == pad).all()


def test_positive_padded_to_negative(tok):
    pos, neg = tokenize_pair("cat", "ugly " * 80, tok)
    assert pos.n_chunks == neg.n_chunks == 2
    assert np.array_equal(pos.chunks()[0][1], tokenize_prompt("", tok).ids)
    same = pad_chunks(pos, 1, tok.pad_id)
    assert same is pos


# --- apply_weights ---------------------------------------------------------------------------------------------


def _a1111_original(z, m):
    """sd_emphasis.EmphasisOriginal on one chunk, written out."""
    before = z.mean()
    z = z * m[:, None]
    return z * (before / z.mean())


def test_apply_weights_per_chunk():
    rng = np.random.default_rng(0)
    h = rng.normal(0.1, 1.0, size=(2 * CHUNK_LENGTH, 16)).astype(np.float32)
    w = np.ones(2 * CHUNK_LENGTH, np.float32)
    w[3:6] = 1.5
    w[80:90] = 0.7
    out = apply_weights(h, w)
    assert out.shape == h.shape and out.dtype == h.dtype
    for s in (0, CHUNK_LENGTH):
        sl = slice(s, s + CHUNK_LENGTH)
        ref = _a1111_original(h[sl].astype(np.float64), w[sl].astype(np.float64))
        np.testing.assert_allclose(out[sl], ref, rtol=1e-5, atol=1e-6)
        assert out[sl].mean(dtype=np.float64) == pytest.approx(h[sl].mean(dtype=np.float64), rel=1e-5)


def test_apply_weights_whole_tensor_and_identity():
    rng = np.random.default_rng(1)
    h = rng.normal(0.2, 1.0, size=(10, 4)).astype(np.float32)
    w = np.linspace(0.5, 1.5, 10).astype(np.float32)
    out = apply_weights(h, w, chunk_length=None)
    np.testing.assert_allclose(out, _a1111_original(h.astype(np.float64), w.astype(np.float64)), rtol=1e-5)
    assert np.array_equal(apply_weights(h, np.ones(10), chunk_length=None), h)
    with pytest.raises(ValueError):
        apply_weights(h, w)  # 10 tokens is not a multiple of 77
    with pytest.raises(ValueError):
        apply_weights(h, w[:5], chunk_length=None)


def test_apply_weights_on_tokenized_prompt(tok):
    pt = tokenize_prompt("a (red:1.4) cat, " + "tree " * 100, tok)
    rng = np.random.default_rng(2)
    h = rng.normal(0.05, 1.0, size=(len(pt.ids), 8)).astype(np.float32)
    out = apply_weights(h, pt.weights)
    red = np.flatnonzero(pt.weights == np.float32(1.4))
    assert len(red) == 1
    scale = out[red[0]] / h[red[0]]
    rest = out[red[0] + 1] / h[red[0] + 1]  # a weight-1 token of the same chunk: same rescale, no weight
    np.testing.assert_allclose(scale / rest, 1.4, rtol=1e-5)
    np.testing.assert_array_equal(out[CHUNK_LENGTH:], h[CHUNK_LENGTH:])  # second chunk has no emphasis
