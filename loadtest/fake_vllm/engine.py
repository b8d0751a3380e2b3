"""FakeVLLM: the state and behaviour of the FAKE vLLM, apart from any transport.

It answers what the gateway asks of a vLLM OpenAI server (``/v1/models``, completions and chat,
streamed or not, with vLLM's ``include_usage`` chunk; runtime LoRA load and unload with vLLM
0.32's statuses and messages; ``/health``; a vLLM-like ``/metrics``) with fixed words, and keeps
counters. It is not a model and never stands in for vLLM in a correctness test.

Two transports serve the same object: :mod:`loadtest.fake_vllm.server` (a real socket, for the
benchmark and for in-process gateway tests) and :meth:`FakeVLLM.transport` (an
``httpx.MockTransport``, so a real :class:`~gateway.engines.client.EngineClient` talks to it
without a socket, for the lifecycle tests). Tests steer it with the fault-injection knobs below:
a scripted :attr:`FakeVLLM.handler`, refused adapters, failing or slow loads, an unhealthy or
unreachable server, a cap on loaded adapters whose breach is recorded as a violation.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from loadtest.fake_vllm import bodies

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class FakeBehaviour:
    """What the fake is started with (the CLI flags)."""

    model: str = "fake-base"
    #: Token chunks per response (fewer if the request's max_tokens is smaller).
    chunks: int = 16
    #: Wait before the response starts, and between streamed chunks.
    delay_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    #: Like vLLM: 404 for a model that is neither the base nor a loaded adapter.
    strict_models: bool = False
    max_lora_slots: int = 8
    #: How long a runtime LoRA load takes (a real one reads and copies the weights).
    load_delay_ms: float = 0.0
    #: Keep every request (method, path, headers, body) in :attr:`FakeVLLM.requests` (tests).
    record_requests: bool = False


@dataclass(slots=True)
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: Set when the client's connection closed before the answer was complete.
    disconnected: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Full:
    """A whole response."""

    status: int
    body: bytes
    content_type: bytes = JSON
    #: The model a completion ran for (counted as running while the answer is written).
    model: str | None = None


#: A step of a streamed answer: bytes to write, or an event to wait for before going on.
Step = bytes | asyncio.Event


@dataclass(frozen=True, slots=True)
class Stream:
    """A 200 SSE response written step by step (each bytes step is one write)."""

    steps: Sequence[Step]
    #: Break the connection after the last step instead of ending the body (a crashed engine).
    fail_at_end: bool = False
    model: str | None = None


Reply = Full | Stream
#: A test's script: the reply to a request, or None for the fake's default answer.
Handler = Callable[[Recorded], Awaitable[Reply | None]]


def json_reply(payload: Any, status: int = 200) -> Full:
    return Full(status, json.dumps(payload).encode())


def _error(status: int, message: str, param: str | None = None) -> Full:
    return Full(status, bodies.FakeRequestError(status, message, param).body())


class FakeVLLM:
    """One fake vLLM server's state; the knobs are plain attributes a test sets at any time."""

    def __init__(
        self, behaviour: FakeBehaviour | None = None, *, max_loaded: int | None = None
    ) -> None:
        self.behaviour = behaviour or FakeBehaviour()
        #: Loaded LoRA adapters: name -> path.
        self.loaded: dict[str, str] = {}
        self.requests: list[Recorded] = []
        self.requests_total = 0
        self.completions_total = 0
        self.stream_chunks_total = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        #: Completions being answered (only a delayed or scripted answer is ever "running").
        self.running = 0
        self.running_models: Counter[str] = Counter()
        self.lora_loads_total = 0
        self.lora_unloads_total = 0
        self._ids = itertools.count()
        # --- fault injection and invariant checks ---
        #: Invariant: never more adapters loaded at once (breaches go to :attr:`violations`).
        self.max_loaded = max_loaded
        self.peak_loaded = 0
        self.violations: list[str] = []
        #: Every LoRA call in order: ("load" | "unload", name).
        self.calls: list[tuple[str, str]] = []
        self.reset()

    def reset(self) -> None:
        """Back to default behaviour (scripts and faults off, request log and events fresh)."""
        self.handler: Handler | None = None
        #: Public adapter names (before the ``@`` of a versioned LoRA name) whose loads answer
        #: vLLM's 404 "No adapter found" (a bad path, as vLLM reports it).
        self.refuse_names: set[str] = set()
        #: While set, every load answers vLLM's 500 (an exception inside the engine).
        self.fail_loads_with: str | None = None
        #: Seconds a load (an unload) takes; it completes even if its caller gives up (like vLLM).
        self.load_delay_s = self.behaviour.load_delay_ms / 1000
        self.unload_delay_s = 0.0
        #: ``/health`` answers 503.
        self.unhealthy = False
        #: Connections are refused (in-process) or dropped without an answer (socket).
        self.unreachable = False
        self.requests.clear()
        #: Set when a streamed answer could not be finished because the client went away.
        self.stream_cancelled = asyncio.Event()

    # --- what tests read -------------------------------------------------------------------

    def next_id(self, prefix: str) -> str:
        return f"{prefix}-fake{next(self._ids)}"

    def count(self, kind: str) -> int:
        """How many LoRA calls of ``kind`` ("load" or "unload") were made."""
        return sum(1 for call, _ in self.calls if call == kind)

    def serve(self, upstream_model: str) -> None:
        """What vLLM checks first for a completion naming an adapter: it must be loaded."""
        if upstream_model not in self.loaded:
            self.violations.append(f"request for {upstream_model} while not loaded")

    def started(self, reply: Reply) -> None:
        if reply.model is not None:
            self.running += 1
            self.running_models[reply.model] += 1

    def finished(self, reply: Reply) -> None:
        if reply.model is not None:
            self.running -= 1
            self.running_models[reply.model] -= 1

    def running_adapters(self) -> list[str]:
        """Adapters with a completion running now (vLLM's ``running_lora_adapters``)."""
        base = self.behaviour.model
        return sorted(m for m, n in self.running_models.items() if n > 0 and m != base)

    def stats(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "completions_total": self.completions_total,
            "stream_chunks_total": self.stream_chunks_total,
            "prompt_tokens_total": self.prompt_tokens_total,
            "generation_tokens_total": self.generation_tokens_total,
            "running": self.running,
            "lora_loads_total": self.lora_loads_total,
            "lora_unloads_total": self.lora_unloads_total,
            "loaded_loras": sorted(self.loaded),
        }

    # --- answering -------------------------------------------------------------------------

    @property
    def answers_at_once(self) -> bool:
        """True when :meth:`dispatch` may answer without awaiting (the benchmark's fast path)."""
        return (
            self.handler is None
            and self.load_delay_s <= 0
            and self.unload_delay_s <= 0
            and not self.unreachable
            and not self.behaviour.record_requests
        )

    def dispatch(self, method: str, path: str, body: bytes) -> Reply:
        """The default answer to one request, at once."""
        self.requests_total += 1
        route = _ROUTES.get((method, path))
        try:
            if route is None:
                status = 405 if path in _PATHS else 404
                raise bodies.FakeRequestError(status, f"{method} {path} is not served")
            return route(self, body)
        except bodies.FakeRequestError as exc:
            return Full(exc.status, exc.body())

    async def handle(self, request: Recorded) -> Reply:
        """Any answer: the test's script first, then slow LoRA changes, then :meth:`dispatch`."""
        if self.behaviour.record_requests:
            self.requests.append(request)
        if self.handler is not None:
            scripted = await self.handler(request)
            if scripted is not None:
                self.requests_total += 1
                return scripted
        delays = {
            "/v1/load_lora_adapter": self.load_delay_s,
            "/v1/unload_lora_adapter": self.unload_delay_s,
        }
        if request.method == "POST" and delays.get(request.path, 0.0) > 0:
            # Like vLLM, the change goes on when the caller hangs up: its own task, shielded.
            self.requests_total += 1
            return await asyncio.shield(asyncio.ensure_future(self._slow_lora(request)))
        return self.dispatch(request.method, request.path, request.body)

    async def _slow_lora(self, request: Recorded) -> Reply:
        payload = _lora_payload(request.body)
        if request.path == "/v1/load_lora_adapter":
            self.calls.append(("load", str(payload.get("lora_name"))))
            await asyncio.sleep(self.load_delay_s)
            return self._apply_load(payload)
        self.calls.append(("unload", str(payload.get("lora_name"))))
        await asyncio.sleep(self.unload_delay_s)
        return self._apply_unload(payload)

    def transport(self) -> httpx.AsyncBaseTransport:
        """An in-process transport for ``httpx.AsyncClient`` that this fake answers."""

        async def handle(request: httpx.Request) -> httpx.Response:
            if self.unreachable:
                raise httpx.ConnectError("fake vLLM is unreachable", request=request)
            recorded = Recorded(
                request.method, request.url.path, dict(request.headers), await request.aread()
            )
            reply = await self.handle(recorded)
            if isinstance(reply, Full):
                return httpx.Response(
                    reply.status, content=reply.body, headers={b"content-type": reply.content_type}
                )
            return httpx.Response(
                200,
                stream=_StepStream(reply),
                headers={"content-type": "text/event-stream"},
            )

        return httpx.MockTransport(handle)

    # --- LoRA, as vLLM 0.32 answers ---------------------------------------------------------

    def _load(self, body: bytes) -> Full:
        payload = _lora_payload(body)
        self.calls.append(("load", str(payload.get("lora_name"))))
        return self._apply_load(payload)

    def _apply_load(self, payload: dict[str, Any]) -> Full:
        name, path = payload.get("lora_name"), payload.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            return _error(400, "lora_name and lora_path are required strings")
        if self.fail_loads_with is not None:
            return _error(500, self.fail_loads_with)
        if name.split("@")[0] in self.refuse_names:
            return _error(404, f"Loading lora {name} failed: No adapter found for {path}")
        if name in self.loaded and not payload.get("load_inplace"):
            return _error(
                400,
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
            )
        self.loaded[name] = path
        self.lora_loads_total += 1
        self.peak_loaded = max(self.peak_loaded, len(self.loaded))
        if self.max_loaded is not None and len(self.loaded) > self.max_loaded:
            self.violations.append(f"{len(self.loaded)} loaded: {sorted(self.loaded)}")
        return Full(200, f"Success: LoRA adapter '{name}' added successfully.".encode(), TEXT)

    def _unload(self, body: bytes) -> Full:
        payload = _lora_payload(body)
        self.calls.append(("unload", str(payload.get("lora_name"))))
        return self._apply_unload(payload)

    def _apply_unload(self, payload: dict[str, Any]) -> Full:
        name = payload.get("lora_name")
        if not isinstance(name, str) or self.loaded.pop(name, None) is None:
            return _error(404, f"The lora adapter '{name}' cannot be found.", "lora_name")
        self.lora_unloads_total += 1
        return Full(200, f"Success: LoRA adapter '{name}' removed successfully.".encode(), TEXT)

    # --- OpenAI ----------------------------------------------------------------------------

    def _completion(self, body: bytes, *, chat: bool) -> Reply:
        job = bodies.parse_completion(self, bodies.parse_json_object(body), chat=chat)
        self.completions_total += 1
        self.prompt_tokens_total += job.prompt_tokens
        self.generation_tokens_total += job.tokens
        if not job.stream:
            return Full(200, bodies.full_response(self, job), model=job.model)
        events = bodies.stream_events(self, job)
        self.stream_chunks_total += len(events) - 1  # [DONE] is not a chunk
        return Stream(events, model=job.model)

    def _health(self, body: bytes) -> Full:
        return Full(503 if self.unhealthy else 200, b"", TEXT)


