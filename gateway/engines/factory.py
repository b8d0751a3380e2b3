"""build_engines: turn the settings into the engines the gateway routes to.

Called by :func:`gateway.app.create_app` when no engines are passed in (the app then owns and
starts them) and by ``lora-gateway serve``. With ``settings.engine_urls`` the engines are
remote vLLM servers; otherwise ``settings.engines`` managed vLLM children serve the resolved base
model, each with its own port and log (``engine-<i>.log``), and, when there are several, each
bound to its own share of the gateway's cores (:func:`split_cores`). Building
does no I/O beyond looking at the base model path: a known model that is not prepared yet is
prepared by the managed engine when it starts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from gateway.engines.base import Engine
from gateway.engines.managed import ManagedVLLMEngine
from gateway.engines.remote import RemoteVLLMEngine
from gateway.settings import GatewaySettings


def build_engines(settings: GatewaySettings, *, api_key: str | None = None) -> list[Engine]:
    """``api_key``: managed engines keep this key across restarts (``serve --workers``)."""
    if settings.engine_urls:
        return [
            RemoteVLLMEngine(settings, url, name=f"remote-{index}")
            for index, url in enumerate(settings.engine_urls)
        ]
    if settings.engines == 1:
        return [ManagedVLLMEngine(settings, name="engine-0", api_key=api_key)]
    groups = split_cores(sorted(os.sched_getaffinity(0)), settings.engines)
    return [
        ManagedVLLMEngine(settings, name=f"engine-{index}", cpus=cpus, api_key=api_key)
        for index, cpus in enumerate(groups)
    ]


def split_cores(cores: Sequence[int], count: int) -> list[list[int]]:
    """``count`` groups of cores, as even as can be; with fewer cores than groups, groups
    share cores (engine ``i`` gets core ``i mod len(cores)``)."""
    if not cores or count < 1:
        raise ValueError(f"cannot split {list(cores)} into {count} groups")
    if count >= len(cores):
        return [[cores[index % len(cores)]] for index in range(count)]
    size, extra = divmod(len(cores), count)
    groups, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        groups.append(list(cores[start:end]))
        start = end
    return groups
