"""A PostgreSQL server of Debian's packages in a folder of its own, for the cluster and the tests.

`initdb` refuses to run as root, so when root starts it (CI, the dev machines) the server runs as
Debian's `postgres` user, which then owns the folder. Authentication is `trust` on 127.0.0.1 and
the folder's own socket only: this is a local server for one machine's replicas and tests, not a
production database (point `VOICE_SEARCH_EVENT_STORE_URL` at one of those instead).
"""

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg

from serving.local_server import free_port

USER = "voice_search"
DATABASE = "voice_search"


class PostgresUnavailableError(RuntimeError):
    """No PostgreSQL server binaries here, or the server would not start."""


def server_binaries() -> Path:
    """The folder with initdb and pg_ctl: `VOICE_SEARCH_PG_BIN`, else Debian's newest version."""
    if configured := os.environ.get("VOICE_SEARCH_PG_BIN"):
        return Path(configured)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise PostgresUnavailableError(
            "no PostgreSQL server found under /usr/lib/postgresql: install Debian's `postgresql` package"
        )
    return found[-1].parent


@dataclass
class LocalPostgres:
    """One server: `start()` creates the folder on first use, `stop()` and `restart()` for faults."""

    folder: Path
    port: int = 0

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.bin = server_binaries()

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> "LocalPostgres":
        if not (self.data_dir / "PG_VERSION").is_file():
            self._init()
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.folder / "server.log"), "-o", options)
        return self

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session at once (a restart as an operator does it); `immediate` is a crash."""
        self._pg_ctl("stop", "-w", "-m", mode)

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        status = self._as_owner(self.bin / "pg_ctl", "status", "-D", str(self.data_dir))
        done = subprocess.run(status, check=False, capture_output=True)
        return done.returncode == 0

    def create_database(self, name: str) -> str:
        """A new, empty database on this server; its URL."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def _init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        done = subprocess.run(
            self._as_owner(self.bin / "initdb", "-D", str(self.data_dir), "-U", USER, "--auth=trust",
                           "--encoding=UTF8", "--no-instructions"),
            check=False, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise PostgresUnavailableError(f"initdb failed: {done.stderr.strip()}")
        with psycopg.connect(self.start().url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        self.stop()

    def _pg_ctl(self, *args: str) -> None:
        done = subprocess.run(self._as_owner(self.bin / "pg_ctl", "-D", str(self.data_dir), *args),
                              check=False, capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            raise PostgresUnavailableError(
                f"pg_ctl {args[0]} failed: {done.stderr.strip()}\n{self.log()[-2000:]}"
            )

    def _as_owner(self, program: Path, *args: str) -> list[str]:
        command = [str(program), *args]
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command
