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

from gateway import jsonio
from gateway.api.errors import GatewayError, InvalidRequest, UpstreamError
from gateway.settings import Tenant
from gateway.upstream.client import UpstreamResponse, UpstreamTarget
from gateway.upstream.sse import event_data, iter_events
from gateway.wire.chains import ResponseChains
from policies.transcript import Message, ToolCall

Body = dict[str, Any]

# (a body's raw messages, `start`) -> the transcript of those from index `start` on (all of them when
# `start` is 0), or None when they do not parse apart from the ones before (then all are parsed).
ParseFrom = Callable[[Sequence[Any], int], list[Message] | None]


class Parse(Protocol):
    """How a format that resends its conversation reads a request: its body (`loads`, a JSON
    object or `InvalidRequest`), then its messages (called with the raw list) into the transcript
    (`gateway.wire.chat_transcripts.Reader` reuses earlier requests' work)."""

    def loads(self, raw: bytes) -> dict[str, Any]: ...

    def __call__(self, raw_messages: list[Any]) -> list[Message]: ...

    def transcript(
        self, raw_messages: list[Any], parse: Callable[[Sequence[Any], int], list[Message]]
    ) -> list[Message]:
        """`raw_messages` as the transcript, `parse(raw, start)` reading those from index `start` on."""
        ...


Owner = tuple[str, str]  # (tenant, session): whose prompt a provider cache key names


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


@dataclass(frozen=True, slots=True)
class Names:
    """What a request's body says about whose turn it is, in its format's own fields (read by the
    format's `Wire.names`): the session, project and end user the client named, and the agent's
    own word on a lifecycle boundary. Each is a non-empty string or None; the request's headers
    (`X-ClawVM-*`) take precedence over all of them (`gateway.turns.sessions`, `.boundary`)."""

    session: str | None = None
    project: str | None = None
    user: str | None = None
    event: str | None = None


