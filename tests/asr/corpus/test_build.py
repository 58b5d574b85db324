import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.corpus.build import HELD_OUT_VOICES, CorpusConfig, build_corpus, plan_corpus
from asr.corpus.check import check_labels
from serving.settings import DEFAULT_DOMAIN_DIR
from tests.signals import noise


@pytest.fixture
def config(tmp_path: Path) -> CorpusConfig:
    tsv = tmp_path / "sentences.tsv"
    tsv.write_text(
        "id\ttext\n" + "".join(f"S{i}\tThe {i}th train left at {i} o'clock.\n" for i in range(1, 30))
    )
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    rows = []
    for i in range(4):
        sf.write(noise_dir / f"n{i}.flac", noise(1.0, amplitude=0.05, seed=i), 16000)
        rows.append({"audio": f"n{i}.flac", "text": "", "label": "_silence_"})
    (noise_dir / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return CorpusConfig(
        out_dir=tmp_path / "corpus", domain_dir=DEFAULT_DOMAIN_DIR, sentences_tsv=tsv,
        noise_manifest=noise_dir / "manifest.jsonl", queries=30, sentences=10, words=20,
        test_text_fraction=0.3, dev_text_fraction=0.1, workers=2,
    )  # fmt: skip


def test_plan_is_deterministic_and_holds_out_voices_and_texts(config: CorpusConfig) -> None:
    plan = plan_corpus(config, noise_names=["n0"])
    assert plan == plan_corpus(config, noise_names=["n0"])
    by_split: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for clip in plan:
        held_out = clip.voice.id.startswith(HELD_OUT_VOICES)
        assert held_out == (clip.split == "test"), clip
        if clip.source != "word":
            by_split[clip.split].append(clip.text)
    assert by_split["test"] and by_split["train"]
    assert not set(by_split["test"]) & set(by_split["train"])
    assert {c.source for c in plan} == {"query", "sentence", "word", "digits"}
    assert {c.voice.engine for c in plan} == {"espeak", "flite", "festival", "hibari"}
    assert len({c.id for c in plan}) == len(plan)


def test_build_writes_clips_and_manifests_and_resumes(config: CorpusConfig) -> None:
    counts = build_corpus(config)
    assert counts["failed"] == 0
    assert counts["train"] + counts["dev"] + counts["test"] == len(
        list((config.out_dir / "audio").glob("*.flac"))
    )
    rows = [json.loads(line) for line in (config.out_dir / "train.jsonl").read_text().splitlines()]
    row = rows[0]
    assert {
        "audio",
        "text",
        "duration_s",
        "engine",
        "voice",
        "noise",
        "snr_db",
        "gain_db",
        "narrowband",
        "split",
    } <= set(row)
    data, rate = sf.read(config.out_dir / row["audio"])
    assert rate == 16000 and len(data) / rate == pytest.approx(row["duration_s"], abs=0.01)
    assert np.abs(data).max() > 0
    for split in ("train", "dev", "test"):
        assert check_labels(config.out_dir / f"{split}.jsonl").ok

    mtimes = {p: p.stat().st_mtime_ns for p in (config.out_dir / "audio").glob("*.flac")}
    manifest = (config.out_dir / "train.jsonl").read_text()
    assert build_corpus(config) == counts
    assert {
        p: p.stat().st_mtime_ns for p in (config.out_dir / "audio").glob("*.flac")
    } == mtimes  # nothing re-rendered
    assert (config.out_dir / "train.jsonl").read_text() == manifest
