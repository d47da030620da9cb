"""The scale-out option: the same conversation checks against real Rasa HTTP servers.

Started here as real processes on loopback ports, exactly as documented in ``dialogs/server/``:
``rasa run actions --actions ivr.dialogue.action_server`` (the custom actions, on a demo SQLite
database) and one ``rasa run --enable-api --auth-token ...`` per locale (a server serves one model),
with ``dialogs/server/credentials.yml``: the turns go through the token-protected ``ivr_rest`` channel
(``ivr.dialogue.secure_channel.TokenRestInput``), never Rasa's unauthenticated ``rest`` channel.
Production reaches them with a ``{locale}`` URL template; here each locale is a port.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest

from ivr.config import LOCALES, load_settings
from ivr.dialogue import rasa_environment
from ivr.dialogue.remote import CHANNEL_PATH, WEBHOOK_PATH, RemoteRasaEngine
from ivr.dialogue.servers import SERVER_DIR, RasaServers, free_port, rasa_servers
from ivr.dialogue.train import train_locales
from ivr.parts import CallInfo, DialogueError, UserInput
from tests.services import postgres_cluster, redis_server

# The same conversation checks as the in-process engine; pytest runs them here with this module's
# ``engine`` and ``db_path`` fixtures.
from tests.test_dialogue import (  # noqa: F401
    CALLERS,
    make_store,
    new_call,
    test_a_person_at_any_point,
    test_an_unregistered_number_is_answered_like_a_registered_one,
    test_known_caller_verifies_and_hears_the_real_balance,
    test_noise_and_fillers_are_not_understood,
    test_repeat_go_back_and_out_of_scope,
    test_verified_caller_is_not_asked_again_in_the_same_call,
    test_withheld_or_unknown_number_keys_the_registered_phone,
    test_wrong_digits_never_disclose_and_three_failures_transfer,
)


@pytest.fixture(scope="module")
def models() -> Path:
    """Train what is missing or changed (skipped when the data is unchanged)."""
    settings = load_settings(environ={})
    train_locales(settings.dialogs_dir, settings.models_dir)
    return settings.models_dir


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("remote") / "accounts.db"
    make_store(path).close()
    return path


@pytest.fixture(scope="module")
def servers(models: Path, db_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RasaServers]:
    settings = replace(load_settings(environ={}), database_url=f"sqlite:///{db_path}", models_dir=models)
    # many calls share this database; the lockout has its own test
    extra = {"IVR_LOCKOUT_FAILURES": "10000", "IVR_PHONE_LOOKUP_LIMIT": "10000", "IVR_PHONE_LOOKUP_LIMIT_WITHHELD": "10000"}
    with rasa_servers(settings, LOCALES, tmp_path_factory.mktemp("rasa-servers"), extra_env=extra) as running:
        yield running


class PortPerLocale(RemoteRasaEngine):
    """Production uses a host name per locale (``http://rasa-{locale}:5005``); here each locale has a port."""

    def __init__(self, servers: RasaServers) -> None:
        settings = replace(load_settings(environ={}), dialogue_timeout_s=60.0, locale="en-US")
        super().__init__(settings, url="http://127.0.0.1:{locale}", token=servers.token)
        self._ports = servers.ports

    def base_url(self, locale: str) -> str:
        return f"http://127.0.0.1:{self._ports[locale]}" if locale in self._ports else "http://127.0.0.1:1"


@pytest.fixture
async def engine(servers: RasaServers) -> AsyncIterator[RemoteRasaEngine]:
    eng = PortPerLocale(servers)
    yield eng
    await eng.aclose()


@pytest.fixture
def overdue_days() -> str:
    # The action server's store runs on the real clock.
    return str((dt.date.today() - dt.date(2026, 11, 16)).days)


# ---------------------------------------------------------------- remote-only checks
async def test_remote_server_is_up_and_classifies(engine: RemoteRasaEngine) -> None:
    await engine.warm_up()
    assert (await engine.classify("yes", "en-US"))[0] == "affirm"
    assert (await engine.classify("转人工", "zh-CN"))[0] == "human"


async def test_close_wipes_the_conversation_on_the_server(engine: RemoteRasaEngine, servers: RasaServers) -> None:
    c = CALLERS["en-US"]
    call = new_call("en-US", c.phone)
    await engine.start(call)
    await engine.handle(call, UserInput(c.ask_balance))
    await engine.handle(call, UserInput(c.digits, keypad=True))
    url = f"http://127.0.0.1:{servers.ports['en-US']}/conversations/{call.call_id}/tracker"
    params = {"token": servers.token, "include_events": "ALL"}
    async with aiohttp.ClientSession() as session:
        async with session.get(url, params=params) as response:
            before = await response.json()
        await engine.close(call)
        async with session.get(url, params=params) as response:
            after = await response.json()
    assert before["slots"]["verified"] is True
    assert after["slots"]["verified"] is not True
    assert not [e for e in after["events"] if e.get("event") in ("user", "bot")]


# ---------------------------------------------------------------- shared tracker stores really forget a call
@dataclass
class StoreUnderTest:
    servers: RasaServers
    # every stored record of one conversation, serialised as the store keeps it
    records: Callable[[str], list[str]]
    # every stored record of any conversation
    everything: Callable[[], list[str]]


def _sql_records(url: str) -> tuple[Callable[[str], list[str]], Callable[[], list[str]]]:
    import sqlalchemy as sa

    def query(sql: str, **params: str) -> list[str]:
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                if not sa.inspect(conn).has_table("events"):
                    return []
                return [str(row[0]) for row in conn.execute(sa.text(sql), params)]
        finally:
            engine.dispose()

    return (lambda sender: query("SELECT data FROM events WHERE sender_id = :s ORDER BY id", s=sender),
            lambda: query("SELECT data FROM events ORDER BY id"))


def _redis_records(host: str, port: int) -> tuple[Callable[[str], list[str]], Callable[[], list[str]]]:
    import redis

    client = redis.StrictRedis(host=host, port=port, db=0, decode_responses=True)

    def of(sender: str) -> list[str]:
        value = client.get(f"ivr:tracker:{sender}")  # key_prefix "ivr" in endpoints-redis.yml
        return [value] if value is not None else []

    def everything() -> list[str]:
        return [str(client.get(key)) for key in client.keys("*")]

    return of, everything


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "redis"])
def shared_store(request: pytest.FixtureRequest, models: Path, db_path: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreUnderTest]:
    """An en-US Rasa server with the shipped endpoints-sql.yml (on SQLite, then on a real PostgreSQL)
    or endpoints-redis.yml (on a real Redis)."""
    settings = replace(load_settings(environ={}), database_url=f"sqlite:///{db_path}", models_dir=models)
    work = tmp_path_factory.mktemp(f"rasa-{request.param}")
    with contextlib.ExitStack() as stack:
        if request.param == "redis":
            host, port = stack.enter_context(redis_server())
            env = {"IVR_REDIS_HOST": host, "IVR_REDIS_PORT": str(port)}
            endpoints = SERVER_DIR / "endpoints-redis.yml"
            records, everything = _redis_records(host, port)
        else:
            url = (stack.enter_context(postgres_cluster()) if request.param == "postgresql"
                   else f"sqlite:///{work / 'rasa-tracker.db'}")
            env = {"IVR_RASA_TRACKER_DB_URL": url}
            endpoints = SERVER_DIR / "endpoints-sql.yml"
            records, everything = _sql_records(url)
        env["IVR_LOCKOUT_FAILURES"] = "10000"
        running = stack.enter_context(rasa_servers(settings, ["en-US"], work, extra_env=env, endpoints=endpoints))
        yield StoreUnderTest(running, records, everything)


