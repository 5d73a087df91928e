"""The inspector's kept prompts, each message stored once per session (content-addressed).

Agents resend the whole conversation every turn, so writing every request's messages in full costs
the session's length per turn. Instead:

    cvm:{<tenant>:s:<session>}:prompts  stream: per kept request, `in` and `out`: the messages the
                                        agent sent and those forwarded, in order, by digest, each
                                        full run of `CHUNK` digests from the list's start named
                                        by its chunk's key (space-separated; an entry of the
                                        earlier format holds `r`, the whole prompt packed, and
                                        still reads)
    cvm:{<tenant>:s:<session>}:msgs     hash: digest -> message (`MESSAGE_JSON` + JSON, or
                                        `MESSAGE_PACKED` + zlib + base64 JSON); `*<key>` -> a
                                        chunk's digests; `~`: its size at the last sweep

A digest is the SHA-256 of the message's JSON bytes (a chunk's: of its digests, space-separated),
its first 12 bytes in base64url (96 bits). Agents append to the conversation, so a list's chunks
stay the same from turn to turn: an entry grows by one key per `CHUNK` messages, and a chunk is
written once, when it fills.

`WRITE_SCRIPT` adds one entry atomically: the fields the writer sends, then the entry (its stream
capped at exactly `ui.prompts`). The writer sends only the fields the entry it names as its `base`
did not name: while an entry is kept, every field it names is in the hash (the sweep keeps them,
and a chunk's members with it), so the script needs only that the base is still kept. Without a
base (this worker did not write the session's previous entry), when it is trimmed, or when the
hash is gone as a whole (evicted under `maxmemory`: the one way a field goes but by the sweep), the
script checks each field not sent (and each member of a chunk sent) and, when some are missing,
writes nothing and lists them; the writer sends those.

The sweep deletes the fields no kept entry names, once the hash has grown past `SWEEP_FACTOR`
times its size at the last sweep plus `SWEEP_SLACK`: it reads every kept entry, so it runs seldom,
and its cost per field written stays constant. The hash holds at most about twice the fields the
kept entries name (plus the slack and one request's new ones). It has no expiry, as the session's
other inspector keys (`:turns`, `:prompts`, `:sum`) have none.

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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import jsonio

DIGEST_BYTES = 12
SIZE_DIGEST_CHARS = 12  # the hex digest the prefix comparison keeps (the inspector's `:fwd`)
MESSAGE_JSON, MESSAGE_PACKED = "j", "z"
PACK_FROM_BYTES = 256  # smaller messages are kept as JSON text: zlib + base64 would not shrink them
CHUNK = 64  # digests per chunk of a list
CHUNK_MARK = "*"  # a chunk's field begins with it (a message's digest never does)
SWEEP_FACTOR, SWEEP_SLACK = 2, 64
SWEPT = "~"  # the hash's field holding its size after the last sweep (never a digest)
RECEIVED, FORWARDED = "in", "out"
SESSIONS = 256  # sessions whose previous request `Digests` keeps (per worker)
KEPT_BYTES = 64 * 1024 * 1024  # encoded bytes of the messages `Digests` keeps, in all

# KEYS[1] the prompts stream, KEYS[2] the messages hash, KEYS[3] the last forwarded sizes (read).
# ARGV[1] the stream's cap, ARGV[2] the base entry's id ('' = none), ARGV[3] and ARGV[4] the
# received and forwarded lists (chunks and digests), ARGV[5], ARGV[6] the sweep's threshold factor
# and slack, then (field, value) pairs to write: messages and chunks.
# Without a base, when it is trimmed, or when the hash is gone (evicted), each field named and
# not sent (and each member of a chunk sent) is checked. Returns {1, sizes, id} when written;
# {0, sizes, field...} when those fields are missing and not sent (nothing written then).
WRITE_SCRIPT = """
local sizes = redis.call('GET', KEYS[3]) or ''
local base = ARGV[2]
local lost = redis.call('EXISTS', KEYS[2]) == 0
if base == '' or lost or #redis.call('XRANGE', KEYS[1], base, base) == 0 then
  local given, asked, out = {}, {}, {0, sizes}
  for i = 7, #ARGV, 2 do given[ARGV[i]] = ARGV[i + 1] end
  local function need(d)
    if given[d] or asked[d] then return end
    asked[d] = true
    if redis.call('HEXISTS', KEYS[2], d) == 0 then table.insert(out, d) end
  end
  for _, list in ipairs({ARGV[3], ARGV[4]}) do
    for d in string.gmatch(list, '%S+') do need(d) end
  end
  for d, value in pairs(given) do
    if string.sub(d, 1, 1) == '*' then
      for m in string.gmatch(value, '%S+') do need(m) end
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
  local function keep(d)
    if live[d] then return end
    live[d] = true
    if string.sub(d, 1, 1) == '*' then
      local members = redis.call('HGET', KEYS[2], d)
      if members then
        for m in string.gmatch(members, '%S+') do live[m] = true end
      end
    end
  end
  for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
    local fields = entry[2]
    for j = 1, #fields, 2 do
      if fields[j] == 'in' or fields[j] == 'out' then
        for d in string.gmatch(fields[j + 1], '%S+') do keep(d) end
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


