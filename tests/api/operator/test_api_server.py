"""`provisioner api` as an operator starts it: its own process and port, HTTPS with --tls-cert and
--tls-key, a Secure session cookie over TLS; and the console's blueprint hook."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys

import pytest
from flask import Blueprint, current_app

from provisioner.api.operator import OperatorDeps, create_operator_app
from provisioner.context import Context, Settings
from provisioner.lab.redfish_tls import ensure_ca, issue_server_cert


@pytest.fixture
def tls_api(spec_dir, tmp_path):
    data = tmp_path / "data"
    ctx = Context(Settings(spec_dir=spec_dir, data_dir=data, actor="alice"))
    ctx.store.accounts.add("bob", "viewer", "test set-up", password="correct horse battery")
    token = ctx.store.accounts.create_token("bob", "tests", "test set-up")[0]
    cert, key = issue_server_cert(tmp_path / "tls", ["127.0.0.1"], name="api")
    proc = subprocess.Popen([sys.executable, "-m", "provisioner", "--spec", str(spec_dir), "--data", str(data),
                             "api", "--bind", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"on https://127\.0\.0\.1:(\d+)/api/v1", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        trust = ssl.create_default_context(cafile=str(ensure_ca(tmp_path / "tls")[0]))
        yield int(m.group(1)), trust, token
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_api_speaks_tls_and_its_session_cookie_is_secure(tls_api):
    port, trust, token = tls_api
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=trust, timeout=60)
    conn.request("GET", "/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    r = conn.getresponse()
    assert (r.status, json.loads(r.read())["username"]) == (200, "bob")
    conn.request("POST", "/api/v1/session", body=json.dumps({"username": "bob", "password": "correct horse battery"}),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    cookie = r.getheader("Set-Cookie")
    assert r.status == 201 and "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    conn.close()
    plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # plain HTTP to the TLS port
    try:
        plain.request("GET", "/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        status = plain.getresponse().status
    except (OSError, http.client.HTTPException):
        status = None  # the connection dropped
    assert status in (None, 400), status


def test_a_busy_port_is_one_line_and_an_exit_code(spec_dir, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "provisioner", "--spec", str(spec_dir), "--data",
                            str(tmp_path / "data"), "api", "--bind", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: cannot serve the operator API"), r.stderr
    assert "Traceback" not in r.stderr


def test_extra_blueprints_share_the_app_and_its_authentication_stays_theirs(spec_dir, tmp_path):
    console = Blueprint("console", __name__, url_prefix="/console")

    @console.get("/")
    def index():
        return "console"

    @console.get("/me")
    def me():
        return current_app.config["AUTHENTICATE"]().name

    ctx = Context(Settings(spec_dir=spec_dir, data_dir=tmp_path / "data"))
    app = create_operator_app(OperatorDeps(ctx, secure_cookie=False), blueprints=[console])
    client = app.test_client()
    assert client.get("/console/").data == b"console"
    assert client.get("/api/v1/status").status_code == 401
    assert client.get("/console/me").status_code == 401  # the API's sign-in, the API's problem
    ctx.store.accounts.add("dana", "viewer", "test set-up", password="correct horse battery")
    signed = client.post("/api/v1/session", json={"username": "dana", "password": "correct horse battery"})
    assert signed.status_code == 201
    assert client.get("/console/me").data == b"dana"


def test_the_api_server_anchors_the_audit_chain_with_checkpoints_it_signs(spec_dir, tmp_path):
    data = tmp_path / "data"
    ctx = Context(Settings(spec_dir=spec_dir, data_dir=data, actor="alice"))
    ctx.store.accounts.add("bob", "approver", "test set-up", password="correct horse battery")
    base = [sys.executable, "-m", "provisioner", "--spec", str(spec_dir), "--data", str(data)]
    proc = subprocess.Popen([*base, "api", "--bind", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "operator API on http://127.0.0.1:" in line, line
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)  # the web console rides along
        conn.request("GET", "/console/login")
        page = conn.getresponse()
        assert page.status == 200 and "Sign in" in page.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    verify = subprocess.run([*base, "audit", "verify", "--json"], capture_output=True, text=True, timeout=120)
    report = json.loads(verify.stdout)
    assert verify.returncode == 0 and report["ok"] and report["checkpoints"] >= 1, verify.stdout + verify.stderr
    # the store emptied behind the server's back no longer verifies: the signed head is missing
    for f in data.glob("provisioner.db*"):  # the database and its WAL
        f.unlink()
    emptied = subprocess.run([*base, "audit", "verify"], capture_output=True, text=True, timeout=120)
    assert emptied.returncode == 6 and "missing" in emptied.stdout + emptied.stderr, emptied.stdout + emptied.stderr


def test_the_console_offers_single_sign_on_when_the_api_is_given_a_provider(spec_dir, tmp_path):
    base = [sys.executable, "-m", "provisioner", "--spec", str(spec_dir), "--data", str(tmp_path / "data"), "api",
            "--bind", "127.0.0.1:0", "--no-checkpoints", "--oidc-issuer", "http://127.0.0.1:9/realm",
            "--oidc-client-id", "provisioner", "--oidc-redirect", "https://127.0.0.1/console/oidc/callback"]
    missing = subprocess.run(base, capture_output=True, text=True, timeout=120,
                             env={k: v for k, v in os.environ.items() if k != "PROVISIONER_OIDC_CLIENT_SECRET"})
    assert missing.returncode == 2 and "PROVISIONER_OIDC_CLIENT_SECRET" in missing.stderr, missing.stderr
    proc = subprocess.Popen(base, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PROVISIONER_OIDC_CLIENT_SECRET": "s3cret"})
    try:
        line = proc.stderr.readline()
        port = int(re.search(r"127\.0\.0\.1:(\d+)/api", line).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/console/login")
        assert "Sign in with single sign-on" in conn.getresponse().read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_many_polling_clients_keep_their_connections(tls_api):
    """Automation polls over keep-alive connections (and TLS): 20 clients at once must each keep
    theirs. cheroot's default kept 10 and closed every other one after its answer."""
    port, trust, token = tls_api
    conns = [http.client.HTTPSConnection("127.0.0.1", port, context=trust, timeout=60) for _ in range(20)]
    try:
        for c in conns:  # all 20 open and served before any asks again
            c.request("GET", "/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        answers = [c.getresponse() for c in conns]
        for r in answers:
            r.read()
        assert [(r.status, r.getheader("Connection")) for r in answers] == [(200, None)] * 20  # none says "close"
        sockets = [c.sock for c in conns]
        for c in conns:  # the second request goes over the same connection
            c.request("GET", "/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
            r = c.getresponse()
            assert (r.status, json.loads(r.read())["username"]) == (200, "bob")
        assert [c.sock for c in conns] == sockets
    finally:
        for c in conns:
            c.close()


def _listeners(port: int) -> list[int]:
    """Inodes of the sockets listening on 127.0.0.1:port (/proc/net/tcp: state 0A is LISTEN)."""
    rows = open("/proc/net/tcp").read().splitlines()[1:]
    return [int(r.split()[9]) for r in rows if r.split()[1] == f"0100007F:{port:04X}" and r.split()[3] == "0A"]


def _copies(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent), "-f", "provisioner .*api --join"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_several_processes_answer_on_one_port_and_end_with_the_first(spec_dir, tmp_path):
    """`provisioner api --processes 2`: two listening sockets on the one port, every request
    answered; a copy killed is started again; SIGTERM to the first process ends them all."""
    import time

    data = tmp_path / "data"
    ctx = Context(Settings(spec_dir=spec_dir, data_dir=data, actor="alice"))
    ctx.store.accounts.add("bob", "viewer", "test set-up")
    token = ctx.store.accounts.create_token("bob", "tests", "test set-up")[0]
    proc = subprocess.Popen([sys.executable, "-m", "provisioner", "--spec", str(spec_dir), "--data", str(data),
                             "api", "--bind", "127.0.0.1:0", "--processes", "2"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"on http://127\.0\.0\.1:(\d+)/api/v1 \(OpenAPI: /api/v1/openapi.json, 2 processes\)", line)
        assert m, line
        port = int(m.group(1))

        def until(check):
            for _ in range(1200):  # the copies import and load the spec: slow on a loaded machine
                if check():
                    return True
                time.sleep(0.05)
            return False

        assert until(lambda: len(_listeners(port)) == 2)
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(30)]
        for c in conns:
            c.request("GET", "/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
            r = c.getresponse()
            assert (r.status, json.loads(r.read())["username"]) == (200, "bob")
            c.close()
        victim = _copies(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        assert until(lambda: len(_copies(proc.pid)) == 1 and victim not in _copies(proc.pid)
                     and len(_listeners(port)) == 2)
        copies = _copies(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert not [p for p in copies if os.path.exists(f"/proc/{p}") and "zombie" not in open(f"/proc/{p}/status").read()]
    assert _listeners(port) == []
