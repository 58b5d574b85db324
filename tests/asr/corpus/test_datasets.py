"""Dataset versions and frozen golden sets, on the real sample clips."""

import json
import shutil
from pathlib import Path

import pytest

from asr.corpus.datasets import dataset_digest, freeze_golden, golden_sets, load_golden
from asr.errors import DataError
from serving.cli import main
from tests.signals import SAMPLES_DIR


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    folder = tmp_path / "samples"
    shutil.copytree(SAMPLES_DIR, folder)
    return folder / "manifest.jsonl"


def test_the_version_follows_content_not_bytes(samples: Path) -> None:
    before = dataset_digest(samples)
    rows = samples.read_text().splitlines()
    samples.write_text("\n".join(reversed(rows)) + "\n")  # order and layout do not matter
    assert dataset_digest(samples) == before
    first = json.loads(rows[0])
    first["text"] = "a different label"
    samples.write_text("\n".join([json.dumps(first), *rows[1:]]) + "\n")
    assert dataset_digest(samples) != before
    samples.write_text("\n".join(rows) + "\n")
    (samples.parent / first["audio"]).write_bytes(b"not the same audio")
    assert dataset_digest(samples) != before


def test_a_frozen_set_is_copied_read_only_and_checked(samples: Path, tmp_path: Path) -> None:
    root = tmp_path / "golden"
    golden = freeze_golden(samples, "samples", root, max_clips=3, seed=1)
    assert golden.rows == 3 and golden.ref == f"samples@{golden.digest[:12]}"
    assert golden.digest == dataset_digest(golden.manifest)
    assert [g.ref for g in golden_sets(root)] == [golden.ref]
    with pytest.raises(DataError, match="already frozen"):
        freeze_golden(samples, "samples", root)
    # The source may change or vanish: the frozen copy does not.
    shutil.rmtree(samples.parent)
    assert load_golden(golden.folder).digest == golden.digest
    clip = next((golden.folder / "audio").iterdir())
    clip.chmod(0o644)
    clip.write_bytes(clip.read_bytes()[:-10])
    with pytest.raises(DataError, match="changed since it was frozen"):
        load_golden(golden.folder)


def test_freeze_and_list_through_the_cli(
    samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOICE_SEARCH_GOLDEN_DIR", str(tmp_path / "golden"))
    assert main(["data", "freeze", str(samples), "--name", "samples"]) == 0
    frozen = json.loads(capsys.readouterr().out)
    assert frozen["rows"] == 4
    assert main(["data", "golden"]) == 0
    assert frozen["golden_set"] in capsys.readouterr().out
    assert main(["data", "freeze", str(tmp_path / "missing.jsonl"), "--name", "x"]) == 2
    assert "cannot read manifest" in capsys.readouterr().err
