"""The ONE fake vLLM of the project: a FAKE OpenAI server with vLLM's LoRA endpoints, no model.

Used by the benchmark and the load-test tests (as a child process, ``python -m
loadtest.fake_vllm``), by the gateway's in-process tests (on a socket in the test's loop,
:func:`serving`) and by the lifecycle tests (in process, :meth:`FakeVLLM.transport`). It answers
fixed words in vLLM's shapes and can be made to misbehave on purpose; it proves nothing about
vLLM itself: tests/integration runs the real one. Needs only the gateway's own dependencies
(httpx, httptools, uvloop), no test package.

- :mod:`.engine`: :class:`FakeVLLM`, its state, routes and fault-injection knobs;
- :mod:`.bodies`: request checks, response bodies and SSE events (pure);
- :mod:`.server`: the HTTP/1.1 socket server and the CLI.
"""

from loadtest.fake_vllm.bodies import DONE, chunk_event, completion_body, usage_event
from loadtest.fake_vllm.engine import (
    FakeBehaviour,
    FakeVLLM,
    Full,
    Handler,
    Recorded,
    Reply,
    Stream,
    json_reply,
)
from loadtest.fake_vllm.server import MAX_BODY_BYTES, READY_PREFIX, serving, start_server

__all__ = [
    "DONE",
    "MAX_BODY_BYTES",
    "READY_PREFIX",
    "FakeBehaviour",
    "FakeVLLM",
    "Full",
    "Handler",
    "Recorded",
    "Reply",
    "Stream",
    "chunk_event",
    "completion_body",
    "json_reply",
    "serving",
    "start_server",
    "usage_event",
]
