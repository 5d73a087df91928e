"""`clawvm serve --workers N`: N worker processes behind one listening socket.

uvicorn's supervisor binds the socket, spawns the workers and restarts one that dies; a worker
imports `gateway.workers:app` and builds its own application from the same configuration, which
it reads again (config file, environment, command-line overrides) from what the parent put in
`CLAWVM_WORKER_SPEC`: no secret is copied into that variable, only the config file's path and the
flags. The embedded Redis is started once, by the parent, before the workers; they reach it as a
`redis://` store. Workers share nothing but the store: a session's turns may land on any worker
(session tables are saved with an optimistic version check, see gateway.session_state).

A worker dies with its parent: on Linux it asks the kernel for SIGKILL when the parent goes
(`prctl(PR_SET_PDEATHSIG)`), so a supervisor killed outright (SIGKILL, the OOM killer) takes its
workers with it instead of leaving them serving on the port. A clean stop (SIGTERM, SIGINT) goes
through uvicorn's supervisor, which stops each worker gracefully first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from starlette.applications import Starlette

from gateway.settings import Overrides, Settings, load_settings

SPEC_ENV = "CLAWVM_WORKER_SPEC"
FACTORY = "gateway.workers:app"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True, slots=True)
class Source:
    """Where the settings came from: a worker loads them again from the same places."""

    config: Path | None = None
    overrides: Overrides = Overrides()


def worker_count(settings: Settings, cpus: int | None) -> int:
    """`server.workers`, else one per CPU."""
    return settings.server.workers or cpus or 1


def usable_cpus() -> int | None:
    """The CPUs this process may run on (its affinity mask, e.g. a container's cpuset), else the
    machine's. A CPU quota without a cpuset is not seen: set `server.workers` there."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def spec(source: Source, store_url: str | None, log_level: str, parent: int, board: Path | None = None) -> str:
    """The worker spec: the config path, the flags (the store replaced by the parent's embedded
    Redis when there is one), the log level, the parent's pid and the versions board the parent
    made beside its embedded Redis (gateway.store.board)."""
    overrides = source.overrides if store_url is None else replace(source.overrides, store=store_url)
    config = None if source.config is None else str(source.config.resolve())
    shared = None if board is None else str(board.resolve())
    return json.dumps(
        {"config": config, "overrides": asdict(overrides), "log_level": log_level, "parent": parent, "board": shared}
    )


def worker_settings(env: Mapping[str, str]) -> tuple[Settings, str]:
    """The settings and log level a worker serves with, from its spec and environment."""
    found = json.loads(env[SPEC_ENV])
    config = None if found["config"] is None else Path(found["config"])
    return load_settings(config, env, Overrides(**found["overrides"])), str(found["log_level"])


def worker_board(env: Mapping[str, str]) -> Path | None:
    """The versions board the parent made for its workers, None without an embedded store."""
    board = json.loads(env[SPEC_ENV]).get("board")
    return None if board is None else Path(board)


def app() -> Starlette:
    """uvicorn's factory in each worker process."""
    from gateway.api.app import create_app
    from gateway.cli import configure_logging
    from gateway.upstream.tokens import prepare_offline

    die_with_parent(int(json.loads(os.environ[SPEC_ENV])["parent"]))
    settings, log_level = worker_settings(os.environ)
    configure_logging(settings, log_level)
    prepare_offline(os.environ)
    return create_app(settings, board=worker_board(os.environ), serving=True)


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when `parent` goes (Linux; elsewhere a no-op). A parent already gone
    before the request took effect is caught by the pid check after it."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
