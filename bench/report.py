"""The evaluation report: `bench/results/report.md` and its PNG plots, from the sections' JSON.

`write_report(sections, directory, command)` takes what `bench.eval` wrote per section (a missing
section is reported as not run) and writes `report.md` beside five plots: faults against budget
per policy (the synthetic sweep), tokens per turn (the churn stress), the latency CDF (direct
against through the gateway), cost against session length (cost growth) and the cumulative
prompt-cache-priced cost over one session (the traces; `bench.cache_report`).

Figures that are timings carry a ⏱ and change from run to run; everything else is reproducible,
and `stable_digest` (printed in the report) is the SHA-256 of the sections with every timing
removed: a rerun gives the same digest. "Bars missed and why" is computed from the numbers.
A bar whose figures are impossible or absent (a negative time, a NaN or negative ratio, nothing
measured) is a measurement error: never met, listed apart from the bars missed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cache_report import PLOT, cache_section, cache_targets, cost_rows, plot_session_cost
from bench.cache_report import figures as cost_figures

Json = dict[str, Any]
TIMING = "⏱"
TIMING_SUFFIXES = ("_us", "_ms", "_ns", "_us_met")
TIMING_KEYS = frozenset({"processes", "median_bar_met", "litellm_bar_met", "samples_us", "ratios"})
POLICY_BAR_US = 50.0  # the paper's median policy time per turn
ADDED_BAR_US = 1000.0  # the gateway's added median latency
GROWTH_BAR = 2.0  # last mark over first mark: per-turn cost follows new content
LARGE_STAGE_US = 1000.0  # a slowest request's stages listed from this long
EVERY_TURN = 1000  # a replay of at least this many requests per trace is "every request"
PLOTS = {
    "faults": "faults_vs_budget.png",
    "tokens": "tokens_per_turn.png",
    "latency": "latency_cdf.png",
    "growth": "cost_vs_session_length.png",
    "cache": PLOT,
}


# ---------------------------------------------------------------- reproducibility


def stable(value: Any) -> Any:
    """`value` with every timing figure (and process ids) removed."""
    if isinstance(value, Mapping):
        return {k: stable(v) for k, v in value.items() if not _is_timing(str(k))}
    if isinstance(value, list | tuple):
        return [stable(v) for v in value]
    return value


def _is_timing(key: str) -> bool:
    return key in TIMING_KEYS or key.endswith(TIMING_SUFFIXES)


def stable_digest(sections: Mapping[str, Json]) -> str:
    text = json.dumps(stable(dict(sections)), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- markdown pieces


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


def not_run(name: str) -> list[str]:
    return [f"*Not run: no `{name}` section.*", ""]


# ---------------------------------------------------------------- sections


def synthetic_section(data: Json | None) -> list[str]:
    lines = ["## Synthetic sweep: Table 4 and the ablation (Table 6)", ""]
    if not data:
        return lines + not_run("synthetic")
    lines += [
        f"Seed {data.get('seed')}, horizon {data.get('horizon')}; {len(data.get('rows', []))} rows. "
        "Our workloads are our own; the paper's figures stand beside ours, not fitted.",
        "",
    ]
    rows = [
        (
            r["policy"],
            r["mean_faults"],
            r.get("paper_faults"),
            r["mean_thrash"],
            r.get("paper_thrash"),
            f"{r['rows_at_oracle']}/{r['rows']}",
            r["insufficient_turns"],
        )
        for r in data.get("table4", [])
    ]
    header = ("policy", "mean faults", "paper", "mean thrash", "paper", "rows at oracle", "insufficient turns")
    lines += table(header, rows)
    lines += [f"![faults against budget per policy]({PLOTS['faults']})", ""]
    ablation = data.get("ablation") or []
    if ablation:
        lines += ["Subtractive ablation (budget 180, faults summed over the families):", ""]
        abl = [
            (a["removed"], a["bootstrap"], a["flush"], a["dup_refetch"], a["total"], (a.get("paper") or [None] * 4)[3])
            for a in ablation
        ]
        lines += table(("removed", "bootstrap", "flush", "dup+refetch", "total", "paper total"), abl)
    return lines


def traces_section(data: Json | None, policy: Json | None) -> list[str]:
    lines = ["## Real traces, per budget", ""]
    if not data:
        return lines + not_run("traces")
    ours = [r for r in data.get("rows", []) if r.get("peer") == "clawvm"]
    turns = data.get("turns_per_trace", 0)
    which = "every request" if turns >= EVERY_TURN else f"the first {turns} requests"
    lines += [
        f"{len(data.get('traces', []))} traces, {which} of each, through the gateway and the fake upstream "
        f"answering with the real next message and recalling as the {data.get('knowledge', 'honest')} model "
        "(from what its prompt shows).",
        "",
    ]
    rows = [_trace_row(r) for r in ours]
    header = (
        "budget",
        "requests",
        "invalid",
        "unreported overruns",
        "declared insufficient",
        "faults",
        "recalled",
        "tokens saved",
        "prefix reuse",
        f"added median {TIMING} µs",
        f"added p99 {TIMING} µs",
    )
    lines += table(header, rows)
    return lines + _slowest_lines(ours) + _knowledge_lines(data) + _policy_lines(policy, ours)


def _slowest_lines(ours: Sequence[Json]) -> list[str]:
    """What the p99 is made of: each budget's requests that added most, with their large stages."""
    rows = [
        (r["budget"], slow["request"], round(slow["added_us"]), _large_stages(slow["stages_us"]))
        for r in ours
        for slow in r.get("slowest_us") or ()
    ]
    if not rows:
        return []
    lines = [
        f"The slowest requests {TIMING}, like for like (what the p99 is made of), each with its `server-timing` "
        f"stages of {LARGE_STAGE_US:,.0f} µs or more (upstream holds the fake's answer and the save running "
        "beside it, persist the wait for the save after the answer):",
        "",
    ]
    return lines + table(("budget", "request", f"added {TIMING} µs", "its large stages, µs"), rows)


