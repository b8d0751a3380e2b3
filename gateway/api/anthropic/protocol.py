"""Pydantic schemas of Anthropic's Messages API as vLLM serves it: validation only.

As for the OpenAI endpoints (:mod:`gateway.api.openai.protocol`), the proxy forwards the
client's own JSON; these models bound what a client may send and let vLLM's own extensions
through (``extra="allow"``). Used by :mod:`gateway.api.anthropic.messages`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from gateway.api.openai.protocol import (
    MAX_CONTENT_PARTS,
    MAX_MESSAGES,
    MAX_STOP,
    MAX_TOOLS,
    ModelName,
    StopWord,
    TokenCount,
    _Open,
)

Blocks = Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_CONTENT_PARTS)]


class AnthropicMessage(_Open):
    role: Literal["user", "assistant"]
    content: str | Blocks


class MessagesRequest(_Open):
    """Body of ``POST /v1/messages``."""

    model: ModelName
    messages: Annotated[list[AnthropicMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: TokenCount
    stream: bool = False
    system: str | Blocks | None = None
    stop_sequences: Annotated[list[StopWord], Field(max_length=MAX_STOP)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=-1, le=1 << 20)] | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None


class CountTokensRequest(_Open):
    """Body of ``POST /v1/messages/count_tokens``."""

    model: ModelName
    messages: Annotated[list[AnthropicMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    system: str | Blocks | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
