"""Real traces under a tight budget: every identifier the next real answer needs comes back
through the recall tool, except on turns the gateway reported physically insufficient."""

from __future__ import annotations

import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from bench.recall_replay import RecallingModel
from bench.traces import load_traces, traces_dir

TRACES = load_traces(traces_dir()) if traces_dir().is_dir() else []
BUDGET = 4000


@pytest.mark.slow
@pytest.mark.skipif(not TRACES, reason="shared/traces/real not found (set CLAWVM_TRACES)")
def test_needed_identifiers_are_recalled(start_gateway) -> None:
    report, recovered = [], 0
    for trace in TRACES:
        model = RecallingModel(trace)
        insufficient: set[int] = set()
        with start_gateway(budget=BUDGET, fake=FakeUpstream(model)) as gw, httpx.Client(timeout=60) as client:
            for messages in trace.turns():
                body = {"model": "gpt-4o", "messages": messages, "user": f"t#{len(messages)}"}
                if trace.tools:
                    body["tools"] = trace.tools
                response = client.post(
                    gw.url + "/chat/completions", json=body, headers={"x-clawvm-session": f"recall-{trace.name}"}
                )
                assert response.status_code == 200, (trace.name, len(messages), response.text[:200])
                if "x-clawvm-insufficient" in response.headers:
                    insufficient.add(len(messages))
        tally = model.tally
        report.append(f"{trace.name}: needed {tally.needed}, recovered {tally.recovered}, recalls {tally.recalls}")
        recovered += tally.recovered
        assert tally.recovered + len(tally.lost) == tally.needed
        assert {turn for turn, _ in tally.lost} <= insufficient, (trace.name, tally.lost)
    print("\n".join(report))
    assert recovered > 0
