"""Every touch of pyghmi's private state, behind one version check: the client-side fixes for pyghmi
1.6.19, applied once at import (see research/ipmi-feasibility.md §6), and the session helpers the
IPMI driver needs (is a session still usable, end one its caller gave up on, text of a completion
code). No other module of provisioner.drivers imports pyghmi's private modules.

Each fix is named by its letter in the research note:

  D  `_io_sendto` toggled the socket to blocking while the IO thread toggled it back and called
     `recvfrom()`: the IO thread could block on a quiet socket and the process went deaf.
     Fixed by never toggling, and receiving with MSG_DONTWAIT.
  E  Lost wake-up in `_io_wait`: a reply that arrived before the waiter registered waited out the
     retry timer (0.5-1 s stalls). Fixed by returning at once if the reply is already queued.
     Also, a waiter now keeps its own deadline rather than waking the IO thread with a datagram
     to arm a timer for it (an eventlet workaround): ~10 % less client CPU per round trip.
  F  ABBA deadlock: `send_payload` holds KEEPALIVE then takes WAITING, while `awaitresponse` and
     `wait_for_rsp` call `_timedout()` (which sends) with WAITING held. Fixed by releasing WAITING
     around `_timedout`.
  H  (client side) The IO thread waits in select(), which raises ValueError for any socket whose
     descriptor is 1024 or more (a process with many files open, e.g. one also hosting 1,000
     simulated BMCs); the IO thread then died and every session hung. Fixed by giving pyghmi's
     session module a select() that is implemented with poll().
  I  str credentials left a stale `initting_sessions` entry, so a second `Command()` to the same
     BMC hung forever. Fixed by encoding userid/password/kg to bytes before pyghmi sees them.
  J  `oem_init` was never cached for non-OEM BMCs: every get_power/set_power paid an extra Get
     Device ID round trip. Fixed by caching the handler per Command.
  O  (found here, not in the note) When a command's retries ran out, pyghmi logs in again and
     resends it, but the re-login's own Set Session Privilege waited in `_cmdwait` for the very
     command that triggered it to expire: 10-20 s stalls under packet loss. Fixed by ending the
     in-flight command's claim on the session before re-login (it is resent after login anyway).
     The same wait hit a session giving up for good: `_mark_broken` logs out, and the logout
     waited for the session's own failed command, inside whatever thread ran the timer.
  P  (found here) `_mark_broken` marks the session broken (in logout) before it stores the error
     message; a login waiting in another thread could wake in between and die with
     AttributeError 'errormsg' instead of "Unauthorized name". Fixed by storing it first.

  Q  (found here) Two threads race for one queued packet: `wait_for_rsp` and `process_pktqueue`
     test a deque and then pop it, while another thread's event loop pops the same deque in
     between; the loser died with IndexError "pop from an empty deque" (seen once in ~3,000 logins
     with 32 threads reading BMCs), which is no DriverError and escaped every caller. Fixed by a
     session queue whose pop of nothing is a no-op, and by one thread at a time draining a
     session's packet queue.

  R  (found here) pyghmi's clock, `util._monotonic_time`, is `os.times()[4]`: a system call and a
     tuple per reading, in 10 ms ticks, read several times per request on both ends of a session
     (6 % of the rollout engine's CPU). Replaced by `time.monotonic` (the vDSO clock, no system
     call) in every pyghmi module that imported it, the simulated BMCs' server sessions included.
  S  (found here) `send_payload` holds the process-wide KEEPALIVE_SESSIONS lock across the whole
     transmit (the sendto system call and the WAITING_SESSIONS bookkeeping), so 64 sessions sending
     at once queue behind one lock and hand it over thread to thread (a sixth of the client's CPU
     under the lock's release in a 1,000-BMC run). The transmit runs with that lock released; it
     guards only the keepalive table, which transmitting does not touch.

  T  (found here) Every login proposes cipher suite 17 (SHA-256) first and, on a BMC that only
     speaks suite 3, pays a refused Open Session before proposing SHA-1: six round trips instead
     of five, each time. A BMC that took suite 3 is remembered (by address and port, in this
     process) and offered suite 3 first from then on, as `ipmitool -C 3` is told; a login that
     fails forgets it, so the next one proposes SHA-256 first again.

K (Get Device ID parsing) is done by the driver itself (`provisioner.drivers.ipmi_wire.parse_device_id`);
the server-side fixes A, B, C, G live with the simulator in `provisioner.lab`.

The patches replace private pyghmi functions, so they are only correct for the exact release they
were written against; importing this module with any other pyghmi version raises RuntimeError.
"""

