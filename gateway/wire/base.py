"""The interface every wire format implements.

A `Wire` turns a request body into the format-neutral transcript (`policies.transcript.Message`)
and an assembled transcript back into a body; it offers and withdraws the gateway's recall
tool, and appends the continuation after a recall round. An `Answer` reads one request's
upstream answers, round by round: it relays at once what the agent may see (a stream's text,
the agent's own tool calls), holds the recall calls back and reports them (`Found`), and
writes the end of the answer (a stream's closing events, or the whole JSON) with usage summed
over every round and no recall call in it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import GatewayError
from gateway.settings import Tenant
from gateway.upstream import UpstreamResponse, UpstreamTarget
from policies.transcript import Message, ToolCall

Body = dict[str, Any]
Parse = Callable[[list[Any]], list[Message]]


@dataclass(frozen=True, slots=True)
class WireRequest:
    """A validated request: its body (the client's JSON), the model, the neutral transcript."""

    body: Body
    model: str
    messages: list[Message]
    stream: bool


@dataclass(frozen=True, slots=True)
class Found:
    """What one upstream answer held: the recall calls (neutral), whether the agent's own tool
    calls came with them, the assistant's text, and `turn`, the format's own record of the
    answer that the continuation replays (opaque outside the adapter)."""

    ours: tuple[ToolCall, ...] = ()
    theirs: bool = False
    text: str = ""
    turn: Any = None


NOTHING = Found()


class Answer(Protocol):
    """One request's answer, read round by round (see the module docstring)."""

    def read(self, upstream: UpstreamResponse) -> AsyncIterator[bytes]:
        """Read one round's upstream answer; yields what the agent may see now."""
        ...

    @property
    def found(self) -> Found:
        """What the round just read held (after `read` is exhausted)."""
        ...

    def closing(self) -> list[bytes]:
        """The end of the answer: a stream's held finish events, or the whole answer body."""
        ...


class Wire(Protocol):
    """One wire format."""

    name: str  # "chat" | "messages" | "responses"
    path: str  # the upstream path of a turn, relative to the upstream's base
    litellm: bool  # models named with a provider prefix (`anthropic/...`) go through litellm

    def target(self, tenant: Tenant, headers: Mapping[str, str]) -> UpstreamTarget:
        """Where this format's turns go for `tenant`, with which key: never chosen by the client."""
        ...

    def forwarded(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The client's request headers passed to the upstream (never a credential)."""
        ...

    def parse(self, raw: bytes, parse: Parse | None = None) -> WireRequest:
        """The request validated; `InvalidRequest` naming the offending field otherwise."""
        ...

    def render(self, request: WireRequest, messages: Sequence[Message], model: str) -> Body:
        """The upstream body: the client's, with the assembled transcript and the upstream model."""
        ...

    def offers_recall(self, body: Mapping[str, Any]) -> bool:
        """Whether the recall tool may be added to this request (tools not switched off, one answer)."""
        ...

    def tools(self, body: Mapping[str, Any]) -> list[Any]:
        """The request's tool schemas, for counting their tokens."""
        ...

    def recall_tool(self, name: str) -> Any:
        """The recall tool's schema in this format."""
        ...

    def offer(self, body: Body, name: str) -> None:
        """Add the recall tool to an upstream body."""
        ...

    def withdraw(self, body: Body, name: str) -> None:
        """Take the recall tool out of an upstream body (and any choice naming it)."""
        ...

    def continue_after(self, body: Body, found: Found, replies: Sequence[str]) -> None:
        """Append a round's answer and its recall results (one text per call) to `body`."""
        ...

    def answer(self, stream: bool, name: str, body: Mapping[str, Any]) -> Answer:
        """A reader for one request's answers; `name`: the recall tool's."""
        ...

    def error_body(self, exc: GatewayError) -> Any:
        """An error in this format's shape."""
        ...

    def error_event(self, exc: GatewayError) -> bytes:
        """The event that ends a stream that failed after it began."""
        ...


def passed(headers: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    """`content-type: application/json` and the client's `names` headers it sent."""
    forwarded = {"content-type": "application/json"}
    forwarded.update((name, headers[name]) for name in names if name in headers)
    return forwarded
