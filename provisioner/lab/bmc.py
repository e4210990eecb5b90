"""Simulated BMCs that speak real IPMI 2.0 / RMCP+ on loopback, many per process.

    site = SimSite(nodes, state_path="lab/bmc-state.json", on_power_on=host.netboot)
    site.start()                    # returns once every BMC answers on its own address and port
    ipmitool -I lanplus -C 3 -H 127.0.11.1 -p 6230 -U admin -P password power status
    site.set_fault("r1n01", loss=0.2)
    site.stop()

A node is a dict `{name, bmc_address, bmc_port, username, password, firmware: {component: version}}`
(optional `model`: images for another model are refused; optional `power`: "on"/"off" at first
start). Each BMC is a SimBmc (provisioner.lab.sim_bmc) on its own UDP socket; one IO thread serves
all of them with epoll (no select() limit, fix H), dispatching by socket and client address (fix C).
Hooks run on a small worker pool, never on the IO thread. To run a site in its own process, see
provisioner.lab.bmc_process (`python -m provisioner.lab.bmc --help`).

State file (one per site, JSON, replaced atomically by rename; read back at the next start, where
it wins over the node list):

    {"format": 1, "nodes": {"r1n01": {
        "name": "r1n01", "power": "on", "boots": 3,
        "boot_override": {"device": "pxe", "persistent": false, "efi": false, "set_at": ...} | null,
        "last_boot": {"device": "pxe", "efi": true | false | null, "at": 1795667949.9} | null,
        "firmware": {"bios": {"active": "1.20.0", "pending": "1.21.0" | null}, ...},
        "log": [{"at": ..., "event": "uploaded" | "activated" | "rejected" | "flash_aborted" |
                 "upload_started" | "power" | "boot_override" | "boot_override_expired" | "bmc_reboot" | "fault" |
                 "inband_flash" | "hand_flash", ...}, ...]}}}     (the last 100 events per node)

Faults (set_fault, kept in memory only): unreachable, delay_s, loss, wrong_password,
power_loss_at_block (+ outage_s); lose_power(node) cuts the power at once. Not simulated: activating BMC firmware does not reboot the BMC or
drop sessions; IPMI 1.5 sessions, SOL, SDR/FRU/SEL.
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
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from provisioner.drivers.base import BmcEndpoint
from provisioner.lab import hpm, ipmi_server
from provisioner.lab.sim_bmc import (  # noqa: F401  (SimBmc and the identity are part of this module's API)
    BOOT_DEVICES,
    SIM_DEVICE_ID,
    SIM_PRODUCT_ID,
    Faults,
    SimBmc,
    new_node_state,
)

log = logging.getLogger(__name__)

STATE_FORMAT = 1


class SimSite:
    """Many SimBmcs in one process: one epoll IO thread, a hook pool, a state file.

    on_power_on(node_name, boot_device) is called on a worker thread whenever a simulated host
    starts booting (power on, cycle, reset); boot_device is "pxe", "disk", ... after the one-time
    override (if any) was consumed. A one-time override not followed by a restart within
    boot_flag_timeout_s expires, as IPMI 2.0 §28.12 has real BMCs do after 60 s.
    """

    def __init__(self, nodes: list[dict], *, state_path: str | os.PathLike | None = None,
                 on_power_on: Callable[[str, str], None] | None = None, activation_s: float = 0.1,
                 max_block: int = 1024, seed: int = 0, flush_interval: float = 0.5, hook_workers: int = 4,
                 boot_flag_timeout_s: float = 60.0):
        self.nodes = {n["name"]: dict(n) for n in nodes}
        if len(self.nodes) != len(nodes):
            raise ValueError("node names must be unique")
        self.state_path = Path(state_path) if state_path else None
        self.on_power_on = on_power_on
        self.activation_s, self.max_block = activation_s, max_block
        self.boot_flag_timeout_s = boot_flag_timeout_s  # a one-time boot request expires unused after this
        self.flush_interval = flush_interval
        self.rng = random.Random(seed)
        self.bmcs: dict[str, SimBmc] = {}
        self._by_fd: dict[int, SimBmc] = {}
        self._lock = threading.RLock()
        self._timers: list = []
        self._timer_seq = itertools.count()
        self._dirty = threading.Event()
        self._encoded: dict[str, str] = {}  # node -> its state as JSON, as of the last flush
        self._changed: set[str] | None = None  # nodes changed since; None: all of them
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

    def last_boot(self, node: str) -> dict | None:
        """What the host's firmware read at its last power-on (device, EFI flag), without copying
        the rest of the state: a booting host asks at every POST."""
        with self._lock:
            last = self._states[node].get("last_boot")
            return dict(last) if last else None

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

    def lose_power(self, node: str) -> None:
        """Cut the node's power now: the BMC goes dark for its outage_s, any upload is lost, host off."""
        with self._lock:
            self.bmcs[node].power_lost()

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

    def mark_dirty(self, node: str | None = None) -> None:
        """Note a change to `node`'s state (None: to any node's) for the next write of the state file."""
        with self._lock:
            if node is None:
                self._changed = None
            elif self._changed is not None:
                self._changed.add(node)
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
                # Only the nodes changed since the last write are encoded again (the site lock is
                # held meanwhile, so the IO thread waits): the same text as one json.dumps of it all.
                changed = self._states.keys() if self._changed is None else self._changed
                for name in changed:
                    self._encoded[name] = json.dumps(self._states[name], sort_keys=True)
                self._changed = set()
                nodes = ", ".join(f"{json.dumps(n)}: {self._encoded[n]}" for n in sorted(self._states))
                text = f'{{"format": {STATE_FORMAT}, "nodes": {{{nodes}}}}}'
            tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, self.state_path)

    # -- internals -------------------------------------------------------------------------------------

    def _record(self, node: str, event: dict) -> None:
        if node in self.bmcs:
            self.bmcs[node].record(event)
        else:
            self._states[node]["log"].append({"at": round(time.time(), 3), **event})
            self.mark_dirty(node)

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
                started = time.monotonic()
                try:
                    self.flush()
                except OSError:
                    log.exception("sim.state.write_failed path=%s", self.state_path)
                # Serializing holds the site lock, so the IO thread waits: keep that under ~5 %.
                self._stopping.wait(max(self.flush_interval, 20 * (time.monotonic() - started)))

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
