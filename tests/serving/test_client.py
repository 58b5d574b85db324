"""Edge and cloud clients against a real local server: the same query answered both ways."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.corpus.domain import DomainPack
from asr.edge import export_edge
from asr.pipeline import build_frontend, build_pipeline
from serving.cli import main
from serving.client import CloudClient, EdgeClient, flac_of_speech
from serving.local_server import Server
from serving.search import CatalogIndex
from serving.settings import DEFAULT_DOMAIN_DIR, DEFAULT_MODEL_DIR
from tests.serving.events import rows
from tests.signals import REPO, encode, espeak, pad, silence

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def query(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spoken query with a second of silence on each side (which the device should not send)."""
    samples, rate = espeak("weather in paris")
    path = tmp_path_factory.mktemp("audio") / "query.wav"
    sf.write(path, pad(samples, 1.0, 1.0, rate), rate)
    return path


def test_cloud_mode_uploads_only_the_speech_as_flac(server: Server, query: Path) -> None:
    client = CloudClient(server.url, build_frontend(), session_id="cloud-1")
    try:
        result = client.search(query)
    finally:
        client.close()
    assert result.mode == "cloud"
    assert 0 < result.payload_bytes < query.stat().st_size / 2
    assert {"vad", "encode", "upload", "asr", "search", "total"} <= set(result.timings_ms)
    assert result.audio_s > 2.0
    ((content_type, audio_bytes),) = rows(
        server, "SELECT content_type, audio_bytes FROM events WHERE session_id = 'cloud-1'"
    )
    assert content_type == "audio/flac" and audio_bytes == result.payload_bytes


def test_edge_mode_answers_on_the_device(query: Path) -> None:
    pack = DomainPack.load(DEFAULT_DOMAIN_DIR)
    client = EdgeClient(build_pipeline(DEFAULT_MODEL_DIR, device="cpu"), CatalogIndex(pack))
    result = client.search(query)
    assert result.mode == "edge" and result.payload_bytes == 0
    assert {"vad", "asr", "decoding", "search", "total"} <= set(result.timings_ms)
    assert result.timings_ms["total"] >= result.timings_ms["asr"]


def test_silence_costs_no_upload(server: Server, tmp_path: Path) -> None:
    quiet = tmp_path / "quiet.wav"
    quiet.write_bytes(encode(silence(2.0), 16_000))
    client = CloudClient(server.url, build_frontend(), session_id="cloud-quiet")
    try:
        result = client.search(quiet)
    finally:
        client.close()
    assert result.payload_bytes == 0 and result.transcript == ""
    assert rows(server, "SELECT COUNT(*) FROM events WHERE session_id = 'cloud-quiet'")[0][0] == 0


def test_flac_of_speech_joins_spans_with_gaps() -> None:
    clip = np.full(16_000, 0.25, dtype=np.float32)
    payload = flac_of_speech(clip, [(0.0, 0.25), (0.5, 0.75)])
    decoded, rate = sf.read(io.BytesIO(payload), dtype="float32")
    assert rate == 16_000 and len(decoded) == 4000 + 1600 + 4000  # two spans, one 0.1 s gap
    assert np.all(decoded[4000:5600] == 0) and np.allclose(decoded[:4000], 0.25, atol=1e-4)


def test_client_command_in_both_modes(
    server: Server, query: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["client", "--mode", "cloud", "--url", server.url, str(query)]) == 0
    cloud = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cloud["mode"] == "cloud" and cloud["payload_bytes"] > 0
    assert main(["client", "--mode", "edge", str(query)]) == 0
    edge = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert edge["mode"] == "edge" and edge["payload_bytes"] == 0
    assert main(["client", "--mode", "cloud", "--url", "http://127.0.0.1:9", str(query)]) == 1
    assert "voice-search:" in capsys.readouterr().err


def test_device_clients_run_without_torch(server: Server, query: Path, tmp_path: Path) -> None:
    """A device needs ONNX Runtime and numpy only: VAD, the edge model and the upload import no torch."""
    edge = export_edge(DEFAULT_MODEL_DIR, tmp_path / "edge", "fp32").folder
    for args in (["--mode", "cloud", "--url", server.url], ["--mode", "edge", "--model", str(edge)]):
        code = (
            "import sys; from serving.cli import main; "
            f"code = main(['client', *{args!r}, {str(query)!r}]); "
            "print(code, 'torch' in sys.modules, file=sys.stderr)"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
        assert done.stderr.strip().splitlines()[-1] == "0 False", done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1])["mode"] == args[1]
