"""The loop, end to end: simulated users against a real server, with drift, a shock, a new
device or a bad deploy, and the service's monitors, retraining and rollout reacting.

A scenario (`data/scenarios/*.yml`) says how much traffic, what the users are like, which server
settings (automation, triggers) are on, and what changes when:
- `new_items`: the share of queries about places new to the users (in the catalog, never in the
  model's training text) jumps to `share` at `at` (a shock), or climbs to it `over` a span (drift);
- `device`: a share of users on a quiet 8 kHz microphone;
- `deploy: degraded`: an operator canaries a challenger that answers nothing (a bad deploy).

Users behave like users. Each session wants one catalog item (drawn by popularity, Zipf over the
catalog's order, or one of the new places), says a query about it in its own voice, clicks the
item when it is the top hit; otherwise it sometimes corrects the transcript (a strong label),
redoes the voice search up to `redo_max` times, and then types the query (switch to typing) and
clicks the item if the typed search finds it. Everything is seeded.

Event time runs faster than real time: each request carries its traffic time (`X-Event-Time`,
the server trusts it). While a retrain runs on the server the simulator sends nothing, so traffic
time stands still, and says so on the timeline.
"""

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from asr.audio import SAMPLE_RATE_HZ
from asr.corpus.augment import draw_spec
from asr.corpus.build import level_and_augment
from asr.corpus.tts import SynthesisError, Voice, all_engines
from monitoring.alarms import parse_duration
from serving.headers import EVENT_TIME_HEADER
from serving.simulation.replay import Clip, first_traffic_day, shift_clip, wav_bytes

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


@dataclass
class Request:
    """One request the simulator sent, as the timeline needs it."""

    at: float
    wall: float
    session: str
    kind: str
    """voice, redo, typed, click or correction."""
    status: int
    new_item: bool = False
    device: bool = False
    success: bool | None = None
    """Voice and typed searches: the intended item was the top hit."""
    null: bool | None = None
    latency_s: float | None = None
    slot: str | None = None
    to_people: bool = False
    """Answered 202: sent to a person instead of answered by the model."""


@dataclass
class Pause:
    at: float
    wall_s: float
    reason: str


@dataclass
class Run:
    scenario: Scenario
    start: float
    requests: list[Request] = field(default_factory=list)
    pauses: list[Pause] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    """What the simulator did as an operator (the bad deploy), with event times."""
    queue_times: list[float] = field(default_factory=list)
    """Traffic seconds each reviewed request waited, from the request to the accepted review."""


class Speaker:
    """Query audio as production would hear it from these voices: synthesized, at 16 kHz, levelled
    and augmented the way the training corpus is (so the input monitors judge the change a
    scenario makes, not the simulator's voices). Each (text, voice, take) is made once, seeded."""

    def __init__(self, seed: int) -> None:
        self.engines = all_engines()
        self.seed = seed
        self.cache: dict[tuple[str, str, int], Clip] = {}

    def clip(self, text: str, voice_id: str, take: int) -> Clip:
        key = (text, voice_id, take)
        if key not in self.cache:
            rng = np.random.default_rng([self.seed, take, *text.encode(), *voice_id.encode()])
            engine_name, _, name = voice_id.partition(":")
            voice = Voice(engine_name, name, rate=float(rng.uniform(0.9, 1.1)))
            samples, rate = self.engines[engine_name].synthesize(text, voice)
            spec = draw_spec(rng, (), clean=bool(rng.random() < CLEAN_SHARE))
            self.cache[key] = Clip(level_and_augment(samples, rate, spec, rng, None), SAMPLE_RATE_HZ, text)
        return self.cache[key]


