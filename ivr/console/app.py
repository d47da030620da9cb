"""The console's routes (Sanic 21.12, Jinja2 with autoescaping, htmx for partial updates).

Every page but the login page needs a session; every POST needs the role of its action (checked here,
server-side, whatever the page showed) and the form's CSRF token. Blocking work (password hashing,
reading and writing drafts, validation, rollback) runs in threads; synthesis in the synthesizer's own
worker; a publish in a child process.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape
from sanic import Sanic, response
from sanic.exceptions import NotFound, PayloadTooLarge
from sanic.request import Request
from sanic.response import HTTPResponse

from ivr.config import LOCALES, Settings
from ivr.console import drafts
from ivr.console.publishing import Publisher, rollback
from ivr.console.security import Session, Signer, load_key
from ivr.console.users import ROLES, ConsoleStore, User, UserError
from ivr.masking import mask_phone, mask_text

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "ivr_console"
LOGIN_COOKIE = "ivr_console_login"
REQUEST_MAX_BYTES = 16 * 1024 * 1024  # larger bodies get Sanic's 413 (rendered by our handler)
MAX_FIELD = 20_000  # characters of a form field other than a prompt text
_app_numbers = itertools.count(1)

Handler = Callable[..., Coroutine[Any, Any, HTTPResponse]]


@dataclass
class Console:
    settings: Settings
    store: ConsoleStore
    signer: Signer
    publisher: Publisher
    secure_cookies: bool
    templates: jinja2.Environment
    synth: Any = None  # PromptSynthesizer, started on the first "listen"
    chats: Any = None  # ivr.console.chats.Chats: the Try-it chats

    def render(self, request: Request, name: str, status: int = 200, **values: Any) -> HTTPResponse:
        ctx = getattr(request.ctx, "console", None)
        user: User | None = ctx[0] if ctx else None
        session: Session | None = ctx[1] if ctx else None
        html = self.templates.get_template(name).render(
            user=user, csrf=self.signer.csrf(session.nonce) if session else "", locales=LOCALES,
            roles=ROLES, path=request.path, **values)
        return response.html(html, status=status)


def build_app(settings: Settings, *, secure_cookies: bool = False, config: Path | None = None) -> Sanic:
    app = Sanic(f"ivr_console_{next(_app_numbers)}", configure_logging=False)
    app.config.REQUEST_MAX_SIZE = REQUEST_MAX_BYTES
    app.config.KEEP_ALIVE_TIMEOUT = 30
    templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                   autoescape=True, undefined=jinja2.StrictUndefined)
    templates.filters["mask"] = lambda text: mask_text(str(text))
    console = Console(settings, ConsoleStore(settings.console_dir), Signer(load_key(settings.console_dir)),
                      Publisher(settings, config), secure_cookies, templates)
    app.ctx.console = console
    app.static("/static", str(HERE / "static"), name="static")

    def page(role: str = "viewer") -> Callable[[Handler], Handler]:
        """Login required; POST also needs ``role`` and the CSRF token; GET shows what the role may see."""

        def wrap(handler: Handler) -> Handler:
            @functools.wraps(handler)
            async def inner(request: Request, *args: Any, **kwargs: Any) -> HTTPResponse:
                session = console.signer.read_session(request.cookies.get(SESSION_COOKIE))
                user = await asyncio.to_thread(console.store.get, session.user) if session else None
                if session is None or user is None:
                    if request.method == "GET":
                        return response.redirect("/login")
                    return response.text("not logged in (or the session expired): log in again", status=401)
                request.ctx.console = (user, session)
                if not user.can(role if request.method == "POST" else "viewer"):
                    return console.render(request, "error.html", 403, message=(
                        f"{user.name} is a {user.role}; this needs the {role} role or a stronger one"))
                if request.method == "POST":
                    token = request.headers.get("x-csrf-token") or request.form.get("csrf")
                    if not console.signer.csrf_ok(session.nonce, token):
                        return console.render(request, "error.html", 403, message=(
                            "the form's security token is missing or wrong (an old page, or a form from "
                            "another site): reload the page and try again; nothing was changed"))
                return await handler(request, user, *args, **kwargs)

            return inner

        return wrap

    def field(request: Request, name: str, limit: int = MAX_FIELD) -> str:
        value = request.form.get(name) or ""
        if len(value) > limit:
            raise UserError(f"the field {name!r} has {len(value):,} characters; at most {limit:,} are accepted")
        return str(value)

    @app.exception(PayloadTooLarge)
    async def too_large(request: Request, exc: Exception) -> HTTPResponse:
        return response.text(f"the request is larger than {REQUEST_MAX_BYTES // (1024 * 1024)} MB; nothing was "
                             "saved (was something pasted by mistake?)", status=413)

    @app.exception(NotFound)
    async def not_found(request: Request, exc: Exception) -> HTTPResponse:
        return response.text(f"no such page: {request.path}", status=404)

    # ------------------------------------------------------------ login
    @app.get("/login")
    async def login_form(request: Request) -> HTTPResponse:
        nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(16)
        resp = console.render(request, "login.html", login_csrf=console.signer.csrf("login|" + nonce), error="")
        set_cookie(resp, LOGIN_COOKIE, nonce, 3600)
        return resp

    @app.post("/login")
    async def login(request: Request) -> HTTPResponse:
        nonce = request.cookies.get(LOGIN_COOKIE) or ""
        name, password = field(request, "name", 64), field(request, "password", 1024)
        if not nonce or not console.signer.csrf_ok("login|" + nonce, request.form.get("csrf")):
            return console.render(request, "login.html", 403, login_csrf="", error=(
                "the login form expired or came from another site: reload the page"))
        user = await asyncio.to_thread(console.store.authenticate, name, password)
        if user is None:
            log.info("console: failed login")
            return console.render(request, "login.html", 401, login_csrf=console.signer.csrf("login|" + nonce),
                                   error="wrong user name or password")
        _session, cookie = console.signer.new_session(user.name)
        resp = response.redirect("/")
        set_cookie(resp, SESSION_COOKIE, cookie, console.signer.session_s)
        return resp

    @app.post("/logout")
    @page()
    async def logout(request: Request, user: User) -> HTTPResponse:
        resp = response.redirect("/login")
        del resp.cookies[SESSION_COOKIE]
        return resp

    def set_cookie(resp: HTTPResponse, name: str, value: str, max_age: int) -> None:
        resp.cookies[name] = value
        cookie = resp.cookies[name]
        cookie["httponly"] = True
        cookie["samesite"] = "Strict"
        cookie["path"] = "/"
        cookie["max-age"] = max_age
        if console.secure_cookies:
            cookie["secure"] = True

    # ------------------------------------------------------------ pages
    @app.get("/")
    @page()
    async def home(request: Request, user: User) -> HTTPResponse:
        return response.redirect(f"/prompts/{settings.locale}")

    @app.get("/prompts/<locale>")
    @page()
    async def prompts(request: Request, user: User, locale: str) -> HTTPResponse:
        if locale not in LOCALES:
            return console.render(request, "error.html", 404, message=f"unknown locale {locale!r}")
        try:
            draft = await asyncio.to_thread(drafts.read_draft, settings.dialogs_dir, locale)
            error = ""
        except drafts.DraftError as exc:
            draft, error = None, str(exc)
        return console.render(request, "prompts.html", locale=locale, draft=draft, error=error,
                              max_text=drafts.MAX_TEXT)

    @app.post("/prompts/<locale>/save")
    @page("editor")
    async def save_prompt(request: Request, user: User, locale: str) -> HTTPResponse:
        name = field(request, "name", 200)
        try:
            index = int(field(request, "index", 10) or "0")
        except ValueError:
            index = -1
        text = request.form.get("text") or ""
        version = field(request, "version", 64)
        status, message, ok = 200, "", False
        current_version = version
        try:
            saved = await asyncio.to_thread(drafts.save_response, settings.dialogs_dir, locale, name, index, text,
                                            version, lock_dir=settings.console_dir)
        except drafts.StaleDraft as exc:
            status, message, current_version = 409, str(exc), exc.version
        except drafts.DraftError as exc:
            status, message = 422, str(exc)
        else:
            ok, current_version = True, saved.version
            if saved.changed:
                text = text.replace("\r\n", "\n").strip()
                message = "saved in the draft (not live until published)"
                await asyncio.to_thread(console.store.record, user.name, "draft edit",
                                        f"{locale} {name}[{index}]: {saved.old!r} -> {text!r}")
            else:
                message = "already saved: the draft says exactly this"
        row = drafts.Response(name, index, text[: drafts.MAX_TEXT] if not ok else text, 0,
                              tuple(drafts.PLACEHOLDER.findall(text)))
        return console.render(request, "prompt_row.html", status, locale=locale, r=row, version=current_version,
                              message=message, ok=ok, max_text=drafts.MAX_TEXT)

    @app.get("/prompts/<locale>/listen/<name>/<index:int>")
    @page()
    async def listen(request: Request, user: User, locale: str, name: str, index: int) -> HTTPResponse:
        try:
            draft = await asyncio.to_thread(drafts.read_draft, settings.dialogs_dir, locale)
        except drafts.DraftError as exc:
            return response.text(str(exc), status=409)
        item = draft.response(name, index)
        if item is None:
            return response.text(f"no response {name!r} in the {locale} draft", status=404)
        from ivr.parts import SynthesisError

        try:
            wav = await synthesizer().render(drafts.fill(item.text, drafts.sample_values(locale)), locale)
            data = await asyncio.to_thread(wav.read_bytes)
        except (SynthesisError, OSError) as exc:
            return response.text(f"cannot render the prompt: {exc}", status=500)
        return response.raw(data, content_type="audio/wav", headers={"Cache-Control": "no-store"})

    def synthesizer() -> Any:
        if console.synth is None:
            from ivr.tts.synth import PromptSynthesizer

            console.synth = PromptSynthesizer(settings)
        return console.synth

    @app.after_server_stop
    async def close_synth(app: Sanic, loop: Any) -> None:
        if console.synth is not None:
            await asyncio.to_thread(console.synth.close)

    # ------------------------------------------------------------ try it
    from ivr.console.chats import Chats
    from ivr.console.tryit import demo_callers

    console.chats = Chats(settings)
    callers = [(cid, mask_phone(phone)) for cid, phone in demo_callers()]  # shown: the id and a masked number

    def editor_only(request: Request, user: User) -> HTTPResponse | None:
        if user.can("editor"):
            return None
        return console.render(request, "error.html", 403, message=(
            f"{user.name} is a {user.role}; trying the draft needs the editor role or a stronger one"))

    def chat_of(request: Request, user: User, chat_id: str) -> Any:
        chat = console.chats.get(chat_id, user.name)
        if chat is not None:
            chat.last_used = time.monotonic()
        return chat

    @app.get("/try/<locale>")
    @page()
    async def try_page(request: Request, user: User, locale: str) -> HTTPResponse:
        if (refused := editor_only(request, user)) is not None:
            return refused
        if locale not in LOCALES:
            return console.render(request, "error.html", 404, message=f"unknown locale {locale!r}")
        await console.chats.sweep()
        return console.render(request, "try.html", locale=locale, callers=callers,
                              chat=console.chats.of(user.name, locale), notice="")

    @app.post("/try/<locale>/start")
    @page("editor")
    async def try_start(request: Request, user: User, locale: str) -> HTTPResponse:
        if locale not in LOCALES:
            return response.text(f"unknown locale {locale!r}", status=404)
        try:
            customer = int(field(request, "customer", 4) or "-1")
        except ValueError:
            customer = -1
        customer = customer if 0 <= customer < len(callers) else -1
        who = callers[customer][0] if customer >= 0 else "withheld"
        chat = await console.chats.start(user.name, locale, customer, who)
        if chat is None:
            return console.render(request, "chat.html", 503, chat=None, notice=(
                "too many chats are running on this console: try again in a few minutes"))
        await asyncio.to_thread(console.store.record, user.name, "try it", f"{locale}: a chat as customer {who}")
        return console.render(request, "chat.html", chat=chat, notice="")

    @app.get("/try/chat/<chat_id>")
    @page("editor")
    async def try_chat(request: Request, user: User, chat_id: str) -> HTTPResponse:
        if (refused := editor_only(request, user)) is not None:
            return refused
        chat = chat_of(request, user, chat_id)
        if chat is None:
            return response.text("no such chat (it ended after idle time): start a new one", status=404)
        await console.chats.wait(chat, 10.0)  # long poll while it loads
        return console.render(request, "chat.html", chat=chat, notice="")

    @app.post("/try/chat/<chat_id>/turn")
    @page("editor")
    async def try_turn(request: Request, user: User, chat_id: str) -> HTTPResponse:
        chat = chat_of(request, user, chat_id)
        if chat is None:
            return response.text("no such chat (it ended after idle time): start a new one", status=404)
        keys, say = field(request, "keys", 40), field(request, "say", 500)
        if keys.strip():
            act = {"keys": keys.strip()}
        elif request.form.get("hangup"):
            act = {"hangup": "1"}
        else:
            act = {"say": say}
        await console.chats.turn(chat, act)
        return console.render(request, "chat.html", chat=chat, notice="")

    @app.get("/try/chat/<chat_id>/audio/<number:int>")
    @page("editor")
    async def try_audio(request: Request, user: User, chat_id: str, number: int) -> HTTPResponse:
        from ivr.parts import SynthesisError

        if (refused := editor_only(request, user)) is not None:
            return refused
        chat = chat_of(request, user, chat_id)
        if chat is None or not 0 <= number < len(chat.lines) or chat.lines[number]["who"] != "robot":
            return response.text("no such reply", status=404)
        try:
            wav = await synthesizer().render(chat.lines[number]["text"], chat.locale)
            data = await asyncio.to_thread(wav.read_bytes)
        except (SynthesisError, OSError) as exc:
            return response.text(f"cannot render the reply: {exc}", status=500)
        return response.raw(data, content_type="audio/wav", headers={"Cache-Control": "no-store"})

    @app.after_server_stop
    async def close_chats(app: Sanic, loop: Any) -> None:
        await console.chats.close()

    # ------------------------------------------------------------ publish
    def publish_state(locale: str) -> dict[str, Any]:
        from ivr.dialogue.validate import validate
        from ivr.releases import ReleaseStore, diff_dialogs

        store = ReleaseStore(settings)
        problems = validate(settings.dialogs_dir, [locale], models_dir=settings.models_dir, with_rasa=False)
        current = store.current(locale)
        if current is not None:
            diff = diff_dialogs(current.dialogs_dir, settings.dialogs_dir, locale, f"release {current.number}",
                                "draft")
        else:
            diff = []
        return {"problems": problems, "current": current, "diff": diff,
                "releases": list(reversed(store.releases(locale)))}

    @app.get("/publish/<locale>")
    @page()
    async def publish_page(request: Request, user: User, locale: str) -> HTTPResponse:
        if locale not in LOCALES:
            return console.render(request, "error.html", 404, message=f"unknown locale {locale!r}")
        state = await asyncio.to_thread(publish_state, locale)
        return console.render(request, "publish.html", locale=locale, job=console.publisher.running(locale),
                              notice="", **state)

    @app.post("/publish/<locale>")
    @page("publisher")
    async def publish(request: Request, user: User, locale: str) -> HTTPResponse:
        if locale not in LOCALES:
            return response.text(f"unknown locale {locale!r}", status=404)
        message = field(request, "message", 500).strip()
        if not message:
            return console.render(request, "job.html", 422, job=None,
                                  notice="say what changed and why (the message goes into the release list)")
        job, started = console.publisher.start(locale, user.name, message)
        if started:
            await asyncio.to_thread(console.store.record, user.name, "publish started", f"{locale}: {message}")
        notice = "" if started else f"a publish of {locale} by {job.user} is already running: here it is"
        return console.render(request, "job.html", job=job, notice=notice)

    @app.get("/publish/job/<number:int>")
    @page()
    async def publish_job(request: Request, user: User, number: int) -> HTTPResponse:
        job = console.publisher.jobs.get(number)
        if job is None:
            return response.text(f"no publish job {number}", status=404)
        if job.kind == "publish" and not job.running and not getattr(job, "audited", False):
            job.audited = True  # type: ignore[attr-defined]
            await asyncio.to_thread(console.store.record, job.user, "publish " + ("done" if job.ok else "failed"),
                                    f"{job.locale}: {job.lines[-1] if job.lines else ''}")
        return console.render(request, "job.html", job=job, notice="")

    @app.post("/publish/<locale>/rollback")
    @page("publisher")
    async def do_rollback(request: Request, user: User, locale: str) -> HTTPResponse:
        from ivr.releases import ReleaseError

        message = field(request, "message", 500).strip() or "rolled back from the console"
        try:
            to = int(field(request, "to", 10))
            was, now, notes = await asyncio.to_thread(rollback, settings, locale, user.name, to, message)
        except (ValueError, ReleaseError) as exc:
            notice, status = f"not rolled back: {exc}", 409
        else:
            await asyncio.to_thread(console.store.record, user.name, "rollback", f"{locale}: {was} -> {now}: {message}")
            notice, status = f"release {now} is current again (was {was}). " + "; ".join(notes), 200
        state = await asyncio.to_thread(publish_state, locale)
        return console.render(request, "publish.html", status, locale=locale,
                              job=console.publisher.running(locale), notice=notice, **state)

    # ------------------------------------------------------------ understanding
    @app.get("/understanding/<locale>")
    @page()
    async def understanding(request: Request, user: User, locale: str) -> HTTPResponse:
        from ivr.console.calls import phrasings

        if locale not in LOCALES:
            return console.render(request, "error.html", 404, message=f"unknown locale {locale!r}")
        try:
            examples, error = await asyncio.to_thread(phrasings, settings.dialogs_dir, locale), ""
        except drafts.DraftError as exc:
            examples, error = {}, str(exc)
        return console.render(request, "understanding.html", locale=locale, examples=examples, error=error,
                              job=console.publisher.running(locale, "accuracy"), notice="")

    @app.post("/understanding/<locale>/phrasing")
    @page("editor")
    async def edit_phrasing(request: Request, user: User, locale: str) -> HTTPResponse:
        from ivr.console.calls import add_phrasing as add
        from ivr.console.calls import remove_phrasing

        action, intent, text = field(request, "action", 10), field(request, "intent", 100), field(request, "text", 500)
        try:
            if action == "remove":
                await asyncio.to_thread(remove_phrasing, settings.dialogs_dir, locale, intent, text,
                                        lock_dir=settings.console_dir)
                what = "phrasing removed"
            else:
                text = await asyncio.to_thread(add, settings.dialogs_dir, locale, intent, text,
                                               lock_dir=settings.console_dir)
                what = "phrasing added"
        except drafts.DraftError as exc:
            return response.html(f'<p class="err" role="status" id="notice">nothing changed: {escape(str(exc))}</p>',
                                 status=422)
        await asyncio.to_thread(console.store.record, user.name, what, f"{locale} {intent}: {text!r}")
        return response.html(f'<p class="ok" role="status" id="notice">{what} ({escape(intent)}: '
                             f'{escape(text)}) in the draft; reload to see the list</p>')

    @app.post("/understanding/<locale>/accuracy")
    @page("editor")
    async def accuracy(request: Request, user: User, locale: str) -> HTTPResponse:
        if locale not in LOCALES:
            return response.text(f"unknown locale {locale!r}", status=404)
        job, _started = console.publisher.start(locale, user.name, "held-out accuracy", kind="accuracy")
        return console.render(request, "job.html", job=job, notice="")

    # ------------------------------------------------------------ calls and dashboard
    def filters_of(request: Request) -> Any:
        from ivr.console.calls import Filters

        def arg(name: str) -> str:
            return str(request.args.get(name) or "")[:40]

        day = re.compile(r"^\d{4}-\d{2}-\d{2}$")
        return Filters(day_from=arg("from") if day.match(arg("from")) else "",
                       day_to=arg("to") if day.match(arg("to")) else "", outcome=arg("outcome"),
                       intent=arg("intent"), locale=arg("locale") if arg("locale") in LOCALES else "")

    @app.get("/calls")
    @page()
    async def calls(request: Request, user: User) -> HTTPResponse:
        from ivr.console.calls import OUTCOMES, list_views

        filters = filters_of(request)
        views = await asyncio.to_thread(list_views, settings.transcripts_dir, filters)
        return console.render(request, "calls.html", views=views, filters=filters, outcomes=OUTCOMES)

    @app.get("/calls/<call_id>")
    @page()
    async def call(request: Request, user: User, call_id: str) -> HTTPResponse:
        from ivr.console.calls import call_view, intents
        from ivr.testing.export import ExportError, find_call

        try:
            path = await asyncio.to_thread(find_call, settings.transcripts_dir, call_id)
            view = await asyncio.to_thread(call_view, path)
        except ExportError as exc:
            return console.render(request, "error.html", 404, message=str(exc))
        locale = view.summary.locale if view.summary.locale in LOCALES else settings.locale
        names = await asyncio.to_thread(intents, settings.dialogs_dir, locale)
        return console.render(request, "call.html", view=view, locale=locale, intents=names, notice="")

    @app.post("/calls/<call_id>/phrasing")
    @page("editor")
    async def add_phrasing(request: Request, user: User, call_id: str) -> HTTPResponse:
        from ivr.console.calls import add_phrasing as add

        locale, intent, text = field(request, "locale", 10), field(request, "intent", 100), field(request, "text", 500)
        try:
            phrase = await asyncio.to_thread(add, settings.dialogs_dir, locale, intent, text,
                                             lock_dir=settings.console_dir)
        except drafts.DraftError as exc:
            return response.html(f'<span class="err" role="status">not added: {escape(str(exc))}</span>', status=422)
        await asyncio.to_thread(console.store.record, user.name, "phrasing added",
                                f"{locale} {intent}: {phrase!r} (from call {call_id})")
        return response.html(f'<span class="ok" role="status">added to {escape(intent)} in the draft '
                             '(not live until published)</span>')

    @app.get("/dashboard")
    @page()
    async def dashboard(request: Request, user: User) -> HTTPResponse:
        from ivr.console.calls import dashboard as stats
        from ivr.console.calls import list_views, svg_bars

        filters = filters_of(request)
        views = await asyncio.to_thread(list_views, settings.transcripts_dir, filters, 100_000)
        rows = stats(views)
        return console.render(request, "dashboard.html", rows=rows, chart=Markup(svg_bars(rows)), filters=filters)

    # ------------------------------------------------------------ audit and users
    @app.get("/audit")
    @page()
    async def audit(request: Request, user: User) -> HTTPResponse:
        from ivr.releases import ReleaseAudit

        entries = await asyncio.to_thread(console.store.audit)

        def release_events() -> list[dict[str, Any]]:
            events = ReleaseAudit(settings.database_url)
            try:
                return list(reversed(events.events()))[:200]
            finally:
                events.close()

        return console.render(request, "audit.html", entries=entries, events=await asyncio.to_thread(release_events))

    @app.get("/users")
    @page("admin")
    async def users(request: Request, user: User) -> HTTPResponse:
        if not user.can("admin"):
            return console.render(request, "error.html", 403, message="only an admin manages users")
        return console.render(request, "users.html", users=await asyncio.to_thread(console.store.users), notice="")

    @app.post("/users")
    @page("admin")
    async def change_user(request: Request, user: User) -> HTTPResponse:
        action, name = field(request, "action", 20), field(request, "name", 64)
        try:
            if action == "add":
                await asyncio.to_thread(console.store.add_user, name, field(request, "role", 20),
                                        field(request, "password", 1024), by=user.name)
                notice = f"user {name} added"
            elif action == "role":
                await asyncio.to_thread(console.store.set_role, name, field(request, "role", 20), by=user.name)
                notice = f"{name} is now {request.form.get('role')}"
            elif action == "remove":
                if name == user.name:
                    raise UserError("you cannot remove yourself")
                await asyncio.to_thread(console.store.remove_user, name, by=user.name)
                notice = f"user {name} removed"
            else:
                raise UserError(f"unknown action {action!r}")
            status = 200
        except UserError as exc:
            notice, status = f"nothing changed: {exc}", 422
        return console.render(request, "users.html", status, users=await asyncio.to_thread(console.store.users),
                              notice=notice)

    @app.exception(UserError)
    async def bad_field(request: Request, exc: Exception) -> HTTPResponse:
        return response.text(f"nothing was saved: {exc}", status=422)

    return app


async def serve(settings: Settings, host: str, port: int, *, secure_cookies: bool = False,
                config: Path | None = None, ready: Callable[[], None] | None = None) -> None:
    """Serve the console until cancelled (``ivr console``)."""
    app = build_app(settings, secure_cookies=secure_cookies, config=config)
    server = await app.create_server(host, port, return_asyncio_server=True, access_log=False)
    if server is None:
        raise RuntimeError("Sanic did not return a server")
    await server.startup()
    await server.before_start()
    await server.after_start()
    if ready is not None:
        ready()
    try:
        await server.serve_forever()
    finally:
        await server.before_stop()
        closing = server.close()
        if closing is not None:
            await closing
        await server.after_stop()
