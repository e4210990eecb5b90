"""Simulated Redfish BMCs on loopback, many per process, with the IPMI site's outside hooks.

    site = RedfishSite(nodes, state_path="lab/redfish-state.json", cert_dir="lab/", on_power_on=host.on_power_on)
    site.start()          # returns once every BMC accepts TLS connections on its address and port
    curl --cacert lab/redfish-ca.pem -u admin:password https://127.0.12.1:8443/redfish/v1/Systems/1
    site.set_fault("r3n01", task_fails=True)
    site.stop()

Nodes, the state file and the hooks (state, firmware, set_firmware, hand_flash, set_power,
set_fault, clear_faults, lose_power, flush) are SimSite's (provisioner.lab.bmc), so the lab, the
netbooting hosts and the tests treat both kinds alike; a node may also carry `software_ids`
({component: SoftwareId}). Faults: SimSite's (unreachable, delay_s, wrong_password, outage_s)
plus RedfishFaults' task_fails and power_loss_in_update.
"""

from __future__ import annotations

import functools
import logging
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from provisioner.lab.bmc import SimSite, _raise_fd_limit
from provisioner.lab.redfish_app import create_app
from provisioner.lab.redfish_bmc import RedfishBmc, RedfishFaults
from provisioner.lab.redfish_docs import MAX_IMAGE_BYTES
from provisioner.lab.redfish_server import MultiAddressServer
from provisioner.lab.redfish_tls import ensure_ca, issue_server_cert

log = logging.getLogger("provisioner.lab.redfish")

IPMI_ONLY_FAULTS = {"loss", "power_loss_at_block"}  # UDP packet loss, an HPM.1 upload block
_UUID_NS = uuid.UUID("0d7a3c1e-8f43-4b59-9b1a-6a2f4e1c7d25")


class RedfishSite(SimSite):
    """Many RedfishBmcs behind one HTTPS server; timers and the state file as in SimSite."""

    def __init__(self, nodes: list[dict], *, cert_dir: str | Path, **options):
        options.pop("max_block", None)
        super().__init__(nodes, **options)
        self.cert_dir = Path(cert_dir)
        self.by_address: dict[str, RedfishBmc] = {}
        self.server: MultiAddressServer | None = None

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    @property
    def ca_path(self) -> Path:
        return ensure_ca(self.cert_dir)[0]

    def uuid(self, name: str) -> str:
        return _uuid(name)

    def start(self, timeout: float = 10.0) -> RedfishSite:
        ports = {int(n["bmc_port"]) for n in self.nodes.values()}
        if len(ports) != 1:
            raise ValueError(f"every Redfish BMC of a site listens on one port; got {sorted(ports)}")
        _raise_fd_limit(2 * len(self.nodes) + 64)
        for name, node in self.nodes.items():
            bmc = RedfishBmc(node, self._states[name], self)
            self.bmcs[name] = bmc
            if node["bmc_address"] in self.by_address:
                raise ValueError(f"two Redfish BMCs at {node['bmc_address']}")
            self.by_address[node["bmc_address"]] = bmc
        cert, key = issue_server_cert(self.cert_dir, list(self.by_address), name="redfish-bmcs")
        self.server = MultiAddressServer(create_app(self), list(self.by_address), ports.pop(), certfile=str(cert),
                                         keyfile=str(key), admit=self._admit, max_body=MAX_IMAGE_BYTES)
        # SimSite's timer loop (call_later) runs on an epoll with only its wake socket here
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._epoll.register(self._wake_r.fileno(), select.EPOLLIN)
        try:
            self.server.start()
        except BaseException:
            self._close_sockets()
            raise
        self._hooks = ThreadPoolExecutor(self._hook_workers, thread_name_prefix="redfish-hook")
        self._io_thread = threading.Thread(target=self._serve, name="redfish-timers", daemon=True)
        self._threads = [self._io_thread, threading.Thread(target=self._flusher, name="redfish-state", daemon=True)]
        for t in self._threads:
            t.start()
        self._wait_until_answering(timeout)
        log.info("redfish.site.up bmcs=%d state=%s", len(self.bmcs), self.state_path)
        return self

    def stop(self) -> None:
        if self._stopping.is_set() or not self._threads:
            return
        if self.server is not None:
            self.server.stop()
        super().stop()

    def set_fault(self, node: str, **faults) -> None:
        ipmi_only = sorted(set(faults) & IPMI_ONLY_FAULTS)
        if ipmi_only:
            raise ValueError(f"{', '.join(ipmi_only)}: IPMI faults; {node}'s BMC speaks Redfish (use task_fails "
                             f"or power_loss_in_update)")
        super().set_fault(node, **faults)
        if faults.get("unreachable"):
            self.drop_connections(self.bmcs[node].address)

    def clear_faults(self, node: str | None = None) -> None:
        with self._lock:
            for name in [node] if node else list(self.bmcs):
                self.bmcs[name].faults = RedfishFaults()
                self.bmcs[name].down_until = 0.0

    def drop_connections(self, address: str) -> None:
        if self.server is not None:
            self.server.drop(address)

    # -- internals ---------------------------------------------------------------------------------

    def _admit(self, address: str) -> bool:
        bmc = self.by_address.get(address)
        with self._lock:
            return bmc is not None and bmc.answering()

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        port = self.server.port
        pending = [b.address for b in self.bmcs.values() if not b.faults.unreachable]
        while pending and time.monotonic() < deadline:
            left = []
            for address in pending:
                try:
                    socket.create_connection((address, port), timeout=0.5).close()
                except OSError:
                    left.append(address)
            pending = left
            if pending:
                time.sleep(0.05)
        if pending:
            self.stop()
            raise TimeoutError(f"{len(pending)} Redfish BMC(s) did not listen within {timeout}s: {pending[:5]}")

    def _close_sockets(self) -> None:
        for s in (getattr(self, "_wake_r", None), getattr(self, "_wake_w", None)):
            if s is not None:
                s.close()
        if getattr(self, "_epoll", None) is not None:
            self._epoll.close()


@functools.lru_cache(maxsize=65536)
def _uuid(name: str) -> str:
    """A BMC's stable UUID, asked for on every read of its system (uuid5 is a SHA-1 each time)."""
    return str(uuid.uuid5(_UUID_NS, name))


def start_redfish_site(nodes: list[dict], directory: Path, *, on_power_on: Callable[[str, str], None] | None = None,
                       activation_s: float = 0.05, **options) -> RedfishSite:
    """A started RedfishSite keeping its state and certificates under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    return RedfishSite(nodes, state_path=directory / "redfish-state.json", cert_dir=directory,
                       on_power_on=on_power_on, activation_s=activation_s, **options).start()
