"""bench.report: the markdown report, its bars and its plots, from small sections of the real shape."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from bench.report import PLOTS, bars, faults_by_budget, render, stable, stable_digest, table, write_report

Json = dict[str, Any]


def _tally(**changes: int) -> Json:
    return {
        "turns": 3,
        "failures": 0,
        "overruns": 0,
        "insufficient": 0,
        "invalid": 0,
        "missing_rules": 0,
        "faults": {},
        **changes,
    }


def _peer(peer: str, faults: int, forwarded: int, added: float) -> Json:
    return {
        "peer": peer,
        "budget": 4000,
        "requests": 4,
        "errors": 0,
        "invalid": 0,
        "over_budget": 0,
        "declared_insufficient": 0,
        "faults": faults,
        "recalled": 1,
        "tokens_forwarded": forwarded,
        "tokens_everything": 2000,
        "prefix_reuse": 0.5,
        "like_for_like_median_us": added,
        "like_for_like_p99_us": added * 2,
        "overhead_header_median_us": None,
        "examples": [],
    }


def sections() -> dict[str, Json]:
    rows = [
        {"family": f, "budget": b, "policy": p, "fault_count": n, "faults": {}}
        for f in ("a", "b")
        for b in (120, 180)
        for p, n in (("ClawVM", 0), ("Retrieval", b // 60))
    ]
    return {
        "synthetic": {
            "seed": 0,
            "horizon": 3,
            "rows": rows,
            "table4": [
                {
                    "policy": "ClawVM",
                    "mean_faults": 0.0,
                    "mean_thrash": 0.04,
                    "insufficient_turns": 1,
                    "rows_at_oracle": 4,
                    "rows": 4,
                    "paper_faults": 0.0,
                    "paper_thrash": 0.901,
                }
            ],
            "ablation": [
                {
                    "removed": "none",
                    "bootstrap": 0,
                    "flush": 0,
                    "dup_refetch": 0,
                    "total": 0,
                    "insufficient_turns": 0,
                    "paper": [0, 0, 0, 0],
                }
            ],
        },
        "policy": {
            "encoding": "o200k_base",
            "budgets": [
                {
                    "budget": 4000,
                    "total": {"count": 9, "median_us": 40.0, "p95_us": 90.0, "max_us": 120.0},
                    "ingest": {"median_us": 30.0},
                    "assembly": {"median_us": 10.0},
                }
            ],
        },
        "traces": {
            "traces": ["t1"],
            "turns_per_trace": 1_000_000,
            "rows": [_peer("direct", 0, 2000, 0.0), _peer("clawvm", 0, 1000, 300.0)],
        },
        "lifecycle": {
            "budget": 16000,
            "injectors": {
                "reset": {
                    "boundaries": 2,
                    "ok": 2,
                    "missing": 0,
                    "boundary_faults": 0,
                    "wrong_event": 0,
                    "invalid": 0,
                    "examples": [],
                }
            },
        },
        "peers": {
            "traces": ["t1"],
            "turns_per_trace": 4,
            "budgets": [4000],
            "skipped": {"headroom": "not installed"},
            "rows": [_peer("litellm", 2, 1500, 3000.0), _peer("clawvm", 0, 1000, 300.0)],
        },
        "stress": {
            "starvation": {
                "window": 8192,
                "budget": 2000,
                "hidden": 0,
                "probes": [
                    {
                        "name": "fits",
                        "newest_tokens": 3000,
                        "status": 200,
                        "prompt_tokens": 3100,
                        "insufficient": "minimum set 3100",
                        "error_code": "",
                        "ok": True,
                    }
                ],
            },
            "churn": {
                "budget": 4000,
                "evidence_pages": 3,
                "tally": _tally(),
                "sent_tokens": [900, 3000, 5000],
                "prompt_tokens": [900, 2900, 3500],
            },
            "cascade": {
                "turns": 6,
                "resets": 1,
                "stated": 6,
                "flush_misses": 0,
                "bootstrap_faults": 0,
                "checks": [{"event": "reset", "reported": {}}],
            },
            "large_output": {
                "bytes": 1_000_017,
                "budget": 16000,
                "newest_status": 400,
                "newest_error": "context_length_exceeded",
                "newest_prompt_tokens": 0,
                "newest_insufficient": "",
                "later_status": 200,
                "later_prompt_tokens": 800,
                "within_budget": True,
                "recall_code": "ok",
                "recalled": True,
            },
            "long_session": {
                "budget": 4000,
                "tally": _tally(turns=12),
                "marks": [{"turn": 10, "samples": 5, "median_ms": 4.5, "policy_median_us": 900.0}],
            },
            "planted": {"planted": 10, "retained": [], "shown_after_reset": [], "control_kept": True},
        },
        "growth": {
            "budget": 4000,
            "window": 2,
            "marks": [10, 1000],
            "policy": [
                {"turn": 10, "messages": 20, "median_us": 100.0, "samples_us": [100.0]},
                {"turn": 1000, "messages": 2000, "median_us": 150.0, "samples_us": [150.0]},
            ],
            "http": [
                {
                    "turn": t,
                    "messages": 2 * t,
                    "request_bytes": 1000 * t,
                    "samples": 5,
                    "direct_median_us": 100.0,
                    "gateway_median_us": 100.0 + a,
                    "added_median_us": a,
                    "policy_header_median_us": 80.0,
                    "overhead_header_median_us": a,
                }
                for t, a in ((10, 500.0), (1000, 2500.0))
            ],
        },
        "latency": {
            "trace": "t1",
            "series": [
                {
                    "name": "static",
                    "stream": False,
                    "direct_us": [90.0, 110.0, 100.0],
                    "gateway_us": [400.0, 600.0, 500.0],
                    "direct_median_us": 100.0,
                    "gateway_median_us": 500.0,
                    "added_median_us": 400.0,
                }
            ],
        },
    }


def test_table_renders_markdown_cells() -> None:
    assert table(("a", "b"), [(1234, None), (True, "x|y")]) == [
        "| a | b |",
        "|---|---|",
        "| 1,234 | — |",
        "| yes | x\\|y |",
        "",
    ]


def test_stable_drops_timings_only() -> None:
    data = {"count": 3, "median_us": 1.0, "series": [{"direct_us": [1.0], "name": "s"}], "processes": [1]}
    assert stable(data) == {"count": 3, "series": [{"name": "s"}]}


def test_digest_ignores_timings_but_not_counts() -> None:
    base = sections()
    timed = copy.deepcopy(base)
    timed["growth"]["http"][0]["added_median_us"] = 9999.0
    timed["latency"]["series"][0]["gateway_us"] = [1.0]
    assert stable_digest(timed) == stable_digest(base)
    counted = copy.deepcopy(base)
    counted["stress"]["planted"]["retained"] = ["Always X."]
    assert stable_digest(counted) != stable_digest(base)


def test_bars_are_computed_from_the_numbers() -> None:
    found = {b.name: b for b in bars(sections())}
    large = found["1,000,017-byte tool output answered as the newest turn"]
    assert not large.met and "context_length_exceeded" in large.value and "floor" in large.why
    assert found["1,000,017-byte tool output within budget and recallable a turn later"].met
    assert found["policy time median < 50 µs at 4000"].met and found["policy time median < 50 µs at 4000"].timing
    growth = found["gateway overhead follows new content (turn 1000 over turn 10 < 2.0x)"]
    assert not growth.met and growth.value == "5.00x" and "1,000,000 bytes" in growth.why
    assert found["policy time follows new content (turn 1000 over turn 10 < 2.0x)"].met
    assert found["real traces at 4000: valid, within budget, at most 20 faults"].met
    assert found["planted rules never retained"].met


def test_a_planted_rule_that_was_kept_misses_its_bar() -> None:
    data = sections()
    data["stress"]["planted"]["retained"] = ["Always X."]
    assert not {b.name: b for b in bars(data)}["planted rules never retained"].met


def test_render_has_every_section_and_marks_timings() -> None:
    text = render(sections(), "python -m bench eval --quick")
    for heading in (
        "## Headline",
        "## Synthetic sweep",
        "## Real traces",
        "## Lifecycle replay",
        "## Peers side by side",
        "## Adversarial stress",
        "## Cost growth ⏱",
        "## Bars missed and why",
    ):
        assert heading in text
    assert "`python -m bench eval --quick`" in text and stable_digest(sections()) in text
    assert "added median ⏱ µs" in text
    assert "| litellm | 0 | 0 | 0 | 2 | 1,500 | 50.0% | 3,000 | 0.00 | 0.67 | 0.10 |" in text
    assert "headroom: skipped, not installed" in text
    assert "every request of each" in text
    assert render(sections(), "cmd") == render(sections(), "cmd")


def test_the_peers_section_says_where_the_gateways_time_goes_and_keeps_it_out_of_the_digest() -> None:
    data = sections()
    stages = {"parse": 250.4, "upstream": 2_950.0, "persist": 300.0, "complete": 1_000.0, "after": 1_400.0}
    data["peers"]["rows"][1]["stages_median_us"] = stages
    text = render(data, "cmd")
    assert "Where clawvm's time goes ⏱" in text
    assert ": parse 250, upstream 2,950, persist 300, complete 1,000, after 1,400." in text
    assert stable_digest(data) == stable_digest(sections())  # timings: not part of the digest
    assert "Where clawvm's time goes" not in render(sections(), "cmd")  # a run without them: no line


def test_the_peers_section_shows_the_paced_replay_beside_the_passthrough() -> None:
    data = sections()
    rows = [
        {**_peer(peer, 0, 1000, added), "added_median_us": added + 100, "added_p99_us": added * 30}
        for peer, added in (("direct", 0.0), ("passthrough", 1_000.0), ("clawvm", 2_100.0))
    ]
    rows[2]["stages_median_us"] = {"parse": 200.0, "upstream": 50_300.0}
    data["peers"]["paced"] = {"budgets": [4000], "first_byte_s": 0.05, "rows": rows}
    text = render(data, "cmd")
    assert "### At a model's pace ⏱" in text and "thinking 50 ms before each answer" in text
    assert "| passthrough | 1,000 | 2,000 |  |" in text
    assert "| clawvm | 2,100 | 4,200 | 2.10 |" in text
    assert "| direct |" not in text.partition("### At a model's pace")[2]
    assert ": parse 200, upstream 50,300." in text.partition("### At a model's pace")[2]
    assert "At a model's pace" not in render(sections(), "cmd")  # a run without it: no section


def test_missing_sections_are_reported_not_run() -> None:
    text = render({}, "cmd")
    assert "*Not run: no `stress` section.*" in text and "0 of 0 bars met." in text


def test_faults_by_budget_means_over_families() -> None:
    assert faults_by_budget(sections()["synthetic"])["Retrieval"] == {120: 2.0, 180: 3.0}


def test_write_report_writes_markdown_and_four_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = write_report(sections(), tmp_path / "out", "cmd")
    assert path == tmp_path / "out" / "report.md" and path.read_text(encoding="utf-8").startswith("# ClawVM")
    for name in PLOTS.values():
        png = (tmp_path / "out" / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 1000
        assert f"]({name})" in path.read_text(encoding="utf-8")


# ---------------------------------------------------------------- impossible figures are measurement errors

GROWTH_ADDED = "gateway overhead follows new content (turn 1000 over turn 10 < 2.0x)"
GROWTH_POLICY = "policy time follows new content (turn 1000 over turn 10 < 2.0x)"
ADDED = "added latency median < 1000 µs (static)"
POLICY = "policy time median < 50 µs at 4000"


def _measurement_error(data: dict[str, Json], name: str) -> str:
    """The bar's measurement error; it must be one, and not met."""
    bar = {b.name: b for b in bars(data)}[name]
    assert not bar.met, bar
    assert bar.error, bar
    return bar.error


