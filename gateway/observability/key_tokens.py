"""Token usage per client key and model as a Prometheus series:
``lora_gateway_key_tokens_total{key, model, kind}`` (``kind``: ``prompt`` or ``completion``).

The persisted hourly records (:mod:`gateway.auth.usage_records`, ``/admin/usage``) are the
accounting; this counter is the same usage live, for dashboards and alerts. It is fed by the
admission's finish (:meth:`gateway.auth.limits.Admission.finish`) with the tokens the engine
counted, through the :class:`gateway.auth.limits.TokenSink` protocol it implements;
``create_app`` builds it on the app's :class:`~gateway.observability.metrics.GatewayMetrics`
registry and hands it to :class:`gateway.auth.tenants.Tenants`.

Labels stay bounded by the registry, never by clients: ``key`` is a virtual key's name (never
its secret nor its prefix), ``__static__`` for a static ``--api-key`` key and ``__open__`` on a
gateway without keys (:mod:`gateway.auth.tenants` names them; a key's name cannot start with
``_``); ``model`` is the model the client asked for when the registry knows it (a
base model, a registered adapter, or an alias, which reached a registered adapter), otherwise
``__other__``.
"""

from __future__ import annotations

from prometheus_client import Counter

from gateway.observability.metrics import OTHER, PREFIX, GatewayMetrics

PROMPT, COMPLETION = "prompt", "completion"


class KeyTokenMetrics:
    """``lora_gateway_key_tokens_total`` on ``metrics``' registry."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self.tokens = Counter(
            PREFIX + "key_tokens",
            "Prompt and completion tokens (engine usage) per client key and model.",
            ["key", "model", "kind"],
            registry=metrics.registry,
        )

    def model_label(self, model: str | None, adapter: str | None) -> str:
        """``model`` when the registry knows it; an alias is known by the adapter it reached."""
        label = self._metrics.labels_for(model).model
        if label == OTHER and model and adapter and self._metrics.adapter_label(adapter) != OTHER:
            return model
        return label

    def count(
        self,
        key: str,
        model: str | None,
        adapter: str | None,
        prompt: int | None,
        completion: int | None,
    ) -> None:
        label = self.model_label(model, adapter)
        if prompt:
            self.tokens.labels(key, label, PROMPT).inc(prompt)
        if completion:
            self.tokens.labels(key, label, COMPLETION).inc(completion)
