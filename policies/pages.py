"""Typed pages: the unit of residency.

A page is one message of the transcript (bootstrap, evidence, conversation, plan) or a
fact extracted from one (constraint, preference, intent). Each carries four representations,
built once at ingest, and the metadata the selector needs: pin class, floor, scope,
provenance, utility and recompute cost. Pages are immutable values; a change makes a new
version with `dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

from policies.transcript import ToolCall


class PageType(StrEnum):
    BOOTSTRAP = "bootstrap"
    CONSTRAINT = "constraint"
    PLAN = "plan"
    PREFERENCE = "preference"
    INTENT = "intent"
    EVIDENCE = "evidence"
    CONVERSATION = "conversation"


class Fidelity(IntEnum):
    """Representation levels, ordered: a higher value holds more of the page."""

    NONE = 0
    POINTER = 1
    STRUCTURED = 2
    COMPRESSED = 3
    FULL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Fidelity:
        return cls[value.upper()]


LEVELS: tuple[Fidelity, ...] = (Fidelity.POINTER, Fidelity.STRUCTURED, Fidelity.COMPRESSED, Fidelity.FULL)


class Pin(StrEnum):
    HARD = "hard"
    SOFT = "soft"
    NONE = "none"


class Scope(StrEnum):
    SESSION = "session"
    PROJECT = "project"


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a page came from: the message that carried it, and the tool call if any."""

    message_index: int
    role: str
    tool_call_id: str | None = None
    tool_name: str | None = None
    tool_arguments: str | None = None
    parent_id: str | None = None


@dataclass(frozen=True, slots=True)
class Representation:
    """One rendering of a page. `tokens` counts the text (and tool calls) only;
    the per-message framing overhead is added by `policies.tokens`."""

    text: str
    tokens: int
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Reprs:
    full: Representation
    compressed: Representation
    structured: Representation
    pointer: Representation

    def at(self, level: Fidelity) -> Representation:
        if level is Fidelity.FULL:
            return self.full
        if level is Fidelity.COMPRESSED:
            return self.compressed
        if level is Fidelity.STRUCTURED:
            return self.structured
        if level is Fidelity.POINTER:
            return self.pointer
        raise ValueError(f"no representation at {level.label}")


@dataclass(frozen=True, slots=True)
class Page:
    id: str
    type: PageType
    scope: Scope
    provenance: Provenance
    pin: Pin
    floor: Fidelity
    reprs: Reprs
    base_utility: float
    recompute_cost: float
    version: int = 1
    dirty: bool = False

    @property
    def extracted(self) -> bool:
        """True for a page taken out of another page's text (constraint, preference, intent)."""
        return self.provenance.parent_id is not None

    def tokens(self, level: Fidelity) -> int:
        return self.reprs.at(level).tokens
