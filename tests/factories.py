"""Test value factories: build policy-core values directly, with sensible defaults."""

from __future__ import annotations

from policies.pages import Fidelity, Page, PageType, Pin, Provenance, Representation, Reprs, Scope
from policies.transcript import ToolCall


def make_page(
    id: str = "p1",
    type: PageType = PageType.EVIDENCE,
    text: str = "some tool output",
    *,
    scope: Scope = Scope.SESSION,
    pin: Pin = Pin.NONE,
    floor: Fidelity = Fidelity.POINTER,
    provenance: Provenance | None = None,
    tool_calls: tuple[ToolCall, ...] = (),
    base_utility: float = 1.0,
    recompute_cost: float = 0.5,
    version: int = 1,
    dirty: bool = False,
) -> Page:
    """A page whose four representations are cut from `text` (token counts = word counts)."""
    return Page(
        id=id,
        type=type,
        scope=scope,
        provenance=provenance or Provenance(message_index=0, role="tool", tool_call_id="call_1"),
        pin=pin,
        floor=floor,
        reprs=make_reprs(text, tool_calls),
        base_utility=base_utility,
        recompute_cost=recompute_cost,
        version=version,
        dirty=dirty,
    )


def make_reprs(text: str, tool_calls: tuple[ToolCall, ...] = ()) -> Reprs:
    compressed = text[: max(1, len(text) // 2)]
    structured = f"[{len(text)} chars]"
    pointer = "[ref]"
    return Reprs(
        full=Representation(text, len(text.split()), tool_calls),
        compressed=Representation(compressed, len(compressed.split()), tool_calls),
        structured=Representation(structured, 2),
        pointer=Representation(pointer, 1),
    )


def order_desk_conversation(system: str) -> list[dict]:
    """A chat transcript in OpenAI wire form: `system`, an order question, one `get_order` tool
    call and its (long) result, and a follow-up question."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_order", "arguments": '{"id":"W123"}'}}
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": "Where is my order #W123?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"order_id":"#W123","status":"shipped"}' * 20},
        {"role": "user", "content": "Thanks. And what was the status again?"},
    ]
