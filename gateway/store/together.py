"""Store round trips that do not depend on each other, awaited together: their waits overlap.

A session's first request reads the committed memory of its project, of its user's part and of
itself, the pages they carry, and swaps the project's newest session: one wait instead of one
per read. Each read takes a pooled connection of its own (on a cluster, its own node's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


async def together(*reads: Awaitable[Any]) -> list[Any]:
    """Every read's result, in order, once all have ended; the first failure in that order is
    raised then, so no read is left running or its failure unretrieved."""
    results = await asyncio.gather(*reads, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
