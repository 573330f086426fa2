"""The fault proxy against a tiny echo server on loopback: forward, cut, pause, restore."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from devstack.proxy import FaultProxy, Mode

#: Long enough for loopback to deliver anything that was going to be delivered.
QUIET_S = 0.3


class EchoServer:
    def __init__(self) -> None:
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[tuple[EchoServer, str]]:
    server = EchoServer()
    address = await server.start()
    yield server, address
    await server.stop()


@pytest.fixture
async def proxy(echo: tuple[EchoServer, str]) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(echo[1]) as started:
        yield started


async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = address.rpartition(":")
    return await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)


async def round_trip(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], payload: bytes
) -> bytes:
    reader, writer = conn
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), 5)


async def test_forwards_both_ways_on_its_own_port(
    proxy: FaultProxy, echo: tuple[EchoServer, str]
) -> None:
    assert proxy.address != echo[1]
    conn = await connect(proxy.address)
    payload = bytes(range(256)) * 1000  # more than one chunk
    assert await round_trip(conn, payload) == payload
    assert echo[0].accepted == 1
    conn[1].close()


async def test_cut_resets_open_connections_and_refuses_new_ones(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy.address)
    assert await round_trip((reader, writer), b"before") == b"before"
    await proxy.cut()
    assert proxy.mode is Mode.CUT
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 5)
    with pytest.raises(ConnectionRefusedError):
        await connect(proxy.address)
    writer.close()


async def test_restore_after_a_cut_listens_on_the_same_address_again(
    proxy: FaultProxy,
) -> None:
    address = proxy.address
    await proxy.cut()
    await proxy.restore()
    assert proxy.address == address
    conn = await connect(address)
    assert await round_trip(conn, b"again") == b"again"
    conn[1].close()


async def test_pause_accepts_but_forwards_nothing_until_restored(
    proxy: FaultProxy, echo: tuple[EchoServer, str]
) -> None:
    open_reader, open_writer = await connect(proxy.address)
    assert await round_trip((open_reader, open_writer), b"warm") == b"warm"
    await proxy.pause()
    # An open connection: what is sent now is held, not lost and not answered.
    open_writer.write(b"held")
    await open_writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(open_reader.readexactly(4), QUIET_S)
    # A new connection is accepted, yet the upstream never sees it.
    new_reader, new_writer = await connect(proxy.address)
    new_writer.write(b"late")
    await new_writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(new_reader.readexactly(4), QUIET_S)
    assert echo[0].accepted == 1
    assert proxy.connections == 2

    await proxy.restore()
    assert await asyncio.wait_for(open_reader.readexactly(4), 5) == b"held"
    assert await asyncio.wait_for(new_reader.readexactly(4), 5) == b"late"
    assert echo[0].accepted == 2
    open_writer.close()
    new_writer.close()


async def test_a_cut_while_paused_resets_the_waiting_connections(proxy: FaultProxy) -> None:
    await proxy.pause()
    reader, writer = await connect(proxy.address)
    await asyncio.sleep(0.05)  # let the proxy accept it
    assert proxy.connections == 1
    await proxy.cut()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 5)
    assert proxy.connections == 0
    writer.close()


async def test_an_upstream_that_is_down_resets_the_client(
    echo: tuple[EchoServer, str],
) -> None:
    server, address = echo
    await server.stop()
    async with FaultProxy(address) as proxy:
        reader, writer = await connect(proxy.address)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1), 5)
        writer.close()


async def test_a_client_closing_its_side_reaches_the_upstream(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy.address)
    writer.write(b"last words")
    writer.write_eof()
    # The echo server answers, sees the end of input and closes: so must the client's side.
    assert await asyncio.wait_for(reader.read(), 5) == b"last words"
    writer.close()
    for _ in range(100):
        if proxy.connections == 0:
            break
        await asyncio.sleep(0.01)
    assert proxy.connections == 0