def test_a_negative_overhead_makes_the_growth_ratio_a_measurement_error() -> None:
    data = sections()
    data["growth"]["http"][1]["overhead_header_median_us"] = -2799.0
    assert "overhead header at turn 1000 is -2799.0 µs" in _measurement_error(data, GROWTH_ADDED)
    text = render(data, "python -m bench eval")
    assert f"**{GROWTH_ADDED}**: measurement error" in text
    assert "1 not measured (measurement errors, not met)" in text and GROWTH_ADDED + " (" not in text


def test_a_wall_time_below_direct_at_a_long_session_is_shown_not_an_error() -> None:
    """Past the budget the gateway forwards fewer bytes than the client sent, so the upstream may
    answer it sooner than the direct request: the wall-time difference is negative, and real."""
    data = sections()
    data["growth"]["http"][1]["added_median_us"] = -2799.0
    bar = {b.name: b for b in bars(data)}[GROWTH_ADDED]
    assert not bar.error and bar.value == "5.00x" and "-2799.0 µs" in bar.why


@pytest.mark.parametrize("first", [0.0, -10.0, float("nan"), None])
def test_a_growth_ratio_over_an_impossible_first_mark_is_a_measurement_error(first: float | None) -> None:
    data = sections()
    data["growth"]["http"][0]["overhead_header_median_us"] = first
    data["growth"]["policy"][0]["median_us"] = first
    assert "at turn 10" in _measurement_error(data, GROWTH_ADDED)
    assert "at turn 10" in _measurement_error(data, GROWTH_POLICY)


