"""Simulated BMCs that speak real IPMI 2.0 / RMCP+ on loopback, many per process.

    site = SimSite(nodes, state_path="lab/bmc-state.json", on_power_on=host.netboot)
    site.start()                    # returns once every BMC answers on its own address and port
    ipmitool -I lanplus -C 3 -H 127.0.11.1 -p 6230 -U admin -P password power status
    site.set_fault("r1n01", loss=0.2)
    site.stop()

A node is a dict `{name, bmc_address, bmc_port, username, password, firmware: {component: version}}`
(optional `model`, `power`). Each SimBmc is a pyghmi.ipmi.bmc.Bmc on its own UDP socket; one IO
thread serves all of them with epoll (no select() limit, fix H), dispatching by socket and client
address (fix C, provisioner.lab.ipmi_server). Hooks run on a small worker pool, never on the IO
thread. State survives restarts in one JSON file per site, written atomically. To run a site in
its own process, see provisioner.lab.bmc_process (`python -m provisioner.lab.bmc --help`).
"""

from __future__ import annotations

import copy
import heapq
import itertools
import json
import logging
import os
import random
import select
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from pyghmi.ipmi.bmc import Bmc

from provisioner.drivers import hpm1, sim_oem
from provisioner.drivers.base import BmcEndpoint
from provisioner.lab import hpm, ipmi_server

log = logging.getLogger(__name__)

SIM_DEVICE_ID = 0x20
SIM_PRODUCT_ID = 0x0042
STATE_FORMAT = 1
LOG_LIMIT = 100
# Boot device selector, bits 5:2 of boot flags data byte 2 (IPMI 2.0 table 28-14, parameter 5)
BOOT_DEVICES = {0: "default", 1: "pxe", 2: "disk", 3: "disk-safe", 4: "diag", 5: "cdrom", 6: "bios",
                15: "floppy"}
_UUID_NS = uuid.UUID("6f1c1f4e-3b1e-4b7e-9a51-0c5b9d2a7c11")


@dataclass
class Faults:
    """What is wrong with one simulated BMC right now (not saved across restarts)."""
    unreachable: bool = False            # every packet dropped
    delay_s: float = 0.0                 # every request answered this much later
    loss: float = 0.0                    # probability of dropping each request and each reply
    wrong_password: bool = False         # the BMC rejects the configured password
    power_loss_at_block: int | None = None  # lose power when this HPM upload block arrives (one shot)
    outage_s: float = 0.5                # how long the BMC is dark after losing power


def new_node_state(node: dict) -> dict:
    firmware = {c: {"active": str(v), "pending": None} for c, v in node.get("firmware", {}).items()}
    unknown = set(firmware) - set(hpm.COMPONENTS)
    if unknown:
        raise ValueError(f"node {node['name']}: unknown firmware component(s) {sorted(unknown)}; "
                         f"expected {', '.join(hpm.COMPONENTS)}")
    return {"name": node["name"], "power": node.get("power", "off"), "boot_override": None,
            "last_boot": None, "boots": 0, "firmware": firmware, "log": []}


