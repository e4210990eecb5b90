"""The few Flask features the simulated Redfish service uses, on bare werkzeug: routes by method and
path, a before-request hook, error handlers, and a thread-local `request`.

Why not Flask itself: its per-request context machinery cost ~1 ms of CPU per request here, more
than the handlers, and a 1,000-BMC fleet makes ~11,000 requests (bench/redfish_fleet.py).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

__all__ = ["App", "Response", "request"]


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
        self._request_class = type("BmcRequest", (Request,), {"max_content_length": max_content_length})

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
        req = self._request_class(environ)
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
