"""S3Source against a real S3-compatible server (moto's server mode, tests/support/s3_server.py):
a fetch brings the contract's files, the size limit stops a download early, unreachable
endpoints and missing objects give clear errors, transient failures are retried."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from adapters.contract import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST
from adapters.errors import AdapterError, AdapterErrorKind
from adapters.sources import FetchPolicy, S3Source, Sources
from tests.adapters.builders import write_adapter
from tests.support.s3_server import S3Server, free_port


def upload(server: S3Server, directory: Path, bucket: str, prefix: str) -> None:
    client = server.client()
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    for path in directory.iterdir():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())


def source(server: S3Server) -> S3Source:
    return S3Source(
        endpoint_url=server.endpoint_url, access_key_id="testing", secret_access_key="testing"
    )


def test_fetches_the_contract_files(s3_server: S3Server, tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "src", base_model="tinybase", manifest={"x": 1})
    (adapter / "README.md").write_text("not part of the contract")
    bucket = f"b-{uuid.uuid4().hex[:8]}"
    upload(s3_server, adapter, bucket, "team/a1")
    staging = tmp_path / "staging"
    staging.mkdir()
    seen: list[tuple[int, int | None]] = []
    got = source(s3_server).fetch(
        f"s3://{bucket}/team/a1",
        staging,
        FetchPolicy(max_adapter_bytes=1 << 20).start(),
        lambda done, total: seen.append((done, total)),
    )
    assert got == staging
    assert sorted(p.name for p in staging.iterdir()) == sorted(
        [ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST]
    )
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST):
        assert (staging / name).read_bytes() == (adapter / name).read_bytes()
    total = sum((adapter / n).stat().st_size for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST))
    assert seen[0] == (0, total) and seen[-1] == (total, total)


def test_an_object_one_byte_over_the_limit_is_refused_before_it_is_read(
    s3_server: S3Server, tmp_path: Path
) -> None:
    adapter = write_adapter(tmp_path / "src", base_model="tinybase")
    limit = (adapter / ADAPTER_WEIGHTS).stat().st_size - 1  # the weights are one byte over
    bucket = f"b-{uuid.uuid4().hex[:8]}"
    upload(s3_server, adapter, bucket, "a")
    s3 = source(s3_server)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(AdapterError) as caught:
        s3.fetch(f"s3://{bucket}/a", staging, FetchPolicy(max_adapter_bytes=limit).start(), noop)
    assert caught.value.kind is AdapterErrorKind.TOO_LARGE
    assert caught.value.code == "adapter_too_large" and str(limit) in caught.value.message
    assert s3.bytes_read == 0
    assert not (staging / ADAPTER_WEIGHTS).exists()


def test_an_object_grown_after_the_size_check_is_abandoned_while_streaming(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """The announced size passed, then the object was replaced by a much bigger one: the
    download stops at the limit, long before the object's end."""
    adapter = write_adapter(tmp_path / "src", base_model="tinybase")
    bucket = f"b-{uuid.uuid4().hex[:8]}"
    upload(s3_server, adapter, bucket, "a")
    limit = 1 << 20
    big = 8 << 20
    client = s3_server.client()

    def grow_once(done: int, total: int | None) -> None:
        if done == 0:  # after the size check, before the first byte
            client.put_object(Bucket=bucket, Key=f"a/{ADAPTER_WEIGHTS}", Body=b"\0" * big)

    s3 = source(s3_server)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(AdapterError) as caught:
        s3.fetch(
            f"s3://{bucket}/a", staging, FetchPolicy(max_adapter_bytes=limit).start(), grow_once
        )
    assert caught.value.kind is AdapterErrorKind.TOO_LARGE
    assert s3.bytes_read < big


def test_missing_prefix_is_not_found(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = f"b-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=bucket)
    with pytest.raises(AdapterError) as caught:
        source(s3_server).fetch(
            f"s3://{bucket}/nothing", tmp_path, FetchPolicy(max_adapter_bytes=1 << 20).start(), noop
        )
    assert caught.value.kind is AdapterErrorKind.NOT_FOUND
    assert ADAPTER_CONFIG in caught.value.message


def test_unreachable_endpoint_is_retried_then_a_clear_error(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    s3 = S3Source(endpoint_url=dead, access_key_id="testing", secret_access_key="testing")
    policy = FetchPolicy(max_adapter_bytes=1 << 20, attempts=3, backoff_s=0.01, timeout_s=20)
    with pytest.raises(AdapterError) as caught:
        s3.fetch("s3://bucket/a", tmp_path, policy.start(), noop)
    error = caught.value
    assert error.kind is AdapterErrorKind.UNAVAILABLE and error.code == "source_unavailable"
    assert dead in error.message and "after 3 tries" in error.message


@pytest.mark.parametrize(
    "url", ["s3://", "s3:///prefix", "s3://bucket/a?versionId=1", "ftp://x/y", "relative/dir"]
)
def test_bad_source_urls(url: str) -> None:
    with pytest.raises(AdapterError) as caught:
        sources = Sources()
        sources.for_url(url).fetch(url, Path("/nonexistent"), FetchPolicy(1).start(), noop)
    assert caught.value.kind is AdapterErrorKind.INVALID and caught.value.param == "source"


def noop(done: int, total: int | None) -> None:
    pass
