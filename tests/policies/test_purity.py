"""`policies/` is a pure core: no module under it imports I/O, async, a clock, the environment,
logging, or the gateway (issue 14, item 4). Read from the source, so a lazy import inside a
function is caught too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import policies

FORBIDDEN = frozenset(
    {
        "asyncio",
        "redis",
        "aiohttp",
        "starlette",
        "httpx",
        "os",
        "time",
        "logging",
        "socket",
        "subprocess",
        "threading",
        "multiprocessing",
        "urllib",
        "requests",
        "uvicorn",
        "orjson",
        "yaml",
        "gateway",
        "bench",
        "random",
        "datetime",
        "sys",
        "io",
        "shutil",
        "tempfile",
        "signal",
        "select",
        "sqlite3",
    }
)
SOURCES = sorted(Path(policies.__file__).parent.rglob("*.py"))


def imported(path: Path) -> set[str]:
    """The top-level packages a module imports, wherever in it the import stands."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            names.add("__import__")
    return names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_policy_module_imports_io(path: Path) -> None:
    assert not imported(path) & (FORBIDDEN | {"__import__"}), path


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import os.path\n    from time import monotonic\n    return os.path, monotonic\n")
    assert imported(module) & FORBIDDEN == {"os", "time"}