def test_a_growth_mark_without_samples_is_a_measurement_error() -> None:
    data = sections()
    data["growth"]["http"][1]["samples"] = 0
    assert "samples at turn 1000" in _measurement_error(data, GROWTH_ADDED)


@pytest.mark.parametrize("added", [-50.0, float("nan"), None])
def test_an_impossible_added_latency_median_is_a_measurement_error(added: float | None) -> None:
    data = sections()
    data["latency"]["series"][0]["added_median_us"] = added
    assert "added median" in _measurement_error(data, ADDED)


def test_an_added_latency_from_no_requests_is_a_measurement_error() -> None:
    data = sections()
    data["latency"]["series"][0]["direct_us"] = []
    assert "nothing measured (requests 0)" in _measurement_error(data, ADDED)


@pytest.mark.parametrize(("count", "median"), [(0, 40.0), (9, -1.0), (9, 0.0), (9, float("nan"))])
def test_an_impossible_policy_time_is_a_measurement_error(count: int, median: float) -> None:
    data = sections()
    data["policy"]["budgets"][0]["total"].update(count=count, median_us=median)
    assert _measurement_error(data, POLICY)


def test_a_trace_replay_of_no_requests_is_a_measurement_error() -> None:
    data = sections()
    data["traces"]["rows"][1]["requests"] = 0
    assert "requests 0" in _measurement_error(data, "real traces at 4000: valid, within budget, at most 20 faults")


