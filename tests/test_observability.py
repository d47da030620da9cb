"""/metrics, /health and the JSON logs, on a running robot."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
from pathlib import Path

from ivr.app import build_robot
from ivr.config import Settings
from ivr.testing.callfile import CallFile, Expectation, Turn
from ivr.testing.harness import ScriptedAsterisk
from tests.conftest import SuiteDirs


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_metrics_health_and_logs(demo_settings: Settings, suite_dirs: SuiteDirs) -> None:
    robot = build_robot(demo_settings, text_input=True)
    await robot.warm_up()
    await robot.start("127.0.0.1", 0)
    try:
        assert robot.server is not None
        status, body = await http_get(robot.http_port, "/health")
        assert status == 200
        assert json.loads(body)["parts"] == {"database": "up", "dialogue": "up"}
        call = CallFile(Path("m.yaml"), "13800000001", "zh-CN", (Turn("say", "我要转人工"),), Expectation())
        report = await ScriptedAsterisk(call, locale="zh-CN", text_mode=True).run("127.0.0.1", robot.server.port)
        assert report.outcome == "transfer"
        status, metrics = await http_get(robot.http_port, "/metrics")
        assert status == 200
        text = metrics.decode()
        assert "ivr_calls_answered_total 1.0" in text
        assert 'ivr_calls_transferred_total{reason="caller_request"} 1.0' in text
        assert "ivr_calls_active 0.0" in text
        assert "ivr_turn_latency_seconds_count" in text
        assert (await http_get(robot.http_port, "/nope"))[0] == 404
    finally:
        await robot.stop()
    # Every line the session logged for that call carries its call ID.
    lines = [json.loads(line) for line in suite_dirs.log_file.read_text(encoding="utf-8").splitlines()]
    ended = [e for e in lines if e["logger"] == "ivr.session" and e["msg"] == "call ended"]
    assert ended and all(e["call_id"] not in ("", "-") for e in ended)


async def test_health_reports_a_database_that_is_down(demo_settings: Settings, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    settings = dataclasses.replace(demo_settings, database_url=f"sqlite:///{blocker}/db.sqlite")
    robot = build_robot(settings, text_input=True)
    await robot.start("127.0.0.1", 0)
    try:
        status, body = await http_get(robot.http_port, "/health")
    finally:
        await robot.stop()
    assert status == 503
    # Not warmed up either: no dialogue model is loaded, so the dialogue is down too.
    assert json.loads(body) == {"status": "degraded", "parts": {"database": "down", "dialogue": "down"}}


async def test_health_checks_the_dialogue_for_real(demo_settings: Settings, tmp_path: Path) -> None:
    """Up only while a model is loaded and a parse answers in time; down without a model, and down
    while the agent is too busy to parse (its loop blocked), up again after. A dialogue that answered
    within HEALTH_FRESH_S is not probed again (HAProxy and the supervisor ask twice a second)."""
    import time

    from ivr.accounts.store import SqlAccountStore
    from ivr.dialogue.engine import HEALTH_FRESH_S, HEALTH_PARSE_S, RasaEngine

    store = SqlAccountStore.from_settings(demo_settings)
    no_models = RasaEngine(demo_settings, store, locales=["zh-CN"], models_dir=tmp_path / "no-models")
    with contextlib.suppress(Exception):
        await no_models.warm_up()
    assert await no_models.healthy() is False

    engine = RasaEngine(demo_settings, store, locales=["zh-CN"])
    assert await engine.healthy() is False  # nothing loaded yet, and the check does not load
    await engine.warm_up()
    robot = build_robot(demo_settings, text_input=True, dialogue=engine, store=store)
    await robot.start("127.0.0.1", 0)
    try:
        status, body = await http_get(robot.http_port, "/health")
        assert (status, json.loads(body)["parts"]["dialogue"]) == (200, "up")

        blocked_s = HEALTH_FRESH_S + HEALTH_PARSE_S + 1.5

        async def busy() -> None:
            time.sleep(blocked_s)  # noqa: ASYNC251  (blocks the zh-CN agent's loop on purpose, as a stuck turn would)

        await asyncio.sleep(HEALTH_FRESH_S)  # the check's own proof is stale: the next check parses
        await engine.classify("你好", "zh-CN")  # a call's turn: the dialogue has just answered
        blocked = engine._agents["zh-CN"].submit(busy())
        status, body = await http_get(robot.http_port, "/health")
        assert (status, json.loads(body)["parts"]["dialogue"]) == (200, "up")  # no probe: it answered just now
        await asyncio.sleep(HEALTH_FRESH_S)
        status, body = await http_get(robot.http_port, "/health")  # a probe, into the blocked loop
        assert (status, json.loads(body)["parts"]["dialogue"]) == (503, "down")
        await asyncio.wrap_future(blocked)
        status, body = await http_get(robot.http_port, "/health")
        assert (status, json.loads(body)["parts"]["dialogue"]) == (200, "up")
    finally:
        await robot.stop()
        await engine.aclose()
        store.close()


def test_log_lines_mask_digits_but_keep_the_time_readable() -> None:
    from ivr.logs import JsonFormatter

    record = logging.LogRecord("ivr.session", logging.INFO, __file__, 1, "caller 13800000001 said 4821", None, None)
    record.call_id = "13800000001-0a1b2c3d"  # a call ID can carry a caller's digits (a hostile sender)
    line = json.loads(JsonFormatter().format(record))
    assert "13800000001" not in line["msg"] and "0001" in line["msg"]
    assert "13800000001" not in line["call_id"] and line["call_id"].endswith("a1b2c3d")  # still matchable
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", line["ts"])
