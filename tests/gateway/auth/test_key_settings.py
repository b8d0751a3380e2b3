"""Client API keys are checked when the settings are built: a key that would let a bare
``Authorization: Bearer`` (or a header nobody can send) pass is refused with a clear message."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from gateway.auth.client_keys import ApiKeyAuth
from gateway.errors import AuthenticationError
from gateway.settings import MAX_API_KEY_CHARS, GatewaySettings


@pytest.mark.parametrize("key", ["", " ", "\t", "  \n "])
def test_empty_or_whitespace_only_key_is_refused(key: str) -> None:
    with pytest.raises(ValidationError) as caught:
        GatewaySettings(api_keys=[SecretStr("sk-good-key"), SecretStr(key)])
    message = str(caught.value)
    assert "api_keys" in message
    assert "empty or whitespace-only" in message
    assert "sk-good-key" not in message


@pytest.mark.parametrize("key", [" sk-padded", "sk-padded ", "sk-in side", "sk-\x00nul"])
def test_key_with_whitespace_or_control_characters_is_refused(key: str) -> None:
    # The check strips the bearer token, so such a key could never match: refuse it up front.
    with pytest.raises(ValidationError, match="whitespace or control characters"):
        GatewaySettings(api_keys=[key])


def test_overlong_key_is_refused() -> None:
    with pytest.raises(ValidationError, match=f"at most {MAX_API_KEY_CHARS} characters"):
        GatewaySettings(api_keys=["k" * (MAX_API_KEY_CHARS + 1)])
    assert len(GatewaySettings(api_keys=["k" * MAX_API_KEY_CHARS]).api_keys) == 1


def test_environment_list_skips_empty_parts_and_an_empty_value_means_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LORA_GATEWAY_API_KEYS", "sk-a, ,sk-b,")
    assert [k.get_secret_value() for k in GatewaySettings().api_keys] == ["sk-a", "sk-b"]
    monkeypatch.setenv("LORA_GATEWAY_API_KEYS", "")
    assert GatewaySettings().api_keys == []


def test_auth_itself_refuses_an_empty_key() -> None:
    # Belt and braces for code that builds ApiKeyAuth without the settings.
    with pytest.raises(ValueError, match="empty"):
        ApiKeyAuth([SecretStr("sk-ok"), SecretStr(" ")])
    auth = ApiKeyAuth([SecretStr("sk-ok")])
    for header in ("Bearer", "Bearer ", "Bearer   "):
        with pytest.raises(AuthenticationError):
            auth.check(header)
