"""Real traces under a tight budget, through the recall tool.

With perfect knowledge (the fake model names exactly the pages it needs: an upper bound, not a
model's behaviour) every identifier comes back except on turns the gateway reported physically
insufficient: this checks the gateway's side of recall. The honest model (only what its prompt
shows) must recover most of them: measured 31 of 35 at 4,000 tokens when this floor was set."""

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
def test_needed_identifiers_are_recalled_with_perfect_knowledge(start_gateway) -> None:
    recovered = 0
    for trace in TRACES:
        model = RecallingModel(trace, knowledge="perfect")
        with start_gateway(budget=BUDGET, fake=FakeUpstream(model)) as gw, httpx.Client(timeout=60) as client:
            insufficient = replay(client, gw.url, trace, f"recall-{trace.name}", project=f"recall-{trace.name}")
        tally = model.tally
        recovered += tally.recovered
        assert tally.recovered + len(tally.lost) == tally.needed
        assert {turn for turn, _ in tally.lost} <= insufficient, (trace.name, tally.lost)
    assert recovered > 0


@pytest.mark.slow
@pytest.mark.skipif(not TRACES, reason="shared/traces/real not found (set CLAWVM_TRACES)")
def test_an_honest_model_recalls_most_of_what_it_needs_from_its_prompt_alone(start_gateway) -> None:
    recovered = needed = 0
    for trace in TRACES:
        model = RecallingModel(trace)
        with start_gateway(budget=BUDGET, fake=FakeUpstream(model)) as gw, httpx.Client(timeout=60) as client:
            replay(client, gw.url, trace, f"honest-{trace.name}", project=f"honest-{trace.name}")
        recovered, needed = recovered + model.tally.recovered, needed + model.tally.needed
        assert model.tally.recovered + len(model.tally.lost) == model.tally.needed
    assert needed > 0 and recovered >= 0.8 * needed, (recovered, needed)