from __future__ import annotations

import collections
import importlib.metadata
import select
import socket
import sys
import threading
import time

PYGHMI_VERSION = "1.6.19"
APPLIED: tuple[str, ...] = ()

_installed = importlib.metadata.version("pyghmi")
if _installed != PYGHMI_VERSION:
    raise RuntimeError(
        f"provisioner.drivers.pyghmi_fixes was written for pyghmi {PYGHMI_VERSION} but {_installed} "
        f"is installed; its monkeypatches replace private functions and would be wrong. Pin "
        f"pyghmi=={PYGHMI_VERSION} or re-check every fix in this module against the new release.")

import pyghmi.ipmi.command as _command  # noqa: E402  (after the version check, on purpose)
import pyghmi.ipmi.private.session as _session  # noqa: E402
import pyghmi.ipmi.private.util as _util  # noqa: E402

_MARK = "_provisioner_fixes"
_tl = threading.local()


# -- D ----------------------------------------------------------------------------------------------

def _io_sendto(mysocket, packet, sockaddr):
    if hasattr(mysocket, "fd"):  # eventlet green socket, as in the original
        mysocket = mysocket.fd
    try:
        mysocket.sendto(packet, sockaddr)
    except OSError:
        pass  # UDP: a failed send is a lost packet, which the retry timers already handle


def _io_recvfrom(mysocket, size):
    try:
        return mysocket.recvfrom(size, socket.MSG_DONTWAIT)
    except OSError:
        return None


# -- E ----------------------------------------------------------------------------------------------

def _io_wait(timeout, myaddr=None, evq=None):
    s = _session
    evt = threading.Event()
    if evq is not None:
        evq.append(evt)
    deadline = timeout + s._monotonic_time()
    s.ioqueue.append((deadline, evt, myaddr))
    # Checked only after registering: a packet queued after this check is seen by the IO thread
    # together with our registration, so no wake-up can be lost in between.
    if evq is None:
        if myaddr is None:
            if s.sessionqueue:
                return
        else:
            waiter = getattr(_tl, "session", None)
            if waiter is not None and waiter.pktqueue:
                return
    # The waiter keeps its own deadline instead of waking the IO thread to arm a timer for it
    # (pyghmi did that for eventlet, which we do not use): one datagram and one IO-thread
    # wake-up less per round trip. The IO thread still sets evt when the reply arrives.
    evt.wait(max(0.0, deadline - s._monotonic_time()))


def _wrap_awaitresponse(original):
    def awaitresponse(self, retry, netfn, command):
        previous = getattr(_tl, "session", None)
        _tl.session = self
        try:
            return original(self, retry, netfn, command)
        finally:
            _tl.session = previous
    awaitresponse.__wrapped__ = original
    return awaitresponse


# -- F ----------------------------------------------------------------------------------------------

def _wrap_timedout(original):
    def _timedout(self):
        lock = _session.WAITING_SESSIONS
        if lock._is_owned():
            state = lock._release_save()
            try:
                return original(self)
            finally:
                lock._acquire_restore(state)
        return original(self)
    _timedout.__wrapped__ = original
    return _timedout


# -- R ----------------------------------------------------------------------------------------------

def _use_monotonic_clock() -> None:
    original = _util._monotonic_time
    for name, module in list(sys.modules.items()):
        if name.startswith("pyghmi") and getattr(module, "_monotonic_time", None) is original:
            module._monotonic_time = time.monotonic


# -- S ----------------------------------------------------------------------------------------------

def _wrap_xmit_packet(original):
    def _xmit_packet(self, *args, **kwargs):
        lock = _session.KEEPALIVE_SESSIONS
        if lock._is_owned():
            state = lock._release_save()
            try:
                return original(self, *args, **kwargs)
            finally:
                lock._acquire_restore(state)
        return original(self, *args, **kwargs)
    _xmit_packet.__wrapped__ = original
    return _xmit_packet


# -- T ----------------------------------------------------------------------------------------------

_SUITE3: set[tuple[str, int]] = set()  # (address, port) of BMCs that refused SHA-256 and took suite 3


def _wrap_initsession(original):
    def _initsession(self):
        original(self)
        if (self.bmc, self.port) in _SUITE3:
            self.attemptedhash = 1  # pyghmi's own fallback value: propose suite 3 first
    _initsession.__wrapped__ = original
    return _initsession


