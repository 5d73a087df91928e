from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from gateway import cli
from gateway.settings import ServerSettings, Settings, load_settings
from gateway.turns.stages import TIMINGS_LOGGER

OFFLINE_VARIABLES = ("TIKTOKEN_CACHE_DIR", "LITELLM_LOCAL_MODEL_COST_MAP", "HF_HUB_OFFLINE")


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Settings, str]]:
    """Calls to `cli.serve`, recorded instead of starting a server; the environment is restored."""
    for name in OFFLINE_VARIABLES:  # main() writes these: let monkeypatch put them back
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    for name in ("CLAWVM_UPSTREAM_BASE_URL", "CLAWVM_UPSTREAM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    calls: list[tuple[Settings, str]] = []
    monkeypatch.setattr(cli, "serve", lambda settings, level, source=None: calls.append((settings, level)))
    return calls


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_serve_parses_every_flag() -> None:
    args = cli.parser().parse_args(
        ["serve", "--config", "c.yaml", "--host", "0.0.0.0", "--port", "8080", "--upstream", "http://u/v1",
         "--budget", "5000", "--store", "redis://r:6379/0", "--log-level", "debug"]
    )  # fmt: skip
    assert (args.command, args.config, args.host, args.port) == ("serve", Path("c.yaml"), "0.0.0.0", 8080)
    assert (args.upstream, args.budget, args.store) == ("http://u/v1", 5000, "redis://r:6379/0")
    assert args.log_level == "debug"


def test_serve_defaults() -> None:
    args = cli.parser().parse_args(["serve"])
    assert (args.config, args.host, args.port, args.upstream, args.budget, args.store) == (None,) * 6
    assert args.log_level == "info"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["run"],
        ["serve", "--port", "http"],
        ["serve", "--budget", "1.5"],
        ["serve", "--log-level", "trace"],
        ["serve", "--nope"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.parser().parse_args(argv)
    assert caught.value.code == 2
    assert "usage: clawvm" in capsys.readouterr().err


def test_flags_win_over_the_config_file(tmp_path: Path, served: list[tuple[Settings, str]]) -> None:
    config = write(
        tmp_path,
        "server:\n  port: 4001\n  host: 127.0.0.2\n"
        "store:\n  url: redis://config:6379/0\n"
        "upstream:\n  api_base: http://config/v1\n",
    )
    argv = ["serve", "--config", str(config), "--port", "5555", "--upstream", "http://flag/v1"]
    argv += ["--store", "embedded", "--budget", "777"]
    assert cli.main(argv + ["--log-level", "warning"]) == 0
    [(settings, level)] = served
    assert level == "warning"
    assert (settings.server.port, settings.server.host) == (5555, "127.0.0.2")
    assert settings.upstream.api_base == "http://flag/v1"
    assert settings.store.embedded
    assert settings.tenants[0].policy.budget.max_prompt_tokens == 777


def test_no_config_is_an_open_local_setup(served: list[tuple[Settings, str]]) -> None:
    assert cli.main(["serve"]) == 0
    [(settings, level)] = served
    assert settings.open and level == "info"
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 4000)
    assert settings.store.embedded and settings.store.data_dir == Path(".clawvm-data")


def test_an_open_gateway_on_all_interfaces_exits_2_naming_the_ways_out(
    tmp_path: Path, served: list[tuple[Settings, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2
    assert cli.main(["serve", "--config", str(write(tmp_path, "tenants: {}\n")), "--host", "::"]) == 2
    for err in capsys.readouterr().err.splitlines():
        assert err.startswith("clawvm: invalid configuration: server.host: ")
        assert "--allow-unauthenticated" in err and "server.allow_unauthenticated: true" in err
        assert "tenants:" in err and "CLAWVM_API_KEYS" in err
    assert not served


def test_allow_unauthenticated_flag_serves_open_on_all_interfaces(served: list[tuple[Settings, str]]) -> None:
    assert cli.parser().parse_args(["serve"]).allow_unauthenticated is False
    assert cli.main(["serve", "--host", "0.0.0.0", "--allow-unauthenticated"]) == 0
    [(settings, _)] = served
    assert settings.open and settings.server.host == "0.0.0.0" and settings.server.allow_unauthenticated


def test_clawvm_api_keys_turn_authentication_on(
    monkeypatch: pytest.MonkeyPatch, served: list[tuple[Settings, str]]
) -> None:
    monkeypatch.setenv("CLAWVM_API_KEYS", "sk-from-env")
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 0
    [(settings, _)] = served
    assert not settings.open and settings.tenants[0].api_keys == ("sk-from-env",)


def test_main_prepares_offline_tokenizers(served: list[tuple[Settings, str]]) -> None:
    cli.main(["serve"])
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert Path(os.environ["TIKTOKEN_CACHE_DIR"]).is_dir()


@pytest.mark.parametrize(
    ("argv", "config", "needle"),
    [
        ([], "server:\n  prot: 4000\n", "server.prot"),
        ([], "server:\n  port: 99999\n", "server.port"),
        ([], "tenants:\n  acme:\n    api_keys: []\n", "tenants.acme.api_keys"),
        ([], "store:\n  url: ftp://x\n", "store.url"),
        ([], "server: [1, 2]\n", "server"),
        ([], "server:\n  port: 1\n  port: 2\n", "duplicate key"),
        (["--budget", "0"], "", "--budget"),
        (["--upstream", "not-a-url"], "", "--upstream"),
        (["--store", "memcached://x"], "", "--store"),
        (["--port", "70000"], "", "--port"),
    ],
)
def test_an_invalid_configuration_exits_2_naming_the_key(
    tmp_path: Path,
    served: list[tuple[Settings, str]],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    config: str,
    needle: str,
) -> None:
    assert cli.main(["serve", "--config", str(write(tmp_path, config)), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clawvm: invalid configuration: ") and needle in err
    assert not served


def test_a_missing_config_file_exits_2(
    tmp_path: Path, served: list[tuple[Settings, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err and not served


def test_secrets_are_not_echoed(
    tmp_path: Path, served: list[tuple[Settings, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, "store:\n  url: ftp://user:hunter2@host\n")
    assert cli.main(["serve", "--config", str(config)]) == 2
    assert "hunter2" not in capsys.readouterr().err


def test_without_log_content_the_loggers_that_quote_bodies_stay_at_info(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in cli.CONTENT_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.DEBUG)
    cli.quiet_content_loggers(log_content=True)
    assert all(logging.getLogger(name).level == logging.DEBUG for name in cli.CONTENT_LOGGERS)
    uvicorn = logging.getLogger("uvicorn.error")
    monkeypatch.setattr(uvicorn, "filters", [])
    handler = logging.StreamHandler()
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    cli.quiet_content_loggers(log_content=False)
    assert all(not logging.getLogger(name).isEnabledFor(logging.DEBUG) for name in cli.CONTENT_LOGGERS)
    assert any(isinstance(f, cli.ExceptionsWithoutMessages) for f in uvicorn.filters)
    assert any(isinstance(f, cli.ExceptionsWithoutMessages) for f in handler.filters)


def test_log_timings_opens_the_timings_logger_whatever_the_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    timings = logging.getLogger(TIMINGS_LOGGER)
    monkeypatch.setattr(timings, "level", logging.NOTSET)
    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.NullHandler()])  # basicConfig then adds none
    monkeypatch.setattr(cli, "quiet_content_loggers", lambda log_content: None)  # tested above; levels left alone
    cli.configure_logging(load_settings(None, {}), "warning")
    assert not timings.isEnabledFor(logging.INFO)
    cli.configure_logging(replace(load_settings(None, {}), server=ServerSettings(log_timings=True)), "warning")
    assert timings.isEnabledFor(logging.INFO) and not logging.getLogger("clawvm.gateway").isEnabledFor(logging.INFO)


def test_an_exception_is_logged_by_type_and_frames_without_its_message() -> None:
    said = "the user's secret plan"  # frames show source lines: the message must not be one
    try:
        raise ValueError(said)
    except ValueError:
        record = logging.LogRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, "Exception in %s", ("ASGI",), sys.exc_info()
        )
    assert cli.ExceptionsWithoutMessages().filter(record)
    text = logging.Formatter().format(record)
    assert text.startswith("Exception in ASGI: ValueError") and "test_cli.py" in text
    assert "secret plan" not in text
