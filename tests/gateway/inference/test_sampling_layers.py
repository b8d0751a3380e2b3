"""gateway.inference.sampling: which defaults a request gets, and adding them to its JSON."""

from __future__ import annotations

import json

import pytest

from gateway.inference.sampling import (
    CHAT_DEFAULTS,
    COMPLETION_DEFAULTS,
    MESSAGES_DEFAULTS,
    RESPONSES_DEFAULTS,
    add_fields,
    defaults_to_send,
    layered,
)

CARD = {"temperature": 0.2, "top_p": 0.9}
ADAPTER = {"temperature": 0.7, "max_tokens": 64, "stop": ["###"], "top_k": 40}


def test_later_layers_win_key_by_key() -> None:
    assert layered((CARD, ADAPTER)) == {
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 64,
        "stop": ["###"],
        "top_k": 40,
    }
    assert layered((None, ADAPTER)) is ADAPTER
    assert layered((CARD, {})) is CARD
    assert layered((None, None)) is None


def test_what_the_client_sent_wins() -> None:
    sent = frozenset({"model", "messages", "temperature", "stop"})
    assert defaults_to_send(CHAT_DEFAULTS, ADAPTER, sent) == {"max_tokens": 64, "top_k": 40}
    assert defaults_to_send(CHAT_DEFAULTS, None, sent) == {}


def test_max_completion_tokens_counts_as_max_tokens_in_chat() -> None:
    sent = frozenset({"max_completion_tokens"})
    assert "max_tokens" not in defaults_to_send(CHAT_DEFAULTS, ADAPTER, sent)
    assert defaults_to_send(COMPLETION_DEFAULTS, ADAPTER, sent)["max_tokens"] == 64


def test_each_endpoint_gets_its_own_spelling() -> None:
    assert defaults_to_send(RESPONSES_DEFAULTS, ADAPTER, frozenset()) == {
        "temperature": 0.7,
        "max_output_tokens": 64,
        "top_k": 40,
    }
    assert defaults_to_send(RESPONSES_DEFAULTS, ADAPTER, {"max_output_tokens"}) == {
        "temperature": 0.7,
        "top_k": 40,
    }
    assert defaults_to_send(MESSAGES_DEFAULTS, ADAPTER, frozenset({"max_tokens"})) == {
        "temperature": 0.7,
        "stop_sequences": ["###"],
        "top_k": 40,
    }


def test_fields_are_spliced_in_keeping_the_clients_bytes() -> None:
    raw = b' {"model": "m",\n "messages": [{"role": "user", "content": "caf\xc3\xa9 {"}]}'
    sent = add_fields(raw, {"temperature": 0.2, "stop": ["###"]})
    assert sent.endswith(raw.split(b"{", 1)[1])
    assert json.loads(sent) == {**json.loads(raw), "temperature": 0.2, "stop": ["###"]}
    assert add_fields(raw, {}) is raw
    assert json.loads(add_fields(b"{}", {"top_p": 0.9})) == {"top_p": 0.9}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "temperature": null}',
        b'{"model": "m", "t\\u0065mperature": null}',
        b'{"model": "m", "prompt": "say \\"temperature\\""}',
    ],
)
def test_a_null_or_possible_spelling_is_replaced_not_duplicated(raw: bytes) -> None:
    pairs: list[list[tuple[str, object]]] = []
    sent = add_fields(raw, {"temperature": 0.2})
    payload = json.loads(sent, object_pairs_hook=lambda kv: pairs.append(kv) or dict(kv))
    top_level_keys = [key for key, _ in pairs[-1]]
    assert top_level_keys.count("temperature") == 1
    assert payload["temperature"] == 0.2
