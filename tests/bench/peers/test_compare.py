from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.intent_check import Label
from bench.peers.compare import (
    SLOWEST,
    CompareResult,
    Exchange,
    Judge,
    Tally,
    _counter,
    bars,
    figures,
    format_compare,
    main,
    plan_text,
    prepare_turns,
    prompt_tokens,
    recovered,
    request_errors,
    reused_tokens,
    run_compare,
)
from bench.peers.model import CALL_PREFIX
from bench.pricing import anthropic_cost, openai_cost
from bench.traces import Trace, load_traces, traces_dir
from policies.tokens import MESSAGE_OVERHEAD, TokenCounter

SYSTEM = "You are a careful support agent. Always confirm the order id before any change. Never reveal internal notes."
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]


def call(n: int) -> dict[str, Any]:
    return {"id": f"call_{n}", "type": "function", "function": {"name": "lookup", "arguments": json.dumps({"n": n})}}


def synthetic_trace(name: str = "synthetic", steps: int = 5) -> Trace:
    """A support session: rules, a preference, then lookups with long results, each naming an order."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "I prefer short answers. Please check my orders."},
    ]
    for n in range(steps):
        messages.append({"role": "assistant", "content": None, "tool_calls": [call(n)]})
        rows = "\n".join(
            f"row {n}-{k}: order #W{7000000 + 10 * n + k} status shipped amount {100 + k}.00" for k in range(60)
        )
        messages.append({"role": "tool", "tool_call_id": f"call_{n}", "content": rows})
    messages.append({"role": "assistant", "content": f"Order #W{7000000 + 10 * (steps - 1)} has shipped."})
    return Trace(name, messages, TOOLS)


@pytest.fixture
def counter(offline: None) -> TokenCounter:
    return _counter()


def test_request_errors_accept_a_valid_transcript() -> None:
    assert request_errors({"messages": synthetic_trace().messages}) == []


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([], "missing or empty"),
        ([{"role": "robot", "content": "x"}], "known role"),
        ([{"role": "user", "content": None}], "without content"),
        ([{"role": "user", "content": 7}], "neither text nor parts"),
        ([{"role": "tool", "content": "x"}], "without tool_call_id"),
        (
            [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "a", "content": "x"}],
            "answers no waiting call",
        ),
        ([{"role": "assistant", "content": None, "tool_calls": [call(1)]}], "left unanswered"),
    ],
)
def test_request_errors_find_what_an_upstream_rejects(messages: list[dict[str, Any]], error: str) -> None:
    problems = request_errors({"messages": messages})
    assert problems and error in problems[0]


def test_reuse_counts_the_tools_and_the_equal_leading_messages(counter: TokenCounter) -> None:
    first = {"messages": synthetic_trace().messages[:4], "tools": TOOLS}
    grown = {"messages": synthetic_trace().messages[:6], "tools": TOOLS}
    assert reused_tokens(counter, None, grown) == 0
    full = reused_tokens(counter, grown, grown)
    part = reused_tokens(counter, first, grown)
    assert 0 < part < full
    assert reused_tokens(counter, {"messages": first["messages"], "tools": []}, grown) == 0  # tools changed
    rewritten = {"messages": [{"role": "system", "content": "other"}, *grown["messages"][1:]], "tools": TOOLS}
    tools_only = reused_tokens(counter, {"messages": [], "tools": TOOLS}, grown)
    assert tools_only <= reused_tokens(counter, rewritten, grown) <= tools_only + MESSAGE_OVERHEAD  # its role only


def test_reuse_counts_the_shared_head_of_the_first_message_that_differs(counter: TokenCounter) -> None:
    text = "order #W7000001 " * 40
    before = {"messages": [{"role": "user", "content": text + "shipped"}], "tools": TOOLS}
    after = {"messages": [{"role": "user", "content": text + "cancelled"}], "tools": TOOLS}
    tools_only = reused_tokens(counter, {"messages": [], "tools": TOOLS}, after)
    head = reused_tokens(counter, before, after) - tools_only
    assert counter.count(text) - 2 <= head < prompt_tokens(counter, after) - tools_only
    other_role = {"messages": [{"role": "system", "content": text + "shipped"}], "tools": TOOLS}
    assert reused_tokens(counter, other_role, after) == tools_only  # the role comes first: nothing shared
    fewer_tools = {"messages": after["messages"], "tools": []}
    assert reused_tokens(counter, fewer_tools, after) == 0  # the tools lead the prompt


def test_the_current_plan_is_the_latest_plan_message() -> None:
    plan = {"role": "assistant", "content": "Plan:\n1. look up the order\n2. confirm the id\n3.  change it"}
    later = {"role": "assistant", "content": "Plan:\n1. refund"}
    assert plan_text([{"role": "user", "content": "hi"}]) == ""
    assert (
        plan_text([{"role": "user", "content": "hi"}, plan])
        == "Plan: 1. look up the order 2. confirm the id 3. change it"
    )
    assert plan_text([{"role": "user", "content": "hi"}, plan, later]) == "Plan: 1. refund"


def test_recovered_reads_the_results_of_the_models_recall() -> None:
    asked = {"role": "assistant", "content": None, "tool_calls": [{**call(9), "id": f"{CALL_PREFIX}0"}]}
    answer = {"role": "tool", "tool_call_id": f"{CALL_PREFIX}0", "content": "[recall: ok]\norder #W7000001 shipped"}
    prompts = ({"messages": []}, {"messages": [asked, answer]})
    assert recovered({"#W7000001": "p:1", "#W7000002": "p:2"}, prompts) == {"#W7000001"}
    assert recovered({"#W7000001": "p:1"}, prompts[:1]) == set()


def judged(counter: TokenCounter, budget: int, prompts: tuple[dict[str, Any], ...], status: int = 200) -> Tally:
    turn = list(prepare_turns(synthetic_trace(), 10, counter))[-1]
    tally = Tally()
    Judge(counter, budget).record(tally, turn, Exchange(status, 2_000_000, prompts, {}), 1_500_000)
    return tally


def test_sending_everything_is_faultless_but_over_a_small_budget(counter: TokenCounter) -> None:
    turn = list(prepare_turns(synthetic_trace(), 10, counter))[-1]
    tally = judged(counter, 500, ({"messages": turn.messages, "tools": TOOLS},))
    assert (tally.requests, tally.errors, tally.invalid, tally.over_budget) == (1, 0, 0, 1)
    assert (tally.rule_faults, tally.plan_faults, tally.evidence_faults) == (0, 0, 0)
    assert tally.evidence_needed == 1  # the order id of the real answer, held by the last tool result
    assert tally.forwarded == tally.everything == turn.everything
    assert tally.added_ns == tally.single_added_ns == [500_000]


def test_dropping_rules_and_evidence_are_faults(counter: TokenCounter) -> None:
    turn = list(prepare_turns(synthetic_trace(), 10, counter))[-1]
    tally = judged(counter, 500, ({"messages": turn.messages[-2:], "tools": TOOLS},))
    assert tally.rule_faults == 1
    assert tally.evidence_faults == 0  # the last tool result, which holds the id, was kept
    orphan = judged(counter, 50_000, ({"messages": [turn.messages[1], turn.messages[-2]], "tools": TOOLS},))
    assert orphan.invalid == 1 and orphan.rule_faults == 1 and orphan.evidence_faults == 1
    assert orphan.over_budget == 0
    assert orphan.examples


def test_every_upstream_request_is_priced_against_the_one_before_it(counter: TokenCounter) -> None:
    """Recall follow-ups included: the second model call of a request is priced against the first,
    the next request against that follow-up; the session's first request reads nothing."""
    turns = list(prepare_turns(synthetic_trace(steps=40), 40, counter))
    judge, tally = Judge(counter, 50_000), Tally()
    first = {"messages": turns[-2].messages, "tools": TOOLS}
    follow_up = {"messages": [*turns[-2].messages, {"role": "user", "content": "recalled text"}], "tools": TOOLS}
    last = {"messages": turns[-1].messages, "tools": TOOLS}
    judge.record(tally, turns[-2], Exchange(200, 1, (first, follow_up), {}), None)
    judge.record(tally, turns[-1], Exchange(200, 1, (last,), {}), None)
    sizes = [prompt_tokens(counter, p) for p in (first, follow_up, last)]
    prefixes = [0, reused_tokens(counter, first, follow_up), reused_tokens(counter, follow_up, last)]
    assert prefixes[1] == sizes[0]  # the follow-up extends the first call
    assert 0 < prefixes[2] < sizes[1]  # the next request shares the transcript, not the recall round
    assert tally.upstream_tokens == sum(sizes)
    assert tally.openai_cost == pytest.approx(sum(openai_cost(p, t) for p, t in zip(prefixes, sizes, strict=True)))
    assert tally.anthropic_cost == pytest.approx(
        sum(anthropic_cost(p, t) for p, t in zip(prefixes, sizes, strict=True))
    )
    assert tally.openai_cost < tally.anthropic_cost < sum(sizes)
    floor = openai_cost(sizes[0] - turns[-2].fresh, sizes[0]) + openai_cost(prefixes[1], sizes[1])
    floor += openai_cost(sizes[2] - turns[-1].fresh, sizes[2])
    assert tally.openai_floor == pytest.approx(floor) and tally.openai_floor <= tally.openai_cost
    assert 0 < turns[-1].fresh < turns[-1].everything and turns[0].fresh == turns[0].everything
    assert len(tally.sessions["synthetic"]) == 2
    assert (tally.reused, tally.reusable) == (sum(prefixes), sum(sizes[1:]))
    assert tally.reuse_ceiling == sizes[1] + sizes[2] - turns[-1].fresh  # the follow-up whole, then all but new
    assert tally.reused <= tally.reuse_ceiling <= tally.reusable