@dataclass(frozen=True, slots=True)
class Digest:
    """One message's digest (`key`, the hash's field), the hex digest and encoded size the prefix
    comparison keeps."""

    key: str
    hex: str
    size: int


@dataclass(frozen=True, slots=True)
class Listed:
    """One list of a request (received or forwarded): its message objects (kept so that their ids
    stay theirs), their digests, and the keys of its full chunks."""

    objects: list[Any]
    digests: list[Digest]
    chunks: list[str]

    def tokens(self) -> str:
        """The list as an entry holds it: its chunks' keys, then the digests after them."""
        tail = self.digests[len(self.chunks) * CHUNK :]
        return " ".join([*self.chunks, *(d.key for d in tail)])

    def chunk_values(self) -> Iterator[tuple[str, str]]:
        for j, key in enumerate(self.chunks):
            yield key, _chunk_value(self.digests, j)


_NONE = Listed([], [], [])


@dataclass(slots=True)
class _Previous:
    """A session's request as this worker recorded it, the encoded bytes of its messages and the
    id of the entry written for it ('' until written)."""

    received: Listed
    forwarded: Listed
    received_bytes: int
    bytes: int  # with the forwarded messages' (the gateway's forwarded list is bounded by the budget)
    entry: str = ""

    def named(self) -> frozenset[str]:
        """Fields its entry names, those a later request may meet again: its chunks, the received
        digests after them, and every forwarded digest (the few messages the gateway builds anew)."""
        tail = self.received.digests[len(self.received.chunks) * CHUNK :]
        return frozenset([*self.received.chunks, *self.forwarded.chunks, *(d.key for d in tail)]).union(
            d.key for d in self.forwarded.digests
        )


@dataclass(slots=True)
class Digested:
    """A request's lists; the messages encoded (by key) and the chunks made (key -> value) for the
    first time here; the entry of the session's previous request this worker wrote (`base`, ''
    when none) and fields it names (`named`: those need not be sent again)."""

    received: Listed
    forwarded: Listed
    encoded: dict[str, bytes]
    chunked: dict[str, str]
    base: str
    named: frozenset[str]
    recorded: _Previous

    def keys(self) -> tuple[str, str]:
        """The entry's two fields: the received and forwarded lists."""
        return self.received.tokens(), self.forwarded.tokens()

    def fresh(self) -> dict[str, str]:
        """What the store may lack: the fields made here and not named by the base, as stored."""
        out = {key: stored(raw) for key, raw in self.encoded.items() if key not in self.named}
        out.update((key, value) for key, value in self.chunked.items() if key not in self.named)
        return out

    def unsent(self, missing: set[str]) -> dict[str, str]:
        """The fields in `missing` (messages and chunks of this request), as stored."""
        out: dict[str, str] = {}
        for listed in (self.received, self.forwarded):
            for message, digest in zip(listed.objects, listed.digests, strict=True):
                if digest.key in missing and digest.key not in out:
                    out[digest.key] = stored(self.encoded.get(digest.key) or jsonio.dumps(message))
            if any(key in missing for key in listed.chunks):
                out.update((key, value) for key, value in listed.chunk_values() if key in missing)
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
        before = self._previous.pop(owner, None) or _Previous(_NONE, _NONE, 0, 0)
        self._bytes -= before.bytes
        encoded: dict[str, bytes] = {}
        chunked: dict[str, str] = {}
        head_in, head_out = _head(received, before.received.objects), _head(forwarded, before.forwarded.objects)
        got_in = _digests(received, head_in, before.received.digests, {}, encoded)
        known = dict(zip(map(id, received[head_in:]), got_in[head_in:], strict=True))
        earlier = before.forwarded
        known.update(zip(map(id, earlier.objects[head_out:]), earlier.digests[head_out:], strict=True))
        got_out = _digests(forwarded, head_out, before.forwarded.digests, known, encoded)
        listed_in = Listed(list(received), got_in, _chunks(got_in, head_in, before.received.chunks, chunked))
        listed_out = Listed(list(forwarded), got_out, _chunks(got_out, head_out, before.forwarded.chunks, chunked))
        if head_in == len(before.received.objects):  # appended to: only the new ones counted
            received_bytes = before.received_bytes + sum(d.size for d in got_in[head_in:])
        else:
            received_bytes = sum(d.size for d in got_in)
        now = _Previous(listed_in, listed_out, received_bytes, received_bytes + sum(d.size for d in got_out))
        self._remember(owner, now)
        named = before.named() if before.entry else frozenset()
        return Digested(listed_in, listed_out, encoded, chunked, before.entry, named, now)

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


