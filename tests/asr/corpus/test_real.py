"""The real sets split by speaker, on the real recordings in ../shared/data: no dev speaker may
ever reach training, and training refuses a manifest that would bring one in."""

import json
import shutil
from pathlib import Path

import pytest

from asr.corpus.check import check_labels
from asr.corpus.real import (
    REAL_SETS,
    RealSet,
    dev_clips,
    dev_speakers,
    is_silence,
    legacy_half,
    split_real_sets,
    write_real_manifests,
)
from asr.errors import DataError
from asr.training import DataSource, TrainConfig, refuse_dev_clips, train


def rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_no_speaker_is_on_both_sides_of_any_set(shared_data: Path) -> None:
    split = split_real_sets(shared_data)
    assert set(split.train) == {s.name for s in REAL_SETS}
    for name in split.train:
        train = {r["speaker"] for r in split.train[name] if not is_silence(r)}
        dev = {r["speaker"] for r in split.dev[name] if not is_silence(r)}
        assert dev, name
        assert not train & dev, name
        assert dev == split.dev_speakers[name]


def test_every_set_with_enough_speakers_trains_and_the_rest_are_dev_only(shared_data: Path) -> None:
    split = split_real_sets(shared_data)
    for real_set in REAL_SETS:
        speakers = {r["speaker"] for r in split.train[real_set.name] + split.dev[real_set.name]}
        if real_set.dev_fraction >= 1.0:
            assert not split.train[real_set.name]
        else:
            assert split.train[real_set.name] and len(split.dev_speakers[real_set.name]) < len(speakers)
    assert len(split.dev_speakers["speechocean762_train"]) == 25  # a fifth of 125
    assert len(split.dev_speakers["fsdd"]) == 1


def test_speech_commands_dev_speakers_were_never_trained_on_by_the_bundled_model(shared_data: Path) -> None:
    held = split_real_sets(shared_data).dev_speakers["speech_commands_dev"]
    assert len(held) == 24
    assert {legacy_half(s) for s in held} == {"test"}


def test_noise_clips_split_by_name_into_both_sides(shared_data: Path) -> None:
    split = split_real_sets(shared_data)
    assert any(is_silence(r) for r in split.train["speech_commands_dev"])
    assert any(is_silence(r) for r in split.dev["speech_commands_dev"])


def test_the_split_is_stable() -> None:
    speakers = [f"s{i}" for i in range(40)]
    chosen = dev_speakers(RealSet("x", 0.2), speakers)
    assert len(chosen) == 8
    assert dev_speakers(RealSet("x", 0.2), reversed(speakers)) == chosen
    assert dev_speakers(RealSet("y", 0.2), speakers) != chosen  # each set draws its own


def test_written_manifests_point_at_real_files_and_hold_no_dev_clip(
    shared_data: Path, tmp_path: Path
) -> None:
    counts = write_real_manifests(shared_data, tmp_path)
    assert counts["real_train"] > 6000
    assert counts["real_dev"] == sum(v for k, v in counts.items() if k.startswith("real_dev_"))
    held = dev_clips(shared_data)
    train = rows(tmp_path / "real_train.jsonl")
    assert not [r for r in train if (tmp_path / str(r["audio"])).resolve() in held]
    dev = rows(tmp_path / "real_dev.jsonl")
    assert {(tmp_path / str(r["audio"])).resolve() for r in dev} == held
    assert (tmp_path / str(train[0]["audio"])).is_file()
    assert check_labels(tmp_path / "real_train.jsonl").ok


def test_training_refuses_a_manifest_with_a_dev_speaker(shared_data: Path, tmp_path: Path) -> None:
    write_real_manifests(shared_data, tmp_path)
    train_rows = rows(tmp_path / "real_train.jsonl")[:5]
    leaked = [r for r in rows(tmp_path / "real_dev_speechocean762_train.jsonl")][:2]
    # Copied elsewhere: the guard matches the clip, not the manifest's fields or location.
    moved = tmp_path / "moved"
    moved.mkdir()
    for row in leaked:
        del row["set"], row["speaker"]
    manifest = moved / "train.jsonl"
    manifest.write_text(
        "".join(json.dumps(r | {"audio": f"../{r['audio']}"}) + "\n" for r in train_rows + leaked)
    )
    with pytest.raises(DataError, match="holds 2 clips of dev speakers"):
        refuse_dev_clips(manifest, shared_data)
    with pytest.raises(DataError, match="dev speakers"):
        train(
            TrainConfig(out_dir=tmp_path / "run", init="scratch:tiny", train=(DataSource(manifest),), steps=1,
                        shared_data=shared_data, device="cpu"),
            log=lambda _: None,
        )  # fmt: skip
    clean = moved / "clean.jsonl"
    clean.write_text("".join(json.dumps(r | {"audio": f"../{r['audio']}"}) + "\n" for r in train_rows))
    refuse_dev_clips(clean, shared_data)  # no error
    shutil.rmtree(moved)
