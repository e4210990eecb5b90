"""HTTP/1.1 response framing of the Redfish transport (provisioner.drivers.http11), on bytes alone.

What the lab BMCs never send but real ones may: chunked bodies with extensions and trailers,
interim 100 responses, HTTP/1.0 answers, bodies ended by the connection's close, folded headers.
"""

from __future__ import annotations

import io

import pytest

from provisioner.drivers import http11


def read(raw: bytes, method: str = "GET") -> http11.Response:
    return http11.read_response(io.BufferedReader(io.BytesIO(raw)), method)


def test_content_length_body_and_keep_alive():
    r = read(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: "7"\r\nContent-Length: 2\r\n\r\n{}extra')
    assert (r.status, r.reason, r.body, r.will_close) == (200, "OK", b"{}", False)
    assert r.header("etag") == '"7"'


def test_chunked_body_with_extensions_and_trailer():
    r = read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-Trailer: t\r\n\r\n")
    assert r.body == b'{"a":1}' and not r.will_close


def test_interim_100_is_skipped():
    r = read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nLocation: /s/1\r\nContent-Length: 0\r\n\r\n",
             "POST")
    assert (r.status, r.header("Location"), r.body) == (201, "/s/1", b"")


def test_http10_closes_unless_keep_alive():
    assert read(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").will_close
    assert not read(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").will_close
    assert read(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").will_close


def test_body_to_close_without_length():
    r = read(b"HTTP/1.1 200 OK\r\n\r\n{\"x\": 1}")
    assert r.body == b'{"x": 1}' and r.will_close


def test_no_body_for_head_204_304():
    assert read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD").body == b""
    assert read(b"HTTP/1.1 204 No Content\r\n\r\n").body == b""
    assert read(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").body == b""


def test_folded_header_is_joined():
    r = read(b"HTTP/1.1 200 OK\r\nX-Long: a\r\n  b\r\nContent-Length: 0\r\n\r\n")
    assert r.header("x-long") == "a b"


@pytest.mark.parametrize("raw", [
    b"SSH-2.0-OpenSSH\r\n",                                                         # not HTTP
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",                          # body cut short
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",        # conflicting lengths
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",                 # bad chunk size
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header : x\r\n\r\n",                                   # space before colon
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n",                                    # header never ends
])
def test_malformed_answers_are_protocol_errors(raw):
    with pytest.raises(http11.ProtocolError):
        read(raw)


def test_closed_before_answer_is_told_apart():
    """An empty read before the status line is a kept-alive connection the BMC closed: the
    transport retries it once on a new connection, which it must not do for a cut-off answer."""
    with pytest.raises(http11.ClosedBeforeAnswer):
        read(b"")


def test_request_is_one_buffer_with_length():
    raw = http11.encode_request("PATCH", "/redfish/v1/Systems/1", "127.0.0.1:8443",
                                {"If-Match": '"3"', "Content-Type": "application/json"}, b"{}")
    assert raw == (b'PATCH /redfish/v1/Systems/1 HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nIf-Match: "3"\r\n'
                   b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    assert http11.encode_request("GET", "/", "h:1", {}, None) == b"GET / HTTP/1.1\r\nHost: h:1\r\n\r\n"
    assert b"Content-Length: 0" in http11.encode_request("DELETE", "/s/1", "h:1", {}, b"")