def _large_stages(stages: Mapping[str, float]) -> str:
    large = [f"{name} {value:,.0f}" for name, value in stages.items() if value >= LARGE_STAGE_US]
    return ", ".join(large) or "none"


def _knowledge_lines(data: Json) -> list[str]:
    """Honest model against the perfect-knowledge upper bound, per budget, side by side."""
    perfect = data.get("perfect_knowledge") or {}
    bound = {r["budget"]: r for r in perfect.get("rows", []) if r.get("peer") == "clawvm"}
    honest = [r for r in data.get("rows", []) if r.get("peer") == "clawvm"]
    if not bound or not honest:
        return []
    lines = [
        "The faults above are the honest model's: it recalls only from what its prompt shows (page ids, ranges, "
        "search). Beside it, the upper bound of a model that knows the gateway's page ids (recall with perfect "
        "knowledge), never a headline: the gap is what a real model loses. Each cell: honest / perfect knowledge.",
        "",
    ]
    figures = (("faults", "faults"), *FAULT_KINDS, ("recalled", "recalled"))
    rows = [
        (r["budget"], *(f"{r.get(key, 0)} / {bound[r['budget']].get(key, 0)}" for _, key in figures))
        for r in honest
        if r["budget"] in bound
    ]
    header = ("budget (honest / perfect knowledge)", *(name for name, _ in figures))
    return lines + table(header, rows) + [""]


def _trace_row(r: Json) -> tuple[object, ...]:
    saved = r["tokens_everything"] - r["tokens_forwarded"]
    return (
        r["budget"],
        r["requests"],
        r["invalid"],
        r["over_budget"] - r["declared_insufficient"],
        r["declared_insufficient"],
        f"{r['faults']} ({_fault_kinds(r)})" if r["faults"] else 0,
        r["recalled"],
        percent(saved, r["tokens_everything"]),
        f"{100 * r['prefix_reuse']:.1f}%",
        r["like_for_like_median_us"],
        r["like_for_like_p99_us"],
    )


def _policy_lines(policy: Json | None, replayed: Sequence[Json] = ()) -> list[str]:
    """The policy engine's time before forwarding, in process, beside what the gateway's own
    `x-clawvm-policy-us` header said over the replay of the same requests through it (the same
    work, on a process that also serves HTTP and the store: its caches are colder)."""
    if not policy:
        return []
    headers = {r["budget"]: r.get("policy_header_median_us") for r in replayed}
    rows = [
        (
            b["budget"],
            b["total"]["count"],
            b["total"]["median_us"],
            b["total"]["p95_us"],
            b["total"]["max_us"],
            headers.get(b["budget"]),
        )
        for b in policy.get("budgets", [])
    ]
    lines = [
        f"Policy engine time per turn before forwarding over the real traces ({policy.get('encoding')}): in process, "
        "and in the gateway by its own `x-clawvm-policy-us` header over the replay above:",
        "",
    ]
    header = ("budget", "turns", f"median {TIMING} µs", f"p95 {TIMING} µs", f"max {TIMING} µs")
    return lines + table((*header, f"gateway header median {TIMING} µs"), rows)


def lifecycle_section(data: Json | None) -> list[str]:
    lines = ["## Lifecycle replay: every injector over every trace", ""]
    if not data:
        return lines + not_run("lifecycle")
    for run in [data, *data.get("other_budgets", [])]:
        lines += lifecycle_table(run) + [""]
    return lines[:-1]


def lifecycle_table(data: Json) -> list[str]:
    lines: list[str] = []
    perfect = data.get("perfect_knowledge") or {}
    lines += [
        f"Budget {data.get('budget')}: the agent's own compaction, pruning or reset a third of the way in; "
        "the first request after it is checked, then every later request to the end of the trace (intent, "
        "evidence, empty or altered answers) with the honest fake model"
        + (" / the perfect-knowledge upper bound in each `later` cell." if perfect else "."),
        "",
    ]
    rows = [
        (
            name,
            r["boundaries"],
            r["ok"],
            r["missing"],
            r.get("missing_intent", 0),
            r["boundary_faults"],
            r["wrong_event"],
            r["invalid"],
            r.get("later_requests", 0),
            *(_beside(r, perfect.get(name), key) for key in LATER_KEYS),
        )
        for name, r in data.get("injectors", {}).items()
    ]
    header = (
        "injector",
        "boundaries",
        "clean",
        "missing state",
        "missing intent",
        "boundary faults",
        "wrong event",
        "invalid",
        "later requests",
        "later intent",
        "later evidence",
        "later empty or altered",
    )
    return lines + table(header, rows)


LATER_KEYS = ("later_intent_faults", "later_evidence_faults", "later_answer_faults")


def _beside(honest: Json, bound: Json | None, key: str) -> str:
    return f"{honest.get(key, 0)}" + (f" / {bound.get(key, 0)}" if bound else "")


WIRE_NAMES = {"chat": "Chat Completions", "messages": "Anthropic Messages", "responses": "OpenAI Responses"}


