"""The versions board: the version each session's table was last saved at, in memory that all of
one gateway's processes share, so that a worker asks the store about a cached table's version
only when the board cannot confirm it (issue 15: no round trip for a table cached and current).

It is only kept where the gateway's own processes are the store's only writers: the embedded
store (one process, or the workers `clawvm serve --workers N` starts over the Redis it started).
A save writes the board after the store accepted it and before the turn's answer is relayed
(gateway.store.saving), so an agent's next request, sent after that answer, finds the board
current on whichever worker it lands. The board is a hint, never the truth: it can only confirm
that a cached table is current. Anything else (a session not on the board, another session in
its slot, a different version) is asked of the store as before, and a table the board wrongly
confirmed (the store lost writes, say) still loses its optimistic save and is planned again.

Layout: SLOTS slots of SLOT_BYTES, a session in the slot its fingerprint picks, each slot a
sequence number, the session's fingerprint and its version (little-endian u64). A writer holds
a POSIX lock on the slot's bytes (writers in other processes wait; one process is one event
loop) and makes the sequence odd while it writes; a reader that sees the sequence odd or
changed across its read takes the slot as unknown, never as a version.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SLOTS = 1 << 16
SLOT_BYTES = 32
BOARD_BYTES = SLOTS * SLOT_BYTES  # 2 MiB
BOARD_NAME = "versions.board"
_SEQUENCE = struct.Struct("<Q")
_ENTRY = struct.Struct("<QQ")  # fingerprint, version; after the sequence
log = logging.getLogger("clawvm.gateway")


class BoardError(RuntimeError):
    """The board file cannot be created or opened as a board."""


def fingerprint(tenant: str, session: str) -> int:
    """A session's 64-bit fingerprint, never 0 (an empty slot's)."""
    digest = hashlib.blake2b(f"{len(tenant)}:{tenant}:{session}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class VersionBoard:
    """Session table versions in a shared memory map (`open`, `create`) or this process's own
    (`private`)."""

    def __init__(self, buffer: mmap.mmap, fd: int | None = None) -> None:
        if len(buffer) % SLOT_BYTES or not len(buffer):
            raise BoardError(f"a board is a whole number of {SLOT_BYTES}-byte slots, not {len(buffer)} bytes")
        self._buffer = buffer
        self._view = memoryview(buffer)
        self._slots = len(buffer) // SLOT_BYTES
        self._fd = fd  # the mapped file's, for the slot locks; None when no other process maps it

    @classmethod
    def private(cls, slots: int = SLOTS) -> VersionBoard:
        """A board only this process writes and reads (the single-process gateway's)."""
        return cls(mmap.mmap(-1, slots * SLOT_BYTES))

    @classmethod
    def open(cls, path: Path) -> VersionBoard:
        """The board file `create` made, mapped shared (a worker's)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise BoardError(f"cannot open the versions board {path}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            if size % SLOT_BYTES or not size:
                raise BoardError(f"{path} is not a versions board ({size} bytes)")
            return cls(mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE), fd)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        self._view.release()
        self._buffer.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def get(self, tenant: str, session: str) -> int | None:
        """The version the session's table was last saved at, None when the board cannot say."""
        found = fingerprint(tenant, session)
        at = (found % self._slots) * SLOT_BYTES
        before = _SEQUENCE.unpack_from(self._view, at)[0]
        held, version = _ENTRY.unpack_from(self._view, at + _SEQUENCE.size)
        after = _SEQUENCE.unpack_from(self._view, at)[0]
        if before != after or before & 1 or held != found:
            return None
        return int(version)

    def put(self, tenant: str, session: str, version: int) -> None:
        """Record that the session's table was saved at `version` (the slot's last writer wins)."""
        found = fingerprint(tenant, session)
        at = (found % self._slots) * SLOT_BYTES
        with self._locked(at):
            sequence = _SEQUENCE.unpack_from(self._view, at)[0] | 1  # odd: being written
            _SEQUENCE.pack_into(self._view, at, sequence)
            _ENTRY.pack_into(self._view, at + _SEQUENCE.size, found, version)
            _SEQUENCE.pack_into(self._view, at, sequence + 1)

    @contextmanager
    def _locked(self, at: int) -> Iterator[None]:
        if self._fd is None:
            yield
            return
        fcntl.lockf(self._fd, fcntl.LOCK_EX, SLOT_BYTES, at)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, SLOT_BYTES, at)


def create(path: Path, slots: int = SLOTS) -> Path:
    """A fresh board file at `path`, every slot empty (the supervisor's, before its workers start;
    a board left by an earlier run is emptied: no worker of that run holds a table any more)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BoardError(f"cannot create the versions board {path}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)  # an earlier run's file keeps its mode otherwise
        os.ftruncate(fd, 0)
        os.ftruncate(fd, slots * SLOT_BYTES)  # zeros: every slot empty
    finally:
        os.close(fd)
    return path


def made(path: Path) -> Path | None:
    """`create`, or None (with a warning) where the data directory cannot hold a board: the
    workers then read each cached table's version from the store, as without one."""
    try:
        return create(path)
    except BoardError as exc:
        log.warning("%s; workers will read table versions from the store", exc)
        return None


def opened(path: Path) -> VersionBoard | None:
    """`VersionBoard.open`, or None (with a warning) when the board cannot be mapped: this worker
    then reads each cached table's version from the store, as without one."""
    try:
        return VersionBoard.open(path)
    except BoardError as exc:
        log.warning("%s; this worker will read table versions from the store", exc)
        return None
