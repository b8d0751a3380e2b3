"""An adapter registered from s3:// (a real S3-compatible server, moto's server mode) is served
by the real vLLM engine through the gateway, and a change at the source after registration
does not change what it answers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import GatewaySettings
from loadtest.adapters_gen import write_random_lora
from tests.integration.registry_gateway import (
    ADAPTER_SCALE,
    engine_completion,
    registry_gateway,
)
from tests.support.s3_server import S3Server

pytestmark = pytest.mark.integration


async def test_s3_adapter_served_by_vllm_and_immune_to_source_changes(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tiny_model_dir: Path,
    tmp_path: Path,
    s3_server: S3Server,
) -> None:
    root = tmp_path / "adapters"
    first = write_random_lora(root / "s3-a", tiny_model_dir, seed=21, scale=ADAPTER_SCALE)
    second = write_random_lora(root / "s3-b", tiny_model_dir, seed=22, scale=ADAPTER_SCALE)
    client = s3_server.client()
    bucket = f"it-{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:10]}"
    client.create_bucket(Bucket=bucket)

    def upload(directory: Path) -> None:
        for path in directory.iterdir():
            client.put_object(Bucket=bucket, Key=f"a/{path.name}", Body=path.read_bytes())

    upload(first)
    update: dict[str, object] = {"s3_endpoint_url": s3_server.endpoint_url}
    async with registry_gateway(
        engine_settings, vllm_engine, tmp_path / "data", root, settings_update=update
    ) as gw:
        response = await gw.admin.post(
            "/admin/adapters?wait=true", json={"name": "s3-a", "source": f"s3://{bucket}/a"}
        )
        assert response.status_code == 201, response.text
        created = response.json()
        text = await gw.complete("s3-a")
        assert text == await engine_completion(vllm_engine, str(created["upstream_name"]))
        assert text != await gw.complete(vllm_engine.base_model)

        upload(second)  # the source now holds another adapter
        unloaded = await gw.admin.post("/admin/adapters/s3-a/unload")
        assert unloaded.status_code == 200
        assert await gw.complete("s3-a") == text  # loaded again from the stored copy
        await gw.admin.delete("/admin/adapters/s3-a")
