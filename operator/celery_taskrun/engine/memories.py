"""Kopf's per-object memory, kept for no object.

Kopf remembers every object it has seen (a `ResourceMemory` per uid: a copy of the
memo, an error throttler, daemon and index bookkeeping: about 1.1 KB each) until the
object is deleted: 100,000 finished TaskRuns kept would cost over 100 MiB of it.  What
it holds serves daemons, timers, indices and handlers with progress, and the operator
uses none of them: its only object handlers are `on.event`, which take the memo (the
shared one is copied for each event instead) and nothing else from that memory.
"""

from __future__ import annotations

from kopf._cogs.structs import bodies, ephemera
from kopf._core.reactor import inventory


class Forgetful(inventory.ResourceMemories):
    """A fresh memory for each event, never stored."""

    async def recall(
        self,
        raw_body: bodies.RawBody,
        *,
        memobase: ephemera.AnyMemo | None = None,
        noticed_by_listing: bool = False,
        ephemeral: bool = False,
    ) -> inventory.ResourceMemory:
        return await super().recall(
            raw_body, memobase=memobase, noticed_by_listing=noticed_by_listing, ephemeral=True
        )