def recall_section(data: Json | None) -> list[str]:
    lines = ["## Recall checks in every wire format", ""]
    if not data:
        return lines + not_run("recall")
    lines += [
        f"Every request of every trace at {data.get('budget')} tokens, the agent speaking each format and the fake "
        f"upstream answering in it, the {data.get('knowledge', 'honest')} model recalling what the trace's next "
        "answer needs and its prompt does not show (`bench.recall_replay`). Lost: needed, not recovered; "
        "invalid: upstream requests an upstream would refuse.",
        "",
    ]
    insufficient = _lost_on_insufficient(data.get("rows", []))
    rows = [
        (
            WIRE_NAMES.get(wire, wire),
            t["requests"],
            t["invalid"],
            t["needed"],
            t["recovered"],
            t["lost"],
            insufficient.get(wire, 0),
            t["recalls"],
        )
        for wire, t in data.get("wires", {}).items()
    ]
    header = (
        "wire format",
        "upstream requests",
        "invalid",
        "needed",
        "recovered",
        "lost",
        "of which on insufficient turns",
        "recalls",
    )
    return lines + table(header, rows)


def _lost_on_insufficient(rows: Sequence[Json]) -> dict[str, int]:
    """Per wire, the identifiers lost on turns the gateway declared physically insufficient."""
    found: dict[str, int] = {}
    for r in rows:
        on = sum(1 for turn, _ in r.get("lost", []) if turn in r.get("insufficient_turns", []))
        found[r.get("wire", "chat")] = found.get(r.get("wire", "chat"), 0) + on
    return found


def peers_section(data: Json | None) -> list[str]:
    lines = ["## Peers side by side", ""]
    if not data:
        return lines + not_run("peers")
    lines += [
        f"{len(data.get('traces', []))} traces, first {data.get('turns_per_trace')} requests of each, the fake "
        f"model recalling as the {data.get('knowledge', 'honest')} model; "
        "ratio = ours / theirs (lower is better; — where theirs is 0).",
        "",
    ]
    lines += [f"- {peer}: skipped, {why}" for peer, why in data.get("skipped", {}).items()]
    for budget in data.get("budgets", []):
        lines += [f"Budget {budget}:", ""] + _peer_table(data, budget) + _stages_line(data, budget)
    return lines + _paced_lines(data.get("paced"))


def _paced_lines(paced: Json | None) -> list[str]:
    """The same requests again with a fake model that thinks before it answers: the added time
    a user of a real model sees, beside the passthrough's in the same run."""
    if not paced:
        return []
    pace = paced.get("first_byte_s", 0.0) * 1000
    lines = [
        f"### At a model's pace {TIMING}",
        "",
        f"The same requests through direct, the passthrough and clawvm, the fake model thinking {pace:g} ms "
        "before each answer (above, it answers at once); like for like (a recall's second model call "
        "would add a second think time). The gateway's save (complete and commit) runs while the model "
        "thinks; what is left is its work before forwarding and the HTTP hop.",
        "",
    ]
    for budget in paced.get("budgets", []):
        rows = [r for r in paced.get("rows", []) if r["budget"] == budget and r["peer"] != "direct"]
        hop = next((r for r in rows if r["peer"] == "passthrough"), None)
        body = [
            (
                r["peer"],
                r["like_for_like_median_us"],
                r["like_for_like_p99_us"],
                _ratio(r["like_for_like_median_us"], hop["like_for_like_median_us"]) if hop and r is not hop else "",
            )
            for r in rows
        ]
        header = ("peer", "added median µs", "added p99 µs", "median over the passthrough's")
        lines += [f"Budget {budget}:", ""] + table(header, body) + _stages_line(paced, budget)
    return lines


def _stages_line(data: Json, budget: int) -> list[str]:
    """Where the gateway's requests spent their time at `budget`: each stage's median."""
    ours = next((r for r in data.get("rows", []) if r["budget"] == budget and r["peer"] == "clawvm"), None)
    stages = (ours or {}).get("stages_median_us") or {}
    if not stages:
        return []
    parts = ", ".join(f"{name} {spent:,.0f}" for name, spent in stages.items())
    return [
        f"Where clawvm's time goes {TIMING} (each `server-timing` stage's median over these requests, µs; "
        "upstream is the fake's answer and the save running beside it, persist the wait for the save "
        "after the answer; from the gateway's timings log: the save's two parts, complete and commit, and after, "
        f"the work once the answer was sent): {parts}.",
        "",
    ]


def _peer_table(data: Json, budget: int) -> list[str]:
    rows = [r for r in data.get("rows", []) if r["budget"] == budget]
    ours = next((r for r in rows if r["peer"] == "clawvm"), None)
    header = (
        "peer",
        "errors",
        "invalid",
        "over budget",
        "faults",
        "tokens forwarded",
        "prefix reuse",
        f"added median {TIMING} µs",
        "faults ratio",
        "tokens ratio",
        f"latency ratio {TIMING}",
    )
    body = [_peer_row(r, ours) for r in rows]
    return table(header, body)


def _peer_row(r: Json, ours: Json | None) -> tuple[object, ...]:
    ratio = _ratios(ours, r) if ours and r["peer"] != "clawvm" else ("", "", "")
    return (
        r["peer"],
        r["errors"],
        r["invalid"],
        r["over_budget"],
        r["faults"],
        r["tokens_forwarded"],
        f"{100 * r['prefix_reuse']:.1f}%",
        r["like_for_like_median_us"],
        *ratio,
    )


def _ratios(ours: Json, theirs: Json) -> tuple[str, str, str]:
    pairs = (
        ("faults", "faults"),
        ("tokens_forwarded", "tokens_forwarded"),
        ("like_for_like_median_us", "like_for_like_median_us"),
    )
    return tuple(_ratio(ours[a], theirs[b]) for a, b in pairs)  # type: ignore[return-value]


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs else "—"


