"""How far each drift rule's statistic moves on unshifted traffic alone, by window size.

A drift rule (data/monitoring/alarms.yml) judges a window once it holds `min_samples` clips. On
few clips a statistic such as psi over ten reference deciles is noisy enough to pass the
threshold with no shift at all: the first window of a simulation flapped that way. This reads an
event store of unshifted traffic (a `voice-search simulate steady` run's, say), takes runs of n
consecutive voice searches at random places (consecutive, so the correlation of real traffic,
popular queries asked again and again, stays in), and reports each rule's statistic on them
against the shipped reference profile: its median, 95th and 99th percentile, and how often it
passed the rule's threshold. `min_samples` should be a size at which that share is about zero.

Usage: python scripts/drift_noise.py var/simulations/steady/state/events.sqlite3 \
           [--sizes 60 100 150 200 300] [--draws 500] [--json .cache/drift_noise.json]
"""

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.alarms import Rule, load_rules
from monitoring.drift import ReferenceProfile, detect
from monitoring.events import SQLiteEventStore
from monitoring.features import event_features
from serving.settings import DEFAULT_MONITORING_DIR


def noise(
    rule: Rule, columns: dict[str, list[float | str]], reference: ReferenceProfile, n: int, draws: int
) -> dict[str, Any]:
    assert rule.drift is not None and rule.test is not None
    values = columns.get(rule.drift, [])
    if len(values) < n or not reference.features.get(rule.drift):
        return {"size": n, "judged": False}
    rng = np.random.default_rng([n, draws])
    starts = rng.integers(0, len(values) - n + 1, size=draws)
    stats = np.array(
        [
            detect(rule.drift, reference.features[rule.drift], values[s : s + n], rule.test).statistic
            for s in starts
        ]
    )
    passed = np.array([rule.breached_by(float(v)) for v in stats])
    p50, p95, p99 = np.percentile(stats, [50, 95, 99])
    return {
        "size": n,
        "judged": True,
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "passed_share": float(passed.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("events", type=Path, help="an SQLite event store of unshifted traffic")
    parser.add_argument("--rules", type=Path, default=DEFAULT_MONITORING_DIR / "alarms.yml")
    parser.add_argument("--reference", type=Path, default=DEFAULT_MONITORING_DIR / "reference.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=[60, 100, 150, 200, 300])
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if not args.events.is_file():  # opening a missing path would create an empty store
        parser.error(f"no event store at {args.events}")

    store = SQLiteEventStore(args.events)
    columns = event_features(store.events())
    store.close()
    reference = ReferenceProfile.load(args.reference)
    rules = [r for r in load_rules(args.rules) if r.drift is not None]
    results = {r.name: [noise(r, columns, reference, n, args.draws) for n in args.sizes] for r in rules}

    print(
        "| rule | threshold | min_samples now | "
        + " | ".join(f"n={n}: p95 / passed" for n in args.sizes)
        + " |"
    )
    print("|---" * (3 + len(args.sizes)) + "|")
    for rule in rules:
        cells = [
            f"{c['p95']:.2f} / {100 * c['passed_share']:.1f}%" if c["judged"] else "too few clips"
            for c in results[rule.name]
        ]
        print(
            f"| {rule.name} | {rule.comparator} {rule.threshold:g} | {rule.min_samples} | "
            + " | ".join(cells)
            + " |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"events": str(args.events), "draws": args.draws, "rules": results}, indent=1)
        )


if __name__ == "__main__":
    main()
