"""The console's Try-it chats: one ``python -m ivr.console.tryit`` child process per chat (the draft's
agent loaded once, then one turn per request), its events read by a task on the console's loop.

A chat belongs to the user who started it; one per user (a new one stops the old); at most ``MAX_CHATS``
at once (each holds a Rasa agent: hundreds of MB). A chat idle for ``idle_s`` is stopped by its PID here
(the child also gives up by itself after that long). What is kept and shown are the session's masked
transcript lines, masked again; the caller's keys pass through to the child and are never kept or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ivr.config import Settings
from ivr.console.publishing import settings_env
from ivr.console.tryit import PROTOCOL
from ivr.masking import mask_text

MAX_CHATS = 4
IDLE_S = 600.0
MAX_LINES = 400


@dataclass
class Chat:
    id: str
    user: str
    locale: str
    customer: str  # the demo customer's id (C002), or "withheld"
    started: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    status: str = "starting"
    lines: list[dict[str, Any]] = field(default_factory=list)
    waiting: str = ""  # what the robot waits for (speech, digits, yes_no); "" while it loads or answers
    ended: dict[str, str] | None = None
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


def _clean(line: dict[str, Any]) -> dict[str, Any]:
    """A transcript line as shown: text masked (again), only the fields the page uses."""
    keep = ("who", "keypad", "intent", "intent_confidence", "compute_ms", "outcome", "reason", "event")
    shown = {k: line[k] for k in keep if k in line and isinstance(line[k], str | int | float | bool)}
    shown["text"] = mask_text(str(line.get("text", "")))
    return {k: mask_text(v) if isinstance(v, str) else v for k, v in shown.items()}


class Chats:
    def __init__(self, settings: Settings, idle_s: float = IDLE_S) -> None:
        self.settings = settings
        self.idle_s = idle_s
        self.chats: dict[str, Chat] = {}

    def get(self, chat_id: str, user: str) -> Chat | None:
        chat = self.chats.get(chat_id)
        return chat if chat is not None and chat.user == user else None

    def of(self, user: str, locale: str) -> Chat | None:
        return next((c for c in self.chats.values() if c.user == user and c.locale == locale), None)

    async def start(self, user: str, locale: str, customer: int, customer_id: str) -> Chat | None:
        """A new chat (the user's other chats are stopped); None when ``MAX_CHATS`` others run."""
        await self.sweep()
        for old in [c for c in self.chats.values() if c.user == user]:
            await self.stop(old)
        if sum(c.ended is None for c in self.chats.values()) >= MAX_CHATS:
            return None
        chat = Chat(secrets.token_urlsafe(12), user, locale, customer_id)
        self.chats[chat.id] = chat
        chat.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ivr.console.tryit", "--locale", locale, "--customer", str(customer),
            "--idle-s", str(self.idle_s), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=settings_env(self.settings))
        chat.task = asyncio.get_running_loop().create_task(self._read(chat))
        return chat

    async def _read(self, chat: Chat) -> None:
        assert chat.proc is not None and chat.proc.stdout is not None
        async for raw in chat.proc.stdout:
            line = raw.decode("utf-8", errors="replace")
            if not line.startswith(PROTOCOL):
                continue  # log records and library noise
            try:
                event = json.loads(line[len(PROTOCOL):])
            except ValueError:
                continue
            if "status" in event:
                chat.status = mask_text(str(event["status"]))
            chat.lines.extend(_clean(x) for x in event.get("lines", []) if isinstance(x, dict))
            del chat.lines[:-MAX_LINES]
            if "waiting" in event:
                chat.waiting, chat.status = str(event["waiting"]), ""
            if isinstance(event.get("ended"), dict):
                chat.ended = {k: mask_text(str(v)) for k, v in event["ended"].items()}
            chat.changed.set()
        code = await chat.proc.wait()
        if chat.ended is None:
            chat.ended = {"outcome": "error", "reason": f"the chat's process ended (exit code {code})"}
        chat.waiting = ""
        chat.changed.set()

    async def turn(self, chat: Chat, act: dict[str, str], timeout_s: float = 60.0) -> None:
        """Hand the caller's turn to the chat and wait for the robot's answer (or the chat's end)."""
        if not chat.waiting or chat.ended is not None or chat.proc is None or chat.proc.stdin is None:
            return
        chat.last_used = time.monotonic()
        chat.waiting = ""
        chat.changed.clear()
        chat.proc.stdin.write((json.dumps(act) + "\n").encode())
        await chat.proc.stdin.drain()
        await self.wait(chat, timeout_s)

    async def wait(self, chat: Chat, timeout_s: float) -> None:
        """Until the chat waits for the caller or has ended (at most ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while not chat.waiting and chat.ended is None and time.monotonic() < deadline:
            chat.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(chat.changed.wait(), max(0.0, deadline - time.monotonic()))

    async def stop(self, chat: Chat) -> None:
        """Stop the chat's process by its PID (SIGTERM, then SIGKILL after 5 s) and forget the chat."""
        self.chats.pop(chat.id, None)
        proc = chat.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if chat.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(chat.task, 5.0)

    async def sweep(self) -> None:
        """Stop the chats idle for ``idle_s`` (ended ones are kept that long too, for their page)."""
        now = time.monotonic()
        for chat in [c for c in self.chats.values() if now - c.last_used > self.idle_s]:
            await self.stop(chat)

    async def close(self) -> None:
        for chat in list(self.chats.values()):
            await self.stop(chat)