async def test_close_deletes_the_conversation_from_the_shared_tracker_store(shared_store: StoreUnderTest) -> None:
    c = CALLERS["en-US"]
    engine = PortPerLocale(shared_store.servers)
    try:
        call = new_call("en-US", c.phone)
        await engine.start(call)
        await engine.handle(call, UserInput(c.ask_balance))
        verified = await engine.handle(call, UserInput(c.digits, keypad=True))
        assert verified.verified
        # The store really holds the call: the keyed ID digits and the caller ID are in its records.
        held = "\n".join(shared_store.records(call.call_id))
        assert c.digits in held and c.phone in held

        await engine.close(call)
        assert shared_store.records(call.call_id) == []
        everything = "\n".join(shared_store.everything())
        assert call.call_id not in everything
        assert c.digits not in everything and c.phone not in everything
    finally:
        await engine.aclose()


async def test_rasa_replacing_the_events_does_not_delete_them(shared_store: StoreUnderTest) -> None:
    """Why close() does not use Rasa's API: ``PUT .../tracker/events`` with no events, what the robot used
    to send, leaves every event in these stores (if this ever fails, Rasa changed; close() stays right)."""
    c = CALLERS["en-US"]
    engine = PortPerLocale(shared_store.servers)
    base = shared_store.servers.url("en-US")
    try:
        call = new_call("en-US", c.phone)
        await engine.start(call)
        await engine.handle(call, UserInput(c.ask_balance))
        await engine.handle(call, UserInput(c.digits, keypad=True))
        async with aiohttp.ClientSession() as session:
            async with session.put(f"{base}/conversations/{call.call_id}/tracker/events", json=[],
                                   params={"token": shared_store.servers.token}) as response:
                assert response.status == 200
        assert c.digits in "\n".join(shared_store.records(call.call_id))
        await engine.close(call)
        assert shared_store.records(call.call_id) == []
    finally:
        await engine.aclose()