class SimBmc(Bmc):
    """One simulated BMC: chassis power, boot flags, Get Device ID, HPM.1 and the OEM commands.

    Created by SimSite, which owns its socket and calls `receive()` on the IO thread.
    """

    def __init__(self, node: dict, state: dict, site: SimSite, sock: socket.socket):
        # Not calling IpmiServer.__init__: it would register the socket in pyghmi's globals and
        # start pyghmi's select() IO thread (fixes C, G, H). These are the attributes it sets.
        self.node, self.state, self.site = node, state, site
        self.name = node["name"]
        self.address, self.port = node["bmc_address"], int(node["bmc_port"])
        self.deviceid, self.revision = SIM_DEVICE_ID, 1
        self.ipmiversion, self.additionaldevices = 2, 0x80  # IPMI 2.0; chassis device
        self.mfgid, self.prodid = sim_oem.SIM_MANUFACTURER_ID, SIM_PRODUCT_ID
        self.authdata = _Credentials(self)
        self.authcap = struct.pack("BBBBBBBBB", 0, 1, 0b10000000, 0b00000100, 0b00000010, 0, 0, 0, 0)
        self.kg, self.timeout = None, 60
        self.uuid = uuid.uuid5(_UUID_NS, self.name)
        self.serversocket = sock
        self.pktqueue = None
        self.sessions: dict = {}
        self.faults = Faults()
        self.down_until = 0.0
        self.hpm = hpm.HpmTarget(state["firmware"], model=node.get("model"),
                                 activation_s=site.activation_s, max_block=site.max_block,
                                 schedule=site.call_later, record=self.record, changed=site.mark_dirty)

    # -- transport (IO thread) -----------------------------------------------------------------------

    def receive(self, data: bytes, addr) -> None:
        f, now = self.faults, time.monotonic()
        if f.unreachable or now < self.down_until:
            return
        if f.loss and self.site.rng.random() < f.loss:
            return
        if f.delay_s:
            self.site.call_later(f.delay_s, lambda: ipmi_server.dispatch(self, data, addr))
            return
        ipmi_server.dispatch(self, data, addr)

    def transmit(self, packet: bytes, addr) -> None:
        if self.faults.loss and self.site.rng.random() < self.faults.loss:
            return
        if time.monotonic() < self.down_until:
            return
        try:
            self.serversocket.sendto(packet, addr)
        except OSError:
            pass  # a full send buffer is a lost packet; the client retries

    def record(self, event: dict) -> None:
        event = {"at": round(time.time(), 3), **event}
        self.state["log"].append(event)
        del self.state["log"][:-LOG_LIMIT]
        self.site.mark_dirty()

    # -- IPMI commands -------------------------------------------------------------------------------

    def handle_raw_request(self, request, session):
        netfn, cmd, data = request["netfn"], request["command"], bytes(request["data"])
        try:
            if netfn == hpm1.NETFN_PICMG:
                code, body = self._hpm(cmd, data)
            elif netfn == sim_oem.NETFN_OEM:
                code, body = self.hpm.handle_oem(cmd, data)
            elif netfn == 0x06 and cmd == 0x01:
                return self.send_device_id(session)
            elif netfn == 0x06 and cmd == 0x02:  # Cold Reset: answer, then reboot the BMC
                session.send_ipmi_response()
                self.site.call_later(0.01, lambda: self.reboot("cold reset", 0.2))
                return
            elif netfn == 0x06 and cmd in (0x08, 0x37):  # Get Device GUID / Get System GUID
                code, body = 0, self.uuid.bytes_le
            elif netfn == 0x06 and cmd == 0x04:  # Get Self Test Results: 55h = no error
                code, body = 0, b"\x55\x00"
            elif netfn == 0x00 and cmd == 0x08:
                code, body = self._set_boot_options(data), b""
            elif netfn == 0x00 and cmd == 0x09:
                code, body = self._get_boot_options(data)
            else:
                return super().handle_raw_request(request, session)  # chassis status and control
        except Exception:
            log.exception("sim.bmc.error node=%s netfn=%#x cmd=%#x", self.name, netfn, cmd)
            code, body = 0xFF, b""
        if code >= 0:  # negative: the BMC died handling this request, nobody answers
            session.send_ipmi_response(data=body, code=code)

    def send_device_id(self, session):
        # Fix B: pyghmi packs the 3-byte manufacturer id as 4 bytes, shifting the product id.
        # Layout per IPMI 2.0 table 20-2; firmware revision and aux bytes from the BMC's version.
        v = self.hpm.version_bytes("bmc")
        body = bytes([self.deviceid, self.revision, v[0] & 0x7F, v[1], 0x02, self.additionaldevices])
        body += self.mfgid.to_bytes(3, "little") + self.prodid.to_bytes(2, "little") + v[2:6]
        session.send_ipmi_response(data=body)

    def _hpm(self, cmd: int, data: bytes) -> tuple[int, bytes]:
        f = self.faults
        if cmd == hpm1.UPLOAD_FIRMWARE_BLOCK and f.power_loss_at_block is not None and self.hpm.upload \
                and self.hpm.upload.blocks >= f.power_loss_at_block:
            f.power_loss_at_block = None  # one shot
            self.power_lost()
            return -1, b""
        return self.hpm.handle(cmd, data)

    def get_power_state(self):
        return self.state["power"]

    def power_on(self):
        if self.state["power"] == "on":
            return 0
        self._set_power("on", "power on")
        self._boot()
        return 0

    def power_off(self):
        self._set_power("off", "power off")
        return 0

    def power_shutdown(self):
        self._set_power("off", "soft off")
        return 0

    def power_cycle(self):
        if self.state["power"] == "off":
            return 0xD5  # not supported in present state, as most BMCs answer
        self.record({"event": "power", "power": "cycle"})
        self._boot()
        return 0

    def power_reset(self):
        return self.power_cycle()

    def pulse_diag(self):
        return 0xD5

    def _set_power(self, power: str, why: str) -> None:
        if self.state["power"] != power:
            self.state["power"] = power
            self.record({"event": "power", "power": power, "reason": why})

    def _boot(self) -> None:
        override = self.state["boot_override"]
        device = override["device"] if override else "disk"
        if override and not override.get("persistent"):
            self.state["boot_override"] = None
        self.state["boots"] += 1
        self.state["last_boot"] = {"device": device, "at": round(time.time(), 3)}
        self.site.mark_dirty()
        self.site.notify_power_on(self.name, device)

    def _set_boot_options(self, data: bytes) -> int:
        if not data:
            return 0xC7
        param = data[0] & 0x7F
        if param in (0, 3, 4):
            return 0  # set-in-progress, boot info acknowledge, boot initiator info: accepted
        if param != 5:
            return 0x80  # parameter not supported
        if len(data) < 3:
            return 0xC7
        flags, selector = data[1], (data[2] >> 2) & 0x0F
        if selector not in BOOT_DEVICES:
            return 0xCC
        if not flags & 0x80 or selector == 0:
            self.state["boot_override"] = None
        else:
            self.state["boot_override"] = {"device": BOOT_DEVICES[selector],
                                           "persistent": bool(flags & 0x40), "efi": bool(flags & 0x20)}
        self.record({"event": "boot_override", "override": self.state["boot_override"]})
        return 0

    def _get_boot_options(self, data: bytes) -> tuple[int, bytes]:
        param = data[0] & 0x7F if data else 5
        if param in (0, 3, 4):
            return 0, bytes([1, param, 0])
        if param != 5:
            return 0x80, b""
        o = self.state["boot_override"]
        if not o:
            return 0, bytes([1, 5, 0, 0, 0, 0, 0])
        selector = next(k for k, v in BOOT_DEVICES.items() if v == o["device"])
        flags = 0x80 | (0x40 if o["persistent"] else 0) | (0x20 if o["efi"] else 0)
        return 0, bytes([1, 5, flags, selector << 2, 0, 0, 0])

    # -- faults --------------------------------------------------------------------------------------

    def power_lost(self) -> None:
        """AC power lost: the BMC goes dark for outage_s, sessions and any upload are gone, host off."""
        self.hpm.power_lost()
        self.reboot("power lost", self.faults.outage_s)
        self._set_power("off", "power lost")

    def reboot(self, why: str, dark_s: float) -> None:
        self.sessions.clear()
        self.down_until = time.monotonic() + dark_s
        self.record({"event": "bmc_reboot", "reason": why})


