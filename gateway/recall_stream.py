"""Demand paging in a chat stream: kept for callers of `relay`; the stream filter is the chat
adapter's (`gateway.wire.chat.ChatStream`) and the loop the one every format uses
(`gateway.wire.loop`)."""

from __future__ import annotations

from gateway.wire.chat import relay

__all__ = ["relay"]