def remember_cipher(cmd: _command.Command) -> None:
    """After a login: note a BMC that settled on SHA-1 (suite 3), so the next login offers it first."""
    s = cmd.ipmi_session
    if s.logged and s.integrityalgo == 1:
        _SUITE3.add((s.bmc, s.port))


def forget_cipher(address: str, port: int) -> None:
    """After a failed login: propose SHA-256 first again."""
    _SUITE3.discard((address, port))


# -- H ----------------------------------------------------------------------------------------------

class _PollSelect:
    """Stands in for the `select` module inside pyghmi's session module: select() on poll()."""

    @staticmethod
    def select(rlist, wlist, xlist, timeout=None):
        poller = select.poll()
        by_fd = {}
        for sock in rlist:
            fd = sock.fileno() if hasattr(sock, "fileno") else sock
            if fd >= 0:
                by_fd[fd] = sock
                poller.register(fd, select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000))
        try:
            ready = poller.poll(ms)
        except InterruptedError:
            ready = []
        return [by_fd[fd] for fd, _ in ready if fd in by_fd], [], []


# -- O ----------------------------------------------------------------------------------------------

def _release_command(original):
    """Wrap a method so the session's in-flight command no longer blocks it (see O)."""
    def wrapper(self, *args, **kwargs):
        self.incommand = False
        evq = getattr(self, "evq", None)
        while evq:
            evq.popleft().set()
        return original(self, *args, **kwargs)
    wrapper.__wrapped__ = original
    wrapper.__name__ = original.__name__
    return wrapper


# -- P ----------------------------------------------------------------------------------------------

def _wrap_mark_broken(original):
    def _mark_broken(self, error=None):
        self.errormsg = error if error is not None else getattr(self, "errormsg", "session failed")
        return original(self, error)
    _mark_broken.__wrapped__ = original
    return _mark_broken


# -- Q ----------------------------------------------------------------------------------------------

class _NothingQueued:
    """What the session queue pops when another thread got there first."""

    @staticmethod
    def process_pktqueue():
        return None


class _SessionQueue(collections.deque):
    """pyghmi's `sessionqueue`, where popping an empty queue (a lost race) yields a no-op session."""

    def popleft(self):
        try:
            return collections.deque.popleft(self)
        except IndexError:
            return _NothingQueued


_PKT_LOCKS_GUARD = threading.Lock()


def _wrap_process_pktqueue(original):
    def process_pktqueue(self):
        lock = self.__dict__.get("_provisioner_pkt_lock")
        if lock is None:
            with _PKT_LOCKS_GUARD:
                lock = self.__dict__.setdefault("_provisioner_pkt_lock", threading.RLock())
        with lock:
            return original(self)
    process_pktqueue.__wrapped__ = original
    return process_pktqueue


# -- I ----------------------------------------------------------------------------------------------

_CRED_POSITIONS = {1: "userid", 2: "password", 4: "kg"}  # Session(bmc, userid, password, port, kg, ...)


def _as_bytes(value):
    return value.encode("utf-8") if isinstance(value, str) else value


def _encode_credentials(args, kwargs):
    args = list(args)
    for pos, name in _CRED_POSITIONS.items():
        if len(args) > pos:
            args[pos] = _as_bytes(args[pos])
        elif name in kwargs:
            kwargs[name] = _as_bytes(kwargs[name])
    return args, kwargs


def _wrap_new(original):
    def __new__(cls, *args, **kwargs):
        args, kwargs = _encode_credentials(args, kwargs)
        return original(cls, *args, **kwargs)
    __new__.__wrapped__ = original
    return staticmethod(__new__)


def _wrap_init(original):
    def __init__(self, *args, **kwargs):
        args, kwargs = _encode_credentials(args, kwargs)
        return original(self, *args, **kwargs)
    __init__.__wrapped__ = original
    return __init__


# -- J ----------------------------------------------------------------------------------------------

def _wrap_oem_init(original):
    def oem_init(self):
        if self._oem is not None and getattr(self, "_oem_cached", False):
            return
        original(self)
        self._oem_cached = True
    oem_init.__wrapped__ = original
    return oem_init


