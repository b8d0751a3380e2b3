"""gateway.commands.progress: the start phases, as plain lines and as one live line."""

from __future__ import annotations

import io

from rich.console import Console

from gateway.commands.progress import StartupProgress, engine_line
from gateway.engines.base import EngineState, StartPhase
from tests.support.gateway_server import StaticEngine


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_one_per_phase_then_ready_once() -> None:
    engine = StaticEngine("http://127.0.0.1:1", "base", name="engine-0")
    engine.state = EngineState.STARTING
    out, clock = io.StringIO(), Clock()
    progress = StartupProgress([engine], Console(file=out, width=200), live=False, clock=clock)
    assert progress.update() == []
    clock.now += 5
    assert progress.update() == []  # no change, no line
    engine.state = EngineState.READY
    clock.now += 30
    assert progress.update() == []  # ready, listeners not run yet
    engine._listeners_done = True  # what Engine._notify_ready sets once listeners ran
    clock.now += 1
    assert progress.update() == [engine]
    assert progress.update() == []
    assert out.getvalue().splitlines() == [
        "engine engine-0: starting vLLM, 0 s",
        "engine engine-0: engine ready, 35 s",
        "engine engine-0: adapters re-applied, 36 s",
    ]


def test_down_engine_says_why() -> None:
    engine = StaticEngine("http://127.0.0.1:1", "base", name="engine-0")
    engine.state, engine.reason = EngineState.DOWN, "exited with code 1"
    assert engine.start_phase() is None
    assert engine_line(engine, 3.2) == "engine engine-0: down: exited with code 1, 3 s"


async def test_ready_listeners_mark_adapters_applied() -> None:
    engine = StaticEngine("http://127.0.0.1:1", "base")
    seen: list[StartPhase | None] = []

    async def listener(_: object) -> None:
        seen.append(engine.start_phase())

    engine.add_ready_listener(listener)
    await engine._notify_ready()
    assert seen == [StartPhase.ENGINE_READY]
    assert engine.start_phase() is StartPhase.ADAPTERS_APPLIED


def test_live_line_on_a_terminal_ends_with_one_plain_line() -> None:
    engine = StaticEngine("http://127.0.0.1:1", "base", name="engine-0")
    engine.state = EngineState.STARTING
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=True)
    progress = StartupProgress([engine], console, clock=Clock())
    progress.update()
    engine.state = EngineState.READY
    engine._listeners_done = True
    assert progress.update() == [engine]
    progress.close()
    assert "starting vLLM" in out.getvalue()
    assert "engine engine-0: adapters re-applied, 0 s" in out.getvalue()
