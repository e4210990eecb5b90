"""The CLI as a client of the operator API: where `provisioner login` keeps the server and token,
and one call over HTTP(S) whose problem details become the same one-line error and exit code as
the command has locally.

The login is `$XDG_CONFIG_HOME/provisioner/login.json` (default ~/.config), written 0600:
{"server": URL, "token": prv_..., "ca": PEM file or null}. PROVISIONER_SERVER and
PROVISIONER_TOKEN override it; PROVISIONER_SERVER=local (or `provisioner logout`) goes back to
the local store. `remote_for` is the one place that decides; commands of the host they run on
say so (`on_this_host`).
"""

from __future__ import annotations

import functools
import http.client
import inspect
import json
import os
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import click

from provisioner.errors import NotAuthenticated, ProvisionerError


class RemoteError(ProvisionerError):
    """A problem (RFC 9457) the server answered: its detail, and the exit code it carries."""

    def __init__(self, detail: str, status: int, exit_code: int | None):
        super().__init__(detail)
        self.http_status, self.exit_code = status, exit_code or 1


def login_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "provisioner" / "login.json"


def save_login(server: str, token: str, ca: str | None) -> Path:
    path = login_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "w") as f:
        json.dump({"server": server, "token": token, "ca": ca}, f)
    os.replace(tmp, path)
    return path


@dataclass
class Remote:
    server: str
    token: str | None
    ca: str | None = None
    cookie: str | None = None  # a session (login with a password, before it has a token)

    def call(self, method: str, path: str, body: dict | None = None, query: dict | None = None):
        url = urllib.parse.urlsplit(self.server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise NotAuthenticated(f"server {self.server!r} is not an http(s) URL; `provisioner login --server URL`")
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        if url.scheme == "https":
            conn = http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=600,
                                               context=ssl.create_default_context(cafile=self.ca))
        else:
            conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=600)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif self.cookie:
            headers["Cookie"] = self.cookie
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        try:
            conn.request(method, url.path.rstrip("/") + path, body=data, headers=headers)
            r = conn.getresponse()
            raw = r.read()
            self.set_cookie = r.getheader("Set-Cookie")
        except (OSError, http.client.HTTPException) as e:
            raise RemoteError(f"cannot reach the operator API at {self.server}: {e}", 503, 1) from None
        finally:
            conn.close()
        try:
            out = json.loads(raw) if raw else None
        except ValueError:
            out = None
        if r.status >= 400:
            detail = out.get("detail") if isinstance(out, dict) else raw[:200].decode(errors="replace")
            code = out.get("exit_code") if isinstance(out, dict) else None
            raise RemoteError(detail or f"HTTP {r.status}", r.status, code)
        return out


    def events(self, path: str):
        """A Server-Sent Events stream (WHATWG HTML §9.2): (event, data) pairs until the server ends it."""
        url = urllib.parse.urlsplit(self.server)
        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        extra = {"context": ssl.create_default_context(cafile=self.ca)} if url.scheme == "https" else {}
        conn = cls(url.hostname, url.port or (443 if url.scheme == "https" else 80), timeout=600, **extra)
        headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {self.token}"}
        try:
            conn.request("GET", url.path.rstrip("/") + path, headers=headers)
            r = conn.getresponse()
            if r.status >= 400:
                out = json.loads(r.read() or b"{}")
                raise RemoteError(out.get("detail") or f"HTTP {r.status}", r.status, out.get("exit_code"))
            kind, data = "message", []
            while True:
                line = r.readline()
                if not line:
                    return
                line = line.decode().rstrip("\r\n")
                if not line:  # a blank line dispatches the event
                    if data:
                        yield kind, json.loads("\n".join(data))
                    kind, data = "message", []
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
        except (OSError, http.client.HTTPException) as e:
            raise RemoteError(f"lost the operator API at {self.server}: {e}", 503, 1) from None
        finally:
            conn.close()


def quote(segment: str) -> str:
    """One path segment of a URL (a release prefix, an environment) as typed by the operator."""
    return urllib.parse.quote(segment, safe="")


def _saved() -> dict:
    path = login_path()
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
    return {}


def server_set() -> str | None:
    """The operator API's URL when one is set (PROVISIONER_SERVER, or `provisioner login`); None: local."""
    server = os.environ.get("PROVISIONER_SERVER")
    if server == "local":
        return None
    return server or _saved().get("server") or None


def remote_for(settings) -> Remote | None:
    """The API to talk to, or None for the local store: the one place that decides."""
    server = server_set()
    if not server:
        return None
    saved = _saved()
    token = os.environ.get("PROVISIONER_TOKEN") or saved.get("token")
    if not token:
        raise NotAuthenticated(f"no token for {server}: `provisioner login --server {server}`")
    return Remote(server, token, os.environ.get("PROVISIONER_CA") or saved.get("ca"))


def on_this_host(what: str = "", refuse: str | None = None):
    """Mark a command (or group) of the host it runs on (lab, serve, worker, db, netboot, api).

    With a server set, it says so in one line on stderr and acts here; with `refuse`, it stops
    with that reason (a usage error, exit 2) instead: it would do the wrong thing here.
    """

    def mark(cmd):
        callback = cmd.callback

        @functools.wraps(callback)
        def wrapper(*args, **kwargs):
            server = server_set()
            if server and refuse:
                raise click.UsageError(f"`provisioner {cmd_path(cmd)}` {refuse}")
            if server:
                click.echo(f"note: `provisioner {cmd_path(cmd)}` acts on this host ({what}), not through {server}",
                           err=True)
            return callback(*args, **kwargs)

        cmd.callback = wrapper
        cmd.help = inspect.cleandoc(cmd.help or "") + "\n\n" + (
            f"With a server set (`provisioner login`) it refuses: it {refuse}." if refuse else
            f"With a server set (`provisioner login`) it still acts on this host ({what}) and says so on stderr.")
        return cmd

    return mark


def cmd_path(cmd) -> str:
    ctx = click.get_current_context(silent=True)
    return ctx.command_path.removeprefix("provisioner ") if ctx else cmd.name