async def test_the_delete_route_needs_the_token(servers: RasaServers) -> None:
    c = CALLERS["en-US"]
    engine = PortPerLocale(servers)
    call = new_call("en-US", c.phone)
    url = f"{servers.url('en-US')}{CHANNEL_PATH}/conversations/{call.call_id}"
    api = {"token": servers.token, "include_events": "ALL"}
    try:
        await engine.start(call)
        await engine.handle(call, UserInput(c.ask_balance))
        async with aiohttp.ClientSession() as session:
            for headers, params in (({}, {}), ({"Authorization": "Bearer wrong"}, {}), ({}, {"token": servers.token})):
                async with session.delete(url, headers=headers, params=params) as response:
                    assert response.status == 401
            async with session.get(f"{servers.url('en-US')}/conversations/{call.call_id}/tracker",
                                   params=api) as response:
                kept = await response.json()
            assert [e for e in kept["events"] if e.get("event") == "user"]  # refused: nothing was deleted
            async with session.delete(url, headers={"Authorization": f"Bearer {servers.token}"}) as response:
                assert response.status == 200
                assert (await response.json())["deleted"] == 1
    finally:
        await engine.aclose()


def test_forget_conversation_cleans_wrapped_stores_and_refuses_unknown_ones(tmp_path: Path) -> None:
    import asyncio

    from rasa.core.tracker_store import (
        AwaitableTrackerStore,
        FailSafeTrackerStore,
        InMemoryTrackerStore,
        SQLTrackerStore,
        TrackerStore,
    )
    from rasa.shared.core.domain import Domain
    from rasa.shared.core.events import UserUttered
    from rasa.shared.core.trackers import DialogueStateTracker

    from ivr.dialogue.secure_channel import UnsupportedTrackerStore, forget_conversation

    domain = Domain.empty()

    def tracker(sender: str) -> DialogueStateTracker:
        # digits of no demo customer: the "kept" conversation stays on disk on purpose
        return DialogueStateTracker.from_events(sender, [UserUttered('/inform_digits{"digits":"2468"}')])

    sql = SQLTrackerStore(domain, host=f"sqlite:///{tmp_path / 'rasa.db'}")
    fallback = InMemoryTrackerStore(domain)
    wrapped = FailSafeTrackerStore(AwaitableTrackerStore(sql), fallback_tracker_store=fallback)
    for sender in ("gone", "kept"):
        asyncio.run(sql.save(tracker(sender)))
        asyncio.run(fallback.save(tracker(sender)))  # as if the SQL store had failed once
    assert forget_conversation(wrapped, "gone") == 2  # one SQL event, one in-memory tracker
    assert asyncio.run(sql.retrieve("gone")) is None and "gone" not in fallback.store
    assert asyncio.run(sql.retrieve("kept")) is not None and "kept" in fallback.store

    class ElsewhereTrackerStore(TrackerStore):  # e.g. Mongo or Dynamo: not supported
        pass

    for unknown in (ElsewhereTrackerStore(domain), FailSafeTrackerStore(sql, fallback_tracker_store=ElsewhereTrackerStore(domain))):
        with pytest.raises(UnsupportedTrackerStore, match="ElsewhereTrackerStore"):
            forget_conversation(unknown, "kept")
    assert asyncio.run(sql.retrieve("kept")) is not None  # refused before touching any store


