"""The ops console over HTTP (issue #14): ``ivr console`` as a real process on a copy of the dialogs, users
made with ``ivr console adduser``; login, sessions, roles, CSRF, escaping, bad input, stale drafts, listen,
the publish page's checks and diff, the audit log. No training here (tests/test_console_browser.py
publishes for real)."""

from __future__ import annotations

import dataclasses
import http.client
import io
import re
import shutil
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ivr.config import PROJECT_ROOT, Settings
from ivr.console.security import Signer, load_key

from .console_helpers import Client, ConsoleWorkspace, csrf_of, make_workspace, running_console, version_of

LOCALE = "en-US"
GREETING = "Welcome to the customer service line."


@pytest.fixture(scope="module")
def ws(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> ConsoleWorkspace:
    root = tmp_path_factory.mktemp("console")
    return make_workspace(base_settings, root, f"sqlite:///{root / 'accounts.db'}")


@pytest.fixture(scope="module")
def port(ws: ConsoleWorkspace) -> Iterator[int]:
    with running_console(ws, ws.root / "console.log") as number:
        yield number


@pytest.fixture(autouse=True)
def fresh_draft(ws: ConsoleWorkspace) -> None:
    """Every test starts from the shipped dialog files."""
    shutil.rmtree(ws.settings.dialogs_dir / LOCALE)
    shutil.copytree(PROJECT_ROOT / "dialogs" / LOCALE, ws.settings.dialogs_dir / LOCALE)


def domain(ws: ConsoleWorkspace) -> Path:
    return ws.settings.dialogs_dir / LOCALE / "domain.yml"


def texts(ws: ConsoleWorkspace) -> dict[str, str]:
    data = yaml.safe_load(domain(ws).read_text(encoding="utf-8"))
    return {name: variations[0]["text"] for name, variations in data["responses"].items()}


def save(client: Client, page: str, name: str, text: str, **extra: str) -> tuple[int, str]:
    form = {"csrf": csrf_of(page), "name": name, "index": "0", "text": text, "version": version_of(page, name)}
    form.update(extra)
    return client.post(f"/prompts/{LOCALE}/save", form)


# ---------------------------------------------------------------- people and safety
def test_every_page_needs_a_login_and_a_wrong_password_or_a_forged_or_expired_session_gets_none(
    ws: ConsoleWorkspace, port: int
) -> None:
    anonymous = Client(port)
    for path in (f"/prompts/{LOCALE}", f"/publish/{LOCALE}", "/audit", "/users",
                 f"/prompts/{LOCALE}/listen/utter_greet/0"):
        status, _, headers = anonymous.request("GET", path)
        assert status == 302 and headers["location"] == "/login", path
    assert anonymous.post(f"/prompts/{LOCALE}/save", {"name": "utter_greet", "text": "x"})[0] == 401

    status, page = anonymous.get("/login")
    status, text = anonymous.post("/login", {"csrf": csrf_of(page), "name": "eddie", "password": "wrong-pass"})
    assert status == 401 and "wrong user name or password" in text
    status, text = anonymous.post("/login", {"csrf": csrf_of(page), "name": "nobody", "password": "wrong-pass"})
    assert status == 401 and "wrong user name or password" in text
    status, text = anonymous.post("/login", {"name": "eddie", "password": "editor-pass-1"})  # no CSRF token
    assert status == 403 and "login form expired or came from another site" in text
    assert "ivr_console" not in anonymous.cookies

    eddie = Client(port).login("eddie")
    good = eddie.cookies["ivr_console"]
    assert eddie.get(f"/prompts/{LOCALE}")[0] == 200
    forged = Client(port)
    forged.cookies["ivr_console"] = good.replace("eddie.", "ada.", 1)  # another user, same signature
    assert forged.request("GET", "/users")[0] == 302
    key = load_key(ws.settings.console_dir)
    _, expired = Signer(key).new_session("ada", now=time.time() - 9 * 3600)
    old = Client(port)
    old.cookies["ivr_console"] = expired
    assert old.request("GET", "/audit")[0] == 302
    _, other_key = Signer(b"k" * 32).new_session("ada")
    old.cookies["ivr_console"] = other_key
    assert old.request("GET", "/audit")[0] == 302

    status, page = eddie.get(f"/prompts/{LOCALE}")
    assert eddie.post("/logout", {"csrf": csrf_of(page)})[0] == 302
    assert "ivr_console" not in eddie.cookies
    assert eddie.request("GET", f"/prompts/{LOCALE}")[0] == 302


def test_a_viewer_sees_no_edit_controls_and_every_change_is_refused_by_role(ws: ConsoleWorkspace, port: int) -> None:
    vera = Client(port).login("vera")
    status, page = vera.get(f"/prompts/{LOCALE}")
    assert status == 200 and GREETING in page
    assert "<textarea" not in page and "save</button>" not in page
    before = domain(ws).read_bytes()
    form = {"csrf": csrf_of(page), "name": "utter_greet", "index": "0", "text": "Hacked.", "version": "x"}
    status, text = vera.post(f"/prompts/{LOCALE}/save", form)
    assert status == 403 and "vera is a viewer; this needs the editor role" in text
    assert domain(ws).read_bytes() == before
    status, page = vera.get(f"/publish/{LOCALE}")
    assert status == 200 and 'id="publish"' not in page and "make current" not in page
    status, text = vera.post(f"/publish/{LOCALE}", {"csrf": csrf_of(page), "message": "x"})
    assert status == 403
    eddie = Client(port).login("eddie")
    _, page = eddie.get(f"/publish/{LOCALE}")
    assert 'id="publish"' not in page
    assert eddie.post(f"/publish/{LOCALE}", {"csrf": csrf_of(page), "message": "x"})[0] == 403
    assert eddie.post(f"/publish/{LOCALE}/rollback", {"csrf": csrf_of(page), "to": "1"})[0] == 403
    assert eddie.get("/users")[0] == 403
    assert eddie.post("/users", {"csrf": csrf_of(page), "action": "role", "name": "eddie", "role": "admin"})[0] == 403
    assert "Users</a>" not in page


def test_every_post_needs_the_sessions_csrf_token(ws: ConsoleWorkspace, port: int) -> None:
    eddie, eve = Client(port).login("eddie"), Client(port).login("eve")
    _, page = eddie.get(f"/prompts/{LOCALE}")
    _, eves_page = eve.get(f"/prompts/{LOCALE}")
    before = domain(ws).read_bytes()
    base = {"name": "utter_greet", "index": "0", "text": "Changed.", "version": version_of(page, "utter_greet")}
    for token in (None, "", "not-a-token", csrf_of(eves_page)):  # missing, empty, made up, another session's
        form = dict(base) if token is None else {**base, "csrf": token}
        status, text = eddie.post(f"/prompts/{LOCALE}/save", form)
        assert status == 403 and "security token is missing or wrong" in text, token
    assert domain(ws).read_bytes() == before
    status, _ = eddie.post(f"/prompts/{LOCALE}/save", {**base, "csrf": csrf_of(page)})
    assert status == 200 and texts(ws)["utter_greet"] == "Changed."


def test_an_admin_manages_users_and_every_change_is_in_the_audit_log(ws: ConsoleWorkspace, port: int) -> None:
    ada = Client(port).login("ada")
    status, page = ada.get("/users")
    assert status == 200 and "vera" in page
    status, text = ada.post("/users", {"csrf": csrf_of(page), "action": "add", "name": "newbie", "role": "viewer",
                                       "password": "short"})
    assert status == 422 and "8 to 1024 characters" in text
    status, text = ada.post("/users", {"csrf": csrf_of(page), "action": "add", "name": "newbie", "role": "viewer",
                                       "password": "newbie-pass-1"})
    assert status == 200 and "user newbie added" in text
    status, text = ada.post("/users", {"csrf": csrf_of(page), "action": "role", "name": "newbie",
                                       "role": "editor"})
    assert status == 200
    status, text = ada.post("/users", {"csrf": csrf_of(page), "action": "remove", "name": "ada"})
    assert status == 422 and "you cannot remove yourself" in text
    assert ada.post("/users", {"csrf": csrf_of(page), "action": "remove", "name": "newbie"})[0] == 200
    _, audit = ada.get("/audit")
    for line in ("user added</td><td>newbie as viewer", "user role</td><td>newbie is now editor",
                 "user removed</td><td>newbie"):
        assert line in audit, audit
    assert re.search(r"<td>ada</td><td>user added</td>", audit)


def test_the_command_line_refuses_a_short_password_and_a_public_address_without_the_flag(
    ws: ConsoleWorkspace,
) -> None:
    done = ws.ivr("console", "adduser", "shorty", "--role", "viewer", stdin="abc\n")
    assert done.returncode == 1 and "8 to 1024 characters" in done.stderr
    done = ws.ivr("console", "adduser", "vera", "--role", "admin", stdin="another-pass-1\n")
    assert done.returncode == 1 and "exists already" in done.stderr
    done = ws.ivr("console", "--host", "0.0.0.0", "--port", "1")
    assert done.returncode == 2 and "not a loopback address" in done.stderr and "--allow-remote" in done.stderr


# ---------------------------------------------------------------- prompts
def test_an_edit_is_saved_in_place_and_audited_and_html_is_escaped_everywhere(ws: ConsoleWorkspace, port: int) -> None:
    eddie = Client(port).login("eddie")
    _, page = eddie.get(f"/prompts/{LOCALE}")
    before = domain(ws).read_text(encoding="utf-8")
    text = 'Hello <script>alert("x")</script> & welcome: # not a comment, "quoted" {not yet'
    status, body = save(eddie, page, "utter_greet", text)
    assert status == 422 and "a brace is unpaired" in body  # the unpaired brace first
    assert domain(ws).read_text(encoding="utf-8") == before
    text = text.replace(" {not yet", " - see you")
    status, body = save(eddie, page, "utter_greet", text)
    assert status == 200 and "saved in the draft" in body
    assert texts(ws)["utter_greet"] == text  # exactly what was typed, read by a YAML parser
    after = domain(ws).read_text(encoding="utf-8")
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert len(changed) == 1  # comments, order and every other line kept
    for path in (f"/prompts/{LOCALE}", "/audit"):
        _, page = eddie.get(path)
        assert "<script>alert" not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page, path
    _, audit = eddie.get("/audit")
    assert re.search(r"<td>eddie</td><td>draft edit</td><td>en-US utter_greet\[0\]", audit)


def test_placeholders_cannot_be_dropped_misspelled_or_added(ws: ConsoleWorkspace, port: int) -> None:
    eddie = Client(port).login("eddie")
    _, page = eddie.get(f"/prompts/{LOCALE}")
    before = domain(ws).read_bytes()
    cases = {
        "The balance of your account is {balance}.": "{account} is missing",
        "Account {account}: {balnce}.": "{balance} is missing; {balnce} is not a placeholder of this prompt",
        "Account {account}: {balance}, {date}.": "{date} is not a placeholder of this prompt",
        "Account {account}: {balance}}.": "a brace is unpaired",
        "   ": "the text is empty",
        "Account {account}: \x07{balance}.": "control characters",
    }
    for text, message in cases.items():
        status, body = save(eddie, page, "utter_balance_account", text)
        assert status == 422 and message in body, (text, body)
        assert "This prompt" in body or "brace" in body or "empty" in body or "control" in body
    assert domain(ws).read_bytes() == before
    status, _ = save(eddie, page, "utter_balance_account", "For account {account} you have {balance} left.")
    assert status == 200 and texts(ws)["utter_balance_account"] == "For account {account} you have {balance} left."


def test_a_10_mb_paste_and_an_oversized_request_are_refused_with_a_clear_message(
    ws: ConsoleWorkspace, port: int
) -> None:
    eddie = Client(port).login("eddie")
    _, page = eddie.get(f"/prompts/{LOCALE}")
    before = domain(ws).read_bytes()
    status, body = save(eddie, page, "utter_greet", "a" * (10 * 1024 * 1024))
    assert status == 422 and "10,485,760 characters; a prompt has at most 2,000" in body
    # a body over the server's limit: refused on its announced length, before it is read
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", f"/prompts/{LOCALE}/save")
    conn.putheader("Content-Type", "application/x-www-form-urlencoded")
    conn.putheader("Content-Length", str(17 * 1024 * 1024))
    conn.putheader("Cookie", "; ".join(f"{k}={v}" for k, v in eddie.cookies.items()))
    conn.endheaders(b"text=aaaa")
    response = conn.getresponse()
    assert response.status == 413 and "larger than 16 MB; nothing was saved" in response.read().decode()
    conn.close()
    assert domain(ws).read_bytes() == before
    assert eddie.get(f"/prompts/{LOCALE}")[0] == 200  # the console is still fine


def test_two_editors_never_overwrite_each_other_and_a_double_submit_is_saved_once(
    ws: ConsoleWorkspace, port: int
) -> None:
    eddie, eve = Client(port).login("eddie"), Client(port).login("eve")
    _, eddies_page = eddie.get(f"/prompts/{LOCALE}")
    _, eves_page = eve.get(f"/prompts/{LOCALE}")  # both loaded the same draft
    status, body = save(eddie, eddies_page, "utter_greet", "Eddie's greeting.")
    assert status == 200
    status, again = save(eddie, eddies_page, "utter_greet", "Eddie's greeting.")  # the same form, twice
    assert status == 200 and "already saved" in again
    status, body = save(eve, eves_page, "utter_greet", "Eve's greeting.")
    assert status == 409 and "someone changed the draft since you opened it; your text was NOT saved" in body
    assert "Eve&#39;s greeting." in body  # her text stays in the box
    assert texts(ws)["utter_greet"] == "Eddie's greeting."
    status, _ = save(eve, eves_page, "utter_goodbye", "Eve's goodbye.")  # another prompt: no conflict
    assert status == 200 and texts(ws)["utter_greet"] == "Eddie's greeting."
    _, audit = eddie.get("/audit")
    assert audit.count("Eddie&#39;s greeting.") == 1  # one edit, not two


def test_a_draft_broken_by_hand_is_shown_with_its_line_and_never_saved_over(ws: ConsoleWorkspace, port: int) -> None:
    path = domain(ws)
    lines = path.read_text(encoding="utf-8").splitlines()
    eddie = Client(port).login("eddie")
    _, page = eddie.get(f"/prompts/{LOCALE}")
    at = next(i for i, line in enumerate(lines) if "utter_greet:" in line)
    lines[at + 1] = lines[at + 1].replace('- text: "', '- text: "broken ', 1).rstrip('"')  # an unclosed quote
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    broken = path.read_bytes()
    status, body = eddie.get(f"/prompts/{LOCALE}")
    assert status == 200 and f"{path}:" in body and "not valid YAML" in body
    status, body = save(eddie, page, "utter_goodbye", "Bye.")
    assert status == 422 and "not valid YAML" in body
    assert path.read_bytes() == broken


def test_listen_plays_the_draft_text_as_an_8_khz_wav_with_example_figures(ws: ConsoleWorkspace, port: int) -> None:
    eddie = Client(port).login("eddie")
    durations = {}
    for name in ("utter_goodbye", "utter_balance"):
        status, _, headers = eddie.request("GET", f"/prompts/{LOCALE}/listen/{name}/0")
        assert status == 200 and headers["content-type"] == "audio/wav"
        with wave.open(io.BytesIO(eddie.last_body)) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
            durations[name] = wav.getnframes() / 8000
    assert 0.5 < durations["utter_goodbye"] < 10
    _, page = eddie.get(f"/prompts/{LOCALE}")
    short = "Bye."
    assert save(eddie, page, "utter_goodbye", short)[0] == 200
    eddie.request("GET", f"/prompts/{LOCALE}/listen/utter_goodbye/0")
    with wave.open(io.BytesIO(eddie.last_body)) as wav:
        assert wav.getnframes() / 8000 < durations["utter_goodbye"] / 2  # the draft's new text, not the old
    assert eddie.request("GET", f"/prompts/{LOCALE}/listen/utter_nothing/0")[0] == 404


# ---------------------------------------------------------------- publish page
def test_the_publish_page_shows_the_drafts_errors_with_file_and_line_and_its_diff(
    ws: ConsoleWorkspace, port: int
) -> None:
    rules = ws.settings.dialogs_dir / LOCALE / "data" / "rules.yml"
    text = rules.read_text(encoding="utf-8")
    rules.write_text(text + "\n- rule: broken\n  steps:\n  - intent: greet\n  - action: utter_no_such_thing\n",
                     encoding="utf-8")
    line = len(text.splitlines()) + 5
    paula = Client(port).login("paula")
    status, page = paula.get(f"/publish/{LOCALE}")
    assert status == 200
    assert f"{rules}:{line}: error:" in page and "utter_no_such_thing" in page
    assert re.search(r'id="publish"\s+disabled', page)  # nothing to publish while there are errors
    assert "(no release yet)" in page and "make current" not in page


@pytest.fixture
def released(ws: ConsoleWorkspace) -> Iterator[ConsoleWorkspace]:
    """Two fake releases of the shipped files (no model: enough for the diff and the list)."""
    from ivr.releases import ReleaseStore, _write_json_atomic, locale_root

    root = locale_root(ws.settings.models_dir, LOCALE)
    for number in (1, 2):
        shutil.copytree(PROJECT_ROOT / "dialogs" / LOCALE, root / str(number) / "dialogs" / LOCALE)
        _write_json_atomic(root / str(number) / "release.json", {
            "number": number, "created": "2026-12-01T10:00:00+00:00", "author": "alice", "message": f"r{number}",
            "fingerprint": "x", "files": {"dialogs/en-US/domain.yml": "0"}})
    _write_json_atomic(root / "current.json", {"number": 2, "previous": 1})
    assert ReleaseStore(ws.settings).current_number(LOCALE) == 2
    yield ws
    shutil.rmtree(root)


def test_the_diff_shows_the_edit_and_a_damaged_release_is_not_rolled_back_to(
    released: ConsoleWorkspace, port: int
) -> None:
    eddie, paula = Client(port).login("eddie"), Client(port).login("paula")
    _, page = eddie.get(f"/prompts/{LOCALE}")
    assert save(eddie, page, "utter_goodbye", "See you soon.")[0] == 200
    status, page = paula.get(f"/publish/{LOCALE}")
    assert status == 200 and "What changes: release 2 → draft" in page
    assert "  ~ utter_goodbye:" in page and "      + See you soon." in page
    assert re.search(r"<td>2 <strong>\(current\)</strong></td>", page)
    status, page = paula.post(f"/publish/{LOCALE}/rollback", {"csrf": csrf_of(page), "to": "1"})
    assert status == 409 and "not rolled back" in page and "damaged" in page  # ReleaseStore.verify said no
    from ivr.releases import ReleaseStore

    assert ReleaseStore(dataclasses.replace(released.settings)).current_number(LOCALE) == 2


def test_a_publish_without_a_message_is_refused(ws: ConsoleWorkspace, port: int) -> None:
    paula = Client(port).login("paula")
    _, page = paula.get(f"/publish/{LOCALE}")
    status, body = paula.post(f"/publish/{LOCALE}", {"csrf": csrf_of(page), "message": "  "})
    assert status == 422 and "say what changed and why" in body


# ---------------------------------------------------------------- try it (the chat itself: the browser test)
def test_try_it_is_for_editors_and_shows_the_demo_callers_masked(ws: ConsoleWorkspace, port: int) -> None:
    vera = Client(port).login("vera")
    status, prompts = vera.get(f"/prompts/{LOCALE}")
    assert status == 200 and "/try/" not in prompts  # no link for a viewer
    assert vera.get(f"/try/{LOCALE}")[0] == 403
    assert vera.post(f"/try/{LOCALE}/start", {"csrf": csrf_of(prompts), "customer": "1"})[0] == 403
    eddie = Client(port).login("eddie")
    status, page = eddie.get(f"/try/{LOCALE}")
    assert status == 200 and "C002 · *******0002" in page and "15550000002" not in page
    assert eddie.get("/try/chat/nope")[0] == 404
    assert eddie.post("/try/chat/nope/turn", {"csrf": csrf_of(page), "say": "hi"})[0] == 404
    assert eddie.get("/try/chat/nope/audio/0")[0] == 404
    assert eddie.get("/try/xx-XX")[0] == 404


# ---------------------------------------------------------------- calls and dashboard
def write_call(folder: Path, day: str, call_id: str, start: float, lines: list[dict[str, object]]) -> None:
    import json

    (folder / day).mkdir(parents=True, exist_ok=True)
    with (folder / day / f"{call_id}.jsonl").open("w", encoding="utf-8") as out:
        for offset, line in enumerate(lines):
            out.write(json.dumps({"t": start + 2 * offset, **line}, ensure_ascii=False) + "\n")


@pytest.fixture
def some_calls(ws: ConsoleWorkspace) -> Iterator[Path]:
    """Four transcripts as the robot writes them: two days, two locales, a transfer, a verification failure."""
    folder = ws.settings.transcripts_dir
    greet: dict[str, object] = {"who": "robot", "text": "Welcome."}
    end: dict[str, object] = {"who": "system", "text": "", "served_by": "voice", "caller": "*******0002"}
    write_call(folder, "2026-11-30", "c1", 1_796_000_000, [
        greet, {"who": "caller", "text": "my balance please", "intent": "ask_balance", "intent_confidence": 0.91},
        {"who": "caller", "text": "****", "keypad": True, "masked": True, "secret": True},
        {"who": "robot", "text": "Your balance is 2,500.75 USD, account ending 12345678.", "compute_ms": 90},
        {**end, "outcome": "completed", "reason": "", "locale": "en-US", "release": 3}])
    write_call(folder, "2026-12-01", "c2", 1_796_100_000, [
        greet, {"who": "caller", "text": "purple <b>elephant</b> tuesday", "intent": "nlu_fallback",
                "intent_confidence": 0.21},
        {"who": "robot", "text": "Sorry?", "compute_ms": 120, "perceived_ms": 1120},
        {"who": "robot", "text": "Say it again."},
        {"who": "caller", "text": "agent", "intent": "human", "intent_confidence": 0.88},
        {"who": "robot", "text": "A person will help you.", "compute_ms": 400, "perceived_ms": 1400},
        {**end, "outcome": "transfer", "reason": "caller_request", "locale": "en-US"}])
    write_call(folder, "2026-12-01", "c3", 1_796_100_100, [
        greet, {"who": "caller", "text": "****", "keypad": True, "masked": True, "secret": True},
        {"who": "robot", "text": "Let me pass you on.", "compute_ms": 60, "perceived_ms": 60},
        {**end, "outcome": "transfer", "reason": "verification_failed", "locale": "en-US"}])
    write_call(folder, "2026-12-01", "c4", 1_796_100_200, [
        greet, {"who": "caller", "text": "再见", "intent": "goodbye", "intent_confidence": 0.95},
        {**end, "outcome": "completed", "reason": "", "locale": "zh-CN"}])
    yield folder
    shutil.rmtree(folder)


def test_calls_are_listed_filtered_and_shown_masked_with_intents(some_calls: Path, port: int) -> None:
    vera = Client(port).login("vera")
    status, page = vera.get("/calls")
    assert status == 200
    rows = re.findall(r'<a href="/calls/(c\d)">', page)
    assert rows == ["c4", "c3", "c2", "c1"]  # newest first
    releases = re.findall(r'<a href="/calls/(c\d)">.*?<td class="release">(.*?)</td>', page, re.S)
    assert releases == [("c4", "working copy"), ("c3", "working copy"), ("c2", "working copy"), ("c1", "3")]
    for query, expected in (("?outcome=transfer", ["c3", "c2"]), ("?locale=zh-CN", ["c4"]),
                            ("?intent=ask_balance", ["c1"]), ("?from=2026-12-01&to=2026-12-01", ["c4", "c3", "c2"]),
                            ("?to=2026-11-30", ["c1"]), ("?locale=xx&from=notadate", ["c4", "c3", "c2", "c1"])):
        assert re.findall(r'<a href="/calls/(c\d)">', vera.get("/calls" + query)[1]) == expected, query
    status, page = vera.get("/calls/c1")
    assert status == 200 and "ask_balance" in page and "0.91" in page
    assert "12345678" not in page and "****5678" in page  # masked again, whatever the transcript held
    status, page = vera.get("/calls/c2")
    assert "&lt;b&gt;elephant&lt;/b&gt;" in page and "<b>elephant" not in page
    assert "not understood" in page and "add-phrasing" not in page  # a viewer cannot add it
    assert vera.get("/calls/nope")[0] == 404


def test_the_dashboard_counts_per_day_and_locale(some_calls: Path, port: int) -> None:
    vera = Client(port).login("vera")
    status, page = vera.get("/dashboard")
    assert status == 200 and "<svg" in page

    def row(day: str, locale: str) -> dict[str, str]:
        match = re.search(rf'<tr data-day="{day}" data-locale="{locale}">(.*?)</tr>', page, re.S)
        assert match, (day, locale)
        return dict(re.findall(r'<td class="([a-z-]+)">(.*?)</td>', match.group(1), re.S))

    assert row("2026-12-01", "en-US") == {
        "calls": "2", "containment": "0%", "transfer-rate": "100%",
        "transfers": "caller_request: 1, verification_failed: 1", "verification-failures": "1",
        "avg-turns": "1.5", "avg-duration": "9.0 s",
        # one compute latency per caller turn (the reply's first line; "Say it again." has none):
        # 60, 120, 400 ms -> nearest-rank p50 120, p95 400
        "compute-latency": "120 / 400 ms (3 turns)",
        # the robot's view of the caller's wait: + 1 s of recorder silence after speech, nothing after keys
        "perceived-latency": "1120 / 1400 ms"}
    assert row("2026-12-01", "zh-CN")["containment"] == "100%" and row("2026-12-01", "zh-CN")["compute-latency"] == "—"
    assert row("2026-11-30", "en-US")["compute-latency"] == "90 / 90 ms (1 turns)"
    assert row("2026-11-30", "en-US")["calls"] == "1" and row("2026-11-30", "en-US")["avg-duration"] == "8.0 s"


def test_a_not_understood_turn_is_added_as_a_phrasing_into_the_draft(
    ws: ConsoleWorkspace, some_calls: Path, port: int
) -> None:
    from ivr.asr.grammar import load_nlu_examples

    eddie = Client(port).login("eddie")
    _, page = eddie.get("/calls/c2")
    assert "add-phrasing" in page
    form = {"csrf": csrf_of(page), "locale": LOCALE, "intent": "human", "text": "purple elephant tuesday"}
    status, body = eddie.post("/calls/c2/phrasing", form)
    assert status == 200 and "added to human in the draft" in body
    examples = load_nlu_examples(ws.settings.dialogs_dir, LOCALE)
    assert "purple elephant tuesday" in examples["human"]
    status, body = eddie.post("/calls/c2/phrasing", form)  # twice: refused, not duplicated
    assert status == 422 and "already a phrasing of human" in body
    nlu = ws.settings.dialogs_dir / LOCALE / "data" / "nlu.yml"
    before = nlu.read_bytes()
    heldout = yaml.safe_load((ws.settings.dialogs_dir / LOCALE / "heldout.yml").read_text())["nlu"][0]
    held = heldout["examples"].splitlines()[0][2:]
    for text, message in ((held, "repeats the held-out phrasing"), ("my ****5678", "masked digits"),
                          ("x" * 300, "at most 200")):
        status, body = eddie.post("/calls/c2/phrasing", {**form, "text": text, "intent": heldout["intent"]})
        assert status == 422 and message in body, (text, body)
    status, body = eddie.post("/calls/c2/phrasing", {**form, "intent": "no_such_intent", "text": "hi again"})
    assert status == 422 and "no intent &#39;no_such_intent&#39;" in body
    assert nlu.read_bytes() == before
    vera = Client(port).login("vera")
    _, page = vera.get("/calls/c2")
    assert vera.post("/calls/c2/phrasing", {**form, "csrf": csrf_of(page), "text": "vera was here"})[0] == 403
    _, audit = eddie.get("/audit")
    assert "phrasing added" in audit and "purple elephant tuesday" in audit


# ---------------------------------------------------------------- understanding
def test_phrasings_are_added_and_removed_in_the_draft_but_never_the_last_one(ws: ConsoleWorkspace, port: int) -> None:
    from ivr.asr.grammar import load_nlu_examples

    eddie = Client(port).login("eddie")
    status, page = eddie.get(f"/understanding/{LOCALE}")
    assert status == 200 and 'id="intent-human"' in page and "speak to an agent" in page
    url = f"/understanding/{LOCALE}/phrasing"
    form = {"csrf": csrf_of(page), "intent": "human", "action": "add", "text": "get me a <real> person"}
    status, body = eddie.post(url, form)
    assert status == 200 and "phrasing added" in body and "&lt;real&gt;" in body
    assert "get me a <real> person" in load_nlu_examples(ws.settings.dialogs_dir, LOCALE)["human"]
    _, page = eddie.get(f"/understanding/{LOCALE}")
    assert "get me a &lt;real&gt; person" in page and "<real>" not in page
    status, body = eddie.post(url, {**form, "action": "remove"})
    assert status == 200 and "phrasing removed" in body
    assert "get me a <real> person" not in load_nlu_examples(ws.settings.dialogs_dir, LOCALE)["human"]
    # an intent is never left without a phrasing
    nlu = ws.settings.dialogs_dir / LOCALE / "data" / "nlu.yml"
    examples = load_nlu_examples(ws.settings.dialogs_dir, LOCALE)["goodbye"]
    for text in examples[:-1]:
        assert eddie.post(url, {**form, "intent": "goodbye", "action": "remove", "text": text})[0] == 200
    before = nlu.read_bytes()
    status, body = eddie.post(url, {**form, "intent": "goodbye", "action": "remove", "text": examples[-1]})
    assert status == 422 and "the last phrasing of goodbye" in body
    assert nlu.read_bytes() == before and load_nlu_examples(ws.settings.dialogs_dir, LOCALE)["goodbye"] == examples[-1:]
    vera = Client(port).login("vera")
    _, page = vera.get(f"/understanding/{LOCALE}")
    assert 'class="remove"' not in page and "measure the held-out accuracy" not in page
    assert vera.post(url, {**form, "csrf": csrf_of(page)})[0] == 403
    assert vera.post(f"/understanding/{LOCALE}/accuracy", {"csrf": csrf_of(page)})[0] == 403
