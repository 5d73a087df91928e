"""bench.growth: policy time and added latency at marked turns of one session."""

from __future__ import annotations

import pytest

from bench.growth import GrowthReport, HttpPoint, body_at, policy_growth, run_growth
from bench.policy_time import GrowthPoint, synthetic_session
from gateway.upstream.tokens import Tokenizers


@pytest.fixture
def counter(offline: None):
    return Tokenizers().for_model("gpt-4o")


def _http(turn: int, added: float) -> HttpPoint:
    return HttpPoint(turn, 2 * turn, 100 * turn, 3, 100.0, 100.0 + added, added, 10.0, 20.0)


def test_body_at_is_the_agent_request_of_that_turn() -> None:
    wire = synthetic_session(5)
    assert body_at(wire, 1) == body_at(synthetic_session(1), 1)
    assert len(body_at(wire, 3)) < len(body_at(wire, 4))
    assert b'"user":"growth"' in body_at(wire, 2)


def test_policy_growth_medians_the_turns_around_each_mark(counter) -> None:
    points = policy_growth(counter, 4000, (3, 8), 1, 1)
    assert [(p.turn, p.messages, len(p.samples_us)) for p in points] == [(3, 6, 3), (8, 16, 3)]
    assert all(p.median_us > 0 and p.median_us in p.samples_us for p in points)


def test_ratios_compare_the_last_mark_with_the_first() -> None:
    policy = (GrowthPoint(10, 20, 50.0, (50.0,)), GrowthPoint(100, 200, 75.0, (75.0,)))
    report = GrowthReport(4000, (10, 100), 1, policy, (_http(10, 400.0), _http(100, 1200.0)), 0)
    assert report.ratios() == {"policy": 1.5, "added_latency": 3.0}
    assert report.to_json()["http"][1]["added_median_us"] == 1200.0


@pytest.mark.parametrize(("first", "last"), [(0.0, 1200.0), (-5.0, 1200.0), (400.0, -2799.0)])
def test_a_ratio_over_an_impossible_time_is_none_not_a_low_ratio(first: float, last: float) -> None:
    policy = (GrowthPoint(10, 20, first, (first,)), GrowthPoint(100, 200, last, (last,)))
    report = GrowthReport(4000, (10, 100), 1, policy, (_http(10, first), _http(100, last)), 0)
    assert report.ratios() == {"policy": None, "added_latency": None}
    assert GrowthReport(4000, (), 1, (), (), 0).ratios() == {"policy": None, "added_latency": None}


def test_run_growth_measures_real_servers(counter) -> None:
    parts: list[str] = []
    report = run_growth(counter, (3, 6), window=1, repeats=1, progress=parts.append)
    assert parts == ["policy time", "added latency"]
    assert report.failures == 0
    assert [(h.turn, h.samples) for h in report.http] == [(3, 3), (6, 3)]
    assert report.http[0].request_bytes < report.http[1].request_bytes
    assert all(h.direct_median_us > 0 and h.gateway_median_us > 0 for h in report.http)
    assert all(h.policy_header_median_us > 0 for h in report.http)
    assert [p.turn for p in report.policy] == [3, 6]
