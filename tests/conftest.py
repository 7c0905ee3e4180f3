import urllib.request
from pathlib import Path

import pytest

DEEPFASHION_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "deepfashion"


@pytest.fixture(scope="session")
def deepfashion_dir() -> Path:
    """DeepFashion sample photos, keypoints and reference skeletons (../shared/data/deepfashion,
    next to the repository, never copied into it). A clone without them skips the tests that
    need real photos, saying which folder is missing; everything else runs."""
    if not (DEEPFASHION_DIR / "pose").is_dir() or not (DEEPFASHION_DIR / "pose_img").is_dir():
        pytest.skip(f"needs the DeepFashion sample photos in {DEEPFASHION_DIR} (pose/ and pose_img/), absent on this clone")
    return DEEPFASHION_DIR


@pytest.fixture
def s3(monkeypatch):
    """moto's standalone S3 server on 127.0.0.1, reached over HTTP through boto3's standard
    AWS_ENDPOINT_URL, with a bucket `catalog`. Stopped after the test."""
    import boto3
    from moto.server import ThreadedMotoServer

    from pipeline import storage

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTKEY0000000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-that-must-never-appear")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage._client.cache_clear()
    # moto keeps its buckets in process-wide state that outlives a server: start empty.
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"))
    boto3.client("s3").create_bucket(Bucket="catalog")
    try:
        yield f"http://{host}:{port}"
    finally:
        storage._client.cache_clear()
        server.stop()
