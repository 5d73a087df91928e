from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.peers import install
from bench.peers.install import InstallError, command_path, failure_message, is_installed, main, venv_dir


def fake_venv(root: Path, name: str, requirements: list[str] | None = None) -> None:
    """The files `is_installed` looks at: the marker and the console script."""
    script = command_path(name, root)
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    marker = {"name": name, "requirements": requirements or list(install.PACKAGES[name].requirements)}
    (venv_dir(name, root) / install.MARKER).write_text(json.dumps(marker))


def test_nothing_is_installed_in_an_empty_root(tmp_path: Path) -> None:
    assert not is_installed("litellm", tmp_path)
    assert not is_installed("headroom", tmp_path)


def test_a_marked_venv_with_its_script_is_installed_and_left_alone(tmp_path: Path) -> None:
    fake_venv(tmp_path, "litellm")
    assert is_installed("litellm", tmp_path)
    result = install.install("litellm", tmp_path, python="/nonexistent/python")  # would fail if it ran anything
    assert result.reused
    assert result.venv == tmp_path / "litellm"


def test_other_pinned_versions_mean_not_installed(tmp_path: Path) -> None:
    fake_venv(tmp_path, "litellm", ["litellm[proxy]==1.0.0"])
    assert not is_installed("litellm", tmp_path)


def test_a_missing_script_means_not_installed(tmp_path: Path) -> None:
    fake_venv(tmp_path, "headroom")
    command_path("headroom", tmp_path).unlink()
    assert not is_installed("headroom", tmp_path)


def test_the_pins_are_the_documented_ones() -> None:
    assert install.PACKAGES["litellm"].requirements == ("litellm[proxy]==1.106.2",)
    assert install.PACKAGES["headroom"].requirements == ("headroom-ai[proxy]==0.42.0",)


def test_an_unknown_peer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="unknown peer"):
        install.install("vllm", tmp_path)
    assert main(["vllm", "--root", str(tmp_path)]) == 1


def test_a_venv_that_cannot_be_created_is_an_install_error(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="creating the venv"):
        install.install("litellm", tmp_path, python=str(tmp_path / "no-python"))
    assert not is_installed("litellm", tmp_path)


def test_an_unreachable_registry_is_said_plainly() -> None:
    output = "WARNING: Retrying ... NewConnectionError('Failed to establish a new connection')\nERROR: No matching distribution"
    message = failure_message("installing litellm[proxy]==1.106.2", output)
    assert "registry is unreachable" in message
    assert "NewConnectionError" in message
    assert "unreachable" not in failure_message("installing x", "error: subprocess-exited-with-error")


def test_main_reports_an_installed_peer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_venv(tmp_path, "litellm")
    assert main(["litellm", "--root", str(tmp_path)]) == 0
    assert "litellm: already installed" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(install.PACKAGES))
def test_the_real_venvs_once_installed_are_reused(name: str) -> None:
    if not is_installed(name):
        pytest.skip(f"{name} is not installed (python -m bench.peers.install {name})")
    result = install.install(name)
    assert result.reused
    assert command_path(name).is_file()
