"""Pydantic schemas of the OpenAI API surface the gateway serves.

The request models validate what a client sends to ``/v1/chat/completions`` and
``/v1/completions`` before anything reaches an engine: the OpenAI parameters vLLM accepts, each
with a bound, and ``extra="allow"`` so vendor extensions (``top_k``, ``min_p``,
``repetition_penalty``, ``ignore_eos``, ...) pass through for vLLM to judge. They are used for
validation only: the proxy forwards the client's own JSON (``gateway.inference.proxy``), never a
dump of these models. Also vLLM's ``/tokenize`` and ``/detokenize``. The response models
describe ``GET /v1/models``. Used by
:mod:`gateway.api.openai.routes`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

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

    @property
    def sent_keys(self) -> frozenset[str]:
        """Top-level keys the client sent with a value (``null`` means "the default")."""
        return frozenset(key for key, value in self if value is not None)


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

    @property
    def asks_for_usage(self) -> bool:
        """The client asked for a stream's final usage chunk (decided on the parsed body)."""
        return self.stream_options is not None and self.stream_options.include_usage is True


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


MAX_RESPONSE_ID = 128
MAX_METADATA = 16
MAX_INSTRUCTIONS_CHARS = 1 << 20


class ResponsesRequest(_Open):
    """Body of ``POST /v1/responses`` (vLLM's fields pass through; these are bounded)."""

    model: ModelName
    input: str | Annotated[list[dict[str, Any]], Field(max_length=MAX_MESSAGES)] | None = None
    instructions: Annotated[str, StringConstraints(max_length=MAX_INSTRUCTIONS_CHARS)] | None = None
    stream: bool = False
    store: bool | None = None
    background: bool | None = None
    previous_response_id: (
        Annotated[str, StringConstraints(min_length=1, max_length=MAX_RESPONSE_ID)] | None
    ) = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    max_output_tokens: TokenCount | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    metadata: Annotated[dict[str, str], Field(max_length=MAX_METADATA)] | None = None
    user: Annotated[str, StringConstraints(max_length=MAX_USER_CHARS)] | None = None


class TokenizeRequest(_Open):
    """Body of vLLM's ``POST /tokenize``: a ``prompt`` or chat ``messages`` (one of them);
    ``model`` is optional there (the base model)."""

    model: ModelName | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)] | None = (
        None
    )

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self


class DetokenizeRequest(_Open):
    """Body of vLLM's ``POST /detokenize``."""

    model: ModelName | None = None
    tokens: Annotated[list[TokenId], Field(max_length=MAX_PROMPT_TOKEN_IDS)]


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
