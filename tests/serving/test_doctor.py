"""The install checks: the lock against pyproject, installed versions, imports, native libraries,
and the clear error a broken package gives instead of a confusing one (simulated: no venv breaks)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asr.decoding import BeamDecoder, BeamOptions
from asr.errors import DependencyError
from asr.model import Emissions, Vocabulary
from serving.cli import EXIT_BROKEN_INSTALL, main
from serving.doctor import (
    LOCK_FILE,
    PYPROJECT,
    import_failures,
    install_disagreements,
    lock_disagreements,
    read_lock,
    run_checks,
)
from tests.signals import SPEECH_SAMPLE

PYPROJECT_HEAD = '[project]\nname = "x"\nversion = "0"\n'
LOCK = """\
numpy==2.4.6 \\
    --hash=sha256:00
    # via
    #   scipy
    #   x (pyproject.toml)
scipy==1.17.1 \\
    --hash=sha256:00
    # via x (pyproject.toml)
"""


def write(folder: Path, dependencies: list[str], lock: str = LOCK) -> tuple[Path, Path]:
    pyproject, lock_file = folder / "pyproject.toml", folder / "requirements.lock"
    pyproject.write_text(PYPROJECT_HEAD + f"dependencies = {dependencies!r}\n".replace("'", '"'))
    lock_file.write_text(lock)
    return pyproject, lock_file


def test_the_committed_lock_agrees_with_pyproject() -> None:
    """CI fails here when a dependency changes in pyproject.toml without `make lock`."""
    assert lock_disagreements(PYPROJECT, LOCK_FILE) == []


def test_the_lock_pins_every_package_exactly_with_hashes() -> None:
    text = LOCK_FILE.read_text(encoding="utf-8")
    pins = read_lock(LOCK_FILE)
    assert len(pins) > 50
    assert text.count("--hash=sha256:") >= len(pins)
    assert "torchaudio" not in pins  # dropped on purpose: its wheels pin one exact torch
    assert "--index-url" not in text and "--find-links" not in text  # no machine's paths in it


def test_a_dependency_missing_from_the_lock_is_reported(tmp_path: Path) -> None:
    pyproject, lock = write(tmp_path, ["numpy>=2", "scipy", "rapidfuzz>=3"])
    assert lock_disagreements(pyproject, lock) == [
        "rapidfuzz is in pyproject.toml but not in the lock: run `make lock`"
    ]


def test_a_pin_outside_the_range_is_reported(tmp_path: Path) -> None:
    pyproject, lock = write(tmp_path, ["numpy<2", "scipy"])
    assert lock_disagreements(pyproject, lock) == [
        "the lock pins numpy 2.4.6, outside numpy<2: run `make lock`"
    ]


def test_a_dependency_removed_from_pyproject_is_reported(tmp_path: Path) -> None:
    pyproject, lock = write(tmp_path, ["numpy"])
    assert lock_disagreements(pyproject, lock) == [
        "the lock pins scipy for pyproject.toml, which no longer asks for it: run `make lock`"
    ]


def test_an_agreeing_pair_passes(tmp_path: Path) -> None:
    pyproject, lock = write(tmp_path, ["numpy>=2,<3", "SciPy"])
    assert lock_disagreements(pyproject, lock) == []


def test_installed_versions_match_the_lock() -> None:
    """The test environment was installed from the lock (`make install`)."""
    assert install_disagreements(LOCK_FILE) == []


def test_an_installed_version_that_differs_from_the_lock_is_reported(tmp_path: Path) -> None:
    installed = read_lock(LOCK_FILE)["torch"].version
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "torch==2.11.0 \\\n    --hash=sha256:00\nno-such-package-x==1.0 \\\n    --hash=sha256:00\n"
    )
    problems = install_disagreements(lock)
    assert problems[0].startswith(f"torch {installed} is installed, but the lock pins 2.11.0;")
    assert problems[1].startswith("no-such-package-x 1.0 is in the lock but not installed;")
    assert all(p.endswith("run `make install`") for p in problems)


def test_a_module_that_fails_to_import_is_reported() -> None:
    assert import_failures(["json", "no_such_module_for_doctor"])[0].startswith(
        "cannot import no_such_module_for_doctor"
    )


def test_doctor_passes_on_this_install() -> None:
    assert run_checks() == []
    done = subprocess.run(
        [sys.executable, "-m", "serving.cli", "doctor"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "works" in done.stdout


def test_doctor_fails_loudly_on_a_disagreeing_lock(tmp_path: Path) -> None:
    pyproject, lock = write(tmp_path, ["numpy", "scipy", "no-such-package-x"])
    problems = run_checks(lock, pyproject)
    assert any("no-such-package-x is in pyproject.toml but not in the lock" in p for p in problems)


def _broken(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make `import module` fail as a broken wheel does, leaving the venv untouched."""
    monkeypatch.setitem(sys.modules, module, None)


def test_a_broken_beam_search_library_names_the_feature_and_the_cure(monkeypatch: pytest.MonkeyPatch) -> None:
    _broken(monkeypatch, "flashlight.lib.text.decoder")
    vocab = Vocabulary(("<pad>", "|", "a"), blank_id=0, delimiter_id=1)
    with pytest.raises(DependencyError) as caught:
        BeamDecoder(vocab, BeamOptions(beam_size=2))
    message = str(caught.value)
    assert message.startswith(
        "beam search (lexicon, hotwords, catalog-biased decoding) needs flashlight-text "
    )
    assert message.endswith("run `make install`")


def test_greedy_decoding_does_not_need_the_beam_search_library(monkeypatch: pytest.MonkeyPatch) -> None:
    from asr.decoding import GreedyDecoder

    _broken(monkeypatch, "flashlight.lib.text.decoder")
    vocab = Vocabulary(("<pad>", "|", "a"), blank_id=0, delimiter_id=1)
    log_probs = np.log(np.array([[0.1, 0.1, 0.8]], dtype=np.float32))
    assert GreedyDecoder(vocab).decode(Emissions(log_probs, frame_s=0.02)).text == "a"


def test_cli_reports_a_broken_torch_with_exit_code_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _broken(monkeypatch, "torch")
    code = main(["transcribe", str(SPEECH_SAMPLE)])
    err = capsys.readouterr().err
    assert code == EXIT_BROKEN_INSTALL
    assert err.startswith("voice-search: error: loading the recognizer needs torch ")
    assert "run `make install`" in err
    assert "Traceback" not in err


def test_cli_reports_a_broken_beam_search_with_exit_code_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tiny_model_dir: Path
) -> None:
    _broken(monkeypatch, "flashlight.lib.text.decoder")
    code = main(["transcribe", str(SPEECH_SAMPLE), "--model", str(tiny_model_dir), "--beam-size", "4"])
    err = capsys.readouterr().err
    assert code == EXIT_BROKEN_INSTALL
    assert "beam search (lexicon, hotwords, catalog-biased decoding) needs flashlight-text" in err
