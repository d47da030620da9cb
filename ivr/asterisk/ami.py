"""An AMI client on top of the ``asterisk-ami`` package, usable from threads and from asyncio.

``asterisk.ami.AMIClient`` reads the socket in its own thread and hands responses and events to
callbacks. This wrapper adds what the test caller needs: login with a clear error, actions that
raise on ``Response: Error``, an asynchronous ``Originate`` of a Local channel, and subscriptions
(queues of events that match a predicate) to wait on with a timeout. Blocking calls have ``a``-prefixed
coroutine twins that run them in a worker thread, so the event loop never blocks.

Two quirks of the package are handled here: its socket keeps the connect timeout for reads (the
listener thread would die after a few idle seconds), and its sends are not serialised.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from asterisk.ami import Action, AMIClient, Event

log = logging.getLogger(__name__)

Predicate = Callable[["AmiEvent"], bool]
_subscription_ids = itertools.count(1)


class AmiError(RuntimeError):
    """AMI could not be reached, refused the login, answered an action with an error, or timed out."""


@dataclasses.dataclass(frozen=True)
class AmiEvent:
    name: str
    fields: Mapping[str, Any]
    received_at: float = dataclasses.field(default_factory=time.monotonic)

    def get(self, key: str, default: str = "") -> str:
        value = self.fields.get(key, default)
        return value if isinstance(value, str) else str(value)

    @property
    def uniqueid(self) -> str:
        return self.get("Uniqueid")


class _Client(AMIClient):
    """The package's client, with a blocking (timeout-free) socket for the listener thread."""

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self._port), timeout=self._timeout)
        sock.settimeout(None)  # the listener blocks in recv() between events; the package kept 3 s
        self._socket = sock
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self.listen, name="ami-listener", daemon=True)
        self._thread.start()


class Subscription:
    """Events matching a predicate, queued as they arrive (thread-safe; see also ``AsyncSubscription``)."""

    def __init__(self, predicate: Predicate | None) -> None:
        self.id = next(_subscription_ids)
        self.predicate = predicate
        self._queue: queue.Queue[AmiEvent] = queue.Queue()

    def offer(self, event: AmiEvent) -> None:
        if self.predicate is None or self.predicate(event):
            self._queue.put(event)

    def get(self, timeout_s: float) -> AmiEvent:
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"no matching AMI event within {timeout_s:.1f} s") from None

    def wait_for(self, predicate: Predicate, timeout_s: float) -> AmiEvent:
        deadline = time.monotonic() + timeout_s
        while True:
            event = self.get(max(0.0, deadline - time.monotonic()))
            if predicate(event):
                return event


