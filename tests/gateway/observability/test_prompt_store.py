"""gateway.observability.prompt_store: digests reused for the message objects a session's previous
request held, messages kept as stored text, entries' fields."""

from __future__ import annotations

from gateway import jsonio
from gateway.observability.prompt_store import (
    CHUNK,
    PACK_FROM_BYTES,
    Digests,
    digest_of,
    entry_tokens,
    expanded,
    message_of,
    stored,
)


def test_only_the_message_objects_not_seen_in_the_previous_request_are_encoded() -> None:
    digests, owner = Digests(), ("t", "s")
    received = [{"role": "user", "content": f"message {i}"} for i in range(50)]
    first = digests.digest(owner, received, received[:40])
    assert len(first.encoded) == 50 and first.base == "" and not first.named
    grown = [*received, {"role": "assistant", "content": "answer"}]
    stub = {"role": "user", "content": "[paged out]"}
    forwarded = [stub, *received[10:45], grown[-1]]
    second = digests.digest(owner, grown, forwarded)
    fresh = [grown[-1], stub, *received[40:45]]  # new, built, or not forwarded before: encoded here
    assert list(second.encoded) == [digest_of(m).key for m in fresh]
    assert second.received.digests == [digest_of(m) for m in grown]
    assert second.forwarded.digests == [digest_of(m) for m in forwarded]


def test_an_equal_message_in_another_object_is_encoded_again_with_the_same_digest() -> None:
    digests, owner = Digests(), ("t", "s")
    digests.digest(owner, [{"role": "user", "content": "hi"}], [])
    again = digests.digest(owner, [{"role": "user", "content": "hi"}], [])
    assert len(again.encoded) == 1 and again.received.digests == [digest_of({"role": "user", "content": "hi"})]


def test_a_written_entry_is_the_next_requests_base_with_the_digests_it_names() -> None:
    digests, owner = Digests(), ("t", "s")
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    first = digests.digest(owner, messages, messages)
    unwritten = digests.digest(owner, messages, messages)  # the first's entry was never written
    assert unwritten.base == ""
    Digests.wrote(unwritten, "5-0")
    Digests.wrote(first, "4-0")  # too late: the session's newest request is another
    later = digests.digest(owner, messages, messages[:1])
    assert later.base == "5-0" and later.named == {digest_of(m).key for m in messages}
    assert digests.digest(("t", "other"), messages, messages).base == ""


def test_sessions_beyond_the_bounds_are_forgotten_oldest_first() -> None:
    digests = Digests(sessions=2, kept_bytes=10_000)
    message = [{"role": "user", "content": "x"}]
    for session in ("a", "b", "c"):
        Digests.wrote(digests.digest(("t", session), message, message), f"{session}-entry")
    assert [digests.digest(("t", s), message, message).base for s in ("a", "c")] == ["", "c-entry"]
    big = [{"role": "user", "content": "y" * 20_000}]
    Digests.wrote(digests.digest(("t", "big"), big, big), "1-0")
    assert digests.digest(("t", "big"), big, big).base == ""  # more bytes than kept: not kept


def test_messages_are_stored_as_text_or_packed_and_read_back() -> None:
    small, large = {"role": "user", "content": "é \ud83d"}, {"role": "tool", "content": "x" * PACK_FROM_BYTES}
    for message in (small, large, "plain string", [1, 2]):
        text = stored(jsonio.dumps(message))
        assert message_of(text) == (True, message)
    assert stored(jsonio.dumps(large)).startswith("z") and stored(jsonio.dumps(small)).startswith("j")
    for bad in (None, "", "j{", "zAAAA", "q{}"):
        assert message_of(bad) == (False, None)


def test_entries_list_their_chunks_and_digests_and_the_earlier_format_is_told_apart() -> None:
    assert entry_tokens({"in": "*c a b", "out": ""}) == (["*c", "a", "b"], [])
    assert entry_tokens({"r": "eJy..."}) is None
    assert expanded(["*c", "a"], {"*c": "x y"}) == ["x", "y", "a"] and expanded(["*d"], {}) is None


def test_a_long_list_is_chunked_and_its_unchanged_chunks_are_not_made_again() -> None:
    digests, owner = Digests(), ("t", "s")
    received = [{"role": "user", "content": f"message {i}"} for i in range(CHUNK * 2 + 5)]
    first = digests.digest(owner, received, received[:3])
    assert len(first.received.chunks) == 2 and len(first.chunked) == 2
    assert first.keys()[0].split() == [*first.received.chunks, *(d.key for d in first.received.digests[-5:])]
    Digests.wrote(first, "1-0")
    grown = [*received, *({"role": "user", "content": f"more {i}"} for i in range(CHUNK))]
    second = digests.digest(owner, grown, grown[:3])
    assert second.received.chunks[:2] == first.received.chunks and len(second.chunked) == 1
    assert set(second.fresh()) == {*second.chunked, *(digest_of(m).key for m in grown[-CHUNK:])}
