"""The serving process's garbage-collector settings: no full collections over start-up objects.

Called once by the serve command (:func:`gateway.commands.serve.run_gateway`) when uvicorn has
started, i.e. after the app's lifespan built everything that lives as long as the process
(imported modules, pydantic schemas, routes, the registry, engine clients). Never called by
:func:`gateway.app.create_app`: tests and embedders keep their own process-wide settings.

Why: profiling the streamed 200 req/s phase over the fake upstream (gc callbacks timing every
collection) showed full (generation 2) collections of 200-240 ms, each traversing every object
made at start-up, and generation-1 collections up to 30 ms: those were the tens-of-ms p99 stalls.
:func:`gc.freeze` moves the start-up objects to the permanent generation, which collections
skip; a larger generation-0 threshold makes the short-lived per-request containers (ASGI
messages, headers, JSON dicts) die in fewer, still small, young collections.
"""

from __future__ import annotations

import gc

#: (generation 0, 1, 2) thresholds while serving; CPython's default is (700, 10, 10).
SERVING_THRESHOLDS = (10_000, 20, 10)


def tune_for_serving(thresholds: tuple[int, int, int] = SERVING_THRESHOLDS) -> None:
    """Collect once, freeze what survives, then collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
