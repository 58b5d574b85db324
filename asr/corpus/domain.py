"""Domain packs: a catalog of things people search for, and query templates that mention them.

A pack is a folder with `catalog.jsonl` (one entry per line: `id`, `title`, `aliases`, `fields`)
and `templates.json` (`slots` name catalog filters, `intents` list templates with `{slot}`
placeholders, `extra_words` lists the domain's other words). data/README.md documents the format.
"""

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asr.decoding import BeamOptions
from asr.errors import DataError
from asr.spotting import SpotOptions
from asr.text import normalize_text

_SLOT = re.compile(r"\{(\w+)\}")
_MIN_CARRIER_CHARS = 5


@dataclass(frozen=True)
class CatalogEntry:
    """One searchable item; `names` are the title and aliases a user may say."""

    id: str
    title: str
    aliases: tuple[str, ...] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.title, *self.aliases)


@dataclass(frozen=True)
class Query:
    """A query expanded from a template: normalized `text`, its intent and the entries it names."""

    text: str
    intent: str
    template: str
    entry_ids: tuple[str, ...]


@dataclass(frozen=True)
class DomainPack:
    name: str
    catalog: tuple[CatalogEntry, ...]
    slots: Mapping[str, Mapping[str, str]]
    intents: Mapping[str, tuple[str, ...]]
    extra_words: tuple[str, ...]

    @classmethod
    def load(cls, folder: str | Path) -> "DomainPack":
        """Read and validate a pack; raises `DataError` naming the file and line at fault."""
        root = Path(folder)
        catalog = tuple(_read_catalog(root / "catalog.jsonl"))
        try:
            spec = json.loads((root / "templates.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read {root / 'templates.json'}: {e}") from e
        slots = {str(k): {str(a): str(b) for a, b in v.items()} for k, v in spec.get("slots", {}).items()}
        intents = {str(k): tuple(map(str, v)) for k, v in spec.get("intents", {}).items()}
        for intent, templates in intents.items():
            for template in templates:
                unknown = set(_SLOT.findall(template)) - set(slots)
                if unknown:
                    raise DataError(
                        f"template {template!r} ({intent}) uses undefined slots {sorted(unknown)}"
                    )
        pack = cls(
            str(spec.get("name", root.name)), catalog, slots, intents, tuple(spec.get("extra_words", ()))
        )
        for slot in slots:
            if not pack.entries_for(slot):
                raise DataError(f"slot {slot!r} matches no catalog entry")
        return pack

    def entries_for(self, slot: str) -> list[CatalogEntry]:
        wanted = self.slots[slot]
        return [e for e in self.catalog if all(str(e.fields.get(k)) == v for k, v in wanted.items())]

    def expand(self, count: int, seed: int) -> list[Query]:
        """`count` distinct queries drawn uniformly over intents, templates and entries (seeded)."""
        rng = np.random.default_rng(seed)
        templates = [(intent, t) for intent, ts in sorted(self.intents.items()) for t in ts]
        by_slot = {slot: self.entries_for(slot) for slot in self.slots}
        seen: dict[str, Query] = {}
        for _ in range(count * 20):
            if len(seen) == count:
                break
            intent, template = templates[int(rng.integers(len(templates)))]
            chosen: dict[str, CatalogEntry] = {}

            def fill(match: re.Match[str], chosen: dict[str, CatalogEntry] = chosen) -> str:
                entries = by_slot[match.group(1)]
                entry = entries[int(rng.integers(len(entries)))]
                chosen[match.group(1)] = entry
                return entry.names[int(rng.integers(len(entry.names)))]

            text = normalize_text(_SLOT.sub(fill, template))
            seen.setdefault(text, Query(text, intent, template, tuple(e.id for e in chosen.values())))
        return list(seen.values())

    def vocabulary(self) -> tuple[str, ...]:
        """Every word the domain can produce (catalog names, templates, extra words), normalized."""
        texts = [n for e in self.catalog for n in e.names]
        texts += [_SLOT.sub(" ", t) for ts in self.intents.values() for t in ts]
        texts += list(self.extra_words)
        return tuple(sorted({w for t in texts for w in normalize_text(t).split()}))

    def bias(self, beam_size: int = 16, hotword_weight: float = 1.0) -> BeamOptions:
        """Catalog-biased decoding: beam search over the domain's words, catalog names as hotwords."""
        return BeamOptions(
            beam_size=beam_size,
            lexicon=self.vocabulary(),
            hotwords=self.phrases(),
            hotword_weight=hotword_weight,
        )

    def spotting(
        self, char_bonus: float = SpotOptions.char_bonus, carrier_floor: float = SpotOptions.carrier_floor
    ) -> SpotOptions:
        """Spot the catalog's names in each query's emissions, for search to rank by, outside the
        frames the templates' carrier words take."""
        return SpotOptions(
            self.phrases(), char_bonus=char_bonus, carriers=self.carriers(), carrier_floor=carrier_floor
        )

    def carriers(self) -> tuple[str, ...]:
        """The templates' text between slots ("temperature in", "on the map"), normalized. Pieces
        under 5 characters ("to", "from") are left out, as is any piece a catalog name contains:
        closing their frames would hide names more often than it removes false ones."""
        names = self.phrases()
        pieces = {
            normalize_text(piece)
            for templates in self.intents.values()
            for template in templates
            for piece in _SLOT.split(template)[::2]  # split keeps the slot names at odd indices
        }
        return tuple(
            sorted(p for p in pieces if len(p) >= _MIN_CARRIER_CHARS and not any(p in n for n in names))
        )

    def phrases(self) -> tuple[str, ...]:
        """Normalized catalog names: the hotwords that bias recognition toward the catalog."""
        return tuple(sorted({normalize_text(n) for e in self.catalog for n in e.names} - {""}))


def _read_catalog(path: Path) -> list[CatalogEntry]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"cannot read catalog {path}: {e}") from e
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            entries.append(
                CatalogEntry(
                    str(row["id"]),
                    str(row["title"]),
                    tuple(map(str, row.get("aliases", ()))),
                    dict(row.get("fields", {})),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path}:{number}: a catalog row needs 'id' and 'title' ({e})") from e
    if not entries:
        raise DataError(f"the catalog {path} is empty")
    return entries