def apply() -> tuple[str, ...]:
    """Install the fixes (idempotent); return the letters applied."""
    global APPLIED
    if getattr(_session, _MARK, None):
        APPLIED = getattr(_session, _MARK)
        return APPLIED
    S = _session.Session
    _session._io_sendto = _io_sendto
    _session._io_recvfrom = _io_recvfrom
    _session._io_wait = _io_wait
    _session.select = _PollSelect
    _session.sessionqueue = _SessionQueue(_session.sessionqueue)
    S.process_pktqueue = _wrap_process_pktqueue(S.process_pktqueue)
    S.awaitresponse = _wrap_awaitresponse(S.awaitresponse)
    S._timedout = _wrap_timedout(S._timedout)
    S._relog = _release_command(S._relog)
    S._mark_broken = _release_command(_wrap_mark_broken(S._mark_broken))
    S.__new__ = _wrap_new(S.__dict__["__new__"].__func__ if isinstance(S.__dict__["__new__"], staticmethod)
                          else S.__dict__["__new__"])
    S.__init__ = _wrap_init(S.__init__)
    _command.Command.oem_init = _wrap_oem_init(_command.Command.oem_init)
    _use_monotonic_clock()
    S._xmit_packet = _wrap_xmit_packet(S._xmit_packet)
    S._initsession = _wrap_initsession(S._initsession)
    APPLIED = ("D", "E", "F", "H", "I", "J", "O", "P", "Q", "R", "S", "T")
    setattr(_session, _MARK, APPLIED)
    return APPLIED


# -- session helpers for the driver ---------------------------------------------------------------

def session_usable(cmd: _command.Command) -> bool:
    """Whether a Command's session is logged in and not broken, so a request may reuse it."""
    s = cmd.ipmi_session
    return not s.broken and bool(s.logged)


def completion_text(code: int, netfn: int, command: int) -> str | None:
    """pyghmi's text for a completion code of a request (netfn of the request, not the response)."""
    return _util.get_ipmi_error({"code": code, "netfn": netfn + 1, "command": command})


def drop_session(s) -> None:
    """End a session whose caller gave up on it: no reuse, no retries, no timers.

    pyghmi runs every session's retry timers from whichever thread waits in its event loop, so
    a session left to time out on its own (a dead BMC: 10-20 s of retries, then a logout) stalls
    unrelated logins in other threads; seen here as 5-12 s pauses among 500 healthy BMCs. So the
    abandoned session is taken off every pyghmi list and told it is over: its own thread leaves
    its wait loop at once with "Session no longer connected" and nobody else touches it again.
    """
    S = _session.Session
    with _util.protect(_session.KEEPALIVE_SESSIONS):
        S.keepalive_sessions.pop(s, None)
    with _util.protect(_session.WAITING_SESSIONS):
        S.waiting_sessions.pop(s, None)
    for k, v in list(S.initting_sessions.items()):
        if v is s:
            S.initting_sessions.pop(k, None)
    s.lastpayload = s.onlogpayload = None
    s.logged, s.logging, s.incommand = 0, False, False
    if not getattr(s, "broken", True):
        s.errormsg = "session abandoned after its caller's deadline"  # pyghmi raises with it
        s.broken = True
        if getattr(s, "socket", None) is not None:
            s.socketpool[s.socket] -= 1
    evq = getattr(s, "evq", None)
    while evq:
        evq.popleft().set()


def drop_command(cmd: _command.Command) -> None:
    drop_session(cmd.ipmi_session)


def without_keepalive(cmd: _command.Command) -> None:
    """Take a Command's session off pyghmi's keepalive list.

    pyghmi sends keepalives from whichever thread happens to be waiting in its event loop; for a
    BMC that went away, the keepalive's timeout and logout then block that unrelated thread for
    10-15 s (seen here: one round of 500 operations stalled 12 s). The driver logs in again after
    an idle while instead.
    """
    with _util.protect(_session.KEEPALIVE_SESSIONS):
        _session.Session.keepalive_sessions.pop(cmd.ipmi_session, None)


def logout(cmd: _command.Command) -> None:
    """Close Session, not waited for (pyghmi's logout); a failure drops the session instead."""
    try:
        cmd.ipmi_session.logout()
    except Exception:
        drop_session(cmd.ipmi_session)


def forget_login(address: str, username: bytes, password: bytes, port: int) -> None:
    """A login we abandoned before it returned a session: end it (see drop_session).

    Found by its key in pyghmi's list of logins in progress; anyone else logging in to this BMC
    with these credentials would have joined that very login.
    """
    key = (address, username, password, port)
    for k, v in list(_session.Session.initting_sessions.items()):
        if k[:4] == key:
            drop_session(v)


apply()
