"""The model registry on a real MLflow SQLite store: first use, lineage, promote, rollback,
errors, the `voice-search models` commands, and training runs logged to MLflow."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asr.model import model_version
from serving.cli import main
from serving.lifecycle.registry import CHAMPION, PREVIOUS, Lineage, Registry, RegistryError
from serving.settings import DEFAULT_MODEL_DIR
from tests.signals import SAMPLES_DIR


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry.embedded(tmp_path / "mlflow", "voice-search")


def test_first_use_registers_the_bundled_model_as_champion(registry: Registry) -> None:
    assert registry.versions() == []
    champion = registry.ensure_champion(DEFAULT_MODEL_DIR)
    assert (champion.version, champion.aliases) == (1, (CHAMPION,))
    assert champion.model_version == model_version(DEFAULT_MODEL_DIR)
    assert registry.ensure_champion(DEFAULT_MODEL_DIR).version == 1  # idempotent
    files = registry.model_dir(CHAMPION)
    assert (files / "model.safetensors").read_bytes() == (
        DEFAULT_MODEL_DIR / "model.safetensors"
    ).read_bytes()


def test_promote_and_rollback_move_the_aliases(registry: Registry, tiny_model_dir: Path) -> None:
    registry.ensure_champion(DEFAULT_MODEL_DIR)
    lineage = Lineage(training_run="abc", parent_model="voice-search-small@x", manifests={"m.jsonl": "f00"})
    second = registry.register(tiny_model_dir, lineage)
    assert second.version == 2 and second.aliases == ()
    assert second.lineage == {
        "training_run": "abc",
        "parent_model": "voice-search-small@x",
        "manifest:m.jsonl": "f00",
    }
    registry.set_alias("challenger", 2)
    promoted = registry.promote("challenger")
    assert promoted.aliases == (CHAMPION,)  # the challenger alias is gone with the promotion
    assert registry.get(PREVIOUS).version == 1
    back = registry.rollback()
    assert back.version == 1 and registry.get(CHAMPION).version == 1
    assert registry.get(PREVIOUS).version == 2
    assert [v.version for v in registry.versions()] == [2, 1]


def test_a_version_that_failed_its_gates_never_becomes_champion_or_previous(
    registry: Registry, tiny_model_dir: Path, tmp_path: Path
) -> None:
    registry.ensure_champion(DEFAULT_MODEL_DIR)
    drill = registry.register(shutil.copytree(tiny_model_dir, tmp_path / "silent-drill"))
    registry.set_alias("challenger", drill.version)
    failed = registry.mark_failed(drill.version, "gate failed: null_transcripts 1.0 vs 0.0")
    assert failed.aliases == () and failed.tags["failed_gates"].startswith("gate failed")
    with pytest.raises(RegistryError, match=r"failed its canary gates .* cannot become champion"):
        registry.promote(drill.version)
    good = registry.register(shutil.copytree(tiny_model_dir, tmp_path / "good"))
    registry.promote(good.version)  # the bundled model becomes previous, the drill stays nothing
    assert registry.get(PREVIOUS).version == 1
    registry.set_alias(PREVIOUS, drill.version)  # by hand: a rollback still refuses it
    with pytest.raises(RegistryError, match="cannot become champion again"):
        registry.rollback()
    assert registry.get(CHAMPION).version == good.version


def test_one_model_one_name_in_the_registry_and_where_it_is_served(
    registry: Registry, tiny_model_dir: Path, tmp_path: Path
) -> None:
    candidate = shutil.copytree(tiny_model_dir, tmp_path / "candidate2")
    registered = registry.register(candidate)
    assert registered.model_version == model_version(candidate)
    assert registered.model_version.startswith("candidate2@")
    assert model_version(registry.model_dir(registered.version)) == registered.model_version


def test_registry_errors_are_clear(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no version '7'"):
        registry.get(7)
    registry.ensure_champion(DEFAULT_MODEL_DIR)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()
    with pytest.raises(RegistryError, match="not a model folder"):
        registry.register(tmp_path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_commands(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path
) -> None:
    monkeypatch.setenv("VOICE_SEARCH_MLFLOW_DIR", str(tmp_path / "mlflow"))
    code, out, _ = run(capsys, "models", "list")
    assert code == 0 and " champion " in out.splitlines()[1]
    manifest = tmp_path / "train.jsonl"
    shutil.copy(SAMPLES_DIR / "fsdd_7_george_0.flac", tmp_path / "a.flac")
    manifest.write_text('{"audio": "a.flac", "text": "seven"}\n')
    code, out, err = run(capsys, "models", "register", str(tiny_model_dir), "--parent", "champion",
                         "--manifest", str(manifest), "--alias", "challenger", "--note", "tiny")  # fmt: skip
    assert code == 0, err
    code, out, _ = run(capsys, "models", "show", "challenger")
    shown = json.loads(out)
    assert shown["version"] == 2 and shown["lineage"]["parent_model"] == model_version(DEFAULT_MODEL_DIR)
    assert shown["lineage"][f"manifest:{manifest}"] and shown["lineage"]["code_commit"]
    assert run(capsys, "models", "promote", "2")[0] == 0
    code, out, _ = run(capsys, "models", "list", "--json")
    assert {v["version"]: v["aliases"] for v in json.loads(out)} == {2: ["champion"], 1: ["previous"]}
    code, _, err = run(capsys, "models", "rollback")
    assert code == 0 and "another rollback would make it champion again" in err
    assert "previous is version 2" in err  # two rollbacks in a row flip back: it says so
    assert json.loads(run(capsys, "models", "show", "champion")[1])["version"] == 1
    code, _, err = run(capsys, "models", "show", "42")
    assert code == 2 and "no version '42'" in err
    code, _, err = run(capsys, "models", "register", str(tmp_path))
    assert code == 2 and "not a model folder" in err


def test_training_is_logged_to_mlflow_and_registered_with_its_lineage(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOICE_SEARCH_MLFLOW_DIR", str(tmp_path / "mlflow"))
    shutil.copy(SAMPLES_DIR / "fsdd_7_george_0.flac", tmp_path / "seven.flac")
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"audio": "seven.flac", "text": "seven", "duration_s": 0.6}) + "\n")
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--init", "scratch:tiny", "--train", str(data), "--dev", str(data),
            "--batch-size", "1", "--eval-every", "2", "--eval-clips", "1", "--warmup-steps", "1",
            "--device", "cpu"]  # fmt: skip
    code, stdout, err = run(capsys, *argv, "--steps", "4")
    assert code == 0, err
    run_id = json.loads(stdout)["mlflow_run_id"]
    code, stdout, err = run(capsys, *argv, "--steps", "6")  # resumed: the same MLflow run
    assert json.loads(stdout)["mlflow_run_id"] == run_id

    registry = Registry.embedded(tmp_path / "mlflow", "voice-search")
    logged = registry.client.get_run(run_id)
    assert logged.data.params["batch_size"] == "1" and logged.data.params["train.0.manifest"] == str(data)
    losses = registry.client.get_metric_history(run_id, "loss")
    assert [m.step for m in losses] == [2, 4, 6]
    assert {"dev_wer", "dev_cer"} <= set(logged.data.metrics)
    assert logged.data.tags[f"manifest:{data}"]
    artifacts = {a.path for a in registry.client.list_artifacts(run_id)}
    assert {"metrics.jsonl", "config.json"} <= artifacts

    code, _, err = run(capsys, "models", "register", str(out / "checkpoint"), "--training-dir", str(out))
    assert code == 0, err
    version = registry.get(2)
    assert version.run_id == run_id
    assert version.lineage["training_run"] == run_id
    assert version.lineage[f"manifest:{data}"]


def test_a_first_models_list_prints_only_the_list(tmp_path: Path) -> None:
    """MLflow's own start-up lines ("Creating initial MLflow database tables...") are not ours to print."""
    exe = Path(sys.executable).with_name("voice-search")
    env = os.environ | {"VOICE_SEARCH_MLFLOW_DIR": str(tmp_path / "mlflow")}
    done = subprocess.run([str(exe), "models", "list"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert " champion " in done.stdout and "MLflow" not in done.stderr, done.stderr


def test_a_sqlite_tracking_uri_keeps_its_artifacts_beside_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    """Not in a `mlruns/` folder of whatever directory the command ran from."""
    store = tmp_path / "elsewhere" / "mlflow.db"
    store.parent.mkdir()
    monkeypatch.chdir(tmp_path)
    registry = Registry(f"sqlite:///{store}", "voice-search")
    registry.register(tiny_model_dir)
    assert not (tmp_path / "mlruns").exists()
    assert any((tmp_path / "elsewhere" / "artifacts").rglob("model.safetensors"))