def stress_section(data: Json | None) -> list[str]:
    lines = ["## Adversarial stress", ""]
    if not data:
        return lines + not_run("stress")
    return (
        lines
        + _starvation(data["starvation"])
        + _churn(data["churn"])
        + _cascade(data["cascade"])
        + _large(data["large_output"])
        + _long(data["long_session"])
        + _planted(data["planted"])
    )


def _starvation(s: Json) -> list[str]:
    lines = [f"**Starvation** (model window {s['window']}, budget {s['budget']}): hidden: {s['hidden']}.", ""]
    rows = [
        (p["name"], p["newest_tokens"], p["status"], p["prompt_tokens"], p["insufficient"] or p["error_code"], p["ok"])
        for p in s["probes"]
    ]
    return lines + table(("probe", "newest turn tokens", "status", "prompt tokens", "reported", "as expected"), rows)


def _tally_row(name: str, t: Json) -> tuple[object, ...]:
    faults = sum(t["faults"].values())
    return (name, t["turns"], t["failures"], t["overruns"], t["insufficient"], t["invalid"], t["missing_rules"], faults)


TALLY_HEADER = ("case", "turns", "failures", "overruns", "insufficient", "invalid", "missing rules", "faults")


def _churn(c: Json) -> list[str]:
    lines = [
        f"**Churn**: {c['evidence_pages']} unique evidence pages in as many turns, budget {c['budget']}; "
        f"last turn: the agent sent {c['sent_tokens'][-1]:,} tokens, the model got {c['prompt_tokens'][-1]:,}.",
        "",
    ]
    return (
        lines + table(TALLY_HEADER, [_tally_row("churn", c["tally"])]) + [f"![tokens per turn]({PLOTS['tokens']})", ""]
    )


def _cascade(c: Json) -> list[str]:
    events = sorted({check["event"] for check in c["checks"]})
    reported = sum(sum(check["reported"].values()) for check in c["checks"])
    return [
        f"**Cascade resets**: {c['resets']} resets in {c['turns']} turns, {c['stated']} rules and preferences stated; "
        f"events reported: {', '.join(events) or 'none'}. From what the model saw after each reset: "
        f"flush misses {c['flush_misses']}, post-reset bootstrap faults {c['bootstrap_faults']}; "
        f"faults the gateway reported: {reported}.",
        "",
    ]


def _large(g: Json) -> list[str]:
    newest = f"{g['newest_status']}" + (f" {g['newest_error']}" if g["newest_error"] else "")
    return [
        f"**One {g['bytes']:,}-byte tool output** (budget {g['budget']}): as the newest turn, status {newest}"
        f"{' (' + g['newest_insufficient'] + ')' if g['newest_insufficient'] else ''}; one turn later status "
        f"{g['later_status']}, {g['later_prompt_tokens']:,} prompt tokens "
        f"(within budget: {_cell(g['within_budget'])}); "
        f"recall {g['recall_code'] or 'not made'}, the asked-for line came back: {_cell(g['recalled'])}.",
        "",
    ]


def _long(s: Json) -> list[str]:
    lines = [f"**Long session** (budget {s['budget']}):", ""]
    lines += table(TALLY_HEADER, [_tally_row("long session", s["tally"])])
    rows = [(m["turn"], m["samples"], m["median_ms"], m["policy_median_us"]) for m in s["marks"]]
    return lines + table(("turn", "samples", f"wall median {TIMING} ms", f"policy median {TIMING} µs"), rows)


def _planted(p: Json) -> list[str]:
    return [
        f"**Planted rules**: {p['planted']} tool outputs phrased as rules or preferences; retained as rules: "
        f"{len(p['retained'])}; shown to the model after a reset: {len(p['shown_after_reset'])}; the user's own "
        f"rule kept after the reset: {_cell(p['control_kept'])}.",
        "",
    ]


def growth_section(data: Json | None, latency: Json | None) -> list[str]:
    lines = [f"## Cost growth {TIMING}", ""]
    if not data:
        return lines + not_run("growth")
    policy = {p["turn"]: p for p in data["policy"]}
    rows = [
        (
            h["turn"],
            h["messages"],
            h["request_bytes"],
            policy.get(h["turn"], {}).get("median_us"),
            h["added_median_us"],
            h["policy_header_median_us"],
            h["overhead_header_median_us"],
        )
        for h in data["http"]
    ]
    header = (
        "turn",
        "messages",
        "request bytes",
        "policy µs (in process)",
        "added µs",
        "policy header µs",
        "overhead header µs",
    )
    lines += [
        f"One synthetic session, budget {data['budget']}; each mark is the median over the turns within "
        f"{data['window']} of it.",
        "",
    ] + table(header, rows)
    lines += [f"![cost against session length]({PLOTS['growth']})", ""]
    return lines + _latency_lines(latency)


def _latency_lines(latency: Json | None) -> list[str]:
    if not latency:
        return []
    rows = [
        (
            s["name"],
            s["stream"],
            len(s["direct_us"]),
            s["direct_median_us"],
            s["gateway_median_us"],
            s["added_median_us"],
        )
        for s in latency.get("series", [])
    ]
    lines = [f"Added latency, fake upstream direct against through the gateway ({latency.get('trace')}):", ""]
    lines += table(("series", "stream", "requests", "direct median µs", "gateway median µs", "added µs"), rows)
    return lines + [f"![latency CDF]({PLOTS['latency']})", ""]


# ---------------------------------------------------------------- bars


@dataclass(frozen=True, slots=True)
class Bar:
    name: str
    met: bool
    value: str
    why: str = ""  # when missed
    timing: bool = False
    error: str = ""  # a measurement error: what makes the figures impossible; the bar is then never met


