"""The real agent sessions in shared/traces/real (third-party data, read in place, never copied).

`CLAWVM_TRACES` overrides the directory; the default is `../shared/traces/real` beside the repo.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_VAR = "CLAWVM_TRACES"


@dataclass(frozen=True)
class Trace:
    name: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]

    def turns(self) -> Iterator[list[dict[str, Any]]]:
        """Each request the agent sent: the transcript up to every assistant message."""
        for index, message in enumerate(self.messages):
            if message["role"] == "assistant" and index > 0:
                yield self.messages[:index]


def traces_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR])
    return Path(__file__).resolve().parent.parent.parent / "shared" / "traces" / "real"


def load_traces(directory: Path) -> list[Trace]:
    traces = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        traces.append(Trace(name=path.stem, messages=data["messages"], tools=data.get("tools") or []))
    return traces
