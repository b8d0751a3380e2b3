"""The OpenAI side of the FAKE vLLM: request checks, response bodies, SSE events.

Pure functions, no I/O and no state: :class:`~loadtest.fake_vllm.engine.FakeVLLM` owns the
state, :mod:`loadtest.fake_vllm.server` the sockets.
The shapes follow what vLLM's OpenAI server sends (a chat stream opens with a role chunk, the last
token chunk carries ``finish_reason``, ``stream_options.include_usage`` adds a final chunk with
empty ``choices``), so a gateway sees the same traffic it would see from a real engine. Generated
text is fixed words, not a model: this fake is only for overhead benchmarks and tests. The
small event builders at the end (:func:`chunk_event`, :func:`usage_event`, :data:`DONE`,
:func:`completion_body`) are for tests that script a stream by hand.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadtest.fake_vllm.engine import FakeVLLM

MAX_TOKENS_LIMIT = 65_536
_dumps = json.JSONEncoder(separators=(",", ":")).encode


_ERROR_TYPES = {404: "NotFoundError", 500: "InternalServerError", 503: "ServiceUnavailableError"}


class FakeRequestError(Exception):
    """A request the fake refuses; rendered as an OpenAI error body with ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> bytes:
        kind = _ERROR_TYPES.get(self.status, "BadRequestError")
        return _dumps(
            {
                "error": {
                    "message": self.message,
                    "type": kind,
                    "param": self.param,
                    "code": self.status,
                }
            }
        ).encode()


@dataclass(frozen=True, slots=True)
class CompletionJob:
    """One parsed /v1/completions or /v1/chat/completions request."""

    chat: bool
    model: str
    stream: bool
    include_usage: bool
    tokens: int
    prompt_tokens: int


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise FakeRequestError(400, f"body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise FakeRequestError(400, "body must be a JSON object")
    return payload


def _count_words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_words(item) for item in value)
    if isinstance(value, dict):
        return _count_words(value.get("content") or value.get("text") or "")
    return 0


def parse_completion(state: FakeVLLM, payload: dict[str, Any], *, chat: bool) -> CompletionJob:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise FakeRequestError(400, "`model` must be a non-empty string", "model")
    b = state.behaviour
    if b.strict_models and model != b.model and model not in state.loaded:
        raise FakeRequestError(404, f"The model `{model}` does not exist.", "model")
    if chat:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise FakeRequestError(400, "`messages` must be a non-empty list", "messages")
        prompt_tokens = _count_words(messages)
    else:
        prompt = payload.get("prompt")
        if not isinstance(prompt, str | list):
            raise FakeRequestError(400, "`prompt` must be a string or a list", "prompt")
        prompt_tokens = _count_words(prompt)
    max_tokens = payload.get("max_completion_tokens", payload.get("max_tokens"))
    tokens = b.chunks
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
            raise FakeRequestError(400, f"max_tokens must be 1..{MAX_TOKENS_LIMIT}", "max_tokens")
        tokens = min(tokens, max_tokens)
    options = payload.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return CompletionJob(
        chat=chat,
        model=model,
        stream=bool(payload.get("stream")),
        include_usage=include_usage,
        tokens=tokens,
        prompt_tokens=max(prompt_tokens, 1),
    )


def _word(index: int) -> str:
    return f" w{index}"


def _usage(job: CompletionJob) -> dict[str, int]:
    return {
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": job.tokens,
        "total_tokens": job.prompt_tokens + job.tokens,
    }


def full_response(state: FakeVLLM, job: CompletionJob) -> bytes:
    text = "".join(_word(i) for i in range(job.tokens))
    created = int(time.time())
    if job.chat:
        body: dict[str, Any] = {
            "id": state.next_id("chatcmpl"),
            "object": "chat.completion",
            "created": created,
            "model": job.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": "length",
                }
            ],
            "usage": _usage(job),
        }
    else:
        body = {
            "id": state.next_id("cmpl"),
            "object": "text_completion",
            "created": created,
            "model": job.model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}],
            "usage": _usage(job),
        }
    return _dumps(body).encode()


def stream_events(state: FakeVLLM, job: CompletionJob) -> list[bytes]:
    """Every SSE event of one streamed response, ``data: [DONE]`` last."""
    created = int(time.time())
    if job.chat:
        head = {
            "id": state.next_id("chatcmpl"),
            "object": "chat.completion.chunk",
            "created": created,
            "model": job.model,
        }
    else:
        head = {
            "id": state.next_id("cmpl"),
            "object": "text_completion",
            "created": created,
            "model": job.model,
        }
    prefix = _dumps(head)[:-1]  # the shared fields, without the closing brace

    def event(rest: dict[str, Any]) -> bytes:
        return b"data: " + (prefix + "," + _dumps(rest)[1:]).encode() + b"\n\n"

    events: list[bytes] = []
    if job.chat:
        events.append(
            event(
                {
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                }
            )
        )
    for i in range(job.tokens):
        finish = "length" if i == job.tokens - 1 else None
        if job.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": _word(i)},
                "logprobs": None,
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": _word(i), "logprobs": None, "finish_reason": finish}
        events.append(event({"choices": [choice]}))
    if job.include_usage:
        events.append(event({"choices": [], "usage": _usage(job)}))
    events.append(b"data: [DONE]\n\n")
    return events


def models_body(state: FakeVLLM) -> bytes:
    created = int(time.time())
    base = state.behaviour.model
    data = [
        {
            "id": base,
            "object": "model",
            "created": created,
            "owned_by": "fake-vllm",
            "root": base,
            "parent": None,
            "max_model_len": 2048,
        }
    ]
    data += [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "fake-vllm",
            "root": path,
            "parent": base,
        }
        for name, path in sorted(state.loaded.items())
    ]
    return _dumps({"object": "list", "data": data}).encode()


def metrics_text(state: FakeVLLM) -> bytes:
    """A minimal vLLM-like exposition (same family names), plus the fake's own counters."""
    m = f'model_name="{state.behaviour.model}"'
    running = ",".join(state.running_adapters())
    lines = [
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{m}}} {state.running}",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{m}}} 0",
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{finished_reason="length",{m}}} {state.completions_total}',
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{m}}} {state.prompt_tokens_total}",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{m}}} {state.generation_tokens_total}",
        "# TYPE vllm:lora_requests_info gauge",
        f'vllm:lora_requests_info{{max_lora="{state.behaviour.max_lora_slots}",'
        f'running_lora_adapters="{running}",waiting_lora_adapters=""}} {time.time():.3f}',
        "# TYPE fake_vllm_stream_chunks_total counter",
        f"fake_vllm_stream_chunks_total {state.stream_chunks_total}",
        "# TYPE fake_vllm_requests_total counter",
        f"fake_vllm_requests_total {state.requests_total}",
    ]
    return ("\n".join(lines) + "\n").encode()


# --- For tests that script a stream by hand -------------------------------------------------

DONE = b"data: [DONE]\n\n"


def chunk_event(model: str, text: str, index: int = 0) -> bytes:
    """One chat-completion chunk carrying ``text``, as an SSE event."""
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": index, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + _dumps(payload).encode() + b"\n\n"


def usage_event(model: str, prompt: int, completion: int) -> bytes:
    """vLLM's last chunk when ``include_usage`` is asked: no choices, the usage."""
    payload = {
        "id": "chatcmpl-fake",
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
    return b"data: " + _dumps(payload).encode() + b"\n\n"


def completion_body(model: str, text: str = "fake answer") -> dict[str, Any]:
    """A non-streamed chat completion answering ``text``."""
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
