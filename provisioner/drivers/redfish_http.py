"""Redfish transport for the driver: sushy's connector with one TLS context and a connection pool per
BMC, and the one place where sushy, requests and ssl failures become our error tree.

Why not sushy's defaults: its connector asks the BMC to close the connection after every request,
and requests builds a fresh TLS context for every new connection, loading the whole CA store each
time (16.7 ms of CPU per connection, measured: research/redfish-feasibility.md). Here each BMC gets
a pool of kept-alive connections whose TLS context was built once, from the credentials'
`ca_bundle` or the system store; certificates are always verified and hostnames (IP SANs) checked.
"""

from __future__ import annotations

import ssl
import threading

import requests
import requests.adapters
import sushy
from sushy import exceptions as sushy_exc

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


class PinnedContextAdapter(requests.adapters.HTTPAdapter):
    """HTTPS through one prepared SSLContext; requests must not load CA files per connection."""

    def __init__(self, context: ssl.SSLContext, pool_maxsize: int = 2):
        self._context = context
        super().__init__(pool_connections=1, pool_maxsize=pool_maxsize, max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["ssl_context"] = self._context
        return super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn, url, verify, cert):
        # The context already holds the trust anchors and requires a valid certificate; setting
        # ca_certs here (what requests does) would make urllib3 load them again per connection.
        conn.cert_reqs = "CERT_REQUIRED"


def connector(base_url: str, *, ca_bundle: str | None, timeout: float) -> sushy.connector.Connector:
    """A sushy connector to one BMC: kept-alive connections, one verified TLS context, no hidden retries."""
    conn = sushy.connector.Connector(base_url, verify=True, server_side_retries=1,
                                     server_side_retries_delay=0.01, default_request_timeout=timeout,
                                     connect_timeout=min(timeout, 5.0))
    session = conn._session  # sushy keeps its requests.Session private; these two settings need it
    session.headers.pop("Connection", None)  # sushy sends "Connection: close" on every request
    session.mount("https://", PinnedContextAdapter(tls_context(ca_bundle)))
    session.trust_env = False  # no proxies or REQUESTS_CA_BUNDLE from the environment for BMC traffic
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
    if isinstance(cause, requests.exceptions.Timeout):
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
