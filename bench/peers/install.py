"""Each peer in its own virtual environment under `bench/.peers/<name>`, from the package registry.

`python -m bench.peers.install [litellm] [headroom]` creates the venv and pip-installs the pinned
versions (`/work/shared/reference/peers-setup.md` says why these). A venv whose marker file names
the same requirements is left alone, so a second run does nothing. When pip fails because the
registry cannot be reached, `InstallError` says so (and the venv stays unmarked).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "bench" / ".peers"
MARKER = "clawvm-peer.json"
PIP_TIMEOUT_S = 30
PIP_RETRIES = 2
NETWORK_SIGNS = (
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "No matching distribution found",
)


class InstallError(RuntimeError):
    """A peer's venv could not be created or its packages installed."""


@dataclass(frozen=True, slots=True)
class PeerPackage:
    name: str
    requirements: tuple[str, ...]
    command: str  # the console script that starts the peer


PACKAGES = {
    "litellm": PeerPackage("litellm", ("litellm[proxy]==1.106.2",), "litellm"),
    "headroom": PeerPackage("headroom", ("headroom-ai[proxy]==0.42.0",), "headroom"),
}


@dataclass(frozen=True, slots=True)
class Installed:
    name: str
    venv: Path
    reused: bool  # the venv was already installed: nothing was done
    seconds: float


def venv_dir(name: str, root: Path = ROOT) -> Path:
    return root / name


def command_path(name: str, root: Path = ROOT) -> Path:
    """The peer's console script inside its venv."""
    return venv_dir(name, root) / "bin" / PACKAGES[name].command


def is_installed(name: str, root: Path = ROOT) -> bool:
    """The venv was installed with exactly these requirements, and its console script exists."""
    marker = venv_dir(name, root) / MARKER
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded == _marker(PACKAGES[name]) and command_path(name, root).is_file()


def _marker(package: PeerPackage) -> dict[str, object]:
    return {"name": package.name, "requirements": list(package.requirements)}


def install(name: str, root: Path = ROOT, python: str = sys.executable) -> Installed:
    """Create and fill the venv of peer `name` unless it is already installed; idempotent."""
    if name not in PACKAGES:
        raise InstallError(f"unknown peer {name!r}: choose from {', '.join(PACKAGES)}")
    started = time.monotonic()
    if is_installed(name, root):
        return Installed(name, venv_dir(name, root), True, time.monotonic() - started)
    venv = venv_dir(name, root)
    _run([python, "-m", "venv", "--clear", str(venv)], f"creating the venv {venv}")
    pip_install(venv, PACKAGES[name].requirements)
    (venv / MARKER).write_text(json.dumps(_marker(PACKAGES[name])) + "\n", encoding="utf-8")
    return Installed(name, venv, False, time.monotonic() - started)


def pip_install(venv: Path, requirements: Sequence[str]) -> None:
    argv = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    argv += ["--timeout", str(PIP_TIMEOUT_S), "--retries", str(PIP_RETRIES), *requirements]
    _run(argv, f"installing {' '.join(requirements)}")


def _run(argv: Sequence[str], doing: str) -> None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except OSError as exc:
        raise InstallError(f"{doing}: {exc}") from exc
    if done.returncode != 0:
        raise InstallError(failure_message(doing, done.stdout + done.stderr))


def failure_message(doing: str, output: str) -> str:
    """What went wrong, saying plainly when the package registry was out of reach."""
    tail = "\n".join(output.strip().splitlines()[-15:])
    if any(sign in output for sign in NETWORK_SIGNS):
        return f"{doing}: the package registry is unreachable (or does not serve the pinned version):\n{tail}"
    return f"{doing} failed:\n{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install the peers' venvs under bench/.peers/.")
    parser.add_argument("names", nargs="*", default=list(PACKAGES), help=f"peers (default: {' '.join(PACKAGES)})")
    parser.add_argument("--root", type=Path, default=ROOT, help="where the venvs go (default: bench/.peers)")
    args = parser.parse_args(argv)
    try:
        for name in args.names:
            result = install(name, args.root)
            state = "already installed" if result.reused else f"installed in {result.seconds:.1f}s"
            print(f"{name}: {state} at {result.venv}", flush=True)
    except InstallError as exc:
        print(f"bench.peers.install: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