def test_a_failed_request_is_an_error_and_nothing_else(counter: TokenCounter) -> None:
    tally = judged(counter, 500, (), status=502)
    assert (tally.requests, tally.errors, tally.forwarded, tally.added_ns) == (1, 1, 0, [])


def test_figures_summarise_a_tally() -> None:
    tally = Tally(requests=3, reused=750, reusable=1000, added_ns=[1_000, 3_000, 2_000], single_added_ns=[1_000])
    row = figures("passthrough", 4000, tally)
    assert (row.prefix_reuse, row.added_median_us, row.added_p99_us, row.like_for_like_median_us) == (
        0.75,
        2.0,
        3.0,
        1.0,
    )
    assert row.overhead_header_median_us is None


def test_the_slowest_requests_like_for_like_are_listed_with_their_stages(counter: TokenCounter) -> None:
    """What the p99 is made of: the SLOWEST requests answered in one model call that added most,
    slowest first, each with the gateway's stages; one with a recall follow-up is not like for like."""
    turns = list(prepare_turns(synthetic_trace(), 10, counter))
    judge, tally = Judge(counter, 50_000), Tally()
    one = ({"messages": turns[-1].messages, "tools": TOOLS},)
    for number, turn in enumerate(turns):
        stages = {"assemble": 100.0 * number, "upstream": 50.0}
        judge.record(tally, turn, Exchange(200, 2_000_000 + 1_000 * number, one, {}, stages=stages), 1_000_000)
    judge.record(tally, turns[0], Exchange(200, 90_000_000, one * 2, {}), 1_000_000)  # a recall round trip
    slowest = figures("clawvm", 4000, tally).slowest_us
    assert len(slowest) == SLOWEST < len(turns)
    last = len(turns) - 1
    assert [s.request for s in slowest] == [
        f"{turns[n].trace}#{turns[n].number}" for n in range(last, last - SLOWEST, -1)
    ]
    assert slowest[0].added_us == 1_000 + last and slowest[0].stages_us == {"assemble": 100.0 * last, "upstream": 50.0}
    assert figures("clawvm", 4000, Tally()).slowest_us == ()


