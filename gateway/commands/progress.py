"""The serve command's start-up progress: one line per engine saying its phase and the time.

:class:`StartupProgress` is driven by :mod:`gateway.commands.serve` (``update()`` every fraction
of a second). Each engine's phase comes from :meth:`gateway.engines.base.Engine.start_phase`
(preparing the base model, starting vLLM, engine ready, adapters re-applied). On a terminal it
is one live ``rich`` status line (spinner, phase, elapsed seconds) that the log lines scroll
above; otherwise one plain line per change of phase, so a pipe or a CI log stays short.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.status import Status
from rich.text import Text

from gateway.engines.base import Engine, EngineState, StartPhase


def engine_line(engine: Engine, elapsed_s: float) -> str:
    """``engine engine-0: starting vLLM (pid 1234), 12 s``: what one engine is doing."""
    phase = engine.start_phase()
    status = engine.status()
    pid = getattr(engine, "pid", None)
    if phase is None:
        what = f"{status.state.value}: {status.reason}"
    else:
        what = phase.value + (
            f" (pid {pid})" if pid and phase is not StartPhase.PREPARING_MODEL else ""
        )
    return f"engine {engine.name}: {what}, {elapsed_s:.0f} s"


class StartupProgress:
    """Reports each engine's start phase until every engine has its adapters re-applied."""

    def __init__(
        self,
        engines: Sequence[Engine],
        console: Console,
        *,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engines = list(engines)
        self._console = console
        self._live = console.is_terminal if live is None else live
        self._clock = clock
        self._started = clock()
        self._seen: dict[str, tuple[EngineState, StartPhase | None]] = {}
        self._status: Status | None = None

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._started

    def update(self) -> list[Engine]:
        """Show what changed; return the engines that have just finished starting (adapters
        re-applied), each once per (re)start."""
        finished: list[Engine] = []
        elapsed = self.elapsed_s
        for engine in self._engines:
            key = (engine.status().state, engine.start_phase())
            if self._seen.get(engine.name) == key:
                continue
            self._seen[engine.name] = key
            if key[1] is StartPhase.ADAPTERS_APPLIED:
                finished.append(engine)
            if not self._live or key[1] is StartPhase.ADAPTERS_APPLIED or key[1] is None:
                self._print(engine_line(engine, elapsed))
        if self._live:
            self._refresh(elapsed)
        return finished

    def _print(self, line: str) -> None:
        self._console.print(line, highlight=False, markup=False, soft_wrap=True)

    def _refresh(self, elapsed: float) -> None:
        starting = [e for e in self._engines if e.start_phase() is not StartPhase.ADAPTERS_APPLIED]
        if not starting:
            self.close()
            return
        text = Text("; ".join(engine_line(engine, elapsed) for engine in starting))
        if self._status is None:
            self._status = self._console.status(text, spinner="dots")
            self._status.start()
        else:
            self._status.update(text)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
