"""Every real trace, turn by turn, through the running gateway at 4,000 and 16,000 tokens."""

from __future__ import annotations

import httpx
import pytest

from bench.replay import replay
from bench.traces import load_traces, traces_dir
from gateway.upstream.tokens import Tokenizers

BUDGETS = (4000, 16000)
CONFIG = "".join(f"  b{b}:\n    api_keys: [sk-{b}]\n    budget: {{max_prompt_tokens: {b}}}\n" for b in BUDGETS)
TRACES = load_traces(traces_dir()) if traces_dir().is_dir() else []


@pytest.mark.slow
@pytest.mark.skipif(not TRACES, reason="shared/traces/real not found (set CLAWVM_TRACES)")
@pytest.mark.parametrize("trace", TRACES, ids=[t.name for t in TRACES])
def test_replay_stays_valid_within_budget_and_keeps_every_rule(start_gateway, trace) -> None:
    tokenizers = Tokenizers()
    with start_gateway(config_yaml="tenants:\n" + CONFIG) as gw, httpx.Client(timeout=60) as client:
        for budget in BUDGETS:
            records = replay(client, gw.url, f"sk-{budget}", gw.fake, trace, tokenizers)
            assert records, "the trace has no turns"
            for r in records:
                where = f"{trace.name} turn {r.turn} at {budget}"
                assert r.status == 200, where
                assert r.budget == budget, where
                assert not r.pairing_errors, (where, r.pairing_errors)
                assert r.counted_tokens <= r.prompt_tokens or r.insufficient, where
                assert not r.over_budget, (where, r.counted_tokens)
                assert not r.missing_rules, (where, r.missing_rules[:3])
