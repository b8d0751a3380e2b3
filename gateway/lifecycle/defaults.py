"""Sampling defaults of adapter versions (:mod:`adapters.sampling`): checked when a version is
registered, replaced or cleared by the admin API (``PATCH /admin/adapters/{name}``), kept in the
version's recorded manifest in the registry. The lease hands them to the request path
(:mod:`gateway.lifecycle.lease`); :mod:`gateway.inference.sampling` applies them.

Called by :class:`gateway.lifecycle.service.AdapterLifecycle`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from adapters.registry import NewVersion, Registry
from adapters.sampling import SAMPLING_DEFAULTS_KEY, validate_sampling_defaults
from gateway.lifecycle.context import LifecycleContext


def with_checked_sampling_defaults(new: NewVersion) -> NewVersion:
    """``new`` with its manifest's ``sampling_defaults`` checked and normalised, refused
    (:class:`adapters.sampling.SamplingDefaultsError`, a 400) like any other bad part."""
    if not new.manifest or SAMPLING_DEFAULTS_KEY not in new.manifest:
        return new
    checked = validate_sampling_defaults(new.manifest[SAMPLING_DEFAULTS_KEY])
    return replace(new, manifest={**new.manifest, SAMPLING_DEFAULTS_KEY: checked})


async def set_sampling_defaults(
    ctx: LifecycleContext, registry: Registry, name: str, defaults: Mapping[str, Any] | None
) -> None:
    """Replace (None or empty: clear) the active version's defaults, checked first."""
    checked = validate_sampling_defaults(defaults) if defaults else None
    async with ctx.lock(name):
        record = ctx.get(name)
        ctx.records[name] = await asyncio.to_thread(
            registry.set_sampling_defaults, name, record.active_version, checked or None
        )
