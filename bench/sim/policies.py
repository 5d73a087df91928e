"""The six policies of the paper's §7.2 table, as feature switches, and how each chooses levels.

Every policy chooses through the real selector of the core: the workload's live pages become
real `Page` objects (four `Representation`s whose token counts are the simulation sizes),
laid out by `policies.layout.make_layout`, and `policies.assembler.assemble` picks the levels
(or, for a policy without upgrades, `assembler.floor_of` gives the Phase-1 levels alone). The
switches act on what the selector is given, never on the selector itself:

- auto_pin_hard: bootstrap pages, constraints and the current plan keep their hard pin and
  floor (structured). Without it they are plain pages with a pointer floor.
- prefetch_pointer: every live page sits at least at pointer. Without it a page's floor is
  `Fidelity.NONE`: absent unless upgrades (or retrieval) bring it in.
- upgrade: the Phase-2 scoring, as `Weights` and base utility: utility (the reference weights),
  recency (compaction-hybrid: base + 0.9 recency + 0.1 recompute), lru (recency only), oracle
  (utility, plus ORACLE_BONUS for each demand of the page in the next h turns), none (Phase 1 only).
- recency: the selector's `born` anchor is the turn the page last arrived or was used.
- retrieves: the retrieval baselines hold what the previous step used (the last retrieval's
  results) at the level it was used: that page's floor is raised to it.
- pointer_resolution, writeback_compaction, writeback_reset: judged by the engine.
- budget_scale: the paper's "multisession budget scale", whose meaning it leaves undocumented.
  Here it scales the budget of every session after the first (after a reset).

Adapter: one simulation token is TOKEN_SCALE layout tokens, so the layout's framing (4 tokens a
message, 52 for a span stub's header) is a fraction of a simulation token, as it is of a real
page. Each turn's layout has a zero-text user message (`turn:<n>`) before the turn's arrivals, so
that `newest_turn` finds the turn's start: it costs its framing, the same for every policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType

from bench.sim.workloads import SimPage
from policies.assembler import assemble, floor_of
from policies.layout import Layout, make_layout, total_cost
from policies.pages import Fidelity, Page, PageType, Pin, Provenance, Representation, Reprs, Scope
from policies.tenant import Weights

TOKEN_SCALE = 10
ORACLE_BONUS = 2.2
HARD_TYPES = frozenset({PageType.BOOTSTRAP, PageType.CONSTRAINT, PageType.PLAN})
# Message roles: tool results are "tool", every other page "system"; only the turn marker is "user".
ROLES: Mapping[PageType, str] = MappingProxyType({PageType.EVIDENCE: "tool"})


class Upgrade(StrEnum):
    NONE = "none"
    RECENCY = "recency"
    UTILITY = "utility"
    LRU = "lru"
    ORACLE = "oracle"


WEIGHTS: Mapping[Upgrade, Weights] = MappingProxyType(
    {
        Upgrade.UTILITY: Weights(),
        Upgrade.ORACLE: Weights(),
        Upgrade.RECENCY: Weights(pin_hard=0.0, pin_soft=0.0, recency=0.9, recompute=0.1),
        Upgrade.LRU: Weights(pin_hard=0.0, pin_soft=0.0, recency=1.0, recompute=0.0),
        Upgrade.NONE: Weights(),
    }
)


@dataclass(frozen=True, slots=True)
class SimPolicy:
    name: str
    auto_pin_hard: bool
    prefetch_pointer: bool
    writeback_compaction: bool
    writeback_reset: bool
    upgrade: Upgrade
    pointer_resolution: bool
    budget_scale: float
    retrieves: bool = False


RETRIEVAL = SimPolicy("Retrieval", False, False, False, False, Upgrade.NONE, False, 0.78, retrieves=True)
RETRIEVAL_CACHE = SimPolicy("Retrieval+Cache", False, False, False, False, Upgrade.NONE, True, 0.78, retrieves=True)
COMPACTION_HYBRID = SimPolicy(
    "Compaction-Hybrid", False, True, True, False, Upgrade.RECENCY, True, 0.85, retrieves=True
)
LRU = SimPolicy("LRU", True, True, True, True, Upgrade.LRU, True, 1.0)
CLAWVM = SimPolicy("ClawVM", True, True, True, True, Upgrade.UTILITY, True, 1.0)
ORACLE = SimPolicy("Oracle", True, True, True, True, Upgrade.ORACLE, True, 1.0)
POLICIES: tuple[SimPolicy, ...] = (RETRIEVAL, RETRIEVAL_CACHE, COMPACTION_HYBRID, LRU, CLAWVM, ORACLE)

FEATURES: tuple[str, ...] = (
    "pointer_resolution",
    "writeback_compaction",
    "auto_pin_hard",
    "writeback_reset",
    "upgrade",
    "prefetch_pointer",
)


def without(policy: SimPolicy, feature: str) -> SimPolicy:
    """The policy with one feature switched off (the subtractive ablation)."""
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}; known: {', '.join(FEATURES)}")
    off: object = Upgrade.NONE if feature == "upgrade" else False
    return replace(policy, name=f"{policy.name} - {feature}", **{feature: off})


def by_name(name: str) -> SimPolicy:
    for policy in POLICIES:
        if policy.name == name:
            return policy
    raise ValueError(f"unknown policy {name!r}")


@dataclass(frozen=True, slots=True)
class View:
    """What a policy knows when it assembles a turn's prompt."""

    turn: int
    pages: Mapping[str, SimPage]
    older: tuple[str, ...]  # live pages from earlier turns, in arrival order
    arrivals: tuple[str, ...]  # this turn's new pages (the newest turn)
    plan: str | None  # the current plan
    retrieved: Mapping[str, Fidelity]  # what the previous step used, at the level it used it
    touched: Mapping[str, int]  # page -> the last turn it arrived or was used
    previous: Mapping[str, Fidelity] | None  # the last prompt's levels (None after a boundary)
    budget: int  # simulation tokens
    upcoming: Mapping[str, int]  # oracle only: demands per page in the next h turns


