from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf

from serving.local_server import Server, running_server
from tests.signals import espeak, pad


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server on localhost with default settings and its own state folder, one per test
    module; modules that need other settings define their own `server`."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    with running_server(tmp_path_factory.mktemp(name)) as running:
        yield running


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """'weather in paris' by espeak-ng, with silence around it (a browser's recording)."""
    samples, rate = espeak("weather in paris")
    path = tmp_path_factory.mktemp("audio") / "query.wav"
    sf.write(path, pad(samples, 0.3, 0.3, rate), rate)
    return path
