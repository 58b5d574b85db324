"""The real recordings in shared/data, split by speaker into train and dev.

The project is judged on people it never heard, so no dev speaker's voice may reach training.
Every set with enough speakers gives about a fifth of them (at least one) to dev, chosen by a
stable hash of set and speaker; sets of one speaker, and sets too small to teach anything, are
dev only. `_silence_` noise clips have no speaker: they split by file name, so half the noise
stays unheard for measuring false speech.

Speech Commands is special: the step-8,000 model (bundled 2026-11-27) trained on the half of its
speakers whose `legacy_half` is "train". Its dev speakers are drawn from the other half only, so
they are unseen by that model and by everything fine-tuned from it. FSDD cannot be split that way:
that model heard all six FSDD speakers (indices 5-49 of every digit), so the FSDD dev speaker is
new only to models trained from scratch.
"""

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr.errors import DataError
from asr.manifest import ManifestEntry

SILENCE_LABEL = "_silence_"


@dataclass(frozen=True)
class RealSet:
    name: str
    dev_fraction: float
    """Share of the set's speakers kept for dev; 1.0 makes the set dev only."""
    dev_pool: str | None = None
    """Restrict dev speakers to this `legacy_half` (see the module docstring)."""


REAL_SETS = (
    RealSet("speech_commands_dev", 0.2, dev_pool="test"),
    RealSet("speechocean762_train", 0.2),
    RealSet("fsdd", 0.2),
    RealSet("wake_words_mycroft", 0.25),
    # 40 clips of 33 speakers: too few to teach, just enough to test on.
    RealSet("an4_sample", 1.0),
    RealSet("vctk_p239", 1.0),
    RealSet("cathy_arctic", 1.0),
)
REAL_SET_NAMES = tuple(s.name for s in REAL_SETS)


def stable_hash(*parts: object) -> int:
    """The same number on every machine and Python (unlike `hash`); the corpus seeds with it too."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def legacy_half(speaker: str) -> str:
    """The Speech Commands half a speaker fell in before this split (the bundled model's training)."""
    return "train" if stable_hash("speaker", speaker) % 2 == 0 else "test"


def noise_split(name: str) -> str:
    return "train" if stable_hash("noise", name) % 2 == 0 else "test"


def dev_speakers(real_set: RealSet, speakers: Iterable[str]) -> frozenset[str]:
    """The set's dev speakers: the lowest-hashing fifth (or `dev_fraction`), at least one."""
    everyone = sorted(set(speakers))
    if real_set.dev_fraction >= 1.0:
        return frozenset(everyone)
    pool = [s for s in everyone if real_set.dev_pool is None or legacy_half(s) == real_set.dev_pool]
    count = max(1, round(len(everyone) * real_set.dev_fraction))
    return frozenset(sorted(pool, key=lambda s: stable_hash(real_set.name, s))[:count])


def read_set(shared_data: Path, name: str, relative_to: Path | None = None) -> list[dict[str, Any]]:
    """A set's manifest rows with `set` added; audio paths relative to `relative_to` if given."""
    folder = shared_data / name
    try:
        lines = (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"cannot read the real set {name}: {e}") from e
    rows = []
    for line in lines:
        row = json.loads(line)
        audio = folder / row["audio"]
        row["audio"] = os.path.relpath(audio, relative_to) if relative_to else str(audio)
        row["set"] = name
        rows.append(row)
    return rows


def is_silence(row: dict[str, Any]) -> bool:
    return row.get("label") == SILENCE_LABEL


@dataclass(frozen=True)
class SpeakerSplit:
    """Which rows of the real sets train and which are dev, by set."""

    train: dict[str, list[dict[str, Any]]]
    dev: dict[str, list[dict[str, Any]]]
    dev_speakers: dict[str, frozenset[str]]


def split_real_sets(shared_data: Path, relative_to: Path | None = None) -> SpeakerSplit:
    """Split every real set present under `shared_data` by speaker (see the module docstring)."""
    train: dict[str, list[dict[str, Any]]] = {}
    dev: dict[str, list[dict[str, Any]]] = {}
    held: dict[str, frozenset[str]] = {}
    for real_set in REAL_SETS:
        if not (shared_data / real_set.name / "manifest.jsonl").is_file():
            continue
        rows = read_set(shared_data, real_set.name, relative_to)
        held[real_set.name] = dev_speakers(real_set, (r["speaker"] for r in rows if not is_silence(r)))
        train[real_set.name], dev[real_set.name] = [], []
        for row in rows:
            if is_silence(row):
                to_dev = noise_split(Path(row["audio"]).name) == "test"
            else:
                to_dev = row["speaker"] in held[real_set.name]
            (dev if to_dev else train)[real_set.name].append(row)
    return SpeakerSplit(train, dev, held)


def dev_entries(shared_data: Path) -> dict[str, list[ManifestEntry]]:
    """Each real set's dev split as evaluation entries (audio resolved), in manifest order."""
    return {
        name: [
            ManifestEntry(
                Path(row["audio"]).resolve(),
                row["text"],
                {k: str(v) for k, v in row.items() if k not in ("audio", "text")},
            )
            for row in rows
        ]
        for name, rows in split_real_sets(shared_data).dev.items()
        if rows
    }


def dev_clips(shared_data: Path) -> frozenset[Path]:
    """Resolved paths of every dev clip (speech of dev speakers and dev noise): none may train.
    Matching by path catches a dev clip whatever manifest, or field names, brought it in."""
    split = split_real_sets(shared_data)
    return frozenset(Path(r["audio"]).resolve() for rows in split.dev.values() for r in rows)


def write_real_manifests(shared_data: Path, out_dir: Path) -> dict[str, int]:
    """`real_train.jsonl` (every set's train speakers) and `real_dev_<set>.jsonl` per set, plus
    `real_dev.jsonl` with all of them; audio paths are relative to `out_dir`. Returns row counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    split = split_real_sets(shared_data, relative_to=out_dir)
    outputs = {"real_train": [r for rows in split.train.values() for r in rows]}
    outputs["real_dev"] = [r for rows in split.dev.values() for r in rows]
    outputs |= {f"real_dev_{name}": rows for name, rows in split.dev.items()}
    for name, rows in outputs.items():
        with (out_dir / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return {name: len(rows) for name, rows in outputs.items()}
