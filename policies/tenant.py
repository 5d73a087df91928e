"""A tenant's policy: budget, per-type floors and pins, selector weights, extra rules.

Data only. `gateway.settings` builds it from config.yaml; the core reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from policies.pages import Fidelity, PageType, Pin, Scope


@dataclass(frozen=True, slots=True)
class TypePolicy:
    floor: Fidelity
    pin: Pin
    base_utility: float
    scope: Scope


DEFAULT_TYPES: Mapping[PageType, TypePolicy] = MappingProxyType(
    {
        PageType.BOOTSTRAP: TypePolicy(Fidelity.STRUCTURED, Pin.HARD, 8.0, Scope.PROJECT),
        PageType.CONSTRAINT: TypePolicy(Fidelity.STRUCTURED, Pin.HARD, 7.0, Scope.SESSION),
        PageType.PLAN: TypePolicy(Fidelity.STRUCTURED, Pin.HARD, 6.0, Scope.SESSION),
        PageType.PREFERENCE: TypePolicy(Fidelity.POINTER, Pin.SOFT, 5.0, Scope.PROJECT),
        PageType.INTENT: TypePolicy(Fidelity.STRUCTURED, Pin.HARD, 6.0, Scope.PROJECT),
        PageType.EVIDENCE: TypePolicy(Fidelity.POINTER, Pin.SOFT, 5.0, Scope.SESSION),
        PageType.CONVERSATION: TypePolicy(Fidelity.POINTER, Pin.NONE, 3.0, Scope.SESSION),
    }
)


@dataclass(frozen=True, slots=True)
class Weights:
    """The selector's utility weights (the paper's reference values by default)."""

    pin_hard: float = 2.0
    pin_soft: float = 0.6
    recency: float = 0.6
    recency_decay: float = 0.88
    recompute: float = 0.4


@dataclass(frozen=True, slots=True)
class ClassifierRule:
    """An extra classification rule: text matching `pattern` (a regular expression,
    case-insensitive) in a message of one of `roles` becomes a page of `type`."""

    pattern: str
    type: PageType
    roles: frozenset[str] = frozenset({"system", "developer", "user"})


@dataclass(frozen=True, slots=True)
class Budget:
    """How many prompt tokens a request may carry.

    `max_prompt_tokens` wins when set; else `window_fraction` of the model's context window.
    `output_reserve` is kept free for the reply, `safety_margin` (a fraction) for counting
    differences between our tokenizer and the provider's.
    """

    max_prompt_tokens: int | None = None
    window_fraction: float | None = None
    output_reserve: int = 4096
    safety_margin: float = 0.02


class CacheMode(StrEnum):
    """How assembly treats the provider's prompt cache."""

    STABLE = "stable"  # change the prompt in rare, large steps: over the budget, fall to the low-water mark
    TIGHT = "tight"  # fill the budget every turn (providers without prompt caching)


LOW_WATER = 0.5  # stable: an overflowing turn re-plans down to this share of the budget


@dataclass(frozen=True, slots=True)
class CachePolicy:
    mode: CacheMode = CacheMode.STABLE
    low_water: float = LOW_WATER  # a fraction of the budget, (0, 1]; used by `stable` only

    @property
    def target(self) -> float:
        """The share of the budget an overflowing turn re-plans down to."""
        return self.low_water if self.mode is CacheMode.STABLE else 1.0


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    name: str = "default"
    budget: Budget = field(default_factory=Budget)
    types: Mapping[PageType, TypePolicy] = field(default_factory=lambda: DEFAULT_TYPES)
    weights: Weights = field(default_factory=Weights)
    rules: tuple[ClassifierRule, ...] = ()
    cache: CachePolicy = field(default_factory=CachePolicy)

    def type_policy(self, page_type: PageType) -> TypePolicy:
        return self.types[page_type]
