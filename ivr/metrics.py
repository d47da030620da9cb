"""Prometheus metrics and the ``/metrics`` + ``/health`` HTTP endpoint (one registry per server)."""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls_answered = Counter("ivr_calls_answered", "Calls answered by the robot", registry=r)
        self.calls_active = Gauge("ivr_calls_active", "Calls in progress", registry=r)
        self.calls_completed = Counter("ivr_calls_completed", "Calls the robot served to the end", registry=r)
        self.calls_transferred = Counter(
            "ivr_calls_transferred", "Calls handed to a person", ["reason"], registry=r
        )
        self.calls_caller_hangup = Counter("ivr_calls_caller_hangup", "Calls the caller ended", registry=r)
        self.calls_failed = Counter("ivr_calls_failed", "Calls that ended in an error", registry=r)
        self.calls_over_capacity = Counter(
            "ivr_calls_over_capacity", "Calls beyond the admission limit, told to hold", registry=r
        )
        self.verification_failures = Counter(
            "ivr_verification_failures", "Failed caller verifications", registry=r
        )
        self.part_errors = Counter("ivr_part_errors", "Failures of a part", ["part"], registry=r)
        self.calls_served_by = Counter(
            "ivr_calls_served_by", "Calls by how the caller's requests reached the robot", ["input"], registry=r
        )  # input: voice | keypad | mixed | none
        self.keypad_menu_offered = Counter(
            "ivr_keypad_menu_offered", "Calls offered the keypad menu, by why", ["reason"], registry=r
        )
        self.turn_latency = Histogram(
            "ivr_turn_latency_seconds",
            "Caller's recording handed over -> robot's reply starts playing",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
            registry=r,
        )
        # releases (ivr.live): 1 for the release each locale's new calls get (0 = the working copy)
        self.release = Gauge("ivr_release", "Release served to new calls, per locale", ["locale", "number"], registry=r)
        self.release_pull_failures = Counter(
            "ivr_release_pull_failures",
            "Releases the account database named as current that this pod refused (no archive, damaged)", registry=r,
        )
        self.reload_failures = Counter(
            "ivr_reload_failures", "Releases that failed to load (the server kept the current one)", registry=r
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


HealthCheck = Callable[[], bool] | Callable[[], Awaitable[bool]]
HEALTH_CHECK_S = 3.0  # a check that takes longer counts as "down"


class HealthServer:
    """A small HTTP/1.0 endpoint: ``GET /metrics`` and ``GET /health`` (JSON, 503 when a part is down).

    A check is a blocking function (run in a thread) or a coroutine function; either must answer True
    within ``HEALTH_CHECK_S``."""

    def __init__(
        self,
        metrics: Metrics,
        checks: dict[str, HealthCheck],
        *,
        reload: Callable[[], Awaitable[tuple[int, dict[str, Any]]]] | None = None,
        reload_token: str = "",
        info: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """``reload`` serves ``POST /reload`` (only with ``Authorization: Bearer <reload_token>``);
        ``info`` adds fields to the ``/health`` document (the releases served)."""
        self._metrics = metrics
        self._checks = checks
        self._reload = reload
        self._reload_token = reload_token
        self._info = info
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def health(self, only: Collection[str] | None = None) -> tuple[bool, dict[str, str]]:
        """Every check (or those named in ``only``): all up, and each one's state."""
        status: dict[str, str] = {}
        for name, probe in self._checks.items():
            if only is not None and name not in only:
                continue
            try:
                work = probe() if inspect.iscoroutinefunction(probe) else asyncio.to_thread(probe)
                ok = await asyncio.wait_for(work, HEALTH_CHECK_S)
            except Exception:  # a probe that fails or hangs means "down"
                ok = False
            status[name] = "up" if ok else "down"
        return all(v == "up" for v in status.values()), status

    async def _reload_request(self, method: str, reader: asyncio.StreamReader) -> tuple[bytes, str, str]:
        """``POST /reload`` with the token: load the current releases (the answer waits for it)."""
        headers: dict[str, str] = {}
        for _ in range(50):  # headers, bounded
            line = await asyncio.wait_for(reader.readline(), 5.0)
            if not line.strip():
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if self._reload is None:
            return b"not found\n", "404 Not Found", "text/plain"
        if method != "POST":
            return b"use POST\n", "405 Method Not Allowed", "text/plain"
        given = headers.get("authorization", "")
        given = given[7:].strip() if given.lower().startswith("bearer ") else ""
        if not self._reload_token or not hmac.compare_digest(given.encode(), self._reload_token.encode()):
            log.warning("POST /reload refused: missing or wrong token")
            return b"a valid reload token is needed (Authorization: Bearer ...)\n", "401 Unauthorized", "text/plain"
        code, result = await self._reload()
        status = {200: "200 OK", 202: "202 Accepted"}.get(code, "500 Internal Server Error")
        return json.dumps(result).encode(), status, "application/json"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            method = parts[0].upper() if parts else ""
            if path == "/reload":
                body, status, ctype = await self._reload_request(method, reader)
            elif path == "/metrics":
                body, status, ctype = self._metrics.exposition(), "200 OK", "text/plain; version=0.0.4"
            elif path.partition("?")[0] == "/health":
                # ?part=dialogue: only this process's own parts (HAProxy's check in a pod: a shared
                # database that is down must not take every worker out of the balancer at once)
                only = parse_qs(path.partition("?")[2]).get("part")
                ok, detail = await self.health(only)
                document: dict[str, Any] = {"status": "ok" if ok else "degraded", "parts": detail}
                if self._info is not None:
                    document.update(self._info())
                body = json.dumps(document).encode()
                status, ctype = ("200 OK" if ok else "503 Service Unavailable"), "application/json"
            else:
                body, status, ctype = b"not found\n", "404 Not Found", "text/plain"
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()
