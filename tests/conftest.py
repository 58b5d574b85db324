"""Shared fixtures: a tiny random wav2vec2 CTC checkpoint built from a config, once per session."""

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from asr.model import create_model_dir
from serving.cluster.postgres import LocalPostgres

RAY_MODULES = ("tests.serving.test_transcribe_ray", "tests.serving.test_transcribe_ray_client")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's `--dist loadgroup`: a module's tests run on one worker, so its
    module-scoped server starts once; the two Ray modules share a worker, because a `ray start`
    beside another worker's local Ray exited at start."""
    for item in items:
        module = item.module.__name__ if isinstance(item, pytest.Function) else item.nodeid
        item.add_marker(pytest.mark.xdist_group("ray" if module in RAY_MODULES else module))


@pytest.fixture(scope="session", autouse=True)
def _mlflow_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Commands that use the registry write their MLflow store to a temporary folder, not var/."""
    os.environ.setdefault("VOICE_SEARCH_MLFLOW_DIR", str(tmp_path_factory.mktemp("mlflow")))
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised ~36k-parameter model in Hugging Face format (outputs are noise)."""
    return create_model_dir(tmp_path_factory.mktemp("models") / "tiny", shape="tiny", seed=0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, the real recordings. CI lays shared/ beside the clone; absence is an error."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    path = Path(os.environ.get("VOICE_SEARCH_SHARED_DATA", default))
    if not path.is_dir():
        pytest.fail(f"the real data sets are expected at {path} (shared/ beside the checkout)")
    return path


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """A real PostgreSQL server of Debian's packages, in a temporary folder, for the whole run.

    Its folder is made in /tmp by hand (not pytest's tmp_path, which only its owner may enter):
    when the tests run as root, the server runs as the `postgres` user, who must reach it."""
    base = Path(tempfile.mkdtemp(prefix="voice-search-pg-"))
    base.chmod(0o755)
    server = LocalPostgres(base / "server").start()
    try:
        yield server
    finally:
        if server.running():
            server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: LocalPostgres) -> str:
    """A fresh, empty database on the shared test server."""
    return postgres_server.create_database(f"test_{uuid.uuid4().hex[:12]}")