def _result(ours: Tally, litellm: Tally) -> CompareResult:
    rows = (figures("clawvm", 4000, ours), figures("litellm", 4000, litellm))
    return CompareResult(("t",), 4, (4000,), ("clawvm", "litellm"), rows, {})


MEASURED = Tally(requests=3, added_ns=[300_000] * 3, single_added_ns=[300_000] * 3)


@pytest.mark.parametrize(
    "ours",
    [
        Tally(requests=0),  # nothing measured: the median of no samples is 0.0
        Tally(requests=3, errors=3),
        Tally(requests=3, added_ns=[-2_799_000] * 3, single_added_ns=[-2_799_000] * 3),  # a negative added time
    ],
)
def test_latency_bars_from_no_or_impossible_measurements_are_not_met(ours: Tally) -> None:
    assert bars(_result(MEASURED, Tally(requests=3, single_added_ns=[4_000_000])), 4000)["median_bar_met"]
    judged = bars(_result(ours, Tally(requests=3, single_added_ns=[4_000_000])), 4000)
    assert not judged["median_bar_met"] and not judged["litellm_bar_met"]
    assert judged["measurement_errors"][0].startswith("clawvm: ")
    assert "measurement error: clawvm" in "\n".join(format_compare(_result(ours, MEASURED)))


