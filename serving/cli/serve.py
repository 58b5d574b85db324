"""`voice-search serve` (one server) and `voice-search cluster` (replicas behind nginx)."""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from serving.cli.common import EXIT_OK, EXIT_USAGE, UsageError
from serving.settings import Settings


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """serve and cluster."""
    serve = commands.add_parser(
        "serve", help="run the voice-search HTTP API and demo page (settings: VOICE_SEARCH_* variables)"
    )
    serve.add_argument("--host", help="interface to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: 8000)")
    serve.add_argument("--model", type=Path, metavar="DIR", help="model folder (default: the bundled model)")
    serve.add_argument("--domain", type=Path, metavar="PACK", help="domain pack whose catalog is searched")
    serve.add_argument(
        "--db", type=Path, metavar="FILE", help="SQLite event store (default: var/events.sqlite3)"
    )
    serve.add_argument("--no-bias", action="store_true", help="greedy decoding, not biased to the catalog")
    serve.set_defaults(command=_serve, inference=True)

    cluster = commands.add_parser(
        "cluster",
        help="run N replicas on one PostgreSQL event store behind nginx (other settings: VOICE_SEARCH_*)",
    )
    cluster.add_argument("--replicas", type=int, default=2, metavar="N", help="replicas (default: 2)")
    cluster.add_argument("--port", type=int, default=8000, help="the balancer's port (default: 8000)")
    cluster.add_argument(
        "--state-dir", type=Path, default=Path("var/cluster"), metavar="DIR",
        help="the local PostgreSQL server, logs, review queue and audit (default: var/cluster)",
    )  # fmt: skip
    cluster.add_argument(
        "--event-store-url", metavar="URL",
        help="a postgresql:// URL of an existing server (default: start a local one in the state folder)",
    )  # fmt: skip
    cluster.set_defaults(command=_cluster)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from serving.app import create_app

    overrides = {
        "host": args.host,
        "port": args.port,
        "model_dir": args.model,
        "domain_dir": args.domain,
        "db_path": args.db,
        "bias_decoding": False if args.no_bias else None,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if not settings.model_dir.is_dir():
        raise UsageError(f"no model folder at {settings.model_dir}")
    print(_banner(settings), flush=True)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower()
    )
    return EXIT_OK


def _banner(settings: Settings) -> str:
    """Where the server listens, what it serves, and the pages a person opens first."""
    from asr.model import model_version

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{host}:{settings.port}"
    rows = {
        "model": f"{model_version(settings.model_dir)} ({settings.model_dir})",
        "domain": f"{settings.domain_dir.name} ({settings.domain_dir})",
        "demo": f"{url}/",
        "dashboard": f"{url}/dashboard",
        "API docs": f"{url}/docs",
    }
    return "\n".join(
        (
            f"voice-search: listening on {settings.host}:{settings.port}",
            *(f"  {name:<10}{value}" for name, value in rows.items()),
            "  (the model loads next; /readyz answers 200 once it is ready; Ctrl-C stops)",
        )
    )


def _cluster(args: argparse.Namespace, settings: Settings) -> int:
    from serving.cluster.balancer import BalancerError
    from serving.cluster.database import PostgresUnavailableError
    from serving.cluster.launch import serve_cluster

    if args.replicas < 1:
        raise UsageError(f"--replicas must be at least 1, not {args.replicas}")
    try:
        return serve_cluster(args.state_dir, args.replicas, args.port, args.event_store_url)
    except (BalancerError, PostgresUnavailableError, RuntimeError) as e:
        print(f"voice-search: error: {e}", file=sys.stderr)
        return EXIT_USAGE
