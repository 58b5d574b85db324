"""`voice-search client`: voice queries answered on the device (edge) or by a server (cloud)."""

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from asr.errors import AudioError
from asr.pipeline import build_frontend, build_pipeline
from serving.cli.common import EXIT_OK, EXIT_SOME_FAILED, UsageError, emit, expand_inputs
from serving.settings import Settings


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """client."""
    client = commands.add_parser(
        "client", help="answer voice queries on the device (edge) or send their speech to a server (cloud)"
    )
    client.add_argument("paths", nargs="+", metavar="PATH", help="audio files, folders or globs")
    client.add_argument("--mode", choices=("edge", "cloud"), required=True)
    client.add_argument("--url", default="http://127.0.0.1:8000", help="the server, for cloud mode")
    client.add_argument("--model", type=Path, help="edge mode's model folder (default: the bundled model)")
    client.add_argument("--domain", type=Path, help="edge mode's domain pack (default: places)")
    client.add_argument(
        "--stream",
        action="store_true",
        help="cloud mode: speak each file into WS /v1/search/stream and print the partials, then the final",
    )
    client.add_argument(
        "--pace", type=float, default=1.0, help="--stream: times real time (default 1; 0: as fast as it goes)"
    )
    client.set_defaults(command=_client, inference=True)


def _client(args: argparse.Namespace, settings: Settings) -> int:
    import httpx

    from asr.corpus.domain import DomainPack
    from serving.client import CloudClient, EdgeClient
    from serving.search import CatalogIndex

    paths = expand_inputs(args.paths)
    if args.stream:
        if args.mode != "cloud":
            raise UsageError("--stream needs --mode cloud (the edge client answers on the device)")
        if args.pace < 0:
            raise UsageError(f"--pace must be >= 0, not {args.pace}")
        return _stream(paths, args.url, args.pace)
    if args.mode == "edge":
        pack = DomainPack.load(args.domain or settings.domain_dir)
        pipeline = build_pipeline(
            args.model or settings.model_dir, device="cpu", spotting=settings.spotting(pack)
        )
        searcher: EdgeClient | CloudClient = EdgeClient(pipeline, CatalogIndex(pack))
    else:
        searcher = CloudClient(args.url, build_frontend())
    failed = 0
    for path in paths:
        try:
            result = searcher.search(path)
        except (AudioError, httpx.HTTPError) as e:
            print(f"voice-search: {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        emit(json.dumps({"path": str(path)} | asdict(result)))
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _stream(paths: list[Path], url: str, pace: float) -> int:
    """Each file as a stream: one JSON line per message (partials, then the final)."""
    import websocket

    from serving.client import StreamClient, StreamRefusedError

    client, failed = StreamClient(url, pace), 0
    for number, path in enumerate(paths):
        try:
            for message in client.stream(path, session_id=f"cli-stream-{number}"):
                emit(json.dumps({"path": str(path)} | message))  # our reader leaving ends it all
        except (AudioError, StreamRefusedError, websocket.WebSocketException, OSError) as e:
            print(f"voice-search: {path}: {e}", file=sys.stderr)
            failed += 1
    return EXIT_SOME_FAILED if failed else EXIT_OK
