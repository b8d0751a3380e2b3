"""Scripts that make the FAKE vLLM (:class:`loadtest.fake_vllm.FakeVLLM`) answer the endpoints
it does not serve by itself, the way vLLM 0.32 answers them: the Responses API (ids are the
request's ``request_id``; stored answers kept in the script, as vLLM keeps them in its process),
Anthropic's Messages API (usage in ``message_delta``) and ``/tokenize`` / ``/detokenize``.
Not a model: fixed words. Set one with ``fake.handler = VLLMScript().handle``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from loadtest.fake_vllm.engine import Full, Recorded, Reply, Stream, json_reply


def response_body(response_id: str, model: str, text: str) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": 1,
        "model": model,
        "status": "completed",
        "output": [
            {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": 7,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 2,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 9,
        },
    }


def sse(kind: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **payload}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


def message_body(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": text}],
        "model": model,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 7, "output_tokens": 2},
    }


def _not_found(message: str) -> Full:
    return json_reply({"error": {"message": message, "type": "NotFoundError", "code": 404}}, 404)


@dataclass
class VLLMScript:
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def handle(self, request: Recorded) -> Reply | None:
        path = request.path.split("?", 1)[0]
        if path.startswith("/v1/responses"):
            return self.responses(request, path)
        if path.startswith("/v1/messages"):
            return self.messages(request, path)
        if path == "/tokenize":  # one token per character
            body = request.json()
            text = body.get("prompt") or json.dumps(body.get("messages"))
            tokens = [ord(c) for c in text]
            return json_reply({"count": len(tokens), "max_model_len": 2048, "tokens": tokens})
        if path == "/detokenize":
            return json_reply({"prompt": "".join(chr(t) for t in request.json()["tokens"])})
        return None

    def responses(self, request: Recorded, path: str) -> Reply:
        if request.method == "GET":
            stored = self.stored.get(path.rsplit("/", 1)[-1])
            return _not_found("not found") if stored is None else json_reply(stored)
        if path.endswith("/cancel"):
            message = "Cannot cancel a synchronous response."
            return json_reply({"error": {"message": message, "code": 400}}, 400)
        body = request.json()
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            return _not_found(f"Response with id '{previous}' not found.")
        response = response_body(body["request_id"], body["model"], "fake answer")
        if body.get("store", True):
            self.stored[response["id"]] = response
        if not body.get("stream"):
            return json_reply(response)
        delta = "response.output_text.delta"
        return Stream(
            [
                sse("response.created", {"response": {**response, "status": "in_progress"}}),
                sse(delta, {"delta": "fake", "item_id": "msg_fake"}),
                sse(delta, {"delta": " answer", "item_id": "msg_fake"}),
                sse("response.completed", {"response": response}),
            ]
        )

    def messages(self, request: Recorded, path: str) -> Reply:
        body = request.json()
        if path.endswith("/count_tokens"):
            return json_reply({"input_tokens": 7})
        message = message_body(body["model"], "fake answer")
        if not body.get("stream"):
            return json_reply(message)
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {"input_tokens": 7, "output_tokens": 0}
        deltas = [
            sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": t}})
            for t in ("fake", " answer")
        ]
        end = {"delta": {"stop_reason": "end_turn", "stop_sequence": None}}
        return Stream(
            [
                sse("message_start", {"message": start}),
                sse(
                    "content_block_start",
                    {"index": 0, "content_block": {"type": "text", "text": ""}},
                ),
                *deltas,
                sse("content_block_stop", {"index": 0}),
                sse("message_delta", {**end, "usage": {"input_tokens": 7, "output_tokens": 2}}),
                sse("message_stop", {}),
            ]
        )
