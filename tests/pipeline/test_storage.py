"""Storage over moto's S3 server and local disk: one interface, clear errors, atomic writes."""

import os

import pytest

from pipeline import storage
from pipeline.storage import StorageError, TransientStorageError


@pytest.mark.parametrize("where", ["s3", "local"])
def test_write_read_exists_list(where, s3, tmp_path):
    root = "s3://catalog/run1" if where == "s3" else str(tmp_path / "run1")
    uri = storage.join(root, "g1", "v1.png")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"\x89PNG fake", content_type="image/png")
    storage.write_bytes(storage.join(root, "g1", "v1.json"), b"{}")
    storage.write_bytes(storage.join(root, "g2", "v1.json"), b"{}")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"\x89PNG fake"
    listed = storage.list_prefix(storage.join(root, "g1"))
    assert listed == sorted([uri, storage.join(root, "g1", "v1.json")])
    assert len(storage.list_prefix(root)) == 3


def test_missing_object_and_bucket_are_named_and_never_leak_credentials(s3):
    with pytest.raises(StorageError, match=r"s3://catalog/nope.jpg: no such object") as missing:
        storage.read_bytes("s3://catalog/nope.jpg")
    with pytest.raises(StorageError, match=r"s3://no-bucket/x.jpg: no such bucket") as no_bucket:
        storage.read_bytes("s3://no-bucket/x.jpg")
    for error in (missing.value, no_bucket.value):
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(error)
        assert os.environ["AWS_ACCESS_KEY_ID"] not in str(error)
        assert error.__cause__ is None and error.__suppress_context__  # no botocore chain in tracebacks


def test_missing_local_file_is_named(tmp_path):
    with pytest.raises(StorageError, match=r"absent.jpg: no such file"):
        storage.read_bytes(tmp_path / "absent.jpg")
    with pytest.raises(StorageError, match="no such folder"):
        storage.list_prefix(tmp_path / "nowhere")


def test_a_failed_local_write_leaves_the_old_file_and_no_partial(tmp_path, monkeypatch):
    target = tmp_path / "g1" / "v1.json"
    storage.write_bytes(target, b"complete")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(target, b"half")
    assert target.read_bytes() == b"complete"
    assert [p.name for p in target.parent.iterdir()] == ["v1.json"]


def test_join_and_parse():
    assert storage.join("s3://b/out/", "g", "v.png") == "s3://b/out/g/v.png"
    assert storage.parse_s3("s3://b/a/b.png") == storage.S3Location("b", "a/b.png")
    with pytest.raises(StorageError, match="no bucket"):
        storage.parse_s3("s3:///key")


def test_throttling_and_server_errors_are_transient_and_a_missing_object_is_bad_input():
    from botocore.exceptions import ClientError, EndpointConnectionError

    from pipeline.storage import StorageError, TransientStorageError, _s3_error

    def error(code):
        return _s3_error("s3://catalog/x.jpg", ClientError({"Error": {"Code": code}}, "GetObject"))

    for code in ("SlowDown", "503", "InternalError", "RequestTimeout"):
        assert isinstance(error(code), TransientStorageError) and "transient" in str(error(code))
    assert isinstance(_s3_error("s3://catalog/x.jpg", EndpointConnectionError(endpoint_url="http://s3")), TransientStorageError)
    for code in ("NoSuchKey", "AccessDenied", "NoSuchBucket"):
        assert isinstance(error(code), StorageError) and not isinstance(error(code), TransientStorageError)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_read_with_a_byte_cap_refuses_a_larger_object_naming_its_size(where, s3, tmp_path):
    uri = "s3://catalog/in/big.jpg" if where == "s3" else str(tmp_path / "big.jpg")
    storage.write_bytes(uri, b"x" * 1001)
    with pytest.raises(StorageError, match=r"big.jpg: 1001 bytes, over the 1000-byte limit for an input"):
        storage.read_bytes(uri, max_bytes=1000)
    assert storage.read_bytes(uri, max_bytes=1001) == b"x" * 1001


def test_a_dropped_connection_or_a_cut_response_is_transient_not_bad_input():
    """A connection reset before the response (ConnectionClosedError), a read timeout or a body
    cut short: the chaos suite's proxy showed a reset surfacing as 'S3 unreachable or
    unconfigured', an InputError, which lost the run with no retry of its plan task."""
    from botocore.exceptions import (
        ConnectionClosedError,
        IncompleteReadError,
        NoCredentialsError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    from pipeline.storage import StorageError, TransientStorageError, _s3_error

    for exc in (
        ConnectionClosedError(endpoint_url="http://s3"),
        ReadTimeoutError(endpoint_url="http://s3"),
        ResponseStreamingError(error="Connection broken"),
        IncompleteReadError(actual_bytes=10, expected_bytes=20),
    ):
        error = _s3_error("s3://catalog/x.jpg", exc)
        assert isinstance(error, TransientStorageError), exc
        assert str(error) == f"s3://catalog/x.jpg: S3 unreachable ({type(exc).__name__}; transient)"
    unconfigured = _s3_error("s3://catalog/x.jpg", NoCredentialsError())
    assert isinstance(unconfigured, StorageError) and not isinstance(unconfigured, TransientStorageError)


def test_a_transient_error_that_gets_past_boto3s_own_retries_is_tried_again(s3, monkeypatch):
    """After an outage boto3's retry quota is spent and single errors reach the caller (the chaos
    suite's finding); idempotent operations try again, then let the error go to the task."""
    from botocore.exceptions import ClientError

    monkeypatch.setattr(storage, "TRANSIENT_RETRY_DELAYS_S", (0, 0, 0))
    uri = "s3://catalog/in/notes.txt"
    storage.write_bytes(uri, b"hello")
    calls = []

    def throttled(failures: int):
        def before_call(**_):
            calls.append(1)
            if len(calls) <= failures:  # raised before the request is sent: boto3 does not retry it
                raise ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}, "GetObject")

        return before_call

    events = storage._client().meta.events
    for failures, tries in ((3, 4), (4, 4)):
        calls.clear()
        hook = throttled(failures)
        events.register("before-call.s3.GetObject", hook)
        try:
            if failures < tries:
                assert storage.read_bytes(uri) == b"hello"
            else:
                with pytest.raises(TransientStorageError, match="notes.txt: S3 error SlowDown"):
                    storage.read_bytes(uri)
        finally:
            events.unregister("before-call.s3.GetObject", hook)
        assert len(calls) == tries


def test_expired_temporary_credentials_are_transient_and_missing_ones_are_not():
    from botocore.exceptions import ClientError, CredentialRetrievalError, NoCredentialsError

    from pipeline.storage import _s3_error

    for exc in (
        ClientError({"Error": {"Code": "ExpiredToken", "Message": "The provided token has expired."}}, "GetObject"),
        CredentialRetrievalError(provider="instance-metadata", error_msg="throttled"),
    ):
        assert isinstance(_s3_error("s3://catalog/x.jpg", exc), TransientStorageError), exc
    assert not isinstance(_s3_error("s3://catalog/x.jpg", NoCredentialsError()), TransientStorageError)
