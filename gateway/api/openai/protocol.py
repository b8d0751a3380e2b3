"""Pydantic schemas of the OpenAI API surface the gateway serves.

The request models validate what a client sends to ``/v1/chat/completions`` and
``/v1/completions`` before anything reaches an engine: the OpenAI parameters vLLM accepts, each
with a bound, and ``extra="allow"`` so vendor extensions (``top_k``, ``min_p``,
``repetition_penalty``, ``ignore_eos``, ...) pass through for vLLM to judge. They are used for
validation only: the proxy forwards the client's own JSON (``gateway.inference.proxy``), never a
dump of these models. The response models describe ``GET /v1/models``. Used by
:mod:`gateway.api.openai.routes`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Bounds on client input. vLLM enforces model-specific limits itself (context length,
# max_logprobs); these keep absurd requests from reaching it at all.
MAX_MODEL_NAME = 256
MAX_MESSAGES = 2048
MAX_CONTENT_PARTS = 256
MAX_PROMPTS = 256
MAX_PROMPT_TOKEN_IDS = 1 << 20
MAX_STOP = 16
MAX_STOP_CHARS = 1024
MAX_TOKENS = 1 << 20
MAX_N = 16
MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 1024
MAX_TOOLS = 128
MAX_USER_CHARS = 256

ModelName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_MODEL_NAME)]
StopWord = Annotated[str, StringConstraints(max_length=MAX_STOP_CHARS)]
Stop = StopWord | Annotated[list[StopWord], Field(max_length=MAX_STOP)] | None
TokenCount = Annotated[int, Field(ge=1, le=MAX_TOKENS)]
TokenId = Annotated[int, Field(ge=0)]
Int64 = Annotated[int, Field(ge=-(1 << 63), le=(1 << 63) - 1)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
LogitBias = Annotated[
    dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]], Field(max_length=MAX_LOGIT_BIAS)
]


class _Open(BaseModel):
    """Unknown fields are kept (and forwarded), not rejected."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema", "structural_tag", "grammar"]


class ContentPart(_Open):
    type: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    name: Annotated[str, StringConstraints(max_length=MAX_USER_CHARS)] | None = None
    tool_call_id: Annotated[str, StringConstraints(max_length=MAX_USER_CHARS)] | None = None
    tool_calls: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None


class _SamplingParams(_Open):
    """Parameters both endpoints share."""

    model: ModelName
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    max_tokens: TokenCount | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    stop: Stop = None
    seed: Int64 | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    response_format: ResponseFormat | None = None
    user: Annotated[str, StringConstraints(max_length=MAX_USER_CHARS)] | None = None


class ChatCompletionRequest(_SamplingParams):
    """Body of ``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: TokenCount | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


Prompt = (
    str
    | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
    | Annotated[list[TokenId], Field(min_length=1, max_length=MAX_PROMPT_TOKEN_IDS)]
    | Annotated[
        list[Annotated[list[TokenId], Field(min_length=1, max_length=MAX_PROMPT_TOKEN_IDS)]],
        Field(min_length=1, max_length=MAX_PROMPTS),
    ]
)


class CompletionRequest(_SamplingParams):
    """Body of ``POST /v1/completions``."""

    prompt: Prompt
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: bool | None = None
    suffix: Annotated[str, StringConstraints(max_length=MAX_STOP_CHARS)] | None = None
    best_of: Annotated[int, Field(ge=1, le=MAX_N)] | None = None


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models`` (the OpenAI shape, plus vLLM's ``root`` / ``parent``)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str | None = None
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
