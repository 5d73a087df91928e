"""One turn through the gateway, in any wire format (DESIGN §1; gateway.wire).

authenticate -> read and validate the body -> resolve the session -> load its page table ->
plan the turn (`policies.step.forward`: what the forwarded prompt needs, timed) -> forward
upstream; beside the upstream call (gateway.store.saving): the rest of the turn
(`policies.step.complete`), its write-back, then the save of pages and evidence -> once the save
ended, relay the answer, streaming bytes as they come, with our headers on top (README "What a
crash can lose"). A turn saved before it is forwarded runs all of it first.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from starlette.background import BackgroundTask, BackgroundTasks
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway import jsonio
from gateway.api.errors import ContextLengthExceeded, GatewayError, InvalidRequest, ServiceUnavailable
from gateway.api.http import read_body, respond, retries_counted, stream_faults_counted, unless_disconnected
from gateway.jsonio import JSONAnswer, NestingTooDeep
from gateway.observability.inspector import Glimpse, Shot, glimpse, recorded
from gateway.observability.observe import record, record_recalls
from gateway.settings import Tenant
from gateway.store.memory import WriteReport
from gateway.store.outage import DEGRADED, DEGRADED_HEADER, store_event
from gateway.store.saving import PendingSave
from gateway.store.session_state import writes
from gateway.store.store import CorruptData, StoreError, StoreUnavailable, VersionConflict, session_scope
from gateway.store.tables import TableFormatError
from gateway.turns.boundary import hint_of, load_start
from gateway.turns.services import UNAUTHENTICATED, Services, store_failure
from gateway.turns.sessions import SessionIds, resolve
from gateway.turns.stages import HEADER as STAGES_HEADER
from gateway.turns.stages import Stages, timed_after
from gateway.upstream.client import UpstreamResponse
from gateway.upstream.models import resolve_window
from gateway.upstream.retry import with_retries
from gateway.upstream.sse import ending_cleanly
from gateway.upstream.targets import retry_policy
from gateway.upstream.tokens import TiktokenCounter
from gateway.wire.account_refs import refuse as refuse_account_objects
from gateway.wire.base import Answer, Wire, WireRequest
from gateway.wire.chains import ResponseChains
from gateway.wire.chat import CHAT
from gateway.wire.chat_litellm_params import provider_params
from gateway.wire.loop import answered, streamed, whole
from gateway.wire.recall import Paging
from policies import duplicates
from policies.budget import TokenBudget, resolve_budget
from policies.crossing import may_carry, wants_start
from policies.observation import Observation
from policies.pagetable import PageTable
from policies.recall import recall_room as room_for_recall
from policies.recall import without_recall_room
from policies.step import Decision, Forwarded, TurnInput, complete, forward
from policies.tokens import TokenCounter
from policies.turn import TurnPlan, plan_turn
from policies.writes import Memories, WriteBatch

log = logging.getLogger("clawvm.gateway")
Save = Callable[[], Awaitable[bool]]  # a turn's commit: True when the store was unavailable (deferred)
RECALL_TOOL = "clawvm_recall"
FORWARD_FIRST_YIELDS = 3  # loop turns the save waits before its CPU-bound part (`_finished_turn`)
COMMIT_ATTEMPTS = 10  # a conflict means another replica committed this session meanwhile (tests/e2e/test_cluster.py)
COMMIT_BACKOFF_S = 0.005  # before attempt n+1, a random wait in [0, min(cap, base * 2**n)) ("full jitter")
COMMIT_BACKOFF_CAP_S = 0.1
DUPLICATES_LISTED = 10
# Model prefixes whose providers do not speak OpenAI's API: these go through litellm.
LITELLM_PREFIXES = frozenset(
    {
        "anthropic",
        "bedrock",
        "bedrock_converse",
        "vertex_ai",
        "vertex_ai_beta",
        "gemini",
        "cohere",
        "cohere_chat",
        "sagemaker",
        "azure",
        "azure_ai",
        "watsonx",
        "replicate",
        "huggingface",
        "ollama",
        "ollama_chat",
        "databricks",
        "predibase",
        "cloudflare",
        "ai21",
        "nlp_cloud",
        "aleph_alpha",
    }
)


@dataclass(frozen=True, slots=True)
class Timing:
    """The policy engine's time on one turn: ingesting new content, then assembling."""

    ingest_ns: int
    assembly_ns: int
    degraded: bool = False  # the store was unavailable: the turn's writes were deferred (gateway.store.outage)

    @property
    def policy_ns(self) -> int:
        return self.ingest_ns + self.assembly_ns


def uses_litellm(model: str) -> bool:
    prefix, sep, _ = model.partition("/")
    return bool(sep) and prefix in LITELLM_PREFIXES


