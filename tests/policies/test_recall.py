"""The recall tool's pure rules: the room kept free, its fair shares, the lines that answer a query."""

from __future__ import annotations

from policies.recall import MIN_ANSWER_TOKENS, RECALL_ROOM, holds, matching, recall_room, shares, terms


def test_the_room_is_a_sixth_of_the_cap_at_most_recall_room_and_none_without_the_tool() -> None:
    assert recall_room(6000, True) == 1000
    assert recall_room(600_000, True) == RECALL_ROOM
    assert recall_room(6000, False) == 0


def test_shares_fill_the_smallest_first_and_never_hand_out_slivers() -> None:
    assert shares([100, 1000, 1000], 1100, 2000) == [100, 500, 500]
    assert shares([400] * 4, 100, 2000).count(MIN_ANSWER_TOKENS) == 100 // MIN_ANSWER_TOKENS


def test_a_query_is_alternatives_matched_without_case() -> None:
    assert terms(" HAT080 | |gift ") == ["hat080", "gift"]
    assert holds("Flight hat080 booked", "HAT080|nothing")


def test_a_hit_in_a_long_line_is_shown_in_a_window_with_its_neighbours() -> None:
    text = "\n".join(["before", "x" * 2000 + " value=42 " + "y" * 2000, "after", "far", "farther"])
    shown = matching(text, "value=42", 20)
    assert shown.splitlines()[0] == "before" and "value=42" in shown and "after" in shown
    assert "farther" not in shown and len(shown) < 200
    assert matching("nothing here", "absent", 20) == "(no line holds 'absent')"