def test_a_synthetic_sweep_of_no_rows_is_a_measurement_error() -> None:
    data = sections()
    data["synthetic"]["table4"][0].update(rows=0, rows_at_oracle=0)
    assert "rows 0" in _measurement_error(data, "synthetic: ClawVM zero faults, at the oracle on every row")


def test_a_lifecycle_injector_with_no_boundaries_is_a_measurement_error() -> None:
    data = sections()
    data["lifecycle"]["injectors"]["reset"].update(boundaries=0, ok=0)
    assert "reset boundaries 0" in _measurement_error(data, "lifecycle: every boundary clean")


@pytest.mark.parametrize(
    ("where", "name"),
    [
        (lambda st: st["starvation"].update(probes=[]), "starvation reported, never hidden"),
        (lambda st: st["churn"]["tally"].update(turns=0), "churn: no overruns, no faults"),
        (lambda st: st["cascade"].update(resets=0), "cascade resets: no flush misses or bootstrap faults"),
        (lambda st: st["planted"].update(planted=0), "planted rules never retained"),
        (lambda st: st["long_session"]["tally"].update(turns=0), "long session: no failures or overruns"),
    ],
)
def test_a_stress_check_that_measured_nothing_is_a_measurement_error(where: Any, name: str) -> None:
    data = sections()
    where(data["stress"])
    assert "nothing measured" in _measurement_error(data, name)


