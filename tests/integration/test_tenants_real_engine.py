"""Virtual keys against the session's real vLLM and a real Redis, through the OpenAI SDK.

A key scoped to one adapter gets 404 for the base model and sees only its adapter in
``/v1/models``; a tokens-per-minute key is stopped once the tokens the engine really counted
for its streams reach the limit; a 3-requests-per-minute key gets 3 answers, then 429s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import GatewaySettings
from tests.integration.conftest import TINY_SERVED_NAME
from tests.support.gateway_server import serve_gateway_in_thread

pytestmark = pytest.mark.integration

BASE = TINY_SERVED_NAME
ADAPTER = "tn-a1"
ADMIN = "test-admin-token-tenants-0123456789"
MESSAGES: Any = [{"role": "user", "content": "Tell me a story about a fox."}]


@pytest.fixture(scope="module")
def gateway_url(
    vllm_engine: ManagedVLLMEngine,
    tiny_adapters: dict[str, Path],
    engine_settings: GatewaySettings,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    settings = engine_settings.model_copy(
        update={
            "data_dir": tmp_path_factory.mktemp("gw-tenants"),
            "admin_token": SecretStr(ADMIN),
            "redis_url": redis_url,
        }
    )
    adapters = {ADAPTER: tiny_adapters["a1"]}
    with serve_gateway_in_thread(
        settings, vllm_engine.url, BASE, adapters, engine_api_key=vllm_engine.api_key
    ) as url:
        yield url


def create_key(url: str, name: str, **fields: Any) -> str:
    response = httpx.post(
        f"{url}/admin/keys",
        json={"name": name, **fields},
        headers={"authorization": f"Bearer {ADMIN}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret


def sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def test_scoped_key_sees_and_reaches_only_its_adapter(gateway_url: str) -> None:
    with sdk(gateway_url, create_key(gateway_url, "tn-scoped", models=[ADAPTER])) as client:
        assert [model.id for model in client.models.list().data] == [ADAPTER]
        answer = client.chat.completions.create(model=ADAPTER, messages=MESSAGES, max_tokens=4)
        assert answer.model == ADAPTER and answer.usage is not None
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model=BASE, messages=MESSAGES, max_tokens=4)
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"


def test_tpm_stops_the_key_after_the_tokens_the_engine_counted(gateway_url: str) -> None:
    limit = 120
    with sdk(gateway_url, create_key(gateway_url, "tn-tpm", limits={"tpm": limit})) as client:
        used, answered = 0, 0
        while True:
            try:
                stream = client.chat.completions.create(
                    model=ADAPTER,
                    messages=MESSAGES,
                    max_tokens=16,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            except openai.RateLimitError as exc:
                assert exc.response.headers["x-ratelimit-remaining-tokens"] == "0"
                break
            usage = [chunk.usage for chunk in stream if chunk.usage is not None]
            assert len(usage) == 1
            used += usage[0].total_tokens
            answered += 1
            assert answered < 50, "the tpm limit never stopped the key"
    # Admitted while under the limit, refused once the engine's own counts reached it.
    assert used >= limit
    assert used - usage[0].total_tokens < limit


def test_3_rpm_key_gets_3_answers_then_429(gateway_url: str) -> None:
    with sdk(gateway_url, create_key(gateway_url, "tn-rpm", limits={"rpm": 3})) as client:
        for _ in range(3):
            client.completions.create(model=BASE, prompt="The quick brown fox", max_tokens=2)
        with pytest.raises(openai.RateLimitError) as caught:
            client.completions.create(model=BASE, prompt="The quick brown fox", max_tokens=2)
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(caught.value.response.headers["retry-after"]) >= 1
