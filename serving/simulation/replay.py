"""Replay labelled voice traffic through the running API, with one injected shift at a time.

This is the monitoring's proof: for each shift (quieter audio, noise, long leading silence,
clipping, 8 kHz audio, words the model never saw, a slow model) it measures which alarm fires
and how long after the shift began, in traffic time; an unshifted replay must raise none.

Traffic time is decoupled from the wall clock: every request carries its traffic timestamp in
`X-Event-Time` (the server must run with `trust_client_time`), so 30 minutes of traffic at
5 requests/s replay as fast as the server answers. Each scenario runs in its own stretch of
traffic time (a day apart), so one scenario's windows never see another's events.

Simulated users behave like users: a voice search whose top hit is the intended entry is
clicked; otherwise the user sometimes types the query instead (switch to typing), which is
where new vocabulary shows up in the events.
"""

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from asr.audio import SAMPLE_RATE_HZ, Samples
from asr.corpus.augment import colored_noise, draw_spec
from asr.corpus.build import level_and_augment
from asr.corpus.tts import EspeakEngine, Voice
from asr.manifest import read_manifest, select_entries
from serving.headers import EVENT_TIME_HEADER

EXPECTED_ALARM = {
    "volume_drop": "volume_drift",
    "noise": "speech_ratio_drift",
    "leading_silence": "leading_silence_drift",
    "clipping": "clipping_drift",
    "narrowband": "sample_rate_drift",
    "new_words": "new_vocabulary",
    "slow_model": "latency_p95_high",
}
"""The alarm of the shipped rules (data/monitoring/alarms.yml) made to catch each shift; others
may fire too (added noise also shortens the measured silence)."""
SHIFTS = ("none", *EXPECTED_ALARM)
"""Shifts a scenario can inject, one at a time."""

SLOW_MODEL_DELAY_MS = 1500.0
"""The slow-model shift: every model call takes this much longer (the latency alarm's threshold is 1 s)."""
DAY_S = 86_400.0


@dataclass(frozen=True)
class Clip:
    """A labelled query: float32 mono samples, their rate, the words said and the intended entries."""

    samples: Samples
    rate: int
    text: str
    entries: tuple[str, ...] = ()


def load_clips(
    manifest: Path, where: Sequence[str] = (), limit: int | None = None, seed: int = 0
) -> list[Clip]:
    """Clips of a manifest (rows filtered by FIELD=VALUE conditions), a seeded sample of `limit`."""
    entries = select_entries(read_manifest(manifest), where)
    if limit is not None and limit < len(entries):
        picked = np.random.default_rng(seed).choice(len(entries), limit, replace=False)
        entries = [entries[i] for i in sorted(picked)]
    clips = []
    for entry in entries:
        samples, rate = sf.read(entry.audio, dtype="float32", always_2d=True)
        ids = tuple(i for i in entry.fields.get("entries", "").split(",") if i)
        clips.append(Clip(samples.mean(axis=1), int(rate), entry.text, ids))
    return clips


_SYLLABLES = (
    "zor",
    "bla",
    "quen",
    "dri",
    "vax",
    "mul",
    "tho",
    "ke",
    "rin",
    "gash",
    "plo",
    "yum",
    "fex",
    "ou",
)
NOVEL_TEMPLATES = (
    "weather in {}",
    "directions to {}",
    "show me {}",
    "how far is {} from {}",
    "flights to {}",
)


def novel_queries(count: int, seed: int = 0, clean_fraction: float = 0.4) -> list[Clip]:
    """Queries about places that do not exist (words no training text has), voiced by espeak-ng
    and levelled and augmented as the corpus's clips are, so that only the words are new."""
    rng = np.random.default_rng(seed)
    engine = EspeakEngine()
    clips = []
    for _ in range(count):
        names = ["".join(rng.choice(_SYLLABLES, size=3)) for _ in range(2)]
        template = str(rng.choice(NOVEL_TEMPLATES))
        text = template.format(*names[: template.count("{}")])
        voice = Voice("espeak", str(rng.choice(engine.voice_names())), float(rng.uniform(0.9, 1.1)))
        samples, rate = engine.synthesize(text, voice)
        spec = draw_spec(rng, (), clean=bool(rng.random() < clean_fraction))
        clips.append(Clip(level_and_augment(samples, rate, spec, rng, None), SAMPLE_RATE_HZ, text))
    return clips


def _rms(x: Samples) -> float:
    return float(np.sqrt(np.mean(np.square(x)) + 1e-12))


