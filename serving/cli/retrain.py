"""`voice-search data freeze|golden` (frozen golden sets) and `voice-search retrain` (the loop).

    voice-search data freeze corpus/real_dev_fsdd.jsonl --name fsdd --max-clips 100
    voice-search data golden                               # the frozen sets and their versions
    voice-search retrain --since 7d --replay corpus/train.jsonl:0.5 --deploy shadow

`retrain` exports the strong labels of the last `--since` (or takes `--labels DIR`), fine-tunes
the champion on them plus the replay, gates the challenger on the held-out labels and every
golden set, registers it (alias `challenger`) only when it passes, and can hand it to a running
server: `--deploy shadow` loads it there in shadow mode, `--deploy canary` shadows it for
`--shadow-s` and then starts the automatic canary (which ramps, or rolls back on a failed gate).
Exit codes: 0 registered, 1 rejected by the gate (the reasons are printed and kept), 2 usage.
"""

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asr.corpus.datasets import freeze_golden, golden_sets
from asr.errors import DataError
from monitoring.alarms import parse_duration
from serving.cli.common import EXIT_OK
from serving.lifecycle.audit import AuditEntry, AuditLog
from serving.lifecycle.labels import STRENGTHS, export_labels
from serving.lifecycle.retrain_gate import GateLimits
from serving.lifecycle.review import REVIEW_LABELS
from serving.settings import Settings

if TYPE_CHECKING:
    from serving.lifecycle.retrain import RetrainReport

EXIT_REJECTED = 1
"""The gate rejected the challenger (its reasons are printed and kept)."""
DEPLOY_MODES = ("none", "shadow", "canary")


def add_golden_commands(data: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    freeze = data.add_parser(
        "freeze", help="freeze an evaluation manifest as a golden set (copied, read-only)"
    )
    freeze.add_argument("manifest", type=Path, metavar="MANIFEST")
    freeze.add_argument("--name", required=True, help="the set's name (a folder under the golden dir)")
    freeze.add_argument("--max-clips", type=int, metavar="N", help="a seeded sample of N rows")
    freeze.add_argument("--seed", type=int, default=0)
    freeze.set_defaults(command=_freeze)
    listing = data.add_parser("golden", help="the frozen golden sets, each checked against its version")
    listing.set_defaults(command=_golden)


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "retrain", help="labels + replay -> fine-tune the champion -> gate -> register the challenger"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--labels", type=Path, metavar="DIR|MANIFEST", help="labels already exported")
    source.add_argument(
        "--since", default="7d", help="export the production labels of this span (default 7d)"
    )
    parser.add_argument("--min-strength", choices=STRENGTHS, default="strong")
    parser.add_argument(
        "--replay", action="append", default=None, metavar="MANIFEST[:WEIGHT]",
        help="original training data replayed beside the labels (repeatable; default: retrain_replay)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="run folder (default: var/retrain/<time>)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default: RetrainConfig.lr)",
    )
    parser.add_argument(
        "--new-weight", type=float, default=None, help="weight of the labels against the replay "
        "(default: retrain_new_weight)"
    )  # fmt: skip
    parser.add_argument(
        "--freeze-layers", type=int, default=None, metavar="N",
        help="leave transformer layers below N as they are (default: retrain_freeze_layers)",
    )  # fmt: skip
    parser.add_argument("--held-out", type=float, default=0.25, help="share of sessions kept out to score on")
    parser.add_argument(
        "--margin", type=float, default=GateLimits.golden_margin, help="WER a golden set may lose"
    )
    parser.add_argument("--max-rtf-ratio", type=float, default=GateLimits.max_rtf_ratio)
    parser.add_argument("--max-size-ratio", type=float, default=GateLimits.max_size_ratio)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument(
        "--deploy", choices=DEPLOY_MODES, default="none", help="hand a registered challenger to --server"
    )
    parser.add_argument(
        "--server", help="the server's URL for --deploy (its admin token: VOICE_SEARCH_ADMIN_TOKEN)"
    )
    parser.add_argument(
        "--shadow-s", type=float, default=300.0, help="--deploy canary: seconds of shadow first"
    )
    parser.add_argument("--canary-share", type=float, default=0.05, help="--deploy canary: the first share")
    parser.add_argument("--actor", default="retrain", help="who, in the audit log")
    parser.add_argument("--trigger", default="manual", help="why this run started, in the audit log")
    parser.set_defaults(command=_retrain)


def _freeze(args: argparse.Namespace, settings: Settings) -> int:
    golden = freeze_golden(args.manifest, args.name, settings.golden_dir, args.max_clips, args.seed)
    print(json.dumps({"golden_set": golden.ref, "rows": golden.rows, "folder": str(golden.folder)}))
    return EXIT_OK


