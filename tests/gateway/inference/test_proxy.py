"""gateway.inference.proxy's byte-level helpers: the upstream body, the model rename, usage
reading."""

from __future__ import annotations

import json

import pytest

from gateway.inference.proxy import ModelRename, body_for_upstream


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"pub","messages":[]}',
        b'{\n  "messages": [{"role": "user", "content": "x"}],\n  "model" :\t"pub"\n}',
        b'{"prompt": "the \\"model\\": \\"pub\\" trap", "model": "pub"}',
        b'{"prompt": "ends with a backslash \\\\", "model": "pub", "n": 1}',
        b'{"model": "pub", "prompt": "caf\xc3\xa9 \\u00e9"}',
    ],
)
def test_only_the_top_level_model_value_changes(raw: bytes) -> None:
    out = body_for_upstream(raw, "pub", "pub@v3")
    before, after = json.loads(raw), json.loads(out)
    assert after.pop("model") == "pub@v3"
    before.pop("model")
    assert after == before
    # Spliced, not re-serialised: everything but the value keeps its bytes.
    assert out.replace(b'"pub@v3"', b'"pub"') == raw


def test_same_name_forwards_the_very_same_bytes() -> None:
    raw = b'{"model": "base",   "messages": []}'
    assert body_for_upstream(raw, "base", "base") is raw


@pytest.mark.parametrize(
    "raw",
    [
        # Nested "model" keys (a tool's JSON schema): the splice is ambiguous, so parse.
        b'{"tools": [{"function": {"parameters": {"model": "pub"}}}], "model": "pub"}',
        # The top-level key spelled with an escape: only the nested plain key matches.
        b'{"mod\\u0065l": "pub", "response_format": {"type": "json_schema", "model": "pub"}}',
        # A duplicate key: JSON parsers keep the last one, so does the rewrite.
        b'{"model": "pub", "n": 1, "model": "pub"}',
    ],
)
def test_ambiguous_bodies_are_rewritten_through_json(raw: bytes) -> None:
    out = json.loads(body_for_upstream(raw, "pub", "pub@v3"))
    expected = json.loads(raw)
    expected["model"] = "pub@v3"
    assert out == expected


def test_model_rename_touches_only_the_model_field() -> None:
    rename = ModelRename("style@v2", "style")
    event = (
        b'data: {"id":"x","model":"style@v2","choices":[{"delta":'
        b'{"content":"the \\"model\\":\\"style@v2\\" text"}}]}\n\n'
    )
    renamed = rename.apply(event)
    assert json.loads(renamed[6:])["model"] == "style"
    assert json.loads(renamed[6:])["choices"] == json.loads(event[6:])["choices"]
    spaced = b'{"model": "style@v2", "usage": null}'
    assert json.loads(rename.apply(spaced))["model"] == "style"


def test_model_rename_of_a_body_falls_back_to_json() -> None:
    rename = ModelRename("style@v2", "style")
    odd = b'{"model" :\n"style@v2", "choices": []}'
    assert json.loads(rename.apply_to_body(odd)) == {"model": "style", "choices": []}
    assert rename.apply_to_body(b"not json") == b"not json"