def turn_route(wire: Wire) -> Callable[[Request], Awaitable[Response]]:
    """The route of one wire format: a turn, counted by tenant and status (errors included),
    every error in the format's own shape."""

    async def route(request: Request) -> Response:
        stages = Stages()
        services: Services = request.state.services
        name = UNAUTHENTICATED
        try:
            tenant = services.keyring.authenticate(request.headers)
            name = tenant.name
            response = await _serve(request, services, tenant, stages, wire)
        except NestingTooDeep as exc:  # within the parser's nesting limit, past the encoder's
            response = _error(wire, InvalidRequest(f"The request body is not usable: {exc}."))
        except GatewayError as exc:
            response = _error(wire, exc)
        services.metrics.request(name, response.status_code)
        return response

    return route


async def _resolved(services: Services, tenant: Tenant, chat: WireRequest, wire: Wire) -> WireRequest:
    """The request with the state it names resolved (a Responses chain)."""
    try:
        return await wire.resolve(chat, tenant.name, ResponseChains(services.sessions.store.client))
    except StoreUnavailable as exc:
        raise store_failure(exc, "a previous response") from exc


async def _remember(services: Services, tenant: Tenant, chat: WireRequest, wire: Wire, answer: Answer) -> None:
    """Keep what a later request may name (a response id); a store failure costs only that."""
    try:
        await wire.remember(chat, answer, tenant.name, ResponseChains(services.sessions.store.client))
    except StoreError as exc:
        log.warning("a response could not be kept for previous_response_id: %s", exc)


def _error(wire: Wire, exc: GatewayError) -> Response:
    return JSONAnswer(wire.error_body(exc), status_code=exc.status_code)


chat_completions = turn_route(CHAT)


async def _serve(request: Request, services: Services, tenant: Tenant, stages: Stages, wire: Wire) -> Response:
    body = await read_body(request, services.settings.server.max_body_bytes)
    stages.lap("receive")
    hint = f"{tenant.name}\x1f{request.headers.get('x-clawvm-session', '')}"
    reader = services.transcripts.parser(hint)
    chat = wire.parse(body, reader)
    if not wire.owns_account(tenant):
        unchecked = reader.unchecked(body, chat.body)  # a body extending a checked one: its new part
        refuse_account_objects(unchecked.raw, unchecked.body, False, tenant.name, unchecked.start, unchecked.field)
        reader.checked()
    if wire.litellm and uses_litellm(chat.model):
        provider_params(chat.body)  # a refused field is refused before the turn is planned
    chat = await _resolved(services, tenant, chat, wire)
    names = wire.names(chat)
    ids = resolve(request.headers, names, chat.messages, tenant.name)
    event = hint_of(request.headers, names)
    stages.lap("parse")
    try:
        return await _served(request, services, tenant, chat, ids, event, stages, wire, overlap=True)
    except StaleTurn:  # the overlapped save lost to another writer: plan again, saved before forwarding
        return await _served(request, services, tenant, chat, ids, event, stages, wire, overlap=False)


async def _served(
    request: Request,
    services: Services,
    tenant: Tenant,
    chat: WireRequest,
    ids: SessionIds,
    event: str | None,
    stages: Stages,
    wire: Wire,
    *,
    overlap: bool,
) -> Response:
    turn = await prepare(services, tenant, chat, ids, event, wire, overlap=overlap)
    stages.lap("store")
    stages.split("store", {"ingest": turn.policy_ns[0], "assemble": turn.policy_ns[1]})
    _log_turn(services, tenant, chat, turn)
    try:  # the turn is planned and being saved: a hang-up from here on cancels only the upstream call
        forwarding = _forward(request, services, tenant, chat, ids, turn, stages, wire)
        response = await unless_disconnected(request, forwarding)
    except StaleTurn:
        raise
    except GatewayError:
        if await _quietly(turn.saved):  # an error answer acknowledges nothing, but the save ends first
            await turn.after()  # the records of a saved turn
        raise
    timed = stages if services.settings.server.log_timings else None
    if timed is not None:  # the save's parts ran beside "upstream": in the log, not the header
        for part, spent in turn.outcome.spent.items():
            timed.add(part, spent)
    _then(response, turn.after, timed)
    return response


class StaleTurn(ServiceUnavailable):
    """A save that ran beside the upstream call lost to another writer of the session (a request
    of the same session planned at the same time elsewhere: the table was checked current before
    planning): the forwarded prompt was planned on a stale table, so its answer is dropped and the
    turn planned again, saved before it is forwarded."""

    def __init__(self) -> None:
        super().__init__("the session is being updated concurrently; retry the request")


async def _quietly(saved: Callable[[], Awaitable[None]]) -> bool:
    """Wait for a turn's save on an error path: whether it committed (a failure is logged by
    PendingSave, not raised)."""
    try:
        await saved()
    except GatewayError:
        return False
    return True


