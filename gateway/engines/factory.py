"""build_engines: turn the settings into the engines the gateway routes to.

Called by :func:`gateway.app.create_app` when no engines are passed in (the app then owns and
starts them) and by ``lora-gateway serve``. With ``settings.engine_urls`` the engines are
remote vLLM servers; otherwise one managed vLLM child serves the resolved base model. Building
does no I/O beyond looking at the base model path: a known model that is not prepared yet is
prepared by the managed engine when it starts.
"""

from __future__ import annotations

from gateway.engines.base import Engine
from gateway.engines.managed import ManagedVLLMEngine
from gateway.engines.remote import RemoteVLLMEngine
from gateway.settings import GatewaySettings


def build_engines(settings: GatewaySettings) -> list[Engine]:
    if settings.engine_urls:
        return [
            RemoteVLLMEngine(settings, url, name=f"remote-{index}")
            for index, url in enumerate(settings.engine_urls)
        ]
    return [ManagedVLLMEngine(settings, name="engine-0")]