def test_the_litellm_bar_against_an_unmeasured_litellm_is_not_met() -> None:
    judged = bars(_result(MEASURED, Tally(requests=0)), 4000)
    assert not judged["litellm_bar_met"] and judged["measurement_errors"][0].startswith("litellm: ")


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Any:
    monkeypatch = pytest.MonkeyPatch()
    from gateway.upstream.tokens import prepare_offline

    env: dict[str, str] = {}
    prepare_offline(env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    traces = [synthetic_trace("support-a", 4), synthetic_trace("support-b", 6)]
    try:
        yield run_compare(
            traces,
            (1500,),
            ("passthrough", "clawvm", "litellm"),
            turns=5,
            warmup=1,
            root=tmp_path_factory.mktemp("no-peers"),
        )
    finally:
        monkeypatch.undo()


def test_compare_runs_direct_passthrough_and_the_gateway(compared: Any) -> None:
    assert compared.peers == ("direct", "passthrough", "clawvm")
    assert set(compared.skipped) == {"litellm"}
    assert [(r.peer, r.budget, r.requests) for r in compared.rows] == [
        ("direct", 1500, 10), ("passthrough", 1500, 10), ("clawvm", 1500, 10),
    ]  # fmt: skip
    for row in compared.rows:
        assert row.errors == row.invalid == 0


def test_direct_and_passthrough_forward_everything_the_gateway_keeps_to_budget(compared: Any) -> None:
    direct, passthrough, ours = (compared.row(p, 1500) for p in ("direct", "passthrough", "clawvm"))
    assert direct.tokens_forwarded == direct.tokens_everything == passthrough.tokens_forwarded
    assert direct.over_budget == passthrough.over_budget > 0
    assert direct.faults == passthrough.faults == 0
    assert direct.prefix_reuse == passthrough.prefix_reuse > 0.3  # append-only: each prompt extends the last
    assert 0.0 <= ours.prefix_reuse <= 1.0
    assert ours.tokens_forwarded < direct.tokens_forwarded
    assert ours.over_budget == ours.declared_insufficient
    assert ours.rule_faults == 0
    assert ours.overhead_header_median_us is not None
    stages = ours.stages_median_us  # the answers' server-timing, then the gateway's timings log
    assert list(stages)[:8] == ["receive", "parse", "ingest", "assemble", "store", "serialise", "upstream", "persist"]
    assert list(stages)[8:] == ["complete", "commit", "after"] and stages["after"] > 0
    assert direct.stages_median_us == passthrough.stages_median_us == {}


def test_the_report_and_its_json(compared: Any) -> None:
    lines = format_compare(compared)
    text = "\n".join(lines)
    assert "budget 1500:" in text and "litellm: skipped" in text
    assert "clawvm against each" in text and "vs passthrough" in text
    assert "bar: clawvm adds" in text
    assert "clawvm stage medians, µs (complete, commit: the save; after: once answered): receive " in text
    assert "clawvm slowest, like for like: " in text and "passthrough slowest" not in text
    data = json.loads(json.dumps(compared.to_json()))
    ours = next(row for row in data["rows"] if row["peer"] == "clawvm")
    assert 0 < len(ours["slowest_us"]) <= SLOWEST and {"request", "added_us", "stages_us"} <= set(ours["slowest_us"][0])
    assert data["bars"]["1500"] == bars(compared, 1500)
    assert "litellm_bar_us" not in data["bars"]["1500"]
    assert {row["peer"] for row in data["rows"]} == {"direct", "passthrough", "clawvm"}
    assert all("faults" in row for row in data["rows"])


def test_a_paced_replay_has_the_fake_model_think_before_every_answer(
    offline: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import bench.peers.compare as compare
    from bench.fake_upstream import FakeUpstream

    waited: list[float] = []

    async def think(seconds: float) -> None:
        waited.append(seconds)

    def fake(*args: Any, **kwargs: Any) -> FakeUpstream:
        made = FakeUpstream(*args, **kwargs)
        made.think = think  # the waits recorded, not slept
        return made

    monkeypatch.setattr(compare, "FakeUpstream", fake)
    result = run_compare([synthetic_trace("paced", 3)], (1500,), ("direct",), turns=3, warmup=1, root=tmp_path)
    assert result.first_byte_s == 0.0 and waited == []
    paced = run_compare(
        [synthetic_trace("paced", 3)], (1500,), ("direct",), turns=3, warmup=1, root=tmp_path, first_byte_s=0.04
    )
    assert paced.first_byte_s == 0.04 and paced.to_json()["first_byte_s"] == 0.04
    assert waited == [0.04] * 4  # the warm-up request and each of the three
    assert "first byte after 40 ms" in format_compare(paced)[0]
    assert "answering at once" in format_compare(result)[0]
    assert [r.requests for r in paced.rows] == [r.requests for r in result.rows] == [3]


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_a_think_time_that_is_no_duration_is_refused_before_anything_runs(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--first-byte-ms", value, "--traces", "/nonexistent"])
    assert exited.value.code == 2 and "--first-byte-ms" in capsys.readouterr().err


@pytest.mark.slow
def test_all_peers_on_a_sample_of_the_real_traces(offline: None, tmp_path: Path) -> None:
    from bench.peers.servers import available

    missing = [p for p in ("litellm", "headroom") if not available(p)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (python -m bench.peers.install)")
    directory = traces_dir()
    traces = load_traces(directory) if directory.is_dir() else []
    if not traces:
        pytest.skip("shared/traces/real not found (set CLAWVM_TRACES)")
    result = run_compare([t for t in traces if t.name.startswith("taubench")][:2], (4000,), turns=8, warmup=1)
    assert result.peers == ("direct", "passthrough", "litellm", "headroom", "clawvm")
    for row in result.rows:
        assert row.requests == 16 and row.errors == 0
    assert result.row("clawvm", 4000).invalid == 0
    assert "bar: at most a quarter of LiteLLM" in "\n".join(format_compare(result))


def test_a_labelled_intent_missing_from_the_prompt_is_a_fault_and_a_kept_one_is_not(counter: TokenCounter) -> None:
    turn = list(prepare_turns(synthetic_trace(), 10, counter))[-1]
    said = {"synthetic": [Label("synthetic", 1, "I prefer short answers.", "intent")]}
    judge = Judge(counter, 50_000, said)
    kept, dropped = Tally(), Tally()
    judge.record(kept, turn, Exchange(200, 1, ({"messages": turn.messages, "tools": TOOLS},), {}), None)
    judge.record(dropped, turn, Exchange(200, 1, ({"messages": turn.messages[2:], "tools": TOOLS},), {}), None)
    assert (kept.intent_faults, dropped.intent_faults) == (0, 1)
    assert any("user intent missing: I prefer short answers." in e for e in dropped.examples)


def test_an_empty_or_altered_answer_is_a_fault(counter: TokenCounter) -> None:
    turn = list(prepare_turns(synthetic_trace(), 10, counter))[-1]
    prompts = ({"messages": turn.messages, "tools": TOOLS},)
    faults = []
    for answer in (dict(turn.expected.answer), {"content": ""}, {"content": "Something else."}, None):
        tally = Tally()
        Judge(counter, 50_000).record(tally, turn, Exchange(200, 1, prompts, {}, answer), None)
        faults.append(tally.answer_faults)
    assert faults == [0, 1, 1, 1]
    assert figures("clawvm", 4000, Tally(answer_faults=1, intent_faults=2)).faults == 3