def _log_turn(services: Services, tenant: Tenant, chat: WireRequest, turn: Turn) -> None:
    """One debug line per turn: ids and counts only; the newest message's text only when
    `server.log_content` is true (message text never reaches the logs otherwise)."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    headers = turn.headers
    log.debug(
        "turn tenant=%s session=%s model=%s messages=%d prompt_tokens=%s budget=%s faults=%s",
        tenant.name,
        headers["x-clawvm-session"],
        chat.model,
        len(chat.messages),
        headers.get("x-clawvm-prompt-tokens", "(after the save)"),
        headers["x-clawvm-budget"],
        headers.get("x-clawvm-faults", "(after the save)"),
    )
    if services.settings.server.log_content:
        log.debug("turn session=%s newest message: %r", headers["x-clawvm-session"], chat.messages[-1].text)


def _then(response: Response, task: Callable[[], Awaitable[None]], timed: Stages | None = None) -> None:
    """Run `task` after the answer is sent (audit records: off the latency path). With `timed`
    (`server.log_timings`), all the work after the answer, the response's own included, is timed
    as the turn's "after" stage and its stages logged."""
    tasks = BackgroundTasks()
    if response.background is not None:
        tasks.add_task(response.background)
    tasks.add_task(task)
    response.background = tasks if timed is None else BackgroundTask(timed_after(tasks, timed))


