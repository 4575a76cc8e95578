"""A1111 prompt editing and alternation: `[a:b:when]`, `[a:when]`, `[a::when]`, `[a|b|c]`.

Behaviour follows AUTOMATIC1111/stable-diffusion-webui `modules/prompt_parser.py`
(`get_learned_conditioning_prompt_schedules`, its documented examples are tests/test_prompt_schedule.py); this is
an independent recursive-descent parser of the same grammar:

    start     := (prompt | stray "[", "]", "(", ")", ":")*      stray brackets and colons are literal at top level
    prompt    := (emphasis | scheduled | alternate | plain)*
    emphasis  := "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"     kept as text (weights come later)
    scheduled := "[" [prompt ":"] prompt ":" NUMBER "]"                       whitespace allowed around NUMBER
    alternate := "[" prompt ("|" [prompt])+ "]"
    plain     := (any character but \\ [ ] ( ) : | , or \\ and any character)+

A prompt that does not parse (a `|` outside brackets) is used as written, for every step.

`when`: with a decimal point a fraction of the steps, else a step number; `int()` of it, capped at the step
count. The schedule is a list of (end_step, text): text is used while the sampler's step counter is <= end_step.
In the hires pass (`hires_steps` given) integers count from the start of the first pass and fractions run from
1.0 (start of the hires pass) to 2.0, as A1111 does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)\s*")
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)
_STRAY = "[]():"


class _Fail(Exception):
    pass


@dataclass
class _Scheduled:
    before: list | None
    after: list
    number: str
    when: int = 0


@dataclass
class _Alternate:
    options: list  # of lists (None for an empty option)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.nodes: list = []  # every _Scheduled / _Alternate parsed, in any branch

    def prompt(self, i: int) -> tuple[list, int]:
        """Items from position i until a character no item starts with (: | ] ) or the end."""
        items: list = []
        while i < len(self.text):
            c = self.text[i]
            if c in "[(":
                try:
                    item, i = self.bracket(i)
                except _Fail:
                    break
                items.append(item)
                continue
            m = _PLAIN.match(self.text, i)
            if m is None:  # : | ] ) or a trailing lone backslash
                break
            items.append(m.group(0))
            i = m.end()
        return items, i

    def bracket(self, i: int) -> tuple[object, int]:
        t = self.text
        if t[i] == "(":
            inner, j = self.prompt(i + 1)
            if j < len(t) and t[j] == ")":
                return ["(", *inner, ")"], j + 1
            if j < len(t) and t[j] == ":":
                weight, k = self.prompt(j + 1)
                if k < len(t) and t[k] == ")":
                    return ["(", *inner, ":", *weight, ")"], k + 1
            raise _Fail
        first, j = self.prompt(i + 1)
        if j >= len(t):
            raise _Fail
        if t[j] == "]":
            return ["[", *first, "]"], j + 1
        if t[j] == "|":
            options = [first]
            while j < len(t) and t[j] == "|":
                option, j = self.prompt(j + 1)
                options.append(option or None)
            if j < len(t) and t[j] == "]":
                node = _Alternate(options)
                self.nodes.append(node)
                return node, j + 1
            raise _Fail
        if t[j] == ":":
            m = _NUMBER.match(t, j + 1)
            if m and m.end() < len(t) and t[m.end()] == "]":  # [after:when]
                node = _Scheduled(None, first, m.group(1))
                self.nodes.append(node)
                return node, m.end() + 1
            second, k = self.prompt(j + 1)
            if k < len(t) and t[k] == ":":
                m = _NUMBER.match(t, k + 1)
                if m and m.end() < len(t) and t[m.end()] == "]":
                    node = _Scheduled(first, second, m.group(1))
                    self.nodes.append(node)
                    return node, m.end() + 1
        raise _Fail

    def start(self) -> list:
        items: list = []
        i = 0
        while i < len(self.text):
            part, j = self.prompt(i)
            items.extend(part)
            if j == len(self.text):
                break
            if self.text[j] not in _STRAY:  # "|" outside brackets, or a lone trailing backslash
                raise _Fail
            items.append(self.text[j])
            i = j + 1
        return items


def _render(items, step: int) -> str:
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, _Scheduled):
            chosen = (item.before or []) if step <= item.when else item.after
            out.append(_render(chosen, step))
        elif isinstance(item, _Alternate):
            out.append(_render(item.options[(step - 1) % len(item.options)] or [], step))
        else:
            out.append(_render(item, step))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """[(end_step, text), ...] of A1111's prompt editing for a run of `steps` (or the hires pass of
    `hires_steps` after a first pass of `steps`), ascending, the last end_step the run's step count."""
    if hires_steps is None:
        int_offset, flt_offset, n = 0, 0.0, steps
    else:
        int_offset, flt_offset, n = steps, 1.0, hires_steps
    parser = _Parser(prompt)
    try:
        tree = parser.start()
    except (_Fail, RecursionError):
        return [(n, prompt)]
    ends = {n}
    for node in parser.nodes:
        if isinstance(node, _Alternate):
            ends.update(range(1, n + 1))
            continue
        v = float(node.number)
        v = (v - flt_offset) * n if "." in node.number else v - int_offset
        node.when = min(n, int(v))
        if node.when >= 1:
            ends.add(node.when)
    return [(t, _render(tree, t)) for t in sorted(ends)]


def text_at(schedule: list[tuple[int, str]], call: int) -> int:
    """Index of the schedule entry for the sampler's `call`-th denoiser call (0-based), as A1111's
    reconstruct_cond_batch: the first entry with call <= end_step (the last one past the end)."""
    for k, (end, _) in enumerate(schedule):
        if call <= end:
            return k
    return len(schedule) - 1
