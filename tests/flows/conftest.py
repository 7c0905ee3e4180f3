import os

import pytest


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """Prefect's real engine against a temporary server (prefect_test_harness: a server
    subprocess on a fresh database), with Prefect's home in a temporary folder. Stopped at the
    end of the session."""
    home = tmp_path_factory.mktemp("prefect_home")
    saved = {name: os.environ.get(name) for name in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_LEVEL")}
    os.environ.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
    from prefect.testing.utilities import prefect_test_harness

    try:
        with prefect_test_harness(server_startup_timeout=120):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