def _judged(bar: Bar, problems: Sequence[str]) -> Bar:
    """`bar`, or, when its figures have problems, the same bar as a measurement error (not met)."""
    if not problems:
        return bar
    return Bar(bar.name, False, bar.value, bar.why, bar.timing, "; ".join(problems))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _time_problems(name: str, value: object, *, may_be_zero: bool = False) -> list[str]:
    """A time must be a finite number, > 0 (or >= 0 when `may_be_zero`): a measured duration."""
    number = _number(value)
    if number is None:
        return [f"{name} not measured ({value!r})"]
    if number < 0 or (number == 0 and not may_be_zero):
        return [f"{name} is {value!r} µs, impossible for a measured time"]
    return []


def _count_problems(name: str, value: object) -> list[str]:
    """A count of what was measured: nothing measured is no evidence either way."""
    number = _number(value)
    return [] if number is not None and number > 0 else [f"nothing measured ({name} {value!r})"]


def bars(sections: Mapping[str, Json]) -> list[Bar]:
    found: list[Bar] = []
    for check in BAR_CHECKS:
        found += check(sections)
    return found


def _synthetic_bars(s: Mapping[str, Json]) -> list[Bar]:
    rows = {r["policy"]: r for r in (s.get("synthetic") or {}).get("table4", [])}
    ours = rows.get("ClawVM")
    if ours is None:
        return []
    met = ours["mean_faults"] == 0 and ours["rows_at_oracle"] == ours["rows"]
    why = f"ClawVM faults above the oracle on {ours['rows'] - ours['rows_at_oracle']} rows of the synthetic sweep"
    bar = Bar("synthetic: ClawVM zero faults, at the oracle on every row", met, f"{ours['mean_faults']}", why)
    problems = _count_problems("rows", ours.get("rows"))
    if _number(ours.get("mean_faults")) is None or (_number(ours.get("mean_faults")) or 0.0) < 0:
        problems.append(f"mean faults is {ours.get('mean_faults')!r}")
    return [_judged(bar, problems)]


def _trace_bars(s: Mapping[str, Json]) -> list[Bar]:
    out = []
    for r in (s.get("traces") or {}).get("rows", []):
        if r.get("peer") != "clawvm":
            continue
        overruns = r["over_budget"] - r["declared_insufficient"]
        allowed = fault_allowance(r["budget"])
        value = f"invalid {r['invalid']}, unreported overruns {overruns}, faults {r['faults']}, errors {r['errors']}"
        met = not (r["invalid"] or overruns or r["errors"]) and r["faults"] <= allowed
        why = f"faults: {_fault_kinds(r)}; e.g. " + "; ".join(r.get("examples", [])[:2])
        bar = Bar(f"real traces at {r['budget']}: valid, within budget, {_allowed_text(allowed)}", met, value, why)
        out.append(_judged(bar, _count_problems("requests", r.get("requests"))))
    return out


FAULT_ALLOWANCE = {4000: 20}  # hard faults the smallest budget may show (issue 12); every other: none


def fault_allowance(budget: object) -> int:
    return FAULT_ALLOWANCE.get(budget, 0) if isinstance(budget, int) else 0


def _allowed_text(allowed: int) -> str:
    return "no faults" if allowed == 0 else f"at most {allowed} faults"


FAULT_KINDS = (
    ("rule", "rule_faults"),
    ("plan", "plan_faults"),
    ("intent", "intent_faults"),
    ("evidence", "evidence_faults"),
    ("empty or altered answer", "answer_faults"),
)


def _fault_kinds(r: Json) -> str:
    return ", ".join(f"{name} {r.get(key, 0)}" for name, key in FAULT_KINDS)


def _lifecycle_bars(s: Mapping[str, Json]) -> list[Bar]:
    data = s.get("lifecycle") or {}
    if not data.get("injectors"):
        return []
    return [*_clean_bar(data["injectors"]), *(_hard_fault_bar(run) for run in [data, *data.get("other_budgets", [])])]


LIFECYCLE_HARD = ("missing", "missing_intent", "boundary_faults", "invalid", *LATER_KEYS)


def _hard_fault_bar(run: Json) -> Bar:
    """The hard faults of every injector at one budget: state or intent missing after the boundary,
    invalid requests, and every later intent, evidence, empty or altered answer (honest model)."""
    budget, injectors = run.get("budget"), run.get("injectors", {})
    allowed = fault_allowance(budget)
    per = {n: sum(r.get(k, 0) for k in LIFECYCLE_HARD) for n, r in injectors.items()}
    total = sum(per.values())
    bar = Bar(
        f"lifecycle at {budget}: every injector, {_allowed_text(allowed)}",
        total <= allowed,
        f"{total} hard faults",
        "; ".join(f"{n} {v}" for n, v in per.items()),
    )
    return _judged(bar, [p for n, r in injectors.items() for p in _count_problems(f"{n} boundaries", r["boundaries"])])


def _clean_bar(injectors: Mapping[str, Json]) -> list[Bar]:
    bad = {n: r for n, r in injectors.items() if r["ok"] != r["boundaries"]}
    why = "; ".join(
        f"{n}: {r['boundaries'] - r['ok']} unclean ({'; '.join(r['examples'][:1])})" for n, r in bad.items()
    )
    bar = Bar("lifecycle: every boundary clean", not bad, f"{len(bad)} injectors with unclean boundaries", why)
    return [
        _judged(bar, [p for n, r in injectors.items() for p in _count_problems(f"{n} boundaries", r["boundaries"])])
    ]


