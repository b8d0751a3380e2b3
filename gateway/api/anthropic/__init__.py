"""Anthropic's Messages API (``/v1/messages``), served by vLLM and routed like OpenAI calls."""