def _chunks(digests: Sequence[Digest], head: int, before: Sequence[str], chunked: dict[str, str]) -> list[str]:
    """The keys of the full chunks of `digests`: the previous request's while within its first
    `head` (the same objects), the others made (and added to `chunked`)."""
    kept = min(head // CHUNK, len(before))
    out = list(before[:kept])
    for j in range(kept, len(digests) // CHUNK):
        value = _chunk_value(digests, j)
        key = CHUNK_MARK + _key(hashlib.sha256(value.encode("ascii")).digest())
        chunked[key] = value
        out.append(key)
    return out


def _chunk_value(digests: Sequence[Digest], j: int) -> str:
    """Chunk `j` of a list as the hash keeps it: its digests' keys, space-separated."""
    return " ".join(d.key for d in digests[j * CHUNK : (j + 1) * CHUNK])


def _key(digest: bytes) -> str:
    """A field's name: the first `DIGEST_BYTES` of a SHA-256 digest, in base64url."""
    return base64.urlsafe_b64encode(digest[:DIGEST_BYTES]).decode("ascii")


def digest_of(message: Any, encoded: dict[str, bytes] | None = None) -> Digest:
    """`message`'s digest, its JSON bytes added to `encoded` by its key."""
    raw = jsonio.dumps(message)
    digest = hashlib.sha256(raw).digest()
    key = _key(digest)
    if encoded is not None:
        encoded[key] = raw
    return Digest(key, digest.hex()[:SIZE_DIGEST_CHARS], len(raw))


def stored(raw: bytes) -> str:
    """A message's JSON bytes as the hash keeps them: packed when that is shorter."""
    if len(raw) >= PACK_FROM_BYTES:
        packed = base64.b64encode(zlib.compress(raw, 1))
        if len(packed) < len(raw):
            return MESSAGE_PACKED + packed.decode("ascii")
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


def entry_tokens(fields: Mapping[str, str]) -> tuple[list[str], list[str]] | None:
    """An entry's received and forwarded lists (chunks' keys and digests); None for an entry of
    the earlier format."""
    if RECEIVED not in fields or FORWARDED not in fields:
        return None
    return fields[RECEIVED].split(), fields[FORWARDED].split()


def chunks_in(lists: Sequence[Sequence[str]]) -> list[str]:
    """The chunks `lists` name, each once."""
    return list(dict.fromkeys(token for tokens in lists for token in tokens if token.startswith(CHUNK_MARK)))


def expanded(tokens: Sequence[str], chunks: Mapping[str, str]) -> list[str] | None:
    """`tokens` with each chunk replaced by its digests (`chunks`: key -> value); None when one
    is not known."""
    out: list[str] = []
    for token in tokens:
        if not token.startswith(CHUNK_MARK):
            out.append(token)
        elif token in chunks:
            out.extend(chunks[token].split())
        else:
            return None
    return out
