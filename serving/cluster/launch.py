"""`voice-search cluster`: N replicas on one PostgreSQL store, behind nginx, on this machine.

The replicas share `state_dir`: the event store is PostgreSQL (a local server of Debian's packages
started here, unless `--event-store-url` names one), and the review queue, audit log and model
registry are SQLite files in that folder, which processes on one machine share safely (WAL). On
several machines those would need a shared server too; the event store is the part this covers.
"""

import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from serving.cluster.balancer import Balancer, running_nginx
from serving.cluster.database import LocalPostgres
from serving.local_server import Server, free_port, running_server


@dataclass
class Cluster:
    url: str
    """The balancer: the one address clients use."""
    replicas: list[Server]
    balancer: Balancer
    event_store_url: str
    state_dir: Path
    postgres: LocalPostgres | None = None
    """The local server, when this cluster started one."""


@contextmanager
def running_cluster(
    state_dir: Path,
    replicas: int = 2,
    port: int = 0,
    event_store_url: str | None = None,
    max_upload_bytes: int = 10 * 1024 * 1024,
    **settings: str,
) -> Iterator[Cluster]:
    """Start the store (unless given), the replicas, then nginx; stop them in reverse order."""
    if replicas < 1:
        raise ValueError(f"a cluster needs at least one replica, not {replicas}")
    # Replicas on one machine split its cores rather than each spinning threads on all of them.
    settings.setdefault("torch_threads", str(max(1, (os.cpu_count() or 1) // replicas)))
    state_dir = state_dir.resolve()  # replicas, nginx and PostgreSQL each run from their own directory
    state_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        postgres = None
        if event_store_url is None:
            # The server's folder must be reachable by the `postgres` user when root starts it.
            state_dir.chmod(0o755)
            postgres = LocalPostgres(state_dir / "postgres").start()
            stack.callback(postgres.stop)
            event_store_url = postgres.url()
        servers = [
            stack.enter_context(
                running_server(
                    state_dir,
                    log_name=f"replica-{i}.log",
                    event_store_url=event_store_url,
                    max_upload_bytes=str(max_upload_bytes),
                    **settings,
                )
            )
            for i in range(replicas)
        ]
        upstreams = [s.url.removeprefix("http://") for s in servers]
        balancer = stack.enter_context(
            running_nginx(state_dir / "nginx", port or free_port(), upstreams, max_upload_bytes)
        )
        yield Cluster(balancer.url, servers, balancer, event_store_url, state_dir, postgres)


def serve_cluster(state_dir: Path, replicas: int, port: int, event_store_url: str | None) -> int:
    """Run until interrupted (Ctrl-C or SIGTERM)."""
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    with running_cluster(state_dir, replicas, port, event_store_url) as cluster:
        print(f"voice-search: {replicas} replicas behind {cluster.url} (nginx), one event store", flush=True)
        for server in cluster.replicas:
            print(f"  replica {server.url} (log {server.log_path})", flush=True)
        exited: set[str] = set()
        try:
            while not stop:
                for server in cluster.replicas:
                    if server.process.poll() is not None and server.url not in exited:
                        exited.add(server.url)
                        print(f"voice-search: replica {server.url} exited ({server.process.returncode})")
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    return 0
