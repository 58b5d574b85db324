from collections.abc import Iterator

import pytest

from serving.launch import Server, running_server


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server on localhost with default settings and its own state folder, one per test
    module; modules that need other settings define their own `server`."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    with running_server(tmp_path_factory.mktemp(name)) as running:
        yield running
