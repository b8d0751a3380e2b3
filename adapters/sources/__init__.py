"""Where adapters come from: a local path, ``s3://bucket/prefix`` or ``hf://org/name[@rev]``.

:func:`parse_source` names the :class:`~adapters.sources.base.AdapterSource` for a source URL
out of a :class:`Sources` set (built once from settings by the gateway); the seam and its
limits (size while downloading, timeout, retries) are in :mod:`adapters.sources.base`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.errors import AdapterError, AdapterErrorKind
from adapters.sources.base import AdapterSource, FetchPolicy, Progress
from adapters.sources.hf import HubSource
from adapters.sources.local import LocalSource
from adapters.sources.s3 import S3Source

#: The longest source URL accepted (the registry's path column holds it).
MAX_SOURCE_LENGTH = 1024


@dataclass(slots=True)
class Sources:
    """The configured source per URL scheme."""

    s3: S3Source = field(default_factory=S3Source)
    hf: HubSource = field(default_factory=HubSource)
    local: LocalSource = field(default_factory=LocalSource)

    def for_url(self, url: str) -> AdapterSource:
        """The source that fetches ``url``; INVALID for an unknown scheme."""
        if len(url) > MAX_SOURCE_LENGTH:
            raise _invalid(f"the source URL is longer than {MAX_SOURCE_LENGTH} characters")
        if url.startswith("s3://"):
            return self.s3
        if url.startswith("hf://"):
            return self.hf
        if url.startswith("file:///") or url.startswith("/"):
            return self.local
        raise _invalid(
            f"unknown adapter source {url[:80]!r}: use s3://BUCKET/PREFIX, hf://ORG/NAME[@REV] "
            "or an absolute local path"
        )

    def is_remote(self, url: str) -> bool:
        return self.for_url(url) is not self.local


def _invalid(message: str) -> AdapterError:
    return AdapterError(AdapterErrorKind.INVALID, message, code="invalid_source", param="source")


__all__ = [
    "MAX_SOURCE_LENGTH",
    "AdapterSource",
    "FetchPolicy",
    "HubSource",
    "LocalSource",
    "Progress",
    "S3Source",
    "Sources",
]
