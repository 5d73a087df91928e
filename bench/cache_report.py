"""The report's section on cost with provider prompt caching: one table, its bars and its plot.

Rows come from two replays that each carry their own direct row, so every ratio is against
sending everything over the same requests: the traces section (every request of every trace,
direct and the gateway) and the peers section (the first requests of each trace, every peer).
Costs are `bench.pricing`'s: per upstream request, recall follow-ups included, the prefix shared
with the session's previous request read from the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.pricing import ratio

Json = dict[str, Any]
OURS = "clawvm"
PLOT = "cost_over_session.png"
TARGETS = {  # budget: (prefix reuse at least, OpenAI-priced at most, Anthropic-priced at most), issue 13
    4000: (0.95, 0.30, 0.35),
    16000: (0.97, 0.55, 0.60),
}


def _replays(sections: Mapping[str, Json]) -> list[tuple[str, Json]]:
    found = []
    for name in ("traces", "peers"):
        data = sections.get(name) or {}
        if data.get("rows"):
            found.append((_replay_name(data), data))
    return found


def _replay_name(data: Json) -> str:
    turns = data.get("turns_per_trace", 0)
    which = "every request" if turns >= 1000 else f"first {turns} requests"
    return f"{len(data.get('traces', []))} traces, {which}"


def cost_rows(data: Json) -> list[tuple[Json, Json]]:
    """(row, the direct row of its budget) for every row of a replay that has a direct row."""
    direct = {r["budget"]: r for r in data.get("rows", []) if r.get("peer") == "direct"}
    return [(r, direct[r["budget"]]) for r in data.get("rows", []) if r["budget"] in direct and "openai_cost" in r]


def figures(row: Json, direct: Json) -> dict[str, float | None]:
    return {
        "tokens": ratio(row["tokens_forwarded"], direct["tokens_forwarded"]),
        "reuse": row["prefix_reuse"],
        "openai": ratio(row["openai_cost"], direct["openai_cost"]),
        "anthropic": ratio(row["anthropic_cost"], direct["anthropic_cost"]),
        "floor": ratio(row.get("openai_floor", 0.0), direct["openai_cost"]),
        "ceiling": row.get("reuse_ceiling"),
    }


def _shown(value: float | None, form: str = "{:.2f}") -> str:
    return "n/a" if value is None else form.format(value)


def cache_section(
    sections: Mapping[str, Json], table: Callable[[Sequence[str], Sequence[Sequence[object]]], list[str]]
) -> list[str]:
    lines = ["## Cost with provider prompt caching", ""]
    replays = _replays(sections)
    if not replays:
        return lines + ["Not run: the traces and peers sections are absent.", ""]
    lines += [
        "Per upstream request (recall follow-ups included): the longest prefix shared with the previous request "
        "of the session (tools, then messages, token-exact inside the first message that differs), priced in "
        "units of one uncached input token (`bench/pricing.py`): OpenAI caches 128-token steps of a prefix of "
        "1,024+ tokens and bills them at 0.1×; Anthropic reads the same at 0.1× and writes the rest at 1.25×. "
        "Each ratio is against sending everything (direct) over the same requests of the same replay. The floor "
        "is the OpenAI-priced cost of the same prompts had each read from the cache all but the tokens the agent "
        "added since its previous request (which no cache holds yet): what prompts of that size cost when the "
        "agent's new tokens are forwarded whole (a peer that shrinks them can go below it). The reuse ceiling is "
        "the prefix reuse of the same prompts had each shared with its predecessor all but those new tokens: no "
        "assembly that forwards them whole in prompts of that size reuses more.",
        "",
    ]
    rows = []
    for name, data in replays:
        for row, direct in cost_rows(data):
            f = figures(row, direct)
            rows.append(
                (
                    row["budget"],
                    name,
                    row["peer"],
                    row["faults"],
                    _shown(f["tokens"]),
                    f"{100 * row['prefix_reuse']:.1f}%",
                    _shown(f["openai"]),
                    _shown(f["anthropic"]),
                    _shown(f["floor"]),
                    _shown(f["ceiling"], "{:.1%}"),
                )
            )
    rows.sort(key=lambda r: (r[0], r[1] != replays[0][0], r[2] != "direct", r[2] != OURS, r[2]))
    header = ("budget", "replay", "peer", "faults", "tokens vs direct", "prefix reuse", "OpenAI-priced cost vs direct")
    priced = ("Anthropic-priced cost vs direct", "OpenAI-priced floor vs direct", "prefix reuse ceiling")
    lines += table((*header, *priced), rows)
    return lines + [f"![cumulative cost over one session]({PLOT})", ""]


@dataclass(frozen=True, slots=True)
class Target:
    """One of issue 13's targets, judged: the report makes it a bar."""

    name: str
    met: bool
    value: str
    error: str = ""  # no measurement


def cache_targets(sections: Mapping[str, Json]) -> list[Target]:
    """Issue 13's targets for the gateway on every request of the traces (prefix reuse, both costs)."""
    out = []
    for row, direct in cost_rows(sections.get("traces") or {}):
        if row.get("peer") != OURS or row["budget"] not in TARGETS:
            continue
        reuse, openai, anthropic = TARGETS[row["budget"]]
        f = figures(row, direct)
        value = (
            f"reuse {100 * row['prefix_reuse']:.1f}% (ceiling {_shown(f['ceiling'], '{:.1%}')}), "
            f"OpenAI {_shown(f['openai'])} (floor {_shown(f['floor'])}), Anthropic {_shown(f['anthropic'])}"
        )
        met = (
            f["openai"] is not None
            and f["anthropic"] is not None
            and row["prefix_reuse"] >= reuse
            and f["openai"] <= openai
            and f["anthropic"] <= anthropic
        )
        name = (
            f"prompt cache at {row['budget']}: reuse ≥ {reuse:.0%}, OpenAI-priced ≤ {openai}, "
            f"Anthropic-priced ≤ {anthropic} of direct"
        )
        out.append(Target(name, met, value, "" if f["openai"] is not None else "direct cost nothing"))
    return out


def session_series(data: Json) -> tuple[str, dict[str, list[float]]]:
    """The longest session of the traces replay: cumulative OpenAI-priced cost per request, for
    direct and for the gateway at each budget."""
    rows = [r for r in data.get("rows", []) if r.get("session_costs")]
    direct = [r for r in rows if r["peer"] == "direct"]
    if not direct:
        return "", {}
    lengths = direct[0]["session_costs"]
    trace = max(sorted(lengths), key=lambda name: len(lengths[name]))
    series = {"direct": _cumulative(direct[0]["session_costs"][trace])}
    for row in rows:
        if row["peer"] == OURS and trace in row["session_costs"]:
            series[f"{OURS} at {row['budget']:,}"] = _cumulative(row["session_costs"][trace])
    return trace, series


def _cumulative(costs: Sequence[Sequence[float]]) -> list[float]:
    total, out = 0.0, []
    for openai, _ in costs:
        total += openai
        out.append(total)
    return out


def plot_session_cost(axes: Any, data: Json) -> None:
    trace, series = session_series(data)
    if not series:
        axes.text(0.5, 0.5, "no per-request costs in this run", ha="center", va="center")
        return
    for label, values in series.items():
        axes.plot(range(1, len(values) + 1), values, label=label, linestyle="--" if label == "direct" else "-")
    axes.set(
        xlabel="request of the session",
        ylabel="cumulative input cost (uncached tokens)",
        title=f"OpenAI-priced cost over one session ({trace})",
    )
    axes.legend(fontsize="small")
