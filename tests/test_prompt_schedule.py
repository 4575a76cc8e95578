"""A1111 prompt editing and alternation schedules (sdcpp.text.schedule) on A1111's documented examples.

The examples and their results are the doctests of AUTOMATIC1111's modules/prompt_parser.py
(get_learned_conditioning_prompt_schedules). One of them ("a [{b|d{:.5] c", marked "not handling this right now"
there) predates its current grammar, where "|" is no longer plain text: the current grammar leaves that prompt as
written, and so do we. The remaining cases were checked against A1111's lark grammar run on them (and on 4000
random strings of `ab [](): |\\.5`, all equal), outside this test suite.
"""

from __future__ import annotations

import pytest

from sdcpp.text.schedule import prompt_schedule, text_at

A1111_EXAMPLES = [  # prompt, schedule for 10 steps
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(k, "a" if k % 2 else "(b:1.1)") for k in range(1, 11)]),
    ("[fe|]male", [(k, "female" if k % 2 else "male") for k in range(1, 11)]),
    ("[fe|||]male", [(k, "female" if k % 4 == 1 else "male") for k in range(1, 11)]),
]


@pytest.mark.parametrize("prompt,want", A1111_EXAMPLES)
def test_a1111_documented_schedules(prompt, want):
    assert prompt_schedule(prompt, 10) == want


def test_hires_pass_schedules():
    """In the hires pass (A1111's hires_steps), integers count from the first pass's start and fractions run from
    1.0 (hires pass start) to 2.0."""
    assert prompt_schedule("a [b:.5] c", 10, 10) == [(10, "a b c")]
    assert prompt_schedule("a [b:1.5] c", 10, 10) == [(5, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:15] c", 10, 10) == [(5, "a  c"), (10, "a b c")]


@pytest.mark.parametrize("prompt,want", [
    ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),  # "|" outside brackets: the prompt as written
    ("a|b", [(10, "a|b")]),
    ("[a:b:c:1]", [(10, "[a:b:c:1]")]),  # no item fits: stray brackets and colons are text
    ("x [a:b:-1] y", [(10, "x b y")]),  # when < 1: never adds a step, the 'after' text throughout
    ("[a|[b|c]]", [(k, "a" if k % 2 else "c") for k in range(1, 11)]),  # nested alternation, step 2k -> [b|c] at 2k
    ("a [b:(c:1.2):0.3] d", [(3, "a b d"), (10, "a (c:1.2) d")]),  # emphasis survives as text for the tokenizer
    ("a [b:c:25] d", [(10, "a b d")]),  # past the end: capped at the step count
    (r"\[a:b:1\]", [(10, r"\[a:b:1\]")]),  # escaped brackets are plain text
])
def test_grammar_corners(prompt, want):
    assert prompt_schedule(prompt, 10) == want


def test_step_lookup_is_a1111s():
    """reconstruct_cond_batch: the entry of the first end_step >= the sampler step (0-based), so step 0 and step 1
    both use the first entry of an alternation."""
    sched = prompt_schedule("[cat|dog]", 4)
    assert [sched[text_at(sched, step)][1] for step in range(4)] == ["cat", "cat", "dog", "cat"]
    sched = prompt_schedule("a [cat:dog:0.5]", 4)
    assert [sched[text_at(sched, step)][1] for step in range(4)] == ["a cat", "a cat", "a cat", "a dog"]