class _Credentials:
    """authdata for pyghmi's ServerSession: looked up per login, so faults apply at once."""

    def __init__(self, bmc: SimBmc):
        self.bmc = bmc

    def get(self, username, default=None):
        node = self.bmc.node
        if username != node["username"]:
            return default
        return node["password"] + "-rejected" if self.bmc.faults.wrong_password else node["password"]


class SimSite:
    """Many SimBmcs in one process: one epoll IO thread, a hook pool, a state file.

    on_power_on(node_name, boot_device) is called on a worker thread whenever a simulated host
    starts booting (power on, cycle, reset); boot_device is "pxe", "disk", ... after the one-time
    override (if any) was consumed.
    """

    def __init__(self, nodes: list[dict], *, state_path: str | os.PathLike | None = None,
                 on_power_on: Callable[[str, str], None] | None = None, activation_s: float = 0.1,
                 max_block: int = 1024, seed: int = 0, flush_interval: float = 0.5, hook_workers: int = 4):
        self.nodes = {n["name"]: dict(n) for n in nodes}
        if len(self.nodes) != len(nodes):
            raise ValueError("node names must be unique")
        self.state_path = Path(state_path) if state_path else None
        self.on_power_on = on_power_on
        self.activation_s, self.max_block = activation_s, max_block
        self.flush_interval = flush_interval
        self.rng = random.Random(seed)
        self.bmcs: dict[str, SimBmc] = {}
        self._by_fd: dict[int, SimBmc] = {}
        self._lock = threading.RLock()
        self._timers: list = []
        self._timer_seq = itertools.count()
        self._dirty = threading.Event()
        self._flush_lock = threading.Lock()
        self._stopping = threading.Event()
        self._hook_workers = hook_workers
        self._threads: list[threading.Thread] = []
        self._io_thread: threading.Thread | None = None
        self._states = self._load_states()

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> SimSite:
        """Bind every BMC, start serving, and return once each one answers a probe."""
        _raise_fd_limit(len(self.nodes) + 64)
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._epoll.register(self._wake_r.fileno(), select.EPOLLIN)
        try:
            for name, node in self.nodes.items():
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                sock.setblocking(False)
                try:
                    sock.bind((node["bmc_address"], int(node["bmc_port"])))
                except OSError as e:
                    sock.close()
                    raise OSError(e.errno, f"BMC {name}: cannot bind {node['bmc_address']}:"
                                           f"{node['bmc_port']}: {e.strerror}") from None
                bmc = SimBmc(node, self._states[name], self, sock)
                self.bmcs[name] = bmc
                self._by_fd[sock.fileno()] = bmc
                self._epoll.register(sock.fileno(), select.EPOLLIN)
        except BaseException:
            self._close_sockets()
            raise
        self._hooks = ThreadPoolExecutor(self._hook_workers, thread_name_prefix="sim-hook")
        self._io_thread = threading.Thread(target=self._serve, name="sim-bmc-io", daemon=True)
        self._threads = [self._io_thread,
                         threading.Thread(target=self._flusher, name="sim-bmc-state", daemon=True)]
        for t in self._threads:
            t.start()
        self._wait_until_answering(timeout)
        log.info("sim.site.up bmcs=%d state=%s", len(self.bmcs), self.state_path)
        return self

    def stop(self) -> None:
        if self._stopping.is_set() or not self._threads:
            return
        self._stopping.set()
        self._dirty.set()  # wakes the state writer
        self._wake()
        for t in self._threads:
            t.join(timeout=5)
        self._hooks.shutdown(wait=False)
        self._close_sockets()
        self.flush()

    def __enter__(self) -> SimSite:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def endpoints(self, driver: str = "ipmi") -> dict[str, BmcEndpoint]:
        return {n: BmcEndpoint(d["bmc_address"], int(d["bmc_port"]), d["username"], d["password"], driver)
                for n, d in self.nodes.items()}

    # -- outside hooks (any thread) -------------------------------------------------------------------

    def state(self, node: str) -> dict:
        """A copy of one node's state: power, boot override, last boot, firmware, log, faults."""
        with self._lock:
            out = copy.deepcopy(self._states[node])
            if node in self.bmcs:
                out["faults"] = asdict(self.bmcs[node].faults)
            return out

    def states(self) -> dict[str, dict]:
        return {n: self.state(n) for n in self.nodes}

    def firmware(self, node: str) -> dict[str, str]:
        with self._lock:
            return {c: fw["active"] for c, fw in self._states[node]["firmware"].items()}

    def set_firmware(self, node: str, component: str, version: str, *, how: str = "inband_flash") -> None:
        """Set the active version, as the in-band flasher does from the host side."""
        with self._lock:
            fw = self._states[node]["firmware"]
            if component not in hpm.COMPONENTS:
                raise ValueError(f"unknown component {component!r}")
            previous = fw.get(component, {}).get("active")
            fw[component] = {"active": version, "pending": None}
            self._record(node, {"event": how, "component": component, "version": version,
                                "previous": previous})

    def hand_flash(self, node: str, component: str, version: str) -> None:
        """Someone flashed this node by hand, behind the pipeline's back (drift)."""
        self.set_firmware(node, component, version, how="hand_flash")

    def set_power(self, node: str, power: str) -> None:
        """Change the host's power from the host side (an OS shutdown, a pulled plug)."""
        with self._lock:
            self._states[node]["power"] = power
            self._record(node, {"event": "power", "power": power, "reason": "host side"})

    def set_fault(self, node: str, **faults) -> None:
        """Inject faults: unreachable, delay_s, loss, wrong_password, power_loss_at_block, outage_s."""
        with self._lock:
            f = self.bmcs[node].faults
            for k, v in faults.items():
                if not hasattr(f, k):
                    raise ValueError(f"unknown fault {k!r}; known: {', '.join(asdict(f))}")
                setattr(f, k, v)
            self._record(node, {"event": "fault", **faults})

    def clear_faults(self, node: str | None = None) -> None:
        with self._lock:
            for name in [node] if node else list(self.bmcs):
                self.bmcs[name].faults = Faults()
                self.bmcs[name].down_until = 0.0

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run fn on the IO thread after `delay` seconds, holding the site lock."""
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_seq), fn))
        if threading.current_thread() is not self._io_thread:
            self._wake()

    def mark_dirty(self) -> None:
        self._dirty.set()

    def notify_power_on(self, node: str, device: str) -> None:
        if self.on_power_on is not None:
            self._hooks.submit(self._run_hook, node, device)

    def flush(self) -> None:
        """Write the state file now (atomically: temporary file, then rename)."""
        if not self.state_path:
            return
        with self._flush_lock:
            with self._lock:
                self._dirty.clear()
                text = json.dumps({"format": STATE_FORMAT, "nodes": self._states}, sort_keys=True)
            tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, self.state_path)

    # -- internals -------------------------------------------------------------------------------------

    def _record(self, node: str, event: dict) -> None:
        if node in self.bmcs:
            self.bmcs[node].record(event)
        else:
            self._states[node]["log"].append({"at": round(time.time(), 3), **event})
            self.mark_dirty()

    def _run_hook(self, node: str, device: str) -> None:
        try:
            self.on_power_on(node, device)
        except Exception:
            log.exception("sim.hook.error node=%s hook=on_power_on", node)

    def _load_states(self) -> dict[str, dict]:
        saved = {}
        if self.state_path and self.state_path.exists():
            doc = json.loads(self.state_path.read_text())
            if doc.get("format") != STATE_FORMAT:
                raise ValueError(f"{self.state_path}: state format {doc.get('format')!r} is not {STATE_FORMAT}")
            saved = doc["nodes"]
        return {name: saved.get(name) or new_node_state(node) for name, node in self.nodes.items()}

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def _serve(self) -> None:
        ep, wake_fd = self._epoll, self._wake_r.fileno()
        while not self._stopping.is_set():
            with self._lock:
                timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else -1
            try:
                events = ep.poll(timeout)
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == wake_fd:
                    try:
                        while self._wake_r.recv(512):
                            pass
                    except OSError:
                        pass
                    continue
                bmc = self._by_fd.get(fd)
                if bmc is not None:
                    self._drain(bmc)
            with self._lock:
                while self._timers and self._timers[0][0] <= time.monotonic():
                    _, _, fn = heapq.heappop(self._timers)
                    try:
                        fn()
                    except Exception:
                        log.exception("sim.timer.error")

    def _drain(self, bmc: SimBmc) -> None:
        sock = bmc.serversocket
        for _ in range(64):  # bounded, so one busy BMC cannot starve the others
            try:
                data, addr = sock.recvfrom(65535)
            except OSError:
                return
            with self._lock:
                try:
                    bmc.receive(data, addr)
                except Exception:
                    # One bad packet must never take the site down (the pyghmi crash in fix C).
                    log.exception("sim.packet.error node=%s peer=%s", bmc.name, addr)

    def _flusher(self) -> None:
        while not self._stopping.is_set():
            if self._dirty.wait(0.2) and not self._stopping.is_set():
                try:
                    self.flush()
                except OSError:
                    log.exception("sim.state.write_failed path=%s", self.state_path)
                self._stopping.wait(self.flush_interval)

    def _wait_until_answering(self, timeout: float) -> None:
        pending = {(b.address, b.port): name for name, b in self.bmcs.items() if not b.faults.unreachable}
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        probe.settimeout(0.05)
        deadline = time.monotonic() + timeout
        packet = ipmi_server.auth_capabilities_probe()
        try:
            while pending and time.monotonic() < deadline:
                for addr in list(pending):
                    probe.sendto(packet, addr)
                resend_at = time.monotonic() + 0.3
                while pending and time.monotonic() < resend_at:
                    try:
                        _, addr = probe.recvfrom(512)
                    except TimeoutError:
                        continue
                    pending.pop(addr, None)
        finally:
            probe.close()
        if pending:
            self.stop()
            raise TimeoutError(f"{len(pending)} simulated BMC(s) did not answer within {timeout}s: "
                               f"{', '.join(sorted(pending.values())[:5])}")

    def _close_sockets(self) -> None:
        for bmc in self.bmcs.values():
            bmc.serversocket.close()
        for s in (getattr(self, "_wake_r", None), getattr(self, "_wake_w", None)):
            if s is not None:
                s.close()
        if getattr(self, "_epoll", None) is not None:
            self._epoll.close()


def _raise_fd_limit(needed: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed + 256, soft)), hard))


if __name__ == "__main__":
    from provisioner.lab.bmc_process import main

    raise SystemExit(main())
