"""FakeUpstream: a scripted stand-in for a vLLM server, for fault injection and overhead tests.

NOT an engine: it generates no text. It answers the OpenAI endpoints with canned bodies so
tests can make an upstream do what a real one does only by accident: split and merge SSE events
across TCP writes, hold an event until the test releases it, break a stream after the headers,
answer an error status, or stall. It records every request it receives (path, headers, body) so
tests can check exactly what the gateway forwarded. Serve it with
:func:`tests.support.gateway_server.serve_in_loop`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes
    #: The live request, for handlers that watch the gateway's connection.
    request: Request | None = field(default=None, repr=False, compare=False)

    def json(self) -> Any:
        return json.loads(self.body)


def chunk_event(model: str, text: str, index: int = 0) -> bytes:
    payload = {
        "id": "cmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": index, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def usage_event(model: str, prompt: int, completion: int) -> bytes:
    payload = {
        "id": "cmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def completion_body(model: str, text: str = "fake answer") -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
    }


def response_body(response_id: str, model: str, text: str) -> dict[str, Any]:
    """A finished Responses API answer (the fields clients read)."""
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


def response_event(kind: str, response: dict[str, Any]) -> bytes:
    payload = json.dumps({"type": kind, "response": response}, separators=(",", ":"))
    return f"event: {kind}\ndata: {payload}\n\n".encode()


def response_delta(text: str) -> bytes:
    kind = "response.output_text.delta"
    payload = json.dumps({"type": kind, "delta": text, "item_id": "msg_fake"})
    return f"event: {kind}\ndata: {payload}\n\n".encode()


def message_body(model: str, text: str) -> dict[str, Any]:
    """A finished Anthropic Messages API answer."""
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


def anthropic_event(kind: str, fields: dict[str, Any]) -> bytes:
    payload = json.dumps({"type": kind, **fields}, separators=(",", ":"))
    return f"event: {kind}\ndata: {payload}\n\n".encode()


#: A step of a scripted stream: bytes to write, or an event to wait for before going on.
Step = bytes | asyncio.Event
Handler = Callable[[Recorded], Awaitable[Response]]


@dataclass
class FakeUpstream:
    """The ASGI app plus its script; set :attr:`handler` per test (default: echo-ish answers)."""

    #: What ``GET /v1/models`` lists as the base model (engines read it when they get ready).
    base_model: str = "base-model"
    requests: list[Recorded] = field(default_factory=list)
    handler: Handler | None = None
    #: Set when a streamed response's generator was closed before it finished (client gone).
    stream_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    #: Responses API answers kept by id (``store``), as vLLM keeps them in memory.
    stored_responses: dict[str, dict[str, Any]] = field(default_factory=dict)

    def reset(self) -> None:
        self.requests.clear()
        self.stored_responses.clear()
        self.handler = None
        self.stream_cancelled = asyncio.Event()

    def app(self) -> Starlette:
        async def endpoint(request: Request) -> Response:
            recorded = Recorded(
                request.url.path, dict(request.headers), await request.body(), request
            )
            self.requests.append(recorded)
            if self.handler is not None:
                return await self.handler(recorded)
            return self.default_answer(recorded)

        async def health(request: Request) -> Response:
            return PlainTextResponse("")

        async def models(request: Request) -> Response:
            card = {
                "id": self.base_model,
                "object": "model",
                "root": self.base_model,
                "parent": None,
            }
            return JSONResponse({"object": "list", "data": [card]})

        return Starlette(
            routes=[
                Route("/health", health),
                Route("/v1/models", models),
                Route("/v1/chat/completions", endpoint, methods=["POST"]),
                Route("/v1/completions", endpoint, methods=["POST"]),
                Route("/v1/responses", endpoint, methods=["POST"]),
                Route("/v1/responses/{response_id}", endpoint, methods=["GET"]),
                Route("/v1/responses/{response_id}/cancel", endpoint, methods=["POST"]),
                Route("/v1/messages", endpoint, methods=["POST"]),
                Route("/v1/messages/count_tokens", endpoint, methods=["POST"]),
                Route("/tokenize", endpoint, methods=["POST"]),
                Route("/detokenize", endpoint, methods=["POST"]),
            ]
        )

    def default_answer(self, recorded: Recorded) -> Response:
        if recorded.path.startswith("/v1/responses"):
            return self.responses_answer(recorded)
        if recorded.path.startswith("/v1/messages"):
            return self.messages_answer(recorded)
        body = recorded.json()
        if recorded.path == "/tokenize":  # one token per character: enough to route by
            text = body.get("prompt") or json.dumps(body.get("messages"))
            tokens = [ord(c) for c in text]
            return JSONResponse({"count": len(tokens), "max_model_len": 2048, "tokens": tokens})
        if recorded.path == "/detokenize":
            return JSONResponse({"prompt": "".join(chr(t) for t in body["tokens"])})
        model = body["model"]
        if body.get("stream"):
            events = [chunk_event(model, "fake"), chunk_event(model, " answer")]
            options = body.get("stream_options") or {}
            if options.get("include_usage"):  # as vLLM: one last chunk, no choices, the usage
                events.append(usage_event(model, 7, 2))
            return self.stream([*events, DONE])
        return JSONResponse(completion_body(model))

    def responses_answer(self, recorded: Recorded) -> Response:
        """vLLM's Responses API in miniature: the id is the request's ``request_id``; a
        response with ``store`` is kept here, as vLLM keeps it in its process."""
        if recorded.request is not None and recorded.request.method == "GET":
            stored = self.stored_responses.get(recorded.path.rsplit("/", 1)[-1])
            if stored is None:
                return JSONResponse({"error": {"message": "not found", "code": 404}}, 404)
            return JSONResponse(stored)
        if recorded.path.endswith("/cancel"):
            return JSONResponse(
                {"error": {"message": "Cannot cancel a synchronous response."}}, 400
            )
        body = recorded.json()
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored_responses:
            message = f"Response with id '{previous}' not found."
            return JSONResponse({"error": {"message": message, "code": 404}}, 404)
        response = response_body(body["request_id"], body["model"], "fake answer")
        if body.get("store", True):
            self.stored_responses[response["id"]] = response
        if not body.get("stream"):
            return JSONResponse(response)
        events = [
            response_event("response.created", {**response, "status": "in_progress"}),
            response_delta("fake"),
            response_delta(" answer"),
            response_event("response.completed", response),
        ]
        return self.stream(events)

    def messages_answer(self, recorded: Recorded) -> Response:
        """Anthropic's Messages API as vLLM serves it (usage in ``message_delta``)."""
        body = recorded.json()
        if recorded.path.endswith("/count_tokens"):
            return JSONResponse({"input_tokens": 7})
        message = message_body(body["model"], "fake answer")
        if not body.get("stream"):
            return JSONResponse(message)
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {"input_tokens": 7, "output_tokens": 0}
        text_start = {"type": "text", "text": ""}
        events = [
            anthropic_event("message_start", {"message": start}),
            anthropic_event("content_block_start", {"index": 0, "content_block": text_start}),
            *(
                anthropic_event(
                    "content_block_delta",
                    {"index": 0, "delta": {"type": "text_delta", "text": text}},
                )
                for text in ("fake", " answer")
            ),
            anthropic_event("content_block_stop", {"index": 0}),
            anthropic_event(
                "message_delta",
                {
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"input_tokens": 7, "output_tokens": 2},
                },
            ),
            anthropic_event("message_stop", {}),
        ]
        return self.stream(events)

    def stream(self, steps: Sequence[Step], *, fail_at_end: bool = False) -> StreamingResponse:
        """A 200 SSE response writing ``steps`` one by one (each bytes item is one write)."""

        async def body() -> AsyncIterator[bytes]:
            finished = False
            try:
                for step in steps:
                    if isinstance(step, asyncio.Event):
                        await step.wait()
                    else:
                        yield step
                if fail_at_end:
                    raise RuntimeError("fake upstream breaks the stream on purpose")
                finished = True
            finally:
                if not finished:
                    self.stream_cancelled.set()

        return StreamingResponse(body(), media_type="text/event-stream")