def shift_clip(clip: Clip, shift: str, rng: np.random.Generator) -> Clip:
    """`clip` with one audio shift applied (shifts that are not about the audio return it as is)."""
    x, rate = clip.samples, clip.rate
    if shift == "volume_drop":
        x = x * 10 ** (-10 / 20)
    elif shift == "noise":
        noise = colored_noise("white", len(x), rng)
        x = x + noise * (_rms(x) / _rms(noise)) * 10 ** (-5 / 20)  # 5 dB SNR
    elif shift == "leading_silence":
        x = np.concatenate([np.zeros(int(2.0 * rate), np.float32), x])
    elif shift == "clipping":
        x = np.clip(x * 10 ** (20 / 20), -1.0, 1.0)
    elif shift == "narrowband":
        import soxr

        x, rate = soxr.resample(x, rate, 8000), 8000
    return Clip(np.clip(x, -1.0, 1.0).astype(np.float32), rate, clip.text, clip.entries)


def wav_bytes(clip: Clip) -> bytes:
    import io

    buffer = io.BytesIO()
    sf.write(buffer, clip.samples, clip.rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@dataclass(frozen=True)
class Scenario:
    """`warmup_s` of unshifted traffic, then `shift_s` with the shift (no shift for "none")."""

    shift: str
    warmup_s: float
    shift_s: float

    def __post_init__(self) -> None:
        if self.shift not in SHIFTS:
            raise ValueError(f"unknown shift {self.shift!r}; known: {', '.join(SHIFTS)}")


@dataclass(frozen=True)
class Traffic:
    rate_rps: float = 5.0
    """Voice searches per second of traffic time."""
    concurrency: int = 4
    """Requests in flight at once (how much faster than real time the replay may go)."""
    type_after_miss: float = 0.3
    """Chance a user types the query after a voice search that missed the intended entry."""
    seed: int = 0


@dataclass
class ScenarioResult:
    shift: str
    start: float
    shift_start: float
    end: float
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    detected_by: str | None = None
    detection_s: float | None = None
    """Traffic seconds from the shift's start to the first alarm (None: not detected)."""
    false_alarms: list[str] = field(default_factory=list)
    """Alarms that fired before the shift (or at all, for "none")."""
    fired: list[str] = field(default_factory=list)
    first_fired_s: dict[str, float] = field(default_factory=dict)
    """Traffic seconds from the shift's start to each alarm's first firing."""
    wall_s: float = 0.0

    @property
    def expected_alarm_s(self) -> float | None:
        """When the alarm made for this shift fired (None: it did not)."""
        return self.first_fired_s.get(EXPECTED_ALARM.get(self.shift, ""))


class _Replayer:
    def __init__(self, client: httpx.AsyncClient, traffic: Traffic) -> None:
        self.client, self.traffic = client, traffic
        self.rng = np.random.default_rng(traffic.seed)
        self.statuses: dict[int, int] = {}
        self.requests = 0

    async def post(self, path: str, at: float, **kwargs: Any) -> httpx.Response | None:
        headers = {EVENT_TIME_HEADER: f"{at:.3f}", **kwargs.pop("headers", {})}
        for _ in range(5):  # a 503 (overload) is retried, as a client would
            try:
                response = await self.client.post(path, headers=headers, timeout=120, **kwargs)
            except httpx.TransportError:
                await asyncio.sleep(0.5)
                continue
            self.requests += 1
            self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
            if response.status_code != 503:
                return response
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
        return None

    async def user(self, clip: Clip, at: float, session: str) -> None:
        """One voice search and what the user does next."""
        response = await self.post(
            "/v1/search",
            at,
            content=wav_bytes(clip),
            params={"session_id": session},
            headers={"Content-Type": "audio/wav"},
        )
        if response is None or response.status_code != 200:
            return
        body = response.json()
        hits = [h["id"] for h in body.get("hits", [])]
        if hits and clip.entries and hits[0] in clip.entries:
            await self.post(
                "/v1/feedback",
                at + 2.0,
                json={
                    "request_id": body["request_id"],
                    "session_id": session,
                    "kind": "click",
                    "item_id": hits[0],
                },
            )
        elif self.rng.random() < self.traffic.type_after_miss:
            await self.post("/v1/search/text", at + 3.0, json={"session_id": session, "query": clip.text})


async def _replay(
    url: str,
    scenario: Scenario,
    clips: Sequence[Clip],
    novel: Sequence[Clip],
    traffic: Traffic,
    start: float,
    on_shift: Callable[[bool], Any] | None,
) -> ScenarioResult:
    shift_start = start + scenario.warmup_s
    end = shift_start + (scenario.shift_s if scenario.shift != "none" else 0.0)
    result = ScenarioResult(scenario.shift, start, shift_start, end)
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=traffic.concurrency * 2)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        replayer = _Replayer(client, traffic)
        gate = asyncio.Semaphore(traffic.concurrency)
        total = int((end - start) * traffic.rate_rps)
        shifted = False

        async def one(i: int) -> None:
            async with gate:
                at = start + i / traffic.rate_rps
                active = scenario.shift != "none" and at >= shift_start
                pool = novel if active and scenario.shift == "new_words" else clips
                clip = pool[int(replayer.rng.integers(len(pool)))]
                if active:
                    clip = shift_clip(clip, scenario.shift, replayer.rng)
                await replayer.user(clip, at, f"{scenario.shift}-{start:.0f}-{i}")

        tasks: list[asyncio.Task[None]] = []
        for i in range(total):
            at = start + i / traffic.rate_rps
            if not shifted and scenario.shift != "none" and at >= shift_start:
                await asyncio.gather(*tasks)  # the shift starts cleanly at its traffic time
                tasks = []
                shifted = True
                if on_shift is not None:
                    await on_shift(True)
            tasks.append(asyncio.create_task(one(i)))
            if len(tasks) >= traffic.concurrency * 4:
                await asyncio.gather(*tasks)
                tasks = []
        await asyncio.gather(*tasks)
        if shifted and on_shift is not None:
            await on_shift(False)
        result.requests, result.statuses = replayer.requests, dict(replayer.statuses)
    result.wall_s = time.perf_counter() - started
    return result


