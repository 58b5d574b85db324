"""Shared fixtures: a tiny random wav2vec2 CTC checkpoint built from a config, once per session."""

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from xdist.scheduler import LoadFileScheduling  # type: ignore[import-untyped]

from asr.model import create_model_dir
from serving.cluster.database import LocalPostgres


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


RAY_FILES = ("tests/serving/test_transcribe_ray.py", "tests/serving/test_transcribe_ray_client.py")


class ModuleScheduling(LoadFileScheduling):  # type: ignore[misc]
    """`make test`'s scheduling on pytest-xdist workers: each test file on one worker, so its
    module-scoped server starts once, and both Ray files on the same one, one after the other:
    the Ray Client test's head must not run beside the other file's local Ray starts (see its
    docstring). (xdist's own `loadgroup` cannot say this under pytest 9.2: it renames node ids
    in a way pytest no longer reads.)"""

    def _split_scope(self, nodeid: str) -> str:
        path = _file(nodeid)
        return "ray" if path in RAY_FILES else path


SLOWEST_FILES = ("tests/serving/test_replay.py", "tests/serving/test_simulation.py")
"""Minutes each, alone on a worker: started first, they run beside the rest of the suite instead
of after it (the replay, collected near the end, was the last 9 minutes of a 23-minute run)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: _file(item.nodeid) not in SLOWEST_FILES)  # stable


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> ModuleScheduling:
    return ModuleScheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def _mlflow_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Commands that use the registry write their MLflow store to a temporary folder, not var/."""
    os.environ.setdefault("VOICE_SEARCH_MLFLOW_DIR", str(tmp_path_factory.mktemp("mlflow")))
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def _state_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every command and server a test starts keeps its state (events, audio, reviews, labels,
    audit) in a temporary folder, never the checkout's var/: a checkout whose product was used
    must pass as a fresh one does, and the suite must leave that state as it found it."""
    state = Path(__file__).resolve().parents[1] / "var"
    before = _files(state)
    os.environ.setdefault("VOICE_SEARCH_DB_PATH", str(tmp_path_factory.mktemp("state") / "events.sqlite3"))
    yield
    after = _files(state)
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    assert not changed, f"the tests touched the checkout's var/: {changed[:10]}"


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
