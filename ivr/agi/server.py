"""The asyncio FastAGI server: one call session per connection, an admission limit, graceful stop.

The server knows nothing about dialogues: it reads the AGI environment, checks the peer, and hands an
``AgiChannel`` to the handler it was given (``ivr.app.CallHandler``). A call beyond capacity still
gets a spoken "please hold" and goes to the human queue, never a silent refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable

from ivr.agi.connection import AgiChannel, AgiConnection
from ivr.agi.protocol import AgiEnvironment, AgiError
from ivr.config import Settings
from ivr.parts import CallerHangup

log = logging.getLogger(__name__)

Handler = Callable[[AgiEnvironment, AgiChannel], Awaitable[None]]


def peer_allowed(peer: str, allowed: tuple[str, ...]) -> bool:
    """True when the peer address is in the allowed list (addresses or networks, e.g. 10.0.0.0/24)."""
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    # Bound to "::", the kernel hands IPv4 peers over as IPv4-mapped IPv6 (::ffff:a.b.c.d).
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for entry in allowed:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


class FastAgiServer:
    def __init__(self, settings: Settings, handler: Handler, over_capacity: Handler) -> None:
        self._settings = settings
        self._handler = handler
        self._over_capacity = over_capacity
        self._server: asyncio.base_events.Server | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self.rejected_peers = 0

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        self._server = await asyncio.start_server(
            self._accept,
            host or self._settings.agi_host,
            self._settings.agi_port if port is None else port,
            backlog=1024,
            reuse_address=True,
        )
        log.info("FastAGI server listening on %s", ", ".join(str(s.getsockname()) for s in self._server.sockets))

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting; let live calls finish up to the deadline, then cancel what is left."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        grace = self._settings.stop_grace_s if grace_s is None else grace_s
        if self._calls:
            log.info("waiting up to %.0f s for %d live calls", grace, len(self._calls))
            _, pending = await asyncio.wait(set(self._calls), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        try:
            await self._serve_connection(reader, writer)
        finally:
            self._calls.discard(task)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if peername else ""
        if not peer_allowed(peer, self._settings.agi_allowed_peers):
            self.rejected_peers += 1
            log.warning("refused a FastAGI connection from a peer that is not an allowed Asterisk")
            writer.close()
            return
        connection = AgiConnection(
            reader,
            writer,
            header_timeout_s=self._settings.header_timeout_s,
            command_timeout_s=self._settings.command_timeout_s,
        )
        try:
            environment = await connection.read_environment()
            channel = AgiChannel(connection)
            # _calls includes this connection: over the limit means more than max_calls at once.
            if len(self._calls) > self._settings.max_calls:
                await self._over_capacity(environment, channel)
            else:
                await self._handler(environment, channel)
        except CallerHangup:
            pass
        except AgiError as exc:
            log.warning("FastAGI connection dropped: %s", exc)
        except (ConnectionError, OSError) as exc:
            log.warning("FastAGI connection lost: %s", exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error on a FastAGI connection")
        finally:
            with contextlib.suppress(Exception):
                await connection.close()