async def test_wrong_token_and_unreachable_server_are_dialogue_errors(servers: RasaServers) -> None:
    settings = replace(load_settings(environ={}), dialogue_timeout_s=10.0)
    wrong = RemoteRasaEngine(settings, url=f"http://127.0.0.1:{servers.ports['en-US']}", token="wrong")
    gone = RemoteRasaEngine(settings, url=f"http://127.0.0.1:{free_port()}", token=servers.token)
    try:
        with pytest.raises(DialogueError, match="401"):
            await wrong.classify("hello", "en-US")
        with pytest.raises(DialogueError, match="401"):  # the webhook refuses the turn itself
            await wrong.start(CallInfo("wrong-token-call", "", "en-US"))
        with pytest.raises(DialogueError):
            await gone.start(CallInfo("unreachable", "", "en-US"))
    finally:
        await wrong.aclose()
        await gone.aclose()


def test_rasa_wrote_its_files_in_the_service_home_not_the_users(servers: RasaServers, models: Path) -> None:
    # Rasa's CLI writes its telemetry consent file in $HOME even with telemetry off: $HOME is ours.
    home = Path(rasa_environment(models)["HOME"])
    assert (home / ".config" / "rasa" / "global.yml").is_file()
    assert home != Path(os.path.expanduser("~"))


# ---------------------------------------------------------------- the webhook and the listeners are locked down
async def test_webhook_refuses_requests_without_the_right_token(servers: RasaServers) -> None:
    base = f"http://127.0.0.1:{servers.ports['en-US']}"
    api = {"token": servers.token}
    refused = {
        "no header": ({}, {}),
        "wrong token": ({"Authorization": "Bearer wrong"}, {}),
        "right token with one character more": ({"Authorization": f"Bearer {servers.token}x"}, {}),
        "empty bearer": ({"Authorization": "Bearer "}, {}),
        "token without the Bearer scheme": ({"Authorization": servers.token}, {}),
        "token as Basic credentials": ({"Authorization": f"Basic {servers.token}"}, {}),
        "token as ?token= (the API's way, not the webhook's)": ({}, {"token": servers.token}),
    }
    async with aiohttp.ClientSession() as session:
        for what, (headers, params) in refused.items():
            sender = f"intruder-{secrets.token_hex(6)}"
            body = {"sender": sender, "message": "what is my balance", "metadata": {"locale": "en-US"}}
            async with session.post(base + WEBHOOK_PATH, json=body, headers=headers, params=params) as response:
                assert response.status == 401, what
                assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), what
                assert "balance" not in await response.text(), what
            # No conversation was created: Rasa's /story answers 404 for an unknown conversation.
            async with session.get(f"{base}/conversations/{sender}/story", params=api) as response:
                assert response.status == 404, what

        # The same request with the token goes through and creates the conversation (so the 404s above
        # mean "refused", not "this check cannot see conversations").
        sender = f"caller-{secrets.token_hex(6)}"
        body = {"sender": sender, "message": "hello", "metadata": {"locale": "en-US", "call_id": sender}}
        headers = {"Authorization": f"Bearer {servers.token}"}
        async with session.post(base + WEBHOOK_PATH, json=body, headers=headers) as response:
            assert response.status == 200
            messages = await response.json()
        assert isinstance(messages, list) and messages and all(m["recipient_id"] == sender for m in messages)
        async with session.get(f"{base}/conversations/{sender}/tracker", params=api) as response:
            tracker = await response.json()
        user_events = [e for e in tracker["events"] if e.get("event") == "user"]
        assert [e["text"] for e in user_events] == ["hello"]
        assert user_events[0]["input_channel"] == "ivr_rest"
        assert user_events[0]["metadata"]["call_id"] == sender  # metadata passed through as by Rasa's REST
        async with session.put(f"{base}/conversations/{sender}/tracker/events", json=[], params=api) as response:
            assert response.status == 200