@dataclass(frozen=True, slots=True)
class Selection:
    levels: Mapping[str, Fidelity]  # every live page
    cost: int  # layout tokens of the prompt
    insufficient: bool  # the policy's minimum set exceeded the budget


def select(policy: SimPolicy, view: View) -> Selection:
    layout = build_layout(policy, view)
    budget = view.budget * TOKEN_SCALE
    if policy.upgrade is Upgrade.NONE:
        levels = {layout.order[i]: floor_of(layout, i) for i in range(len(layout.order))}
        cost = total_cost(layout, levels)
        return Selection(_sim_levels(levels, view), cost, cost > budget)
    weights = WEIGHTS[policy.upgrade]
    previous = None if view.previous is None else dict(view.previous)
    assembly = assemble(layout, budget, weights, view.turn, view.touched, previous)
    return Selection(_sim_levels(assembly.levels, view), assembly.tokens, assembly.insufficient)


def _sim_levels(levels: Mapping[str, Fidelity], view: View) -> dict[str, Fidelity]:
    return {p: levels[p] for p in (*view.older, *view.arrivals)}


def marker_id(turn: int) -> str:
    return f"turn:{turn}"


def build_layout(policy: SimPolicy, view: View) -> Layout:
    marker = marker_id(view.turn)
    order = (*view.older, marker, *view.arrivals)
    pages = {p: real_page(policy, view, view.pages[p], i) for i, p in enumerate(order) if p != marker}
    pages[marker] = _marker(marker, len(view.older))
    entries = {p: pages[p].tokens(Fidelity.POINTER) for p in order}
    return make_layout(order, pages, {}, entries, (), _current_plan(policy, view))


def _current_plan(policy: SimPolicy, view: View) -> str | None:
    if policy.auto_pin_hard or (policy.retrieves and view.plan in view.retrieved):
        return view.plan
    return None


def real_page(policy: SimPolicy, view: View, page: SimPage, position: int) -> Page:
    reprs = Reprs(*(_repr(page, level) for level in (4, 3, 2, 1)))
    role = ROLES.get(page.type, "system")
    pin, floor = _pin_and_floor(policy, view, page)
    provenance = Provenance(position, role)
    utility = _utility(policy, view, page)
    return Page(page.id, page.type, page.scope, provenance, pin, floor, reprs, utility, page.recompute_cost)


def _repr(page: SimPage, level: int) -> Representation:
    return Representation(f"{page.id}@{level}", page.sizes[level - 1] * TOKEN_SCALE)


def _pin_and_floor(policy: SimPolicy, view: View, page: SimPage) -> tuple[Pin, Fidelity]:
    pin, floor = page.pin, page.floor
    if page.type in HARD_TYPES and not policy.auto_pin_hard:
        pin, floor = Pin.NONE, Fidelity.POINTER
    if floor is Fidelity.POINTER and not policy.prefetch_pointer:
        floor = Fidelity.NONE
    if policy.retrieves and page.id in view.retrieved:
        floor = max(floor, view.retrieved[page.id])
    return pin, floor


def _utility(policy: SimPolicy, view: View, page: SimPage) -> float:
    if policy.upgrade is Upgrade.LRU:
        return 0.0
    if policy.upgrade is Upgrade.ORACLE:
        return page.base_utility + ORACLE_BONUS * view.upcoming.get(page.id, 0)
    return page.base_utility


def _marker(page_id: str, position: int) -> Page:
    text = Representation("", 0)
    return Page(
        page_id,
        PageType.CONVERSATION,
        Scope.SESSION,
        Provenance(position, "user"),
        Pin.NONE,
        Fidelity.POINTER,
        Reprs(text, text, text, text),
        0.0,
        0.0,
    )
