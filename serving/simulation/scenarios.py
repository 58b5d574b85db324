"""A scenario (`data/scenarios/*.yml`): how much traffic, what the users are like, which server
settings are on, and what changes when (new items, a new device, a bad deploy)."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from monitoring.alarms import parse_duration

NEW_PLACES = (
    *("Tromso", "Ushuaia", "Kiruna", "Hobart", "Timbuktu", "Ouarzazate", "Chefchaouen", "Zermatt"),
    *("Hallstatt", "Bled", "Ilulissat", "Akureyri", "Narvik", "Rovaniemi", "Zakopane", "Dubrovnik"),
)
"""Places absent from the bundled catalog and from the model's training text: the new vocabulary."""
TEMPLATES = ("{}", "weather in {}", "hotels in {}", "directions to {}", "flights to {}", "tell me about {}")
CLEAN_SHARE = 0.4
"""Share of clips left clean, as in the training corpus (`CorpusConfig.clean_fraction`)."""


@dataclass(frozen=True)
class Change:
    at_s: float
    new_items: float | None = None
    """Share of sessions about the new places from `at_s` (after `over_s`, rising linearly)."""
    over_s: float = 0.0
    device: float | None = None
    """Share of sessions on a quiet 8 kHz microphone from `at_s`."""
    deploy: str | None = None
    """"degraded": canary a challenger that answers nothing, to `share` of sessions."""
    share: float = 0.05


@dataclass(frozen=True)
class Users:
    redo_max: int = 2
    correct: float = 0.3
    """Chance a user corrects a wrong transcript (a strong label for retraining)."""
    zipf: float = 1.1
    catalog_items: int = 40
    """Catalog items (in catalog order, the most populous first) users ask about."""
    voices: tuple[str, ...] = (
        "espeak:en-gb-scotland",
        "espeak:en-us-nyc",
        "flite:rms",
        "festival:ked_diphone",
    )


@dataclass(frozen=True)
class Reviewers:
    """The people who answer requests sent for review (automation partial, shadow, human_only)."""

    count: int = 0
    seconds_per_item: float = 30.0
    """Traffic seconds one reviewer needs per item: listen, correct, accept."""


@dataclass(frozen=True)
class Scenario:
    name: str
    duration_s: float
    rate: float
    """Sessions started per second of traffic time."""
    window_s: float = 60.0
    users: Users = field(default_factory=Users)
    reviewers: Reviewers = field(default_factory=Reviewers)
    changes: tuple[Change, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)
    """Server settings (`VOICE_SEARCH_*` without the prefix) for this scenario."""
    expect_alarms: tuple[str, ...] = ()
    """The alarms that should catch the scenario's change (time to detect is measured on them)."""
    description: str = ""
    concurrency: int = 4

    @property
    def shock_s(self) -> float | None:
        """Traffic seconds from the start to the first change (None: steady state)."""
        return min((c.at_s for c in self.changes), default=None)

    @classmethod
    def load(cls, path: Path) -> "Scenario":
        """Read a scenario file; raises ValueError naming the file for anything malformed."""
        try:
            return cls._parse(yaml.safe_load(path.read_text(encoding="utf-8")), path)
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"scenario {path}: {type(e).__name__}: {e}") from e

    @classmethod
    def _parse(cls, raw: Any, path: Path) -> "Scenario":
        if not isinstance(raw, dict):
            raise ValueError("a scenario is a mapping")  # noqa: TRY004 (a config error)
        changes = tuple(
            Change(
                at_s=parse_duration(c["at"]),
                new_items=c.get("new_items"),
                over_s=parse_duration(c.get("over", 0)),
                device=c.get("device"),
                deploy=c.get("deploy"),
                share=float(c.get("share", 0.05)),
            )
            for c in raw.get("changes", [])
        )
        users = raw.get("users", {})
        if "voices" in users:
            users["voices"] = tuple(users["voices"])
        return cls(
            name=str(raw.get("name", path.stem)),
            duration_s=parse_duration(raw["duration"]),
            rate=float(raw["rate"]),
            window_s=parse_duration(raw.get("window", "1m")),
            users=Users(**users),
            reviewers=Reviewers(**raw.get("reviewers", {})),
            changes=changes,
            settings={
                str(k): str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in raw.get("settings", {}).items()
            },
            expect_alarms=tuple(raw.get("expect_alarms", ())),
            description=str(raw.get("description", "")),
            concurrency=int(raw.get("concurrency", 4)),
        )

    def new_item_share(self, t: float) -> float:
        share = 0.0
        for change in sorted(self.changes, key=lambda c: c.at_s):
            if change.new_items is None or t < change.at_s:
                continue
            ramp = 1.0 if change.over_s <= 0 else min(1.0, (t - change.at_s) / change.over_s)
            share = change.new_items * ramp
        return share

    def device_share(self, t: float) -> float:
        shares = [c.device for c in self.changes if c.device is not None and t >= c.at_s]
        return shares[-1] if shares else 0.0