async def test_builtin_unauthenticated_rest_channel_is_not_enabled(servers: RasaServers) -> None:
    url = f"http://127.0.0.1:{servers.ports['en-US']}/webhooks/rest/webhook"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"sender": "intruder", "message": "hello"}) as response:
            assert response.status == 404


def test_channel_name_matches_the_engine_and_an_empty_token_is_refused() -> None:
    from rasa.shared.exceptions import RasaException

    from ivr.dialogue.secure_channel import TokenRestInput

    assert WEBHOOK_PATH == f"/webhooks/{TokenRestInput.name()}/webhook"
    for credentials in (None, {}, {"token": ""}, {"token": "   "}, {"token": 12345}):
        with pytest.raises(RasaException, match="token"):
            TokenRestInput.from_credentials(credentials)


def listening_addresses(port: int) -> set[str]:
    """The local addresses that listen on TCP ``port``, from the kernel's socket tables (Linux)."""
    found: set[str] = set()
    for table, width in ((Path("/proc/net/tcp"), 4), (Path("/proc/net/tcp6"), 16)):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(words if width == 16 else words[:4])))
    return found


def test_action_server_and_rasa_servers_listen_on_loopback_only(servers: RasaServers) -> None:
    # rasa_sdk has no authentication at all: its port must not be reachable from other hosts.
    assert listening_addresses(servers.actions_port) == {"127.0.0.1"}
    for locale, port in servers.ports.items():
        assert listening_addresses(port) == {"127.0.0.1"}, locale


async def test_responses_marked_not_interruptible_reach_the_reply_over_http_too() -> None:
    """The webhook of ``TokenRestInput`` answers with each response's metadata (Rasa's own collecting
    channel drops it), and the remote engine's reply lists the texts marked ``interruptible: false``."""
    from rasa.core.channels.channel import CollectingOutputChannel, UserMessage

    from ivr.dialogue.remote import reply_from_server
    from ivr.dialogue.secure_channel import _with_response_metadata

    async def agent(message: UserMessage) -> None:  # what Rasa's agent does: the turn's responses, to the channel
        await message.output_channel.send_response(
            message.sender_id, {"text": "Calls are recorded.", "metadata": {"interruptible": False}, "utter_action": "utter_notice"})
        await message.output_channel.send_response(message.sender_id, {"text": "Hello.", "utter_action": "utter_greet"})

    collector = CollectingOutputChannel()  # the one RestInput's webhook makes, and whose messages it returns
    await _with_response_metadata(agent)(UserMessage("hi", collector, "call-1"))
    assert [(m["text"], m.get("metadata")) for m in collector.messages] == [
        ("Calls are recorded.", {"interruptible": False}), ("Hello.", None)]
    reply = reply_from_server(collector.messages, {"slots": {}, "latest_message": {"intent": {"name": "greet"}}})
    assert reply.texts == ("Calls are recorded.", "Hello.") and reply.must_hear == ("Calls are recorded.",)
