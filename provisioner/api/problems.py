"""Errors as problem details (RFC 9457), for both HTTP apps: the boot routes and the operator API.

Every error class carries its HTTP status (errors.py), so one handler answers them all: an
HTTPException with its own code and headers, a ProvisionerError with its status (and, for the
operator API, the exit code the CLI gives it locally), anything else a logged 500 whose detail
points at the server's log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus

from flask import jsonify, request
from werkzeug.exceptions import HTTPException

from provisioner.errors import ProvisionerError

PROBLEM = "application/problem+json"  # RFC 9457 §3


def problem_handler(log: logging.Logger, prefix: str, server: str, *, realm: str | None = None,
                    exit_codes: bool = False) -> Callable:
    """A Flask error handler; `prefix` names its log records (`http`, `api`), `server` is said in
    a 500's detail, `realm` (if any) is the Bearer realm a 401 names, and with `exit_codes` a
    problem carries the CLI's exit code for the error."""

    def problem(e: Exception):
        headers = {}
        if isinstance(e, HTTPException):
            if e.code is None:
                return e
            status, detail = e.code, e.description
            headers = {k: v for k, v in e.get_headers() if k.lower() not in ("content-type", "content-length")}
        elif isinstance(e, ProvisionerError):
            status, detail = e.http_status, str(e)
        else:
            log.exception("%s.bug path=%s", prefix, request.path[:200])
            status, detail = 500, f"internal error; the {server}'s log has the details"
        if status == 429:
            headers["Retry-After"] = "1"  # RFC 6585 §4
        if status == 401 and realm:
            headers["WWW-Authenticate"] = f'Bearer realm="{realm}"'  # RFC 9110 §11.6.1
        if status >= 500:
            log.error("%s.error status=%d path=%s detail=%s", prefix, status, request.path[:200], detail)
        elif status != 404:
            log.info("%s.refused status=%d path=%s detail=%s", prefix, status, request.path[:200], detail)
        title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        extra = {"exit_code": e.exit_code} if exit_codes and isinstance(e, ProvisionerError) else {}
        resp = jsonify(type="about:blank", title=title, status=status, detail=detail, **extra)
        resp.status_code, resp.content_type = status, PROBLEM
        resp.headers.update(headers)
        return resp

    return problem
