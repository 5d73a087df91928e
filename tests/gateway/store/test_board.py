"""The versions board (gateway.store.board): versions in memory one gateway's processes share,
read without a lock and written under one, never read as a version it was not given."""

from __future__ import annotations

import mmap
import multiprocessing
import struct
from pathlib import Path

import pytest

from gateway.store import board as board_module
from gateway.store.board import SLOT_BYTES, BoardError, VersionBoard, create, fingerprint, made, opened

WRITES = 20_000


def test_a_saved_version_is_read_back_and_the_last_save_wins() -> None:
    board = VersionBoard.private()
    try:
        assert board.get("acme", "s1") is None  # never saved: the board cannot say
        board.put("acme", "s1", 3)
        board.put("acme", "s1", 4)
        assert board.get("acme", "s1") == 4
        assert board.get("acme", "s2") is None and board.get("other", "s1") is None  # tenants apart
    finally:
        board.close()


def test_a_session_whose_slot_another_took_is_unknown_not_misread() -> None:
    board = VersionBoard.private(slots=1)  # every session in the one slot
    try:
        board.put("acme", "a", 7)
        board.put("acme", "b", 9)
        assert board.get("acme", "b") == 9
        assert board.get("acme", "a") is None  # asked of the store instead, never answered 9
    finally:
        board.close()


def test_a_slot_being_written_reads_as_unknown(tmp_path: Path) -> None:
    path = create(tmp_path / "versions.board", slots=4)
    board = VersionBoard.open(path)
    try:
        board.put("acme", "s", 5)
        at = (fingerprint("acme", "s") % 4) * SLOT_BYTES
        data = bytearray(path.read_bytes())
        sequence = struct.unpack_from("<Q", data, at)[0]
        with path.open("r+b") as raw:  # a writer stopped halfway: the sequence left odd
            raw.seek(at)
            raw.write(struct.pack("<Q", sequence + 1))
        assert board.get("acme", "s") is None
        board.put("acme", "s", 6)  # the next writer leaves the slot whole again
        assert board.get("acme", "s") == 6
    finally:
        board.close()


def test_a_fresh_board_forgets_an_earlier_run(tmp_path: Path) -> None:
    path = create(tmp_path / "versions.board")
    board = VersionBoard.open(path)
    board.put("acme", "s", 5)
    board.close()
    path.chmod(0o644)
    create(path)  # the next `clawvm serve` on the same data directory
    assert path.stat().st_mode & 0o777 == 0o600  # this process's users only
    board = VersionBoard.open(path)
    try:
        assert board.get("acme", "s") is None
    finally:
        board.close()


def test_what_is_not_a_board_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(BoardError, match="cannot open the versions board"):
        VersionBoard.open(tmp_path / "missing.board")
    odd = tmp_path / "odd.board"
    odd.write_bytes(b"x" * (SLOT_BYTES + 1))
    with pytest.raises(BoardError, match="is not a versions board"):
        VersionBoard.open(odd)
    with pytest.raises(BoardError, match="cannot create the versions board"):
        create(tmp_path / "no-such-dir" / "versions.board")


def _writer(path: str, session: str, parity: int, writes: int) -> None:
    board = VersionBoard.open(Path(path))
    try:
        for n in range(writes):
            board.put("acme", session, 2 * n + parity)
    finally:
        board.close()


def test_processes_share_it_and_never_tear_a_slot(tmp_path: Path) -> None:
    """Two worker processes write two sessions into the one slot of a one-slot board while this
    process reads: every version read is one written for that session (even for "a", odd for
    "b"), whatever the interleaving."""
    path = create(tmp_path / "versions.board", slots=1)
    spawn = multiprocessing.get_context("spawn")
    writers = [spawn.Process(target=_writer, args=(str(path), s, p, WRITES)) for s, p in (("a", 0), ("b", 1))]
    board = VersionBoard.open(path)
    seen: dict[str, set[int]] = {"a": set(), "b": set()}
    try:
        for writer in writers:
            writer.start()
        while any(w.is_alive() for w in writers):
            for session in seen:
                version = board.get("acme", session)
                if version is not None:
                    seen[session].add(version)
        for writer in writers:
            writer.join(timeout=60)
            assert writer.exitcode == 0
        last = {session: board.get("acme", session) for session in seen}
    finally:
        board.close()
    assert all(v % 2 == 0 for v in seen["a"]) and all(v % 2 == 1 for v in seen["b"])
    assert all(v < 2 * WRITES for vs in seen.values() for v in vs)
    assert sorted(v for v in last.values() if v is not None) in ([2 * WRITES - 2], [2 * WRITES - 1])


def test_the_board_is_a_whole_number_of_slots() -> None:
    assert board_module.BOARD_BYTES == board_module.SLOTS * SLOT_BYTES
    with pytest.raises(BoardError, match="whole number"):
        VersionBoard(mmap.mmap(-1, SLOT_BYTES + 8))


def test_a_data_directory_that_cannot_hold_a_board_serves_without_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="clawvm.gateway"):
        assert made(tmp_path / "no-such-dir" / "versions.board") is None
        assert opened(tmp_path / "missing.board") is None
    assert "read table versions from the store" in caplog.text
    board = opened(made(tmp_path / "versions.board") or tmp_path)
    assert board is not None
    board.close()
