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

from asr.corpus.tts import SynthesisError
from serving.headers import EVENT_TIME_HEADER
from serving.simulation.replay import first_traffic_day, shift_clip, wav_bytes
from serving.simulation.scenarios import NEW_PLACES, Scenario
from serving.simulation.users import Speaker, Want, draw_want


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
        """One user: voice searches (redone up to `redo_max` times) until the item comes first,
        then typing. Seeded by `n` alone, so concurrency does not change what a user does."""
        rng = np.random.default_rng([n, 7])
        want = draw_want(rng, self.scenario, n, t, self.catalog, self.popularity, self.new_items)
        redo_max = self.scenario.users.redo_max
        for attempt in range(redo_max + 1):
            if await self._say(client, want, attempt, t + 4.0 * attempt, rng):
                return
        await self._type(client, want, t + 4.0 * (redo_max + 1))

    async def _say(
        self, client: httpx.AsyncClient, want: Want, attempt: int, at: float, rng: np.random.Generator
    ) -> bool:
        """One voice search and the user's reaction; True when the session is over."""
        try:
            clip = await asyncio.to_thread(self.speaker.clip, want.text, want.voice, attempt)
        except SynthesisError:
            return True
        if want.device:
            clip = shift_clip(shift_clip(clip, "narrowband", rng), "volume_drop", rng)
        response = await self.post(
            client,
            "/v1/search",
            at,
            content=wav_bytes(clip),
            params={"session_id": want.session},
            headers={"Content-Type": "audio/wav"},
        )
        body = response.json() if response is not None and response.status_code in (200, 202) else {}
        hits = [h["id"] for h in body.get("hits") or []]
        success = bool(hits) and hits[0] == want.item_id
        self._log(
            at,
            want.session,
            "redo" if attempt else "voice",
            response,
            new_item=want.new,
            device=want.device,
            success=success,
            null=bool(body.get("null_transcript")),
            slot=body.get("slot"),
            latency_s=(body.get("timings_ms") or {}).get("total", 0) / 1000 or None,
        )
        if not body:
            return True
        if body.get("sent_for_review"):
            self.for_review[body["request_id"]] = (want.text, want.item_id)
            self.run.requests[-1].to_people = True
            return True  # a person answers this user
        if success:
            await self._click(client, want, body["request_id"], at + 2)
            return True
        if rng.random() < self.scenario.users.correct:
            fix = {
                "request_id": body["request_id"],
                "session_id": want.session,
                "kind": "correction",
                "corrected_text": want.text,
            }
            self._log(
                at + 2, want.session, "correction", await self.post(client, "/v1/feedback", at + 2, json=fix)
            )
        return False

    async def _type(self, client: httpx.AsyncClient, want: Want, at: float) -> None:
        """Switch to typing; click the item when the typed search finds it."""
        typed = await self.post(
            client, "/v1/search/text", at, json={"session_id": want.session, "query": want.text}
        )
        body = typed.json() if typed is not None and typed.status_code == 200 else {}
        hits = [h["id"] for h in body.get("hits") or []]
        self._log(
            at,
            want.session,
            "typed",
            typed,
            new_item=want.new,
            device=want.device,
            success=bool(hits) and hits[0] == want.item_id,
        )
        if hits and want.item_id in hits:
            await self._click(client, want, body["request_id"], at + 2)

    async def _click(self, client: httpx.AsyncClient, want: Want, request_id: str, at: float) -> None:
        click = {
            "request_id": request_id,
            "session_id": want.session,
            "kind": "click",
            "item_id": want.item_id,
        }
        self._log(at, want.session, "click", await self.post(client, "/v1/feedback", at, json=click))

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
