"""Redfish transport for the driver: sushy's connector over one kept-alive HTTPS connection per BMC
with one TLS context, and the one place where sushy, requests and ssl failures become our error tree.

Why not sushy's defaults: its connector asks the BMC to close the connection after every request,
and requests builds a fresh TLS context for every new connection, loading the whole CA store each
time (16.7 ms of CPU per connection, measured: research/redfish-feasibility.md); requests' own
per-request machinery cost another ~1.5 ms of CPU per request here, and http.client's header
parsing most of what was left (see provisioner.drivers.http11). So sushy keeps its resources,
authentication, retries and error classes, and its connector's HTTP session is KeptAliveSession:
one connection per BMC, whose TLS context was built once, from the credentials' `ca_bundle` or the
system store; certificates are always verified and hostnames (IP SANs) checked.
"""

from __future__ import annotations

import base64
import datetime
import json as jsonlib
import secrets
import socket
import ssl
import threading
from urllib.parse import urlsplit

import requests
import requests.structures
import sushy
from sushy import exceptions as sushy_exc

from provisioner.drivers import http11
from provisioner.errors import BmcAuthError, BmcBusy, BmcTimeout, BmcUnreachable, DriverError, Unsupported

_contexts: dict[tuple[str | None, float], ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """A verifying client context trusting `ca_bundle` (a PEM file or directory), else the system store.

    Built once per bundle (and its modification time) and shared: loading trust anchors is the
    expensive part, and an SSLContext is safe to share between threads.
    """
    import os

    mtime = os.stat(ca_bundle).st_mtime if ca_bundle else 0.0
    key = (ca_bundle, mtime)
    with _contexts_lock:
        ctx = _contexts.get(key)
        if ctx is None:
            if ca_bundle and os.path.isdir(ca_bundle):
                ctx = ssl.create_default_context(capath=ca_bundle)
            else:
                ctx = ssl.create_default_context(cafile=ca_bundle)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            _contexts[key] = ctx
        return ctx


class KeptAliveSession:
    """What sushy's Connector needs of a requests.Session (request, headers, auth, close), over one
    kept-alive TLS connection to one BMC, framed by provisioner.drivers.http11. Failures are raised
    as requests' exceptions, so sushy's connector handles them as it does its own."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, timeout: float):
        self.host, self.port, self.context, self.timeout = host, port, context, timeout
        self.authority = f"{host}:{port}"
        self.origin = f"https://{host}:{port}/"
        self.headers: dict[str, str] = {}    # sushy keeps X-Auth-Token here
        self.auth: tuple[str, str] | None = None  # sushy's Basic credentials
        self._conn: _Connection | None = None
        self._lock = threading.Lock()

    def request(self, method: str, url: str, *, json=None, headers=None, timeout=None, files=None, **_ignored):
        if url.startswith(self.origin):  # sushy joins every path onto the BMC's URL: no need to parse it
            target = url[len(self.origin) - 1:]
        else:
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        send = {k: v for k, v in {**self.headers, **(headers or {})}.items() if v is not None}
        body = None
        if files is not None:
            body, send["Content-Type"] = _multipart(files)
        elif json is not None:
            body = jsonlib.dumps(json).encode()
            send["Content-Type"] = "application/json"
        if self.auth:
            send["Authorization"] = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
        message = http11.encode_request(method, target, self.authority, send, body)
        read_timeout = (timeout[1] if isinstance(timeout, tuple) else timeout) or self.timeout
        for attempt in (1, 2):
            with self._lock:
                conn, self._conn = self._conn, None
            reused = conn is not None
            try:
                if conn is None:
                    conn = _Connection(self.host, self.port, self.context, min(self.timeout, 5.0))
                answer = conn.exchange(message, method, read_timeout)
            except (http11.ClosedBeforeAnswer, ConnectionResetError, BrokenPipeError) as e:
                if conn is not None:
                    conn.close()
                if reused and attempt == 1:
                    continue  # the BMC closed the idle connection meanwhile: once more, on a new one
                raise requests.exceptions.ConnectionError(f"{method} {url}: {e}") from e
            except ssl.SSLCertVerificationError as e:
                raise requests.exceptions.SSLError(f"{url}: {e}") from e
            except TimeoutError as e:
                connected = conn is not None  # the TLS connection was up: the answer is what timed out
                if conn is not None:
                    conn.close()
                kind = requests.exceptions.ReadTimeout if connected else requests.exceptions.ConnectTimeout
                raise kind(f"{method} {url}: {e}") from e
            except (OSError, http11.ProtocolError) as e:
                if conn is not None:
                    conn.close()
                raise requests.exceptions.ConnectionError(f"{method} {url}: {e}") from e
            if answer.will_close:
                conn.close()
            else:
                with self._lock:
                    self._conn = conn
            return _response(answer, url)
        raise AssertionError("unreachable")

    def post(self, url: str, **kwargs):
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class _Connection:
    """One TLS connection to a BMC: the certificate verified against `context`, and the IP address
    or name checked against its SANs (RFC 6125; ssl does it from server_hostname)."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, connect_timeout: float):
        raw = socket.create_connection((host, port), timeout=connect_timeout)
        try:
            # the request goes out in one write, but a body sent late would otherwise wait for an ACK
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = context.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        self.rfile = self.sock.makefile("rb")

    def exchange(self, message: bytes, method: str, read_timeout: float) -> http11.Response:
        self.sock.settimeout(read_timeout)
        self.sock.sendall(message)
        return http11.read_response(self.rfile, method)

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


_NO_TIME = datetime.timedelta(0)


def _response(answer: http11.Response, url: str) -> requests.Response:
    """The answer as the requests.Response sushy reads (status_code, reason, headers, json(), content).
    Filled in directly: Response() also builds a cookie jar per response, which nothing here reads."""
    r = requests.Response.__new__(requests.Response)
    r.__dict__.update(status_code=answer.status, reason=answer.reason, url=url, _content=answer.body,
                      _content_consumed=True, _next=None, raw=None, encoding="utf-8", history=[],
                      headers=requests.structures.CaseInsensitiveDict(answer.headers), elapsed=_NO_TIME,
                      request=None, connection=None)
    return r


def _multipart(files: dict) -> tuple[bytes, str]:
    """multipart/form-data (RFC 7578) of {name: (filename | None, bytes | str, content type)}."""
    boundary = secrets.token_hex(16)
    out = []
    for name, (filename, data, ctype) in files.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n\r\n".encode())
        out.append(data.encode() if isinstance(data, str) else bytes(data))
        out.append(b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def connector(host: str, port: int, *, ca_bundle: str | None, timeout: float) -> sushy.connector.Connector:
    """A sushy connector to one BMC: one kept-alive connection, one verified TLS context, no hidden retries."""
    base_url = f"https://{host}:{port}"
    conn = sushy.connector.Connector(base_url, verify=True, server_side_retries=1,
                                     server_side_retries_delay=0.01, default_request_timeout=timeout,
                                     connect_timeout=min(timeout, 5.0))
    conn._session.close()
    # sushy sends every request through its private requests.Session; this one speaks http.client
    conn._session = KeptAliveSession(host, port, tls_context(ca_bundle), timeout)
    return conn


def translate(e: BaseException, key: str, *, answered: bool, what: str) -> DriverError:
    """The driver error for a failure of sushy, requests or ssl while talking to BMC `key`.

    Retryable: no answer (BmcUnreachable), an answer then silence (BmcTimeout), a busy or
    restarting service (HTTP 503, 429: BmcBusy). Fatal: refused credentials or an untrusted
    certificate (BmcAuthError), a resource or value the BMC does not have (Unsupported), and any
    other error answer (DriverError).
    """
    if isinstance(e, DriverError):
        return e
    cause = e.__context__ if isinstance(e, sushy_exc.ConnectionError) else e
    if isinstance(cause, requests.exceptions.SSLError) or isinstance(cause, ssl.SSLError):
        return BmcAuthError(f"{key}: {what}: the BMC's TLS certificate is not trusted (set the credentials' "
                            f"ca_bundle to the CA that signed it): {_short(cause)}")
    if isinstance(cause, (requests.exceptions.Timeout, TimeoutError)):
        if answered and not isinstance(cause, requests.exceptions.ConnectTimeout):
            return BmcTimeout(f"{key}: {what}: the BMC stopped answering ({_short(cause)})")
        return BmcUnreachable(f"{key}: {what}: no answer from the BMC ({_short(cause)})")
    if isinstance(cause, (requests.exceptions.RequestException, sushy_exc.ConnectionError, OSError)):
        return BmcUnreachable(f"{key}: {what}: no answer from the BMC ({_short(cause)})")
    if isinstance(e, sushy_exc.HTTPError):
        status = e.status_code
        detail = f"HTTP {status} {e.code or ''} {e.detail or ''}".strip()
        if isinstance(e, sushy_exc.AccessError):
            return BmcAuthError(f"{key}: {what}: credentials refused ({detail})")
        if status in (429, 503):
            return BmcBusy(f"{key}: {what}: the BMC is busy ({detail})")
        if status in (400, 404, 405, 501) or isinstance(e, (sushy_exc.BadRequestError, sushy_exc.ResourceNotFoundError)):
            return Unsupported(f"{key}: {what}: the BMC refused the request ({detail})")
        return DriverError(f"{key}: {what}: the BMC answered {detail}")
    if isinstance(e, (sushy_exc.MissingAttributeError, sushy_exc.MissingActionError,
                      sushy_exc.InvalidParameterValueError, sushy_exc.MissingHeaderError)):
        return Unsupported(f"{key}: {what}: {e}")
    if isinstance(e, sushy_exc.SushyError):
        return DriverError(f"{key}: {what}: {e}")
    if isinstance(e, ValueError):  # a body that is not the JSON the schema promises
        return DriverError(f"{key}: {what}: unexpected answer from the BMC ({e})")
    raise e


def _short(e: BaseException) -> str:
    text = str(e)
    return text if len(text) < 200 else text[:200] + "..."
