"""RMCP+ server sessions for the simulated BMCs: pyghmi's ServerSession with the server-side fixes.

From research/ipmi-feasibility.md §6:

  A  pyghmi's server acknowledges any cipher proposal but only speaks suite 3 (SHA1, SHA1-96,
     AES-CBC-128); a client that proposes SHA-256 first then crashed. We answer a proposal we
     cannot honour with RMCP+ status 0x11 (no cipher suite match), and the client retries with SHA-1.
  C  pyghmi keys server sessions by a process-global bmc_handlers[client address][local port]:
     BMCs sharing a port on different addresses collide and a client re-login orphans its sessions
     everywhere. Here each SimBmc keeps its own table keyed by client address, so dispatch is by
     (server socket, client address); nothing is registered in pyghmi's globals.
  G  pyghmi's IO thread watched only the first socket until traffic arrived. The site's own epoll
     loop (provisioner.lab.bmc) registers every socket before start() returns, so there is no IO
     thread of pyghmi's to wake. (B, the Get Device ID layout, is in SimBmc.)

Unknown user names get RAKP2 status 0x0D (unauthorized name) instead of silence, so a client with
the wrong user fails fast rather than timing out. A request retransmitted because its reply was
lost is answered from a one-entry reply cache instead of being executed twice (a lost reply must
not turn one power cycle into two).
"""

from __future__ import annotations

import collections
import hashlib
import time

import pyghmi.ipmi.private.constants as constants
import pyghmi.ipmi.private.serversession as serversession

import provisioner.drivers.pyghmi_fixes  # noqa: F401  (D applies to the shared send path too)

RMCP_NO_CIPHER_MATCH = 0x11   # IPMI 2.0 table 13-15
RMCP_UNAUTHORIZED_NAME = 0x0D
_SUITE3 = (1, 1, 1)           # RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128 (IPMI 2.0 table 22-20)
_REPLAY_WINDOW_S = 10.0


class SimSession(serversession.ServerSession):
    """One client's RMCP+ session with one SimBmc."""

    def __init__(self, authdata, kg, clientaddr, netsocket, request, uuid, bmc):
        # ServerSession.__init__, minus the registration in pyghmi's global bmc_handlers (fix C)
        self.uuid = uuid
        self.currhashlib = hashlib.sha1
        self.currhashlen = 12
        self.rqaddr = constants.IPMI_BMC_ADDRESS
        self.authdata = authdata
        self.servermode = True
        self.ipmiversion = 2.0
        self.sequencenumber = 0
        self.sessionid = 0
        self.bmc = bmc
        self.lastpayload = None
        self.rqlun = None
        self.broken = False
        self.authtype = 6
        self.integrityalgo = 0
        self.confalgo = 0
        self.kg = kg
        self.socket = netsocket
        self.sockaddr = clientaddr
        self.pendingpayloads = collections.deque([])
        self.pktqueue = collections.deque([])
        self.clientpriv = 4
        self.k1 = None
        self._last_request = None
        self._last_reply = None
        self._last_at = 0.0
        bmc.sessions[clientaddr] = self
        self.send_payload(self.create_open_session_response(bytearray(request)),
                          constants.payload_types["rmcpplusopenresponse"], retry=False)

    def create_open_session_response(self, request):
        # Fix A. Request layout (IPMI 2.0 table 13-16): tag, role, 2 reserved, console session id,
        # then three 8-byte algorithm payloads whose 5th byte is the algorithm (length 0 = "any").
        clienttag = request[0]
        proposed = tuple(request[12 + 8 * i] if request[11 + 8 * i] else 1 for i in range(3)) \
            if len(request) >= 32 else _SUITE3
        if proposed != _SUITE3:
            return bytearray([clienttag, RMCP_NO_CIPHER_MATCH, 0, 0]) + request[4:8]
        return super().create_open_session_response(request)

    def _got_rmcp_openrequest(self, data):
        self.send_payload(self.create_open_session_response(bytearray(data)),
                          constants.payload_types["rmcpplusopenresponse"], retry=False)

    def _got_rakp1(self, data):
        name = bytes(data[28:]).decode("utf-8", "replace") if len(data) > 28 and data[27] else ""
        if self.authdata.get(name) is None:
            self.send_payload(bytearray([data[0], RMCP_UNAUTHORIZED_NAME, 0, 0]) + self.clientsessionid,
                              constants.payload_types["rakp2"], retry=False)
            return
        super()._got_rakp1(data)

    def handle_client_request(self, request):
        key = (self.seqlun, request["netfn"], request["command"], bytes(request["data"]))
        if (key == self._last_request and self._last_reply is not None
                and time.monotonic() - self._last_at < _REPLAY_WINDOW_S):
            code, data = self._last_reply
            self._send_ipmi_net_payload(code=code, data=data)
            return
        self._last_request, self._last_reply = key, None
        super().handle_client_request(request)

    def send_ipmi_response(self, data=(), code=0):
        self._last_reply, self._last_at = (code, bytes(data)), time.monotonic()
        self._send_ipmi_net_payload(data=data, code=code)

    def _xmit_packet(self, retry=True, delay_xmit=None, timeout=None):
        # A server never retransmits; sending goes through the BMC so faults can drop replies.
        if self.sequencenumber:
            self.sequencenumber += 1
        self.bmc.transmit(bytes(self.netpacket), self.sockaddr)

    def close_server_session(self):
        if self.bmc.sessions.get(self.sockaddr) is self:
            del self.bmc.sessions[self.sockaddr]


def dispatch(bmc, data: bytes, addr) -> None:
    """Route one datagram received on `bmc`'s socket from `addr` (fix C)."""
    if len(data) < 16 or data[0] != 6 or data[2:4] != b"\xff\x07":
        return  # not RMCP/IPMI (RMCP ping/ASF is not simulated)
    data = bytearray(data)
    if data[4] != 6:
        bmc.sessionless_data(data, addr)  # IPMI 1.5 framing: only sessionless requests are served
        return
    ptype = data[5] & 0x3F
    if ptype == constants.payload_types["rmcpplusopenreq"]:
        SimSession(bmc.authdata, bmc.kg, addr, bmc.serversocket, data[16:], bmc.uuid, bmc)
        return
    if ptype == constants.payload_types["ipmi"] and data[6:10] == b"\0\0\0\0":
        bmc.sessionless_data(data, addr)
        return
    session = bmc.sessions.get(addr)
    if session is not None:
        session._handle_ipmi_packet(data, sockaddr=addr)


def auth_capabilities_probe(seq: int = 0) -> bytes:
    """A sessionless Get Channel Authentication Capabilities request (IPMI 1.5 framing).

    Any BMC answers it without credentials, so it is how the site checks that every simulated BMC
    is up, and how anyone can (`ipmitool` sends the same packet first).
    """
    msg_head = bytes([0x20, 0x06 << 2])
    body = bytes([0x81, (seq & 0x3F) << 2, 0x38, 0x8E, 0x04])  # channel "this one", admin
    msg = msg_head + bytes([(-sum(msg_head)) & 0xFF]) + body + bytes([(-sum(body)) & 0xFF])
    return b"\x06\x00\xff\x07" + b"\x00" + b"\0" * 8 + bytes([len(msg)]) + msg



def wait_for_bmc(address: str, port: int = 623, timeout: float = 10.0) -> bool:
    """Whether anything answers an IPMI probe at address:port within `timeout` seconds."""
    import socket

    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.1)
        while time.monotonic() < deadline:
            s.sendto(auth_capabilities_probe(), (address, port))
            try:
                s.recvfrom(512)
                return True
            except OSError:
                continue
    return False
