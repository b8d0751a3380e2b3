"""The adapter lifecycle's states and the transitions allowed between them.

::

    registered --load--> loading --ok--> loaded --unload/evict--> unloading --> registered
                            |  \\--engine unavailable or failing (5xx)--> registered
                            \\--engine refused (4xx)--> failed --load--> loading

A failed load is retried by the first request after a cool-down, or at once by an admin load.

Persisted per adapter version by :mod:`adapters.registry` (only the settled states: registered,
loaded, failed) and driven by the gateway's adapter lifecycle.
"""

from __future__ import annotations

from enum import StrEnum


class AdapterState(StrEnum):
    REGISTERED = "registered"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


TRANSITIONS: dict[AdapterState, frozenset[AdapterState]] = {
    AdapterState.REGISTERED: frozenset({AdapterState.LOADING}),
    AdapterState.LOADING: frozenset(
        {AdapterState.LOADED, AdapterState.FAILED, AdapterState.REGISTERED}
    ),
    AdapterState.LOADED: frozenset({AdapterState.UNLOADING, AdapterState.LOADING}),
    AdapterState.UNLOADING: frozenset({AdapterState.REGISTERED}),
    AdapterState.FAILED: frozenset({AdapterState.LOADING, AdapterState.REGISTERED}),
}

#: States worth persisting: transient ones are rebuilt from the engine after a restart.
SETTLED = frozenset({AdapterState.REGISTERED, AdapterState.LOADED, AdapterState.FAILED})


class InvalidTransitionError(RuntimeError):
    """A bug: the lifecycle tried a transition the state machine does not allow."""


def check_transition(current: AdapterState, new: AdapterState) -> AdapterState:
    if new not in TRANSITIONS[current]:
        raise InvalidTransitionError(f"adapter state {current} cannot become {new}")
    return new
