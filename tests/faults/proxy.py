"""A tiny TCP proxy the test controls: forward, or cut every connection and refuse for a while.

It follows the HTTP/2 frame headers going through (gRPC calls are HTTP/2 streams; the payloads are
not decoded), so it can tell what a cut really hit: the calls (streams) open on the connections it
cut, and an answer it dropped on the way back — the call had been served, its answer is lost.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

PREFACE = len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
DATA, HEADERS, RST_STREAM = 0x0, 0x1, 0x3
END_STREAM = 0x1


class _Frames:
    """The frame headers of one direction of an HTTP/2 connection (type, flags, stream id)."""

    def __init__(self, skip: int):
        self._skip = skip  # bytes still to pass over: the client's preface, then each frame's payload
        self._head = b""

    def feed(self, data: bytes) -> Iterator[tuple[int, int, int]]:
        at = 0
        while at < len(data):
            if self._skip:
                step = min(self._skip, len(data) - at)
                self._skip -= step
                at += step
                continue
            take = 9 - len(self._head)
            self._head += data[at:at + take]
            at += take
            if len(self._head) < 9:
                return
            head, self._head = self._head, b""
            self._skip = int.from_bytes(head[:3], "big")
            yield head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF


@dataclass(eq=False)
class _Connection:
    writers: tuple[asyncio.StreamWriter, asyncio.StreamWriter]
    open: set[int] = field(default_factory=set)  # streams (calls) sent and not yet answered in full


@dataclass
class CutCounts:
    cuts: int = 0
    connections_cut: int = 0
    calls_cut: int = 0  # calls open on a connection when it was cut (each one was retried or failed)
    answers_dropped: int = 0  # calls the authority had answered, whose answer the cut kept from the client
    connects_refused: int = 0  # connection attempts refused while cut
    calls: int = 0  # calls that went through the proxy (streams opened)


class CuttableProxy:
    def __init__(self, listen_port: int, target_port: int):
        self.listen_port = listen_port
        self.target_port = target_port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_Connection] = set()
        self._refuse_until = 0.0
        self._cut_pending: asyncio.Future | None = None
        self._refuse_seconds = 0.0
        self.counts = CutCounts()
        self.cut_times: list[float] = []  # monotonic time of each cut
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> CuttableProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._refuse_until:
            self.counts.connects_refused += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        connection = _Connection((writer, up_writer))
        self._connections.add(connection)

        async def requests() -> None:  # client → authority
            frames = _Frames(PREFACE)
            try:
                while data := await reader.read(65536):
                    for kind, _, stream in frames.feed(data):
                        if kind == HEADERS and stream not in connection.open and stream % 2:
                            connection.open.add(stream)
                            self.counts.calls += 1
                        elif kind == RST_STREAM:
                            connection.open.discard(stream)
                    up_writer.write(data)
                    await up_writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                up_writer.close()

        async def answers() -> None:  # authority → client
            frames = _Frames(0)
            try:
                while data := await up_reader.read(65536):
                    finished = [stream for kind, flags, stream in frames.feed(data)
                                if (kind in (DATA, HEADERS) and flags & END_STREAM) or kind == RST_STREAM]
                    answered = [s for s in finished if s in connection.open]
                    if answered and self._cut_pending is not None and not self._cut_pending.done():
                        self._cut_now(dropped=len(answered))  # these answers never reach the client
                        return
                    connection.open.difference_update(finished)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        await asyncio.gather(requests(), answers())
        self._connections.discard(connection)

    def _cut_now(self, dropped: int) -> None:
        self._refuse_until = time.monotonic() + self._refuse_seconds
        self.cut_times.append(time.monotonic())
        self.counts.cuts += 1
        self.counts.answers_dropped += dropped
        for connection in list(self._connections):
            self.counts.connections_cut += 1
            self.counts.calls_cut += len(connection.open)
            for writer in connection.writers:
                writer.transport.abort()
        self._connections.clear()
        if self._cut_pending is not None and not self._cut_pending.done():
            self._cut_pending.set_result(None)

    async def cut(self, refuse_seconds: float, wait: float = 10.0) -> None:
        """At the next answer on its way back (or after `wait` s without one): drops it, closes every
        open connection (both ends) and refuses new ones for `refuse_seconds`."""

        async def _cut() -> None:
            self._refuse_seconds = refuse_seconds
            self._cut_pending = self._loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._cut_pending), wait)
            except TimeoutError:
                self._cut_now(dropped=0)

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_cut(), self._loop))

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server:
                self._server.close()
            for connection in list(self._connections):
                for writer in connection.writers:
                    writer.transport.abort()

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