class AsyncSubscription(Subscription):
    """A subscription whose events are delivered into an asyncio queue on the given loop."""

    def __init__(self, predicate: Predicate | None, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(predicate)
        self._loop = loop
        self._aqueue: asyncio.Queue[AmiEvent] = asyncio.Queue()

    def offer(self, event: AmiEvent) -> None:
        if self.predicate is None or self.predicate(event):
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                self._loop.call_soon_threadsafe(self._aqueue.put_nowait, event)

    async def next(self, timeout_s: float) -> AmiEvent:
        try:
            return await asyncio.wait_for(self._aqueue.get(), timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no matching AMI event within {timeout_s:.1f} s") from None

    async def next_matching(self, predicate: Predicate, timeout_s: float) -> AmiEvent:
        deadline = time.monotonic() + timeout_s
        while True:
            event = await self.next(max(0.0, deadline - time.monotonic()))
            if predicate(event):
                return event


class AmiClient:
    """One AMI session. Methods block; the ``a``-prefixed coroutines run them in a worker thread."""

    def __init__(self, host: str, port: int, user: str, secret: str, *, timeout_s: float = 10.0) -> None:
        self.host, self.port, self.user = host, port, user
        self._secret = secret
        self.timeout_s = timeout_s
        self._client: _Client | None = None
        self._send_lock = threading.Lock()
        self._subscriptions: dict[int, Subscription] = {}
        self._subscriptions_lock = threading.Lock()
        self._disconnected = threading.Event()

    # ------------------------------------------------------------ session
    def connect(self) -> None:
        client = _Client(address=self.host, port=self.port, timeout=self.timeout_s)
        client.add_event_listener(self._on_event)
        client.add_listener(on_disconnect=self._on_disconnect)
        try:
            client.connect()
        except OSError as exc:
            raise AmiError(f"cannot reach AMI at {self.host}:{self.port}: {exc}") from exc
        self._client = client
        try:
            response = self._send(Action("Login", {"Username": self.user, "Secret": self._secret}))
        except AmiError as exc:
            self.close()
            raise AmiError(f"AMI login as {self.user!r} at {self.host}:{self.port} failed: {exc}") from None
        log.debug("AMI login ok: %s", response.get("Message", ""))

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):
            future = client.send_action(Action("Logoff", {}))
            future._timeout = 1.0
            _ = future.response
        client.finished.set()
        with contextlib.suppress(OSError):
            client._socket.shutdown(socket.SHUT_RDWR)  # wakes the listener thread's recv()
        with contextlib.suppress(OSError):
            client._socket.close()
        client._thread.join(self.timeout_s)

    def __enter__(self) -> AmiClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._disconnected.is_set()

    # ------------------------------------------------------------ actions
    def _send(self, action: Action) -> dict[str, str]:
        client = self._client
        if client is None:
            raise AmiError("not connected to AMI")
        with self._send_lock:
            try:
                future = client.send_action(action)
            except OSError as exc:
                raise AmiError(f"AMI connection lost: {exc}") from exc
        response = future.response  # waits up to timeout_s for the matching ActionID
        if response is None:
            raise AmiError(f"no AMI response to {action.name} within {self.timeout_s:.0f} s")
        keys = {str(k): str(v) for k, v in response.keys.items()}
        if response.is_error():
            raise AmiError(f"{action.name}: {keys.get('Message', 'error')}")
        return keys

    def action(self, name: str, *, variables: Mapping[str, str] | None = None, **keys: str | int) -> dict[str, str]:
        """Send one action and return its response's fields; ``Response: Error`` raises AmiError."""
        return self.send(name, keys, variables)

    def send(
        self, name: str, keys: Mapping[str, str | int], variables: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        act = Action(name, {k: str(v) for k, v in keys.items()})
        if variables:
            act.variables = dict(variables)
        return self._send(act)

    def originate_local(
        self,
        local_exten: str,
        local_context: str,
        *,
        context: str,
        exten: str = "s",
        priority: int = 1,
        caller_id: str = "",
        variables: Mapping[str, str] | None = None,
        channel_id: str | None = None,
        other_channel_id: str | None = None,
        timeout_ms: int = 30000,
    ) -> dict[str, str]:
        """Originate ``Local/<local_exten>@<local_context>`` asynchronously; its other half runs ``context``.

        The Local channel's ``;2`` half runs ``local_exten@local_context``; when it answers, the ``;1``
        half (uniqueid ``channel_id``) continues at ``exten@context``. ``other_channel_id`` names the
        ``;2`` half. The outcome arrives later as an ``OriginateResponse`` event.
        """
        keys: dict[str, str | int] = {
            "Channel": f"Local/{local_exten}@{local_context}",
            "Context": context,
            "Exten": exten,
            "Priority": priority,
            "Async": "true",
            "Timeout": timeout_ms,
        }
        if caller_id:
            keys["CallerID"] = caller_id
        if channel_id:
            keys["ChannelId"] = channel_id
        if other_channel_id:
            keys["OtherChannelId"] = other_channel_id
        return self.send("Originate", keys, variables)

    def setvar(self, name: str, value: str, channel: str | None = None) -> None:
        """Set a channel variable (channel name or uniqueid), or a global one without ``channel``."""
        keys = {"Variable": name, "Value": value}
        if channel:
            keys["Channel"] = channel
        self.send("Setvar", keys)

    def getvar(self, name: str, channel: str | None = None) -> str:
        keys = {"Variable": name}
        if channel:
            keys["Channel"] = channel
        return self.send("Getvar", keys).get("Value", "")

    def hangup(self, channel: str) -> None:
        self.action("Hangup", Channel=channel)

    # ------------------------------------------------------------ events
    def subscribe(self, predicate: Predicate | None = None) -> Subscription:
        sub = Subscription(predicate)
        self._add(sub)
        return sub

    def subscribe_async(self, predicate: Predicate | None = None) -> AsyncSubscription:
        """A subscription for coroutines; call it from the event loop that will wait on it."""
        sub = AsyncSubscription(predicate, asyncio.get_running_loop())
        self._add(sub)
        return sub

    def _add(self, sub: Subscription) -> None:
        with self._subscriptions_lock:
            self._subscriptions[sub.id] = sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._subscriptions_lock:
            self._subscriptions.pop(sub.id, None)

    def _on_event(self, event: Event, source: Any = None, **_: Any) -> None:
        converted = AmiEvent(str(event.name), dict(event.keys))
        with self._subscriptions_lock:
            subscribers: Iterable[Subscription] = list(self._subscriptions.values())
        for sub in subscribers:
            try:
                sub.offer(converted)
            except Exception:  # a faulty predicate must not kill the listener thread
                log.exception("AMI event subscriber failed on %s", converted.name)

    def _on_disconnect(self, source: Any = None, error: Exception | None = None, **_: Any) -> None:
        self._disconnected.set()
        if error is not None and self._client is not None:
            log.warning("AMI connection to %s:%s lost: %r", self.host, self.port, error)

    # ------------------------------------------------------------ asyncio twins
    async def aconnect(self) -> None:
        await asyncio.to_thread(self.connect)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def aaction(
        self, name: str, *, variables: Mapping[str, str] | None = None, **keys: str | int
    ) -> dict[str, str]:
        return await asyncio.to_thread(lambda: self.action(name, variables=variables, **keys))

    async def asetvar(self, name: str, value: str, channel: str | None = None) -> None:
        await asyncio.to_thread(self.setvar, name, value, channel)

    async def agetvar(self, name: str, channel: str | None = None) -> str:
        return await asyncio.to_thread(self.getvar, name, channel)

    async def aoriginate_local(self, local_exten: str, local_context: str, **kwargs: Any) -> dict[str, str]:
        return await asyncio.to_thread(self.originate_local, local_exten, local_context, **kwargs)
