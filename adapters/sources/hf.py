"""Adapters from the Hugging Face Hub: ``hf://org/name`` or ``hf://org/name@revision``.

Only the contract's files are fetched, each with ``huggingface_hub.hf_hub_download``, so the
Hub's cache (``HF_HUB_CACHE``, or the ``cache_dir`` given) is used and filled as every other
Hub client does, and ``HF_HUB_OFFLINE=1`` serves from that cache alone. When online, each
file's size from the Hub's metadata is checked against its limit before it is downloaded; the
copy from the cache into the staging directory is bounded again while it streams. ``manifest.json``
is optional. huggingface_hub is imported at the first fetch. Built by
:func:`adapters.sources.build_sources`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.contract import ADAPTER_FILES, MANIFEST
from adapters.errors import AdapterError, AdapterErrorKind
from adapters.sources.base import (
    AdapterSource,
    FetchPolicy,
    Progress,
    copy_bounded,
    too_large,
    with_retries,
)

_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")


@dataclass(frozen=True, slots=True)
class HubRef:
    repo_id: str
    revision: str | None

    @classmethod
    def parse(cls, url: str) -> HubRef:
        rest = url.removeprefix("hf://")
        repo_id, at, revision = rest.partition("@")
        if (
            not url.startswith("hf://")
            or not _REPO.fullmatch(repo_id)
            or (at and not _REVISION.fullmatch(revision))
        ):
            raise AdapterError(
                AdapterErrorKind.INVALID,
                f"{url!r} is not a Hub source: use hf://ORG/NAME or hf://ORG/NAME@REVISION",
                code="invalid_source",
                param="source",
            )
        return cls(repo_id, revision or None)


class HubSource(AdapterSource):
    scheme = "hf"

    def __init__(self, *, cache_dir: Path | None = None, token: str | None = None) -> None:
        self.cache_dir = cache_dir
        self._token = token

    def fetch(self, url: str, staging: Path, policy: FetchPolicy, progress: Progress) -> Path:
        ref = HubRef.parse(url)
        return with_retries(
            policy, url, lambda: self._fetch_once(ref, url, staging, policy, progress)
        )

    def _fetch_once(
        self, ref: HubRef, url: str, staging: Path, policy: FetchPolicy, progress: Progress
    ) -> Path:
        import huggingface_hub
        from huggingface_hub import errors

        for name in ADAPTER_FILES:
            (staging / name).unlink(missing_ok=True)
        done = 0
        progress(0, None)
        for name in ADAPTER_FILES:
            what = f"{url} {name}"
            limit = policy.limit_for(name)
            policy.check(what)
            try:
                if not huggingface_hub.constants.is_offline_mode():
                    size = self._announced_size(ref, name)
                    if size is not None and size > limit:
                        raise too_large(what, size, limit)
                cached = huggingface_hub.hf_hub_download(
                    ref.repo_id,
                    name,
                    revision=ref.revision,
                    cache_dir=self.cache_dir,
                    token=self._token,
                    etag_timeout=max(1.0, min(policy.remaining_s(), 10.0)),
                )
            except errors.LocalEntryNotFoundError as exc:
                # Not in the cache, and offline or the Hub unreachable (a subclass of
                # EntryNotFoundError, so caught first). Offline, no retry can help.
                offline = huggingface_hub.constants.is_offline_mode()
                if name == MANIFEST and offline:
                    continue
                if offline:
                    raise AdapterError(
                        AdapterErrorKind.NOT_FOUND,
                        f"{what} is not in the Hub cache ({self.cache_dir or 'HF_HUB_CACHE'}) "
                        "and HF_HUB_OFFLINE is set: download it once online, or unset it",
                        code="source_not_cached",
                        param="source",
                    ) from exc
                raise AdapterError(
                    AdapterErrorKind.UNAVAILABLE,
                    f"{what} is not in the Hub cache and the Hub cannot be reached: {exc}",
                    code="source_unavailable",
                    param="source",
                ) from exc
            except errors.EntryNotFoundError as exc:
                if name == MANIFEST:
                    continue
                raise _not_found(url, f"it has no {name}") from exc
            except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as exc:
                raise _not_found(url, str(exc).splitlines()[0]) from exc
            except errors.HfHubHTTPError as exc:
                raise AdapterError(
                    AdapterErrorKind.UNAVAILABLE,
                    f"the Hub failed to give {what}: {exc}",
                    code="source_unavailable",
                    param="source",
                ) from exc
            except OSError as exc:  # network errors surface as OSError subclasses
                raise AdapterError(
                    AdapterErrorKind.UNAVAILABLE,
                    f"cannot fetch {what}: {exc}",
                    code="source_unavailable",
                    param="source",
                ) from exc

            def on_bytes(count: int) -> None:
                nonlocal done
                done += count
                progress(done, None)

            with Path(cached).open("rb") as reader:
                copy_bounded(
                    reader, staging / name, limit=limit, what=what, policy=policy, on_bytes=on_bytes
                )
        progress(done, done)
        return staging

    def _announced_size(self, ref: HubRef, name: str) -> int | None:
        import huggingface_hub

        info: Any = huggingface_hub.get_hf_file_metadata(
            huggingface_hub.hf_hub_url(ref.repo_id, name, revision=ref.revision),
            token=self._token,
        )
        return int(info.size) if info.size is not None else None


def _not_found(url: str, why: str) -> AdapterError:
    return AdapterError(
        AdapterErrorKind.NOT_FOUND,
        f"{url} cannot be fetched: {why}",
        code="source_not_found",
        param="source",
    )