def test_latency_medians_over_failed_requests_are_a_measurement_error() -> None:
    data = sections()
    data["latency"]["series"][0]["failures"] = 4
    assert "4 requests failed" in _measurement_error(data, ADDED)
    data["growth"]["failures"] = 2
    assert "2 non-200 answers" in _measurement_error(data, GROWTH_ADDED)


def test_measured_bars_carry_no_error() -> None:
    assert not [b for b in bars(sections()) if b.error]


def test_the_policy_table_sets_the_gateway_header_beside_the_in_process_time() -> None:
    data = sections()
    data["traces"]["rows"][1]["policy_header_median_us"] = 130.0
    text = render(data, "cmd")
    assert "| budget | turns | median ⏱ µs | p95 ⏱ µs | max ⏱ µs | gateway header median ⏱ µs |" in text
    assert "| 4,000 | 9 | 40.00 | 90.00 | 120 | 130 |" in text
    data["traces"]["rows"][1]["budget"] = 16000  # no replay at the policy table's budget: shown as missing
    assert "| 4,000 | 9 | 40.00 | 90.00 | 120 | — |" in render(data, "cmd")


def test_the_traces_table_sets_the_honest_model_beside_the_perfect_knowledge_bound() -> None:
    data = sections()
    honest = {**_peer("clawvm", 7, 1000, 300.0), "evidence_faults": 5, "intent_faults": 2, "recalled": 3}
    bound = {**_peer("clawvm", 1, 1000, 300.0), "evidence_faults": 0, "intent_faults": 1, "recalled": 9}
    data["traces"] = {**data["traces"], "rows": [honest], "perfect_knowledge": {"rows": [bound]}}
    text = render(data, "python -m bench eval")
    head = (
        "| budget (honest / perfect knowledge) | faults | rule | plan | intent | evidence | empty or altered answer |"
    )
    assert head + " recalled |" in text
    assert "| 4,000 | 7 / 1 | 0 / 0 | 0 / 0 | 2 / 1 | 5 / 0 | 0 / 0 | 3 / 9 |" in text
    assert "- Real traces at 4,000 tokens: 4 requests, 0 invalid, 0 over budget, 7 faults" in text  # honest headline


def test_the_lifecycle_table_counts_missing_intent() -> None:
    data = sections()
    data["lifecycle"]["injectors"]["reset"] = {**data["lifecycle"]["injectors"]["reset"], "missing_intent": 3, "ok": 1}
    text = render(data, "python -m bench eval")
    assert "| injector | boundaries | clean | missing state | missing intent |" in text
    assert "| reset | 2 | 1 | 0 | 3 |" in text


def test_the_lifecycle_table_sets_later_faults_beside_the_perfect_knowledge_bound() -> None:
    data = sections()
    later = {"later_requests": 40, "later_intent_faults": 4, "later_evidence_faults": 6, "later_answer_faults": 1}
    data["lifecycle"]["injectors"]["reset"].update(later)
    data["lifecycle"]["perfect_knowledge"] = {"reset": {**later, "later_evidence_faults": 0}}
    text = render(data, "python -m bench eval")
    assert "| later requests | later intent | later evidence | later empty or altered |" in text
    assert "| 40 | 4 / 4 | 6 / 0 | 1 / 1 |" in text