def _recall_bars(s: Mapping[str, Json]) -> list[Bar]:
    """Every wire format: 0 invalid upstream requests and no more identifiers lost than chat."""
    wires = (s.get("recall") or {}).get("wires") or {}
    chat = wires.get("chat")
    if chat is None:
        return []
    worse = {w: t for w, t in wires.items() if t["invalid"] or t["lost"] > chat["lost"]}
    value = ", ".join(f"{w} lost {t['lost']} invalid {t['invalid']}" for w, t in wires.items())
    why = "; ".join(
        f"{w}: {t['invalid']} invalid, {t['lost']} lost against chat's {chat['lost']}" for w, t in worse.items()
    )
    bar = Bar("recall checks in every wire format: 0 invalid, no more lost than chat", not worse, value, why)
    return [_judged(bar, [p for w, t in wires.items() for p in _count_problems(f"{w} requests", t["requests"])])]


def _stress_bars(s: Mapping[str, Json]) -> list[Bar]:
    st = s.get("stress")
    if not st:
        return []
    large, planted, cascade = st["large_output"], st["planted"], st["cascade"]
    size = f"{large['bytes']:,}-byte"
    churn_faults = sum(st["churn"]["tally"]["faults"].values())
    measured = {
        "starvation reported, never hidden": _count_problems("starvation probes", len(st["starvation"]["probes"])),
        "churn: no overruns, no faults": _count_problems("churn turns", st["churn"]["tally"].get("turns")),
        "cascade resets: no flush misses or bootstrap faults": _count_problems("cascade resets", cascade.get("resets"))
        + _count_problems("cascade turns", cascade.get("turns")),
        "planted rules never retained": _count_problems("planted rules", planted.get("planted")),
        "long session: no failures or overruns": _count_problems(
            "long-session turns", st["long_session"]["tally"].get("turns")
        ),
    }
    found = [
        Bar(
            "starvation reported, never hidden",
            st["starvation"]["hidden"] == 0,
            f"hidden {st['starvation']['hidden']}",
            "a probe was not answered as expected (see the starvation table)",
        ),
        Bar(
            "churn: no overruns, no faults",
            not (st["churn"]["tally"]["overruns"] or churn_faults),
            f"overruns {st['churn']['tally']['overruns']}, faults {churn_faults}",
            "see the churn row",
        ),
        Bar(
            "cascade resets: no flush misses or bootstrap faults",
            not (cascade["flush_misses"] or cascade["bootstrap_faults"]),
            f"flush {cascade['flush_misses']}, bootstrap {cascade['bootstrap_faults']}",
            "state stated before a reset was not shown after it",
        ),
        Bar(
            f"{size} tool output answered as the newest turn",
            large["newest_status"] == 200,
            f"status {large['newest_status']} {large['newest_error']}".strip(),
            "the newest turn is installed at full fidelity in Phase 1 (policies.assembler.floor_of), so a tool "
            "result larger than the model's window cannot be sent at all, not even degraded with a recall pointer",
        ),
        Bar(
            f"{size} tool output within budget and recallable a turn later",
            large["within_budget"] and large["recalled"],
            f"within budget {_cell(large['within_budget'])}, recalled {_cell(large['recalled'])}",
            "see the large-output line",
        ),
        Bar(
            "planted rules never retained",
            not (planted["retained"] or planted["shown_after_reset"]),
            f"retained {len(planted['retained'])}, shown {len(planted['shown_after_reset'])}",
            "a tool output became a rule",
        ),
        Bar(
            "long session: no failures or overruns",
            not (st["long_session"]["tally"]["failures"] or st["long_session"]["tally"]["overruns"]),
            f"failures {st['long_session']['tally']['failures']}",
            "see the long-session table",
        ),
    ]
    return [_judged(bar, measured.get(bar.name, [])) for bar in found]


def _timing_bars(s: Mapping[str, Json]) -> list[Bar]:
    out = [_policy_bar(b) for b in (s.get("policy") or {}).get("budgets", [])]
    growth = s.get("growth") or {}
    if growth.get("policy") and growth.get("http"):
        out += _growth_bars(growth)
    return out + [_added_bar(series, s.get("growth")) for series in (s.get("latency") or {}).get("series", [])]


def _policy_bar(b: Json) -> Bar:
    median, ingest, assembly = b["total"].get("median_us"), b.get("ingest"), b.get("assembly")
    why = (
        f"the median turn spends {ingest['median_us']} µs ingesting (classifying, representing, counting tokens) "
        f"and {assembly['median_us']} µs assembling"
        if ingest and assembly
        else "no ingest/assembly split recorded"
    )
    bar = Bar(
        f"policy time median < {POLICY_BAR_US:.0f} µs at {b['budget']}",
        _number(median) is not None and median < POLICY_BAR_US,
        f"{median} µs",
        why,
        True,
    )
    return _judged(bar, _count_problems("turns timed", b["total"].get("count")) + _time_problems("median", median))


def _added_bar(series: Json, growth: Json | None) -> Bar:
    added = series.get("added_median_us")
    name = f"added latency median < {ADDED_BAR_US:.0f} µs ({series['name']}{', stream' if series['stream'] else ''})"
    first = (growth or {}).get("http", [{}])[0]
    why = (
        (
            f"at turn {first['turn']} of the growth session the gateway's own headers put its overhead at "
            f"{first['overhead_header_median_us']} µs, of which {first['policy_header_median_us']} µs policy: the rest "
            "is reading and re-serialising the body and the store round trips"
        )
        if first
        else "no growth figures"
    )
    problems = _count_problems("requests", min(len(series.get("direct_us") or []), len(series.get("gateway_us") or [])))
    problems += _time_problems("direct median", series.get("direct_median_us"))
    problems += _time_problems("gateway median", series.get("gateway_median_us"))
    problems += _time_problems("added median", added, may_be_zero=True)
    if series.get("failures"):
        problems.append(f"{series['failures']} requests failed, so the medians time a different set of requests")
    met = _number(added) is not None and added < ADDED_BAR_US
    return _judged(Bar(name, met, f"{added} µs", why, True), problems)