def _lora_payload(body: bytes) -> dict[str, Any]:
    return bodies.parse_json_object(body)


class _StepStream(httpx.AsyncByteStream):
    def __init__(self, reply: Stream) -> None:
        self._reply = reply

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for step in self._reply.steps:
            if isinstance(step, asyncio.Event):
                await step.wait()
            else:
                yield step
        if self._reply.fail_at_end:
            raise httpx.ReadError("fake vLLM breaks the stream on purpose")


_Route = Callable[[FakeVLLM, bytes], Reply]
_ROUTES: dict[tuple[str, str], _Route] = {
    ("GET", "/health"): FakeVLLM._health,
    ("GET", "/metrics"): lambda s, b: Full(
        200, bodies.metrics_text(s), b"text/plain; version=0.0.4"
    ),
    ("GET", "/fake/stats"): lambda s, b: Full(200, json.dumps(s.stats()).encode()),
    ("GET", "/v1/models"): lambda s, b: Full(200, bodies.models_body(s)),
    ("POST", "/v1/completions"): lambda s, b: s._completion(b, chat=False),
    ("POST", "/v1/chat/completions"): lambda s, b: s._completion(b, chat=True),
    ("POST", "/v1/load_lora_adapter"): FakeVLLM._load,
    ("POST", "/v1/unload_lora_adapter"): FakeVLLM._unload,
}
_PATHS = {path for _, path in _ROUTES}
