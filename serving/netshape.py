"""Network profiles for the edge-vs-cloud comparison, applied by a shaping TCP proxy on localhost.

Linux traffic control would be the usual tool (`tc qdisc ... netem`), but the machines this
project runs on have no netem kernel module ("Specified qdisc kind is unknown"), so the shaping
happens in user space instead: `ShapingProxy` forwards real TCP bytes between a client and the
server and delays each chunk by the link's serialization time (size / bandwidth, one chunk
after another per direction) plus half the round-trip time. The cloud client talks to the
proxy's port, so its upload, the server's answer and HTTP's own bytes all pay for the link.
"""

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

CHUNK_BYTES = 16 * 1024


@dataclass(frozen=True)
class NetworkProfile:
    """A link: round-trip time and the bandwidth of each direction."""

    name: str
    rtt_ms: float
    uplink_kbps: float
    downlink_kbps: float


PROFILES = {
    p.name: p
    for p in (
        NetworkProfile("loopback", 0.0, 1e9, 1e9),
        NetworkProfile("wifi", 20.0, 20_000.0, 50_000.0),
        NetworkProfile("4g", 60.0, 5_000.0, 20_000.0),
        NetworkProfile("3g", 300.0, 750.0, 1_600.0),
    )
}
"""Typical figures, chosen rather than measured (wifi: a home access point; 4G: a good LTE cell;
3G: close to Chrome DevTools' "Fast 3G" preset). Loopback is no shaping at all."""


class _Link:
    """One direction of a connection: chunks leave one after another at the link's bandwidth and
    arrive half a round trip later, in order."""

    def __init__(self, kbps: float, one_way_s: float) -> None:
        self.bps, self.one_way_s = kbps * 1000, one_way_s
        self.free_at = 0.0

    def arrival(self, now: float, size: int) -> float:
        self.free_at = max(now, self.free_at) + size * 8 / self.bps
        return self.free_at + self.one_way_s


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def deliver() -> None:
        while (item := await queue.get()) is not None:
            at, chunk = item
            await asyncio.sleep(max(0.0, at - loop.time()))
            dst.write(chunk)
            await dst.drain()

    delivering = asyncio.create_task(deliver())
    try:
        while chunk := await src.read(CHUNK_BYTES):
            queue.put_nowait((link.arrival(loop.time(), len(chunk)), chunk))
    except ConnectionError:
        pass
    finally:
        queue.put_nowait(None)
        with suppress(ConnectionError):
            await delivering
        dst.close()


class ShapingProxy:
    """A TCP proxy on 127.0.0.1 that shapes traffic to `target` with a profile, in its own thread."""

    def __init__(self, target_host: str, target_port: int, profile: NetworkProfile) -> None:
        self.target, self.profile = (target_host, target_port), profile
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"proxy-{profile.name}")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        one_way = self.profile.rtt_ms / 2000
        await asyncio.gather(
            _pipe(reader, upstream_writer, _Link(self.profile.uplink_kbps, one_way)),
            _pipe(upstream_reader, writer, _Link(self.profile.downlink_kbps, one_way)),
        )

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        self._loop.run_forever()
        server.close()
        # Connections a keep-alive client left open still have coroutines waiting: cancel them and
        # let them unwind here, or they are collected later with their loop closed.
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def start(self) -> "ShapingProxy":
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def shaped(url: str, profile: NetworkProfile) -> Iterator[str]:
    """The URL to use instead of `url` (http://host:port) to reach it through `profile`."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    proxy = ShapingProxy(host, int(port), profile).start()
    try:
        yield proxy.url
    finally:
        proxy.stop()
