"""References to objects of the upstream account in a turn's body, refused through a shared key.

A file uploaded to the upstream (Anthropic's Files API, OpenAI's files), a vector store, a code
container or a stored conversation belongs to the account whose key uploaded it. Through a key
the operator shares between tenants, one tenant naming another's `file_id` would have the
provider read that tenant's file into its own answer. So a turn that names one is refused (403
`permission_error`, in the route's own error shape, naming the JSON path) unless the tenant
brings its own upstream key or the operator allowed account-level objects
(`UpstreamSettings.owns_account` / `owns_anthropic_account`, the same rule as the relayed
account-level routes, `gateway.api.relay`).

What counts, anywhere in the body: a `file_id` (Anthropic `document`/`image`/`container_upload`
blocks with `source.type: "file"`, Responses `input_file`/`input_image`, chat `file` parts), a list
of `file_ids` or `vector_store_ids` (Responses tools), a `container` given by its id (Messages,
Responses tools); at the top level, a Responses `conversation`. The walk runs only when the raw
body could hold one of these keys: written as a key (quoted), or with a JSON escape of an ASCII
character anywhere (non-ASCII text escaped by `ensure_ascii` does not trigger it).
"""

from __future__ import annotations

import re
from typing import Any

from gateway.api.errors import PermissionDenied

KEYS = frozenset({"file_id", "file_ids", "vector_store_ids"})
ID_KEYS = frozenset({"container"})  # account objects when given by id (a string)
TOP_LEVEL = frozenset({"conversation"})
# The keys, quoted, in one pass over the raw body (a third of the time of one `in` per key).
QUOTED_KEY = re.compile(rb'"(?:file_ids?|vector_store_ids|container|conversation)"')
ESCAPED_ASCII = re.compile(rb"\\u00[2-7][0-9a-fA-F]")  # a key could hide behind escapes of its letters


def references(raw: bytes, body: Any, start: int | None = None, field: str = "messages") -> list[str]:
    """The JSON paths (`messages.2.content.0.source.file_id`) of every account reference in `body`;
    with `start`, `body` is a list of messages appended to the `field` array of a body that had
    none, the first at index `start` (and `raw` their bytes)."""
    if QUOTED_KEY.search(raw) is None and ESCAPED_ASCII.search(raw) is None:
        return []
    if start is not None:
        found: list[str] = []
        for index, message in enumerate(body):
            _walk(message, f"{field}.{start + index}", found)
        return found
    found = [key for key in TOP_LEVEL if isinstance(body, dict) and body.get(key) not in (None, "")]
    _walk(body, "", found)
    return found


def _walk(value: Any, path: str, found: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if (key in KEYS and item not in (None, "", [])) or (key in ID_KEYS and isinstance(item, str) and item):
                found.append(where)
            else:
                _walk(item, where, found)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, f"{path}.{index}", found)


def refuse(
    raw: bytes, body: Any, owns_account: bool, tenant: str, start: int | None = None, field: str = "messages"
) -> None:
    """`PermissionDenied` when `body` names an account object and the key is shared (`start`:
    `body` is only the messages appended from that index to `field`, as for `references`)."""
    if owns_account:
        return
    found = references(raw, body, start, field)
    if found:
        raise PermissionDenied(
            f"{found[0]}: this request names an object of the upstream account (a file, vector store, container "
            f"or stored conversation), and tenant {tenant!r} shares that account's key with other tenants, so it "
            "could read their objects. Send the content inline (base64 or text), or use a tenant with its own "
            "upstream key (upstream.forward_client_key, or a tenant upstream.api_key / anthropic_key), or have the "
            "operator set upstream.account_routes: true.",
            param=found[0],
            code="account_object_refused",
        )
