"""The neutral transcript: what every wire format is translated into.

A `Message` is one turn of a chat transcript with the fields the policy core reasons about.
`raw` keeps the message exactly as the client sent it, so that a message kept at full
fidelity is forwarded byte for byte (content parts, images, vendor fields and all).

Both classes are values: nothing mutates them after construction (but for `Message.key`, a memo of
`policies.pagetable.message_key` of the fields it reads, set on first use). They are not frozen
only because a frozen dataclass costs four times as much to build, and the adapter builds one
per message of every request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Message:
    role: str
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)
    images: int = 0  # non-text content parts (images, audio, files) the full level carries
    key: str = field(default="", init=False, compare=False, repr=False)  # see the module doc

    @property
    def is_instruction(self) -> bool:
        return self.role in ("system", "developer")
