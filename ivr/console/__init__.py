"""The ops console (issue #14): a server-rendered web application (Sanic + Jinja2 + htmx) where ops staff
edit the draft (the working copy ``dialogs/<locale>/``), listen to prompts, publish and roll back through
``ivr publish`` / ``ivr rollback``'s own functions, behind login, roles, CSRF and an audit log.

- ``users.py``: users (scrypt-hashed passwords) and the audit log, in ``settings.console_dir/console.db``;
- ``security.py``: the session key, signed expiring session cookies, CSRF tokens;
- ``drafts.py``: reading and editing the draft's responses (placeholders checked, stale drafts refused);
- ``publishing.py``: publish jobs (``ivr publish`` in a child process, progress polled) and rollback;
- ``draftmodel.py``: the draft's own Rasa models for Try it and the accuracy run (never the working model);
- ``app.py``: the routes; ``commands.py``: ``ivr console`` and ``ivr console adduser``.
"""
