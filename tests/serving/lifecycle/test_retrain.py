"""The retraining loop with real parts: labels on real clips, a real MLflow store, a few CPU
training steps on the tiny model, real side-by-side evaluation, the gate, the audit log.

The tiny champion is random: it babbles (WER above 100%). A few CTC steps teach it silence
first (WER 100%), which is a real improvement, so the loop's challenger passes; with the
learning rate at zero it is the champion again and the gate must refuse it."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.corpus.datasets import freeze_golden
from asr.manifest import read_manifest
from asr.pipeline import build_pipeline
from asr.training import DataSource, TrainConfig, export_model, train
from serving.cli import main
from serving.lifecycle.audit import AuditLog
from serving.lifecycle.registry import CHALLENGER, CHAMPION, Registry
from serving.lifecycle.retrain import MIN_HELD_OUT, evaluate_pair, split_labels
from serving.lifecycle.retrain_gate import NEW_DATA, Check, GateLimits, PairScores, judge_retrain, sign_test_p
from serving.settings import Settings
from tests.signals import SAMPLES_DIR


@pytest.fixture
def labels(tmp_path: Path) -> Path:
    """12 labelled clips in 12 sessions: the four real samples, each also quieter and later."""
    folder = tmp_path / "labels"
    (folder / "audio").mkdir(parents=True)
    rows = []
    for line in (SAMPLES_DIR / "manifest.jsonl").read_text().splitlines():
        sample = json.loads(line)
        audio, rate = sf.read(SAMPLES_DIR / sample["audio"], dtype="float32")
        for variant in range(3):
            name = f"audio/{variant}_{sample['audio']}"
            lead = np.zeros(int(0.1 * variant * rate), dtype=np.float32)
            sf.write(folder / name, np.concatenate([lead, audio * (1 - 0.2 * variant)]), rate)
            session = f"s{variant}-{sample['audio']}"
            rows.append({"audio": name, "text": sample["text"], "session_id": session, "strength": "strong"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture
def setup(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny model as champion of a fresh registry, the samples frozen as a golden set."""
    monkeypatch.setenv("VOICE_SEARCH_MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("VOICE_SEARCH_MLFLOW_DIR", str(tmp_path / "mlflow"))
    monkeypatch.setenv("VOICE_SEARCH_GOLDEN_DIR", str(tmp_path / "golden"))
    monkeypatch.setenv("VOICE_SEARCH_DB_PATH", str(tmp_path / "var" / "events.sqlite3"))
    freeze_golden(SAMPLES_DIR / "manifest.jsonl", "samples", tmp_path / "golden")
    return tmp_path


def retrain_args(labels: Path, out: Path, lr: str) -> list[str]:
    replay = SAMPLES_DIR / "manifest.jsonl"
    return ["retrain", "--labels", str(labels), "--replay", f"{replay}:0.5", "--out", str(out), "--steps",
            "20", "--batch-size", "2", "--lr", lr, "--held-out", "0.5", "--max-rtf-ratio", "3"]  # fmt: skip


def test_split_keeps_sessions_whole_and_never_moves(labels: Path, tmp_path: Path) -> None:
    train_path, held = split_labels(labels / "manifest.jsonl", tmp_path / "a", held_out=0.5, seed=0)
    again = split_labels(labels / "manifest.jsonl", tmp_path / "b", held_out=0.5, seed=0)
    assert held.read_text() == again[1].read_text()
    sessions = [{json.loads(r)["session_id"] for r in p.read_text().splitlines()} for p in (train_path, held)]
    assert sessions[0].isdisjoint(sessions[1]) and len(sessions[0] | sessions[1]) == 12
    assert all(e.audio.is_file() for e in read_manifest(held))
    with pytest.raises(Exception, match="too few"):
        split_labels(labels / "manifest.jsonl", tmp_path / "c", held_out=0.99, seed=0)
    # However small the share, the gate gets at least MIN_HELD_OUT sessions to score on.
    _, few = split_labels(labels / "manifest.jsonl", tmp_path / "d", held_out=0.01, seed=0)
    assert len(few.read_text().splitlines()) == MIN_HELD_OUT


def test_the_loop_registers_a_better_challenger(
    setup: Path, labels: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = setup / "retrain"
    assert main(retrain_args(labels, out, lr="3e-3")) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["passed"] and summary["registered"]["version"] == 2
    assert summary["golden_sets"][0].startswith("samples@")
    report = json.loads((out / "report.json").read_text())
    new_data = next(s for s in report["scores"] if s["name"] == NEW_DATA)
    assert new_data["challenger"]["overall"]["wer"] < new_data["champion"]["overall"]["wer"]
    assert len(report["datasets"]) == 4  # train split, held-out split, replay, golden set
    assert json.loads((out / "train" / "config.json").read_text())["lr"] == 3e-3  # --lr over the default

    registry = Registry.embedded(setup / "mlflow", "voice-search")
    challenger = registry.get(CHALLENGER)
    assert challenger.version == 2 and registry.get(CHAMPION).version == 1
    lineage = challenger.lineage
    assert lineage["training_run"] == report["training_run"] and "v1" in lineage["parent_model"]
    assert any(key.startswith("manifest:") and key.endswith("train.jsonl") for key in lineage)
    run = registry.client.get_run(report["training_run"])
    assert run.data.tags["gate"] == "passed" and "samples@" in run.data.tags["gate.golden_sets"]
    entries = AuditLog(setup / "var" / "audit.sqlite3").entries()
    assert entries[0].action == "retrain_registered" and entries[0].details["registered"]["version"] == 2


def test_the_gate_refuses_a_challenger_that_is_not_better(
    setup: Path, labels: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(retrain_args(labels, setup / "retrain", lr="0")) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["registered"] is None
    assert any(reason.startswith(f"{NEW_DATA} WER") for reason in summary["reasons"])
    registry = Registry.embedded(setup / "mlflow", "voice-search")
    assert [v.version for v in registry.versions()] == [1]  # nothing registered
    report = json.loads((setup / "retrain" / "report.json").read_text())
    tags = registry.client.get_run(report["training_run"]).data.tags
    assert tags["gate"] == "rejected" and f"{NEW_DATA} WER" in tags["gate.reasons"]
    entry = AuditLog(setup / "var" / "audit.sqlite3").entries()[0]
    assert entry.action == "retrain_rejected" and entry.details["reasons"] == summary["reasons"]


def test_the_gate_rejects_a_worse_model_on_a_golden_set(
    tiny_model_dir: Path, labels: Path, tmp_path: Path
) -> None:
    """Real models, real evaluation: the trained (silent) model is champion, the babbling
    random one the challenger; the golden set gets worse and the gate says so."""
    config = TrainConfig(
        out_dir=tmp_path / "run", init=str(tiny_model_dir), train=(DataSource(labels / "manifest.jsonl"),),
        steps=20, batch_size=2, lr=3e-3, warmup_steps=2, curriculum_steps=0, device="cpu",
    )  # fmt: skip
    train(config, log=lambda _: None)
    silent = export_model(tmp_path / "run" / "checkpoint", tmp_path / "silent")
    golden = freeze_golden(SAMPLES_DIR / "manifest.jsonl", "samples", tmp_path / "golden")
    champion, challenger = build_pipeline(silent, device="cpu"), build_pipeline(tiny_model_dir, device="cpu")
    pair = evaluate_pair(golden.ref, read_manifest(golden.manifest), champion, challenger, ("set",))
    sizes = {CHAMPION: 100, CHALLENGER: 100}
    decision = judge_retrain([pair], sizes, GateLimits(max_rtf_ratio=100, min_slice_clips=1), [golden.ref])
    assert not decision.passed
    assert any(reason.startswith(f"{golden.ref} WER") for reason in decision.reasons)
    overall = pair.paired["overall"]
    assert len(overall) == len(read_manifest(golden.manifest))
    words = sum(w for _, _, w in overall)
    assert sum(b for _, b, _ in overall) / words == pytest.approx(pair.challenger["overall"]["wer"])
    assert sum(a for a, _, _ in overall) / words == pytest.approx(pair.champion["overall"]["wer"])
    assert any(reason.startswith(f"{golden.ref} set=fsdd WER") for reason in decision.reasons)


def scores(name: str, wer: tuple[float, float], slices: dict[str, tuple[float, float, int]] | None = None,
           rtf: tuple[float, float] = (0.1, 0.1)) -> PairScores:  # fmt: skip
    def side(i: int) -> dict[str, object]:
        by = {k: {"wer": v[i], "utterances": v[2]} for k, v in (slices or {}).items()}
        return {
            "overall": {"wer": wer[i], "utterances": 50},
            "slices": {"speaker": by},
            "real_time_factor": rtf[i],
        }

    return PairScores(name, side(0), side(1))


def test_gate_rules() -> None:
    limits = GateLimits(golden_margin=0.02, min_slice_clips=20, max_rtf_ratio=1.3, max_size_ratio=1.1)
    sizes = {CHAMPION: 100, CHALLENGER: 105}
    good = [
        scores(NEW_DATA, (0.5, 0.3)),
        scores("g@1", (0.40, 0.41), {"a": (0.2, 0.5, 5), "b": (0.3, 0.31, 40)}),
    ]
    decision = judge_retrain(good, sizes, limits, ["g@1"])
    assert decision.passed, decision.reasons  # slice a is worse but has too few clips to judge
    assert any(c.name == "g@1 speaker=a WER" and not c.judged for c in decision.checks)

    worse_slice = [good[0], scores("g@1", (0.40, 0.41), {"b": (0.3, 0.33, 40)})]
    assert judge_retrain(worse_slice, sizes, limits, ["g@1"]).reasons == [
        "g@1 speaker=b WER: challenger 0.33 vs champion 0.3 (at most +0.020)"
    ]
    not_better = [scores(NEW_DATA, (0.5, 0.5)), good[1]]
    assert not judge_retrain(not_better, sizes, limits, ["g@1"]).passed
    slow = [scores(NEW_DATA, (0.5, 0.3), rtf=(0.1, 0.2)), good[1]]
    assert [c.name for c in judge_retrain(slow, sizes, limits, []).checks if c.judged and not c.passed] == [
        "real-time factor"
    ]
    big = judge_retrain(good, {CHAMPION: 100, CHALLENGER: 120}, limits, [])
    assert [c.name for c in big.checks if c.judged and not c.passed] == ["size (bytes)"]
    assert isinstance(big.checks[0], Check)


def test_retrain_refuses_bad_setups(setup: Path, labels: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(setup / "golden")
    assert main(retrain_args(labels, setup / "r1", lr="1e-3")) == 2
    assert "needs at least one golden set" in capsys.readouterr().err
    args = [*retrain_args(labels, setup / "r2", lr="1e-3"), "--replay", str(setup / "nowhere.jsonl")]
    assert main(args) == 2
    assert "no replay manifest" in capsys.readouterr().err
    assert main([*retrain_args(labels, setup / "r3", lr="1e-3"), "--deploy", "shadow"]) == 2
    assert "--deploy needs --server" in capsys.readouterr().err


def test_a_regression_past_the_margin_fails_only_when_it_is_significant() -> None:
    limits = GateLimits(golden_margin=0.02, min_slice_clips=20, significance=0.05)
    sizes = {CHAMPION: 100, CHALLENGER: 100}
    new = scores(NEW_DATA, (0.5, 0.3))
    # 100 one-word clips, champion right on 70. Five more wrong, two more right: +3 points.
    noise = [(0, 1, 1)] * 5 + [(1, 0, 1)] * 2 + [(0, 0, 1)] * 63 + [(1, 1, 1)] * 30
    noisy = replace(scores("g@1", (0.30, 0.33)), paired={"overall": noise})
    decision = judge_retrain([new, noisy], sizes, limits, ["g@1"])
    assert decision.passed, decision.reasons
    check = next(c for c in decision.checks if c.name == "g@1 WER")
    assert check.p == pytest.approx(29 / 128)  # P(X >= 5), X ~ Binomial(7, 1/2)
    assert "sign test p 0.227" in check.limit
    # Twelve more wrong, one more right: +11 points, and the test agrees it is worse.
    worse = [(0, 1, 1)] * 12 + [(1, 0, 1)] + [(0, 0, 1)] * 57 + [(1, 1, 1)] * 30
    regressed = replace(scores("g@1", (0.30, 0.41)), paired={"overall": worse})
    decision = judge_retrain([new, regressed], sizes, limits, ["g@1"])
    assert not decision.passed
    assert decision.reasons[0].startswith("g@1 WER: challenger 0.41 vs champion 0.3 (at most +0.020, or not")
    # Three clips worse and none better: no outcome of three coin tosses is significant (1/8),
    # so the test has no say and the margin alone rejects.
    few = [(0, 1, 1)] * 3 + [(0, 0, 1)] * 67 + [(1, 1, 1)] * 30
    decision = judge_retrain([new, replace(noisy, paired={"overall": few})], sizes, limits, ["g@1"])
    assert decision.reasons == [
        "g@1 WER: challenger 0.33 vs champion 0.3 (at most +0.020; 3 clips worse and 0 better, too few "
        "for a sign test; one word of 100 is 1.0 points)"
    ]
    # A slice is judged on its own clips.
    by_slice = replace(
        scores("g@1", (0.30, 0.31), {"x": (0.30, 0.41, 100)}), paired={"overall": noise, "speaker=x": worse}
    )
    assert [c.name for c in judge_retrain([new, by_slice], sizes, limits, []).checks if not c.passed] == [
        "g@1 speaker=x WER"
    ]


def test_the_sign_test() -> None:
    assert sign_test_p([(1, 1, 2), (0, 0, 1)] * 10) == 1.0  # no clip differs
    assert sign_test_p([(0, 1, 1)] * 10) == pytest.approx(2**-10)
    assert sign_test_p([(0, 3, 4), (2, 0, 2)]) == pytest.approx(0.75)  # P(X >= 1), X ~ Bin(2, 1/2)
    assert sign_test_p([(1, 0, 1)] * 5) == 1.0  # only better
    assert sign_test_p([]) == 1.0


def test_the_new_labels_weight_is_a_setting() -> None:
    assert Settings.from_env({"VOICE_SEARCH_RETRAIN_NEW_WEIGHT": "0.25"}).retrain_new_weight == 0.25
    assert Settings.from_env({}).retrain_new_weight == 0.5  # the recipe that passed the gate
    with pytest.raises(ValueError, match="retrain_new_weight must be positive"):
        Settings.from_env({"VOICE_SEARCH_RETRAIN_NEW_WEIGHT": "0"})


def test_the_frozen_layers_of_a_retrain_are_a_setting() -> None:
    assert Settings.from_env({"VOICE_SEARCH_RETRAIN_FREEZE_LAYERS": "3"}).retrain_freeze_layers == 3
    assert Settings.from_env({}).retrain_freeze_layers == 1  # the front end and layer 0 (docs/benchmarks.md)
    with pytest.raises(ValueError, match="retrain_freeze_layers must be >= 0"):
        Settings.from_env({"VOICE_SEARCH_RETRAIN_FREEZE_LAYERS": "-1"})
