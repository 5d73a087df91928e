"""The inspector's kept prompts, each message stored once per session (content-addressed).

Agents resend the whole conversation every turn, so writing every request's messages in full costs
the session's length per turn. Instead:

    cvm:{<tenant>:s:<session>}:prompts  stream: per kept request, `in` and `out`: the digests of the
                                        messages the agent sent and of those forwarded, in order
                                        (space-separated; an entry of the earlier format holds `r`,
                                        the whole prompt packed, and still reads)
    cvm:{<tenant>:s:<session>}:msgs     hash: digest -> message (`MESSAGE_JSON` + JSON, or
                                        `MESSAGE_PACKED` + zlib + base64 JSON), `~`: its size at the
                                        last sweep

A digest is the message's JSON bytes' SHA-256, its first 12 bytes in base64url (96 bits).

`WRITE_SCRIPT` adds one entry atomically: the messages the writer sends, then the entry (its stream
capped at exactly `ui.prompts`). The writer sends only the messages the entry it names as its
`base` did not hold: while an entry is kept, every message it names is in the hash (the sweep keeps
them), so the script needs only that the base is still kept. Without a base (this worker did not
write the session's previous entry), or when it is trimmed, the script checks each digest not sent
and, when some are missing, writes nothing and lists them; the writer sends those.

The sweep deletes the messages no kept entry names, once the hash has grown past twice its size at
the last sweep (plus `SWEEP_SLACK`): it reads every kept entry, so it runs seldom, and its cost per
message written stays constant. The hash holds at most about twice the messages the kept entries
name (plus the slack and one request's new ones); it lives as long as the session's other
inspector keys.

`Digests` keeps, per session and per worker, the previous request's message objects and digests:
a message object sent again (the appended-body reader, `gateway.wire.appended`, keeps the earlier
body's objects) is not encoded and digested again.
"""

from __future__ import annotations

import base64
import hashlib
import operator
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import jsonio

DIGEST_BYTES = 12
SIZE_DIGEST_CHARS = 12  # the hex digest the prefix comparison keeps (`inspector.message_sizes`)
MESSAGE_JSON, MESSAGE_PACKED = "j", "z"
PACK_FROM_BYTES = 1024  # smaller messages are kept as JSON text: zlib + base64 would not shrink them
SWEEP_SLACK = 64
SWEPT = "~"  # the hash's field holding its size after the last sweep (never a digest)
RECEIVED, FORWARDED = "in", "out"
SESSIONS = 256  # sessions whose previous request `Digests` keeps (per worker)
KEPT_BYTES = 64 * 1024 * 1024  # encoded bytes of the messages `Digests` keeps, in all

# KEYS[1] the prompts stream, KEYS[2] the messages hash, KEYS[3] the last forwarded sizes (read).
# ARGV[1] the stream's cap, ARGV[2] the base entry's id ('' = none: check every digest), ARGV[3]
# and ARGV[4] the received and forwarded digests, ARGV[5], ARGV[6] the sweep's threshold factor and
# slack, then (digest, message) pairs to write.
# Without a base, or when it is trimmed, each digest not sent is checked. Returns {1, sizes, id}
# when written; {0, sizes, digest...} when those digests are missing and not sent (nothing written).
WRITE_SCRIPT = """
local sizes = redis.call('GET', KEYS[3]) or ''
local base = ARGV[2]
if base == '' or #redis.call('XRANGE', KEYS[1], base, base) == 0 then
  local given, asked, out = {}, {}, {0, sizes}
  for i = 7, #ARGV, 2 do given[ARGV[i]] = true end
  for _, list in ipairs({ARGV[3], ARGV[4]}) do
    for d in string.gmatch(list, '%S+') do
      if not given[d] and not asked[d] then
        asked[d] = true
        if redis.call('HEXISTS', KEYS[2], d) == 0 then table.insert(out, d) end
      end
    end
  end
  if #out > 2 then return out end
end
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'in', ARGV[3], 'out', ARGV[4])
local size = redis.call('HLEN', KEYS[2])
local swept = tonumber(redis.call('HGET', KEYS[2], '~') or '0')
if size > tonumber(ARGV[5]) * swept + tonumber(ARGV[6]) then
  local live = {['~'] = true}
  for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
    local fields = entry[2]
    for j = 1, #fields, 2 do
      if fields[j] == 'in' or fields[j] == 'out' then
        for d in string.gmatch(fields[j + 1], '%S+') do live[d] = true end
      end
    end
  end
  local gone = {}
  for _, d in ipairs(redis.call('HKEYS', KEYS[2])) do
    if not live[d] then table.insert(gone, d) end
  end
  for i = 1, #gone, 500 do redis.call('HDEL', KEYS[2], unpack(gone, i, math.min(i + 499, #gone))) end
  redis.call('HSET', KEYS[2], '~', size - #gone)
end
return {1, sizes, id}
"""
SWEEP_FACTOR = 2


@dataclass(frozen=True, slots=True)
class Digest:
    """One message's digest (`key`, the hash's field), the hex digest and encoded size the prefix
    comparison keeps."""

    key: str
    hex: str
    size: int


@dataclass(slots=True)
class _Previous:
    """A session's request as this worker recorded it: its message objects (kept so that their ids
    stay theirs) and digests, and the id of the entry written for it ('' until written)."""

    received: list[Any]
    received_digests: list[Digest]
    forwarded: list[Any]
    forwarded_digests: list[Digest]
    bytes: int
    entry: str = ""

    def keys(self) -> frozenset[str]:
        return frozenset(d.key for d in self.received_digests).union(d.key for d in self.forwarded_digests)


