"""A session whose table is reloaded from its stored form every turn (as when replicas
alternate) gets byte-identical assemblies to one kept in memory throughout."""

from __future__ import annotations

import json
import os

import pytest

from bench.traces import load_traces, traces_dir
from gateway.store.codec import dump_page, load_page
from gateway.store.tables import dump_table, load_table
from gateway.upstream.tokens import Tokenizers, prepare_offline
from gateway.wire.chat_json import parse_messages, to_wire
from policies.budget import resolve_budget
from policies.pagetable import PageTable
from policies.tenant import Budget, TenantPolicy
from policies.turn import plan_turn

TRACES = load_traces(traces_dir()) if traces_dir().is_dir() else []


def reloaded(table: PageTable) -> PageTable:
    pages = {pid: load_page(dump_page(page)) for pid, page in table.pages.items()}
    return load_table(dump_table(table), pages, table.version)


@pytest.mark.skipif(not TRACES, reason="shared/traces/real not found (set CLAWVM_TRACES)")
@pytest.mark.parametrize("budget", [4000, 16000])
def test_reloading_every_turn_changes_nothing(budget: int, monkeypatch: pytest.MonkeyPatch) -> None:
    env: dict[str, str] = {}
    prepare_offline(env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    counter = Tokenizers.from_env(os.environ).for_model("gpt-4o")
    policy = TenantPolicy()
    tokens = resolve_budget(Budget(max_prompt_tokens=budget), 128000, "model_map", 0)
    for trace in TRACES:
        kept = PageTable("t", trace.name, "p")
        moving = PageTable("t", trace.name, "p")
        for turn, raw in enumerate(trace.turns()):
            messages = parse_messages(raw)
            one = to_wire(plan_turn(kept, messages, policy, counter, tokens).messages)
            moving = reloaded(moving)
            other = to_wire(plan_turn(moving, messages, policy, counter, tokens).messages)
            assert json.dumps(one) == json.dumps(other), f"{trace.name} turn {turn}"
