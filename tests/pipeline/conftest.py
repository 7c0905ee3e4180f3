import pytest


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path):
    """An output folder on local disk, then one on the S3 test server: the same test runs on both."""
    if request.param == "s3":
        request.getfixturevalue("s3")
        return "s3://catalog/out"
    return str(tmp_path / "out")
