"""Fixtures for the console tests: one small lab site, one console server (TLS) and one pair of
browsers per module (Debian's Chromium, driven by its chromedriver through Selenium)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent.parent / "pipeline"))  # pipeline_site

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
def console(site, tmp_path_factory):
    """The console on HTTPS (loopback, a certificate from a throw-away CA), polling fast."""
    from provisioner.console.app import ConsoleServer, create_console_app
    from provisioner.lab.redfish_tls import ensure_ca, issue_server_cert

    tls = tmp_path_factory.mktemp("tls")
    ca, _ = ensure_ca(tls)
    cert, key = issue_server_cert(tls, ["127.0.0.1"], name="console")
    server = ConsoleServer(create_console_app(site.context(), poll_seconds=0.2), tls=(str(cert), str(key))).start()
    server.ca = str(ca)  # what a client trusts to check the console's certificate
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browsers(console):
    b = Browsers(console.url)
    yield b
    b.quit()
