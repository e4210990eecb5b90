"""The few Flask features the simulated Redfish service uses, on bare WSGI: routes by method and
path, a before-request hook, error handlers, and a thread-local `request`.

Why not Flask itself: its per-request context machinery cost ~1 ms of CPU per request here, more
than the handlers, and a 1,000-BMC fleet makes ~11,000 requests (bench/redfish_fleet.py). Why not
werkzeug's Request and Response either: building them was half of what remained of the app's CPU
per request (py-spy --gil); a Redfish request needs its method, path, a few headers, the query
string and a JSON body, read here straight from the environ. werkzeug still parses the one
multipart body (the firmware push), on demand.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qs

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request as WerkzeugRequest

__all__ = ["App", "Response", "request"]

_REASONS = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


class Request:
    """What the handlers read of a request, from the WSGI environ (PEP 3333)."""

    def __init__(self, environ: dict, max_content_length: int, form_class: type):
        self.environ = environ
        self.method = environ["REQUEST_METHOD"]
        # PEP 3333 hands PATH_INFO over as latin-1 of the raw bytes; the URL's own encoding is UTF-8
        self.path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace") or "/"
        self.headers = _Headers(environ)
        self._max, self._form_class, self._args, self._werkzeug = max_content_length, form_class, None, None

    @property
    def args(self) -> dict[str, str]:
        """The query string's parameters, first value of each."""
        if self._args is None:
            self._args = {k: v[0] for k, v in parse_qs(self.environ.get("QUERY_STRING", ""),
                                                        keep_blank_values=True).items()}
        return self._args

    def get_json(self, silent: bool = False):
        """The body as JSON if it says it is JSON (Content-Type application/json or +json), else None;
        None too for a body that does not parse, when `silent`."""
        mimetype = self.environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if mimetype != "application/json" and not (mimetype.startswith("application/") and mimetype.endswith("+json")):
            return None
        try:
            return json.loads(self._body())
        except ValueError:
            if silent:
                return None
            raise

    def _body(self) -> bytes:
        try:
            length = int(self.environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > self._max:
            raise RequestEntityTooLarge()
        return self.environ["wsgi.input"].read(length) if length > 0 else b""

    @property
    def form(self):
        return self._multipart().form

    @property
    def files(self):
        return self._multipart().files

    def _multipart(self):
        if self._werkzeug is None:
            self._werkzeug = self._form_class(self.environ)
        return self._werkzeug


class _Headers:
    def __init__(self, environ: dict):
        self._environ = environ

    def get(self, name: str, default=None):
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        return self._environ.get(key, default)


_date = [0, ""]


def _http_date() -> str:
    """Date (RFC 9110 §6.6.1), formatted once a second: the server would format it per response."""
    now = int(time.time())
    if _date[0] != now:
        _date[:] = [now, formatdate(now, usegmt=True)]
    return _date[1]


class Response:
    """A status, header fields and a body, handed to the server as one buffer."""

    def __init__(self, body: str | bytes = b"", status: int = 200, content_type: str | None = None):
        self.body = body.encode() if isinstance(body, str) else body
        self.status = status
        self.headers: dict[str, str] = {"Content-Type": content_type} if content_type else {}

    def __call__(self, environ, start_response):
        headers = list(self.headers.items())
        headers.append(("Date", _http_date()))
        if self.status not in (204, 304) and not 100 <= self.status < 200:
            headers.append(("Content-Length", str(len(self.body))))
        start_response(_REASONS.get(self.status, f"{self.status} Unknown"), headers)
        return [self.body] if self.body else []


class _Current(threading.local):
    req: Request | None = None


_current = _Current()


class _RequestProxy:
    """`request` as in Flask: the request being served on this thread."""

    def __getattr__(self, name):
        return getattr(_current.req, name)


request = _RequestProxy()


class App:
    def __init__(self, max_content_length: int):
        self._static: dict[tuple[str, str], Callable] = {}
        self._patterns: list[tuple[str, re.Pattern, Callable]] = []
        self._before: list[Callable] = []
        self._errors: dict[object, Callable] = {}
        self.max_content_length = max_content_length
        self._form_class = type("BmcRequest", (WerkzeugRequest,), {"max_content_length": max_content_length})

    def route(self, method: str, path: str):
        def register(fn):
            if "<" in path:
                rx = re.compile("^" + re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", re.escape(path).replace(r"\<", "<")
                                             .replace(r"\>", ">")) + "$")
                self._patterns.append((method, rx, fn))
            else:
                self._static[(method, path)] = fn
            return fn
        return register

    def get(self, path: str):
        return self.route("GET", path)

    def post(self, path: str):
        return self.route("POST", path)

    def patch(self, path: str):
        return self.route("PATCH", path)

    def delete(self, path: str):
        return self.route("DELETE", path)

    def before_request(self, fn):
        self._before.append(fn)
        return fn

    def errorhandler(self, key):
        def register(fn):
            self._errors[key] = fn
            return fn
        return register

    def _match(self, method: str, path: str) -> tuple[Callable | None, dict, bool]:
        """(handler, path arguments, whether another method would match)."""
        fn = self._static.get((method, path))
        if fn is not None:
            return fn, {}, False
        other = any(p == path for m, p in self._static if m != method)
        for m, rx, fn in self._patterns:
            found = rx.match(path)
            if found:
                if m == method:
                    return fn, found.groupdict(), False
                other = True
        return None, {}, other

    def __call__(self, environ, start_response):
        req = Request(environ, self.max_content_length, self._form_class)
        _current.req = req
        try:
            response = self._respond(req)
        finally:
            _current.req = None
        return response(environ, start_response)

    def _respond(self, req: Request) -> Response:
        try:
            for fn in self._before:
                fn()
            handler, args, other = self._match(req.method, req.path)
            if handler is None:
                return self._errors[405 if other else 404](None)
            return handler(**args)
        except RequestEntityTooLarge:
            return self._errors[413](None)
        except Exception as e:
            for key, fn in self._errors.items():
                if isinstance(key, type) and isinstance(e, key):
                    return fn(e)
            raise
