"""Prove the alarms: replay labelled queries through a real server, one injected shift at a time.

    .venv/bin/python scripts/replay_shifts.py                 # every shift + 30 min unshifted (benchmark)
    .venv/bin/python scripts/replay_shifts.py --shifts volume_drop --warmup 60 --shift-duration 60

Starts `voice-search serve` on a free port with a fresh event store (trust_client_time and
fault_injection on), replays the corpus's held-out-voice test queries at `--rate` requests/s of
traffic time, and prints, per shift, the first alarm that fired and how many traffic seconds
after the shift began. See serving/simulation/replay.py for the traffic model.
"""

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from serving.local_server import running_server
from serving.settings import REPO_ROOT
from serving.simulation.replay import (
    EXPECTED_ALARM,
    SHIFTS,
    Scenario,
    Traffic,
    load_clips,
    novel_queries,
    run_scenarios,
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", type=Path, default=REPO_ROOT / "corpus" / "test.jsonl")
    parser.add_argument("--where", action="append", default=["source=query"], metavar="FIELD=VALUE")
    parser.add_argument("--clips", type=int, default=200, help="labelled clips to draw traffic from")
    parser.add_argument("--shifts", nargs="+", default=[s for s in SHIFTS if s != "none"], choices=SHIFTS)
    parser.add_argument("--rate", type=float, default=5.0, help="voice searches per second of traffic time")
    parser.add_argument(
        "--warmup", type=float, default=180.0, help="unshifted traffic seconds before each shift"
    )
    parser.add_argument("--shift-duration", type=float, default=150.0, help="traffic seconds of each shift")
    parser.add_argument(
        "--unshifted", type=float, default=1800.0, help="traffic seconds of the unshifted run (0: none)"
    )
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--alarm-rules", type=Path, help="rules file (default: the service's)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--state", type=Path, help="keep the event store and server log here (default: temporary)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    clips = load_clips(args.manifest, args.where, args.clips, args.seed)
    novel = novel_queries(60, args.seed) if "new_words" in args.shifts else []
    scenarios = [Scenario(s, args.warmup, args.shift_duration) for s in args.shifts]
    if args.unshifted > 0:
        scenarios.insert(0, Scenario("none", args.unshifted, 0.0))
    settings = {"trust_client_time": "true", "fault_injection": "true", "alarm_step_s": "10"}
    if args.alarm_rules:
        settings["alarm_rules"] = str(args.alarm_rules.resolve())
    traffic = Traffic(args.rate, args.concurrency, seed=args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        state = args.state or Path(tmp)
        state.mkdir(parents=True, exist_ok=True)
        with running_server(state, **settings) as server:
            results = run_scenarios(server.url, scenarios, clips, traffic, novel, step_s=10.0)
    header = ("shift", "requests", "its alarm (traffic s)", "first alarm (traffic s)", "false alarms")
    print(f"{header[0]:<16} {header[1]:>8}  {header[2]:<32} {header[3]:<32} {header[4]}")
    for r in results:
        expected = EXPECTED_ALARM.get(r.shift)
        own = (
            f"{expected} {r.expected_alarm_s:.0f}"
            if r.expected_alarm_s is not None
            else f"{expected or '-'} -"
        )
        first = f"{r.detected_by} {r.detection_s:.0f}" if r.detection_s is not None else "-"
        print(f"{r.shift:<16} {r.requests:>8}  {own:<32} {first:<32} {','.join(r.false_alarms) or '-'}")
    print(f"wall time {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        rows = [
            asdict(r)
            | {"expected_alarm": EXPECTED_ALARM.get(r.shift), "expected_alarm_s": r.expected_alarm_s}
            for r in results
        ]
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
