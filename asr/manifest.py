"""Manifests: JSON Lines of labelled clips, in the format of ../shared/data.

Each row has `audio` (a path relative to the manifest's folder), `text` (the reference), and any
other fields (`speaker`, `voice`, `snr_db`, ...), kept as strings: evaluation slices by them,
training and the corpus filter by them.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asr.errors import ManifestError


@dataclass(frozen=True)
class ManifestEntry:
    """One labelled clip: resolved audio path, reference text, and its other fields as strings."""

    audio: Path
    text: str
    fields: Mapping[str, str] = field(default_factory=dict)


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Parse a JSONL manifest; raises `ManifestError` naming the first bad line."""
    manifest = Path(path)
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read manifest {manifest}: {e}") from e
    entries = [_entry(line, n, manifest) for n, line in enumerate(lines, 1) if line.strip()]
    if not entries:
        raise ManifestError(f"the manifest {manifest} has no entries")
    return entries


def select_entries(entries: Sequence[ManifestEntry], conditions: Sequence[str]) -> list[ManifestEntry]:
    """The entries whose fields match every `FIELD=VALUE` condition; raises `ManifestError` for a
    malformed condition."""
    selected = list(entries)
    for condition in conditions:
        key, sep, value = condition.partition("=")
        if not sep:
            raise ManifestError(f"a row filter takes FIELD=VALUE, got {condition!r}")
        selected = [e for e in selected if e.fields.get(key) == value]
    return selected


def _entry(line: str, number: int, manifest: Path) -> ManifestEntry:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{manifest}:{number}: not valid JSON ({e.msg})") from e
    if (
        not isinstance(row, dict)
        or not isinstance(row.get("audio"), str)
        or not isinstance(row.get("text"), str)
    ):
        raise ManifestError(f"{manifest}:{number}: each row needs string fields 'audio' and 'text'")
    audio = manifest.parent / row["audio"]
    fields = {k: str(v) for k, v in row.items() if k not in ("audio", "text")}
    return ManifestEntry(audio=audio, text=row["text"], fields=fields)
