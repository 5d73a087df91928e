"""The cyclic garbage collector of a serving process, settled once the process has started.

CPython's full collection walks every object the collector tracks and stops the process while it
does. A gateway worker holds tens of thousands of them from start-up (its libraries, litellm's
model map, the tokenizers) and more with every session it caches, and a full collection comes
each time that heap has grown by a quarter: under `python -m bench load` each worker paused 5-7
times a minute for 100-210 ms, and a request arriving then waited for it (README "Measured").

`settle` runs once, after the services are wired (gateway.api.app's lifespan, in `clawvm serve`
only: a test's process keeps CPython's defaults). It collects, then freezes what is alive into
the permanent generation: start-up state lives as long as the process and is never garbage, so
no collection walks it again. It then makes full collections ten times rarer. The young
generations are left as they are: they catch the short-lived cycles a request makes (an
exception's traceback, a finished task), so the full collection finds little.
"""

from __future__ import annotations

import gc

FULL_COLLECTION_AFTER = 100  # collections of the middle generation before a full one (CPython: 10)


def settle() -> None:
    """Freeze the start-up heap and make full collections rarer, for the rest of the process."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_AFTER)