def _growth_bars(growth: Json) -> list[Bar]:
    first, last = growth["policy"][0], growth["policy"][-1]
    h_first, h_last = growth["http"][0], growth["http"][-1]
    policy_ratio, policy_problems = _growth_ratio("policy median", first, last, "median_us")
    # The gateway's own overhead (its x-clawvm-overhead-us header), not the wall-time difference to
    # direct: past the budget the gateway forwards far fewer bytes than the client sent, so the
    # upstream answers it sooner and that difference can be negative; it is shown in the table.
    added_ratio, added_problems = _growth_ratio("overhead header", h_first, h_last, "overhead_header_median_us")
    if growth.get("failures"):
        added_problems.append(f"{growth['failures']} non-200 answers during the growth session")
    span = f"turn {last['turn']} over turn {first['turn']}"
    growth_why = f"the request grew from {h_first['request_bytes']:,} to {h_last['request_bytes']:,} bytes"
    overhead_why = (
        f"{growth_why}; the overhead header went from {h_first['overhead_header_median_us']} to "
        f"{h_last['overhead_header_median_us']} µs, the policy header from "
        f"{h_first['policy_header_median_us']} to {h_last['policy_header_median_us']} µs; wall time over "
        f"direct from {h_first['added_median_us']} to {h_last['added_median_us']} µs"
    )
    return [
        _judged(
            Bar(
                f"policy time follows new content ({span} < {GROWTH_BAR}x)",
                policy_ratio < GROWTH_BAR,
                f"{policy_ratio:.2f}x",
                f"{growth_why} and the per-turn policy work with it",
                True,
            ),
            policy_problems,
        ),
        _judged(
            Bar(
                f"gateway overhead follows new content ({span} < {GROWTH_BAR}x)",
                added_ratio < GROWTH_BAR,
                f"{added_ratio:.2f}x",
                overhead_why,
                True,
            ),
            added_problems,
        ),
    ]


def _growth_ratio(name: str, first: Json, last: Json, key: str) -> tuple[float, list[str]]:
    """last / first of a growth series, and what makes it no measurement: a time that is not a
    positive finite number at either mark (a ratio over a negative or zero time means nothing),
    or a mark without samples."""
    problems = [
        problem
        for point in (first, last)
        for problem in _time_problems(f"{name} at turn {point.get('turn')}", point.get(key))
        + (_count_problems(f"samples at turn {point.get('turn')}", point["samples"]) if "samples" in point else [])
    ]
    ratio = last[key] / first[key] if not problems else math.nan
    return ratio, problems


def _cache_bars(s: Mapping[str, Json]) -> list[Bar]:
    why = (
        "the ceiling and the floor (in parentheses) bound what prompts of these sizes can reach while the agent's "
        "new tokens are forwarded whole; what is above them is in `python -m bench cache-gap`"
    )
    return [_judged(Bar(t.name, t.met, t.value, why), [t.error] if t.error else []) for t in cache_targets(s)]


BAR_CHECKS: tuple[Callable[[Mapping[str, Json]], list[Bar]], ...] = (
    _synthetic_bars,
    _trace_bars,
    _cache_bars,
    _lifecycle_bars,
    _recall_bars,
    _stress_bars,
    _timing_bars,
)


def bars_section(found: Sequence[Bar]) -> list[str]:
    missed = [b for b in found if not b.met and not b.error]
    errors = [b for b in found if b.error]
    lines = ["## Bars missed and why", ""]
    lines += [f"{len(found) - len(missed) - len(errors)} of {len(found)} bars met{_errors_clause(errors)}."]
    lines += [""] + [f"- {TIMING if b.timing else ''}**{b.name}**: measurement error: {b.error}." for b in errors]
    lines += [f"- {TIMING if b.timing else ''}**{b.name}**: {b.value}. Why: {b.why}" for b in missed]
    met = [f"{b.name} ({b.value})" for b in found if b.met]
    return lines + ["", "Met: " + "; ".join(met) + ".", ""] if met else lines + [""]


def _errors_clause(errors: Sequence[Bar]) -> str:
    return f", {len(errors)} not measured (measurement errors, not met)" if errors else ""


# ---------------------------------------------------------------- the document


def headline(sections: Mapping[str, Json], found: Sequence[Bar]) -> list[str]:
    """The figures the README quotes."""
    lines = ["## Headline", ""]
    ours = {r["policy"]: r for r in (sections.get("synthetic") or {}).get("table4", [])}.get("ClawVM")
    if ours:
        lines.append(
            f"- Synthetic sweep: ClawVM {ours['mean_faults']} mean faults (paper 0.0), at the oracle on "
            f"{ours['rows_at_oracle']} of {ours['rows']} rows."
        )
    for r in (sections.get("traces") or {}).get("rows", []):
        if r.get("peer") == "clawvm":
            saved = percent(r["tokens_everything"] - r["tokens_forwarded"], r["tokens_everything"])
            lines.append(
                f"- Real traces at {r['budget']:,} tokens: {r['requests']} requests, {r['invalid']} invalid, "
                f"{r['over_budget']} over budget, {r['faults']} faults; {saved} of the tokens saved, "
                f"{100 * r['prefix_reuse']:.1f}% prefix reuse."
            )
    for row, direct in cost_rows(sections.get("traces") or {}):
        if row["peer"] == "clawvm":
            f = cost_figures(row, direct)
            lines.append(
                f"- Prompt-cache-priced input cost at {row['budget']:,} tokens, against sending everything: "
                f"OpenAI {f['openai']}, Anthropic {f['anthropic']} (direct's prefix reuse "
                f"{100 * direct['prefix_reuse']:.1f}%)."
            )
    recall = (sections.get("recall") or {}).get("wires") or {}
    if recall:
        per = "; ".join(
            f"{WIRE_NAMES.get(w, w)} {t['recovered']} of {t['needed']}, {t['invalid']} invalid"
            for w, t in recall.items()
        )
        lines.append(f"- Recall checks (identifiers recovered, invalid requests): {per}.")
    for b in (sections.get("policy") or {}).get("budgets", [])[:1]:
        lines.append(f"- {TIMING} Policy engine median {b['total']['median_us']} µs per turn at {b['budget']:,}.")
    series = (sections.get("latency") or {}).get("series", [])[:1]
    lines += [f"- {TIMING} Added latency median {s['added_median_us']} µs ({s['name']}, non-stream)." for s in series]
    errors = [b for b in found if b.error]
    lines.append(
        f"- Bars: {sum(b.met for b in found)} of {len(found)} met{_errors_clause(errors)} (see the last section)."
    )
    return lines + [""]