def _golden(args: argparse.Namespace, settings: Settings) -> int:
    for golden in golden_sets(settings.golden_dir):
        print(f"{golden.ref}  {golden.rows} clips  from {golden.source}")
    return EXIT_OK


def _retrain(args: argparse.Namespace, settings: Settings) -> int:
    import torch

    from asr.training import DataSource
    from serving.cli.models import open_registry
    from serving.lifecycle.retrain import RetrainConfig, retrain

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deploy != "none" and not (args.server and settings.admin_token):
        raise DataError("--deploy needs --server URL and the admin token (VOICE_SEARCH_ADMIN_TOKEN)")
    out = args.out or settings.db_path.parent / "retrain" / time.strftime("%Y%m%d-%H%M%S")
    golden = tuple(golden_sets(settings.golden_dir))
    replay = tuple(
        DataSource.parse(s) for s in (args.replay if args.replay is not None else settings.replay_sources)
    )
    missing = [str(s.manifest) for s in replay if not s.manifest.is_file()]
    if missing:
        raise DataError(f"no replay manifest at {', '.join(missing)} (build the corpus, or pass --replay)")
    labels = _labels(args, settings, out)
    limits = replace(GateLimits(), golden_margin=args.margin, max_rtf_ratio=args.max_rtf_ratio,
                     max_size_ratio=args.max_size_ratio)  # fmt: skip
    config = RetrainConfig(
        out_dir=out, labels=labels, golden=golden, replay=replay,
        new_weight=settings.retrain_new_weight if args.new_weight is None else args.new_weight,
        held_out=args.held_out, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
        freeze_layers=settings.retrain_freeze_layers if args.freeze_layers is None else args.freeze_layers,
        limits=limits,
    )  # fmt: skip
    if args.lr is not None:
        config = replace(config, lr=args.lr)
    report = retrain(
        config, open_registry(settings), log=lambda line: print(line, file=sys.stderr, flush=True)
    )
    _audit(settings, args, report)
    if report.registered and args.deploy != "none":
        _hand_over(args, settings, report)
    decision = report.decision
    print(json.dumps({
        "registered": report.registered, "passed": bool(decision and decision.passed),
        "reasons": decision.reasons if decision else [], "golden_sets": decision.golden if decision else [],
        "train_s": report.train_s, "evaluate_s": report.evaluate_s, "report": str(out / "report.json"),
    }, indent=1))  # fmt: skip
    return EXIT_OK if report.registered else EXIT_REJECTED


def _labels(args: argparse.Namespace, settings: Settings, out: Path) -> Path:
    if args.labels is not None:
        given: Path = args.labels
        return given / "manifest.jsonl" if given.is_dir() else given
    store = settings.open_event_store()
    try:
        exported = export_labels(
            store, out / "labels", parse_duration(args.since), args.min_strength, settings.redo_window_s,
            settings.labels_dir / REVIEW_LABELS,
        )  # fmt: skip
    finally:
        store.close()
    if exported.check.errors:
        raise DataError(f"the exported labels fail the data check: {exported.check.errors[0]}")
    return exported.manifest


def _audit(settings: Settings, args: argparse.Namespace, report: "RetrainReport") -> None:
    from serving.lifecycle.retrain import audit_details

    passed = report.decision is not None and report.decision.passed
    action = "retrain_registered" if passed else "retrain_rejected"
    reason = f"trigger: {args.trigger}"
    log = AuditLog(settings.audit_path)
    try:
        log.record(AuditEntry(args.actor, action, reason, audit_details(report)))
    finally:
        log.close()


def _hand_over(args: argparse.Namespace, settings: Settings, report: "RetrainReport") -> None:
    """Load the registered challenger on the server in shadow, then (canary) start the automatic canary."""
    import httpx

    assert report.registered is not None
    version = report.registered["version"]
    headers = {"Authorization": f"Bearer {settings.admin_token}", "X-Actor": args.actor}
    why = f"retrained v{version} passed the gate ({args.trigger})"
    with httpx.Client(base_url=args.server, headers=headers, timeout=120) as client:
        _post(client, "/v1/admin/rollout", {"mode": "off", "reason": f"{why}: replace the challenger"})
        _post(client, "/v1/admin/challenger", {"version": str(version), "reason": why})
        _post(client, "/v1/admin/rollout", {"mode": "shadow", "reason": f"{why}: shadow first"})
        if args.deploy == "canary":
            time.sleep(args.shadow_s)
            _post(
                client,
                "/v1/admin/rollout",
                {
                    "mode": "canary",
                    "canary_share": args.canary_share,
                    "auto": True,
                    "reason": f"{why}: canary after shadow",
                },
            )


def _post(client: Any, path: str, body: dict[str, Any]) -> None:
    response = client.post(path, json=body)
    if response.status_code >= 400:
        raise DataError(f"the server refused {path}: {response.status_code} {response.text[:300]}")
