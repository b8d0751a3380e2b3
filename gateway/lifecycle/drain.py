"""Draining adapter versions before an admin unload or delete removes them.

A draining slot takes no new lease (new requests for it wait, holding no lock, in
:mod:`gateway.lifecycle.lease`) and is waited for with no lock held, so other adapters, other
versions and other admin calls go on. Either every slot drains within ``drain_timeout_s``, or
the slots are given back as they were and the caller gets 409 ``adapter_busy``: the admin call
succeeds after the drain or changes nothing. Used by
:meth:`gateway.lifecycle.service.AdapterLifecycle.unload` and ``delete``.
"""

from __future__ import annotations

import asyncio

from gateway.errors import ConflictError
from gateway.lifecycle.context import LifecycleContext
from gateway.placement.slots import Slot


def start_drain(slots: list[Slot]) -> None:
    """From now on ``slots`` take no new lease (the caller holds their name's lock)."""
    for slot in slots:
        slot.draining = True
        slot.accepting = False


def give_back(slots: list[Slot]) -> None:
    """Undo :func:`start_drain`: the slots take leases again (the caller holds the lock)."""
    for slot in slots:
        slot.draining = False
        slot.accepting = not slot.retiring


async def drain(ctx: LifecycleContext, slots: list[Slot], *, what: str, name: str) -> None:
    """Wait, holding no lock, until ``slots`` have no request in flight; on time out give
    them back as they were and raise 409. Drained, they stay draining (no new lease) until
    the caller, under the lock again, removes them or gives them back."""
    try:
        async with asyncio.timeout(ctx.drain_timeout_s):
            for slot in slots:
                await slot.drained.wait()
    except TimeoutError as exc:
        in_flight = sum(slot.leases for slot in slots)
        give_back(slots)
        raise ConflictError(
            f"cannot {what} adapter {name!r}: {in_flight} requests still in flight after "
            f"{ctx.drain_timeout_s:.0f} s; nothing changed, retry later",
            code="adapter_busy",
        ) from exc
    finally:
        ctx.table.notify()  # requests waiting for the outcome look again
