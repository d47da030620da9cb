"""Prometheus metrics and the ``/metrics`` + ``/health`` HTTP endpoint (one registry per server)."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable

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
        self.turn_latency = Histogram(
            "ivr_turn_latency_seconds",
            "Caller's recording handed over -> robot's reply starts playing",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


HealthCheck = Callable[[], bool] | Callable[[], Awaitable[bool]]
HEALTH_CHECK_S = 3.0  # a check that takes longer counts as "down"


class HealthServer:
    """A small HTTP/1.0 endpoint: ``GET /metrics`` and ``GET /health`` (JSON, 503 when a part is down).

    A check is a blocking function (run in a thread) or a coroutine function; either must answer True
    within ``HEALTH_CHECK_S``."""

    def __init__(self, metrics: Metrics, checks: dict[str, HealthCheck]) -> None:
        self._metrics = metrics
        self._checks = checks
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def health(self) -> tuple[bool, dict[str, str]]:
        status: dict[str, str] = {}
        for name, probe in self._checks.items():
            try:
                work = probe() if inspect.iscoroutinefunction(probe) else asyncio.to_thread(probe)
                ok = await asyncio.wait_for(work, HEALTH_CHECK_S)
            except Exception:  # a probe that fails or hangs means "down"
                ok = False
            status[name] = "up" if ok else "down"
        return all(v == "up" for v in status.values()), status

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            if path == "/metrics":
                body, status, ctype = self._metrics.exposition(), "200 OK", "text/plain; version=0.0.4"
            elif path == "/health":
                ok, detail = await self.health()
                body = json.dumps({"status": "ok" if ok else "degraded", "parts": detail}).encode()
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