def render(sections: Mapping[str, Json], command: str) -> str:
    found = bars(sections)
    lines = [
        "# ClawVM Gateway: evaluation report",
        "",
        f"Produced by `{command}`. Figures marked {TIMING} are timings on this machine and change from run to run; "
        f"every other figure is reproducible: the digest of the sections without their timings is "
        f"`{stable_digest(sections)}`, and a rerun gives the same.",
        "",
        *headline(sections, found),
        *synthetic_section(sections.get("synthetic")),
        *traces_section(sections.get("traces"), sections.get("policy")),
        *lifecycle_section(sections.get("lifecycle")),
        *recall_section(sections.get("recall")),
        *peers_section(sections.get("peers")),
        *cache_section(sections, table),
        *stress_section(sections.get("stress")),
        *growth_section(sections.get("growth"), sections.get("latency")),
        *bars_section(found),
    ]
    return "\n".join(lines).rstrip() + "\n"


def write_report(sections: Mapping[str, Json], directory: Path, command: str) -> Path:
    """`report.md` and the plots in `directory`; returns the report's path."""
    directory.mkdir(parents=True, exist_ok=True)
    write_plots(sections, directory)
    path = directory / "report.md"
    path.write_text(render(sections, command), encoding="utf-8")
    return path


# ---------------------------------------------------------------- plots


def write_plots(sections: Mapping[str, Json], directory: Path) -> list[Path]:
    """The five PNGs (each only when its section is there), with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    made = []
    for name, draw, key in (
        ("faults", _plot_faults, "synthetic"),
        ("tokens", _plot_tokens, "stress"),
        ("latency", _plot_latency, "latency"),
        ("growth", _plot_growth, "growth"),
        ("cache", plot_session_cost, "traces"),
    ):
        if sections.get(key):
            figure, axes = pyplot.subplots(figsize=(7, 4.2), dpi=100)
            draw(axes, sections[key])
            figure.tight_layout()
            path = directory / PLOTS[name]
            figure.savefig(path, metadata={"Software": None})
            pyplot.close(figure)
            made.append(path)
    return made


def faults_by_budget(data: Json) -> dict[str, dict[int, float]]:
    """Mean faults per policy and budget over the families."""
    sums: dict[str, dict[int, list[int]]] = {}
    for row in data.get("rows", []):
        sums.setdefault(row["policy"], {}).setdefault(row["budget"], []).append(row["fault_count"])
    return {p: {b: sum(v) / len(v) for b, v in sorted(per.items())} for p, per in sums.items()}


def _plot_faults(axes: Any, data: Json) -> None:
    for policy, per in faults_by_budget(data).items():
        axes.plot(list(per), list(per.values()), marker="o", label=policy)
    axes.set(xlabel="budget (tokens)", ylabel="mean faults per workload", title="Faults against budget")
    axes.legend(fontsize="small")


def _plot_tokens(axes: Any, data: Json) -> None:
    churn = data["churn"]
    turns = range(1, len(churn["sent_tokens"]) + 1)
    axes.plot(turns, churn["sent_tokens"], label="sent by the agent")
    axes.plot(turns, churn["prompt_tokens"], label="forwarded by the gateway")
    axes.axhline(churn["budget"], linestyle="--", color="grey", label="budget")
    axes.set(xlabel="turn", ylabel="prompt tokens", title="Tokens per turn (churn stress)")
    axes.legend(fontsize="small")


def _plot_latency(axes: Any, data: Json) -> None:
    for number, series in enumerate(data.get("series", [])):
        label = f"{series['name']}{' stream' if series['stream'] else ''}"
        for path, style in (("direct", "--"), ("gateway", "-")):
            values = sorted(series[f"{path}_us"])
            fractions = [(i + 1) / len(values) for i in range(len(values))]
            axes.plot([v / 1000 for v in values], fractions, style, color=f"C{number}", label=f"{label}, {path}")
    axes.set(xlabel="request time (ms)", ylabel="fraction of requests", title="Latency CDF")
    axes.set_xscale("log")
    axes.legend(fontsize="x-small")


def _plot_growth(axes: Any, data: Json) -> None:
    policy = data["policy"]
    axes.plot([p["turn"] for p in policy], [p["median_us"] for p in policy], marker="o", label="policy time")
    http = data["http"]
    axes.plot([h["turn"] for h in http], [h["added_median_us"] for h in http], marker="s", label="added latency")
    axes.set(xlabel="turn of the session", ylabel="µs per turn (median)", title="Cost against session length")
    axes.set_xscale("log")
    axes.legend(fontsize="small")
