"""The inspector's views computed on read: heat map, level history, turn attribution, prompt diff."""

from __future__ import annotations

from gateway.observability.timeline import after_turn, event_turns, heat_map, level_history, prompt_diff, stream_ms


def spelled(row: str) -> str:
    """A run-length row one letter per turn."""
    out, number, letter = [], "", ""
    for char in row + "$":
        if char.isdigit():
            number += char
            continue
        if letter:
            out.append(letter * int(number))
        letter, number = char, ""
    return "".join(out)


def test_levels_are_rebuilt_from_a_keyframe_and_the_changes_after_it() -> None:
    records = [
        {"key": True, "levels": {"a": "F", "b": "F"}},
        {"levels": {"c": "F"}},  # appended
        {"levels": {"a": "C", "b": "P"}},  # re-planned
        {"levels": {"b": "-"}},  # cut
        {"key": True, "levels": {"a": "S", "c": "F"}},  # b is no longer listed: absent
    ]
    heat = heat_map(records)
    assert heat.pages == ["a", "b", "c"] and heat.columns == 5
    assert [spelled(r) for r in heat.rows] == ["FFCCS", "FFP--", ".FFFF"]
    for page, row in zip(heat.pages, heat.rows, strict=True):
        assert level_history(records, page) == spelled(row)


def test_before_the_first_kept_keyframe_a_pages_level_is_unknown() -> None:
    """The stream's cap cut the oldest records: until a keyframe, unmentioned levels are unknown."""
    records = [{"levels": {"b": "P"}}, {"levels": {"a": "C"}}, {"key": True, "levels": {"a": "C", "d": "F"}}]
    heat = heat_map(records)
    assert dict(zip(heat.pages, map(spelled, heat.rows), strict=True)) == {"b": "PP-", "a": "?CC", "d": "??F"}
    assert level_history(records, "a") == "?CC" and level_history(records, "e") == "??."


def test_pages_are_ordered_by_first_appearance_then_transcript_position() -> None:
    records = [{"key": True, "levels": {"z": "F", "y": "F"}}, {"levels": {"x": "F"}}]
    assert heat_map(records, {"y": 0, "z": 1, "x": 2}).pages == ["y", "z", "x"]
    assert heat_map(records).pages == ["y", "z", "x"]  # no positions: by id


def test_a_page_changed_twice_in_one_record_keeps_the_last_level() -> None:
    records = [{"key": True, "levels": {"a": "F"}}, {"key": True, "levels": {"a": "P"}}]
    assert [spelled(r) for r in heat_map(records).rows] == ["FP"]


def test_stream_entries_go_to_the_turn_they_belong_to() -> None:
    times = [100, 200, 300]  # when each turn's record was taken
    assert [after_turn(times, ms) for ms in (50, 100, 250, 999)] == [-1, 0, 1, 2]  # recalls: the turn answered
    assert stream_ms("1712345678901-3") == 1712345678901 and stream_ms("bad") == 0


def test_an_event_goes_to_the_turn_whose_record_holds_it_else_by_time() -> None:
    compaction = {"kind": "lifecycle", "event": "compaction", "evidence": "summary at message 1", "turn": 4}
    records = [{"at": 100, "events": []}, {"at": 200, "events": [compaction]}, {"at": 300, "events": []}]
    stream = [
        {**compaction, "id": "300-0"},  # written after the next turn began: its record still says which turn
        {"type": "fault", "kind": "refetch", "page_id": "p:1", "id": "250-0"},  # after a response: by time
        {**compaction, "id": "301-0"},  # a second, identical event: no record holds it twice
    ]
    assert event_turns(records, stream) == [1, 1, 2]


def test_the_prompt_diff_names_what_was_kept_degraded_cut_and_added() -> None:
    system = {"role": "system", "content": "rules"}
    old = {"role": "tool", "tool_call_id": "c1", "content": "x" * 500}
    stub = {"role": "tool", "tool_call_id": "c1", "content": "[p:1 evidence]"}
    gone = {"role": "user", "content": "an early question"}
    kept = {"role": "user", "content": "the newest question"}
    retained = {"role": "system", "content": "[clawvm retained state: ...]"}
    diff = prompt_diff([system, old, gone, kept], [system, stub, retained, kept])
    assert [d["op"] for d in diff] == ["equal", "replace", "equal"]
    assert diff[1] == {"op": "replace", "received": [1, 3], "forwarded": [1, 3]}
    assert [d["op"] for d in prompt_diff([system, gone, kept], [system, kept])] == ["equal", "delete", "equal"]
    assert [d["op"] for d in prompt_diff([kept], [retained, kept])] == ["insert", "equal"]
    assert prompt_diff([{"content": "a", "role": "user"}], [{"role": "user", "content": "a"}])[0]["op"] == "equal"
