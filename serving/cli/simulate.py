"""`voice-search simulate SCENARIO`: a real server, simulated users, one scenario, and its timeline.

    voice-search simulate shock                    # data/scenarios/shock.yml -> var/simulations/shock.*
    voice-search simulate steady --out /tmp/sim --set rate=2 --set duration=5m

Starts the server on a free port with the scenario's settings (and event time from the
requests, audio kept for labels, an admin token for the simulated operator), runs the users, waits
for the monitors to judge the last windows and for a retrain to end, then writes the timeline
(PNG, HTML), the summary and the JSON record. Exit code 0, or 1 when events != requests.
"""

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx

from monitoring.alarms import parse_duration
from serving.cli.common import EXIT_OK, EXIT_SOME_FAILED, UsageError
from serving.local_server import running_server
from serving.settings import DEFAULT_DOMAIN_DIR, REPO_ROOT, Settings

SCENARIOS = REPO_ROOT / "data" / "scenarios"
TOKEN = "simulation-operator"
EXIT_LOST_EVENTS = EXIT_SOME_FAILED


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "simulate", help="replay a scenario of simulated users against a real server"
    )
    parser.add_argument(
        "scenario", help="a scenario file, or a name in data/scenarios (steady, drift, shock, ...)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: var/simulations)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario field (duration, rate, window) or a server setting",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(command=_simulate)


def _overrides(pairs: list[str]) -> dict[str, str]:
    bad = [p for p in pairs if "=" not in p or not p.partition("=")[0]]
    if bad:
        raise ValueError(f"--set takes KEY=VALUE, not {bad[0]!r}")
    return dict(p.split("=", 1) for p in pairs)


def scenario_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    named = SCENARIOS / f"{name}.yml"
    if not named.is_file():
        known = ", ".join(sorted(p.stem for p in SCENARIOS.glob("*.yml")))
        raise ValueError(f"no scenario {name!r}: give a file, or one of {known}")
    return named


def _simulate(args: argparse.Namespace, settings: Settings) -> int:

    out = args.out or settings.db_path.parent / "simulations"
    try:
        path = scenario_path(args.scenario)
        summary = simulate(path, out, _overrides(args.set), args.seed)
    except ValueError as e:
        raise UsageError(str(e)) from e
    print(json.dumps(asdict(summary), indent=1))
    from serving.simulation.scenarios import Scenario

    name = Scenario.load(path).name
    written = ", ".join(str(out / f"{name}.{kind}") for kind in ("png", "html", "json"))
    print(f"voice-search: the plot, the page and the record: {written}", file=sys.stderr)
    return EXIT_OK if summary.events == summary.requests else EXIT_LOST_EVENTS


def simulate(path: Path, out_dir: Path, overrides: dict[str, str], seed: int = 0) -> Any:
    from serving.simulation.replay import wait_evaluated
    from serving.simulation.report import write_outputs
    from serving.simulation.runner import Simulator, catalog_items, with_new_places
    from serving.simulation.scenarios import Scenario

    scenario = Scenario.load(path)
    if "duration" in overrides:
        scenario = replace(scenario, duration_s=parse_duration(overrides.pop("duration")))
    if "rate" in overrides:
        scenario = replace(scenario, rate=float(overrides.pop("rate")))
    if "window" in overrides:
        scenario = replace(scenario, window_s=parse_duration(overrides.pop("window")))
    run_dir = out_dir / scenario.name
    state = run_dir / "state"
    if state.exists():
        import shutil

        shutil.rmtree(state)
    domain, new_items = with_new_places(DEFAULT_DOMAIN_DIR, run_dir / "domain")
    server_settings = (
        {
            "trust_client_time": "true",
            "retain_audio": "true",
            # Traffic time starts 30 days back: labels and recordings must not look expired.
            "retrain_since": "400d",
            "audio_retention_days": "400",
            "admin_token": TOKEN,
            "domain_dir": str(domain),
            "alarm_step_s": "10",
            "mlflow_dir": str(state / "mlflow"),
            "canary_step_s": "1",
        }
        | scenario.settings
        | overrides
    )
    notes = _retrain_data(server_settings, run_dir)
    model_dir = Path(server_settings.get("model_dir", str(Settings().model_dir)))
    catalog = catalog_items(DEFAULT_DOMAIN_DIR, scenario.users.catalog_items)
    with running_server(state, **server_settings) as server:
        simulator = Simulator(server.url, scenario, catalog, new_items, TOKEN, model_dir, run_dir, seed)
        started = time.monotonic()
        run = asyncio.run(simulator.simulate())
        end = run.start + scenario.duration_s
        asyncio.run(wait_evaluated(server.url, end, 10.0, timeout_s=120))
        _wait_for_retrain(server.url, timeout_s=1800)
        alerts = httpx.get(server.url + "/v1/alerts", timeout=30).json()
        audit = httpx.get(
            server.url + "/v1/admin/audit",
            params={"limit": 1000},
            timeout=30,
            headers={"Authorization": f"Bearer {TOKEN}"},
        ).json()["entries"]
        events = _stored_events(server.db_path)
        (run_dir / "server.log").write_text(server.log())
    notes.append(f"wall time {time.monotonic() - started:.0f} s")
    return write_outputs(run, out_dir, alerts["history"], audit, events, notes)


def _retrain_data(settings: dict[str, str], run_dir: Path) -> list[str]:
    """A retrain needs golden sets and replay data; without the corpus and frozen sets (a fresh
    clone), the bundled sample clips stand in for both, and the summary says so."""
    from asr.corpus.datasets import freeze_golden, golden_sets
    from asr.training import DataSource

    if settings.get("retrain_auto") != "true":
        return []
    notes = []
    defaults = Settings()
    golden = Path(settings.get("golden_dir", str(defaults.golden_dir)))
    samples = REPO_ROOT / "data" / "samples" / "manifest.jsonl"
    if not golden_sets(golden if golden.is_absolute() else REPO_ROOT / golden):
        golden = run_dir / "golden"
        if not (golden / "samples").exists():
            freeze_golden(samples, "samples", golden)
        settings["golden_dir"] = str(golden)
        notes.append("no golden set was frozen: the retrain gate used the 4 sample clips")
    replay = settings.get("retrain_replay", defaults.retrain_replay)
    if any(
        not (REPO_ROOT / DataSource.parse(s.strip()).manifest).is_file()
        for s in replay.split(",")
        if s.strip()
    ):
        settings["retrain_replay"] = f"{samples}:0.5"
        notes.append("the corpus is not built: the retrain replayed the 4 sample clips")
    return notes


def _wait_for_retrain(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = httpx.get(url + "/v1/retrain", timeout=30).json().get("runs", [])
        if not any(r["returncode"] is None for r in runs):
            return
        time.sleep(2.0)


def _stored_events(db_path: Path) -> int:
    with sqlite3.connect(db_path) as db:
        return int(db.execute("SELECT COUNT(*) FROM events WHERE kind != 'shadow'").fetchone()[0])