def test_each_lifecycle_budget_gets_its_table_and_a_hard_fault_bar() -> None:
    data = sections()
    reset = data["lifecycle"]["injectors"]["reset"]
    data["lifecycle"]["other_budgets"] = [
        {"budget": 8000, "injectors": {"reset": {**reset, "later_evidence_faults": 1}}},
        {"budget": 4000, "injectors": {"reset": {**reset, "later_intent_faults": 12, "missing": 8}}},
    ]
    found = {b.name: b for b in bars(data)}
    assert found["lifecycle at 16000: every injector, no faults"].met
    eight = found["lifecycle at 8000: every injector, no faults"]
    assert not eight.met and eight.value == "1 hard faults" and "reset 1" in eight.why
    four = found["lifecycle at 4000: every injector, at most 20 faults"]
    assert four.met and four.value == "20 hard faults"
    data["lifecycle"]["other_budgets"][1]["injectors"]["reset"]["invalid"] = 1
    assert not {b.name: b for b in bars(data)}["lifecycle at 4000: every injector, at most 20 faults"].met
    text = render(data, "python -m bench eval")
    assert text.count("| injector | boundaries |") == 3 and "Budget 8000:" in text and "Budget 4000:" in text


def _recall(wire: str, lost: int, invalid: int = 0, requests: int = 10) -> Json:
    return {"needed": 4, "recovered": 4 - lost, "lost": lost, "recalls": 2, "requests": requests, "invalid": invalid}


def _recall_section(**wires: Json) -> Json:
    rows = [
        {"trace": "t", "wire": w, "lost": [[5, "A-1"]] * t["lost"], "insufficient_turns": [5]} for w, t in wires.items()
    ]
    return {"budget": 4000, "knowledge": "honest", "wires": wires, "rows": rows}


RECALL_BAR = "recall checks in every wire format: 0 invalid, no more lost than chat"


def test_the_recall_checks_show_every_wire_format_side_by_side() -> None:
    data = sections()
    data["recall"] = _recall_section(
        chat=_recall("chat", 1), messages=_recall("messages", 1), responses=_recall("r", 1)
    )
    text = render(data, "python -m bench eval")
    assert "## Recall checks in every wire format" in text
    assert "| Chat Completions | 10 | 0 | 4 | 3 | 1 | 1 | 2 |" in text
    assert "| Anthropic Messages | 10 | 0 | 4 | 3 | 1 | 1 | 2 |" in text
    assert "| OpenAI Responses | 10 | 0 | 4 | 3 | 1 | 1 | 2 |" in text
    assert {b.name: b for b in bars(data)}[RECALL_BAR].met


def test_a_format_losing_more_than_chat_or_sending_invalid_requests_misses_the_recall_bar() -> None:
    data = sections()
    data["recall"] = _recall_section(chat=_recall("chat", 0), messages=_recall("messages", 1))
    assert not {b.name: b for b in bars(data)}[RECALL_BAR].met
    data["recall"] = _recall_section(chat=_recall("chat", 0), responses=_recall("responses", 0, invalid=1))
    bar = {b.name: b for b in bars(data)}[RECALL_BAR]
    assert not bar.met and "responses: 1 invalid" in bar.why
    data["recall"] = _recall_section(chat=_recall("chat", 0, requests=0))
    assert {b.name: b for b in bars(data)}[RECALL_BAR].error


def test_the_traces_section_lists_the_slowest_requests_with_their_large_stages() -> None:
    data = sections()
    slow = [
        {"request": "swe-agent#0", "added_us": 34_570.4, "stages_us": {"parse": 212.0, "assemble": 23_191.0}},
        {"request": "taubench#11", "added_us": 9_400.0, "stages_us": {"parse": 160.0}},
    ]
    data["traces"] = {**data["traces"], "rows": [{**_peer("clawvm", 0, 1000, 300.0), "slowest_us": slow}]}
    text = render(data, "python -m bench eval")
    assert "The slowest requests ⏱, like for like (what the p99 is made of)" in text
    assert "| 4,000 | swe-agent#0 | 34,570 | assemble 23,191 |" in text
    assert "| 4,000 | taubench#11 | 9,400 | none |" in text
    assert stable_digest(data) == stable_digest(
        {**data, "traces": {**data["traces"], "rows": [_peer("clawvm", 0, 1000, 300.0)]}}
    )
    data["traces"] = {**data["traces"], "rows": [_peer("clawvm", 0, 1000, 300.0)]}
    assert "The slowest requests" not in render(data, "python -m bench eval")  # a run from before: no listing
