"""Rollout targets on localhost, with real servers and real models (issue 14):

1. degraded canary: a copy of the bundled model whose blank always wins (null transcripts) goes
   into an automatic canary at the first ramp step (5%) under 5 voice searches per second of
   traffic time (replayed faster than real time through `X-Event-Time`, each session searching
   three times). Reported: traffic seconds until the rollback, and the share of sessions that
   ever heard the challenger;
2. healthy canary at the default ramp (5% -> 25% -> 50% -> 100%, 120 s holds and windows, 20
   searches a slot): a copy of the bundled model under the same traffic. Reported: traffic
   seconds until it is promoted (the README's "then promoted", at default settings);
3. blue-green: 10 voice searches per second (open loop, wall clock) for `--bluegreen-s`, the
   standby swapped in halfway. Reported: failed requests, and events recorded vs requests sent.

    .venv/bin/python scripts/bench_rollout.py [--json .cache/bench_rollout.json]
"""

import argparse
import asyncio
import json
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from serving.headers import EVENT_TIME_HEADER
from serving.lifecycle.drills import silent_copy
from serving.local_server import Server, running_server
from serving.settings import DEFAULT_MODEL_DIR, REPO_ROOT

TOKEN = "bench"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIP = (REPO_ROOT / "data" / "samples" / "arctic_a0031.flac").read_bytes()


async def post(client: httpx.AsyncClient, server: Server, session: str, at: float | None = None) -> int:
    headers = {EVENT_TIME_HEADER: f"{at:.3f}"} if at is not None else {}
    response = await client.post(
        server.url + "/v1/search",
        files={"file": ("q.flac", CLIP, "audio/flac")},
        data={"session_id": session},
        headers=headers,
    )
    return response.status_code


def sessions_by_slot(db_path: Path) -> tuple[int, int]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        total = db.execute(
            "SELECT COUNT(DISTINCT session_id) FROM events WHERE kind='voice_search'"
        ).fetchone()[0]
        seen = db.execute(
            "SELECT COUNT(DISTINCT session_id) FROM events WHERE kind='voice_search' AND slot='challenger'"
        ).fetchone()[0]
    return int(total), int(seen)


def auto_canary(challenger: Path) -> dict[str, str]:
    """A server's settings: `challenger` in an automatic canary from 5%, the rest at the defaults,
    event time from the client (the traffic runs faster than real time)."""
    return {
        "challenger_dir": str(challenger), "rollout_mode": "canary", "canary_share": "0.05",
        "canary_auto": "true", "canary_step_s": "0.2", "trust_client_time": "true", "admin_token": TOKEN,
    }  # fmt: skip


@dataclass(frozen=True)
class CanaryRun:
    requests: int
    ended_after_traffic_s: float | None
    """Traffic time until the rollout went off (rolled back or promoted); None: it never did."""
    shares: list[tuple[float, float]]
    """(traffic time, share) at each share the canary reached."""
    audit: list[dict[str, Any]]


async def traffic_until_off(server: Server, rate_per_s: float, max_traffic_s: float) -> CanaryRun:
    """Voice searches at `rate_per_s` of event time (sessions of three) until the rollout is off."""
    start = time.time() - 2 * max_traffic_s  # event time in the past, stepping forward at the rate
    sent, ended_at = 0, None
    shares: list[tuple[float, float]] = []
    async with httpx.AsyncClient(timeout=60) as client:
        while sent / rate_per_s < max_traffic_s:
            at = start + sent / rate_per_s
            await post(client, server, f"user-{sent // 3}", at)
            sent += 1
            if sent % 5 == 0:
                state = (await client.get(server.url + "/v1/rollout")).json()
                if state["mode"] == "canary" and (not shares or shares[-1][1] != state["canary_share"]):
                    shares.append((round(at - start, 1), state["canary_share"]))
                if state["mode"] == "off":
                    ended_at = at - start
                    break
        audit = (await client.get(server.url + "/v1/admin/audit", headers=AUTH)).json()["entries"]
    return CanaryRun(sent, ended_at, shares, audit)


async def degraded_canary(rate_per_s: float, max_traffic_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        bad = silent_copy(DEFAULT_MODEL_DIR, Path(tmp) / "degraded")
        with running_server(Path(tmp) / "state", **auto_canary(bad)) as server:
            run = await traffic_until_off(server, rate_per_s, max_traffic_s)
            total, seen = sessions_by_slot(server.db_path)
    return {
        "rate_per_s": rate_per_s,
        "requests": run.requests,
        "rolled_back_after_traffic_s": run.ended_after_traffic_s,
        "sessions": total,
        "sessions_that_saw_the_challenger": seen,
        "share_of_sessions_affected": round(seen / total, 4) if total else None,
        "reason": run.audit[0]["reason"] if run.audit else None,
    }


async def healthy_canary(rate_per_s: float, max_traffic_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        good = shutil.copytree(DEFAULT_MODEL_DIR, Path(tmp) / "candidate")
        with running_server(Path(tmp) / "state", **auto_canary(good)) as server:
            run = await traffic_until_off(server, rate_per_s, max_traffic_s)
    return {
        "rate_per_s": rate_per_s,
        "requests": run.requests,
        "ended_after_traffic_s": run.ended_after_traffic_s,
        "outcome": run.audit[0]["action"] if run.audit else None,
        "reason": run.audit[0]["reason"] if run.audit else None,
        "share_reached_at_traffic_s": run.shares,
    }


async def blue_green(rate_per_s: float, duration_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        standby = shutil.copytree(DEFAULT_MODEL_DIR, Path(tmp) / "standby")
        (Path(tmp) / "state").mkdir()
        with running_server(Path(tmp) / "state", challenger_dir=str(standby), admin_token=TOKEN) as server:
            statuses: list[int] = []
            async with httpx.AsyncClient(timeout=60) as client:

                async def one(i: int) -> None:
                    try:
                        statuses.append(await post(client, server, f"bg-{i}"))
                    except httpx.TransportError:
                        statuses.append(599)

                tasks, swap_status = [], None
                started = time.perf_counter()
                for i in range(int(rate_per_s * duration_s)):
                    await asyncio.sleep(max(0.0, started + i / rate_per_s - time.perf_counter()))
                    tasks.append(asyncio.create_task(one(i)))
                    if i == int(rate_per_s * duration_s / 2):
                        swap = await client.post(
                            server.url + "/v1/admin/swap", json={"reason": "bench"}, headers=AUTH
                        )
                        swap_status = swap.status_code
                await asyncio.gather(*tasks)
            time.sleep(1)  # the last events are written after their responses
            with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as db:
                events = db.execute("SELECT COUNT(*) FROM events WHERE kind='voice_search'").fetchone()[0]
    return {
        "rate_per_s": rate_per_s,
        "duration_s": duration_s,
        "requests": len(statuses),
        "failed": sum(1 for s in statuses if s != 200),
        "events": int(events),
        "swap_status": swap_status,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M")}
    out["degraded_canary"] = await degraded_canary(5.0, args.max_traffic_s)
    print(json.dumps(out["degraded_canary"]), flush=True)
    out["healthy_canary"] = await healthy_canary(5.0, args.max_promote_s)
    print(json.dumps(out["healthy_canary"]), flush=True)
    out["blue_green"] = await blue_green(10.0, args.bluegreen_s)
    print(json.dumps(out["blue_green"]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-traffic-s", type=float, default=600.0)
    parser.add_argument(
        "--max-promote-s", type=float, default=1800.0, help="traffic time to wait for promotion"
    )
    parser.add_argument("--bluegreen-s", type=float, default=30.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = asyncio.run(run(args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