@dataclass(slots=True)
class Digested:
    """A request's messages' digests; the messages encoded for the first time here (by key); the
    entry of the session's previous request this worker wrote (`base`, '' when none) and the
    digests it names (`named`)."""

    received: list[Digest]
    forwarded: list[Digest]
    encoded: dict[str, bytes]
    base: str
    named: frozenset[str]
    recorded: _Previous

    def keys(self) -> tuple[str, str]:
        """The entry's two fields: the received and forwarded digests, in order."""
        return " ".join(d.key for d in self.received), " ".join(d.key for d in self.forwarded)

    def unsent(self, missing: set[str], received: Sequence[Any], forwarded: Sequence[Any]) -> dict[str, bytes]:
        """The encoded messages among `received` and `forwarded` whose digests are in `missing`."""
        out: dict[str, bytes] = {}
        for messages, digests in ((received, self.received), (forwarded, self.forwarded)):
            for message, digest in zip(messages, digests, strict=True):
                if digest.key in missing and digest.key not in out:
                    out[digest.key] = self.encoded.get(digest.key) or jsonio.dumps(message)
        return out


class Digests:
    """Per worker: each session's previous request, to digest only the message objects not seen
    then and to name the entry a new one may build on."""

    def __init__(self, sessions: int = SESSIONS, kept_bytes: int = KEPT_BYTES) -> None:
        self._sessions, self._kept_bytes = sessions, kept_bytes
        self._previous: OrderedDict[tuple[str, str], _Previous] = OrderedDict()
        self._bytes = 0

    def digest(self, owner: tuple[str, str], received: Sequence[Any], forwarded: Sequence[Any]) -> Digested:
        """The digests of `received` and `forwarded`, reusing those of the objects the session's
        previous request held; remembered for the next one."""
        before = self._previous.pop(owner, None) or _Previous([], [], [], [], 0)
        self._bytes -= before.bytes
        encoded: dict[str, bytes] = {}
        head_in, head_out = _head(received, before.received), _head(forwarded, before.forwarded)
        got_in = _digests(received, head_in, before.received_digests, {}, encoded)
        known = dict(zip(map(id, received[head_in:]), got_in[head_in:], strict=True))
        known.update(zip(map(id, before.forwarded[head_out:]), before.forwarded_digests[head_out:], strict=True))
        got_out = _digests(forwarded, head_out, before.forwarded_digests, known, encoded)
        size = sum(d.size for d in got_in) + sum(d.size for d in got_out)
        now = _Previous(list(received), got_in, list(forwarded), got_out, size)
        self._remember(owner, now)
        named = before.keys() if before.entry else frozenset()
        return Digested(got_in, got_out, encoded, before.entry, named, now)

    @staticmethod
    def wrote(digested: Digested, entry: str) -> None:
        """`digested`'s entry is written as `entry`: the session's next request may build on it."""
        digested.recorded.entry = entry

    def _remember(self, owner: tuple[str, str], now: _Previous) -> None:
        self._previous[owner] = now
        self._bytes += now.bytes
        while self._previous and (len(self._previous) > self._sessions or self._bytes > self._kept_bytes):
            _, dropped = self._previous.popitem(last=False)
            self._bytes -= dropped.bytes


def _head(messages: Sequence[Any], before: Sequence[Any]) -> int:
    """How many leading objects `messages` shares with `before` (the very objects, compared in C)."""
    same = list(map(operator.is_, messages, before))
    return same.index(False) if False in same else len(same)


def _digests(
    messages: Sequence[Any],
    head: int,
    before_digests: Sequence[Digest],
    known: Mapping[int, Digest],
    encoded: dict[str, bytes],
) -> list[Digest]:
    """The digests of `messages`: the first `head` those of the previous request's same objects,
    then each message's by its object (`known`: objects still referenced, so their ids are
    theirs) or computed."""
    out = list(before_digests[:head])
    for message in messages[head:]:
        found = known.get(id(message))
        out.append(found if found is not None else digest_of(message, encoded))
    return out


def digest_of(message: Any, encoded: dict[str, bytes] | None = None) -> Digest:
    """`message`'s digest, its JSON bytes added to `encoded` by its key."""
    raw = jsonio.dumps(message)
    digest = hashlib.sha256(raw).digest()
    key = base64.urlsafe_b64encode(digest[:DIGEST_BYTES]).decode("ascii")
    if encoded is not None:
        encoded[key] = raw
    return Digest(key, digest.hex()[:SIZE_DIGEST_CHARS], len(raw))


def stored(raw: bytes) -> str:
    """A message's JSON bytes as the hash keeps them."""
    if len(raw) >= PACK_FROM_BYTES:
        return MESSAGE_PACKED + base64.b64encode(zlib.compress(raw, 1)).decode("ascii")
    return MESSAGE_JSON + raw.decode("utf-8")


def message_of(value: str | None) -> tuple[bool, Any]:
    """A kept message (`stored`): (True, the message), or (False, None) when missing or unreadable."""
    if not value:
        return False, None
    try:
        if value[0] == MESSAGE_PACKED:
            return True, jsonio.loads(zlib.decompress(base64.b64decode(value[1:])))
        if value[0] == MESSAGE_JSON:
            return True, jsonio.loads(value[1:])
    except (ValueError, zlib.error):
        pass
    return False, None


def entry_digests(fields: Mapping[str, str]) -> tuple[list[str], list[str]] | None:
    """An entry's received and forwarded digests; None for an entry of the earlier format."""
    if RECEIVED not in fields or FORWARDED not in fields:
        return None
    return fields[RECEIVED].split(), fields[FORWARDED].split()
