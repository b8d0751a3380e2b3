"""Adapters from S3 or any S3-compatible store: ``s3://bucket/prefix``.

The objects ``<prefix>/adapter_config.json``, ``<prefix>/adapter_model.safetensors`` and (when
present) ``<prefix>/manifest.json`` are looked up (HEAD), then streamed into the staging
directory. Each file's limit is checked against the size the store announces (a 2 GiB+1 byte
weights file is refused before one byte of it is read) and again on every chunk while it
streams (an object replaced by a bigger one after the look-up is abandoned there).

The client is boto3's, imported at the first fetch (the gateway's start does not pay for it),
with ``endpoint_url`` for a non-AWS endpoint (MinIO, Ceph, moto) and credentials from the usual
chain (environment, ``~/.aws``, instance role) unless given. botocore's own retries are off:
:func:`adapters.sources.base.with_retries` is the one retry loop. Built by
:func:`adapters.sources.build_sources` from the gateway's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from adapters.contract import ADAPTER_CONFIG, ADAPTER_FILES, ADAPTER_WEIGHTS
from adapters.errors import AdapterError, AdapterErrorKind
from adapters.sources.base import (
    AdapterSource,
    FetchPolicy,
    Progress,
    copy_bounded,
    too_large,
    with_retries,
)

_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        prefix = parts.path.strip("/")
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise AdapterError(
                AdapterErrorKind.INVALID,
                f"{url!r} is not an S3 source: use s3://BUCKET/PREFIX",
                code="invalid_source",
                param="source",
            )
        return cls(parts.netloc, prefix)

    def key(self, file_name: str) -> str:
        return f"{self.prefix}/{file_name}" if self.prefix else file_name


class S3Source(AdapterSource):
    scheme = "s3"

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        #: Bytes read from the store by the last fetch (tests check a refused one stopped early).
        self.bytes_read = 0

    def fetch(self, url: str, staging: Path, policy: FetchPolicy, progress: Progress) -> Path:
        location = S3Location.parse(url)
        client = self._client(policy)
        return with_retries(
            policy, url, lambda: self._fetch_once(client, location, url, staging, policy, progress)
        )

    def _client(self, policy: FetchPolicy) -> Any:
        import boto3  # imported here: seconds and megabytes the gateway's start need not pay
        from botocore.config import Config

        timeout = max(1.0, min(policy.timeout_s, 60.0))
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self._access_key_id,
            aws_secret_access_key=self._secret_access_key,
            config=Config(
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"max_attempts": 1, "mode": "standard"},
            ),
        )

    def _fetch_once(
        self,
        client: Any,
        location: S3Location,
        url: str,
        staging: Path,
        policy: FetchPolicy,
        progress: Progress,
    ) -> Path:
        from botocore.exceptions import BotoCoreError, ClientError

        for name in ADAPTER_FILES:  # a retry starts from an empty staging directory
            (staging / name).unlink(missing_ok=True)
        self.bytes_read = 0
        try:
            sizes = self._list(client, location, url)
            total = sum(sizes.values())
            progress(0, total)
            for name, size in sizes.items():
                if size > policy.limit_for(name):
                    raise too_large(f"{url}/{name}", size, policy.limit_for(name))
            for name in sizes:
                self._download(client, location, name, staging, policy, progress, total)
        except ClientError as exc:
            raise _from_client_error(exc, url) from exc
        except BotoCoreError as exc:  # connection refused, DNS, timeouts, a dropped stream
            raise AdapterError(
                AdapterErrorKind.UNAVAILABLE,
                f"cannot fetch {url} from {self.endpoint_url or 'S3'}: {exc}",
                code="source_unavailable",
                param="source",
            ) from exc
        return staging

    def _list(self, client: Any, location: S3Location, url: str) -> dict[str, int]:
        """The contract's objects under the prefix -> their announced sizes."""
        from botocore.exceptions import ClientError

        sizes = {}
        for name in ADAPTER_FILES:
            try:
                head = client.head_object(Bucket=location.bucket, Key=location.key(name))
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) not in _MISSING_CODES:
                    raise
                continue
            sizes[name] = int(head["ContentLength"])
        missing = [name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if name not in sizes]
        if missing:
            raise AdapterError(
                AdapterErrorKind.NOT_FOUND,
                f"{url} has no {' and no '.join(missing)} (or its bucket does not exist): an S3 "
                "adapter source is a prefix holding a PEFT directory's files",
                code="source_not_found",
                param="source",
            )
        return sizes

    def _download(
        self,
        client: Any,
        location: S3Location,
        name: str,
        staging: Path,
        policy: FetchPolicy,
        progress: Progress,
        total: int,
    ) -> None:
        what = f"s3://{location.bucket}/{location.key(name)}"
        limit = policy.limit_for(name)
        response = client.get_object(Bucket=location.bucket, Key=location.key(name))
        body = response["Body"]
        try:
            length = int(response.get("ContentLength") or 0)
            if length > limit:
                raise too_large(what, length, limit)

            def on_bytes(count: int) -> None:
                self.bytes_read += count
                progress(self.bytes_read, total)

            copy_bounded(
                body, staging / name, limit=limit, what=what, policy=policy, on_bytes=on_bytes
            )
        finally:
            body.close()


def _from_client_error(exc: Any, url: str) -> AdapterError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = error.get("Message") or code
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in _MISSING_CODES:
        kind, our_code = AdapterErrorKind.NOT_FOUND, "source_not_found"
    elif code in _DENIED_CODES:
        kind, our_code = AdapterErrorKind.FORBIDDEN, "source_forbidden"
    elif status >= 500 or code in {"SlowDown", "RequestTimeout", "ServiceUnavailable"}:
        kind, our_code = AdapterErrorKind.UNAVAILABLE, "source_unavailable"
    else:
        kind, our_code = AdapterErrorKind.INVALID, "source_error"
    return AdapterError(kind, f"S3 refused {url}: {code}: {message}", code=our_code, param="source")
