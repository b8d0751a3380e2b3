"""Reading an OpenAI request body: one parse, in pydantic's JSON mode, against its schema.

Every route of :mod:`gateway.api.openai` calls :func:`parse_body` on the raw bytes it will
forward; every failure is a 400 in the OpenAI error shape.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from gateway.api.error_handlers import validation_error
from gateway.errors import InvalidRequestError

Body = TypeVar("Body", bound=BaseModel)


def parse_body(schema: type[Body], raw: bytes) -> Body:
    """Validate a request body; every failure is a 400 in the OpenAI shape."""
    if not raw.strip():
        raise InvalidRequestError("The request body is empty: expected a JSON object.")
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise InvalidRequestError(
                "The request body is not valid JSON.", code="invalid_json"
            ) from None
        raise validation_error(exc) from None