def _judge(result: ScenarioResult, history: Sequence[dict[str, Any]]) -> ScenarioResult:
    """Fill in which alarms fired during the scenario, from the server's transition history."""
    during = [t for t in history if t["firing"] and result.start <= t["at"] <= result.end + 1.0]
    result.fired = sorted({t["rule"] for t in during})
    result.false_alarms = sorted(
        {t["rule"] for t in during if t["at"] < result.shift_start or result.shift == "none"}
    )
    after = sorted(
        (t for t in during if t["at"] >= result.shift_start and result.shift != "none"), key=lambda t: t["at"]
    )
    if after:
        result.detected_by = after[0]["rule"]
        result.detection_s = after[0]["at"] - result.shift_start
    for t in reversed(after):
        result.first_fired_s[t["rule"]] = t["at"] - result.shift_start
    return result


async def wait_evaluated(url: str, at: float, step_s: float, timeout_s: float = 60.0) -> None:
    """Send nothing more until the server has judged the windows up to `at`."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=url) as client:
        while time.monotonic() < deadline:
            alerts = (await client.get("/v1/alerts")).json()
            if alerts["evaluated_at"] is not None and alerts["evaluated_at"] >= at - step_s:
                return
            await asyncio.sleep(0.5)
    raise TimeoutError(f"the server did not evaluate its alarms up to {at} within {timeout_s} s")


def first_traffic_day(epoch: float | None = None) -> float:
    """Midnight of `epoch`'s day (default: 30 days ago): where replayed traffic time starts, in the
    past so that it never runs into the server's clock."""
    return math.floor((epoch if epoch is not None else time.time() - 30 * DAY_S) / DAY_S) * DAY_S


def run_scenarios(
    url: str,
    scenarios: Sequence[Scenario],
    clips: Sequence[Clip],
    traffic: Traffic,
    novel: Sequence[Clip] = (),
    epoch: float | None = None,
    step_s: float = 10.0,
) -> list[ScenarioResult]:
    """Replay each scenario in its own day of traffic time against the server at `url`; the server
    runs with `trust_client_time` (and `fault_injection` for the slow model)."""
    base = first_traffic_day(epoch)
    results = []
    for n, scenario in enumerate(scenarios):
        start = base + n * DAY_S

        async def slow(on: bool) -> None:
            async with httpx.AsyncClient(base_url=url) as client:
                response = await client.post(
                    "/v1/admin/faults", json={"asr_delay_ms": SLOW_MODEL_DELAY_MS if on else 0.0}
                )
                response.raise_for_status()

        if scenario.shift == "new_words" and not novel:
            raise ValueError("the new_words scenario needs novel clips (see novel_queries)")
        on_shift = slow if scenario.shift == "slow_model" else None
        result = asyncio.run(_replay(url, scenario, clips, novel, traffic, start, on_shift))
        asyncio.run(wait_evaluated(url, result.end, step_s))
        history = httpx.get(url + "/v1/alerts", timeout=30).json()["history"]
        results.append(_judge(result, history))
    return results