class Simulator:
    def __init__(
        self,
        url: str,
        scenario: Scenario,
        catalog: Sequence[tuple[str, str]],
        new_items: Sequence[tuple[str, str]],
        admin_token: str,
        model_dir: Path,
        run_dir: Path,
        seed: int = 0,
    ) -> None:
        self.url, self.scenario, self.token, self.model_dir = url, scenario, admin_token, model_dir
        self.run_dir = run_dir
        self.catalog, self.new_items = list(catalog), list(new_items)
        self.rng = np.random.default_rng(seed)
        self.speaker = Speaker(seed)
        ranks = np.arange(1, len(self.catalog) + 1, dtype=float)
        self.popularity = ranks**-scenario.users.zipf / np.sum(ranks**-scenario.users.zipf)
        self.run = Run(scenario, start=first_traffic_day())
        self.done_changes: set[int] = set()
        self.for_review: dict[str, tuple[str, str]] = {}
        """Request id -> (what was said, the item wanted), for the simulated reviewers."""
        self.review_budget = 0.0
        self.reviewed_until = 0.0

    def at(self, t: float) -> float:
        return self.run.start + t

    async def post(
        self, client: httpx.AsyncClient, path: str, t: float, **kwargs: Any
    ) -> httpx.Response | None:
        headers = {EVENT_TIME_HEADER: f"{self.at(t):.3f}", **kwargs.pop("headers", {})}
        for _ in range(5):
            try:
                response = await client.post(path, headers=headers, timeout=300, **kwargs)
            except httpx.TransportError:
                await asyncio.sleep(0.5)
                continue
            if response.status_code != 503:
                return response
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
        return None

    def _log(
        self, t: float, session: str, kind: str, response: httpx.Response | None, **fields: Any
    ) -> Request:
        request = Request(
            self.at(t), time.time(), session, kind, response.status_code if response else 0, **fields
        )
        self.run.requests.append(request)
        return request

    async def session(self, client: httpx.AsyncClient, n: int, t: float) -> None:
        users = self.scenario.users
        rng = np.random.default_rng([n, 7])
        new = bool(rng.random() < self.scenario.new_item_share(t)) and bool(self.new_items)
        device = bool(rng.random() < self.scenario.device_share(t))
        item_id, title = (
            self.new_items[int(rng.integers(len(self.new_items)))]
            if new
            else self.catalog[int(rng.choice(len(self.catalog), p=self.popularity))]
        )
        text = str(rng.choice(TEMPLATES)).format(title).lower()
        voice = str(rng.choice(users.voices))
        session = f"{self.scenario.name}-{n}"
        for attempt in range(users.redo_max + 1):
            try:
                clip = await asyncio.to_thread(self.speaker.clip, text, voice, attempt)
            except SynthesisError:
                return
            if device:
                clip = shift_clip(shift_clip(clip, "narrowband", rng), "volume_drop", rng)
            at = t + 4.0 * attempt
            response = await self.post(
                client,
                "/v1/search",
                at,
                content=wav_bytes(clip),
                params={"session_id": session},
                headers={"Content-Type": "audio/wav"},
            )
            body = response.json() if response is not None and response.status_code in (200, 202) else {}
            hits = [h["id"] for h in body.get("hits") or []]
            success = bool(hits) and hits[0] == item_id
            self._log(
                at,
                session,
                "redo" if attempt else "voice",
                response,
                new_item=new,
                device=device,
                success=success,
                null=bool(body.get("null_transcript")),
                slot=body.get("slot"),
                latency_s=(body.get("timings_ms") or {}).get("total", 0) / 1000 or None,
            )
            if not body:
                return
            if body.get("sent_for_review"):
                self.for_review[body["request_id"]] = (text, item_id)
                self.run.requests[-1].to_people = True
                return  # a person answers this user
            if success:
                click = {
                    "request_id": body["request_id"],
                    "session_id": session,
                    "kind": "click",
                    "item_id": item_id,
                }
                self._log(
                    at + 2, session, "click", await self.post(client, "/v1/feedback", at + 2, json=click)
                )
                return
            if rng.random() < users.correct:
                fix = {
                    "request_id": body["request_id"],
                    "session_id": session,
                    "kind": "correction",
                    "corrected_text": text,
                }
                self._log(
                    at + 2, session, "correction", await self.post(client, "/v1/feedback", at + 2, json=fix)
                )
        at = t + 4.0 * (users.redo_max + 1)
        typed = await self.post(client, "/v1/search/text", at, json={"session_id": session, "query": text})
        body = typed.json() if typed is not None and typed.status_code == 200 else {}
        hits = [h["id"] for h in body.get("hits") or []]
        self._log(
            at,
            session,
            "typed",
            typed,
            new_item=new,
            device=device,
            success=bool(hits) and hits[0] == item_id,
        )
        if hits and item_id in hits:
            click = {
                "request_id": body["request_id"],
                "session_id": session,
                "kind": "click",
                "item_id": item_id,
            }
            self._log(at + 2, session, "click", await self.post(client, "/v1/feedback", at + 2, json=click))

    async def _admin(self, client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> None:
        headers = {"Authorization": f"Bearer {self.token}", "X-Actor": "simulated operator"}
        response = await client.post(path, json=body, headers=headers, timeout=300)
        response.raise_for_status()

    async def bad_deploy(self, client: httpx.AsyncClient, t: float, share: float) -> None:
        """An operator canaries a model that answers nothing: the gates must roll it back."""
        from serving.lifecycle.drills import silent_copy

        folder = self.run_dir / "degraded"
        if not folder.exists():
            await asyncio.to_thread(silent_copy, self.model_dir, folder)
        why = "scenario: a degraded model is deployed"
        await self._admin(client, "/v1/admin/rollout", {"mode": "off", "reason": why})
        await self._admin(client, "/v1/admin/challenger", {"model_dir": str(folder), "reason": why})
        await self._admin(
            client,
            "/v1/admin/rollout",
            {"mode": "canary", "canary_share": share, "auto": True, "reason": why},
        )
        self.run.notes.append(
            {"at": self.at(t), "what": f"bad deploy: a silent challenger enters the canary at {share:.0%}"}
        )

    async def review(self, client: httpx.AsyncClient, t: float) -> None:
        """The reviewers work through the queue, oldest first, at their pace in traffic time."""
        people = self.scenario.reviewers
        if not people.count:
            return
        self.review_budget += (t - self.reviewed_until) * people.count / people.seconds_per_item
        self.reviewed_until = t
        headers = {"Authorization": f"Bearer {self.token}", "X-Actor": "simulated reviewer",
                   EVENT_TIME_HEADER: f"{self.at(t):.3f}"}  # fmt: skip
        while self.review_budget >= 1:
            pending = (
                await client.get("/v1/review", params={"limit": 10}, headers=headers, timeout=60)
            ).json()
            items = [i for i in pending["items"] if i["request_id"] in self.for_review]
            if not items:
                self.review_budget = min(self.review_budget, 1.0)  # idle reviewers do not bank time
                return
            for item in items:
                if self.review_budget < 1:
                    return
                text, item_id = self.for_review.pop(item["request_id"])
                accepted = await client.post(f"/v1/review/{item['id']}", headers=headers, timeout=60,
                                             json={"transcript": text, "item_id": item_id})  # fmt: skip
                if accepted.status_code == 200:
                    self.run.queue_times.append(self.at(t) - item["created_at"])
                self.review_budget -= 1

    async def wait_for_retrain(self, client: httpx.AsyncClient, t: float) -> None:
        """Hold traffic time still while the server retrains (it runs at CPU speed, not traffic speed)."""
        state = (await client.get("/v1/retrain", timeout=30)).json()
        if not any(r["returncode"] is None for r in state.get("runs", [])):
            return
        started = time.monotonic()
        while any(r["returncode"] is None for r in state.get("runs", [])):
            await asyncio.sleep(2.0)
            state = (await client.get("/v1/retrain", timeout=30)).json()
        self.run.pauses.append(Pause(self.at(t), time.monotonic() - started, "retraining"))

    async def simulate(self) -> Run:
        scenario = self.scenario
        total = int(scenario.duration_s * scenario.rate)
        limits = httpx.Limits(max_connections=scenario.concurrency * 2)
        async with httpx.AsyncClient(base_url=self.url, limits=limits) as client:
            gate = asyncio.Semaphore(scenario.concurrency)

            async def one(n: int, t: float) -> None:
                async with gate:
                    await self.session(client, n, t)

            tasks: list[asyncio.Task[None]] = []
            for n in range(total):
                t = n / scenario.rate
                for i, change in enumerate(scenario.changes):
                    if change.deploy and i not in self.done_changes and t >= change.at_s:
                        await asyncio.gather(*tasks)
                        tasks = []
                        self.done_changes.add(i)
                        await self.bad_deploy(client, t, change.share)
                tasks.append(asyncio.create_task(one(n, t)))
                if len(tasks) >= scenario.concurrency * 4:
                    await asyncio.gather(*tasks)
                    tasks = []
                    await self.review(client, t)
                    await self.wait_for_retrain(client, t)
            await asyncio.gather(*tasks)
        return self.run


def catalog_items(domain_dir: Path, count: int) -> list[tuple[str, str]]:
    """The first `count` cities of a domain pack's catalog (the most populous first), as (id, title)."""
    from asr.corpus.domain import DomainPack

    pack = DomainPack.load(domain_dir)
    cities = [(e.id, e.title) for e in pack.catalog if e.fields.get("kind") == "city"]
    return cities[:count]


def with_new_places(domain_dir: Path, out: Path) -> tuple[Path, list[tuple[str, str]]]:
    """A copy of the pack whose catalog also has the new places (the model never heard of them)."""
    import shutil

    shutil.copytree(domain_dir, out, dirs_exist_ok=True)
    items = [(f"city:new-{name.lower()}", name) for name in NEW_PLACES]
    with (out / "catalog.jsonl").open("a", encoding="utf-8") as f:
        for item_id, title in items:
            f.write(
                json.dumps({"id": item_id, "title": title, "aliases": [], "fields": {"kind": "city"}}) + "\n"
            )
    return out, items


def run_to_dict(run: Run) -> dict[str, Any]:
    return {
        "scenario": asdict(run.scenario),
        "start": run.start,
        "requests": [asdict(r) for r in run.requests],
        "pauses": [asdict(p) for p in run.pauses],
        "notes": run.notes,
        "queue_times": run.queue_times,
    }
