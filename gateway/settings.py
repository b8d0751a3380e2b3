"""The one settings object of the gateway.

Read from the environment (prefix ``LORA_GATEWAY_``) by pydantic-settings; the CLI builds it and
overrides fields with its flags, then hands it to :func:`gateway.app.create_app`. Nothing else in
the project reads the environment for gateway behaviour.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from adapters.contract import VLLM_LORA_RANKS
from gateway.placement.policy import PlacementPolicy

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
#: Longest client API key: with "Bearer " it must fit the header bound of gateway.auth.
MAX_API_KEY_CHARS = 1000


def _default_data_dir() -> Path:
    root = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(root) / "lora-gateway"


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a bearer key (empty, too long, unsendable), or None if it can."""
    if not key.strip():
        return "is empty or whitespace-only"
    if len(key) > MAX_API_KEY_CHARS:
        return f"is too long: at most {MAX_API_KEY_CHARS} characters"
    if any(char.isspace() or not char.isprintable() for char in key):
        return (
            "contains whitespace or control characters; no client could send it in an "
            "'Authorization: Bearer <key>' header"
        )
    return None


class EngineDType(StrEnum):
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"
    AUTO = "auto"


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"
    AUTO = "auto"  # text on a terminal, JSON otherwise


class GatewaySettings(BaseSettings):
    """Everything the gateway process needs to know, with limits on every user input."""

    model_config = SettingsConfigDict(env_prefix="LORA_GATEWAY_", extra="ignore")

    # --- HTTP front -------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Client keys for /v1/*; comma-separated in the environment. Empty: open.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for /admin. Unset: generated at first start into the data dir.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for the per-key limits shared by replicas (redis://host:port/db); "
        "unset: each process counts alone, in memory.",
    )
    key_cache_ttl_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How long a virtual-key lookup is cached; a revocation takes this long.",
    )
    usage_flush_interval_s: float = Field(
        default=5.0, gt=0, le=3600, description="How often token usage is written to the DB."
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Request body limit.")
    log_level: str = "INFO"
    log_format: LogFormat = Field(
        default=LogFormat.AUTO, description="json, text, or auto: text on a terminal, else JSON."
    )
    drain_timeout_s: float = Field(default=30.0, ge=0, description="SIGTERM drain bound.")

    # --- Base model and data ------------------------------------------------------------------
    base_model: str = Field(
        default=DEFAULT_BASE_MODEL,
        description="A prepared model name (smollm2-135m-instruct, tiny) or a model directory.",
    )
    served_model_name: str | None = Field(
        default=None, description="The id clients use for the base model; derived if unset."
    )
    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the registry; SQLite in the data dir if unset. Gateway "
        "replicas share one PostgreSQL: postgresql+psycopg://USER:PASSWORD@HOST:5432/DB.",
    )

    # --- Engines ------------------------------------------------------------------------------
    engine_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="vLLM servers run by someone else; empty: the gateway runs its own engine.",
    )
    engine_api_key: SecretStr | None = Field(
        default=None,
        description="The --api-key (VLLM_API_KEY) of the engines at engine_urls, sent with "
        "every request to them. Unused for the managed engine: it gets a new key at each start.",
    )
    max_loras: int = Field(default=2, ge=1, le=256)
    max_cpu_loras: int | None = Field(default=None, ge=1, le=4096)
    max_lora_rank: int = Field(default=16)
    max_model_len: int = Field(default=2048, ge=64)
    engine_dtype: EngineDType = EngineDType.BFLOAT16
    engine_kv_cache_gib: float = Field(default=1.0, gt=0)
    engine_startup_timeout_s: float = Field(default=600.0, gt=0)
    engine_extra_args: Annotated[list[str], NoDecode] = Field(default_factory=list)
    engine_restart_backoff_s: float = Field(default=1.0, gt=0)
    engine_restart_backoff_max_s: float = Field(default=30.0, gt=0)
    engine_health_interval_s: float = Field(default=2.0, gt=0)
    engines: int = Field(
        default=1,
        ge=1,
        le=64,
        description="How many managed vLLM engines to run (ignored with engine_urls).",
    )

    # --- Placement ----------------------------------------------------------------------------
    placement_policy: PlacementPolicy = Field(
        default=PlacementPolicy.AFFINITY,
        description="affinity: each adapter on as few engines as its load needs (capacity: "
        "the sum of the engines' slots); replicate: every adapter on every engine.",
    )
    replicate_threshold: int = Field(
        default=4,
        ge=1,
        le=100_000,
        description="affinity: copy an adapter onto one more engine once its requests in "
        "flight on every engine holding it reach this.",
    )

    shared_placements: bool | None = Field(
        default=None,
        description="Share the engines' slots with other gateway replicas through the registry "
        "database (placements, heartbeats, drain handshake) and follow their registry changes "
        "within a second. Unset: on for a non-SQLite database_url.",
    )
    replica_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="This replica's name on the placement board; unset: host-pid-random.",
    )
    replica_sync_interval_s: float = Field(
        default=0.5,
        gt=0,
        le=10,
        description="How often a replica reads the board and the registry and heartbeats.",
    )
    replica_dead_after_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="A replica whose heartbeat is older than this is dead: its requests in "
        "flight no longer hold versions loaded, its half-done loads are given back.",
    )
    placement_release_timeout_s: float = Field(
        default=3.0,
        gt=0,
        le=600,
        description="How long an unload waits for other replicas to finish with a version "
        "before leaving it loaded.",
    )

    # --- Aliases ------------------------------------------------------------------------------
    alias_rollback_window: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="Automatic canary rollback: the last N requests of an alias's version "
        "whose 5xx share is watched; 0 turns rollback off.",
    )
    alias_refresh_interval_s: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="How often the registry is checked for alias changes made elsewhere.",
    )
    alias_rollback_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="The 5xx share over the window at which a version's alias weight drops to 0.",
    )

    # --- Upstream HTTP client -----------------------------------------------------------------
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    upstream_read_timeout_s: float = Field(default=300.0, gt=0)
    upstream_max_connections: int = Field(default=512, ge=1)

    # --- Adapters -----------------------------------------------------------------------------
    adapter_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Directories adapters may be registered from; the data dir's adapters/ "
        "and --adapters-dir are always included.",
    )
    adapters_dir: Path | None = Field(
        default=None, description="Scanned at start: every adapter found there is registered."
    )
    max_adapter_bytes: int = Field(default=2 << 30, ge=1)
    adapter_load_retry_s: float = Field(
        default=30.0,
        ge=0,
        description="After the engine refuses an adapter, requests get that error for this "
        "long; the first request after it loads the adapter again.",
    )

    # --- Adapter sources (s3://, hf://; adapters.sources) -------------------------------------
    s3_endpoint_url: str | None = Field(
        default=None,
        max_length=1024,
        description="An S3-compatible endpoint (MinIO, Ceph, ...); unset: AWS S3.",
    )
    s3_region: str | None = Field(default=None, max_length=64)
    s3_access_key_id: SecretStr | None = Field(
        default=None, description="Unset: boto3's usual chain (AWS_* environment, ~/.aws, role)."
    )
    s3_secret_access_key: SecretStr | None = None
    hf_cache_dir: Path | None = Field(
        default=None, description="The Hub cache to use; unset: huggingface_hub's (HF_HUB_CACHE)."
    )
    hf_token: SecretStr | None = Field(default=None, description="Unset: huggingface_hub's own.")
    fetch_timeout_s: float = Field(
        default=600.0, gt=0, le=86400, description="One adapter fetch, retries included."
    )
    fetch_attempts: int = Field(default=3, ge=1, le=10)
    fetch_backoff_s: float = Field(default=0.5, ge=0, le=60)
    fetch_wait_max_s: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="The longest POST /admin/adapters?wait=true waits for a fetch.",
    )

    @field_validator("api_keys", "engine_urls", "engine_extra_args", "adapter_roots", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _usable_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        # Messages never quote a key: they name its position only.
        for position, secret in enumerate(keys, start=1):
            if problem := key_problem(secret.get_secret_value()):
                raise ValueError(
                    f"key {position} {problem}"
                    + (
                        "; it would accept a bare 'Authorization: Bearer' header. Give a real "
                        "key, or none for an open /v1"
                        if "empty" in problem
                        else ""
                    )
                )
        return keys

    @field_validator("engine_api_key", mode="before")
    @classmethod
    def _empty_engine_key_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("engine_api_key")
    @classmethod
    def _usable_engine_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and (problem := key_problem(key.get_secret_value())):
            raise ValueError(f"the engine key {problem}")
        return key

    @field_validator("max_lora_rank")
    @classmethod
    def _vllm_rank(cls, value: int) -> int:
        if value not in VLLM_LORA_RANKS:
            raise ValueError(
                f"max_lora_rank must be one of {VLLM_LORA_RANKS} (vLLM choices), not {value}"
            )
        return value

    # --- Derived ------------------------------------------------------------------------------
    @property
    def cpu_lora_capacity(self) -> int:
        """How many adapters an engine holds loaded at once (vLLM's --max-cpu-loras)."""
        return max(self.max_cpu_loras or self.max_loras, self.max_loras)

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def managed_adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def adapter_store_dir(self) -> Path:
        """The validated read-only copies that engines load (:mod:`adapters.store`): inside the
        managed adapters dir, the volume that remote engines share (deploy/compose, deploy/k8s)."""
        return self.managed_adapters_dir / ".store"

    @property
    def adapter_fetch_dir(self) -> Path:
        """Where remote adapters are fetched to before the store copies them (under the managed
        adapters dir, an allowed root; emptied at start)."""
        return self.managed_adapters_dir / ".fetch"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'registry.db'}"

    @property
    def shares_placements(self) -> bool:
        """Whether this replica shares the engines' slots through the database."""
        if self.shared_placements is not None:
            return self.shared_placements
        return not self.resolved_database_url.startswith("sqlite")

    @property
    def allowed_adapter_roots(self) -> list[Path]:
        roots = [self.managed_adapters_dir, *self.adapter_roots]
        if self.adapters_dir is not None:
            roots.append(self.adapters_dir)
        return [root.expanduser().resolve() for root in roots]
