"""bench.cache_report: the prompt-cache cost table, issue 13's targets and the session plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.cache_report import PLOT, cache_section, cache_targets, session_series
from bench.report import bars, table, write_report

Json = dict[str, Any]


def _row(peer: str, budget: int, forwarded: int, reuse: float, openai: float, anthropic: float) -> Json:
    return {
        "peer": peer,
        "budget": budget,
        "faults": 0,
        "requests": 3,
        "errors": 0,
        "invalid": 0,
        "over_budget": 0,
        "declared_insufficient": 0,
        "examples": [],
        "tokens_forwarded": forwarded,
        "tokens_everything": 1000,
        "recalled": 0,
        "like_for_like_median_us": 1.0,
        "like_for_like_p99_us": 1.0,
        "prefix_reuse": reuse,
        "openai_cost": openai,
        "anthropic_cost": anthropic,
        "openai_floor": openai / 2,
        "reuse_ceiling": 0.975,
        "session_costs": {"long": [[openai / 3, anthropic / 3]] * 3, "short": [[1.0, 1.0]]},
    }


def sections() -> dict[str, Json]:
    traces = {
        "traces": ["long", "short"],
        "turns_per_trace": 1_000_000,
        "rows": [
            _row("direct", 4000, 1000, 0.96, 100.0, 120.0),
            _row("clawvm", 4000, 300, 0.96, 25.0, 30.0),  # meets 4,000's targets
            _row("direct", 16000, 1000, 0.96, 100.0, 120.0),
            _row("clawvm", 16000, 600, 0.90, 80.0, 110.0),  # misses 16,000's
        ],
    }
    peers = {
        "traces": ["long"],
        "turns_per_trace": 40,
        "rows": [_row("direct", 4000, 500, 0.9, 50.0, 60.0), _row("litellm", 4000, 400, 0.5, 75.0, 90.0)],
    }
    return {"traces": traces, "peers": peers}


def test_one_table_holds_every_replay_each_against_its_own_direct() -> None:
    lines = cache_section(sections(), table)
    text = "\n".join(lines)
    assert "| 4,000 | 2 traces, every request | clawvm | 0 | 0.30 | 96.0% | 0.25 | 0.25 | 0.12 | 97.5% |" in text
    assert "| 4,000 | 1 traces, first 40 requests | litellm | 0 | 0.80 | 50.0% | 1.50 | 1.50 | 0.75 | 97.5% |" in text
    assert sum(1 for line in lines if line.startswith(("| 4,000", "| 16,000"))) == 6
    assert f"]({PLOT})" in text


def test_the_targets_are_judged_per_budget() -> None:
    judged = {t.name.split(":")[0]: t for t in cache_targets(sections())}
    assert judged["prompt cache at 4000"].met
    assert not judged["prompt cache at 16000"].met
    assert "(ceiling 97.5%)" in judged["prompt cache at 16000"].value
    names = [b.name for b in bars(sections())]
    assert sum(name.startswith("prompt cache at") for name in names) == 2


def test_a_direct_that_cost_nothing_is_a_measurement_error() -> None:
    data = sections()
    data["traces"]["rows"][0]["openai_cost"] = 0.0
    found = [b for b in bars(data) if b.name.startswith("prompt cache at 4000")]
    assert found and found[0].error and not found[0].met


def test_the_plot_follows_the_longest_session_cumulatively(tmp_path: Path) -> None:
    trace, series = session_series(sections()["traces"])
    assert trace == "long"
    assert series["direct"] == [100 / 3, 200 / 3, 100.0]
    assert set(series) == {"direct", "clawvm at 4,000", "clawvm at 16,000"}
    write_report(sections(), tmp_path, "python -m bench eval")
    assert (tmp_path / PLOT).stat().st_size > 0
