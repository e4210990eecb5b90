"""One boot server per test module for the HTTP route tests: the example spec released, the HTTP
routes under cheroot on loopback. Tests use distinct nodes so they can share it."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from dataclasses import dataclass

import pytest
from helpers import built_site, copy_spec

from provisioner.netboot.service import BootService
from provisioner.serve.services import BootServices


@dataclass
class Server:
    ctx: object
    rel: object
    base: str
    port: int

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, body) over a fresh connection; raw bytes, no client-side checks."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            try:
                conn.request(method, path, body=body, headers=headers or {})
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered before reading it all (413, 431): read that answer
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def get(self, path: str, headers: dict | None = None):
        return self.request("GET", path, headers=headers)

    def post(self, path: str, body, token: str | None = None):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.request("POST", path, raw, headers)

    def script(self, mac: str) -> str:
        status, _, body = self.get(f"/boot/{mac}.ipxe")
        assert status == 200, body
        return body.decode()

    def token(self, mac: str) -> str:
        text = self.script(mac)
        marker = "provisioner.token=" if "provisioner.token=" in text else "?token="
        return urllib.parse.unquote(text.split(marker)[1].split()[0])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    ctx, rel = built_site(copy_spec(root / "spec"), root / "data")
    svc = BootService(ctx.store, ctx.artifacts, "http://127.0.0.1:0")
    services = BootServices(svc, tftp_bind=None, http_bind="127.0.0.1:0", boot_files=None).start()
    svc.http_base = f"http://127.0.0.1:{services.http.port}"
    yield Server(ctx, rel, svc.http_base, services.http.port)
    services.stop()
