"""What one load-test request looks like, and how a streamed answer is accounted.

:class:`Workload` turns (model, RNG) into an OpenAI request path and JSON body: chat or
completion, prompt length in words, output length in tokens, streaming with ``include_usage``.
:class:`SseMeter` is fed the raw bytes of a streamed response as they arrive and records the
time to first token, the gaps between token chunks, and the number of chunks (``data:`` events
other than ``[DONE]``). Shared by the locustfile, the open-loop generator and the benchmark.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_PROMPT_WORDS = 100_000
MAX_OUTPUT_TOKENS = 65_536
MAX_EVENT_BYTES = 1 << 20
# A fixed vocabulary keeps prompts cheap to build and tokenizer-friendly on any model.
_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
    "zulu"
).split()


class Api(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"
    MIXED = "mixed"


PATHS = {Api.CHAT: "/v1/chat/completions", Api.COMPLETION: "/v1/completions"}


@dataclass(frozen=True, slots=True)
class Workload:
    api: Api = Api.CHAT
    #: Share of chat requests when ``api`` is MIXED.
    chat_share: float = 0.5
    prompt_words: int = 32
    max_tokens: int = 16
    stream: bool = True
    #: vLLM's ``ignore_eos``: every answer is exactly ``max_tokens`` long (fair comparisons).
    ignore_eos: bool = False
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.prompt_words <= MAX_PROMPT_WORDS:
            raise ValueError(f"prompt_words must be 1..{MAX_PROMPT_WORDS}, got {self.prompt_words}")
        if not 1 <= self.max_tokens <= MAX_OUTPUT_TOKENS:
            raise ValueError(f"max_tokens must be 1..{MAX_OUTPUT_TOKENS}, got {self.max_tokens}")
        if not 0.0 <= self.chat_share <= 1.0:
            raise ValueError(f"chat_share must be in [0, 1], got {self.chat_share}")

    def pick_api(self, rng: random.Random) -> Api:
        if self.api is Api.MIXED:
            return Api.CHAT if rng.random() < self.chat_share else Api.COMPLETION
        return self.api

    def prompt(self, rng: random.Random) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(self.prompt_words))

    def request(self, model: str, rng: random.Random) -> tuple[Api, str, dict[str, Any]]:
        """(api, path, body) of one request for ``model``."""
        api = self.pick_api(rng)
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if api is Api.CHAT:
            body["messages"] = [{"role": "user", "content": self.prompt(rng)}]
        else:
            body["prompt"] = self.prompt(rng)
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if self.ignore_eos:
            body["ignore_eos"] = True
        return api, PATHS[api], body


# Byte patterns instead of a JSON parse per chunk: the meter must stay cheap at thousands of
# chunks per second. A token chunk has a non-empty "content" (chat) or "text" (completion).
_TOKEN = re.compile(rb'"(?:content|text)"\s*:\s*"(?!")')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_ERROR = re.compile(rb'^\s*\{\s*"error"\s*:')


@dataclass(slots=True)
class SseMeter:
    """Accounts one streamed response; call :meth:`feed` with bytes as they arrive."""

    started: float = field(default_factory=time.perf_counter)
    chunks: int = 0
    token_chunks: int = 0
    done: bool = False
    error: str | None = None
    usage: dict[str, Any] | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    _buffer: bytes = b""

    def feed(self, data: bytes, now: float | None = None) -> None:
        self._buffer += data.replace(b"\r\n", b"\n") if b"\r" in data else data
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            self._event(event, time.perf_counter() if now is None else now)
        if len(self._buffer) > MAX_EVENT_BYTES:
            self.error = "an SSE event exceeded 1 MiB"
            self._buffer = b""

    def _event(self, event: bytes, now: float) -> None:
        data = b"\n".join(
            line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")
        )
        if not data:
            return
        if data == b"[DONE]":
            self.done = True
            return
        self.chunks += 1
        if _ERROR.match(data) or _USAGE.search(data):
            try:
                payload = json.loads(data)
            except ValueError:
                self.error = f"undecodable SSE data: {data[:80]!r}"
                return
            if "error" in payload:
                error = payload["error"]
                self.error = str(error.get("message") if isinstance(error, dict) else error)
                return
            if isinstance(payload.get("usage"), dict):
                self.usage = payload["usage"]
        if _TOKEN.search(data):
            self.token_chunks += 1
            if self.last_token_at is not None:
                self.gaps_s.append(now - self.last_token_at)
            else:
                self.first_token_at = now
            self.last_token_at = now

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started
