"""Tensor groups for per-layer sensitivity and budget quantization: blocks of a component (a resnet, one
transformer block's self-attention / cross-attention / feed-forward, a text-encoder layer's attention or MLP, ...).

Each group is also a quantization rule: `^<group id>\\.` on canonical names. A rule alone may reach further than its
group (an attention module's rule covers its transformer blocks too); rules are emitted most specific first (a
transformer block's before the attention module holding it), so that with the plan's first-match order every
tensor gets the rule of exactly the group `group_of` gives it."""

from __future__ import annotations

import re

# In order of specificity; a group's id is its pattern's first group.
_PATTERNS: tuple[re.Pattern, ...] = (
    re.compile(r"^(.*\.attentions\.\d+\.transformer_blocks\.\d+\.(?:attn1|attn2|ff))\."),
    re.compile(r"^(.*\.attentions\.\d+)\."),  # proj_in/out, norms; the VAE's attention
    re.compile(r"^(.*\.resnets\.\d+)\."),
    re.compile(r"^(.*\.(?:downsamplers|upsamplers)\.\d+)\."),
    re.compile(r"^(text_encoder(?:_2)?\.text_model\.encoder\.layers\.\d+\.(?:self_attn|mlp))\."),
    re.compile(r"^(text_encoder(?:_2)?\.text_model\.encoder\.layers\.\d+)\."),
    re.compile(r"^((?:vae\.(?:encoder|decoder)|text_encoder(?:_2)?\.text_model|[^.]+)\.[^.]+)\."),
)


def group_of(name: str) -> tuple[str, int]:
    """(group id, specificity rank) of a canonical tensor name."""
    for rank, pattern in enumerate(_PATTERNS):
        m = pattern.match(name)
        if m:
            return m.group(1), rank
    return name, len(_PATTERNS)


def group_rule(group: str, rank: int) -> str:
    """The regex of a group's rule: matches its tensors and, placed in rank order, no tensor of another group."""
    return "^" + re.escape(group) + (r"\." if rank < len(_PATTERNS) else "$")


def groups(names) -> dict[str, list[str]]:
    """group id -> its tensor names, groups in rule order (most specific first)."""
    found: dict[str, tuple[int, list[str]]] = {}
    for n in names:
        gid, rank = group_of(n)
        found.setdefault(gid, (rank, []))[1].append(n)
    return {g: v[1] for g, v in sorted(found.items(), key=lambda kv: (kv[1][0], kv[0]))}


def rank_of(group: str) -> int:
    """The specificity rank of a group id (as group_of gives it for the group's tensors)."""
    return group_of(group + ".x")[1]
