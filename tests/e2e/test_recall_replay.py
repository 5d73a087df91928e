"""Real traces under a tight budget: every identifier the next real answer needs comes back
through the recall tool, except on turns the gateway reported physically insufficient."""

from __future__ import annotations

import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from bench.recall_replay import RecallingModel, replay
from bench.traces import load_traces, traces_dir

TRACES = load_traces(traces_dir()) if traces_dir().is_dir() else []
BUDGET = 4000


@pytest.mark.slow
@pytest.mark.skipif(not TRACES, reason="shared/traces/real not found (set CLAWVM_TRACES)")
def test_needed_identifiers_are_recalled(start_gateway) -> None:
    recovered = 0
    for trace in TRACES:
        model = RecallingModel(trace)
        with start_gateway(budget=BUDGET, fake=FakeUpstream(model)) as gw, httpx.Client(timeout=60) as client:
            insufficient = replay(client, gw.url, trace, f"recall-{trace.name}", project=f"recall-{trace.name}")
        tally = model.tally
        recovered += tally.recovered
        assert tally.recovered + len(tally.lost) == tally.needed
        assert {turn for turn, _ in tally.lost} <= insufficient, (trace.name, tally.lost)
    assert recovered > 0
