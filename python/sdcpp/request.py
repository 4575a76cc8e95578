"""The user's weight-type request: a default type, per-component types, and regex rules."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import QuantRequestError
from .ggml_types import normalize_request_type

# Which request field speaks for which component.
COMPONENT_FIELD = {"unet": "unet_type", "vae": "vae_type", "text_encoder": "te_type", "text_encoder_2": "te_type"}


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern
    type: str

    @property
    def text(self) -> str:
        return f"{self.pattern.pattern}={self.type}"


@dataclass(frozen=True)
class QuantRequest:
    type: str | None = None  # None: keep each tensor's stored type
    unet_type: str | None = None
    te_type: str | None = None
    vae_type: str | None = None
    rules: tuple[Rule, ...] = ()  # first match on the canonical name wins

    @classmethod
    def make(cls, type=None, unet_type=None, te_type=None, vae_type=None, rules=None) -> QuantRequest:
        def norm(t):
            return None if t is None else normalize_request_type(t)

        return cls(norm(type), norm(unet_type), norm(te_type), norm(vae_type), parse_rules(rules))

    def for_component(self, component: str) -> tuple[str | None, str | None]:
        """(type, which field gave it) for a component, before rules."""
        field = COMPONENT_FIELD[component]
        own = getattr(self, field)
        if own is not None:
            return own, field
        return (self.type, "type") if self.type is not None else (None, None)

    def rule_for(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.pattern.search(name)), None)

    def rules_text(self) -> list[str]:
        return [r.text for r in self.rules]

    def to_dict(self) -> dict:
        return dict(type=self.type, unet_type=self.unet_type, te_type=self.te_type, vae_type=self.vae_type,
                    rules=self.rules_text())


def parse_rules(rules) -> tuple[Rule, ...]:
    """Rules as a list of "regex=type" strings, or one string of them joined by commas."""
    if rules is None:
        return ()
    items = [r for r in rules.split(",") if r.strip()] if isinstance(rules, str) else list(rules)
    parsed = []
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise QuantRequestError(f"rule {item!r} is not of the form 'regex=type'")
        pattern, _, type_name = item.rpartition("=")
        try:
            compiled = re.compile(pattern.strip())
        except re.error as e:
            raise QuantRequestError(f"rule {item!r}: bad regular expression: {e}") from e
        parsed.append(Rule(compiled, normalize_request_type(type_name)))
    return tuple(parsed)
