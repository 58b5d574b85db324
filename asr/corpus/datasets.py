"""Dataset versions: a content hash for any manifest, and frozen golden sets.

A manifest's version is its content, not its bytes: the sha256 over each row's normalized text and
the sha256 of its audio, order-free. Moving the audio or reordering rows keeps the version;
changing one label or one sample changes it. Every training run records the versions it used.

A golden set is an evaluation manifest frozen once (`voice-search data freeze`): its rows and
audio are copied into a folder of their own, made read-only, and its version is written beside
them. Every later use checks the version first, so a regression gate always names exactly what it
measured and refuses a set that changed.
"""

import hashlib
import json
import random
import shutil
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from asr.errors import DataError
from asr.manifest import ManifestEntry, read_manifest
from asr.text import normalize_text

GOLDEN_FILE = "golden.json"
MANIFEST = "manifest.jsonl"


def dataset_digest(manifest: Path) -> str:
    """The content version of a manifest (see the module doc); raises `DataError` for missing audio."""
    return _digest(read_manifest(manifest))


def _digest(entries: list[ManifestEntry]) -> str:
    rows = []
    for entry in entries:
        try:
            audio = hashlib.sha256(entry.audio.read_bytes()).hexdigest()
        except OSError as e:
            raise DataError(f"cannot hash {entry.audio}: {e}") from e
        rows.append(hashlib.sha256(f"{normalize_text(entry.text)}\t{audio}".encode()).hexdigest())
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


@dataclass(frozen=True)
class GoldenSet:
    name: str
    digest: str
    rows: int
    source: str
    """The manifest it was frozen from."""
    frozen_at: float
    folder: Path

    @property
    def manifest(self) -> Path:
        return self.folder / MANIFEST

    @property
    def ref(self) -> str:
        """How gates name it: `name@` and the first 12 hex digits of its version."""
        return f"{self.name}@{self.digest[:12]}"


def freeze_golden(
    source: Path, name: str, root: Path, max_clips: int | None = None, seed: int = 0
) -> GoldenSet:
    """Copy `source` (or a seeded sample of `max_clips` rows) into `root/name`, read-only."""
    if not name or "/" in name or name.startswith("."):
        raise DataError(f"a golden set needs a plain folder name, not {name!r}")
    folder = root / name
    if folder.exists():
        raise DataError(f"the golden set {name} is already frozen at {folder}; a frozen set never changes")
    entries = read_manifest(source)
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    chosen = (
        sorted(random.Random(seed).sample(range(len(lines)), max_clips))
        if max_clips and max_clips < len(lines)
        else range(len(lines))
    )
    tmp = folder.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "audio").mkdir(parents=True)
    rows = []
    for n in chosen:
        row, entry = json.loads(lines[n]), entries[n]
        if not entry.audio.is_file():
            shutil.rmtree(tmp)
            raise DataError(f"{source}:{n + 1}: no audio at {entry.audio}")
        row["audio"] = f"audio/{n:06d}{entry.audio.suffix}"
        shutil.copyfile(entry.audio, tmp / row["audio"])
        rows.append(json.dumps(row))
    (tmp / MANIFEST).write_text("\n".join(rows) + "\n", encoding="utf-8")
    golden = GoldenSet(name, dataset_digest(tmp / MANIFEST), len(rows), str(source), time.time(), folder)
    record = {k: v for k, v in asdict(golden).items() if k != "folder"}
    (tmp / GOLDEN_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    for path in tmp.rglob("*"):
        if path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    tmp.rename(folder)
    return golden


def load_golden(folder: Path) -> GoldenSet:
    """A frozen set, its content checked against the version written when it was frozen."""
    try:
        record = json.loads((folder / GOLDEN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"not a golden set (no readable {GOLDEN_FILE}): {folder}") from e
    golden = GoldenSet(**record, folder=folder)
    found = dataset_digest(golden.manifest)
    if found != golden.digest:
        raise DataError(
            f"the golden set {golden.name} changed since it was frozen "
            f"({golden.digest[:12]} -> {found[:12]}); freeze a new set under a new name instead"
        )
    return golden


def golden_sets(root: Path) -> list[GoldenSet]:
    """Every golden set under `root`, checked, by name."""
    if not root.is_dir():
        return []
    return [load_golden(d) for d in sorted(root.iterdir()) if (d / GOLDEN_FILE).is_file()]
