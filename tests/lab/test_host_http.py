"""A simulated host's HTTP, as iPXE's: one kept-alive connection per server for the boot, opened
anew when the server closed it meanwhile; errors are boot failures, never crashes."""

from __future__ import annotations

import http.server
import threading

import pytest

from provisioner.lab.host import BootFailed, NetbootHost


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: list[tuple] = []
    closing = False  # close every connection after one answer, without saying so

    def do_GET(self):
        _Handler.connections.append(self.client_address)
        body = b"#!ipxe\nexit\n" if self.path == "/boot.ipxe" else b"missing"
        self.send_response(200 if self.path == "/boot.ipxe" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if _Handler.closing:
            self.close_connection = True

    def do_POST(self):
        n = int(self.headers["Content-Length"])
        body = self.rfile.read(n)[::-1]  # echoed backwards: the body went whole
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def host(tmp_path) -> NetbootHost:
    return NetbootHost(site=None, macs={}, firmware_type={}, tftp=("127.0.0.1", 69),
                       http_base="http://127.0.0.1", disk_dir=tmp_path, workers=1)


def test_a_boot_keeps_one_connection_and_opens_a_new_one_when_the_server_closed_it(server, tmp_path):
    h = host(tmp_path)
    _Handler.connections.clear()
    _Handler.closing = False
    assert [h._get(f"{server}/boot.ipxe") for _ in range(3)] == [b"#!ipxe\nexit\n"] * 3
    assert len(set(_Handler.connections)) == 1  # kept alive across the boot
    assert h._get(f"{server}/cb", data=b"abc", headers={"Content-Type": "application/json"}) == b"cba"
    _Handler.closing = True
    assert [h._get(f"{server}/boot.ipxe") for _ in range(3)] == [b"#!ipxe\nexit\n"] * 3
    assert len(set(_Handler.connections)) == 3  # the kept one answered once more, then a new one each time
    h._close_connections()
    h.close()


def test_an_http_error_or_no_server_is_a_boot_failure(server, tmp_path):
    h = host(tmp_path)
    _Handler.closing = False
    with pytest.raises(BootFailed, match="HTTP 404"):
        h._get(f"{server}/nothing")
    with pytest.raises(BootFailed, match="GET http://127.0.0.1:9/x"):
        h._get("http://127.0.0.1:9/x")  # discard port: nothing listens
    with pytest.raises(BootFailed, match="unsupported URL"):
        h._get("https://127.0.0.1/x")
    h._close_connections()
    h.close()