async def _forward(
    request: Request,
    services: Services,
    tenant: Tenant,
    chat: WireRequest,
    ids: SessionIds,
    turn: Turn,
    stages: Stages,
    wire: Wire,
) -> Response:
    target = wire.target(tenant, request.headers)
    turn.headers["x-clawvm-overhead-us"] = str((time.perf_counter_ns() - stages.started) // 1000)
    faults = stream_faults_counted(services.metrics)
    shape = wire.error_body
    if wire.litellm and uses_litellm(chat.model):
        completed = await services.provider.chat(turn.body, target)  # litellm serialises the body itself
        stages.lap("upstream")
        await turn.saved()
        stages.lap("persist")
        turn.headers[STAGES_HEADER] = stages.header()
        return await respond(completed, turn.headers, faults)
    forwarded = wire.forwarded(request.headers)
    policy, retried = retry_policy(tenant), retries_counted(services.metrics)

    async def send(body: bytes) -> UpstreamResponse:
        def attempt() -> Awaitable[UpstreamResponse]:
            return services.upstream.send(target, "POST", wire.path, body, forwarded, stream=chat.stream)

        return await with_retries(attempt, policy, on_retry=retried)

    serialised = jsonio.dumps(turn.body)
    stages.lap("serialise")
    first = await send(serialised)
    stages.lap("upstream")
    await _saved(turn, first)
    stages.lap("persist")
    turn.headers[STAGES_HEADER] = stages.header()
    paging = _paging(services, tenant, ids, turn, wire.remembers(chat))  # the room the counted prompt leaves
    if paging is None or first.status != 200 or (chat.stream and not first.is_stream):
        return await respond(first, turn.headers, faults, shape=shape, event=wire.error_event)
    answer = wire.answer(chat.stream, paging.name, turn.body)

    async def remember() -> None:
        await _remember(services, tenant, chat, wire, answer)

    events = answered(first, send, turn.body, paging, wire, answer, kept=remember)
    if chat.stream:
        relayed = ending_cleanly(streamed(events), faults, wire.error_event)
        return StreamingResponse(
            _recorded(services, relayed, paging), media_type="text/event-stream", headers=turn.headers
        )
    failed, body = await whole(events)
    recalls = BackgroundTask(record_recalls, services.metrics, services.audit, paging)
    if failed is not None:
        response = await respond(failed, turn.headers, shape=shape)
        _then(response, recalls)
        return response
    return Response(body, media_type="application/json", headers=turn.headers, background=recalls)


async def _saved(turn: Turn, answer: UpstreamResponse) -> None:
    """Wait for the turn's save before any byte of `answer` is relayed (no client is answered on a
    turn a crash could still lose); an answer that will not be relayed is closed."""
    try:
        await turn.saved()
    except BaseException:
        await answer.aclose()
        raise


async def _recorded(services: Services, events: AsyncIterator[bytes], paging: Paging) -> AsyncIterator[bytes]:
    """The stream as it is, then its recalls observed."""
    async for chunk in events:
        yield chunk
    await record_recalls(services.metrics, services.audit, paging)


def _paging(services: Services, tenant: Tenant, ids: SessionIds, turn: Turn, wanted: bool) -> Paging | None:
    """The recall loop's paging when the recall tool is offered (or the answer is `wanted` whole)."""
    if not turn.offered and not wanted:
        return None
    room = turn.budget.usable + recall_room(turn.budget, turn.offered) - turn.outcome.tokens
    store = services.sessions.store
    room = max(room, 0)
    return Paging(
        store,
        tenant.name,
        ids.session,
        ids.project,
        turn.counter,
        room,
        name=RECALL_TOOL,
        sessions=services.sessions,
        user=ids.user,
        memory=services.memory,
    )


async def _ready() -> None:
    """The save of a turn saved before it was forwarded."""


def _unobserved() -> None:
    """A turn whose outcome no answer tells."""


@dataclass(slots=True)
class Outcome:
    """What the second half of a turn tells (`policies.step.complete`, then the write-back), once
    it ran: in the save, beside the upstream call, or before forwarding when the turn is saved
    first. Read by the answer's headers and the records, which wait for the save."""

    observation: Observation = field(default_factory=Observation)
    written: WriteReport | None = None  # the turn's write-back
    glimpse: Glimpse | None = None  # what the session inspector records of the turn (gateway.observability.inspector)
    done: bool = False
    tokens: int = 0  # the forwarded transcript's tokens, counted (the assembly's, exact once complete)
    sent: int = 0  # tokens of the transcript as the agent sent it
    duplicates: tuple[duplicates.Duplicate, ...] = ()  # repeated tool calls the turn's new messages issue
    spent: dict[str, int] = field(default_factory=dict)  # ns of the save's parts: "complete", then "commit" (the rest)


@dataclass(frozen=True, slots=True)
class Sizing:
    """What the token headers need besides the turn's `Outcome`: the budget, the recall tool's
    reserve, whether the tool was offered, and the transcript field's name (for the
    insufficient-budget header)."""

    budget: TokenBudget
    reserve: int
    offered: bool
    transcript_field: str
    insufficient: bool  # the pinned set alone did not fit

    def accounted(self, outcome: Outcome) -> int:
        """The prompt's tokens as the budget accounts them: the messages and every tool's schema
        (the recall tool's reserve included)."""
        return outcome.tokens + self.budget.tools

    def prompt(self, outcome: Outcome) -> int:
        """The forwarded prompt's tokens: the messages and the tools (the recall tool's only when offered)."""
        return self.accounted(outcome) - (0 if self.offered else self.reserve)

    def received(self, outcome: Outcome) -> int:
        """The prompt's tokens as the agent sent it (the recall tool is ours)."""
        return outcome.sent + self.budget.tools - self.reserve


@dataclass(slots=True)
class Turn:
    """A planned request, ready to forward."""

    body: dict[str, Any]
    headers: dict[str, str]
    budget: TokenBudget
    counter: TiktokenCounter
    offered: bool  # the recall tool was added to `tools`
    after: Callable[[], Awaitable[None]]  # audit records, written once the answer is sent
    policy_ns: tuple[int, int] = (0, 0)  # the policy engine's ingest and assembly time
    saved: Callable[[], Awaitable[None]] = _ready  # the turn's save ended
    outcome: Outcome = field(default_factory=Outcome)  # what the save learned: read once `saved` returned
    observed: Callable[[], None] = _unobserved  # writes `outcome` into `headers` once it is known


async def prepare(
    services: Services,
    tenant: Tenant,
    chat: WireRequest,
    ids: SessionIds,
    hint: str | None = None,
    wire: Wire = CHAT,
    *,
    overlap: bool = False,
) -> Turn:
    """Plan the turn and persist it; returns the upstream body and our response headers. With
    `overlap`, the turn is planned on a table known current (a cached copy's version is checked,
    one HGET) and its save left running (holding the session's lock, gateway.store.saving):
    `Turn.saved` waits for it, the caller forwards meanwhile and waits before it answers.
    Otherwise the turn is saved before this returns."""
    override = services.settings.models.get(chat.model)
    counter = services.tokenizers.for_model(chat.model, override.encoding if override else None)
    budget = _budget(services, tenant, chat, counter, wire)
    async with AsyncExitStack() as failing:
        held = AsyncExitStack()
        failing.push_async_exit(held)  # the session's lock: released here on a failure, else once saved
        await held.enter_async_context(services.sessions.locked(tenant.name, ids.session))
        plan, timing, outcome, save = await _plan_and_commit(
            services, tenant, chat, ids, counter, budget, hint, wire, overlap
        )
        pending = PendingSave.start(save, held.pop_all()) if save else PendingSave.done(timing.degraded)
    try:
        turn = _planned(services, tenant, chat, ids, wire, (counter, budget), (plan, timing, outcome))
    except GatewayError:
        await _quietly(_settler(services, tenant, ids, pending, {}, _unobserved))
        raise
    turn.saved = _settler(services, tenant, ids, pending, turn.headers, turn.observed)
    if save is None:
        await turn.saved()
    return turn


def _settler(
    services: Services,
    tenant: Tenant,
    ids: SessionIds,
    pending: PendingSave[bool],
    headers: dict[str, str],
    observed: Callable[[], None],
) -> Callable[[], Awaitable[None]]:
    """`Turn.saved`: waits for the save once (a later call returns at once, or raises again); then
    the answer's `headers` say what the save learned (`observed`: the turn's faults, event and
    tokens), and a save the store could not take (the turn's writes queued,
    gateway.store.outage) marks them degraded."""
    failed: list[GatewayError | None] = []

    async def saved() -> None:
        if failed:
            if failed[0] is not None:
                raise failed[0]
            return
        try:
            degraded = await pending.result()
        except (StoreError, TableFormatError) as exc:
            failed.append(_unsaved(services, tenant, ids, exc))
            raise failed[0] from exc
        failed.append(None)
        observed()
        if degraded:
            headers[DEGRADED_HEADER] = DEGRADED
            services.metrics.store_unavailable(tenant.name)

    return saved


def _planned(
    services: Services,
    tenant: Tenant,
    chat: WireRequest,
    ids: SessionIds,
    wire: Wire,
    sizing: tuple[TiktokenCounter, TokenBudget],
    planned: tuple[TurnPlan, Timing, Outcome],
) -> Turn:
    """The planned turn's upstream body, headers and records (those that tell the turn's
    `outcome`, its faults, repeated calls and counted tokens, are written once it is known: the
    save ended)."""
    (counter, budget), (plan, timing, outcome) = sizing, planned
    metrics, audit, inspector = services.metrics, services.audit, services.inspector

    async def after() -> None:
        await record(metrics, audit, tenant.name, ids.session, timing.policy_ns, outcome.written, outcome.observation)

    headers = {
        "x-clawvm-session": ids.session,
        "x-clawvm-budget": str(budget.cap),
        "x-clawvm-budget-source": budget.source,
        "x-clawvm-policy-us": str((timing.ingest_ns + timing.assembly_ns) // 1000),
        "x-clawvm-assembly-us": str(timing.assembly_ns // 1000),
    }
    body = wire.render(chat, plan.messages, tenant)
    offered = wire.offers_recall(chat.body) and any(not m.raw for m in plan.messages)  # built = degraded or a stub
    if offered:
        wire.offer(body, RECALL_TOOL)
    counts = Sizing(
        budget, _reserve(services, chat, counter, wire), offered, wire.transcript_field, plan.assembly.insufficient
    )
    observed = _observer(services, tenant, headers, outcome, counts)
    observed()
    keeps = inspector is not None  # else nothing is recorded
    sent, built = wire.shown(chat, plan.messages, body) if keeps else ([], [])

    async def then() -> None:
        shot = Shot(
            outcome.glimpse, sent, built, counts.received(outcome), counts.prompt(outcome), budget.cap, outcome.written
        )
        await recorded(inspector, tenant.name, ids.session, after, shot)()

    wire.cache_hints(body, chat.model, plan.messages, plan.stable, (tenant.name, ids.session), uses_litellm(chat.model))
    policy = (timing.ingest_ns, timing.assembly_ns)
    return Turn(body, headers, budget, counter, offered, then, policy, outcome=outcome, observed=observed)


def _observer(
    services: Services, tenant: Tenant, headers: dict[str, str], outcome: Outcome, counts: Sizing
) -> Callable[[], None]:
    """Writes what the turn's `outcome` tells into the answer's `headers`, and its token counts
    into the metrics, once it is known (a call before then does nothing; later calls, nothing more)."""
    told: list[bool] = []

    def observed() -> None:
        if not outcome.done or told:
            return
        told.append(True)
        _observed(headers, outcome, counts)
        prompt_in = outcome.sent + counts.budget.tools
        services.metrics.tokens(tenant.name, prompt_in=prompt_in, prompt_out=counts.accounted(outcome))

    return observed


def _observed(headers: dict[str, str], outcome: Outcome, counts: Sizing) -> None:
    """The headers that tell the turn's faults, lifecycle event, repeated tool calls and tokens."""
    headers["x-clawvm-faults"] = outcome.observation.header()
    if outcome.observation.event:
        headers["x-clawvm-event"] = outcome.observation.event
    headers["x-clawvm-prompt-tokens"] = str(counts.prompt(outcome))
    if counts.insufficient:
        accounted, budget = counts.accounted(outcome), counts.budget
        headers["x-clawvm-insufficient"] = _insufficient(accounted, budget, counts.transcript_field)
    if outcome.duplicates:
        headers["x-clawvm-duplicate-tools"] = _duplicates_header(outcome.duplicates)


def _duplicates_header(found: tuple[duplicates.Duplicate, ...]) -> str:
    """`duplicate_tool=N, duplicate_signature=M; call_id->page_id ...`: what the agent re-ran."""
    counts = {kind: sum(1 for d in found if d.kind == kind) for kind in (duplicates.FAULT, duplicates.ALERT)}
    pairs = " ".join(f"{_printable(d.call_id)}->{d.earlier}" for d in found[:DUPLICATES_LISTED])
    return ", ".join(f"{kind}={n}" for kind, n in counts.items() if n) + f"; {pairs}"


def _printable(value: str) -> str:
    return value if value.isascii() and value.isprintable() and len(value) <= 64 else "?"


def _insufficient(prompt_tokens: int, budget: TokenBudget, field: str) -> str:
    if prompt_tokens > budget.hard_limit:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {budget.hard_limit} prompt tokens after the output reserve, "
            f"but the pinned pages and the newest turn alone need {prompt_tokens} tokens (physical insufficiency: "
            "nothing more can be paged out). Shorten the newest message or raise the budget.",
            param=field,
        )
    return f"minimum set {prompt_tokens} tokens exceeds budget {budget.cap}"


def recall_room(budget: TokenBudget, offered: bool) -> int:
    """Prompt tokens kept free for recalled text (`policies.recall.recall_room`)."""
    return room_for_recall(budget.cap, offered)


def _budget(services: Services, tenant: Tenant, chat: WireRequest, counter: TiktokenCounter, wire: Wire) -> TokenBudget:
    server = services.settings.server
    window, source = resolve_window(
        chat.model, services.catalog, services.settings.models, server.default_context_window
    )
    tools = services.tool_tokens.count(counter, wire.tools(chat.body)) + _reserve(services, chat, counter, wire)
    budget = resolve_budget(tenant.policy.budget, window, source, tools)
    return without_recall_room(budget, wire.offers_recall(chat.body))


def _reserve(services: Services, chat: WireRequest, counter: TiktokenCounter, wire: Wire) -> int:
    """Tokens of the recall tool's schema, kept free whenever the tool may be offered."""
    if not wire.offers_recall(chat.body):
        return 0
    return services.tool_tokens.recall(counter, wire, RECALL_TOOL)


def commit_backoff(attempt: int, draw: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait after the `attempt`-th lost commit (0-based): full jitter, so replicas
    racing for one session spread out instead of colliding again in step."""
    return draw(0.0, min(COMMIT_BACKOFF_CAP_S, COMMIT_BACKOFF_S * 2**attempt))


async def _plan_and_commit(
    services: Services,
    tenant: Tenant,
    chat: WireRequest,
    ids: SessionIds,
    counter: TokenCounter,
    budget: TokenBudget,
    hint: str | None,
    wire: Wire,
    beside: bool = False,
) -> tuple[TurnPlan, Timing, Outcome, Save | None]:
    """The planned turn and, with `beside`, its save unrun (the caller runs it beside the upstream
    call: the rest of the turn, its write-back and its commit); otherwise the save ran here, a
    lost race planning the turn again on fresh state."""
    services.outage.admit()
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            table = await _load(services, tenant, ids, verified=beside)
            turn = await _turn(services, tenant, chat, table, counter, budget, hint, wire, beside)
            plan, timing, outcome, save = turn
            if beside:
                return plan, timing, outcome, save
            return plan, replace(timing, degraded=await save()), outcome, None
        except VersionConflict:  # the table, or the session memory joined to its save, moved
            _lost_race(services, tenant, ids)
            await asyncio.sleep(commit_backoff(attempt))
        except (StoreUnavailable, CorruptData, TableFormatError) as exc:
            raise _unsaved(services, tenant, ids, exc) from exc
    raise ServiceUnavailable("the session is being updated concurrently; retry the request")


def _lost_race(services: Services, tenant: Tenant, ids: SessionIds) -> None:
    """Another writer moved the session: drop its cached table and memory, and check cached copies
    from now on (`SessionState.shared`)."""
    services.sessions.forget(tenant.name, ids.session)
    services.sessions.shared = True
    services.memory.forget(tenant.name, session_scope(ids.session))


def _unsaved(services: Services, tenant: Tenant, ids: SessionIds, exc: StoreError | TableFormatError) -> GatewayError:
    """The answer to a turn the store failed: a lost race (of a save run beside the upstream call)
    is a StaleTurn, to plan again; an unavailable store or unreadable state, a 503."""
    if isinstance(exc, VersionConflict):
        _lost_race(services, tenant, ids)
        return StaleTurn()
    services.sessions.forget(tenant.name, ids.session)
    if isinstance(exc, StoreUnavailable):
        return store_failure(exc, f"session {ids.session}")
    return ServiceUnavailable(
        f"the stored state of session {ids.session!r} cannot be read ({exc}); it was left untouched "
        "for inspection. Use a new session id (X-ClawVM-Session) to continue.",
        code="session_state_unreadable",
    )


async def _load(services: Services, tenant: Tenant, ids: SessionIds, verified: bool = False) -> PageTable:
    """The session's table: the outage queue's while it holds deferred work, else the cached
    (dropped with the session's memory when the versions board says another worker saved past
    it; checked first once another writer was seen, unless the turn is `verified` while it is
    planned: `_turn`) or stored one, read with the session's memory (a copy of the memory that
    outlived the cached table, which another session's turns evicted, may be older than the
    stored table); a fresh table (built from the request's own messages) when the store is
    unreachable."""
    held = services.outage.table(tenant.name, ids.session)
    if held is not None:
        services.sessions.forget(tenant.name, ids.session)  # the caller owns it until commit
        return held
    try:
        if (
            not services.sessions.holds(tenant.name, ids.session)  # read now: memory kept since may be older
            or services.sessions.stale(tenant.name, ids.session)  # moved on elsewhere
            or (not verified and not await services.sessions.current(tenant.name, ids.session))
        ):
            services.memory.forget(tenant.name, session_scope(ids.session))
        return await services.sessions.load(tenant.name, ids.session, ids.project, ids.user)
    except StoreUnavailable as exc:
        log.warning("session %s planned on a fresh table: %s", ids.session, exc)
        return PageTable(tenant=tenant.name, session=ids.session, project=ids.project, user=ids.user)


async def _memories(services: Services, table: PageTable) -> tuple[Memories | None, str]:
    """The committed memory the turn's write-back is planned on, or (None, why) when it must be
    deferred: the store is unavailable, or the session's earlier batches wait in the outage queue
    (batches commit in order)."""
    if services.outage.holds(table.tenant, table.session):
        return None, ""
    try:
        return await services.memory.memories(table), ""
    except StoreUnavailable as exc:
        log.warning("session %s: write-back deferred, the store is unavailable: %s", table.session, exc)
        return None, f"write-back: {exc.reason}"


async def _write_back(
    services: Services, table: PageTable, decision: Decision
) -> tuple[WriteReport | None, WriteBatch | None, str]:
    """Carry out the turn's write-back but for the session scope's batch, returned to commit with
    the table (one round trip); or (None, None, why) when the store is unavailable (deferred)."""
    if decision.writes is None:
        return None, None, ""
    try:
        report, held = await services.memory.execute_apart(table, decision.writes, decision.new_pages)
        return report, held, ""
    except StoreUnavailable as exc:
        log.warning("session %s: write-back deferred, the store is unavailable: %s", table.session, exc)
        return None, None, f"write-back: {exc.reason}"


async def _commit(
    services: Services,
    table: PageTable,
    decision: Decision,
    written: WriteReport | None,
    held: WriteBatch | None,
    unavailable: str,
) -> bool:
    """Save the turn, with the session scope's write-back batch `held` in the same script; True
    when the store was unavailable and its writes were deferred (the turn is then degraded). A
    session with deferred work commits it first, in order, then this turn."""
    outage, key = services.outage, (table.tenant, table.session)
    pages, observation = list(decision.pages), decision.observation
    deferred = None if written is not None else list(decision.new_pages)
    if deferred is None and not outage.holds(*key):
        try:
            await services.sessions.commit(table, pages, services.memory.joined_args(held) if held else ())
            if held is not None and written is not None:
                services.memory.settle(table.tenant, held, written)
            return False
        except StoreUnavailable as exc:
            log.warning("session %s: commit deferred, the store is unavailable: %s", table.session, exc)
            unavailable = f"commit: {exc.reason}"
            if held is not None:  # its batch did not commit with the table: the write-back waits too
                deferred = list(decision.new_pages)
    records = (observation.decisions, observation.events)  # written with the deferred work, in order
    observation.decisions, observation.events = [], []
    if unavailable:
        records[1].append(store_event(unavailable, table.turn))
    outage.defer(table, pages, deferred, records)
    if not unavailable:  # the store answered so far this turn: commit the session's queue now
        try:
            await outage.flush(*key)
            return False
        except StoreUnavailable as exc:
            log.warning("session %s: deferred work not committed, the store is unavailable: %s", table.session, exc)
            unavailable = f"commit: {exc.reason}"
            outage.note(*key, [store_event(unavailable, table.turn)])
    log.warning("session %s turn %d served without the store (%s)", table.session, table.turn, unavailable)
    return True


async def _turn(
    services: Services,
    tenant: Tenant,
    chat: WireRequest,
    table: PageTable,
    counter: TokenCounter,
    budget: TokenBudget,
    hint: str | None,
    wire: Wire,
    verify: bool = False,
) -> tuple[TurnPlan, Timing, Outcome, Save]:
    """One turn on a loaded table: load what the pure step needs and run its first half
    (`policies.step.forward`, the transcript to forward); the rest is returned to run as the
    save (`_finished_turn`: the step's second half, the write-back, the commit; True when
    degraded; the records are written after the answer). With `verify` (the save will run beside
    the upstream call, too late to tell that the table was stale), the table's stored version is
    read while the step runs, and a turn that writes on a table another writer moved past raises
    VersionConflict before anything is written (a turn that writes nothing is forwarded as it
    would be without the check: no save of it could have told)."""
    now = int(time.time())
    moved = _moved(services, table) if verify else None
    if moved is not None:
        await asyncio.sleep(0)  # the read goes out before the CPU-bound step
    start = None
    if wants_start(table, chat.messages):
        idle = services.settings.server.session_idle_seconds
        start = await load_start(
            services.sessions, services.memory, table, partial(may_carry, table, now=now, idle=idle)
        )
    memories, unavailable = await _memories(services, table)
    turn = TurnInput(
        chat.messages,
        tenant.policy,
        counter,
        budget,
        now,
        idle=services.settings.server.session_idle_seconds,
        hint=hint,
        offers_recall=wire.offers_recall(chat.body),
        recall_tool=RECALL_TOOL,
        start=start,
        memories=memories,
    )
    sent = forward(table, turn, clock=time.perf_counter_ns)
    if moved is not None and _writes(table, sent, turn) and await moved:
        raise VersionConflict(f"session {table.session}: the table was saved past v{table.version} elsewhere")
    timing = Timing(sent.ingest_ns, sent.assembly_ns)
    outcome = Outcome()
    return sent.plan, timing, outcome, partial(_finished_turn, services, table, turn, sent, outcome, unavailable)


def _writes(table: PageTable, sent: Forwarded, turn: TurnInput) -> bool:
    """Whether the turn `forward` planned writes anything once complete (`writes`): new pages, a
    write-back, or a change to the table (`complete` marks it used now)."""
    new = (*sent.plan.ingest.new_pages, *table.pending.finished, *sent.crossing.seeded)
    return writes(table, new, turn.memories is not None) or table.seen != turn.now


async def _finished_turn(
    services: Services, table: PageTable, turn: TurnInput, sent: Forwarded, outcome: Outcome, unavailable: str
) -> bool:
    """The turn's save: the step's second half (`policies.step.complete`: pure, while the upstream
    generates), the write-back, then the commit (`_commit`); fills in `outcome`. Its first steps
    yield to the loop: the forwarding task (and aiohttp's task that writes the request body, on
    Python < 3.12 a task of its own, scheduled after this one) puts the request on the wire before
    this CPU-bound part runs."""
    for _ in range(FORWARD_FIRST_YIELDS):
        await asyncio.sleep(0)
    started = time.perf_counter_ns()
    decision = complete(table, turn, sent)
    completed = time.perf_counter_ns()
    outcome.spent["complete"] = completed - started
    try:
        written, held, failed = await _write_back(services, table, decision)
        observation = decision.observation
        outcome.observation, outcome.written, outcome.done = observation, written, True
        outcome.tokens, outcome.sent = decision.plan.assembly.tokens, decision.sent
        outcome.duplicates = decision.duplicates
        outcome.glimpse = glimpse(table, observation.decisions, observation.events, decision.plan.assembly)
        return await _commit(services, table, decision, written, held, unavailable or failed)
    finally:  # the rest of the save: a project's or user's write-back, then the save script
        outcome.spent["commit"] = time.perf_counter_ns() - completed


def _moved(services: Services, table: PageTable) -> asyncio.Task[bool] | None:
    """Whether another writer saved the session past `table` (one HGET), read in the background;
    None for a table the outage queue holds (its stored version lags by design) or one the
    versions board confirms (nothing to read). It is never cancelled: a redis command cancelled
    mid-reply costs its connection."""
    if services.outage.holds(table.tenant, table.session) or services.sessions.confirmed(table):
        return None
    read = asyncio.ensure_future(services.sessions.moved(table))
    read.add_done_callback(_unheard)  # a turn that writes nothing does not wait for it: never cancelled
    return read


def _unheard(read: asyncio.Future[bool]) -> None:
    """A version read no turn waited for: its failure is logged, never left unretrieved."""
    if not read.cancelled() and read.exception() is not None:
        log.warning("a table version read failed: %r", read.exception())


async def dry_run(services: Services, tenant: Tenant, chat: WireRequest, ids: SessionIds, wire: Wire) -> dict[str, Any]:
    """The upstream body this request would be forwarded as, planned on a copy of the session's
    table: nothing is ingested, written back or committed (a count of tokens, not a turn)."""
    override = services.settings.models.get(chat.model)
    counter = services.tokenizers.for_model(chat.model, override.encoding if override else None)
    budget = _budget(services, tenant, chat, counter, wire)
    fresh = PageTable(tenant=tenant.name, session=ids.session, project=ids.project, user=ids.user)
    try:
        held = services.outage.table(tenant.name, ids.session) or await services.sessions.read(tenant.name, ids.session)
    except (StoreUnavailable, CorruptData, TableFormatError):  # counted as a new session would be
        held = None
    table = copy.deepcopy(held) if held is not None else fresh
    plan = plan_turn(table, chat.messages, tenant.policy, counter, budget, recall_tool=RECALL_TOOL)
    body = wire.render(chat, plan.messages, tenant)
    if wire.offers_recall(chat.body) and any(not m.raw for m in plan.messages):
        wire.offer(body, RECALL_TOOL)
    return body
