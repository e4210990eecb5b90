"""The lab Redfish BMC's HTTP/1.1 serving (provisioner.lab.redfish_conn), on raw TLS sockets: what
real clients send that our driver does not (pipelined requests, chunked bodies, Expect: 100-continue,
HTTP/1.0), and what a server must refuse."""

from __future__ import annotations

import base64
import json
import socket
import ssl

import pytest

from provisioner.drivers import http11
from provisioner.lab.bmc_process import generate_nodes
from provisioner.lab.loopback import free_block
from provisioner.lab.redfish_site import RedfishSite

AUTH = "Authorization: Basic " + base64.b64encode(b"admin:password").decode()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redfish-conn")
    base, port = free_block(1, port=8443)
    s = RedfishSite(generate_nodes(1, base=base, port=port), state_path=tmp / "state.json", cert_dir=tmp).start()
    yield s
    s.stop()


@pytest.fixture
def conn(site):
    node = next(iter(site.nodes.values()))
    ctx = ssl.create_default_context(cafile=str(site.ca_path))
    raw = socket.create_connection((node["bmc_address"], node["bmc_port"]), timeout=10)
    tls = ctx.wrap_socket(raw, server_hostname=node["bmc_address"])
    yield tls, tls.makefile("rb")
    tls.close()


def answer(rfile, method="GET") -> http11.Response:
    return http11.read_response(rfile, method)


def test_pipelined_requests_are_answered_in_order(conn):
    tls, rfile = conn
    tls.sendall(f"GET /redfish/v1/Systems/1 HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n\r\n"
                f"GET /redfish/v1/Managers/1 HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n\r\n".encode())
    first, second = answer(rfile), answer(rfile)
    assert json.loads(first.body)["@odata.id"] == "/redfish/v1/Systems/1"
    assert json.loads(second.body)["@odata.id"] == "/redfish/v1/Managers/1"
    assert not second.will_close


def test_a_chunked_body_after_100_continue(conn, site):
    tls, rfile = conn
    body = json.dumps({"Boot": {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once"}}).encode()
    tls.sendall(f"PATCH /redfish/v1/Systems/1 HTTP/1.1\r\nHost: x\r\n{AUTH}\r\nContent-Type: application/json\r\n"
                "Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    assert rfile.readline() == b"HTTP/1.1 100 Continue\r\n" and rfile.readline() == b"\r\n"
    tls.sendall(b"%x\r\n%s\r\n%x;ext=1\r\n%s\r\n0\r\n\r\n" % (10, body[:10], len(body) - 10, body[10:]))
    assert answer(rfile, "PATCH").status == 204
    assert site.state(next(iter(site.nodes)))["boot_override"]["device"] == "cdrom"


def test_http10_is_answered_then_closed(conn):
    tls, rfile = conn
    tls.sendall(b"GET /redfish/v1/ HTTP/1.0\r\n\r\n")
    r = answer(rfile)
    assert r.status == 200 and r.will_close
    assert rfile.read() == b""


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /redfish/v1/ HTTP/1.1\r\nBad Header : x\r\n\r\n", 400),
    (b"PATCH /redfish/v1/Systems/1 HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
    (b"POST /redfish/v1/UpdateService/upload HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
])
def test_malformed_requests_are_refused_and_closed(conn, request_bytes, status):
    tls, rfile = conn
    tls.sendall(request_bytes)
    r = answer(rfile)
    assert r.status == status and r.will_close


def test_a_body_over_the_limit_is_refused_unread(conn):
    tls, rfile = conn
    tls.sendall(f"POST /redfish/v1/UpdateService/upload HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n"
                f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {(64 << 20) + 1}\r\n\r\n".encode())
    r = answer(rfile, "POST")
    assert r.status == 413 and r.will_close
