"""Fixtures for the console tests: one small lab site, one console server (TLS) and one pair of
browsers per module (Debian's Chromium, driven by its chromedriver through Selenium)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent.parent / "pipeline"))  # pipeline_site
sys.path.append(str(Path(__file__).resolve().parent.parent / "store"))  # test_accounts_oidc: an OpenID provider

from console_browser import NODES, PASSWORDS, ROLES, Browsers  # noqa: E402
from helpers import copy_spec  # noqa: E402
from pipeline_site import Site, tune_spec  # noqa: E402

from provisioner.context import Context, Settings  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The example site with a fast policy, the lab running, and the console's accounts."""
    root = tmp_path_factory.mktemp("console")
    spec = tune_spec(copy_spec(root / "spec"), nodes=NODES)
    data = root / "data"
    s = Site(spec, data, Context(Settings(spec_dir=spec, data_dir=data, actor="alice")))
    for name, role in ROLES.items():
        s.ctx.store.accounts.add(name, role, "test set-up", password=PASSWORDS[name])
    s.start_lab()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def oidc_provider():
    """The small, honest OpenID provider of the store's SSO tests, on loopback."""
    from test_accounts_oidc import Provider

    p = Provider()
    yield p
    p.server.shutdown()


@pytest.fixture(scope="module")
def console(site, oidc_provider, tmp_path_factory):
    """The console on HTTPS (loopback, a certificate from a throw-away CA), polling fast, with SSO."""
    from test_accounts_oidc import CLIENT_ID, SECRET

    from provisioner.auth.oidc import OidcClient
    from provisioner.console.app import ConsoleServer, create_console_app
    from provisioner.lab.redfish_tls import ensure_ca, issue_server_cert

    tls = tmp_path_factory.mktemp("tls")
    ca, _ = ensure_ca(tls)
    cert, key = issue_server_cert(tls, ["127.0.0.1"], name="console")
    with socket.socket() as s:  # the port first: the provider must know the callback's address
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    oidc = OidcClient(oidc_provider.issuer, CLIENT_ID, SECRET, f"https://127.0.0.1:{port}/console/oidc/callback")
    app = create_console_app(site.context(), poll_seconds=0.2, oidc=oidc)
    server = ConsoleServer(app, port=port, tls=(str(cert), str(key))).start()
    server.ca = str(ca)  # what a client trusts to check the console's certificate
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browsers(console):
    b = Browsers(console.url)
    yield b
    b.quit()
