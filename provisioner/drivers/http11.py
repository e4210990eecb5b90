"""HTTP/1.1 message framing (RFC 9112) for the Redfish transport: one request written, one response read.

Why not http.client: it parses every response's header block with the email package (~40 % of the
Redfish client's CPU per request, measured with yappi on bench/redfish_fleet.py) and writes each
header through its own method call. A BMC's answers are small JSON documents on one kept-alive
connection; this module reads exactly what RFC 9112 allows there (a status line, header fields, a
body framed by Transfer-Encoding chunked, Content-Length, or the connection's close) and refuses
anything else as a protocol error. It does no I/O of its own: `read_response` takes a binary file
(the socket's `makefile("rb")`, or a BytesIO in tests). The lab's Redfish BMCs read requests
with the same pieces (provisioner.lab.redfish_conn).
"""

from __future__ import annotations

MAX_LINE = 65536        # longest status line or header field line we read
MAX_HEADERS = 100       # header fields per response, as http.client allows
NO_BODY = (204, 304)    # RFC 9112 §6.3 (1): these never carry content
_FRAMING = frozenset(("connection", "transfer-encoding", "content-length"))  # the fields that frame a body


class ProtocolError(Exception):
    """The peer's bytes are not an HTTP/1.1 response (or it closed the connection mid-message)."""


class ClosedBeforeAnswer(ProtocolError):
    """The connection ended before a status line: a kept-alive connection the server had closed."""


def encode_request(method: str, target: str, host: str, headers: dict[str, str], body: bytes | None) -> bytes:
    """The request's bytes, head and body in one buffer (one send: no Nagle wait between them)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    head = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"
    return head + body if body else head


class Response:
    """A response read off the wire: status, reason, header fields in order, body, whether it closes."""

    __slots__ = ("status", "reason", "headers", "body", "will_close")

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes, will_close: bool):
        self.status, self.reason, self.headers, self.body, self.will_close = status, reason, headers, body, will_close

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


def read_response(rfile, method: str) -> Response:
    """Read one response to a `method` request from `rfile`, skipping interim (1xx) responses."""
    while True:
        line = rfile.readline(MAX_LINE + 1)
        if not line:
            raise ClosedBeforeAnswer("the server closed the connection before answering")
        version, status, reason = _status_line(line)
        headers = read_header_fields(rfile)
        if 100 <= status < 200 and status != 101:
            continue  # RFC 9110 §15.2: interim responses precede the final one
        break
    fields: dict[str, list[str]] = {}
    for k, v in headers:
        k = k.lower()
        if k in _FRAMING:
            fields.setdefault(k, []).append(v)
    connection = ",".join(fields.get("connection", ())).lower()
    will_close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
    if method == "HEAD" or status in NO_BODY or 100 <= status < 200:
        return Response(status, reason, headers, b"", will_close)
    coding = ",".join(fields.get("transfer-encoding", ())).lower().replace(" ", "")
    if coding:
        if coding.rsplit(",", 1)[-1] != "chunked":  # RFC 9112 §6.3 (4): read until close
            return Response(status, reason, headers, _read_to_close(rfile), True)
        return Response(status, reason, headers, read_chunked(rfile), will_close)
    lengths = set(fields.get("content-length", ()))
    if lengths:
        if len(lengths) != 1 or not next(iter(lengths)).strip().isdigit():  # RFC 9112 §6.3 (5)
            raise ProtocolError(f"invalid Content-Length {sorted(lengths)}")
        return Response(status, reason, headers, read_exact(rfile, int(next(iter(lengths)))), will_close)
    return Response(status, reason, headers, _read_to_close(rfile), True)  # RFC 9112 §6.3 (8)


def _status_line(line: bytes) -> tuple[str, int, str]:
    if len(line) > MAX_LINE:
        raise ProtocolError("status line too long")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
    return parts[0], int(parts[1]), parts[2] if len(parts) > 2 else ""


def read_header_fields(rfile) -> list[tuple[str, str]]:
    headers = []
    while True:
        line = rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise ProtocolError("header line too long")
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise ProtocolError("the connection closed inside the response's header")
        if line[:1] in (b" ", b"\t"):  # RFC 9112 §5.2: obsolete line folding, replaced by a space
            if not headers:
                raise ProtocolError("a continuation line before any header field")
            name, value = headers.pop()
            headers.append((name, f"{value} {line.decode('latin-1').strip()}"))
            continue
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():  # RFC 9112 §5.1: no space before the colon
            raise ProtocolError(f"malformed header field {line[:80]!r}")
        headers.append((name, value.strip()))
        if len(headers) > MAX_HEADERS:
            raise ProtocolError(f"more than {MAX_HEADERS} header fields")


def read_exact(rfile, n: int) -> bytes:
    data = rfile.read(n) if n else b""
    if len(data) != n:
        raise ProtocolError(f"the connection closed after {len(data)} of {n} bytes of the body")
    return data


def read_chunked(rfile, limit: int | None = None) -> bytes:
    """RFC 9112 §7.1: chunks until the zero-size one, then the trailer section (discarded);
    ProtocolError past `limit` bytes."""
    out, total = [], 0
    while True:
        line = rfile.readline(MAX_LINE + 1)
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
            raise ProtocolError(f"invalid chunk size {line[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            read_header_fields(rfile)  # the trailer section
            return b"".join(out)
        total += size
        if limit is not None and total > limit:
            raise ProtocolError(f"a chunked body over {limit} bytes")
        out.append(read_exact(rfile, size))
        if rfile.readline(3) not in (b"\r\n", b"\n"):
            raise ProtocolError("a chunk does not end with CRLF")


def _read_to_close(rfile) -> bytes:
    return rfile.read()
