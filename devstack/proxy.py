"""A TCP proxy on loopback that a test puts between one client and a shared service, to fail it.

Stopping the shared Kafka or OpenSearch fails every test that runs at the same time; a proxy
fails only the connections that go through it. The test points its server at
`proxy.address` instead of the service, then:

- `cut()`: new connections are refused (nothing listens) and open ones are reset, as when
  the service's process dies;
- `pause()`: connections are accepted but nothing is forwarded either way, as in a network
  partition (bytes already read wait, like TCP retransmissions, and arrive on restore);
- `restore()`: back to forwarding, on the same port.

It lives in `devstack` rather than under `tests/` because it belongs with the listeners it
serves (`devstack.kafka.FAULTY_BOOTSTRAP` is where a Kafka proxy must listen) and it needs no
test framework: benchmarks and manual experiments use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import socket
import struct
from dataclasses import dataclass
from types import TracebackType

_CHUNK = 65536


#: How long a restore waits for its fixed port to be free again.
REBIND_WAIT_S = 60.0


class Mode(enum.Enum):
    FLOWING = "flowing"
    PAUSED = "paused"
    CUT = "cut"


@dataclass(eq=False)
class _Link:
    """One client connection and, once made, its connection to the upstream."""

    client: asyncio.StreamWriter
    task: asyncio.Task[None]
    upstream: asyncio.StreamWriter | None = None

    def reset(self) -> None:
        """Close both sides with RST, not FIN: peers see "connection reset", not a clean end."""
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


class FaultProxy:
    """Forwards 127.0.0.1:`port` (0: any free port) to `upstream` ("host:port") until told not to.

    Use as `async with FaultProxy("127.0.0.1:9200") as proxy:`; every method runs on the
    event loop that started it.
    """

    def __init__(self, upstream: str, listen_port: int = 0) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._port = listen_port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self.mode = Mode.CUT

    @property
    def address(self) -> str:
        """Where clients connect: "127.0.0.1:<port>" (known once started)."""
        return f"127.0.0.1:{self._port}"

    @property
    def connections(self) -> int:
        """Client connections open through the proxy right now."""
        return len(self._links)

    async def start(self) -> None:
        await self._listen()
        self._set_mode(Mode.FLOWING)

    async def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        self._set_mode(Mode.CUT)
        await self._stop_listening()
        await self._reset_links()

    async def pause(self) -> None:
        """Accept connections but forward nothing, in either direction, until restored."""
        if self.mode is Mode.CUT:
            await self._listen()
        self._set_mode(Mode.PAUSED)

    async def restore(self) -> None:
        if self.mode is Mode.CUT:
            await self._listen()
        self._set_mode(Mode.FLOWING)

    async def close(self) -> None:
        await self.cut()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode is Mode.FLOWING:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _listen(self) -> None:
        # Restoring binds the same port again; SO_REUSEADDR (asyncio's default) lets it while
        # the reset connections linger in TIME_WAIT. A fixed port left free while cut can be
        # taken meanwhile by another listener on this machine (a fresh-clone CI run once
        # could not restore the Kafka proxy's 19094): wait for it rather than fail the test.
        deadline = asyncio.get_running_loop().time() + REBIND_WAIT_S
        while True:
            try:
                self._server = await asyncio.start_server(self._serve, "127.0.0.1", self._port)
                break
            except OSError as exc:
                late = asyncio.get_running_loop().time() > deadline
                if exc.errno != errno.EADDRINUSE or self._port == 0 or late:
                    raise
                await asyncio.sleep(0.2)
        self._port = self._server.sockets[0].getsockname()[1]

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _reset_links(self) -> None:
        links = list(self._links)
        for link in links:
            link.reset()
            link.task.cancel()
        await asyncio.gather(*(link.task for link in links), return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        # Held here too: asyncio keeps only a weak reference to a connection's task.
        link = _Link(writer, task)
        self._links.add(link)
        try:
            # Paused: the client is accepted, the upstream never hears of it until restored.
            await self._flowing.wait()
            try:
                up_reader, link.upstream = await asyncio.open_connection(*self._upstream)
            except OSError:
                link.reset()  # the client sees what it would see without us: a failed link
                return
            await asyncio.gather(
                self._pump(reader, link.upstream, link), self._pump(up_reader, writer, link)
            )
        except asyncio.CancelledError:
            pass  # `cut` has reset this link; the connection's task ends quietly
        finally:
            self._links.discard(link)
            writer.close()
            if link.upstream is not None:
                link.upstream.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                # Holding the chunk while paused stops reading too, so the sender feels a
                # stalled connection (its buffers fill), not data vanishing.
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            link.reset()  # one side failed, so the other fails too, as without the proxy