NAMELESS = Names()


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
    transcript_field: str  # the request field that holds the transcript ("messages", "input"), for errors
    path: str  # the upstream path of a turn, relative to the upstream's base
    litellm: bool  # models named with a provider prefix (`anthropic/...`) go through litellm

    def target(self, tenant: Tenant, headers: Mapping[str, str]) -> UpstreamTarget:
        """Where this format's turns go for `tenant`, with which key: never chosen by the client."""
        ...

    def forwarded(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The client's request headers passed to the upstream (never a credential)."""
        ...

    def owns_account(self, tenant: Tenant) -> bool:
        """Whether this format's upstream key is the tenant's own, or account objects are allowed
        (`gateway.wire.account_refs`): only then may a request name a file or other account object."""
        ...

    def parse(self, raw: bytes, parse: Parse | None = None) -> WireRequest:
        """The request validated; `InvalidRequest` naming the offending field otherwise."""
        ...

    def render(self, request: WireRequest, messages: Sequence[Message], tenant: Tenant) -> Body:
        """The upstream body: the client's, with the assembled transcript and the tenant's upstream model."""
        ...

    def cache_hints(
        self, body: Body, model: str, built: Sequence[Message], stable: int, owner: Owner, litellm: bool
    ) -> None:
        """Add the provider's prompt-cache hints to an upstream body: `built` is the transcript it
        renders, of which the first `stable` messages are the prefix the next turn keeps; `model` is
        the one the client named; `owner` (tenant, session) keys the cache; `litellm`: the model
        names a litellm provider (`anthropic/...`), so OpenAI's cache key does not apply."""
        ...

    def shown(self, request: WireRequest, built: Sequence[Message], body: Body) -> tuple[list[Any], list[Any]]:
        """The messages the agent sent and those going upstream, for the session inspector."""
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

    def names(self, request: WireRequest) -> Names:
        """The session, project, user and boundary event its body names (`Names`)."""
        ...

    async def resolve(self, request: WireRequest, tenant: str, chains: ResponseChains) -> WireRequest:
        """The request with any state it names on the server (`previous_response_id`) resolved."""
        ...

    def remembers(self, request: WireRequest) -> bool:
        """Whether its answer must be read whole (for `remember`) even when no recall is offered."""
        ...

    async def remember(self, request: WireRequest, answer: Any, tenant: str, chains: ResponseChains) -> None:
        """Keep what a later request may name (a response id), once the answer is complete."""
        ...


def passed(headers: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    """`content-type: application/json` and the client's `names` headers it sent."""
    forwarded = {"content-type": "application/json"}
    forwarded.update((name, headers[name]) for name in names if name in headers)
    return forwarded


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body: a JSON object, or `InvalidRequest`."""
    try:
        body = jsonio.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


class WholeAnswer:
    """Whole (non-streamed) answers: each round's JSON read; the answer is the last round's, its
    recall calls stripped (`finish`) and its usage the sum over rounds (`usage`, the counters).
    An answer the format does not understand (`inspect` says None) is relayed as it came."""

    usage_keys: tuple[str, ...] = ()

    def __init__(self, name: str) -> None:
        self.name = name
        self.found = NOTHING
        self.usage: dict[str, Any] = {}
        self._data: dict[str, Any] | None = None
        self._raw = b""

    async def read(self, upstream: UpstreamResponse) -> AsyncIterator[bytes]:
        self.found, self._data = NOTHING, None
        self._raw = await upstream.read()
        try:
            data = jsonio.loads(self._raw)
        except ValueError:  # not JSON (a broken upstream): relayed as it came
            return
        found = self.inspect(data)
        if found is not None:
            self.found, self._data = found, data
            add_usage(self.usage, data.get("usage"), self.usage_keys)
        return
        yield b""  # an async generator that yields nothing: whole answers show nothing until the end

    def closing(self) -> list[bytes]:
        if self._data is None:
            return [self._raw]
        self.finish(self._data)
        return [jsonio.dumps(self._data)]

    def inspect(self, data: Any) -> Found | None:
        """What an answer holds, or None when it is not one this format understands."""
        raise NotImplementedError

    def finish(self, data: dict[str, Any]) -> None:
        """Strip the recall calls of the last answer (`self.found`) and put the summed usage in."""
        raise NotImplementedError


def add_usage(total: dict[str, Any], usage: Any, keys: tuple[str, ...]) -> None:
    """Add an answer's integer usage counters (`keys`) to `total`."""
    if not isinstance(usage, dict):
        return
    for key in keys:
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value


class ToolList:
    """`tools`, `recall_tool` and `offer` of a format whose tools are the body's `tools` array;
    `schema` is the recall tool in the format's tool shape."""

    def schema(self, name: str) -> dict[str, Any]:
        raise NotImplementedError

    def tools(self, body: Mapping[str, Any]) -> list[Any]:
        tools = body.get("tools")
        return tools if isinstance(tools, list) else []

    def recall_tool(self, name: str) -> Any:
        return self.schema(name)

    def offer(self, body: Body, name: str) -> None:
        body["tools"] = [*(body.get("tools") or []), self.schema(name)]

    dropped: tuple[str, ...] = ("tools", "tool_choice", "parallel_tool_calls")  # gone with the last tool

    def tool_name(self, tool: Any) -> Any:
        """The name of a tool (or of the tool a `tool_choice` forces)."""
        return tool.get("name") if isinstance(tool, dict) else None

    def auto(self) -> Any:
        """The `tool_choice` that lets the model choose."""
        return "auto"

    def withdraw(self, body: Body, name: str) -> None:
        """Take the recall tool out of `tools` (with `dropped` when no tool is left) and out of a
        `tool_choice` naming it."""
        tools = body.get("tools")
        kept = [t for t in tools if self.tool_name(t) != name] if isinstance(tools, list) else tools
        if kept:
            body["tools"] = kept
        else:
            for key in self.dropped:
                body.pop(key, None)
        if self.tool_name(body.get("tool_choice")) == name:
            body["tool_choice"] = self.auto()


def messages_from(parse: Callable[[Sequence[Any], int], list[Message]]) -> ParseFrom:
    """A `ParseFrom` of a format whose whole request leaves nothing pending at its end (every tool
    call answered), so that the messages after it parse on their own: `parse(raw, first index)`."""
    return lambda raw, start: parse(raw[start:], start)


def metadata_names(body: Mapping[str, Any], user_field: str | None = None, event: str | None = None) -> Names:
    """The names in a body's `metadata` object (`session_id`, `project_id`, `user_id`,
    `clawvm_event`), the user else from the top-level `user_field`, the event else `event` (the
    format's own sign of a boundary)."""
    given = body.get("metadata")
    metadata: Mapping[str, Any] = given if isinstance(given, dict) else {}
    user = _text(metadata.get("user_id"))
    if user is None and user_field is not None:
        user = _text(body.get(user_field))
    return Names(
        session=_text(metadata.get("session_id")),
        project=_text(metadata.get("project_id")),
        user=user,
        event=_text(metadata.get("clawvm_event")) or event,
    )


def _text(value: Any) -> str | None:
    """A name as given: a string with something in it, stripped; else None."""
    return value.strip() if isinstance(value, str) and value.strip() else None


class Stateless:
    """The state hooks of a format whose requests carry their whole conversation: nothing to do."""

    async def resolve(self, request: WireRequest, tenant: str, chains: ResponseChains) -> WireRequest:
        return request

    def remembers(self, request: WireRequest) -> bool:
        return False

    async def remember(self, request: WireRequest, answer: Any, tenant: str, chains: ResponseChains) -> None:
        return None


END = "[DONE]"  # the data of OpenAI's last chat event


async def json_events(upstream: UpstreamResponse) -> AsyncIterator[tuple[bytes, Any]]:
    """Each event of an upstream stream that carries data: (the event as it came, its data as
    JSON, or END). Data that is not UTF-8 JSON (typically the half event of a connection that
    closed mid-way) is an `UpstreamError`."""
    async for raw in iter_events(upstream.aiter_raw()):
        try:
            data = event_data(raw)
        except UnicodeDecodeError as exc:
            raise UpstreamError("the upstream sent an event that is not UTF-8") from exc
        if data is None:
            continue
        if data.strip() == END:
            yield raw, END
            continue
        try:
            yield raw, jsonio.loads(data)
        except ValueError as exc:
            raise UpstreamError(f"the upstream sent an event that is not JSON: {data[:100]!r}") from exc
