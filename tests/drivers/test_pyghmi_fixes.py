"""The pyghmi fixes: applied once, refused on any other pyghmi release."""

from __future__ import annotations

import collections
import os
import resource
import socket
import subprocess
import sys
import threading

import pyghmi.ipmi.command as command
import pyghmi.ipmi.private.session as session
import pytest

from provisioner.drivers import pyghmi_fixes


def test_fixes_are_applied_once_at_import_and_applying_again_changes_nothing():
    before = (session.Session._timedout, session.Session.awaitresponse, session._io_wait)
    assert pyghmi_fixes.apply() == ("D", "E", "F", "H", "I", "J", "O", "P", "Q", "R", "S", "T")
    assert (session.Session._timedout, session.Session.awaitresponse, session._io_wait) == before
    assert session._io_sendto is pyghmi_fixes._io_sendto and session._io_recvfrom is pyghmi_fixes._io_recvfrom
    assert not hasattr(session.Session._timedout.__wrapped__, "__wrapped__")  # wrapped exactly once
    assert hasattr(command.Command.oem_init, "__wrapped__")


def test_pyghmis_clock_is_the_monotonic_clock_not_os_times_fix_r():
    import time

    import pyghmi.ipmi.private.util as util

    assert session._monotonic_time is time.monotonic and util._monotonic_time is time.monotonic


def test_a_session_transmits_without_holding_the_keepalive_lock_fix_s():
    held = []
    transmit = pyghmi_fixes._wrap_xmit_packet(lambda self: held.append(session.KEEPALIVE_SESSIONS._is_owned()))
    with session.KEEPALIVE_SESSIONS:  # as send_payload holds it
        transmit(object())
        assert session.KEEPALIVE_SESSIONS._is_owned()  # held again for the caller's own bookkeeping
    assert held == [False]
    assert hasattr(session.Session._xmit_packet, "__wrapped__")


def test_str_credentials_reach_pyghmi_as_bytes():
    args, kwargs = pyghmi_fixes._encode_credentials(("bmc", "admin"), {"password": "pw", "kg": None})
    assert args == ["bmc", b"admin"] and kwargs == {"password": b"pw", "kg": None}


def test_the_fixes_refuse_to_load_on_another_pyghmi_release():
    code = ("import importlib.metadata as m; real = m.version; "
            "m.version = lambda name: '1.6.20' if name == 'pyghmi' else real(name); "
            "import provisioner.drivers.pyghmi_fixes")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "written for pyghmi 1.6.19 but 1.6.20 is installed" in r.stderr


def test_releasing_the_waiting_lock_around_timedout_fix_f():
    held = []

    class Probe:
        pass

    def original(self):
        held.append(session.WAITING_SESSIONS._is_owned())

    wrapped = pyghmi_fixes._wrap_timedout(original)
    with session.WAITING_SESSIONS:
        wrapped(Probe())
        assert session.WAITING_SESSIONS._is_owned()  # and taken back afterwards
    assert held == [False]


def test_a_lost_race_for_a_queued_packet_is_no_crash_fix_q():
    assert isinstance(session.sessionqueue, pyghmi_fixes._SessionQueue)
    q = pyghmi_fixes._SessionQueue()
    assert q.popleft().process_pktqueue() is None  # another thread popped it first: nothing to do

    class Probe:
        def __init__(self):
            self.pktqueue = collections.deque([(b"x",)])
            self.seen = []

    def original(self):  # pyghmi's shape: test, then pop
        while self.pktqueue:
            self.seen.append(self.pktqueue.popleft())

    p = Probe()
    pyghmi_fixes._wrap_process_pktqueue(original)(p)
    assert p.seen == [(b"x",)] and isinstance(p._provisioner_pkt_lock, type(threading.RLock()))


def test_pyghmis_io_thread_can_wait_on_sockets_past_descriptor_1024_fix_h():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1200:
        pytest.skip("cannot open 1,100 files here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        assert a.fileno() > 1024
        b.send(b"x")
        ready, _, _ = session.select.select([a], (), (), 1.0)
        assert ready == [a]
    finally:
        a.close()
        b.close()
        for fd in filler:
            os.close(fd)


def test_a_failed_login_has_its_error_message_before_it_is_marked_broken_fix_p():
    seen = []

    class Probe:
        pass

    probe = Probe()
    pyghmi_fixes._wrap_mark_broken(lambda self, error=None: seen.append(self.errormsg))(
        probe, "Unauthorized name in RAKP2")
    assert seen == ["Unauthorized name in RAKP2"]
