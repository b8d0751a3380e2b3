"""Adapters from a local directory: today's behaviour behind the source seam.

Nothing is downloaded: the directory itself is returned and
:meth:`adapters.store.AdapterStore.admit` copies it (checking the allowed roots, each file's
limit and that nothing changed while it was copied). Chosen by :func:`adapters.sources.
parse_source` for an absolute path or a ``file://`` URL.
"""

from __future__ import annotations

from pathlib import Path

from adapters.sources.base import AdapterSource, FetchPolicy, Progress

FILE_SCHEME = "file://"


class LocalSource(AdapterSource):
    scheme = "file"

    def fetch(self, url: str, staging: Path, policy: FetchPolicy, progress: Progress) -> Path:
        path = Path(url.removeprefix(FILE_SCHEME))
        progress(0, None)
        return path
