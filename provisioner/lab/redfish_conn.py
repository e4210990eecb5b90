"""One connection to a simulated Redfish BMC served: HTTP/1.1 requests read (RFC 9112), the WSGI app
called (PEP 3333), its responses written, kept alive until the client closes or goes idle.

Why not cheroot's connection handling: with the app trimmed (provisioner.lab.redfish_wsgi), cheroot's
per-request machinery (request line and header parsing in Python, the WSGI gateway, its keep-alive
selector hand-offs between threads) was half of the simulator's CPU per request (py-spy --gil on
bench/redfish_fleet.py). Here each connection has its own thread, which reads with C's buffered
reader and writes each response in one send; the framing rules are provisioner.drivers.http11's.
"""

from __future__ import annotations

import io
import logging
import socket
import sys
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

from provisioner.drivers import http11

log = logging.getLogger("provisioner.lab.redfish")

_REASONS = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}
_NO_BODY_STATUS = (204, 304)


class _BadRequest(Exception):
    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status


def serve_connection(app, tls: socket.socket, peer: tuple, address: str, port: int, keepalive_s: float,
                     max_body: int) -> None:
    """Serve requests on `tls` until the client closes it, stays idle `keepalive_s`, or asks to close."""
    rfile = tls.makefile("rb", 8192)
    base = {"wsgi.version": (1, 0), "wsgi.url_scheme": "https", "wsgi.errors": sys.stderr,
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
            "SERVER_NAME": address, "SERVER_PORT": str(port), "SCRIPT_NAME": "", "HTTPS": "on",
            "REMOTE_ADDR": peer[0], "REMOTE_PORT": str(peer[1]), "provisioner.bmc_address": address}
    tls.settimeout(keepalive_s)  # for an idle client, and for one that stops mid-request
    try:
        while True:
            try:
                environ, close = _read_request(rfile, base, max_body, tls)
            except _BadRequest as e:
                body = str(e).encode()
                _send(tls, e.status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))], body,
                      close=True)
                return
            if environ is None or not _respond(app, environ, tls, close):
                return
    except (OSError, http11.ProtocolError) as e:  # the client went away, or its bytes are not HTTP
        log.debug("redfish.conn_closed bmc=%s peer=%s error=%s", address, peer, e)
    finally:
        rfile.close()
        try:
            tls.close()
        except OSError:
            pass


def _read_request(rfile, base: dict, max_body: int, tls) -> tuple[dict | None, bool]:
    line = rfile.readline(http11.MAX_LINE + 1)
    while line in (b"\r\n", b"\n"):  # RFC 9112 §2.2: empty lines before a request are ignored
        line = rfile.readline(http11.MAX_LINE + 1)
    if not line:
        return None, True
    if len(line) > http11.MAX_LINE:
        raise _BadRequest(414, "request line too long")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, f"not an HTTP/1.x request line: {line[:80]!r}")
    method, target, version = parts
    try:
        headers = http11.read_header_fields(rfile)
    except http11.ProtocolError as e:
        raise _BadRequest(400, str(e)) from None
    path, _, query = target.partition("?")
    environ = dict(base)
    environ.update(REQUEST_METHOD=method, SERVER_PROTOCOL=version, QUERY_STRING=query,
                   PATH_INFO=unquote_to_bytes(path).decode("latin-1"), REQUEST_URI=target)
    fields: dict[str, str] = {}
    for name, value in headers:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        fields[key] = f"{fields[key]},{value}" if key in fields else value
    environ.update(fields)
    connection = fields.get("HTTP_CONNECTION", "").lower()
    close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
    if fields.get("HTTP_EXPECT", "").lower() == "100-continue":  # RFC 9110 §10.1.1
        tls.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    coding = fields.get("HTTP_TRANSFER_ENCODING", "").lower().replace(" ", "")
    if coding:
        if coding != "chunked":
            raise _BadRequest(501, f"transfer coding {coding!r} is not supported")
        try:
            body = http11.read_chunked(rfile, max_body)
        except http11.ProtocolError as e:
            raise _BadRequest(413 if "over" in str(e) else 400, str(e)) from None
        del environ["HTTP_TRANSFER_ENCODING"]
        environ["CONTENT_LENGTH"] = str(len(body))
    else:
        length = fields.get("CONTENT_LENGTH", "0") or "0"
        if not length.isdigit():
            raise _BadRequest(400, f"invalid Content-Length {length!r}")
        if int(length) > max_body:  # the app answers 413 from CONTENT_LENGTH; the body stays unread: close
            body, close = b"", True
        else:
            body = http11.read_exact(rfile, int(length))
        environ["CONTENT_LENGTH"] = length
    environ["wsgi.input"] = io.BytesIO(body)
    environ["wsgi.input_terminated"] = True
    return environ, close


def _respond(app, environ: dict, tls, close: bool) -> bool:
    """Run the app for one request and send its response; whether the connection stays open."""
    started: list = []

    def start_response(status, headers, exc_info=None):
        if started and not exc_info:
            raise RuntimeError("start_response called a second time without exc_info")
        started[:] = [status, headers]
        return _no_write

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    status_line, headers = started
    status = int(status_line.split(" ", 1)[0])
    headers = [(k, v) for k, v in headers if k.lower() != "connection"]
    if status not in _NO_BODY_STATUS and not any(k.lower() == "content-length" for k, _ in headers):
        headers.append(("Content-Length", str(len(body))))
    if environ["REQUEST_METHOD"] == "HEAD":
        body = b""
    _send(tls, status_line, headers, body, close=close)
    return not close


def _no_write(_data) -> None:
    raise RuntimeError("the WSGI write() callable is not supported here")


def _send(tls, status, headers: list[tuple[str, str]], body: bytes, *, close: bool) -> None:
    status_line = status if isinstance(status, str) else _REASONS.get(status, f"{status} Error")
    lines = [f"HTTP/1.1 {status_line}", *(f"{k}: {v}" for k, v in headers)]
    if close:
        lines.append("Connection: close")
    tls.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
